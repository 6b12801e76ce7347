"""The CGCNNs' ``probe_forward`` (split linear maps, batch norm folded in) against their plain forward, and the
objective's use of it: only for loss evaluations without gradients, only after it matched at theta, and never when
it does not."""

from __future__ import annotations

import pytest
import torch
from tiny_models import prepare_sample, randomize_batchnorm
from torch.func import functional_call

from traits.probes.objective import SplitObjective

CONFIGS = [
    ("cgcnn", {"atom_fea_len": 12, "n_conv": 2, "h_fea_len": 16, "n_h": 1, "batch_norm": True, "pooling": "mean"}),
    ("cgcnn", {"atom_fea_len": 12, "n_conv": 2, "h_fea_len": 16, "n_h": 2, "batch_norm": False, "pooling": "sum"}),
    ("cgcnn", {"atom_fea_len": 8, "n_conv": 1, "h_fea_len": 8, "n_h": 1, "batch_norm": True, "pooling": "max"}),
    ("cgcnn-original", {"atom_fea_len": 12, "n_conv": 2, "h_fea_len": 16, "n_h": 2}),
]


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    from traits.audit import collate

    data = prepare_sample(tmp_path_factory, "fast-forward", subsample=48)
    return collate(data.splits["train"][:40], torch.device("cpu"), torch.float32, 16)


def build(arch: str, hyper: dict, seed: int = 0, dtype=torch.float32):
    from traits.models.registry import build_model

    torch.manual_seed(seed)
    model = build_model(arch, dict(hyper))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            randomize_batchnorm(module)
    model.target_mean.fill_(-0.8)
    model.target_std.fill_(1.3)
    return model.to(dtype).eval()


def full_params(model):
    out = {n: b for n, b in model.named_buffers()}
    out.update({n: p.detach() for n, p in model.named_parameters()})
    return out


@pytest.mark.parametrize("arch,hyper", CONFIGS)
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_probe_forward_equals_the_plain_forward(batches, arch, hyper, dtype, rtol):
    model = build(arch, hyper, dtype=dtype)
    params = full_params(model)
    with torch.no_grad():
        for b in batches:
            plain = functional_call(model, params, (b,))
            fast = model.probe_forward(params, b)
            assert fast.shape == plain.shape
            assert torch.allclose(fast, plain, rtol=rtol, atol=rtol * float(plain.abs().max())), \
                float((fast - plain).abs().max())


@pytest.mark.parametrize("arch,hyper", CONFIGS[::3])
def test_probe_forward_follows_perturbed_weights(batches, arch, hyper):
    """At weights away from theta (batch-norm weights and running statistics included) the two still agree: the
    folding is recomputed from the weights it is given, not cached."""
    model = build(arch, hyper, dtype=torch.float64)
    params = full_params(model)
    g = torch.Generator().manual_seed(3)
    moved = {n: t + 0.3 * torch.randn(t.shape, generator=g, dtype=t.dtype) * t.abs().mean()
             if t.is_floating_point() and "running_var" not in n else t for n, t in params.items()}
    with torch.no_grad():
        for b in batches:
            assert torch.allclose(model.probe_forward(moved, b), functional_call(model, moved, (b,)), rtol=1e-10)


def test_objective_uses_it_only_after_it_matched(batches):
    model = build(*CONFIGS[3])
    fast = SplitObjective(model, batches)
    plain = SplitObjective(model, batches, fast_forward=False)
    assert fast.fast_forward is None and plain.fast_forward is False and plain.fast_gradient is False
    calls = []
    original = model.probe_forward
    model.probe_forward = lambda p, b: calls.append(1) or original(p, b)
    assert float(fast.loss()) == pytest.approx(float(plain.loss()), rel=1e-6)
    assert fast.fast_forward is True and fast.fast_forward_error < 1e-5 and calls


@pytest.mark.parametrize("method", ["retain", "recompute"])
def test_gradients_and_products_through_it_equal_the_plain_ones(batches, method):
    """In float64 the gradient and the Hessian-vector products of the fast forward equal the plain forward's to
    rounding; the gradient check at theta passed first."""
    model = build(*CONFIGS[3], dtype=torch.float64)
    fast = SplitObjective(model, batches, hvp_method=method)
    plain = SplitObjective(model, batches, hvp_method=method, fast_forward=False)
    g_fast, g_plain = fast.gradient(), plain.gradient()
    assert fast.fast_gradient is True and fast.fast_gradient_error < 1e-10
    assert torch.allclose(g_fast, g_plain, rtol=1e-9, atol=1e-12 * float(g_plain.abs().max()))
    v = torch.randn(fast.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    h_plain = plain.hvp(v)
    h_fast = fast.hvp(v)
    assert torch.allclose(h_fast, h_plain, rtol=1e-9, atol=1e-12 * float(h_plain.abs().max()))


def test_jvp_products_and_a_probe_forward_with_wrong_gradients_use_the_plain_forward(batches):
    model = build(*CONFIGS[0])
    v = torch.randn(SplitObjective(model, batches).dim, generator=torch.Generator().manual_seed(0))
    jvp_fast = SplitObjective(model, batches, hvp_method="jvp")
    jvp_plain = SplitObjective(model, batches, hvp_method="jvp", fast_forward=False)
    assert torch.equal(jvp_fast.hvp(v), jvp_plain.hvp(v))
    original = model.probe_forward

    def detached(p, b):  # right values, no gradient through the output layer's weight
        q = dict(p)
        q["fc_out.weight"] = q["fc_out.weight"].detach()
        return original(q, b)

    model.probe_forward = detached
    obj = SplitObjective(model, batches)
    reference = SplitObjective(model, batches, fast_forward=False)
    assert torch.equal(obj.gradient(), reference.gradient())
    assert obj.fast_forward is True and obj.fast_gradient is False and obj.fast_gradient_error > 1e-3


def test_surface_grids_agree_with_and_without_it(batches):
    from traits.probes.directions import random_direction
    from traits.probes.surface import surface_2d

    model = build(*CONFIGS[0])
    fast = SplitObjective(model, batches)
    plain = SplitObjective(model, batches, fast_forward=False)
    skip = model.normalization_parameter_names()
    d1 = random_direction(fast.params, torch.Generator().manual_seed(1), skip=skip)
    d2 = random_direction(fast.params, torch.Generator().manual_seed(2), skip=skip)
    axis = torch.linspace(-1, 1, 5, dtype=torch.float64)
    a = surface_2d(fast, d1, d2, axis, axis)
    b = surface_2d(plain, d1, d2, axis, axis)
    assert fast.fast_forward is True
    assert torch.allclose(a, b, rtol=1e-5)


def test_a_wrong_probe_forward_is_detected_and_not_used(batches):
    model = build(*CONFIGS[0])
    original = model.probe_forward
    model.probe_forward = lambda p, b: original(p, b) * 1.01  # 1 % off: must be refused
    obj = SplitObjective(model, batches)
    reference = SplitObjective(model, batches, fast_forward=False)
    assert float(obj.loss()) == float(reference.loss())
    assert obj.fast_forward is False and obj.fast_forward_error > 1e-3
    model.probe_forward = lambda p, b: (_ for _ in ()).throw(RuntimeError("broken"))
    broken = SplitObjective(model, batches)
    assert float(broken.loss()) == float(reference.loss())
    assert broken.fast_forward is False and "broken" in broken.fast_forward_error


def test_probe_forward_refuses_training_mode(batches):
    model = build(*CONFIGS[0]).train()
    with pytest.raises(RuntimeError, match="eval mode"):
        model.probe_forward(full_params(model), batches[0])


def test_compiled_loss_matches_the_plain_loss(batches):
    """``compile_loss=True``: the surface losses come from a torch.compile-d loss that matched the uncompiled one
    at theta, and it follows the weights it is given."""
    model = build(*CONFIGS[0])
    compiled = SplitObjective(model, batches, compile_loss=True)
    plain = SplitObjective(model, batches, fast_forward=False)
    assert compiled.compiled is None
    value = float(compiled.loss())
    assert compiled.compiled is True, compiled.compile_error
    assert compiled.compile_seconds > 0 and value == pytest.approx(float(plain.loss()), rel=1e-5)
    g = torch.Generator().manual_seed(4)
    moved = {n: t + 0.05 * torch.randn(t.shape, generator=g) for n, t in compiled.params.items()}
    assert float(compiled.loss(moved)) == pytest.approx(float(plain.loss(moved)), rel=1e-5)



def test_a_loss_that_does_not_compile_keeps_the_plain_path(batches, monkeypatch):
    def broken(fn, **kwargs):
        def call(*args, **kw):
            raise RuntimeError("inductor: cannot compile this model")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    model = build(*CONFIGS[0])
    obj = SplitObjective(model, batches, compile_loss=True)
    assert float(obj.loss()) == float(SplitObjective(model, batches).loss())
    assert obj.compiled is False and "cannot compile" in obj.compile_error and obj.compile_seconds is None


@pytest.mark.parametrize("arch,hyper", CONFIGS[::3])
def test_batched_hvps_equal_one_by_one_products(batches, arch, hyper):
    """hvp_many with batched=True (one vmapped backward per batch over all vectors; the CUDA default) against
    the loop of single products, in float64, including a second call on the retained graphs."""
    model = build(arch, hyper, dtype=torch.float64)
    obj = SplitObjective(model, batches)
    vs = torch.randn(4, obj.dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    loop = obj.hvp_many(vs, batched=False)
    n = obj.n_hvp
    many = obj.hvp_many(vs, batched=True)
    assert obj.n_hvp == n + 4 and many.shape == (4, obj.dim)
    assert torch.allclose(many, loop, rtol=1e-10, atol=1e-12 * float(loop.abs().max()))
    assert torch.allclose(obj.hvp_many(vs[:2], batched=True), loop[:2], rtol=1e-10,
                          atol=1e-12 * float(loop.abs().max()))
    for j in range(4):  # and each row is the plain product
        assert torch.allclose(loop[j], SplitObjective(model, batches, hvp_method="recompute").hvp(vs[j]),
                              rtol=1e-9, atol=1e-12 * float(loop.abs().max()))


def test_traces_with_batched_products_equal_the_loop(batches):
    from traits.probes.hessian import hutchinson_trace, hutchpp_trace

    model = build(*CONFIGS[0], dtype=torch.float64)
    obj = SplitObjective(model, batches)
    kw = {"device": obj.device, "dtype": obj.dtype}
    for fn, budget in ((hutchinson_trace, {"n_samples": 7}), (hutchpp_trace, {"n_hvp": 10})):
        loop = fn(obj.hvp, obj.dim, generator=torch.Generator().manual_seed(2), **budget, **kw)
        many = fn(obj.hvp, obj.dim, generator=torch.Generator().manual_seed(2),
                  hvp_many=lambda v: obj.hvp_many(v, batched=True), **budget, **kw)
        assert many.n_hvp == loop.n_hvp
        assert many.estimate == pytest.approx(loop.estimate, rel=1e-9)
        assert many.stderr == pytest.approx(loop.stderr, rel=1e-6)


def test_regular_degree_recognises_only_ordered_blocks_of_k():
    from traits.models.cgcnn import regular_degree

    assert regular_degree(torch.tensor([0, 0, 0, 1, 1, 1]), 2) == 3
    assert regular_degree(torch.tensor([0, 0, 1, 1, 2, 2]), 3) == 2
    assert regular_degree(torch.tensor([0, 1, 0, 1]), 2) == 0  # grouped by neighbour, not by centre
    assert regular_degree(torch.tensor([0, 0, 1, 0, 1, 1]), 2) == 0  # first and last of each block right, not all
    assert regular_degree(torch.tensor([1, 1, 0, 0]), 2) == 0  # centres out of order
    assert regular_degree(torch.tensor([0, 0, 0, 1, 1]), 2) == 0  # an atom short of neighbours
    assert regular_degree(torch.tensor([], dtype=torch.long), 0) == 0


@pytest.mark.parametrize("arch,hyper", [CONFIGS[0], CONFIGS[3]])
def test_both_message_sums_equal_the_plain_forward(batches, arch, hyper, monkeypatch):
    """The regular-graph sum (each centre's k edges as one (n, k, F) block) and the scatter over centres both give
    the plain forward; the padded original graph takes the block path, and so does the default graph here (no atom
    of the sample is short of 12 neighbours within the cutoff), and with the test forced off, the scatter path."""
    import traits.models.cgcnn as cgcnn

    model = build(arch, hyper, dtype=torch.float64)
    params = full_params(model)
    assert all(cgcnn.regular_degree(b.edge_index[1], b.x.shape[0]) == 12 for b in batches)
    with torch.no_grad():
        plain = [functional_call(model, params, (b,)) for b in batches]
        block = [model.probe_forward(params, b) for b in batches]
        monkeypatch.setattr(cgcnn, "regular_degree", lambda centre, n_atoms: 0)
        scattered = [model.probe_forward(params, b) for b in batches]
    for p, x, s in zip(plain, block, scattered):
        assert torch.allclose(x, p, rtol=1e-12) and torch.allclose(s, p, rtol=1e-12)


def test_the_block_sum_is_for_evaluations_without_gradients(batches, monkeypatch):
    """Under autograd the messages are scattered (the block's backward is slower): the test is never asked."""
    import traits.models.cgcnn as cgcnn

    model = build(*CONFIGS[0], dtype=torch.float64)
    trainable = {n for n, _ in model.named_parameters()}
    params = {n: t.clone().requires_grad_(True) if n in trainable else t for n, t in full_params(model).items()}
    asked = []
    real = cgcnn.regular_degree
    monkeypatch.setattr(cgcnn, "regular_degree", lambda c, n: asked.append(n) or real(c, n))
    out = model.probe_forward(params, batches[0]).sum()
    assert out.requires_grad and asked == []
    with torch.no_grad():
        model.probe_forward(params, batches[0])
    assert len(asked) == model.hyper["n_conv"]


def test_the_gradient_check_decides_where_the_loss_gradient_vanishes(batches):
    """Targets equal to the model's own predictions (label-free audits): the loss gradient at θ is zero to rounding,
    so the check projects the predictions instead. It passes for the right forward, whose Jacobian rows and
    products then equal the plain ones, and refuses one with a missing gradient, whose rows come from the plain
    forward."""
    model = build(*CONFIGS[3], dtype=torch.float64)

    def own(b):
        with torch.no_grad():
            return model(b).detach()

    fast = SplitObjective(model, batches, target_fn=own)
    plain = SplitObjective(model, batches, target_fn=own, fast_forward=False)
    rows = fast.output_jacobian()
    assert fast.fast_gradient is True and fast.fast_gradient_error < 1e-10 and fast.fast_reduction > 1.3
    reference = plain.output_jacobian()
    assert torch.allclose(rows, reference, rtol=1e-9, atol=1e-12 * float(reference.abs().max()))
    v = torch.randn(fast.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    h_plain = plain.hvp(v)
    assert torch.allclose(fast.hvp(v), h_plain, rtol=1e-9, atol=1e-12 * float(h_plain.abs().max()))
    original = model.probe_forward

    def detached(p, b):
        q = dict(p)
        q["fc_out.weight"] = q["fc_out.weight"].detach()
        return original(q, b)

    model.probe_forward = detached
    wrong = SplitObjective(model, batches, target_fn=own)
    assert torch.equal(wrong.output_jacobian(), reference)
    assert wrong.fast_gradient is False and wrong.fast_gradient_error > 1e-3
