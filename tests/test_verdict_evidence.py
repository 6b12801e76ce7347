"""Default gates follow the adopted study's evidence, and verdicts and reports cite it.

No adopted evidence: only the direct measurements (MAE ratio, NaN share) fail by default and every
landscape metric warns. An adopted real study moves a metric into the default ``fail_on`` only when its ρ
interval clears 0 in the expected direction with a Holm p below 0.05, its partial ρ given the loss at θ clears 0
too (it says something the MAE gate does not) and its gate threshold lies beyond the random-split noise floor;
a pipeline check never does."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.result_factory import make_result
from traits import catalogue as cat
from traits.cli import app
from traits.results import SCHEMA_VERSION, Finding
from traits.spec import GateSpec
from traits.verdict import GATES, apply_verdict, made_by_verdict, regate

PASSING = {"mae_ratio": 1.2, "rmse_ratio": 1.2, "lambda_ratio": 1.5, "trace_ratio": 1.4, "radius_ratio": 0.9}


def evidence_file(path, metrics: dict, *, pipeline_check: bool = False, data_set: str = "MP test pool",
                  in_progress: bool = False):
    path.write_text(json.dumps({"study_version": "study-test", "data_set": data_set, "in_progress": in_progress,
                                "pipeline_check": pipeline_check, "metrics": metrics}))
    return path


def strong(rho: float, low: float, high: float, floor: float, p: float = 1e-3, partial: tuple | None = None) -> dict:
    """An evidence entry; its partial ρ given the loss at θ is the ρ interval itself unless ``partial`` says."""
    pr, pl, ph = partial if partial is not None else (rho, low, high)
    return {"rho": rho, "low": low, "high": high, "p_holm": p, "n_tasks": 30, "n_audits": 90, "noise_floor": floor,
            "partial_loss": {"rho": pr, "low": pl, "high": ph}}


def test_the_shipped_evidence_if_any_is_a_finished_study():
    """What the package ships decides default gates: it must be a real, finished study's, readable by the
    catalogue, the one committed with the study summary under docs/study/ (so the docs describe the evidence the
    gates use), and at the issue's scale (at least 72 audits). Without an adopted study there is no file and
    nothing to check."""
    from tests.conftest import ROOT, SHIPPED_EVIDENCE

    if not SHIPPED_EVIDENCE.exists():
        pytest.skip("no study adopted yet")
    raw = json.loads(SHIPPED_EVIDENCE.read_text(encoding="utf-8"))
    assert raw["pipeline_check"] is False and not raw.get("in_progress")
    measured = {m.name: m.evidence for m in cat.catalogue(SHIPPED_EVIDENCE) if m.evidence is not None}
    assert set(measured) >= {"lambda_ratio", "trace_ratio"}
    assert all(e.n_audits >= 72 for e in measured.values() if e.rho is not None)
    committed = [p for p in sorted((ROOT / "docs" / "study").rglob("catalogue-evidence.json"))
                 if p.read_bytes() == SHIPPED_EVIDENCE.read_bytes()]
    assert committed, "the shipped evidence is no study summary's committed under docs/study/"
    summary = json.loads((committed[0].parent / "summary.json").read_text(encoding="utf-8"))
    assert summary["data_set"] == raw["data_set"] and summary["n_audits"] >= 72
    assert summary["study_version"] == raw["study_version"] and not summary["pipeline_check"]


@pytest.fixture
def adopt(tmp_path, monkeypatch):
    """Adopt an evidence file for the test (the package's own is left alone)."""
    def _adopt(metrics: dict, **kw):
        path = evidence_file(tmp_path / "catalogue-evidence.json", metrics, **kw)
        monkeypatch.setattr(cat, "EVIDENCE_FILE", path)
        cat.clear_cache()
        return path
    yield _adopt
    cat.clear_cache()


def test_without_adopted_evidence_only_direct_measurements_fail(tmp_path, monkeypatch):
    monkeypatch.setattr(cat, "EVIDENCE_FILE", tmp_path / "absent.json")
    cat.clear_cache()
    assert cat.default_fail_on() == ["mae_ratio", "nan_fraction"]
    assert GateSpec().fail_on == ["mae_ratio", "nan_fraction"]
    r = make_result(ratios={**PASSING, "radius_ratio": 0.1, "lambda_ratio": 9.0}, nan_points=0)
    apply_verdict(r, GateSpec())
    levels = {g.name: g.level for g in r.gates}
    assert levels["radius_ratio"] == "warn" and levels["lambda_ratio"] == "warn" and r.status == "warn"
    assert all(g.evidence == cat.NOT_MEASURED for g in r.gates if g.name in ("lambda_ratio", "radius_ratio"))
    assert next(g for g in r.gates if g.name == "mae_ratio").evidence is None  # a direct measurement


@pytest.mark.parametrize(("entry", "pipeline", "fails"), [
    (strong(0.6, 0.3, 0.8, floor=1.3), False, True),       # tracks OOD error; gate 3.0 clears the floor 1.3
    (strong(0.6, 0.3, 0.8, floor=1.3), True, False),       # the same numbers from a pipeline check
    (strong(0.6, -0.1, 0.8, floor=1.3), False, False),     # the interval reaches 0
    (strong(0.6, 0.3, 0.8, floor=1.3, p=0.2), False, False),  # not significant after Holm
    (strong(0.6, 0.3, 0.8, floor=3.5), False, False),      # random splits reach 3.5: the gate 3.0 fires on noise
    (strong(-0.6, -0.8, -0.3, floor=1.3), False, False),   # tracks it the wrong way
    (strong(0.6, 0.3, 0.8, floor=1.3, partial=(0.1, -0.3, 0.5)), False, False),  # restates the loss at θ
    (strong(0.6, 0.3, 0.8, floor=1.3, partial=(None, None, None)), False, False),  # adds to it: not measured
])
def test_adopted_evidence_decides_the_default_fail_on(adopt, entry, pipeline, fails):
    adopt({"lambda_ratio": entry}, pipeline_check=pipeline)
    assert ("lambda_ratio" in cat.default_fail_on()) is fails
    assert ("lambda_ratio" in GateSpec().fail_on) is fails
    assert {"mae_ratio", "nan_fraction"} <= set(GateSpec().fail_on)


def test_an_interim_summary_never_decides_a_default(adopt):
    adopt({"lambda_ratio": strong(0.6, 0.3, 0.8, floor=1.3)}, in_progress=True)
    assert "lambda_ratio" not in cat.default_fail_on()
    assert "interim: study in progress" in cat.evidence_text("lambda_ratio")


def test_a_smaller_is_worse_metric_needs_a_negative_rho(adopt):
    """The robust radius: a smaller OOD/ID ratio is worse, so evidence is ρ below 0 and a floor above the gate."""
    adopt({"radius_ratio": strong(-0.55, -0.75, -0.3, floor=0.8)})
    assert "radius_ratio" in cat.default_fail_on()
    adopt({"radius_ratio": strong(-0.55, -0.75, -0.3, floor=0.4)})  # random splits go below the gate 0.5
    assert "radius_ratio" not in cat.default_fail_on()


def test_gates_and_findings_cite_the_adopted_evidence(adopt):
    adopt({"lambda_ratio": strong(0.62, 0.31, 0.8, floor=1.3)}, data_set="MP <b>pool</b>")
    r = make_result(ratios={**PASSING, "lambda_ratio": 4.25}, nan_points=0)
    apply_verdict(r, GateSpec())
    lam = next(g for g in r.gates if g.name == "lambda_ratio")
    assert lam.level == "fail"  # adopted: the λ_max ratio now fails by default
    assert "ρ = 0.62 [0.31, 0.80] over 30 tasks" in lam.evidence and "study-test" in lam.evidence
    finding = next(f for f in r.findings if f.id == "lambda_ratio")
    assert finding.evidence == {"lambda_ratio": lam.evidence}
    assert next(f for f in r.findings if f.id == "trace_ratio").evidence == {}  # passed: nothing to cite
    assert next(f for f in r.findings if f.id == "mae_ratio").evidence == {}
    trace = next(g for g in r.gates if g.name == "trace_ratio")
    assert trace.evidence == cat.NOT_MEASURED  # not in the adopted file

    from traits.report.render import render_html

    html = render_html(r)
    assert "Study evidence" in html and "ρ = 0.62 [0.31, 0.80] over 30 tasks" in html
    assert "MP &lt;b&gt;pool&lt;/b&gt;" in html and "MP <b>pool</b>" not in html


def test_the_evidence_a_result_was_gated_with_is_what_its_report_shows(adopt, tmp_path):
    """The evidence is stored with the gates, so re-rendering later (after another study) cites the same."""
    adopt({"lambda_ratio": strong(0.62, 0.31, 0.8, floor=1.3)})
    r = make_result(ratios={**PASSING, "lambda_ratio": 4.25}, nan_points=0)
    apply_verdict(r, GateSpec())
    r.write(tmp_path / "results.json")
    adopt({"lambda_ratio": strong(0.1, -0.2, 0.4, floor=1.3)})
    from traits.report.render import render_html
    from traits.results import load_result

    html = render_html(load_result(tmp_path / "results.json"))
    assert "ρ = 0.62" in html and "ρ = 0.10" not in html


def test_domain_shift_finding_cites_the_metrics_it_flags(tmp_path, monkeypatch):
    monkeypatch.setattr(cat, "EVIDENCE_FILE", tmp_path / "absent.json")
    cat.clear_cache()
    r = make_result()  # the factory's sharp OOD landscape close to training: a fragile representation
    shift = next(f for f in r.findings if f.id == "domain_shift")
    assert shift.numbers["case"] == "fragile"
    assert "lambda_ratio" in shift.evidence and set(shift.evidence.values()) == {cat.NOT_MEASURED}


def test_regating_keeps_the_audits_own_findings_and_drops_stale_verdict_ones():
    r = make_result(ratios={**PASSING, "radius_ratio": 0.1}, nan_points=0)
    own = Finding(id="training_data_unknown", level="warn", statement="Training data unknown")
    r.findings = [own, *r.findings]
    assert not made_by_verdict(own.id)
    assert all(made_by_verdict(f.id) for f in r.findings[1:])
    r.schema_version = "1.2"  # written before the evidence fields existed
    assert regate(r, GateSpec(fail_on=["radius_ratio"]))
    assert r.findings[0] == own and r.status == "fail" and r.schema_version == SCHEMA_VERSION
    assert r.spec["gates"]["fail_on"] == ["radius_ratio"]
    assert not regate(r, GateSpec(fail_on=["radius_ratio"]))  # the same gates: nothing to do
    assert regate(r, GateSpec(fail_on=[]))
    assert r.status == "warn" and own in r.findings  # the warning of the audit's own still counts


def test_every_finding_the_verdict_makes_is_known_to_it():
    """Re-gating drops exactly the verdict's findings: every id it makes must match VERDICT_FINDINGS."""
    r = make_result()
    h = r.hessian["id"]
    h.lambda_min = -0.5 * h.top_eigenvalues[0]
    r.hessian["ood"].converged = False
    apply_verdict(r, GateSpec())
    ids = {f.id for f in r.findings}
    assert {"negative_curvature_id", "domain_shift"} <= ids
    assert all(made_by_verdict(i) for i in ids), ids
    assert {g.name for g in GATES} <= ids


def test_every_finding_id_written_in_the_verdict_source_is_registered():
    """Each literal finding id in traits/verdict.py (or its f-string prefix) is one re-gating replaces."""
    import re
    from pathlib import Path

    import traits.verdict as V

    source = Path(V.__file__).read_text(encoding="utf-8")
    literals = re.findall(r'\bid=f?"([^"{]*)', source) + re.findall(r'else "([a-z_]+)", level=', source)
    assert len(literals) >= 8, literals
    for lit in literals:
        assert made_by_verdict(lit + ("x" if lit.endswith("_") else "")), lit
    assert not made_by_verdict("checkpoint_split") and not made_by_verdict("training_data")


def test_adopt_refuses_a_pipeline_check_and_installs_real_evidence(tmp_path, monkeypatch):
    from traits.errors import TraitsError
    from traits.study.summary import adopt_evidence

    monkeypatch.setattr(cat, "EVIDENCE_FILE", tmp_path / "pkg" / "catalogue-evidence.json")
    (tmp_path / "pkg").mkdir()
    check = evidence_file(tmp_path / "check.json", {"lambda_ratio": strong(0.6, 0.3, 0.8, 1.3)}, pipeline_check=True)
    with pytest.raises(TraitsError, match="never adopted"):
        adopt_evidence(check)
    assert not cat.EVIDENCE_FILE.exists()
    interim = evidence_file(tmp_path / "interim.json", {"lambda_ratio": strong(0.6, 0.3, 0.8, 1.3)}, in_progress=True)
    with pytest.raises(TraitsError, match="in progress is never adopted"):
        adopt_evidence(interim)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TraitsError, match="unreadable catalogue evidence"):
        adopt_evidence(bad)
    wrong = tmp_path / "wrong.json"  # readable JSON, but the catalogue could not read it once installed
    wrong.write_text('{"metrics": {"lambda_ratio": 3}, "pipeline_check": false}')
    with pytest.raises(TraitsError, match="unreadable catalogue evidence"):
        adopt_evidence(wrong)
    empty = evidence_file(tmp_path / "empty.json", {})
    with pytest.raises(TraitsError, match="measures no metric"):
        adopt_evidence(empty)
    assert not cat.EVIDENCE_FILE.exists()
    real = evidence_file(tmp_path / "real.json", {"lambda_ratio": strong(0.6, 0.3, 0.8, 1.3)})
    try:
        assert adopt_evidence(real) == cat.EVIDENCE_FILE
        assert "lambda_ratio" in cat.default_fail_on()
    finally:
        cat.clear_cache()
    res = CliRunner().invoke(app, ["study", "summary", str(tmp_path), "--out", str(tmp_path / "summary"),
                                       "--adopt"])  # a pipeline check by default
    assert res.exit_code == 2 and "--adopt needs --evidence" in res.output


def test_terminal_verdict_prints_statements_and_evidence_without_markup(adopt):
    from rich.console import Console

    from traits.cli import print_verdict

    adopt({"lambda_ratio": strong(0.62, 0.31, 0.8, floor=1.3)}, data_set="pool [red]x[/red]")
    r = make_result(ratios={**PASSING, "lambda_ratio": 4.25}, nan_points=0)
    apply_verdict(r, GateSpec())
    r.findings[0].statement = "name [bold]kept[/bold] literally"
    console = Console(width=400, record=True)
    print_verdict(r, console)
    text = console.export_text()
    assert "[bold]kept[/bold]" in text and "pool [red]x[/red]" in text
    assert "study evidence, λ_max: ρ = 0.62 [0.31, 0.80]" in text


def test_regating_follows_newly_adopted_evidence_and_ignores_fail_on_order(adopt):
    r = make_result(ratios={**PASSING, "lambda_ratio": 4.25}, nan_points=0)
    adopt({"lambda_ratio": strong(0.3, -0.2, 0.6, floor=1.3)})  # measured, not strong enough to fail
    regate(r, GateSpec(fail_on=["nan_fraction", "mae_ratio"]))
    assert not regate(r, GateSpec(fail_on=["mae_ratio", "nan_fraction", "mae_ratio"]))  # the same set
    assert next(g for g in r.gates if g.name == "lambda_ratio").level == "warn"
    adopt({"lambda_ratio": strong(0.62, 0.31, 0.8, floor=1.3)})  # a study adopted since
    gates = GateSpec(fail_on=["nan_fraction", "mae_ratio"])
    assert regate(r, gates)
    assert "ρ = 0.62" in next(g for g in r.gates if g.name == "lambda_ratio").evidence
    assert not regate(r, gates)


def test_a_result_gated_before_evidence_existed_says_so(tmp_path, monkeypatch):
    from traits.report.render import render_html

    monkeypatch.setattr(cat, "EVIDENCE_FILE", tmp_path / "absent.json")
    cat.clear_cache()
    r = make_result(ratios={**PASSING, "lambda_ratio": 4.25}, nan_points=0)
    for g in r.gates:
        g.evidence = None  # as schema 1.2 stored them
    html = render_html(r)
    assert html.count("not recorded (gated before results schema 1.3)") == 4  # λ_max, trace, radius, embedding
    assert html.count("a direct measurement") == 2  # the MAE ratio and the NaN share
    assert regate(r, GateSpec()) and all(g.evidence for g in r.gates if g.name == "lambda_ratio")


def test_a_broken_evidence_file_is_a_clear_error(adopt, tmp_path, monkeypatch):
    from traits.errors import TraitsError

    broken = tmp_path / "broken.json"
    broken.write_text('{"metrics": {"lambda_ratio": 3}}')
    monkeypatch.setattr(cat, "EVIDENCE_FILE", broken)
    cat.clear_cache()
    with pytest.raises(TraitsError, match="unreadable catalogue evidence"):
        GateSpec()


def test_a_name_that_looks_like_markup_prints(tmp_path):
    from rich.console import Console

    from traits.cli import print_verdict

    r = make_result(name="model [/x] of [bold]us")
    console = Console(width=200, record=True)
    print_verdict(r, console)
    assert "model [/x] of [bold]us" in console.export_text()


def label_free_spec(**gates):
    from traits.spec import spec_from_mapping

    raw = {"name": "lf", "data": {"source": "sample", "target": "model"},
           "model": {"checkpoint": "model.safetensors"}}
    if gates:
        raw["gates"] = gates
    return spec_from_mapping(raw, check_files=False)


def test_label_free_audits_fail_on_no_curvature_gate_from_labelled_evidence(adopt):
    """Evidence measured on labelled audits (the study's mode) fails labelled audits by default, and only warns
    on label-free ones, whose Hessian is another matrix; the report says whose evidence it is."""
    adopt({"lambda_ratio": strong(0.6, 0.3, 0.8, floor=1.3), "trace_ratio": strong(0.5, 0.2, 0.7, floor=1.2)})
    assert {"lambda_ratio", "trace_ratio"} <= set(cat.default_fail_on())
    assert set(cat.default_fail_on(mode="label-free")).isdisjoint({"lambda_ratio", "trace_ratio"})
    spec = label_free_spec()
    assert set(spec.gates.fail_on).isdisjoint({"lambda_ratio", "trace_ratio"})
    assert "fail_on" not in spec.gates.model_fields_set
    # a user who asks for it gets it
    assert "lambda_ratio" in label_free_spec(fail_on=["lambda_ratio"]).gates.fail_on
    r = make_result(ratios={**PASSING, "lambda_ratio": 9.0, "trace_ratio": 8.0}, nan_points=0)
    r.mode = "label-free"
    apply_verdict(r, spec.gates)
    gate = {g.name: g for g in r.gates}
    assert gate["lambda_ratio"].level == "warn" and gate["trace_ratio"].level == "warn" and r.status != "fail"
    assert "not evidence for a label-free audit" in gate["lambda_ratio"].evidence
    labelled = make_result(ratios={**PASSING, "lambda_ratio": 9.0}, nan_points=0)
    apply_verdict(labelled, GateSpec())
    assert next(g for g in labelled.gates if g.name == "lambda_ratio").level == "fail"


def test_label_free_evidence_fails_label_free_audits(adopt, tmp_path, monkeypatch):
    """Label-free evidence is read from its own file (study v2's, ``LABEL_FREE_EVIDENCE_FILE``)."""
    path = evidence_file(tmp_path / "lf.json", {"lambda_ratio": strong(0.6, 0.3, 0.8, floor=1.3)})
    raw = json.loads(path.read_text())
    raw["mode"] = "label-free"
    path.write_text(json.dumps(raw))
    adopt({})
    monkeypatch.setattr(cat, "LABEL_FREE_EVIDENCE_FILE", path)
    cat.clear_cache()
    assert "lambda_ratio" in cat.default_fail_on(mode="label-free")
    assert "lambda_ratio" not in cat.default_fail_on()
    assert "lambda_ratio" in label_free_spec().gates.fail_on


@pytest.mark.parametrize(("firing", "fails", "says"), [
    ((7, 3, 0), False, "fired on all three training seeds of no task (7 on one seed, 3 on two)"),
    ((4, 2, 1), True, "fired on all three training seeds of 1 task (4 on one seed, 2 on two)"),
    ((4, 2, 3), True, "fired on all three training seeds of 3 tasks (4 on one seed, 2 on two)"),
])
def test_a_gate_that_never_fires_on_all_three_seeds_warns_and_the_citation_says_so(adopt, firing, fails, says):
    """Gate stability: evidence that counts the seeds a gate fires on needs one task where it fires on all three;
    the reasons name the missed condition and the verdict's citation carries the counts."""
    entry = strong(0.6, 0.3, 0.8, floor=1.3) | {
        "seed_firing": {"1": firing[0], "2": firing[1], "3": firing[2], "n_tasks": 25}}
    adopt({"lambda_ratio": entry})
    assert ("lambda_ratio" in cat.default_fail_on()) is fails
    lam = cat.metric("lambda_ratio")
    assert (cat.default_fail_reasons(lam, 3.0) == []) is fails
    if not fails:
        assert cat.default_fail_reasons(lam, 3.0) == [cat.UNSTABLE]
    assert says in cat.evidence_text("lambda_ratio")
    r = make_result(ratios={**PASSING, "lambda_ratio": 9.0}, nan_points=0)
    apply_verdict(r, GateSpec())
    gate = next(g for g in r.gates if g.name == "lambda_ratio")
    assert gate.level == ("fail" if fails else "warn") and says in gate.evidence


def test_the_reasons_name_every_missed_condition(adopt):
    adopt({"lambda_ratio": strong(0.6, -0.1, 0.8, floor=3.5, p=0.2, partial=(0.1, -0.3, 0.5))})
    why = cat.default_fail_reasons(cat.metric("lambda_ratio"), 3.0)
    assert why == ["its ρ interval reaches 0 or lies on the wrong side", "p (Holm) ≥ 0.05",
                   "its partial ρ given the loss at θ reaches 0",
                   "the threshold lies within the random-split noise floor"]
