"""From measurements to findings: pass / warn / fail against the spec's gates.

Gates (defaults in :class:`traits.spec.GateSpec`, all overridable in a spec's ``gates``):

============== ======================================== ======= =============================
gate           value                                    default  meaning when violated
============== ======================================== ======= =============================
mae_ratio      OOD MAE / ID MAE                          ≤ 2.0   the model does not transfer
lambda_ratio   OOD λ_max / ID λ_max                      ≤ 3.0   the OOD loss is much sharper
trace_ratio    OOD tr(H) / ID tr(H)                      ≤ 3.0   more curvature overall OOD
radius_ratio   OOD robust radius / ID robust radius      ≥ 0.5   OOD loss leaves tolerance sooner
nan_fraction   largest non-finite share of any surface   ≤ 0.0   the loss blows up nearby
============== ======================================== ======= =============================

A violated gate is a *fail* when it is listed in ``gates.fail_on`` (default: mae_ratio, radius_ratio,
nan_fraction) and a *warn* otherwise. A gate whose metric was not measured (probe disabled, or a
zero denominator) is reported as a warning and never fails the audit.
"""

from __future__ import annotations

from dataclasses import dataclass

from traits.results import AuditResult, Finding, GateOutcome, Level


@dataclass(frozen=True)
class Gate:
    name: str
    label: str
    threshold_field: str
    comparison: str  # "<=" or ">="


GATES = (
    Gate("mae_ratio", "OOD/ID MAE ratio", "max_mae_ratio", "<="),
    Gate("lambda_ratio", "OOD/ID λ_max ratio", "max_lambda_ratio", "<="),
    Gate("trace_ratio", "OOD/ID Hessian trace ratio", "max_trace_ratio", "<="),
    Gate("radius_ratio", "OOD/ID robust-radius ratio", "min_radius_ratio", ">="),
    Gate("nan_fraction", "non-finite share of the loss surfaces", "max_nan_fraction", "<="),
)


def ood_description(result: AuditResult) -> str:
    if result.omit:
        return f"{'/'.join(result.omit)}-containing compounds"
    return "the held-out random split"


def gate_value(result: AuditResult, name: str) -> float | None:
    if name == "nan_fraction":
        fractions = [m.nan_fraction for m in result.metrics.values() if m.nan_fraction is not None]
        return max(fractions) if fractions else None
    return result.ratios.get(name)


def evaluate_gates(result: AuditResult, gates) -> list[GateOutcome]:
    """Evaluate every gate of ``gates`` (a :class:`traits.spec.GateSpec`) on stored results."""
    outcomes = []
    for gate in GATES:
        threshold = float(getattr(gates, gate.threshold_field))
        value = gate_value(result, gate.name)
        if value is None:
            outcomes.append(GateOutcome(
                name=gate.name, passed=True, level="warn", value=None, threshold=threshold,
                comparison=gate.comparison, statement=f"{gate.label}: not measured",
            ))
            continue
        ok = value <= threshold if gate.comparison == "<=" else value >= threshold
        level: Level = "pass" if ok else ("fail" if gate.name in gates.fail_on else "warn")
        outcomes.append(GateOutcome(
            name=gate.name, passed=level != "fail", level=level, value=value, threshold=threshold,
            comparison=gate.comparison,
            statement=f"{gate.label} is {value:.3g} (gate {gate.comparison} {threshold:g})",
        ))
    return outcomes


def _finding_for_gate(result: AuditResult, outcome: GateOutcome) -> Finding:
    who = ood_description(result)
    v = outcome.value
    numbers = {"value": v, "threshold": outcome.threshold}
    if v is None:
        text = f"{outcome.statement}; the gate was not applied"
    elif outcome.name == "mae_ratio":
        ood, idm = result.accuracy["ood"].mae, result.accuracy["id"].mae
        numbers |= {"ood_mae": ood, "id_mae": idm}
        verdict = "the model does not transfer to" if outcome.level != "pass" else "accuracy holds for"
        text = f"OOD MAE is {v:.2f}x the ID MAE ({ood:.3g} vs {idm:.3g} {result.unit}): {verdict} {who}"
    elif outcome.name == "radius_ratio":
        verdict = "the representation is fragile for" if outcome.level != "pass" else "the loss basin is as wide for"
        text = f"OOD robust radius is {v:.2f}x the ID radius: {verdict} {who}"
        censored = any(result.metrics[s].robust_radius_censored for s in ("id", "ood") if s in result.metrics)
        if censored:
            text += " (at least one radius reached the edge of the grid: a lower bound)"
    elif outcome.name == "lambda_ratio":
        verdict = "the OOD loss is much sharper" if outcome.level != "pass" else "curvature is comparable"
        text = f"OOD λ_max is {v:.2f}x the ID λ_max: {verdict} for {who}"
    elif outcome.name == "trace_ratio":
        verdict = "more total curvature" if outcome.level != "pass" else "comparable total curvature"
        text = f"OOD Hessian trace is {v:.2f}x the ID trace: {verdict} for {who}"
    else:
        text = (f"{v:.1%} of the loss-surface points are NaN or infinite: the loss diverges within the probed "
                "region" if v > 0 else "every loss-surface point is finite")
    return Finding(id=outcome.name, level=outcome.level, statement=text, numbers=numbers)


def extra_findings(result: AuditResult) -> list[Finding]:
    """Findings that are not gates: convergence, unseen elements, non-convexity."""
    found = []
    for split, h in result.hessian.items():
        if not h.converged:
            found.append(Finding(
                id=f"hessian_unconverged_{split}", level="warn",
                statement=f"Top eigenvalues on the {split} split did not reach the tolerance "
                f"(largest relative residual {max(h.residuals or [float('nan')]):.2g}); raise probes.hessian.max_steps",
                numbers={"max_residual": max(h.residuals) if h.residuals else None},
            ))
        if h.lambda_min is not None and h.top_eigenvalues and h.lambda_min < 0 < h.top_eigenvalues[0]:
            ratio = abs(h.lambda_min) / h.top_eigenvalues[0]
            if ratio > 0.1:
                found.append(Finding(
                    id=f"negative_curvature_{split}", level="warn",
                    statement=f"The {split} loss has negative curvature: |λ_min|/λ_max = {ratio:.2f} "
                    "(the weights are not at a minimum of this split's loss)",
                    numbers={"lambda_min": h.lambda_min, "lambda_max": h.top_eigenvalues[0]},
                ))
    ood = result.splits.get("ood")
    if ood and ood.elements_unseen_in_train:
        found.append(Finding(
            id="unseen_elements", level="pass",
            statement=f"The OOD set contains elements never seen in training "
            f"({', '.join(ood.elements_unseen_in_train)}): their embeddings are untrained",
            numbers={"n_unseen": float(len(ood.elements_unseen_in_train))},
        ))
    return found


def apply_verdict(result: AuditResult, gates) -> AuditResult:
    """Fill ``gates``, ``findings`` and ``status`` of a result (in place) and return it."""
    result.gates = evaluate_gates(result, gates)
    result.findings = [_finding_for_gate(result, g) for g in result.gates] + extra_findings(result)
    order = {"fail": 0, "warn": 1, "pass": 2}
    result.findings.sort(key=lambda f: order[f.level])
    levels = {g.level for g in result.gates} | {f.level for f in result.findings}
    result.status = "fail" if "fail" in levels else ("warn" if "warn" in levels else "pass")
    return result


def exit_code(result: AuditResult) -> int:
    """0 when every gate passes (warnings allowed), 1 when any gate fails."""
    return 1 if any(not g.passed for g in result.gates) else 0
