"""Two audits side by side: the change of every headline number, with intervals, and gates on the change.

``traits compare A/results.json B/results.json`` reads two stored results (the same task with two
models, or one model before and after a change; A is the reference, B the candidate) and writes
``compare.json``, ``compare.html`` and ``compare.pdf``. Each metric gets A, B, the change B − A and
the relative change (B − A)/|A|, with 95% intervals where both results allow one:

* when A and B share their compounds, every change is *paired* (:mod:`traits.pairing`): MAE, RMSE and
  their ratios by a paired bootstrap over the compounds, λ_max, the trace and their ratios by a jackknife of
  the differences over the same structure groups (with common probes for the trace), the embedding distance
  by a paired bootstrap; identical inputs (same checkpoint, split, probe seed and settings) change by
  exactly 0 with a zero-width interval;
* otherwise: MAE per split and the OOD/ID MAE ratio by independent bootstraps; the Hessian trace by the
  estimators' standard errors (± 1.96 √(se_A² + se_B²)); a ratio whose interval both results store
  (``ratio_intervals``) by the conservative difference of the two intervals, [low_B − high_A, high_B − low_A].
  A note names the parts that could not be paired.

Gates on the change (:class:`DeltaGate`, from ``--gates FILE`` or :data:`DEFAULT_GATES`) bound the growth
or the drop of a metric, absolute or relative, e.g. "the OOD/ID MAE ratio must not grow by more than
10%". A gate decides on the point estimate; its interval says whether the change is certain (the
whole interval beyond the limit) or not. Exit codes as ``traits gate``: 0 every failing gate holds,
1 one is violated, 2 bad input.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from traits import catalogue as _catalogue
from traits.barrier import BarrierResult
from traits.errors import SpecError, TraitsError
from traits.files import ensure_dir, write_bytes_atomic, write_formats_atomic, write_text_atomic
from traits.pairing import (
    Change,
    different_kernels,
    paired_change,
    percentile_interval,
    same_inputs,
    unpaired_parts,
)
from traits.report.headline import BOOTSTRAP_SEED, Z95, Value, bootstrapped_mae, finite, mae_draws, ratio_value
from traits.results import AuditResult, Finding, Level, load_result

COMPARE_SCHEMA_VERSION = "1.1"  # 1.1: the optional loss barrier (--barrier)
FORMATS = ("json", "html", "pdf")
LIMITS = ("max_growth", "max_relative_growth", "max_drop", "max_relative_drop")
#: What a gate's metric name is made of (it is printed in tables and reports): letters, digits, underscores.
_METRIC_KEY = re.compile(r"[A-Za-z0-9_]+")


# ----------------------------------------------------------------------------------------------
# Gates on deltas


class DeltaGate(BaseModel):
    """A bound on how much one metric may change from A to B. Exactly one limit is set:

    ``max_growth`` (B − A ≤ limit), ``max_relative_growth`` ((B − A)/|A| ≤ limit), ``max_drop``
    (A − B ≤ limit), ``max_relative_drop`` ((A − B)/|A| ≤ limit). ``fail: false`` makes a violation a
    warning (exit 0) instead of a failure (exit 1)."""

    model_config = ConfigDict(extra="forbid")

    metric: str = Field(description="A metric of the comparison, e.g. mae_ratio, ood_mae, radius_ratio.",
                        strict=True, min_length=1, max_length=200)
    max_growth: float | None = Field(None, ge=0, strict=True, allow_inf_nan=False)
    max_relative_growth: float | None = Field(None, ge=0, strict=True, allow_inf_nan=False)
    max_drop: float | None = Field(None, ge=0, strict=True, allow_inf_nan=False)
    max_relative_drop: float | None = Field(None, ge=0, strict=True, allow_inf_nan=False)
    fail: bool = Field(True, strict=True)

    @model_validator(mode="after")
    def _one_limit(self) -> DeltaGate:
        given = [k for k in LIMITS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"set exactly one of {', '.join(LIMITS)} (got {', '.join(given) or 'none'})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in LIMITS if getattr(self, k) is not None)

    @property
    def limit(self) -> float:
        return float(getattr(self, self.kind))

    @property
    def name(self) -> str:
        return f"{self.metric}.{self.kind}"


#: Without ``--gates``: the OOD/ID MAE ratio may grow by at most 10% (fails); the OOD MAE by at most 10%
#: and the robust-radius ratio may drop by at most half (both warn).
DEFAULT_GATES = (
    DeltaGate(metric="mae_ratio", max_relative_growth=0.10),
    DeltaGate(metric="ood_mae", max_relative_growth=0.10, fail=False),
    DeltaGate(metric="radius_ratio", max_relative_drop=0.5, fail=False),
)


def read_gates(path: Path) -> list[DeltaGate]:
    """Gates from a YAML/JSON file: a list of gates, ``{gates: [...]}``, or the short form
    ``{gates: {METRIC: {LIMIT: VALUE, ...}}}`` (one gate per metric). Anything else (a limit that is not a
    number, a gate that is not a mapping, ...) is a SpecError naming the file and the field."""
    from traits.inputs import load_yaml_text, read_text_checked
    from traits.spec import format_validation_error

    path = Path(path)
    raw: Any = load_yaml_text(read_text_checked(path, "gates file", SpecError), path, SpecError, aliases=False)
    where = "gates"
    if isinstance(raw, dict) and "compare" in raw and isinstance(raw["compare"], dict):
        raw, where = raw["compare"], "compare.gates"
    if isinstance(raw, dict):
        raw = raw.get("gates", raw)
    if isinstance(raw, dict):
        entries = []
        for metric, limits in raw.items():
            if limits is not None and not isinstance(limits, dict):
                raise SpecError(f"{path}: {where}.{metric}: expected a mapping of a limit ({', '.join(LIMITS)}) to "
                                f"a number, got {type(limits).__name__} {str(limits)[:60]!r}")
            entries.append({"metric": metric, **(limits or {})})
        raw = entries
    if not isinstance(raw, list):
        raise SpecError(f"{path}: expected a list of gates (metric plus one of {', '.join(LIMITS)})")
    gates = []
    for i, entry in enumerate(raw):
        try:
            gates.append(DeltaGate.model_validate(entry))
        except ValidationError as exc:
            raise SpecError(format_validation_error(exc, f"{path} (gate {i + 1})")
                            .replace("invalid audit spec", "invalid gate", 1)) from None
    known = metrics()  # the catalogue's ratios and per-split quantities
    for i, g in enumerate(gates):
        if not _METRIC_KEY.fullmatch(g.metric):
            raise SpecError(f"{path}: {where}[{i}].metric: {g.metric[:60]!r} is not a metric key (letters, digits "
                            f"and underscores); choose from {', '.join(sorted(known))} or any ratio of the results "
                            "(…_ratio)")
    unknown = [g.metric for g in gates if g.metric not in known and not g.metric.endswith("_ratio")]
    if unknown:
        raise SpecError(f"{path}: unknown metric(s) {', '.join(map(repr, unknown))}; choose from "
                        f"{', '.join(sorted(known))} or any ratio of the results (…_ratio)")
    return gates


# ----------------------------------------------------------------------------------------------
# Metrics: what is compared


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: Callable[[AuditResult], str]
    better: str  # "lower" | "higher" | "" (no direction)


def _unit(result: AuditResult) -> str:
    return result.unit


def _lunit(result: AuditResult) -> str:
    from traits.report.figures import loss_unit

    return loss_unit(result.unit, result.loss)


def _none(_: AuditResult) -> str:
    return "dimensionless"


def _alpha(_: AuditResult) -> str:
    return "α units"


_SPLIT_UNITS = {"target": _unit, "loss": _lunit, "α units": _alpha}


def _compared_per_split() -> tuple[_catalogue.Metric, ...]:
    """The catalogue metrics whose per-split values are compared too (their ``split_label``)."""
    return tuple(m for m in _catalogue.catalogue() if m.split_label and m.split_key)


def _split_metrics() -> dict[str, Metric]:
    """ID and OOD values of the catalogue's per-split quantities: 'ID test MAE', ..., 'OOD robust radius'."""
    out = {}
    for split, who in (("id", "ID test"), ("ood", "OOD")):
        for m in _compared_per_split():
            key = f"{split}_{m.split_key}"
            out[key] = Metric(key, f"{who} {m.split_label}", _SPLIT_UNITS.get(m.split_unit, _none),
                              "lower" if m.direction > 0 else "higher")
    return out


def _ratio_metrics() -> dict[str, Metric]:
    """Every ratio of the catalogue the report lists (the landscape's, then the distances'), with its direction."""
    out = {}
    listed = [m for m in _catalogue.catalogue() if m.source and m.unit != "fraction"]
    for m in sorted(listed, key=lambda m: m.kind == "distance baseline"):
        better = {"high": "lower", "low": "higher", "negative": "higher"}.get(m.worse, "")
        text = m.report_label if m.unit == "difference" else f"OOD/ID {m.report_label}"
        out[m.name] = Metric(m.name, text, _none, better)
    return out


def metrics() -> dict[str, Metric]:
    """What a comparison can compare, read from the catalogue when called."""
    return {**_split_metrics(), **_ratio_metrics()}


#: :func:`metrics` for the catalogue as imported.
METRICS: dict[str, Metric] = metrics()


def _value(result: AuditResult, key: str) -> Value:
    split, _, name = key.partition("_")
    entry = next((m for m in _compared_per_split() if m.split_key == name), None) if split in ("id", "ood") else None
    if entry is not None and entry.source.startswith("accuracy."):
        acc = result.accuracy.get(split)
        return Value(finite(getattr(acc, name)) if acc is not None else None)
    if entry is not None:
        m = result.metrics.get(split)
        if m is None:
            return Value(None)
        if name == "trace":  # the Monte-Carlo error, with the sampling error where the trace has one
            return _trace_value(result, split, m)
        return Value(finite(getattr(m, name, None)), censored=bool(getattr(m, f"{name}_censored", False)))
    return ratio_value(result, key)


def _trace_value(result: AuditResult, split: str, m) -> Value:
    """A split's Hessian trace with its Monte-Carlo error and, where the trace has one, its sampling error."""
    se = finite(m.trace_stderr)
    h = result.hessian.get(split)
    t = next((t for t in h.traces if t.method == "gauss-newton+hutchinson"), None) if h else None
    if se is not None and t is not None and finite(t.sampling_stderr) is not None:
        se = math.hypot(se, t.sampling_stderr)
    v = finite(m.trace)
    if v is not None and se is not None:
        return Value(v, v - Z95 * se, v + Z95 * se, "stderr")
    return Value(v)


# ----------------------------------------------------------------------------------------------
# The comparison result


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="null")


class AuditRef(_Model):
    """What identifies one of the two audits (no local paths: the file name and hashes)."""

    label: Literal["A", "B"]
    name: str
    file: str
    results_sha256: str
    status: Level
    target: str
    unit: str
    omit: list[str]
    loss: str
    checkpoint_sha256: str | None = None
    data_hash: str = ""
    manifest_hash: str = ""
    started_at: str = ""
    traits_version: str = ""


class DeltaRow(_Model):
    key: str
    label: str
    unit: str
    better: str
    a: float | None = None
    b: float | None = None
    a_low: float | None = None
    a_high: float | None = None
    b_low: float | None = None
    b_high: float | None = None
    delta: float | None = None
    delta_low: float | None = None
    delta_high: float | None = None
    relative: float | None = None
    relative_low: float | None = None
    relative_high: float | None = None
    interval: str = Field("", description="paired bootstrap over compounds | paired jackknife over structures | "
                          "identical inputs | bootstrap | stderr | bounds | '' (no interval); see traits.pairing")
    change: Literal["better", "worse", "same", ""] = ""
    censored: bool = False


class DeltaGateOutcome(_Model):
    name: str
    metric: str
    kind: str
    limit: float
    value: float | None
    low: float | None = None
    high: float | None = None
    passed: bool
    level: Level
    certain: bool | None = Field(None, description="the whole interval lies on one side of the limit")
    statement: str


class ComparisonResult(_Model):
    schema_version: str = COMPARE_SCHEMA_VERSION
    kind: Literal["traits-comparison"] = "traits-comparison"
    a: AuditRef
    b: AuditRef
    rows: list[DeltaRow]
    gates: list[DeltaGateOutcome]
    findings: list[Finding] = Field(default_factory=list)
    status: Level = "pass"
    barrier: BarrierResult | None = Field(None, description="the loss barrier between A's and B's weights per split "
                         "(traits.barrier.BarrierResult; with --barrier only): a measurement, not a gate")

    def write(self, path: Path) -> Path:
        return write_text_atomic(path, self.model_dump_json(indent=1))

    def _repr_html_(self) -> str:
        """A compact summary for notebooks (:func:`traits.report.notebook.comparison_summary_html`)."""
        from traits.report.notebook import comparison_summary_html

        return comparison_summary_html(self)


# ----------------------------------------------------------------------------------------------
# Computing it


def _bootstrap_draws(result: AuditResult, key: str, seed: dict[str, int]) -> np.ndarray | None:
    if key in ("id_mae", "ood_mae"):
        split = key.split("_")[0]
        return mae_draws(result, split, seed=seed[split])
    if bootstrapped_mae(key):
        i, o = mae_draws(result, "id", seed=seed["id"]), mae_draws(result, "ood", seed=seed["ood"])
        if i is None or o is None:
            return None
        with np.errstate(divide="ignore", invalid="ignore"):
            return o / i
    return None


def _row(key: str, a: AuditResult, b: AuditResult) -> DeltaRow:
    metric = metrics().get(key) or Metric(key, key.replace("_", " "), _none, "")
    va, vb = _value(a, key), _value(b, key)
    row = DeltaRow(key=key, label=metric.label, unit=metric.unit(b), better=metric.better, a=va.value, b=vb.value,
                   a_low=va.low, a_high=va.high, b_low=vb.low, b_high=vb.high,
                   censored=va.censored or vb.censored)
    if va.value is None or vb.value is None:
        return row
    row.delta = vb.value - va.value
    row.relative = row.delta / abs(va.value) if va.value != 0 else None
    change = paired_change(a, b, key)
    if change is None and same_inputs(a, b) and va.value == vb.value:  # one computation on identical inputs
        change = Change(0.0, 0.0, 0.0, "identical inputs")
    if change is not None:
        row.delta = change.delta
        row.delta_low, row.delta_high = change.low, change.high
        if va.value != 0 and change.low is not None:
            row.relative_low, row.relative_high = change.low / abs(va.value), change.high / abs(va.value)
        row.interval = change.kind
        return _direction(row, metric, va, vb)
    # different compounds (or a metric without a paired computation): independent resamples or bounds
    paired = {s: bool(a.accuracy.get(s) and b.accuracy.get(s) and a.accuracy[s].ids
                      and a.accuracy[s].ids == b.accuracy[s].ids) for s in ("id", "ood")}
    da = _bootstrap_draws(a, key, {s: BOOTSTRAP_SEED for s in paired})
    db = _bootstrap_draws(b, key, {s: BOOTSTRAP_SEED if paired[s] else BOOTSTRAP_SEED + 1 for s in paired})
    if da is not None and db is not None:
        row.delta_low, row.delta_high = percentile_interval(db - da)
        with np.errstate(divide="ignore", invalid="ignore"):
            row.relative_low, row.relative_high = percentile_interval((db - da) / np.abs(da))
        row.interval = "bootstrap" if row.delta_low is not None else ""
    elif va.source == vb.source == "stderr" and va.closed and vb.closed:
        se = math.hypot((va.high - va.value) / Z95, (vb.high - vb.value) / Z95)
        row.delta_low, row.delta_high = row.delta - Z95 * se, row.delta + Z95 * se
        if va.value != 0:
            row.relative_low, row.relative_high = row.delta_low / abs(va.value), row.delta_high / abs(va.value)
        row.interval = "stderr"
    elif va.closed and vb.closed:
        row.delta_low, row.delta_high = vb.low - va.high, vb.high - va.low
        if va.low > 0 and va.high > 0:
            row.relative_low, row.relative_high = vb.low / va.high - 1, vb.high / va.low - 1
        row.interval = "bounds"
    return _direction(row, metric, va, vb)


def _direction(row: DeltaRow, metric: Metric, va: Value, vb: Value) -> DeltaRow:
    """Set ``row.change``: same, better or worse (by the metric's direction)."""
    scale = max(abs(va.value), abs(vb.value), 1e-300)
    if abs(row.delta) <= 1e-9 * scale:
        row.change = "same"
    elif metric.better:
        lower = row.delta < 0
        row.change = "better" if lower == (metric.better == "lower") else "worse"
    return row


def comparison_keys(a: AuditResult, b: AuditResult) -> list[str]:
    """Every metric both audits could have: accuracy, per-split curvature and radius, then the ratios."""
    keys = [k for k in _split_metrics()]
    ratio_keys = [k for k in _ratio_metrics()]
    extra = [k for k in dict.fromkeys([*a.ratios, *b.ratios]) if k not in ratio_keys]
    return keys + ratio_keys + extra


def evaluate_delta_gate(gate: DeltaGate, row: DeltaRow | None) -> DeltaGateOutcome:
    kind, limit = gate.kind, gate.limit
    relative = kind.startswith("max_relative")
    sign = 1.0 if kind.endswith("growth") else -1.0  # a drop is the negative of the change
    what = {"max_growth": "growth", "max_relative_growth": "relative growth", "max_drop": "drop",
            "max_relative_drop": "relative drop"}[kind]
    label = row.label if row is not None else gate.metric
    base = dict(name=gate.name, metric=gate.metric, kind=kind, limit=limit)
    point = None if row is None else (row.relative if relative else row.delta)
    if point is None:
        return DeltaGateOutcome(**base, value=None, passed=True, level="warn",
                                statement=f"{label}: {what} not measured (missing in A or B, or A is 0); "
                                          "the gate was not applied")
    value = sign * point + 0.0  # no negative zero in the statement
    lo_raw, hi_raw = (row.relative_low, row.relative_high) if relative else (row.delta_low, row.delta_high)
    low = high = None
    if lo_raw is not None and hi_raw is not None:
        low, high = sorted((sign * lo_raw, sign * hi_raw))
    ok = value <= limit
    level: Level = "pass" if ok else ("fail" if gate.fail else "warn")
    certain = None if low is None else (low > limit if not ok else high <= limit)
    fmt = (lambda x: f"{100 * x:+.1f}%") if relative else (lambda x: f"{x:+.4g}")
    text = f"{label}: {what} {fmt(value)} from A to B (limit {fmt(limit).lstrip('+')})"
    if low is not None:
        text += f", 95% interval [{fmt(low)}, {fmt(high)}]"
        if not ok:
            text += ": the whole interval exceeds the limit" if certain else ": the interval still includes the limit"
        elif not certain:
            text += ": within the limit, but the interval reaches beyond it"
    text += "" if ok else ("; fails the comparison" if gate.fail else "; warns")
    return DeltaGateOutcome(**base, value=value, low=low, high=high, passed=level != "fail", level=level,
                            certain=certain, statement=text)


def _task_findings(a: AuditResult, b: AuditResult) -> list[Finding]:
    found = []
    diffs = [name for name, x, y in (("target", a.target, b.target), ("unit", a.unit, b.unit),
                                     ("omitted elements", a.omit, b.omit), ("loss", a.loss, b.loss))
             if x != y]
    if diffs:
        found.append(Finding(id="different_task", level="warn",
                             statement=f"A and B are audits of different tasks (their {', '.join(diffs)} differ): "
                                       "the deltas compare unlike quantities"))
    if a.provenance.data_hash and b.provenance.data_hash and a.provenance.data_hash != b.provenance.data_hash:
        found.append(Finding(id="different_data", level="warn",
                             statement="A and B were audited on different data (their data hashes differ)"))
    elif a.provenance.manifest_hash and b.provenance.manifest_hash and \
            a.provenance.manifest_hash != b.provenance.manifest_hash:
        found.append(Finding(id="different_split", level="warn",
                             statement="A and B split the same data differently (their split manifests differ): "
                                       "their ID test and OOD sets are not the same compounds"))
    same = a.provenance.checkpoint_sha256 and a.provenance.checkpoint_sha256 == b.provenance.checkpoint_sha256
    if same_inputs(a, b):
        found.append(Finding(id="same_inputs", level="pass",
                             statement="A and B audit the same checkpoint on the same split with the same probe seed "
                                       "and settings: every change is exactly 0"))
    elif same:
        found.append(Finding(id="same_checkpoint", level="pass",
                             statement="A and B audit the same checkpoint (equal SHA-256): differences come from "
                                       "the audit settings (probe seed or probe settings) or the CPU kernels, not "
                                       "the model"))
    if different_kernels(a, b):
        found.append(Finding(id="different_kernels", level="pass",
                             statement="A and B ran on different CPU kernels (provenance.kernels): the same inputs "
                                       "give numbers that differ in the last digits and, in crystals whose "
                                       "neighbours tie in distance, other graphs and predictions"))
    unpaired = unpaired_parts(a, b)
    if unpaired:
        found.append(Finding(id="unpaired", level="pass",
                             statement="A and B do not share their " + ", ".join(unpaired) + ": those changes are "
                                       "computed from independent samples (wider intervals than paired ones)"))
    return found


def _ref(label: str, result: AuditResult, path: Path | None) -> AuditRef:
    p = result.provenance
    if path is not None and Path(path).is_file():
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        file = Path(path).name if Path(path).parent.name in ("", ".") else f"{Path(path).parent.name}/{Path(path).name}"
    else:
        digest = hashlib.sha256(result.model_dump_json().encode("utf-8")).hexdigest()
        file = ""
    return AuditRef(label=label, name=result.name, file=file, results_sha256=digest, status=result.status,
                    target=result.target, unit=result.unit, omit=list(result.omit), loss=result.loss,
                    checkpoint_sha256=p.checkpoint_sha256, data_hash=p.data_hash, manifest_hash=p.manifest_hash,
                    started_at=p.started_at, traits_version=p.traits_version)


def compare_results(a: AuditResult, b: AuditResult, gates: Iterable[DeltaGate] = DEFAULT_GATES, *,
                    a_path: Path | None = None, b_path: Path | None = None) -> ComparisonResult:
    """Compare audit ``b`` with the reference ``a``: every metric's change, then the gates on it."""
    keys = comparison_keys(a, b)
    gates = list(gates)
    for g in gates:  # a gate on a ratio the catalogue does not list still gets its row
        if g.metric not in keys:
            keys.append(g.metric)
    rows = [_row(k, a, b) for k in keys]
    by_key = {r.key: r for r in rows}
    outcomes = [evaluate_delta_gate(g, by_key.get(g.metric)) for g in gates]
    shown = [r for r in rows if r.a is not None or r.b is not None or r.key in {g.metric for g in gates}]
    findings = _task_findings(a, b)
    levels = {o.level for o in outcomes} | {f.level for f in findings}
    status: Level = "fail" if "fail" in levels else ("warn" if "warn" in levels else "pass")
    return ComparisonResult(a=_ref("A", a, a_path), b=_ref("B", b, b_path), rows=shown, gates=outcomes,
                            findings=findings, status=status)


def exit_code(comparison: ComparisonResult) -> int:
    """0 when every failing gate holds (warnings allowed), 1 when one is violated."""
    return 1 if any(not g.passed for g in comparison.gates) else 0


# ----------------------------------------------------------------------------------------------
# Writing it


def _ratio_points(result: AuditResult, series: str) -> list[Any]:
    from traits.report.sections import summary_ratio_points

    return summary_ratio_points(result, series=series)


def render_html(comparison: ComparisonResult, a: AuditResult, b: AuditResult, *, medium: str = "screen") -> str:
    from markupsafe import Markup

    from traits.report import figures as F
    from traits.report.render import template_environment, templates_dir

    points = _ratio_points(a, "A (reference)") + _ratio_points(b, "B (candidate)")
    figure = None
    if points:
        with F.style():
            enc = F.encode(F.ratio_figure(points), svg=medium == "screen",
                           png_dpi=200 if medium == "print" else None, salt="traits-compare")
        figure = {"src": enc.svg if medium == "screen" else enc.png, "width": enc.width_in}
    env = template_environment()
    return env.get_template("compare.html.j2").render(
        c=comparison, ra=a, rb=b, figure=figure, medium=medium,
        css=Markup((templates_dir() / "report.css").read_text(encoding="utf-8")),
        css_narrow=Markup((templates_dir() / "report-narrow.css").read_text(encoding="utf-8")),
    )


def write_comparison(comparison: ComparisonResult, a: AuditResult, b: AuditResult, out_dir: Path,
                     formats: Iterable[str] = FORMATS) -> dict[str, Path]:
    """Write ``compare.json`` / ``compare.html`` / ``compare.pdf``; a failed write removes the others."""
    from traits.report.render import html_to_pdf

    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise TraitsError(f"unknown format(s) {', '.join(map(repr, unknown))}; choose from json, html, pdf")
    out_dir = ensure_dir(Path(out_dir))
    payload: dict[str, str | bytes] = {}
    if "json" in formats:
        payload["json"] = comparison.model_dump_json(indent=1)
    if "html" in formats:
        payload["html"] = render_html(comparison, a, b, medium="screen")
    if "pdf" in formats:
        payload["pdf"] = html_to_pdf(render_html(comparison, a, b, medium="print"))
    return write_formats_atomic(out_dir, "compare", payload)


def junit_xml(comparison: ComparisonResult) -> bytes:
    """The delta gates as JUnit XML (one case per gate; warnings as skipped), like ``traits gate``'s."""
    from traits.junit import Case, cases_xml

    cases = []
    for g in comparison.gates:
        status = "fail" if g.level == "fail" else ("warn" if g.level == "warn" else "pass")
        interval = f"[{g.low:.6g}, {g.high:.6g}] (95%)" if g.low is not None and g.high is not None else "none"
        details = {"value": "not measured" if g.value is None else f"{g.value:.6g}",
                   "threshold": f"<= {g.limit:g} ({g.kind})", "interval": interval, "level": g.level}
        cases.append(Case(g.name, status, g.statement, details))
    return cases_xml(f"traits.compare.{comparison.a.name}.vs.{comparison.b.name}", [("", cases, 0.0)], 0.0,
                     comparison.b.started_at)


def compare_files(a_path: Path, b_path: Path, gates_path: Path | None = None, out_dir: Path = Path("."),
                  formats: Iterable[str] = FORMATS, junit: Path | None = None, *, barrier_points: int | None = None,
                  device: str = "auto", progress=None) -> ComparisonResult:
    """What ``traits compare`` does: load, compare, gate, write; returns the comparison. With ``barrier_points``,
    also the loss barrier between the two models' weights (:mod:`traits.barrier`; needs their checkpoints and data)."""
    a, b = load_result(a_path), load_result(b_path)
    gates = read_gates(gates_path) if gates_path is not None else list(DEFAULT_GATES)
    comparison = compare_results(a, b, gates, a_path=Path(a_path), b_path=Path(b_path))
    if barrier_points is not None:
        from traits.barrier import barrier_between

        comparison.barrier = barrier_between(a, b, Path(a_path), Path(b_path), points=barrier_points, device=device,
                                             progress=progress)
    write_comparison(comparison, a, b, out_dir, formats)
    if junit is not None:
        write_bytes_atomic(Path(junit), junit_xml(comparison))
    return comparison


def print_comparison(comparison: ComparisonResult, console) -> None:
    """The gates and the changed headline numbers as a rich table."""
    from rich.table import Table
    from rich.text import Text

    colours = {"pass": "green", "warn": "yellow", "fail": "red"}
    table = Table(title=Text(f"B {comparison.b.name} vs A {comparison.a.name}: {comparison.status.upper()}"),
                  title_justify="left")
    table.add_column("level")
    table.add_column("gate on the change")
    for g in comparison.gates:
        table.add_row(Text(g.level, style=colours[g.level]), Text(g.statement))
    for f in comparison.findings:
        table.add_row(Text(f.level, style=colours[f.level]), Text(f.statement))
    console.print(table)
    if comparison.barrier is not None:
        for split, s in comparison.barrier.splits.items():
            height = "diverged" if s.diverged else f"{s.height:.4g}"
            share = "" if s.relative is None else f" ({100 * s.relative:.3g} % of the larger end)"
            console.print(Text(f"loss barrier A→B on {split.upper()} ({s.n_samples} structures): {height}{share}, "
                               f"at t = {_g(s.position if s.height else None)}; ends {_g(s.loss_a)} → {_g(s.loss_b)} "
                               "(a measurement, not a gate)"))


def _g(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"
