"""Loss surfaces in the plane of the extreme Hessian eigenvectors, and the non-convexity ratio.

Random 2-D projections average the curvature over many eigen-directions: a saddle whose few negative
directions are swamped by many positive ones looks like a bowl in a random plane (Böttcher & Wheeler 2022,
arXiv 2208.13219). The plane spanned by the eigenvectors of the largest and of the smallest (most
negative) Hessian eigenvalues shows the extreme curvatures instead: along ``d_max`` the loss rises as
fast as it can to second order, along ``d_min`` it falls if theta is a saddle (lambda_min < 0).

Both eigenpairs come from :mod:`traits.probes.hessian`: ``top_eigenvalues`` for lambda_max (the k_top
algebraically largest are computed, the first one spans the plane) and ``smallest_eigenvalue``, which
reads the low end of its own Lanczos tridiagonal, for lambda_min. Nothing is re-implemented here.

Norm convention (``scale``)
---------------------------
* ``"theta"`` (default): each direction keeps the eigenvector's orientation and is scaled to the global
  norm that a filter-normalised random direction (:func:`traits.probes.directions.random_direction`)
  has with the same ``skip`` / ``include_skipped`` settings, namely
  ``||d|| = sqrt(sum over included tensors of ||theta_t||^2)`` (weight tensors with ndim >= 2 not in
  ``skip``; every tensor with ``include_skipped=True``). A step alpha then moves the weights by the same
  Euclidean distance as the same alpha along a random filter-normalised direction, so Hessian-plane and
  random-plane surfaces share one alpha axis. The eigenvector itself is *not* filter-normalised (that
  would destroy the eigenvector property); it spans all trainable parameters, biases included.
* ``"unit"``: ``||d|| = 1``; alpha is then in absolute weight units.

To second order the surface is ``L(theta + a d_max + b d_min) = L0 + g.(a d_max + b d_min)
+ 1/2 (lambda_max a^2 + lambda_min b^2) ||d||^2`` (the two eigenvectors are orthogonal, so there is no
cross term); ``curvature_along_max`` / ``curvature_along_min`` report ``lambda ||d||^2``, the second
derivative of the plotted surface along each axis at theta.

Signs: an eigenvector is defined up to sign; each is flipped so that its largest-magnitude component is
positive, which makes the plane (and the plotted orientation) reproducible. ``d_min`` is Gram-Schmidt
orthogonalised against ``d_max`` before scaling (they are orthogonal up to the Lanczos error for distinct
eigenvalues); ``cos_raw`` reports the cosine before that correction.

Evaluating the same plane on another split (the ID test and OOD sets) is ``surface_2d(other_objective,
plane.d_max, plane.d_min, alphas, betas)``: the directions are plain name -> tensor dicts, computed once
on the training split.

Non-convexity
-------------
``nonconvexity(lambda_min, lambda_max)`` is ``|lambda_min| / lambda_max`` when lambda_min < 0 (Li et
al. 2018 map this ratio to show where the landscape is convex-looking), 0.0 when lambda_min >= 0 (no
negative curvature: locally convex), and None when it is undefined (a non-finite eigenvalue, or
lambda_max <= 0, i.e. no positive curvature to compare with).
"""

from __future__ import annotations

import math
from collections.abc import Set
from dataclasses import dataclass
from typing import Literal

import torch

from traits.errors import ProbeError
from traits.probes.directions import hessian_direction
from traits.probes.hessian import EigenResult, smallest_eigenvalue, top_eigenvalues
from traits.probes.objective import SplitObjective
from traits.results import json_float

Scale = Literal["theta", "unit"]


def nonconvexity(lambda_min: float | None, lambda_max: float | None) -> float | None:
    """|lambda_min| / lambda_max for lambda_min < 0; 0.0 for lambda_min >= 0; None when undefined
    (either value None or non-finite, or lambda_max <= 0)."""
    if lambda_min is None or lambda_max is None:
        return None
    lo, hi = float(lambda_min), float(lambda_max)
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= 0.0:
        return None
    if lo >= 0.0:
        return 0.0
    return -lo / hi


# ---------------------------------------------------------------------------------------- curvature
@dataclass
class CurvatureResult:
    """The two ends of the Hessian spectrum at theta for one split.

    ``top_values``: the k_top largest eigenvalues (descending), ``lambda_max`` = top_values[0];
    ``lambda_min``: the smallest eigenvalue; ``nonconvexity``: see :func:`nonconvexity`;
    ``residual_*``: verified ||Hv - lambda v|| / |lambda| (``abs_residual_*`` without the division);
    ``converged_*``: the pair is certified (:mod:`traits.probes.hessian`), and ``nonconvexity`` is None
    unless both are; ``n_hvp``: Hessian-vector products spent on both runs together. ``v_max`` / ``v_min`` are the unit
    eigenvectors (flat, on the working device; not part of ``to_dict``)."""

    lambda_max: float
    lambda_min: float
    top_values: list[float]
    residual_max: float
    residual_min: float
    converged_max: bool
    converged_min: bool
    n_hvp: int
    n_steps_max: int
    n_steps_min: int
    v_max: torch.Tensor
    v_min: torch.Tensor
    abs_residual_max: float | None = None
    abs_residual_min: float | None = None

    @property
    def nonconvexity(self) -> float | None:
        """From certified eigenvalues only: None when either end did not converge."""
        if not (self.converged_max and self.converged_min):
            return None
        return nonconvexity(self.lambda_min, self.lambda_max)

    def to_dict(self) -> dict:
        return {
            "lambda_max": json_float(self.lambda_max),
            "lambda_min": json_float(self.lambda_min),
            "nonconvexity": json_float(self.nonconvexity),
            "top_values": [json_float(v) for v in self.top_values],
            "residual_max": json_float(self.residual_max),
            "residual_min": json_float(self.residual_min),
            "converged_max": bool(self.converged_max),
            "converged_min": bool(self.converged_min),
            "abs_residual_max": json_float(self.abs_residual_max),
            "abs_residual_min": json_float(self.abs_residual_min),
            "n_hvp": int(self.n_hvp),
            "n_steps_max": int(self.n_steps_max),
            "n_steps_min": int(self.n_steps_min),
        }


def curvature_extremes(
    objective: SplitObjective,
    k_top: int = 1,
    max_steps: int = 100,
    tol: float = 1e-4,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> CurvatureResult:
    """lambda_max (with the k_top largest eigenvalues) and lambda_min of the objective's Hessian at theta.

    Two Lanczos runs share ``generator`` (top first, then bottom), so a seed fixes both. ``generator``,
    ``device`` and ``dtype`` are required, as for the functions of :mod:`traits.probes.hessian`."""
    if k_top < 1:
        raise ProbeError(f"k_top must be >= 1, got {k_top}")
    lanczos = {"max_steps": max_steps, "tol": tol, "generator": generator, "device": device, "dtype": dtype}
    top: EigenResult = top_eigenvalues(objective.hvp, objective.dim, k=k_top, **lanczos)
    low: EigenResult = smallest_eigenvalue(objective.hvp, objective.dim, **lanczos)
    return CurvatureResult(
        lambda_max=float(top.values[0]),
        lambda_min=float(low.values[0]),
        top_values=[float(v) for v in top.values],
        residual_max=float(top.residuals[0]),
        residual_min=float(low.residuals[0]),
        converged_max=bool(top.converged_each[0]) if top.converged_each else bool(top.converged),
        converged_min=bool(low.converged),
        abs_residual_max=float(top.abs_residuals[0]) if top.abs_residuals is not None else None,
        abs_residual_min=float(low.abs_residuals[0]) if low.abs_residuals is not None else None,
        n_hvp=int(top.n_hvp + low.n_hvp),
        n_steps_max=int(top.n_steps),
        n_steps_min=int(low.n_steps),
        v_max=top.vectors[0].clone(),
        v_min=low.vectors[0].clone(),
    )


# ---------------------------------------------------------------------------------------- plane
@dataclass
class PlaneResult:
    """The Hessian-eigenvector plane of one objective (normally the training split).

    ``d_max`` / ``d_min``: direction dicts (name -> tensor, the objective's shapes) for ``surface_2d``;
    ``direction_norm``: the global norm both were scaled to (see the module docstring); ``scale``: the
    convention used; ``curvature``: the eigenvalues and their diagnostics; ``cos_raw``: cosine between the
    raw Ritz vectors before ``d_min`` was orthogonalised against ``d_max``."""

    d_max: dict[str, torch.Tensor]
    d_min: dict[str, torch.Tensor]
    direction_norm: float
    scale: str
    curvature: CurvatureResult
    cos_raw: float

    @property
    def lambda_max(self) -> float:
        return self.curvature.lambda_max

    @property
    def lambda_min(self) -> float:
        return self.curvature.lambda_min

    @property
    def nonconvexity(self) -> float | None:
        return self.curvature.nonconvexity

    @property
    def curvature_along_max(self) -> float:
        """d^2 L / d alpha^2 at theta along ``d_max``: lambda_max * ||d||^2."""
        return self.curvature.lambda_max * self.direction_norm**2

    @property
    def curvature_along_min(self) -> float:
        """d^2 L / d beta^2 at theta along ``d_min``: lambda_min * ||d||^2."""
        return self.curvature.lambda_min * self.direction_norm**2

    def to_dict(self) -> dict:
        out = self.curvature.to_dict()
        out.update(
            {
                "directions": "hessian",
                "scale": self.scale,
                "direction_norm": json_float(self.direction_norm),
                "curvature_along_max": json_float(self.curvature_along_max),
                "curvature_along_min": json_float(self.curvature_along_min),
                "cos_raw": json_float(self.cos_raw),
            }
        )
        return out


def reference_norm(objective: SplitObjective, skip: Set[str] = frozenset(), include_skipped: bool = False) -> float:
    """Global norm of a filter-normalised random direction with these settings:
    sqrt(sum of ||theta_t||^2 over the tensors such a direction does not zero)."""
    unknown = set(skip) - set(objective.names)
    if unknown:
        raise ProbeError(f"skip names not among the parameters: {sorted(unknown)[:5]}")
    total = 0.0
    for name in objective.names:
        theta = objective.params[name]
        zeroed = (theta.dim() <= 1 or name in skip) and not include_skipped
        if not zeroed:
            total += float(theta.detach().double().pow(2).sum())
    return math.sqrt(total)


def _canonical_sign(v: torch.Tensor) -> torch.Tensor:
    """Flip ``v`` so that its largest-magnitude component is positive."""
    idx = int(torch.argmax(v.abs()))
    return -v if float(v[idx]) < 0 else v


def hessian_plane(
    objective: SplitObjective,
    k_top: int = 1,
    max_steps: int = 100,
    tol: float = 1e-4,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    *,
    scale: Scale = "theta",
    skip: Set[str] = frozenset(),
    include_skipped: bool = False,
) -> PlaneResult:
    """The plane of the eigenvectors of lambda_max and lambda_min at theta, as two direction dicts.

    ``scale``, ``skip`` and ``include_skipped`` set the directions' norm (module docstring); pass the same
    ``skip`` / ``include_skipped`` as for the random directions the surfaces are compared with."""
    if scale not in ("theta", "unit"):
        raise ProbeError(f"unknown scale {scale!r}; use 'theta' or 'unit'")
    if objective.dim < 2:
        raise ProbeError("a Hessian plane needs at least two trainable parameters")
    curv = curvature_extremes(objective, k_top, max_steps, tol, generator, device, dtype)
    v_max = curv.v_max / curv.v_max.norm()
    v_min = curv.v_min / curv.v_min.norm()
    cos_raw = float(v_max @ v_min)
    v_min = v_min - cos_raw * v_max
    rest = float(v_min.norm())
    if not (rest > 1e-6 and math.isfinite(rest)):
        raise ProbeError(
            "the top and bottom Hessian eigenvectors coincide (the Hessian looks like a multiple of the "
            "identity); there is no plane to span"
        )
    v_min = v_min / rest
    v_max, v_min = _canonical_sign(v_max), _canonical_sign(v_min)

    if scale == "theta":
        norm = reference_norm(objective, skip, include_skipped)
        if not (norm > 0 and math.isfinite(norm)):
            raise ProbeError(
                "the weights the random directions are normalised to have zero norm; use scale='unit' "
                "or include_skipped=True"
            )
    else:
        norm = 1.0
    d_max = hessian_direction(v_max * norm, objective)
    d_min = hessian_direction(v_min * norm, objective)
    return PlaneResult(d_max=d_max, d_min=d_min, direction_norm=norm, scale=scale, curvature=curv, cos_raw=cos_raw)
