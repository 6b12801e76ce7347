"""Hessian-eigenvector planes against exact references.

* A tiny tanh MLP whose dense Hessian comes from ``torch.autograd.functional.hessian`` of a hand-written
  loss: lambda_max, lambda_min, the eigenvectors (up to sign) and the non-convexity ratio are compared
  with ``torch.linalg.eigh``; the plane computed on one split is evaluated on another and checked point by
  point against the hand-written loss of that split.
* A model whose loss is exactly a quadratic form with one negative eigenvalue (an MAE objective whose
  residual stays positive): theta is a saddle, the Hessian plane shows it in closed form, and a random
  filter-normalised plane through the same point looks like a bowl.
"""

from __future__ import annotations

import json
import math
import types

import pytest
import torch
from tiny_models import gen
from torch import nn

from traits.errors import ProbeError
from traits.probes.directions import random_direction
from traits.probes.objective import SplitObjective
from traits.probes.planes import hessian_plane, nonconvexity, reference_norm
from traits.probes.surface import surface_1d, surface_2d

DT = torch.float64
CPU = torch.device("cpu")


def flat(obj: SplitObjective, d: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([d[n].reshape(-1) for n in obj.names])


# ------------------------------------------------------------------------------- tiny MLP
class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(3, 6)
        self.l2 = nn.Linear(6, 1)

    def forward(self, batch):
        return self.l2(torch.tanh(self.l1(batch.x))).squeeze(-1)


def manual_loss(model: MLP, x: torch.Tensor, y: torch.Tensor):
    """The MSE of ``model`` on (x, y) as a function of one flat weight vector, written by hand."""
    shapes = [(n, p.shape) for n, p in model.named_parameters()]

    def f(w: torch.Tensor) -> torch.Tensor:
        p, i = {}, 0
        for name, shape in shapes:
            k = int(torch.Size(shape).numel())
            p[name] = w[i : i + k].reshape(shape)
            i += k
        h = torch.tanh(x @ p["l1.weight"].T + p["l1.bias"])
        pred = (h @ p["l2.weight"].T + p["l2.bias"]).squeeze(-1)
        return ((pred - y) ** 2).mean()

    return f


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(3)
    model = MLP().to(DT)
    g = gen(1)
    x, y = torch.randn(30, 3, generator=g, dtype=DT), torch.randn(30, generator=g, dtype=DT)
    xt, yt = torch.randn(20, 3, generator=g, dtype=DT) * 1.5, torch.randn(20, generator=g, dtype=DT) + 0.5
    train = SplitObjective(
        model, [types.SimpleNamespace(x=x[:12], y=y[:12]), types.SimpleNamespace(x=x[12:], y=y[12:])]
    )
    test = SplitObjective(model, [types.SimpleNamespace(x=xt, y=yt)])
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    h = torch.autograd.functional.hessian(manual_loss(model, x, y), theta)
    return model, train, test, theta, (h + h.T) / 2, manual_loss(model, xt, yt)


def test_mlp_plane_matches_the_dense_hessian(mlp):
    model, train, _, theta, h, _ = mlp
    evals, evecs = torch.linalg.eigh(h)
    assert float(evals[0]) < 0  # a random network is not at a minimum: a genuine negative direction
    gaps = torch.diff(evals)
    assert float(gaps[0]) > 1e-3 and float(gaps[-1]) > 1e-3  # both ends are simple eigenvalues

    plane = hessian_plane(train, k_top=3, max_steps=train.dim, tol=1e-10, generator=gen(5), device=CPU, dtype=DT)
    scale = float(evals.abs().max())
    assert abs(plane.lambda_max - float(evals[-1])) <= 1e-8 * scale
    assert abs(plane.lambda_min - float(evals[0])) <= 1e-8 * scale
    torch.testing.assert_close(torch.tensor(plane.curvature.top_values, dtype=DT), evals.flip(0)[:3], rtol=1e-8, atol=0)
    assert plane.nonconvexity == pytest.approx(-float(evals[0]) / float(evals[-1]), rel=1e-7)

    d_max, d_min = flat(train, plane.d_max), flat(train, plane.d_min)
    # eigenvectors up to sign
    assert abs(float(d_max @ evecs[:, -1])) / float(d_max.norm()) > 0.999
    assert abs(float(d_min @ evecs[:, 0])) / float(d_min.norm()) > 0.999
    assert abs(float(d_max @ d_min)) < 1e-10 * float(d_max.norm() * d_min.norm())
    # canonical sign: the largest-magnitude component is positive
    assert float(d_max[d_max.abs().argmax()]) > 0 and float(d_min[d_min.abs().argmax()]) > 0

    # norm convention: the global norm of a filter-normalised random direction (biases zeroed)
    rand = flat(train, random_direction(train.params, gen(9)))
    norm = math.sqrt(float(model.l1.weight.detach().pow(2).sum() + model.l2.weight.detach().pow(2).sum()))
    assert float(rand.norm()) == pytest.approx(norm, rel=1e-12)
    assert float(d_max.norm()) == pytest.approx(norm, rel=1e-12) == float(d_min.norm())
    assert plane.direction_norm == pytest.approx(reference_norm(train), rel=1e-15)
    # the surface's curvature at theta along each axis is lambda * ||d||^2 (central second difference)
    eps = 1e-3
    for d, expected in ((plane.d_max, plane.curvature_along_max), (plane.d_min, plane.curvature_along_min)):
        c = surface_1d(train, d, torch.tensor([-eps, 0.0, eps], dtype=DT))
        fd = float(c[0] - 2 * c[1] + c[2]) / eps**2
        assert fd == pytest.approx(expected, rel=1e-4)
        assert expected == pytest.approx(float(flat(train, d) @ h @ flat(train, d)), rel=1e-8)

    out = plane.to_dict()
    json.dumps(out, allow_nan=False)
    assert out["directions"] == "hessian" and out["n_hvp"] == plane.curvature.n_hvp > 0
    assert out["lambda_min"] < 0 < out["nonconvexity"]


def test_plane_from_the_training_split_is_evaluated_on_another_split(mlp):
    _, train, test, theta, _, test_loss = mlp
    plane = hessian_plane(train, max_steps=train.dim, tol=1e-8, generator=gen(6), device=CPU, dtype=DT)
    alphas = torch.linspace(-0.5, 0.5, 5, dtype=DT)
    betas = torch.linspace(-0.4, 0.4, 3, dtype=DT)
    grid = surface_2d(test, plane.d_max, plane.d_min, alphas, betas)
    d1, d2 = flat(test, plane.d_max), flat(test, plane.d_min)
    expected = torch.tensor(
        [[float(test_loss(theta + float(a) * d1 + float(b) * d2)) for b in betas] for a in alphas], dtype=DT
    )
    torch.testing.assert_close(grid, expected, rtol=1e-12, atol=1e-12)
    # the same plane on the training split is a different surface through a different L(theta)
    assert float((surface_2d(train, plane.d_max, plane.d_min, alphas, betas) - grid).abs().max()) > 1e-3


def test_same_seed_same_plane(mlp):
    _, train, *_ = mlp
    p1 = hessian_plane(train, max_steps=10, tol=1e-3, generator=gen(7), device=CPU, dtype=DT)
    p2 = hessian_plane(train, max_steps=10, tol=1e-3, generator=gen(7), device=CPU, dtype=DT)
    assert all(torch.equal(p1.d_max[n], p2.d_max[n]) and torch.equal(p1.d_min[n], p2.d_min[n]) for n in train.names)
    assert p1.to_dict() == p2.to_dict()


# ------------------------------------------------------------------------------- exact saddle
SPECTRUM = torch.tensor([8.0, 6.0, 5.0, 4.0, 3.0, 2.5, 2.0, 1.5, 1.0, 0.8, 0.5, -1.5], dtype=DT)
OFFSET = 100.0  # MAE target -OFFSET: the residual q(w) + OFFSET stays positive, so L = q(w) + OFFSET exactly


class QuadraticForm(nn.Module):
    """Predicts q(w) = 1/2 (w - w0)^T A (w - w0) for every sample; with MAE against -OFFSET the loss is
    exactly q(w) + OFFSET: a quadratic with Hessian A and a critical point at w0."""

    def __init__(self, a: torch.Tensor, w0: torch.Tensor) -> None:
        super().__init__()
        self.W = nn.Parameter(w0.clone().reshape(3, 4))
        self.register_buffer("A", a)
        self.register_buffer("w0", w0.clone())

    def forward(self, batch):
        r = self.W.reshape(-1) - self.w0
        return (0.5 * r @ self.A @ r) * torch.ones_like(batch.y)


@pytest.fixture(scope="module")
def saddle():
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=gen(10), dtype=DT))
    a = q @ torch.diag(SPECTRUM) @ q.T
    a = (a + a.T) / 2
    w0 = torch.randn(12, generator=gen(11), dtype=DT)
    model = QuadraticForm(a, w0).to(DT)
    obj = SplitObjective(model, [types.SimpleNamespace(y=torch.full((4,), -OFFSET, dtype=DT))], loss="mae")
    return obj, a, w0


def test_the_hessian_plane_shows_the_saddle_in_closed_form(saddle):
    obj, a, w0 = saddle
    plane = hessian_plane(obj, max_steps=12, tol=1e-12, generator=gen(12), device=CPU, dtype=DT)
    assert plane.lambda_max == pytest.approx(8.0, abs=1e-9) and plane.lambda_min == pytest.approx(-1.5, abs=1e-9)
    assert plane.nonconvexity == pytest.approx(1.5 / 8.0, rel=1e-9)
    s = plane.direction_norm
    assert s == pytest.approx(float(w0.norm()), rel=1e-12)  # the only weight tensor is W = w0

    alphas = torch.linspace(-1.0, 1.0, 9, dtype=DT)
    betas = torch.linspace(-1.0, 1.0, 9, dtype=DT)
    grid = surface_2d(obj, plane.d_max, plane.d_min, alphas, betas)
    closed = OFFSET + 0.5 * s**2 * (8.0 * alphas[:, None] ** 2 - 1.5 * betas[None, :] ** 2)
    torch.testing.assert_close(grid, closed, rtol=1e-12, atol=1e-9)
    # independent of the eigen-decomposition: the quadratic form itself at each grid point
    d1, d2 = flat(obj, plane.d_max), flat(obj, plane.d_min)
    direct = torch.tensor(
        [[OFFSET + 0.5 * float((a_ * d1 + b_ * d2) @ a @ (a_ * d1 + b_ * d2)) for b_ in betas] for a_ in alphas],
        dtype=DT,
    )
    torch.testing.assert_close(grid, direct, rtol=1e-12, atol=1e-9)

    centre = 4
    along_min, along_max = grid[centre, :], grid[:, centre]
    assert bool((along_min[centre + 1 :] < along_min[centre]).all()) and bool(
        (along_min[:centre] < along_min[centre]).all()
    )
    assert bool((along_max[centre + 1 :] > along_max[centre]).all()) and bool(
        (along_max[:centre] > along_max[centre]).all()
    )
    assert bool((torch.diff(along_min[centre:]) < 0).all())  # keeps falling outward along d_min
    lowest = divmod(int(grid.argmin()), grid.shape[1])
    assert lowest != (centre, centre) and lowest[0] == centre  # the lowest point lies on the d_min axis


def test_a_random_plane_hides_the_saddle(saddle):
    obj, a, _ = saddle
    d1 = random_direction(obj.params, gen(20))
    d2 = random_direction(obj.params, gen(21))
    u, v = flat(obj, d1), flat(obj, d2)
    projected = torch.stack([torch.stack([u @ a @ u, u @ a @ v]), torch.stack([v @ a @ u, v @ a @ v])])
    assert float(torch.linalg.eigvalsh(projected).min()) > 0  # the random plane only sees positive curvature
    alphas = torch.linspace(-1.0, 1.0, 9, dtype=DT)
    grid = surface_2d(obj, d1, d2, alphas, alphas)
    assert divmod(int(grid.argmin()), grid.shape[1]) == (4, 4)  # looks like a minimum at theta
    plane = hessian_plane(obj, max_steps=12, tol=1e-12, generator=gen(12), device=CPU, dtype=DT)
    assert float(surface_2d(obj, plane.d_max, plane.d_min, alphas, alphas).min()) < float(grid[4, 4])


def test_unit_scale_and_errors(saddle):
    obj, _, _ = saddle
    plane = hessian_plane(obj, max_steps=12, tol=1e-10, generator=gen(13), device=CPU, dtype=DT, scale="unit")
    assert float(flat(obj, plane.d_max).norm()) == pytest.approx(1.0) == float(flat(obj, plane.d_min).norm())
    assert plane.curvature_along_max == pytest.approx(8.0, abs=1e-8)
    with pytest.raises(ProbeError, match="scale"):
        hessian_plane(obj, max_steps=12, generator=gen(13), device=CPU, dtype=DT, scale="filter")
    with pytest.raises(ProbeError, match="generator"):
        hessian_plane(obj, max_steps=12, device=CPU, dtype=DT)


class BiasOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.tensor([0.3, -0.2], dtype=DT))

    def forward(self, batch):
        return (self.b[0] * batch.x + self.b[1] * batch.x**2) ** 2


def test_theta_scale_needs_weights_it_can_normalise_to():
    obj = SplitObjective(
        BiasOnly(), [types.SimpleNamespace(x=torch.linspace(-1, 1, 7, dtype=DT), y=torch.zeros(7, dtype=DT))]
    )
    with pytest.raises(ProbeError, match="zero norm"):
        hessian_plane(obj, max_steps=2, generator=gen(1), device=CPU, dtype=DT)
    plane = hessian_plane(obj, max_steps=2, generator=gen(1), device=CPU, dtype=DT, include_skipped=True)
    assert plane.direction_norm == pytest.approx(math.hypot(0.3, 0.2))


def test_nonconvexity_ratio():
    assert nonconvexity(-1.0, 4.0) == 0.25
    assert nonconvexity(0.5, 4.0) == 0.0  # no negative curvature: locally convex
    assert nonconvexity(0.0, 4.0) == 0.0
    assert nonconvexity(-1.0, 0.0) is None and nonconvexity(-1.0, -2.0) is None  # no positive curvature
    assert nonconvexity(float("nan"), 1.0) is None and nonconvexity(-1.0, float("inf")) is None
    assert nonconvexity(None, 1.0) is None
