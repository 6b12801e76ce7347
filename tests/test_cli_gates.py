"""The command line: `traits gate`, `traits audit`, `traits report` and `traits predict`, their exit codes
(0 pass, 1 a gate failed, 2 bad input) and the JUnit XML of the gates."""

from __future__ import annotations

import json
import math
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
import yaml
from result_factory import make_result
from typer.testing import CliRunner

from traits.cli import app
from traits.results import AuditResult, load_result
from traits.spec import GateSpec
from traits.verdict import GATES

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "traits" / "data" / "quickstart" / "model.safetensors"
CGCNN_DIR = ROOT.parent / "shared" / "models" / "cgcnn"
runner = CliRunner()

#: Ratios well inside every default gate (whatever gates exist).
PASSING = {"rmse_ratio": 1.1, "loss_ratio": 1.5, "sharpness_ratio": 1.1, "basin_area_ratio": 0.8} | {
    g.name: round(getattr(GateSpec(), g.threshold_field) * (0.6 if g.comparison == "<=" else 1.8), 3)
    for g in GATES if g.name != "nan_fraction"
}
#: Results without the optional domain-shift diagnostics, so that only the gates decide.
NO_SHIFT = {"shift": None} if "shift" in AuditResult.model_fields else {}
N_GATES = len(GATES)

#: A minimal JUnit schema: the elements and attributes that CI systems (Jenkins, GitLab) read.
JUNIT_XSD = b"""<?xml version="1.0" encoding="UTF-8"?>
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" elementFormDefault="qualified">
  <xs:complexType name="problem">
    <xs:simpleContent>
      <xs:extension base="xs:string">
        <xs:attribute name="message" type="xs:string"/>
        <xs:attribute name="type" type="xs:string"/>
      </xs:extension>
    </xs:simpleContent>
  </xs:complexType>
  <xs:element name="testsuites">
    <xs:complexType>
      <xs:sequence>
        <xs:element ref="testsuite" minOccurs="0" maxOccurs="unbounded"/>
      </xs:sequence>
      <xs:attribute name="name" type="xs:string"/>
      <xs:attribute name="tests" type="xs:nonNegativeInteger"/>
      <xs:attribute name="failures" type="xs:nonNegativeInteger"/>
      <xs:attribute name="errors" type="xs:nonNegativeInteger"/>
      <xs:attribute name="skipped" type="xs:nonNegativeInteger"/>
      <xs:attribute name="time" type="xs:decimal"/>
    </xs:complexType>
  </xs:element>
  <xs:element name="testsuite">
    <xs:complexType>
      <xs:sequence>
        <xs:element name="testcase" minOccurs="0" maxOccurs="unbounded">
          <xs:complexType>
            <xs:choice minOccurs="0" maxOccurs="unbounded">
              <xs:element name="failure" type="problem"/>
              <xs:element name="error" type="problem"/>
              <xs:element name="skipped" type="problem"/>
              <xs:element name="system-out" type="xs:string"/>
              <xs:element name="system-err" type="xs:string"/>
            </xs:choice>
            <xs:attribute name="name" type="xs:string" use="required"/>
            <xs:attribute name="classname" type="xs:string" use="required"/>
            <xs:attribute name="time" type="xs:decimal"/>
          </xs:complexType>
        </xs:element>
      </xs:sequence>
      <xs:attribute name="name" type="xs:string" use="required"/>
      <xs:attribute name="tests" type="xs:nonNegativeInteger" use="required"/>
      <xs:attribute name="failures" type="xs:nonNegativeInteger" use="required"/>
      <xs:attribute name="errors" type="xs:nonNegativeInteger" use="required"/>
      <xs:attribute name="skipped" type="xs:nonNegativeInteger"/>
      <xs:attribute name="time" type="xs:decimal"/>
      <xs:attribute name="timestamp" type="xs:dateTime"/>
    </xs:complexType>
  </xs:element>
</xs:schema>
"""


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def write_result(path: Path, **kwargs) -> Path:
    make_result(**{**NO_SHIFT, **kwargs}).write(path)
    return path


@pytest.fixture
def failing(tmp_path) -> Path:
    """The factory default: mae_ratio and nan_fraction fail the default gates (radius_ratio warns)."""
    path = tmp_path / "results.json"
    make_result().write(path)
    return path


@pytest.fixture
def passing(tmp_path) -> Path:
    return write_result(tmp_path / "results.json", nan_points=0, ratios=PASSING)


def no_traceback(res) -> None:
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception


def validate_junit(path: Path):
    from lxml import etree

    schema = etree.XMLSchema(etree.fromstring(JUNIT_XSD))
    doc = etree.parse(str(path))
    assert schema.validate(doc), schema.error_log
    return ET.parse(path).getroot()


# ------------------------------------------------------------------------------------------ gate


def test_gate_exits_0_when_every_gate_passes(passing):
    res = invoke("gate", passing)
    assert res.exit_code == 0, res.output
    assert "PASS" in res.output


def test_gate_exits_1_when_a_gate_fails(failing):
    res = invoke("gate", failing)
    assert res.exit_code == 1, res.output
    no_traceback(res)
    assert "FAIL" in res.output and "Fe-containing compounds" in res.output


def test_gate_exit_code_follows_the_stored_spec_gates(tmp_path):
    """Without --gates the thresholds come from the spec stored in results.json."""
    result = make_result(nan_points=0, ratios=PASSING, **NO_SHIFT)
    result.spec["gates"]["max_mae_ratio"] = 1.1  # stricter than the stored mae ratio of 1.2
    path = result.write(tmp_path / "results.json")
    assert invoke("gate", path).exit_code == 1


def test_gate_exits_2_on_a_missing_results_file(tmp_path):
    missing = tmp_path / "nope" / "results.json"
    res = invoke("gate", missing)
    assert res.exit_code == 2
    no_traceback(res)
    assert str(missing) in res.output.replace("\n", "") and "no such results file" in res.output


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('{"schema_version": "1.0", "name": ', "not a readable results file"),
        ("[1, 2, 3]", "schema version"),
        ('{"schema_version": "1.0", "name": "x"}', "invalid results file at"),
    ],
    ids=["truncated", "not-an-object", "missing-fields"],
)
def test_gate_exits_2_on_a_corrupt_results_file(tmp_path, content, words):
    path = tmp_path / "results.json"
    path.write_text(content)
    res = invoke("gate", path)
    assert res.exit_code == 2, res.output
    no_traceback(res)
    flat = res.output.replace("\n", "")
    assert str(path) in flat and words in flat


def test_gate_exits_2_on_a_results_file_with_a_wrong_field(tmp_path, failing):
    raw = json.loads(failing.read_text())
    raw["gates"][0]["level"] = "catastrophic"
    failing.write_text(json.dumps(raw))
    res = invoke("gate", failing)
    assert res.exit_code == 2
    flat = res.output.replace("\n", "")
    assert str(failing) in flat and "gates.0.level" in flat


def test_gate_exits_2_when_the_stored_spec_gates_are_invalid(tmp_path):
    """A results file whose stored spec has a bad gate threshold is bad input (exit 2, one message),
    not a failed gate (exit 1) with a pydantic traceback."""
    result = make_result()
    result.spec["gates"]["max_mae_ratio"] = "lots"
    path = result.write(tmp_path / "results.json")
    res = invoke("gate", path)
    assert res.exit_code == 2, (res.exit_code, repr(res.exception))
    no_traceback(res)
    flat = res.output.replace("\n", "")
    assert str(path) in flat and "max_mae_ratio" in flat


def test_looser_gates_file_turns_a_fail_into_a_pass(tmp_path, failing):
    assert invoke("gate", failing).exit_code == 1
    loose = tmp_path / "gates.yaml"
    thresholds = {"max_mae_ratio": 3.5, "min_radius_ratio": 0.3, "max_nan_fraction": 0.05}
    loose.write_text(yaml.safe_dump({"gates": thresholds}))
    res = invoke("gate", failing, "--gates", loose)
    assert res.exit_code == 0, res.output
    # a bare mapping (without the `gates:` key) works as well, and JSON too
    bare = tmp_path / "gates.json"
    bare.write_text(json.dumps(thresholds))
    assert invoke("gate", failing, "--gates", bare).exit_code == 0
    # the stored results are not rewritten by re-gating
    assert load_result(failing).status == "fail"


def test_stricter_gates_file_turns_a_pass_into_a_fail(tmp_path, passing):
    strict = tmp_path / "gates.yaml"
    strict.write_text("gates:\n  min_radius_ratio: 0.95\n")
    assert invoke("gate", passing, "--gates", strict).exit_code == 0  # violated, but the radius only warns
    strict.write_text("gates:\n  min_radius_ratio: 0.95\n  fail_on: [radius_ratio]\n")
    assert invoke("gate", passing, "--gates", strict).exit_code == 1


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("gates:\n  max_mae_ratio: -1\n", "max_mae_ratio"),
        ("gates:\n  max_mae_ration: 2\n", "max_mae_ration"),
        ("gates:\n  fail_on: [accuracy]\n", "fail_on"),
        ("max_nan_fraction: lots\n", "max_nan_fraction"),
    ],
    ids=["negative", "misspelt", "unknown-gate", "not-a-number"],
)
def test_gate_exits_2_on_an_invalid_gates_file(tmp_path, passing, text, field):
    gates = tmp_path / "my-gates.yaml"
    gates.write_text(text)
    res = invoke("gate", passing, "--gates", gates)
    assert res.exit_code == 2, res.output
    no_traceback(res)
    flat = res.output.replace("\n", "")
    assert str(gates) in flat and field in flat


def test_gate_exits_2_on_a_missing_or_unparsable_gates_file(tmp_path, passing):
    res = invoke("gate", passing, "--gates", tmp_path / "absent.yaml")
    assert res.exit_code == 2 and "absent.yaml" in res.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("gates: [unclosed\n")
    res = invoke("gate", passing, "--gates", broken)
    assert res.exit_code == 2 and "broken.yaml" in res.output
    no_traceback(res)


# ------------------------------------------------------------------------------------------ JUnit


def test_junit_xml_of_failing_gates(tmp_path, failing):
    junit = tmp_path / "reports" / "gates.xml"
    res = invoke("gate", failing, "--junit", junit)
    assert res.exit_code == 1
    root = validate_junit(junit)
    result = load_result(failing)
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [g.name for g in result.gates]
    failed = {g.name for g in result.gates if g.level == "fail"}
    assert {"mae_ratio", "nan_fraction"} <= failed and "radius_ratio" not in failed
    unmeasured = {g.name for g in result.gates if g.value is None}
    for case, g in zip(cases, result.gates):
        assert (case.find("failure") is not None) == (g.name in failed), g.name
        # warnings (a violated warn-only gate or an unmeasured one) are <skipped> so that dashboards show them
        assert (case.find("skipped") is not None) == (g.level == "warn"), g.name
        if g.level == "warn" and g.value is not None:
            assert "warning" in case.find("system-out").text
    assert int(suite.get("tests")) == len(cases) == N_GATES
    assert int(suite.get("failures")) == len(failed) == int(root.get("failures"))
    assert int(suite.get("skipped")) == sum(g.level == "warn" for g in result.gates) >= len(unmeasured)
    assert int(suite.get("errors")) == 0
    message = cases[0].find("failure").get("message")
    assert "OOD/ID MAE ratio" in message
    lam = next(c for c in cases if c.get("name") == "lambda_ratio")  # a predictor: its study evidence is cited
    from traits.catalogue import evidence_text

    assert f"study evidence: {evidence_text('lambda_ratio')}" in lam.find("system-out").text
    assert "study evidence" not in cases[0].find("system-out").text  # the MAE ratio is a direct measurement


def test_junit_marks_unmeasured_gates_skipped(tmp_path):
    path = write_result(tmp_path / "results.json", nan_points=0, surface=None,
                        ratios={**PASSING, "radius_ratio": None, "lambda_ratio": None, "mae_ratio": 2.5})
    junit = tmp_path / "gates.xml"
    res = invoke("gate", path, "--junit", junit)
    assert res.exit_code == 1  # mae_ratio fails; the unmeasured gates do not
    root = validate_junit(junit)
    suite = root.find("testsuite")
    by_name = {c.get("name"): c for c in suite.findall("testcase")}
    skipped = {n for n, c in by_name.items() if c.find("skipped") is not None}
    failed = {n for n, c in by_name.items() if c.find("failure") is not None}
    assert skipped == {"radius_ratio", "lambda_ratio", "nan_fraction"}
    assert failed == {"mae_ratio"} and not skipped & failed
    assert int(suite.get("skipped")) == 3 and int(suite.get("failures")) == 1 and int(suite.get("tests")) == N_GATES


def test_junit_of_a_passing_result(tmp_path, passing):
    junit = tmp_path / "gates.xml"
    assert invoke("gate", passing, "--junit", junit).exit_code == 0
    root = validate_junit(junit)
    assert root.get("failures") == "0"
    assert all(c.find("failure") is None and c.find("skipped") is None for c in root.iter("testcase"))
    assert float(root.get("time")) == pytest.approx(220.0)  # the stored total wall time


def test_the_junit_schema_rejects_a_broken_file(tmp_path):
    """The inline schema is strict enough to catch a malformed report."""
    from lxml import etree

    schema = etree.XMLSchema(etree.fromstring(JUNIT_XSD))
    bad = etree.fromstring(b'<testsuites><testsuite name="x" tests="many" failures="0" errors="0"/></testsuites>')
    assert not schema.validate(bad)


# ------------------------------------------------------------------------------------------ audit


def small_spec(tmp_path: Path, **extra) -> Path:
    """The quickstart audit with tiny probes, pointing at the shipped checkpoint by absolute path; no
    subsample, so the split is the checkpoint's own."""
    spec = {
        "name": "cli-quickstart",
        "seed": 0,
        "device": "cpu",
        "data": {"source": "sample", "target": "formation_energy_per_atom"},
        "omit": ["Fe"],
        "split": {"train": 0.8, "val": 0.1, "test": 0.1},
        "model": {
            "architecture": "cgcnn",
            "hyper": {"atom_fea_len": 32, "n_conv": 2, "h_fea_len": 64, "n_h": 1},
            "checkpoint": str(CHECKPOINT.resolve()),
        },
        "probes": {
            "hessian": {"top_k": 2, "max_steps": 6, "trace_hvps": 3, "density_runs": 1, "density_steps": 4,
                        "max_samples": 8},
            "surface": {"span": 0.5, "points_1d": 7, "points_2d": 5, "directions_1d": 2, "max_samples": 24},
        },
        "report": {"formats": ["json"], "out_dir": str(tmp_path / "default-out")},
    }
    for key, value in extra.items():
        spec[key] = value
    path = tmp_path / f"spec-{len(extra)}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def cli_audit(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-audit")
    spec = small_spec(folder)
    out = folder / "out"
    res = invoke("audit", spec, "--out", out, "--junit", out / "gates.xml")
    return res, out


def test_audit_exits_0_with_the_quickstart_checkpoint(cli_audit):
    res, out = cli_audit
    assert res.exit_code == 0, res.output
    result = load_result(out / "results.json")
    assert result.status in ("pass", "warn") and all(g.passed for g in result.gates)
    assert not any(f.id.startswith("checkpoint_") for f in result.findings)  # the checkpoint's own split
    assert result.accuracy["id"].n == 170 and result.accuracy["ood"].n == 300
    assert not (out / "report.html").exists()  # json only
    assert str(out) in res.output.replace("\n", "")
    root = validate_junit(out / "gates.xml")
    # the first suite holds the gates (a second one the other findings)
    assert root.get("failures") == "0" and len(root.find("testsuite").findall("testcase")) == N_GATES


def test_audit_exits_1_when_a_gate_fails(tmp_path):
    spec = small_spec(tmp_path, gates={"max_mae_ratio": 1.0},
                      probes={"hessian": {"enabled": False}, "surface": {"enabled": False}})
    out = tmp_path / "out"
    res = invoke("audit", spec, "--out", out)
    assert res.exit_code == 1, res.output
    result = load_result(out / "results.json")
    mae = next(g for g in result.gates if g.name == "mae_ratio")
    assert mae.level == "fail" and mae.value > 1.0 and mae.threshold == 1.0
    assert result.status == "fail" and "FAIL" in res.output


def test_audit_exits_2_for_an_invalid_spec(tmp_path):
    spec = small_spec(tmp_path, probes={"hessian": {"top_kk": 2}})
    out = tmp_path / "out"
    res = invoke("audit", spec, "--out", out)
    assert res.exit_code == 2
    no_traceback(res)
    flat = res.output.replace("\n", "")
    assert str(spec) in flat and "probes.hessian.top_kk" in flat and "unknown key" in flat
    assert not (out / "results.json").exists()


def test_audit_exits_2_for_a_missing_checkpoint(tmp_path):
    spec = small_spec(tmp_path, model={"architecture": "cgcnn", "checkpoint": str(tmp_path / "gone.safetensors")})
    res = invoke("audit", spec, "--out", tmp_path / "out")
    assert res.exit_code == 2 and "gone.safetensors" in res.output
    no_traceback(res)


def test_report_rerenders_identical_html(cli_audit, tmp_path):
    _, out = cli_audit
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        res = invoke("report", out / "results.json", "--out", folder, "--format", "html")
        assert res.exit_code == 0, res.output
        assert "report.html" in res.output
    html = (first / "report.html").read_bytes()
    assert html == (second / "report.html").read_bytes()
    assert b"cli-quickstart" in html and not (first / "report.pdf").exists()


def test_report_exits_2_without_results(tmp_path):
    res = invoke("report", tmp_path / "missing.json", "--out", tmp_path)
    assert res.exit_code == 2 and "missing.json" in res.output
    no_traceback(res)


# ------------------------------------------------------------------------------------------ predict


def write_cifs(folder: Path) -> list[Path]:
    from pymatgen.core import Lattice, Structure

    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    si = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])
    paths = [folder / "NaCl.cif", folder / "Si.cif"]
    nacl.to(filename=str(paths[0]))
    si.to(filename=str(paths[1]))
    return paths


def parse_csv(text: str) -> tuple[list[str], list[tuple[str, float]]]:
    """The header line and (id, prediction) of each row of `traits predict` (id,prediction,unit)."""
    import csv
    import io

    lines = [line for line in text.splitlines() if line.strip()]
    rows = list(csv.reader(io.StringIO("\n".join(lines[1:]))))
    return lines[:1], [(ident, float(value)) for ident, value, _unit in rows]


def test_predict_prints_a_csv_row_per_file(tmp_path):
    files = write_cifs(tmp_path)
    res = invoke("predict", "--checkpoint", CHECKPOINT, "--device", "cpu", *files)
    assert res.exit_code == 0, res.output
    header, rows = parse_csv(res.stdout)
    assert header == ["id,prediction,unit"]
    assert [ident for ident, _ in rows] == [str(f) for f in files]
    values = dict(rows)
    assert all(math.isfinite(v) for v in values.values())
    # a sane formation-energy model: rock salt is strongly bound, an elemental solid is at zero
    assert values[str(files[0])] < -1.0
    assert abs(values[str(files[1])]) < 0.5


def test_predict_with_a_spec_predicts_what_the_audit_audits(tmp_path):
    files = write_cifs(tmp_path)
    by_spec = invoke("predict", "--spec", ROOT / "audits" / "quickstart.yaml", "--device", "cpu", *files)
    by_checkpoint = invoke("predict", "--checkpoint", CHECKPOINT, "--device", "cpu", *files)
    assert by_spec.exit_code == 0, by_spec.output
    assert parse_csv(by_spec.stdout) == parse_csv(by_checkpoint.stdout)
    clash = invoke("predict", "--spec", ROOT / "audits" / "quickstart.yaml", "--checkpoint", CHECKPOINT, *files)
    assert clash.exit_code == 2 and "--spec names the model: drop --checkpoint" in clash.output
    spec = tmp_path / "trains.yaml"  # a spec that trains its model has nothing to predict with yet
    spec.write_text("name: t\ndata: {source: sample, target: formation_energy_per_atom}\nmodel: {train: {}}\n")
    res = invoke("predict", "--spec", spec, *files)
    assert res.exit_code == 2 and "model.checkpoint" in res.output
    no_traceback(res)


def test_predict_exits_2_on_an_unreadable_structure(tmp_path):
    bad = tmp_path / "junk.cif"
    bad.write_text("this is not a crystal\n")
    res = invoke("predict", "--checkpoint", CHECKPOINT, "--device", "cpu", bad)
    assert res.exit_code == 2 and "junk.cif" in res.output
    no_traceback(res)


@pytest.mark.skipif(not (CGCNN_DIR / "formation-energy-per-atom.pth.tar").is_file()
                    or not (CGCNN_DIR / "sample-cifs").is_dir(), reason="original CGCNN checkpoint not available")
def test_predict_with_an_original_cgcnn_checkpoint():
    import torch

    from traits.models.inference import predict_structures

    ckpt = CGCNN_DIR / "formation-energy-per-atom.pth.tar"
    files = sorted((CGCNN_DIR / "sample-cifs").glob("*.cif"))
    res = invoke("predict", "--format", "cgcnn-original", "--checkpoint", ckpt, "--device", "cpu", *files)
    assert res.exit_code == 0, res.output
    header, rows = parse_csv(res.stdout)
    assert header == ["id,prediction,unit"] and len(rows) == len(files) == 10
    assert [ident for ident, _ in rows] == [str(f) for f in files]
    expected = predict_structures(ckpt, "cgcnn-original", files, device=torch.device("cpu"))
    for (_, got), (_, want) in zip(rows, expected):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert all(-6.0 < v < 3.0 for _, v in rows)  # formation energies in eV/atom
