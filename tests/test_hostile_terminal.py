"""What reaches the terminal and CI logs (issue 31, items 5 and 16): control characters of user strings printed
escaped, no line starting with a user string (no forged GitHub workflow commands), valid JUnit XML; --quiet
silences library warnings and log messages; study summary needs --out; negative counts are usage errors."""

from __future__ import annotations

import io
import logging
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from result_factory import make_result
from typer.testing import CliRunner

from traits.cli import app
from traits.progress import Reporter, safe_text

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "audits" / "quickstart.yaml"
CHECKPOINT = ROOT / "traits" / "data" / "quickstart" / "model.safetensors"
CLEAR = "\x1b[2J\x1b[31mALL GATES PASSED"
FORGED = "ok\n::error title=forged::all gates passed"
LINK = "x\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\ ##[error]y \u202egnp.exe\r::warning::z"


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _assert_safe(output: str) -> None:
    """No raw control character but line breaks, no line a GitHub runner reads as a workflow command."""
    assert not any(ch in output for ch in "\x1b\r\x9b\u202e"), repr(output)
    for line in output.splitlines():
        assert not line.lstrip().startswith("::") and "##[" not in line, repr(line)


def _spec(path: Path, name: str) -> Path:
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw.update(name=name, device="cpu")
    raw["model"]["checkpoint"] = str(CHECKPOINT)
    path.write_text(yaml.safe_dump(raw))
    return path


def test_safe_text_escapes_control_characters_and_workflow_markers():
    assert safe_text(CLEAR) == "\\x1b[2J\\x1b[31mALL GATES PASSED"
    assert safe_text(FORGED) == "ok\\n::error title=forged::all gates passed"
    assert safe_text("a\tb\x9bc\u2028d\u202ee ##[set-output x]") == "a\\tb\\x9bc\\u2028d\\u202ee #\\x23[set-output x]"
    assert safe_text("Fe₂O₃ — 95 % [bold] :smile:") == "Fe₂O₃ — 95 % [bold] :smile:"
    assert safe_text("a\nb", keep_newlines=True) == "a\nb"


@pytest.mark.parametrize("name", [CLEAR, FORGED, LINK])
def test_validate_prints_a_hostile_spec_name_escaped(tmp_path, name):
    res = _invoke("validate", _spec(tmp_path / "s.yaml", name))
    assert res.exit_code == 0, res.output
    _assert_safe(res.output)
    assert safe_text(name) in res.output and res.output.startswith("valid audit spec ")


@pytest.mark.parametrize("name", [CLEAR, FORGED, LINK])
def test_gate_prints_a_tampered_result_escaped_and_writes_valid_junit(tmp_path, name):
    results = tmp_path / "results.json"
    make_result(name=name).write(results)
    junit = tmp_path / "gates.xml"
    res = _invoke("gate", results, "--junit", junit)
    assert res.exit_code == 1, res.output
    _assert_safe(res.output)
    assert f"audit {safe_text(name)}: FAIL" in res.output
    suites = ET.parse(junit).getroot()  # well-formed: the control characters are written escaped
    assert suites.find("testsuite").get("name") == f"traits.{safe_text(name)}"


@pytest.mark.parametrize("name", [CLEAR, FORGED])
def test_an_error_naming_a_hostile_file_is_escaped_and_every_line_starts_with_error(tmp_path, name):
    missing = tmp_path / f"{name}.yaml"
    res = _invoke("validate", missing)
    assert res.exit_code == 2, res.output
    _assert_safe(res.output)
    assert safe_text(missing) in res.output
    bad = _spec(tmp_path / "bad.yaml", name)
    raw = yaml.safe_load(bad.read_text())
    raw["probes"] = {"surface": {"span": name}, "hessian": {"top_k": name}}
    bad.write_text(yaml.safe_dump(raw))
    res = _invoke("validate", bad)
    assert res.exit_code == 2, res.output
    _assert_safe(res.output)
    lines = res.output.splitlines()
    assert len(lines) >= 3 and all(line.startswith("error: ") for line in lines), res.output
    assert "error:   - probes.surface.span" in res.output


def test_progress_lines_escape_user_text():
    stream = io.StringIO()
    with Reporter(mode="lines", stream=stream, heartbeat=False) as rep:
        rep.log(f"audit {FORGED}")
        update = rep(f"stage {CLEAR}", 2)
        update(2, 2, status=LINK)
    text = stream.getvalue()
    _assert_safe(text)
    assert all(line.startswith("[") for line in text.splitlines()) and safe_text(CLEAR) in text


def _warn_and_log(*args, **kwargs):
    warnings.warn("a library warning", UserWarning, stacklevel=1)
    logging.getLogger("some.library").warning("a library log message")
    raise SystemExit(0)


@pytest.mark.parametrize("args, shown", [(["-q", "validate"], False), (["audit", "-q"], False),
                                         (["audit", "-v"], True), (["audit"], True)])
def test_quiet_silences_library_warnings_and_logging(tmp_path, monkeypatch, caplog, args, shown):
    monkeypatch.setattr("traits.spec.load_spec", _warn_and_log)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        res = _invoke(*args, QUICKSTART)
    assert res.exit_code == 0, res.output
    assert any("a library warning" in str(w.message) for w in caught) is shown
    assert any("a library log message" in r.getMessage() for r in caplog.records) is shown
    assert logging.root.manager.disable == logging.NOTSET  # restored when the command ends


def test_study_summary_needs_out_and_never_writes_into_docs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    res = _invoke("study", "summary", "runs")
    assert res.exit_code == 2 and "--out" in res.output
    assert not (tmp_path / "docs").exists()


@pytest.mark.parametrize("args", [["campaign", "specs", "--out", "o", "--max-tasks", "-1"],
                                  ["campaign", "specs", "--out", "o", "--max-tasks", "0"],
                                  ["study", "generate", "--source", "sample", "--out", "g", "--min-ood", "-5"],
                                  ["study", "generate", "--source", "sample", "--out", "g", "--min-train", "0"],
                                  ["study", "generate", "--source", "sample", "--out", "g", "--seeds", "0"]])
def test_negative_counts_are_usage_errors(tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "specs").mkdir()
    res = _invoke(*args)
    assert res.exit_code == 2, res.output
    assert not (tmp_path / "o").exists() and not (tmp_path / "g").exists()
