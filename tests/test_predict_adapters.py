"""`traits predict --model chgnet | sevenn` prints what the model itself predicts (CHGNet's predict_structure,
SevenNet's ASE calculator), through the adapter seam; bad input to the new options is exit 2 naming the option or
file; the CGCNN checkpoints predict as before. Skipped per adapter when its extra is not installed."""

from __future__ import annotations

import csv
import io
import math
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from traits.cli import app
from traits.data.sources import read_mp, sample_path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "traits" / "data" / "quickstart" / "model.safetensors"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def rows_of(res) -> dict[str, tuple[float, str]]:
    assert res.exit_code == 0, res.output
    lines = list(csv.reader(io.StringIO(res.stdout)))
    assert lines[0] == ["id", "prediction", "unit"], res.stdout
    return {ident: (float(value), unit) for ident, value, unit in lines[1:]}


@pytest.fixture(scope="module")
def cifs(tmp_path_factory) -> list[Path]:
    """Three small sample structures written as CIF files (the reference reads the same files)."""
    folder = tmp_path_factory.mktemp("cifs")
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for entry in read_mp(sample_path(), "formation_energy_per_atom", kind="sample").entries:
            structure = entry.structure()
            if len(structure) <= 8 and len(structure.composition.elements) >= 2:
                path = folder / f"{entry.id}.cif"
                structure.to(filename=str(path))
                out.append(path)
            if len(out) == 3:
                break
    return out


def read_structure(path: Path):
    from pymatgen.core import Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_file(str(path))


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


# ---------------------------------------------------------------------------------------------- CHGNet
def chgnet_reference(version: str, files: list[Path]) -> list[float]:
    from chgnet.model import CHGNet

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = CHGNet.load(model_name=version, use_device="cpu", verbose=False)
        return [float(model.predict_structure(read_structure(f), task="e")["e"]) for f in files]


def test_predict_model_chgnet_is_chgnet_predict_structure(cifs):
    pytest.importorskip("chgnet")
    got = rows_of(invoke("predict", "--model", "chgnet", "--device", "cpu", *cifs))
    assert list(got) == [str(f) for f in cifs]
    assert {unit for _, unit in got.values()} == {"eV/atom"}
    for f, want in zip(cifs, chgnet_reference("0.3.0", cifs)):
        assert relative(got[str(f)][0], want) <= 1e-4, (f, got[str(f)], want)
        assert -15 < want < 0  # an energy per atom, not a formation energy or a total energy


def test_predict_chgnet_options_pick_the_bundled_version(cifs):
    pytest.importorskip("chgnet")
    got = rows_of(invoke("predict", "--model", "chgnet", "--options", '{"version": "0.2.0"}', "--device", "cpu",
                         cifs[0]))
    want = chgnet_reference("0.2.0", cifs[:1])[0]
    assert relative(got[str(cifs[0])][0], want) <= 1e-4
    assert relative(got[str(cifs[0])][0], chgnet_reference("0.3.0", cifs[:1])[0]) > 1e-4  # another model


def test_predict_chgnet_from_a_checkpoint_file_equals_the_bundled_weights(cifs):
    pytest.importorskip("chgnet")
    from traits.models.chgnet import bundled_weights

    path = bundled_weights("0.3.0")
    assert path is not None and path.is_file()
    from_file = rows_of(invoke("predict", "--model", "chgnet", "--checkpoint", path, "--device", "cpu", *cifs))
    bundled = rows_of(invoke("predict", "--model", "chgnet", "--device", "cpu", *cifs))
    named = rows_of(invoke("predict", "--model", "chgnet", "--checkpoint", "bundled", "--device", "cpu", *cifs))
    for key in bundled:
        assert relative(from_file[key][0], bundled[key][0]) <= 1e-6
        assert named[key] == bundled[key]


# ---------------------------------------------------------------------------------------------- SevenNet
def test_predict_model_sevenn_is_the_sevennet_calculator(cifs):
    pytest.importorskip("sevenn")
    from pymatgen.io.ase import AseAtomsAdaptor
    from sevenn.calculator import SevenNetCalculator

    got = rows_of(invoke("predict", "--model", "sevenn", "--device", "cpu", *cifs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calc = SevenNetCalculator("7net-0", device="cpu")
        for f in cifs:
            atoms = AseAtomsAdaptor.get_atoms(read_structure(f))
            atoms.calc = calc
            want = float(atoms.get_potential_energy()) / len(atoms)
            assert relative(got[str(f)][0], want) <= 1e-4, (f, got[str(f)], want)
            assert got[str(f)][1] == "eV/atom"


# ---------------------------------------------------------------------------------------------- CGCNN, errors
def test_predict_with_model_cgcnn_is_the_checkpoint_path(cifs):
    plain = rows_of(invoke("predict", "--checkpoint", QUICKSTART, "--device", "cpu", *cifs))
    named = rows_of(invoke("predict", "--model", "cgcnn", "--checkpoint", QUICKSTART, "--device", "cpu", *cifs))
    assert named == plain and all(math.isfinite(v) and u == "eV/atom" for v, u in plain.values())


@pytest.mark.parametrize(("args", "words"), [
    ((), ["--checkpoint", "--model"]),
    (("--model", "no-such-adapter"), ["no-such-adapter", "chgnet"]),
    (("--model", "cgcnn"), ["--checkpoint"]),
    (("--model", "cgcnn", "--checkpoint", QUICKSTART, "--options", "{}"), ["--options", "--hyper"]),
    (("--options", "{}", "--checkpoint", QUICKSTART), ["--options", "--model"]),
    (("--model", "cgcnn", "--architecture", "cgcnn", "--checkpoint", QUICKSTART), ["--architecture"]),
])
def test_predict_refuses_incomplete_or_contradictory_model_options(tmp_path, args, words):
    res = invoke("predict", *args, "--device", "cpu", tmp_path / "x.cif")
    assert res.exit_code == 2, res.output
    for word in words:
        assert word in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize(("args", "words"), [
    (("--options", '{"versio": "0.3.0"}'), ["--options.versio", "chgnet"]),
    (("--options", '{"version": "9.9.9"}'), ["--options.version"]),
    (("--options", "[1, 2]"), ["--options", "JSON object"]),
    (("--options", "{nope"), ["--options", "not a JSON object"]),
    (("--hyper", "n_conv=2"), ["--hyper", "chgnet"]),
    (("--format", "traits"), ["--format", "chgnet"]),
    (("--checkpoint", "missing-weights.pth.tar"), ["missing-weights.pth.tar"]),
])
def test_predict_chgnet_bad_settings_are_bad_input(cifs, args, words):
    pytest.importorskip("chgnet")
    res = invoke("predict", "--model", "chgnet", *args, "--device", "cpu", cifs[0])
    assert res.exit_code == 2, res.output
    for word in words:
        assert word in res.output
    assert "Traceback" not in res.output


def test_predict_chgnet_on_an_unreadable_or_unfeaturisable_file_names_it(tmp_path, cifs):
    pytest.importorskip("chgnet")
    junk = tmp_path / "junk.cif"
    junk.write_text("this is not a crystal\n")
    res = invoke("predict", "--model", "chgnet", "--device", "cpu", cifs[0], junk)
    assert res.exit_code == 2 and "junk.cif" in res.output, res.output
    lone = tmp_path / "isolated.cif"  # one atom per 50 Å cell: no neighbour within CHGNet's cutoff
    from pymatgen.core import Lattice, Structure

    Structure(Lattice.cubic(50.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(lone))
    res = invoke("predict", "--model", "chgnet", "--device", "cpu", lone)
    assert res.exit_code == 2 and "isolated.cif" in res.output, res.output
    assert "Traceback" not in res.output
