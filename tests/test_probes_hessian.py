"""Hessian probes against exact references: an analytic quadratic with a chosen spectrum, and a tiny MLP
whose dense Hessian comes from torch.autograd.functional.hessian of a hand-written forward (the MLP and its
hand-written loss live in ``tiny_models``).

Statistical checks use fixed seeds (so they are deterministic) and tolerances derived from the known
variance of Rademacher quadratic forms: Var(z^T A z) = 2 (||A||_F^2 - sum_i A_ii^2).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny_models import DT, gen, make_data, make_mlp, reference_loss

from traits.errors import ProbeError
from traits.probes.hessian import (
    density_moments,
    hutchinson_trace,
    hutchpp_trace,
    lanczos,
    slq_density,
    smallest_eigenvalue,
    top_eigenvalues,
)
from traits.probes.objective import SplitObjective

CPU = torch.device("cpu")


def rademacher_var(a: torch.Tensor) -> float:
    """Variance of z^T A z for Rademacher z (A symmetric)."""
    return float(2 * ((a**2).sum() - (torch.diagonal(a) ** 2).sum()))


# ------------------------------------------------------------------------------- analytic quadratic
DIM = 60
SPECTRUM = torch.cat(
    [
        torch.tensor([12.0, 9.0, 7.5, 6.0, 5.0], dtype=DT),
        torch.linspace(-0.4, 2.0, DIM - 6, dtype=DT),
        torch.tensor([-3.0], dtype=DT),
    ]
)


@pytest.fixture(scope="module")
def quadratic():
    """L(theta) = 1/2 theta^T A theta with A = U diag(SPECTRUM) U^T: the Hessian is A."""
    q, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=gen(0), dtype=DT))
    a = q @ torch.diag(SPECTRUM) @ q.T
    a = (a + a.T) / 2
    return a


def test_lanczos_produces_an_orthonormal_basis_and_the_projected_tridiagonal(quadratic):
    a = quadratic
    alpha, beta, q = lanczos(lambda v: a @ v, DIM, 20, gen(1), CPU, DT)
    assert alpha.shape == (20,) and beta.shape == (19,) and q.shape == (20, DIM)
    torch.testing.assert_close(q @ q.T, torch.eye(20, dtype=DT), atol=1e-12, rtol=0)
    t = torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)
    torch.testing.assert_close(q @ a @ q.T, t, atol=1e-10, rtol=0)


def test_lanczos_keeps_orthogonality_on_a_wide_spectrum():
    # eigenvalues over 12 decades: plain Lanczos (or one Gram-Schmidt pass) loses orthogonality here
    n = 200
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen(30), dtype=DT))
    a = q @ torch.diag(torch.logspace(-6, 6, n, dtype=DT)) @ q.T
    a = (a + a.T) / 2
    alpha, _, basis = lanczos(lambda v: a @ v, n, 120, gen(31), CPU, DT)
    assert alpha.numel() == 120
    assert float((basis @ basis.T - torch.eye(120, dtype=DT)).abs().max()) < 1e-12


def test_lanczos_stops_on_breakdown():
    # three distinct eigenvalues: the Krylov space is invariant after three steps
    a = torch.diag(torch.tensor([1.0] * 10 + [2.0] * 10 + [5.0] * 10, dtype=DT))
    alpha, beta, q = lanczos(lambda v: a @ v, 30, 25, gen(2), CPU, DT)
    assert alpha.numel() == 3
    t = torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)
    torch.testing.assert_close(torch.linalg.eigvalsh(t), torch.tensor([1.0, 2.0, 5.0], dtype=DT))


def test_top_eigenvalues_of_the_quadratic(quadratic):
    a = quadratic
    res = top_eigenvalues(lambda v: a @ v, DIM, k=5, max_steps=DIM, tol=1e-8, generator=gen(3), device=CPU, dtype=DT)
    torch.testing.assert_close(res.values, SPECTRUM[:5], rtol=1e-6, atol=0)
    assert res.converged and res.values.shape == (5,) and res.vectors.shape == (5, DIM)
    assert bool((res.residuals < 1e-6).all())
    for lam, v in zip(res.values, res.vectors):  # independent check of the returned pairs
        assert float((a @ v - lam * v).norm()) < 1e-6 * abs(float(lam))
    assert res.n_hvp == res.n_steps + 5
    json.dumps(res.to_dict())
    assert "vectors" not in res.to_dict() and len(res.to_dict(include_vectors=True)["vectors"]) == 5


def test_top_eigenvalues_restart_finds_repeated_eigenvalues():
    a = 2.0 * torch.eye(12, dtype=DT)  # every start vector is an eigenvector: breakdown after 1 step
    res = top_eigenvalues(lambda v: a @ v, 12, k=3, generator=gen(4), device=CPU, dtype=DT)
    torch.testing.assert_close(res.values, torch.full((3,), 2.0, dtype=DT))
    torch.testing.assert_close(res.vectors @ res.vectors.T, torch.eye(3, dtype=DT), atol=1e-12, rtol=0)


def test_smallest_eigenvalue_of_the_quadratic(quadratic):
    a = quadratic
    res = smallest_eigenvalue(lambda v: a @ v, DIM, max_steps=DIM, tol=1e-10, generator=gen(5), device=CPU, dtype=DT)
    assert abs(float(res.values[0]) + 3.0) < 1e-8
    v = res.vectors[0]
    assert float((a @ v + 3.0 * v).norm()) < 1e-6
    assert res.converged


def test_hutchinson_on_the_quadratic(quadratic):
    a = quadratic
    n = 400
    res = hutchinson_trace(lambda v: a @ v, DIM, n, gen(6), CPU, DT)
    exact = float(SPECTRUM.sum())
    assert res.n_hvp == n
    assert abs(res.estimate - exact) <= 3 * res.stderr
    # the reported standard error agrees with the theoretical one
    theory = math.sqrt(rademacher_var(a) / n)
    assert 0.8 * theory < res.stderr < 1.2 * theory


def test_hutchpp_on_the_quadratic(quadratic):
    a = quadratic
    exact = float(SPECTRUM.sum())
    small = hutchpp_trace(lambda v: a @ v, DIM, 45, gen(7), CPU, DT)
    assert small.n_hvp == 45 and small.stderr > 0
    assert abs(small.estimate - exact) <= 3 * small.stderr
    # a sketch as wide as the space makes the estimate exact
    full = hutchpp_trace(lambda v: a @ v, DIM, 3 * DIM, gen(8), CPU, DT)
    assert abs(full.estimate - exact) < 1e-9 and full.stderr == 0.0
    with pytest.raises(ProbeError):
        hutchpp_trace(lambda v: a @ v, DIM, 2, gen(8), CPU, DT)


def check_slq_moments(res, h: torch.Tensor, n_runs: int) -> None:
    dim = h.shape[0]
    m0, m1, m2 = density_moments(res, [0, 1, 2])
    assert abs(m0 - 1.0) < 1e-10  # quadrature weights sum to one in every run
    for p, est in ((1, m1), (2, m2)):
        hp = torch.linalg.matrix_power(h, p)
        exact = float(torch.trace(hp)) / dim
        # the per-run estimate is v^T H^p v with v = z / sqrt(dim): variance Var(z^T H^p z) / dim^2
        stderr = math.sqrt(rademacher_var(hp) / dim**2 / n_runs)
        assert abs(est - exact) <= 4 * stderr, (p, est, exact, stderr)


def test_slq_density_of_the_quadratic(quadratic):
    a = quadratic
    n_runs = 30
    res = slq_density(lambda v: a @ v, DIM, n_runs, 25, gen(9), CPU, DT, grid_size=2000)
    assert res.nodes.shape == (n_runs, 25) and res.weights.shape == (n_runs, 25)
    check_slq_moments(res, a, n_runs)
    # extreme Ritz values of 25 steps already sit on the extreme eigenvalues
    assert abs(float(res.nodes.max()) - 12.0) < 1e-6 and abs(float(res.nodes.min()) + 3.0) < 1e-6
    area = float(torch.trapezoid(res.density, res.grid))
    assert abs(area - 1.0) < 1e-3
    # density mass near each end: eigenvalue -3 carries 1/60 of the spectrum
    low = res.grid < -2.0
    assert abs(float(torch.trapezoid(res.density[low], res.grid[low])) - 1 / DIM) < 0.02
    json.dumps(res.to_dict())


def test_same_seed_same_numbers(quadratic):
    a = quadratic
    r1 = top_eigenvalues(lambda v: a @ v, DIM, k=2, max_steps=10, generator=gen(11), device=CPU, dtype=DT)
    r2 = top_eigenvalues(lambda v: a @ v, DIM, k=2, max_steps=10, generator=gen(11), device=CPU, dtype=DT)
    assert torch.equal(r1.values, r2.values) and torch.equal(r1.vectors, r2.vectors)
    t1 = hutchinson_trace(lambda v: a @ v, DIM, 5, gen(12), CPU, DT)
    t2 = hutchinson_trace(lambda v: a @ v, DIM, 5, gen(12), CPU, DT)
    assert t1 == t2


# ------------------------------------------------------------------------------- tiny MLP
@pytest.fixture(scope="module", params=[False, True], ids=["plain", "batchnorm"])
def mlp(request):
    model = make_mlp(request.param, bn_bias=False)
    x, y, batches = make_data((15, 25))
    obj = SplitObjective(model, batches)
    theta, loss = reference_loss(model, x, y)
    h = torch.autograd.functional.hessian(loss, theta)
    return obj, (h + h.T) / 2


def test_mlp_top_eigenvalues(mlp):
    obj, h = mlp
    exact = torch.linalg.eigvalsh(h).flip(0)[:5]
    res = top_eigenvalues(
        obj.hvp, obj.dim, k=5, max_steps=obj.dim, tol=1e-6, generator=gen(20), device=obj.device, dtype=obj.dtype
    )
    assert bool(((res.values - exact).abs() <= 1e-3 * exact.abs()).all()), (res.values, exact)
    assert res.converged and bool((res.residuals < 1e-4).all())


def test_mlp_smallest_eigenvalue(mlp):
    obj, h = mlp
    ev = torch.linalg.eigvalsh(h)
    assert float(ev[0]) < 0  # the fixture is not at a minimum: a genuinely negative direction
    res = smallest_eigenvalue(
        obj.hvp, obj.dim, max_steps=obj.dim, tol=1e-9, generator=gen(21), device=obj.device, dtype=obj.dtype
    )
    assert abs(float(res.values[0]) - float(ev[0])) <= 1e-6 * float(ev.abs().max())


def test_mlp_traces(mlp):
    obj, h = mlp
    exact = float(torch.trace(h))
    hutch = hutchinson_trace(obj.hvp, obj.dim, 300, gen(22), obj.device, obj.dtype)
    assert abs(hutch.estimate - exact) <= 3 * hutch.stderr
    theory = math.sqrt(rademacher_var(h) / 300)
    assert 0.7 * theory < hutch.stderr < 1.3 * theory
    pp = hutchpp_trace(obj.hvp, obj.dim, 90, gen(23), obj.device, obj.dtype)
    assert pp.stderr > 0 and abs(pp.estimate - exact) <= 3 * pp.stderr
    # the low-rank-ish Hessian of a network is where Hutch++ pays off
    assert pp.stderr < hutch.stderr * math.sqrt(300 / 90)


def test_mlp_slq_moments(mlp):
    obj, h = mlp
    n_runs = 30
    res = slq_density(obj.hvp, obj.dim, n_runs, 20, gen(24), obj.device, obj.dtype)
    check_slq_moments(res, h, n_runs)


def test_generator_device_and_dtype_are_never_guessed(quadratic):
    a = quadratic
    with pytest.raises(ProbeError, match="generator"):
        top_eigenvalues(lambda v: a @ v, DIM, k=2, device=CPU, dtype=DT)
    with pytest.raises(ProbeError, match="dtype"):
        smallest_eigenvalue(lambda v: a @ v, DIM, generator=gen(1), device=CPU)
    # positional use works too
    res = top_eigenvalues(lambda v: a @ v, DIM, 1, DIM, 1e-8, gen(1), CPU, DT)
    assert abs(float(res.values[0]) - 12.0) < 1e-6
