"""The trust score applied to an audit (traits.trust), the shipped score, and ``traits study trust-score``.

References are written out by hand: the logistic model's probability from its stored numbers with
``math.exp``, the percentile interval with ``numpy.quantile`` over the refits' own probabilities.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from traits import trust
from traits.results import AuditResult, TrustRisk

ROOT = Path(__file__).resolve().parents[1]
V1_RUNS = ROOT / "docs" / "study" / "runs-mp-partial"


def _model(name, features, means, sds, coef, intercept, refits=()):
    return {"name": name, "features": features, "means": means, "sds": sds, "coef": coef, "intercept": intercept,
            "C": 1.0, "refits": list(refits)}


def _score(models):
    return {"kind": "TRAITS trust score", "study_version": "study-x", "candidate": "M1", "ships_as_default": True,
            "models": models, "evidence": {"n_audits": 40, "n_rules": 9,
                                            "loro_auroc": {"auroc": 0.81, "low": 0.7, "high": 0.9}}}


def _p(b, terms):
    return 1 / (1 + math.exp(-(b + sum(terms))))


def test_the_probability_and_interval_follow_the_stored_model():
    refits = [_model("r", ["embedding_knn_ratio", "embedding_density_gap"], [0.1, 1.0], [0.5, 2.0], [c, 0.3], -1.0)
              for c in np.linspace(0.5, 2.5, 41)]
    full = _model("M1", ["embedding_knn_ratio", "embedding_density_gap"], [0.1, 1.0], [0.5, 2.0], [1.5, 0.3], -1.0,
                  refits)
    ratios = {"embedding_knn_ratio": 2.0, "embedding_density_gap": 5.0}
    risk = trust.audit_risk(ratios, _score([full]))
    x1, x2 = (math.log(2.0) - 0.1) / 0.5, (5.0 - 1.0) / 2.0  # the density gap enters as is, the ratio as its log
    assert risk["probability"] == pytest.approx(_p(-1.0, [1.5 * x1, 0.3 * x2]), rel=1e-12)
    boot = [_p(-1.0, [c * x1, 0.3 * x2]) for c in np.linspace(0.5, 2.5, 41)]
    assert risk["low"] == pytest.approx(float(np.quantile(boot, 0.025)))
    assert risk["high"] == pytest.approx(float(np.quantile(boot, 0.975)))
    assert risk["interval_kind"] == "bootstrap over held-out rules (refits)"
    assert "study-x, M1 (embedding_knn_ratio, embedding_density_gap), 40 audits over 9 held-out rules" in \
        risk["evidence"] and "AUROC 0.81 [0.70, 0.90]" in risk["evidence"]
    assert TrustRisk(**risk).probability == risk["probability"]


def test_a_missing_feature_is_never_imputed_for_one_audit():
    full = _model("M2", ["embedding_knn_ratio", "ensemble_disagreement"], [0, 0], [1, 1], [1, 1], 0)
    fallback = _model("M2 without B4", ["embedding_knn_ratio"], [0], [1], [2], 0)
    risk = trust.audit_risk({"embedding_knn_ratio": 1.5}, _score([full, fallback]))
    assert risk["model"] == "M2 without B4" and risk["features_missing"] == ["ensemble_disagreement"]
    assert risk["probability"] == pytest.approx(_p(0, [2 * math.log(1.5)]))
    risk = trust.audit_risk({"embedding_knn_ratio": -1.0}, _score([fallback]))  # no log of a negative ratio
    assert risk["probability"] is None and "cannot be applied" in risk["note"]
    assert risk["low"] is None and risk["high"] is None


def test_no_adopted_score_means_no_risk(tmp_path, monkeypatch):
    monkeypatch.setattr(trust, "TRUST_FILE", tmp_path / "missing.json")
    trust.adopted_score.cache_clear()
    try:
        assert trust.audit_risk({"embedding_knn_ratio": 1.2}) is None
        (tmp_path / "missing.json").write_text("{not json")
        trust.adopted_score.cache_clear()
        assert trust.audit_risk({"embedding_knn_ratio": 1.2}) is None
    finally:
        trust.adopted_score.cache_clear()


def test_the_shipped_score_says_what_it_rests_on():
    score = json.loads(trust.TRUST_FILE.read_text())
    assert score["kind"] == "TRAITS trust score" and score["models"]
    ev = score["evidence"]
    assert ev["n_audits"] >= 150 and ev["n_rules"] >= 25
    assert 0 < ev["loro_auroc"]["low"] <= ev["loro_auroc"]["auroc"] <= ev["loro_auroc"]["high"] < 1
    assert all(len(m["refits"]) >= 100 for m in score["models"])
    # the score's features are label-free ratios: nothing that needs the OOD labels
    labelled = {"mae_ratio", "rmse_ratio", "loss_ratio", "lambda_ratio", "trace_ratio", "nonconvexity_ratio"}
    assert not labelled & {f for m in score["models"] for f in m["features"]}


def test_an_audit_result_carries_the_risk_and_round_trips(tmp_path):
    from result_factory import make_result  # noqa: PLC0415

    result = make_result()
    result.trust_risk = TrustRisk(probability=0.3, low=0.1, high=0.5, study_version="s", evidence="e")
    path = tmp_path / "results.json"
    result.write(path)
    again = AuditResult.model_validate_json(path.read_text())
    assert again.trust_risk == result.trust_risk


@pytest.mark.skipif(not V1_RUNS.is_dir(), reason="study-1 results not in this checkout")
def test_the_trust_score_command_makes_a_score_from_study_results(tmp_path, monkeypatch):
    from traits.study.cli import make_trust_score

    installed = tmp_path / "installed-trust-score.json"
    monkeypatch.setattr(trust, "TRUST_FILE", installed)

    runs, second = tmp_path / "runs", tmp_path / "second"
    # every seed-0 audit of study 1: 56 tasks, 25 held-out rules; three of them also as a "second pass"
    for i, f in enumerate(sorted((V1_RUNS / "seed-0").glob("*/results.json"))):
        for where in (runs, second) if i < 3 else (runs,):
            (where / "seed-0" / f.parent.name).mkdir(parents=True)
            (where / "seed-0" / f.parent.name / "results.json").write_bytes(f.read_bytes())
    with open(tmp_path / "log", "w") as log:
        path = make_trust_score(Console(file=log, width=400), [runs], tmp_path / "out", external=[],
                                study_version="test-study", n_boot=200, adopt=True, labelled=[second])
    text = (tmp_path / "log").read_text()
    # 200 resamples and one seed per task: a pipeline check, so --adopt installs nothing
    assert not installed.exists() and "trust score not adopted: a pipeline check" in text
    assert "labelled signals from the second pass on 3 of 56 audits" in text  # the audits matched, no more
    score = json.loads(path.read_text())
    assert score["study_version"] == "test-study" and score["evidence"]["n_audits"] == 50
    assert score["models"][0]["features"] == ["embedding_knn_ratio"]  # v1 has no label-free landscape signal
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert summary.startswith("# test-study") and "embedding_knn_ratio" in summary
    gates = json.loads((tmp_path / "out" / "catalogue-evidence-label-free.json").read_text())
    assert gates["mode"] == "label-free" and gates["pipeline_check"]  # 200 resamples: not evidence
    assert "## Default gates of label-free audits" in summary
