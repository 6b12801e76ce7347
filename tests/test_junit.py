"""JUnit XML: one case per gate and per finding, value/threshold/interval on every case, warnings as
<skipped>, per-stage durations, and the schema the CI systems read (tests/test_cli_gates.JUNIT_XSD)."""

from __future__ import annotations

from xml.etree import ElementTree as ET

import pytest
from result_factory import make_result
from test_cli_gates import validate_junit

from traits.junit import junit_xml, stage_seconds, write_junit


@pytest.fixture(scope="module")
def result():
    return make_result()


@pytest.fixture(scope="module")
def root(result, tmp_path_factory):
    path = tmp_path_factory.mktemp("junit") / "gates.xml"
    write_junit(result, path)
    return validate_junit(path)


def test_one_case_per_gate_and_per_finding(result, root):
    gates, findings = root.findall("testsuite")
    assert [c.get("name") for c in gates.findall("testcase")] == [g.name for g in result.gates]
    others = [f.id for f in result.findings if f.id not in {g.name for g in result.gates}]
    assert others and [c.get("name") for c in findings.findall("testcase")] == others
    assert findings.get("name") == gates.get("name") + ".findings"
    assert int(root.get("tests")) == len(result.gates) + len(others)


def test_every_case_states_value_threshold_and_interval(result, root):
    for case in root.iter("testcase"):
        text = case.find("system-out").text
        for key in ("value:", "threshold:", "interval:", "level:"):
            assert key in text, (case.get("name"), key)
    mae = next(c for c in root.iter("testcase") if c.get("name") == "mae_ratio")
    assert "bootstrap" in mae.find("system-out").text  # the MAE ratio's 95% interval over compounds
    failure = mae.find("failure")
    assert failure is not None and "value: 2.96" in failure.text and "threshold: <= 2" in failure.text


def test_warnings_are_skipped_with_a_message(result, root):
    by_name = {c.get("name"): c for c in root.iter("testcase")}
    warned = [g.name for g in result.gates if g.level == "warn"] + [
        f.id for f in result.findings if f.level == "warn" and f.id not in {g.name for g in result.gates}]
    assert warned
    for name in warned:
        skipped = by_name[name].find("skipped")
        assert skipped is not None and skipped.get("message").startswith("warning: "), name
        assert by_name[name].find("failure") is None
    passed = [g.name for g in result.gates if g.level == "pass"]
    assert all(by_name[n].find("skipped") is None and by_name[n].find("failure") is None for n in passed)
    assert int(root.get("skipped")) == len(warned)


def test_case_times_are_the_stage_wall_times(result, root):
    walls = result.provenance.wall_seconds
    times = {c.get("name"): float(c.get("time")) for c in root.iter("testcase")}
    assert times["mae_ratio"] == pytest.approx(walls["accuracy"])
    assert times["lambda_ratio"] == pytest.approx(walls["hessian"])
    assert times["radius_ratio"] == pytest.approx(walls["surface"])
    assert any(t > 0 for t in times.values())
    # a real audit names its stages hessian_<split> and surfaces
    real = make_result()
    real.provenance.wall_seconds = {"hessian_id": 2.0, "hessian_ood": 3.0, "surfaces": 7.0, "total": 12.0}
    assert stage_seconds(real, "trace_ratio") == pytest.approx(5.0)
    assert stage_seconds(real, "nan_fraction") == pytest.approx(7.0)
    assert stage_seconds(real, "checkpoint_split") == 0.0


def test_a_result_without_findings_still_validates(tmp_path):
    bare = make_result()
    bare.findings = []
    path = tmp_path / "j.xml"
    path.write_bytes(junit_xml(bare))
    root = validate_junit(path)
    assert len(root.findall("testsuite")) == 1
    ET.fromstring(junit_xml(bare))
