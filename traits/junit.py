"""Gates and findings as JUnit XML, for CI systems that display test reports.

Two test suites: ``traits.<audit>`` with one test case per gate (in gate order) and
``traits.<audit>.findings`` with one per finding that is not a gate's own (the domain-shift case,
discontinuities, checkpoint checks, ...). Every case states its value, threshold and interval (where
the result has one) in its ``system-out``; a failed gate is a ``<failure>``; a warning (a violated
warn-only gate, a gate that was not measured, a warn finding) is a ``<skipped message=...>`` so that
dashboards show it apart from the passes. Each case's ``time`` is the wall time of the audit stage
that measured it (``provenance.wall_seconds``), the suites' the audit's total.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree as ET

from traits import catalogue as _catalogue
from traits.files import write_bytes_atomic
from traits.progress import safe_text
from traits.results import AuditResult

#: The audit stage (keys of ``provenance.wall_seconds``, ``hessian`` meaning every ``hessian_<split>``)
#: that measured each gate (the metric catalogue's ``stage``) or finding.
STAGE_OF = {m.name: m.stage for m in _catalogue.catalogue() if m.gate_field} | {
    "domain_shift": "shift",
    "shift_input": "shift",
    "discontinuity": "surfaces",
    "unseen_elements": "data",
    "checkpoint": "model",
}


@dataclass
class Case:
    """One JUnit test case: ``status`` is pass, fail or warn (warn is written as skipped)."""

    name: str
    status: str
    message: str
    details: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def stage_seconds(result: AuditResult, key: str) -> float:
    """Wall time of the stage that measured gate or finding ``key`` (0 when the stage was not timed)."""
    walls = result.provenance.wall_seconds
    stage = STAGE_OF.get(key) or STAGE_OF.get(key.split("_", 1)[0]) or next(
        (v for k, v in STAGE_OF.items() if key.startswith(k)), "")
    if stage == "hessian":
        return float(sum(v for k, v in walls.items() if k.startswith("hessian")))
    if stage == "surfaces" and stage not in walls:
        stage = "surface"
    return float(walls.get(stage, 0.0))


def _fmt(x) -> str:
    if x is None:
        return "not measured"
    if isinstance(x, float):
        return f"{x:.6g}"
    return str(x)


def _interval(result: AuditResult, name: str) -> str:
    from traits.report.headline import ratio_value

    if name not in result.ratios:
        return "none"
    v = ratio_value(result, name)
    return f"[{v.low:.6g}, {v.high:.6g}] (95%, {v.source})" if v.has_interval else "none"


def audit_cases(result: AuditResult) -> tuple[list[Case], list[Case]]:
    """(gate cases, finding cases) of a result."""
    gate_cases = []
    for g in result.gates:
        details = {"value": _fmt(g.value), "threshold": f"{g.comparison} {g.threshold:g}",
                   "interval": _interval(result, g.name), "level": g.level}
        if g.evidence:
            details["study evidence"] = g.evidence
        status = "fail" if g.level == "fail" else ("warn" if g.level == "warn" or g.value is None else "pass")
        gate_cases.append(Case(g.name, status, g.statement, details, stage_seconds(result, g.name)))
    gated = {g.name for g in result.gates}
    finding_cases = []
    for f in result.findings:
        if f.id in gated:
            continue
        numbers = {k: _fmt(v) for k, v in f.numbers.items()}
        details = {"value": numbers.pop("value", "—"), "threshold": numbers.pop("threshold", "none (not a gate)"),
                   "interval": _interval(result, f.id), "level": f.level, **numbers}
        for name, text in f.evidence.items():
            details[f"study evidence ({name})"] = text
        finding_cases.append(Case(f.id, f.level if f.level in ("fail", "warn") else "pass", f.statement, details,
                                  stage_seconds(result, f.id)))
    return gate_cases, finding_cases


def _suite(parent: ET.Element, name: str, cases: list[Case], seconds: float, timestamp: str) -> ET.Element:
    failures = sum(c.status == "fail" for c in cases)
    skipped = sum(c.status == "warn" for c in cases)
    suite = ET.SubElement(parent, "testsuite", name=name, tests=str(len(cases)), failures=str(failures),
                          errors="0", skipped=str(skipped), time=f"{seconds:.3f}", timestamp=timestamp)
    for c in cases:
        case = ET.SubElement(suite, "testcase", classname=name, name=c.name, time=f"{c.seconds:.3f}")
        text = "\n".join(f"{k}: {v}" for k, v in c.details.items())
        if c.status == "fail":
            failure = ET.SubElement(case, "failure", message=c.message, type="GateFailed")
            failure.text = f"{c.name}: {text.replace(chr(10), '; ')}"
        elif c.status == "warn":
            ET.SubElement(case, "skipped", message=f"warning: {c.message}")
        out = ET.SubElement(case, "system-out")
        out.text = ("warning: " if c.status == "warn" else "") + f"{c.message}\n{text}"
    return suite


def cases_xml(name: str, groups: list[tuple[str, list[Case], float]], seconds: float, timestamp: str) -> bytes:
    """A ``<testsuites>`` document: one suite per (suffix, cases, seconds) group, named ``name`` + suffix
    (a group without cases is left out, except the first)."""
    timestamp = timestamp[:19] or "1970-01-01T00:00:00"
    every = [c for _, cases, _ in groups for c in cases]
    suites = ET.Element("testsuites", name="traits", tests=str(len(every)),
                        failures=str(sum(c.status == "fail" for c in every)), errors="0",
                        skipped=str(sum(c.status == "warn" for c in every)), time=f"{seconds:.3f}")
    for k, (suffix, cases, suite_seconds) in enumerate(groups):
        if cases or k == 0:
            _suite(suites, name + suffix, cases, suite_seconds, timestamp)
    for element in suites.iter():  # control characters (a tampered name's ESC) are not XML: written escaped
        element.text = safe_text(element.text, keep_newlines=True) if element.text else element.text
        for key, value in element.attrib.items():
            element.set(key, safe_text(value))
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True)


def junit_xml(result: AuditResult) -> bytes:
    gate_cases, finding_cases = audit_cases(result)
    total = result.provenance.wall_seconds.get("total", 0.0)
    # the findings suite takes the stages its cases come from, each once (the gates suite takes the total)
    stages = {STAGE_OF.get(c.name) or c.name.split("_", 1)[0]: c.seconds for c in finding_cases}
    return cases_xml(f"traits.{result.name}", [("", gate_cases, total), (".findings", finding_cases,
                                                                           sum(stages.values()))],
                     total, result.provenance.started_at)


def write_junit(result: AuditResult, path: Path) -> Path:
    return write_bytes_atomic(path, junit_xml(result))
