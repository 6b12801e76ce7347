"""Metrics on hand-made curves and grids whose answers are worked out in the comments."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from traits.errors import ProbeError
from traits.probes.metrics import (
    basin_area_fraction,
    nan_fraction,
    ratio,
    robust_radius,
    robust_radius_directions,
    sharpness,
)

ALPHAS = [-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0]
NAN = float("nan")


def test_robust_radius_is_limited_by_the_worse_side():
    # threshold (1 + 0.1) * 1.0 = 1.1; right side leaves it at 0.75, left side at -1.0
    losses = [1.5, 1.05, 1.02, 1.01, 1.0, 1.01, 1.05, 1.2, 1.0]
    r = robust_radius(ALPHAS, losses, 1.0, 0.1)
    assert r == (0.5, False)
    assert r.radius == 0.5 and not r.censored
    # a point that dips back below the threshold beyond the first exceedance does not count (alpha = 1.0)


def test_robust_radius_censored_when_the_range_ends_first():
    losses = [1.09, 1.05, 1.02, 1.01, 1.0, 1.01, 1.02, 1.05, 1.08]
    assert robust_radius(ALPHAS, losses, 1.0, 0.1) == (1.0, True)
    # one side censored but reaching further: the bound comes from the other side, which is exact
    losses = [1.09, 1.05, 1.02, 1.01, 1.0, 1.01, 1.02, 1.2, 1.08]
    assert robust_radius(ALPHAS, losses, 1.0, 0.1) == (0.5, False)
    # uneven range: the left side runs out at -1 still inside, the right side leaves at 1.5 -> the
    # radius 1.0 is only a lower bound (the left side might leave anywhere after -1)
    assert robust_radius([-1.0, -0.5, 0.0, 0.5, 1.0, 1.5], [1.0, 1.0, 1.0, 1.0, 1.0, 2.0], 1.0, 0.1) == (1.0, True)


def test_robust_radius_treats_nan_as_exceeding_and_accepts_unsorted_tensors():
    losses = [1.0, 1.0, 1.0, NAN, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert robust_radius(ALPHAS, losses, 1.0, 0.1) == (0.0, False)
    order = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    a = torch.tensor(ALPHAS)[order]
    curve = torch.tensor([2.0, 1.05, 1.0, 1.0, 1.0, 1.0, 1.0, 1.05, 2.0])[order]
    assert robust_radius(a, curve, 1.0, 0.1) == (0.75, False)
    assert robust_radius(ALPHAS, [1.0] * 9, NAN, 0.1) == (0.0, False)
    with pytest.raises(ProbeError):
        robust_radius([0.5, 1.0], [1.0, 1.0], 1.0, 0.1)  # no alpha = 0


def test_robust_radius_over_directions_takes_the_minimum():
    losses = [
        [1.0] * 9,  # censored at 1.0
        [1.5, 1.05, 1.02, 1.01, 1.0, 1.01, 1.05, 1.2, 1.0],  # 0.5
        [1.5, 1.2, 1.02, 1.01, 1.0, 1.01, 1.05, 1.05, 1.0],  # 0.5 (left side)
    ]
    res = robust_radius_directions(ALPHAS, losses, 1.0, 0.1)
    assert res.radius == 0.5 and not res.censored
    assert [r.radius for r in res.per_direction] == [1.0, 0.5, 0.5]
    assert [r.censored for r in res.per_direction] == [True, False, False]
    json.dumps(res.to_dict())
    assert robust_radius_directions(ALPHAS, [[1.0] * 9, [1.0] * 9], 1.0, 0.1).censored


def test_sharpness():
    losses = [9.0, 3.0, 2.5, 2.2, 2.0, 2.4, 2.6, 4.0, 9.0]
    # |alpha| <= 0.5: max loss 2.6 -> the rise 2.6 - 2 = 0.6 (loss units, not divided by L(theta))
    assert sharpness(ALPHAS, losses, 2.0, 0.5) == pytest.approx(0.6)
    assert sharpness(ALPHAS, losses, 2.0, 0.0) == 0.0
    assert sharpness(ALPHAS, losses, 2.0, 1.0) == pytest.approx(7.0)
    losses[6] = NAN
    assert sharpness(ALPHAS, losses, 2.0, 0.25) == pytest.approx(0.4)
    assert sharpness(ALPHAS, losses, 2.0, 0.5) == math.inf
    with pytest.raises(ProbeError):
        sharpness([-1.0, 1.0], [1.0, 1.0], 1.0, 0.5)


def test_basin_area_counts_only_the_component_of_the_centre():
    g = np.full((5, 5), 5.0)
    g[1:4, 1:4] = 1.0  # a 3x3 basin around the centre: 9 points
    g[0, 0] = 1.0  # low, but diagonal to the basin: not 4-connected
    g[4, 4] = 1.0  # low, isolated
    assert basin_area_fraction(g, 1.0, 0.1) == pytest.approx(9 / 25)
    g[0, 1] = 1.0  # now (0, 0) joins through (0, 1): 11 points
    assert basin_area_fraction(torch.tensor(g), 1.0, 0.1) == pytest.approx(11 / 25)
    g[2, 2] = NAN  # the centre diverged
    assert basin_area_fraction(g, 1.0, 0.1) == 0.0
    g[2, 2] = 1.0
    g[1, 2] = NAN  # NaN inside the basin is outside the tolerance but does not cut it here
    assert basin_area_fraction(g, 1.0, 0.1) == pytest.approx(10 / 25)
    assert basin_area_fraction(g, 1.0, 0.1, center=(4, 4)) == pytest.approx(1 / 25)


def test_nan_fraction_and_ratio():
    g = torch.tensor([[1.0, NAN], [float("inf"), 2.0]])
    assert nan_fraction(g) == 0.5
    assert nan_fraction([1.0, 2.0, 3.0, NAN]) == 0.25
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(3.0, 0.0) is None
    assert ratio(None, 2.0) is None and ratio(2.0, None) is None
    assert ratio(NAN, 2.0) is None and ratio(2.0, NAN) is None
    assert ratio(1e308, 1e-308) is None  # overflows to inf: not a number to report
    assert ratio(torch.tensor(1.0), torch.tensor(4.0)) == 0.25
