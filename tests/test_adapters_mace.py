"""The mace adapter against MACE's own ASE calculator on a randomly initialised ScaleShiftMACE, its HVP against
finite differences, and the refusals (pickled model files, foundation models that would download, configs naming
classes outside MACE's tables). Skipped when mace-torch is not installed: mace-torch pins e3nn 0.4.4, which sevenn
cannot use, so `.ci/run` runs this file in a second environment."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("mace")

from adapter_checks import hvp_vs_finite_differences, relative_error, sample_predictions, small_entries  # noqa: E402

from traits.errors import CheckpointError  # noqa: E402
from traits.models.base import get_adapter  # noqa: E402

CPU = torch.device("cpu")


def tiny_mace(seed: int = 0):
    """A small ScaleShiftMACE for every element up to Pu, random weights (float64)."""
    from traits.models.mace import _import_mace

    modules = _import_mace()[0]
    from e3nn import o3

    torch.manual_seed(seed)
    zs = list(range(1, 95))
    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    model = modules.ScaleShiftMACE(
        r_max=5.0, num_bessel=4, num_polynomial_cutoff=5, max_ell=2, interaction_cls=block,
        interaction_cls_first=block, num_interactions=2, num_elements=len(zs),
        hidden_irreps=o3.Irreps("8x0e+8x1o"), MLP_irreps=o3.Irreps("8x0e"),
        atomic_energies=np.random.default_rng(seed).normal(size=len(zs)), avg_num_neighbors=20.0,
        atomic_numbers=zs, correlation=2, gate=torch.nn.functional.silu, atomic_inter_scale=1.3,
        atomic_inter_shift=0.1, radial_MLP=[16, 16])
    return model.double()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from traits.models.mace import export

    root = tmp_path_factory.mktemp("mace")
    model = tiny_mace()
    folder = export(model, root / "tiny", training_data="none (random weights)")
    pickled = root / "tiny.model"
    torch.save(model, pickled)  # MACE's own format, read below only by MACE's own calculator
    return model, folder, pickled


def test_mace_agrees_with_mace_calculator(exported):
    from mace.calculators import MACECalculator
    from pymatgen.io.ase import AseAtomsAdaptor

    _, folder, pickled = exported
    adapter = get_adapter("mace")
    model = adapter.load(folder, adapter.Options(), CPU)
    entries, ids, preds = sample_predictions(adapter, model, 10, CPU)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calc = MACECalculator(model_paths=str(pickled), device="cpu", default_dtype="float64")
        ref = []
        for e in entries:
            atoms = AseAtomsAdaptor.get_atoms(e.structure())
            atoms.calc = calc
            ref.append(atoms.get_potential_energy() / len(atoms))
    assert np.std(ref) > 0
    assert relative_error(preds, ref) <= 1e-5


def test_mace_info_and_property(exported):
    _, folder, _ = exported
    adapter = get_adapter("mace")
    model = adapter.load(folder, adapter.Options(), CPU)
    info = adapter.info(model, folder, adapter.Options())
    assert info.property == "energy_per_atom" and info.units == "eV/atom"
    assert info.training_data == "none (random weights)" and info.dtype == "float64"
    assert info.weights_sha256 and len(info.weights_sha256) == 64


def test_mace_hvp_matches_finite_differences(exported):
    _, folder, _ = exported
    adapter = get_adapter("mace")
    model = adapter.load(folder, adapter.Options(), CPU)
    err, norm = hvp_vs_finite_differences(adapter, model, small_entries(2, max_atoms=4))
    assert norm > 0 and err < 1e-5, (err, norm)


def test_mace_pickled_model_file_is_refused_not_unpickled(exported, tmp_path):
    _, _, pickled = exported
    with pytest.raises(CheckpointError, match="run code"):
        get_adapter("mace").load(pickled, None, CPU)


def test_mace_foundation_model_name_says_what_to_download():
    with pytest.raises(CheckpointError, match=r"never downloads.*https://"):
        get_adapter("mace").load("medium-mpa-0", None, CPU)


def test_mace_config_naming_a_foreign_class_is_refused(exported, tmp_path):
    import shutil

    _, folder, _ = exported
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    body = json.loads((bad / "mace-config.json").read_text())
    body["config"]["interaction_cls"] = "os.system"
    (bad / "mace-config.json").write_text(json.dumps(body))
    with pytest.raises(CheckpointError, match="not one of MACE's"):
        get_adapter("mace").load(bad, None, CPU)


def test_mace_import_leaves_weights_only_loading_on(tmp_path, monkeypatch):
    """mace sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 when imported: after the adapter's import (in a fresh process)
    the variable is gone, and even where it is set (mace.calculators imported by a user) a checkpoint naming a
    foreign global is still refused, because TRAITS passes weights_only=True explicitly."""
    import subprocess
    import sys

    from traits.models.weights import safe_torch_load

    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    code = ("import os; from traits.models.mace import _import_mace; _import_mace(); "
            "print(repr(os.environ.get('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD')))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "None"

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path = tmp_path / "evil.pt"
    torch.save({"w": Evil()}, path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointError, match="refused"):
        safe_torch_load(path)
    assert not marker.exists()


def test_mace_export_file_round_trip(exported, tmp_path):
    from traits.models.mace import export_file

    model, _, pickled = exported
    folder = export_file(pickled, tmp_path / "again")
    adapter = get_adapter("mace")
    loaded = adapter.load(folder, None, CPU)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.mace.state_dict().items()):
        assert torch.equal(a, b), name


def test_mace_label_free_audit_from_a_spec_naming_the_model_folder(exported, tmp_path):
    """A label-free audit of a MACE folder, from a spec file (the folder is accepted as model.checkpoint), end to
    end with small probe budgets: the Hessian at θ is the Gauss-Newton matrix."""
    import math

    from adapter_checks import audit_from_spec_file

    _, folder, _ = exported
    result = audit_from_spec_file(tmp_path, "mace", folder, "model", ["O"], 120, 12)
    assert result.mode == "label-free" and result.model_info["adapter"] == "mace"
    for split in ("id", "ood"):
        top = result.hessian[split].top_eigenvalues[0]
        assert math.isfinite(top) and top > 0
    assert any(f.id == "training_data" and "random weights" in f.statement for f in result.findings)


def test_mace_export_command_writes_the_folder(exported, tmp_path):
    from typer.testing import CliRunner

    from traits.cli import app

    _, _, pickled = exported
    res = CliRunner().invoke(app, ["export-mace", str(pickled), str(tmp_path / "cli"), "--training-data", "x"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cli" / "weights.safetensors").is_file()
    assert json.loads((tmp_path / "cli" / "mace-config.json").read_text())["training_data"] == "x"
    res = CliRunner().invoke(app, ["export-mace", str(tmp_path / "missing.model"), str(tmp_path / "cli2")])
    assert res.exit_code == 2 and not (tmp_path / "cli2").exists()
