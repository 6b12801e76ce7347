"""`traits compare`: deltas with intervals, gates on deltas, exit codes, JSON/HTML/PDF and JUnit output."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from result_factory import make_result
from test_cli_gates import invoke, validate_junit

from traits import compare as C
from traits.errors import SpecError
from traits.results import AuditResult, RatioInterval

PAYLOAD = "<script>alert(1)</script>"


def worse(result: AuditResult, factor: float, name: str = "candidate", seed: int | None = None) -> AuditResult:
    """A copy of ``result`` whose OOD errors are ``factor`` times larger (noise added when ``seed`` is set)."""
    out = result.model_copy(deep=True)
    out.name = name
    acc = out.accuracy["ood"]
    t, y = np.array(acc.targets), np.array(acc.predictions, dtype=float)
    err = (y - t) * factor
    if seed is not None:
        err = err + np.random.default_rng(seed).normal(0, 0.02, err.size)
    acc.predictions = [float(v) for v in t + err]
    acc.mae = float(np.abs(err).mean())
    out.ratios["mae_ratio"] = acc.mae / out.accuracy["id"].mae
    out.provenance.checkpoint_sha256 = "f" * 64
    return out


@pytest.fixture(scope="module")
def base() -> AuditResult:
    return make_result()


def row(comparison, key):
    return next(r for r in comparison.rows if r.key == key)


def test_identical_audits_pass_with_zero_change(base):
    c = C.compare_results(base, base.model_copy(deep=True))
    assert c.status in ("pass", "warn") and C.exit_code(c) == 0
    mae = row(c, "mae_ratio")
    assert mae.delta == 0 and mae.change == "same" and mae.interval == "identical inputs"
    assert mae.delta_low == 0 and mae.delta_high == 0  # paired, and the same inputs: exactly zero
    assert all(g.level == "pass" for g in c.gates)
    assert any(f.id == "same_inputs" for f in c.findings) and not any(f.id == "same_checkpoint" for f in c.findings)


def test_a_worse_model_fails_the_default_mae_ratio_gate(base):
    b = worse(base, 1.3, seed=1)
    c = C.compare_results(base, b)
    assert C.exit_code(c) == 1 and c.status == "fail"
    gate = next(g for g in c.gates if g.metric == "mae_ratio")
    assert gate.level == "fail" and not gate.passed and gate.kind == "max_relative_growth" and gate.limit == 0.1
    r = row(c, "mae_ratio")
    assert r.relative == pytest.approx(b.ratios["mae_ratio"] / base.ratios["mae_ratio"] - 1)
    assert r.change == "worse" and r.relative_low < r.relative < r.relative_high
    assert gate.value == pytest.approx(r.relative) and gate.low == pytest.approx(r.relative_low)
    assert gate.certain is True and "whole interval exceeds the limit" in gate.statement
    # the OOD MAE gate only warns by default
    assert next(g for g in c.gates if g.metric == "ood_mae").level == "warn"
    # A's and B's own intervals are kept
    assert r.a_low < r.a < r.a_high and r.b_low < r.b < r.b_high


def test_a_better_model_passes_and_reads_as_better(base):
    b = worse(base, 0.7)
    c = C.compare_results(base, b)
    assert C.exit_code(c) == 0
    assert row(c, "ood_mae").change == "better" and row(c, "mae_ratio").change == "better"


def test_gate_kinds_and_unmeasured_metrics(base):
    b = base.model_copy(deep=True)
    b.provenance.checkpoint_sha256 = "e" * 64  # another model
    b.ratios["radius_ratio"] = base.ratios["radius_ratio"] * 0.5
    b.ratios["lambda_ratio"] = None
    gates = [
        C.DeltaGate(metric="radius_ratio", max_relative_drop=0.2),
        C.DeltaGate(metric="radius_ratio", max_drop=1.0),
        C.DeltaGate(metric="lambda_ratio", max_growth=0.5),
        C.DeltaGate(metric="ood_trace", max_relative_growth=0.5),
    ]
    c = C.compare_results(base, b, gates)
    by = {g.name: g for g in c.gates}
    assert by["radius_ratio.max_relative_drop"].level == "fail"
    assert by["radius_ratio.max_relative_drop"].value == pytest.approx(0.5)
    assert by["radius_ratio.max_drop"].level == "pass"
    assert by["lambda_ratio.max_growth"].level == "warn" and by["lambda_ratio.max_growth"].value is None
    trace = by["ood_trace.max_relative_growth"]
    assert trace.level == "pass" and trace.low is not None  # the trace's standard errors give an interval
    assert row(c, "ood_trace").interval == "stderr"
    assert row(c, "radius_ratio").change == "worse"


def test_stored_ratio_intervals_are_combined_conservatively(base):
    a, b = base.model_copy(deep=True), base.model_copy(deep=True)
    b.ratios["lambda_ratio"] = a.ratios["lambda_ratio"] + 1.0
    lam = a.ratios["lambda_ratio"]
    a.ratio_intervals["lambda_ratio"] = RatioInterval(value=lam, low=lam - 0.2, high=lam + 0.3)
    b.ratio_intervals["lambda_ratio"] = RatioInterval(value=lam + 1.0, low=lam + 0.8, high=lam + 1.3)
    r = row(C.compare_results(a, b), "lambda_ratio")
    assert r.interval == "bounds"
    assert r.delta == pytest.approx(1.0)
    assert r.delta_low == pytest.approx(1.0 - 0.5) and r.delta_high == pytest.approx(1.0 + 0.5)


def test_different_tasks_are_flagged(base):
    other = make_result(omit=["O"])
    c = C.compare_results(base, other)
    assert any(f.id == "different_task" and f.level == "warn" for f in c.findings)


def test_delta_gate_needs_exactly_one_limit():
    with pytest.raises(ValueError, match="exactly one"):
        C.DeltaGate(metric="mae_ratio")
    with pytest.raises(ValueError, match="exactly one"):
        C.DeltaGate(metric="mae_ratio", max_growth=1, max_drop=1)


def test_gates_files_in_each_form(tmp_path):
    forms = {
        "list.yaml": "- {metric: mae_ratio, max_relative_growth: 0.1}\n"
                     "- {metric: ood_mae, max_growth: 0.05, fail: false}\n",
        "keyed.yaml": "gates:\n  - {metric: mae_ratio, max_relative_growth: 0.1}\n"
                      "  - {metric: ood_mae, max_growth: 0.05, fail: false}\n",
        "short.yaml": "gates:\n  mae_ratio: {max_relative_growth: 0.1}\n  ood_mae: {max_growth: 0.05, fail: false}\n",
        "short.json": json.dumps({"gates": {"mae_ratio": {"max_relative_growth": 0.1},
                                            "ood_mae": {"max_growth": 0.05, "fail": False}}}),
    }
    for name, text in forms.items():
        (tmp_path / name).write_text(text)
        gates = C.read_gates(tmp_path / name)
        assert [(g.metric, g.kind, g.limit, g.fail) for g in gates] == [
            ("mae_ratio", "max_relative_growth", 0.1, True), ("ood_mae", "max_growth", 0.05, False)], name
    (tmp_path / "bad.yaml").write_text("gates: [{metric: mae_ratio, max_relative_growth: -1}]\n")
    with pytest.raises(SpecError, match="bad.yaml"):
        C.read_gates(tmp_path / "bad.yaml")
    (tmp_path / "unknown.yaml").write_text("gates: [{metric: nonsense, max_growth: 1}]\n")
    with pytest.raises(SpecError, match="unknown metric"):
        C.read_gates(tmp_path / "unknown.yaml")


@pytest.fixture(scope="module")
def pair(base, tmp_path_factory):
    folder = tmp_path_factory.mktemp("compare")
    (folder / "A").mkdir()
    (folder / "B").mkdir()
    base.write(folder / "A" / "results.json")
    worse(base, 1.3, name=f"candidate {PAYLOAD}", seed=2).write(folder / "B" / "results.json")
    return folder


def test_cli_exit_codes_and_outputs(pair, tmp_path):
    a, b = pair / "A" / "results.json", pair / "B" / "results.json"
    out = tmp_path / "out"
    res = invoke("compare", a, b, "--out", out, "--format", "json,html", "--junit", out / "compare.xml")
    assert res.exit_code == 1, res.output
    assert "mae_ratio" in res.output or "OOD/ID MAE" in res.output
    data = json.loads((out / "compare.json").read_text())
    assert data["kind"] == "traits-comparison" and data["status"] == "fail"
    assert data["a"]["file"] == "A/results.json" and len(data["a"]["results_sha256"]) == 64
    html = (out / "compare.html").read_text()
    assert "&lt;script&gt;" in html and "<script" not in html.lower()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert 'id="fig-ratios"' in html and "What changed" in html
    root = validate_junit(out / "compare.xml")
    assert root.get("failures") == "1"

    lenient = tmp_path / "lenient.yaml"
    lenient.write_text("gates:\n  mae_ratio: {max_relative_growth: 2.0}\n")
    res = invoke("compare", a, b, "--gates", lenient, "--out", tmp_path / "o2", "--format", "json")
    assert res.exit_code == 0, res.output

    bad = tmp_path / "bad.yaml"
    bad.write_text("gates:\n  mae_ratio: {max_relative_growth: 0.1, max_growth: 1}\n")
    assert invoke("compare", a, b, "--gates", bad, "--out", tmp_path / "o3").exit_code == 2
    assert invoke("compare", a, tmp_path / "missing.json", "--out", tmp_path / "o4").exit_code == 2
    assert not (tmp_path / "o4" / "compare.json").exists()


def test_pdf_of_a_comparison(pair, tmp_path):
    from traits.results import load_result

    a, b = load_result(pair / "A" / "results.json"), load_result(pair / "B" / "results.json")
    c = C.compare_results(a, b)
    paths = C.write_comparison(c, a, b, tmp_path, formats=("pdf",))
    data = paths["pdf"].read_bytes()
    assert data.startswith(b"%PDF")
    from io import BytesIO

    from pypdf import PdfReader

    text = " ".join(" ".join(p.extract_text() for p in PdfReader(BytesIO(data)).pages).split())
    assert "Gates on the change" in text and "What changed" in text
