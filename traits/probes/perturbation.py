"""The distribution of the loss rise under many random weight perturbations of one size.

The 1D curves and the 2D plane sample the loss far along two or three directions; this probe samples it at one
distance along many. With d_1 .. d_K drawn by :func:`traits.probes.directions.random_direction` (filter-normalised
Gaussian directions, the surfaces' own convention) and a scale s, each direction is taken both ways:

    D+_k = L(theta + s d_k) - L(theta),      D-_k = L(theta - s d_k) - L(theta)

(the idea of reading curvature from the statistics of random perturbations is that of Schuurmans et al.,
arXiv 1811.11214, also offered by the oxford loss-landscapes package; here the perturbations are centred and
antithetic). Reported, in the loss's units:

* ``rise``: the 2K values D+-_k, with their mean, standard deviation, median, 90th percentile and maximum;
* ``curvature``: c_k = (D+_k + D-_k) / s^2, the central second difference along d_k, which equals
  d_k^T H d_k + O(s^2) (H the Hessian at theta): the gradient term cancels between the two signs, so c_k is
  curvature along d_k even where theta is not a minimum (e.g. on a held-out split), in loss units per alpha^2;
* ``slope``: (D+_k - D-_k) / (2 s) = grad L . d_k + O(s^2), loss units per alpha;
* ``exceed_fraction``: with a band delta, the share of the 2K rises above delta (a NaN or inf loss counts as
  above): the probability that a random perturbation of size s leaves the tolerance band, a many-direction
  companion of the robust radius, which asks how far along each of a few directions the loss stays in it.

What it does not say: the directions are random, so the extreme curvatures (lambda_max, lambda_min) are almost
never sampled (the Hessian probes give those); the numbers depend on s and on the filter normalisation, so only
values at one s and one seed compare (OOD with ID at one theta). Cost: 2K loss evaluations plus one at theta.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass

import numpy as np
import torch

from traits.errors import ProbeError
from traits.probes.directions import random_direction
from traits.probes.objective import SplitObjective
from traits.probes.surface import surface_1d


def _finite_or_none(x: float) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


@dataclass
class PerturbationResult:
    """The rises D+_k, D-_k (arrays over k), the derived curvatures and slopes, and their summaries (module
    docstring); summaries are None when no value is finite."""

    scale: float
    loss0: float
    rise_plus: np.ndarray
    rise_minus: np.ndarray
    band: float | None
    n_evaluations: int

    @property
    def curvature(self) -> np.ndarray:
        return (self.rise_plus + self.rise_minus) / self.scale**2

    @property
    def slope(self) -> np.ndarray:
        return (self.rise_plus - self.rise_minus) / (2 * self.scale)

    @property
    def rises(self) -> np.ndarray:
        return np.concatenate([self.rise_plus, self.rise_minus])

    @property
    def exceed_fraction(self) -> float | None:
        """Share of the 2K rises above ``band`` (non-finite counts as above); None without a band."""
        if self.band is None:
            return None
        r = self.rises
        return float(np.mean(~np.isfinite(r) | (r > self.band)))

    def summary(self) -> dict:
        r = self.rises
        f = r[np.isfinite(r)]
        c = self.curvature[np.isfinite(self.curvature)]
        stats = {"mean": None, "std": None, "median": None, "q90": None, "max": None}
        if f.size:
            stats = {"mean": float(f.mean()), "std": float(f.std(ddof=1)) if f.size > 1 else None,
                     "median": float(np.median(f)), "q90": float(np.quantile(f, 0.9)), "max": float(f.max())}
        return {"scale": self.scale, "loss0": _finite_or_none(self.loss0), "band": self.band,
                "rise": stats, "curvature_mean": float(c.mean()) if c.size else None,
                "curvature_median": float(np.median(c)) if c.size else None,
                "exceed_fraction": self.exceed_fraction, "finite_fraction": float(np.isfinite(r).mean()),
                "n_directions": int(self.rise_plus.size), "n_evaluations": int(self.n_evaluations)}

    def to_dict(self) -> dict:
        def clean(a: np.ndarray) -> list:
            return [float(v) if np.isfinite(v) else None for v in a]

        return {**self.summary(), "rise_plus": clean(self.rise_plus), "rise_minus": clean(self.rise_minus)}


def random_perturbations(
    objective: SplitObjective,
    scale: float,
    n_directions: int,
    generator: torch.Generator,
    *,
    skip: Set[str] = frozenset(),
    include_skipped: bool = False,
    band: float | None = None,
    directions: list[dict[str, torch.Tensor]] | None = None,
    chunk_size: int | None = None,
) -> PerturbationResult:
    """D+-_k = L(theta +- s d_k) - L(theta) for K = ``n_directions`` random filter-normalised directions drawn in
    turn from ``generator`` (or the given ``directions``, so every split can share one draw); 2K + 1 loss
    evaluations. ``skip`` / ``include_skipped`` as in :func:`random_direction`."""
    if not (scale > 0 and np.isfinite(scale)):
        raise ProbeError(f"scale must be a positive finite number, got {scale}")
    if directions is None:
        if n_directions < 1:
            raise ProbeError(f"n_directions must be >= 1, got {n_directions}")
        directions = [random_direction(objective.params, generator, skip=skip, include_skipped=include_skipped)
                      for _ in range(n_directions)]
    if not directions:
        raise ProbeError("no directions to perturb along")
    loss0 = float(objective.loss())
    alphas = torch.tensor([-scale, scale], dtype=torch.float64)
    plus, minus = np.empty(len(directions)), np.empty(len(directions))
    for k, d in enumerate(directions):
        values = surface_1d(objective, d, alphas, chunk_size=chunk_size).detach().to("cpu", torch.float64).numpy()
        minus[k], plus[k] = values[0] - loss0, values[1] - loss0
    return PerturbationResult(scale=float(scale), loss0=loss0, rise_plus=plus, rise_minus=minus, band=band,
                              n_evaluations=2 * len(directions) + 1)
