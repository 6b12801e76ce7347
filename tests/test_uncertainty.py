"""Uncertainty probes against closed forms: a linear-Gaussian model (Bayesian linear regression with a
Gaussian prior and noise) for both Laplace variants, a quadratic loss for Hessian-WAG, and the scores."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch
from torch import nn

from traits.errors import ProbeError
from traits.probes import uncertainty as unc
from traits.probes.hessian import EigenResult, top_eigenvalues
from traits.probes.objective import SplitObjective

DT = torch.float64


class LinearHead(nn.Module):
    """y = s_y (w . x + b) + m_y: ``embed`` is the identity, ``fc_out`` the only trainable layer."""

    def __init__(self, d: int, scale: float = 2.0, shift: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc_out = nn.Linear(d, 1).to(DT)
        self.register_buffer("target_std", torch.tensor(scale, dtype=DT))
        self.register_buffer("target_mean", torch.tensor(shift, dtype=DT))

    def embed(self, batch):
        return batch.x

    def forward(self, batch):
        return self.fc_out(self.embed(batch)).squeeze(-1) * self.target_std + self.target_mean


def batches_of(x, y, size=7):
    return [types.SimpleNamespace(x=x[i:i + size], y=y[i:i + size], num_graphs=len(x[i:i + size]))
            for i in range(0, len(x), size)]


def design(model, x):
    """Psi = s_y [x, 1]: the Jacobian of the predictions with respect to (w, b)."""
    return float(model.target_std) * torch.cat([x, torch.ones(len(x), 1, dtype=DT)], 1)


def closed_form_variance(psi_train, psi_query, noise_var, prior):
    a = psi_train.T @ psi_train / noise_var + prior * torch.eye(psi_train.shape[1], dtype=DT)
    return torch.einsum("ij,jk,ik->i", psi_query, torch.linalg.inv(a), psi_query)


def setup(d=4, n=40, rank=None, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=DT)
    if rank is not None:  # features confined to a rank-`rank` subspace through the origin
        basis = torch.randn(rank, d, generator=g, dtype=DT)
        x = torch.randn(n, rank, generator=g, dtype=DT) @ basis
    y = x @ torch.randn(d, generator=g, dtype=DT) + 0.1 * torch.randn(n, generator=g, dtype=DT)
    xq = torch.randn(9, d, generator=g, dtype=DT) * 2
    model = LinearHead(d)
    return model, x, y, xq


def test_last_layer_laplace_matches_the_closed_form_posterior_predictive():
    model, x, y, xq = setup()
    noise, prior = 0.3, 0.7
    feats = unc.last_layer_features(model, batches_of(x, y))
    post = unc.fit_last_layer(feats.numpy(), noise, prior_precision=prior)
    got = post.variance(unc.last_layer_features(model, batches_of(xq, torch.zeros(len(xq)))).numpy())
    want = closed_form_variance(design(model, x), design(model, xq), noise, prior)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-10)
    again = unc.LastLayerLaplace.from_dict(post.to_dict())
    np.testing.assert_allclose(again.covariance, post.covariance, rtol=1e-12)


def test_linearised_laplace_with_every_certified_pair_matches_the_closed_form():
    model, x, y, xq = setup()
    noise, prior = 0.3, 0.7
    obj = SplitObjective(model, batches_of(x, y), loss="mse")
    eig = top_eigenvalues(obj.hvp, obj.dim, k=obj.dim, max_steps=obj.dim, tol=1e-8,
                          generator=torch.Generator().manual_seed(0), device="cpu", dtype=DT)
    curv = unc.low_rank_curvature(eig)
    assert curv.n_unconverged == 0 and len(curv.values) == obj.dim
    prec = unc.precision_values(curv, len(x), noise)
    proj = unc.jvp_projections(obj, curv.vectors, batches_of(xq, torch.zeros(len(xq))))
    got = unc.laplace_variance(proj, prec, prior)
    want = closed_form_variance(design(model, x), design(model, xq), noise, prior)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)


def test_low_rank_laplace_with_the_prior_on_the_complement_is_exact_for_a_low_rank_curvature():
    model, x, y, xq = setup(d=6, rank=2)  # with the bias: 7 weights, data curvature of rank 3
    noise, prior = 0.2, 1.3
    obj = SplitObjective(model, batches_of(x, y), loss="mse")
    eig = top_eigenvalues(obj.hvp, obj.dim, k=3, max_steps=obj.dim, tol=1e-8,
                          generator=torch.Generator().manual_seed(1), device="cpu", dtype=DT)
    curv = unc.low_rank_curvature(eig)
    assert len(curv.values) == 3
    qb = batches_of(xq, torch.zeros(len(xq)))
    proj = unc.jvp_projections(obj, curv.vectors, qb)
    g2 = unc.gradient_norms_sq(obj, qb)
    np.testing.assert_allclose(g2.numpy(), (design(model, xq) ** 2).sum(1).numpy(), rtol=1e-10)
    got = unc.laplace_variance(proj, unc.precision_values(curv, len(x), noise), prior, grad_sq=g2)
    want = closed_form_variance(design(model, x), design(model, xq), noise, prior)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)
    # without the complement the posterior lives in the eigen-subspace: never more than the full variance
    sub = unc.laplace_variance(proj, unc.precision_values(curv, len(x), noise), prior)
    assert (sub.numpy() <= want.numpy() + 1e-12).all()


def test_unconverged_pairs_are_left_out_and_negative_eigenvalues_clipped():
    eig = EigenResult(values=torch.tensor([3.0, 1.0, -0.5]), vectors=torch.eye(3), residuals=torch.zeros(3),
                      n_hvp=3, converged=False, converged_each=[True, False, True])
    curv = unc.low_rank_curvature(eig)
    assert curv.n_unconverged == 1 and curv.n_clipped == 1
    assert curv.values.tolist() == [3.0, 0.0] and curv.raw_values.tolist() == [3.0, -0.5]
    assert torch.equal(curv.vectors, torch.eye(3)[[0, 2]])


def test_the_prior_precision_fitted_on_validation_maximises_the_closed_form_likelihood():
    model, x, y, xv = setup(seed=5)
    noise = 0.05
    yv = xv @ torch.ones(4, dtype=DT)
    with torch.no_grad():
        rv = (yv - model(types.SimpleNamespace(x=xv))).numpy()
    feats = unc.last_layer_features(model, batches_of(x, y)).numpy()
    vfeats = unc.last_layer_features(model, batches_of(xv, yv)).numpy()
    grid = [10.0**e for e in range(-4, 5)]
    post = unc.fit_last_layer(feats, noise, val_features=vfeats, val_residuals=rv, grid=grid)
    lls = [unc.gaussian_loglik(rv, closed_form_variance(design(model, x), design(model, xv), noise, g).numpy() + noise)
           for g in grid]
    assert post.prior_precision == grid[int(np.argmax(lls))]


def test_hessian_wag_keeps_exactly_the_analytic_low_loss_region_of_a_quadratic_loss():
    """At the least-squares optimum the MSE is L0 + 1/2 q^T H q exactly (a quadratic), so along two
    Hessian eigenvectors v1, v2 scaled to norm c the kept region is the ellipse
    1/2 (lambda_1 a^2 + lambda_2 b^2) c^2 <= tau L0; the models are theta + a d1 + b d2 themselves."""
    model, x, y, xq = setup(n=60)
    psi = design(model, x)
    sol = torch.linalg.lstsq(psi, (y - float(model.target_mean)).unsqueeze(1)).solution.squeeze(1)
    with torch.no_grad():
        model.fc_out.weight.copy_(sol[:-1].unsqueeze(0))
        model.fc_out.bias.copy_(sol[-1:])
    obj = SplitObjective(model, batches_of(x, y), loss="mse")
    h = 2 * psi.T @ psi / len(x)
    lam, vecs = torch.linalg.eigh(h)
    c, tau = 0.02, 0.1
    d1 = obj.unflatten(vecs[:, -1] * c)
    d2 = obj.unflatten(vecs[:, 0] * c)
    axis = torch.linspace(-2, 2, 21, dtype=DT)
    qb = batches_of(xq, torch.zeros(len(xq)))
    res = unc.hessian_wag(obj, [("hessian", d1, d2)], axis, tau, {"q": qb})
    loss0 = float(obj.loss())
    kept = {(round(a, 9) + 0.0, round(b, 9) + 0.0) for _p, a, b in res.coefficients}
    want = set()
    for a in axis.tolist():
        for b in axis.tolist():
            rise = 0.5 * (float(lam[-1]) * a * a + float(lam[0]) * b * b) * c * c
            if rise <= tau * loss0 * (1 - 1e-9) and (abs(a) > 1e-12 or abs(b) > 1e-12):
                want.add((round(a, 9) + 0.0, round(b, 9) + 0.0))
    assert kept == want and len(want) > 10
    assert res.n_models == len(want) + 1
    theta = obj.flatten(obj.params)
    pts = [theta] + [theta + a * vecs[:, -1] * c + b * vecs[:, 0] * c for _p, a, b in res.coefficients]
    preds = torch.stack([design(model, xq) @ p[torch.tensor([0, 1, 2, 3, 4])] + float(model.target_mean)
                         for p in pts])
    np.testing.assert_allclose(res.predictions["q"].mean, preds.mean(0).numpy(), rtol=1e-9)
    np.testing.assert_allclose(res.predictions["q"].std, preds.std(0, unbiased=False).numpy(), rtol=1e-6, atol=1e-12)
    assert res.kept[0]["kept"] == len(want) + 1


def test_hessian_wag_refuses_a_non_finite_training_loss():
    model, x, y, _ = setup()
    y = y.clone()
    y[0] = math.nan
    obj = SplitObjective(model, batches_of(x, y), loss="mse")
    d = obj.unflatten(torch.ones(obj.dim, dtype=DT))
    with pytest.raises(ProbeError):
        unc.hessian_wag(obj, [("r", d, d)], torch.linspace(-1, 1, 3, dtype=DT), 0.1, {"q": batches_of(x, y)})


def test_calibration_of_gaussian_residuals_with_their_true_sigma():
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.1, 2.0, 20000)
    r = rng.normal(0, sigma)
    cal = unc.calibration(r, sigma)
    assert cal["miscalibration_area"] < 0.01
    assert abs(cal["z_std"] - 1) < 0.02
    assert abs(cal["coverage_68"] - 0.6827) < 0.01 and abs(cal["coverage_95"] - 0.95) < 0.01
    rec = unc.recalibrate(sigma / 3, r)  # an uncertainty off by a factor 3 is rescaled
    assert abs(rec.b - 3) < 0.1 and rec.a < 0.1
    assert unc.spearman(sigma, np.abs(r)) > 0.3
    assert unc.spearman(np.ones(5), np.arange(5)) is None


def test_scored_points_are_finite_pairs_each_with_the_id_of_its_compound():
    """The stored points are a seeded subsample in a shuffled order: each keeps its own compound's id, a
    compound whose u or error is not finite is left out with its id, and the result survives a round trip."""
    from traits.results import UncertaintyMethod

    rng = np.random.default_rng(3)
    n = {"val": 30, "id": 25, "ood": 40}
    u = {s: rng.uniform(0.1, 1.0, m) for s, m in n.items()}
    res = {s: rng.normal(0, u[s]) for s in n}
    u["ood"][4], res["ood"][9] = np.nan, np.inf
    ids = {s: [f"{s}-{i}" for i in range(m)] for s, m in n.items()}
    out = unc.score_method(u, res, seed=2, n_boot=50, max_points=30, ids=ids)
    for s in ("id", "ood"):
        p = out[s]["points"]
        assert len(p["ids"]) == len(p["u"]) == len(p["abs_err"]) == min(30, n[s] - (2 if s == "ood" else 0))
        assert p["ids"] != sorted(p["ids"], key=lambda x: int(x.split("-")[1]))  # shuffled: order is not the index
        for cid, uu, err in zip(p["ids"], p["u"], p["abs_err"]):
            i = int(cid.split("-")[1])
            assert uu == u[s][i] and err == abs(res[s][i]), cid
    assert not {"ood-4", "ood-9"} & set(out["ood"]["points"]["ids"])
    assert all(math.isfinite(x) for x in out["ood"]["points"]["u"] + out["ood"]["points"]["abs_err"])
    method = UncertaintyMethod.model_validate(out)
    assert UncertaintyMethod.model_validate_json(method.model_dump_json()) == method
    without = unc.score_method(u, res, seed=2, n_boot=50, max_points=30)
    assert without["ood"]["points"]["ids"] == [] and without["ood"]["points"]["u"] == out["ood"]["points"]["u"]
    short = unc.score_method(u, res, seed=2, n_boot=50, max_points=30, ids={"ood": ids["ood"][:-1]})
    assert short["ood"]["points"]["ids"] == [] and short["id"]["points"]["ids"] == []


def test_bootstrap_ratio_and_ensemble_and_knn():
    out = unc.bootstrap_ratio(np.full(50, 2.0) + np.linspace(0, 0.1, 50), np.ones(40), n_boot=200)
    assert out["low"] <= out["value"] <= out["high"] and 1.9 < out["value"] < 2.2
    ens = unc.ensemble([np.zeros(3), np.ones(3) * 2])
    np.testing.assert_allclose(ens.std, np.full(3, math.sqrt(2)))
    train = np.random.default_rng(1).normal(size=(50, 3))
    far = unc.knn_distance(train, np.array([[0.0, 0, 0], [10, 10, 10]]), k=3)
    assert far[1] > far[0]
    with pytest.raises(ProbeError):
        unc.ensemble([np.zeros(3)])


@pytest.mark.slow
def test_the_audit_probe_fills_results_and_the_report_section(tmp_path):
    """probes.uncertainty in a shrunk quickstart audit: every method scored, the section and figure drawn,
    the screening calibration written; a result without it says 'not run'."""
    from pathlib import Path

    from traits.audit import run_audit
    from traits.report.render import render_html
    from traits.results import load_result
    from traits.screen import load_calibration
    from traits.spec import load_spec

    root = Path(__file__).resolve().parents[1]
    spec = load_spec(root / "audits" / "quickstart.yaml", overrides={
        "device": "cpu", "data.subsample": 300, "probes.hessian.enabled": False, "probes.shift.enabled": False,
        "probes.surface.points_1d": 5, "probes.surface.points_2d": 5, "probes.surface.max_samples": 4,
        "probes.surface.directions": "random", "probes.uncertainty.enabled": True, "probes.uncertainty.top_k": 3,
        "probes.uncertainty.planes": 1, "probes.uncertainty.points": 3, "probes.uncertainty.max_samples": 16,
        "probes.uncertainty.max_eval": 40, "probes.hessian.max_steps": 8, "report.formats": ["json"]})
    result = run_audit(spec, tmp_path / "out")
    unc = load_result(tmp_path / "out" / "results.json").uncertainty
    assert set(unc.methods) == {"hessian_wag", "laplace", "last_layer", "knn"}
    for m in unc.methods.values():
        assert m.ood.calibration["n"] > 0 and m.u_ratio["value"] is not None
        for split in ("id", "ood"):  # each point's |error| is its own compound's, read from the accuracy by id
            pts, acc = getattr(m, split).points, result.accuracy[split]
            error = {i: abs(p - t) for i, p, t in zip(acc.ids, acc.predictions, acc.targets)}
            assert len(pts.ids) == len(pts.u) > 1 and set(pts.ids) <= set(error)
            assert [error[i] for i in pts.ids] == pytest.approx(pts.abs_err, rel=1e-4, abs=1e-6)
    assert load_calibration(tmp_path / "out" / "model.calibration.json")["version"] == 1
    html = render_html(result)
    assert "Would we have known without labels?" in html and 'id="fig-uncertainty"' in html
    result.uncertainty = None
    assert "Per-compound uncertainty (probes.uncertainty): not run" in render_html(result)
