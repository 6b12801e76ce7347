"""Study v2's trust score (docs/study/v2/PREREGISTRATION.md, "The trust score"): a logistic regression of
Y = [OOD/ID MAE ratio ≥ 2] on the natural logs of the label-free ratios (B3, a difference, as is), standardised
within the training fold, L2 penalty; candidates M0 (B1), M1 (B1 + L2 + B3), M2 (L1–L6 + B1–B4); C from
{0.01, 0.1, 1, 10} by inner leave-one-rule-out (LORO); nested LORO; the shipped score and :func:`predict_risk`.

Choices where the registration is silent (each also in :mod:`traits.study.v2`'s docstring):

- The fit is L2-penalised maximum likelihood with an unpenalised intercept, minimising
  Σ log-loss + ‖w‖² / (2C): scikit-learn's ``LogisticRegression(C=C)`` objective, solved here by damped Newton
  steps (tests check the two agree), because the nested LORO fits it some ten thousand times.
- A feature value that is missing, not finite, or (for a logged feature) not positive is *undefined*. In
  fitting and in the out-of-fold predictions it is imputed with the training fold's mean (0 after
  standardisation); a single audit scored by :func:`predict_risk` is never imputed: it gets no probability
  and the missing features are named (apart from B4, below).
- The inner LORO AUROC is that of the pooled inner out-of-fold predictions. Per candidate the C with the
  highest inner AUROC is taken (ties: the smaller C, the stronger penalty); then the simplest candidate within
  0.01 of the best (M0 < M1 < M2). When no inner AUROC is defined, M0 with C = 1.
- A training set with one class only predicts that class's smoothed rate, (k + ½) / (n + 1).
- B4 (ensemble disagreement) exists only for tasks with three seeds: when the shipped candidate uses it, a
  second model without B4 is fitted on the same audits with the same C and ships beside it;
  :func:`predict_risk` uses the first model whose features an audit has all of.
- When a candidate other than M0 ships, M0 refitted on every audit (its C from the same selection) ships last,
  with its own evidence (M0's out-of-fold nested-LORO AUROC): the risk where the shipped candidate's signals are
  not measured (``traits screen``; an audit without the label-free probes), reported with M0's evidence, not the
  shipped candidate's. Decided on 2026-12-07 before any v2 statistic was computed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from traits.study.v2_stats import auroc, auroc_interval, calibration, delta_auroc
from traits.trust import (  # noqa: F401  (predict_risk, AS_IS: re-exported for traits.study.v2)
    AS_IS,
    INTERVAL_KIND,
    _standardised,
    predict_proba,
    predict_risk,
    transform,
)

#: The registered signals, by id: the key each has in ``result["ratios"]`` and in a v2 row.
SIGNALS = {"L1": "gn_lambda_ratio", "L2": "gn_trace_ratio", "L3": "grad_norm_ratio", "L4": "lf_sharpness_ratio",
           "L5": "lf_smad_ratio", "L6": "lf_persistence_ratio", "B1": "embedding_knn_ratio",
           "B2": "composition_knn_ratio", "B3": "embedding_density_gap", "B4": "ensemble_disagreement"}
B4_KEY = SIGNALS["B4"]
CANDIDATES = {"M0": ("B1",), "M1": ("B1", "L2", "B3"),
              "M2": ("L1", "L2", "L3", "L4", "L5", "L6", "B1", "B2", "B3", "B4")}
PENALTIES = (0.01, 0.1, 1.0, 10.0)
TIE = 0.01
GOAL_AUROC = 0.9
STUDY_VERSION = "study-2"


def design(rows: Sequence[dict], features: Sequence[str]) -> np.ndarray:
    """The (audits × features) matrix of transformed values, NaN where undefined."""
    out = np.full((len(rows), len(features)), np.nan)
    for i, r in enumerate(rows):
        for j, f in enumerate(features):
            v = transform(f, r.get(f))
            if v is not None:
                out[i, j] = v
    return out


def _objective(a: np.ndarray, y: np.ndarray, pen: np.ndarray, w: np.ndarray) -> float:
    z = a @ w
    return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(pen * w * w))


def fit_logistic(x: np.ndarray, y: np.ndarray, C: float, max_iter: int = 100) -> tuple[np.ndarray, float]:
    """L2-penalised logistic regression, unpenalised intercept: argmin Σ log-loss + ‖w‖²/(2C), by Newton steps
    halved until the objective does not rise. Returns (coefficients, intercept)."""
    from scipy.special import expit

    n, d = x.shape
    a = np.column_stack([x, np.ones(n)])
    pen = np.r_[np.full(d, 1.0 / C), 0.0]
    w = np.zeros(d + 1)
    f = _objective(a, y, pen, w)
    for _ in range(max_iter):
        p = expit(a @ w)
        g = a.T @ (p - y) + pen * w
        h = (a * (p * (1 - p))[:, None]).T @ a + np.diag(pen + 1e-9)
        step = np.linalg.solve(h, g)
        t = 1.0
        while True:
            w_new = w - t * step
            f_new = _objective(a, y, pen, w_new)
            if f_new <= f + 1e-12 or t < 1e-6:
                break
            t /= 2
        done = float(np.max(np.abs(w_new - w))) < 1e-9
        w, f = w_new, f_new
        if done:
            break
    return w[:d], float(w[d])


def fit_model(x: np.ndarray, y: np.ndarray, C: float) -> dict:
    """Standardise on these rows (undefined values imputed with the mean, i.e. 0 after standardising), fit,
    and return the model as plain numbers: means, sds, coef, intercept, C."""
    d = x.shape[1]
    with np.errstate(all="ignore"):
        means = np.array([np.nanmean(c) if np.isfinite(c).any() else 0.0 for c in x.T]) if d else np.zeros(0)
        sds = np.array([np.nanstd(c) if np.isfinite(c).sum() > 1 else 1.0 for c in x.T]) if d else np.zeros(0)
    sds = np.where(np.isfinite(sds) & (sds > 1e-12), sds, 1.0)
    k, n = float(np.sum(y)), len(y)
    if k in (0.0, float(n)):
        coef, intercept = np.zeros(d), math.log((k + 0.5) / (n - k + 0.5))
    else:
        coef, intercept = fit_logistic(_standardised(x, means, sds), y, C)
    return {"means": [float(v) for v in means], "sds": [float(v) for v in sds], "coef": [float(v) for v in coef],
            "intercept": float(intercept), "C": float(C)}


def loro_oof(x: np.ndarray, y: np.ndarray, groups: np.ndarray, C: float) -> np.ndarray:
    """Leave-one-rule-out predictions: each rule's audits predicted by the model fitted on the other rules."""
    out = np.empty(len(y))
    for g in dict.fromkeys(groups.tolist()):
        test = groups == g
        out[test] = predict_proba(fit_model(x[~test], y[~test], C), x[test])
    return out


def _best_c(table: dict) -> float:
    got = [(c, a) for c, a in table.items() if a is not None]
    if not got:
        return 1.0
    top = max(a for _, a in got)
    return min(c for c, a in got if a >= top - 1e-12)


def choose(x_by: dict[str, np.ndarray], y: np.ndarray, groups: np.ndarray, penalties: Sequence[float] = PENALTIES,
           tie: float = TIE) -> dict:
    """The candidate and C chosen by LORO over ``groups``: per candidate (in order of simplicity) the C with the
    best pooled LORO AUROC, then the simplest candidate within ``tie`` of the best."""
    table = {c: {C: auroc(loro_oof(x, y, groups, C), y) for C in penalties} for c, x in x_by.items()}
    best_c = {c: _best_c(t) for c, t in table.items()}
    score = {c: table[c][best_c[c]] for c in table}
    defined = [a for a in score.values() if a is not None]
    order = list(x_by)
    if not defined:
        return {"candidate": order[0], "C": 1.0, "best_C": best_c, "auroc": score, "table": table}
    top = max(defined)
    pick = next(c for c in order if score[c] is not None and score[c] >= top - tie)
    return {"candidate": pick, "C": best_c[pick], "best_C": best_c, "auroc": score, "table": table}


def nested_loro(x_by: dict[str, np.ndarray], y: np.ndarray, groups: np.ndarray,
                penalties: Sequence[float] = PENALTIES, tie: float = TIE) -> dict:
    """Outer LORO: each rule held out in turn; on the others :func:`choose` picks the candidate and C (inner LORO);
    the chosen model refitted on them predicts the held-out rule. Also each candidate's own nested predictions
    (its C chosen by the same inner LORO), for the paired Δ against M0."""
    oof = np.empty(len(y))
    by_cand = {c: np.empty(len(y)) for c in x_by}
    folds = []
    for g in dict.fromkeys(groups.tolist()):
        test = groups == g
        train = ~test
        sel = choose({c: x[train] for c, x in x_by.items()}, y[train], groups[train], penalties, tie)
        for c, x in x_by.items():
            by_cand[c][test] = predict_proba(fit_model(x[train], y[train], sel["best_C"][c]), x[test])
        oof[test] = by_cand[sel["candidate"]][test]
        folds.append({"rule": g, "n_audits": int(test.sum()), "candidate": sel["candidate"], "C": sel["C"],
                      "inner_auroc": sel["auroc"]})
    return {"oof": oof, "oof_by_candidate": by_cand, "folds": folds}


def bootstrap_refits(x: np.ndarray, y: np.ndarray, groups: np.ndarray, C: float, n_refits: int = 200,
                     seed: int = 0) -> list[dict]:
    """Refits on resampled rules (whole rules drawn with replacement); resamples with one class are skipped."""
    members = [np.flatnonzero(groups == g) for g in dict.fromkeys(groups.tolist())]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_refits):
        idx = np.concatenate([members[j] for j in rng.integers(0, len(members), len(members))])
        if y[idx].min() == y[idx].max():
            continue
        m = fit_model(x[idx], y[idx], C)
        out.append({k: m[k] for k in ("means", "sds", "coef", "intercept")})
    return out


def shipped_model(name: str, rows: Sequence[dict], features: Sequence[str], y: np.ndarray, groups: np.ndarray,
                  C: float, n_refits: int, seed: int) -> dict:
    """One model of the shipped score, refitted on every audit, with its bootstrap refits."""
    x = design(rows, features)
    return {"name": name, "features": list(features),
            "transforms": {f: ("as is" if f in AS_IS else "natural log") for f in features},
            **fit_model(x, y, C), "n_audits": int(len(y)), "n_rules": len(set(groups.tolist())),
            "refits": bootstrap_refits(x, y, groups, C, n_refits, seed)}


def candidate_features(available: Sequence[str]) -> dict[str, list[str]]:
    """Each candidate's feature keys, keeping only the ``available`` signal ids (those defined on ≤ 10 % undefined)."""
    return {c: [SIGNALS[s] for s in ids if s in available] for c, ids in CANDIDATES.items()}


def _ship(rows: Sequence[dict], feats: dict[str, list[str]], y: np.ndarray, groups: np.ndarray, full: dict,
          default: bool, n_refits: int, seed: int, m0_loro: dict) -> tuple[str, list[dict]]:
    """The candidate that ships (the one LORO chose on every audit if it beat M0, else M0) and its models: the
    full one, without B4 too when it uses B4, and M0 last when another candidate ships.

    M0 last is the fallback where the shipped candidate's signals are not measured (``traits screen`` measures
    only the embedding distance; a labelled audit may run without the label-free probes): it carries its own
    evidence, M0's out-of-fold LORO AUROC (``m0_loro``), which a risk made with it reports instead of the shipped
    candidate's."""
    name = full["candidate"] if default else "M0"
    C = full["best_C"][name]
    models = [shipped_model(name, rows, feats[name], y, groups, C, n_refits, seed)]
    if B4_KEY in feats[name] and len(feats[name]) > 1:
        rest = [f for f in feats[name] if f != B4_KEY]
        models.append(shipped_model(f"{name} without B4", rows, rest, y, groups, C, n_refits, seed))
    if name != "M0":
        m0 = shipped_model("M0", rows, feats["M0"], y, groups, full["best_C"]["M0"], n_refits, seed)
        models.append(m0 | {"evidence": {"role": f"fallback where {name}'s signals are not measured",
                                         "loro_auroc": m0_loro}})
    return name, models


def trust_score(rows: Sequence[dict], available: Sequence[str], *, penalties: Sequence[float] = PENALTIES,
                n_boot: int = 2000, n_refits: int = 200, seed: int = 0, level: float = 0.95,
                study_version: str = STUDY_VERSION) -> dict:
    """The registered trust-score analysis on the omission audits ``rows`` (each with ``y`` and ``rule``):
    nested LORO, its out-of-fold AUROC and Δ over M0's own out-of-fold predictions (paired cluster bootstrap),
    the calibration of the out-of-fold probabilities, and the shipped score (``score``, for
    :func:`predict_risk`). ``available``: the signal ids allowed in (≤ 10 % undefined)."""
    y = np.array([float(r["y"]) for r in rows])
    groups = np.array([str(r["rule"]) for r in rows], dtype=object)
    feats = {c: f for c, f in candidate_features(available).items() if f}
    if "M0" not in feats:
        return {"status": "not run: B1 (the comparator, M0) is undefined on more than 10 % of the audits",
                "score": None}
    x_by = {c: design(rows, f) for c, f in feats.items()}
    nested = nested_loro(x_by, y, groups, penalties)
    loro = auroc_interval(nested["oof"], y, groups, n_boot=n_boot, level=level, seed=seed)
    delta = delta_auroc(nested["oof"], nested["oof_by_candidate"]["M0"], y, groups, n_boot=n_boot, n_perm=0,
                        level=level, seed=seed)
    full = choose(x_by, y, groups, penalties)
    default = delta["low"] is not None and delta["low"] > 0
    per_candidate = {c: auroc_interval(p, y, groups, n_boot=n_boot, level=level, seed=seed)
                     for c, p in nested["oof_by_candidate"].items()}
    name, models = _ship(rows, feats, y, groups, full, default, n_refits, seed, per_candidate["M0"])
    goal = bool(default and loro["auroc"] is not None and loro["auroc"] >= GOAL_AUROC)
    # the evidence of what ships: the selection's out-of-fold AUROC when its candidate ships, M0's own nested
    # out-of-fold AUROC when M0 ships in its place (the selection's, which may have chosen M1 or M2, is not M0's)
    evidence = {"study_version": study_version, "n_audits": int(len(y)), "n_rules": len(set(groups.tolist())),
                "n_positive": int(y.sum()), "loro_auroc": loro if default else per_candidate["M0"],
                "loro_auroc_of": (f"the nested-LORO selection ({name} on all audits)" if default else
                                  "M0's own nested-LORO out-of-fold predictions"),
                "selection_loro_auroc": loro, "delta_auroc_over_M0": delta,
                "goal": f"LORO AUROC ≥ {GOAL_AUROC} with a Δ AUROC over B1 whose interval lies above 0",
                "goal_reached": goal}
    statement = (f"{name} ships as the default score: the lower end of its Δ AUROC over M0 (B1 alone) is above 0."
                 if default else "M0 (B1, the embedding kNN ratio, alone) ships as the score: the lower end of the "
                 "nested-LORO Δ AUROC over M0 is not above 0, so the other signals did not beat the embedding "
                 "distance alone.")
    score = {"kind": "TRAITS trust score", "study_version": study_version, "outcome": "P(OOD/ID MAE ratio ≥ 2.0)",
             "candidate": name, "selected_candidate": full["candidate"], "ships_as_default": default,
             "statement": statement, "interval_kind": INTERVAL_KIND, "models": models, "evidence": evidence}
    return {"status": "run", "features": feats, "penalties": list(penalties), "tie": TIE,
            "folds": nested["folds"], "loro_auroc": loro, "delta_auroc_over_M0": delta,
            "per_candidate_loro_auroc": per_candidate, "calibration": calibration(nested["oof"], y),
            "selection_on_all": {k: full[k] for k in ("candidate", "C", "best_C", "auroc")},
            "oof": [float(v) for v in nested["oof"]], "score": score, "evidence": evidence}
