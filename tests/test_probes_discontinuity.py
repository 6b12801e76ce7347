"""Jump detection on analytic curves and grids whose jumps are known exactly.

References: a parabola plus a step of known size at a known position (the flagged bracket, its size and the
bisected position are checked against the step), smooth but steep functions (never flagged), divergence
(NaN/inf) boundaries at known positions, a 2-D surface with a step along the line alpha + beta = 0.7 (the
flagged segments must be exactly the grid segments that cross the line), and a model whose prediction
jumps when one weight crosses a known value.
"""

from __future__ import annotations

import json
import math
import types

import numpy as np
import pytest
import torch
from torch import nn

from traits.errors import ProbeError
from traits.probes.discontinuity import (
    bisect_jump,
    find_jumps_1d,
    first_jump_scale,
    grid_jumps_2d,
    objective_line,
    refine_grid_jumps,
    refine_jump,
    scan_curve,
)
from traits.probes.landscape import landscape_stats
from traits.probes.objective import SplitObjective
from traits.probes.surface import surface_1d

ALPHAS = np.linspace(-1.0, 1.0, 41)  # spacing h = 0.05
H = 0.05
STEP_AT, STEP = 0.3371, 0.8


def step_curve(x):
    """1 + 2 x^2 with a step of STEP at STEP_AT (right-continuous)."""
    x = np.asarray(x, dtype=np.float64)
    return 1.0 + 2.0 * x**2 + STEP * (x >= STEP_AT)


class Counter:
    def __init__(self, f) -> None:
        self.f, self.calls = f, 0

    def __call__(self, x: float) -> float:
        self.calls += 1
        return float(self.f(x))


def test_step_on_a_parabola_is_found_and_bisected():
    losses = step_curve(ALPHAS)
    jumps = find_jumps_1d(ALPHAS, losses, 1.0)
    assert len(jumps) == 1
    j = jumps[0]
    assert j.lo == pytest.approx(0.30) and j.hi == pytest.approx(0.35) and j.kind == "step"
    assert j.size == pytest.approx(float(step_curve(0.35) - step_curve(0.30)))
    assert first_jump_scale(ALPHAS, losses, 1.0) == pytest.approx(0.325)

    f = Counter(step_curve)
    pos, n = refine_jump(f, j.lo, j.hi, j.loss_lo, j.loss_hi, iters=12)
    assert n == 12 == f.calls  # the bracket's losses came from the grid: one evaluation per iteration
    assert abs(pos - STEP_AT) <= H / 2**12
    f = Counter(step_curve)
    pos2, n2 = refine_jump(f, j.lo, j.hi, iters=12)
    assert (pos2, n2) == (pos, 14) and f.calls == 14  # without them the two ends are evaluated too

    r = bisect_jump(step_curve, j.lo, j.hi, iters=20)
    assert r.lo < STEP_AT <= r.hi and r.hi - r.lo == pytest.approx(H / 2**20)
    assert r.confirmed and r.size == pytest.approx(STEP, abs=1e-5)  # the step survives: a genuine jump

    scan = scan_curve(ALPHAS, losses, 1.0, line_loss=step_curve, refine_iters=12)
    assert scan.first_scale == pytest.approx(STEP_AT, abs=H / 2**12) and scan.first_side == 1
    assert scan.n_extra_evals == 12 and scan.jumps[0].confirmed
    lo, hi = scan.first_bounds
    assert lo < STEP_AT <= hi and hi - lo == pytest.approx(H / 2**12)
    assert scan.smooth_to == pytest.approx(lo)
    out = scan.to_dict()
    json.dumps(out, allow_nan=False)
    assert out["n_jumps"] == 1 and out["jumps"][0]["grid_lo"] == pytest.approx(0.30)


def test_the_nearest_jump_on_either_side_sets_the_scale():
    losses = 1.0 + ALPHAS**2 + 0.5 * (ALPHAS >= 0.62) + 0.7 * (ALPHAS <= -0.41)
    jumps = find_jumps_1d(ALPHAS, losses, 1.0)
    assert [(round(j.lo, 2), round(j.hi, 2)) for j in jumps] == [(-0.45, -0.40), (0.60, 0.65)]
    scan = scan_curve(ALPHAS, losses, 1.0)
    assert scan.first_scale == pytest.approx(0.425) and scan.first_side == -1
    assert scan.first_bounds == pytest.approx((0.40, 0.45)) and scan.smooth_to == pytest.approx(0.40)
    # unsorted input gives the same answer
    perm = np.random.default_rng(0).permutation(ALPHAS.size)
    assert first_jump_scale(ALPHAS[perm], losses[perm], 1.0) == pytest.approx(0.425)


def test_landscape_stats_keep_each_directions_jump_positions():
    """What the report draws on the 1D curves: per direction, the signed refined jump positions."""
    left = lambda x: 1.0 + np.asarray(x) ** 2 + 0.7 * (np.asarray(x) <= -0.41)  # noqa: E731
    smooth = lambda x: 1.0 + 3.0 * np.asarray(x) ** 2  # noqa: E731
    curves = [step_curve(ALPHAS), smooth(ALPHAS), left(ALPHAS)]
    functions = [step_curve, smooth, left]
    stats = landscape_stats(ALPHAS, curves.copy(), 1.0, None, line_loss=lambda k: functions[k])
    assert len(stats.jumps_1d) == 3 and stats.jumps_1d[1] == []
    assert stats.jumps_1d[0] == [pytest.approx(STEP_AT, abs=H / 2**12)]
    assert stats.jumps_1d[2] == [pytest.approx(-0.41, abs=H / 2**12)]
    assert stats.n_jumps == 2 and stats.first_jump == pytest.approx(STEP_AT, abs=H / 2**12)
    assert stats.extra_evaluations == 24
    unrefined = landscape_stats(ALPHAS, curves, 1.0, None)
    assert unrefined.jumps_1d[0] == [pytest.approx(0.325)] and unrefined.extra_evaluations == 0
    json.dumps(stats.to_dict(), allow_nan=False)


SMOOTH = {
    "steep parabola": lambda x: 0.01 + 100.0 * x**2,
    "off-grid parabola": lambda x: 1.0 + 100.0 * (x - 0.013) ** 2,
    "exp(5a)": lambda x: np.exp(5.0 * x),
    "exp(10a)": lambda x: np.exp(10.0 * x),
    "exp(-8a)": lambda x: np.exp(-8.0 * x),
    "exp(20a)": lambda x: np.exp(20.0 * x),
    "cosh": lambda x: np.cosh(6.0 * x),
    "quartic": lambda x: 0.01 + 50.0 * x**4,
    "kink": lambda x: 1.0 + 3.0 * np.abs(x - 0.013),
}


@pytest.mark.parametrize("name", list(SMOOTH))
def test_smooth_steep_curves_are_not_flagged(name):
    f = SMOOTH[name]
    losses = f(ALPHAS)
    assert find_jumps_1d(ALPHAS, losses, float(f(0.0))) == []
    scan = scan_curve(ALPHAS, losses, float(f(0.0)), line_loss=f)
    assert scan.first_scale is None and scan.smooth_to == 1.0 and scan.n_extra_evals == 0


def test_a_rise_steep_only_at_grid_resolution_is_rejected_by_bisection():
    def f(x):
        return 2.0 + np.tanh((np.asarray(x) - 0.312) / 0.004)  # smooth, 12x narrower than the grid spacing

    losses = f(ALPHAS)
    jumps = find_jumps_1d(ALPHAS, losses, float(f(0.0)))
    # on the grid the rise (and the start of its tail) is indistinguishable from a jump ...
    assert any(j.lo == pytest.approx(0.30) and j.hi == pytest.approx(0.35) for j in jumps)
    # ... bisection resolves it as smooth: no jump persists, so the curve counts as smooth
    scan = scan_curve(ALPHAS, losses, float(f(0.0)), line_loss=f, refine_iters=14)
    assert all(j.refined and j.confirmed is False for j in scan.jumps)
    assert scan.first_scale is None and scan.smooth_to == 1.0 and scan.n_extra_evals == 14 * len(jumps)
    assert scan.to_dict()["n_jumps"] == 0


def test_nonfinite_transitions_are_jumps():
    boundary = 0.6123

    def f(x):
        return 1.0 + x**2 if x < boundary else math.nan

    losses = np.array([f(a) for a in ALPHAS])
    jumps = find_jumps_1d(ALPHAS, losses, 1.0)
    assert len(jumps) == 1 and jumps[0].kind == "nonfinite" and math.isinf(jumps[0].size)
    assert (jumps[0].lo, jumps[0].hi) == pytest.approx((0.60, 0.65))
    pos, n = refine_jump(f, jumps[0].lo, jumps[0].hi, jumps[0].loss_lo, jumps[0].loss_hi, iters=16)
    assert abs(pos - boundary) <= H / 2**16 and n == 16
    scan = scan_curve(ALPHAS, losses, 1.0, line_loss=f, refine_iters=16)
    assert scan.jumps[0].confirmed and scan.first_scale == pytest.approx(boundary, abs=1e-5)
    d = scan.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["jumps"][0]["size"] is None and d["jumps"][0]["ratio"] is None

    # an isolated diverged point (+inf) on the other side: two transitions around it, nearer than the boundary
    losses[12] = math.inf  # alpha = -0.4
    jumps = find_jumps_1d(ALPHAS, losses, 1.0)
    assert [(round(j.lo, 2), round(j.hi, 2), j.kind) for j in jumps] == [
        (-0.45, -0.40, "nonfinite"),
        (-0.40, -0.35, "nonfinite"),
        (0.60, 0.65, "nonfinite"),
    ]
    assert first_jump_scale(ALPHAS, losses, 1.0) == pytest.approx(0.375)
    # the smooth steps next to the diverged points are judged from their finite neighbours only
    losses2 = losses.copy()
    losses2[ALPHAS >= -0.30] += 0.8 * (ALPHAS[ALPHAS >= -0.30] >= -0.22)
    found = [(round(j.lo, 2), j.kind) for j in find_jumps_1d(ALPHAS, losses2, 1.0)]
    assert (-0.25, "step") in found and len(found) == 4


def test_a_single_point_spike_is_two_jumps():
    losses = 1.0 + ALPHAS**2
    losses[24] += 0.5  # alpha = 0.2
    jumps = find_jumps_1d(ALPHAS, losses, 1.0)
    assert [(round(j.lo, 2), round(j.hi, 2)) for j in jumps] == [(0.15, 0.20), (0.20, 0.25)]
    assert jumps[0].size > 0 > jumps[1].size


def test_floors_ignore_tiny_steps_and_round_off():
    flat = np.ones_like(ALPHAS)
    noisy = flat + 1e-9 * np.random.default_rng(1).standard_normal(ALPHAS.size)
    assert find_jumps_1d(ALPHAS, noisy, 1.0) == []
    small = flat + 5e-4 * (ALPHAS >= 0.3)  # below 0.1 % of L(theta)
    assert find_jumps_1d(ALPHAS, small, 1.0) == []
    assert len(find_jumps_1d(ALPHAS, small, 1.0, min_jump=1e-4)) == 1
    big = flat + 2e-2 * (ALPHAS >= 0.3)  # on a perfectly flat line any real step is infinitely sharp
    (j,) = find_jumps_1d(ALPHAS, big, 1.0)
    assert math.isinf(j.ratio) and j.to_dict()["ratio"] is None


def test_input_errors():
    with pytest.raises(ProbeError, match="repeat"):
        find_jumps_1d([0.0, 0.5, 0.5], [1.0, 1.0, 1.0], 1.0)
    with pytest.raises(ProbeError, match="equal length"):
        find_jumps_1d([0.0, 0.5], [1.0], 1.0)
    with pytest.raises(ProbeError):
        bisect_jump(step_curve, 0.4, 0.3)
    assert find_jumps_1d([0.0], [1.0], 1.0) == []
    assert find_jumps_1d([0.0, 1.0], [1.0, 5.0], 1.0) == []  # one step has no neighbourhood to judge it by


# ------------------------------------------------------------------------------- 2-D
def surface(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return 1.0 + a**2 + 0.5 * b**2 + 1.5 * (a + b >= 0.7)


def test_grid_jumps_are_the_segments_crossing_the_step_line():
    coords = np.linspace(-1.0, 1.0, 21)  # spacing 0.1
    grid = surface(coords[:, None], coords[None, :])
    res = grid_jumps_2d(coords, coords, grid, 1.0)

    # reference: every grid segment whose two ends lie on different sides of alpha + beta = 0.7
    side = (coords[:, None] + coords[None, :]) >= 0.7
    expected = set()
    for i in range(21):
        for k in range(20):
            if side[i, k] != side[i, k + 1]:
                expected.add(("beta", round(coords[i], 6), round(coords[k], 6)))
            if side[k, i] != side[k + 1, i]:
                expected.add(("alpha", round(coords[i], 6), round(coords[k], 6)))
    found = {
        (
            j.axis,
            round(j.start[0] if j.axis == "beta" else j.start[1], 6),
            round(j.start[1] if j.axis == "beta" else j.start[0], 6),
        )
        for j in res.jumps
    }
    assert found == expected and len(found) > 20
    assert res.n_lines == 42

    mids = [math.hypot(*j.position) for j in res.jumps]
    assert res.first_scale == pytest.approx(min(mids))
    assert abs(res.first_scale - 0.35 * math.sqrt(2)) < 0.1  # the line's nearest point to theta
    assert res.smooth_to <= res.first_scale
    cheb = grid_jumps_2d(coords, coords, grid, 1.0, metric="chebyshev")
    assert cheb.first_scale == pytest.approx(min(max(abs(x) for x in j.position) for j in cheb.jumps))

    # refine along the segments: the nearest crossing of the step line with a grid line, exactly
    crossings = [math.hypot(c, 0.7 - c) for c in coords if -1.0 <= 0.7 - c <= 1.0]
    refined = refine_grid_jumps(res, lambda a, b: float(surface(a, b)), iters=14, max_refine=6)
    assert refined.first_scale == pytest.approx(min(crossings), abs=1e-4)
    assert refined.n_extra_evals == 6 * 14 and refined.first.confirmed
    json.dumps(refined.to_dict(), allow_nan=False)


def test_smooth_grid_has_no_jumps_and_reports_its_extent():
    a = np.linspace(-0.8, 0.8, 17)
    b = np.linspace(-0.5, 0.5, 11)
    grid = np.exp(3 * a[:, None]) + 40 * b[None, :] ** 2
    res = grid_jumps_2d(a, b, grid, 1.0)
    assert res.jumps == [] and res.first_scale is None and res.smooth_to == pytest.approx(0.5)
    with pytest.raises(ProbeError, match="shape"):
        grid_jumps_2d(a, b, grid.T, 1.0)


# ------------------------------------------------------------------------------- a model
class Switch(nn.Module):
    """A linear model whose output gains 1.0 once W[0, 0] reaches 0.25: a genuine jump in weight space."""

    def __init__(self) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.tensor([[0.0, 0.5]], dtype=torch.float64))

    def forward(self, batch):
        return (batch.x @ self.W.T).squeeze(-1) + (self.W[0, 0] >= 0.25).to(batch.x.dtype)


def test_refinement_along_a_line_of_a_real_objective():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 2, generator=g, dtype=torch.float64)
    obj = SplitObjective(Switch(), [types.SimpleNamespace(x=x, y=x[:, 1] * 0.5)])
    direction = {"W": torch.tensor([[1.0, 0.0]], dtype=torch.float64)}
    alphas = torch.linspace(-1.0, 1.0, 21, dtype=torch.float64)
    curve = surface_1d(obj, direction, alphas)
    loss0 = float(obj.loss())
    line = objective_line(obj, direction)
    assert line(0.0) == pytest.approx(loss0) and line(0.7) == pytest.approx(float(curve[17]))
    scan = scan_curve(alphas, curve, loss0, line_loss=line, refine_iters=16)
    assert len(scan.jumps) == 1 and scan.jumps[0].confirmed
    assert scan.first_scale == pytest.approx(0.25, abs=0.1 / 2**16) and scan.n_extra_evals == 16
    assert scan.jumps[0].size == pytest.approx(float(curve[13] - curve[12]))
