"""Intervals on ratios and the gates that read them: Fieller against simulation and its limits, hard
bounds, bootstrap, and the rule that an undefined, uncertified or straddling ratio never passes or fails."""

from __future__ import annotations

import math

import numpy as np
import pytest
from result_factory import make_result

from traits import intervals as iv
from traits.audit import certified_ratios, ratio_intervals
from traits.results import RatioInterval
from traits.spec import GateSpec
from traits.verdict import apply_verdict, exit_code


# ------------------------------------------------------------------------------------------ Fieller
def test_fieller_reduces_to_the_delta_method_for_a_precise_denominator():
    out = iv.fieller_ratio(3.0, 0.3, 2.0, 1e-9)
    assert out["status"] == "ok" and out["value"] == pytest.approx(1.5)
    assert out["low"] == pytest.approx(1.5 - iv.Z95 * 0.3 / 2.0, rel=1e-6)
    assert out["high"] == pytest.approx(1.5 + iv.Z95 * 0.3 / 2.0, rel=1e-6)


def test_fieller_covers_the_true_ratio_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits, n = 0, 4000
    for a, b in zip(rng.normal(3.0, 0.3, n), rng.normal(2.0, 0.4, n)):
        out = iv.fieller_ratio(a, 0.3, b, 0.4)
        if out["status"] == "ok" and out["low"] <= 1.5 <= out["high"]:
            hits += 1
    assert 0.93 <= hits / n <= 0.97, hits / n


@pytest.mark.parametrize(("b", "se_b"), [(-0.46, 0.1), (0.0, 0.1), (0.15, 0.1), (1.0, math.nan)])
def test_fieller_is_undefined_or_uncertified_when_the_denominator_may_be_zero(b, se_b):
    out = iv.fieller_ratio(1.0, 0.1, b, se_b)
    assert out["status"] in ("undefined", "uncertified") and out["low"] is None and out["high"] is None
    assert iv.decision(out, 3.0, "<=") == "undetermined"


# ------------------------------------------------------------------------------------------ bounds, bootstrap
def test_bounds_ratio_takes_the_extreme_corners():
    out = iv.bounds_ratio(iv.Estimate(6.0, 5.0, 7.0), iv.Estimate(2.0, 1.0, 4.0))
    assert out["status"] == "ok" and out["value"] == 3.0 and out["low"] == 1.25 and out["high"] == 7.0


def test_bounds_ratio_refuses_uncertified_inputs_and_a_denominator_reaching_zero():
    assert iv.bounds_ratio(iv.Estimate(6.0, 5.0, 7.0, certified=False), iv.Estimate(2.0, 1.9, 2.1))["status"] \
        == "uncertified"
    assert iv.bounds_ratio(iv.Estimate(6.0, 5.0, 7.0), iv.Estimate(0.5, -0.5, 1.5))["status"] == "undefined"
    assert iv.bounds_ratio(iv.Estimate(6.0, 5.0, 7.0), iv.Estimate(-2.0, -2.1, -1.9))["status"] == "undefined"
    # a censored denominator (no upper bound) gives an interval that reaches 0 from above
    out = iv.bounds_ratio(iv.Estimate(0.4, 0.4, 0.41), iv.Estimate(0.5, 0.5, None))
    assert out["status"] == "ok" and out["low"] == 0.0 and out["high"] == pytest.approx(0.82)


def test_bootstrap_ratio_is_seeded_and_brackets_the_point_value():
    rng = np.random.default_rng(1)
    x, y = rng.exponential(2.0, 200), rng.exponential(1.0, 150)
    a, b = iv.bootstrap_ratio(x, y, seed=5), iv.bootstrap_ratio(x, y, seed=5)
    assert a == b and a["value"] == pytest.approx(x.mean() / y.mean())
    assert a["low"] < a["value"] < a["high"] and a["decides"] and a["kind"] == "bootstrap over compounds"
    assert iv.bootstrap_ratio(x, np.zeros(10))["status"] == "undefined"


def test_decision_estimator_intervals_straddling_the_threshold_are_undetermined():
    straddle = {"value": 2.9, "low": 2.5, "high": 3.2, "status": "ok", "decides": True}
    assert iv.decision(straddle, 3.0, "<=") == "undetermined"
    assert iv.decision({**straddle, "decides": False}, 3.0, "<=") == "pass"  # results before 1.6: shown only
    boot = iv.bootstrap_ratio(np.full(30, 2.9) + np.linspace(-0.5, 0.5, 30), np.ones(30), seed=1)
    assert boot["low"] < 3.0 < boot["high"] and iv.decision(boot, 3.0, "<=") == "undetermined"  # now it decides
    assert iv.decision({**straddle, "high": 2.95}, 3.0, "<=") == "pass"
    assert iv.decision({**straddle, "value": 3.5, "low": 3.1, "high": 3.9}, 3.0, "<=") == "fail"
    assert iv.decision({**straddle, "value": 0.4, "low": 0.3, "high": None}, 0.5, ">=") == "undetermined"


def test_format_interval():
    assert iv.format_interval({"value": 1.5, "low": 1.2, "high": None, "status": "ok"}) == "1.5 [1.2, ∞)"
    assert iv.format_interval({"value": None, "status": "undefined"}).startswith("undefined")


# ------------------------------------------------------------------------------------------ gates
def _with_traces(id_trace: float, id_se: float, ood_trace: float = 40.0, ood_se: float = 2.0):
    r = make_result(shift=None, nan_points=0)
    for split, (t, se) in {"id": (id_trace, id_se), "ood": (ood_trace, ood_se)}.items():
        r.metrics[split].trace, r.metrics[split].trace_stderr = t, se
    r.ratios["trace_ratio"] = ood_trace / id_trace if id_trace else None
    intervals = ratio_intervals(r.metrics, r.accuracy, r.hessian, r.shift, seed=0)
    r.ratio_intervals = {k: RatioInterval(**v) for k, v in intervals.items()}
    r.ratios = certified_ratios(r.ratios, intervals)
    return apply_verdict(r, GateSpec(fail_on=["trace_ratio"]))


@pytest.mark.parametrize(("id_trace", "id_se"), [(-87.0, 10.0), (-0.5, 3.0), (0.0, 1.0), (4.0, 3.0)])
def test_a_negative_or_zero_crossing_trace_ratio_never_passes_or_fails(id_trace, id_se):
    r = _with_traces(id_trace, id_se)
    g = next(g for g in r.gates if g.name == "trace_ratio")
    assert not g.determined and g.level == "warn" and g.passed
    assert r.ratios["trace_ratio"] is None  # no campaign or verdict reads it as a number
    assert "undetermined" in g.statement
    assert not any("comparable total curvature" in f.statement for f in r.findings)
    assert exit_code(r) == 0


def test_a_clear_trace_ratio_still_decides_its_gate():
    passing = _with_traces(30.0, 1.0)  # 40/30 = 1.33, Fieller interval well below 3
    g = next(g for g in passing.gates if g.name == "trace_ratio")
    assert g.determined and g.level == "pass" and g.low < 1.34 < g.high
    failing = _with_traces(10.0, 0.5)  # 40/10 = 4 > 3 with an interval clear of 3
    g = next(g for g in failing.gates if g.name == "trace_ratio")
    assert g.determined and g.level == "fail" and exit_code(failing) == 1


def test_an_unconverged_lambda_max_makes_its_gate_undetermined():
    r = make_result(shift=None, nan_points=0)
    r.hessian["ood"].top.converged[0] = False
    r.metrics["ood"].lambda_max = None  # what split_metrics stores for an uncertified value
    intervals = ratio_intervals(r.metrics, r.accuracy, r.hessian, r.shift, seed=0)
    assert intervals["lambda_ratio"]["status"] == "uncertified"
    r.ratio_intervals = {k: RatioInterval(**v) for k, v in intervals.items()}
    r.ratios = certified_ratios(r.ratios, intervals)
    apply_verdict(r, GateSpec(fail_on=["lambda_ratio"]))
    g = next(g for g in r.gates if g.name == "lambda_ratio")
    assert not g.determined and g.level == "warn" and r.ratios["lambda_ratio"] is None


def test_an_unconverged_lambda_min_is_never_used():
    r = make_result(shift=None, nan_points=0)
    h = r.hessian["ood"]
    h.lambda_min = -0.9 * h.top_eigenvalues[0]  # would be a strong negative-curvature flag if certified
    h.bottom.converged[0] = False
    r.metrics["ood"].lambda_min, r.metrics["ood"].nonconvexity = None, None
    apply_verdict(r, GateSpec())
    ids = {f.id for f in r.findings}
    assert "negative_curvature_ood" not in ids and "lambda_min_unconverged_ood" in ids
    # certified, the same value is flagged
    h.bottom.converged[0] = True
    apply_verdict(r, GateSpec())
    assert "negative_curvature_ood" in {f.id for f in r.findings}


def test_sampled_ratio_combines_t_fieller_with_solver_bounds():
    from scipy.stats import t

    num, den = iv.Sampled(6.0, 0.5, 15, 0.0), iv.Sampled(2.0, 0.1, 15, 0.0)
    plain = iv.sampled_ratio(num, den)
    ref = iv.fieller_ratio(6.0, 0.5, 2.0, 0.1, z=float(t.ppf(0.975, 15)))
    assert plain["low"] == pytest.approx(ref["low"]) and plain["high"] == pytest.approx(ref["high"])
    assert plain["kind"] == "jackknife over structures" and plain["decides"]
    bounded = iv.sampled_ratio(iv.Sampled(6.0, 0.5, 15, 0.2), iv.Sampled(2.0, 0.1, 15, 0.05))
    lo = iv.fieller_ratio(5.8, 0.5, 2.05, 0.1, z=float(t.ppf(0.975, 15)))["low"]
    hi = iv.fieller_ratio(6.2, 0.5, 1.95, 0.1, z=float(t.ppf(0.975, 15)))["high"]
    assert bounded["low"] == pytest.approx(lo) and bounded["high"] == pytest.approx(hi)
    # fewer degrees of freedom: a wider interval; no standard error: not certified; a denominator near 0: undefined
    assert iv.sampled_ratio(iv.Sampled(6.0, 0.5, 3), iv.Sampled(2.0, 0.1, 3))["high"] > plain["high"]
    assert iv.sampled_ratio(iv.Sampled(6.0, None, 3), den)["status"] == "uncertified"
    assert iv.sampled_ratio(num, iv.Sampled(0.1, 0.1, 15))["status"] == "undefined"
    assert iv.sampled_ratio(num, iv.Sampled(2.0, 0.1, 15, certified=False))["status"] == "uncertified"
