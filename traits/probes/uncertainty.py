"""Per-compound predictive uncertainty from the loss landscape, its baselines, and how to score them.

Every function is pure: tensors and arrays in, tensors and arrays out; nothing is written or moved
between devices. The model is reached through a :class:`~traits.probes.objective.SplitObjective` on the
*training* data (its weights theta, its loss L(theta), its Hessian-vector products); the compounds whose
uncertainty is wanted come as lists of pre-collated batches ("query" batches, no labels needed).

Methods
-------
* **Hessian-WAG** (:func:`hessian_wag`; Dale et al., arXiv 2511.17760): models sampled from the low-loss
  region of the training-loss surface. On each plane (two direction dicts d1, d2: filter-normalised random
  directions, or the Hessian-eigenvector plane, each scaled exactly as the audit's surfaces are) the grid
  theta + a d1 + b d2 is evaluated, and every point with a finite L <= (1 + tau) L(theta) is kept (tau: the
  spec's surface tolerance). theta itself is always kept, once. The prediction of a compound is the mean
  over the kept models and its uncertainty their standard deviation. The step is along the directions
  themselves; an eigenvector is a *direction*, never a set of weights (stepping along (v - theta), as the
  authors' public code does after loading eigenvectors as weights, moves towards a point that has nothing
  to do with the landscape and is not reproduced here).
* **Linearised Laplace, low rank** (:func:`low_rank_curvature`, :func:`jvp_projections`,
  :func:`laplace_variance`, :func:`fit_prior_precision`): the Gaussian likelihood of the MSE loss,
  -log p(D | theta) = sum_i r_i^2 / (2 sigma^2), has Hessian (N / (2 sigma^2)) H_L with H_L the Hessian of the
  *mean* squared loss L that TRAITS' Lanczos measures. Its certified top-k pairs (lambda_j, v_j) give the
  posterior precision  V diag(s) V^T + lambda_0 I,  s_j = N lambda_j / (2 sigma^2). Only pairs whose
  ``converged_each`` flag is set are used. **Negative eigenvalues** are clipped to 0: a negative Hessian
  eigenvalue is not a valid precision (the Gauss-Newton matrix, which the Laplace approximation stands for,
  is positive semi-definite), so such a direction carries the prior alone; the count of clipped pairs is
  returned (``n_clipped``). The functional variance of compound i is
  J_i Sigma J_i^T = sum_j (J_i v_j)^2 / (s_j + lambda_0)  [+ (||J_i||^2 - sum_j (J_i v_j)^2) / lambda_0],
  with J_i v_j from Jacobian-vector products (``torch.func.jvp`` over the weights, vmapped over the k
  tangents): no dense Jacobian is formed. The bracketed complement term (the prior variance of the
  directions the curvature does not cover) needs ||J_i||^2, one backward per compound
  (:func:`gradient_norms_sq`); without it the posterior lives in the span of the certified eigenvectors
  ("subspace" Laplace). With k = dim, or a curvature of rank <= k, both are exact.
  The prior precision lambda_0 is fitted on the validation split (:func:`fit_prior_precision`: the grid
  value that maximises the Gaussian log-likelihood of the validation residuals under variance
  J Sigma J^T + sigma^2); the projections do not depend on lambda_0, so the grid costs nothing extra.
* **Last-layer Laplace** (:func:`fit_last_layer`, :class:`LastLayerLaplace`; the strong default of
  Daxberger et al. 2021, "Laplace Redux"): the output layer y = s_y (w . phi(x) + b) + m_y is linear in (w, b),
  so with features psi = s_y [phi, 1] its Gauss-Newton matrix is the exact Hessian and the posterior is
  closed form: Sigma = (Psi^T Psi / sigma^2 + lambda_0 I)^{-1}, variance psi Sigma psi^T. A prediction needs the
  embedding the forward pass computes anyway plus a (h+1)^2 product: about the cost of plain prediction.
* **Baselines**: :func:`knn_distance` (mean distance to the k nearest training compounds in the model's
  standardised embedding, :mod:`traits.shift`) and :func:`ensemble` (mean and spread over models trained
  with different seeds).

Scoring (:func:`recalibrate`, :func:`calibration`, :func:`spearman`, :func:`bootstrap_ratio`): a raw
uncertainty u (a standard deviation, or a distance) becomes sigma = sqrt(a^2 + b^2 u^2) with (a, b) fitted by
Gaussian maximum likelihood on the validation residuals; then miscalibration area (mean |observed - expected|
share of residuals inside the central p-intervals, p = 0.01..0.99), the standard deviation of the z-scores
r / sigma (1 when calibrated) and the coverage of the 68% and 95% intervals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.func import functional_call, jvp, vmap

from traits.errors import ProbeError
from traits.probes.objective import SplitObjective, eval_mode

Direction = dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------- predictions
def _predict_batches(objective: SplitObjective, params: Mapping[str, torch.Tensor], batches: Sequence) -> torch.Tensor:
    """Predictions (physical units) at ``params`` for every compound of ``batches``, concatenated."""
    full = objective._full(dict(params))
    outs = [functional_call(objective.model, full, (b,)).reshape(-1) for b in batches]
    if not outs:
        return torch.zeros(0, dtype=objective.dtype, device=objective.device)
    return torch.cat(outs)


def predict_at(objective: SplitObjective, params: Mapping[str, torch.Tensor] | None, batches: Sequence) -> torch.Tensor:
    """Predictions at ``params`` (default theta), eval mode, no grad: Tensor[n]."""
    with torch.no_grad(), eval_mode(objective.model):
        return _predict_batches(objective, objective.params if params is None else params, batches)


def predict_points(objective: SplitObjective, stacked: Mapping[str, torch.Tensor], batches: Sequence,
                   chunk_size: int | None = None) -> torch.Tensor:
    """Predictions of P weight sets (stacked along dim 0 of each tensor) on ``batches``: Tensor[P, n].

    Chunks of points go through ``torch.func.vmap``; a model vmap cannot handle is looped over."""
    n_points = next(iter(stacked.values())).shape[0]
    step = n_points if chunk_size is None else max(int(chunk_size), 1)
    rows = []
    with torch.no_grad(), eval_mode(objective.model):
        for start in range(0, n_points, step):
            chunk = {n: stacked[n][start:start + step] for n in objective.names}
            size = next(iter(chunk.values())).shape[0]
            if size > 1 and objective.vmap_ok is not False:
                try:
                    rows.append(vmap(lambda p: _predict_batches(objective, p, batches), randomness="error")(chunk))
                    continue
                except Exception:  # noqa: BLE001 - any vmap failure means: loop instead
                    pass
            rows.extend(_predict_batches(objective, {n: t[j] for n, t in chunk.items()}, batches).unsqueeze(0)
                        for j in range(size))
    return torch.cat(rows) if rows else torch.zeros(0, 0, dtype=objective.dtype, device=objective.device)


@dataclass
class Predictive:
    """A per-compound prediction and its uncertainty (physical units). ``std`` is the model (epistemic)
    spread; ``noise_var`` the observation noise variance the method assumes (0 when it has none)."""

    method: str
    mean: np.ndarray
    std: np.ndarray
    noise_var: float = 0.0
    info: dict = field(default_factory=dict)

    @property
    def predictive_std(self) -> np.ndarray:
        return np.sqrt(self.std**2 + self.noise_var)


# ---------------------------------------------------------------------------------------- Hessian-WAG
def low_loss_mask(losses: torch.Tensor, loss0: float, tolerance: float) -> torch.Tensor:
    """Points whose loss is finite and at most (1 + tolerance) * loss0."""
    if tolerance < 0:
        raise ProbeError(f"tolerance must be >= 0, got {tolerance}")
    return torch.isfinite(losses) & (losses <= (1.0 + tolerance) * loss0)


def _plane_points(objective: SplitObjective, d1: Direction, d2: Direction, a: torch.Tensor, b: torch.Tensor) -> dict:
    out = {}
    for name in objective.names:
        theta = objective.params[name]
        shape = (-1,) + (1,) * theta.dim()
        ca = a.to(theta.device, theta.dtype).reshape(shape)
        cb = b.to(theta.device, theta.dtype).reshape(shape)
        out[name] = theta.unsqueeze(0) + ca * d1[name].to(theta).unsqueeze(0) + cb * d2[name].to(theta).unsqueeze(0)
    return out


@dataclass
class WagResult:
    """Hessian-WAG: per query set a :class:`Predictive`; ``kept`` per plane (label, kept, grid points);
    ``n_models`` models averaged (theta once plus every kept non-centre grid point); ``loss0`` L(theta);
    ``threshold`` (1 + tau) L(theta); ``n_evaluations`` training-loss evaluations spent."""

    predictions: dict[str, Predictive]
    kept: list[dict]
    n_models: int
    loss0: float
    tolerance: float
    threshold: float
    n_evaluations: int
    coefficients: list[tuple[int, float, float]]


def hessian_wag(
    objective: SplitObjective,
    planes: Sequence[tuple[str, Direction, Direction]],
    axis: torch.Tensor,
    tolerance: float,
    queries: Mapping[str, Sequence],
    chunk_size: int | None = None,
    *,
    min_kept: int = 0,
    max_halvings: int = 0,
) -> WagResult:
    """Average and spread of the predictions of the low-loss models on the planes (module docstring).

    ``planes``: (label, d1, d2) with directions scaled as the surfaces are; ``axis``: the grid coordinates
    (both axes); ``queries``: name -> batches of the compounds to predict. A plane on which fewer than
    ``min_kept`` off-centre points are kept is evaluated again on the grid shrunk by half, at most
    ``max_halvings`` times (the kept points of the last grid are used; ``kept[i]['scale']`` says which)."""
    axis = axis.to(torch.float64).reshape(-1)
    if axis.numel() == 0:
        raise ProbeError("the grid axis is empty")
    loss0 = float(objective.loss())
    if not math.isfinite(loss0):
        raise ProbeError("the training loss at theta is not finite; there is no low-loss region to sample")
    a, b = torch.meshgrid(axis, axis, indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    eps = 1e-12 * float(axis.abs().max())
    off_centre = (a.abs() > eps) | (b.abs() > eps)
    a, b = a[off_centre], b[off_centre]
    members = [predict_at(objective, None, batches) for batches in queries.values()]
    sums = [m.to(torch.float64).clone() for m in members]
    squares = [(m.to(torch.float64) ** 2) for m in members]
    n_models, kept, evals, coeffs = 1, [], 0, []
    for p, (label, d1, d2) in enumerate(planes):
        scale = 1.0
        for halving in range(max(int(max_halvings), 0) + 1):
            pa, pb = a * scale, b * scale
            stacked = _plane_points(objective, d1, d2, pa, pb)
            losses = objective.loss_many(stacked, chunk_size=chunk_size)
            evals += int(losses.numel())
            mask = low_loss_mask(losses, loss0, tolerance).cpu()
            if int(mask.sum()) >= min_kept or halving == max_halvings:
                break
            scale /= 2
        kept.append({"plane": label, "kept": int(mask.sum()) + 1, "points": int(a.numel()) + 1, "scale": scale})
        idx = torch.nonzero(mask).reshape(-1)
        coeffs.extend((p, float(pa[i]), float(pb[i])) for i in idx)
        if idx.numel() == 0:
            continue
        chosen = {n: t[idx.to(t.device)] for n, t in stacked.items()}
        for q, batches in enumerate(queries.values()):
            preds = predict_points(objective, chosen, batches, chunk_size=chunk_size).to(torch.float64)
            sums[q] += preds.sum(0)
            squares[q] += (preds**2).sum(0)
        n_models += int(idx.numel())
    out = {}
    for q, name in enumerate(queries):
        mean = sums[q] / n_models
        var = (squares[q] / n_models - mean**2).clamp_min(0.0)
        out[name] = Predictive("hessian_wag", mean.cpu().numpy(), var.sqrt().cpu().numpy(),
                               info={"n_models": n_models})
    return WagResult(out, kept, n_models, loss0, float(tolerance), (1.0 + tolerance) * loss0, evals, coeffs)


# ---------------------------------------------------------------------------------------- Laplace (full network)
@dataclass
class LowRankCurvature:
    """Certified top eigenpairs of the mean-loss Hessian H_L, ready for the Laplace posterior.

    ``values``: the eigenvalues used (negative ones clipped to 0); ``raw_values``: as certified;
    ``vectors``: (k, dim) unit eigenvectors; ``n_clipped``: negative values set to 0; ``n_unconverged``:
    pairs left out because they were not certified."""

    values: torch.Tensor
    raw_values: torch.Tensor
    vectors: torch.Tensor
    n_clipped: int
    n_unconverged: int


def low_rank_curvature(eig) -> LowRankCurvature:
    """The converged pairs of an :class:`~traits.probes.hessian.EigenResult`, negative values clipped."""
    values = torch.as_tensor(eig.values, dtype=torch.float64).reshape(-1)
    each = list(eig.converged_each) if eig.converged_each is not None else [bool(eig.converged)] * len(values)
    keep = [i for i, ok in enumerate(each) if ok and math.isfinite(float(values[i]))]
    raw = values[keep]
    vectors = eig.vectors[keep] if keep else eig.vectors[:0]
    return LowRankCurvature(values=raw.clamp_min(0.0), raw_values=raw, vectors=vectors,
                            n_clipped=int((raw < 0).sum()), n_unconverged=len(values) - len(keep))


def jvp_projections(objective: SplitObjective, vectors: torch.Tensor, batches: Sequence) -> torch.Tensor:
    """J_i v_j for every compound i of ``batches`` and every row v_j of ``vectors``: Tensor[n, k].

    Forward-mode products (``torch.func.jvp``) over the weights, vmapped over the k tangents per batch
    (a loop over tangents when vmap fails); the Jacobian itself is never formed."""
    k = int(vectors.shape[0])
    if k == 0:
        n = sum(int(getattr(b, "num_graphs", len(getattr(b, "y", [])))) for b in batches)
        return torch.zeros(n, 0, dtype=objective.dtype, device=objective.device)
    primals = {n: objective.params[n] for n in objective.names}
    tangents = [objective.unflatten(vectors[j].to(objective.device, objective.dtype)) for j in range(k)]
    stacked = {n: torch.stack([t[n] for t in tangents]) for n in objective.names}
    cols = []
    with torch.no_grad(), eval_mode(objective.model):
        for batch in batches:
            def f(p, batch=batch):
                return functional_call(objective.model, objective._full(p), (batch,)).reshape(-1)

            def one(t, f=f):
                return jvp(f, (primals,), (t,))[1]

            try:
                block = vmap(one)(stacked)  # (k, B)
            except Exception:  # noqa: BLE001 - vmap unsupported for this model: one tangent at a time
                block = torch.stack([one(t) for t in tangents])
            cols.append(block.T)
    return torch.cat(cols).to(torch.float64)


def gradient_norms_sq(objective: SplitObjective, batches: Sequence) -> torch.Tensor:
    """||J_i||^2 = ||d f_i / d theta||^2 per compound (one backward per compound): Tensor[n]."""
    out = []
    with torch.enable_grad(), eval_mode(objective.model):
        leaves = {n: objective.params[n].detach().requires_grad_(True) for n in objective.names}
        inputs = [leaves[n] for n in objective.names]
        for batch in batches:
            pred = functional_call(objective.model, objective._full(leaves), (batch,)).reshape(-1)
            for i in range(pred.numel()):
                grads = torch.autograd.grad(pred[i], inputs, retain_graph=i + 1 < pred.numel(), allow_unused=True)
                out.append(sum(float(g.double().pow(2).sum()) for g in grads if g is not None))
    return torch.tensor(out, dtype=torch.float64)


def precision_values(curv: LowRankCurvature, n_data: int, noise_var: float) -> torch.Tensor:
    """Likelihood precision along each eigenvector: s_j = N lambda_j / (2 sigma^2)."""
    if not (noise_var > 0 and math.isfinite(noise_var)):
        raise ProbeError(f"the noise variance must be positive and finite, got {noise_var}")
    return curv.values * (float(n_data) / (2.0 * noise_var))


def laplace_variance(proj: torch.Tensor, precision: torch.Tensor, prior_precision: float,
                     grad_sq: torch.Tensor | None = None) -> torch.Tensor:
    """J Sigma J^T per compound from the projections J_i v_j (n, k) and the precisions s_j (k,); with
    ``grad_sq`` (||J_i||^2) the complement of the eigenvectors carries the prior variance 1 / lambda_0."""
    if not prior_precision > 0:
        raise ProbeError(f"the prior precision must be positive, got {prior_precision}")
    p2 = proj.to(torch.float64) ** 2
    var = (p2 / (precision.to(torch.float64) + prior_precision)).sum(1)
    if grad_sq is not None:
        var = var + (grad_sq.to(torch.float64) - p2.sum(1)).clamp_min(0.0) / prior_precision
    return var


def gaussian_loglik(residuals: np.ndarray, variance: np.ndarray) -> float:
    """Mean Gaussian log-likelihood of residuals under per-compound variances."""
    r = np.asarray(residuals, dtype=np.float64)
    v = np.maximum(np.asarray(variance, dtype=np.float64), 1e-300)
    return float(np.mean(-0.5 * (np.log(2 * np.pi * v) + r * r / v)))


DEFAULT_PRIOR_GRID = tuple(float(x) for x in np.logspace(-8, 6, 57))


def fit_prior_precision(variance_at, residuals: np.ndarray, noise_var: float,
                        grid: Sequence[float] = DEFAULT_PRIOR_GRID) -> tuple[float, list[float]]:
    """The prior precision on ``grid`` maximising the validation log-likelihood; ``variance_at(lam)``
    gives the functional variances of the validation compounds. Returns (best, log-likelihood per value)."""
    if len(residuals) == 0:
        raise ProbeError("the validation split is empty; the prior precision cannot be fitted")
    lls = [gaussian_loglik(residuals, np.asarray(variance_at(lam)) + noise_var) for lam in grid]
    best = int(np.nanargmax(np.where(np.isfinite(lls), lls, -np.inf)))
    return float(grid[best]), lls


# ---------------------------------------------------------------------------------------- last-layer Laplace
def last_layer_features(model, batches: Sequence) -> torch.Tensor:
    """psi = s_y [phi(x), 1] per compound (float64): the output layer's inputs in physical units.

    Needs ``model.embed`` and a linear ``model.fc_out`` with one output (every :class:`GraphRegressor`)."""
    fc = getattr(model, "fc_out", None)
    if not (hasattr(model, "embed") and isinstance(fc, torch.nn.Linear) and fc.out_features == 1):
        raise ProbeError("last-layer Laplace needs a model with embed() and a linear fc_out of one output")
    scale = float(getattr(model, "target_std", 1.0))
    rows = []
    with torch.no_grad(), eval_mode(model):
        for b in batches:
            phi = model.embed(b).to(torch.float64)
            rows.append(torch.cat([phi, torch.ones(phi.shape[0], 1, dtype=phi.dtype, device=phi.device)], 1) * scale)
    if not rows:
        return torch.zeros(0, fc.in_features + 1, dtype=torch.float64)
    return torch.cat(rows).cpu()


@dataclass
class LastLayerLaplace:
    """Posterior of the output layer: ``gram`` = Psi^T Psi of the training features, ``noise_var`` sigma^2,
    ``prior_precision`` lambda_0; ``covariance`` = (gram / sigma^2 + lambda_0 I)^{-1}."""

    gram: np.ndarray
    noise_var: float
    prior_precision: float
    n_data: int
    covariance: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.gram = np.asarray(self.gram, dtype=np.float64)
        a = self.gram / self.noise_var + self.prior_precision * np.eye(len(self.gram))
        self.covariance = np.linalg.inv(a)
        self.covariance = 0.5 * (self.covariance + self.covariance.T)

    def variance(self, features) -> np.ndarray:
        f = np.asarray(features, dtype=np.float64)
        return np.maximum(np.einsum("ij,jk,ik->i", f, self.covariance, f), 0.0)

    def to_dict(self) -> dict:
        return {"gram": self.gram.tolist(), "noise_var": self.noise_var,
                "prior_precision": self.prior_precision, "n_data": self.n_data}

    @classmethod
    def from_dict(cls, d: Mapping) -> LastLayerLaplace:
        return cls(gram=np.asarray(d["gram"], dtype=np.float64), noise_var=float(d["noise_var"]),
                   prior_precision=float(d["prior_precision"]), n_data=int(d["n_data"]))


def _last_layer_variance_at(gram: np.ndarray, noise_var: float, features: np.ndarray):
    """variance(lambda_0) for fixed features, from one eigendecomposition of the Gram matrix."""
    e, u = np.linalg.eigh(np.asarray(gram, dtype=np.float64))
    proj2 = (np.asarray(features, dtype=np.float64) @ u) ** 2
    return lambda lam: (proj2 / (np.maximum(e, 0.0) / noise_var + lam)).sum(1)


def fit_last_layer(train_features, noise_var: float, val_features=None, val_residuals=None,
                   prior_precision: float | None = None,
                   grid: Sequence[float] = DEFAULT_PRIOR_GRID) -> LastLayerLaplace:
    """Fit the last-layer posterior; the prior precision is given, or fitted on the validation residuals."""
    if not (noise_var > 0 and math.isfinite(noise_var)):
        raise ProbeError(f"the noise variance must be positive and finite, got {noise_var}")
    psi = np.asarray(train_features, dtype=np.float64)
    gram = psi.T @ psi
    if prior_precision is None:
        if val_features is None or val_residuals is None:
            raise ProbeError("give a prior precision or validation features and residuals to fit it")
        prior_precision, _ = fit_prior_precision(_last_layer_variance_at(gram, noise_var, val_features),
                                                 np.asarray(val_residuals), noise_var, grid)
    return LastLayerLaplace(gram=gram, noise_var=float(noise_var), prior_precision=float(prior_precision),
                            n_data=int(len(psi)))


# ---------------------------------------------------------------------------------------- baselines
def knn_distance(train_embedding: np.ndarray, query_embedding: np.ndarray, k: int = 5) -> np.ndarray:
    """Mean distance to the k nearest training compounds in the embedding standardised on training."""
    from traits.shift import knn_distances

    train = np.asarray(train_embedding, dtype=np.float64)
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 0, std, 1.0)
    return knn_distances((train - mean) / std, (np.asarray(query_embedding, dtype=np.float64) - mean) / std, k)


def ensemble(predictions: Sequence[np.ndarray]) -> Predictive:
    """Mean and standard deviation over the members' predictions (members x compounds)."""
    p = np.asarray(predictions, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < 2:
        raise ProbeError("an ensemble needs at least two members' predictions")
    return Predictive("ensemble", p.mean(0), p.std(0, ddof=1), info={"members": int(p.shape[0])})


# ---------------------------------------------------------------------------------------- scoring
@dataclass
class Recalibration:
    """sigma = sqrt(a^2 + (b u)^2), fitted on validation residuals by Gaussian maximum likelihood."""

    a: float
    b: float

    def sigma(self, u) -> np.ndarray:
        u = np.asarray(u, dtype=np.float64)
        return np.sqrt(self.a**2 + (self.b * u) ** 2)

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b}


def recalibrate(u_val, residuals_val) -> Recalibration:
    """Fit (a, b) >= 0 of sigma = sqrt(a^2 + b^2 u^2) by maximising the Gaussian likelihood of ``residuals_val``."""
    from scipy.optimize import minimize

    u = np.asarray(u_val, dtype=np.float64)
    r = np.asarray(residuals_val, dtype=np.float64)
    ok = np.isfinite(u) & np.isfinite(r)
    u, r = u[ok], r[ok]
    if r.size < 2:
        raise ProbeError("recalibration needs at least two validation compounds")
    rms = float(np.sqrt(np.mean(r * r))) or 1e-12
    us = float(np.sqrt(np.mean(u * u))) or 1.0

    def nll(x):
        a, b = np.exp(x)
        v = a * a + (b * u) ** 2
        return float(np.mean(np.log(v) + r * r / v))

    starts = [np.log([rms / 2, rms / (2 * us)]), np.log([rms, 1e-6 * rms / us]), np.log([1e-6 * rms, rms / us])]
    best = min((minimize(nll, s, method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-10}) for s in starts),
               key=lambda res: res.fun)
    a, b = np.exp(best.x)
    return Recalibration(float(a), float(b))


def calibration(residuals, sigma) -> dict:
    """Miscalibration area, std of z-scores, coverage of the central 68% and 95% intervals, and the
    observed share per expected share (for the calibration curve)."""
    from scipy.stats import norm

    r = np.asarray(residuals, dtype=np.float64)
    s = np.asarray(sigma, dtype=np.float64)
    ok = np.isfinite(r) & np.isfinite(s) & (s > 0)
    r, s = r[ok], s[ok]
    if r.size == 0:
        return {"n": 0, "miscalibration_area": None, "z_std": None, "coverage_68": None, "coverage_95": None,
                "expected": [], "observed": []}
    z = np.abs(r / s)
    expected = np.linspace(0.01, 0.99, 99)
    observed = np.array([(z <= norm.ppf(0.5 + p / 2)).mean() for p in expected])
    return {
        "n": int(r.size),
        "miscalibration_area": float(np.mean(np.abs(observed - expected))),
        "z_std": float(np.std(r / s)),
        "coverage_68": float((z <= norm.ppf(0.84)).mean()),
        "coverage_95": float((z <= norm.ppf(0.975)).mean()),
        "expected": expected.tolist(),
        "observed": observed.tolist(),
    }


def spearman(u, abs_err) -> float | None:
    """Spearman rank correlation between uncertainty and absolute error (None when undefined)."""
    from scipy.stats import spearmanr

    u = np.asarray(u, dtype=np.float64)
    e = np.asarray(abs_err, dtype=np.float64)
    ok = np.isfinite(u) & np.isfinite(e)
    if ok.sum() < 3 or np.ptp(u[ok]) == 0 or np.ptp(e[ok]) == 0:
        return None
    rho = float(spearmanr(u[ok], e[ok]).statistic)
    return rho if math.isfinite(rho) else None


def bootstrap_ratio(ood, idv, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """mean(ood) / mean(idv) with a percentile bootstrap interval over compounds (each set resampled)."""
    o = np.asarray(ood, dtype=np.float64)
    i = np.asarray(idv, dtype=np.float64)
    o, i = o[np.isfinite(o)], i[np.isfinite(i)]
    if o.size == 0 or i.size == 0 or i.mean() <= 0:
        return {"value": None, "low": None, "high": None}
    rng = np.random.default_rng(seed)
    mo = o[rng.integers(0, o.size, (n_boot, o.size))].mean(1)
    mi = i[rng.integers(0, i.size, (n_boot, i.size))].mean(1)
    ratios = mo / np.where(mi > 0, mi, np.nan)
    lo, hi = np.nanquantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    return {"value": float(o.mean() / i.mean()), "low": float(lo), "high": float(hi)}


# ---------------------------------------------------------------------------------------- all methods, scored
def landscape_uncertainty(
    model,
    train_objective: SplitObjective,
    queries: Mapping[str, Sequence],
    *,
    eig,
    planes: Sequence[tuple[str, Direction, Direction]],
    axis: torch.Tensor,
    tolerance: float,
    n_train: int,
    train_batches: Sequence,
    val_targets: np.ndarray,
    min_kept: int = 8,
    max_halvings: int = 3,
) -> tuple[dict[str, dict[str, Predictive]], dict]:
    """Hessian-WAG, low-rank linearised Laplace and last-layer Laplace for every query set.

    ``queries`` must hold ``"val"`` (the prior precisions are fitted there, against ``val_targets``);
    ``eig`` the certified top pairs of the training-loss Hessian (``train_objective``);
    ``train_batches`` every training compound (last-layer features; ``n_train`` of them, the N of the
    likelihood). Returns (method -> query -> Predictive, diagnostics)."""
    if "val" not in queries:
        raise ProbeError("the validation split is needed to fit the prior precision")
    if train_objective.loss_kind != "mse":
        raise ProbeError("the Laplace approximations need the Gaussian likelihood of an 'mse' loss")
    out: dict[str, dict[str, Predictive]] = {}
    info: dict = {}
    means = {q: predict_at(train_objective, None, b).to(torch.float64).cpu().numpy() for q, b in queries.items()}
    r_val = np.asarray(val_targets, dtype=np.float64) - means["val"]

    wag = hessian_wag(train_objective, planes, axis, tolerance, queries, min_kept=min_kept, max_halvings=max_halvings)
    out["hessian_wag"] = wag.predictions
    info["hessian_wag"] = {"n_models": wag.n_models, "kept": wag.kept, "tolerance": wag.tolerance,
                           "loss0": wag.loss0, "n_evaluations": wag.n_evaluations}

    noise_var = float(train_objective.loss())  # the training MSE at theta: sigma^2 of the likelihood
    curv = low_rank_curvature(eig)
    info["laplace"] = {"k": int(len(curv.values)), "n_clipped": curv.n_clipped, "n_unconverged": curv.n_unconverged,
                       "eigenvalues": [float(v) for v in curv.raw_values], "noise_var": noise_var, "n_data": n_train}
    if len(curv.values):
        prec = precision_values(curv, n_train, noise_var)
        proj = {q: jvp_projections(train_objective, curv.vectors, b).cpu() for q, b in queries.items()}
        lam, _ = fit_prior_precision(lambda x: laplace_variance(proj["val"], prec, x).numpy(), r_val, noise_var)
        info["laplace"]["prior_precision"] = lam
        out["laplace"] = {q: Predictive("laplace", means[q], laplace_variance(proj[q], prec, lam).sqrt().numpy(),
                                        noise_var) for q in queries}

    feats = last_layer_features(model, train_batches).numpy()
    qfeats = {q: last_layer_features(model, b).numpy() for q, b in queries.items()}
    post = fit_last_layer(feats, noise_var, val_features=qfeats["val"], val_residuals=r_val)
    info["last_layer"] = {"prior_precision": post.prior_precision, "noise_var": noise_var, "n_data": post.n_data}
    out["last_layer"] = {q: Predictive("last_layer", means[q], np.sqrt(post.variance(f)), noise_var)
                         for q, f in qfeats.items()}
    return out, info


def score_method(u: Mapping[str, np.ndarray], residuals: Mapping[str, np.ndarray], *, seed: int = 0,
                 n_boot: int = 2000, max_points: int = 500, ids: Mapping[str, Sequence[str]] | None = None) -> dict:
    """How one uncertainty ``u`` (per split: val, id, ood) tracks the errors ``residuals`` (same splits):
    Spearman rho against |error| on OOD and ID, calibration after recalibrating on validation, and the
    OOD/ID ratio of the mean uncertainty next to the OOD/ID ratio of the mean absolute error.

    ``points``: at most ``max_points`` (u, |error|) pairs of each split, both finite, in a seeded random order;
    with ``ids[split]`` (the id of each compound of ``u[split]``, same order) each point keeps its compound's id
    (``points.ids``), else none."""
    rec = recalibrate(u["val"], residuals["val"])
    out: dict = {"recalibration": rec.to_dict()}
    for split in ("id", "ood"):
        uu, rr = np.asarray(u[split], dtype=np.float64), np.asarray(residuals[split], dtype=np.float64)
        cal = calibration(rr, rec.sigma(uu))
        finite = np.flatnonzero(np.isfinite(uu) & np.isfinite(rr))
        keep = finite[np.random.default_rng(seed).permutation(len(finite))[:max_points]]
        named = (ids or {}).get(split)
        points = {"u": [float(x) for x in uu[keep]], "abs_err": [float(x) for x in np.abs(rr[keep])],
                  "ids": [str(named[i]) for i in keep] if named is not None and len(named) == len(uu) else []}
        out[split] = {"spearman": spearman(uu, np.abs(rr)), "mean_u": float(np.nanmean(uu)) if len(uu) else None,
                      "calibration": cal, "points": points}
    out["u_ratio"] = bootstrap_ratio(u["ood"], u["id"], n_boot=n_boot, seed=seed)
    out["error_ratio"] = bootstrap_ratio(np.abs(residuals["ood"]), np.abs(residuals["id"]), n_boot=n_boot, seed=seed)
    return out
