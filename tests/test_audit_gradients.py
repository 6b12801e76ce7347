"""The gradient-norm curves and the perturbation statistics of an audit (probes.surface.gradient_1d,
probes.surface.perturbations), on the bundled sample and the quickstart checkpoint.

References: the loss the gradient curves record at each point must equal the surface probe's own 1D curve at
that point (the same objective, directions and α grid, evaluated by another function), the gradient norm at θ
must equal ‖∇L(θ)‖ of the split's objective, and the perturbation rises use the surfaces' band.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from traits.audit import run_audit
from traits.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "audits" / "quickstart.yaml"
SMALL = {
    "device": "cpu", "data.subsample": 300, "probes.hessian.enabled": False,
    "probes.surface.points_1d": 9, "probes.surface.points_2d": 5, "probes.surface.max_samples": 24,
    "probes.surface.directions": "random", "probes.surface.zoom_points": 0,
    "probes.surface.gradient_1d": True, "probes.surface.gradient_points_2d": 3, "probes.surface.perturbations": 6,
    "report.formats": ["json"],
}


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    return run_audit(load_spec(QUICKSTART, overrides=SMALL), tmp_path_factory.mktemp("grad") / "out")


def test_the_gradient_curves_lie_on_the_loss_curves(audited):
    surf = audited.surface
    for split in ("id", "ood"):
        curves = surf.gradient_curves[split]
        assert len(curves) == len(surf.curves[split]) == 2
        for grad, loss in zip(curves, surf.curves[split]):
            np.testing.assert_allclose(grad["alphas"], surf.alphas_1d)
            np.testing.assert_allclose(grad["loss"], loss, rtol=1e-5)
            assert len(grad["trapezoid"]) == len(loss) - 1
        assert np.array(surf.gradient_grids[split]["grad_norm"]).shape == (3, 3)


def test_the_metrics_come_from_the_stored_curves(audited):
    surf, metrics = audited.surface, audited.metrics
    for split in ("id", "ood"):
        m, curves = metrics[split], surf.gradient_curves[split]
        centre = surf.alphas_1d.index(0.0)
        assert m.loss_grad_norm == pytest.approx(curves[0]["grad_norm"][centre])
        assert m.loss_grad_norm == pytest.approx(curves[1]["grad_norm"][centre], rel=1e-6)  # θ is one point
        grid = np.array(surf.gradient_grids[split]["grad_norm"], dtype=float)
        assert m.loss_grad_norm_median == pytest.approx(float(np.median(grid)))
        pert = surf.perturbations[split]
        assert pert["n_directions"] == 6 and pert["band"] == surf.band
        assert m.perturbation_curvature == pytest.approx(pert["curvature_mean"])
        assert m.trapezoid_max == pytest.approx(max(v for c in curves for v in c["trapezoid"]))


def test_the_gradient_at_theta_is_the_objectives_gradient(audited, tmp_path):
    import torch

    from traits.audit import STAGES, AuditContext, run_stages

    spec = load_spec(QUICKSTART, overrides={**SMALL, "probes.surface.enabled": False})
    ctx = AuditContext(spec=spec, out_dir=tmp_path, device=torch.device("cpu"), dtype=torch.float32)
    run_stages(ctx, [s for s in STAGES if s.name in ("model and data", "predictions", "Hessian")])
    for split in ("id", "ood"):
        g = ctx.objectives[split].gradient()
        assert float(g.norm()) == pytest.approx(audited.metrics[split].loss_grad_norm, rel=1e-4)


def test_the_gradient_ratios_come_from_the_catalogue(audited):
    m, r = audited.metrics, audited.ratios
    assert r["loss_grad_norm_ratio"] == pytest.approx(m["ood"].loss_grad_norm / m["id"].loss_grad_norm)
    assert r["surface_grad_norm_ratio"] == pytest.approx(m["ood"].loss_grad_norm_median / m["id"].loss_grad_norm_median)
    assert r["perturbation_curvature_ratio"] == pytest.approx(m["ood"].perturbation_curvature
                                                              / m["id"].perturbation_curvature)
    assert r["perturbation_exceed_gap"] == pytest.approx(m["ood"].perturbation_exceed_fraction
                                                         - m["id"].perturbation_exceed_fraction)
