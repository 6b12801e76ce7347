"""The metric catalogue is the one place a metric is declared (issue 32): a dummy metric added to it, and to
nothing else, is gated, worded by the verdict, shown in the report's summary table and first screen, and
compared between two audits."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
from result_factory import make_result

from traits import catalogue
from traits.compare import compare_results
from traits.report.glance import glance
from traits.report.headline import headlines
from traits.report.notebook import comparison_summary_html
from traits.report.render import render_html
from traits.spec import gate_spec_model
from traits.verdict import apply_verdict

DUMMY = catalogue.Metric(
    "dummy_ratio", "dummy curvature", "landscape", gate_field="max_dummy_ratio", comparison="<=", threshold=1.5,
    report_label="dummy curvature of the loss", source="metrics.dummy", gate_label="OOD/ID dummy-curvature ratio",
    short="dummy-curvature ratio", headline="dummy", split_unit="loss", stage="hessian",
    description="A metric that exists only in this test.")


@pytest.fixture
def dummy(monkeypatch):
    """The catalogue with the dummy metric registered: the one change a new metric needs besides its function."""
    monkeypatch.setattr(catalogue, "_METRICS", (*catalogue._METRICS, DUMMY))
    return gate_spec_model()


def _result(value: float):
    r = make_result()
    r.ratios["dummy_ratio"] = value
    return r


def test_the_dummy_metric_gets_a_gate_spec_field_with_its_default(dummy):
    assert dummy.model_fields["max_dummy_ratio"].default == 1.5
    assert "dummy_ratio" in dummy.model_json_schema()["properties"]["fail_on"]["items"]["enum"]
    assert dummy(max_dummy_ratio=2.5).max_dummy_ratio == 2.5


@pytest.mark.parametrize(("value", "fail_on", "level"), [
    (2.0, ["mae_ratio", "dummy_ratio"], "fail"), (2.0, ["mae_ratio"], "warn"), (1.2, ["dummy_ratio"], "pass")])
def test_the_dummy_metric_is_gated_by_its_threshold(dummy, value, fail_on, level):
    r = apply_verdict(_result(value), dummy(fail_on=fail_on))
    gate = next(g for g in r.gates if g.name == "dummy_ratio")
    assert (gate.level, gate.threshold, gate.comparison) == (level, 1.5, "<=")
    assert gate.statement.startswith("OOD/ID dummy-curvature ratio is ")
    finding = next(f for f in r.findings if f.id == "dummy_ratio")
    # no sentence of its own: a generic one from its entry, never another metric's (e.g. the NaN share's)
    assert finding.level == level
    assert "dummy-curvature ratio" in finding.statement and "NaN" not in finding.statement
    assert ("beyond its gate" if level != "pass" else "within its gate") in finding.statement
    if level == "fail":
        assert r.status == "fail"


def test_the_dummy_metric_flags_the_landscape_when_it_has_a_flag(dummy, monkeypatch):
    from traits.verdict import landscape_flags

    monkeypatch.setattr(catalogue, "_METRICS", (*catalogue._METRICS[:-1],
                                                replace(DUMMY, flag=("sharp", "dummy curvature {value:.2f}x"))))
    assert "sharp: dummy curvature 2.00x" in landscape_flags(_result(2.0), dummy())


def test_the_dummy_metric_is_in_the_report(dummy):
    r = apply_verdict(_result(2.0), dummy())
    row = next(h for h in headlines(r) if h.ratio_key == "dummy_ratio")
    assert (row.key, row.label, row.ratio.value, row.worse) == ("dummy", "dummy curvature of the loss", 2.0, "high")
    assert "the dummy-curvature ratio 2 (gate ≤ 1.5)" in glance(r).text
    html = render_html(r)
    assert "dummy curvature of the loss" in html and "dummy-curvature ratio" in html


def test_the_dummy_metric_is_compared(dummy):
    a = apply_verdict(_result(1.2), dummy())
    b = apply_verdict(copy.deepcopy(_result(2.4)), dummy())
    comparison = compare_results(a, b, [])
    row = next(r for r in comparison.rows if r.key == "dummy_ratio")
    assert (row.label, row.better, row.a, row.b, row.change) == ("OOD/ID dummy curvature of the loss", "lower", 1.2,
                                                                 2.4, "worse")
    assert "OOD/ID dummy curvature of the loss" in comparison_summary_html(comparison)


def test_every_interval_the_catalogue_names_has_a_recipe_and_back():
    """A ratio whose entry says how its interval is made has that recipe in traits.audit.INTERVALS, and a recipe
    belongs to an entry that says what it is (so the report can name the interval's kind)."""
    from traits.audit import INTERVALS

    entries = {m.name: m for m in catalogue.catalogue()}
    assert {n for n, m in entries.items() if m.interval} == set(INTERVALS)
