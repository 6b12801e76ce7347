"""Study v2's evidence for the default gates of label-free audits, as registered (docs/study/v2/PREREGISTRATION.md,
"Default gates adopted from v2": the v1 rule with the control changed to B1, plus gate stability across seeds).

A label-free audit (``data.target: model``) gates the same catalogue metrics as a labelled one, measured on the
model's own predictions. Each gated metric is a registered signal of the study's first pass, on the same
structures:

- ``lambda_ratio`` is L1 and ``trace_ratio`` L2: at θ the label-free loss L(θ') = (1/N) Σ (f(x; θ') − f(x; θ))²
  has zero residuals, so its Hessian is exactly the Gauss-Newton matrix (2/N) JᵀJ whose λ_max and trace the
  first pass measured;
- ``embedding_knn_ratio`` is B1, the control: its partial ρ given itself is not defined, so the rule never makes
  it a default fail (its risk is what the trust score reports);
- the ungated signals (L3-L6, B2, B3) get evidence under their own catalogue names, for the report's text;
- the robust-radius ratio (gated) is no registered signal: it gets no label-free evidence and keeps warning.

Per metric (:func:`label_free_evidence`), over every MP audit of the first pass (omission and random splits, per
task means, as study 1's evidence: :func:`traits.study.stats.metric_statistics`): ρ with the MAE ratio and its
cluster-bootstrap interval, the one-sided cluster-permutation p, Holm-adjusted across the signals other than the
control, the partial ρ given B1 with its interval, the random-split noise floor
(:func:`traits.study.stats.noise_floor`), and for a gated metric the omission tasks whose gate (the value beyond
its default threshold) fires on 1, 2 and 3 seeds (:func:`traits.study.stats.seed_firing`). The file is evidence
only at the registered settings (2,000 resamples) and when every task has its three seeds; otherwise it says it
is a pipeline check or interim, and :func:`traits.catalogue.fails_by_default_from_evidence` ignores it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from traits import catalogue as cat
from traits.study.stats import SEEDS_PER_TASK, holm, metric_statistics, noise_floor, seed_firing
from traits.study.v2_score import SIGNALS

#: A label-free audit's catalogue metric → the registered signal id it is (module docstring).
METRIC_SIGNAL = {"lambda_ratio": "L1", "trace_ratio": "L2", "embedding_knn_ratio": "B1",
                 **{key: sid for sid, key in SIGNALS.items() if sid != "B4"}}
CONTROL = "B1"
CONTROL_TEXT = "the embedding kNN distance"
#: The resamples the registration fixes; fewer make a pipeline check.
REGISTERED_BOOT = 2000
RULE = ("fails by default only if the rho interval (expected direction) lies above 0, p_holm < 0.05, the partial "
        "rho given the embedding kNN distance (B1) has its interval above 0 too, the gate threshold lies beyond "
        "the noise floor, and the gate fires on all three seeds of at least one task")


def _complete(rows: Sequence[dict]) -> bool:
    """Every task has its three seeds."""
    seeds: dict[str, set] = {}
    for r in rows:
        seeds.setdefault(str(r["task"]), set()).add(r.get("seed"))
    return bool(seeds) and all(len(s) >= SEEDS_PER_TASK for s in seeds.values())


def label_free_evidence(rows: Sequence[dict], *, n_boot: int = REGISTERED_BOOT, seed: int = 0, level: float = 0.95,
                        study_version: str, data_set: str) -> dict:
    """The label-free catalogue evidence (the shape :func:`traits.catalogue.read_evidence_file` reads, ``mode``
    "label-free") from study v2's MP rows (:func:`traits.study.v2.rows_from_results`)."""
    rows = list(rows)
    known = {m.name: m for m in cat.catalogue()}
    b1 = SIGNALS[CONTROL]
    per_signal: dict[str, dict] = {}
    for sid in sorted(set(METRIC_SIGNAL.values())):
        key = SIGNALS[sid]
        controls = {} if sid == CONTROL else {CONTROL: b1}
        per_signal[sid] = metric_statistics(rows, key, sign=1.0, n_boot=n_boot, level=level, seed=seed,
                                            controls=controls)
    adjusted = holm({sid: v.get("p") for sid, v in per_signal.items() if sid != CONTROL})
    neutral = {SIGNALS[sid]: (0.0 if known.get(SIGNALS[sid]) and known[SIGNALS[sid]].unit == "difference" else 1.0)
               for sid in per_signal}
    floors = noise_floor(rows, [SIGNALS[sid] for sid in per_signal], neutral=neutral)
    metrics = {}
    for name, sid in METRIC_SIGNAL.items():
        m, st, key = known.get(name), per_signal[sid], SIGNALS[sid]
        if m is None:
            continue
        floor = floors.get(key) or {}
        part = (st.get("partial") or {}).get(CONTROL) or {}
        entry = {"signal": sid, "signal_key": key, "rho": st["rho"], "low": st["low"], "high": st["high"],
                 "p_holm": adjusted.get(sid), "n_tasks": st["n_tasks"], "n_audits": st["n_audits"],
                 "n_clusters": st.get("n_clusters"),
                 "noise_floor": floor.get("high" if m.direction > 0 else "low") if floor.get("enough") else None,
                 "control": CONTROL_TEXT, "partial_control": {q: part.get(q) for q in ("rho", "low", "high")}}
        if m.gate_field and m.threshold is not None:
            entry["seed_firing"] = seed_firing(rows, key, threshold=float(m.threshold), direction=m.direction)
        metrics[name] = entry
    return {"study_version": study_version, "data_set": data_set, "mode": "label-free",
            "pipeline_check": n_boot < REGISTERED_BOOT, "in_progress": not _complete(rows),
            "generated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rule": RULE,
            "settings": {"n_boot": n_boot, "seed": seed, "level": level,
                         "sample": "every MP audit of the first pass (omission and random splits), seeds averaged "
                                   "per task; clusters = held-out rules"},
            "metrics": metrics}


def default_fails(evidence: dict) -> list[str]:
    """The gated metrics the rule would fail label-free audits on by default with this evidence (what adopting it
    changes), read through the catalogue's one reading of the rule (:func:`traits.catalogue.default_decisions`)."""
    decided = cat.default_decisions(cat.evidence_from_raw(evidence), mode="label-free")
    return [name for name, why in decided.items() if not why]
