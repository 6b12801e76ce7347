"""Label-free curvature and smoothness: what the model's own predictions say, with no target in sight.

An audit without OOD labels cannot form the labelled loss on the OOD set, so it cannot use the labelled
Hessian. What it can form is the loss of the model against its own predictions at θ,

    L₀(θ') = (1/N) Σ_i (f_i(θ') − f_i(θ))²,

which is 0 at θ' = θ, with gradient 0 there and Hessian exactly the Gauss–Newton matrix of the predictions

    G = (2/N) Σ_i ∇f_i ∇f_iᵀ = (2/N) JᵀJ,         J ∈ ℝ^{N×P}, row i = ∇θ f_i(θ)

(the residual term Σ r_i ∇²f_i vanishes because every residual r_i = f_i(θ) − f_i(θ) is 0). This module
measures, per split, on a sample of N structures:

Gauss–Newton spectrum (:func:`gauss_newton_spectrum`)
    G and the N×N Gram matrix K = J Jᵀ share their non-zero eigenvalues (JᵀJ v = λv ⇔ JJᵀ(Jv) = λ(Jv)),
    so λ_k(G) = (2/N) λ_k(K) and tr(G) = (2/N) tr(K) = (2/N) Σ_i ‖∇f_i‖². Both are exact up to the
    floating-point error of one symmetric eigendecomposition — no solver, no Monte Carlo. The sampling error
    of λ_max and of the trace (what another sample of N structures would give) is the delete-a-group
    jackknife over the structure groups of the Hessian probe (:mod:`traits.probes.sampling`): leaving out
    group g gives K restricted to the other rows, λ_max((2/(N−n_g)) K₋g) and its trace, exactly.

Per-structure gradient norms (:func:`gradient_norms`)
    ‖∇θ f_i‖ = √K_ii: how much structure i's prediction moves per unit of parameter change. A per-compound
    label-free score; the split's statistic is the median.

Prediction sharpness (:func:`prediction_sharpness`)
    The mean of L₀ at a fixed filter-normalised radius r along random directions d_k, both signs,
    S(r) = (1/2K) Σ_k [L₀(θ + r d_k) + L₀(θ − r d_k)]: the mean squared change of the predictions when the
    weights move by r. It is the label-free counterpart of the labelled sharpness; to second order
    S(r) ≈ (r²/2K) Σ_k d_kᵀ G d_k.

The label-free 2D surface L₀(θ + α d₁ + β d₂) on the random plane of the labelled surfaces, and its
topology (SMAD and persistence, :mod:`traits.probes.topology`), are made with the labelled surfaces'
functions on a label-free objective (:func:`traits.audit.run_label_free`).

Everything here is a pure function of tensors passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from traits.errors import ProbeError
from traits.probes.sampling import jackknife_stderr

#: The Gauss–Newton factor ℓ''(0) of the squared error: G = (ℓ''/N) JᵀJ.
GN_FACTOR = 2.0


@dataclass
class GaussNewtonSpectrum:
    """The top eigenvalues and the trace of G = (2/N) JᵀJ, exact, with their delete-a-group jackknife."""

    n: int
    top: list[float]
    trace: float
    lambda_leave_out: list[float] = field(default_factory=list)
    trace_leave_out: list[float] = field(default_factory=list)

    @property
    def lambda_max(self) -> float:
        return self.top[0] if self.top else 0.0

    @property
    def lambda_stderr(self) -> float | None:
        return _stderr(self.lambda_leave_out)

    @property
    def trace_stderr(self) -> float | None:
        return _stderr(self.trace_leave_out)

    @property
    def df(self) -> int:
        return max(len(self.lambda_leave_out) - 1, 0)


def _stderr(leave_out: Sequence[float]) -> float | None:
    se = jackknife_stderr(leave_out) if len(leave_out) >= 2 else float("nan")
    return se if np.isfinite(se) else None


def gram(jacobian: torch.Tensor) -> np.ndarray:
    """K = J Jᵀ in float64 (an N×N matrix, symmetric positive semi-definite)."""
    if jacobian.dim() != 2:
        raise ProbeError(f"the Jacobian must be an (N, P) matrix, got shape {tuple(jacobian.shape)}")
    j = jacobian.detach().to(torch.float64)
    k = (j @ j.T).cpu().numpy()
    return (k + k.T) / 2


def _spectrum(k: np.ndarray, top_k: int) -> tuple[list[float], float]:
    n = k.shape[0]
    if n == 0:
        raise ProbeError("the Gauss-Newton spectrum needs at least one structure")
    values = np.linalg.eigvalsh(k)[::-1][:top_k] * (GN_FACTOR / n)
    return [float(max(v, 0.0)) for v in values], float(np.trace(k)) * GN_FACTOR / n


def gauss_newton_spectrum(jacobian: torch.Tensor, top_k: int = 5,
                          groups: Sequence[Sequence[int]] = ()) -> GaussNewtonSpectrum:
    """The top-``top_k`` eigenvalues and the trace of G = (2/N) JᵀJ (module docstring), and, given
    ``groups`` (row indices of J, a partition), each leave-one-group-out λ_max and trace.

    Args:
        jacobian: (N, P) output gradients at θ, row i = ∇θ f_i.
        top_k: how many of the largest eigenvalues to keep (at most N).
        groups: structure groups for the jackknife (none: no sampling error).

    Returns:
        The :class:`GaussNewtonSpectrum`."""
    if top_k < 1:
        raise ProbeError(f"top_k must be >= 1, got {top_k}")
    k = gram(jacobian)
    top, trace = _spectrum(k, top_k)
    out = GaussNewtonSpectrum(n=k.shape[0], top=top, trace=trace)
    if len(groups) >= 2:
        seen = sorted(i for g in groups for i in g)
        if seen != list(range(k.shape[0])):
            raise ProbeError("the jackknife groups must partition the Jacobian's rows")
        for g in groups:
            keep = np.setdiff1d(np.arange(k.shape[0]), np.asarray(g, dtype=int))
            t, tr = _spectrum(k[np.ix_(keep, keep)], 1)
            out.lambda_leave_out.append(t[0])
            out.trace_leave_out.append(tr)
    return out


def gradient_norms(jacobian: torch.Tensor) -> list[float]:
    """‖∇θ f_i‖ for each row of J."""
    if jacobian.dim() != 2:
        raise ProbeError(f"the Jacobian must be an (N, P) matrix, got shape {tuple(jacobian.shape)}")
    return jacobian.detach().to(torch.float64).norm(dim=1).cpu().tolist()


def prediction_sharpness(curves: Sequence[Sequence[float]]) -> float | None:
    """S(r): the mean of the label-free loss L₀ over the points θ ± r d_k (module docstring).

    Args:
        curves: per direction, the label-free loss at the radii evaluated (e.g. [L₀(θ − r d), L₀(θ + r d)]).

    Returns:
        The mean over every direction and point; None when any value is not finite (a diverged model)."""
    values = np.asarray([v for c in curves for v in c], dtype=float)
    if values.size == 0 or not np.all(np.isfinite(values)):
        return None
    return float(values.mean())
