"""Label-free probes (traits.probes.labelfree) against independent references.

The references never go through ``SplitObjective`` or ``torch.func``: the label-free loss
L0(w) = mean((f(w) - f(theta))^2) is written by hand on the tiny MLP's flat weight vector
(``tiny_models.manual_forward``) and differentiated twice by ``torch.autograd.functional.hessian``. Both regimes
are covered: fewer samples than weights (a rank-deficient Gauss-Newton matrix, where a solver that stops early
or a truncated spectrum would show) and more samples than weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from tiny_models import DT, make_data, make_mlp, manual_forward, reference_parts

from traits.errors import ProbeError
from traits.probes.directions import random_direction
from traits.probes.labelfree import gauss_newton_spectrum, gradient_norms, prediction_sharpness
from traits.probes.objective import SplitObjective
from traits.probes.surface import surface_1d
from traits.shift import embedding_density


def _label_free_objective(model, batches):
    with torch.no_grad():
        for b in batches:
            b.y = model(b).detach()
    return SplitObjective(model, batches, loss="mse")


def _reference_hessian(model, x, rows=None):
    theta, split = reference_parts(model)
    f0 = manual_forward(model, split(theta), x).detach()
    idx = torch.arange(x.shape[0]) if rows is None else torch.as_tensor(rows)

    def loss(flat):
        return ((manual_forward(model, split(flat), x[idx]) - f0[idx]) ** 2).mean()

    return torch.autograd.functional.hessian(loss, theta)


@pytest.fixture(params=[(7, 12, 5), (40, 50, 45)], ids=["N<P", "N>P"])
def setup(request):
    model = make_mlp(batchnorm=True, seed=3).eval()
    x, _, batches = make_data(request.param, seed=5)
    return model, x, _label_free_objective(model, batches)


def test_spectrum_and_trace_equal_the_hessian_of_the_label_free_loss(setup):
    model, x, obj = setup
    h = _reference_hessian(model, x)
    ref = np.sort(np.linalg.eigvalsh(h.numpy()))[::-1]
    gn = gauss_newton_spectrum(obj.output_jacobian(), top_k=5)
    assert gn.n == x.shape[0]
    np.testing.assert_allclose(gn.top, ref[:5], rtol=1e-8, atol=1e-10)
    assert gn.trace == pytest.approx(float(torch.trace(h)), rel=1e-10)
    assert obj.dim > 100 and gn.lambda_max > 0


def test_the_jackknife_leaves_each_group_out_exactly(setup):
    model, x, obj = setup
    n = x.shape[0]
    rng = np.random.default_rng(0)
    perm = rng.permutation(n)
    groups = [perm[i::4].tolist() for i in range(4)]
    gn = gauss_newton_spectrum(obj.output_jacobian(), top_k=3, groups=groups)
    for g, lam, tr in zip(groups, gn.lambda_leave_out, gn.trace_leave_out):
        keep = sorted(set(range(n)) - set(g))
        h = _reference_hessian(model, x, keep)
        assert lam == pytest.approx(float(np.linalg.eigvalsh(h.numpy())[-1]), rel=1e-8)
        assert tr == pytest.approx(float(torch.trace(h)), rel=1e-10)
    assert gn.df == 3 and gn.lambda_stderr is not None and gn.lambda_stderr > 0


def test_gradient_norms_equal_the_jacobian_rows(setup):
    model, x, obj = setup
    theta, split = reference_parts(model)
    jac = torch.autograd.functional.jacobian(lambda flat: manual_forward(model, split(flat), x), theta)
    np.testing.assert_allclose(gradient_norms(obj.output_jacobian()), jac.norm(dim=1).numpy(), rtol=1e-10)
    np.testing.assert_allclose(obj.output_jacobian(batched=False).numpy(), jac.numpy(), rtol=1e-9, atol=1e-12)


def test_prediction_sharpness_is_the_mean_squared_change_of_the_predictions(setup):
    model, x, obj = setup
    theta, split = reference_parts(model)
    f0 = manual_forward(model, split(theta), x).detach()
    dirs = [random_direction(obj.params, torch.Generator().manual_seed(s)) for s in (1, 2)]
    r = 0.2
    curves = [surface_1d(obj, d, torch.tensor([-r, r], dtype=DT)).tolist() for d in dirs]
    manual = []
    for d in dirs:
        flat_d = torch.cat([d[n].reshape(-1) for n in obj.names])
        for sign in (-1, 1):
            manual.append(float(((manual_forward(model, split(theta + sign * r * flat_d), x) - f0) ** 2).mean()))
    assert prediction_sharpness(curves) == pytest.approx(float(np.mean(manual)), rel=1e-10)
    # to second order it is the Gauss-Newton quadratic form along the directions (small radius)
    g = _reference_hessian(model, x)
    small = 1e-3
    quad = np.mean([float(torch.cat([d[n].reshape(-1) for n in obj.names]) @ g
                          @ torch.cat([d[n].reshape(-1) for n in obj.names])) * small**2 / 2 for d in dirs])
    tiny = [surface_1d(obj, d, torch.tensor([-small, small], dtype=DT)).tolist() for d in dirs]
    assert prediction_sharpness(tiny) == pytest.approx(quad, rel=1e-3)


def test_bad_inputs_are_refused():
    with pytest.raises(ProbeError, match="partition"):
        gauss_newton_spectrum(torch.ones(4, 3, dtype=DT), groups=[[0, 1], [1, 2]])
    with pytest.raises(ProbeError, match="top_k"):
        gauss_newton_spectrum(torch.ones(4, 3, dtype=DT), top_k=0)
    with pytest.raises(ProbeError, match="matrix"):
        gradient_norms(torch.ones(4, dtype=DT))
    assert prediction_sharpness([[0.1, float("nan")]]) is None


def test_a_jacobian_larger_than_allowed_is_refused_before_any_backward():
    model = make_mlp(batchnorm=False, seed=1).eval()
    _, _, batches = make_data((6, 6), seed=2)
    obj = _label_free_objective(model, batches)
    with pytest.raises(ProbeError, match="more than the 100 allowed"):
        obj.output_jacobian(max_entries=100)


def test_embedding_density_against_a_hand_computed_gaussian():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(400, 3)) @ np.diag([1.0, 2.0, 0.5])
    near, far = rng.normal(size=(50, 3)), rng.normal(size=(50, 3)) + 6.0
    d = embedding_density({"train": train, "id": near, "ood": far}, 1, seed=0)
    ref = multivariate_normal(train.mean(axis=0), np.cov(train.T, bias=True) + 1e-6 * np.eye(3))
    assert d.n_components == 1
    assert d.nll["id"] == pytest.approx(-ref.logpdf(near).mean(), rel=1e-6)
    assert d.nll["ood"] > d.nll["id"] + 10


def test_embedding_density_picks_the_mixture_by_bic():
    rng = np.random.default_rng(1)
    train = np.vstack([rng.normal(size=(300, 2)) * 0.3 + c for c in ([0, 0], [5, 0], [0, 5])])
    between = rng.normal(size=(60, 2)) * 0.3 + [2.5, 2.5]
    inside = rng.normal(size=(60, 2)) * 0.3 + [5, 0]
    d = embedding_density({"train": train, "id": inside, "ood": between}, 6, seed=0)
    assert d.n_components == 3 and int(np.argmin(d.bic)) == 2
    assert d.nll["ood"] > d.nll["id"]
    notes: list[str] = []
    assert embedding_density({"train": train[:4], "id": inside}, 3, notes=notes) is None
    assert "not fitted" in notes[0]
