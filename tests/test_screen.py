"""`traits screen` on the bundled checkpoint and sample: outputs, calibration, skipped and NaN handling."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from traits.cli import app
from traits.data.sources import sample_path
from traits.errors import DataError
from traits.screen import CSV_COLUMNS, calibration_path, load_calibration, score, screen

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "traits" / "data" / "quickstart" / "model.safetensors"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """12 sample records without labels (JSON), one CIF, one POSCAR and one unreadable file."""
    from pymatgen.core import Structure

    d = tmp_path_factory.mktemp("screen-inputs")
    with gzip.open(sample_path(), "rt", encoding="utf-8") as fh:
        recs = [json.loads(next(fh)) for _ in range(12)]
    for r in recs:
        r.pop("formation_energy_per_atom", None)
        r.pop("band_gap", None)
    (d / "new.json").write_text(json.dumps(recs), encoding="utf-8")
    s = Structure.from_str(recs[0]["cif"], fmt="cif")
    s.to(filename=str(d / "POSCAR"))
    s.to(filename=str(d / "one.cif"))
    (d / "broken.cif").write_text("not a crystal", encoding="utf-8")
    return d


def test_screen_writes_predictions_summary_and_report_with_the_stored_calibration(inputs, tmp_path):
    files = [inputs / "new.json", inputs / "POSCAR", inputs / "one.cif", inputs / "broken.cif"]
    res = screen(CKPT, files, tmp_path, formats=("html",))
    assert res.calibrated and res.n_read == 15 and res.n_screened == 14
    assert res.skipped == {"unreadable structure file": 1}
    rows = list(csv.DictReader((tmp_path / "predictions.csv").open(encoding="utf-8")))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 14
    assert all(r["knn_distance"] and r["last_layer_sigma"] and r["flag"] in ("ok", "high") for r in rows)
    doc = json.loads((tmp_path / "predictions.json").read_text(encoding="utf-8"))
    assert doc["calibrated"] and doc["id_reference"]["last_layer_std"]["median"] > 0
    # the CIF and the POSCAR hold the first record's structure: the same prediction
    by_source = {r["source"]: float(r["prediction"]) for r in rows}
    assert by_source["one.cif"] == pytest.approx(by_source["POSCAR"], rel=1e-5)
    assert by_source["one.cif"] == pytest.approx(float(rows[0]["prediction"]), rel=1e-5)
    elements = {g["name"]: g for g in doc["by_element"]}
    assert sum(g["count"] for g in doc["by_chemsys"]) == 14
    assert all(g["flag"] in ("ok", "check") for g in elements.values())
    html = (tmp_path / "screen.html").read_text(encoding="utf-8")
    assert "CALIBRATED" in html and "Which chemistries to trust" in html and "data:image/svg+xml" in html


def test_a_checkpoint_without_calibration_gives_uncalibrated_scores_and_says_so(inputs, tmp_path):
    ck = tmp_path / "m" / "model.safetensors"
    ck.parent.mkdir()
    shutil.copy(CKPT, ck)
    shutil.copy(CKPT.with_suffix(".json"), ck.with_suffix(".json"))
    assert not calibration_path(ck).exists()
    res = screen(ck, [inputs / "new.json"], tmp_path / "out", formats=("html",))
    assert not res.calibrated
    doc = res.document
    assert "no calibration" in doc["calibration_note"]
    assert all(r["knn_distance"] is None and r["last_layer_sigma"] is None for r in doc["compounds"])
    assert "UNCALIBRATED" in (tmp_path / "out" / "screen.html").read_text(encoding="utf-8")


def test_nan_predictions_are_flagged_and_never_written_as_numbers(inputs, tmp_path):
    from traits.data.graphs import build_graphs
    from traits.models.checkpoint import load_checkpoint
    from traits.screen import _csv, read_inputs
    from traits.spec import GraphSpec

    model, meta = load_checkpoint(CKPT, device=torch.device("cpu"))
    with torch.no_grad():
        model.fc_out.bias.fill_(float("nan"))
    graphs = build_graphs(read_inputs([inputs / "new.json"]).entries[:3], GraphSpec(**meta["graph"])).graphs
    sc = score(model, graphs, torch.device("cpu"), load_calibration(calibration_path(CKPT)))
    assert sc.flag == ["nan"] * 3 and np.isnan(sc.prediction).all()
    text = _csv([{c: None for c in CSV_COLUMNS} | {"id": "x", "flag": "nan"}])
    assert "nan" not in text.lower().replace(",nan", "")  # only the flag says nan


def test_a_file_that_is_not_a_calibration_is_bad_input(tmp_path):
    bad = tmp_path / "x.calibration.json"
    bad.write_text(json.dumps({"version": 1}), encoding="utf-8")
    with pytest.raises(DataError, match="not a TRAITS calibration file"):
        load_calibration(bad)


def test_cli_screen_exits_0_and_2(inputs, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["screen", str(CKPT), str(inputs / "one.cif"), "--out", str(tmp_path / "a"),
                             "--report", "none"])
    assert ok.exit_code == 0, ok.output
    assert "screened 1 of 1" in ok.output and (tmp_path / "a" / "predictions.csv").is_file()
    missing = runner.invoke(app, ["screen", str(CKPT), str(tmp_path / "nope.cif"), "--out", str(tmp_path / "b")])
    assert missing.exit_code == 2 and "no such file" in missing.output


def test_p1_cifs_are_read_from_their_numbers_and_give_pymatgens_graphs(tmp_path, monkeypatch):
    """A screen reads CIFs in pymatgen's P1 layout (Materials Project files, as files or inside MP JSON) with the
    fast reader, never through pymatgen's parser, and their graphs equal those of the pymatgen parse; another CIF
    still goes through pymatgen."""
    from pymatgen.core import Lattice, Structure

    from traits.data.graphs import build_graphs
    from traits.data.sources import Entry, read_mp
    from traits.screen import read_inputs
    from traits.spec import GraphSpec

    records = read_mp(sample_path(), "formation_energy_per_atom").entries[:6]
    for e in records[:3]:
        (tmp_path / f"{e.id}.cif").write_text(e.payload)
    (tmp_path / "mp.json").write_text(json.dumps([{"material_id": e.id, "cif": e.payload} for e in records[3:]]))
    odd = Structure(Lattice.cubic(4.1), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    (tmp_path / "odd.cif").write_text(odd.to(fmt="cif", symprec=0.1))  # symmetrised: not the P1 layout

    parsed: list[str] = []
    real = Structure.from_str

    def counting(text, fmt, *a, **k):
        parsed.append(fmt)
        return real(text, fmt, *a, **k)

    monkeypatch.setattr(Structure, "from_str", staticmethod(counting))
    got = read_inputs([tmp_path])
    built = build_graphs(got.entries, GraphSpec())
    assert len(got.entries) == 7 and not got.skipped
    assert parsed == ["cif"], parsed  # odd.cif alone, read once by pymatgen (its graph reuses that parse)
    fast = {e.id for e in got.entries if type(e) is Entry}
    assert fast == {f"{e.id}.cif" for e in records[:3]} | {e.id for e in records[3:]}
    monkeypatch.setattr(Structure, "from_str", real)
    for entry, graph in zip(got.entries, built.graphs):
        reference = build_graphs([Entry(entry.id, float("nan"), json.dumps(entry.structure().as_dict()),
                                        "pymatgen-dict")], GraphSpec()).graphs[0]
        assert torch.equal(graph.edge_index, reference.edge_index) and torch.equal(graph.x, reference.x)
        assert torch.equal(graph.edge_attr, reference.edge_attr)
