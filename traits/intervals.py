"""Intervals on the numbers an audit compares: every OOD/ID ratio carries one, and a gate never passes
or fails on a ratio that is undefined or whose interval leaves the decision open.

An :class:`Estimate` is a value with a lower and an upper bound and a flag saying whether the value is
certified (an eigenvalue whose Lanczos pair converged, a trace with a finite standard error). A
:class:`RatioInterval` (stored in ``AuditResult.ratio_intervals``) is one ratio with its interval and a
``status``:

* ``"ok"``: the ratio and its interval are defined;
* ``"uncertified"``: an input was not certified (an eigenvalue that did not converge);
* ``"undefined"``: the denominator is not positive, or not distinguishable from zero (its interval
  reaches 0), so the ratio means nothing.

Every interval decides its gate (:func:`decision`): a gate fails only when the whole interval is beyond its
threshold, passes only when the whole interval is within it, and is undetermined otherwise. An interval
therefore has to carry every error that would move the number on a rerun, and says which it carries
(``kind``, :data:`KINDS`):

* ``"bootstrap over compounds"``: how the ratio would move on other compounds drawn the same way (MAE,
  RMSE, embedding distance): a percentile bootstrap over each split's per-compound values.
* ``"jackknife over structures"``: how a Hessian number would move with another draw of the structures it
  was computed on (:mod:`traits.probes.sampling`), combined with the solver's own error: the Lanczos
  residual bound of λ_max, the Monte-Carlo error of a trace.
* ``"solver bound"``: the solver's error only (Lanczos residual bounds; results of a backend without a
  jackknife, or written before schema 1.6).
* ``"Monte-Carlo error"``: a trace's probe error only (results written before schema 1.6).
* ``"grid resolution"``: where a crossing lies between grid points (the robust radius's bisection bracket).

``decides`` is kept for results written before schema 1.6, whose bootstrap intervals were shown without
deciding; new intervals all decide.

Methods
-------
* ``bounds``: a ratio of two positive quantities known to lie in [lo, hi] each is in
  [num_lo / den_hi, num_hi / den_lo] (every combination is checked, so signs are handled).
* ``fieller``: the ratio a / b of two independent, approximately normal estimates with standard errors
  (Fieller 1954): the set of R for which a - R b is consistent with 0 at level z. It is bounded only when
  b is significantly positive (b / se_b > z); otherwise the ratio is undefined, which is exactly the
  case of a Hessian trace estimated near zero or below it from a few probes.
* ``bootstrap``: percentile interval of a ratio of two means (or medians) over independent resamples of
  each split's per-compound values (seeded, so reproducible).
* ``sampled``: the ratio of two independent estimates, each with a standard error on ``df`` degrees of
  freedom and a hard solver half-width ``bound``: the Fieller interval at the Student-t quantile of the
  smaller df, taken at the four corners of the solver boxes (value ± bound), so the interval holds for any
  values the solver allows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

#: Two-sided 95% normal quantile used for every interval built from standard errors.
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Estimate:
    """``value`` known to lie in [``low``, ``high``] (``None`` = unbounded on that side); ``certified``
    False when the number must not be used (an unconverged eigenvalue)."""

    value: float | None
    low: float | None = None
    high: float | None = None
    certified: bool = True

    @classmethod
    def exact(cls, value: float | None) -> Estimate:
        return cls(value, value, value, value is not None and math.isfinite(value))

    @classmethod
    def plus_minus(cls, value: float | None, half_width: float | None, certified: bool = True) -> Estimate:
        if value is None or half_width is None or not math.isfinite(half_width):
            return cls(value, None, None, certified and value is not None)
        return cls(value, value - abs(half_width), value + abs(half_width), certified)


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


#: The kinds of interval (module docstring), by the ``method`` that made them.
KINDS = {
    "bootstrap": "bootstrap over compounds",
    "sampled": "jackknife over structures",
    "residual bounds": "solver bound",
    "certified eigenvalues": "solver bound",
    "fieller": "Monte-Carlo error",
    "bisection bracket": "grid resolution",
    "bounds": "solver bound",
}


def kind_of(interval: dict | None) -> str:
    """The kind of an interval dict: its ``kind``, else the kind of its ``method`` ("" when unknown)."""
    if not interval:
        return ""
    return interval.get("kind") or KINDS.get(interval.get("method") or "", "")


def _result(value, low, high, status: str, method: str, decides: bool = True) -> dict:
    clean = lambda v: float(v) if _finite(v) else None  # noqa: E731
    return {"value": clean(value), "low": clean(low), "high": clean(high), "status": status, "method": method,
            "decides": decides, "kind": KINDS.get(method, "")}


def bounds_ratio(num: Estimate, den: Estimate, method: str = "bounds") -> dict:
    """Ratio of two estimates with hard bounds; see the module docstring."""
    if not (num.certified and den.certified):
        value = num.value / den.value if _finite(num.value) and _finite(den.value) and den.value > 0 else None
        return _result(value, None, None, "uncertified", method, True)
    if not _finite(num.value) or not _finite(den.value) or den.value <= 0:
        return _result(None, None, None, "undefined", method, True)
    value = num.value / den.value
    d_lo = den.low if den.low is not None else 0.0
    d_hi = den.high if den.high is not None else math.inf
    if d_lo <= 0:  # the denominator may be zero: the ratio is unbounded above
        return _result(value, None, None, "undefined", method, True)
    n_lo = num.low if num.low is not None else -math.inf
    n_hi = num.high if num.high is not None else math.inf
    corners = [n / d for n in (n_lo, n_hi) for d in (d_lo, d_hi) if not (math.isinf(n) and math.isinf(d))]
    low, high = min(corners + [value]), max(corners + [value])
    return _result(value, low if math.isfinite(low) else None, high if math.isfinite(high) else None, "ok",
                   method, True)


def fieller_ratio(a: float | None, se_a: float | None, b: float | None, se_b: float | None,
                  z: float = Z95) -> dict:
    """Fieller interval of a / b for independent normal estimates (module docstring)."""
    if not (_finite(a) and _finite(b)):
        return _result(None, None, None, "undefined", "fieller", True)
    value = a / b if b > 0 else None
    if not (_finite(se_a) and _finite(se_b)) or se_a < 0 or se_b < 0:
        return _result(value, None, None, "uncertified", "fieller", True)
    if b <= 0 or b <= z * se_b:  # the denominator is not significantly positive
        return _result(value, None, None, "undefined", "fieller", True)
    qa = b * b - z * z * se_b * se_b
    disc = a * a * se_b * se_b + b * b * se_a * se_a - z * z * se_a * se_a * se_b * se_b
    root = z * math.sqrt(max(disc, 0.0))
    return _result(value, (a * b - root) / qa, (a * b + root) / qa, "ok", "fieller", True)


@dataclass(frozen=True)
class Sampled:
    """An estimate with a standard error on ``df`` degrees of freedom (``stderr`` None: not measured) and a
    hard solver half-width ``bound`` (0 for none); ``certified`` False when the value must not be used."""

    value: float | None
    stderr: float | None
    df: int = 0
    bound: float = 0.0
    certified: bool = True


def t_quantile(df: int, level: float = 0.95) -> float:
    """Two-sided Student-t quantile for ``df`` degrees of freedom (normal for df ≥ 1000; NaN for df < 1)."""
    if df < 1:
        return float("nan")
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df)) if df < 1000 else Z95


def sampled_ratio(num: Sampled, den: Sampled, level: float = 0.95) -> dict:
    """num / den with sampling errors and solver bounds (module docstring, ``sampled``)."""
    if not (num.certified and den.certified):
        value = num.value / den.value if _finite(num.value) and _finite(den.value) and den.value > 0 else None
        return _result(value, None, None, "uncertified", "sampled")
    if not (_finite(num.value) and _finite(den.value)) or den.value <= 0:
        return _result(None, None, None, "undefined", "sampled")
    value = num.value / den.value
    if not (_finite(num.stderr) and _finite(den.stderr)) or min(num.df, den.df) < 1:
        return _result(value, None, None, "uncertified", "sampled")
    z = t_quantile(min(num.df, den.df), level)
    lows, highs = [], []
    for a in (num.value - abs(num.bound), num.value + abs(num.bound)):
        for b in (den.value - abs(den.bound), den.value + abs(den.bound)):
            f = fieller_ratio(a, num.stderr, b, den.stderr, z=z)
            if f["status"] != "ok":
                return _result(value, None, None, "undefined", "sampled")
            lows.append(f["low"])
            highs.append(f["high"])
    return _result(value, min(lows + [value]), max(highs + [value]), "ok", "sampled")


def bootstrap_ratio(num: Sequence[float], den: Sequence[float], statistic: Callable[[np.ndarray], float] = np.mean,
                    n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap of statistic(num) / statistic(den), each resampled independently."""
    x = np.asarray([v for v in num if _finite(v)], dtype=float)
    y = np.asarray([v for v in den if _finite(v)], dtype=float)
    if x.size == 0 or y.size == 0:
        return _result(None, None, None, "undefined", "bootstrap")
    d0 = float(statistic(y))
    if not d0 > 0:
        return _result(None, None, None, "undefined", "bootstrap")
    value = float(statistic(x)) / d0
    rng = np.random.default_rng(seed)
    xs = x[rng.integers(0, x.size, size=(n_boot, x.size))]
    ys = y[rng.integers(0, y.size, size=(n_boot, y.size))]
    nums = np.apply_along_axis(statistic, 1, xs)
    dens = np.apply_along_axis(statistic, 1, ys)
    ok = dens > 0
    if ok.mean() < level:  # the resampled denominator is too often zero
        return _result(value, None, None, "undefined", "bootstrap")
    ratios = nums[ok] / dens[ok]
    alpha = (1.0 - level) / 2
    low, high = np.quantile(ratios, [alpha, 1.0 - alpha])
    return _result(value, float(low), float(high), "ok", "bootstrap")


def decision(interval: dict | None, threshold: float, comparison: str) -> str:
    """How an interval meets a gate: ``"pass"``, ``"fail"`` or ``"undetermined"`` (module docstring).
    ``comparison`` is ``"<="`` (the value must not exceed the threshold) or ``">="``."""
    if interval is None or interval.get("value") is None or interval.get("status") != "ok":
        return "undetermined"
    value = interval["value"]
    ok = value <= threshold if comparison == "<=" else value >= threshold
    if interval.get("decides", True):  # False only in results before 1.6 (bootstrap intervals shown, not deciding)
        low, high = interval.get("low"), interval.get("high")
        low = -math.inf if low is None else low
        high = math.inf if high is None else high
        if low <= threshold <= high:
            return "undetermined"
    return "pass" if ok else "fail"


def format_interval(interval: dict | None, digits: int = 3) -> str:
    """'1.23 [1.10, 1.41]', '1.23 [1.10, ∞)', 'undefined', 'not certified (1.23)'."""
    if interval is None:
        return "not measured"
    value, status = interval.get("value"), interval.get("status")
    if status == "undefined":
        return "undefined (denominator not positive)"
    if status == "uncertified":
        return "not certified" + (f" ({value:.{digits}g})" if value is not None else "")
    if value is None:
        return "not measured"
    low, high = interval.get("low"), interval.get("high")
    lo = f"{low:.{digits}g}" if low is not None else "−∞"
    hi = f"{high:.{digits}g}" if high is not None else "∞"
    close = "]" if high is not None else ")"
    open_ = "[" if low is not None else "("
    return f"{value:.{digits}g} {open_}{lo}, {hi}{close}"
