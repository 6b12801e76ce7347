"""Training: outputs, determinism, bit-identical resume, refusing foreign resume states, early stopping,
divergence and degenerate targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_models import graph_cache

from traits.errors import CheckpointError, TraitsError
from traits.models import load_checkpoint
from traits.train import STATE_FILE, train_model

CPU = torch.device("cpu")


def make_spec(seed=3, target="formation_energy_per_atom", architecture="cgcnn", **train):
    from traits.spec import spec_from_mapping

    settings = {"epochs": 4, "batch_size": 16, "lr": 0.01, "patience": 10, **train}
    return spec_from_mapping({
        "name": "train-test", "seed": seed, "omit": ["O"],
        "data": {"source": "sample", "target": target, "subsample": 100},
        "model": {"architecture": architecture, "hyper": {"atom_fea_len": 12, "n_conv": 2, "h_fea_len": 12},
                  "train": settings},
    })


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return graph_cache(tmp_path_factory)


@pytest.fixture(scope="module")
def data(cache):
    from traits.data.prepare import prepare_data

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRAITS_CACHE", cache)
        return prepare_data(make_spec())


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """An uninterrupted 4-epoch run."""
    out = tmp_path_factory.mktemp("straight")
    return out, train_model(make_spec(), data, out, device=CPU, progress=False)


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_training_writes_checkpoint_metrics_and_manifest(straight, data):
    out, result = straight
    assert result.completed and result.epochs_run == 4 and len(result.history) == 4
    assert set(result.metrics) == {"train", "val", "id", "ood"}
    for split, m in result.metrics.items():
        assert m["n"] == len(data.splits[split]) and m["mae"] >= 0 and set(m) == {"mae", "rmse", "r2", "n"}
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    for name in ("model.safetensors", "model.json", "metrics.json", "split_manifest.json", STATE_FILE):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["splits"]["val"]["mae"] == pytest.approx(result.metrics["val"]["mae"])
    assert json.loads((out / "split_manifest.json").read_text())["manifest_hash"] == data.manifest.hash
    sidecar = json.loads((out / "model.json").read_text())
    assert result.metadata == {**sidecar, "format": "traits"}
    assert sidecar["manifest_hash"] == data.manifest.hash and sidecar["seed"] == 3 and sidecar["omit"] == ["O"]
    train_y = torch.cat([g.y for g in data.splits["train"]]).double()
    assert sidecar["target_mean"] == pytest.approx(float(train_y.mean()), rel=1e-5)
    assert sidecar["target_std"] == pytest.approx(float(train_y.std(correction=0)), rel=1e-5)
    # The best epoch's weights are the ones kept: validation MAE equals the best in the history.
    assert result.metrics["val"]["mae"] == pytest.approx(min(h["val_mae"] for h in result.history), rel=1e-6)
    # The written checkpoint reproduces the returned model.
    from traits.models import predict

    loaded, meta = load_checkpoint(result.checkpoint, target="formation_energy_per_atom", graph=make_spec().data.graph,
                                   device=CPU)
    assert same_weights(loaded, result.model)
    _, p, _ = predict(loaded, data.splits["id"], CPU)
    _, q, _ = predict(result.model, data.splits["id"], CPU)
    assert (p == q).all()


def test_state_file_loads_with_weights_only(straight):
    out, _ = straight
    state = torch.load(out / STATE_FILE, map_location="cpu", weights_only=True)
    assert state["epoch"] == 4 and len(state["history"]) == 4


def test_same_spec_same_numbers(straight, data, tmp_path):
    _, first = straight
    again = train_model(make_spec(), data, tmp_path, device=CPU, progress=False)
    assert same_weights(first.model, again.model)
    assert again.history == first.history
    other = train_model(make_spec(seed=4), data, tmp_path / "other", device=CPU, progress=False)
    assert not same_weights(first.model, other.model)


def test_global_rng_is_not_used(data, tmp_path, straight):
    _, first = straight
    torch.manual_seed(12345)
    before = torch.random.get_rng_state()
    again = train_model(make_spec(), data, tmp_path, device=CPU, progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert same_weights(first.model, again.model)


@pytest.mark.parametrize("scheduler,optimizer", [("cosine", "adamw"), ("plateau", "sgd")])
def test_interrupted_and_resumed_run_is_bit_identical(data, tmp_path, scheduler, optimizer, straight):
    """Resume design: ``stop_after_epoch=2`` ends the run like an interruption; ``resume=True`` continues."""
    spec = make_spec(scheduler=scheduler, optimizer=optimizer, checkpoint_every=2)
    if (scheduler, optimizer) == ("cosine", "adamw"):
        reference = straight[1]
    else:
        reference = train_model(spec, data, tmp_path / "straight", device=CPU, progress=False)
    out = tmp_path / "interrupted"
    partial = train_model(spec, data, out, device=CPU, stop_after_epoch=2, progress=False)
    assert not partial.completed and partial.epochs_run == 2 and partial.checkpoint is None
    assert not (out / "model.safetensors").exists()
    resumed = train_model(spec, data, out, device=CPU, resume=True, progress=False)
    assert resumed.resumed and resumed.completed and resumed.epochs_run == 4
    assert resumed.history == reference.history
    assert same_weights(resumed.model, reference.model)
    assert resumed.metrics == reference.metrics
    # Resuming a finished run changes nothing.
    again = train_model(spec, data, out, device=CPU, resume=True, progress=False)
    assert same_weights(again.model, reference.model) and again.history == reference.history


def test_resume_state_from_another_spec_is_refused(data, straight, cache, monkeypatch, tmp_path):
    out, _ = straight
    monkeypatch.setenv("TRAITS_CACHE", cache)
    with pytest.raises(CheckpointError, match="different spec or data .*seed"):
        train_model(make_spec(seed=9), data, out, device=CPU, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="architecture"):
        train_model(make_spec(architecture="cgcnn-original"), data, out, device=CPU, resume=True, progress=False)
    from traits.data.prepare import prepare_data

    band_gap = prepare_data(make_spec(target="band_gap"))
    with pytest.raises(CheckpointError, match="target"):
        train_model(make_spec(target="band_gap"), band_gap, out, device=CPU, resume=True, progress=False)
    other = prepare_data(make_spec(seed=5))  # other subsample and split: other data
    with pytest.raises(CheckpointError, match="split_manifest"):
        train_model(make_spec(), other, out, device=CPU, resume=True, progress=False)


def test_early_stopping_restores_the_best_epoch(data, tmp_path):
    result = train_model(make_spec(epochs=30, patience=2, lr=0.05), data, tmp_path, device=CPU, progress=False)
    vals = [h["val_mae"] for h in result.history]
    assert result.stopped_early and result.epochs_run < 30
    best = min(range(len(vals)), key=vals.__getitem__)
    assert result.best_epoch == best + 1 and result.epochs_run == result.best_epoch + 2
    assert result.metrics["val"]["mae"] == pytest.approx(vals[best], rel=1e-6)


def test_divergence_stops_with_a_learning_rate_hint(data, tmp_path):
    with pytest.raises(TraitsError, match="learning rate"):
        train_model(make_spec(lr=100.0, optimizer="sgd", scheduler="none"), data, tmp_path, device=CPU,
                    progress=False)
    assert not (tmp_path / "model.safetensors").exists()


def test_constant_targets_are_refused(data, tmp_path):
    from dataclasses import replace

    flat = [g.clone() for g in data.splits["train"]]
    for g in flat:
        g.y = torch.tensor([1.5])
    with pytest.raises(TraitsError, match="std 0"):
        train_model(make_spec(), replace(data, splits={**data.splits, "train": flat}), tmp_path, device=CPU,
                    progress=False)


def test_progress_bar_and_original_architecture(data, tmp_path, capsys):
    result = train_model(make_spec(architecture="cgcnn-original", epochs=1), data, tmp_path, device=CPU,
                         progress=True)
    assert result.completed and result.model.architecture == "cgcnn-original"
    assert "training" in capsys.readouterr().out
    model, meta = load_checkpoint(Path(result.checkpoint), architecture="cgcnn-original", device=CPU)
    assert meta["architecture"] == "cgcnn-original"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_training_on_cuda_agrees_with_cpu(data, tmp_path, straight):
    cuda = torch.device("cuda")
    result = train_model(make_spec(), data, tmp_path, device=cuda, progress=False)
    assert next(result.model.parameters()).device.type == "cuda"
    cpu_mae = straight[1].metrics["id"]["mae"]
    # Same init and shuffling; only floating-point summation order differs on the GPU.
    assert result.metrics["id"]["mae"] == pytest.approx(cpu_mae, rel=0.05)
    loaded, _ = load_checkpoint(result.checkpoint, device=cuda)
    assert same_weights(loaded.cpu(), result.model.cpu())
