"""The analysis of study v2, as registered in docs/study/v2/PREREGISTRATION.md (committed before any v2 result).

Question: does a signal computed without OOD labels say in advance that a model's OOD/ID MAE ratio will be at
least 2, better than the embedding kNN distance (B1)? And does SMAD (Landscaper) track OOD error?

- :func:`rows_from_results`     one row per audit (``results.json``): task, seed, target, family, kind
                                (omission or random), held-out rule (study-1's :func:`traits.campaign.held_out_rule`:
                                the tasks that hold out the same compounds form one cluster), mae_ratio, Y, every
                                signal (None where a result lacks it, e.g. in v1 files), the other ratios
- :func:`ensemble_disagreement` B4 of one task from its seeds' per-compound predictions
- :func:`analyse`               everything registered: per-signal AUROC and Δ AUROC over B1 (Holm-adjusted
                                permutation p), per-task Spearman ρ (pooled and per target) with partial ρ given
                                B1, the trust score (nested LORO; :mod:`traits.study.v2_score`), the external
                                Perov-5 test, Landscaper's claim; JSON-able, each number with its n and interval
- :func:`write_summary`         summary.json, summary.md, summary.html and summary.pdf, written atomically

How the points the registration leaves open were decided (the plainest reading; any later change is a
*deviation*, listed in ``analysis["deviations"]``):

1. Sample. The primary sample is the omission audits (every family but ``random``) whose MAE ratio is
   finite; the random splits are kept in the rows but enter no statistic. The per-task Spearman ρ uses the
   same omission tasks (the registered per-audit sample, averaged per task), pooled and within each target.
2. Undefined. A signal value is undefined when missing, None or not finite; its share is counted over the
   omission audits. A signal undefined on more than 10 % is reported (AUROC and ρ with their n) but gets no
   Δ AUROC, no p, no partial ρ and no place in the trust score. Otherwise each statistic uses the audits where
   its inputs are defined (pairs: where both are) and states its n.
3. Δ AUROC's p. One-sided, Δ > 0, by a cluster swap permutation (:func:`traits.study.v2_stats.swap_permutation_p`:
   the two signals' ranks exchanged rule by rule with probability ½), 2,000 permutations, seed 0; Holm across
   the label-free candidates L1–L6, B2–B4 that are not excluded.
4. ρ. :func:`traits.study.stats.metric_statistics` (cluster bootstrap over rules, one-sided cluster-permutation
   p, expected direction positive for every signal), partial ρ given B1; Holm across the same candidates.
5. Trust score: see :mod:`traits.study.v2_score` (imputation, C ties, B4 fallback, Newton fit). The shipped
   candidate is the one the same LORO selection picks on all omission audits; it ships only when the lower end
   of the nested Δ AUROC over M0 is above 0, else M0 ships. 200 bootstrap refits over rules, seed 0.
6. External test: the shipped score, frozen, through :func:`predict_risk` on each Perov-5 omission audit (no B4
   unless given); audits it cannot score are counted; weak evidence when fewer than 20 clusters.
7. Landscaper: labelled = ``smad_ratio`` with partial ρ given ``loss_ratio``; label-free = ``lf_smad_ratio`` (L5)
   with partial ρ given B1; "supported" needs both intervals above 0. Both are computed on the same omission
   tasks and reported whichever way they fall.
8. Default gates of label-free audits: :mod:`traits.study.v2_gates` (the v1 evidence computation over every MP
   audit, control B1, seed stability), written as ``catalogue-evidence-label-free.json``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from traits.study.stats import holm, metric_statistics
from traits.study.v2_score import SIGNALS, STUDY_VERSION, predict_risk, trust_score
from traits.study.v2_stats import auroc_interval, calibration, delta_auroc, finite

__all__ = ["SIGNALS", "analyse", "ensemble_disagreement", "merge_labelled", "predict_risk", "rows_from_results",
           "write_summary"]

MAE_GATE = 2.0
COMPARATOR = "B1"
CANDIDATE_SIGNALS = ("L1", "L2", "L3", "L4", "L5", "L6", "B2", "B3", "B4")
MAX_UNDEFINED = 0.10
#: The labelled signals of v1 repeated in v2 (reported in their own block, controlled for the loss at θ).
LABELLED = ("lambda_ratio", "trace_ratio", "loss_ratio", "smad_ratio")
LABELLED_CONTROL = "loss_ratio"
MIN_EXTERNAL_CLUSTERS = 20
REGISTRATION = "docs/study/v2/PREREGISTRATION.md"


def _num(value) -> float | None:
    return float(value) if finite(value) else None


# ----------------------------------------------------------------------------------------------
# Rows


def result_files(paths_or_dirs: Iterable) -> list[Path]:
    """Every ``results.json``: a path as given, a directory searched recursively (sorted)."""
    if isinstance(paths_or_dirs, (str, Path)):
        paths_or_dirs = [paths_or_dirs]
    out: list[Path] = []
    for p in map(Path, paths_or_dirs):
        out += sorted(p.rglob("results.json")) if p.is_dir() else [p]
    return out


def audit_row(task: str, result, b4: Mapping | None = None) -> dict:
    """One audit's row: study-1's summary row plus kind, Y, every v2 signal and every other ratio."""
    from traits.campaign import summary_row

    row = summary_row(task, result)
    row["kind"] = "random" if row.get("family") == "random" else "omission"
    for key, value in dict(result.ratios).items():
        row[key] = _num(value)
    for sid, key in SIGNALS.items():
        row[key] = _num((b4 or {}).get(task)) if sid == "B4" else _num(result.ratios.get(key))
    row["mae_ratio"] = _num(row.get("mae_ratio"))
    row["y"] = None if row["mae_ratio"] is None else int(row["mae_ratio"] >= MAE_GATE)
    return row


def rows_from_results(paths_or_dirs, b4: Mapping | None = None, *, skipped: list[str] | None = None,
                      log: Callable[[str], None] = lambda _m: None) -> list[dict]:
    """A row per ``results.json`` (paths, or directories searched for them; the task is the file's folder name,
    as study 1 names it). ``b4`` maps task -> ensemble disagreement (B4), given to each of the task's audits.
    An unreadable file is logged, skipped and named in ``skipped``."""
    from traits.errors import TraitsError
    from traits.results import load_result

    rows = []
    for path in result_files(paths_or_dirs):
        try:
            rows.append(audit_row(path.parent.name, load_result(path), b4))
        except TraitsError as exc:
            log(f"{path}: skipped ({exc})")
            if skipped is not None:
                skipped.append(str(path))
    return rows


def merge_labelled(rows: Sequence[dict], labelled: Sequence[dict], *, rtol: float = 1e-6) -> list[dict]:
    """The first pass's ``rows`` with the labelled signals (:data:`LABELLED`) of the second pass's ``labelled``
    rows (the same kept models re-probed with the labelled probes), matched on (task, seed). The two passes measure
    one model on one split, so their MAE ratios agree; a pair whose ratios differ beyond ``rtol`` is another model
    or split, or the same one measured on other crystal graphs (:mod:`traits.kernels`), and raises a TraitsError
    naming it. A row without a second-pass audit keeps what the first pass
    measured (the loss at θ; no labelled Hessian or surface)."""
    from traits.errors import TraitsError

    second = {(r["task"], r.get("seed")): r for r in labelled}
    out = []
    for r in rows:
        twin = second.get((r["task"], r.get("seed")))
        merged = dict(r)
        if twin is not None:
            a, b = r.get("mae_ratio"), twin.get("mae_ratio")
            if finite(a) and finite(b) and abs(a - b) > rtol * max(abs(a), abs(b)):
                raise TraitsError(f"{r['task']} seed {r.get('seed')}: the second pass's MAE ratio {b:.6g} is not the "
                                  f"first pass's {a:.6g}: not the same model and split, or not the same graphs "
                                  "(crystals whose neighbours tie in distance can be built otherwise on other CPU "
                                  "kernels: compare the two audits' provenance.kernels)")
            merged |= {k: twin.get(k) for k in LABELLED}
        out.append(merged)
    return out


def ensemble_disagreement(preds: Mapping, id_ids: Iterable, ood_ids: Iterable) -> float | None:
    """B4: mean over the OOD compounds of the standard deviation (ddof 0) of the seeds' predictions, over the
    same mean for the ID compounds; only compounds every seed predicted count. None with fewer than two seeds,
    no such compound on a side, or a zero ID disagreement."""
    if len(preds) < 2:
        return None

    def side(ids) -> float | None:
        sds = list(compound_disagreement(preds, ids).values())
        return float(np.mean(sds)) if sds else None

    ood, ident = side(ood_ids), side(id_ids)
    if ood is None or ident is None or ident <= 0:
        return None
    return ood / ident


def compound_disagreement(preds: Mapping, ids: Iterable) -> dict[str, float]:
    """Per compound of ``ids`` that every seed predicted: the standard deviation (ddof 0) of the seeds'
    predictions (B4's per-compound value; empty with fewer than two seeds)."""
    seeds = list(preds.values())
    if len(seeds) < 2:
        return {}
    return {c: float(np.std([float(s[c]) for s in seeds])) for c in dict.fromkeys(ids)
            if all(c in s and finite(s[c]) for s in seeds)}


def b4_from_results(paths_or_dirs) -> dict[str, float | None]:
    """B4 per task from the seeds' stored ID and OOD predictions (``accuracy.{id,ood}.ids/predictions``). Each
    seed's ID predictions are of its own ID compounds and its OOD predictions of its OOD compounds; a compound
    counts only when every seed predicted it on that side (in v1 the seeds drew different subsamples, so few do)."""
    import json

    by_task: dict[str, dict] = {}
    for path in result_files(paths_or_dirs):
        acc = json.loads(Path(path).read_text(encoding="utf-8")).get("accuracy") or {}
        side = {s: dict(zip((acc.get(s) or {}).get("ids") or [], (acc.get(s) or {}).get("predictions") or []))
                for s in ("id", "ood")}
        by_task.setdefault(path.parent.name, {})[path.parent.parent.name] = side
    out = {}
    for task, seeds in by_task.items():
        ids = {s: set.intersection(*(set(v[s]) for v in seeds.values())) for s in ("id", "ood")}
        preds = {seed: {**v["id"], **v["ood"]} for seed, v in seeds.items()}
        out[task] = ensemble_disagreement(preds, ids["id"], ids["ood"]) if len(seeds) >= 3 else None
    return out


# ----------------------------------------------------------------------------------------------
# Primary analysis


def omission_rows(rows: Sequence[dict]) -> list[dict]:
    return [r for r in rows if r.get("kind") == "omission" and r.get("y") is not None]


def definedness(rows: Sequence[dict]) -> dict:
    """Per signal id: how many omission audits have it, the share undefined, and whether it is excluded."""
    n = len(rows)
    out = {}
    for sid, key in SIGNALS.items():
        k = sum(1 for r in rows if finite(r.get(key)))
        share = (n - k) / n if n else 1.0
        out[sid] = {"key": key, "n_defined": k, "n_audits": n, "share_undefined": share,
                    "excluded": share > MAX_UNDEFINED}
    return out


def _pairs(rows: Sequence[dict], *keys: str) -> tuple[list[dict], list[np.ndarray]]:
    use = [r for r in rows if all(finite(r.get(k)) for k in keys)]
    return use, [np.array([float(r[k]) for r in use]) for k in keys]


def auroc_table(rows: Sequence[dict], defined: dict, *, n_boot: int, n_perm: int, seed: int, level: float) -> dict:
    """AUROC of every signal (larger = more risk) and, for the candidates, Δ AUROC over B1 with Holm p."""
    b1 = SIGNALS[COMPARATOR]
    out: dict = {}
    for sid, key in SIGNALS.items():
        use, (x,) = _pairs(rows, key)
        y, rules = [r["y"] for r in use], [r["rule"] for r in use]
        out[sid] = {"key": key, "excluded": defined[sid]["excluded"]} | (
            auroc_interval(x, y, rules, n_boot=n_boot, level=level, seed=seed) if use else
            {"auroc": None, "low": None, "high": None, "n_audits": 0, "n_clusters": 0})
        out[sid]["delta_vs_B1"] = None
        if sid in CANDIDATE_SIGNALS and not defined[sid]["excluded"] and not defined[COMPARATOR]["excluded"]:
            use, (x, b) = _pairs(rows, key, b1)
            if use:
                out[sid]["delta_vs_B1"] = delta_auroc(x, b, [r["y"] for r in use], [r["rule"] for r in use],
                                                      n_boot=n_boot, n_perm=n_perm, level=level, seed=seed)
    adjusted = holm({s: v["delta_vs_B1"]["p"] for s, v in out.items() if v["delta_vs_B1"]})
    for s, v in out.items():
        if v["delta_vs_B1"]:
            v["delta_vs_B1"]["p_holm"] = adjusted.get(s)
    return out


def _rho_block(rows: Sequence[dict], defined: dict, *, n_boot: int, seed: int, level: float) -> dict:
    got = {}
    for sid, key in SIGNALS.items():
        if not any(finite(r.get(key)) for r in rows):
            got[sid] = {"key": key, "rho": None, "n_tasks": 0, "n_audits": 0}
            continue
        excluded = defined[sid]["excluded"]
        controls = {} if excluded or sid == COMPARATOR else {"B1": SIGNALS[COMPARATOR]}
        st = metric_statistics(list(rows), key, sign=1.0, n_boot=n_boot, level=level, seed=seed, controls=controls)
        got[sid] = {"key": key, "excluded": excluded} | st
        if excluded:
            got[sid]["p"] = None
    adjusted = holm({s: got[s].get("p") for s in CANDIDATE_SIGNALS if not defined[s]["excluded"]})
    for s, v in got.items():
        v["p_holm"] = adjusted.get(s)
    return got


def spearman_table(rows: Sequence[dict], defined: dict, *, n_boot: int, seed: int, level: float) -> dict:
    """Per-task Spearman ρ of each signal with the MAE ratio, pooled and within each target, with partial ρ
    given B1 (``partial.B1``) and Holm across the candidates (study 1's statistics)."""
    blocks = {"pooled": list(rows)}
    for target in sorted({str(r.get("target")) for r in rows}):
        blocks[target] = [r for r in rows if str(r.get("target")) == target]
    return {name: _rho_block(sub, defined, n_boot=n_boot, seed=seed, level=level) for name, sub in blocks.items()}


def labelled_table(rows: Sequence[dict], *, n_boot: int, seed: int, level: float) -> dict:
    """The labelled signals of v1 (those present), pooled, partial ρ given the loss at θ."""
    out = {}
    for key in LABELLED:
        if any(finite(r.get(key)) for r in rows):
            controls = {} if key == LABELLED_CONTROL else {"loss": LABELLED_CONTROL}
            out[key] = metric_statistics(list(rows), key, sign=1.0, n_boot=n_boot, level=level, seed=seed,
                                         controls=controls)
    return out


# ----------------------------------------------------------------------------------------------
# External test, Landscaper's claim


def external_test(score: dict | None, rows: Sequence[dict], *, n_boot: int = 2000, seed: int = 0,
                  level: float = 0.95) -> dict:
    """The frozen ``score`` applied to other omission audits (Perov-5): AUROC with its cluster-bootstrap interval
    over their held-out rules, calibration; ``weak`` when fewer than 20 clusters."""
    sample = omission_rows(rows)
    if score is None or not sample:
        return {"status": "not run: " + ("no score" if score is None else "no omission audits"), "n_audits": 0}
    preds = [predict_risk(score, r) for r in sample]
    use = [(r, p["probability"]) for r, p in zip(sample, preds) if p["probability"] is not None]
    unscored = {}
    for p in preds:
        if p["probability"] is None:
            for f in p["features_missing"] or ["?"]:
                unscored[f] = unscored.get(f, 0) + 1
    y = [r["y"] for r, _ in use]
    rules = [r["rule"] for r, _ in use]
    n_clusters = len(set(rules))
    got = auroc_interval([p for _, p in use], y, rules, n_boot=n_boot, level=level, seed=seed) if use else {
        "auroc": None, "low": None, "high": None, "n_audits": 0, "n_clusters": 0}
    return {"status": "run", "candidate": score.get("candidate"), "n_omission_audits": len(sample),
            "n_scored": len(use), "unscored_by_missing_feature": unscored, "auroc": got,
            "calibration": calibration([p for _, p in use], y), "n_clusters": n_clusters,
            "weak": n_clusters < MIN_EXTERNAL_CLUSTERS,
            "note": f"{n_clusters} clusters (< {MIN_EXTERNAL_CLUSTERS}): weak evidence whichever way it falls"
                    if n_clusters < MIN_EXTERNAL_CLUSTERS else ""}


def _claim_sentence(mode: str, key: str, control: str, st: dict) -> tuple[bool | None, str]:
    rho, part = st.get("rho"), (st.get("partial") or {}).get("control") or {}
    if rho is None:
        return None, (f"Landscaper's claim ({mode} SMAD, {key}) cannot be tested: the signal is defined on "
                      f"{st.get('n_tasks', 0)} tasks.")
    clear = st.get("low") is not None and st["low"] > 0
    part_clear = part.get("low") is not None and part["low"] > 0
    supported = bool(clear and part_clear)
    verdict = "supported" if supported else "not supported"
    why = (f"ρ = {rho:.2f} [{_g(st.get('low'))}, {_g(st.get('high'))}] over {st['n_tasks']} tasks "
           f"({st['n_clusters']} rules); partial ρ given {control} = {_g(part.get('rho'))} "
           f"[{_g(part.get('low'))}, {_g(part.get('high'))}]")
    return supported, (f"Landscaper's claim ({mode} SMAD, {key}) is {verdict} on the MP omission tasks: {why}; "
                       f"supported needs both intervals above 0.")


def _g(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def landscaper_claim(rows: Sequence[dict], *, n_boot: int, n_perm: int, seed: int, level: float) -> dict:
    """SMAD's OOD/ID ratio against the per-task MAE ratio: labelled (partial given the loss at θ) and label-free
    (partial given B1), with its AUROC and Δ AUROC over B1 either way, and the answer sentence."""
    out = {}
    b1 = SIGNALS[COMPARATOR]
    for mode, key, control in (("labelled", "smad_ratio", LABELLED_CONTROL), ("label-free", SIGNALS["L5"], b1)):
        n_def = sum(1 for r in rows if finite(r.get(key)))
        st = (metric_statistics(list(rows), key, sign=1.0, n_boot=n_boot, level=level, seed=seed,
                                controls={"control": control}) if n_def else {"rho": None, "n_tasks": 0})
        supported, sentence = _claim_sentence(mode, key, control, st)
        use, (x,) = _pairs(rows, key)
        a = auroc_interval(x, [r["y"] for r in use], [r["rule"] for r in use], n_boot=n_boot, level=level,
                           seed=seed) if use else {"auroc": None, "n_audits": 0}
        use, (x, b) = _pairs(rows, key, b1)
        d = delta_auroc(x, b, [r["y"] for r in use], [r["rule"] for r in use], n_boot=n_boot, n_perm=n_perm,
                        level=level, seed=seed) if use else {"delta": None, "n_audits": 0}
        out[mode] = {"key": key, "control": control, "n_audits_defined": n_def, "spearman": st, "auroc": a,
                     "delta_auroc_vs_B1": d, "supported": supported, "answer": sentence}
    return out


# ----------------------------------------------------------------------------------------------
# Everything


def _jsonable(x):
    """Plain JSON types: numpy scalars and arrays converted, non-finite floats None, keys strings."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    return x


def analyse(rows: Sequence[dict], perov_rows: Sequence[dict] | None = None, *, n_boot: int = 2000,
            n_perm: int = 2000, n_refits: int = 200, seed: int = 0, level: float = 0.95,
            deviations: Sequence[dict] | None = None, study_version: str = STUDY_VERSION) -> dict:
    """The registered analysis of the MP ``rows`` (:func:`rows_from_results`), with the external test on
    ``perov_rows`` when given. ``deviations``: changes to the plan after the first v2 result, each
    ``{"what", "why"}`` (none by default). ``study_version``: the name the summary and the score carry."""
    om = omission_rows(rows)
    defined = definedness(om)
    opts = {"n_boot": n_boot, "seed": seed, "level": level}
    available = [s for s, v in defined.items() if not v["excluded"]]
    trust = trust_score(om, available, n_boot=n_boot, n_refits=n_refits, seed=seed, level=level,
                        study_version=study_version) if om else {
        "status": "not run: no omission audits", "score": None}
    return _jsonable({
        "study_version": study_version, "registration": REGISTRATION,
        "generated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {"n_boot": n_boot, "n_perm": n_perm, "n_refits": n_refits, "seed": seed, "level": level,
                     "mae_gate": MAE_GATE, "max_undefined": MAX_UNDEFINED, "comparator": COMPARATOR,
                     "candidates": list(CANDIDATE_SIGNALS), "outcome": f"Y = OOD/ID MAE ratio ≥ {MAE_GATE}",
                     "cluster": "held-out rule (the tasks of every target that hold out the same compounds)",
                     "interval": f"percentile {round(100 * level)} % over {n_boot} cluster-bootstrap resamples, "
                                 f"seed {seed}"},
        "sample": _sample(rows, om),
        "signals": defined,
        "auroc": auroc_table(om, defined, n_perm=n_perm, **opts),
        "spearman": spearman_table(om, defined, **opts),
        "labelled": labelled_table(om, **opts),
        "trust_score": trust,
        "external_test": external_test(trust.get("score"), perov_rows, **opts) if perov_rows else None,
        "landscaper_claim": landscaper_claim(om, n_perm=n_perm, **opts),
        "label_free_gates": label_free_gates(rows, study_version=study_version, **opts),
        "deviations": list(deviations or []),
        "rows": list(rows),
    })


def label_free_gates(rows: Sequence[dict], *, study_version: str, n_boot: int, seed: int, level: float) -> dict:
    """The evidence for label-free audits' default gates (:mod:`traits.study.v2_gates`) and the gates it would
    fail by default once adopted."""
    from traits.study.summary import data_set_name
    from traits.study.v2_gates import default_fails, label_free_evidence

    ev = label_free_evidence(rows, n_boot=n_boot, seed=seed, level=level, study_version=study_version,
                             data_set=data_set_name(list(rows)))
    return {"evidence": ev, "default_fails": default_fails(ev)}


def _sample(rows: Sequence[dict], om: Sequence[dict]) -> dict:
    return {"n_audits": len(rows), "n_omission_audits": len(om),
            "n_random_audits": sum(1 for r in rows if r.get("kind") == "random"),
            "n_without_outcome": sum(1 for r in rows if r.get("kind") == "omission" and r.get("y") is None),
            "n_positive": sum(r["y"] for r in om), "n_tasks": len({r["task"] for r in om}),
            "n_rules": len({r["rule"] for r in om}), "targets": sorted({str(r.get("target")) for r in om}),
            "data": sorted({str(r.get("data")) for r in rows})}


def write_summary(analysis: dict, out_dir) -> dict[str, Path]:
    """``out_dir/summary.{json,md,html,pdf}`` (the page and its PDF: :mod:`traits.study.v2_render`), all rendered
    first, then each written atomically (all or none)."""
    import json

    from traits.files import write_formats_atomic
    from traits.study.v2_markdown import markdown
    from traits.study.v2_render import pages

    return write_formats_atomic(Path(out_dir), "summary", {"json": json.dumps(analysis, indent=1, allow_nan=False),
                                                           "md": markdown(analysis), **pages(analysis, out_dir)})
