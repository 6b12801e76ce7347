"""Random-perturbation loss statistics (traits.probes.perturbation) against the hand-written loss.

Rises are checked against the tiny float64 MLP's loss written by hand on a flat weight vector (BatchNorm in eval
form, the model left in training mode), curvatures against its Hessian from ``torch.autograd.functional``. The
MLP is untrained, so its gradient at theta is far from zero: there a one-sided difference (the shortcut
2 D+ / s^2) misses the curvature by the gradient term, which the antithetic pair cancels.
"""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch
from tiny_models import DT, gen, make_data, make_mlp, reference_loss
from torch import nn
from torch.autograd.functional import hessian, jacobian

from traits.errors import ProbeError
from traits.probes.directions import random_direction
from traits.probes.objective import SplitObjective
from traits.probes.perturbation import PerturbationResult, random_perturbations


def _setup(kind="mse"):
    model = make_mlp(True, seed=0)
    x, y, batches = make_data()
    obj = SplitObjective(model, batches, loss=kind)
    theta, f = reference_loss(model, x, y, kind)
    return model, obj, theta, f


def test_rises_are_the_hand_written_loss_at_both_signs():
    model, obj, theta, f = _setup()
    s = 0.8
    res = random_perturbations(obj, s, 4, gen(11), include_skipped=True)
    g = gen(11)
    dirs = [obj.flatten(random_direction(obj.params, g, include_skipped=True)) for _ in range(4)]
    loss0 = float(f(theta))
    assert res.loss0 == pytest.approx(loss0, rel=1e-12) and res.n_evaluations == 9
    for k, d in enumerate(dirs):
        assert res.rise_plus[k] == pytest.approx(float(f(theta + s * d)) - loss0, rel=1e-10, abs=1e-14)
        assert res.rise_minus[k] == pytest.approx(float(f(theta - s * d)) - loss0, rel=1e-10, abs=1e-14)
    assert model.training


def test_curvature_and_slope_match_the_hessian_and_gradient_away_from_a_minimum():
    _, obj, theta, f = _setup()
    g = gen(4)
    dirs = [random_direction(obj.params, g, include_skipped=True) for _ in range(3)]
    s = 1e-3
    res = random_perturbations(obj, s, 0, gen(0), directions=dirs)
    h, grad = hessian(f, theta), jacobian(f, theta)
    for k, d in enumerate(dirs):
        v = obj.flatten(d)
        dhd, gd = float(v @ h @ v), float(grad @ v)
        assert res.curvature[k] == pytest.approx(dhd, rel=1e-4)
        assert res.slope[k] == pytest.approx(gd, rel=1e-5)
        one_sided = 2 * res.rise_plus[k] / s**2  # the shortcut: wrong by 2 g.d / s where g != 0
        assert abs(one_sided - dhd) > 10 * abs(dhd)


def test_summary_band_and_non_finite_rises():
    r = PerturbationResult(scale=0.5, loss0=1.0, rise_plus=np.array([0.1, 0.3, np.nan]),
                           rise_minus=np.array([0.2, -0.1, 0.05]), band=0.15, n_evaluations=7)
    # above 0.15: 0.3, nan, 0.2 -> 3 of 6
    assert r.exceed_fraction == pytest.approx(0.5)
    s = r.summary()
    finite = np.array([0.1, 0.3, 0.2, -0.1, 0.05])
    assert s["rise"]["mean"] == pytest.approx(finite.mean()) and s["rise"]["max"] == pytest.approx(0.3)
    assert s["rise"]["std"] == pytest.approx(finite.std(ddof=1))
    assert s["finite_fraction"] == pytest.approx(5 / 6) and s["n_directions"] == 3
    assert s["curvature_mean"] == pytest.approx(np.mean([0.3 / 0.25, 0.2 / 0.25]))
    assert r.to_dict()["rise_plus"] == [0.1, 0.3, None]
    assert PerturbationResult(0.5, 1.0, np.array([1.0]), np.array([1.0]), None, 3).exceed_fraction is None


class Log(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([[1.0]], dtype=DT))

    def forward(self, batch):
        return torch.log(batch.x @ self.w.T).squeeze(-1)


def test_a_diverging_perturbation_counts_as_leaving_the_band():
    batch = types.SimpleNamespace(x=torch.ones(3, 1, dtype=DT), y=torch.zeros(3, dtype=DT))
    obj = SplitObjective(Log(), [batch])
    d = {"w": torch.ones(1, 1, dtype=DT)}
    res = random_perturbations(obj, 2.0, 0, gen(0), directions=[d], band=100.0)
    assert math.isnan(res.rise_minus[0]) and res.rise_plus[0] == pytest.approx(math.log(3.0) ** 2)
    assert res.exceed_fraction == 0.5


def test_same_seed_same_draw_and_bad_inputs():
    _, obj, _, _ = _setup()
    a = random_perturbations(obj, 0.3, 2, gen(7))
    b = random_perturbations(obj, 0.3, 2, gen(7))
    assert np.array_equal(a.rise_plus, b.rise_plus) and np.array_equal(a.rise_minus, b.rise_minus)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ProbeError):
            random_perturbations(obj, bad, 2, gen(0))
    with pytest.raises(ProbeError):
        random_perturbations(obj, 0.1, 0, gen(0))
