"""Reports that answer at a glance: the first screen's sentences follow the numbers, every bracket says its kind,
the worst compounds and the error by element are shown (and skipped without labels), the notebook summaries, and
the reading guide states what the study found about the basin-area ratio."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgba
from result_factory import make_result

from traits.report import figures as F
from traits.report import render_html
from traits.report.compounds import (
    compounds_context,
    element_errors,
    formula_elements,
    per_compound_columns,
    worst_compounds,
)
from traits.report.formatting import INTERVAL_KINDS, formula_html, interval_kind, kind_legend, kind_marker
from traits.report.glance import glance, ood_phrase
from traits.report.notebook import audit_summary_html, comparison_summary_html
from traits.report.sections import FIGURES
from traits.results import (
    Accuracy,
    AuditResult,
    GateOutcome,
    LabelFreeResult,
    LabelFreeSplit,
    RatioInterval,
    ShiftSamples,
    UncertaintyMethod,
    UncertaintyPoints,
    UncertaintyResult,
    UncertaintySplit,
    load_result,
)
from traits.spec import GateSpec

ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = "<script>alert(1)</script>"
#: Gates loose enough that the synthetic result passes all of them.
LOOSE = GateSpec(max_mae_ratio=5, max_lambda_ratio=10, max_trace_ratio=10, max_nan_fraction=0.5)


def section(html: str, sid: str) -> str:
    start = html.index(f'<section id="{sid}">')
    return html[start:html.index("</section>", start)]


def with_gate(result: AuditResult, name: str, value, low, high, *, level="pass", determined=True, threshold=2.0,
              comparison="<=", method="bootstrap", kind=None) -> AuditResult:
    """``result`` with ratio ``name`` set to ``value`` [low, high] (stored interval of ``method``/``kind``) and its
    gate outcome replaced by one of ``level``."""
    r = result.model_copy(deep=True)
    r.ratios[name] = value
    fields = {"value": value, "low": low, "high": high, "status": "ok", "method": method}
    if kind is not None:
        fields["kind"] = kind
    r.ratio_intervals[name] = RatioInterval(**fields)
    r.gates = [g for g in r.gates if g.name != name] + [GateOutcome(
        name=name, passed=level != "fail", level=level, value=value, threshold=threshold, comparison=comparison,
        statement=f"{name} gate", determined=determined, low=low, high=high)]
    return r


@pytest.fixture(scope="module")
def passing() -> AuditResult:
    r = make_result(gates=LOOSE)
    assert r.status == "pass" and any(f.id == "unseen_elements" for f in r.findings)
    return r


# ----------------------------------------------------------------------------------------------
# The sentences follow the numbers


def test_an_interval_excluding_1_is_a_significant_increase_even_under_the_gate(passing):
    r = with_gate(passing, "mae_ratio", 1.37, 1.14, 1.66)
    text = glance(r).sentences[0]
    assert "1.37×" in text and "[1.14, 1.66]" in text and "bootstrap over compounds" in text
    assert "significant increase" in text and "within its gate (≤ 2)" in text
    assert "holds" not in text and "not distinguishable" not in text
    assert text.startswith("On the 160 compounds containing Fe") and "120 ID test compounds" in text


def test_an_interval_including_1_is_not_distinguishable_and_one_below_1_is_lower(passing):
    same = glance(with_gate(passing, "mae_ratio", 1.05, 0.92, 1.2)).sentences[0]
    assert "not distinguishable from the ID error (the interval includes 1)" in same and "significant" not in same
    lower = glance(with_gate(passing, "mae_ratio", 0.8, 0.7, 0.9)).sentences[0]
    assert "significantly lower" in lower and "increase" not in lower
    bare = passing.model_copy(deep=True)
    bare.ratio_intervals.pop("mae_ratio", None)
    bare.accuracy = {s: a.model_copy(update={"targets": [], "predictions": [], "ids": []})
                     for s, a in bare.accuracy.items()}
    text = glance(bare).sentences[0]
    assert "no interval" in text and "significant increase" not in text and "[" not in text


def test_a_failed_mae_gate_says_so_and_when_its_interval_reaches_back_below_the_gate(passing):
    text = glance(with_gate(passing, "mae_ratio", 2.3, 1.8, 2.9, level="fail")).sentences[0]
    assert "beyond its gate (≤ 2), which fails the audit" in text and "reaches back to 1.8" in text
    clear = glance(with_gate(passing, "mae_ratio", 2.6, 2.2, 3.1, level="fail")).sentences[0]
    assert "fails the audit" in clear and "reaches back" not in clear
    warned = glance(with_gate(passing, "mae_ratio", 2.6, 2.2, 3.1, level="warn")).sentences[0]
    assert "a warning under this audit's gates" in warned


def test_gates_that_warn_or_cannot_decide_are_named_with_their_reason(passing):
    r = with_gate(passing, "lambda_ratio", 3.5, 3.49, 3.51, level="warn", threshold=3.0, method="residual bounds")
    r = with_gate(r, "radius_ratio", 0.52, 0.45, 0.6, level="warn", determined=False, threshold=0.5,
                  comparison=">=", method="bisection bracket")
    text = glance(r).sentences[1]
    assert "the λmax ratio 3.5 (gate ≤ 3) warns" in text
    assert ("the robust-radius ratio is undetermined (its grid resolution interval [0.45, 0.6] contains the gate "
            "≥ 0.5)") in text
    assert text.startswith("The landscape flags what the error does not")
    # with the error beyond its gate too, the landscape agrees with it
    agreeing = with_gate(r, "mae_ratio", 2.6, 2.2, 3.1, level="fail")
    assert glance(agreeing).sentences[1].startswith("The landscape agrees with the error")


def test_a_landscape_within_its_gates_adds_no_warning_and_an_unprobed_one_is_said(passing):
    text = glance(passing).sentences[1]
    assert text.startswith("The landscape adds no warning") and "within their gates" in text
    lam = next(g for g in passing.gates if g.name == "lambda_ratio")
    assert f"the λmax ratio {lam.value:.3g}" in text
    bare = make_result(gates=LOOSE, hessian={}, surface=None)
    assert "The loss landscape was not probed" in glance(bare).sentences[1]


def test_a_result_without_a_verdict_says_no_gate_was_evaluated(passing):
    r = passing.model_copy(deep=True)
    r.gates, r.findings = [], []
    text = glance(r).sentences[1]
    assert text.startswith("No gate was evaluated") and "passed" not in text and "landscape adds" not in text


def test_unseen_elements_never_sit_under_a_plain_pass(passing):
    g = glance(passing)
    assert "Training never saw Fe" in g.text and "PASS" in g.text
    assert "Fe" in g.caveat
    summary = section(render_html(passing), "summary")
    status = summary[summary.index('class="status-line"'):summary.index("</p>", summary.index('class="status-line"'))]
    assert "badge-pass" in status and "never seen in training (Fe)" in status
    # without the verdict's finding (training data unknown) nothing is claimed
    r = passing.model_copy(deep=True)
    r.findings = [f for f in r.findings if f.id != "unseen_elements"]
    assert glance(r).caveat == "" and "never saw" not in glance(r).text


def test_what_was_compared_names_the_held_out_chemistry_rule_or_set(passing):
    assert ood_phrase(passing) == "the compounds containing Fe"
    r = passing.model_copy(deep=True)
    r.omit = []
    r.spec = {**r.spec, "holdout": {"kind": "crystal_system", "values": ["cubic"]}}
    assert ood_phrase(r) == "the cubic compounds" and glance(r).text.startswith("On the 160 cubic compounds")
    r.spec = {**r.spec, "holdout": {"kind": "group", "values": [16, 17]}}
    assert ood_phrase(r) == "the compounds containing an element of periodic-table groups 16 or 17"
    r.spec = {**{k: v for k, v in r.spec.items() if k != "holdout"},
              "data": {**r.spec["data"], "sets": {"id": "/x/in.json", "ood": "/x/out.json"}}}
    assert ood_phrase(r) == "the named OOD set out.json" and "the named ID set in.json" in glance(r).text
    r.spec = {k: v for k, v in r.spec.items() if k != "data"}
    assert ood_phrase(r).startswith("a random held-out set")


def test_label_free_results_get_no_error_sentence_compounds_or_elements():
    r = make_result(mode="label-free", accuracy={}, gates=LOOSE)
    text = glance(r).text
    assert text.startswith("Label-free audit of") and "error is measured" in text
    assert "the MAE is" not in text and "MAE ratio is undetermined (a label-free audit has no labels" in text
    assert worst_compounds(r, "ood") == [] and element_errors(r, "ood") == {}
    assert FIGURES["elements"](r) is None and FIGURES["parity"](r) is None
    html = render_html(r)
    assert "worst-predicted" not in html and 'id="fig-elements"' not in html


# ----------------------------------------------------------------------------------------------
# Brackets say their kind


@pytest.mark.parametrize(("interval", "kind"), [
    ({"kind": "jackknife over structures", "method": "sampled"}, "jackknife over structures"),
    ({"kind": "Solver Bound", "method": "bootstrap"}, "solver bound"),
    ({"method": "bootstrap"}, "bootstrap over compounds"),
    ({"method": "residual bounds"}, "solver bound"),
    ({"method": "certified eigenvalues"}, "solver bound"),
    ({"method": "fieller"}, "Monte-Carlo error"),
    ({"method": "bisection bracket"}, "grid resolution"),
    ({"method": "something else"}, ""),
    ({}, ""),
    (None, ""),
])
def test_interval_kind_reads_kind_then_falls_back_on_method(interval, kind):
    assert interval_kind(interval) == kind


def test_interval_kind_reads_a_stored_model_and_every_kind_has_its_own_mark():
    stored = RatioInterval(value=1.0, low=0.9, high=1.1, method="fieller")
    assert interval_kind(stored) == "Monte-Carlo error"
    marks = [kind_marker(k) for k in INTERVAL_KINDS]
    assert all(marks) and len(set(marks)) == len(marks) == 5
    assert [k for _, k, _ in kind_legend(["grid resolution", "bootstrap over compounds", "nonsense"])] == [
        "bootstrap over compounds", "grid resolution"]


def test_every_bracket_on_the_first_screen_and_in_the_ratio_table_carries_its_kind(passing):
    r = with_gate(passing, "lambda_ratio", 1.03, 1.02, 1.04, threshold=3.0, method="residual bounds")
    r = with_gate(r, "radius_ratio", 0.9, 0.8, 1.1, threshold=0.5, comparison=">=", method="bisection bracket")
    html = render_html(r)
    summary = section(html, "summary")
    table = summary[summary.index('<table class="data headline">'):summary.index("</table>")]
    brackets = re.findall(r'<span class="ci n">\[[^<]*\](<sup class="kind" title="([^"]+)">([A-Z]+)</sup>)?', table)
    assert len(brackets) >= 5 and all(sup for sup, _, _ in brackets), brackets
    titles = {t for _, t, _ in brackets}
    assert {"bootstrap over compounds", "solver bound", "grid resolution", "Monte-Carlo error"} <= titles
    note = summary[summary.index("</table>"):]
    for kind in titles:
        assert f'<sup class="kind">{kind_marker(kind)}</sup>' in note and kind in note
    ratios = section(html, "surfaces")
    ratios = ratios[ratios.index('<table class="data ratios">'):]
    rows = re.findall(r'<span class="n">(\[[^<]*\])(<sup class="kind"[^>]*>)?', ratios)
    assert rows and all(sup for _, sup in rows), rows


# ----------------------------------------------------------------------------------------------
# Compounds and elements


def _small(result: AuditResult, formulas: list[str] | None) -> AuditResult:
    r = result.model_copy(deep=True)
    targets = [0.0, -1.0, -2.0, 0.5, 1.0, -0.5, 0.2]
    errors = [0.1, -0.9, 0.3, 0.05, 1.2, -0.2, 0.0]
    acc = Accuracy(n=7, mae=float(np.mean(np.abs(errors))), rmse=1.0, r2=0.5, ids=[f"mp-{i}" for i in range(7)],
                   targets=targets, predictions=[t + e for t, e in zip(targets, errors)],
                   formulas=formulas or [])
    r.accuracy = {**r.accuracy, "ood": acc}
    return r


def test_the_worst_compounds_are_ranked_by_absolute_error_with_their_formula(passing):
    r = _small(passing, ["FeO", "Fe2O3", "LiFePO4", "FeS", "Fe3C", "NaFeO2", "FeF3"])
    rows = worst_compounds(r, "ood", n=3)
    assert [x.id for x in rows] == ["mp-4", "mp-1", "mp-2"]
    assert [x.formula for x in rows] == ["Fe3C", "Fe2O3", "LiFePO4"]
    mae = r.accuracy["ood"].mae
    assert rows[0].error == pytest.approx(1.2) and rows[0].relative == pytest.approx(1.2 / mae)
    assert rows[1].error == pytest.approx(-0.9) and rows[0].extra == {}
    html = section(render_html(r), "accuracy")
    assert "<th>Formula</th>" in html and "Fe<sub>3</sub>C" in html and "mp-4" in html
    # without formulas (results before 1.6) the column is left out, not filled
    plain = section(render_html(_small(passing, None)), "accuracy")
    assert "worst-predicted" in plain and "<th>Formula</th>" not in plain


def test_compound_ids_and_formulas_from_the_data_are_escaped(passing):
    r = _small(passing, ["FeO", f"Fe{PAYLOAD}", "LiFePO4", "FeS", "Fe3C", "NaFeO2", "FeF3"])
    r.accuracy["ood"].ids[4] = f"id {PAYLOAD}"
    html = render_html(r)
    accuracy = section(html, "accuracy")
    assert "id &lt;script&gt;alert(<sub>" not in accuracy  # an id is not a formula: no subscripts
    assert "id &lt;script&gt;alert(1)&lt;/script&gt;" in accuracy
    assert "Fe&lt;script&gt;alert(<sub>1</sub>)&lt;/script&gt;" in accuracy
    assert "<script" not in html.lower()


def test_per_compound_uncertainty_joins_only_by_stored_ids(passing):
    """A plain dict set on a result in code (not what load_result gives) is read like the typed model."""
    r = _small(passing, None)
    points = {"u": [0.5, 0.1, 0.2], "abs_err": [1.2, 0.1, 0.9]}
    method = {"ood": {"spearman": 0.4, "calibration": {}, "points": points},
              "id": {"spearman": 0.3, "calibration": {}, "points": {}}, "u_ratio": {}, "error_ratio": {}}
    r.uncertainty = {"methods": {"last_layer": method}}
    assert worst_compounds(r, "ood")[0].extra == {}  # points without ids: no column, no guess
    method["ood"]["points"] = {**points, "ids": ["mp-4", "mp-0", "mp-1"]}
    rows = worst_compounds(r, "ood")
    label = "uncertainty, last-layer Laplace"  # no recalibration stored: the raw u
    assert rows[0].extra[label] == pytest.approx(0.5) and rows[1].extra[label] == pytest.approx(0.2)
    assert rows[2].extra[label] is None  # mp-2 has no stored uncertainty


def _method(rho: float, u: list[float], ids: list[str], a: float, b: float) -> UncertaintyMethod:
    ratio = {"value": 1.5, "low": 1.2, "high": 1.8}
    return UncertaintyMethod(recalibration={"a": a, "b": b}, id=UncertaintySplit(spearman=0.1),
                             ood=UncertaintySplit(spearman=rho, points=UncertaintyPoints(
                                 u=u, abs_err=[0.0] * len(u), ids=ids)), u_ratio=ratio, error_ratio=ratio)


def _joined(result: AuditResult) -> AuditResult:
    """The small OOD split (worst first: mp-4, mp-1, mp-2, mp-5, mp-0) with per-compound values stored by id, each
    in an order other than the accuracy's, each sample missing some of the worst compounds."""
    r = _small(result, None)
    r.shift.samples["ood"] = ShiftSamples(distances={"embedding": [0.7, 2.5, 1.1, 3.0, 0.4]},
                                          ids={"embedding": ["mp-2", "mp-4", "mp-0", "mp-1", "mp-6"]})
    r.uncertainty = UncertaintyResult(methods={
        "knn": _method(0.2, [9.0, 8.0], ["mp-4", "mp-1"], 0.0, 1.0),  # ranks the OOD errors worse: not shown
        "last_layer": _method(0.6, [0.5, 0.1, 0.2], ["mp-1", "mp-4", "mp-0"], 0.3, 2.0)})
    r.label_free = LabelFreeResult(splits={"ood": LabelFreeSplit(sample_ids=["mp-5", "mp-1", "mp-4"],
                                                                 grad_norms=[12.0, 3.5, 0.25])})
    return r


EMB, SIGMA, GRAD = ("embedding distance to training (k\u00a0=\u00a05)", "σ, last-layer Laplace (eV/atom)",
                    "‖∇θ f‖ (label-free)")


def test_each_joined_column_gives_each_compound_its_own_value(passing):
    r = _joined(passing)
    assert r.unit == "eV/atom" and r.shift.k == 5
    rows = {x.id: x.extra for x in worst_compounds(r, "ood")}
    assert list(rows) == ["mp-4", "mp-1", "mp-2", "mp-5", "mp-0"]
    assert list(rows["mp-4"]) == [EMB, SIGMA, GRAD]
    # σ = √(a² + b²u²) of the best OOD ranker (last_layer, a = 0.3, b = 2), from each compound's own u
    expected = {"mp-4": (2.5, math.sqrt(0.09 + 4 * 0.1**2), 0.25), "mp-1": (3.0, math.sqrt(0.09 + 4 * 0.5**2), 3.5),
                "mp-2": (0.7, None, None), "mp-5": (None, None, 12.0), "mp-0": (1.1, 0.5, None)}
    for cid, values in expected.items():
        got = tuple(rows[cid][label] for label in (EMB, SIGMA, GRAD))
        assert got == tuple(pytest.approx(v) if v is not None else None for v in values), cid
    html = section(render_html(r), "accuracy")
    headers = [re.sub(r"<[^>]+>", "", h) for h in re.findall(r'<th class="num joined">(.*?)</th>', html)]
    assert headers == [EMB, SIGMA, GRAD]
    assert '<span class="n">(eV/atom)</span>' in html  # a unit in a wrapping header stays whole
    row = re.search(r"<tr><td><code>mp-4</code></td>(.*?)</tr>", html).group(1)
    assert re.findall(r'<td class="num">([^<]*)</td>', row)[-3:] == ["2.5", "0.361", "0.25"]
    row = re.search(r"<tr><td><code>mp-5</code></td>(.*?)</tr>", html).group(1)
    assert re.findall(r'<td class="num">([^<]*)</td>', row)[-3:] == ["—", "—", "12"]
    assert "joined by compound id" in html and "stores no per-compound" not in html


def test_a_joined_column_needs_one_id_per_value_and_a_listed_compound_in_its_sample(passing):
    r = _joined(passing)
    r.shift.samples["ood"].ids["embedding"].pop()  # one id short: not matched by position
    r.uncertainty.methods["last_layer"].ood.points.ids = []  # no ids: the next-best method with ids is shown
    r.label_free.splits["ood"].sample_ids = ["mp-6", "mp-3", "mp-9"]  # none of the listed compounds
    columns = per_compound_columns(r, "ood")
    assert EMB not in columns and SIGMA not in columns and GRAD in columns
    knn = "σ, latent kNN distance (eV/atom)"
    assert columns[knn] == {"mp-4": pytest.approx(9.0), "mp-1": pytest.approx(8.0)}  # a = 0, b = 1
    assert compounds_context(r)["compounds"]["extra"] == [knn]  # a column of dashes only is left out
    assert per_compound_columns(r, "id") == {}  # nothing stored for the ID split


def test_results_without_ids_render_the_worst_compounds_without_joined_columns(passing):
    assert compounds_context(_small(passing, None))["compounds"]["extra"] == []
    html = section(render_html(_small(passing, None)), "accuracy")
    assert "worst-predicted" in html and "stores no per-compound" in html and EMB not in html
    # a results file of schema 1.3 (no ids anywhere) and one of 1.7 (label-free sample ids, no shift ids)
    study = ROOT / "docs" / "study"
    old = load_result(study / "runs-mp-partial" / "seed-0" / "enthalpy-element-Fe" / "results.json")
    assert old.schema_version == "1.3" and old.shift.samples["ood"].distances["embedding"]
    assert per_compound_columns(old, "ood") == {} and worst_compounds(old, "ood")
    v17 = load_result(study / "v2" / "runs-mp" / "seed-0" / "enthalpy-element-Fe" / "results.json")
    assert v17.schema_version == "1.7" and not v17.shift.samples["ood"].ids
    assert list(per_compound_columns(v17, "ood")) == [GRAD]  # the label-free sample stored its ids from 1.7
    part = v17.label_free.splits["ood"]
    assert per_compound_columns(v17, "ood")[GRAD][part.sample_ids[3]] == pytest.approx(part.grad_norms[3])


def test_each_compound_counts_for_every_element_it_contains(passing):
    r = _small(passing, ["FeO", "Fe2O3", "LiFePO4", "FeS", "Fe3C", "NaFeO2", "FeF3"])
    errs = element_errors(r, "ood")
    assert errs["Fe"].n == 7 and errs["Fe"].mae == pytest.approx(r.accuracy["ood"].mae)
    assert errs["O"].n == 4 and errs["O"].mae == pytest.approx(np.mean([0.1, 0.9, 0.3, 0.2]))
    assert errs["C"].n == 1 and errs["C"].mae == pytest.approx(1.2)
    assert "Cl" not in errs and formula_elements("Ce(FeB)4") == ("Ce", "Fe", "B")
    assert element_errors(_small(passing, None), "ood") == {}


def test_the_element_heatmap_shares_one_colour_scale_and_greys_absent_elements():
    panels = {"id": {"O": (0.2, 10), "Na": (0.1, 5)}, "ood": {"O": (0.2, 12), "Fe": (0.4, 12), "Eu": (2.0, 1)}}
    with F.style():
        fig = F.element_heatmap_figure(panels, "eV/atom")
    ax = fig.axes[0]

    def colour(symbol: str, block: int):
        row, col = F.PERIODIC_POSITIONS[symbol]
        x, y = col + block * 0.94 / 2, row + 0.4
        hits = [p for p in ax.patches if np.allclose(p.get_xy(), (x, y)) and p.get_fill()]
        assert hits, (symbol, block)
        return tuple(np.round(hits[0].get_facecolor(), 4))

    assert colour("O", 0) == colour("O", 1)  # the same MAE has the same colour in both splits
    grey = tuple(np.round(to_rgba("#e4e4e4"), 4))
    assert colour("Fe", 0) == colour("Na", 1) == grey  # absent from that split
    assert colour("Fe", 1) != colour("O", 1)
    # Eu, one compound, does not set the top of the scale: the top is Fe's 0.4 and Eu shows beyond it
    bar = ax.child_axes[0]  # the colour bar, inset in the table's empty top middle
    assert max(bar.get_xlim()) == pytest.approx(0.4)
    texts = {t.get_text() for t in ax.texts}
    assert {"O", "Fe", "Eu", "Na", "He"} <= texts and "MAE (eV/atom)" in bar.get_xlabel()


def test_each_parity_plot_has_a_residual_histogram_below_it(passing):
    with F.style():
        fig = FIGURES["parity"](passing)
    assert len(fig.axes) == 4
    labels = [ax.get_xlabel() for ax in fig.axes]
    assert sum("residual, predicted − DFT (eV/atom)" in x for x in labels) == 2


def test_formulas_are_escaped_with_subscripts():
    assert str(formula_html("Fe6OF11")) == "Fe<sub>6</sub>OF<sub>11</sub>"
    assert str(formula_html(f"Fe2{PAYLOAD}")) == "Fe<sub>2</sub>&lt;script&gt;alert(<sub>1</sub>)&lt;/script&gt;"


# ----------------------------------------------------------------------------------------------
# Notebook summaries


def test_the_notebook_audit_summary_is_compact_escaped_and_marks_its_brackets(passing):
    r = with_gate(passing, "mae_ratio", 1.37, 1.14, 1.66)
    r.name = f"audit {PAYLOAD}"
    html = audit_summary_html(r)
    assert "<script" not in html.lower() and "&lt;script&gt;" in html
    assert ">PASS</span>" in html and "never seen in training (Fe)" in html
    assert "significant increase" in html and "1.37" in html
    assert re.search(r'\[1\.14, 1\.66\]<sup title="bootstrap over compounds"[^>]*>B</sup>', html)
    assert "Brackets: 95 % intervals" in html and "<html" not in html and "<style" not in html


def test_the_notebook_comparison_summary_names_both_audits_and_the_change(passing):
    from traits.compare import compare_results

    a = passing
    b = make_result(seed=1, gates=LOOSE, name=f"B {PAYLOAD}")
    c = compare_results(a, b)
    html = comparison_summary_html(c)
    assert "<script" not in html.lower() and "B &lt;script&gt;" in html
    row = next(x for x in c.rows if x.key == "mae_ratio")
    assert f"goes from {row.a:.3g} (A) to {row.b:.3g} (B)" in html
    assert row.delta_low is not None and "<sup title=" in html and "95 % intervals" in html
    expected = ("a significant increase" if row.delta_low > 0 else "a significant decrease" if row.delta_high < 0
                else "not distinguishable from no change")
    assert expected in html


# ----------------------------------------------------------------------------------------------
# The reading guide states what the study found


def test_the_reading_guide_states_the_measured_sign_of_the_basin_area_ratio():
    evidence = json.loads((ROOT / "traits" / "study" / "catalogue-evidence.json").read_text())["metrics"]
    basin = evidence["basin_area_ratio"]
    guide = " ".join((ROOT / "docs" / "reading-a-report.md").read_text(encoding="utf-8").split())
    assert f"{basin['rho']:.2f} [{basin['low']:.2f}, {basin['high']:.2f}]" in guide
    assert "opposite" in guide
    # the guide no longer tells the reader, unqualified, that a basin-area ratio below 1 is worse
    assert not re.search(r"basin areas?, where below 1 is worse", guide)


@pytest.fixture
def shipped_evidence(monkeypatch):
    """The adopted study's evidence as the package ships it (the test session runs without any by default)."""
    from conftest import SHIPPED_EVIDENCE

    from traits import catalogue

    monkeypatch.setattr(catalogue, "EVIDENCE_FILE", SHIPPED_EVIDENCE)
    catalogue.clear_cache()
    yield json.loads(SHIPPED_EVIDENCE.read_text(encoding="utf-8"))["metrics"]
    catalogue.clear_cache()


def test_the_report_says_it_where_the_basin_area_ratio_is_shown(passing, shipped_evidence):
    basin = shipped_evidence["basin_area_ratio"]
    html = render_html(passing)
    surfaces = section(html, "surfaces")
    assert "measured the opposite sign" in surfaces
    assert f"ρ = {basin['rho']:.2f} [{basin['low']:.2f}, {basin['high']:.2f}]" in surfaces
    assert "the opposite sign" in section(html, "methods") and "opposite sign" in section(html, "summary")
    assert "<script" not in html.lower()


def test_without_study_evidence_the_report_claims_no_sign(passing):
    html = render_html(passing)  # the session's default: no adopted evidence
    assert "opposite sign" not in html and "<script" not in html.lower()
