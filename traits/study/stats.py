"""Statistics of a study: does a metric's OOD/ID ratio track the OOD/ID error ratio across tasks?

The unit is the *task*: the audits of one task at different seeds share its data and split rule, so they
are averaged (per-task means of every ratio) before anything is ranked, and ρ, its interval and its p all
describe the same statistic, Spearman ρ over tasks. Tasks that hold out the same compounds (the two targets
of one held-out element, chemical system, ..., or one random-split share) are not independent either: they
form a *cluster* (``rule`` in a summary row, :func:`traits.campaign.held_out_rule`). Every interval is a
cluster bootstrap (whole clusters drawn with replacement, each bringing its tasks) and every p-value a
cluster permutation test (whole clusters' metric values exchanged, target for target), so the effective
n is the number of clusters.

- :func:`spearman` / :func:`cluster_bootstrap`      ρ with a percentile interval over resampled clusters
- :func:`cluster_permutation_p`                     one-sided p in the metric's expected direction
- :func:`partial_spearman`                          ρ after regressing the ranks on control variables
                                                    (loss at θ, target shift)
- :func:`holm`                                      Holm step-down adjusted p-values across the candidate
                                                    metrics (the loss at θ, a reference, is not one)
- :func:`noise_floor`                               each metric's OOD/ID ratio on the random-split
                                                    baselines, where nothing is out of distribution (per
                                                    audit: a gate judges one audit; at least
                                                    MIN_FLOOR_AUDITS of them before it counts)
- :func:`study_statistics`                          all of it per family and overall, plus each landscape
                                                    metric against the best distance baseline
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

ERROR_KEY = "mae_ratio"
#: Controls of the partial correlations: the probes' loss at θ and the target shift to training.
CONTROLS = {"loss": "loss_ratio", "target_shift": "target_wasserstein_ratio"}
#: The row fields: the unit (seeds averaged), the cluster (tasks holding out the same compounds), and
#: what tells a cluster's tasks apart (matched when clusters are exchanged).
UNIT_KEY, CLUSTER_KEY, SLOT_KEY = "task", "rule", "target"
#: The kind of metric that is reported but is not a candidate predictor (not in the Holm family).
REFERENCE_KIND = "error at θ (reference)"
#: The per-family block that pools the omission families other than the element one.
OTHER_FAMILIES = "other families (pooled)"


def _rank(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based; ties share their mean rank), as scipy.stats.rankdata, without its overhead."""
    _, inverse, counts = np.unique(np.asarray(x, float), return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    return (upper - (counts - 1) / 2.0)[inverse.reshape(-1)]


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    if den <= 1e-300:
        return None
    return float(a @ b) / den


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman ρ (ties: average ranks); None when fewer than 3 points or a variable is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3:
        return None
    return _pearson(_rank(x), _rank(y))


def partial_spearman(x: Sequence[float], y: Sequence[float], controls: Sequence[Sequence[float]]) -> float | None:
    """Spearman ρ of x and y controlling for ``controls``: the ranks of x and y are regressed (least squares,
    with an intercept) on the ranks of the controls and the residuals correlated. None when the controls
    explain x or y entirely (a residual at rounding level carries no sign to correlate)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if not controls:
        return spearman(x, y)
    z = np.column_stack([np.ones(len(x))] + [_rank(np.asarray(c, float)) for c in controls])
    if len(x) < z.shape[1] + 2:
        return None
    rx, ry = _rank(x), _rank(y)
    beta_x, *_ = np.linalg.lstsq(z, rx, rcond=None)
    beta_y, *_ = np.linalg.lstsq(z, ry, rcond=None)
    ex, ey = rx - z @ beta_x, ry - z @ beta_y
    for r, e in ((rx, ex), (ry, ey)):
        if float(e @ e) <= 1e-20 * max(float((r - r.mean()) @ (r - r.mean())), 1.0):
            return None
    return _pearson(ex, ey)


def cluster_bootstrap(stat: Callable[[np.ndarray], float | None], n_rows: int, clusters: Sequence,
                      n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """Percentile interval of ``stat(row_indices)`` over resampled clusters (drawn with replacement, each
    bringing all its rows). Resamples where the statistic is undefined are dropped and counted."""
    clusters = list(clusters)
    if len(clusters) != n_rows:
        raise ValueError("one cluster label per row")
    groups: dict = {}
    for i, c in enumerate(clusters):
        groups.setdefault(c, []).append(i)
    members = [np.asarray(v) for v in groups.values()]
    if len(members) < 2:
        return {"value": stat(np.arange(n_rows)) if n_rows else None, "low": None, "high": None, "n_boot": 0,
                "n_clusters": len(members)}
    rng = np.random.default_rng(seed)
    point = stat(np.arange(n_rows))
    values = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(members), len(members))
        v = stat(np.concatenate([members[j] for j in pick]))
        if v is not None and math.isfinite(v):
            values.append(v)
    if point is None or len(values) < max(10, n_boot // 10):
        return {"value": point, "low": None, "high": None, "n_boot": len(values), "n_clusters": len(members)}
    a = (1 - level) / 2
    low, high = np.quantile(values, [a, 1 - a])
    return {"value": point, "low": float(low), "high": float(high), "n_boot": len(values),
            "n_clusters": len(members)}


def paired_cluster_difference(stat: Callable[[np.ndarray, np.ndarray], float | None], a: Sequence[float],
                              b: Sequence[float], y: Sequence[float], clusters: Sequence, n_boot: int = 2000,
                              level: float = 0.95, seed: int = 0) -> dict:
    """Δ = stat(a, y) − stat(b, y) on the same rows, with the percentile interval of :func:`cluster_bootstrap`
    where both statistics are computed on each resample (paired): ``{"delta", "low", "high", "n_audits",
    "n_clusters", "n_boot"}``. A resample where either statistic is undefined is dropped."""
    a, b, y = (np.asarray(v, float) for v in (a, b, y))

    def diff(i):
        sa, sb = stat(a[i], y[i]), stat(b[i], y[i])
        return None if sa is None or sb is None else sa - sb

    boot = cluster_bootstrap(diff, len(a), list(clusters), n_boot, level, seed)
    return {"delta": boot["value"], "low": boot["low"], "high": boot["high"], "n_audits": int(len(a)),
            "n_clusters": boot["n_clusters"], "n_boot": boot["n_boot"]}


def holm(pvalues: dict[str, float | None]) -> dict[str, float | None]:
    """Holm's step-down adjustment (family-wise error) of the p-values that are not None."""
    items = sorted(((p, k) for k, p in pvalues.items() if p is not None), key=lambda t: t[0])
    m = len(items)
    out: dict[str, float | None] = {k: None for k in pvalues}
    running = 0.0
    for i, (p, k) in enumerate(items):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out


def _cluster(row: dict):
    """A row's cluster: its held-out rule, or its task when it has none."""
    return row.get(CLUSTER_KEY) or row[UNIT_KEY]


def task_units(rows: list[dict], keys: Sequence[str]) -> dict:
    """The per-task means of ``keys`` over the audits where all of them are finite, in first-seen order, with
    each task's cluster (``rule``; the task itself when a row has none) and slot (its target)."""
    use = _finite_rows(rows, keys)
    order = list(dict.fromkeys(r[UNIT_KEY] for r in use))
    by_task: dict = {t: [] for t in order}
    for r in use:
        by_task[r[UNIT_KEY]].append(r)
    return {"values": {k: np.array([float(np.mean([float(r[k]) for r in by_task[t]])) for t in order])
                       for k in keys},
            "clusters": [_cluster(by_task[t][0]) for t in order],
            "slots": [str(by_task[t][0].get(SLOT_KEY) or "") for t in order],
            "n_audits": len(use), "n_tasks": len(order)}


def cluster_permutation_p(x: np.ndarray, y: np.ndarray, clusters: Sequence, slots: Sequence, *,
                          sign: float = 1.0, n_perm: int = 2000, seed: int = 0) -> float | None:
    """One-sided p of Spearman ρ(x, y) in the direction ``sign``: the share of permutations whose ρ is at least
    as far that way as the observed one, (1 + hits) / (1 + n_perm). A permutation exchanges whole clusters'
    x values, slot for slot, among clusters with the same slots, so tasks sharing their held-out compounds
    stay together (exact under 'x is independent of y across clusters'). None when ρ is undefined or no two
    clusters can be exchanged. Each value keeps its slot (target), so the null distribution holds whatever
    the targets alone explain: a metric that only tells the targets apart (say, larger on every band-gap
    task, whose errors are also larger) gets no credit for it, and the null is not centred on 0 then."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    observed = spearman(x, y)
    if observed is None:
        return None
    members: dict = {}
    for i, (c, s) in enumerate(zip(clusters, slots)):
        slot_map = members.setdefault(c, {})
        slot_map[(s, sum(1 for k in slot_map if k[0] == s))] = i   # a repeated slot gets an occurrence number
    strata: dict = {}
    for c, slot_map in members.items():
        strata.setdefault(tuple(sorted(slot_map)), []).append(c)
    blocks = [np.array([[members[c][k] for k in shape] for c in cl]) for shape, cl in strata.items() if len(cl) > 1]
    if not blocks:
        return None
    rx, ry = _rank(x), _rank(y)
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(n_perm):
        perm = rx.copy()
        for block in blocks:
            perm[block] = rx[block[rng.permutation(len(block))]]
        r = _pearson(perm, ry)
        if r is not None and sign * r >= sign * observed - 1e-12:
            hits += 1
    return (1 + hits) / (1 + n_perm)


def _finite_rows(rows: list[dict], keys: Sequence[str]) -> list[dict]:
    return [r for r in rows if all(r.get(k) is not None and math.isfinite(float(r[k])) for k in keys)]


def metric_statistics(rows: list[dict], key: str, *, sign: float = 1.0, n_boot: int = 2000, level: float = 0.95,
                      seed: int = 0, controls: dict[str, str] | None = None) -> dict:
    """Over the per-task means: ρ of ``key`` with the error ratio, its cluster-bootstrap interval, the one-sided
    cluster-permutation p in the direction ``sign``, and the partial ρ controlling for each control (and for
    all of them together), each with an interval."""
    controls = CONTROLS if controls is None else controls
    u = task_units(rows, (ERROR_KEY, key))
    x, y = u["values"][key], u["values"][ERROR_KEY]
    clusters = u["clusters"]
    out = {"n_audits": u["n_audits"], "n_tasks": u["n_tasks"], "n_clusters": len(set(clusters))}
    boot = cluster_bootstrap(lambda i: spearman(x[i], y[i]), len(x), clusters, n_boot, level, seed)
    out |= {"rho": boot["value"], "low": boot["low"], "high": boot["high"],
            "p": cluster_permutation_p(x, y, clusters, u["slots"], sign=sign, n_perm=n_boot, seed=seed + 3)
            if len(x) else None}
    partial = {}
    for name, ckey in {**controls, **({"all": None} if len(controls) > 1 else {})}.items():
        ckeys = list(controls.values()) if ckey is None else [ckey]
        if key in ckeys:
            continue
        s = task_units(rows, (ERROR_KEY, key, *ckeys))
        if s["n_tasks"] < 5:
            partial[name] = {"rho": None, "low": None, "high": None, "n_tasks": s["n_tasks"]}
            continue
        xs, ys = s["values"][key], s["values"][ERROR_KEY]
        cs = [s["values"][c] for c in ckeys]
        b = cluster_bootstrap(lambda i, xs=xs, ys=ys, cs=cs: partial_spearman(xs[i], ys[i], [c[i] for c in cs]),
                              len(xs), s["clusters"], n_boot, level, seed + 1)
        partial[name] = {"rho": b["value"], "low": b["low"], "high": b["high"], "n_tasks": s["n_tasks"]}
    out["partial"] = partial
    return out


def spread(values: Sequence, above: dict[str, float] | None = None) -> dict:
    """How many finite values, their median and 2.5-97.5 % range, and the share above each named threshold."""
    v = np.array([float(x) for x in values if x is not None and math.isfinite(float(x))])
    if not len(v):
        return {"n": 0, "median": None, "low": None, "high": None, "share_above": {k: None for k in above or {}}}
    lo, hi = np.quantile(v, [0.025, 0.975])
    return {"n": int(len(v)), "median": float(np.median(v)), "low": float(lo), "high": float(hi),
            "share_above": {k: float(np.mean(v > t)) for k, t in (above or {}).items()}}


#: The fewest random-split audits a noise floor is read from: below it the 2.5-97.5 % range is the extremes of
#: a handful of values, so the floor is reported but marked too few, and no gate threshold is judged by it.
MIN_FLOOR_AUDITS = 10


def noise_floor(rows: list[dict], keys: Sequence[str], family_key: str = "family", *,
                neutral: dict[str, float] | None = None, min_audits: int = MIN_FLOOR_AUDITS) -> dict:
    """Each metric's OOD/ID value on the random-split baselines, per audit (nothing is out of distribution, so
    an honest metric sits at its neutral value: 1 for a ratio, 0 for a difference, as ``neutral`` says; 1
    where it says nothing): how many, the median, the 2.5-97.5 % range, the share above the neutral value,
    and whether there are at least ``min_audits`` of them (``enough``; a floor from fewer is not one)."""
    base = [r for r in rows if r.get(family_key) == "random"]
    neutral = neutral or {}
    out = {}
    for key in (ERROR_KEY, *keys):
        at = float(neutral.get(key, 1.0))
        s = spread([r.get(key) for r in base], {"neutral": at})
        out[key] = {k: s[k] for k in ("n", "median", "low", "high")} | {
            "neutral": at, "share_above_neutral": s["share_above"]["neutral"], "enough": s["n"] >= min_audits}
    return out


#: The seeds a task must have for :func:`seed_firing` to count it (the studies train each task three times).
SEEDS_PER_TASK = 3


def seed_firing(rows: list[dict], key: str, *, threshold: float, direction: float,
                seeds: int = SEEDS_PER_TASK) -> dict:
    """How often a gate agrees with itself across training seeds: among the omission tasks (random splits have
    nothing to find: a gate firing there is a false alarm) with ``seeds`` finite values of ``key`` (one per seed),
    how many have the value beyond ``threshold`` (above it for ``direction`` > 0, below for < 0) on exactly 1, 2
    and 3 of them; ``n_tasks`` counts the tasks looked at. The gate is read from the point value (the study
    audits' values; an audit's own gate also reads the interval)."""
    per: dict[str, list[float]] = {}
    for r in rows:
        if r.get("family") == "random":
            continue
        v = r.get(key)
        if v is not None and math.isfinite(float(v)):
            per.setdefault(str(r[UNIT_KEY]), []).append(float(v))
    out = {str(k): 0 for k in range(1, seeds + 1)} | {"n_tasks": 0}
    for values in per.values():
        if len(values) != seeds:
            continue
        out["n_tasks"] += 1
        fired = sum(1 for v in values if (v > threshold if direction > 0 else v < threshold))
        if fired:
            out[str(fired)] += 1
    return out


def versus_baseline(rows: list[dict], metric: str, baseline: str, signs: dict[str, float], *,
                    n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """Difference ``sign·ρ(metric) − sign·ρ(baseline)`` over the per-task means of the tasks with both, with a
    cluster-bootstrap interval from the same resamples for both (positive: the metric tracks the error better)."""
    u = task_units(rows, (ERROR_KEY, metric, baseline))
    x, b, y = u["values"][metric], u["values"][baseline], u["values"][ERROR_KEY]
    sm, sb = signs.get(metric, 1.0), signs.get(baseline, 1.0)

    def diff(i):
        rm, rb = spearman(x[i], y[i]), spearman(b[i], y[i])
        return None if rm is None or rb is None else sm * rm - sb * rb

    boot = cluster_bootstrap(diff, len(x), u["clusters"], n_boot, level, seed + 2)
    return {"diff": boot["value"], "low": boot["low"], "high": boot["high"], "n_audits": u["n_audits"],
            "n_tasks": u["n_tasks"], "n_clusters": len(set(u["clusters"]))}


def study_statistics(rows: list[dict], metrics: Sequence[str], *, kinds: dict[str, str], signs: dict[str, float],
                     n_boot: int = 2000, level: float = 0.95, seed: int = 0, min_clusters: int = 3,
                     neutral: dict[str, float] | None = None) -> dict:
    """Overall and per-family statistics of every metric, Holm across metrics, the noise floor and each
    landscape metric against the best distance baseline (chosen by its overall signed ρ). A family gets its
    own block only with at least ``min_clusters`` held-out rules (with two, a bootstrap interval means
    nothing); the omission families other than the element one are also pooled (:data:`OTHER_FAMILIES`),
    since the study runs only two rules of each. The overall block ranks every task, the random-split
    baselines included: they are the no-shift end of the scale (an error ratio near 1), a case a gate meets
    too. ``neutral`` gives each metric's no-shift value for the noise floor (1 for a ratio, 0 for a
    difference)."""

    def block(sub: list[dict]) -> dict:
        got = {k: metric_statistics(sub, k, sign=signs.get(k, 1.0), n_boot=n_boot, level=level, seed=seed)
               for k in metrics}
        adjusted = holm({k: v["p"] for k, v in got.items() if kinds.get(k) != REFERENCE_KIND})
        for k, v in got.items():
            v["p_holm"] = adjusted.get(k)
            v["expected_sign"] = signs.get(k, 1.0)
            v["kind"] = kinds.get(k, "")
        return got

    overall = block(rows)
    groups: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r.get("family") or "?"):
        groups.setdefault(r.get("family") or "?", []).append(r)
    others = [f for f in groups if f not in ("element", "random", "named sets")]
    if len(others) > 1:
        groups[OTHER_FAMILIES] = [r for r in rows if (r.get("family") or "?") in others]
    per_family = {}
    for fam, sub in groups.items():
        n = {"n_tasks": len({r[UNIT_KEY] for r in sub}), "n_clusters": len({_cluster(r) for r in sub})}
        usable = fam != "random" and n["n_clusters"] >= min_clusters
        per_family[fam] = n | {"metrics": block(sub) if usable else None}
    baselines = [(signs.get(k, 1.0) * overall[k]["rho"], k) for k in metrics
                 if kinds.get(k) == "distance baseline" and overall[k]["rho"] is not None]
    versus = {"baseline": None, "metrics": {}}
    if baselines:
        _, best = max(baselines)
        versus["baseline"] = best
        for k in metrics:
            if kinds.get(k) == "landscape":
                versus["metrics"][k] = versus_baseline(rows, k, best, signs, n_boot=n_boot, level=level, seed=seed)
    return {"overall": overall, "per_family": per_family, "noise_floor": noise_floor(rows, metrics, neutral=neutral),
            "vs_best_baseline": versus,
            "settings": {"n_boot": n_boot, "n_perm": n_boot, "level": level, "seed": seed,
                         "unit": "task (seeds averaged)",
                         "cluster": "held-out rule (the tasks of every target that hold out the same compounds)",
                         "p_values": "one-sided in the expected direction, cluster permutation test on the per-task "
                                     "means; Holm-adjusted across the metrics except the loss at θ (a reference)",
                         "controls": CONTROLS}}


# ----------------------------------------------------------------------------------------------
# Figures


def forest_figure(stats: dict, labels: dict[str, str]):
    """ρ with its 95 % cluster-bootstrap interval for every metric (overall), coloured by kind; the sign of
    metrics where smaller is worse is flipped so that right always means 'tracks the error'."""
    from matplotlib.figure import Figure

    overall = stats["overall"]
    keys = [k for k, v in overall.items() if v["rho"] is not None]
    keys.sort(key=lambda k: overall[k]["expected_sign"] * overall[k]["rho"])
    fig = Figure(figsize=(6.4, 0.32 * max(4, len(keys)) + 1.0), layout="constrained")
    ax = fig.add_subplot()
    colours = {"landscape": "#1f77b4", "distance baseline": "#d62728", "error at θ (reference)": "#7f7f7f"}
    for i, k in enumerate(keys):
        v, s = overall[k], overall[k]["expected_sign"]
        lo, hi = (s * v["low"], s * v["high"]) if v["low"] is not None else (None, None)
        if lo is not None:
            lo, hi = min(lo, hi), max(lo, hi)
            ax.plot([lo, hi], [i, i], color=colours.get(v["kind"], "black"), lw=2)
        ax.plot(s * v["rho"], i, "o", color=colours.get(v["kind"], "black"))
    ax.axvline(0.0, color="black", lw=0.8, ls="--")
    ax.set_yticks(range(len(keys)), [labels.get(k, k) + (" (sign flipped)" if overall[k]["expected_sign"] < 0
                                                          else "") for k in keys], fontsize=8)
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel("Spearman ρ with the OOD/ID error ratio over tasks\n(95 % cluster-bootstrap interval)", fontsize=8)
    handles = [ax.plot([], [], "o-", color=c, label=n)[0] for n, c in colours.items()]
    ax.legend(handles=handles, fontsize=7, loc="lower right", frameon=False)
    return fig


def _log_axis(axis) -> None:
    """A log axis labelled 0.5, 1, 2, 5, 10, ... in plain numbers (matplotlib's default labels the minor ticks
    of a short range in its own font size, and they overlap)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if axis is axis.axes.xaxis:
        axis.axes.set_xscale("log")
    else:
        axis.axes.set_yscale("log")
    axis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def scatter_figure(rows: list[dict], metrics: Sequence[str], labels: dict[str, str]):
    """Per metric: its OOD/ID ratio against the OOD/ID error ratio, one point per audit, coloured by family."""
    import seaborn as sns
    from matplotlib.figure import Figure

    keys = [k for k in metrics if _finite_rows(rows, (k, ERROR_KEY))]
    ncols = 3
    nrows = max(1, math.ceil(len(keys) / ncols))
    fig = Figure(figsize=(7.2, 2.3 * nrows + 0.6), layout="constrained")
    families = sorted({r.get("family") or "?" for r in rows})
    palette = dict(zip(families, sns.color_palette("colorblind", len(families))))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, key in zip(axes.flat, keys):
        use = _finite_rows(rows, (key, ERROR_KEY))
        data = {"x": [float(r[key]) for r in use], "y": [float(r[ERROR_KEY]) for r in use],
                "family": [r.get("family") or "?" for r in use]}
        sns.scatterplot(data=data, x="x", y="y", hue="family", palette=palette, ax=ax, s=14, legend=False)
        if all(v > 0 for v in data["x"]):
            _log_axis(ax.xaxis)
        _log_axis(ax.yaxis)
        ax.set_xlabel(labels.get(key, key), fontsize=7)
        ax.set_ylabel("OOD/ID MAE", fontsize=7)
        ax.tick_params(which="both", labelsize=6)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    handles = [axes.flat[0].plot([], [], "o", color=palette[f], label=f)[0] for f in families]
    fig.legend(handles=handles, fontsize=7, ncols=min(len(families), 7), loc="outside upper center", frameon=False)
    return fig
