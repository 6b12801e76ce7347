"""SplitObjective: loss, loss_many (vmap and its fallback), gradient and HVP against independent references.

The references never go through SplitObjective or torch.func: the tiny MLP's forward is written out by
hand from a parameter dict (BatchNorm in eval form: running statistics), the loss is the mean over all
samples at once, and derivatives come from torch.autograd.functional. The MLP, its hand-written references
and the data live in ``tiny_models``.
"""

from __future__ import annotations

import types

import pytest
import torch
from tiny_models import DT, make_data, make_mlp, reference_loss, reference_parts
from torch import nn

from traits.errors import ProbeError, TraitsError
from traits.probes.objective import SplitObjective


@pytest.fixture(params=[False, True], ids=["plain", "batchnorm"])
def setup(request):
    model = make_mlp(request.param)
    x, y, batches = make_data()
    return model, x, y, batches


@pytest.mark.parametrize("kind", ["mse", "mae"])
def test_loss_over_uneven_batches_equals_loss_on_everything(setup, kind):
    model, x, y, batches = setup
    obj = SplitObjective(model, batches, loss=kind)
    theta, f = reference_loss(model, x, y, kind)
    assert obj.n_samples == x.shape[0]
    assert obj.dim == theta.numel()
    torch.testing.assert_close(obj.loss(), f(theta), rtol=1e-12, atol=1e-12)
    assert obj.loss().dim() == 0 and not obj.loss().requires_grad
    # one batch holding everything gives the same value
    whole = SplitObjective(model, [types.SimpleNamespace(x=x, y=y)], loss=kind)
    torch.testing.assert_close(whole.loss(), obj.loss(), rtol=1e-12, atol=1e-12)


def test_gradient_matches_autograd(setup):
    model, x, y, batches = setup
    obj = SplitObjective(model, batches)
    theta, f = reference_loss(model, x, y)
    g_ref = torch.autograd.functional.jacobian(f, theta)
    torch.testing.assert_close(obj.gradient(), g_ref, rtol=1e-10, atol=1e-12)


def test_hvp_matches_dense_hessian(setup):
    model, x, y, batches = setup
    obj = SplitObjective(model, batches)
    theta, f = reference_loss(model, x, y)
    hess = torch.autograd.functional.hessian(f, theta)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        v = torch.randn(obj.dim, generator=g, dtype=DT)
        torch.testing.assert_close(obj.hvp(v), hess @ v, rtol=0, atol=1e-5 * float(hess.abs().max()))
        assert float((obj.hvp(v) - hess @ v).abs().max()) < 1e-10
    assert obj.n_hvp == 6


def test_loss_many_equals_loop_and_uses_vmap(setup):
    model, _, _, batches = setup
    obj = SplitObjective(model, batches)
    g = torch.Generator().manual_seed(5)
    stacked = {n: t.unsqueeze(0) + 0.1 * torch.randn(6, *t.shape, generator=g, dtype=DT) for n, t in obj.params.items()}
    many = obj.loss_many(stacked, chunk_size=4)  # chunks of 4 and 2
    loop = torch.stack([obj.loss({n: t[i] for n, t in stacked.items()}) for i in range(6)])
    torch.testing.assert_close(many, loop, rtol=1e-12, atol=1e-12)
    assert obj.vmap_ok is True


class ItemModel(nn.Module):
    """A forward that calls .item(): vmap cannot trace it, a plain loop can."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 1)

    def forward(self, batch):
        gain = 1.0 + 0.1 * self.lin.weight.sum().item()
        return gain * self.lin(batch.x).squeeze(-1)


def test_loss_many_falls_back_to_a_loop_when_vmap_fails():
    torch.manual_seed(0)
    model = ItemModel().to(DT)
    x, y, batches = make_data((4, 6))
    obj = SplitObjective(model, batches)
    g = torch.Generator().manual_seed(2)
    stacked = {n: t.unsqueeze(0) + torch.randn(5, *t.shape, generator=g, dtype=DT) for n, t in obj.params.items()}
    many = obj.loss_many(stacked)
    assert obj.vmap_ok is False and obj.vmap_error
    ref = []
    for i in range(5):
        w, b = stacked["lin.weight"][i], stacked["lin.bias"][i]
        gain = 1.0 + 0.1 * float(w.sum())
        ref.append(((gain * (x @ w.T + b).squeeze(-1) - y) ** 2).mean())
    torch.testing.assert_close(many, torch.stack(ref), rtol=1e-12, atol=1e-12)
    # the failure is remembered: the next call goes straight to the loop and still agrees
    torch.testing.assert_close(obj.loss_many(stacked, chunk_size=2), many, rtol=1e-12, atol=1e-12)


def test_nan_and_inf_weights_give_nan_losses_not_errors(setup):
    model, _, _, batches = setup
    obj = SplitObjective(model, batches)
    stacked = {n: t.unsqueeze(0).repeat(3, *([1] * t.dim())) for n, t in obj.params.items()}
    stacked["l1.weight"][1, 0, 0] = float("nan")
    stacked["l3.bias"][2] = float("inf")
    values = obj.loss_many(stacked)
    assert torch.isnan(values[1]) and not torch.isfinite(values[2])
    torch.testing.assert_close(values[0], obj.loss())
    bad = dict(obj.params)
    bad["l2.weight"] = torch.full_like(bad["l2.weight"], float("nan"))
    assert torch.isnan(obj.loss(bad))


def test_probes_leave_the_model_untouched(setup):
    model, x, y, batches = setup
    model.l2.bias.requires_grad_(False)  # a frozen parameter: not probed, but used at its value
    model.l1.weight.grad = torch.ones_like(model.l1.weight)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    obj = SplitObjective(model, batches)
    assert "l2.bias" not in obj.names
    assert obj.names == [n for n, p in model.named_parameters() if p.requires_grad]
    obj.loss()
    obj.gradient()
    obj.hvp(torch.ones(obj.dim, dtype=DT))
    obj.loss_many({n: t.unsqueeze(0).repeat(2, *([1] * t.dim())) for n, t in obj.params.items()})
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert model.training and all(m.training for m in model.modules())
    assert not model.l2.bias.requires_grad and model.l1.weight.requires_grad
    assert torch.equal(model.l1.weight.grad, torch.ones_like(model.l1.weight))
    assert model.l2.weight.grad is None


def test_flatten_unflatten_round_trip(setup):
    model, _, _, batches = setup
    obj = SplitObjective(model, batches)
    flat = obj.flatten(obj.params)
    theta, _ = reference_parts(model)
    assert torch.equal(flat, theta)
    back = obj.unflatten(flat)
    assert list(back) == obj.names
    for n in obj.names:
        assert torch.equal(back[n], obj.params[n])
    with pytest.raises(ProbeError):
        obj.unflatten(flat[:-1])


def test_bad_arguments_raise_probe_errors():
    model = make_mlp(False)
    _, _, batches = make_data()
    with pytest.raises(ProbeError):
        SplitObjective(model, batches, loss="huber")
    with pytest.raises(ProbeError):
        SplitObjective(model, [])
    bad = [types.SimpleNamespace(x=batches[0].x, y=batches[0].y[:-1])]
    with pytest.raises(TraitsError):
        SplitObjective(model, bad).loss()
