"""The first screen of a report: what the audit found, in two or three plain sentences.

:func:`glance` reads an :class:`~traits.results.AuditResult` and nothing else (a pure function: no rendering,
no files) and says

1. what was compared: the ID test set against the OOD set (the omitted chemistry, the held-out rule, the named
   sets or a random split), with their sizes, and how the OOD error changed: the OOD/ID MAE ratio with its
   interval and the kind of that interval;
2. which gates fired (fail, warn, undetermined) and why;
3. what the loss landscape adds, or that it adds nothing; where the OOD set lies relative to training (the
   domain-shift case) when that explains the errors; and that training never saw some OOD elements when the
   verdict found so, whatever the status.

The wording follows the numbers, never the other way round: an MAE ratio whose interval excludes 1 is a
significant change even when it stays under its gate ("a significant increase, within the gate"), an
interval that includes 1 is "not distinguishable", and a ratio beyond its gate whose interval still reaches
below the gate says so. The sentences are plain text; the report escapes them like every other string.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traits import catalogue as _catalogue
from traits.report.formatting import fmt_interval, fmt_num
from traits.report.headline import Value, ratio_value
from traits.results import SPLIT_LABELS, AuditResult, GateOutcome

#: The error gate the first sentence words (:func:`error_change`): the MAE ratio, the one sentence of this
#: module written for one metric.
ERROR_GATE = "mae_ratio"


def landscape_gates() -> tuple[str, ...]:
    """Gates on the loss landscape (what "the landscape adds" reads): the catalogue's gated landscape and surface
    metrics; the error gate is the error itself, the embedding distance the domain shift."""
    return tuple(m.name for m in _catalogue.gated() if m.kind in ("landscape", "surface"))


def gate_names() -> dict[str, str]:
    """Short names of the gated quantities, as the sentences use them (the catalogue's ``short``)."""
    return {m.name: m.short or m.gate_label or f"OOD/ID {m.label} ratio" for m in _catalogue.gated()}


#: The two above for the catalogue as imported.
LANDSCAPE_GATES = landscape_gates()
GATE_NAMES = gate_names()


def _entry(name: str) -> _catalogue.Metric | None:
    return next((m for m in _catalogue.gated() if m.name == name), None)


def _name(name: str) -> str:
    return gate_names().get(name, name)


@dataclass(frozen=True)
class Glance:
    """The first screen's sentences (plain text, unescaped) and, for a status line, a caveat that must stand
    next to the badge (training never saw some OOD elements), '' when there is none; ``risk``: the adopted trust
    score's sentence (:func:`risk_sentence`), '' when the result carries none (not part of ``text``)."""

    sentences: tuple[str, ...]
    caveat: str = ""
    risk: str = ""

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


# ----------------------------------------------------------------------------------------------
# What was compared


def _join(items: list[str], word: str = "and") -> str:
    items = [i for i in items if i]
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {word} {items[-1]}"


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n:,} {one if n == 1 else (many or one + 's')}".replace(",", "\u202f")


def _named_sets(result: AuditResult) -> dict[str, str]:
    sets = ((result.spec or {}).get("data") or {}).get("sets") or {}
    return {k: Path(str(v)).name for k, v in sets.items() if v} if isinstance(sets, dict) else {}


def ood_phrase(result: AuditResult) -> str:
    """Who the OOD compounds are, as a noun phrase: 'the compounds containing Fe', 'the cubic compounds', 'the
    named OOD set ood.json', 'a random held-out set (no chemistry omitted)'."""
    if result.omit:
        return f"the compounds containing {_join(list(result.omit), 'or')}"
    holdout = (result.spec or {}).get("holdout")
    if isinstance(holdout, dict) and holdout.get("values"):
        kind, values = str(holdout.get("kind", "")), [str(v) for v in holdout["values"]]
        many = len(values) > 1
        if kind == "element":
            return f"the compounds containing {_join(values, 'or')}"
        if kind == "chemsys":
            return f"the compounds of the chemical system{'s' if many else ''} {_join(values, 'or')}"
        if kind == "spacegroup":
            return f"the compounds of space group{'s' if many else ''} {_join(values, 'or')}"
        if kind == "crystal_system":
            return f"the {_join(values, 'or')} compounds"
        if kind in ("group", "row"):
            return f"the compounds containing an element of periodic-table {kind}{'s' if many else ''} " \
                   f"{_join(values, 'or')}"
        return f"the compounds held out by the rule {kind} {', '.join(values)}"
    named = _named_sets(result)
    if named.get("ood"):
        return f"the named OOD set {named['ood']}"
    return "a random held-out set (no chemistry omitted)"


def _count(result: AuditResult, split: str) -> int | None:
    acc = result.accuracy.get(split)
    if acc is not None and acc.n:
        return acc.n
    st = result.splits.get(split)
    return st.count if st is not None else None


def _ood_who(result: AuditResult) -> str:
    """'the 160 compounds containing Fe', 'the named OOD set ood.json (40 compounds)'."""
    n, phrase = _count(result, "ood"), ood_phrase(result)
    if n is None:
        return phrase
    if phrase.startswith("the compounds "):
        return f"the {_plural(n, 'compound')} {phrase.removeprefix('the compounds ')}"
    if phrase.startswith("a random"):
        return f"a random held-out set of {_plural(n, 'compound')} (no chemistry omitted)"
    if phrase.startswith("the ") and phrase.endswith(" compounds"):  # 'the cubic compounds'
        return f"the {_plural(n, phrase.removeprefix('the ').removesuffix(' compounds') + ' compound')}"
    return f"{phrase} ({_plural(n, 'compound')})"


def _id_who(result: AuditResult) -> str:
    n, named = _count(result, "id"), _named_sets(result).get("id")
    if named:
        return f"the named ID set {named}" + (f" ({_plural(n, 'compound')})" if n else "")
    return f"the {_plural(n, 'ID test compound')}" if n else "the ID test set"


# ----------------------------------------------------------------------------------------------
# The error change


def _num(x: float | None, digits: int = 3) -> str:
    return fmt_num(x, digits)


def _bracket(v: Value) -> str:
    """'95 % interval [1.14, 1.66], bootstrap over compounds' ('' without an interval)."""
    if not v.has_interval:
        return ""
    text = f"95 % interval {fmt_interval(v.low, v.high)}"
    return f"{text}, {v.kind}" if v.kind else text


def _gate(result: AuditResult, name: str) -> GateOutcome | None:
    return next((g for g in result.gates if g.name == name), None)


def _threshold(g: GateOutcome) -> str:
    return f"{g.comparison.replace('<=', '≤').replace('>=', '≥')} {fmt_num(g.threshold, 3)}"


def error_change(result: AuditResult) -> str:
    """How the OOD error changed, worded from the MAE ratio, its interval and its gate: 'the MAE is 1.37× that of
    the 170 ID test compounds (95 % interval [1.14, 1.66], bootstrap over compounds): a significant increase (the
    interval excludes 1), within its gate (≤ 2)'."""
    v = ratio_value(result, ERROR_GATE)
    if v.value is None:
        if v.status == "undefined":
            return "the OOD/ID MAE ratio is undefined (the ID MAE is not positive)"
        return "the OOD/ID MAE ratio was not measured (the audit holds no accuracy for both sets)"
    inside = _bracket(v)
    text = f"the MAE is {_num(v.value)}× that of {_id_who(result)}" + (f" ({inside})" if inside else "")
    g = _gate(result, ERROR_GATE)
    lo, hi = v.low, v.high
    if g is not None and g.determined and g.level != "pass":
        verdict = "which fails the audit" if g.level == "fail" else "a warning under this audit's gates"
        text += f": beyond its gate ({_threshold(g)}), {verdict}"
        if lo is not None and (lo <= g.threshold if g.comparison == "<=" else lo >= g.threshold):
            text += f", although the interval reaches back to {_num(lo)}"
        return text
    within = f", within its gate ({_threshold(g)})" if g is not None and g.determined else ""
    if g is not None and not g.determined:
        within = f", and its gate is undetermined ({_undetermined_reason(result, g)})"
    if lo is not None and lo > 1:
        return text + f": a significant increase (the interval excludes 1){within}"
    if hi is not None and hi < 1:
        return text + f": significantly lower (the interval excludes 1){within}"
    if lo is not None and hi is not None:
        return text + f": not distinguishable from the ID error (the interval includes 1){within}"
    if v.value > 1:
        return text + f": higher, with no interval to say whether significantly{within}"
    return text + f": with no interval, whether it differs from the ID error is not known{within}"


# ----------------------------------------------------------------------------------------------
# The gates that fired and what the landscape adds


def _gate_value(g: GateOutcome) -> str:
    if g.value is None:
        return ""
    m = _entry(g.name)
    if m is not None and m.unit == "fraction":
        return f"{100 * g.value:.3g} %"
    return _num(g.value)


def _undetermined_reason(result: AuditResult, g: GateOutcome) -> str:
    v = ratio_value(result, g.name) if g.name.endswith("_ratio") else Value(g.value)
    if v.status == "undefined":
        return "undefined, its denominator not clear of zero"
    if v.status == "uncertified":
        return "resting on an eigenvalue that was not certified"
    entry = _entry(g.name)
    if entry is not None and result.mode not in entry.modes:
        return f"a {result.mode} audit has no labels to measure it"
    if g.value is None:
        key = entry.split_key if entry is not None and entry.resolution else ""
        below = [split for split, m in result.metrics.items() if key and key in m.below_resolution]
        if below:
            who = _join([SPLIT_LABELS.get(x, x) for x in below])
            return (f"the {who} {entry.report_label} {'lies' if len(below) == 1 else 'lie'} below the grid's "
                    "resolution")
        return "not measured"
    kind = f"{v.kind} " if v.kind else ""
    return f"its {kind}interval {fmt_interval(g.low, g.high)} contains the gate {_threshold(g)}"


def _fired(g: GateOutcome) -> str:
    value = _gate_value(g)
    name = _name(g.name)
    return f"the {name} {value} (gate {_threshold(g)})" if value else f"the {name}"


def gates_clause(result: AuditResult, names: tuple[str, ...] | None = None,
                 skip: tuple[str, ...] = (ERROR_GATE,)) -> str:
    """Which gates failed, warned or could not decide, and why: 'the λmax ratio 4.51 (gate ≤ 3) fails the audit;
    the robust-radius ratio (not measured) is undetermined' ('' when none did). ``names``: only these gates."""
    gates = [g for g in result.gates if g.name not in skip and (names is None or g.name in names)]
    failed = [g for g in gates if g.determined and g.level == "fail"]
    warned = [g for g in gates if g.determined and g.level == "warn"]
    open_ = [g for g in gates if not g.determined]
    parts = []
    if failed:
        parts.append(f"{_join([_fired(g) for g in failed])} fail{'s' if len(failed) == 1 else ''} the audit")
    if warned:
        parts.append(f"{_join([_fired(g) for g in warned])} warn{'s' if len(warned) == 1 else ''}")
    if open_:
        what = [f"the {_name(g.name)} is undetermined ({_undetermined_reason(result, g)})"
                for g in open_]
        parts.append(_join(what))
    return "; ".join(parts)


def _landscape_probed(result: AuditResult) -> bool:
    return bool(result.hessian or result.surface is not None or any(
        m.lambda_max is not None or m.robust_radius is not None for m in result.metrics.values()))


def _within(result: AuditResult) -> list[str]:
    """['the λmax ratio 1.03', ...]: the landscape ratios whose gates passed."""
    ratios = [m.name for m in _catalogue.gated() if m.name in landscape_gates() and m.unit == "ratio"]
    return [f"the {_name(g.name)} {_num(g.value)}" for g in result.gates
            if g.name in ratios and g.determined and g.level == "pass" and g.value is not None]


def shift_clause(result: AuditResult) -> str:
    """The domain-shift case when it explains the errors (extrapolation) or blames the representation."""
    case = next((f for f in result.findings if f.id == "domain_shift"), None)
    kind = case.numbers.get("case") if case is not None else None
    if kind == "extrapolation":
        return "the OOD compounds lie outside the training domain, so their errors reflect extrapolation"
    if kind == "fragile":
        return "the OOD compounds lie close to training in the model's embedding: a fragile representation"
    return ""


def landscape_sentence(result: AuditResult) -> str:
    """What the landscape adds to the error, every other gate that fired (fail, warn, undetermined) and why, and the
    domain-shift case when it explains the errors."""
    if not result.gates:
        probed = "" if _landscape_probed(result) else "; the loss landscape was not probed"
        return f"No gate was evaluated (the verdict was not applied to this result){probed}."
    mae = _gate(result, ERROR_GATE)
    mae_flagged = mae is not None and mae.determined and mae.level != "pass"
    in_landscape = landscape_gates()
    landscape = gates_clause(result, in_landscape)
    # a label-free audit has no error sentence: its MAE gate (never measured) is named with the others
    said = () if result.mode == "label-free" else (ERROR_GATE,)
    others = gates_clause(result, tuple(g.name for g in result.gates if g.name not in in_landscape), skip=said)
    flagged = any(g.name in in_landscape and g.determined and g.level != "pass" for g in result.gates)
    parts = []
    if not _landscape_probed(result):
        parts.append("the loss landscape was not probed")
    elif flagged:
        lead = ("the landscape flags the OOD set" if result.mode == "label-free" else
                "the landscape agrees with the error" if mae_flagged else "the landscape flags what the error does not")
        parts.append(f"{lead}: {landscape}")
    else:
        within = _within(result)
        stay = f"{_join(within)} {'stays within its gate' if len(within) == 1 else 'stay within their gates'}"
        if landscape:  # nothing flagged, but a gate could not decide: that is a warning, not "no warning"
            parts.append(f"in the landscape, {stay}" if within else "in the landscape, no gate could decide")
            parts.append(f"{landscape}: a warning")
        else:
            parts.append("the landscape adds no warning" + (f": {stay}" if within else ""))
    if others:
        parts.append(others)
    elif not (flagged or landscape):
        parts.append("every other gate passed" if said and mae is not None else "every gate passed")
    shift = shift_clause(result)
    if shift:
        parts.append(shift)
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def unseen_elements(result: AuditResult) -> list[str]:
    """The OOD elements training never saw, when the verdict found so (its ``unseen_elements`` finding)."""
    if not any(f.id == "unseen_elements" for f in result.findings):
        return []
    ood = result.splits.get("ood")
    return list(ood.elements_unseen_in_train) if ood is not None else []


def unseen_sentence(result: AuditResult) -> str:
    """That training never saw some OOD elements (their embeddings are untrained), when the verdict found so."""
    unseen = unseen_elements(result)
    if not unseen:
        return ""
    many = len(unseen) > 1
    what = ("the OOD predictions extrapolate to" if result.mode == "label-free" else "the OOD error measures "
            "extrapolation to")
    text = (f"Training never saw {_join(unseen)}, so {'their embeddings are' if many else 'its embedding is'} "
            f"untrained and {what} {'unseen elements' if many else 'an unseen element'}")
    return text + (": the PASS holds with that caveat." if result.status == "pass" else ".")


# ----------------------------------------------------------------------------------------------
# The trust score's risk (result.trust_risk)

#: What the trust score estimates, as the risk sentence names it.
RISK_LEAD = "Risk that the OOD error is at least twice the ID error"


def _fixed(x: float) -> str:
    return f"{x:.2f}"


def risk_baseline_only(risk) -> bool:
    """The score is the embedding-distance baseline (B1, candidate M0) alone, or no candidate was adopted as the
    default because none beat it."""
    return risk.candidate == "M0" or not risk.ships_as_default


def risk_interval_kind(risk) -> str:
    """'bootstrap over held-out rules' (the stored kind without its '(refits)' tail)."""
    kind = (risk.interval_kind or "").strip()
    return kind.removesuffix("(refits)").strip() or "bootstrap over held-out rules"


def risk_sentence(result: AuditResult) -> str:
    """The adopted trust score applied to this audit (``result.trust_risk``), in plain text: 'Risk that the OOD error
    is at least twice the ID error: 0.19 [0.09, 0.30] (interval: bootstrap over held-out rules of the score's
    study; score: <evidence>)', beside the measured MAE ratio in a labelled audit, saying so when the score is the
    embedding-distance baseline alone, and the score's note when it gives no probability; '' without a risk."""
    risk = getattr(result, "trust_risk", None)
    if risk is None:
        return ""
    score = f"score: {risk.evidence}" if risk.evidence else "score: the adopted trust score"
    beside = ""
    measured = ratio_value(result, ERROR_GATE)
    if result.mode != "label-free" and measured.value is not None:
        beside = f"label-free estimate, for comparison with the measured OOD/ID MAE ratio, {_num(measured.value)}; "
    if risk.probability is None:
        why = risk.note or "the score could not be applied to this audit's ratios"
        text = f"{RISK_LEAD}: not estimated ({why}; {score})."
    else:
        bracket = (f" [{_fixed(risk.low)}, {_fixed(risk.high)}]" if risk.low is not None and risk.high is not None
                   else "")
        note = f"; {risk.note}" if risk.note else ""
        text = (f"{RISK_LEAD}: {_fixed(risk.probability)}{bracket} ({beside}interval: {risk_interval_kind(risk)} "
                f"of the score's study{note}; {score}).")
    if risk_baseline_only(risk):
        text += " The score is the embedding-distance baseline alone: no landscape signal beat it in that study."
    return text


# ----------------------------------------------------------------------------------------------
# The first screen


def glance(result: AuditResult) -> Glance:
    """The first screen's sentences for ``result`` (see the module docstring)."""
    if result.mode == "label-free":
        first = (f"Label-free audit of {_ood_who(result)} against {_id_who(result)}: no labels were read, so no "
                 "error is measured; every number compares how the model's own predictions respond to its weights.")
    else:
        first = f"On {_ood_who(result)}, {error_change(result)}."
    sentences = [first, landscape_sentence(result), unseen_sentence(result)]
    unseen = unseen_elements(result)
    caveat = (f"but the OOD set contains elements never seen in training ({', '.join(unseen)})"
              if unseen and result.status == "pass" else "")
    return Glance(tuple(s for s in sentences if s), caveat, risk_sentence(result))


def glance_context(result: AuditResult) -> dict[str, Any]:
    """The report's template context for the first screen."""
    return {"glance": glance(result)}
