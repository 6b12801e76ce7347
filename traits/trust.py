"""The trust score: a calibrated probability that a model's OOD error is at least twice its ID error,
from label-free OOD/ID ratios only, and the evidence it rests on.

A score is a plain JSON mapping made by a study (:func:`traits.study.v2_score.trust_score`): one or more
logistic models, each with its features (keys of ``AuditResult.ratios``), the standardisation it was fitted
with, its coefficients and intercept, and bootstrap refits over the study's held-out rules. For one audit,

    P(OOD/ID MAE ≥ 2) = σ(b + Σ_j w_j (x_j − μ_j) / s_j),   x_j = ln(ratio_j)  (a difference as is),

and the interval is the 2.5-97.5 % range of the same probability under the refits (a bootstrap over held-out
rules: how much the fitted score itself moves when other chemistries are drawn; it is not a sampling interval of
this audit's own ratios). The first model whose features the audit has all of is used; a missing feature is
never imputed for a single audit.

The adopted score (:data:`TRUST_FILE`, shipped in the wheel) is what audits read; ``traits study trust-score``
makes one from a study's results and ``--adopt`` installs it.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

#: The adopted score (``traits study trust-score --adopt`` writes it; shipped in the wheel).
TRUST_FILE = Path(__file__).resolve().parent / "study" / "trust-score.json"
#: Features used as they are (a difference, OOD minus ID); every other feature enters as its natural log.
AS_IS = frozenset({"embedding_density_gap"})
INTERVAL_KIND = "bootstrap over held-out rules (refits)"


def finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def transform(key: str, value) -> float | None:
    """The feature value of a signal: its natural log (B3 as is); None when undefined."""
    if not finite(value):
        return None
    v = float(value)
    if key in AS_IS:
        return v
    return math.log(v) if v > 0 else None


def _standardised(x: np.ndarray, means, sds) -> np.ndarray:
    z = (x - np.asarray(means, float)) / np.asarray(sds, float)
    return np.where(np.isfinite(z), z, 0.0)


def predict_proba(model: dict, x: np.ndarray) -> np.ndarray:
    """P(Y = 1) for the rows of ``x`` (undefined values at the training mean)."""
    from scipy.special import expit

    z = _standardised(np.atleast_2d(x), model["means"], model["sds"])
    return expit(z @ np.asarray(model["coef"], float) + float(model["intercept"]))


def predict_risk(score: dict, ratios: dict, level: float = 0.95) -> dict:
    """P(OOD/ID MAE ratio ≥ 2) for one audit from its OOD/ID ratios (``result["ratios"]``, plus
    ``ensemble_disagreement`` where there are three seeds), with a percentile interval over the score's
    bootstrap refits. The first of the score's models whose features are all defined is used; when none is,
    probability, low and high are None. ``features_missing`` names the first (full) model's undefined ones."""
    models = list(score.get("models") or [])
    ratios = ratios or {}
    missing = [f for f in (models[0]["features"] if models else []) if transform(f, ratios.get(f)) is None]
    base = {"interval_kind": INTERVAL_KIND, "features_missing": missing, "candidate": score.get("candidate")}
    for m in models:
        vals = [transform(f, ratios.get(f)) for f in m["features"]]
        if any(v is None for v in vals):
            continue
        x = np.array(vals, float)[None, :]
        p = float(predict_proba(m, x)[0])
        boot = [float(predict_proba(r, x)[0]) for r in m.get("refits") or []]
        low = high = None
        if len(boot) >= 2:
            low, high = (float(v) for v in np.quantile(boot, [(1 - level) / 2, (1 + level) / 2]))
        note = "" if m is models[0] else f"model {m['name']} (without {', '.join(missing)})"
        return base | {"probability": p, "low": low, "high": high, "model": m["name"], "n_refits": len(boot),
                       "note": note}
    why = ("the score has no model" if not models else
           "the score cannot be applied: undefined " + ", ".join(missing or ["features"]))
    return base | {"probability": None, "low": None, "high": None, "model": None, "n_refits": 0, "note": why}


@lru_cache(maxsize=1)
def adopted_score() -> dict | None:
    """The adopted score (:data:`TRUST_FILE`), or None when none is shipped or it cannot be read."""
    try:
        score = json.loads(TRUST_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return score if isinstance(score, dict) and score.get("models") else None


def score_model(score: dict, name: str | None = None) -> dict:
    """The score's model called ``name`` (default, or no such model: its first, the shipped candidate)."""
    models = score.get("models") or [{}]
    return next((m for m in models if name is not None and m.get("name") == name), models[0])


def evidence_text(score: dict, model: str | None = None) -> str:
    """What a risk made with the score's ``model`` (default: the shipped candidate) rests on, in one line: study,
    model, audits, rules and its leave-one-rule-out AUROC. A model carrying its own evidence (the M0 fallback)
    gives that, not the shipped candidate's."""
    ev = score.get("evidence") or {}
    m = score_model(score, model)
    own = m.get("evidence") or {}
    loro = own.get("loro_auroc") or ev.get("loro_auroc") or {}
    auc = loro.get("auroc")
    lo, hi = loro.get("low"), loro.get("high")
    bounds = f" [{lo:.2f}, {hi:.2f}]" if finite(lo) and finite(hi) else ""
    auc_text = f", leave-one-rule-out AUROC {auc:.2f}{bounds}" if finite(auc) else ""
    name = f"{m['name']}, {own['role']}" if own.get("role") else score.get("candidate", "?")
    return (f"{score.get('study_version', 'unknown study')}, {name} ({', '.join(m.get('features', []))}), "
            f"{ev.get('n_audits', '?')} audits over {ev.get('n_rules', '?')} held-out rules{auc_text}")


def audit_risk(ratios: dict, score: dict | None = None) -> dict | None:
    """The fields of :class:`traits.results.TrustRisk` for an audit's ratios under ``score`` (default: the
    adopted one); None when no score is adopted."""
    score = score if score is not None else adopted_score()
    if score is None:
        return None
    r = predict_risk(score, ratios)
    return {"probability": r["probability"], "low": r["low"], "high": r["high"],
            "interval_kind": r["interval_kind"], "model": r["model"], "candidate": r["candidate"],
            "study_version": str(score.get("study_version", "")), "evidence": evidence_text(score, r["model"]),
            "ships_as_default": bool(score.get("ships_as_default")), "features_missing": list(r["features_missing"]),
            "note": r["note"]}
