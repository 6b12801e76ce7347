"""Gates and findings on synthetic results: comparison directions, fail_on vs warn, unmeasured gates,
exit codes, status ordering and the wording of findings."""

from __future__ import annotations

import pytest
from result_factory import make_result

from traits.results import AuditResult
from traits.spec import GateSpec
from traits.verdict import GATES, apply_verdict, evaluate_gates, exit_code


def passing_ratios() -> dict:
    """Ratios that pass every default gate, whatever gates exist: well inside each threshold."""
    spec = GateSpec()
    out = {"rmse_ratio": 1.1, "loss_ratio": 1.5, "sharpness_ratio": 1.1, "basin_area_ratio": 0.8}
    for g in GATES:
        if g.name != "nan_fraction":
            out[g.name] = round(getattr(spec, g.threshold_field) * (0.6 if g.comparison == "<=" else 1.8), 3)
    return out


PASSING = passing_ratios()
#: Results without the optional domain-shift diagnostics, so that only gates and landscape findings count.
NO_SHIFT = {"shift": None} if "shift" in AuditResult.model_fields else {}


def base(**kwargs) -> AuditResult:
    return make_result(**{**NO_SHIFT, **kwargs})


def result_with(gates: GateSpec | None = None, nan_points: int = 0, **ratios):
    """A factory result whose gate inputs are ``PASSING`` updated by ``ratios`` (None = not measured)."""
    return base(nan_points=nan_points, ratios={**PASSING, **ratios}, gates=gates or GateSpec())


def gate(result, name):
    return next(g for g in result.gates if g.name == name)


def finding(result, fid):
    return next(f for f in result.findings if f.id == fid)


def test_all_gates_pass():
    r = result_with()
    assert [g.name for g in r.gates] == [g.name for g in GATES]
    assert all(g.level == "pass" and g.passed for g in r.gates), [(g.name, g.level) for g in r.gates]
    assert r.status == "pass" and exit_code(r) == 0
    assert gate(r, "nan_fraction").value == 0.0


@pytest.mark.parametrize(
    ("name", "field", "default", "comparison", "worse"),
    [
        ("mae_ratio", "max_mae_ratio", 2.0, "<=", +1),
        ("lambda_ratio", "max_lambda_ratio", 3.0, "<=", +1),
        ("trace_ratio", "max_trace_ratio", 3.0, "<=", +1),
        ("radius_ratio", "min_radius_ratio", 0.5, ">=", -1),
    ],
)
def test_ratio_gate_direction(name, field, default, comparison, worse):
    assert getattr(GateSpec(), field) == default
    at = result_with(**{name: default})  # exactly on the threshold: still passes
    assert gate(at, name).level == "pass" and gate(at, name).comparison == comparison
    assert gate(at, name).threshold == default
    better = result_with(**{name: default * (1 - 0.1 * worse)})
    assert gate(better, name).level == "pass"
    bad = result_with(**{name: default * (1 + 0.1 * worse)})
    g = gate(bad, name)
    expected = "fail" if name in GateSpec().fail_on else "warn"
    assert g.level == expected and g.passed == (expected != "fail")
    assert g.value == pytest.approx(default * (1 + 0.1 * worse))
    assert exit_code(bad) == (1 if expected == "fail" else 0)
    assert bad.status == expected


def test_nan_fraction_gate_takes_the_worst_split():
    r = base(nan_points=3, ratios=PASSING)
    g = gate(r, "nan_fraction")
    worst = max(m.nan_fraction for m in r.metrics.values() if m.nan_fraction is not None)
    assert worst > 0 and g.value == pytest.approx(worst)
    assert r.metrics["id"].nan_fraction == 0.0  # only the OOD grid has non-finite points
    assert g.level == "fail" and exit_code(r) == 1
    loose = apply_verdict(base(nan_points=3, ratios=PASSING), GateSpec(max_nan_fraction=0.5))
    assert gate(loose, "nan_fraction").level == "pass" and exit_code(loose) == 0
    assert finding(r, "nan_fraction").statement.startswith(f"{worst:.1%} of the loss-surface points")


def test_fail_on_decides_fail_or_warn():
    r = result_with(lambda_ratio=9.0, mae_ratio=5.0)
    assert gate(r, "lambda_ratio").level == "warn" and gate(r, "mae_ratio").level == "fail"
    strict = apply_verdict(r, GateSpec(fail_on=["lambda_ratio"]))
    assert gate(strict, "lambda_ratio").level == "fail" and not gate(strict, "lambda_ratio").passed
    assert gate(strict, "mae_ratio").level == "warn" and gate(strict, "mae_ratio").passed
    assert exit_code(strict) == 1 and strict.status == "fail"
    lenient = apply_verdict(r, GateSpec(fail_on=[]))
    assert {g.level for g in lenient.gates} == {"pass", "warn"}
    assert exit_code(lenient) == 0 and lenient.status == "warn"


def test_thresholds_come_from_the_gate_spec():
    r = result_with(mae_ratio=1.2)
    tight = apply_verdict(r, GateSpec(max_mae_ratio=1.1))
    assert gate(tight, "mae_ratio").level == "fail" and gate(tight, "mae_ratio").threshold == 1.1
    r = result_with(radius_ratio=0.9)
    tight = apply_verdict(r, GateSpec(min_radius_ratio=0.95))
    assert gate(tight, "radius_ratio").level == "warn"  # a landscape gate warns unless fail_on names it
    tight = apply_verdict(r, GateSpec(min_radius_ratio=0.95, fail_on=["radius_ratio"]))
    assert gate(tight, "radius_ratio").level == "fail" and gate(tight, "radius_ratio").threshold == 0.95


@pytest.mark.parametrize("name", [g.name for g in GATES if g.name != "nan_fraction"])
def test_unmeasured_gate_warns_but_never_fails(name):
    r = result_with(**{name: None})
    g = gate(r, name)
    assert g.value is None and g.level == "warn" and g.passed
    assert "not measured" in g.statement
    assert exit_code(r) == 0 and r.status == "warn"
    assert "not applied" in finding(r, name).statement
    # even a gate listed in fail_on with a zero threshold cannot fail when it has no value
    strict = apply_verdict(r, GateSpec(fail_on=[name]))
    assert gate(strict, name).level == "warn" and exit_code(strict) == 0


def test_unmeasured_nan_fraction_without_surfaces():
    r = base(surface=None, ratios=PASSING)
    g = gate(r, "nan_fraction")
    assert g.value is None and g.level == "warn" and exit_code(r) == 0


def test_exit_code_is_one_only_for_failed_gates():
    assert exit_code(result_with()) == 0
    assert exit_code(result_with(trace_ratio=10.0)) == 0  # a warn-only gate
    assert exit_code(result_with(radius_ratio=0.1)) == 0  # no adopted study: the radius only warns
    assert exit_code(apply_verdict(result_with(radius_ratio=0.1), GateSpec(fail_on=["radius_ratio"]))) == 1
    assert exit_code(make_result()) == 1  # the factory default fails the mae and nan gates


def test_status_ordering_fail_over_warn_over_pass():
    assert result_with().status == "pass"
    assert result_with(trace_ratio=10.0).status == "warn"
    mixed = result_with(trace_ratio=10.0, mae_ratio=10.0)
    assert mixed.status == "fail"
    order = {"fail": 0, "warn": 1, "pass": 2}
    levels = [order[f.level] for f in mixed.findings]
    assert levels == sorted(levels), [f.level for f in mixed.findings]
    assert mixed.findings[0].level == "fail"


def test_a_warning_finding_that_is_not_a_gate_makes_the_status_warn():
    r = base(nan_points=0, ratios=PASSING)
    assert r.status == "pass"
    r.hessian["ood"].converged = False
    apply_verdict(r, GateSpec())
    f = finding(r, "hessian_unconverged_ood")
    assert f.level == "warn" and "max_steps" in f.statement
    assert r.status == "warn" and exit_code(r) == 0


def test_negative_curvature_finding():
    r = base(nan_points=0, ratios=PASSING)
    h = r.hessian["id"]
    h.lambda_min = -0.5 * h.top_eigenvalues[0]
    apply_verdict(r, GateSpec())
    f = finding(r, "negative_curvature_id")
    assert f.level == "warn" and "0.50" in f.statement
    h.lambda_min = -0.01 * h.top_eigenvalues[0]  # small negative curvature is noise, not a finding
    apply_verdict(r, GateSpec())
    assert not any(f.id == "negative_curvature_id" for f in r.findings)


def test_findings_name_the_omitted_element_and_the_ratio():
    r = result_with(radius_ratio=0.31, mae_ratio=2.5, lambda_ratio=4.25, trace_ratio=0.5)
    radius = finding(r, "radius_ratio")
    assert radius.level == "warn"
    assert "0.31x" in radius.statement and "Fe-containing compounds" in radius.statement
    assert "fragile" in radius.statement
    mae = finding(r, "mae_ratio")
    assert "2.50x" in mae.statement and "Fe-containing" in mae.statement and "eV/atom" in mae.statement
    assert f"{r.accuracy['ood'].mae:.3g}" in mae.statement and f"{r.accuracy['id'].mae:.3g}" in mae.statement
    assert "does not transfer" in mae.statement
    assert mae.numbers["value"] == pytest.approx(2.5) and mae.numbers["threshold"] == 2.0
    lam = finding(r, "lambda_ratio")
    assert "4.25x" in lam.statement and "much sharper" in lam.statement and lam.level == "warn"
    trace = finding(r, "trace_ratio")
    assert "0.50x" in trace.statement and trace.level == "pass" and "comparable" in trace.statement
    unseen = finding(r, "unseen_elements")
    assert unseen.level == "pass" and "(Fe)" in unseen.statement


def test_findings_for_several_omitted_elements_and_for_a_random_split():
    several = base(omit=["Fe", "O"], nan_points=0, ratios={**PASSING, "radius_ratio": 0.2})
    assert "Fe/O-containing compounds" in finding(several, "radius_ratio").statement
    baseline = base(omit=[], nan_points=0, ratios={**PASSING, "radius_ratio": 0.2})
    statement = finding(baseline, "radius_ratio").statement
    assert "0.20x" in statement and "the held-out random split" in statement


def test_evaluate_gates_reads_stored_numbers_only():
    r = result_with()
    r.ratios["mae_ratio"] = 7.0
    outcomes = {g.name: g for g in evaluate_gates(r, GateSpec())}
    assert outcomes["mae_ratio"].level == "fail" and outcomes["mae_ratio"].value == 7.0
    assert "7 (gate <= 2)" in outcomes["mae_ratio"].statement
    # evaluate_gates does not touch the result; apply_verdict does
    assert gate(r, "mae_ratio").level == "pass"
    apply_verdict(r, GateSpec())
    assert gate(r, "mae_ratio").level == "fail" and r.status == "fail"
