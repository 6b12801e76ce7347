"""Scalar summaries of loss curves and surfaces.

All functions take plain sequences or tensors (any device) and return Python floats, so their results
go straight into JSON. A NaN (or inf) loss means the model diverged there: it always counts as outside
any tolerance.

Tolerance: an absolute band, not a multiple of L(theta)
-------------------------------------------------------
The robust radius, the sharpness and the basin area measure the *rise* of the loss above its value at
theta, ``L(theta + d) - L(theta)``, against a band ``delta`` in the loss's own units:

    inside  <=>  L(theta + d) - L(theta) <= delta.

A band relative to each split's own level, ``L <= (1 + tau) L(theta)``, is ``delta = tau L(theta)``: a split
with a higher loss at theta (the OOD set, by construction) gets a wider band, so it looks flatter and its
basin wider for the very reason it is worse, and an OOD/ID ratio of radii restates the loss ratio
(in the MP study the radius and basin-area ratios correlated with the OOD error with the wrong sign). With
one ``delta`` for every split of an audit the ratio compares the shapes of the surfaces alone, and adding
a constant to every loss of a split leaves all three numbers unchanged. The audit takes
``delta = tau * L_ID(theta)`` (:func:`band`): the spec's tau keeps its meaning on the ID split and the
same absolute rise is asked of every other split.

Resolution: a radius shorter than one grid step, or a basin of a single grid point, says only that the
true value lies under the grid's resolution (:func:`radius_below_resolution`, :func:`basin_below_resolution`);
such a value is reported as a bound, never as a number in a ratio or a gate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from scipy import ndimage

from traits.errors import ProbeError

ArrayLike = torch.Tensor | np.ndarray | Sequence[float]


def _as_array(x: ArrayLike, ndim: int, label: str) -> np.ndarray:
    """``x`` as a float64 array (a tensor is detached and copied to the CPU) that must be ``ndim``-D."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != ndim:
        raise ProbeError(f"{label} must be {ndim}-D, got shape {arr.shape}")
    return arr


def _curve(alphas: ArrayLike, losses: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a = _as_array(alphas, 1, "alphas")
    loss = _as_array(losses, 1, "losses")
    if a.shape != loss.shape or a.size == 0:
        raise ProbeError(f"alphas {a.shape} and losses {loss.shape} must be non-empty and of equal length")
    if not np.isfinite(a).all():
        raise ProbeError("alphas must be finite")
    order = np.argsort(a, kind="stable")
    return a[order], loss[order]


def _zero_tolerance(a: np.ndarray) -> float:
    return 1e-9 * max(float(np.abs(a).max()), 1e-300)


class RadiusResult(NamedTuple):
    """``radius``: the robust radius on the grid; ``censored``: True when no grid point out to the end of
    the range left the tolerance, so the true radius is at least ``radius`` (a lower bound)."""

    radius: float
    censored: bool


def band(tau: float, reference_loss: float | None) -> float | None:
    """The audit's absolute band ``delta = tau * reference_loss`` (the ID loss at theta), or None when the
    reference is missing or not finite."""
    if tau < 0 or not math.isfinite(tau):
        raise ProbeError(f"tau must be a finite number >= 0, got {tau}")
    if reference_loss is None or not math.isfinite(reference_loss):
        return None
    return float(tau) * float(reference_loss)


def _check_band(delta: float) -> None:
    if not (delta >= 0 and math.isfinite(delta)):
        raise ProbeError(f"the tolerance band must be a finite number >= 0 (loss units), got {delta}")


def robust_radius(alphas: ArrayLike, losses: ArrayLike, loss0: float, delta: float) -> RadiusResult:
    """Largest |alpha| on the grid such that every point with |alpha'| <= |alpha|, on both sides of 0,
    has loss - loss0 <= delta (an absolute band, module docstring).

    Each side is walked outward from 0 until its first point out of tolerance; the radius is the smaller
    of the two sides' last good |alpha|. It is censored when a side that attains that minimum never left
    the tolerance (the range ended first). A non-finite ``loss0`` gives radius 0.
    """
    a, loss = _curve(alphas, losses)
    _check_band(delta)
    zero_tol = _zero_tolerance(a)
    if not np.any(np.abs(a) <= zero_tol):
        raise ProbeError("alphas must contain 0 (the curve must pass through theta)")
    if not math.isfinite(loss0):
        return RadiusResult(0.0, False)
    ok = loss - loss0 <= delta  # False for NaN
    sides = []
    for mask in (a >= -zero_tol, a <= zero_tol):
        mags = np.abs(a[mask])
        good = ok[mask]
        order = np.argsort(mags, kind="stable")
        mags, good = mags[order], good[order]
        radius, censored = 0.0, True
        for mag, fine in zip(mags, good):
            if not fine:
                censored = False
                break
            radius = 0.0 if mag <= zero_tol else float(mag)
        sides.append((radius, censored))
    radius = min(r for r, _ in sides)
    censored = any(c for r, c in sides if r == radius)
    return RadiusResult(radius, censored)


@dataclass
class DirectionalRadius:
    """Robust radius over several directions: the minimum and each direction's own result."""

    radius: float
    censored: bool
    per_direction: list[RadiusResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "radius": self.radius,
            "censored": self.censored,
            "per_direction": [{"radius": r.radius, "censored": r.censored} for r in self.per_direction],
        }


def interpolated_radius(alphas: ArrayLike, losses: ArrayLike, loss0: float, delta: float) -> float | None:
    """The robust radius with the crossing of L(θ) + δ placed by linear interpolation between the last grid
    point inside the band and the first outside, on each side of 0, the smaller side taken: a continuous function
    of the losses (the grid radius of :func:`robust_radius` jumps from point to point), so that a jackknife over
    structures can read its spread. A first point outside that is not finite puts the crossing halfway. None when a
    side never leaves the band (censored) or ``loss0`` is not finite."""
    a, loss = _curve(alphas, losses)
    _check_band(delta)
    zero_tol = _zero_tolerance(a)
    if not math.isfinite(loss0):
        return None
    threshold = loss0 + delta
    sides = []
    for mask in (a >= -zero_tol, a <= zero_tol):
        mags, vals = np.abs(a[mask]), loss[mask]
        order = np.argsort(mags, kind="stable")
        mags, vals = mags[order], vals[order]
        crossing = None
        for j in range(1, mags.size):
            if not (vals[j] <= threshold):  # NaN is outside
                lo, hi = vals[j - 1], vals[j]
                if math.isfinite(hi) and hi > lo:
                    crossing = mags[j - 1] + (threshold - lo) / (hi - lo) * (mags[j] - mags[j - 1])
                else:
                    crossing = (mags[j - 1] + mags[j]) / 2
                break
        if crossing is None:
            return None
        sides.append(float(crossing))
    return min(sides)


def robust_radius_directions(alphas: ArrayLike, losses: ArrayLike, loss0: float, delta: float) -> DirectionalRadius:
    """``losses`` is (n_directions, len(alphas)); the result's radius is the minimum over directions,
    censored only if every direction attaining that minimum is censored."""
    grid = _as_array(losses, 2, "losses")
    if grid.shape[0] == 0:
        raise ProbeError("at least one direction is needed")
    per = [robust_radius(alphas, row, loss0, delta) for row in grid]
    radius = min(r.radius for r in per)
    censored = all(r.censored for r in per if r.radius == radius)
    return DirectionalRadius(radius=radius, censored=censored, per_direction=per)


def sharpness(alphas: ArrayLike, losses: ArrayLike, loss0: float, eps: float) -> float:
    """max over grid points with |alpha| <= eps of L - loss0: the largest rise within eps, in the loss's
    units (not divided by loss0, which would make a split with a higher loss at theta look flatter).

    A non-finite loss inside the window (or a non-finite ``loss0``) gives ``inf``: the model diverged
    within eps, which is as sharp as it gets (NaN would silently pass a threshold comparison).
    """
    a, loss = _curve(alphas, losses)
    if eps < 0:
        raise ProbeError(f"eps must be >= 0, got {eps}")
    window = loss[np.abs(a) <= eps + _zero_tolerance(a)]
    if window.size == 0:
        raise ProbeError(f"no grid point lies within |alpha| <= {eps}")
    if not math.isfinite(loss0) or not np.isfinite(window).all():
        return math.inf
    return float((window - loss0).max())


def basin_area_fraction(grid: ArrayLike, loss0: float, delta: float, center: tuple[int, int] | None = None) -> float:
    """Fraction of all grid points whose loss is at most loss0 + delta AND that are connected to the centre.

    Connectivity is 4-neighbour (``scipy.ndimage.label``'s default structure): a separate low region
    elsewhere in the plane is another basin, not part of this one, so it does not count. ``center`` is the
    grid index of theta, by default (n_alpha // 2, n_beta // 2), the middle of a symmetric odd grid. If
    theta's own point is out of tolerance (or NaN) the fraction is 0. The denominator is the number of
    grid points, NaN ones included.
    """
    g = _as_array(grid, 2, "grid")
    if g.size == 0:
        raise ProbeError("the grid is empty")
    ci, cj = (g.shape[0] // 2, g.shape[1] // 2) if center is None else center
    if not (0 <= ci < g.shape[0] and 0 <= cj < g.shape[1]):
        raise ProbeError(f"centre {center} is outside the grid of shape {g.shape}")
    _check_band(delta)
    if not math.isfinite(loss0):
        return 0.0
    within = g - loss0 <= delta
    if not within[ci, cj]:
        return 0.0
    labels, _ = ndimage.label(within)
    return float((labels == labels[ci, cj]).sum()) / g.size


def nan_fraction(grid: ArrayLike) -> float:
    """Fraction of non-finite values (NaN or +-inf: both mean the loss diverged) in a curve or grid."""
    if isinstance(grid, torch.Tensor):
        grid = grid.detach().to("cpu", torch.float64).numpy()
    g = np.asarray(grid, dtype=np.float64)
    if g.size == 0:
        raise ProbeError("cannot take the NaN fraction of an empty array")
    return float((~np.isfinite(g)).sum()) / g.size


def ratio(ood: float | None, id: float | None) -> float | None:  # noqa: A002 - name from the design
    """ood / id, or None when either is None or NaN, when id is 0, or when the ratio is not finite."""
    if ood is None or id is None:
        return None
    ood, id = float(ood), float(id)  # noqa: A001
    if math.isnan(ood) or math.isnan(id) or id == 0.0:
        return None
    value = ood / id
    return value if math.isfinite(value) else None


def side_brackets(
    alphas: ArrayLike, losses: ArrayLike, loss0: float, delta: float
) -> list[tuple[int, float, float | None]]:
    """For each side of 0 (sign +1, then -1): the last |alpha| on the grid still within loss0 + delta and
    the first |alpha| outside it (None when the side never leaves the band: censored)."""
    a, loss = _curve(alphas, losses)
    _check_band(delta)
    zero_tol = _zero_tolerance(a)
    ok = loss - loss0 <= delta
    out = []
    for sign, mask in ((1, a >= -zero_tol), (-1, a <= zero_tol)):
        mags, good = np.abs(a[mask]), ok[mask]
        order = np.argsort(mags, kind="stable")
        inside, outside = 0.0, None
        for mag, fine in zip(mags[order], good[order]):
            if not fine:
                outside = float(mag)
                break
            inside = float(mag)
        out.append((sign, inside, outside))
    return out


def refine_radius(line_loss: Callable[[float], float], inside: float, outside: float, threshold: float,
                  iters: int = 12) -> tuple[float, int]:
    """Bisect between ``inside`` (loss <= threshold) and ``outside`` (loss > threshold or non-finite)
    along a line, so the robust radius is not limited by the grid spacing. Returns (radius, evaluations);
    the radius is the last point known to be inside, so it never overstates the robust region."""
    if not inside < outside:
        raise ProbeError(f"bisection needs inside < outside, got {inside} and {outside}")
    for _ in range(iters):
        mid = 0.5 * (inside + outside)
        value = line_loss(mid)
        if math.isfinite(value) and value <= threshold:
            inside = mid
        else:
            outside = mid
    return inside, iters


def radius_below_resolution(radius: float | None, step: float | None) -> bool:
    """True when a robust radius is shorter than one step of the grid it was read from: no grid point
    other than theta lies inside the band on the limiting side, so the grid does not resolve it."""
    if radius is None or step is None or not (step > 0):
        return False
    return radius < step


def basin_below_resolution(fraction: float | None, shape: tuple[int, int]) -> bool:
    """True when a basin holds at most one grid point (theta's own): its area is under one cell."""
    if fraction is None:
        return False
    n = shape[0] * shape[1]
    return n > 0 and fraction * n < 1.5
