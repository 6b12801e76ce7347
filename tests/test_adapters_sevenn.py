"""The sevenn adapter against SevenNet's own ASE calculator (SevenNet-0, shipped in the wheel) and its HVP against
finite differences. Skipped when the sevenn extra is not installed."""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("sevenn")

from adapter_checks import (  # noqa: E402
    hvp_vs_finite_differences,
    load_adapter,
    relative_error,
    sample_entries,
    sample_predictions,
    small_entries,
)

from traits.models.base import get_adapter  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def loaded():
    return load_adapter("sevenn", CPU)


def test_sevenn_agrees_with_sevennet_calculator(loaded):
    from pymatgen.io.ase import AseAtomsAdaptor
    from sevenn.calculator import SevenNetCalculator

    adapter, model = loaded
    entries, ids, preds = sample_predictions(adapter, model, 10, CPU)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calc = SevenNetCalculator("7net-0", device="cpu")  # the reference: SevenNet's own loader and forward
        ref = []
        for e in entries:
            atoms = AseAtomsAdaptor.get_atoms(e.structure())
            atoms.calc = calc
            ref.append(atoms.get_potential_energy() / len(atoms))
    assert relative_error(preds, ref) <= 1e-5


def test_sevenn_forward_leaves_the_batch_unchanged_and_has_no_force_output(loaded):
    adapter, model = loaded
    items, _ = adapter.featurise_entries(sample_entries(2), adapter.Options())
    batch = adapter.collate(items, CPU, torch.float32)
    keys = set(batch.payload.keys())
    with torch.no_grad():
        model(batch)
    assert set(batch.payload.keys()) == keys
    assert "force_output" not in model.sevennet._modules


def test_sevenn_info(loaded):
    adapter, model = loaded
    info = adapter.info(model, None, adapter.Options())
    assert info.property == "energy_per_atom" and "MPtrj" in info.training_data
    assert info.weights_sha256 and len(info.weights_sha256) == 64


def test_sevenn_hvp_matches_finite_differences():
    adapter = get_adapter("sevenn")
    model = adapter.load(None, adapter.Options(), CPU)
    err, norm = hvp_vs_finite_differences(adapter, model, small_entries(1, max_atoms=4))
    assert norm > 0 and err < 1e-5, (err, norm)


def test_sevenn_model_not_on_disk_names_the_file_to_download(monkeypatch):
    import sevenn.util

    from traits.errors import CheckpointError

    def no_file(name):
        raise FileNotFoundError(name)

    monkeypatch.setattr(sevenn.util, "pretrained_name_to_path", no_file)
    with pytest.raises(CheckpointError, match="never downloads"):
        get_adapter("sevenn").load(None, get_adapter("sevenn").Options(model="7net-omat"), CPU)
