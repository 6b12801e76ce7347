"""Default gates of label-free audits from study v2 (traits.study.v2_gates): the v1 evidence rule with the control
changed to B1, the gate-stability count across seeds, per-mode evidence files in the catalogue, and adoption."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from traits import catalogue as cat
from traits.study.stats import seed_firing
from traits.study.v2_gates import METRIC_SIGNAL, default_fails, label_free_evidence
from traits.study.v2_score import SIGNALS


def test_seed_firing_counts_tasks_by_the_seeds_beyond_the_threshold():
    rows = [{"task": "a", "v": v} for v in (3.5, 4.0, 3.1)]      # all three beyond 3
    rows += [{"task": "b", "v": v} for v in (3.5, 2.0, 1.0)]     # one
    rows += [{"task": "c", "v": v} for v in (3.5, 3.0, 9.0)]     # two (3.0 is not beyond 3)
    rows += [{"task": "d", "v": v} for v in (1.0, 1.0, 1.0)]     # none
    rows += [{"task": "e", "v": v} for v in (9.0, 9.0)]          # two seeds only: not counted
    rows += [{"task": "f", "v": v} for v in (9.0, 9.0, None)]    # a missing value: not counted
    rows += [{"task": "g", "v": 9.0, "family": "random"} for _ in range(3)]  # a random split: a false alarm
    assert seed_firing(rows, "v", threshold=3.0, direction=1.0) == {"1": 1, "2": 1, "3": 1, "n_tasks": 4}
    # smaller is worse: below the threshold fires
    assert seed_firing(rows, "v", threshold=1.5, direction=-1.0) == {"1": 1, "2": 0, "3": 1, "n_tasks": 4}


def study_rows(seed: int = 0, stable: bool = True, n_rules: int = 14) -> list[dict]:
    """Three seeds per task, two targets per held-out rule, six random-split tasks. The MAE ratio follows
    gn_lambda_ratio (L1) with a part B1 does not carry; B1 carries the rest; every other signal is noise. With
    ``stable`` the rules of largest shift have L1 ≥ 3 on every seed; without it L1 stays below 3 everywhere but on
    one seed of a task."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n_rules + 3):
        random = r >= n_rules
        shift = 0.0 if random else r / n_rules * 2.0
        for t, target in enumerate(("formation_energy_per_atom", "band_gap")):
            own = 0.0 if random else float(rng.normal(0, 0.6))
            for s in range(3):
                row = {"task": f"{'random' if random else 'rule'}-{r}-{t}", "seed": s, "target": target,
                       "rule": f"random:{r}" if random else f"element:X{r}", "family": "random" if random else
                       "element", "kind": "random" if random else "omission", "data": "mp_36738",
                       "omit": None if random else f"X{r}", "unit": "eV/atom", "status": "pass"}
                row |= {key: float(np.exp(rng.normal(0, 0.3))) for key in SIGNALS.values()}
                row["embedding_density_gap"] = float(rng.normal(0, 0.3))
                noise = float(rng.normal(0, 0.05))
                l1 = math.exp(shift * 0.6 + own + noise)
                row["gn_lambda_ratio"] = l1 if stable else min(l1, 2.9) if (r, t, s) != (n_rules - 1, 0, 0) else 3.2
                row["embedding_knn_ratio"] = math.exp(shift * 0.5 + float(rng.normal(0, 0.05)))
                row["mae_ratio"] = math.exp(shift * 0.5 + own + float(rng.normal(0, 0.05)))
                row["y"] = int(row["mae_ratio"] >= 2.0)
                rows.append(row)
    return rows


@pytest.fixture(scope="module")
def evidence():
    return label_free_evidence(study_rows(), n_boot=300, study_version="test-v2", data_set="synthetic")


def test_label_free_evidence_controls_for_b1_and_counts_seeds(evidence):
    lam, knn, sharp = (evidence["metrics"][k] for k in ("lambda_ratio", "embedding_knn_ratio", "lf_sharpness_ratio"))
    assert evidence["mode"] == "label-free" and evidence["pipeline_check"]  # 300 resamples: not the registered 2,000
    assert not evidence["in_progress"]
    assert lam["signal"] == "L1" and lam["signal_key"] == "gn_lambda_ratio"
    assert evidence["metrics"]["gn_lambda_ratio"]["rho"] == lam["rho"]  # the same signal under both names
    assert lam["rho"] > 0.8 and lam["low"] > 0 and lam["p_holm"] < 0.05
    assert lam["partial_control"]["low"] > 0  # L1 says what B1 does not
    assert lam["seed_firing"]["3"] >= 1 and lam["seed_firing"]["n_tasks"] == 28
    assert lam["noise_floor"] is not None and lam["noise_floor"] < 3.0  # 18 random-split audits near 1
    assert knn["partial_control"]["rho"] is None and knn["p_holm"] is None  # the control: no partial, not in Holm
    assert "seed_firing" not in sharp and abs(sharp["rho"]) < 0.6  # ungated noise


def test_the_rule_fails_l1_by_default_only_when_it_is_stable_across_seeds(evidence):
    real = evidence | {"pipeline_check": False}
    assert default_fails(real) == ["lambda_ratio"]  # B1 (the control) never; noise never
    assert default_fails(evidence) == []  # a pipeline check decides nothing
    assert default_fails(real | {"in_progress": True}) == []
    unstable = label_free_evidence(study_rows(stable=False), n_boot=300, study_version="t", data_set="s")
    lam = unstable["metrics"]["lambda_ratio"]
    assert lam["seed_firing"]["3"] == 0 and lam["seed_firing"]["1"] == 1
    assert lam["low"] > 0 and lam["partial_control"]["low"] > 0  # it tracks the error, yet fires on one seed only
    assert default_fails(unstable | {"pipeline_check": False}) == []


def test_an_incomplete_study_is_interim():
    rows = [r for r in study_rows() if not (r["task"] == "rule-3-0" and r["seed"] == 2)]
    assert label_free_evidence(rows, n_boot=100, study_version="t", data_set="s")["in_progress"]


def test_each_mode_reads_its_own_evidence(evidence, tmp_path, monkeypatch):
    path = tmp_path / "lf.json"
    path.write_text(json.dumps(evidence | {"pipeline_check": False}))
    monkeypatch.setattr(cat, "LABEL_FREE_EVIDENCE_FILE", path)
    cat.clear_cache()
    try:
        fails = cat.default_fail_on(mode="label-free")
        assert [n for n in fails if cat.is_predictor(cat.metric(n))] == ["lambda_ratio"]
        assert not [n for n in cat.default_fail_on(mode="labels") if cat.is_predictor(cat.metric(n))]  # its own
        text = cat.evidence_text("lambda_ratio", mode="label-free")
        assert "given the embedding kNN distance, partial ρ" in text and "test-v2" in text
        assert cat.evidence_text("lambda_ratio", mode="labels") == cat.NOT_MEASURED  # labelled: their own file
    finally:
        cat.clear_cache()


def test_without_adopted_label_free_evidence_no_predictor_fails_a_label_free_audit(tmp_path, monkeypatch):
    monkeypatch.setattr(cat, "LABEL_FREE_EVIDENCE_FILE", tmp_path / "absent.json")
    cat.clear_cache()
    try:
        assert [n for n in cat.default_fail_on(mode="label-free") if cat.is_predictor(cat.metric(n))] == []
        assert cat.evidence_text("lambda_ratio", mode="label-free") == cat.NOT_MEASURED
    finally:
        cat.clear_cache()


def test_every_gated_label_free_metric_has_its_signal_but_the_robust_radius():
    """The robust radius of the label-free surfaces is not a registered signal: it gets no label-free evidence,
    so it warns and never fails a label-free audit by default."""
    gated = {m.name for m in cat.catalogue() if m.gate_field and cat.is_predictor(m) and "label-free" in m.modes}
    assert gated - set(METRIC_SIGNAL) == {"radius_ratio"}
    assert all(METRIC_SIGNAL[k] in SIGNALS for k in METRIC_SIGNAL)


def test_the_labelled_summary_counts_seed_firing_and_the_rule_reads_it(tmp_path):
    from traits.study.summary import evidence_json, study_summary

    rows = study_rows()
    for r in rows:  # a labelled study: the labelled λ_max ratio is L1's values here
        r["lambda_ratio"], r["loss_ratio"] = r["gn_lambda_ratio"], r["embedding_knn_ratio"]
    summary = study_summary(rows, data_set="synthetic", pipeline_check=False, n_boot=200)
    ev = evidence_json(summary)
    assert ev["metrics"]["lambda_ratio"]["seed_firing"]["3"] >= 1
    assert "seed_firing" not in ev["metrics"]["sharpness_ratio"]  # no gate
    path = tmp_path / "ev.json"
    ev["metrics"]["lambda_ratio"]["seed_firing"] = {"1": 4, "2": 2, "3": 0, "n_tasks": 34}
    path.write_text(json.dumps(ev))
    try:
        m = next(x for x in cat.catalogue(path) if x.name == "lambda_ratio")
        assert m.evidence.seed_firing == (4, 2, 0)
        assert not cat.fails_by_default_from_evidence(m)
        ev["metrics"]["lambda_ratio"]["seed_firing"]["3"] = 1
        path2 = tmp_path / "ev2.json"
        path2.write_text(json.dumps(ev))
        m2 = next(x for x in cat.catalogue(path2) if x.name == "lambda_ratio")
        assert cat.fails_by_default_from_evidence(m2)  # the same evidence, stable on one task: fails
    finally:
        cat.clear_cache()


def test_adoption_installs_real_evidence_only(evidence, tmp_path, monkeypatch):
    from rich.console import Console

    from traits.study.cli import _adopt_label_free_gates

    target = tmp_path / "installed.json"
    monkeypatch.setattr(cat, "LABEL_FREE_EVIDENCE_FILE", target)
    log = tmp_path / "log"
    for name, ev in (("check.json", evidence), ("interim.json", evidence | {"pipeline_check": False,
                                                                            "in_progress": True})):
        (tmp_path / name).write_text(json.dumps(ev))
        with open(log, "w") as f:
            _adopt_label_free_gates(Console(file=f), tmp_path / name, ["lambda_ratio"])
        assert not target.exists() and "not adopted" in log.read_text()
    (tmp_path / "real.json").write_text(json.dumps(evidence | {"pipeline_check": False}))
    with open(log, "w") as f:
        _adopt_label_free_gates(Console(file=f, width=400), tmp_path / "real.json", ["lambda_ratio"])
    try:
        assert json.loads(target.read_text())["mode"] == "label-free" and "fail by default on lambda_ratio" in \
            log.read_text()
        assert [n for n in cat.default_fail_on(mode="label-free") if cat.is_predictor(cat.metric(n))] == [
            "lambda_ratio"]
    finally:
        cat.clear_cache()


def test_stability_counted_on_no_three_seed_task_is_not_counted():
    assert cat._firing({"1": 0, "2": 0, "3": 0, "n_tasks": 0}) is None
    assert cat._firing({"1": 2, "2": 1, "3": 0, "n_tasks": 9}) == (2, 1, 0)
    assert cat._firing("junk") is None


def test_the_conclusion_says_what_the_gates_decide(evidence):
    from traits.study.v2_render import _conclusion_gates

    check = {"label_free_gates": {"evidence": evidence, "default_fails": []}}
    assert _conclusion_gates(check) == [
        "Default gates of label-free audits: a pipeline check, not evidence, so they decide nothing."]
    real = {"label_free_gates": {"evidence": evidence | {"pipeline_check": False}, "default_fails": ["lambda_ratio"]}}
    assert _conclusion_gates(real) == ["Adopted, this study makes label-free audits fail by default on lambda_ratio."]
    assert _conclusion_gates({}) == []  # an analysis without the gate block (written before it) says nothing


def test_the_gates_table_and_conclusion_say_why_a_tracking_metric_only_warns(evidence):
    """Each gated row states what the rule makes of it (catalogue.default_fail_reasons); a metric that misses only
    the seed condition is named in the conclusion."""
    from traits.study.v2_markdown import gates_block
    from traits.study.v2_render import _conclusion_gates

    stable = {"label_free_gates": {"evidence": evidence | {"pipeline_check": False}, "default_fails": ["lambda_ratio"]}}
    rows = {r["name"]: r["decides"] for r in gates_block(stable)["rows"]}
    assert rows["lambda_ratio"] == "fails" and rows["embedding_knn_ratio"] == "the control (B1): warns"
    assert rows["lf_sharpness_ratio"] == "no gate"
    unstable = label_free_evidence(study_rows(stable=False), n_boot=300, study_version="t", data_set="s")
    shaky = {"label_free_gates": {"evidence": unstable | {"pipeline_check": False}, "default_fails": []}}
    rows = {r["name"]: r["decides"] for r in gates_block(shaky)["rows"]}
    assert rows["lambda_ratio"] == "warns: " + cat.UNSTABLE
    said = _conclusion_gates(shaky)[0]
    assert "no landscape or distance metric" in said and "lambda_ratio" in said and "no task" in said
