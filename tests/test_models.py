"""Model interface: registry, physical-unit forward, embeddings, normalisation parameters, functional calls,
and the inference helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import prepare_sample
from torch.func import functional_call, vmap

from traits.errors import CheckpointError, DataError, SpecError
from traits.models import ARCHITECTURES, accuracy, architecture_of, build_model, embed, predict
from traits.models.cgcnn import CGCNN
from traits.models.cgcnn_original import CGCNNOriginal

CGCNN_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "cgcnn"
CPU = torch.device("cpu")
TINY = {"atom_fea_len": 8, "n_conv": 2, "h_fea_len": 6, "n_h": 2}


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    data = prepare_sample(tmp_path_factory, "models")
    return [g for split in data.splits.values() for g in split]


@pytest.fixture
def batch(graphs):
    from torch_geometric.data import Batch

    return Batch.from_data_list(graphs[:6])


def tiny(arch, **kw):
    torch.manual_seed(0)
    return build_model(arch, {**TINY, **kw}).eval()


def test_registry_builds_every_architecture_and_names_it():
    assert set(ARCHITECTURES) == {"cgcnn", "cgcnn-original"}
    assert isinstance(build_model("cgcnn", TINY), CGCNN)
    assert isinstance(build_model("cgcnn-original", TINY), CGCNNOriginal)
    for name in ARCHITECTURES:
        assert architecture_of(build_model(name, TINY)) == name


def test_registry_accepts_the_spec_hyper_model():
    from traits.spec import CGCNNHyper

    model = build_model("cgcnn", CGCNNHyper(atom_fea_len=4, n_conv=1, h_fea_len=5, pooling="max"))
    assert model.hyper["pooling"] == "max" and model.fcs[0].out_features == 5


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(CheckpointError, match="known architectures: cgcnn, cgcnn-original"):
        build_model("schnet", {})
    with pytest.raises(CheckpointError, match="unknown hyper-parameter"):
        build_model("cgcnn", {"atom_fea_len": 4, "n_layers": 3})
    with pytest.raises(CheckpointError):
        architecture_of(torch.nn.Linear(2, 2))


def test_original_rejects_settings_it_cannot_have():
    with pytest.raises(SpecError, match="mean pooling"):
        build_model("cgcnn-original", {**TINY, "pooling": "max"})
    with pytest.raises(SpecError, match="n_h"):
        build_model("cgcnn-original", {**TINY, "n_h": 0})


@pytest.mark.parametrize("arch", ["cgcnn", "cgcnn-original"])
def test_forward_is_physical_units_and_embed_is_the_head_input(arch, batch):
    model = tiny(arch)
    with torch.no_grad():
        raw = model(batch)
        model.set_target_normalizer(-1.5, 3.0)
        out = model(batch)
        emb = model.embed(batch)
        normalised = model.predict_normalized(batch)
    assert out.shape == (6,) and emb.shape == (6, TINY["h_fea_len"])
    torch.testing.assert_close(raw, normalised)
    torch.testing.assert_close(out, normalised * 3.0 - 1.5)
    torch.testing.assert_close(model.fc_out(emb).squeeze(-1), normalised)
    assert model.target_normalizer() == (-1.5, 3.0)


@pytest.mark.parametrize("arch", ["cgcnn", "cgcnn-original"])
def test_normaliser_is_a_non_persistent_buffer(arch):
    model = tiny(arch)
    model.set_target_normalizer(2.0, 0.5)
    buffers = dict(model.named_buffers())
    assert "target_mean" in buffers and "target_std" in buffers
    assert "target_mean" not in model.state_dict() and "target_std" not in model.state_dict()
    with pytest.raises(ValueError):
        model.set_target_normalizer(0.0, 0.0)


def test_normalization_parameter_names():
    names = tiny("cgcnn").normalization_parameter_names()
    assert names == {f"convs.{k}.bn.{p}" for k in range(2) for p in ("weight", "bias")}
    assert tiny("cgcnn", batch_norm=False).normalization_parameter_names() == set()
    original = tiny("cgcnn-original")
    names = original.normalization_parameter_names()
    assert names == {f"convs.{k}.{bn}.{p}" for k in range(2) for bn in ("bn1", "bn2") for p in ("weight", "bias")}
    assert names <= dict(original.named_parameters()).keys()


@pytest.mark.parametrize(
    "arch,pooling", [("cgcnn", "mean"), ("cgcnn", "sum"), ("cgcnn", "max"), ("cgcnn-original", "mean")]
)
def test_functional_call_vmaps_over_weight_sets(arch, pooling, batch):
    model = tiny(arch, pooling=pooling)
    model.set_target_normalizer(1.0, 2.0)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    stacked = {k: torch.stack([v, v * 1.05]) for k, v in params.items()}
    out = vmap(lambda p: functional_call(model, {**p, **buffers}, (batch,)))(stacked)
    with torch.no_grad():
        direct = model(batch)
    assert out.shape == (2, 6)
    torch.testing.assert_close(out[0], direct, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out[1], direct)


@pytest.mark.parametrize("arch,pooling", [("cgcnn", "mean"), ("cgcnn", "max"), ("cgcnn-original", "mean")])
def test_eval_predictions_do_not_depend_on_batching(arch, pooling, graphs):
    model = tiny(arch, pooling=pooling)
    _, one, _ = predict(model, graphs, CPU, batch_size=1)
    _, many, _ = predict(model, graphs, CPU, batch_size=64)
    np.testing.assert_allclose(one, many, rtol=1e-5, atol=1e-5)


def test_predictions_do_not_depend_on_atom_order(graphs):
    from torch_geometric.data import Batch, Data

    g = max(graphs, key=lambda d: d.num_nodes)
    perm = torch.randperm(g.num_nodes, generator=torch.Generator().manual_seed(1))
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(g.num_nodes)
    shuffled = Data(x=g.x[perm], edge_index=inverse[g.edge_index], edge_attr=g.edge_attr, y=g.y,
                    num_nodes=g.num_nodes)
    for arch in ARCHITECTURES:
        model = tiny(arch)
        with torch.no_grad():
            a, b = model(Batch.from_data_list([g])), model(Batch.from_data_list([shuffled]))
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_float64_model_accepts_float32_graphs(batch):
    model = tiny("cgcnn").double()
    with torch.no_grad():
        out = model(batch)
    assert out.dtype == torch.float64 and torch.isfinite(out).all()


def test_predict_and_embed(graphs):
    model = tiny("cgcnn").train()
    ids, preds, targets = predict(model, graphs, CPU, batch_size=7)
    assert ids == [g.material_id for g in graphs]
    np.testing.assert_allclose(targets, [float(g.y) for g in graphs], rtol=1e-6)
    assert preds.shape == (len(graphs),) and np.isfinite(preds).all()
    assert model.training, "predict must restore the training mode"
    vectors = embed(model, graphs, CPU, batch_size=7)
    assert vectors.shape == (len(graphs), TINY["h_fea_len"])
    assert predict(model, [], CPU)[1].shape == (0,)


def test_accuracy():
    m = accuracy([1.0, 2.0, 4.0], [1.0, 3.0, 2.0])
    assert m["n"] == 3
    assert m["mae"] == pytest.approx(1.0)
    assert m["rmse"] == pytest.approx(np.sqrt(5 / 3))
    t = np.array([1.0, 3.0, 2.0])
    assert m["r2"] == pytest.approx(1 - 5.0 / float(((t - t.mean()) ** 2).sum()))
    assert np.isnan(accuracy([1.0, 1.0], [1.0, 1.0])["r2"])  # constant targets
    empty = accuracy([], [])
    assert empty["n"] == 0 and np.isnan(empty["mae"])


@pytest.mark.skipif(not CGCNN_DIR.is_dir(), reason="shared CGCNN checkpoints not available")
def test_predict_structures_with_the_original_checkpoint(tmp_path, monkeypatch):
    from traits.models import ORIGINAL_GRAPH, load_cgcnn_original, predict_structures

    monkeypatch.setenv("TRAITS_CACHE", str(tmp_path / "cache"))
    files = sorted((CGCNN_DIR / "sample-cifs").glob("*.cif"))[:3]
    ckpt = CGCNN_DIR / "formation-energy-per-atom.pth.tar"
    out = predict_structures(ckpt, "cgcnn-original", files, CPU)
    assert [i for i, _ in out] == [str(f) for f in files]
    assert all(-6 < p < 5 for _, p in out)
    # Same numbers as loading the model and predicting graphs built with ORIGINAL_GRAPH.
    from traits.models.inference import _structure_data
    from traits.spec import GraphSpec

    model, _ = load_cgcnn_original(ckpt, CPU)
    settings = GraphSpec(**ORIGINAL_GRAPH)
    _, preds, _ = predict(model, [_structure_data(f, settings) for f in files], CPU)
    np.testing.assert_allclose([p for _, p in out], preds, rtol=1e-6)

    bad = tmp_path / "broken.cif"
    bad.write_text("data_broken\n_cell_length_a 3\nthis is not a cif\n")
    with pytest.raises(DataError, match="broken.cif"):
        predict_structures(ckpt, "cgcnn-original", [files[0], bad], CPU)
    with pytest.raises(DataError, match="missing.cif"):
        predict_structures(ckpt, "cgcnn-original", [tmp_path / "missing.cif"], CPU)
