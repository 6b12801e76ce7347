"""The Hessian-vector product variants of SplitObjective ("retain", "recompute", "jvp").

Each variant against the dense Hessian of the tiny MLP (hand-written loss, torch.autograd.functional),
the variants against each other on a real crystal model (the shipped quickstart CGCNN on graphs of the
bundled Materials Project sample), and the memory rules of "retain": graphs are dropped when theta
changes, on ``release_graphs``, when another objective starts keeping graphs and with the objective
itself, and are kept only within ``hvp_memory_budget`` (the batches beyond it are recomputed).
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest
import torch
from tiny_models import DT, gen, make_data, make_mlp, reference_loss

from traits.errors import ProbeError
from traits.probes.objective import HVP_METHODS, SplitObjective

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture(params=[False, True], ids=["plain", "batchnorm"])
def mlp(request):
    model = make_mlp(request.param)
    x, y, batches = make_data()
    theta, f = reference_loss(model, x, y)
    return model, batches, torch.autograd.functional.hessian(f, theta)


@pytest.mark.parametrize("method", HVP_METHODS)
def test_each_variant_matches_the_dense_hessian(mlp, method):
    model, batches, hess = mlp
    obj = SplitObjective(model, batches, hvp_method=method)
    assert obj.hvp_method == method
    g = gen(3)
    for _ in range(3):
        v = torch.randn(obj.dim, generator=g, dtype=DT)
        assert float((obj.hvp(v) - hess @ v).abs().max()) < 1e-10 * max(1.0, float(hess.abs().max()))
    assert obj.n_hvp == 3
    # the model was left as found
    assert model.training and all(p.grad is None and p.requires_grad for p in model.parameters())


def test_retain_is_the_default_and_bit_identical_to_recompute(mlp):
    model, batches, _ = mlp
    retain, recompute = SplitObjective(model, batches), SplitObjective(model, batches, hvp_method="recompute")
    assert retain.hvp_method == "retain"
    g = gen(4)
    for _ in range(4):
        v = torch.randn(retain.dim, generator=g, dtype=DT)
        assert torch.equal(retain.hvp(v), recompute.hvp(v))
    assert retain.retained_bytes > 0 and recompute.retained_bytes == 0


def test_graphs_follow_theta(mlp):
    """A product after theta changed (in place, or a new tensor) is the Hessian at the new theta."""
    model, batches, _ = mlp
    obj = SplitObjective(model, batches)
    v = torch.randn(obj.dim, generator=gen(5), dtype=DT)
    obj.hvp(v)
    name = obj.names[0]
    obj.params[name].add_(0.3)  # in place
    fresh = SplitObjective(model, batches, hvp_method="recompute")
    fresh.params[name].add_(0.3)
    assert torch.equal(obj.hvp(v), fresh.hvp(v))
    obj.params[name] = obj.params[name] * 0.5  # a new tensor
    fresh.params[name] = fresh.params[name] * 0.5
    assert torch.equal(obj.hvp(v), fresh.hvp(v))
    bn = [n for n in obj.buffers if n.endswith("running_mean")]
    if bn:  # buffers are part of theta too
        obj.buffers[bn[0]].add_(0.1)
        fresh.buffers[bn[0]].add_(0.1)
        assert torch.equal(obj.hvp(v), fresh.hvp(v))


def test_graphs_are_released(mlp):
    model, batches, _ = mlp
    a, b = SplitObjective(model, batches), SplitObjective(model, batches)
    v = torch.ones(a.dim, dtype=DT)
    a.hvp(v)
    assert a.retained_bytes > 0
    a.release_graphs()
    assert a.retained_bytes == 0
    a.hvp(v)
    kept = weakref.ref(a._graphs)
    b.hvp(v)  # at most one objective keeps graphs
    assert a.retained_bytes == 0 and b.retained_bytes > 0
    gc.collect()
    assert kept() is None
    kept = weakref.ref(b._graphs)
    del b  # and they go with the objective
    gc.collect()
    assert kept() is None


def test_memory_budget(mlp):
    model, batches, hess = mlp
    full = SplitObjective(model, batches)
    v = torch.randn(full.dim, generator=gen(6), dtype=DT)
    ref = full.hvp(v)
    per_batch = full.retained_bytes
    none = SplitObjective(model, batches, hvp_memory_budget=0)
    assert torch.equal(none.hvp(v), ref) and none.retained_bytes == 0
    assert torch.equal(none.hvp(v), ref)
    some = SplitObjective(model, batches, hvp_memory_budget=per_batch // 2)
    assert torch.equal(some.hvp(v), ref) and torch.equal(some.hvp(v), ref)
    assert 0 < some.retained_bytes <= per_batch // 2
    assert sum(g is not None for g in some._graphs.grads) < len(batches)
    with pytest.raises(ProbeError, match="hvp_memory_budget"):
        SplitObjective(model, batches, hvp_memory_budget=-1)
    with pytest.raises(ProbeError, match="hvp_method"):
        SplitObjective(model, batches, hvp_method="dense")


def test_constant_batches_and_unused_parameters():
    """A parameter the loss never reads has zero Hessian rows in every variant."""
    model = make_mlp(False)
    model.unused = torch.nn.Linear(2, 2).to(DT)
    _, _, batches = make_data()
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=gen(7), dtype=DT)
    outs = [SplitObjective(model, batches, hvp_method=m).hvp(v) for m in HVP_METHODS]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=1e-12, atol=1e-14)
    assert float(outs[0][-6:].abs().max()) == 0.0


@pytest.fixture(scope="module")
def crystal_batches():
    from traits.audit import collate
    from traits.data.prepare import prepare_data
    from traits.models.checkpoint import load_checkpoint
    from traits.spec import load_spec

    spec = load_spec(ROOT / "audits" / "quickstart.yaml", overrides={"data.subsample": 200})
    data = prepare_data(spec)
    graphs = [g for g in data.splits["train"] if g.num_nodes <= 12][:24]
    assert len(graphs) == 24
    model, _ = load_checkpoint(spec.model.checkpoint, spec.model.format, architecture=spec.model.architecture,
                               target=spec.data.target, graph=spec.data.graph, device=CPU)
    return model.eval(), collate(graphs, CPU, torch.float32, batch_size=10)  # batches of 10, 10, 4


def test_variants_agree_on_a_real_crystal_model(crystal_batches):
    model, batches = crystal_batches
    objs = {m: SplitObjective(model, batches, hvp_method=m) for m in HVP_METHODS}
    g = gen(8)
    for _ in range(2):
        v = torch.randn(objs["retain"].dim, generator=g)
        outs = {m: obj.hvp(v) for m, obj in objs.items()}
        scale = float(outs["recompute"].abs().max())
        assert scale > 0
        assert torch.equal(outs["retain"], outs["recompute"])
        assert float((outs["jvp"] - outs["recompute"]).abs().max()) <= 1e-4 * scale
    assert all(p.grad is None for p in model.parameters()) and not model.training
