"""Compounds and elements: the worst-predicted compounds of each split and the error per element.

Both read the per-compound accuracy an :class:`~traits.results.AuditResult` stores (``accuracy[split]``: ``ids``,
``targets``, ``predictions`` and, from results schema 1.6, ``formulas`` in the same order) and nothing else.

* :func:`worst_compounds`: the compounds with the largest absolute error, with their error over the split's MAE.
  A per-compound number measured elsewhere in the result (the embedding distance to training, an uncertainty)
  joins a row only through a stored id list of the same length as its values: a result that stores such values
  without ids (a subsample, in another order) gets no column for them, never a guess.
* :func:`element_errors`: the MAE of the compounds that contain each element (a compound counts once for each
  element it contains), from the formulas; empty when the result stores none (results before schema 1.6).

A label-free result has no labels, hence no errors: both return nothing for it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from traits.results import AuditResult

#: How many compounds the report lists per split.
N_WORST = 5


@dataclass(frozen=True)
class CompoundRow:
    id: str
    formula: str
    target: float
    prediction: float
    error: float  # prediction − target
    relative: float | None  # |error| / the split's MAE
    extra: dict[str, float | None] = field(default_factory=dict)  # column -> value (distance, uncertainty)


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


def per_compound_columns(result: AuditResult, split: str) -> dict[str, dict[str, float | None]]:
    """Per-compound values stored elsewhere in the result, by id: {column label: {id: value}}.

    * the embedding distance to the k nearest training compounds (``shift.samples[split]``), when the samples
      store their compounds' ids;
    * the uncertainty of the method that best ranks the OOD errors (``uncertainty.methods[m][split].points``),
      when its points store ids.
    A column whose ids are missing, or whose lengths differ, is left out."""
    out: dict[str, dict[str, float | None]] = {}
    sh = result.shift
    if sh is not None and split in sh.samples:
        sample = sh.samples[split]
        ids = getattr(sample, "ids", None)
        joined = _by_id(ids, sample.distances.get("embedding"))
        if joined:
            out[f"embedding distance to training (k = {sh.k})"] = joined
    unc = getattr(result, "uncertainty", None) or {}
    methods = unc.get("methods") if isinstance(unc, dict) else None
    if isinstance(methods, dict) and methods:
        from traits.report.uncertainty import METHOD_LABELS

        def rho(m: str) -> float:
            value = ((methods[m] or {}).get("ood") or {}).get("spearman")
            return value if isinstance(value, (int, float)) and math.isfinite(value) else -math.inf

        for m in sorted((m for m in methods if m in METHOD_LABELS), key=rho, reverse=True):
            points = (((methods[m] or {}).get(split) or {}).get("points")) or {}
            joined = _by_id(points.get("ids"), points.get("u"))
            if joined:
                out[f"uncertainty, {METHOD_LABELS[m]}"] = joined
                break
    return out


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
    columns (formula, joined per-compound values) the result can fill."""
    splits = [s for s in ("ood", "id") if worst_compounds(result, s)]
    rows = {s: worst_compounds(result, s) for s in splits}
    extra = list(dict.fromkeys(label for s in splits for r in rows[s] for label in r.extra))
    return {"compounds": {
        "splits": splits,
        "rows": rows,
        "mae": {s: result.accuracy[s].mae for s in splits},
        "formula": any(r.formula for s in splits for r in rows[s]),
        "extra": extra,
        "n": N_WORST,
        "elements": any(element_errors(result, s) for s in ("id", "ood")),
    }}
