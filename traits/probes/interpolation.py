"""The loss along the straight line between two sets of weights, and its barrier.

For weights theta_A (the objective's theta) and theta_B of the same architecture (another checkpoint: a second
seed, a fine-tuned copy, an earlier epoch), the path is

    w(t) = theta_A + t (theta_B - theta_A),   t in [0, 1],

which :func:`traits.probes.surface.surface_1d` evaluates with the direction :func:`difference_direction` and
``alphas = ts`` (t = 0 is theta_A, t = 1 is theta_B; t outside [0, 1] extrapolates). Three such weight sets span
a plane: ``surface_2d(objective, difference_direction(obj, B), difference_direction(obj, C), ts, ts)``.

The barrier (:func:`interpolation_barrier`) is the largest excess of the loss over the straight chord between
the two ends,

    B = max over sampled t in [0, 1] of  L(w(t)) - [(1 - t) L(w(0)) + t L(w(1))],

in the loss's units. B >= 0 by construction (the chord meets the loss at both ends). B = 0 (up to rounding): no
sampled point lies above the chord, the two weight sets are linearly connected on this split. B > 0: the straight
path climbs over a hill of that height above the chord. It is a property of the
pair and of the split's data; it says nothing about curved low-loss paths (mode connectivity by a curve, which the
oxford loss-landscapes package leaves unimplemented), and permuted hidden units make two equally good networks
look separated. The maximum is over the sampled ts only: a narrow hill between grid points is missed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from traits.errors import ProbeError
from traits.probes.objective import SplitObjective


def difference_direction(objective: SplitObjective, other: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """theta_B - theta_A for every trainable parameter (name -> tensor, on the objective's device and dtype); the
    other weights must hold every trainable name of the objective with the same shape. Frozen weights and buffers
    are not part of the path (the objective keeps its own)."""
    out = {}
    for name in objective.names:
        if name not in other:
            raise ProbeError(f"the other weights lack parameter {name!r}")
        theta = objective.params[name]
        b = other[name]
        if tuple(b.shape) != tuple(theta.shape):
            raise ProbeError(f"parameter {name!r} has shape {tuple(b.shape)} in the other weights, "
                             f"{tuple(theta.shape)} here")
        out[name] = b.detach().to(device=theta.device, dtype=theta.dtype) - theta
    return out


@dataclass
class Barrier:
    """``height``: B (loss units; inf when the loss is not finite somewhere in [0, 1]); ``position``: the t of
    the maximum (None when non-finite); ``loss_a``, ``loss_b``: the ends."""

    height: float
    position: float | None
    loss_a: float
    loss_b: float

    def to_dict(self) -> dict:
        finite = np.isfinite(self.height)
        return {"height": float(self.height) if finite else None, "diverged": not finite,
                "position": self.position, "loss_a": self.loss_a, "loss_b": self.loss_b}


def interpolation_barrier(ts: Sequence[float] | torch.Tensor, losses: Sequence[float] | torch.Tensor) -> Barrier:
    """B (module docstring) from a sampled path; ``ts`` must contain 0 and 1 (to within 1e-12), points outside
    [0, 1] are ignored. A NaN or inf loss at any sampled t in [0, 1] gives B = inf: the path diverges."""
    t = np.asarray(torch.as_tensor(ts, dtype=torch.float64).cpu(), dtype=float)
    loss = np.asarray(torch.as_tensor(losses, dtype=torch.float64).cpu(), dtype=float)
    if t.ndim != 1 or loss.shape != t.shape:
        raise ProbeError(f"ts and losses must be 1-D of one length, got {t.shape} and {loss.shape}")
    ends = [np.flatnonzero(np.abs(t - e) <= 1e-12) for e in (0.0, 1.0)]
    if not ends[0].size or not ends[1].size:
        raise ProbeError("ts must contain both ends of the path, t = 0 and t = 1")
    la, lb = float(loss[ends[0][0]]), float(loss[ends[1][0]])
    inside = (t >= -1e-12) & (t <= 1 + 1e-12)
    ti, li = t[inside], loss[inside]
    if not np.isfinite(li).all():
        return Barrier(height=float("inf"), position=None, loss_a=la, loss_b=lb)
    excess = li - ((1 - ti) * la + ti * lb)
    k = int(np.argmax(excess))
    return Barrier(height=float(excess[k]), position=float(ti[k]), loss_a=la, loss_b=lb)
