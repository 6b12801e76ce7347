"""The study statistics against cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from traits.study import stats


def _rows(errors, values, tasks, family="element", **extra):
    rows = []
    for e, v, t in zip(errors, values, tasks):
        rows.append({"task": t, "family": family, "mae_ratio": e, "m": v,
                     **{k: x[len(rows)] for k, x in extra.items()}})
    return rows


def test_monotone_data_gives_rho_one_with_a_tight_interval():
    x = np.arange(1, 13, dtype=float)
    rows = _rows(x, x ** 2, [f"t{i}" for i in range(12)])
    got = stats.metric_statistics(rows, "m", n_boot=300, controls={})
    assert got["rho"] == pytest.approx(1.0)
    assert got["low"] == pytest.approx(1.0) and got["high"] == pytest.approx(1.0)
    assert got["p"] == pytest.approx(1 / 301)  # no permutation of 12 tasks beats it: the smallest p of 300
    assert got["n_tasks"] == 12


def test_independent_noise_interval_covers_zero():
    rng = np.random.default_rng(3)
    n = 40
    rows = _rows(rng.normal(size=n), rng.normal(size=n), [f"t{i}" for i in range(n)])
    got = stats.metric_statistics(rows, "m", n_boot=500, controls={})
    assert got["low"] < 0 < got["high"]
    assert got["p"] > 0.05


def test_holm_on_known_p_values():
    adj = stats.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": None})
    # sorted 0.01, 0.03, 0.04 -> 3*0.01, max(0.03, 2*0.03), max(0.06, 1*0.04)
    assert adj["a"] == pytest.approx(0.03)
    assert adj["c"] == pytest.approx(0.06)
    assert adj["b"] == pytest.approx(0.06)
    assert adj["d"] is None
    assert stats.holm({"x": 0.6, "y": 0.7}) == {"x": 1.0, "y": 1.0}


def test_cluster_bootstrap_is_wider_than_naive_on_duplicated_seeds():
    """Three identical 'seeds' per task: the naive bootstrap treats 3n points as independent and is too
    narrow; clustering by task gives the interval of the n distinct tasks."""
    rng = np.random.default_rng(0)
    n = 10
    e = rng.normal(size=n)
    v = 0.5 * e + rng.normal(size=n)
    tasks = [f"t{i}" for i in range(n)]
    dup = _rows(np.repeat(e, 3), np.repeat(v, 3), np.repeat(tasks, 3))
    x = np.array([r["m"] for r in dup])
    y = np.array([r["mae_ratio"] for r in dup])
    stat = lambda i: stats.spearman(x[i], y[i])  # noqa: E731
    clustered = stats.cluster_bootstrap(stat, len(dup), [r["task"] for r in dup], n_boot=800)
    naive = stats.cluster_bootstrap(stat, len(dup), list(range(len(dup))), n_boot=800)
    single = stats.cluster_bootstrap(lambda i: stats.spearman(v[i], e[i]), n, tasks, n_boot=800)
    assert clustered["n_clusters"] == n and naive["n_clusters"] == 3 * n
    width = lambda b: b["high"] - b["low"]  # noqa: E731
    assert width(naive) < 0.8 * width(clustered)
    assert width(clustered) == pytest.approx(width(single), rel=0.35)
    # the statistics use the task means: duplicating seeds changes nothing
    on_dup = stats.metric_statistics(dup, "m", n_boot=400, controls={})
    on_one = stats.metric_statistics(_rows(e, v, tasks), "m", n_boot=400, controls={})
    assert on_dup["n_audits"] == 3 * n and on_dup["n_tasks"] == n
    assert {k: on_dup[k] for k in ("rho", "low", "high", "p")} == {k: on_one[k] for k in ("rho", "low", "high", "p")}


def test_permutation_p_matches_the_exact_one_sided_spearman_test():
    """Tasks of their own cluster: the p is the permutation test of Spearman ρ, checked against scipy's
    exact enumeration of all 8! pairings, in the expected direction and against it."""
    from itertools import permutations

    from scipy.stats import rankdata

    rng = np.random.default_rng(7)
    x = rng.normal(size=8)
    y = 0.6 * x + rng.normal(size=8)
    got = stats.cluster_permutation_p(x, y, range(8), [""] * 8, n_perm=6000, seed=1)
    rx, ry = rankdata(x), rankdata(y)
    every = rx[np.array(list(permutations(range(8))))]               # all 40,320 pairings
    rhos = np.array([np.corrcoef(r, ry)[0, 1] for r in every])
    exact = float(np.mean(rhos >= np.corrcoef(rx, ry)[0, 1] - 1e-12))
    assert 0.01 < exact < 0.3  # a case where the answer is neither trivial nor at the resolution limit
    assert got == pytest.approx(exact, abs=4 * math.sqrt(exact * (1 - exact) / 6000) + 1 / 6000)
    against = stats.cluster_permutation_p(x, y, range(8), [""] * 8, sign=-1.0, n_perm=6000, seed=1)
    assert against > 0.7  # ρ > 0 is no evidence for a metric whose smaller values should mean larger errors


def test_tasks_that_hold_out_the_same_compounds_count_once():
    """Two targets per held-out rule with twin values: clustered by rule, the interval and p are those of
    the 9 rules (not 18 independent tasks), so the copies do not make the evidence look stronger."""
    rng = np.random.default_rng(7)
    n = 9
    e = rng.normal(size=n)
    v = 0.8 * e + rng.normal(size=n)
    twins = [{"task": f"{t}-r{i}", "rule": f"element:r{i}", "target": t, "family": "element",
              "mae_ratio": e[i], "m": v[i] + (0.001 if t == "gap" else 0.0)} for i in range(n) for t in ("enth", "gap")]
    naive = [dict(r, rule=None) for r in twins]   # each task its own cluster
    single = [{"task": f"r{i}", "family": "element", "mae_ratio": e[i], "m": v[i]} for i in range(n)]
    got = {name: stats.metric_statistics(rows, "m", n_boot=3000, controls={})
           for name, rows in (("twins", twins), ("naive", naive), ("single", single))}
    assert got["twins"]["n_clusters"] == n and got["naive"]["n_clusters"] == 2 * n
    assert 0.01 < got["single"]["p"] < 0.1
    assert got["twins"]["p"] == pytest.approx(got["single"]["p"], abs=0.01)
    assert got["naive"]["p"] < 0.3 * got["twins"]["p"]
    width = {k: g["high"] - g["low"] for k, g in got.items()}
    assert width["twins"] == pytest.approx(width["single"], rel=0.25) and width["naive"] < 0.85 * width["twins"]


def test_a_task_rule_ignores_target_and_seed():
    from tests.result_factory import make_result
    from traits.campaign import held_out_rule, summary_row

    fe = make_result()
    assert held_out_rule(fe) == "element:Fe"
    assert held_out_rule(make_result(target="band_gap", omit=["Fe"])) == held_out_rule(fe)
    assert held_out_rule(make_result(omit=["O"])) == "element:O"
    rnd = make_result(omit=[], spec={**fe.spec, "omit": [], "split": {"ood_fraction": 0.15}})
    assert held_out_rule(rnd) == "random:0.15"
    # split scheme 1 nested every share of a seed in one partition: one cluster for all of them
    old = rnd.model_copy(update={"provenance": rnd.provenance.model_copy(update={"split_scheme": 1})})
    assert held_out_rule(old) == "random:nested"
    assert summary_row("enthalpy-element-Fe", fe)["rule"] == "element:Fe"


def test_partial_spearman_removes_a_confounder():
    rng = np.random.default_rng(1)
    z = rng.normal(size=200)
    x = z + 0.1 * rng.normal(size=200)
    y = z + 0.1 * rng.normal(size=200)
    assert stats.spearman(x, y) > 0.9
    assert abs(stats.partial_spearman(x, y, [z])) < 0.2


def test_partial_spearman_is_undefined_when_a_control_explains_a_variable():
    """A variable that is a monotone function of the control leaves residuals at rounding level, whose
    'correlation' is a random sign; it must read as undefined, not as ρ = ±1."""
    rng = np.random.default_rng(3)
    z = rng.normal(size=12)
    y = rng.normal(size=12)
    assert stats.partial_spearman(np.exp(z), y, [z]) is None
    assert stats.partial_spearman(y, -z ** 3, [z]) is None
    ok = stats.partial_spearman(y + 0.5 * z, y, [z])
    assert ok is not None and ok > 0.8


def test_noise_floor_and_versus_baseline_and_study_block():
    rng = np.random.default_rng(2)
    rows = []
    for t in range(8):
        err = 1.0 + t
        for s in range(3):
            rows.append({"task": f"e{t}", "family": "element", "mae_ratio": err + 0.01 * s,
                         "lambda_ratio": err * 2 + 0.01 * s, "embedding_knn_ratio": rng.normal(),
                         "loss_ratio": err + rng.normal(), "target_wasserstein_ratio": rng.normal()})
    for t in range(3):
        for s in range(3):
            rows.append({"task": f"r{t}", "family": "random", "mae_ratio": 1.0 + 0.05 * rng.normal(),
                         "lambda_ratio": 1.3 + 0.01 * s, "embedding_knn_ratio": 1.0, "loss_ratio": 1.0,
                         "target_wasserstein_ratio": 1.0})
    kinds = {"lambda_ratio": "landscape", "embedding_knn_ratio": "distance baseline",
             "loss_ratio": "error at θ (reference)"}
    out = stats.study_statistics(rows, ["lambda_ratio", "embedding_knn_ratio", "loss_ratio"], kinds=kinds,
                                 signs={}, n_boot=200)
    floor = out["noise_floor"]["lambda_ratio"]
    assert floor["n"] == 9 and floor["share_above_neutral"] == 1.0 and floor["median"] == pytest.approx(1.31)
    assert floor["neutral"] == 1.0 and not floor["enough"]  # 9 random-split audits: below MIN_FLOOR_AUDITS
    assert out["overall"]["lambda_ratio"]["rho"] > 0.8
    assert out["overall"]["lambda_ratio"]["p_holm"] >= out["overall"]["lambda_ratio"]["p"]
    assert out["vs_best_baseline"]["baseline"] == "embedding_knn_ratio"
    vs = out["vs_best_baseline"]["metrics"]["lambda_ratio"]
    assert vs["diff"] > 0 and vs["low"] is not None
    assert out["per_family"]["element"]["metrics"]["lambda_ratio"]["rho"] == pytest.approx(1.0)
    assert out["per_family"]["random"]["metrics"] is None
    assert set(out["overall"]["lambda_ratio"]["partial"]) == {"loss", "target_shift", "all"}


def test_a_noise_floor_needs_enough_audits_and_its_metric_s_own_neutral_value():
    """A difference (OOD − ID) sits at 0 on random splits, a ratio at 1: the share 'above' is counted from each
    metric's own neutral value, and a floor read from fewer than MIN_FLOOR_AUDITS audits is marked not enough."""
    rng = np.random.default_rng(4)
    rows = [{"task": f"r{i}", "family": "random", "mae_ratio": 1.0 + 0.02 * rng.normal(),
             "entropy_ood_minus_id": 0.05 + 0.01 * rng.normal(), "lambda_ratio": 0.9 + 0.01 * rng.normal()}
            for i in range(stats.MIN_FLOOR_AUDITS)]
    rows.append({"task": "e0", "family": "element", "mae_ratio": 3.0, "entropy_ood_minus_id": -5.0,
                 "lambda_ratio": 9.0})
    out = stats.noise_floor(rows, ["entropy_ood_minus_id", "lambda_ratio"],
                            neutral={"entropy_ood_minus_id": 0.0})
    ent, lam = out["entropy_ood_minus_id"], out["lambda_ratio"]
    assert ent["neutral"] == 0.0 and ent["share_above_neutral"] == 1.0 and ent["enough"]
    assert lam["neutral"] == 1.0 and lam["share_above_neutral"] == 0.0 and lam["n"] == stats.MIN_FLOOR_AUDITS
    few = stats.noise_floor(rows[1:], ["lambda_ratio"])["lambda_ratio"]
    assert few["n"] == stats.MIN_FLOOR_AUDITS - 1 and not few["enough"]


def test_figures_render():
    rows = [{"task": f"t{i}", "family": "element" if i % 2 else "random", "mae_ratio": 1.0 + i,
             "lambda_ratio": 1.0 + 2 * i} for i in range(6)]
    out = stats.study_statistics(rows, ["lambda_ratio"], kinds={"lambda_ratio": "landscape"}, signs={}, n_boot=50)
    assert stats.forest_figure(out, {"lambda_ratio": "λ_max"}).axes
    assert stats.scatter_figure(rows, ["lambda_ratio"], {"lambda_ratio": "λ_max"}).axes


def test_a_metric_that_only_tells_the_targets_apart_gets_no_credit():
    """Larger metric and larger error on every band-gap task, unrelated within each target: the pooled ρ is
    large, but the permutation keeps values with their targets, so p is not small."""
    rng = np.random.default_rng(11)
    rows = [{"task": f"{t}-r{i}", "rule": f"element:r{i}", "target": t, "mae_ratio": (3.0 if t == "gap" else 1.0)
             + 0.3 * rng.random(), "m": (5.0 if t == "gap" else 1.0) + 0.3 * rng.random()}
            for i in range(10) for t in ("enth", "gap")]
    got = stats.metric_statistics(rows, "m", n_boot=1000, controls={})
    assert got["rho"] > 0.5 and got["low"] > 0.3  # the bootstrap alone would call it a clear correlation
    assert got["p"] > 0.05
    within = stats.metric_statistics([dict(r, m=r["mae_ratio"] * 2) for r in rows], "m", n_boot=1000, controls={})
    assert within["p"] < 0.01  # a metric that tracks the error inside each target too is credited


def test_families_with_two_rules_are_pooled_not_given_their_own_interval():
    """Two held-out rules per symmetry family (both targets): too few for a block of their own; the
    omission families other than the element one are pooled into one block."""
    rng = np.random.default_rng(4)
    rows = []
    for fam, rules in (("element", 6), ("spacegroup", 2), ("crystal_system", 2), ("random", 2)):
        for i in range(rules):
            e = 1.0 + rng.random() * (0.1 if fam == "random" else 3.0)
            for t in ("enth", "gap"):
                rows.append({"task": f"{t}-{fam}-{i}", "rule": f"{fam}:{i}", "target": t, "family": fam,
                             "mae_ratio": e + 0.01 * rng.random(), "lambda_ratio": 2 * e + rng.random()})
    out = stats.study_statistics(rows, ["lambda_ratio"], kinds={"lambda_ratio": "landscape"}, signs={}, n_boot=100)
    fam = out["per_family"]
    assert fam["element"]["n_clusters"] == 6 and fam["element"]["metrics"] is not None
    assert fam["spacegroup"] == {"n_tasks": 4, "n_clusters": 2, "metrics": None}
    pooled = fam[stats.OTHER_FAMILIES]
    assert pooled["n_clusters"] == 4 and pooled["metrics"]["lambda_ratio"]["n_tasks"] == 8
    assert fam["random"]["metrics"] is None and out["overall"]["lambda_ratio"]["n_clusters"] == 12
