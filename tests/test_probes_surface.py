"""Directions and loss surfaces.

Surfaces are checked on a linear model, whose MSE is an exact quadratic in the weights: with residual
r(w) = X w - y, L(theta + a d1 + b d2) = |r0 + a X d1 + b X d2|^2 / N, expanded into its six
coefficients by hand. Resume is checked by interrupting a run from its progress callback.
"""

from __future__ import annotations

import types

import pytest
import torch
from tiny_models import DT, gen, make_data
from torch import nn

from traits.errors import ProbeError
from traits.probes.directions import hessian_direction, random_direction
from traits.probes.objective import SplitObjective
from traits.probes.surface import surface_1d, surface_2d

D = 5


class Linear(nn.Module):
    def __init__(self, log: bool = False) -> None:
        super().__init__()
        self.lin = nn.Linear(D, 1, bias=False)
        self.log = log

    def forward(self, batch):
        out = self.lin(batch.x).squeeze(-1)
        return torch.log(out) if self.log else out


@pytest.fixture()
def problem():
    torch.manual_seed(0)
    model = Linear().to(DT)
    x, y, batches = make_data((11, 19), features=D)
    return model, x, y, SplitObjective(model, batches)


def closed_form(model, x, y, d1, d2, alphas, betas):
    w = model.lin.weight.detach().reshape(-1)
    r0, u, v = x @ w - y, x @ d1.reshape(-1), x @ d2.reshape(-1)
    n = x.shape[0]
    c0, ca, cb = r0 @ r0 / n, 2 * (r0 @ u) / n, 2 * (r0 @ v) / n
    caa, cbb, cab = u @ u / n, v @ v / n, 2 * (u @ v) / n
    a, b = alphas[:, None], betas[None, :]
    return c0 + ca * a + cb * b + caa * a * a + cbb * b * b + cab * a * b


# ----------------------------------------------------------------------------------- directions
def make_params():
    g = gen(3)
    return {
        "conv.weight": torch.randn(4, 3, 2, 2, generator=g, dtype=DT),
        "conv.bias": torch.randn(4, generator=g, dtype=DT),
        "fc.weight": torch.randn(6, 4, generator=g, dtype=DT) * torch.arange(1, 7, dtype=DT)[:, None],
        "norm.weight": torch.rand(6, generator=g, dtype=DT) + 0.5,
        "emb.weight": torch.randn(5, 6, generator=g, dtype=DT),
    }


def test_filter_norms_match_theta():
    params = make_params()
    d = random_direction(params, gen(4), skip={"norm.weight", "emb.weight"})
    for name in ("conv.weight", "fc.weight"):
        got = d[name].reshape(d[name].shape[0], -1).norm(dim=1)
        want = params[name].reshape(params[name].shape[0], -1).norm(dim=1)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
        assert not torch.allclose(d[name], params[name])  # a rescaled random draw, not theta itself
    for name in ("conv.bias", "norm.weight", "emb.weight"):
        assert torch.count_nonzero(d[name]) == 0, name
    assert {k: v.shape for k, v in d.items()} == {k: v.shape for k, v in params.items()}


def test_include_skipped_keeps_vectors_at_whole_tensor_norm():
    params = make_params()
    d = random_direction(params, gen(4), skip={"norm.weight", "emb.weight"}, include_skipped=True)
    for name in ("conv.bias", "norm.weight"):
        torch.testing.assert_close(d[name].norm(), params[name].norm(), rtol=1e-12, atol=0)
    got = d["emb.weight"].norm(dim=1)
    torch.testing.assert_close(got, params["emb.weight"].norm(dim=1), rtol=1e-12, atol=0)
    # the weights get the same direction whatever is skipped: draws are aligned per tensor
    plain = random_direction(params, gen(4), skip={"norm.weight", "emb.weight"})
    assert torch.equal(plain["fc.weight"], d["fc.weight"])


def test_directions_are_deterministic_by_seed():
    params = make_params()
    a = random_direction(params, gen(7))
    b = random_direction(params, gen(7))
    c = random_direction(params, gen(8))
    assert all(torch.equal(a[k], b[k]) for k in params)
    assert not torch.equal(a["fc.weight"], c["fc.weight"])
    raw = random_direction(params, gen(7), filter_normalize=False)
    expected = torch.randn(params["conv.weight"].shape, generator=gen(7), dtype=DT)
    assert torch.equal(raw["conv.weight"], expected)
    with pytest.raises(ProbeError):
        random_direction(params, gen(7), skip={"missing"})


def test_hessian_direction_unflattens(problem):
    _, _, _, obj = problem
    vec = torch.arange(obj.dim, dtype=DT)
    d = hessian_direction(vec, obj)
    assert list(d) == obj.names
    assert torch.equal(d["lin.weight"], vec.reshape(1, D))
    vec[0] = 100.0
    assert d["lin.weight"][0, 0] == 0.0  # a copy, not a view


# ----------------------------------------------------------------------------------- surfaces
def test_surface_1d_matches_closed_form(problem):
    model, x, y, obj = problem
    d = random_direction(obj.params, gen(5))
    alphas = torch.linspace(-1, 1, 11, dtype=DT)
    calls = []
    curve = surface_1d(obj, d, alphas, chunk_size=4, progress=lambda done, total: calls.append((done, total)))
    ref = closed_form(
        model, x, y, d["lin.weight"], torch.zeros_like(d["lin.weight"]), alphas, torch.zeros(1, dtype=DT)
    )[:, 0]
    torch.testing.assert_close(curve, ref, rtol=1e-10, atol=1e-12)
    assert calls == [(4, 11), (8, 11), (11, 11)]


def test_surface_2d_matches_closed_form(problem):
    model, x, y, obj = problem
    d1 = random_direction(obj.params, gen(5))
    d2 = random_direction(obj.params, gen(6))
    alphas = torch.linspace(-1, 1, 7, dtype=DT)
    betas = torch.linspace(-0.5, 1.5, 5, dtype=DT)
    grid = surface_2d(obj, d1, d2, alphas, betas, chunk_size=6)
    assert grid.shape == (7, 5)
    ref = closed_form(model, x, y, d1["lin.weight"], d2["lin.weight"], alphas, betas)
    torch.testing.assert_close(grid, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grid[3, 1], obj.loss(), rtol=1e-12, atol=0)  # alpha = beta = 0


class Interrupt(Exception):
    pass


def counting(obj):
    counter = {"points": 0}
    original = obj.loss_many

    def wrapped(param_sets, chunk_size=None):
        counter["points"] += next(iter(param_sets.values())).shape[0]
        return original(param_sets, chunk_size)

    obj.loss_many = wrapped
    return counter


def test_surface_2d_resumes_after_an_interruption(problem, tmp_path):
    model, x, y, obj = problem
    d1 = random_direction(obj.params, gen(5))
    d2 = random_direction(obj.params, gen(6))
    alphas = torch.linspace(-1, 1, 6, dtype=DT)
    betas = torch.linspace(-1, 1, 5, dtype=DT)
    path = tmp_path / "partial" / "surface.pt"
    counter = counting(obj)

    def stop_after_three(done, total):
        if done >= 3 * 4:
            raise Interrupt

    with pytest.raises(Interrupt):
        surface_2d(obj, d1, d2, alphas, betas, chunk_size=4, progress=stop_after_three, resume_path=path)
    assert counter["points"] == 12 and path.exists()
    assert not list(path.parent.glob("*.tmp"))  # writes are atomic: no temp file left behind

    counter["points"] = 0
    seen = []
    resumed = surface_2d(
        obj, d1, d2, alphas, betas, chunk_size=4, resume_path=path, progress=lambda done, total: seen.append(done)
    )
    assert counter["points"] == 30 - 12
    assert seen[0] == 16 and seen[-1] == 30

    fresh = SplitObjective(model, obj.batches)
    full = surface_2d(fresh, d1, d2, alphas, betas, chunk_size=4)
    assert torch.equal(resumed, full)
    torch.testing.assert_close(
        full, closed_form(model, x, y, d1["lin.weight"], d2["lin.weight"], alphas, betas), rtol=1e-10, atol=1e-12
    )

    # a finished file is reused as is: no evaluation at all
    counter["points"] = 0
    again = surface_2d(obj, d1, d2, alphas, betas, chunk_size=4, resume_path=path)
    assert counter["points"] == 0 and torch.equal(again, full)


def test_surface_2d_ignores_a_partial_file_of_another_grid(problem, tmp_path):
    _, _, _, obj = problem
    d1 = random_direction(obj.params, gen(5))
    d2 = random_direction(obj.params, gen(6))
    alphas = torch.linspace(-1, 1, 4, dtype=DT)
    path = tmp_path / "surface.pt"
    surface_2d(obj, d1, d2, alphas, alphas, resume_path=path)
    counter = counting(obj)
    other_betas = torch.linspace(-2, 2, 4, dtype=DT)
    grid = surface_2d(obj, d1, d2, alphas, other_betas, resume_path=path)
    assert counter["points"] == 16
    d3 = random_direction(obj.params, gen(9))
    surface_2d(obj, d1, d3, alphas, other_betas, resume_path=path)
    assert counter["points"] == 32
    path.write_bytes(b"not a torch file")
    grid2 = surface_2d(obj, d1, d2, alphas, other_betas, resume_path=path)
    assert counter["points"] == 48 and torch.equal(grid, grid2)


def test_nan_is_a_legitimate_grid_value_and_survives_resume(tmp_path):
    torch.manual_seed(0)
    model = Linear(log=True).to(DT)
    with torch.no_grad():
        model.lin.weight.copy_(torch.full((1, D), 0.5, dtype=DT))
    x = torch.rand(8, D, generator=gen(2), dtype=DT) + 0.1  # x @ w > 0 at theta
    y = torch.zeros(8, dtype=DT)
    obj = SplitObjective(model, [types.SimpleNamespace(x=x, y=y)])
    d1 = {"lin.weight": -torch.ones(1, D, dtype=DT)}  # alpha >= 0.5 makes every prediction log(<= 0)
    d2 = {"lin.weight": torch.zeros(1, D, dtype=DT)}
    alphas = torch.linspace(-1, 1, 5, dtype=DT)
    betas = torch.linspace(-1, 1, 3, dtype=DT)
    path = tmp_path / "s.pt"
    grid = surface_2d(obj, d1, d2, alphas, betas, chunk_size=2, resume_path=path)
    w = 0.5 - alphas
    pred = torch.log(x.sum(1)[None, :] * w[:, None])
    ref = (pred**2).mean(1)
    expected_nan = alphas > 0.5  # log of a negative number
    assert torch.equal(torch.isnan(grid).all(1), expected_nan)
    assert torch.equal(torch.isposinf(grid).all(1), alphas == 0.5)  # log(0) = -inf: an infinite loss
    finite = alphas < 0.5
    torch.testing.assert_close(grid[finite], ref[finite, None].expand(-1, 3))
    counter = counting(obj)
    again = surface_2d(obj, d1, d2, alphas, betas, chunk_size=2, resume_path=path)
    assert counter["points"] == 0
    assert torch.equal(torch.isnan(again), torch.isnan(grid))


def test_surface_rejects_mismatched_directions(problem):
    _, _, _, obj = problem
    with pytest.raises(ProbeError):
        surface_1d(obj, {"lin.weight": torch.zeros(2, D, dtype=DT)}, torch.zeros(3, dtype=DT))
    with pytest.raises(ProbeError):
        surface_1d(obj, {}, torch.zeros(3, dtype=DT))


# ----------------------------------------------------------------------------------- per-structure terms
@pytest.mark.parametrize("kind", ["mse", "mae"])
@pytest.mark.parametrize("chunk", [1, 4, None])
def test_per_sample_curve_gives_each_structure_its_closed_form_term(problem, kind, chunk):
    """surface_1d(per_sample=True): row a holds every structure's own loss term at θ + a·d (the linear model's
    residual squared or absolute, by hand), over both batches in order, by loop (chunk 1) and by vmap."""
    model, x, y, plain = problem
    obj = SplitObjective(model, plain.batches, loss=kind)
    d = {"lin.weight": torch.randn(1, D, generator=gen(5), dtype=DT)}
    alphas = torch.linspace(-1.0, 1.0, 9, dtype=DT)
    terms = surface_1d(obj, d, alphas, chunk_size=chunk, per_sample=True)
    w = model.lin.weight.detach().reshape(-1)
    r = (x @ w - y)[None, :] + alphas[:, None] * (x @ d["lin.weight"].reshape(-1))[None, :]
    expected = r * r if kind == "mse" else r.abs()
    assert terms.shape == (9, 30)
    assert torch.allclose(terms, expected, rtol=1e-12, atol=1e-14)
    # their mean is the curve the plain path draws
    assert torch.allclose(terms.mean(dim=1), surface_1d(obj, d, alphas, chunk_size=chunk), rtol=1e-12)


def test_radius_jackknife_from_terms_equals_one_objective_per_group(problem):
    """The audit's radius jackknife reads each group's curve off the per-structure terms; evaluating a separate
    objective on each group's own batch (how the groups were measured before) gives the same jackknife."""
    import numpy as np

    from traits.audit import radius_jackknife
    from traits.probes.sampling import assign_groups
    from traits.probes.sampling import radius_jackknife as reference_jackknife

    model, x, y, obj = problem
    dirs = [{"lin.weight": torch.randn(1, D, generator=gen(s), dtype=DT)} for s in (6, 7)]
    alphas = torch.linspace(-2.0, 2.0, 21, dtype=DT)
    groups = [list(map(int, g)) for g in assign_groups(obj.n_samples, np.random.default_rng(2), max_groups=6)]
    terms = [surface_1d(obj, d, alphas, per_sample=True) for d in dirs]
    curves = [(t.sum(dim=1) / obj.n_samples).tolist() for t in terms]
    band = 0.2 * float(obj.loss())
    got = radius_jackknife(groups, terms, alphas, curves, band)

    group_objs = [SplitObjective(model, [types.SimpleNamespace(x=x[g], y=y[g])]) for g in groups]
    per_group = [[surface_1d(o, d, alphas).tolist() for d in dirs] for o in group_objs]
    ref = reference_jackknife(alphas.tolist(), [surface_1d(obj, d, alphas).tolist() for d in dirs], per_group,
                              [len(g) for g in groups], band)
    assert got is not None and ref is not None
    assert got.value == pytest.approx(ref.value, rel=1e-10)
    assert got.leave_out == pytest.approx(ref.leave_out, rel=1e-10)
    assert got.stderr == pytest.approx(ref.stderr, rel=1e-8) and got.df == ref.df == 5
