"""Study v2's per-audit statistics: AUROC of a signal for the outcome Y (OOD/ID MAE ratio ≥ 2), its cluster
bootstrap over held-out rules, the paired Δ AUROC against the comparator with a cluster-permutation p, and the
calibration of predicted probabilities (docs/study/v2/PREREGISTRATION.md, "Primary analysis" and "The trust
score"). The resampling itself is study-1's :func:`traits.study.stats.cluster_bootstrap` (whole rules drawn with
replacement, each bringing all its audits).

- :func:`auroc`                 Mann-Whitney AUROC, larger score = positive; ties count one half
- :func:`auroc_interval`        AUROC with its cluster-bootstrap percentile interval
- :func:`delta_auroc`           AUROC(signal) − AUROC(reference) on the same rows and the same resamples, with
                                the one-sided cluster swap-permutation p for Δ > 0
- :func:`calibration`           reliability (equal-count bins), Brier score, calibration slope
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from traits.study.stats import _rank, cluster_bootstrap, paired_cluster_difference


def finite(value) -> bool:
    """A usable number: not None, not a bool, finite."""
    if value is None or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def auroc(scores: Sequence[float], labels: Sequence) -> float | None:
    """Area under the ROC curve of ``scores`` for ``labels`` (1/True = positive; larger score = positive),
    from the Mann-Whitney U of the average ranks, so tied scores count one half. None without both classes."""
    s = np.asarray(scores, float)
    y = np.asarray(labels, float) > 0.5
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return None
    r = _rank(s)
    return float((r[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def _groups(clusters: Sequence) -> np.ndarray:
    """Cluster labels as integer codes 0..k-1 (first-seen order)."""
    codes: dict = {}
    return np.array([codes.setdefault(c, len(codes)) for c in clusters], int)


def auroc_interval(scores: Sequence[float], labels: Sequence, clusters: Sequence, *, n_boot: int = 2000,
                   level: float = 0.95, seed: int = 0) -> dict:
    """AUROC with its percentile interval over resampled clusters (whole clusters drawn with replacement;
    resamples with one class only are dropped and ``n_boot`` says how many were kept)."""
    x, y = np.asarray(scores, float), np.asarray(labels, float)
    boot = cluster_bootstrap(lambda i: auroc(x[i], y[i]), len(x), list(clusters), n_boot, level, seed)
    return {"auroc": boot["value"], "low": boot["low"], "high": boot["high"], "n_audits": int(len(x)),
            "n_positive": int((y > 0.5).sum()), "n_clusters": boot["n_clusters"], "n_boot": boot["n_boot"],
            "interval": f"cluster bootstrap over held-out rules, {n_boot} resamples, seed {seed}, "
                        f"percentile {round(100 * level)} %"}


def swap_permutation_p(scores: Sequence[float], reference: Sequence[float], labels: Sequence, clusters: Sequence,
                       *, n_perm: int = 2000, seed: int = 0) -> float | None:
    """One-sided p for AUROC(scores) − AUROC(reference) > 0. Both signals are replaced by their ranks over the
    rows (AUROC is unchanged by it, and the two are then on one scale); under the null that the two are
    exchangeable predictors, each cluster's two rank vectors are swapped with probability 1/2 (whole clusters,
    so audits sharing held-out compounds move together). p = (1 + #{Δ* ≥ Δ}) / (1 + n_perm)."""
    y = np.asarray(labels, float)
    rx, rb = _rank(np.asarray(scores, float)), _rank(np.asarray(reference, float))
    ax, ab = auroc(rx, y), auroc(rb, y)
    if ax is None or ab is None:
        return None
    observed = ax - ab
    codes = _groups(clusters)
    k = int(codes.max()) + 1 if len(codes) else 0
    if k < 2:
        return None
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(n_perm):
        flip = (rng.random(k) < 0.5)[codes]
        px, pb = np.where(flip, rb, rx), np.where(flip, rx, rb)
        if auroc(px, y) - auroc(pb, y) >= observed - 1e-12:
            hits += 1
    return (1 + hits) / (1 + n_perm)


def delta_auroc(scores: Sequence[float], reference: Sequence[float], labels: Sequence, clusters: Sequence, *,
                n_boot: int = 2000, n_perm: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """Δ = AUROC(scores) − AUROC(reference) on the same rows, its percentile interval from the same cluster
    resamples for both (paired), and the one-sided swap-permutation p for Δ > 0 (:func:`swap_permutation_p`)."""
    x, b, y = (np.asarray(v, float) for v in (scores, reference, labels))
    return {**paired_cluster_difference(auroc, x, b, y, clusters, n_boot, level, seed),
            "p": swap_permutation_p(x, b, y, clusters, n_perm=n_perm, seed=seed) if len(x) and n_perm > 0 else None,
            "interval": f"paired cluster bootstrap over held-out rules (both AUROCs on each resample), {n_boot} "
                        f"resamples, seed {seed}, percentile {round(100 * level)} %",
            "p_method": f"one-sided cluster swap permutation for Δ > 0 ({n_perm} permutations, seed {seed})"
                        if n_perm > 0 else "not computed"}


def calibration_slope(p: Sequence[float], y: Sequence) -> float | None:
    """Slope of the logistic regression of y on logit(p) (1 = calibrated spread; < 1 = too extreme)."""
    from traits.study.v2_score import fit_logistic

    p = np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6)
    y = np.asarray(y, float)
    if len(p) < 3 or y.min() == y.max() or np.ptp(p) <= 0:
        return None
    coef, _ = fit_logistic(np.log(p / (1 - p))[:, None], y, C=1e8)
    return float(coef[0])


def calibration(p: Sequence[float], y: Sequence, bins: int = 5) -> dict:
    """Reliability in ``bins`` equal-count bins (sorted by probability; ties keep input order), the Brier score
    and the calibration slope."""
    p, y = np.asarray(p, float), np.asarray(y, float)
    if not len(p):
        return {"n": 0, "bins": [], "brier": None, "slope": None}
    order = np.argsort(p, kind="stable")
    table = [{"n": int(len(i)), "mean_predicted": float(p[i].mean()), "observed": float(y[i].mean()),
              "low": float(p[i].min()), "high": float(p[i].max())}
             for i in np.array_split(order, min(bins, len(p))) if len(i)]
    return {"n": int(len(p)), "bins": table, "brier": float(np.mean((p - y) ** 2)), "slope": calibration_slope(p, y),
            "method": f"{bins} equal-count bins; Brier = mean (p − y)²; slope of logit-linear refit of y on logit(p)"}
