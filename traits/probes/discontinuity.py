"""Discontinuities of sampled loss curves and surfaces, and the smallest scale at which one appears.

The rule (one step = the pair of neighbouring grid points i, i+1 on one line)
--------------------------------------------------------------------------
Sort the line by alpha. For every step i with both losses finite let ``dL_i = L_{i+1} - L_i``,
``h_i = a_{i+1} - a_i``, the slope ``s_i = dL_i / h_i`` and the midpoint ``m_i``. The neighbourhood
``N_i`` is the steps j != i with ``|j - i| <= window`` (default 3) whose two losses are finite. From the
neighbourhood alone (step i never judges itself) estimate what a smooth function could do over step i:

    slope     g_i = median_{j in N_i} |s_j|
    curvature c_i = median over consecutive pairs j, j+1 in N_i of |s_{j+1} - s_j| / (m_{j+1} - m_j)
    offset    r_i = |median_{j in N_i} m_j - m_i|
    expected  E_i = h_i * (g_i + c_i * r_i)

i.e. the change over step i of a function with the neighbourhood's slope, allowed to bend with the
neighbourhood's curvature over the distance between the neighbourhood's centre and step i (r_i = 0 inside
the line, where the neighbours sit on both sides and their median slope already brackets s_i; about 2 h
at the ends of the line, where they sit on one side). Step i is a **jump** when

    |dL_i| > threshold * E_i                                  (default threshold = 5)
    and |dL_i| > max(min_jump * |L(theta)|, noise * max(|L_i|, |L_{i+1}|))

(defaults ``min_jump = 1e-3``: jumps smaller than 0.1 % of the loss at theta are not reported;
``noise = 1e-5``: steps at the level of float32 round-off of the losses themselves are not reported).
Medians make the scale robust to one other jump (or a one-point spike) inside the window; a smooth
function, however steep or curved, has |dL_i| close to E_i: the ratio |dL_i| / E_i is 1.0 for any
parabola, about 1.1 for exp(5a), 1.3 for exp(10a) and 2.2 for exp(20a) (a function that grows e-fold per
grid step) on a grid of spacing 0.05, all below the threshold. A jump is therefore visible on the grid when
it exceeds about ``threshold`` times the smooth change over one grid step; the refinement below then
tells a genuine jump from a rise that is merely steep at the grid's resolution. A step whose
neighbourhood is empty (a line of two points, or one surrounded by non-finite values) cannot be judged and
is not flagged.

**Non-finite transitions** (one loss finite, the other NaN or +-inf: the model diverged between the two
points) are always jumps, of size inf. Steps with both losses non-finite lie inside a diverged region and
are not jumps.

Scale
-----
A jump's ``position`` is the midpoint of its grid bracket, or the refined position after bisection; its
``distance`` from theta is ``|position|`` on a line. ``first_jump_scale`` is the smallest distance over
all jumps on either side of theta (None when the line is smooth). ``smooth_to`` is the largest distance
out to which the line is known to be jump-free: the smallest inner end (|alpha| nearest theta) over the
counting jumps' brackets (at most the extent), or, with no jump, the smaller of the two sides' extents
(the range checked; the one side's extent for a ray).

On a 2-D grid every row and every column is scanned as a line; the distance of a point (alpha, beta)
from theta is Euclidean, sqrt(alpha^2 + beta^2), by default (``metric="chebyshev"``: max(|alpha|,
|beta|), the square shells of the grid). Both reduce to |alpha| on the axes, so 1-D and 2-D scales are
comparable.

Refinement
----------
``refine_jump`` / ``bisect_jump`` bisect a bracket along the line: evaluate the midpoint and keep the half
that holds the jump, that is the half whose ends differ in finiteness for a non-finite transition, and
otherwise the half with the larger |loss difference| (ties, and a non-finite island between two finite
ends, go to the half nearer theta). Each iteration costs one loss evaluation and halves the bracket, so
``iters`` iterations localise the jump to ``h / 2^iters``. A genuine jump keeps its size as the bracket
shrinks while a steep-but-smooth rise shrinks roughly in proportion: the refined jump is ``confirmed``
when the final bracket still spans at least ``persist`` (default 0.5) of the original |dL| (non-finite
transitions are always confirmed). With refinement, only confirmed jumps count for the scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, TypeVar

import numpy as np
import torch

from traits.errors import ProbeError
from traits.probes.metrics import ArrayLike, _as_array
from traits.results import json_float

Metric = Literal["euclidean", "chebyshev"]
_AnyJump = TypeVar("_AnyJump", "Jump", "GridJump")

DEFAULT_THRESHOLD = 5.0
DEFAULT_WINDOW = 3
DEFAULT_MIN_JUMP = 1e-3
DEFAULT_NOISE = 1e-5
DEFAULT_PERSIST = 0.5


def _sorted_coords(coords: np.ndarray, label: str) -> np.ndarray:
    if coords.size == 0 or not np.isfinite(coords).all():
        raise ProbeError(f"{label} must be non-empty and finite")
    order = np.argsort(coords, kind="stable")
    if np.any(np.diff(coords[order]) <= 0):
        raise ProbeError(f"{label} must not repeat a value")
    return order


# ---------------------------------------------------------------------------------------- 1-D
@dataclass
class Jump:
    """One flagged step of a line: the bracket ``lo`` < ``hi`` with its losses (the grid step, or after
    refinement the final bisection bracket; ``grid_lo`` / ``grid_hi`` keep the grid step).

    ``size``: L(grid_hi) - L(grid_lo) (inf for a non-finite transition); ``ratio``: |size| / expected
    change (inf when that is 0 or the transition is non-finite); ``kind``: "step" or "nonfinite";
    ``position``: midpoint of the bracket; ``refined`` / ``confirmed`` / ``n_evals``: the bisection's
    outcome (``confirmed`` is None until refined)."""

    lo: float
    hi: float
    loss_lo: float
    loss_hi: float
    size: float
    ratio: float
    kind: str
    position: float
    grid_lo: float = math.nan
    grid_hi: float = math.nan
    refined: bool = False
    confirmed: bool | None = None
    n_evals: int = 0

    def __post_init__(self) -> None:
        if math.isnan(self.grid_lo):
            self.grid_lo = self.lo
        if math.isnan(self.grid_hi):
            self.grid_hi = self.hi

    @property
    def distance(self) -> float:
        return abs(self.position)

    @property
    def inner(self) -> float:
        """Smallest |alpha| in the bracket: the line is known smooth up to here on this side."""
        return 0.0 if self.lo <= 0.0 <= self.hi else min(abs(self.lo), abs(self.hi))

    def to_dict(self) -> dict:
        return {
            "lo": float(self.lo),
            "hi": float(self.hi),
            "loss_lo": json_float(self.loss_lo),
            "loss_hi": json_float(self.loss_hi),
            "size": json_float(self.size),
            "ratio": json_float(self.ratio),
            "kind": self.kind,
            "position": float(self.position),
            "distance": float(self.distance),
            "inner": float(self.inner),
            "grid_lo": float(self.grid_lo),
            "grid_hi": float(self.grid_hi),
            "refined": bool(self.refined),
            "confirmed": self.confirmed,
            "n_evals": int(self.n_evals),
        }


def _expected_changes(a: np.ndarray, loss: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Per step: (dL, expected change E from the neighbourhood; NaN where it cannot be judged)."""
    n_steps = a.size - 1
    h = np.diff(a)
    finite = np.isfinite(loss[:-1]) & np.isfinite(loss[1:])
    with np.errstate(invalid="ignore"):  # inf - inf in a diverged region: NaN, never used
        d = np.diff(loss)
        s = d / h
    m = 0.5 * (a[:-1] + a[1:])
    expected = np.full(n_steps, np.nan)
    for i in range(n_steps):
        if not finite[i]:
            continue
        nb = [j for j in range(max(0, i - window), min(n_steps, i + window + 1)) if j != i and finite[j]]
        if not nb:
            continue
        slope = float(np.median(np.abs(s[nb])))
        members = set(nb)
        curv = [abs(s[j + 1] - s[j]) / (m[j + 1] - m[j]) for j in nb if j + 1 in members]
        c = float(np.median(curv)) if curv else 0.0
        reach = abs(float(np.median(m[nb])) - m[i])
        expected[i] = h[i] * (slope + c * reach)
    return d, expected


def find_jumps_1d(
    alphas: ArrayLike,
    losses: ArrayLike,
    loss0: float | None,
    threshold: float = DEFAULT_THRESHOLD,
    window: int = DEFAULT_WINDOW,
    min_jump: float = DEFAULT_MIN_JUMP,
    noise: float = DEFAULT_NOISE,
) -> list[Jump]:
    """The jumps of one line by the rule of the module docstring, in order of alpha.

    ``alphas`` may be unsorted (the pairs are sorted together) but must not repeat; ``loss0`` is L(theta)
    and only sets the ``min_jump`` floor (None or a non-finite ``loss0`` drops that floor)."""
    a = _as_array(alphas, 1, "alphas")
    loss = _as_array(losses, 1, "losses")
    if a.shape != loss.shape:
        raise ProbeError(f"alphas {a.shape} and losses {loss.shape} must have equal length")
    if not (threshold > 0 and window >= 1 and min_jump >= 0 and noise >= 0):
        raise ProbeError("find_jumps_1d needs threshold > 0, window >= 1, min_jump >= 0 and noise >= 0")
    order = _sorted_coords(a, "alphas")
    a, loss = a[order], loss[order]
    if a.size < 2:
        return []
    d, expected = _expected_changes(a, loss, window)
    base = min_jump * abs(float(loss0)) if loss0 is not None and math.isfinite(float(loss0)) else 0.0
    jumps: list[Jump] = []
    for i in range(a.size - 1):
        f0, f1 = bool(np.isfinite(loss[i])), bool(np.isfinite(loss[i + 1]))
        if f0 != f1:  # a non-finite transition: always a jump
            size, ratio, kind = math.inf, math.inf, "nonfinite"
        else:
            if not f0 or not np.isfinite(expected[i]):  # inside a diverged region, or not judgeable
                continue
            size = float(d[i])
            floor = max(base, noise * max(abs(float(loss[i])), abs(float(loss[i + 1]))))
            if not (abs(size) > threshold * expected[i] and abs(size) > floor):
                continue
            ratio = abs(size) / expected[i] if expected[i] > 0 else math.inf
            kind = "step"
        mid = 0.5 * (a[i] + a[i + 1])
        jumps.append(
            Jump(float(a[i]), float(a[i + 1]), float(loss[i]), float(loss[i + 1]), size, float(ratio), kind, float(mid))
        )
    return jumps


def _extent(coords: np.ndarray) -> float:
    """How far a line reaches from theta: the smaller of the two sides' extents, or the one side's
    extent for a one-sided line (a ray); 0 for a single point."""
    sides = [float(coords.max()) if coords.max() > 0 else None, float(-coords.min()) if coords.min() < 0 else None]
    present = [x for x in sides if x is not None]
    return min(present) if present else 0.0


def counts(jump: Jump | GridJump) -> bool:
    """Whether a jump counts for the scale: not refined yet, or refined and confirmed."""
    return not jump.refined or bool(jump.confirmed)


def _nearest_first(jumps: Sequence[Jump | GridJump], max_refine: int) -> list[int]:
    """Indices of the ``max_refine`` jumps nearest theta (by inner end, then distance): those to refine."""
    order = sorted(range(len(jumps)), key=lambda k: (jumps[k].inner, jumps[k].distance))
    return order[: max(max_refine, 0)]


def _scan_head(jumps: Sequence[Jump | GridJump], first_scale: float | None) -> dict:
    """The keys a scan result's ``to_dict`` starts with: the jumps, how many count, the first scale."""
    return {
        "jumps": [j.to_dict() for j in jumps],
        "n_jumps": sum(1 for j in jumps if counts(j)),
        "first_scale": json_float(first_scale),
    }


def _first_and_smooth_to(jumps: Sequence[_AnyJump], extent: float) -> tuple[_AnyJump | None, float]:
    """The counting jump nearest theta (by distance, then inner end; None if none counts) and the distance
    known jump-free: the smallest inner end over the counting jumps, at most ``extent``."""
    counting = [j for j in jumps if counts(j)]
    if not counting:
        return None, extent
    first = min(counting, key=lambda j: (j.distance, j.inner))
    return first, min(extent, min(j.inner for j in counting))


def first_jump_scale(
    alphas: ArrayLike,
    losses: ArrayLike,
    loss0: float | None,
    threshold: float = DEFAULT_THRESHOLD,
    window: int = DEFAULT_WINDOW,
    min_jump: float = DEFAULT_MIN_JUMP,
    noise: float = DEFAULT_NOISE,
) -> float | None:
    """The smallest |alpha| (bracket midpoint) at which the line jumps, on either side; None if smooth."""
    jumps = find_jumps_1d(alphas, losses, loss0, threshold, window, min_jump, noise)
    return min((j.distance for j in jumps), default=None)


# ---------------------------------------------------------------------------------------- bisection
@dataclass
class Refinement:
    """Outcome of bisecting one bracket: final bracket [lo, hi] with its losses, ``position`` (its
    midpoint), ``size`` L(hi) - L(lo) (inf for a non-finite transition), ``confirmed`` (module
    docstring), ``n_evals`` loss evaluations spent."""

    position: float
    lo: float
    hi: float
    loss_lo: float
    loss_hi: float
    size: float
    confirmed: bool
    n_evals: int


def _gap(x: float, y: float) -> float:
    return abs(y - x) if math.isfinite(x) and math.isfinite(y) else math.inf


def bisect_jump(
    line_loss: Callable[[float], float],
    a_lo: float,
    a_hi: float,
    loss_lo: float | None = None,
    loss_hi: float | None = None,
    iters: int = 12,
    persist: float = DEFAULT_PERSIST,
) -> Refinement:
    """Bisect [a_lo, a_hi] ``iters`` times, keeping the half that holds the jump (module docstring).

    ``loss_lo`` / ``loss_hi`` are the known losses at the ends (from the grid); ends not given are
    evaluated and counted in ``n_evals``."""
    lo, hi = float(a_lo), float(a_hi)
    if not lo < hi:
        raise ProbeError(f"bisection needs a_lo < a_hi, got {a_lo} and {a_hi}")
    if iters < 0:
        raise ProbeError(f"iters must be >= 0, got {iters}")
    n = 0
    if loss_lo is None:
        loss_lo, n = float(line_loss(lo)), n + 1
    if loss_hi is None:
        loss_hi, n = float(line_loss(hi)), n + 1
    f_lo, f_hi = float(loss_lo), float(loss_hi)
    initial = _gap(f_lo, f_hi)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        f_mid = float(line_loss(mid))
        n += 1
        fin_lo, fin_mid, fin_hi = math.isfinite(f_lo), math.isfinite(f_mid), math.isfinite(f_hi)
        left_nearer = abs(lo) + abs(mid) <= abs(mid) + abs(hi)  # the half nearer theta (alpha = 0)
        if fin_lo != fin_hi:  # a non-finite transition: keep the half where finiteness changes
            keep_left = fin_lo != fin_mid
        elif fin_lo and not fin_mid:  # a non-finite island between finite ends: both halves change
            keep_left = left_nearer
        else:
            left, right = _gap(f_lo, f_mid), _gap(f_mid, f_hi)
            keep_left = left > right or (left == right and left_nearer)
        if keep_left:
            hi, f_hi = mid, f_mid
        else:
            lo, f_lo = mid, f_mid
    final = _gap(f_lo, f_hi)
    # a bracket that still holds a non-finite transition is a divergence: always a discontinuity
    confirmed = math.isinf(final) or (final >= persist * initial and final > 0.0)
    size = f_hi - f_lo if math.isfinite(final) else math.inf
    return Refinement(0.5 * (lo + hi), lo, hi, f_lo, f_hi, size, bool(confirmed), n)


def refine_jump(
    line_loss: Callable[[float], float],
    a_lo: float,
    a_hi: float,
    loss_lo: float | None = None,
    loss_hi: float | None = None,
    iters: int = 12,
) -> tuple[float, int]:
    """(refined position, number of loss evaluations) for a jump bracketed by [a_lo, a_hi]; see
    :func:`bisect_jump` for the full outcome (final bracket, whether the jump persisted)."""
    r = bisect_jump(line_loss, a_lo, a_hi, loss_lo, loss_hi, iters)
    return r.position, r.n_evals


def _refine(jump: Jump, line_loss: Callable[[float], float], iters: int, persist: float) -> Jump:
    r = bisect_jump(line_loss, jump.lo, jump.hi, jump.loss_lo, jump.loss_hi, iters, persist)
    return replace(
        jump,
        lo=r.lo,
        hi=r.hi,
        loss_lo=r.loss_lo,
        loss_hi=r.loss_hi,
        position=r.position,
        refined=True,
        confirmed=r.confirmed,
        n_evals=r.n_evals,
    )


# ---------------------------------------------------------------------------------------- 1-D scan
@dataclass
class CurveJumps:
    """Jumps of one line and its scale. ``first_scale``: distance of the nearest counting jump (None
    if none); ``first_bounds``: that jump's bracket as (inner, outer) distances; ``first_side``: +1 or -1;
    ``smooth_to``: distance known jump-free (module docstring); ``n_extra_evals``: loss evaluations spent
    refining; ``rule``: the parameters used."""

    jumps: list[Jump]
    first_scale: float | None
    first_bounds: tuple[float, float] | None
    first_side: int | None
    smooth_to: float
    n_extra_evals: int
    rule: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            **_scan_head(self.jumps, self.first_scale),
            "first_bounds": None if self.first_bounds is None else [float(x) for x in self.first_bounds],
            "first_side": self.first_side,
            "smooth_to": float(self.smooth_to),
            "n_extra_evals": int(self.n_extra_evals),
            "rule": dict(self.rule),
        }


def scan_curve(
    alphas: ArrayLike,
    losses: ArrayLike,
    loss0: float | None,
    line_loss: Callable[[float], float] | None = None,
    refine_iters: int = 12,
    max_refine: int = 4,
    persist: float = DEFAULT_PERSIST,
    threshold: float = DEFAULT_THRESHOLD,
    window: int = DEFAULT_WINDOW,
    min_jump: float = DEFAULT_MIN_JUMP,
    noise: float = DEFAULT_NOISE,
) -> CurveJumps:
    """Find the jumps of one line and, with ``line_loss`` (alpha -> L(theta + alpha d), e.g.
    :func:`objective_line`), bisect the ``max_refine`` nearest to theta so that the scale is not limited
    by the grid spacing. Refined jumps that do not persist are kept in ``jumps`` with
    ``confirmed=False`` but no longer count for the scale."""
    kw = {"threshold": threshold, "window": window, "min_jump": min_jump, "noise": noise}
    jumps = find_jumps_1d(alphas, losses, loss0, **kw)
    extra = 0
    if line_loss is not None:
        for k in _nearest_first(jumps, max_refine):
            jumps[k] = _refine(jumps[k], line_loss, refine_iters, persist)
            extra += jumps[k].n_evals
    rule = dict(kw, persist=persist, refine_iters=refine_iters if line_loss is not None else 0)
    first, smooth_to = _first_and_smooth_to(jumps, _extent(_as_array(alphas, 1, "alphas")))
    if first is None:
        return CurveJumps(jumps, None, None, None, smooth_to, extra, rule)
    side = 1 if first.position >= 0 else -1
    bounds = (first.inner, max(abs(first.lo), abs(first.hi)))
    return CurveJumps(jumps, first.distance, bounds, side, smooth_to, extra, rule)


# ---------------------------------------------------------------------------------------- 2-D
def _distance(alpha: float, beta: float, metric: Metric) -> float:
    if metric == "euclidean":
        return math.hypot(alpha, beta)
    return max(abs(alpha), abs(beta))


def _line_point(axis: str, fixed: float, t: float) -> tuple[float, float]:
    """(alpha, beta) of the point ``t`` along a grid line: a row (``axis="beta"``: alpha = ``fixed``, beta = t)
    or a column (``axis="alpha"``: alpha = t, beta = ``fixed``)."""
    return (fixed, t) if axis == "beta" else (t, fixed)


def _segment_min_distance(start: tuple[float, float], end: tuple[float, float], metric: Metric) -> float:
    """Smallest distance from theta over an axis-aligned grid segment."""
    (a0, b0), (a1, b1) = start, end
    a = 0.0 if min(a0, a1) <= 0.0 <= max(a0, a1) else min(abs(a0), abs(a1))
    b = 0.0 if min(b0, b1) <= 0.0 <= max(b0, b1) else min(abs(b0), abs(b1))
    return _distance(a, b, metric)


@dataclass
class GridJump:
    """A jump between neighbouring grid points ``start`` -> ``end`` ((alpha, beta) pairs; after
    refinement the final bisection bracket on that segment). ``axis``: "beta" for a row scan (alpha
    fixed, beta varies), "alpha" for a column scan. ``position``: the bracket's midpoint; ``distance``:
    its distance from theta under the grid's metric; ``inner``: the bracket's smallest distance from
    theta; ``size`` / ``ratio`` / ``kind``: as for :class:`Jump` (from the grid step)."""

    axis: str
    start: tuple[float, float]
    end: tuple[float, float]
    position: tuple[float, float]
    distance: float
    inner: float
    size: float
    ratio: float
    kind: str
    loss_start: float
    loss_end: float
    refined: bool = False
    confirmed: bool | None = None
    n_evals: int = 0

    def to_dict(self) -> dict:
        return {
            "axis": self.axis,
            "start": [float(x) for x in self.start],
            "end": [float(x) for x in self.end],
            "position": [float(x) for x in self.position],
            "distance": float(self.distance),
            "inner": float(self.inner),
            "size": json_float(self.size),
            "ratio": json_float(self.ratio),
            "kind": self.kind,
            "loss_start": json_float(self.loss_start),
            "loss_end": json_float(self.loss_end),
            "refined": bool(self.refined),
            "confirmed": self.confirmed,
            "n_evals": int(self.n_evals),
        }


@dataclass
class GridJumps:
    """Jumps of a 2-D grid, every row and column scanned. ``first_scale``: distance of the nearest
    counting jump (None if none); ``first``: that jump; ``smooth_to``: distance known jump-free (the
    smallest inner distance over the counting jumps, at most the grid's inscribed radius
    min(|alpha|, |beta| extents));
    ``n_lines``: rows + columns scanned; ``n_extra_evals``: evaluations spent refining."""

    jumps: list[GridJump]
    first_scale: float | None
    first: GridJump | None
    smooth_to: float
    metric: str
    n_lines: int
    n_extra_evals: int
    extent: float
    rule: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            **_scan_head(self.jumps, self.first_scale),
            "first": None if self.first is None else self.first.to_dict(),
            "smooth_to": float(self.smooth_to),
            "metric": self.metric,
            "n_lines": int(self.n_lines),
            "n_extra_evals": int(self.n_extra_evals),
            "rule": dict(self.rule),
        }


def _summarise_grid(
    jumps: list[GridJump], extent: float, metric: str, n_lines: int, extra: int, rule: dict
) -> GridJumps:
    first, smooth_to = _first_and_smooth_to(jumps, extent)
    first_scale = None if first is None else first.distance
    return GridJumps(jumps, first_scale, first, smooth_to, metric, n_lines, extra, extent, rule)


def grid_jumps_2d(
    alphas: ArrayLike,
    betas: ArrayLike,
    grid: ArrayLike,
    loss0: float | None,
    metric: Metric = "euclidean",
    threshold: float = DEFAULT_THRESHOLD,
    window: int = DEFAULT_WINDOW,
    min_jump: float = DEFAULT_MIN_JUMP,
    noise: float = DEFAULT_NOISE,
) -> GridJumps:
    """Scan every row (alpha_i fixed) and column (beta_j fixed) of ``grid[i, j] = L(alpha_i, beta_j)``
    with :func:`find_jumps_1d`; distances from theta use ``metric``."""
    if metric not in ("euclidean", "chebyshev"):
        raise ProbeError(f"unknown metric {metric!r}; use 'euclidean' or 'chebyshev'")
    a = _as_array(alphas, 1, "alphas")
    b = _as_array(betas, 1, "betas")
    g = _as_array(grid, 2, "grid")
    if g.shape != (a.size, b.size):
        raise ProbeError(f"grid has shape {g.shape}, expected ({a.size}, {b.size})")
    oa, ob = _sorted_coords(a, "alphas"), _sorted_coords(b, "betas")
    a, b, g = a[oa], b[ob], g[np.ix_(oa, ob)]
    kw = {"threshold": threshold, "window": window, "min_jump": min_jump, "noise": noise}
    jumps: list[GridJump] = []

    def add(axis: str, fixed: float, j: Jump) -> None:
        start, end, pos = (_line_point(axis, fixed, t) for t in (j.lo, j.hi, j.position))
        jumps.append(
            GridJump(
                axis,
                start,
                end,
                pos,
                _distance(*pos, metric),
                _segment_min_distance(start, end, metric),
                j.size,
                j.ratio,
                j.kind,
                j.loss_lo,
                j.loss_hi,
            )
        )

    for i in range(a.size):
        for j in find_jumps_1d(b, g[i, :], loss0, **kw):
            add("beta", float(a[i]), j)
    for k in range(b.size):
        for j in find_jumps_1d(a, g[:, k], loss0, **kw):
            add("alpha", float(b[k]), j)
    extent = min(_extent(a), _extent(b))
    rule = dict(kw, persist=None, refine_iters=0)
    return _summarise_grid(jumps, extent, metric, a.size + b.size, 0, rule)


def refine_grid_jumps(
    result: GridJumps,
    point_loss: Callable[[float, float], float],
    iters: int = 12,
    max_refine: int = 4,
    persist: float = DEFAULT_PERSIST,
) -> GridJumps:
    """Bisect the ``max_refine`` grid jumps nearest theta along their grid segment, with
    ``point_loss(alpha, beta) = L(theta + alpha d1 + beta d2)`` (e.g. :func:`objective_point`), and
    recompute the scale from the refined positions. Returns a new ``GridJumps``."""
    metric: Metric = result.metric  # type: ignore[assignment]
    jumps = list(result.jumps)
    extra = result.n_extra_evals
    for k in _nearest_first(jumps, max_refine):
        jp = jumps[k]
        if jp.refined:
            continue
        along = 1 if jp.axis == "beta" else 0  # the coordinate that varies along the segment
        axis, fixed = jp.axis, jp.start[1 - along]
        r = bisect_jump(
            lambda t, axis=axis, fixed=fixed: point_loss(*_line_point(axis, fixed, t)),
            jp.start[along],
            jp.end[along],
            jp.loss_start,
            jp.loss_end,
            iters,
            persist,
        )
        pos, start, end = (_line_point(axis, fixed, t) for t in (r.position, r.lo, r.hi))
        jumps[k] = replace(
            jp,
            start=start,
            end=end,
            loss_start=r.loss_lo,
            loss_end=r.loss_hi,
            position=pos,
            distance=_distance(*pos, metric),
            inner=_segment_min_distance(start, end, metric),
            refined=True,
            confirmed=r.confirmed,
            n_evals=r.n_evals,
        )
        extra += r.n_evals
    rule = dict(result.rule, persist=persist, refine_iters=iters)
    return _summarise_grid(jumps, result.extent, result.metric, result.n_lines, extra, rule)


# ---------------------------------------------------------------------------------------- objective
def objective_point(objective, d1: dict[str, torch.Tensor], d2: dict[str, torch.Tensor] | None = None):
    """(alpha, beta) -> float(L(theta + alpha d1 + beta d2)) for a ``SplitObjective``; one plain
    evaluation per call (what refinement needs)."""

    def point(alpha: float, beta: float = 0.0) -> float:
        params = {}
        for name in objective.names:
            theta = objective.params[name]
            p = theta + float(alpha) * d1[name].to(device=theta.device, dtype=theta.dtype)
            if d2 is not None and beta != 0.0:
                p = p + float(beta) * d2[name].to(device=theta.device, dtype=theta.dtype)
            params[name] = p
        return float(objective.loss(params))

    return point


def objective_line(
    objective, direction: dict[str, torch.Tensor], d2: dict[str, torch.Tensor] | None = None, beta: float = 0.0
) -> Callable[[float], float]:
    """alpha -> float(L(theta + alpha direction + beta d2)): the line of a 1-D curve (or one grid row)."""
    point = objective_point(objective, direction, d2)
    return lambda alpha: point(alpha, beta)
