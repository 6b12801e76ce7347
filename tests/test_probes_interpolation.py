"""Loss along the line between two weight sets and its barrier (traits.probes.interpolation).

The path's losses are checked against the tiny MLP's hand-written loss at (1 - t) theta_A + t theta_B (flat
vectors, no SplitObjective), the barrier against a hand-computed chord excess."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny_models import DT, make_data, make_mlp, reference_loss
from torch import nn

from traits.errors import ProbeError
from traits.probes.interpolation import difference_direction, interpolation_barrier
from traits.probes.objective import SplitObjective
from traits.probes.surface import surface_1d


@pytest.mark.parametrize("batchnorm", [False, True])
def test_path_between_two_networks_matches_the_hand_written_loss(batchnorm):
    a, b = make_mlp(batchnorm, seed=0), make_mlp(batchnorm, seed=1)
    x, y, batches = make_data()
    obj = SplitObjective(a, batches)
    d = difference_direction(obj, dict(b.named_parameters()))
    ts = torch.tensor([-0.25, 0.0, 0.3, 0.5, 1.0, 1.2], dtype=DT)
    path = surface_1d(obj, d, ts)
    theta_a, f = reference_loss(a, x, y)  # a's buffers (BatchNorm running statistics) along the whole path
    theta_b, _ = reference_loss(b, x, y)
    for t, value in zip(ts.tolist(), path.tolist()):
        assert value == pytest.approx(float(f((1 - t) * theta_a + t * theta_b)), rel=1e-11)
    bar = interpolation_barrier(ts, path)
    inside = (ts >= 0) & (ts <= 1)
    chord = (1 - ts) * path[1] + ts * path[4]
    assert bar.height == pytest.approx(float((path - chord)[inside].max()), rel=1e-12, abs=1e-15)
    assert bar.loss_a == pytest.approx(float(obj.loss())) and bar.height >= 0


def test_barrier_rules():
    ts = [-0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5]
    losses = [100.0, 1.0, 2.0, 3.0, 2.0, 3.0, 100.0]  # chord: 1.5, 2.0, 2.5 at 0.25, 0.5, 0.75
    bar = interpolation_barrier(ts, losses)
    assert bar.height == pytest.approx(1.0) and bar.position == 0.5  # the points outside [0, 1] are ignored
    convex = interpolation_barrier([0.0, 0.5, 1.0], [1.0, 0.5, 1.0])
    assert convex.height == 0.0 and convex.position == 0.0
    diverged = interpolation_barrier([0.0, 0.5, 1.0], [1.0, math.nan, 1.0])
    assert math.isinf(diverged.height) and diverged.to_dict()["diverged"] and diverged.to_dict()["height"] is None
    assert interpolation_barrier([0.0, 1.0, 2.0], [1.0, 1.0, math.inf]).height == 0.0  # inf outside [0, 1]
    with pytest.raises(ProbeError):
        interpolation_barrier([0.1, 1.0], [1.0, 1.0])
    with pytest.raises(ProbeError):
        interpolation_barrier([0.0, 1.0], [1.0])


def test_difference_direction_refuses_other_architectures():
    a = make_mlp(False, seed=0)
    _, _, batches = make_data()
    obj = SplitObjective(a, batches)
    other = {n: p.detach().clone() for n, p in a.named_parameters()}
    assert all(torch.count_nonzero(v) == 0 for v in difference_direction(obj, other).values())
    del other["l3.bias"]
    with pytest.raises(ProbeError):
        difference_direction(obj, other)
    other["l3.bias"] = torch.zeros(2, dtype=DT)
    with pytest.raises(ProbeError):
        difference_direction(obj, other)


def test_plane_through_three_networks_hits_each_one():
    nets = [make_mlp(False, seed=s) for s in (0, 1, 2)]
    x, y, batches = make_data()
    obj = SplitObjective(nets[0], batches)
    from traits.probes.surface import surface_2d

    d1, d2 = (difference_direction(obj, dict(n.named_parameters())) for n in nets[1:])
    ts = torch.tensor([0.0, 1.0], dtype=DT)
    grid = surface_2d(obj, d1, d2, ts, ts)
    for (i, j), net in (((0, 0), nets[0]), ((1, 0), nets[1]), ((0, 1), nets[2])):
        theta, f = reference_loss(net, x, y)
        assert float(grid[i, j]) == pytest.approx(float(f(theta)), rel=1e-11)
    assert np.isfinite(grid.numpy()).all() and isinstance(nets[0], nn.Module)
