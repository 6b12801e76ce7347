"""The chgnet adapter against CHGNet's own predictions (bundled 0.3.0 weights) and its HVP against finite
differences. Skipped when the chgnet extra is not installed."""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("chgnet")

from adapter_checks import (  # noqa: E402
    hvp_vs_finite_differences,
    load_adapter,
    relative_error,
    sample_predictions,
    small_entries,
)

from traits.models.base import get_adapter  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def loaded():
    return load_adapter("chgnet", CPU)


def test_chgnet_agrees_with_chgnet_predict_structure(loaded):
    adapter, model = loaded
    entries, ids, preds = sample_predictions(adapter, model, 10, CPU)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = [float(model.chgnet.predict_structure(e.structure(), task="e")["e"]) for e in entries]
    assert ids == [e.id for e in entries]
    assert relative_error(preds, ref) <= 1e-5


def test_chgnet_info_and_probe_parameters(loaded):
    adapter, model = loaded
    info = adapter.info(model, None, adapter.Options())
    assert info.property == "energy_per_atom" and info.units == "eV/atom"
    assert "MPtrj" in info.training_data and info.package_version
    names = adapter.probe_parameters(model)
    # CHGNet freezes its AtomRef (composition model); the adapter probes it all the same
    assert "chgnet.composition_model.fc.weight" in names
    assert len(names) == len(list(model.named_parameters()))


def test_chgnet_hvp_matches_finite_differences():
    adapter = get_adapter("chgnet")
    model = adapter.load(None, adapter.Options(), CPU)
    err, norm = hvp_vs_finite_differences(adapter, model, small_entries(1, max_atoms=4))
    assert norm > 0 and err < 1e-5, (err, norm)


def test_chgnet_unknown_version_is_a_spec_error():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        get_adapter("chgnet").Options(version="9.9")
