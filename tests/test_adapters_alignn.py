"""The alignn adapter against alignn's own single-structure prediction path (``get_prediction_pure``: alignn's loader,
graph builder and forward) on a randomly initialised DGL-free ALIGNN, its HVP against finite differences, and its
refusals. Skipped when the alignn extra is not installed."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("alignn")

from adapter_checks import hvp_vs_finite_differences, relative_error, sample_predictions, small_entries  # noqa: E402

from traits.errors import CheckpointError  # noqa: E402
from traits.models.base import get_adapter  # noqa: E402

CPU = torch.device("cpu")


def write_alignn_folder(folder, seed: int = 0, force_field: bool = False, target="formation_energy_peratom"):
    """A folder as alignn writes one (config.json + best_model.pt, a state dict) for a small random ALIGNN."""
    from alignn.models.alignn_atomwise_pure import ALIGNNAtomWisePure, ALIGNNAtomWisePureConfig

    torch.manual_seed(seed)
    model_cfg = {"name": "alignn_atomwise_pure", "alignn_layers": 1, "gcn_layers": 1, "atom_input_features": 92,
                 "hidden_features": 16, "embedding_features": 16}
    if not force_field:
        model_cfg.update(calculate_gradient=False, gradwise_weight=0)
    model = ALIGNNAtomWisePure(ALIGNNAtomWisePureConfig(**model_cfg))
    with torch.no_grad():  # a non-trivial readout bias and scale, so predictions differ between structures
        model.fc.bias.fill_(-0.7)
        model.fc.weight.mul_(3.0)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"version": "test", "dataset": "dft_3d", "target": target, "cutoff": 8.0, "max_neighbors": 12,
              "atom_features": "cgcnn", "model": model_cfg}
    (folder / "config.json").write_text(json.dumps(config))
    torch.save(model.state_dict(), folder / "best_model.pt")
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_alignn_folder(tmp_path_factory.mktemp("alignn") / "model")


def reference_predictions(folder, entries):
    """alignn's own path, one structure at a time (its loader reads the test's own file)."""
    from alignn.deprecated.pretrained import get_prediction_pure
    from jarvis.core.atoms import Atoms

    out = []
    for e in entries:
        s = e.structure()
        atoms = Atoms(lattice_mat=s.lattice.matrix, coords=s.frac_coords,
                      elements=[site.specie.symbol for site in s], cartesian=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.append(get_prediction_pure(model_name=str(folder), atoms=atoms)[0])
    return out


def test_alignn_agrees_with_alignn_own_prediction(folder, capsys):
    adapter = get_adapter("alignn")
    model = adapter.load(folder, adapter.Options(), CPU)
    entries, ids, preds = sample_predictions(adapter, model, 10, CPU)
    ref = reference_predictions(folder, entries)
    assert np.std(ref) > 0
    assert relative_error(preds, ref) <= 1e-5


def test_alignn_force_field_energy_agrees(tmp_path):
    """A force-field ALIGNN (calculate_gradient on in its config) is still called without force autograd; its
    per-atom energy matches alignn's own, which computes forces."""
    ff = write_alignn_folder(tmp_path / "ff", seed=1, force_field=True, target="energy_per_atom")
    adapter = get_adapter("alignn")
    model = adapter.load(ff, adapter.Options(), CPU)
    entries, ids, preds = sample_predictions(adapter, model, 10, CPU)
    assert relative_error(preds, reference_predictions(ff, entries)) <= 1e-5


def test_alignn_property_and_provenance_come_from_config(folder):
    adapter = get_adapter("alignn")
    model = adapter.load(folder, adapter.Options(), CPU)
    info = adapter.info(model, folder, adapter.Options())
    assert info.property == "formation_energy_per_atom" and info.units == "eV/atom"
    assert info.training_data.startswith("JARVIS-DFT 3D")
    assert info.weights.endswith("best_model.pt") and len(info.weights_sha256) == 64


def test_alignn_hvp_matches_finite_differences(folder):
    adapter = get_adapter("alignn")
    model = adapter.load(folder, adapter.Options(), CPU)
    err, norm = hvp_vs_finite_differences(adapter, model, small_entries(2, max_atoms=4), label_free=False)
    assert norm > 0 and err < 1e-5, (err, norm)


def test_alignn_embedding_is_the_readout_input(folder):
    adapter = get_adapter("alignn")
    model = adapter.load(folder, adapter.Options(), CPU)
    items, _ = adapter.featurise_entries(small_entries(3), adapter.Options())
    batch = adapter.collate(items, CPU, torch.float32)
    with torch.no_grad():
        emb = model.embed(batch)
        again = model.alignn.fc(emb).reshape(-1)
        assert torch.allclose(again, model(batch), atol=1e-6)
    assert emb.shape == (3, 16)


def test_alignn_refusals(folder, tmp_path):
    adapter = get_adapter("alignn")
    with pytest.raises(CheckpointError, match="never downloads"):
        adapter.load(None, adapter.Options(), CPU)
    lone = tmp_path / "lone"
    lone.mkdir()
    torch.save({}, lone / "best_model.pt")
    with pytest.raises(CheckpointError, match="no config.json"):
        adapter.load(lone, adapter.Options(), CPU)
    with pytest.raises(CheckpointError, match="trained on 'formation_energy_peratom'"):
        adapter.load(folder, adapter.Options(property="band_gap"), CPU)
    dgl = tmp_path / "dgl"
    write_alignn_folder(dgl)
    cfg = json.loads((dgl / "config.json").read_text())
    cfg["model"]["name"] = "alignn"
    (dgl / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="DGL"):
        adapter.load(dgl, adapter.Options(), CPU)


def test_alignn_pickled_code_in_weights_is_refused(folder, tmp_path):
    import os
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    torch.save({"w": Evil()}, bad / "best_model.pt")
    with pytest.raises(CheckpointError, match="refused"):
        get_adapter("alignn").load(bad, None, CPU)
    assert not marker.exists()


def test_alignn_audit_from_a_spec_naming_the_model_folder(folder, tmp_path):
    """A labelled formation-energy audit of an ALIGNN folder, from a spec file (the folder is accepted as
    model.checkpoint), end to end with small probe budgets."""
    from adapter_checks import audit_from_spec_file

    result = audit_from_spec_file(tmp_path, "alignn", folder, "formation_energy_per_atom", ["Fe"], 160, 16)
    assert result.mode != "label-free" and set(result.accuracy) >= {"id", "ood"}
    assert result.hessian["id"].top_eigenvalues and math.isfinite(result.hessian["ood"].top_eigenvalues[0])
    assert result.model_info["adapter"] == "alignn"
    assert any(f.id == "training_data" and "JARVIS" in f.statement for f in result.findings)
