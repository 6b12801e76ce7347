"""Study v2's registered analysis (traits.study.v2, v2_stats, v2_score): AUROC, cluster bootstrap, nested
leave-one-rule-out, the trust score and predict_risk, row extraction from real v1 results, B4."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from traits.study import v2_stats
from traits.study.v2 import SIGNALS, analyse, ensemble_disagreement, external_test, rows_from_results, write_summary
from traits.study.v2_score import B4_KEY, design, fit_logistic, loro_oof, nested_loro, predict_risk, trust_score
from traits.study.v2_stats import auroc, auroc_interval, calibration, delta_auroc, swap_permutation_p

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "docs" / "study" / "runs-mp-partial"
LABEL_FREE = ("gn_lambda_ratio", "gn_trace_ratio", "grad_norm_ratio", "lf_sharpness_ratio", "lf_smad_ratio",
              "lf_persistence_ratio", "embedding_density_gap", "ensemble_disagreement")


def synth_rows(n_rules: int = 12, per_rule: int = 5, seed: int = 0, determined: bool = True) -> list[dict]:
    """Omission rows; when ``determined``, gn_trace_ratio (L2) = exp(z) and Y = [z ≥ 0.3] exactly; every other
    signal is noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n_rules):
        for k in range(per_rule):
            z = float(rng.normal())
            row = {"task": f"t{r}-{k % 2}", "seed": k, "target": ("formation_energy_per_atom", "band_gap")[k % 2],
                   "rule": f"element:X{r}", "kind": "omission", "family": "element"}
            row |= {key: float(np.exp(rng.normal())) for key in SIGNALS.values()}
            row["embedding_density_gap"] = float(rng.normal())
            if determined:
                row["gn_trace_ratio"] = math.exp(z)
                row["mae_ratio"] = 2.0 * math.exp(z - 0.3)
            else:
                row["mae_ratio"] = 2.0 * math.exp(float(rng.normal()) - 0.4)
            row["y"] = int(row["mae_ratio"] >= 2.0)
            rows.append(row)
    return rows


@pytest.fixture(scope="module")
def determined_analysis():
    return analyse(synth_rows(), n_boot=200, n_perm=200, n_refits=40)


# ----------------------------------------------------------------------------------------------
# AUROC and its intervals


def test_auroc_equals_sklearn_on_random_data_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    for trial in range(20):
        n = int(rng.integers(5, 80))
        y = rng.integers(0, 2, n)
        y[0], y[1] = 0, 1
        s = rng.normal(size=n) + y * rng.uniform(0, 2)
        if trial % 2:
            s = np.round(s, 0)  # many ties
        assert auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auroc_ties_count_one_half_and_one_class_is_undefined():
    assert auroc([1.0, 1.0], [0, 1]) == 0.5
    assert auroc([0.0, 1.0, 1.0], [0, 0, 1]) == 0.75
    assert auroc([3.0, 2.0, 1.0], [1, 0, 0]) == 1.0
    assert auroc([3.0, 2.0, 1.0], [0, 0, 0]) is None


def test_cluster_bootstrap_resamples_whole_rules(monkeypatch):
    """Every resample is a union of whole rules: with row resampling the members of a rule would be drawn
    different numbers of times and this fails."""
    seen = []
    real = v2_stats.auroc

    def recording(scores, labels):
        seen.append(np.asarray(scores).copy())
        return real(scores, labels)

    monkeypatch.setattr(v2_stats, "auroc", recording)
    rules = np.repeat(np.arange(8), 6)
    y = np.tile([0, 1, 0, 1, 1, 0], 8)
    scores = np.arange(len(rules), dtype=float)  # the score identifies its row
    got = auroc_interval(scores, y, rules, n_boot=50, seed=0)
    assert got["n_clusters"] == 8 and got["low"] is not None
    assert len(seen) == 51
    for draw in seen[1:]:
        counts = np.bincount(draw.astype(int), minlength=len(rules))
        for r in range(8):
            assert len(set(counts[rules == r].tolist())) == 1, "a rule was split by the resample"
        assert counts.sum() == len(rules)


def test_cluster_bootstrap_is_wider_than_row_bootstrap_when_rules_are_homogeneous():
    """Rules whose audits agree: 10 effective units, not 100, so the interval is wide."""
    rng = np.random.default_rng(2)
    rules = np.repeat(np.arange(10), 10)
    rule_score = rng.normal(size=10)
    y = np.repeat((rule_score + rng.normal(scale=1.5, size=10) > 0).astype(int), 10)
    s = np.repeat(rule_score, 10) + rng.normal(scale=1e-3, size=100)
    by_rule = auroc_interval(s, y, rules, n_boot=300, seed=0)
    by_row = auroc_interval(s, y, np.arange(100), n_boot=300, seed=0)
    assert 0.5 < by_rule["auroc"] < 1
    assert by_rule["high"] - by_rule["low"] > 2 * (by_row["high"] - by_row["low"])


def test_delta_auroc_is_paired_and_permutation_p_has_the_right_side():
    rng = np.random.default_rng(3)
    rules = np.repeat(np.arange(15), 4)
    y = rng.integers(0, 2, 60)
    good = y + rng.normal(scale=0.3, size=60)
    noise = rng.normal(size=60)
    same = delta_auroc(noise, noise, y, rules, n_boot=100, n_perm=100)
    assert same["delta"] == 0 and same["low"] == 0 and same["high"] == 0
    better = delta_auroc(good, noise, y, rules, n_boot=200, n_perm=200)
    assert better["low"] > 0 and better["p"] < 0.05
    assert swap_permutation_p(noise, good, y, rules, n_perm=200) > 0.5


def test_calibration_bins_brier_and_slope():
    p = np.linspace(0.05, 0.95, 20)
    y = (np.arange(20) % 2).astype(float)
    cal = calibration(p, y)
    assert [b["n"] for b in cal["bins"]] == [4] * 5
    assert cal["brier"] == pytest.approx(float(np.mean((p - y) ** 2)))
    rng = np.random.default_rng(0)
    q = rng.uniform(0.02, 0.98, 4000)
    assert calibration(q, (rng.random(4000) < q).astype(float))["slope"] == pytest.approx(1.0, abs=0.15)


# ----------------------------------------------------------------------------------------------
# The trust score


def test_fit_logistic_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(2)
    x = rng.normal(size=(120, 4))
    y = (x @ [1.0, -0.5, 0.0, 2.0] + rng.normal(size=120) > 0).astype(float)
    for C in (0.01, 1.0, 10.0):
        coef, intercept = fit_logistic(x, y, C)
        ref = LogisticRegression(C=C, tol=1e-10, max_iter=10000).fit(x, y)
        assert np.allclose(coef, ref.coef_[0], atol=1e-5) and intercept == pytest.approx(ref.intercept_[0], abs=1e-5)


def test_loro_has_no_leakage_from_the_held_out_rule():
    rows = synth_rows(n_rules=8, per_rule=5, seed=4)
    x_by = {"M0": design(rows, ["embedding_knn_ratio"]),
            "M1": design(rows, ["embedding_knn_ratio", "gn_trace_ratio", "embedding_density_gap"])}
    y = np.array([r["y"] for r in rows], float)
    groups = np.array([r["rule"] for r in rows], dtype=object)
    held = groups == "element:X3"
    flipped = y.copy()
    flipped[held] = 1 - flipped[held]
    for C in (0.1, 10.0):
        a, b = loro_oof(x_by["M1"], y, groups, C), loro_oof(x_by["M1"], flipped, groups, C)
        assert np.array_equal(a[held], b[held]) and not np.allclose(a[~held], b[~held])
    a, b = nested_loro(x_by, y, groups), nested_loro(x_by, flipped, groups)
    assert np.array_equal(a["oof"][held], b["oof"][held])
    assert a["folds"][3] == b["folds"][3]


def test_trust_score_finds_the_signal_that_determines_y(determined_analysis):
    t = determined_analysis["trust_score"]
    score = t["score"]
    assert t["loro_auroc"]["auroc"] > 0.9
    assert score["candidate"] in ("M1", "M2") and score["ships_as_default"]
    assert t["delta_auroc_over_M0"]["low"] > 0
    assert score["evidence"]["loro_auroc"] == t["loro_auroc"]  # the selection ships: its AUROC is the evidence
    model = score["models"][0]
    coefs = dict(zip(model["features"], np.abs(model["coef"])))
    assert max(coefs, key=coefs.get) == "gn_trace_ratio"
    assert score["evidence"]["goal_reached"] and score["evidence"]["n_rules"] == 12
    assert json.loads(json.dumps(score)) == score  # plain JSON
    # M0 ships last as the fallback where the candidate's signals are not measured, with its own evidence
    fallback = score["models"][-1]
    assert fallback["name"] == "M0" and fallback["features"] == ["embedding_knn_ratio"]
    assert fallback["evidence"]["loro_auroc"] == t["per_candidate_loro_auroc"]["M0"]
    assert [m["name"] for m in score["models"]].count("M0") == 1


def test_the_m0_fallback_gives_its_own_risk_and_evidence(determined_analysis):
    from traits.trust import audit_risk, evidence_text

    t = determined_analysis["trust_score"]
    score = t["score"]
    only_b1 = audit_risk({"embedding_knn_ratio": 1.7}, score)
    assert only_b1["model"] == "M0" and only_b1["candidate"] == score["candidate"]
    assert "without" in only_b1["note"] and "gn_trace_ratio" in only_b1["features_missing"]
    m0 = t["per_candidate_loro_auroc"]["M0"]
    assert f"AUROC {m0['auroc']:.2f}" in only_b1["evidence"] and "fallback" in only_b1["evidence"]
    shipped = f"AUROC {t['loro_auroc']['auroc']:.2f}"
    assert shipped in evidence_text(score) and evidence_text(score) != only_b1["evidence"]
    # the fallback's probability is its own logistic model's
    m = score["models"][-1]
    z = (math.log(1.7) - m["means"][0]) / m["sds"][0]
    assert only_b1["probability"] == pytest.approx(1 / (1 + math.exp(-(m["coef"][0] * z + m["intercept"]))))


def test_trust_score_on_noise_ships_m0():
    rows = synth_rows(n_rules=12, per_rule=5, seed=7, determined=False)
    available = [s for s in SIGNALS if s != "B4"]
    t = trust_score(rows, available, n_boot=200, n_refits=20)
    assert t["score"]["candidate"] == "M0" and not t["score"]["ships_as_default"]
    assert not (t["delta_auroc_over_M0"]["low"] or 0) > 0
    assert t["score"]["models"][0]["features"] == ["embedding_knn_ratio"]
    assert len(t["score"]["models"]) == 1  # M0 ships: no fallback to add
    assert "did not beat" in t["score"]["statement"]


def test_when_m0_ships_in_place_of_the_selection_its_evidence_is_m0s_own(monkeypatch):
    """The selection may choose M1 or M2 in every fold and still not beat M0 (Δ interval reaching 0): M0 then
    ships, and the evidence it carries is M0's own nested-LORO AUROC, not the selection's."""
    from traits.study import v2_score

    def no_gain(*a, **k):
        return {"delta": 0.01, "low": -0.05, "high": 0.07, "n_audits": 60, "n_clusters": 12}

    monkeypatch.setattr(v2_score, "delta_auroc", no_gain)
    t = trust_score(synth_rows(), list(SIGNALS), n_boot=100, n_refits=10)
    score = t["score"]
    assert score["candidate"] == "M0" and not score["ships_as_default"] and score["selected_candidate"] != "M0"
    m0, selection = t["per_candidate_loro_auroc"]["M0"], t["loro_auroc"]
    assert selection["auroc"] > 0.9 and m0["auroc"] < 0.8  # L2 determines Y; B1 is noise
    assert score["evidence"]["loro_auroc"] == m0 and score["evidence"]["selection_loro_auroc"] == selection
    assert score["evidence"]["loro_auroc_of"] == "M0's own nested-LORO out-of-fold predictions"
    from traits.trust import evidence_text

    assert f"AUROC {m0['auroc']:.2f}" in evidence_text(score)


def test_predict_risk_with_missing_features():
    rows = synth_rows(n_rules=10, per_rule=5, seed=5)
    t = trust_score(rows, list(SIGNALS), n_boot=50, n_refits=30)
    score = t["score"]
    score = {**score, "models": [dict(m) for m in score["models"]]}
    full = next(m for m in t["score"]["models"] if B4_KEY in m["features"]) if score["candidate"] == "M2" else None
    ratios = {k: v for k, v in rows[0].items() if k in SIGNALS.values()}
    got = predict_risk(score, ratios)
    assert 0 <= got["probability"] <= 1 and got["features_missing"] == []
    assert got["low"] <= got["high"] and got["interval_kind"] == "bootstrap over held-out rules (refits)"
    none = predict_risk(score, {})
    assert none["probability"] is None and set(none["features_missing"]) == set(score["models"][0]["features"])
    assert "cannot be applied" in none["note"]
    bad = predict_risk(score, {**ratios, "embedding_knn_ratio": -1.0})  # a ratio ≤ 0 has no log
    assert bad["probability"] is None and "embedding_knn_ratio" in bad["features_missing"]
    if full is not None:  # M2 ships with a fallback without B4
        no_b4 = predict_risk(score, {k: v for k, v in ratios.items() if k != B4_KEY})
        assert no_b4["probability"] is not None and no_b4["features_missing"] == [B4_KEY]
        assert no_b4["model"].endswith("without B4")
    hand = {"candidate": "M2", "models": [
        {"name": "M2", "features": ["embedding_knn_ratio", B4_KEY], "means": [0, 0], "sds": [1, 1], "coef": [1, 1],
         "intercept": 0.0, "refits": []},
        {"name": "M2 without B4", "features": ["embedding_knn_ratio"], "means": [0], "sds": [1], "coef": [1.0],
         "intercept": 0.0, "refits": []}]}
    got = predict_risk(hand, {"embedding_knn_ratio": math.e})
    assert got["probability"] == pytest.approx(1 / (1 + math.exp(-1))) and got["model"] == "M2 without B4"
    assert got["features_missing"] == [B4_KEY] and got["low"] is None


def test_external_test_flags_few_clusters_as_weak(determined_analysis):
    other = synth_rows(n_rules=6, per_rule=4, seed=11)
    got = external_test(determined_analysis["trust_score"]["score"], other, n_boot=100)
    assert got["weak"] and got["n_clusters"] == 6 and got["n_scored"] == 24
    assert got["auroc"]["auroc"] > 0.8


# ----------------------------------------------------------------------------------------------
# Rows, B4, the summary


def test_rows_from_real_v1_results():
    paths = [RUNS / "seed-0" / t / "results.json" for t in
             ("enthalpy-element-Fe", "gap-element-Fe", "enthalpy-row-2", "enthalpy-random-15pct")]
    rows = rows_from_results(paths, b4={"gap-element-Fe": 1.7})
    by = {r["task"]: r for r in rows}
    assert [by[t]["target"] for t in ("enthalpy-element-Fe", "gap-element-Fe")] == [
        "formation_energy_per_atom", "band_gap"]
    assert by["enthalpy-element-Fe"]["rule"] == by["gap-element-Fe"]["rule"] == "element:Fe"
    assert by["enthalpy-row-2"]["rule"] == "row:2" and by["enthalpy-row-2"]["family"] == "row"
    assert by["enthalpy-random-15pct"]["kind"] == "random" and by["enthalpy-random-15pct"]["rule"] == "random:0.15"
    for r in rows:
        raw = json.loads(Path(RUNS / "seed-0" / r["task"] / "results.json").read_text())
        assert r["mae_ratio"] == pytest.approx(raw["ratios"]["mae_ratio"])
        assert r["y"] == int(raw["ratios"]["mae_ratio"] >= 2.0)
        assert r["embedding_knn_ratio"] == pytest.approx(raw["ratios"]["embedding_knn_ratio"])
        assert r["seed"] == 0
        for key in LABEL_FREE:
            if not (key == B4_KEY and r["task"] == "gap-element-Fe"):
                assert r[key] is None, key
    assert by["enthalpy-row-2"]["y"] == 1 and by["enthalpy-element-Fe"]["kind"] == "omission"
    assert by["gap-element-Fe"][B4_KEY] == 1.7


def test_ensemble_disagreement_hand_example():
    preds = {0: {"a": 1.0, "b": 0.0, "c": 5.0, "x": 9.0},
             1: {"a": 3.0, "b": 0.0, "c": 5.0, "x": 0.0},
             2: {"a": 2.0, "b": 0.0, "c": 5.0}}
    # ID a, b: sds sqrt(2/3) and 0 -> mean sqrt(2/3)/2; OOD c, x: x not predicted by seed 2 -> only c, sd 0
    assert ensemble_disagreement(preds, ["a", "b"], ["c", "x"]) == 0.0
    preds[0]["c"], preds[1]["c"], preds[2]["c"] = 0.0, 3.0, 6.0  # sd sqrt(6)
    got = ensemble_disagreement(preds, ["a", "b"], ["c", "x"])
    assert got == pytest.approx(math.sqrt(6) / (math.sqrt(2 / 3) / 2))
    assert ensemble_disagreement(preds, ["b"], ["c"]) is None  # no ID disagreement
    assert ensemble_disagreement({0: preds[0]}, ["a"], ["c"]) is None
    assert ensemble_disagreement(preds, ["zz"], ["c"]) is None


def test_analyse_and_write_summary(tmp_path, determined_analysis):
    a = determined_analysis
    assert a["sample"]["n_omission_audits"] == 60 and a["deviations"] == []
    assert a["auroc"]["L2"]["auroc"] == 1.0 and a["auroc"]["L2"]["n_clusters"] == 12
    assert a["auroc"]["L2"]["delta_vs_B1"]["p_holm"] is not None
    assert a["spearman"]["pooled"]["L2"]["rho"] > 0.9
    assert set(a["spearman"]) == {"pooled", "band_gap", "formation_energy_per_atom"}
    assert a["landscaper_claim"]["labelled"]["supported"] is None
    assert "label-free SMAD" in a["landscaper_claim"]["label-free"]["answer"]
    rows = [dict(r) for r in a["rows"]]
    rows[0]["task"] = "evil|*task*"
    written = write_summary({**a, "rows": rows}, tmp_path)
    assert set(written) == {"json", "md", "html", "pdf"}
    assert json.loads((tmp_path / "summary.json").read_text())["study_version"] == "study-2"
    md = (tmp_path / "summary.md").read_text()
    assert r"evil\|\*task\*" in md and "evil|*task*" not in md
    m0 = a["trust_score"]["per_candidate_loro_auroc"]["M0"]["auroc"]
    beside = f"M0 (embedding_knn_ratio): fallback where {a['trust_score']['score']['candidate']}'s signals are not"
    assert f"- beside it: {beside}" in md and f"LORO AUROC {m0:.2f}" in md  # the shipped fallback, named
    assert "Beside it: M0 (embedding_knn_ratio): fallback where" in (tmp_path / "summary.html").read_text()


def test_excluded_signal_enters_no_comparison():
    rows = synth_rows(n_rules=10, per_rule=4, seed=9)
    for r in rows[:6]:  # 15 % undefined
        r["grad_norm_ratio"] = None
    a = analyse(rows, n_boot=50, n_perm=50, n_refits=5)
    assert a["signals"]["L3"]["excluded"] and a["signals"]["L3"]["n_defined"] == 34
    assert a["auroc"]["L3"]["auroc"] is not None and a["auroc"]["L3"]["delta_vs_B1"] is None
    assert "grad_norm_ratio" not in a["trust_score"]["features"]["M2"]
    assert a["spearman"]["pooled"]["L3"]["p_holm"] is None


def test_second_pass_labelled_signals_join_the_first_pass_rows():
    from traits.errors import TraitsError
    from traits.study.v2 import merge_labelled

    first = [{"task": "t1", "seed": 0, "mae_ratio": 2.5, "loss_ratio": 3.0, "gn_trace_ratio": 1.2},
             {"task": "t1", "seed": 1, "mae_ratio": 1.5, "loss_ratio": 1.1},
             {"task": "t2", "seed": 0, "mae_ratio": 1.0, "loss_ratio": 0.9}]
    second = [{"task": "t1", "seed": 0, "mae_ratio": 2.5 * (1 + 1e-9), "loss_ratio": 3.0, "lambda_ratio": 4.0,
               "trace_ratio": 5.0, "smad_ratio": 0.7, "gn_trace_ratio": 99.0},
              {"task": "t2", "seed": 1, "mae_ratio": 1.0, "lambda_ratio": 8.0}]  # no first-pass twin: ignored
    got = merge_labelled(first, second)
    assert got[0] == first[0] | {"lambda_ratio": 4.0, "trace_ratio": 5.0, "smad_ratio": 0.7}  # label-free kept
    assert got[1] == first[1] and got[2] == first[2] and len(got) == 3
    with pytest.raises(TraitsError, match="t1 seed 0: the second pass's MAE ratio .* provenance.kernels"):
        merge_labelled(first, [second[0] | {"mae_ratio": 2.6}])
