"""Gradient-norm surfaces: the steepness of the loss at the points of a 1D line or a 2D plane through theta.

The loss surfaces (:mod:`traits.probes.surface`) record L at each grid point; this module records the gradient
of L with respect to *all* trainable weights at the same points, and its components along the plotted
directions. With p(alpha, beta) = theta + alpha d1 + beta d2 (a line: no d2),

    G(alpha, beta)   = || grad_w L(w) ||_2  at w = p(alpha, beta)              (the gradient norm)
    s_k(alpha, beta) = grad_w L(w) . d_k    at w = p(alpha, beta)              (the slope along d_k)

where L is the objective's loss (:class:`~traits.probes.objective.SplitObjective`: the mean of l(f_w(x_i) - y_i)
over the N samples, l the square or absolute value), the norm runs over every trainable scalar (biases and
normalisation weights included, whether or not the directions move them), and s_k = dL/dalpha (k = 1) or
dL/dbeta (k = 2) is the derivative of the plotted surface along its own axis.

Units: G is in loss units per unit of weight (for the MSE of a target in eV/atom, (eV/atom)^2 per weight unit);
s_k is in loss units per unit of alpha (per filter-normalised step when d_k is filter-normalised).

What it means: G is how fast the loss can change from that point by the smallest weight change; at a training
minimum G(0, 0) on the *training* split is ~0, and on a held-out split G(0, 0) says how far theta is from being
stationary for that data. Across the grid, G shows where the walls of the basin are steep and whether a flat
loss value hides a steep slope out of the plane (G large while s_1, s_2 are small).

What it does not mean: G is not curvature (it is first order: a sharp minimum still has G = 0 at its bottom);
it is not invariant to reparametrisation (rescaling the weights in front of a BatchNorm rescales the gradient
inversely), so it compares splits at one theta, not models; it is blind to a jump of L (a gradient is local: a
piecewise-smooth loss with a discontinuity has a finite gradient on both sides), which is why
:func:`trapezoid_residuals` compares the slopes with the sampled loss; with the MAE loss it is the subgradient
autograd takes (sign(0) = 0). A NaN or inf anywhere in the loss at a point makes G and s there NaN.

Every point costs one forward pass with autograd and one backward pass per batch (about three forward passes),
against one forward pass without autograd for a loss-surface point; the loss at the point comes for free.
Evaluations go through the objective's own per-batch loss (eval mode, running statistics for BatchNorm, its
fast forward when that was verified), so at theta the gradient equals ``objective.gradient()``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from traits.errors import ProbeError
from traits.probes.objective import SplitObjective
from traits.probes.surface import _check_coords, _check_direction

Direction = dict[str, torch.Tensor]
Progress = Callable[[int, int], None]


def loss_and_gradient(objective: SplitObjective, point: Direction | None = None) -> tuple[float, torch.Tensor]:
    """(L(w), grad_w L(w)) at the weights ``point`` (name -> tensor; default theta), the gradient flat in the
    objective's name order. The rule: L(w) = (1/N) sum_b sum_{i in b} l(f_w(x_i) - y_i), differentiated batch by
    batch and summed; a batch whose loss does not depend on the weights adds 0. The model is left untouched."""
    return objective.loss_and_gradient(point)


@dataclass
class GradientSurface:
    """Loss, gradient norm and slopes at the points of a line (1D arrays over ``alphas``) or a plane (arrays
    [alpha][beta]); ``slopes[k]`` is the slope along direction k. NaN where the loss or gradient was not finite."""

    alphas: np.ndarray
    betas: np.ndarray | None
    loss: np.ndarray
    grad_norm: np.ndarray
    slopes: list[np.ndarray]
    n_evaluations: int

    def to_dict(self) -> dict:
        return {"alphas": self.alphas.tolist(), "betas": None if self.betas is None else self.betas.tolist(),
                "loss": _json(self.loss), "grad_norm": _json(self.grad_norm),
                "slopes": [_json(s) for s in self.slopes], "n_evaluations": int(self.n_evaluations)}


def _json(a: np.ndarray) -> list:
    """Nested lists of floats, None where the value is not finite."""
    return [_json(row) for row in a] if a.ndim > 1 else [float(v) if np.isfinite(v) else None for v in a]


def _point(objective: SplitObjective, terms: Sequence[tuple[float, Direction]]) -> Direction:
    """theta + sum_k c_k d_k, one tensor per trainable parameter."""
    out = {}
    for n in objective.names:
        t = objective.params[n].clone()
        for c, d in terms:
            t = t + c * d[n].to(device=t.device, dtype=t.dtype)
        out[n] = t
    return out


def _evaluate(objective: SplitObjective, terms: Sequence[tuple[float, Direction]],
              flat_dirs: Sequence[torch.Tensor]) -> tuple[float, float, list[float]]:
    """(L, G, [s_k]) at one point; all NaN when the loss or the gradient is not finite."""
    value, grad = loss_and_gradient(objective, _point(objective, terms))
    if not (np.isfinite(value) and bool(torch.isfinite(grad).all())):
        return float("nan"), float("nan"), [float("nan")] * len(flat_dirs)
    return value, float(grad.norm()), [float(grad @ d) for d in flat_dirs]


def _flat(objective: SplitObjective, direction: Direction, label: str) -> torch.Tensor:
    _check_direction(objective, direction, label)
    return objective.flatten({n: direction[n].to(device=objective.device, dtype=objective.dtype)
                              for n in objective.names})


def gradient_line(objective: SplitObjective, direction: Direction, alphas: torch.Tensor,
                  progress: Progress | None = None) -> GradientSurface:
    """L, G(alpha) = ||grad L(theta + alpha d)|| and s(alpha) = grad L(theta + alpha d) . d (= dL/dalpha) for
    every alpha (module docstring for units and meaning); one forward and one backward pass per batch per alpha."""
    _check_coords(alphas, "alphas")
    flat = [_flat(objective, direction, "d")]
    a = alphas.detach().to("cpu", torch.float64).numpy()
    loss, norm, slope = np.empty(a.size), np.empty(a.size), np.empty(a.size)
    for i, alpha in enumerate(a):
        loss[i], norm[i], (slope[i],) = _evaluate(objective, [(float(alpha), direction)], flat)
        if progress is not None:
            progress(i + 1, a.size)
    return GradientSurface(alphas=a, betas=None, loss=loss, grad_norm=norm, slopes=[slope], n_evaluations=a.size)


def gradient_plane(objective: SplitObjective, d1: Direction, d2: Direction, alphas: torch.Tensor,
                   betas: torch.Tensor, progress: Progress | None = None) -> GradientSurface:
    """L, G and the slopes s_1 = dL/dalpha, s_2 = dL/dbeta at theta + alpha_i d1 + beta_j d2 on the grid, arrays
    [alpha][beta] (the layout of :func:`traits.probes.surface.surface_2d`); one forward and one backward pass per
    batch per grid point, visited row by row."""
    _check_coords(alphas, "alphas")
    _check_coords(betas, "betas")
    flat = [_flat(objective, d1, "d1"), _flat(objective, d2, "d2")]
    a = alphas.detach().to("cpu", torch.float64).numpy()
    b = betas.detach().to("cpu", torch.float64).numpy()
    loss, norm = np.empty((a.size, b.size)), np.empty((a.size, b.size))
    s1, s2 = np.empty((a.size, b.size)), np.empty((a.size, b.size))
    total = a.size * b.size
    for i, alpha in enumerate(a):
        for j, beta in enumerate(b):
            loss[i, j], norm[i, j], (s1[i, j], s2[i, j]) = _evaluate(
                objective, [(float(alpha), d1), (float(beta), d2)], flat)
            if progress is not None:
                progress(i * b.size + j + 1, total)
    return GradientSurface(alphas=a, betas=b, loss=loss, grad_norm=norm, slopes=[s1, s2], n_evaluations=total)


@dataclass
class GradientSummary:
    """Scalars of a gradient-norm surface (loss units per weight unit): ``at_theta`` is G at the grid point at the
    origin (None when the grid has none, or it is not finite), ``median`` and ``max`` run over the finite points,
    ``finite_fraction`` is the share of points where G is finite."""

    at_theta: float | None
    median: float | None
    max: float | None
    finite_fraction: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def gradient_summary(surface: GradientSurface) -> GradientSummary:
    """G at theta, its median and maximum over the finite grid points, and the finite share (rules above)."""
    g = np.asarray(surface.grad_norm, dtype=float)
    finite = np.isfinite(g)
    at = None
    ia = np.flatnonzero(np.isclose(surface.alphas, 0.0, rtol=0.0, atol=1e-12))
    if ia.size:
        if surface.betas is None:
            at = g[ia[0]]
        else:
            ib = np.flatnonzero(np.isclose(surface.betas, 0.0, rtol=0.0, atol=1e-12))
            at = g[ia[0], ib[0]] if ib.size else None
    at = float(at) if at is not None and np.isfinite(at) else None
    if not finite.any():
        return GradientSummary(at_theta=at, median=None, max=None, finite_fraction=0.0)
    return GradientSummary(at_theta=at, median=float(np.median(g[finite])), max=float(g[finite].max()),
                           finite_fraction=float(finite.mean()))


def trapezoid_residuals(alphas: Sequence[float], losses: Sequence[float], slopes: Sequence[float]) -> np.ndarray:
    """Per grid interval [a_i, a_{i+1}] of a line: |L_{i+1} - L_i - (a_{i+1} - a_i)(s_i + s_{i+1}) / 2|, the gap
    between the sampled rise of the loss and the rise its autograd slopes integrate to (trapezoid rule), in loss
    units; NaN where an end is not finite. For a smooth loss it is O(h^3 max|L'''|) (h the step); a jump of size
    J inside the interval adds ~|J|, which the slopes (local derivatives) cannot see. ``alphas`` increasing."""
    a = np.asarray(alphas, dtype=float)
    loss = np.asarray(losses, dtype=float)
    s = np.asarray(slopes, dtype=float)
    if a.ndim != 1 or loss.shape != a.shape or s.shape != a.shape or a.size < 2:
        raise ProbeError("alphas, losses and slopes must be 1-D of one length >= 2")
    h = np.diff(a)
    if (h <= 0).any():
        raise ProbeError("alphas must be strictly increasing")
    with np.errstate(invalid="ignore"):
        return np.abs(np.diff(loss) - h * (s[:-1] + s[1:]) / 2)
