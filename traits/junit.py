"""Gates as JUnit XML, one test case per gate, for CI systems that display test reports."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET

from traits.files import write_bytes_atomic
from traits.results import AuditResult


def junit_xml(result: AuditResult) -> bytes:
    failures = sum(g.level == "fail" for g in result.gates)
    skipped = sum(g.value is None for g in result.gates)
    seconds = f"{result.provenance.wall_seconds.get('total', 0.0):.3f}"
    suites = ET.Element("testsuites", name="traits", tests=str(len(result.gates)), failures=str(failures),
                        errors="0", time=seconds)
    suite = ET.SubElement(suites, "testsuite", name=f"traits.{result.name}", tests=str(len(result.gates)),
                          failures=str(failures), errors="0", skipped=str(skipped), time=seconds,
                          timestamp=result.provenance.started_at[:19] or "1970-01-01T00:00:00")
    for g in result.gates:
        case = ET.SubElement(suite, "testcase", classname=f"traits.{result.name}", name=g.name, time="0")
        if g.value is None:
            ET.SubElement(case, "skipped", message=g.statement)
        elif g.level == "fail":
            failure = ET.SubElement(case, "failure", message=g.statement, type="GateFailed")
            failure.text = f"{g.name}: value {g.value!r} violates {g.comparison} {g.threshold!r}"
        elif g.level == "warn":
            out = ET.SubElement(case, "system-out")
            out.text = f"warning: {g.statement}"
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True)


def write_junit(result: AuditResult, path: Path) -> Path:
    return write_bytes_atomic(path, junit_xml(result))
