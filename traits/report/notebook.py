"""Compact HTML summaries for a notebook: an audit (:func:`audit_summary_html`) and a comparison of two audits
(:func:`comparison_summary_html`), meant for ``_repr_html_``.

Each is a small fragment (no ``<html>``, no stylesheet, no script, inline styles only, so that it looks the same
in Jupyter, VS Code and a static export): the verdict as a badge, what was found in plain sentences (the report's
first screen, :mod:`traits.report.glance`), and the headline ratios with their 95 % intervals, each bracket
marked with its kind. Every string from a result (names, units, element symbols, finding statements) is escaped.
"""

from __future__ import annotations

from typing import Any

from markupsafe import Markup

from traits.report.formatting import INTERVAL_KINDS, fmt_interval, fmt_num, kind_legend, kind_marker
from traits.report.glance import glance
from traits.report.headline import headlines
from traits.results import AuditResult

_COLOURS = {"pass": ("#1b7f3b", "#e3f4e8"), "warn": ("#8a5a00", "#fff1cc"), "fail": ("#b3261e", "#fde3e1")}
_BOX = "font-family: sans-serif; font-size: 13px; line-height: 1.4; max-width: 52em"
_CELL = "padding: 2px 8px; text-align: {align}; border-bottom: 1px solid #d5d9e0"
_MUTED = "color: #5b6270; font-size: 0.9em"
#: What each interval a comparison row stores (``DeltaRow.interval``) is, in words; a value not listed here is
#: shown as stored (it names its kind already, e.g. "paired bootstrap over compounds").
COMPARISON_KINDS = {"bootstrap": "bootstrap over compounds", "stderr": "Monte-Carlo error",
                    "bounds": "difference of the stored intervals",
                    "identical inputs": "identical inputs (one computation, no error)"}


def comparison_kind(interval: str) -> str:
    """The kind of a comparison row's interval (``DeltaRow.interval``) in words; '' for none."""
    interval = str(interval or "")
    return COMPARISON_KINDS.get(interval, interval)


def _badge(level: str) -> Markup:
    ink, bg = _COLOURS.get(level, ("#3a4a5c", "#f4f6f9"))
    return Markup('<span style="display: inline-block; padding: 0 0.5em; border: 1px solid {ink}; border-radius: '
                  '0.3em; color: {ink}; background: {bg}; font-weight: bold">{text}</span>').format(
        ink=ink, bg=bg, text=str(level).upper())


def _mark(kind: str) -> str:
    """A kind's mark: its own, a paired kind's base kind's ('paired bootstrap over compounds' → B), else Δ."""
    if not kind:
        return ""
    return kind_marker(kind) or kind_marker(kind.removeprefix("paired ")) or "Δ"


def _kind(kind: str) -> Markup:
    mark = _mark(kind)
    if not mark:
        return Markup("")
    return Markup('<sup title="{kind}" style="color: #2c5d8f; font-weight: 600">{mark}</sup>').format(kind=kind,
                                                                                                      mark=mark)


def _bracket(low: Any, high: Any, kind: str) -> Markup:
    text = fmt_interval(low, high)
    if not text:
        return Markup("")
    return Markup('<span style="{muted}">{text}{kind}</span>').format(muted=_MUTED, text=text, kind=_kind(kind))


def _legend(kinds: list[str]) -> Markup:
    known = kind_legend(kinds)
    other = [k for k in dict.fromkeys(kinds) if k and k not in INTERVAL_KINDS]
    if not known and not other:
        return Markup("")
    parts = [Markup("<sup>{}</sup>&#8239;{}").format(mark, kind) for mark, kind, _ in known]
    parts += [Markup("<sup>{}</sup>&#8239;{}").format(_mark(kind), kind) for kind in other]
    return Markup('<div style="{muted}">Brackets: 95 % intervals, marked with their kind: {parts}.</div>').format(
        muted=_MUTED, parts=Markup("; ").join(parts))


def _td(content: Any, align: str = "left") -> Markup:
    return Markup('<td style="{style}">{content}</td>').format(style=_CELL.format(align=align), content=content)


def _th(content: Any, align: str = "left") -> Markup:
    return Markup('<th style="{style}; border-bottom: 2px solid #1d2129">{content}</th>').format(
        style=_CELL.format(align=align), content=content)


def audit_summary_html(result: AuditResult) -> str:
    """An audit in a few lines of HTML: name and badge, the first screen's sentences, and the headline numbers
    (ID, OOD, OOD/ID with its bracket and the bracket's kind)."""
    g = glance(result)
    rows, kinds = [], []
    for h in headlines(result):
        v = h.ratio
        if v.value is None and h.id.value is None and h.ood.value is None:
            continue
        for x in (h.id, h.ood, v):
            if x.has_interval and x.kind:
                kinds.append(x.kind)
        unit = Markup(' <span style="{}">({})</span>').format(_MUTED, h.unit) if h.unit else Markup("")
        ratio = Markup("{}{}").format(fmt_num(v.value, 3), Markup(" ") + _bracket(v.low, v.high, v.kind)
                                      if v.has_interval else Markup(""))
        if v.status and v.status != "ok":
            ratio += Markup(' <span style="{}">{}</span>').format(_MUTED, v.status)
        rows.append(Markup("<tr>{}{}{}{}</tr>").format(
            _td(Markup("{}{}").format(h.label, unit)), _td(fmt_num(h.id.value), "right"),
            _td(fmt_num(h.ood.value), "right"), _td(ratio, "right")))
    table = Markup("")
    if rows:
        table = Markup('<table style="border-collapse: collapse; margin: 0.4em 0"><thead><tr>{}{}{}{}</tr></thead>'
                       "<tbody>{}</tbody></table>").format(
            _th("quantity"), _th("ID test", "right"), _th("OOD", "right"), _th("OOD / ID", "right"),
            Markup("").join(rows))
    caveat = Markup(' <strong style="color: #8a5a00">{}</strong>').format(g.caveat) if g.caveat else Markup("")
    return str(Markup(
        '<div class="traits-audit" style="{box}"><div><strong>TRAITS audit</strong> {name} {badge}{caveat}</div>'
        '<p style="margin: 0.4em 0">{text}</p>{table}{legend}</div>').format(
        box=_BOX, name=result.name, badge=_badge(result.status), caveat=caveat, text=g.text, table=table,
        legend=_legend(kinds)))


# ----------------------------------------------------------------------------------------------
# A comparison of two audits


def _row(comparison, key: str):
    return next((r for r in comparison.rows if r.key == key), None)


def comparison_sentence(comparison) -> str:
    """What changed from A to B, in words: the OOD/ID MAE ratio's change with its interval (significant when the
    interval excludes 0), then the gates on the change that failed or warned."""
    row = _row(comparison, "mae_ratio")  # the error ratio: this sentence is worded for it
    parts = []
    if row is None or row.a is None or row.b is None:
        parts.append("The OOD/ID MAE ratio is not measured in both audits")
    else:
        change = f"The OOD/ID MAE ratio goes from {fmt_num(row.a, 3)} (A) to {fmt_num(row.b, 3)} (B)"
        if row.delta is not None:
            change += f", a change of {fmt_num(row.delta, 3)}"
            if row.delta_low is not None and row.delta_high is not None:
                kind = comparison_kind(row.interval)
                change += f" (95 % interval {fmt_interval(row.delta_low, row.delta_high)}{', ' + kind if kind else ''})"
                if row.delta_low > 0:
                    change += ": a significant increase"
                elif row.delta_high < 0:
                    change += ": a significant decrease"
                else:
                    change += ": not distinguishable from no change"
        parts.append(change)
    fired = [g for g in comparison.gates if g.level != "pass"]
    if fired:
        names = ", ".join(f"{g.metric} ({g.level})" for g in fired)
        parts.append(f"gates on the change that did not pass: {names}")
    elif comparison.gates:
        parts.append("every gate on the change holds")
    text = "; ".join(parts) + "."
    return text


def comparison_summary_keys() -> tuple[str, ...]:
    """The rows of a comparison's summary: every gated metric of the catalogue, an error ratio followed by its OOD
    and ID values ('mae_ratio', 'ood_mae', 'id_mae', 'lambda_ratio', ...)."""
    from traits import catalogue

    keys: list[str] = []
    for m in catalogue.gated():
        keys.append(m.name)
        if m.kind == "error" and m.split_key:
            keys += [f"ood_{m.split_key}", f"id_{m.split_key}"]
    return tuple(keys)


def comparison_summary_html(comparison) -> str:
    """A comparison (:class:`traits.compare.ComparisonResult`) in a few lines of HTML: B against A with the
    comparison's badge, the change in words, and the headline rows (A, B, change with its bracket and kind)."""
    keys = comparison_summary_keys()
    rows, kinds = [], []
    for key in keys:
        row = _row(comparison, key)
        if row is None or (row.a is None and row.b is None):
            continue
        kind = comparison_kind(row.interval)
        if kind and row.delta_low is not None:
            kinds.append(kind)
        unit = Markup(' <span style="{}">({})</span>').format(_MUTED, row.unit) if row.unit else Markup("")
        delta = Markup("{}{}").format(fmt_num(row.delta, 3), Markup(" ") + _bracket(row.delta_low, row.delta_high, kind)
                                      if row.delta_low is not None else Markup(""))
        rows.append(Markup("<tr>{}{}{}{}</tr>").format(
            _td(Markup("{}{}").format(row.label, unit)), _td(fmt_num(row.a, 4), "right"),
            _td(fmt_num(row.b, 4), "right"), _td(delta, "right")))
    table = Markup("")
    if rows:
        table = Markup('<table style="border-collapse: collapse; margin: 0.4em 0"><thead><tr>{}{}{}{}</tr></thead>'
                       "<tbody>{}</tbody></table>").format(
            _th("quantity"), _th("A", "right"), _th("B", "right"), _th("change B − A", "right"),
            Markup("").join(rows))
    return str(Markup(
        '<div class="traits-comparison" style="{box}"><div><strong>TRAITS comparison</strong> B: {b} vs A: {a} '
        '{badge}</div><p style="margin: 0.4em 0">{text}</p>{table}{legend}</div>').format(
        box=_BOX, b=comparison.b.name, a=comparison.a.name, badge=_badge(comparison.status),
        text=comparison_sentence(comparison), table=table, legend=_legend(kinds)))
