"""Structure files and records are data, never code (issue 31, hostile re-run): a pymatgen structure dict whose site
properties name a module (monty's ``@module``) is read without importing it, structure files are read only as
CIF, POSCAR or JSON (no YAML aliases), and a compressed structure file is bounded while it is read."""

from __future__ import annotations

import bz2
import gzip
import json
import sys

import pytest
from pymatgen.core import Lattice, Structure
from typer.testing import CliRunner

from traits.cli import app
from traits.data.sources import Entry, read_structure_file, structure_from_dict
from traits.errors import DataError

QUICKSTART = "traits/data/quickstart/model.safetensors"


def rocksalt(a: float = 4.2) -> Structure:
    return Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def booby_trapped(module: str) -> dict:
    d = rocksalt().as_dict()
    d["sites"][0]["properties"] = {"x": {"@module": module, "@class": "Thing"}}
    return d


@pytest.fixture
def trap(tmp_path, monkeypatch):
    """A module that leaves a file behind when imported, importable from sys.path."""
    marker = tmp_path / "imported"
    (tmp_path / "evil_structure_mod.py").write_text(f"open({str(marker)!r}, 'w').write('x')\nclass Thing: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield marker
    sys.modules.pop("evil_structure_mod", None)


def test_a_structure_dict_naming_a_module_is_read_without_importing_it(trap):
    entry = Entry("x", 0.0, json.dumps(booby_trapped("evil_structure_mod")), "pymatgen-dict")
    s = entry.structure()
    assert not trap.exists()
    ref = rocksalt()
    assert [str(x.specie) for x in s] == ["Na", "Cl"] and s.lattice.abc == pytest.approx(ref.lattice.abc)
    assert s.frac_coords == pytest.approx(ref.frac_coords)


def test_structure_from_dict_keeps_occupancies_and_cartesian_sites():
    s = Structure(Lattice.cubic(4.0), [{"Fe": 0.5, "Ni": 0.5}, "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    back = structure_from_dict(s.as_dict())
    assert not back.is_ordered and back.composition.almost_equals(s.composition)
    d = rocksalt().as_dict()
    for site in d["sites"]:
        del site["abc"]
    assert structure_from_dict(d).cart_coords == pytest.approx(rocksalt().cart_coords)
    with pytest.raises(ValueError, match="not a pymatgen structure dict"):
        structure_from_dict({"lattice": {}})


def test_predict_reads_a_booby_trapped_json_structure_without_importing_it(tmp_path, trap):
    f = tmp_path / "evil.json"
    f.write_text(json.dumps(booby_trapped("evil_structure_mod")))
    res = CliRunner().invoke(app, ["predict", "--checkpoint", QUICKSTART, str(f)])
    assert res.exit_code == 0, res.output
    assert not trap.exists()


def test_structure_files_in_other_formats_are_refused(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [1, 1, 1]\nb: [*a, *a, *a]\n")
    with pytest.raises(DataError, match="not a structure file TRAITS reads"):
        read_structure_file(bomb)
    res = CliRunner().invoke(app, ["predict", "--checkpoint", QUICKSTART, str(bomb)])
    assert res.exit_code == 2


@pytest.mark.parametrize("suffix, opener", [(".cif.gz", gzip.open), ("", bz2.open)])
def test_a_compressed_structure_file_is_bounded_while_it_is_read(tmp_path, monkeypatch, suffix, opener):
    import traits.inputs

    monkeypatch.setattr(traits.inputs, "SMALL_FILE_LIMIT", 1 << 20)
    cif = rocksalt().to(fmt="cif")
    name = f"x{suffix}" if suffix else "POSCAR_x.bz2"
    text = cif if suffix else rocksalt().to(fmt="poscar")
    f = tmp_path / name
    with opener(f, "wt") as fh:
        fh.write(text + " " * (4 << 20))  # 4 MiB of padding: a few kB compressed
    assert f.stat().st_size < 64 << 10
    with pytest.raises(DataError, match="expands to more than"):
        read_structure_file(f)
    small = tmp_path / ("ok" + suffix if suffix else "POSCAR_ok.bz2")
    with opener(small, "wt") as fh:
        fh.write(text)
    assert len(read_structure_file(small)) == 2


def test_a_record_id_with_a_lone_surrogate_is_kept_as_its_escape(tmp_path):
    """A JSON record id "\\ud800" (valid JSON) used to stop `traits screen` with exit 3 when the CSV was written."""
    entry = Entry("mp-\ud800", 0.0, "{}", "pymatgen-dict")
    assert entry.id == "mp-\\ud800" and entry.id.encode("utf-8")
    recs = tmp_path / "in" / "recs.json"
    recs.parent.mkdir()
    structure = json.dumps(rocksalt().as_dict())
    recs.write_text('[{"material_id": "mp-\\ud800", "structure": ' + structure + "}]")
    res = CliRunner().invoke(app, ["screen", QUICKSTART, str(recs.parent), "--out", str(tmp_path / "out"),
                                   "--report", "none"])
    assert res.exit_code == 0, res.output
    assert "mp-\\ud800" in (tmp_path / "out" / "predictions.csv").read_text(encoding="utf-8")
