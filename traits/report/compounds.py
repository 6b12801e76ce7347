"""Compounds and elements: the worst-predicted compounds of each split and the error per element.

Both read the per-compound accuracy an :class:`~traits.results.AuditResult` stores (``accuracy[split]``: ``ids``,
``targets``, ``predictions`` and, from results schema 1.6, ``formulas`` in the same order) and nothing else.

* :func:`worst_compounds`: the compounds with the largest absolute error, with their error over the split's MAE.
  A per-compound number measured elsewhere in the result (the embedding distance to training, an uncertainty,
  the label-free gradient norm; :func:`per_compound_columns`) joins a row only through a stored id list of the
  same length as its values: a result that stores such values without ids (a subsample, in another order;
  results before schema 1.8) gets no column for them, never a guess.
* :func:`element_errors`: the MAE of the compounds that contain each element (a compound counts once for each
  element it contains), from the formulas; empty when the result stores none (results before schema 1.6).

A label-free result has no labels, hence no errors: both return nothing for it. What it has instead:
:func:`sensitive_compounds`, the compounds of the label-free sample whose predictions move most with the weights.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from traits.results import AuditResult, UncertaintyResult

#: How many compounds the report lists per split.
N_WORST = 5
#: Joins the words of a unit or a parenthesis in a column header, so that a wrapping header keeps it whole.
NBSP = "\u00a0"


@dataclass(frozen=True)
class CompoundRow:
    id: str
    formula: str
    target: float
    prediction: float
    error: float  # prediction − target
    relative: float | None  # |error| / the split's MAE
    extra: dict[str, float | None] = field(default_factory=dict)  # column -> value (per_compound_columns)


def _errors(result: AuditResult, split: str) -> list[tuple[int, float]] | None:
    """(index, prediction − target) of every compound of a split with a finite prediction; None without labels."""
    if result.mode == "label-free":
        return None
    acc = result.accuracy.get(split)
    if acc is None or not acc.targets or not acc.predictions:
        return None
    out = []
    for i, (p, t) in enumerate(zip(acc.predictions, acc.targets)):
        if p is not None and t is not None and math.isfinite(p) and math.isfinite(t):
            out.append((i, float(p) - float(t)))
    return out


def formulas(result: AuditResult, split: str) -> list[str]:
    """The stored formulas of a split when there is one per compound, else []."""
    acc = result.accuracy.get(split)
    if acc is None or not acc.formulas or len(acc.formulas) != len(acc.targets):
        return []
    return list(acc.formulas)


def _by_id(ids: Any, values: Any) -> dict[str, float | None]:
    """{id: value} when ``ids`` and ``values`` are lists of the same length (else {}: nothing to join on)."""
    if not isinstance(ids, Sequence) or isinstance(ids, str) or not isinstance(values, Sequence):
        return {}
    if not ids or len(ids) != len(values):
        return {}
    return {str(i): (float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None)
            for i, v in zip(ids, values)}


def _uncertainty(result: AuditResult) -> UncertaintyResult | None:
    """The result's uncertainty as the typed model. ``load_result`` always gives the model (a results file of
    any 1.x version is validated into it); a plain dict set on a result in code is read the same way, and one
    that is not an uncertainty result is none."""
    unc = getattr(result, "uncertainty", None)
    if isinstance(unc, dict):
        try:
            return UncertaintyResult.model_validate(unc)
        except ValidationError:
            return None
    return unc if isinstance(unc, UncertaintyResult) else None


def _sigma(recalibration: dict[str, Any], u: Sequence[float]) -> list[float] | None:
    """σ = √(a² + b²u²) of each stored u, from the method's recalibration on validation; None without one."""
    a, b = recalibration.get("a"), recalibration.get("b")
    if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in (a, b)):
        return None
    return [math.sqrt(a * a + (b * x) ** 2) for x in u]


def per_compound_columns(result: AuditResult, split: str) -> dict[str, dict[str, float | None]]:
    """Per-compound values stored elsewhere in the result, by id: {column label: {id: value}}.

    * the embedding distance to the k nearest training compounds (``shift.samples[split]``), when the sample
      stores the id of each distance (results from schema 1.8);
    * the recalibrated σ = √(a² + b²u²) (in the target's unit) of the method that best ranks the OOD errors
      (largest OOD Spearman ρ; ``uncertainty.methods[m].<split>.points``), when its points store ids (1.8);
    * the label-free gradient norm ‖∇θ f‖ of each structure of the Hessian probe's sample
      (``label_free.splits[split].grad_norms`` with ``sample_ids``).
    A column joins only through ids stored with its values, one per value: one whose ids are missing, or whose
    lengths differ, is left out, never matched by position. A compound outside a column's sample has None."""
    out: dict[str, dict[str, float | None]] = {}
    sh = result.shift
    if sh is not None and split in sh.samples:
        sample = sh.samples[split]
        joined = _by_id(sample.ids.get("embedding"), sample.distances.get("embedding"))
        if joined:
            out[f"embedding distance to training (k{NBSP}={NBSP}{sh.k})"] = joined
    unc = _uncertainty(result)
    if unc is not None and unc.methods:
        from traits.report.uncertainty import METHOD_LABELS

        def rho(m: str) -> float:
            ood = unc.methods[m].ood
            value = ood.spearman if ood is not None else None
            return value if value is not None and math.isfinite(value) else -math.inf

        for m in sorted((m for m in unc.methods if m in METHOD_LABELS), key=rho, reverse=True):
            scored = getattr(unc.methods[m], split, None) if split in ("id", "ood") else None
            if scored is None:
                continue
            points = scored.points
            sigma = _sigma(unc.methods[m].recalibration, points.u)
            if sigma is not None:
                unit = result.unit.replace(" ", NBSP)
                joined, label = _by_id(points.ids, sigma), f"σ, {METHOD_LABELS[m]} ({unit})"
            else:
                joined, label = _by_id(points.ids, points.u), f"uncertainty, {METHOD_LABELS[m]}"
            if joined:
                out[label] = joined
                break
    lf = result.label_free
    if lf is not None and split in lf.splits:
        part = lf.splits[split]
        joined = _by_id(part.sample_ids, part.grad_norms)
        if joined:
            out["‖∇θ f‖ (label-free)"] = joined
    return out


def column_note(label: str) -> str:
    """What a column of :func:`per_compound_columns` holds, for the note under the table ('' for another)."""
    if label.startswith("embedding distance"):
        return ("Embedding distance: the mean distance to the k nearest training compounds in the model's "
                "embedding, each feature standardised on training (no unit; the domain-shift section)")
    if label.startswith("σ, "):
        return ("σ: the uncertainty of the method that best ranks the OOD errors, recalibrated on the validation "
                "split (σ = √(a² + b²u²)), in the target's unit like the error (the uncertainty section)")
    if label.startswith("uncertainty, "):
        return ("Uncertainty: the raw uncertainty u of the method that best ranks the OOD errors (no "
                "recalibration stored; the uncertainty section)")
    if label.startswith("‖∇θ f‖"):
        return ("‖∇θ f‖: the norm of the gradient of the compound's prediction with respect to the weights, "
                "measured without labels on the Hessian probe's sample (the label-free section)")
    return ""


def worst_compounds(result: AuditResult, split: str, n: int = N_WORST) -> list[CompoundRow]:
    """The ``n`` compounds of a split with the largest absolute error, largest first (ties: the stored order)."""
    errors = _errors(result, split)
    if not errors:
        return []
    acc = result.accuracy[split]
    names = formulas(result, split)
    mae = acc.mae if acc.mae is not None and acc.mae > 0 else sum(abs(e) for _, e in errors) / len(errors)
    columns = per_compound_columns(result, split)
    rows = []
    for i, e in sorted(errors, key=lambda x: (-abs(x[1]), x[0]))[:n]:
        cid = str(acc.ids[i]) if i < len(acc.ids) else f"#{i + 1}"
        extra = {label: (values.get(cid) if i < len(acc.ids) else None) for label, values in columns.items()}
        rows.append(CompoundRow(id=cid, formula=names[i] if names else "", target=float(acc.targets[i]),
                                prediction=float(acc.predictions[i]), error=e,
                                relative=abs(e) / mae if mae and mae > 0 else None, extra=extra))
    return rows


@dataclass(frozen=True)
class SensitiveRow:
    id: str
    formula: str
    prediction: float | None
    grad_norm: float
    relative: float | None  # ‖∇θ f‖ / the ID sample's median ‖∇θ f‖
    extra: dict[str, float | None] = field(default_factory=dict)  # column -> value (per_compound_columns)


def sensitive_compounds(result: AuditResult, split: str, n: int = N_WORST) -> list[SensitiveRow]:
    """The ``n`` compounds of a split's label-free sample whose predictions move most with the weights (largest
    ‖∇θ f‖, ties in sample order), each with its formula and prediction (stored with the sample from results
    schema 1.8), its norm over the ID sample's median ‖∇θ f‖, and the other per-compound values joined by id
    (:func:`per_compound_columns`; the gradient norm's own column left out). Empty without label-free probes.

    What it is not: a list of the worst predictions. It needs no label and says which predictions are most
    sensitive to the weights; no study has shown yet that it ranks a compound's error."""
    lf = result.label_free
    part = lf.splits.get(split) if lf is not None else None
    if part is None or not part.grad_norms or len(part.sample_ids) != len(part.grad_norms):
        return []
    same = len(part.sample_formulas) == len(part.sample_ids)
    preds = part.sample_predictions if len(part.sample_predictions) == len(part.sample_ids) else []
    ref = lf.splits.get("id")
    finite_ref = [g for g in (ref.grad_norms if ref is not None else []) if g is not None and math.isfinite(g)]
    median = float(statistics.median(finite_ref)) if finite_ref else None
    columns = {k: v for k, v in per_compound_columns(result, split).items() if not k.startswith("‖∇θ f‖")}
    order = sorted((i for i, g in enumerate(part.grad_norms) if g is not None and math.isfinite(g)),
                   key=lambda i: (-part.grad_norms[i], i))
    rows = []
    for i in order[:n]:
        cid, g = str(part.sample_ids[i]), float(part.grad_norms[i])
        rows.append(SensitiveRow(id=cid, formula=part.sample_formulas[i] if same else "",
                                 prediction=preds[i] if preds else None, grad_norm=g,
                                 relative=g / median if median else None,
                                 extra={label: values.get(cid) for label, values in columns.items()}))
    return rows


@lru_cache(maxsize=4096)
def formula_elements(formula: str) -> tuple[str, ...]:
    """The element symbols of a formula ('Ce(FeB)4' → ('Ce', 'Fe', 'B')); () when it cannot be read."""
    from pymatgen.core import Composition

    try:
        return tuple(str(e.symbol) for e in Composition(formula).elements)
    except Exception:  # noqa: BLE001 - a formula pymatgen cannot read counts for no element
        return ()


@dataclass(frozen=True)
class ElementError:
    mae: float
    n: int


def element_errors(result: AuditResult, split: str) -> dict[str, ElementError]:
    """{element symbol: MAE of the split's compounds containing it, and their number}; {} without formulas."""
    errors = _errors(result, split)
    names = formulas(result, split)
    if not errors or not names:
        return {}
    sums: dict[str, list[float]] = {}
    for i, e in errors:
        for el in formula_elements(names[i]):
            sums.setdefault(el, []).append(abs(e))
    return {el: ElementError(sum(v) / len(v), len(v)) for el, v in sums.items()}


def compounds_context(result: AuditResult) -> dict[str, Any]:
    """The accuracy section's compounds table: per split (OOD first) the worst compounds, and which optional
    columns (formula, joined per-compound values) the result can fill: a joined column is shown when at least one
    listed compound has a value in it."""
    splits = [s for s in ("ood", "id") if worst_compounds(result, s)]
    rows = {s: worst_compounds(result, s) for s in splits}
    # a joined column none of the listed compounds has a value in (all outside its sample) is left out
    extra = list(dict.fromkeys(label for s in splits for r in rows[s] for label, v in r.extra.items()
                               if v is not None))
    return {"compounds": {
        "splits": splits,
        "rows": rows,
        "mae": {s: result.accuracy[s].mae for s in splits},
        "formula": any(r.formula for s in splits for r in rows[s]),
        "extra": extra,
        "extra_notes": [note for note in (column_note(label) for label in extra) if note],
        "n": N_WORST,
        "elements": any(element_errors(result, s) for s in ("id", "ood")),
    }}
