"""From measurements to findings: pass / warn / fail against the spec's gates.

Gates (defaults in :class:`traits.spec.GateSpec`, all overridable in a spec's ``gates``; the list is the
metric catalogue's gated entries, :mod:`traits.catalogue`):

=================== ========================================== ======= ================================
gate                value                                      default meaning when violated
=================== ========================================== ======= ================================
mae_ratio           OOD MAE / ID MAE                           ≤ 2.0   the model does not transfer
lambda_ratio        OOD λ_max / ID λ_max                       ≤ 3.0   the OOD loss is much sharper
trace_ratio         OOD tr(H) / ID tr(H)                       ≤ 3.0   more curvature overall OOD
radius_ratio        OOD robust radius / ID robust radius       ≥ 0.5   OOD loss leaves tolerance sooner
embedding_knn_ratio OOD / ID median embedding kNN distance     ≤ 2.0   OOD compounds lie far from the
                                                                       training ones in the embedding
nan_fraction        largest non-finite share of any surface    ≤ 0.0   the loss blows up nearby
=================== ========================================== ======= ================================

A violated gate is a *fail* when it is listed in ``gates.fail_on`` and a *warn* otherwise. The default
``fail_on`` (:func:`traits.catalogue.default_fail_on`) holds the MAE ratio and the NaN share, which
measure failure directly, and a landscape or distance metric only where the adopted study shows that it tracks
OOD error beyond the noise floor and beyond what the loss at θ already says, and that its gate fires on all
three training seeds of at least one task (:func:`traits.catalogue.fails_by_default_from_evidence`). The adopted
study is study-2: the labelled probes of study v2 on the Materials Project pool (docs/study/v2/labelled: 168
audits, 56 tasks, 28 held-out rules, the models of study v2's first pass re-probed from their checkpoints). No
landscape or distance metric meets that rule, so **labelled audits fail by default on the MAE ratio and the NaN
share only**:

* λ_max ratio: ρ = 0.63 [0.36, 0.79], Holm p = 0.008, partial ρ given the loss at θ 0.39 [0.00, 0.60],
  random-split noise floor 1.19 (97.5 %), but its gate at 3.0 fires on all three seeds of no task (on one seed
  of 7 tasks, two of 3);
* trace ratio: ρ = 0.52 [0.21, 0.76], partial ρ 0.34 [0.06, 0.54], floor 1.13, and it too fires on all three
  seeds of no task (3 tasks on one seed, 2 on two);
* the robust-radius ratio (partial ρ −0.16 [−0.47, 0.15]) and the embedding kNN ratio (partial −0.12
  [−0.39, 0.23]) add nothing clear of 0 to the loss at θ.

Study-1 (docs/study/summary.md, the same tasks and seeds on earlier runs) had made the λ_max and trace ratios fail
by default on the first three conditions (partial ρ 0.39 [0.01, 0.60] and 0.35 [0.08, 0.55]); its audits show the
same instability (λ_max: 8 tasks on one seed, 3 on two, none on three), which study v2 registered as a condition
before its results. A curvature gate that fires on one training seed of a task and not on the two others is a
property of the seed, not of the chemistry, so it warns. Every gate outcome and
every finding that flags on a landscape or distance metric carries the adopted study's evidence for it
(``evidence``: ρ with its interval, partial ρ, how often its gate fired across seeds, data set and version, or
"not yet measured"), recorded when the verdict is applied so a re-rendered report cites what the verdict used.
A gate whose metric was not measured (probe disabled, or a zero denominator) is reported as a warning and never
fails the audit.

That evidence was measured on labelled audits (Hessians of the labelled loss). A label-free audit's Hessian is
the Gauss-Newton matrix of the model's own predictions, another matrix, and it reads its own evidence
(:data:`traits.catalogue.LABEL_FREE_EVIDENCE_FILE`, ``mode`` label-free): study v2's first pass (docs/study/v2:
168 MP audits of the same tasks, the embedding kNN distance as the control in place of the loss at θ). There the
λ_max ratio of the predictions has ρ = 0.53 [0.25, 0.72], Holm p = 0.004, partial ρ given the embedding distance
0.59 [0.36, 0.73], and the trace ratio 0.47 [0.19, 0.67], partial 0.50 [0.25, 0.66], but neither gate fires on
all three training seeds of any task (λ_max at 3.0: 4 tasks on one seed, 4 on two, none on three), which the rule
also asks; so a label-free audit's default ``fail_on`` holds no landscape or distance metric, and those gates warn
citing that evidence. Without the file its gates cite the labelled evidence as "not evidence for a label-free
audit".

Every gate decides on its interval (:func:`traits.intervals.decision`): it fails only when the whole interval is
beyond the threshold, passes only when it is wholly within, and is otherwise undetermined (a warning naming
both ends). The λ_max and trace intervals carry how the numbers would move with another draw of the
structures they were computed on (a jackknife over structure groups, :mod:`traits.probes.sampling`), so
re-auditing with another ``probes.seed`` cannot flip a gate from pass to fail.

Domain shift: extrapolation or a fragile representation?
--------------------------------------------------------
The finding ``domain_shift`` combines the domain-shift diagnostics (:mod:`traits.shift`) with the
landscape, and names one case (thresholds from ``probes.shift``, stored in ``shift.thresholds``, and
from the gates):

1. **outside the training domain** (warn) when

   * the OOD *targets* lie outside the training range: at least ``target_outside_fraction`` (0.2) of
     them fall outside the 1st-99th percentiles of the training targets (a split drawn like the
     training set has about 0.02 there), or
   * the OOD compounds lie *far from training in the model's embedding*: their median distance to
     the k nearest training compounds exceeds ``gates.max_embedding_knn_ratio`` (2.0) times the ID
     one.

   "errors reflect extrapolation": the landscape is not blamed, even when it is sharp.
2. **fragile representation** (warn) when neither holds, the OOD compounds are *close* to training in
   the embedding (OOD/ID median kNN ratio at most ``near_ratio``, 1.5) and the OOD loss landscape is
   *sharp* (λ_max or trace ratio above its gate, robust-radius ratio below its gate), *non-convex*
   (|λ_min|/λ_max above 0.1 on OOD and above the ID value) or *discontinuous* (a non-finite share
   of the OOD surfaces above ``gates.max_nan_fraction``, or the OOD loss jumps closer to θ than the
   ID loss does: see the ``discontinuity`` finding).
3. **neither** otherwise: pass when the landscape is unremarkable, warn when it is flagged but the
   embedding distance lies between ``near_ratio`` and the far threshold (no clear reading).

Without an embedding distance (the model has none, or every vector was non-finite) the composition
distance stands in for it, and the finding says so. With the composition distance available the rule
does not use it: with element fractions, a compound holding an element absent from training is far
from every training compound by construction, whatever the model learned. Bad shift inputs
(``shift.problems``) become ``shift_input`` warnings; when nothing decides the case it is
``undetermined`` (warn).

Where the thresholds come from: ``target_outside_fraction`` 0.2 is ten times what a split drawn like the
training set shows (about 0.02); ``near_ratio`` 1.5 and ``max_embedding_knn_ratio`` 2.0 were set by hand, and
the study checks them against its random splits and omission tasks (section "The domain-shift rule's
thresholds against the study" of docs/study/summary.md, :func:`traits.study.summary.shift_thresholds`; study-1,
MP, 168 audits, per audit median [2.5-97.5 %]):

* random splits (18 audits, nothing out of distribution): embedding kNN ratio 0.99 [0.94, 1.03], none above
  1.5; OOD targets outside the training range 0.01 [0.01, 0.03], none above 0.2;
* omission tasks (150 audits): embedding kNN ratio 1.11 [0.77, 2.25], 21 % above 1.5 and 5 % above 2.0;
  targets outside 0.01 [0.00, 0.18], 2 % above 0.2.

So all three thresholds lie well beyond the random-split noise (no random split reaches any of them), and
they are reached by a minority of the omission audits. What the cases mean for the error, per omission audit
(OOD/ID MAE, median [2.5-97.5 %], share above the MAE gate 2.0): "extrapolation" 6.17 [2.74, 12.12], 10
audits, all above the gate; "fragile representation" 1.56 [0.66, 2.84], 33 audits, 18 % above; "neither"
1.51 [0.75, 5.74], 107 audits, 27 % above. The far threshold and the target threshold pick out audits that
do not transfer, so they stay as set. The "fragile" case does **not** pick out audits that transfer worse than
the rest: it names a landscape reading, not a predictor of error, and it stays a warning that never fails an
audit (every case of this rule is a warning, so no hand-set value can fail one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from traits import catalogue as _catalogue
from traits.results import SPLIT_LABELS, AuditResult, Finding, GateOutcome, Level


@dataclass(frozen=True)
class Gate:
    name: str
    label: str
    threshold_field: str
    comparison: str  # "<=" or ">="


def _gate(m: _catalogue.Metric) -> Gate:
    return Gate(m.name, m.gate_label or f"OOD/ID {m.label} ratio", m.gate_field, m.comparison)


def gates_of_catalogue() -> tuple[Gate, ...]:
    """One gate per gated metric of the catalogue, in its order (read when called: a metric added to the
    catalogue is gated without a change here)."""
    return tuple(_gate(m) for m in _catalogue.gated())


#: The gates of the catalogue as it was imported (:func:`gates_of_catalogue` reads it again).
GATES = gates_of_catalogue()

#: ``|λ_min| / λ_max`` above which a split's loss counts as markedly non-convex at θ.
NONCONVEX_RATIO = 0.1


def ood_description(result: AuditResult) -> str:
    if result.omit:
        return f"{'/'.join(result.omit)}-containing compounds"
    named = ((result.spec or {}).get("data") or {}).get("sets")
    if named and named.get("ood"):  # data.sets: the OOD set is a file the spec names
        return f"the named OOD set ({Path(str(named['ood'])).name})"
    return "the held-out random split"


def _entry(name: str) -> _catalogue.Metric | None:
    return next((m for m in _catalogue.catalogue() if m.name == name), None)


def gate_value(result: AuditResult, name: str) -> float | None:
    """The value a gate reads: the ratio of ``result.ratios``, or the largest per-split value of the metric's
    source where its catalogue entry says so (``reduce="max"``: the non-finite share)."""
    m = _entry(name)
    if m is not None and m.reduce == "max":
        values = [getattr(x, m.split_key, None) for x in result.metrics.values()]
        values = [v for v in values if v is not None]
        return max(values) if values else None
    return result.ratios.get(name)


def _below_resolution(result: AuditResult, name: str) -> str | None:
    """Why a ratio is missing when a split's value lies below the grid's resolution (a bound, not a number:
    :func:`traits.audit.mark_below_resolution`), e.g. 'OOD robust radius below the grid's resolution (< 0.0333,
    one 1D grid step); a finer grid would resolve it'; None otherwise. The catalogue entry names the per-split
    value (``source``) and what one grid step is (``resolution``)."""
    m = _entry(name)
    if m is None or not m.resolution:
        return None
    key, label, unit = m.split_key, m.report_label, m.resolution
    parts = [f"{SPLIT_LABELS.get(split, split)} {label} < {m.below_resolution[key]:.3g}"
             for split, m in result.metrics.items() if split in ("id", "ood") and key in m.below_resolution]
    if not parts:
        return None
    return (f"below the grid's resolution ({', '.join(parts)}, {unit}); a finer surface grid "
            "(probes.surface.points_1d) would resolve it")


def evaluate_gates(result: AuditResult, gates) -> list[GateOutcome]:
    """Evaluate every gate of ``gates`` (a :class:`traits.spec.GateSpec`) on stored results.

    A gate is *undetermined* (a warning, never a pass or a fail) when its metric was not measured, is not
    certified (an eigenvalue that did not converge), is a ratio with a denominator that is not positive,
    or has an estimator interval (``result.ratio_intervals``, :func:`traits.intervals.decision`) that
    contains the threshold. Every interval decides: the bootstrap over compounds of the errors and distances,
    the jackknife over structures of the Hessian numbers (with the solver's bound or Monte-Carlo error), the
    grid resolution of the radius; only results written before schema 1.6 hold bootstrap intervals that do
    not (their ``decides`` is False)."""
    from traits.intervals import decision, format_interval

    outcomes = []
    for m in _catalogue.gated():
        gate = _gate(m)
        evidence = _catalogue.evidence_text(gate.name, mode=result.mode)
        threshold = _catalogue.gate_threshold(gates, m)
        value = gate_value(result, gate.name)
        interval = result.ratio_intervals.get(gate.name)
        iv = interval.model_dump() if interval is not None else None
        if iv is not None:
            verdict = decision(iv, threshold, gate.comparison)
        elif value is not None:
            ok = value <= threshold if gate.comparison == "<=" else value >= threshold
            verdict = "pass" if ok else "fail"
        else:
            verdict = "undetermined"
        low, high = (iv["low"], iv["high"]) if iv is not None else (value, value)
        if verdict == "undetermined":
            if iv is not None and iv["status"] != "ok":
                why = format_interval(iv)
            elif value is None:
                why = _below_resolution(result, gate.name) or "not measured"
            else:
                why = f"{format_interval(iv)}: the interval contains the gate {gate.comparison} {threshold:g}"
            outcomes.append(GateOutcome(
                name=gate.name, passed=True, level="warn", value=value, threshold=threshold,
                comparison=gate.comparison, determined=False, low=low, high=high,
                statement=f"{gate.label}: {why}; undetermined", evidence=evidence,
            ))
            continue
        level: Level = "pass" if verdict == "pass" else ("fail" if gate.name in gates.fail_on else "warn")
        shown = format_interval(iv) if iv is not None else f"{value:.3g}"
        outcomes.append(GateOutcome(
            name=gate.name, passed=level != "fail", level=level, value=value, threshold=threshold,
            comparison=gate.comparison, low=low, high=high,
            statement=f"{gate.label} is {shown} (gate {gate.comparison} {threshold:g})", evidence=evidence,
        ))
    return outcomes


def _with_interval(outcome: GateOutcome) -> str:
    """'1.23 [1.10, 1.41]' from a gate outcome's value and interval."""
    if outcome.low is None and outcome.high is None or (outcome.low == outcome.value == outcome.high):
        return f"{outcome.value:.2f}"
    lo = f"{outcome.low:.2f}" if outcome.low is not None else "−∞"
    hi = f"{outcome.high:.2f}" if outcome.high is not None else "∞"
    return f"{outcome.value:.2f} [{lo}, {hi}{']' if outcome.high is not None else ')'}"


def _error_sentence(result: AuditResult, outcome: GateOutcome, m: _catalogue.Metric, who: str,
                    numbers: dict) -> str:
    """An error ratio's finding (the catalogue's "error" kind: the MAE ratio), worded from its interval, not only
    its gate: 'OOD MAE is 1.37 [1.14, 1.66]x the ID MAE (0.123 vs 0.0899 eV/atom; 95% bootstrap interval over
    compounds): a significant increase on Fe-containing compounds, within the gate'."""
    what = m.split_key
    ood, idm = getattr(result.accuracy["ood"], what), getattr(result.accuracy["id"], what)
    numbers |= {f"ood_{what}": ood, f"id_{what}": idm}
    lo, hi = outcome.low, outcome.high
    if outcome.level != "pass":
        verdict = f"the model does not transfer to {who}"
    elif lo is not None and lo > 1:  # the wording follows the interval, not only the gate
        verdict = f"a significant increase on {who}, within the gate"
    elif hi is not None and hi < 1:
        verdict = f"significantly lower on {who}"
    elif lo is not None and hi is not None:
        verdict = f"not distinguishable from the ID error on {who}"
    else:
        verdict = f"within the gate for {who}"
    return (f"OOD {m.label} is {_with_interval(outcome)}x the ID {m.label} ({ood:.3g} vs {idm:.3g} {result.unit}; "
            f"95% bootstrap interval over compounds): {verdict}")


def _gate_sentence(result: AuditResult, outcome: GateOutcome, m: _catalogue.Metric | None, who: str) -> str:
    """A determined gate's finding from the metric's catalogue entry: its own sentences, else a generic one."""
    fired = outcome.level != "pass"
    fields = {"shown": _with_interval(outcome), "value": outcome.value, "who": who}
    if m is None or m.sentences is None:
        label = (m.gate_label or f"OOD/ID {m.label} ratio") if m is not None else outcome.name
        return (f"{label} is {fields['shown']} (gate {outcome.comparison} {outcome.threshold:g}): "
                f"{'beyond' if fired else 'within'} its gate for {who}")
    said = m.sentences
    if said.neutral and outcome.value == m.neutral:
        text = said.neutral.format(**fields)
    else:
        text = (said.beyond if fired else said.within).format(**fields)
    censored = m.split_key and any(getattr(result.metrics[s], f"{m.split_key}_censored", False)
                                   for s in ("id", "ood") if s in result.metrics)
    return text + (m.censored_note if censored else "")


def _finding_for_gate(result: AuditResult, outcome: GateOutcome) -> Finding:
    who = ood_description(result)
    v = outcome.value
    numbers = {"value": v, "threshold": outcome.threshold, "low": outcome.low, "high": outcome.high}
    m = _entry(outcome.name)
    if v is None or not outcome.determined:
        text = f"{outcome.statement}: the gate was not applied"
    elif m is not None and m.kind == "error" and m.split_key:
        text = _error_sentence(result, outcome, m, who, numbers)
    else:
        text = _gate_sentence(result, outcome, m, who)
    flagged = outcome.level != "pass" and outcome.determined and outcome.evidence is not None
    return Finding(id=outcome.name, level=outcome.level, statement=text, numbers=numbers,
                   evidence={outcome.name: outcome.evidence} if flagged else {})


def discontinuity_findings(result: AuditResult) -> list[Finding]:
    """"The OOD loss jumps at α = 0.12 while the ID loss stays smooth to α = 0.8" (a warning when the OOD
    loss jumps closer to θ than the ID loss does)."""
    i, o = result.metrics.get("id"), result.metrics.get("ood")
    if i is None or o is None or (i.first_jump is None and o.first_jump is None):
        return []
    who = ood_description(result)

    def where(m) -> str:
        if m.first_jump is not None:
            return f"jumps at α = {m.first_jump:.3g}"
        return f"stays smooth to α = {m.smooth_to:.3g}"

    worse = o.first_jump is not None and (i.first_jump is None or o.first_jump < i.first_jump)
    return [Finding(
        id="discontinuity", level="warn" if worse else "pass",
        statement=f"The OOD loss {where(o)} while the ID loss {where(i)}"
        + (f": the loss is discontinuous close to the trained weights for {who}" if worse else ""),
        numbers={"ood_first_jump": o.first_jump, "id_first_jump": i.first_jump, "ood_smooth_to": o.smooth_to,
                 "id_smooth_to": i.smooth_to},
        evidence=_evidence_for(["first_jump_ratio"], result.mode) if worse else {},
    )]


def extra_findings(result: AuditResult) -> list[Finding]:
    """Findings that are not gates: convergence, unseen elements, non-convexity, discontinuities."""
    found = discontinuity_findings(result)
    for split, h in result.hessian.items():
        if not h.converged:
            found.append(Finding(
                id=f"hessian_unconverged_{split}", level="warn",
                statement=f"Top eigenvalues on the {split} split were not certified within the budget "
                f"(largest relative residual {max(h.residuals or [float('nan')]):.2g}); they are not used by any "
                "gate; raise probes.hessian.max_steps",
                numbers={"max_residual": max(h.residuals) if h.residuals else None},
            ))
        if h.bottom is not None and not h.lambda_min_certified:
            res = h.bottom.residuals[0] if h.bottom.residuals else None
            found.append(Finding(
                id=f"lambda_min_unconverged_{split}", level="warn",
                statement=f"λ_min on the {split} split was not certified within {h.bottom.n_steps} Lanczos steps "
                f"(Ritz value {h.lambda_min:.3g}, relative residual {res if res is not None else float('nan'):.2g}): "
                "it is not used by the non-convexity metric or the verdict; raise probes.hessian.max_steps",
                numbers={"lambda_min": h.lambda_min, "residual": res},
            ))
        if (h.lambda_min_certified and h.lambda_max_certified and h.lambda_min is not None and h.top_eigenvalues
                and h.lambda_min < 0 < h.top_eigenvalues[0]):
            ratio = abs(h.lambda_min) / h.top_eigenvalues[0]
            if ratio > 0.1:
                found.append(Finding(
                    id=f"negative_curvature_{split}", level="warn",
                    statement=f"The {split} loss has negative curvature: |λ_min|/λ_max = {ratio:.2f} "
                    "(the weights are not at a minimum of this split's loss)",
                    numbers={"lambda_min": h.lambda_min, "lambda_max": h.top_eigenvalues[0]},
                ))
    ood = result.splits.get("ood")
    if ood and ood.elements_unseen_in_train and trained_on_this_split(result):
        found.append(Finding(
            id="unseen_elements", level="pass",
            statement=f"The OOD set contains elements never seen in training "
            f"({', '.join(ood.elements_unseen_in_train)}): their embeddings are untrained",
            numbers={"n_unseen": float(len(ood.elements_unseen_in_train))},
        ))
    return found


def trained_on_this_split(result: AuditResult) -> bool:
    """Whether the model's training data is this audit's training split (TRAITS trained it here: the checkpoint
    records this manifest). Only then may an element be called unseen in training."""
    p = result.provenance
    meta = p.checkpoint_metadata or {}
    if meta.get("manifest_hash"):
        return bool(p.manifest_hash) and meta["manifest_hash"] == p.manifest_hash
    # no manifest recorded: only a TRAITS checkpoint of its own kind, never an external one (an original CGCNN
    # file, a plain state dict, an adapter's model), whose training data this audit does not know
    return (p.checkpoint_format == "traits" and not meta.get("model_info") and not meta.get("training_data")
            and result.model_info is None)


def _nonconvexity(result: AuditResult, split: str) -> float | None:
    """|λ_min|/λ_max from certified eigenvalues only (None otherwise)."""
    m = result.metrics.get(split)
    if m is not None and m.nonconvexity is not None:
        return m.nonconvexity
    h = result.hessian.get(split)
    if (h is None or h.lambda_min is None or not h.top_eigenvalues or h.top_eigenvalues[0] <= 0
            or not (h.lambda_min_certified and h.lambda_max_certified)):
        return None
    return max(0.0, -h.lambda_min) / h.top_eigenvalues[0]


def landscape_flags(result: AuditResult, gates) -> list[str]:
    """What is wrong with the OOD landscape, in words with numbers (empty when nothing is)."""
    return _flag_texts(_flags(result, gates))


def _flag_texts(flags: list[tuple[str, str, str]]) -> list[str]:
    return [f"{kind}: {detail}" for kind, detail, _metric in flags]


def _evidence_for(metrics, mode: str = "labels") -> dict[str, str]:
    """The adopted study's evidence for each of these catalogue metrics (the predictors among them), as it
    reads for an audit of this ``mode``."""
    out = {}
    for name in metrics:
        text = _catalogue.evidence_text(name, mode=mode)
        if text is not None:
            out[name] = text
    return out


def _flags(result: AuditResult, gates) -> list[tuple[str, str, str]]:
    """(kind, detail, catalogue metric) for each landscape flag."""
    from traits.intervals import decision

    r = result.ratios
    flags = []

    def beyond(name: str, threshold: float, comparison: str) -> bool:
        """The ratio violates its gate beyond doubt: certified, and its estimator interval clear of it."""
        value = r.get(name)
        if value is None:
            return False
        interval = result.ratio_intervals.get(name)
        if interval is None:
            return not (value <= threshold if comparison == "<=" else value >= threshold)
        return decision(interval.model_dump(), threshold, comparison) == "fail"

    for entry in _catalogue.gated():  # the gated ratios that flag the landscape (their catalogue ``flag``)
        if entry.flag is not None and beyond(entry.name, _catalogue.gate_threshold(gates, entry), entry.comparison):
            kind, detail = entry.flag
            flags.append((kind, detail.format(value=r[entry.name]), entry.name))
    nc_ood, nc_id = _nonconvexity(result, "ood"), _nonconvexity(result, "id")
    if nc_ood is not None and nc_ood > NONCONVEX_RATIO and (nc_id is None or nc_ood > nc_id):
        flags.append(("non-convex", f"|λ_min|/λ_max = {nc_ood:.2f} on OOD"
                      + (f" vs {nc_id:.2f} on ID" if nc_id is not None else ""), "nonconvexity_ratio"))
    m, mi = result.metrics.get("ood"), result.metrics.get("id")
    if m is not None and m.nan_fraction is not None and m.nan_fraction > gates.max_nan_fraction:
        flags.append(("discontinuous", f"{m.nan_fraction:.1%} of the OOD surface points are NaN or infinite",
                      "nan_fraction"))
    if m is not None and m.first_jump is not None and (mi is None or mi.first_jump is None
                                                       or m.first_jump < mi.first_jump):
        smooth = f", ID smooth to α = {mi.smooth_to:.3g}" if mi is not None and mi.first_jump is None and \
            mi.smooth_to is not None else ""
        flags.append(("discontinuous", f"the OOD loss jumps at α = {m.first_jump:.3g}{smooth}", "first_jump_ratio"))
    return flags


def _kinds(flags: list[str]) -> str:
    return " / ".join(dict.fromkeys(f.split(":", 1)[0] for f in flags))


def shift_findings(result: AuditResult, gates) -> list[Finding]:
    """``shift_input`` warnings for bad inputs and the ``domain_shift`` case (rule in the module doc)."""
    sh = result.shift
    if sh is None:
        return []
    found = [Finding(id=f"shift_input_{i + 1}" if len(sh.problems) > 1 else "shift_input", level="warn",
                     statement=f"Domain-shift diagnostics: {p}") for i, p in enumerate(sh.problems)]
    who = ood_description(result)
    t_out = float(sh.thresholds.get("target_outside_fraction", 0.2))
    near = float(sh.thresholds.get("near_ratio", 1.5))
    far = float(gates.max_embedding_knn_ratio)
    ood, idd = sh.splits.get("ood"), sh.splits.get("id")
    outside = ood.outside_p01_p99 if ood is not None else None
    id_outside = idd.outside_p01_p99 if idd is not None else None
    space, dist = "embedding", sh.ratios.get("embedding_knn_ratio")
    if dist is None and sh.ratios.get("composition_knn_ratio") is not None:
        space, dist = "composition", sh.ratios["composition_knn_ratio"]
    where = "in the model's embedding" if space == "embedding" else "in composition (no embedding distance)"
    triples = _flags(result, gates)
    flags = _flag_texts(triples)
    numbers: dict[str, float | str | None] = {
        "ood_outside_p01_p99": outside, "id_outside_p01_p99": id_outside, "knn_ratio": dist, "space": space,
        "target_outside_fraction": t_out, "near_ratio": near, "far_ratio": far, "landscape_flags": len(flags),
    }
    targets_out = outside is not None and outside >= t_out
    far_away = dist is not None and dist > far
    if targets_out or far_away:
        reasons = []
        if targets_out:
            reasons.append(f"OOD targets lie outside the training range ({outside:.1%} of them beyond the training "
                           f"1st-99th percentiles, vs {id_outside or 0:.1%} of ID targets)")
        if far_away:
            reasons.append(f"OOD compounds lie far from every training compound {where} (median kNN distance "
                           f"{dist:.2f}x the ID one)")
        text = "; ".join(reasons) + f": errors on {who} reflect extrapolation"
        if flags:
            text += f"; the {_kinds(flags)} landscape there ({'; '.join(f.split(': ', 1)[1] for f in flags)}) is " \
                    "not evidence of a fragile representation"
        case, level = "extrapolation", "warn"
    elif dist is None and outside is None:
        text = "Whether the OOD set lies inside the training domain could not be judged: neither the target shift " \
               "nor a distance to the training compounds was measured"
        case, level = "undetermined", "warn"
    elif dist is not None and dist <= near and flags:
        text = (f"OOD compounds are close to training compounds {where} (median kNN distance {dist:.2f}x the ID "
                f"one), yet the loss landscape is {_kinds(flags)} there "
                f"({'; '.join(f.split(': ', 1)[1] for f in flags)}): the representation is fragile for {who}")
        case, level = "fragile", "warn"
    else:
        parts = []
        if outside is not None:
            parts.append(f"OOD targets lie within the training range ({outside:.1%} beyond its 1st-99th percentiles"
                         + (f", vs {id_outside:.1%} of ID targets)" if id_outside is not None else ")"))
        if dist is not None:
            parts.append(f"OOD compounds are {'close to' if dist <= near else 'moderately far from'} training "
                         f"compounds {where} ({dist:.2f}x the ID kNN distance)")
        if flags:
            text = "; ".join(parts) + f", and the loss landscape is {_kinds(flags)} there: neither extrapolation " \
                   "nor a fragile representation is clearly indicated"
            level = "warn"
        else:
            text = "; ".join(parts) + ", and the loss landscape is no sharper there: no sign of extrapolation or " \
                   "of a fragile representation"
            level = "pass"
        case = "neither"
    numbers["case"] = case
    flagged = [metric for _k, _d, metric in triples] + (
        [f"{space}_knn_ratio"] if far_away else [])
    found.append(Finding(id="domain_shift", level=level, statement=text[0].upper() + text[1:], numbers=numbers,
                         evidence=_evidence_for(flagged, result.mode) if level != "pass" else {}))
    return found


#: Ids (or id prefixes, ending in "_") of every finding the verdict makes; any other finding of a result
#: (the audit's provenance and checkpoint checks) is the audit's own and survives re-gating.
VERDICT_FINDINGS = (*(g.name for g in GATES), "discontinuity", "hessian_unconverged_", "lambda_min_unconverged_",
                    "negative_curvature_", "unseen_elements", "shift_input", "shift_input_", "domain_shift")


def made_by_verdict(finding_id: str) -> bool:
    made = (*(g.name for g in gates_of_catalogue()), *VERDICT_FINDINGS)
    return any(finding_id == v or v.endswith("_") and finding_id.startswith(v) for v in made)


def apply_verdict(result: AuditResult, gates) -> AuditResult:
    """Fill ``gates``, ``findings`` and ``status`` of a result (in place) and return it.

    Findings the verdict does not make (the audit's provenance and checkpoint checks) are kept, so a result
    can be re-gated (``traits gate``, a campaign reusing a finished audit under new gates) without losing
    them."""
    result.gates = evaluate_gates(result, gates)
    made = ([_finding_for_gate(result, g) for g in result.gates] + extra_findings(result)
            + shift_findings(result, gates))
    order = {"fail": 0, "warn": 1, "pass": 2}
    kept = [f for f in result.findings if not made_by_verdict(f.id)]
    result.findings = kept + sorted(made, key=lambda f: order[f.level])
    levels = {g.level for g in result.gates} | {f.level for f in result.findings}
    result.status = "fail" if "fail" in levels else ("warn" if "warn" in levels else "pass")
    return result


def _gates_key(raw) -> dict | None:
    """A gate spec (stored or live) in a comparable form: defaults filled in, ``fail_on`` as a sorted set."""
    from pydantic import ValidationError

    from traits.spec import GateSpec

    try:
        spec = raw if isinstance(raw, GateSpec) else GateSpec.model_validate(raw or {})
    except ValidationError:
        return None
    d = spec.model_dump(mode="json")
    d["fail_on"] = sorted(set(d["fail_on"]))
    return d


def regate(result: AuditResult, gates) -> bool:
    """Re-apply the verdict when ``gates`` differ from the ones the result was gated with, or when the
    adopted study's evidence for a gate differs from what the result recorded, storing the gates in
    ``result.spec["gates"]``; True when anything was re-gated."""
    from traits.results import SCHEMA_VERSION

    same_gates = _gates_key((result.spec or {}).get("gates")) == _gates_key(gates)
    recorded = {g.name: g.evidence for g in result.gates}
    gates_now = gates_of_catalogue()
    same_evidence = all(recorded.get(g.name) == _catalogue.evidence_text(g.name, mode=result.mode)
                        for g in gates_now if g.name in recorded)
    if same_gates and same_evidence and set(recorded) == {g.name for g in gates_now}:
        return False
    apply_verdict(result, gates)
    result.spec = {**(result.spec or {}), "gates": gates.model_dump(mode="json")}
    result.schema_version = SCHEMA_VERSION  # the verdict's fields (evidence) are this version's
    return True


def exit_code(result: AuditResult) -> int:
    """0 when every gate passes (warnings allowed), 1 when any gate fails."""
    return 1 if any(not g.passed for g in result.gates) else 0
