"""Statistics of a study: does a metric's OOD/ID ratio track the OOD/ID error ratio across tasks?

Audits of one task at different seeds share the task's data and split rule, so they are not independent:
every interval here is a *cluster bootstrap* that resamples tasks (all seeds of a drawn task come along),
and every p-value is computed on the per-task means (the effective n is the number of tasks).

- :func:`spearman` / :func:`cluster_bootstrap`      ρ with a percentile interval over resampled tasks
- :func:`partial_spearman`                          ρ after regressing the ranks on control variables
                                                    (loss at θ, target shift)
- :func:`holm`                                      Holm step-down adjusted p-values across metrics
- :func:`noise_floor`                               each metric's OOD/ID ratio on the random-split
                                                    baselines, where nothing is out of distribution
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
    with an intercept) on the ranks of the controls and the residuals correlated."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if not controls:
        return spearman(x, y)
    z = np.column_stack([np.ones(len(x))] + [_rank(np.asarray(c, float)) for c in controls])
    if len(x) < z.shape[1] + 2:
        return None
    rx, ry = _rank(x), _rank(y)
    beta_x, *_ = np.linalg.lstsq(z, rx, rcond=None)
    beta_y, *_ = np.linalg.lstsq(z, ry, rcond=None)
    return _pearson(rx - z @ beta_x, ry - z @ beta_y)


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


def _cluster_means(x: np.ndarray, y: np.ndarray, clusters: list) -> tuple[np.ndarray, np.ndarray]:
    keys = list(dict.fromkeys(clusters))
    idx = {k: [i for i, c in enumerate(clusters) if c == k] for k in keys}
    return (np.array([x[idx[k]].mean() for k in keys]), np.array([y[idx[k]].mean() for k in keys]))


def spearman_p_on_clusters(x: np.ndarray, y: np.ndarray, clusters: list) -> float | None:
    """Two-sided p of Spearman ρ on the per-cluster means (n = clusters, not audits)."""
    from scipy.stats import spearmanr

    mx, my = _cluster_means(x, y, clusters)
    if len(mx) < 3 or len(set(mx)) < 2 or len(set(my)) < 2:
        return None
    p = spearmanr(mx, my).pvalue
    return float(p) if math.isfinite(p) else None


def _finite_rows(rows: list[dict], keys: Sequence[str]) -> list[dict]:
    return [r for r in rows if all(r.get(k) is not None and math.isfinite(float(r[k])) for k in keys)]


def metric_statistics(rows: list[dict], key: str, *, cluster_key: str = "task", n_boot: int = 2000,
                      level: float = 0.95, seed: int = 0, controls: dict[str, str] | None = None) -> dict:
    """ρ of ``key`` with the error ratio, its cluster-bootstrap interval, the p on task means, and the
    partial ρ controlling for each control (and for all of them together), each with an interval."""
    controls = CONTROLS if controls is None else controls
    use = _finite_rows(rows, (ERROR_KEY, key))
    x = np.array([float(r[key]) for r in use])
    y = np.array([float(r[ERROR_KEY]) for r in use])
    clusters = [r[cluster_key] for r in use]
    out = {"n_audits": len(use), "n_tasks": len(set(clusters))}
    boot = cluster_bootstrap(lambda i: spearman(x[i], y[i]), len(use), clusters, n_boot, level, seed)
    out |= {"rho": boot["value"], "low": boot["low"], "high": boot["high"],
            "p": spearman_p_on_clusters(x, y, clusters) if len(use) else None}
    partial = {}
    for name, ckey in {**controls, **({"all": None} if len(controls) > 1 else {})}.items():
        ckeys = list(controls.values()) if ckey is None else [ckey]
        if key in ckeys:
            continue
        sub = _finite_rows(use, ckeys)
        if len(sub) < 5:
            partial[name] = {"rho": None, "low": None, "high": None, "n_audits": len(sub)}
            continue
        xs = np.array([float(r[key]) for r in sub])
        ys = np.array([float(r[ERROR_KEY]) for r in sub])
        cs = [np.array([float(r[c]) for r in sub]) for c in ckeys]
        b = cluster_bootstrap(lambda i, xs=xs, ys=ys, cs=cs: partial_spearman(xs[i], ys[i], [c[i] for c in cs]),
                              len(sub), [r[cluster_key] for r in sub], n_boot, level, seed + 1)
        partial[name] = {"rho": b["value"], "low": b["low"], "high": b["high"], "n_audits": len(sub)}
    out["partial"] = partial
    return out


def noise_floor(rows: list[dict], keys: Sequence[str], family_key: str = "family") -> dict:
    """Each metric's OOD/ID ratio on the random-split baselines (nothing out of distribution, so an honest
    metric sits at 1): how many, the median, the 2.5-97.5 % range and the share above 1."""
    base = [r for r in rows if r.get(family_key) == "random"]
    out = {}
    for key in (ERROR_KEY, *keys):
        v = np.array([float(r[key]) for r in _finite_rows(base, (key,))])
        if not len(v):
            out[key] = {"n": 0, "median": None, "low": None, "high": None, "share_above_1": None}
            continue
        lo, hi = np.quantile(v, [0.025, 0.975])
        out[key] = {"n": int(len(v)), "median": float(np.median(v)), "low": float(lo), "high": float(hi),
                    "share_above_1": float(np.mean(v > 1.0))}
    return out


def versus_baseline(rows: list[dict], metric: str, baseline: str, signs: dict[str, float], *,
                    cluster_key: str = "task", n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """Difference ``sign·ρ(metric) − sign·ρ(baseline)`` on the audits with both, with a cluster-bootstrap
    interval from the same resamples for both (positive: the metric tracks the error better)."""
    use = _finite_rows(rows, (ERROR_KEY, metric, baseline))
    x = np.array([float(r[metric]) for r in use])
    b = np.array([float(r[baseline]) for r in use])
    y = np.array([float(r[ERROR_KEY]) for r in use])
    sm, sb = signs.get(metric, 1.0), signs.get(baseline, 1.0)

    def diff(i):
        rm, rb = spearman(x[i], y[i]), spearman(b[i], y[i])
        return None if rm is None or rb is None else sm * rm - sb * rb

    boot = cluster_bootstrap(diff, len(use), [r[cluster_key] for r in use], n_boot, level, seed + 2)
    return {"diff": boot["value"], "low": boot["low"], "high": boot["high"], "n_audits": len(use),
            "n_tasks": len({r[cluster_key] for r in use})}


def study_statistics(rows: list[dict], metrics: Sequence[str], *, kinds: dict[str, str], signs: dict[str, float],
                     n_boot: int = 2000, level: float = 0.95, seed: int = 0, min_tasks: int = 3) -> dict:
    """Overall and per-family statistics of every metric, Holm across metrics, the noise floor and each
    landscape metric against the best distance baseline (chosen by its overall signed ρ)."""

    def block(sub: list[dict]) -> dict:
        got = {k: metric_statistics(sub, k, n_boot=n_boot, level=level, seed=seed) for k in metrics}
        adjusted = holm({k: v["p"] for k, v in got.items()})
        for k, v in got.items():
            v["p_holm"] = adjusted[k]
            v["expected_sign"] = signs.get(k, 1.0)
            v["kind"] = kinds.get(k, "")
        return got

    overall = block(rows)
    families = sorted({r.get("family") or "?" for r in rows})
    per_family = {}
    for fam in families:
        sub = [r for r in rows if (r.get("family") or "?") == fam]
        if fam == "random" or len({r["task"] for r in sub}) < min_tasks:
            per_family[fam] = {"n_tasks": len({r["task"] for r in sub}), "metrics": None}
            continue
        per_family[fam] = {"n_tasks": len({r["task"] for r in sub}), "metrics": block(sub)}
    baselines = [(signs.get(k, 1.0) * overall[k]["rho"], k) for k in metrics
                 if kinds.get(k) == "distance baseline" and overall[k]["rho"] is not None]
    versus = {"baseline": None, "metrics": {}}
    if baselines:
        _, best = max(baselines)
        versus["baseline"] = best
        for k in metrics:
            if kinds.get(k) == "landscape":
                versus["metrics"][k] = versus_baseline(rows, k, best, signs, n_boot=n_boot, level=level, seed=seed)
    return {"overall": overall, "per_family": per_family, "noise_floor": noise_floor(rows, metrics),
            "vs_best_baseline": versus,
            "settings": {"n_boot": n_boot, "level": level, "seed": seed, "cluster": "task",
                         "p_values": "Spearman on per-task means (n = tasks), Holm-adjusted across metrics",
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
    ax.set_xlabel("Spearman ρ with the OOD/ID error ratio (95 % cluster bootstrap over tasks)")
    handles = [ax.plot([], [], "o-", color=c, label=n)[0] for n, c in colours.items()]
    ax.legend(handles=handles, fontsize=7, loc="lower right", frameon=False)
    return fig


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
            ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(labels.get(key, key), fontsize=7)
        ax.set_ylabel("OOD/ID MAE", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    handles = [axes.flat[0].plot([], [], "o", color=palette[f], label=f)[0] for f in families]
    fig.legend(handles=handles, fontsize=7, ncols=min(len(families), 7), loc="outside upper center", frameon=False)
    return fig
