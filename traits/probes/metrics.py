"""Scalar summaries of loss curves and surfaces.

All functions take plain sequences or tensors (any device) and return Python floats, so their results
go straight into JSON. A NaN (or inf) loss means the model diverged there: it always counts as outside
any tolerance. Thresholds are relative to the loss at theta: ``(1 + tau) * loss0``.
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


def robust_radius(alphas: ArrayLike, losses: ArrayLike, loss0: float, tau: float) -> RadiusResult:
    """Largest |alpha| on the grid such that every point with |alpha'| <= |alpha|, on both sides of 0,
    has loss <= (1 + tau) * loss0.

    Each side is walked outward from 0 until its first point out of tolerance; the radius is the smaller
    of the two sides' last good |alpha|. It is censored when a side that attains that minimum never left
    the tolerance (the range ended first). A non-finite ``loss0`` gives radius 0.
    """
    a, loss = _curve(alphas, losses)
    if tau < 0:
        raise ProbeError(f"tau must be >= 0, got {tau}")
    zero_tol = _zero_tolerance(a)
    if not np.any(np.abs(a) <= zero_tol):
        raise ProbeError("alphas must contain 0 (the curve must pass through theta)")
    if not math.isfinite(loss0):
        return RadiusResult(0.0, False)
    ok = loss <= (1.0 + tau) * loss0  # False for NaN
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


def robust_radius_directions(alphas: ArrayLike, losses: ArrayLike, loss0: float, tau: float) -> DirectionalRadius:
    """``losses`` is (n_directions, len(alphas)); the result's radius is the minimum over directions,
    censored only if every direction attaining that minimum is censored."""
    grid = _as_array(losses, 2, "losses")
    if grid.shape[0] == 0:
        raise ProbeError("at least one direction is needed")
    per = [robust_radius(alphas, row, loss0, tau) for row in grid]
    radius = min(r.radius for r in per)
    censored = all(r.censored for r in per if r.radius == radius)
    return DirectionalRadius(radius=radius, censored=censored, per_direction=per)


def sharpness(alphas: ArrayLike, losses: ArrayLike, loss0: float, eps: float) -> float:
    """max over grid points with |alpha| <= eps of (L - loss0) / loss0.

    A non-finite loss inside the window (or a non-finite ``loss0``) gives ``inf``: the model diverged
    within eps, which is as sharp as it gets (NaN would silently pass a threshold comparison). With
    ``loss0 == 0`` the result is ``inf`` if any loss in the window is positive, else 0.
    """
    a, loss = _curve(alphas, losses)
    if eps < 0:
        raise ProbeError(f"eps must be >= 0, got {eps}")
    window = loss[np.abs(a) <= eps + _zero_tolerance(a)]
    if window.size == 0:
        raise ProbeError(f"no grid point lies within |alpha| <= {eps}")
    if not math.isfinite(loss0) or not np.isfinite(window).all():
        return math.inf
    rise = float((window - loss0).max())
    if loss0 == 0:
        return math.inf if rise > 0 else 0.0
    return rise / loss0


def basin_area_fraction(grid: ArrayLike, loss0: float, tau: float, center: tuple[int, int] | None = None) -> float:
    """Fraction of all grid points that are within (1 + tau) * loss0 AND connected to the centre.

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
    if not math.isfinite(loss0):
        return 0.0
    within = g <= (1.0 + tau) * loss0
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
    alphas: ArrayLike, losses: ArrayLike, loss0: float, tau: float
) -> list[tuple[int, float, float | None]]:
    """For each side of 0 (sign +1, then -1): the last |alpha| on the grid still within tolerance and the
    first |alpha| outside it (None when the side never leaves the tolerance: censored)."""
    a, loss = _curve(alphas, losses)
    zero_tol = _zero_tolerance(a)
    ok = loss <= (1.0 + tau) * loss0
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
