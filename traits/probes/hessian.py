"""Spectral probes of a Hessian known only through Hessian-vector products.

Every function takes ``hvp: Callable[[Tensor], Tensor]`` acting on flat vectors of length ``dim``
(e.g. ``SplitObjective.hvp``), the ``device`` and ``dtype`` to work in, and a ``torch.Generator`` as the
only source of randomness (values are drawn on the generator's device and moved).

Algorithms
----------
* Lanczos with full re-orthogonalisation (two classical Gram-Schmidt passes against all previous
  vectors per step), implemented here rather than through ``scipy.sparse.linalg.eigsh`` so that it runs
  on any torch device and dtype and counts every product. Breakdown (the Krylov space became invariant)
  is detected relative to the largest tridiagonal entry seen.
* ``top_eigenvalues`` grows one Krylov space until the Ritz residual estimates |beta_m s_mi| / |theta_i|
  of the top k Ritz pairs fall below ``tol`` (or ``max_steps``), then verifies each pair with one extra
  product: ``residuals`` are the true ||Hv - lambda v|| / |lambda|. On breakdown before k Ritz values
  exist it restarts from a fresh random vector orthogonal to the space. Like any single-vector Krylov
  method, an eigenvalue of multiplicity > 1 is found once per Krylov block.
* ``smallest_eigenvalue`` reads the other end of the same tridiagonal. Its stopping rule is
  |beta_m s_m1| <= tol * max(|theta_min|, |theta|_max): lambda_min of a trained network is often tiny
  next to lambda_max, and requiring a small residual relative to |lambda_min| alone would rarely end.
  The reported residual still follows the common definition ||Hv - lambda v|| / |lambda|.
* Hutchinson (Rademacher probes), Hutch++ (Meyer, Musco, Musco & Woodruff 2021) and stochastic Lanczos
  quadrature (Ghorbani, Krishnan & Xiao 2019) for traces and spectral densities.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from traits.errors import ProbeError

HVP = Callable[[torch.Tensor], torch.Tensor]
#: A progress callback: ``on_progress(done, total)``, the Hessian-vector products done and the stage's budget.
Progress = Callable[[int, int], None]


# ---------------------------------------------------------------------------------------- results
@dataclass
class EigenResult:
    """Eigenpairs: ``values`` (CPU float64, descending for top-k), ``vectors`` (k x dim, on the working
    device), ``residuals`` the verified ||Hv - theta v|| / |theta| per pair and ``abs_residuals`` the same
    without the division, ``accuracy`` the absolute accuracy each pair had to reach, ``converged_each``
    whether it did (verified, settled, see the solvers), ``converged`` whether all did, ``n_hvp``
    products used (verification included), ``n_steps`` Krylov dimension."""

    values: torch.Tensor
    vectors: torch.Tensor
    residuals: torch.Tensor
    n_hvp: int
    converged: bool
    n_steps: int = 0
    method: str = "lanczos"
    abs_residuals: torch.Tensor | None = None
    accuracy: torch.Tensor | None = None
    converged_each: list[bool] | None = None

    def to_dict(self, include_vectors: bool = False) -> dict:
        out = {
            "values": [float(x) for x in self.values],
            "residuals": [float(x) for x in self.residuals],
            "abs_residuals": [float(x) for x in self.abs_residuals] if self.abs_residuals is not None else [],
            "accuracy": [float(x) for x in self.accuracy] if self.accuracy is not None else [],
            "converged_each": list(self.converged_each) if self.converged_each is not None
            else [bool(self.converged)] * len(self.values),
            "n_hvp": int(self.n_hvp),
            "converged": bool(self.converged),
            "n_steps": int(self.n_steps),
            "method": self.method,
        }
        if include_vectors:
            out["vectors"] = self.vectors.detach().to("cpu", torch.float64).tolist()
        return out


@dataclass
class TraceResult:
    """A trace estimate with the standard error of its random part and the products it cost."""

    estimate: float
    stderr: float
    n_hvp: int
    method: str = "hutchinson"

    def to_dict(self) -> dict:
        return {
            "estimate": float(self.estimate),
            "stderr": float(self.stderr),
            "n_hvp": int(self.n_hvp),
            "method": self.method,
        }


@dataclass
class DensityResult:
    """SLQ output: per-run quadrature ``nodes`` and ``weights`` (n_runs x m, padded with zero weight when a
    run broke down early), and the Gaussian-broadened ``density`` on ``grid`` (width ``sigma``)."""

    nodes: torch.Tensor
    weights: torch.Tensor
    grid: torch.Tensor
    density: torch.Tensor
    sigma: float
    n_hvp: int

    def to_dict(self) -> dict:
        return {
            "nodes": self.nodes.tolist(),
            "weights": self.weights.tolist(),
            "grid": self.grid.tolist(),
            "density": self.density.tolist(),
            "sigma": float(self.sigma),
            "n_hvp": int(self.n_hvp),
        }


# ---------------------------------------------------------------------------------------- sampling
def _gaussian(n: int, generator: torch.Generator, device, dtype) -> torch.Tensor:
    draw_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    v = torch.randn(n, generator=generator, device=generator.device, dtype=draw_dtype)
    return v.to(device=device, dtype=dtype)


def _rademacher(shape, generator: torch.Generator, device, dtype) -> torch.Tensor:
    bits = torch.randint(0, 2, shape, generator=generator, device=generator.device)
    return (bits * 2 - 1).to(device=device, dtype=dtype)


def _check_dim(dim: int) -> None:
    if dim < 1:
        raise ProbeError(f"the Hessian dimension must be >= 1, got {dim}")


def _require(generator, device, dtype) -> None:
    missing = [n for n, v in (("generator", generator), ("device", device), ("dtype", dtype)) if v is None]
    if missing:
        raise ProbeError(f"pass {', '.join(missing)} explicitly; probes never guess them")


def _apply_many(hvp: HVP, hvp_many, stack: torch.Tensor) -> torch.Tensor:
    """H applied to each row of ``stack`` (k, dim): one ``hvp_many`` call when given, else row by row."""
    if hvp_many is None or stack.shape[0] < 2:
        return torch.stack([_apply(hvp, row.contiguous()) for row in stack]) if stack.shape[0] else stack.clone()
    out = hvp_many(stack)
    if out.shape != stack.shape:
        raise ProbeError(f"hvp_many returned shape {tuple(out.shape)} for a stack of shape {tuple(stack.shape)}")
    return out.to(device=stack.device, dtype=stack.dtype)


def _apply(hvp: HVP, v: torch.Tensor) -> torch.Tensor:
    out = hvp(v)
    if out.shape != v.shape:
        raise ProbeError(f"hvp returned shape {tuple(out.shape)} for an input of shape {tuple(v.shape)}")
    return out.to(device=v.device, dtype=v.dtype)


# ---------------------------------------------------------------------------------------- progress
class HVPCounter:
    """Hessian-vector products that count themselves: ``counter.hvp`` and ``counter.hvp_many`` (None when no
    ``hvp_many`` is given) compute what the functions they wrap compute, add the products they did to ``done``
    and call ``on_progress(done, total)`` after each call. ``total`` is ``budget`` (see :func:`hessian_budget`),
    raised to ``done + 1`` while the products run past it (the verifications of a Krylov solver may), so a stage
    that ends when done reaches total is not ended early; :meth:`finish` reports the end. No I/O here: the
    callback is the caller's."""

    def __init__(self, hvp: HVP, hvp_many=None, on_progress: Progress | None = None, budget: int = 0):
        self._hvp, self._hvp_many, self._on_progress = hvp, hvp_many, on_progress
        self.budget = int(budget)
        self.done = 0
        self.hvp_many = self._many if hvp_many is not None else None

    def _add(self, n: int) -> None:
        self.done += int(n)
        if self._on_progress is not None:
            self._on_progress(self.done, max(self.budget, self.done + 1))

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        out = self._hvp(v)
        self._add(1)
        return out

    def _many(self, stack: torch.Tensor) -> torch.Tensor:
        out = self._hvp_many(stack)
        self._add(stack.shape[0])
        return out

    def finish(self) -> None:
        """Report the products done as the total (``on_progress(done, done)``): the probe is over, whatever
        its budget was."""
        if self._on_progress is not None and self.done:
            self._on_progress(self.done, self.done)


def hessian_budget(dim: int, top_k: int, max_steps: int, trace_hvps: int, density_runs: int,
                   density_steps: int, groups: int = 0) -> int:
    """The Hessian-vector products one Hessian probe plans: :func:`top_eigenvalues` (its Krylov steps and one
    verification per pair), :func:`smallest_eigenvalue` (likewise), :func:`hutchinson_trace` and
    :func:`hutchpp_trace` with ``trace_hvps`` each, and :func:`slq_density`. Solvers that converge early use
    fewer; a Krylov solver whose verification fails before its budget ends uses a few more. With ``groups`` G > 0
    the trace is instead :func:`traits.probes.sampling.gauss_newton_trace` (``trace_hvps`` probes applied to each
    of G structure groups) and the λ_max jackknife adds ``top_k`` products per group; each group product counts
    as one."""
    _check_dim(dim)
    k = min(max(top_k, 1), dim)
    top = min(max(max_steps, k), dim) + k
    bottom = min(max(max_steps, 1), dim) + 1
    density = density_runs * min(density_steps, dim)
    if groups > 0:
        return top + bottom + groups * (trace_hvps + k) + density
    hutchpp = 2 * dim if min(trace_hvps // 3, dim) >= dim else trace_hvps
    return top + bottom + trace_hvps + hutchpp + density


# ---------------------------------------------------------------------------------------- Lanczos
class _Lanczos:
    """Incremental Lanczos with full re-orthogonalisation; H Q^T = Q^T T + r e_m^T."""

    def __init__(self, hvp: HVP, dim: int, capacity: int, generator, device, dtype, v0=None):
        self.hvp, self.dim, self.generator = hvp, dim, generator
        self.device, self.dtype = device, dtype
        self.Q = torch.zeros(capacity, dim, device=device, dtype=dtype)
        self.alpha: list[float] = []
        self.beta: list[float] = []  # beta[j] couples Q[j] and Q[j+1]; 0.0 marks a restart
        self.r: torch.Tensor | None = None
        self.n_hvp = 0
        self.scale = 0.0  # largest |alpha| or beta seen: the breakdown threshold is relative to it
        self.v0 = v0
        self.eps = torch.finfo(dtype).eps

    @property
    def m(self) -> int:
        return len(self.alpha)

    def residual_norm(self) -> float:
        return 0.0 if self.r is None else float(self.r.norm())

    def _orthogonalise(self, w: torch.Tensor, upto: int) -> tuple[torch.Tensor, torch.Tensor]:
        basis = self.Q[:upto]
        h = basis @ w
        w = w - basis.T @ h
        h2 = basis @ w
        return w - basis.T @ h2, h + h2

    def _fresh_vector(self) -> torch.Tensor | None:
        for _ in range(3):
            w = _gaussian(self.dim, self.generator, self.device, self.dtype)
            if self.m:
                w, _ = self._orthogonalise(w, self.m)
            n = float(w.norm())
            if n > 0 and math.isfinite(n):
                return w / n
        return None

    def broken(self) -> bool:
        if self.r is None:
            return False
        return self.residual_norm() <= 100 * self.eps * max(self.scale, torch.finfo(self.dtype).tiny)

    def step(self, restart: bool = False) -> bool:
        """Add one vector. Returns False (and adds nothing) on breakdown unless ``restart`` is set, in
        which case it continues from a fresh random vector orthogonal to the space (beta = 0)."""
        if self.m >= min(self.Q.shape[0], self.dim):
            return False
        if self.m == 0:
            if self.v0 is not None:
                q = self.v0.to(device=self.device, dtype=self.dtype).reshape(-1)
                n = float(q.norm())
                if not (n > 0 and math.isfinite(n)):
                    raise ProbeError("the Lanczos start vector must be finite and non-zero")
                q = q / n
            else:
                q = self._fresh_vector()
        elif self.broken():
            if not restart:
                return False
            q = self._fresh_vector()
            if q is None:
                return False
            self.beta.append(0.0)
        else:
            b = self.residual_norm()
            q = self.r / b
            self.beta.append(b)
            self.scale = max(self.scale, b)
        if q is None:
            raise ProbeError("could not draw a finite Lanczos start vector")
        j = self.m
        self.Q[j] = q
        w = _apply(self.hvp, q)
        self.n_hvp += 1
        if not bool(torch.isfinite(w).all()):
            raise ProbeError("the Hessian-vector product returned NaN or inf; the loss is not finite here (look "
                             "for huge or non-finite targets in the data, or predictions that overflow)")
        w, h = self._orthogonalise(w, j + 1)
        a = float(h[j])
        self.alpha.append(a)
        self.scale = max(self.scale, abs(a))
        self.r = w
        return True

    def tridiagonal(self) -> torch.Tensor:
        m = self.m
        t = torch.zeros(m, m, dtype=torch.float64)
        t[range(m), range(m)] = torch.tensor(self.alpha, dtype=torch.float64)
        if m > 1:
            off = torch.tensor(self.beta[: m - 1], dtype=torch.float64)
            t[range(m - 1), range(1, m)] = off
            t[range(1, m), range(m - 1)] = off
        return t


def lanczos(
    hvp: HVP,
    dim: int,
    num_steps: int,
    generator: torch.Generator,
    device: torch.device | str,
    dtype: torch.dtype,
    v0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``num_steps`` Lanczos steps (fewer on breakdown, at most ``dim``) from ``v0`` or a random unit
    vector. Returns the tridiagonal's diagonal ``alpha`` (m,), off-diagonal ``beta`` (m-1,) as CPU
    float64, and the orthonormal Lanczos vectors ``Q`` (m x dim) on ``device``."""
    _check_dim(dim)
    if num_steps < 1:
        raise ProbeError(f"num_steps must be >= 1, got {num_steps}")
    steps = min(num_steps, dim)
    lz = _Lanczos(hvp, dim, steps, generator, device, dtype, v0=v0)
    while lz.m < steps and lz.step():
        pass
    m = lz.m
    return (
        torch.tensor(lz.alpha, dtype=torch.float64),
        torch.tensor(lz.beta[: m - 1], dtype=torch.float64),
        lz.Q[:m].clone(),
    )


def _ritz(lz: _Lanczos) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ritz values (ascending), eigenvectors of T, and residual-norm estimates |beta_m s_mi|."""
    theta, s = torch.linalg.eigh(lz.tridiagonal())
    est = (lz.residual_norm() * s[-1, :]).abs()
    return theta, s, est


def _should_check(m: int) -> bool:
    return m <= 64 or m % 8 == 0


def _verified(hvp, lz: _Lanczos, theta, s, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Ritz vectors for columns ``idx`` of ``s`` and their true absolute residuals ||Hv - theta v||
    (one HVP each)."""
    coeffs = s[:, idx].T.to(device=lz.device, dtype=lz.dtype)
    vectors = coeffs @ lz.Q[: lz.m]
    vectors = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(torch.finfo(lz.dtype).tiny)
    residuals = []
    for row, i in zip(vectors, idx):
        hv = _apply(hvp, row)
        residuals.append(float((hv - float(theta[i]) * row).norm()))
    return vectors, torch.tensor(residuals, dtype=torch.float64), len(idx)


def _relative(abs_residuals: torch.Tensor, values: torch.Tensor, spectral: float, dtype) -> torch.Tensor:
    """||Hv - theta v|| / |theta| (the common definition), guarded against theta = 0."""
    floor = max(spectral * float(torch.finfo(dtype).eps), torch.finfo(torch.float64).tiny)
    return abs_residuals / values.abs().clamp_min(floor)


def _extreme_pairs(
    hvp: HVP,
    dim: int,
    k: int,
    steps: int,
    generator,
    device,
    dtype,
    accuracy: Callable[[torch.Tensor, list[int]], torch.Tensor],
    pick: Callable[[int], list[int]],
    min_steps: int = 1,
) -> EigenResult:
    """Grow one Krylov space of at most ``steps`` vectors (restarting from a fresh random vector on
    breakdown) and stop once the Ritz pairs of the columns ``pick(m)`` are certified, or the budget ends.

    ``accuracy(theta, idx)`` gives the absolute accuracy each picked Ritz value must reach. A pick is
    certified when, at a checked step m >= ``min_steps``: (1) the cheap residual estimates
    |beta_m s_mi| are within that accuracy, (2) each picked Ritz value moved by less than it since the
    previous check (it has settled), and (3) the true residuals ||Hv - theta v||, verified with one HVP
    per pair, are within it too. A failed verification does not stop the run. When the space becomes
    invariant (breakdown after at least k vectors, or m = dim) the Ritz pairs are exact."""
    lz = _Lanczos(hvp, dim, steps, generator, device, dtype)
    extra, prev = 0, None
    verified = None  # (m, vectors, abs residuals) of the last verification
    while lz.m < steps:
        if not lz.step(restart=True):
            break
        m = lz.m
        if m < max(k, min_steps) or not (_should_check(m) or m == steps):
            continue
        theta, s, est = _ritz(lz)
        idx = pick(m)
        acc = accuracy(theta, idx)
        values = theta[idx]
        settled = prev is not None and bool(((values - prev).abs() <= acc).all())
        prev = values.clone()
        exact = m == dim or (m >= k and lz.broken())
        if exact or (settled and bool((est[idx] <= acc).all())):
            vectors, abs_res, used = _verified(hvp, lz, theta, s, idx)
            extra += used
            verified = (m, vectors, abs_res)
            if exact or bool((abs_res <= acc).all()):
                break
    theta, s, _ = _ritz(lz)
    idx = pick(lz.m)
    acc = accuracy(theta, idx)
    if verified is None or verified[0] != lz.m:
        vectors, abs_res, used = _verified(hvp, lz, theta, s, idx)
        extra += used
    else:
        vectors, abs_res = verified[1], verified[2]
    exact = lz.m == dim or (lz.m >= k and lz.broken())
    each = [bool(exact or r <= a) for r, a in zip(abs_res.tolist(), acc.tolist())]
    spectral = float(theta.abs().max()) if theta.numel() else 0.0
    values = theta[idx].clone()
    return EigenResult(
        values=values,
        vectors=vectors,
        residuals=_relative(abs_res, values, spectral, dtype),
        n_hvp=lz.n_hvp + extra,
        converged=all(each),
        n_steps=lz.m,
        abs_residuals=abs_res,
        accuracy=acc.to(torch.float64),
        converged_each=each,
    )


def top_eigenvalues(
    hvp: HVP,
    dim: int,
    k: int = 5,
    max_steps: int = 100,
    tol: float = 1e-4,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> EigenResult:
    """The k algebraically largest eigenvalues (descending) with eigenvectors and verified residuals.

    A pair counts as converged when its true relative residual ||Hv - theta v|| / |theta| is at most
    ``tol`` (so |lambda - theta| <= tol |theta| for some eigenvalue lambda) and its Ritz value has settled
    between two checks. The top Ritz values of a Krylov space are lower bounds of the top eigenvalues
    (Cauchy interlacing), and the ends of the spectrum are the first to converge (Kaniel-Paige-Saad).
    ``generator``, ``device`` and ``dtype`` are required (they have defaults only so that they may follow
    ``tol`` positionally); nothing is guessed."""
    _check_dim(dim)
    _require(generator, device, dtype)
    if k < 1:
        raise ProbeError(f"k must be >= 1, got {k}")
    k = min(k, dim)
    steps = min(max(max_steps, k), dim)

    def accuracy(theta: torch.Tensor, idx: list[int]) -> torch.Tensor:
        spectral = float(theta.abs().max())
        floor = max(spectral * float(torch.finfo(dtype).eps), torch.finfo(torch.float64).tiny)
        return tol * theta[idx].abs().clamp_min(floor / tol)

    def pick(m: int) -> list[int]:  # the top min(k, m) Ritz values, largest first
        return list(range(m - 1, m - 1 - min(k, m), -1))

    return _extreme_pairs(hvp, dim, k, steps, generator, device, dtype, accuracy, pick)


#: lambda_min is certified to ``tol * max(|lambda_min|, MIN_FLOOR * max|theta|)``: an eigenvalue smaller
#: in magnitude than 1% of the spectral radius only needs to be located to that absolute accuracy.
MIN_FLOOR = 1e-2


def smallest_eigenvalue(
    hvp: HVP,
    dim: int,
    max_steps: int = 100,
    tol: float = 1e-4,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> EigenResult:
    """lambda_min (the most negative eigenvalue, or the smallest), certified or marked unconverged.

    Why the flag is earned: the smallest Ritz value theta_1 of any Krylov space is an *upper* bound of
    lambda_min (Courant-Fischer), so the error is one-sided; a true residual ||Hv - theta_1 v|| <= a
    proves an eigenvalue in [theta_1 - a, theta_1 + a]. A residual alone does not prove that this is the
    *smallest* eigenvalue: a Ritz value in a dense near-zero bulk has a residual that is small next to
    lambda_max after two or three steps, which a rule relative to max |theta| accepted. Here the accuracy
    ``a`` is relative to theta_1 itself, ``a = tol * max(|theta_1|, MIN_FLOOR * max|theta|)`` (the floor,
    1% of the spectral radius, keeps a lambda_min that is truly ~0 from running forever), and theta_1
    must also have settled: moved by less than ``a`` since the previous check. A bulk Ritz value cannot
    meet that before the space has resolved the bulk, and Lanczos resolves the ends of the spectrum
    first (Kaniel-Paige-Saad), so the value that meets it is the bottom one unless the random start
    vector is almost orthogonal to its eigenvector. Lanczos is shift-invariant (the Krylov space of
    sigma I - H is that of H), so no shifted operator is needed, unlike power iteration. When the budget
    ends first the result is ``converged=False`` and must not be used as a number.
    ``generator``, ``device`` and ``dtype`` are required, as for :func:`top_eigenvalues`."""
    _check_dim(dim)
    _require(generator, device, dtype)
    steps = min(max(max_steps, 1), dim)

    def accuracy(theta: torch.Tensor, idx: list[int]) -> torch.Tensor:
        spectral = float(theta.abs().max())
        floor = max(MIN_FLOOR * spectral, torch.finfo(torch.float64).tiny)
        return tol * theta[idx].abs().clamp_min(floor)

    return _extreme_pairs(hvp, dim, 1, steps, generator, device, dtype, accuracy, lambda m: [0],
                          min_steps=min(3, dim))


# ---------------------------------------------------------------------------------------- traces
def _mean_stderr(samples: Sequence[float]) -> tuple[float, float]:
    t = torch.tensor(list(samples), dtype=torch.float64)
    mean = float(t.mean())
    stderr = float(t.std(correction=1) / math.sqrt(t.numel())) if t.numel() > 1 else float("nan")
    return mean, stderr


def hutchinson_trace(
    hvp: HVP,
    dim: int,
    n_samples: int,
    generator: torch.Generator,
    device: torch.device | str,
    dtype: torch.dtype,
    hvp_many=None,
) -> TraceResult:
    """tr(H) ~ mean of z^T H z over Rademacher z; stderr = sample std / sqrt(n) (NaN for n = 1).

    ``hvp_many`` (optional: a (k, dim) stack -> the k products, e.g. ``SplitObjective.hvp_many``) applies the
    probes together; the probes and the estimate are the same either way."""
    _check_dim(dim)
    if n_samples < 1:
        raise ProbeError(f"n_samples must be >= 1, got {n_samples}")
    probes = torch.stack([_rademacher((dim,), generator, device, dtype) for _ in range(n_samples)])
    products = _apply_many(hvp, hvp_many, probes)
    samples = [float(z @ hz) for z, hz in zip(probes, products)]
    mean, stderr = _mean_stderr(samples)
    return TraceResult(estimate=mean, stderr=stderr, n_hvp=n_samples, method="hutchinson")


def hutchpp_trace(
    hvp: HVP,
    dim: int,
    n_hvp: int,
    generator: torch.Generator,
    device: torch.device | str,
    dtype: torch.dtype,
    hvp_many=None,
) -> TraceResult:
    """Hutch++ with a budget of ``n_hvp`` products (``hvp_many``: as in :func:`hutchinson_trace`): a sketch H S
    of k = n_hvp // 3 Rademacher columns, Q = qr(H S), the exact tr(Q^T H Q) (k products), and Hutchinson on
    (I - QQ^T) H (I - QQ^T) with the remaining n_hvp - 2k probes. ``stderr`` is that Hutchinson part's standard
    error (the projected part is exact given Q). If k >= dim the sketch spans the space and the trace is exact
    (stderr 0)."""
    _check_dim(dim)
    if n_hvp < 3:
        raise ProbeError(f"Hutch++ needs a budget of at least 3 Hessian-vector products, got {n_hvp}")
    k = min(n_hvp // 3, dim)
    sketch = _rademacher((k, dim), generator, device, dtype)
    hs = _apply_many(hvp, hvp_many, sketch).T  # dim x k
    q, _ = torch.linalg.qr(hs, mode="reduced")
    hq = _apply_many(hvp, hvp_many, q.T.contiguous())
    exact = sum(float(q[:, i] @ hq[i]) for i in range(k))
    used = 2 * k
    if k >= dim:
        return TraceResult(estimate=exact, stderr=0.0, n_hvp=used, method="hutch++")
    rest = n_hvp - 2 * k
    if rest:
        g = torch.stack([_rademacher((dim,), generator, device, dtype) for _ in range(rest)])
        p = g - (g @ q) @ q.T
        samples = [float(pi @ hpi) for pi, hpi in zip(p, _apply_many(hvp, hvp_many, p))]
    else:
        samples = []
    used += len(samples)
    mean, stderr = _mean_stderr(samples)
    return TraceResult(estimate=exact + mean, stderr=stderr, n_hvp=used, method="hutch++")


# ---------------------------------------------------------------------------------------- density
def slq_density(
    hvp: HVP,
    dim: int,
    n_runs: int,
    n_steps: int,
    generator: torch.Generator,
    device: torch.device | str,
    dtype: torch.dtype,
    grid_size: int = 1000,
    sigma: float | None = None,
) -> DensityResult:
    """Stochastic Lanczos quadrature. Each run starts Lanczos from a normalised Rademacher vector v; the
    Ritz values are quadrature nodes and the squared first components of T's eigenvectors the weights,
    so sum_j w_j f(lambda_j) ~ v^T f(H) v ~ tr f(H) / dim. The density on ``grid`` is the run average of
    sum_j w_j N(x; lambda_j, sigma^2); it integrates to about 1. ``sigma`` defaults to 1% of the node
    span (or of max(|node|, 1) for a single point); the grid covers the nodes plus 5 sigma each side."""
    _check_dim(dim)
    if n_runs < 1 or n_steps < 1 or grid_size < 2:
        raise ProbeError("slq_density needs n_runs >= 1, n_steps >= 1 and grid_size >= 2")
    node_runs, weight_runs = [], []
    used = 0
    for _ in range(n_runs):
        v0 = _rademacher((dim,), generator, device, dtype) / math.sqrt(dim)
        alpha, beta, _ = lanczos(hvp, dim, n_steps, generator, device, dtype, v0=v0)
        used += alpha.numel()
        t = torch.diag(alpha)
        if beta.numel():
            t = t + torch.diag(beta, 1) + torch.diag(beta, -1)
        theta, s = torch.linalg.eigh(t)
        node_runs.append(theta)
        weight_runs.append(s[0, :] ** 2)
    m = max(n.numel() for n in node_runs)
    nodes = torch.zeros(n_runs, m, dtype=torch.float64)
    weights = torch.zeros(n_runs, m, dtype=torch.float64)
    for r, (nd, wt) in enumerate(zip(node_runs, weight_runs)):
        nodes[r, : nd.numel()] = nd
        nodes[r, nd.numel() :] = nd[0]  # padding: a real node with zero weight
        weights[r, : wt.numel()] = wt
    lo, hi = float(nodes.min()), float(nodes.max())
    if sigma is None:
        width = hi - lo
        sigma = 0.01 * (width if width > 0 else max(abs(hi), 1.0))
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ProbeError(f"sigma must be a positive finite number, got {sigma}")
    grid = torch.linspace(lo - 5 * sigma, hi + 5 * sigma, grid_size, dtype=torch.float64)
    density = torch.zeros(grid_size, dtype=torch.float64)
    norm = 1.0 / (sigma * math.sqrt(2 * math.pi))
    for r in range(n_runs):
        z = (grid[:, None] - nodes[r][None, :]) / sigma
        density += (torch.exp(-0.5 * z * z) * norm) @ weights[r]
    density /= n_runs
    return DensityResult(nodes=nodes, weights=weights, grid=grid, density=density, sigma=float(sigma), n_hvp=used)


def density_moments(result: DensityResult, orders: Sequence[int]) -> list[float]:
    """sum_j w_j lambda_j^p averaged over runs, for each p in ``orders``: estimates of tr(H^p) / dim."""
    out = []
    for p in orders:
        if p < 0:
            raise ProbeError(f"moment orders must be >= 0, got {p}")
        per_run = (result.weights * result.nodes.pow(p)).sum(dim=1)
        out.append(float(per_run.mean()))
    return out
