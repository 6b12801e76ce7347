"""How much a split's Hessian numbers would move with another draw of its structures.

The Hessian of a split is computed on a random sample of N of its structures, and its loss is a mean over
them, L = (1/N) Σ_i ℓ(f_i(θ), y_i), so H = (1/N) Σ_i H_i. A Lanczos residual bounds the error of λ_max *for
this H*; it says nothing about another sample. This module measures that second, usually larger, error.

Groups
------
The N structures are split at random (seeded) into G groups of near-equal size n_g (G = min(16, N)); with
H_g the Hessian of group g's mean loss, H = Σ_g (n_g/N) H_g exactly. A statistic computed from the G group
pieces is recomputed with each group left out, and the delete-a-group jackknife (Efron & Stein 1981)

    se_J = sqrt((G − 1)/G · Σ_g (t_{−g} − t̄)²),     t̄ = (1/G) Σ_g t_{−g},

estimates its standard error over draws of N structures; ``df = G − 1`` for a t quantile.

λ_max (:func:`lambda_max_jackknife`)
    V holds the top-k Ritz vectors of H (orthonormal rows). Rayleigh–Ritz in span(V): M_g = V H_g Vᵀ
    (k products per group), M = Σ_g (n_g/N) M_g, M_{−g} = (N·M − n_g·M_g)/(N − n_g) and
    t_{−g} = λ_max(M_{−g}). Restricting to span(V) costs k·G group products (about k full products) and is
    exact to first order (dλ_max = vᵀ dH v for a simple λ_max); taking the largest eigenvalue of the k×k
    matrix, not the Rayleigh quotient of v alone, follows a leave-out Hessian whose top direction turns
    within the top-k space, as happens when λ_1 and λ_2 are close.

Trace with a Gauss–Newton control variate (:func:`gauss_newton_trace`)
    For ℓ(f, y) = (f − y)², H_i = 2 ∇f_i ∇f_iᵀ + 2 r_i ∇²f_i = G_i + R_i. The Gauss–Newton part is exact from
    the N per-structure output gradients: tr(G) = (1/N) Σ_i 2‖∇f_i‖², and zᵀGz = (1/N) Σ_i 2 (∇f_i·z)². Only
    the residual is estimated, by Hutchinson with Rademacher probes z:

        T = tr(G) + (1/n) Σ_z u(z),   u(z) = zᵀHz − zᵀGz,   se_MC = sd(u) / √n.

    The probe values zᵀHz of a curvature matrix are right-skewed (one large λ_1 makes most of the trace), so a
    few probes misjudge their own spread; u(z) leaves out the outer-product part that carries λ_1 and is far
    less skewed, and it is zero when the residuals are (a label-free audit, whose targets are the
    predictions). For ℓ = |f − y| the second derivative is 0 almost everywhere, G = 0, and T is plain
    Hutchinson. The same probes are applied group by group (common random numbers), T_g is each group's
    trace, T = Σ_g (n_g/N) T_g, and the jackknife over groups gives the sampling error se_J; the two errors
    are independent and add in quadrature where an interval needs both.

Everything here is a pure function of Hessian-vector products and per-structure gradients passed in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from traits.errors import ProbeError
from traits.intervals import t_quantile  # noqa: F401  (re-exported: the quantile the jackknife's df is read with)

#: Most groups of the delete-a-group jackknife (fewer when the sample has fewer structures).
MAX_GROUPS = 16

#: A group's products: a (K, dim) stack of vectors -> H_g applied to each, (K, dim), H_g of the group's mean loss.
GroupHVP = Callable[[torch.Tensor], torch.Tensor]
#: A group's per-structure output gradients: probes (n, dim) or None -> (‖∇f_i‖² (n_g,), Z ∇f_i (n_g, n) or None).
GroupGradients = Callable[[torch.Tensor | None], tuple[torch.Tensor, torch.Tensor | None]]


def assign_groups(n: int, generator: np.random.Generator, max_groups: int = MAX_GROUPS) -> list[np.ndarray]:
    """Indices 0..n-1 split at random into G = min(max_groups, n) groups of sizes differing by at most one.

    Args:
        n: number of structures (at least 2).
        generator: the seeded numpy generator that draws the permutation.
        max_groups: the most groups.

    Returns:
        G sorted index arrays."""
    if n < 2:
        raise ProbeError(f"a jackknife over structures needs at least 2 of them, got {n}")
    g = min(max_groups, n)
    order = generator.permutation(n)
    return [np.sort(part) for part in np.array_split(order, g)]


def jackknife_stderr(leave_out: Sequence[float]) -> float:
    """Delete-a-group jackknife standard error from the G leave-one-group-out values (module docstring)."""
    t = np.asarray(leave_out, dtype=float)
    if t.size < 2 or not np.all(np.isfinite(t)):
        return float("nan")
    g = t.size
    return float(math.sqrt((g - 1) / g * float(np.sum((t - t.mean()) ** 2))))


def _leave_out(full: np.ndarray | float, parts: Sequence, sizes: Sequence[int]):
    n = float(sum(sizes))
    return [(n * full - s * p) / (n - s) for p, s in zip(parts, sizes)]


@dataclass
class JackknifeResult:
    """A statistic, its leave-one-group-out values and the jackknife standard error (``df`` = G − 1)."""

    value: float
    leave_out: list[float]
    stderr: float
    n_hvp: int = 0

    @property
    def df(self) -> int:
        return len(self.leave_out) - 1

    def to_dict(self) -> dict:
        return {"value": self.value, "leave_out": list(self.leave_out), "stderr": self.stderr, "df": self.df,
                "n_hvp": self.n_hvp}


def _orthonormal_rows(vectors: torch.Tensor) -> torch.Tensor:
    v = vectors.detach()
    if v.dim() == 1:
        v = v.unsqueeze(0)
    return torch.linalg.qr(v.T, mode="reduced")[0].T.contiguous()  # orthonormal rows spanning the same space


def _jackknife_from(v: torch.Tensor, products: Sequence[torch.Tensor], sizes: Sequence[int]) -> JackknifeResult:
    """The λ_max jackknife from each group's products H_g vᵀ of the orthonormal rows ``v``."""
    parts = []
    for hv in products:
        m = (v.to(torch.float64) @ hv.to(torch.float64).T).cpu().numpy()
        parts.append((m + m.T) / 2)
    n = float(sum(sizes))
    full = sum(p * (s / n) for p, s in zip(parts, sizes))
    value = float(np.linalg.eigvalsh(full)[-1])
    leave = [float(np.linalg.eigvalsh(m)[-1]) for m in _leave_out(full, parts, sizes)]
    return JackknifeResult(value=value, leave_out=leave, stderr=jackknife_stderr(leave),
                           n_hvp=len(products) * v.shape[0])


def lambda_max_jackknife(group_hvps: Sequence[GroupHVP], sizes: Sequence[int],
                         vectors: torch.Tensor) -> JackknifeResult:
    """Jackknife of λ_max in the span of the top Ritz vectors (module docstring).

    Args:
        group_hvps: one product function per group (Hessian of that group's mean loss).
        sizes: the number of structures in each group.
        vectors: (k, dim) top Ritz vectors of the whole sample's Hessian (orthonormalised here).

    Returns:
        ``value`` = λ_max of M = Σ_g (n_g/N) M_g (equal to the top Ritz value up to rounding), the G leave-out
        values and their jackknife standard error."""
    if len(group_hvps) != len(sizes) or len(sizes) < 2:
        raise ProbeError("the jackknife needs one product function per group and at least two groups")
    v = _orthonormal_rows(vectors)
    return _jackknife_from(v, [hvp_many(v) for hvp_many in group_hvps], sizes)


@dataclass
class GaussNewtonTrace:
    """tr(H) = tr(G) + Hutchinson on H − G, with its Monte-Carlo and sampling errors (module docstring)."""

    estimate: float
    stderr: float  # Monte-Carlo error of the residual part (0 when it vanishes)
    sampling_stderr: float  # jackknife over structure groups
    gauss_newton: float  # the exact tr(G) of the sample
    residual: float  # the estimated tr(H − G)
    n_probes: int
    n_hvp: int
    leave_out: list[float] = field(default_factory=list)
    residual_samples: list[float] = field(default_factory=list)

    @property
    def df(self) -> int:
        return len(self.leave_out) - 1

    @property
    def mc_df(self) -> int:
        return self.n_probes - 1


def _probes(n_probes: int, dim: int, generator: torch.Generator, device, dtype) -> torch.Tensor:
    return torch.randint(0, 2, (n_probes, dim), generator=generator).to(device=device, dtype=dtype) * 2 - 1


def _trace_from(z: torch.Tensor, products: Sequence[torch.Tensor], gradients: Sequence[tuple], sizes: Sequence[int],
                curvature: float) -> GaussNewtonTrace:
    """The Gauss-Newton trace from each group's products H_g zᵀ and per-structure gradient reductions."""
    n = float(sum(sizes))
    gn_parts, u_parts = [], []
    for hz, (sq, proj), size in zip(products, gradients, sizes):
        zhz = (z * hz).sum(dim=1).to(torch.float64)
        gn = curvature * float(sq.to(torch.float64).sum()) / size
        zgz = (curvature * (proj.to(torch.float64) ** 2).sum(dim=0) / size) if curvature else torch.zeros_like(zhz)
        gn_parts.append(gn)
        u_parts.append((zhz - zgz).cpu().numpy())
    weights = np.asarray(sizes, dtype=float) / n
    u = np.sum([w * p for w, p in zip(weights, u_parts)], axis=0)  # the whole sample's u(z), per probe
    gn_full = float(np.dot(weights, gn_parts))
    group_traces = [g + float(p.mean()) for g, p in zip(gn_parts, u_parts)]
    estimate = gn_full + float(u.mean())
    leave = [float(t) for t in _leave_out(estimate, group_traces, sizes)]
    mc = float(u.std(ddof=1) / math.sqrt(u.size))
    return GaussNewtonTrace(estimate=estimate, stderr=mc, sampling_stderr=jackknife_stderr(leave),
                            gauss_newton=gn_full, residual=float(u.mean()), n_probes=z.shape[0],
                            n_hvp=z.shape[0] * len(products), leave_out=leave,
                            residual_samples=[float(x) for x in u])


def gauss_newton_trace(group_hvps: Sequence[GroupHVP], group_gradients: Sequence[GroupGradients],
                       sizes: Sequence[int], dim: int, n_probes: int, curvature: float, generator: torch.Generator,
                       device: torch.device | str, dtype: torch.dtype) -> GaussNewtonTrace:
    """The trace of the sample's Hessian with a Gauss–Newton control variate (module docstring).

    Args:
        group_hvps: per group, the Hessian products of its mean loss.
        group_gradients: per group, its per-structure output gradients reduced against probes.
        sizes: structures per group.
        dim: number of parameters.
        n_probes: Rademacher probes for the residual (at least 2).
        curvature: ℓ'' of the loss in the residual (2 for the squared error, 0 for the absolute error).
        generator: draws the probes.
        device, dtype: of the probes.

    Returns:
        The estimate with its Monte-Carlo error (``stderr``, n_probes − 1 degrees of freedom) and its sampling
        error (``sampling_stderr``, G − 1 degrees of freedom)."""
    if n_probes < 2:
        raise ProbeError(f"the trace needs at least 2 probes, got {n_probes}")
    if len(group_hvps) != len(sizes) or len(group_gradients) != len(sizes):
        raise ProbeError("the trace needs one product and one gradient function per group")
    z = _probes(n_probes, dim, generator, device, dtype)
    products = [hvp_many(z) for hvp_many in group_hvps]
    grads = [gradients(z if curvature else None) for gradients in group_gradients]
    return _trace_from(z, products, grads, sizes, curvature)


def grouped_statistics(group_hvps: Sequence[GroupHVP], group_gradients: Sequence[GroupGradients],
                       sizes: Sequence[int], vectors: torch.Tensor | None, dim: int, n_probes: int, curvature: float,
                       generator: torch.Generator, device: torch.device | str,
                       dtype: torch.dtype) -> tuple[GaussNewtonTrace, JackknifeResult | None]:
    """:func:`gauss_newton_trace` and :func:`lambda_max_jackknife` together, with one product call per group on
    the probes and the Ritz vectors stacked (each group's gradient graph is built once). The same probes as
    :func:`gauss_newton_trace` with this generator, so the numbers agree with the two functions run apart.

    Args:
        group_hvps, group_gradients, sizes, dim, n_probes, curvature, generator, device, dtype: as
            :func:`gauss_newton_trace`.
        vectors: (k, dim) top Ritz vectors, or None for no jackknife of λ_max.

    Returns:
        (the trace, the λ_max jackknife or None)."""
    if n_probes < 2:
        raise ProbeError(f"the trace needs at least 2 probes, got {n_probes}")
    if len(group_hvps) != len(sizes) or len(group_gradients) != len(sizes) or len(sizes) < 2:
        raise ProbeError("one product and one gradient function per group, and at least two groups")
    z = _probes(n_probes, dim, generator, device, dtype)
    v = None
    if vectors is not None and vectors.numel():
        v = _orthonormal_rows(vectors).to(device=z.device, dtype=z.dtype)
    stack = z if v is None else torch.cat([z, v])
    products = [hvp_many(stack) for hvp_many in group_hvps]
    grads = [gradients(z if curvature else None) for gradients in group_gradients]
    trace = _trace_from(z, [p[:n_probes] for p in products], grads, sizes, curvature)
    jackknife = _jackknife_from(v, [p[n_probes:] for p in products], sizes) if v is not None else None
    return trace, jackknife


def radius_jackknife(alphas: Sequence[float], curves: Sequence[Sequence[float]],
                     group_curves: Sequence[Sequence[Sequence[float]]], sizes: Sequence[int],
                     delta: float) -> JackknifeResult | None:
    """The robust radius's sampling error: the jackknife over structure groups of the interpolated radius
    (:func:`traits.probes.metrics.interpolated_radius`, the smallest over the 1D directions).

    The loss along a direction is the size-weighted mean of the groups' losses, so each leave-one-group-out curve
    is exact: C_{−g}(α) = (N·C(α) − n_g·C_g(α)) / (N − n_g), and its radius uses its own L(θ) (its value at α = 0)
    with the audit's band δ.

    Args:
        alphas: the 1D grid (it contains 0).
        curves: (D, A) the whole sample's loss along each direction.
        group_curves: (G, D, A) each group's mean loss along each direction.
        sizes: structures per group.
        delta: the absolute band.

    Returns:
        The jackknife of the radius, or None when some leave-out curve never leaves the band (a censored radius
        has no spread to read) or the grid has no point at 0."""
    from traits.probes.metrics import interpolated_radius

    a = np.asarray(alphas, dtype=float)
    zero = np.flatnonzero(np.abs(a) <= 1e-12 * max(1.0, float(np.abs(a).max())))
    if zero.size == 0 or len(group_curves) != len(sizes) or len(sizes) < 2:
        return None
    full = np.asarray(curves, dtype=float)
    parts = [np.asarray(c, dtype=float) for c in group_curves]

    def radius(c: np.ndarray) -> float | None:
        per = [interpolated_radius(a, row, float(row[zero[0]]), delta) for row in c]
        return None if any(r is None for r in per) else min(per)

    value = radius(full)
    leave = [radius(c) for c in _leave_out(full, parts, sizes)]
    if value is None or any(r is None for r in leave):
        return None
    return JackknifeResult(value=value, leave_out=[float(r) for r in leave], stderr=jackknife_stderr(leave))
