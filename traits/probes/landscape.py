"""Per-split statistics of sampled loss landscapes: discontinuities and loss entropy.

These work on the 1D curves and 2D grid a surface probe produced (so they can also be recomputed from a
stored ``results.json``), optionally refining each jump by bisection when a line-loss callable is given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from traits.probes.discontinuity import counts, grid_jumps_2d, refine_grid_jumps, scan_curve
from traits.probes.entropy import entropy_summary
from traits.results import nan_array


@dataclass
class LandscapeStats:
    """``first_jump``: smallest perturbation scale (|α|, or distance from θ on the 2D grid) at which the
    loss jumps (None: smooth everywhere sampled); ``smooth_to``: the loss is smooth at least this far;
    ``n_jumps``; ``extra_evaluations`` spent refining jumps; ``entropy`` and ``entropy_relative``: the
    loss-landscape entropy (Vita & Schwalbe-Koda 2023) over every sampled point at ``temperature``;
    ``jumps_1d``: per 1D direction, the signed positions α of its counting jumps, nearest θ first (what
    the report marks on the 1D curves)."""

    first_jump: float | None
    smooth_to: float | None
    n_jumps: int
    extra_evaluations: int
    entropy: float | None
    entropy_relative: float | None
    temperature: float | None
    jumps_1d: list[list[float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()}


def landscape_stats(
    alphas: Sequence[float],
    curves: Sequence[Sequence[float | None]],
    loss0: float,
    temperature: float | None,
    *,
    alphas_2d: Sequence[float] | None = None,
    grid: Sequence[Sequence[float | None]] | None = None,
    line_loss: Callable[[int], Callable[[float], float]] | None = None,
    point_loss: Callable[[float, float], float] | None = None,
) -> LandscapeStats:
    """Jumps along every 1D curve (and every row/column of the 2D grid) and the loss entropy.

    ``line_loss(k)`` returns the loss along direction k as a function of α (for bisection refinement);
    ``point_loss(α, β)`` the loss on the 2D plane. Without them jumps are located to the grid spacing.
    """
    a = np.asarray(alphas, dtype=float)
    scales, smooth, n_jumps, extra, positions = [], [], 0, 0, []
    sampled = []
    for k, curve in enumerate(curves):
        values = nan_array(curve)
        sampled.append(values)
        scan = scan_curve(a, values, loss0, line_loss=line_loss(k) if line_loss else None)
        counting = sorted((j for j in scan.jumps if counts(j)), key=lambda j: j.distance)
        n_jumps += len(counting)
        positions.append([float(j.position) for j in counting])
        extra += scan.n_extra_evals
        if scan.first_scale is not None:
            scales.append(scan.first_scale)
        if scan.smooth_to is not None:
            smooth.append(scan.smooth_to)
    if grid is not None and alphas_2d is not None and len(grid):
        g = nan_array(grid)
        sampled.append(g.reshape(-1))
        b = np.asarray(alphas_2d, dtype=float)
        found = grid_jumps_2d(b, b, g, loss0)
        if point_loss is not None:
            found = refine_grid_jumps(found, point_loss)
        n_jumps += sum(1 for j in found.jumps if counts(j))
        extra += found.n_extra_evals
        if found.first_scale is not None:
            scales.append(found.first_scale)
        if found.smooth_to is not None:
            smooth.append(found.smooth_to)
    entropy = relative = None
    if temperature is not None and np.isfinite(temperature) and temperature > 0 and np.isfinite(loss0):
        summary = entropy_summary(np.concatenate(sampled) if sampled else np.array([]), loss0, temperature)
        entropy, relative = summary.entropy, summary.entropy_relative
    return LandscapeStats(
        first_jump=min(scales) if scales else None,
        smooth_to=min(smooth) if smooth else None,
        n_jumps=n_jumps,
        extra_evaluations=extra,
        entropy=entropy,
        entropy_relative=relative,
        temperature=temperature,
        jumps_1d=positions,
    )
