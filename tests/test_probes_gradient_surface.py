"""Gradient-norm surfaces (traits.probes.gradient_surface) against independent references.

The reference is the tiny float64 MLP's loss written by hand on one flat weight vector (tests/tiny_models.py:
``reference_loss``, BatchNorm in eval form with its running statistics), differentiated by
``torch.autograd.functional``; it never goes through SplitObjective or torch.func. The points lie far from theta
(alpha up to 3 filter-normalised steps), where the tanh network is far from quadratic, so a shortcut through the
gradient and Hessian at theta would be wrong; the model is left in training mode, where BatchNorm would use batch
statistics, so a probe that forgot eval mode would be wrong too. Both shortcuts are shown to differ.
"""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch
from tiny_models import DT, gen, make_data, make_mlp, manual_forward, reference_loss, reference_parts
from torch import nn
from torch.autograd.functional import hessian, jacobian

from traits.errors import ProbeError
from traits.probes.directions import random_direction
from traits.probes.gradient_surface import (
    GradientSurface,
    gradient_line,
    gradient_plane,
    gradient_summary,
    loss_and_gradient,
    trapezoid_residuals,
)
from traits.probes.objective import SplitObjective
from traits.probes.surface import surface_1d


def _setup(kind="mse", batchnorm=True, seed=0):
    model = make_mlp(batchnorm, seed=seed)
    x, y, batches = make_data()
    obj = SplitObjective(model, batches, loss=kind)
    theta, f = reference_loss(model, x, y, kind)
    return model, x, y, obj, theta, f


def _directions(obj, n=2, seed=5):
    g = gen(seed)
    return [random_direction(obj.params, g, include_skipped=True) for _ in range(n)]


def _reference(f, w, dirs):
    """(L, ||grad||, [grad . d]) of the hand-written loss at the flat point w."""
    grad = jacobian(f, w)
    return float(f(w)), float(grad.norm()), [float(grad @ d) for d in dirs]


@pytest.mark.parametrize("kind", ["mse", "mae"])
def test_line_matches_hand_written_loss_far_from_theta(kind):
    model, x, y, obj, theta, f = _setup(kind)
    (d,) = _directions(obj, 1)
    dflat = obj.flatten(d)
    alphas = torch.tensor([-3.0, -1.3, 0.0, 0.7, 2.9], dtype=DT)
    calls = []
    surf = gradient_line(obj, d, alphas, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (5, 5) and surf.n_evaluations == 5 and surf.betas is None
    for i, a in enumerate(alphas.tolist()):
        loss, norm, (slope,) = _reference(f, theta + a * dflat, [dflat])
        assert surf.loss[i] == pytest.approx(loss, rel=1e-11, abs=1e-13)
        assert surf.grad_norm[i] == pytest.approx(norm, rel=1e-10, abs=1e-13)
        assert surf.slopes[0][i] == pytest.approx(slope, rel=1e-9, abs=1e-12)


def test_far_points_are_not_quadratic_and_batchnorm_uses_running_statistics():
    """The regime where shortcuts fail: the quadratic model at theta and batch statistics both give other norms."""
    model, x, y, obj, theta, f = _setup()
    (d,) = _directions(obj, 1)
    dflat = obj.flatten(d)
    a = 3.0
    surf = gradient_line(obj, d, torch.tensor([a], dtype=DT))
    truth = float(jacobian(f, theta + a * dflat).norm())
    assert surf.grad_norm[0] == pytest.approx(truth, rel=1e-10)
    quadratic = float((jacobian(f, theta) + a * hessian(f, theta) @ dflat).norm())
    assert abs(quadratic - truth) > 0.1 * truth

    _, split = reference_parts(model)

    def train_mode_loss(w):  # BatchNorm with the batch's own statistics, batch by batch as SplitObjective sums
        p = split(w)
        total = 0.0
        for b in obj.batches:
            h = torch.tanh(b.x @ p["l1.weight"].T + p["l1.bias"])
            h = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + model.bn.eps) * p["bn.weight"] + p["bn.bias"]
            out = (torch.tanh(h @ p["l2.weight"].T + p["l2.bias"]) @ p["l3.weight"].T + p["l3.bias"]).squeeze(-1)
            total = total + ((out - b.y) ** 2).sum()
        return total / obj.n_samples

    wrong = float(jacobian(train_mode_loss, theta + a * dflat).norm())
    assert abs(wrong - truth) > 0.05 * truth


def test_probe_leaves_the_model_as_found():
    model, *_ , obj, theta, f = _setup()
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    (d,) = _directions(obj, 1)
    gradient_line(obj, d, torch.tensor([-1.0, 2.0], dtype=DT))
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())


def test_plane_matches_hand_written_loss_on_an_asymmetric_grid():
    model, x, y, obj, theta, f = _setup()
    d1, d2 = _directions(obj, 2)
    f1, f2 = obj.flatten(d1), obj.flatten(d2)
    alphas = torch.tensor([-2.0, 0.0, 1.5], dtype=DT)
    betas = torch.tensor([-1.0, 0.5, 2.5, 0.0], dtype=DT)
    surf = gradient_plane(obj, d1, d2, alphas, betas)
    assert surf.loss.shape == surf.grad_norm.shape == (3, 4) and surf.n_evaluations == 12
    for i, a in enumerate(alphas.tolist()):
        for j, b in enumerate(betas.tolist()):
            loss, norm, (s1, s2) = _reference(f, theta + a * f1 + b * f2, [f1, f2])
            assert surf.loss[i, j] == pytest.approx(loss, rel=1e-11)
            assert surf.grad_norm[i, j] == pytest.approx(norm, rel=1e-10)
            assert surf.slopes[0][i, j] == pytest.approx(s1, rel=1e-9, abs=1e-12)
            assert surf.slopes[1][i, j] == pytest.approx(s2, rel=1e-9, abs=1e-12)
    summary = gradient_summary(surf)
    assert summary.at_theta == pytest.approx(float(jacobian(f, theta).norm()), rel=1e-10)
    assert summary.max == pytest.approx(surf.grad_norm.max()) and summary.finite_fraction == 1.0


def test_at_theta_equals_the_objectives_gradient_and_loss():
    *_, obj, theta, f = _setup()
    loss, grad = loss_and_gradient(obj)
    assert torch.allclose(grad, obj.gradient(), rtol=1e-13, atol=1e-15)
    assert loss == pytest.approx(float(obj.loss()), rel=1e-14)


def test_slopes_are_the_derivative_of_the_loss_surface():
    """s(alpha) against a central difference of surface_1d, the engine that draws the plotted curves."""
    *_, obj, theta, f = _setup()
    (d,) = _directions(obj, 1, seed=9)
    h = 1e-5
    for a in (-2.0, 0.4):
        s = gradient_line(obj, d, torch.tensor([a], dtype=DT)).slopes[0][0]
        ends = surface_1d(obj, d, torch.tensor([a - h, a + h], dtype=DT))
        assert s == pytest.approx(float(ends[1] - ends[0]) / (2 * h), rel=1e-6)


class Stepped(nn.Module):
    """A linear model whose prediction jumps by 0.5 when its first weight passes 0.35: a discontinuous loss whose
    gradient (away from the jump) is the linear model's."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.0, 0.0], dtype=DT))

    def forward(self, batch):
        return batch.x @ self.w + 0.5 * (self.w[0] > 0.35).to(DT)


def test_trapezoid_residuals_see_a_jump_the_gradient_cannot():
    x = torch.randn(20, 2, generator=gen(2), dtype=DT)
    batch = types.SimpleNamespace(x=x, y=torch.zeros(20, dtype=DT))
    obj = SplitObjective(Stepped(), [batch])
    alphas = torch.linspace(0.0, 1.0, 11, dtype=DT)  # the jump lies in the interval (0.3, 0.4), index 3
    surf = gradient_line(obj, {"w": torch.tensor([1.0, 0.0], dtype=DT)}, alphas)
    res = trapezoid_residuals(alphas.tolist(), surf.loss, surf.slopes[0])
    # L(a) = mean((x0 a + 0.5 [a > c])^2), c = 0.35: quadratic on each side, so the trapezoid rule is exact there
    # and the residual of the interval holding c is the jump, L(c+) - L(c-) = c mean(x0) + 0.25
    assert int(np.argmax(res)) == 3
    assert res[3] == pytest.approx(0.35 * float(x[:, 0].mean()) + 0.25, rel=1e-9)
    assert np.delete(res, 3).max() < 1e-12
    # the slopes never see it: they follow the smooth pieces, 2 mean(x0 (x0 a + 0.5 [a > c]))
    a = alphas.numpy()
    smooth = 2 * ((x[:, 0:1].numpy() ** 2) * a + 0.5 * x[:, 0:1].numpy() * (a > 0.35)).mean(axis=0)
    assert np.allclose(surf.slopes[0], smooth, rtol=1e-12, atol=1e-14)


def test_summary_rules_and_non_finite_points():
    g = np.array([[1.0, np.nan, 3.0], [4.0, 2.0, np.inf]])
    surf = GradientSurface(alphas=np.array([0.0, 1.0]), betas=np.array([-1.0, 0.0, 1.0]), loss=g.copy(),
                           grad_norm=g, slopes=[g, g], n_evaluations=6)
    s = gradient_summary(surf)
    assert s.at_theta is None  # G(0, 0) is NaN
    assert s.median == 2.5 and s.max == 4.0 and s.finite_fraction == pytest.approx(4 / 6)
    surf.betas = np.array([-1.0, 1.0, 0.0])
    assert gradient_summary(surf).at_theta == 3.0  # (alpha, beta) = (0, 0) is row 0, column 2
    surf.alphas = np.array([1.0, 0.0])
    assert gradient_summary(surf).at_theta is None  # now row 1, column 2: inf
    surf.alphas, surf.betas = np.array([0.0, 1.0]), np.array([0.0, 1.0, 2.0])
    assert gradient_summary(surf).at_theta == 1.0
    assert surf.to_dict()["grad_norm"] == [[1.0, None, 3.0], [4.0, 2.0, None]]
    no_origin = GradientSurface(alphas=np.array([0.5]), betas=None, loss=np.array([1.0]),
                                grad_norm=np.array([1.0]), slopes=[np.array([0.0])], n_evaluations=1)
    assert gradient_summary(no_origin).at_theta is None


class Log(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0], dtype=DT))

    def forward(self, batch):
        return torch.log(batch.x[:, 0] * self.w)


def test_a_diverged_point_gives_nan_not_a_number():
    batch = types.SimpleNamespace(x=torch.ones(4, 1, dtype=DT), y=torch.zeros(4, dtype=DT))
    obj = SplitObjective(Log(), [batch])
    surf = gradient_line(obj, {"w": torch.ones(1, dtype=DT)}, torch.tensor([-2.0, 0.0, 1.0], dtype=DT))
    assert math.isnan(surf.grad_norm[0]) and math.isnan(surf.slopes[0][0]) and math.isnan(surf.loss[0])
    assert surf.grad_norm[1] == pytest.approx(0.0, abs=1e-15)  # log(1) = 0 = y: the minimum
    # at w = 2: L = log(2)^2, dL/dw = 2 log(2) / 2
    assert surf.grad_norm[2] == pytest.approx(math.log(2.0), rel=1e-12)
    summary = gradient_summary(surf)
    assert summary.finite_fraction == pytest.approx(2 / 3) and summary.at_theta == pytest.approx(0.0, abs=1e-15)


def test_bad_inputs_are_refused():
    *_, obj, theta, f = _setup()
    (d,) = _directions(obj, 1)
    with pytest.raises(ProbeError):
        gradient_line(obj, {k: v for k, v in d.items() if k != "l1.weight"}, torch.tensor([0.0], dtype=DT))
    with pytest.raises(ProbeError):
        gradient_line(obj, d, torch.tensor([], dtype=DT))
    with pytest.raises(ProbeError):
        loss_and_gradient(obj, {"l1.weight": obj.params["l1.weight"]})
    with pytest.raises(ProbeError):
        trapezoid_residuals([0.0, 0.0], [1.0, 1.0], [0.0, 0.0])
    with pytest.raises(ProbeError):
        trapezoid_residuals([0.0], [1.0], [0.0])


def test_manual_forward_agrees_with_the_model_in_eval_mode():
    """Guards the reference itself: the hand-written forward is the model's eval-mode forward."""
    model, x, y, obj, theta, f = _setup()
    _, split = reference_parts(model)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(manual_forward(model, split(theta), x), model(types.SimpleNamespace(x=x)), rtol=1e-13)
