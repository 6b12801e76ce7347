"""The label-free stage of an audit (probes.label_free) on the bundled sample and the quickstart checkpoint.

Its independent reference is the audit's own Hessian and surface probes run in label-free mode
(``data.target: model``): there the loss is the label-free loss, so the Lanczos λ_max and the Gauss-Newton
control-variate trace of the Hessian probe must equal the exact Gauss-Newton spectrum from the Jacobian,
the label-free 2D grid must equal the surface probe's, and the prediction sharpness must equal the surface
probe's 1D curves at ±radius — on the same structures and directions, drawn from the same streams.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from traits.audit import run_audit
from traits.results import load_result
from traits.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "audits" / "quickstart.yaml"

SMALL = {
    "device": "cpu",
    "data.subsample": 400,
    "probes.hessian.max_samples": 16,
    "probes.hessian.top_k": 2,
    "probes.hessian.max_steps": 40,
    "probes.hessian.tol": 1e-8,
    "probes.hessian.trace_hvps": 3,
    "probes.hessian.density_runs": 1,
    "probes.hessian.density_steps": 4,
    "probes.surface.points_1d": 9,
    "probes.surface.points_2d": 5,
    "probes.surface.max_samples": 24,
    "probes.surface.directions": "random",
    "probes.label_free.enabled": True,
    "probes.label_free.radius": 0.25,  # a point of the 9-point 1D grid on [-0.5, 0.5]
    "probes.shift.density_components": 3,
    "report.formats": ["json"],
}


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    out = tmp_path_factory.mktemp("lf") / "labelled"
    return run_audit(load_spec(QUICKSTART, overrides=SMALL), out)


@pytest.fixture(scope="module")
def label_free(tmp_path_factory):
    out = tmp_path_factory.mktemp("lf") / "label-free"
    return run_audit(load_spec(QUICKSTART, overrides={**SMALL, "data.target": "model"}), out)


def test_the_label_free_probes_use_the_labelled_probes_structures(labelled):
    lf = labelled.label_free
    assert set(lf.splits) == {"id", "ood"}
    for split, part in lf.splits.items():
        assert part.sample_ids == labelled.hessian[split].sample_ids
        assert part.n_samples == 16 and len(part.grad_norms) == 16
        assert part.surface_samples == labelled.surface.n_samples[split]
        assert np.array(part.grid).shape == (5, 5)
        assert part.gn_lambda_jackknife is not None and part.gn_lambda_jackknife.df >= 1


def test_each_gradient_norm_stands_beside_the_id_of_its_own_structure(labelled, tmp_path):
    """‖∇θ f‖ stored beside a sample id is that structure's own, recomputed here by autograd on it alone."""
    import torch

    from traits.audit import collate, load_or_train
    from traits.data.prepare import prepare_data

    spec = load_spec(QUICKSTART, overrides=SMALL)
    data = prepare_data(spec)
    model = load_or_train(spec, data, tmp_path, torch.device("cpu")).model.double().eval()
    params = [p for p in model.parameters() if p.requires_grad]
    part = labelled.label_free.splits["ood"]
    by_id = {str(g.material_id): g for g in data.splits["ood"]}
    own = []
    for cid in part.sample_ids:
        (batch,) = collate([by_id[cid]], torch.device("cpu"), torch.float64)
        grads = torch.autograd.grad(model(batch).sum(), params, allow_unused=True)
        own.append(float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None))))
    assert len(set(np.round(own, 6))) == len(own)  # distinct: a shuffled id list could not pass
    assert part.grad_norms == pytest.approx(own, rel=1e-3)


def test_the_ratios_are_ood_over_id_and_carry_intervals(labelled):
    lf, r = labelled.label_free.splits, labelled.ratios
    assert r["gn_lambda_ratio"] == pytest.approx(lf["ood"].gn_top_eigenvalues[0] / lf["id"].gn_top_eigenvalues[0])
    assert r["gn_trace_ratio"] == pytest.approx(lf["ood"].gn_trace / lf["id"].gn_trace)
    assert r["grad_norm_ratio"] == pytest.approx(lf["ood"].grad_norm_median / lf["id"].grad_norm_median)
    assert r["lf_sharpness_ratio"] == pytest.approx(lf["ood"].sharpness / lf["id"].sharpness)
    assert r["lf_smad_ratio"] == pytest.approx(lf["ood"].topology["smad"] / lf["id"].topology["smad"])
    for name in ("gn_lambda_ratio", "gn_trace_ratio"):
        iv = labelled.ratio_intervals[name]
        assert iv.kind == "jackknife over structures" and iv.low <= r[name] <= iv.high
    assert labelled.ratio_intervals["grad_norm_ratio"].kind == "bootstrap over compounds"
    assert "embedding_density_gap" in r and labelled.shift.density.n_components >= 1


def test_the_exact_spectrum_equals_the_label_free_hessian_probe(label_free):
    lf = label_free.label_free.splits
    for split in ("id", "ood"):
        h = label_free.hessian[split]
        assert h.sample_ids == lf[split].sample_ids
        assert h.top_eigenvalues[0] == pytest.approx(lf[split].gn_top_eigenvalues[0], rel=1e-4)
        trace = next(t for t in h.traces if t.method == "gauss-newton+hutchinson")
        assert trace.estimate == pytest.approx(lf[split].gn_trace, rel=1e-5)


def test_the_label_free_surfaces_equal_the_surface_probe(label_free):
    lf, surf = label_free.label_free, label_free.surface
    alphas = np.array(surf.alphas_1d)
    at = [int(np.argmin(abs(alphas + 0.25))), int(np.argmin(abs(alphas - 0.25)))]
    for split in ("id", "ood"):
        np.testing.assert_allclose(lf.splits[split].grid, surf.grids[split], rtol=1e-5, atol=1e-9)
        curves = np.array(surf.curves[split])
        assert lf.splits[split].sharpness == pytest.approx(float(curves[:, at].mean()), rel=1e-5)
        assert lf.splits[split].topology["smad"] == pytest.approx(surf.topology["grids"][split]["smad"], rel=1e-4)


def test_results_with_label_free_probes_round_trip(labelled, tmp_path):
    path = tmp_path / "results.json"
    labelled.write(path)
    again = load_result(path)
    assert again.label_free == labelled.label_free
    assert again.shift.density == labelled.shift.density


def test_a_label_free_audit_draws_no_band_radius_or_zoom(label_free):
    """L(θ) = 0 on every split of a label-free audit: a band relative to it would be ~1e-15 and meaningless."""
    surf = label_free.surface
    assert surf.band is None and not surf.zoom_grids
    assert all(r is None for radii in surf.radius.values() for r in radii)
    assert label_free.metrics["ood"].robust_radius is None and label_free.metrics["ood"].basin_area is None


def test_a_label_free_audit_reports_the_risk_with_its_evidence(label_free):
    """The adopted trust score's risk, from the label-free ratios alone, with what it rests on."""
    from traits.trust import audit_risk

    risk = label_free.trust_risk
    assert label_free.mode == "label-free" and not label_free.accuracy  # no labels were used
    assert risk is not None and 0 < risk.probability < 1 and risk.low <= risk.probability <= risk.high
    assert risk.interval_kind == "bootstrap over held-out rules (refits)"
    assert "held-out rules" in risk.evidence and "AUROC" in risk.evidence
    assert risk.probability == pytest.approx(audit_risk(label_free.ratios)["probability"])


def test_the_shipped_label_free_quickstart_spec_is_valid():
    spec = load_spec(ROOT / "audits" / "quickstart-label-free.yaml")
    assert spec.data.target == "model" and spec.probes.label_free.enabled


def test_a_label_free_audit_reports_no_ratio_of_rounding_noise(label_free):
    """L(θ) is 0 up to rounding in a label-free audit: its ratio and the entropy at T = L_ID(θ) are not numbers."""
    for key in ("loss_ratio", "entropy_ood_minus_id", "radius_ratio", "sharpness_ratio", "basin_area_ratio"):
        assert label_free.ratios.get(key) is None, key


def test_the_label_free_sample_keeps_each_compounds_formula_and_prediction(labelled):
    """Beside each id of the label-free sample: the formula and the prediction that the accuracy stage recorded for
    that compound (another path through the model), so that a label-free report can name compounds."""
    for split, part in labelled.label_free.splits.items():
        acc = labelled.accuracy[split]
        at = {cid: i for i, cid in enumerate(acc.ids)}
        assert len(part.sample_formulas) == len(part.sample_predictions) == len(part.sample_ids) == 16
        assert part.sample_formulas == [acc.formulas[at[c]] for c in part.sample_ids]
        assert part.sample_predictions == pytest.approx([acc.predictions[at[c]] for c in part.sample_ids], rel=1e-5)


def test_a_label_free_report_names_the_compounds_whose_predictions_move_most(label_free):
    from traits.report.compounds import sensitive_compounds
    from traits.report.render import render_html

    part, ref = label_free.label_free.splits["ood"], label_free.label_free.splits["id"]
    rows = sensitive_compounds(label_free, "ood")
    top = sorted(range(len(part.grad_norms)), key=lambda i: -part.grad_norms[i])[:5]
    assert [r.id for r in rows] == [part.sample_ids[i] for i in top]
    assert [r.formula for r in rows] == [part.sample_formulas[i] for i in top]
    assert rows[0].relative == pytest.approx(part.grad_norms[top[0]] / float(np.median(ref.grad_norms)))
    html = render_html(label_free)
    section = html[html.index('<section id="label_free"'):]
    assert "Compounds whose predictions move most with the weights" in section
    assert all(r.id in section for r in rows)
