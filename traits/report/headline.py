"""The headline numbers of an audit, with units and intervals where the result has them.

Read by the report's summary page and by ``traits compare``. Nothing here is measured again: every
number comes from an :class:`~traits.results.AuditResult`. Intervals come from three places, in this
order of preference:

* ``result.ratio_intervals`` (``{name: {"low", "high", "status"}}``) when the result carries them;
* for MAE and the OOD/ID MAE ratio, a percentile bootstrap over the stored per-compound predictions
  (:data:`BOOTSTRAP_DRAWS` resamples, fixed seed, so a report renders the same every time);
* for the Hessian trace, the estimator's standard error (± :data:`Z95` standard errors).

A number without one of these is shown without an interval, never with an invented one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from traits import catalogue as _catalogue
from traits.report.formatting import interval_kind
from traits.results import AuditResult, nan_array

#: Bootstrap resamples for MAE intervals, the seed they are drawn with and the coverage.
BOOTSTRAP_DRAWS = 2000
BOOTSTRAP_SEED = 0
LEVEL = 0.95
Z95 = 1.959963984540054
#: The kinds (:data:`traits.report.formatting.INTERVAL_KINDS`) of the intervals this module computes itself.
BOOTSTRAP_KIND = "bootstrap over compounds"
MONTE_CARLO_KIND = "Monte-Carlo error"


@dataclass(frozen=True)
class Value:
    """One number and, where known, its interval (``low``/``high``) and where the interval comes from."""

    value: float | None
    low: float | None = None
    high: float | None = None
    source: str = ""  # "bootstrap" | "stderr" | "jackknife" | "result" | ""
    censored: bool = False  # a lower bound (robust radius at the edge of the grid)
    status: str = ""  # of a stored interval: ok | uncertified | undefined
    below: float | None = None  # an upper bound in place of a value under the grid's resolution
    kind: str = ""  # what the interval is (traits.report.formatting.INTERVAL_KINDS), '' without one

    @property
    def has_interval(self) -> bool:
        """At least one bound is known (a stored interval may be open on one side: a censored radius)."""
        return self.low is not None or self.high is not None

    @property
    def closed(self) -> bool:
        return self.low is not None and self.high is not None


@dataclass(frozen=True)
class Headline:
    """A row of the summary table: the ID and OOD value of one quantity and their OOD/ID ratio."""

    key: str
    label: str
    unit: str
    id: Value
    ood: Value
    ratio: Value
    ratio_key: str = ""
    worse: str = "high"  # which way the ratio is worse out of distribution: "high" | "low"


@dataclass
class Bootstrap:
    """Bootstrap draws of the MAE of a split (``None`` when it has no per-compound data)."""

    draws: dict[str, np.ndarray] = field(default_factory=dict)


def finite(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _percentiles(draws: np.ndarray) -> tuple[float | None, float | None]:
    draws = draws[np.isfinite(draws)]
    if draws.size < 10:
        return None, None
    tail = 100 * (1 - LEVEL) / 2
    lo, hi = np.percentile(draws, [tail, 100 - tail])
    return float(lo), float(hi)


def mae_draws(result: AuditResult, split: str, *, draws: int = BOOTSTRAP_DRAWS,
              seed: int = BOOTSTRAP_SEED) -> np.ndarray | None:
    """Bootstrap resamples of a split's MAE from its stored predictions (None without per-compound data)."""
    acc = result.accuracy.get(split)
    if acc is None or not acc.targets or not acc.predictions:
        return None
    t, y = nan_array(acc.targets), nan_array(acc.predictions)
    n = min(len(t), len(y))
    err = np.abs(y[:n] - t[:n])
    err = err[np.isfinite(err)]
    if err.size < 2:
        return None
    # one generator per split (seeded by its name) so that a split's draws do not depend on the others
    rng = np.random.default_rng([seed, sum(map(ord, split))])
    index = rng.integers(0, err.size, size=(draws, err.size))
    return err[index].mean(axis=1)


def mae_value(result: AuditResult, split: str, draws: np.ndarray | None = None) -> Value:
    acc = result.accuracy.get(split)
    if acc is None:
        return Value(None)
    draws = mae_draws(result, split) if draws is None else draws
    if draws is None:
        return Value(finite(acc.mae))
    lo, hi = _percentiles(draws)
    return Value(finite(acc.mae), lo, hi, "bootstrap" if lo is not None else "",
                 kind=BOOTSTRAP_KIND if lo is not None else "")


def stored_entry(result: AuditResult, name: str) -> dict[str, Any] | None:
    """``result.ratio_intervals[name]`` as a plain dict, None when the result carries none."""
    intervals = getattr(result, "ratio_intervals", None) or {}
    entry = intervals.get(name) if isinstance(intervals, dict) else None
    if entry is None:
        return None
    if hasattr(entry, "model_dump"):
        entry = entry.model_dump()
    return entry if isinstance(entry, dict) else None


def stored_interval(result: AuditResult, name: str) -> tuple[float | None, float | None, str]:
    """(low, high, status) of ``result.ratio_intervals[name]`` when the result carries one."""
    entry = stored_entry(result, name)
    if entry is None:
        return None, None, ""
    return finite(entry.get("low")), finite(entry.get("high")), str(entry.get("status") or "")


def stored_kind(result: AuditResult, name: str) -> str:
    """What the stored interval of a ratio is (:func:`traits.report.formatting.interval_kind`); '' without one."""
    return interval_kind(stored_entry(result, name))


def ratio_value(result: AuditResult, name: str, boot: dict[str, np.ndarray | None] | None = None) -> Value:
    """A ratio of ``result.ratios`` with its interval: the stored one, else (MAE) the bootstrap's."""
    value = finite(result.ratios.get(name))
    lo, hi, status = stored_interval(result, name)
    if lo is not None or hi is not None or status not in ("", "ok"):
        kind = stored_kind(result, name) if lo is not None or hi is not None else ""
        return Value(value, lo, hi, "result", status=status, kind=kind)
    if bootstrapped_mae(name) and value is not None:
        boot = boot if boot is not None else {s: mae_draws(result, s) for s in ("id", "ood")}
        if boot.get("id") is not None and boot.get("ood") is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                lo, hi = _percentiles(boot["ood"] / boot["id"])
            if lo is not None:
                return Value(value, lo, hi, "bootstrap", kind=BOOTSTRAP_KIND)
    return Value(value)


def bootstrapped_mae(name: str) -> bool:
    """A ratio of the MAEs, whose interval (when the result stores none) is the bootstrap of the stored
    per-compound errors: the catalogue entry whose source is ``accuracy.mae``."""
    return any(m.name == name and m.source == "accuracy.mae" for m in _catalogue.catalogue())


def _metric(result: AuditResult, split: str, name: str) -> Value:
    """A split's value of ``metrics.<name>``: with its Monte-Carlo interval where the metrics hold a standard
    error (``<name>_stderr``: the Hessian trace), a lower bound where ``<name>_censored`` (a robust radius at the
    edge of the grid), an upper bound where it lies below the grid's resolution."""
    m = result.metrics.get(split)
    if m is None:
        return Value(None)
    value, se = finite(getattr(m, name, None)), finite(getattr(m, f"{name}_stderr", None))
    if value is not None and se is not None:
        return Value(value, value - Z95 * se, value + Z95 * se, "stderr", kind=MONTE_CARLO_KIND)
    return Value(value, censored=bool(getattr(m, f"{name}_censored", False)),
                 below=finite(m.below_resolution.get(name)))


def split_value(result: AuditResult, metric: _catalogue.Metric, split: str,
                boot: dict[str, np.ndarray | None] | None = None) -> Value:
    """A split's value of the quantity behind a catalogue metric, read from its ``source``: ``accuracy.<x>`` (the
    MAE with its bootstrap interval), ``metrics.<x>``, ``label_free.<x>`` (:func:`label_free_value`),
    ``shift.density`` (the mean negative log-likelihood) or ``shift.<space>`` (the median kNN distance)."""
    where, _, what = (metric.source or "").partition(".")
    if where == "accuracy" and what == "mae":
        return mae_value(result, split, (boot or {}).get(split))
    if where == "accuracy":
        acc = result.accuracy.get(split)
        return Value(finite(getattr(acc, what, None)) if acc is not None else None)
    if where == "metrics":
        return _metric(result, split, what)
    if where == "label_free":
        return label_free_value(result, split, what)
    if where == "shift" and what == "density":
        return _density(result, split)
    if where == "shift" and what:
        return _knn(result, split, what)
    return Value(None)


#: Where a label-free quantity has a delete-a-group jackknife (its interval: the t interval of the jackknife SE).
LABEL_FREE_JACKKNIFE = {"gn_lambda_max": "gn_lambda_jackknife", "gn_trace": "gn_trace_jackknife"}
JACKKNIFE_KIND = "jackknife over structures"


def label_free_value(result: AuditResult, split: str, what: str) -> Value:
    """A split's label-free quantity (``result.label_free.splits[split]``): a field of
    :class:`~traits.results.LabelFreeSplit` (a field or one of its properties); the Gauss-Newton λ_max and trace
    with the t interval of their jackknife standard error."""
    lf = getattr(result, "label_free", None)
    part = lf.splits.get(split) if lf is not None else None
    if part is None:
        return Value(None)
    value = finite(getattr(part, what, None))
    jack = getattr(part, LABEL_FREE_JACKKNIFE.get(what, ""), None)
    se = finite(jack.stderr) if jack is not None else None
    if value is None or se is None or jack.df < 1:
        return Value(value)
    from traits.intervals import t_quantile

    half = t_quantile(int(jack.df)) * se
    return Value(value, value - half, value + half, "jackknife", kind=JACKKNIFE_KIND)


def _density(result: AuditResult, split: str) -> Value:
    """A split's mean negative log-likelihood under the training embeddings' Gaussian mixture (shift.density)."""
    density = getattr(result.shift, "density", None) if result.shift is not None else None
    return Value(finite((density.nll or {}).get(split)) if density is not None else None)


def _split_unit(result: AuditResult, metric: _catalogue.Metric) -> str:
    from traits.report.figures import loss_unit

    if metric.split_unit == "target":
        return result.unit
    if metric.split_unit == "loss":
        return loss_unit(result.unit, result.loss)
    return metric.split_unit or "dimensionless"


def headlines(result: AuditResult) -> list[Headline]:
    """The summary table's rows, in reading order: one per metric of the catalogue with a ``headline``
    (:func:`traits.catalogue.headlines`); quantities the audit did not measure are left out."""
    boot = {s: mae_draws(result, s) for s in ("id", "ood")}
    rows = [Headline(m.headline, m.row_label, _split_unit(result, m), split_value(result, m, "id", boot),
                     split_value(result, m, "ood", boot), ratio_value(result, m.name, boot), m.name, worse=m.worse)
            for m in _catalogue.headlines()]
    return [h for h in rows if any(v.value is not None or v.below is not None for v in (h.id, h.ood, h.ratio))]


def _knn(result: AuditResult, split: str, space: str = "embedding") -> Value:
    sh = result.shift
    if sh is None or split not in sh.splits or space not in sh.splits[split].distances:
        return Value(None)
    return Value(finite(sh.splits[split].distances[space].median))


def flagged(result: AuditResult, limit: int = 3) -> list[Any]:
    """The findings a reader needs first: fails, then warns, at most ``limit`` (the rest are counted)."""
    order = {"fail": 0, "warn": 1}
    hits = [f for f in result.findings if f.level in order]
    return sorted(hits, key=lambda f: order[f.level])[:limit]


def interval_of_finding(result: AuditResult, finding) -> Value | None:
    """The ratio (and its interval) behind a gate's finding, when the finding is a gate on a ratio."""
    if finding.id in result.ratios:
        v = ratio_value(result, finding.id)
        return v if v.value is not None else None
    return None
