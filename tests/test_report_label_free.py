"""The report's label-free section and the trust score's risk: the per-split table, the OOD/ID ratios with their
intervals, the risk sentence on the first screen and in the section, the not-run text, escaping, and the catalogue
entries of the seven label-free metrics."""

from __future__ import annotations

import re

import numpy as np
import pytest
from result_factory import make_result

from traits import catalogue as C
from traits.report.glance import glance, risk_sentence
from traits.report.headline import split_value
from traits.report.render import render_html
from traits.results import AuditResult, Jackknife, LabelFreeResult, LabelFreeSplit, RatioInterval, TrustRisk

PAYLOAD = "<script>alert(1)</script>"
LABEL_FREE = ("gn_lambda_ratio", "gn_trace_ratio", "grad_norm_ratio", "lf_sharpness_ratio", "lf_smad_ratio",
              "lf_persistence_ratio")
EVIDENCE = ("study-1 (the v2 analysis on study-1's audits), M0 (embedding_knn_ratio), 150 audits over 25 held-out "
            "rules, leave-one-rule-out AUROC 0.77 [0.59, 0.89]")


def section(html: str, sid: str) -> str:
    start = html.index(f'<section id="{sid}">')
    return html[start:html.index("</section>", start)]


def text_of(html: str) -> str:
    """The visible text: tags dropped, entities of quotes restored, whitespace collapsed."""
    return " ".join(re.sub(r"<[^>]+>", " ", html).replace("&#39;", "'").replace("&#8239;", " ").split())


def _split(lam: float, lam_se: float, trace: float, trace_se: float, grad: float, sharp: float, smad: float,
           persistence: float, seed: int) -> LabelFreeSplit:
    rng = np.random.default_rng(seed)
    norms = (grad * np.exp(rng.normal(0, 0.3, 64))).tolist()
    a = np.linspace(-0.5, 0.5, 11)
    grid = [[float(4 * lam / 148 * (x * x + 0.6 * y * y)) for y in a] for x in a]
    return LabelFreeSplit(
        n_samples=64, sample_ids=[f"mp-{seed}-{i}" for i in range(64)], gn_top_eigenvalues=[lam, lam / 3],
        gn_trace=trace, gn_lambda_jackknife=Jackknife(value=lam, stderr=lam_se, df=15),
        gn_trace_jackknife=Jackknife(value=trace, stderr=trace_se, df=15), grad_norms=norms, grad_norm_median=grad,
        sharpness=sharp, surface_samples=80, grid=grid,
        topology={"smad": smad, "smad_normalized": 0.05, "persistence_range": persistence, "n_minima": 3,
                  "n_persistent_minima": 2})


def with_label_free(base: AuditResult, *, risk: TrustRisk | None) -> AuditResult:
    """``base`` with label-free probes (known numbers), their ratios and intervals, and ``risk``."""
    r = base.model_copy(deep=True)
    r.label_free = LabelFreeResult(
        radius=0.1, span=0.5, alphas_2d=np.linspace(-0.5, 0.5, 11).tolist(),
        splits={"id": _split(148.66, 16.34, 281.36, 16.80, 10.69, 0.01469, 0.2537, 4.488, 1),
                "ood": _split(152.28, 16.83, 245.31, 14.40, 9.793, 0.01008, 0.1455, 2.875, 2)},
        problems=["train: the Gauss-Newton curvature was not measured: too large"])
    r.ratios.update({"gn_lambda_ratio": 1.0243, "gn_trace_ratio": 0.8719, "grad_norm_ratio": 0.9160,
                     "lf_sharpness_ratio": 0.6860, "lf_smad_ratio": 0.5737, "lf_persistence_ratio": 0.6404,
                     "embedding_density_gap": -7.158})
    for name, low, high, kind in (("gn_lambda_ratio", 0.7288, 1.4388, "jackknife over structures"),
                                  ("gn_trace_ratio", 0.7287, 1.0438, "jackknife over structures"),
                                  ("grad_norm_ratio", 0.7925, 1.1327, "bootstrap over compounds")):
        r.ratio_intervals[name] = RatioInterval(value=r.ratios[name], low=low, high=high, kind=kind)
    r.trust_risk = risk
    return r


def m0_risk(**fields) -> TrustRisk:
    values = {"probability": 0.1884, "low": 0.0940, "high": 0.2966, "model": "M0", "candidate": "M0",
              "study_version": "study-1 (the v2 analysis on study-1's audits)", "evidence": EVIDENCE,
              "ships_as_default": False}
    return TrustRisk(**(values | fields))


@pytest.fixture(scope="module")
def base() -> AuditResult:
    return make_result()


@pytest.fixture(scope="module")
def probed(base) -> AuditResult:
    return with_label_free(base, risk=m0_risk())


@pytest.fixture(scope="module")
def html(probed) -> str:
    return render_html(probed)


# ----------------------------------------------------------------------------------------------
# The catalogue


def test_the_catalogue_lists_the_seven_label_free_metrics_with_their_stages():
    entries = {m.name: m for m in C.catalogue()}
    for name in LABEL_FREE:
        m = entries[name]
        assert m.stage == "label_free" and m.kind == "landscape" and m.unit == "ratio" and m.direction == 1
        assert m.gate_field is None and m.ranked and m.source.startswith("label_free.")
        assert "No adopted study has measured" in m.description
    gap = entries["embedding_density_gap"]
    assert (gap.stage, gap.kind, gap.unit, gap.direction, gap.source) == ("shift", "distance baseline",
                                                                          "difference", 1.0, "shift.density")
    assert set(LABEL_FREE) | {"embedding_density_gap"} <= {m.name for m in C.ranked()}
    assert not set(LABEL_FREE) & {m.name for m in C.gated()}
    assert "(label-free)" in entries["gn_lambda_ratio"].label


def test_the_headline_reads_each_label_free_source(probed):
    expect = {"gn_lambda_ratio": 148.66, "gn_trace_ratio": 281.36, "grad_norm_ratio": 10.69,
              "lf_sharpness_ratio": 0.01469, "lf_smad_ratio": 0.2537, "lf_persistence_ratio": 4.488}
    for name, value in expect.items():
        assert split_value(probed, C.metric(name), "id").value == pytest.approx(value), name
    lam = split_value(probed, C.metric("gn_lambda_ratio"), "ood")
    assert lam.kind == "jackknife over structures" and lam.low < 152.28 < lam.high
    assert lam.high - lam.low == pytest.approx(2 * 2.131 * 16.83, rel=1e-3)  # t(15) · SE on each side
    nll = probed.shift.density.nll if probed.shift is not None and probed.shift.density is not None else {}
    assert split_value(probed, C.metric("embedding_density_gap"), "id").value == nll.get("id")
    assert split_value(make_result(), C.metric("gn_trace_ratio"), "ood").value is None


# ----------------------------------------------------------------------------------------------
# The section


def test_the_section_tables_each_split_with_the_jackknife(html):
    text = text_of(section(html, "label_free"))
    assert "Label-free probes" in text
    assert "Gauss-Newton λ max (eV/atom)² 148.7 [114, 183] J SE 16 152.3 [116, 188] J SE 17" in text
    assert "Gauss-Newton trace (eV/atom)² 281.4" in text and "245.3" in text and "SE 14" in text
    assert "median gradient norm ‖∇ θ f‖ eV/atom 10.69 9.793" in text
    assert "prediction sharpness at r (eV/atom)² 0.01469 0.01008" in text
    assert "SMAD of the label-free surface (eV/atom)² 0.2537 0.1455" in text
    assert "persistence range of the label-free surface (eV/atom)² 4.488 2.875" in text
    assert "3 (2)" in text  # minima (persistent)
    assert "ID test 64, OOD 64 structures" in text and "radius r = 0.1" in text
    assert "train: the Gauss-Newton curvature was not measured: too large" in text


def test_the_section_lists_the_ratios_with_their_interval_kinds(html):
    sec = section(html, "label_free")
    text = text_of(sec)
    assert "gn_lambda_ratio 1.02 [0.729, 1.44] J" in text
    assert "gn_trace_ratio 0.872 [0.729, 1.04] J" in text
    assert "grad_norm_ratio 0.916 [0.792, 1.13] B" in text
    assert "lf_sharpness_ratio 0.686 —" in text and "lf_persistence_ratio 0.64 —" in text
    assert "embedding_density_gap −7.16 (OOD − ID) — above 0 (a difference)" in text
    assert 'title="jackknife over structures"' in sec and 'title="bootstrap over compounds"' in sec
    assert "They do not measure the error" in text
    assert "No adopted study has shown yet" in text
    assert 'id="fig-label_free_2d"' in sec and 'id="fig-grad_norms"' in sec
    # the loss-surface section lists its own ratios, not these
    surfaces = section(html, "surfaces")
    assert "lambda_ratio" in surfaces and "gn_lambda_ratio" not in surfaces and "embedding_density_gap" not in surfaces


def test_with_adopted_label_free_evidence_the_section_says_what_the_study_found(probed, monkeypatch, tmp_path):
    """The caption under the ratios reads the adopted label-free evidence: which ratios tracked the per-task MAE
    ratio beyond the control, and which (none here) fail by default; a pipeline check is not evidence."""
    import json

    def ev(rho, low, high, plow, phigh, firing=None):
        out = {"rho": rho, "low": low, "high": high, "p_holm": 0.004, "n_tasks": 50, "n_audits": 168,
               "n_clusters": 25, "noise_floor": 1.1, "control": "the embedding kNN distance (B1)",
               "partial_control": {"rho": (plow + phigh) / 2, "low": plow, "high": phigh}}
        if firing:
            out["seed_firing"] = {"1": firing[0], "2": firing[1], "3": firing[2], "n_tasks": 50}
        return out

    doc = {"study_version": "study-x", "data_set": "mp", "mode": "label-free", "pipeline_check": False,
           "in_progress": False, "metrics": {
               "lambda_ratio": ev(0.53, 0.25, 0.72, 0.36, 0.73, (4, 4, 0)),  # the gate: never on three seeds
               "gn_lambda_ratio": ev(0.53, 0.25, 0.72, 0.36, 0.73),  # ungated ratios carry no seed count
               "grad_norm_ratio": ev(0.50, 0.22, 0.67, 0.26, 0.68),
               "lf_smad_ratio": ev(-0.06, -0.32, 0.21, -0.43, 0.02)}}
    path = tmp_path / "lf.json"
    path.write_text(json.dumps(doc))
    monkeypatch.setattr(C, "LABEL_FREE_EVIDENCE_FILE", path)
    C.clear_cache()
    try:
        text = text_of(section(render_html(probed), "label_free"))
        assert "In the adopted study (study-x), Gauss-Newton" in text and "No adopted study has shown yet" not in text
        assert "tracked the per-task OOD/ID MAE ratio beyond the embedding kNN distance (B1)" in text
        assert "SMAD" not in text.split("In the adopted study")[1].split("tracked")[0]  # SMAD did not track it
        assert "none fails an audit by default" in text
        assert "none predicted a ≥ 2× error better than the embedding distance" in text  # the M0 risk
        stable = json.loads(json.dumps(doc))
        stable["metrics"]["lambda_ratio"]["seed_firing"] = {"1": 4, "2": 4, "3": 2, "n_tasks": 50}
        path.write_text(json.dumps(stable))
        C.clear_cache()
        text = text_of(section(render_html(probed), "label_free"))
        assert "; largest Hessian eigenvalue λmax fails an audit by default (see the verdict)" in text
        path.write_text(json.dumps(doc | {"pipeline_check": True}))
        C.clear_cache()
        assert "No adopted study has shown yet" in text_of(section(render_html(probed), "label_free"))
    finally:
        C.clear_cache()


def test_the_risk_sentence_stands_on_the_first_screen_and_in_the_section(probed, html):
    sentence = ("Risk that the OOD error is at least twice the ID error: 0.19 [0.09, 0.30] (label-free estimate, for "
                "comparison with the measured OOD/ID MAE ratio, ")
    summary, own = text_of(section(html, "summary")), text_of(section(html, "label_free"))
    for text in (summary, own):
        assert sentence in text
        assert "interval: bootstrap over held-out rules of the score's study; score: " + EVIDENCE in text
        assert "The score is the embedding-distance baseline alone: no landscape signal beat it in that study." in text
    assert f"{probed.ratios['mae_ratio']:.3g}" in summary[summary.index("Risk that"):]
    assert "not a sampling interval of this audit" in own
    assert glance(probed).risk.startswith("Risk that") and "Risk that" not in glance(probed).text


def test_the_risk_sentence_follows_the_score():
    r = with_label_free(make_result(), risk=m0_risk(candidate="M3", model="M3", ships_as_default=True))
    text = risk_sentence(r)
    assert "baseline alone" not in text and "0.19 [0.09, 0.30]" in text
    r.mode = "label-free"
    assert "for comparison with the measured" not in risk_sentence(r)
    r.trust_risk = m0_risk(probability=None, low=None, high=None, note="undefined: embedding_knn_ratio")
    text = risk_sentence(r)
    assert "not estimated (undefined: embedding_knn_ratio;" in text and "[" not in text.split("score:")[0]
    r.trust_risk = None
    assert risk_sentence(r) == "" and glance(r).risk == ""


def test_without_label_free_probes_the_section_says_not_run(base):
    html = render_html(base)
    sec = text_of(section(html, "label_free"))
    assert "Label-free probes (probes.label_free): not run." in sec
    assert "Risk that" not in html
    assert 'id="fig-label_free_2d"' not in html


def test_every_string_of_the_risk_is_escaped(base):
    r = with_label_free(base, risk=m0_risk(probability=None, low=None, high=None, note=PAYLOAD,
                                           evidence=PAYLOAD, study_version=PAYLOAD))
    r.label_free = None
    html = render_html(r)
    assert PAYLOAD not in html
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert escaped in section(html, "summary") and escaped in section(html, "label_free")
    assert "Label-free probes (probes.label_free): not run." in text_of(section(html, "label_free"))


def test_a_label_free_audit_draws_its_surfaces_on_their_own_scale(base):
    from traits.report.figures import LABEL_FREE_DECADES
    from traits.report.sections import surfaces_context

    r = base.model_copy(deep=True)
    labelled = surfaces_context(r)["surface_scale"]
    r.mode = "label-free"
    for grid in r.surface.grids.values():  # 0 at θ up to rounding, as a label-free loss is
        grid[len(grid) // 2][len(grid) // 2] = 1e-14
    scale = surfaces_context(r)["surface_scale"]
    assert scale.log and scale.vmax - scale.vmin == pytest.approx(LABEL_FREE_DECADES)
    assert (labelled.vmax - labelled.vmin) != pytest.approx(LABEL_FREE_DECADES)
