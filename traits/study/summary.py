"""The study summary: JSON, Markdown and HTML (with the forest and scatter plots), regenerated from the
task folders finished so far, so it can be rewritten while the study runs (``traits study summary
RUNS --watch 300``).

It also writes ``catalogue-evidence.json``: per metric the measured ρ, its interval, the Holm p and the
random-split noise floor, with the study's version and data set, which :mod:`traits.catalogue`
reads. A summary made at a tiny budget is labelled a *pipeline check* in every file (and the catalogue
never lets a pipeline check decide a default)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

from traits import catalogue as cat
from traits.errors import TraitsError
from traits.files import ensure_dir, write_json_atomic, write_text_atomic
from traits.report.formatting import markdown_literal as _md
from traits.study.families import STUDY_VERSION
from traits.study.stats import MIN_FLOOR_AUDITS

PIPELINE_BANNER = ("PIPELINE CHECK, NOT EVIDENCE: this summary was made at a tiny budget to exercise the study "
                   "pipeline end to end; its numbers say nothing about the metrics.")
IN_PROGRESS_BANNER = ("STUDY IN PROGRESS, NOT YET EVIDENCE: an interim summary of the audits finished so far at the "
                      "study budget; intervals are wide and the task mix is incomplete. It cannot be adopted.")


def banner(summary: dict) -> str | None:
    if summary.get("pipeline_check"):
        return PIPELINE_BANNER
    if summary.get("in_progress"):
        return IN_PROGRESS_BANNER
    return None


def result_paths(runs: Path) -> list[Path]:
    return sorted(Path(runs).glob("seed-*/*/results.json"))


def gaps(runs: Path, campaign: Path | None = None, seeds: list[int] | None = None) -> list[str]:
    """What keeps ``runs`` from being a finished study, one line per missing audit: a task folder without a
    results.json, or a (seed, task) of the grid with no folder. The grid is the tasks of ``campaign`` (its
    spec files) or else those found in any seed folder, times ``seeds`` or else the seed folders found.
    (results.json is renamed into place last, so it is there only when the task finished; whether it reads
    is :func:`collect_rows`' check.)"""
    from traits.campaign import NOT_SPECS

    runs = Path(runs)
    found = {d.name: d for d in runs.glob("seed-*") if d.is_dir()}
    seed_names = [f"seed-{s}" for s in seeds] if seeds else sorted(found)
    tasks = {t.name for d in found.values() for t in d.iterdir() if t.is_dir()}
    if campaign is not None:
        campaign = Path(campaign)
        if not campaign.is_dir():
            raise TraitsError(f"{campaign}: no such campaign directory")
        tasks = {p.stem for p in campaign.iterdir()
                 if p.suffix in (".yaml", ".yml", ".json") and p.name not in NOT_SPECS}
    missing = []
    for seed in seed_names:
        for task in sorted(tasks):
            folder = runs / seed / task
            if not folder.is_dir():
                missing.append(f"{seed}/{task}: not run")
            elif not (folder / "results.json").is_file():
                missing.append(f"{seed}/{task}: no results.json (unfinished or failed)")
    return missing


def collect_rows(runs: Path, log: Callable[[str], None] = lambda _m: None,
                 skipped: list[str] | None = None) -> list[dict]:
    """A summary row per finished task folder ``RUNS/seed-S/TASK/results.json``; an unreadable one is logged,
    skipped and, when ``skipped`` is given, named there (as SEED/TASK)."""
    from traits.campaign import summary_row
    from traits.results import load_result

    rows = []
    for path in result_paths(runs):
        try:
            rows.append(summary_row(path.parent.name, load_result(path)))
        except TraitsError as exc:
            log(f"{path}: skipped ({exc})")
            if skipped is not None:
                skipped.append(f"{path.parent.parent.name}/{path.parent.name}")
    return rows


#: Names reports cite for the data files the field's studies run on (a data source as ``data_source`` gives it).
KNOWN_DATA_SETS = {"mp_36738": "Materials Project (mp_36738)",
                   "perov5:heat_ref": "Castelli perovskites (Perov-5, heat_ref)"}


def data_set_name(rows: list[dict]) -> str:
    """The data set the rows' audits ran on, named for reports (several, when the runs mix them)."""
    sources = sorted({r.get("data") or "unknown" for r in rows})
    return " + ".join(KNOWN_DATA_SETS.get(s, s) for s in sources) or "unknown"


def study_summary(rows: list[dict], *, data_set: str | None, pipeline_check: bool, n_boot: int = 2000,
                  seed: int = 0, profile: str | None = None, in_progress: bool = False,
                  full_pool: list[dict] | None = None, study_version: str = STUDY_VERSION) -> dict:
    from traits.campaign import summarise
    from traits.study.stats import study_statistics

    metrics = [m.name for m in cat.ranked()]
    kinds = {m.name: m.kind for m in cat.ranked()}
    signs = {m.name: m.direction for m in cat.ranked()}
    neutral = {m.name: m.neutral for m in cat.ranked()}
    stats = study_statistics(rows, metrics, kinds=kinds, signs=signs, n_boot=n_boot, seed=seed, neutral=neutral)
    per_family: dict[str, dict] = {}
    for r in rows:
        f = per_family.setdefault(r.get("family") or "?", {"tasks": set(), "audits": 0})
        f["tasks"].add(r["task"])
        f["audits"] += 1
    return {
        "study_version": study_version, "data_set": data_set or data_set_name(rows), "pipeline_check": pipeline_check,
        "in_progress": bool(in_progress and not pipeline_check), "profile": profile,
        "generated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "n_audits": len(rows), "n_tasks": len({r["task"] for r in rows}),
        "families": {k: {"tasks": len(v["tasks"]), "audits": v["audits"]} for k, v in sorted(per_family.items())},
        "statistics": stats, "tasks": summarise(rows)["tasks"], "rows": rows,
        "reference_table": reference_table(rows, full_pool or []),
        "shift_thresholds": shift_thresholds(rows),
    }


def firing_counts(rows: list[dict], keys) -> dict[str, dict]:
    """Per gated metric among ``keys``: the omission tasks whose default gate fires on 1, 2 and 3 of their seeds
    (:func:`traits.study.stats.seed_firing`)."""
    from traits.study.stats import seed_firing

    gated = {m.name: m for m in cat.catalogue() if m.gate_field and m.threshold is not None}
    return {k: seed_firing(rows, k, threshold=float(gated[k].threshold), direction=gated[k].direction)
            for k in keys if k in gated}


def evidence_json(summary: dict) -> dict:
    overall = summary["statistics"]["overall"]
    floor = summary["statistics"]["noise_floor"]
    firing = firing_counts(summary.get("rows") or [], overall)
    return {
        "study_version": summary["study_version"], "data_set": summary["data_set"],
        "pipeline_check": summary["pipeline_check"], "in_progress": summary.get("in_progress", False),
        "generated_utc": summary["generated_utc"],
        "rule": "fails by default only if the rho interval (expected direction) lies above 0, p_holm < 0.05, the "
                "partial rho given the loss at theta has its interval above 0 too, the gate threshold lies "
                "beyond the noise floor, and (where counted) the gate fires on all three seeds of at least one task",
        "metrics": {k: {"rho": v["rho"], "low": v["low"], "high": v["high"], "p_holm": v.get("p_holm"),
                        "n_tasks": v["n_tasks"], "n_audits": v["n_audits"], "n_clusters": v.get("n_clusters"),
                        "noise_floor": (floor.get(k) or {}).get("high" if v["expected_sign"] > 0 else "low")
                        if (floor.get(k) or {}).get("enough") else None,
                        "partial_loss": {q: ((v.get("partial") or {}).get("loss") or {}).get(q)
                                         for q in ("rho", "low", "high")}}
                    | ({"seed_firing": firing[k]} if k in firing else {})
                    for k, v in overall.items()},
    }


def _f(x, d: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{d}f}"


def _p(x) -> str:
    return "–" if x is None else (f"{x:.2g}" if x >= 1e-3 else f"{x:.1e}")


def _ci(v: dict) -> str:
    if v.get("rho") is None:
        return "–"
    if v.get("low") is None:
        return f"{_f(v['rho'])} (no interval)"
    return f"{_f(v['rho'])} [{_f(v['low'])}, {_f(v['high'])}]"


def seed_interval(values: list, level: float = 0.95) -> dict:
    """Mean and sd over seeds with the mean's t interval (``level``); no interval from fewer than two finite
    values."""
    from scipy.stats import t as student_t

    from traits.campaign import _mean_std

    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    mean, sd = _mean_std(v)
    if sd is None:
        return {"mean": mean, "sd": None, "low": None, "high": None, "n": len(v)}
    half = float(student_t.ppf(0.5 + level / 2, len(v) - 1)) * sd / math.sqrt(len(v))
    return {"mean": mean, "sd": sd, "low": mean - half, "high": mean + half, "n": len(v)}


def _seed_text(iv: dict) -> str:
    if iv["mean"] is None:
        return "–"
    if iv["low"] is None:
        return f"{_f(iv['mean'])} (1 seed)"
    return f"{_f(iv['mean'])} [{_f(iv['low'])}, {_f(iv['high'])}]"


def full_pool_references(folder: Path) -> list[dict]:
    """The full-pool models' accuracy from their checkpoint sidecars (``docs/quality/*.json``: ``target``,
    ``omit`` of one element, ``metrics.splits.{id,ood}.mae``); files of another shape are skipped."""
    refs = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            splits = raw["metrics"]["splits"]
            omit = list(raw["omit"])
            entry = {"target": str(raw["target"]), "element": omit[0], "id_mae": float(splits["id"]["mae"]),
                     "ood_mae": float(splits["ood"]["mae"]), "source": path.name}
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            continue
        if len(omit) == 1:
            refs.append(entry)
    return refs


def shift_thresholds(rows: list[dict]) -> dict:
    """The domain-shift rule's thresholds (:mod:`traits.verdict`) against the study: for the embedding
    kNN-distance ratio (``probes.shift.near_ratio``, ``gates.max_embedding_knn_ratio``) and the share of OOD
    targets outside the training 1st-99th percentiles (``probes.shift.target_outside_fraction``), the values on
    the random splits (nothing out of distribution) and on the omission tasks, with the share of audits beyond
    each threshold, and how often the rule named each case; and, per case the rule named on the omission
    tasks, their OOD/ID MAE ratio (spread and share above the MAE gate), which says whether a case's label
    picks out tasks that transfer worse."""
    from collections import Counter

    from traits.spec import GateSpec, ShiftSpec
    from traits.study.stats import spread

    near = float(ShiftSpec.model_fields["near_ratio"].default)
    far = float(GateSpec.model_fields["max_embedding_knn_ratio"].default)
    mae_gate = float(GateSpec.model_fields["max_mae_ratio"].default)
    outside = float(ShiftSpec.model_fields["target_outside_fraction"].default)
    groups = {"random splits": [r for r in rows if r.get("family") == "random"],
              "omission tasks": [r for r in rows if r.get("family") not in ("random", "named sets")]}
    out: dict = {"thresholds": {"near_ratio": near, "max_embedding_knn_ratio": far,
                                "target_outside_fraction": outside}, "groups": {}}
    for name, sub in groups.items():
        out["groups"][name] = {
            "embedding_knn_ratio": spread([r.get("embedding_knn_ratio") for r in sub],
                                          {"near_ratio": near, "max_embedding_knn_ratio": far}),
            "ood_target_outside": spread([r.get("ood_target_outside") for r in sub],
                                         {"target_outside_fraction": outside}),
            "cases": dict(sorted(Counter(str(r.get("shift_case") or "none") for r in sub).items()))}
    by_case: dict[str, list] = {}
    for r in groups["omission tasks"]:
        by_case.setdefault(str(r.get("shift_case") or "none"), []).append(r.get("mae_ratio"))
    out["thresholds"]["max_mae_ratio"] = mae_gate
    out["error_by_case"] = {c: spread(v, {"max_mae_ratio": mae_gate}) for c, v in sorted(by_case.items())}
    return out


def gate_decisions(summary: dict) -> list[dict]:
    """What adopting this summary's evidence would decide for each gated landscape or distance metric the study
    measured: the rule's numbers (ρ, Holm p, partial ρ given the loss at θ, the noise floor against the default
    threshold, the tasks whose gate fires on 1 / 2 / 3 of their seeds) and whether it fails by default, with the
    conditions it misses (:func:`traits.catalogue.default_decisions`)."""
    ev = cat.evidence_from_raw(evidence_json(summary))
    out = []
    for name, why in cat.default_decisions(ev).items():
        if ev[name].rho is None:
            continue
        m = cat.metric(name)
        out.append({"metric": name, "label": m.label, "threshold": float(m.threshold), "direction": m.direction,
                    "evidence": ev[name], "fails_by_default": not why, "reasons": why})
    return out


def unstable_text(names: list[str]) -> str:
    """'X and Y meet every other condition, but their gates fire on all three training seeds of no task' (the
    metrics that miss only the seed condition, :data:`traits.catalogue.UNSTABLE`)."""
    one = len(names) == 1
    return (f"{_and(names)} meet{'s' if one else ''} every other condition, but "
            f"{'its gate fires' if one else 'their gates fire'} on all three training seeds of no task")


def _gate_lines(summary: dict, labels: dict) -> list[str]:
    rows = gate_decisions(summary)
    if not rows:
        return []
    counted = any(r["evidence"].seed_firing is not None for r in rows)
    lines = ["", "## Default gates: what this study decides", "",
             "The rule (`traits.catalogue.fails_by_default_from_evidence`): a landscape or distance metric fails "
             "audits by default only if its ρ interval lies clear of 0 in the expected direction, p (Holm) < 0.05, "
             "its partial ρ given the loss at θ is clear of 0 too, its default threshold lies beyond the "
             "random-split noise floor (97.5 %; 2.5 % where smaller is worse)"
             + (", and its gate fires on all three seeds of at least one omission task (the tasks whose gate "
                "fires on 1 / 2 / 3 of their seeds are counted)" if counted else "") + "; otherwise it warns. "
             "The MAE ratio and the non-finite share fail by default whatever the study says.", "",
             "| metric | default threshold | ρ [95 % CI] | p (Holm) | partial ρ: loss | noise floor | "
             "fires on 1 / 2 / 3 seeds | by default |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        e = r["evidence"]
        sf = e.seed_firing
        fires = "not counted" if sf is None else f"{sf[0]} / {sf[1]} / {sf[2]}"
        verdict = "fails" if r["fails_by_default"] else "warns: " + "; ".join(r["reasons"])
        lines.append(f"| {_md(labels.get(r['metric'], r['metric']))} | {'≤' if r['direction'] > 0 else '≥'} "
                     f"{r['threshold']:g} | {_ci({'rho': e.rho, 'low': e.low, 'high': e.high})} | {_p(e.p_holm)} | "
                     f"{_ci(dict(zip(('rho', 'low', 'high'), e.partial)))} | {_f(e.noise_floor)} | {fires} | "
                     f"{_md(verdict)} |")
    fails = [labels.get(r["metric"], r["metric"]) for r in rows if r["fails_by_default"]]
    state = (" (a pipeline check: it decides nothing)" if summary.get("pipeline_check") else
             " (an interim summary: it decides nothing)" if summary.get("in_progress") else "")
    also = " and " + _and(fails) if fails else " and no landscape or distance metric"
    lines += ["", f"Under the rule as it stands, this evidence makes labelled audits fail by default on the MAE "
              f"ratio, the non-finite share{also}{state}."]
    return lines


def _shift_lines(table: dict | None) -> list[str]:
    if not table or not any(g["embedding_knn_ratio"].get("n") for g in table["groups"].values()):
        return []
    th = table["thresholds"]
    lines = ["", "## The domain-shift rule's thresholds against the study", "",
             f"Per audit, median [2.5–97.5 %] and the share beyond each threshold: the embedding kNN-distance ratio "
             f"(close to training at most {th['near_ratio']:g}, far above {th['max_embedding_knn_ratio']:g}) and the "
             f"share of OOD targets outside the training 1st–99th percentiles (outside the training range from "
             f"{th['target_outside_fraction']:g}); and how often the rule named each case.", "",
             "| audits | n | embedding kNN ratio | > near | > far | OOD targets outside | > threshold | cases |",
             "|---|---|---|---|---|---|---|---|"]

    def rng(x):
        return "–" if not x.get("n") else f"{_f(x['median'])} [{_f(x['low'])}, {_f(x['high'])}]"

    def share(x, key):
        return "–" if not x.get("n") else f"{100 * x['share_above'][key]:.0f} %"

    for name, g in table["groups"].items():
        e, t = g["embedding_knn_ratio"], g["ood_target_outside"]
        cases = ", ".join(f"{_md(k)} {v}" for k, v in g["cases"].items()) or "–"
        lines.append(f"| {_md(name)} | {e.get('n', 0)} | {rng(e)} | {share(e, 'near_ratio')} | "
                     f"{share(e, 'max_embedding_knn_ratio')} | {rng(t)} | {share(t, 'target_outside_fraction')} | "
                     f"{cases} |")
    by_case = table.get("error_by_case") or {}
    if by_case:
        lines += ["", "OOD/ID MAE of the omission audits by the case the rule named (median [2.5–97.5 %], share "
                  f"above the MAE gate {th.get('max_mae_ratio', 2.0):g}): a label that means something picks out "
                  "audits that transfer worse (or better) than the rest.", "",
                  "| case | audits | OOD/ID MAE | > MAE gate |", "|---|---|---|---|"]
        for case, x in by_case.items():
            lines.append(f"| {_md(case)} | {x.get('n', 0)} | {rng(x)} | {share(x, 'max_mae_ratio')} |")
    return lines


def reference_table(rows: list[dict], refs: list[dict]) -> list[dict]:
    """The seed-facing table: per full-pool reference (target, omitted element), the study's audits of that
    leave-one-element-out task (every seed), beside the full-pool model, with the study's ID MAE over the
    full-pool one (the issue's aim: within 1.5x)."""
    from traits.campaign import _mean_std

    out = []
    for ref in refs:
        mine = [r for r in rows if r.get("target") == ref["target"] and list(r.get("omit") or []) == [ref["element"]]
                and not r.get("holdout") and r.get("mae_ratio") is not None and r.get("id_mae")]
        ratios = [float(r["mae_ratio"]) for r in mine]
        ratio_iv = seed_interval(ratios)
        id_mean, _ = _mean_std([float(r["id_mae"]) for r in mine])
        id_iv = seed_interval([float(r["id_mae"]) / ref["id_mae"] for r in mine])
        out.append({"target": ref["target"], "element": ref["element"], "seeds": [r.get("seed") for r in mine],
                    "mae_ratios": ratios, "mae_ratio": ratio_iv["mean"], "mae_ratio_sd": ratio_iv["sd"],
                    "mae_ratio_low": ratio_iv["low"], "mae_ratio_high": ratio_iv["high"], "id_mae": id_mean,
                    "id_mae_vs_full_pool_low": id_iv["low"], "id_mae_vs_full_pool_high": id_iv["high"],
                    "full_pool_id_mae": ref["id_mae"], "full_pool_mae_ratio": ref["ood_mae"] / ref["id_mae"],
                    "id_mae_vs_full_pool": id_mean / ref["id_mae"] if id_mean is not None else None,
                    "source": ref["source"]})
    return out


def _reference_lines(table: list[dict]) -> list[str]:
    if not table:
        return []
    lines = ["", "## The reference tasks beside the full-pool models", "",
             "Leave-one-element-out tasks that a full-pool model was also trained for (README, model quality): the "
             "study's OOD/ID MAE per seed and their mean with its 95 % t interval over the seeds, the full-pool "
             "model's, and the study's ID MAE over the full-pool one (mean [95 % t interval]; the aim: within 1.5x; "
             "above it, the study budget compresses the ratios).", "",
             "| target | omitted | seeds | OOD/ID MAE per seed | mean [95 % CI] | full pool | "
             "ID MAE / full-pool ID MAE [95 % CI] |", "|---|---|---|---|---|---|---|"]
    for e in table:
        per = ", ".join(_f(x) for x in e["mae_ratios"]) or "not run yet"
        ratio = _seed_text({"mean": e["mae_ratio"], "low": e.get("mae_ratio_low"), "high": e.get("mae_ratio_high")})
        ident = _seed_text({"mean": e["id_mae_vs_full_pool"], "low": e.get("id_mae_vs_full_pool_low"),
                            "high": e.get("id_mae_vs_full_pool_high")})
        lines.append(f"| {_md(e['target'])} | {_md(e['element'])} | {len(e['seeds'])} | {per} | {ratio} | "
                     f"{_f(e['full_pool_mae_ratio'])} | {ident} |")
    return lines


#: Why a catalogue metric can have no study numbers (the catalogue's metrics the study profile may not measure).
NOT_MEASURED_WHY = {
    "plane_basin_area_ratio": "no audit drew the eigenvector plane (probes.surface.directions: hessian)",
    "first_jump_ratio": "no audit found a jump in both splits' 1D loss curves",
}

#: Ids of the summary's sections (its Markdown headings, by how they start), for the contents and the links.
SECTION_IDS = (("Conclusion", "conclusion"), ("Each metric against", "metrics"),
               ("Landscape metrics against the best", "baseline"), ("Default gates", "gates"),
               ("Per family", "families"),
               ("The reference tasks", "reference"), ("The domain-shift rule", "shift"), ("Tasks", "tasks"))


def measured(v: dict) -> bool:
    """Whether the study has numbers for a metric (a ρ from at least one audit). A metric without keeps its row in
    the first table, which says why it is empty, and is left out of the other tables."""
    return v.get("rho") is not None and bool(v.get("n_audits"))


def not_measured(summary: dict) -> list[tuple[str, str]]:
    """(metric, why) for the catalogue metrics the study has no numbers for."""
    n = summary.get("n_audits", 0)
    stage = {m.name: m.stage for m in cat.catalogue()}
    return [(k, f"not measured in the {n} audits: " + NOT_MEASURED_WHY.get(k, (
                "no audit ran the label-free probes (probes.label_free)" if stage.get(k) == "label_free" else
                "no audit yields the ratio")))
            for k, v in summary["statistics"]["overall"].items() if not measured(v)]


def _signed(v: dict) -> tuple[float | None, float | None, float | None]:
    """ρ and its interval with the metric's expected sign applied: > 0 always means 'tracks the error'."""
    sign = v.get("expected_sign", 1.0) or 1.0
    if v.get("rho") is None:
        return None, None, None
    if v.get("low") is None or v.get("high") is None:
        return sign * v["rho"], None, None
    a, b = sign * v["low"], sign * v["high"]
    return sign * v["rho"], min(a, b), max(a, b)


#: :func:`reading`'s words: the interval (and the partial ρ given the loss at θ) above 0 with p (Holm) < 0.05; the
#: interval above 0 but the partial ρ reaching 0; the interval below 0 (the wrong direction); anything else.
BEYOND, WITH_LOSS = "tracks the error beyond the loss at θ", "tracks the error, nothing beyond the loss at θ"
AGAINST, UNCLEAR = "against its expected direction", "no clear link"


def reading(v: dict) -> str:
    """One metric's result in words, from its ρ interval, Holm p and partial ρ given the loss at θ."""
    if v.get("kind") == "error at θ (reference)":
        return "reference: the error the probes see at θ"
    if not measured(v):
        return "not measured"
    _, low, high = _signed(v)
    part = (v.get("partial") or {}).get("loss") or {}
    _, plow, _ = _signed({**part, "expected_sign": v.get("expected_sign", 1.0)})
    p = v.get("p_holm") if v.get("p_holm") is not None else v.get("p")
    if low is not None and low > 0 and plow is not None and plow > 0:
        return BEYOND + (" (weakly)" if plow < 0.1 else "")
    if low is not None and low > 0 and p is not None and p < 0.05:
        return WITH_LOSS
    if high is not None and high < 0:
        return AGAINST
    return UNCLEAR


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1] if items else ""


def _conclusion_opening(summary: dict, overall: dict, rules: int) -> list[str]:
    """The conclusion's first sentences: a pipeline-check or interim caveat, the sample and the reference."""
    out = []
    if summary.get("pipeline_check"):
        out.append("This is a pipeline check at a tiny budget: its numbers exercise the pipeline and say nothing "
                   "about the metrics.")
    elif summary.get("in_progress"):
        out.append("This is an interim summary of a study still running: the intervals are wide and the task mix "
                   "incomplete.")
    head = (f"Over {summary['n_audits']} audits of {summary['n_tasks']} tasks ({rules} held-out rules, "
            f"{summary['data_set']})")
    ref = overall.get("loss_ratio")
    if ref and measured(ref):
        clear = (_signed(ref)[1] or 0.0) > 0
        out.append(head + (f", the loss at θ alone tracks the OOD/ID error ratio with Spearman ρ = {_ci(ref)}." if clear
                           else f", the loss at θ alone gives Spearman ρ = {_ci(ref)} with the OOD/ID error ratio (the "
                           "interval reaches 0)."))
    else:
        out.append(head + ".")
    return out


def _conclusion_readings(overall: dict, labels: dict) -> list[str]:
    """The conclusion's sentences on which metrics track the error beyond the loss at θ, with it, against or not."""

    def name(k: str) -> str:
        return labels.get(k, k)

    out = []
    groups: dict[str, list[str]] = {}
    for k, v in overall.items():
        if v.get("kind") != "error at θ (reference)" and measured(v):
            groups.setdefault(reading(v).split(" (")[0], []).append(k)
    beyond = groups.get(BEYOND, [])
    if beyond:
        parts = [f"{name(k)} (partial ρ {_ci((overall[k].get('partial') or {}).get('loss') or {})})" for k in beyond]
        lows = [_signed({**((overall[k].get("partial") or {}).get("loss") or {}),
                         "expected_sign": overall[k]["expected_sign"]})[1] for k in beyond]
        weak = [x for x in lows if x is not None and x < 0.1]
        out.append(f"Given the loss at θ, {_and(parts)} still {'tracks' if len(beyond) == 1 else 'track'} the error "
                   "(interval above 0)" + (f", but weakly: the lower bound{'s are' if len(weak) > 1 else ' is'} "
                                          f"{_and([_f(x) for x in weak])}." if weak else "."))
    else:
        out.append("No metric tracks the error beyond the loss at θ: every partial ρ interval given the loss at θ "
                   "reaches 0.")
    also = groups.get(WITH_LOSS, [])
    if also:
        out.append(f"{_and([name(k) for k in also])} {'tracks' if len(also) == 1 else 'track'} the error"
                   + (" too" if beyond else "") + " (interval clear of 0, p (Holm) < 0.05) but add"
                   + ("s" if len(also) == 1 else "")
                   + " nothing clear of 0 once the loss at θ is known.")
    wrong = groups.get(AGAINST, [])
    if wrong:
        out.append(f"{_and([f'{name(k)} (ρ = {_ci(overall[k])})' for k in wrong])} "
                   f"{'goes' if len(wrong) == 1 else 'go'} against the expected direction.")
    unclear = groups.get(UNCLEAR, [])
    if unclear:
        out.append(f"No clear link for {_and([name(k) for k in unclear])} (the interval reaches 0 or p (Holm) ≥ "
                   "0.05).")
    return out


def _conclusion_baseline(st: dict, overall: dict, labels: dict) -> list[str]:
    """The conclusion's sentence on the metrics that track the error better than the best distance baseline."""
    vs = st.get("vs_best_baseline") or {}
    if not vs.get("baseline"):
        return []
    diffs = {k: d for k, d in vs["metrics"].items() if d.get("diff") is not None and d.get("low") is not None}
    better = [k for k, d in diffs.items() if d["low"] > 0]
    restate = [labels.get(k, k) for k in better if k in overall and not reading(overall[k]).startswith(BEYOND)]
    base = labels.get(vs["baseline"], vs["baseline"])
    if not better:
        return [f"No landscape metric is shown to track the error better than the best distance baseline "
                f"({base}): every Δρ interval reaches 0 or lies below it."]
    return [f"Against the best distance baseline ({base}), "
            + _and([f"{labels.get(k, k)} (Δρ = {_f(diffs[k]['diff'])} [{_f(diffs[k]['low'])}, "
                    f"{_f(diffs[k]['high'])}])" for k in better])
            + f" {'tracks' if len(better) == 1 else 'track'} the error better"
            + ((f", but only {'restates' if len(better) == 1 else 'restate'} the loss at θ (partial ρ "
                "reaching 0)") if restate and len(restate) == len(better) else
               (f" ({_and(restate)} only {'restates' if len(restate) == 1 else 'restate'} the loss at θ)"
                if restate else "")) + "; no other landscape metric is shown to."]


def conclusion(summary: dict) -> str:
    """The summary's conclusion in one paragraph generated from its numbers: the sample (audits, tasks, held-out
    rules), the reference, which metrics track the error beyond the loss at θ (with their intervals, and said to be
    weak when a lower bound is under 0.1), which track it only with the loss, which go the wrong way, the
    comparison with the best distance baseline, what was not measured, and how strong the evidence is.

    Args:
        summary: the study summary (as :func:`study_summary` makes it and ``summary.json`` holds it).

    Returns:
        The conclusion, one paragraph of sentences each starting with a capital.
    """
    labels = cat.labels()
    st = summary["statistics"]
    overall = st["overall"]
    rules = max([v.get("n_clusters") or 0 for v in overall.values() if measured(v)] or [0])
    out = _conclusion_opening(summary, overall, rules)
    out += _conclusion_readings(overall, labels)
    out += _conclusion_baseline(st, overall, labels)
    out += _conclusion_gates(summary, labels)
    missing = not_measured(summary)
    if missing:
        out.append(f"{_and([labels.get(k, k) for k, _ in missing])} {'was' if len(missing) == 1 else 'were'} not "
                   "measured.")
    if rules and rules < 10:
        out.append(f"With only {rules} held-out rules every interval is wide: weak evidence either way.")
    return " ".join(x[0].upper() + x[1:] if x[0].isascii() and x[0].isalpha() else x for x in out)


def _conclusion_gates(summary: dict, labels: dict) -> list[str]:
    """What the default-gate rule decides (:func:`gate_decisions`), in one sentence; nothing for a pipeline check
    or an interim summary, which decide nothing."""
    rows = gate_decisions(summary)
    if not rows or summary.get("pipeline_check") or summary.get("in_progress"):
        return []
    fails = [labels.get(r["metric"], r["metric"]) for r in rows if r["fails_by_default"]]
    unstable = [labels.get(r["metric"], r["metric"]) for r in rows if r["reasons"] == [cat.UNSTABLE]]
    text = ("by the default-gate rule, audits fail by default on "
            + (_and(fails) if fails else "no landscape or distance metric"))
    if unstable:
        text += f"; {unstable_text(unstable)}, so {'it warns' if len(unstable) == 1 else 'they warn'}"
    return [text + "."]


def _summary_head(summary: dict) -> list[str]:
    lines = [f"# TRAITS study summary ({_md(summary['study_version'])}, {_md(summary['data_set'])})", ""]
    if banner(summary):
        lines += [f"> **{banner(summary)}**", ""]
    lines += [f"{summary['n_audits']} audits of {summary['n_tasks']} tasks (profile "
              f"{_md(summary.get('profile') or '–')}; generated {_md(summary['generated_utc'])}). Families: "
              + ", ".join(f"{_md(k)} {v['tasks']} tasks / {v['audits']} audits" for k, v in summary["families"].items())
              + ".", "", "## Conclusion", "", _md(conclusion(summary)), ""]
    return lines


def summary_markdown(summary: dict) -> str:
    return "\n".join(_summary_head(summary) + _summary_sections(summary)) + "\n"


def _summary_sections(summary: dict) -> list[str]:
    """The summary's sections after its conclusion (Markdown lines): the HTML page renders these below its own
    title block, conclusion, contents and overview table."""
    labels = cat.labels()
    st = summary["statistics"]
    lines = ["## Each metric against the OOD/ID error ratio (all tasks, the random-split baselines included)", "",
              "Spearman ρ of the metric's OOD/ID ratio with the OOD/ID MAE ratio over the tasks (each task's "
              "seeds averaged). Tasks that hold out the same compounds (both targets of one held-out element, "
              "chemical system, ... or random share) form a cluster: the 95 % interval is a cluster bootstrap "
              "and p a one-sided cluster permutation test in the metric's expected direction, Holm-adjusted "
              "across the metrics except the loss at θ (a reference, not a candidate). Partial ρ controls for "
              "the loss at θ and for the target shift (Wasserstein of the targets to training). The noise floor "
              "is the metric's OOD/ID value per audit on the random-split baselines (median [2.5–97.5 %]), "
              "where an honest metric sits at 1 (0 for a difference); read from fewer than "
              f"{MIN_FLOOR_AUDITS} audits it is marked too few and judges no gate threshold. ↓: a smaller "
              "value is worse (ρ should be negative).", "",
              "| kind | metric | ρ [95 % CI] | p (one-sided) | p (Holm) | partial ρ: loss | partial ρ: target shift | "
              "clusters / tasks / audits | noise floor (random splits) |", "|---|---|---|---|---|---|---|---|---|"]
    why = dict(not_measured(summary))
    for key, v in st["overall"].items():
        nf = st["noise_floor"].get(key) or {}
        floor = "–" if not nf.get("n") else (f"{_f(nf['median'])} [{_f(nf['low'])}, {_f(nf['high'])}] (n={nf['n']}"
                                             + ("" if nf.get("enough") else ", too few") + ")")
        label = _md(labels.get(key, key)) + (" ↓" if v["expected_sign"] < 0 else "")
        part = v.get("partial", {})
        lines.append(f"| {_md(v['kind'])} | {label} | {_md(why[key]) if key in why else _ci(v)} | {_p(v['p'])} | "
                     f"{_p(v.get('p_holm'))} | "
                     f"{_ci(part.get('loss', {}))} | {_ci(part.get('target_shift', {}))} | "
                     f"{v.get('n_clusters', '–')} / {v['n_tasks']} / {v['n_audits']} | {floor} |")
    vs = st["vs_best_baseline"]
    if vs["baseline"]:
        lines += ["", f"## Landscape metrics against the best distance baseline "
                  f"({_md(labels.get(vs['baseline'], vs['baseline']))})", "",
                  "Difference of signed ρ (landscape − baseline) on the tasks with both, 95 % cluster-bootstrap "
                  "interval from the same resamples (> 0: the landscape metric tracks the error better; the "
                  "baseline is chosen on these data, so the comparison favours it slightly).", "",
                  "| metric | Δρ [95 % CI] | tasks / audits |", "|---|---|---|"]
        for key, d in vs["metrics"].items():
            if d["diff"] is None:
                continue
            ci = "–" if d["diff"] is None else (f"{_f(d['diff'])} [{_f(d['low'])}, {_f(d['high'])}]"
                                                if d["low"] is not None else f"{_f(d['diff'])} (no interval)")
            lines.append(f"| {_md(labels.get(key, key))} | {ci} | {d['n_tasks']} / "
                         f"{d['n_audits']} |")
    lines += _gate_lines(summary, labels)
    fams = {k: v for k, v in st["per_family"].items() if v["metrics"]}
    if fams:
        few = [f"{_md(k)} ({v.get('n_clusters', '?')})" for k, v in st["per_family"].items()
               if not v["metrics"] and k != "random"]
        lines += ["", "## Per family", "", "ρ [95 % CI] within each family with at least 3 held-out rules (clusters)"
                  + (f"; too few rules for their own block: {', '.join(few)}" if few else "") + ".", "",
                  "| metric | " + " | ".join(f"{_md(k)} ({v['n_tasks']} tasks, {v.get('n_clusters', '?')} rules)"
                                          for k, v in fams.items()) + " |",
                  "|---|" + "---|" * len(fams)]
        for key in st["overall"]:
            cells = [_ci(v["metrics"].get(key) or {}) for v in fams.values()]
            if all(c == "–" for c in cells):
                continue  # not measured in any family: the first table says why
            lines.append(f"| {_md(labels.get(key, key))} | " + " | ".join(cells) + " |")
    lines += _reference_lines(summary.get("reference_table") or [])
    lines += _shift_lines(summary.get("shift_thresholds"))
    from traits import catalogue

    heads = " | ".join(f"OOD/ID {catalogue.metric(k).column or catalogue.metric(k).label}" for k in TASK_RATIOS)
    lines += ["", "## Tasks", "", "Mean over the seeds [95 % t interval over the seeds].", "",
              f"| task | family | target | held out | seeds | {heads} | verdicts |",
              "|---|---|---|---|---|" + "---|" * (len(TASK_RATIOS) + 1)]
    from traits.campaign import held_out_text

    by_task: dict[str, list[dict]] = {}
    for r in summary.get("rows") or []:
        by_task.setdefault(r["task"], []).append(r)
    for e in summary["tasks"]:
        mine = by_task.get(e["task"], [])
        cells = [_seed_text(seed_interval([r.get(k) for r in mine]))
                 for k in TASK_RATIOS]
        lines.append(f"| {_md(e['task'])} | {_md(e.get('family') or '–')} | {_md(e['target'])} | "
                     f"{_md(held_out_text(e))} | {len(e['seeds'])} | {' | '.join(cells)} | "
                     f"{_md('/'.join(str(v) for v in e['verdicts']))} |")
    return lines


#: The ratios of the per-task table (their headings come from the catalogue): the error and the two curvature
#: ratios the adopted study found to track it.
TASK_RATIOS = ("mae_ratio", "lambda_ratio", "trace_ratio")

#: The study summary's page (templates/): the audit report's stylesheet report.css, then study-summary.css.
TEMPLATE, STYLESHEET = "study-summary.html.j2", "study-summary.css"
#: The tallest a figure prints, in inches (the landscape A4 page holds about 6.8 in of text height).
PRINT_HEIGHT_IN = 5.6


#: Markdown rules the summary never uses and that would let a string reach the page as more than text: links,
#: images, autolinks, link reference definitions and raw HTML.
_MD_OFF = ("link", "image", "autolink", "reference", "html_inline", "html_block")


def markdown_html(md: str) -> str:
    """The summary's Markdown as HTML (headings, paragraphs, emphasis, tables). No link, image or raw HTML is
    rendered, whatever the text holds: those rules are off, and raw HTML in it is escaped, not passed."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").disable(list(_MD_OFF)).render(md)


def _section_id(heading: str, used: set) -> str:
    """The id of a summary section from its heading (:data:`SECTION_IDS`, else a slug), unique on the page."""
    import re

    sid = next((i for start, i in SECTION_IDS if heading.startswith(start)), None)
    sid = sid or re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")[:40] or "section"
    base, n = sid, 2
    while sid in used:
        sid, n = f"{base}-{n}", n + 1
    used.add(sid)
    return sid


def sections_html(md: str, row_ids: dict[str, list[str]] | None = None) -> tuple[str, list[tuple[str, str]]]:
    """The summary's Markdown sections as HTML for its page, and its contents as (id, heading) pairs: every
    ``##`` heading gets an id (:func:`_section_id`), every table the report's ``data`` class (``wide`` above 6
    columns), and the body rows of the first table of a section named in ``row_ids`` the ids given there, in order
    (the overview's links point at them). Rendered as :func:`markdown_html` renders: no link, image or raw HTML."""
    from markdown_it import MarkdownIt

    parser = MarkdownIt("commonmark", {"html": False}).enable("table").disable(list(_MD_OFF))
    tokens = parser.parse(md)
    row_ids = row_ids or {}
    contents: list[tuple[str, str]] = []
    used: set = set()
    section, tables, in_body, row = None, 0, False, 0
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open" and tok.tag == "h2":
            heading = "".join(c.content for c in (tokens[i + 1].children or []))
            section, tables = _section_id(heading, used), 0
            tok.attrSet("id", section)
            contents.append((section, heading))
        elif tok.type == "table_open":
            tables += 1
            columns = 0
            for nxt in tokens[i + 1:]:
                if nxt.type == "th_open":
                    columns += 1
                elif nxt.type == "tr_close":
                    break
            tok.attrSet("class", "data wide" if columns > 6 else "data")
        elif tok.type == "tbody_open":
            in_body, row = True, 0
        elif tok.type == "tbody_close":
            in_body = False
        elif tok.type == "tr_open" and in_body and tables == 1 and section in row_ids:
            ids = row_ids[section]
            if row < len(ids):
                tok.attrSet("id", ids[row])
            row += 1
    return parser.renderer.render(tokens, parser.options, {}), contents


def overview_rows(summary: dict) -> list[dict]:
    """The page's overview table: per measured metric, ρ, the partial ρ given the loss at θ, Δρ against the best
    distance baseline, the sample (clusters / tasks / audits) and :func:`reading` (every number as in the tables)."""
    labels = cat.labels()
    st = summary["statistics"]
    vs = (st.get("vs_best_baseline") or {}).get("metrics") or {}
    out = []
    for key, v in st["overall"].items():
        if not measured(v):
            continue
        d = vs.get(key) or {}
        delta = ("–" if d.get("diff") is None else f"{_f(d['diff'])} [{_f(d['low'])}, {_f(d['high'])}]"
                 if d.get("low") is not None else f"{_f(d['diff'])} (no interval)")
        words = reading(v)
        out.append({"key": key, "label": labels.get(key, key) + (" ↓" if v["expected_sign"] < 0 else ""),
                    "kind": v.get("kind") or "", "rho": _ci(v),
                    "partial": "–" if v.get("kind") == "error at θ (reference)" else _ci(
                        (v.get("partial") or {}).get("loss") or {}),
                    "delta": delta, "delta_link": d.get("diff") is not None,
                    "n": f"{v.get('n_clusters', '–')} / {v['n_tasks']} / {v['n_audits']}", "reading": words,
                    "level": "warn" if words == AGAINST else "pass"})
    return out


def _page(summary: dict, medium: str, figures: dict) -> str:
    from markupsafe import Markup

    import traits
    from traits.report.render import template_environment, templates_dir

    labels = cat.labels()
    st = summary["statistics"]
    vs = st.get("vs_best_baseline") or {}
    row_ids = {"metrics": [f"metric-{k}" for k in st["overall"]],
               "baseline": [f"baseline-{k}" for k, d in (vs.get("metrics") or {}).items() if d.get("diff") is not None]}
    # strings from the data are escaped Markdown; markdown-it escapes the rest
    body, contents = sections_html("\n".join(_summary_sections(summary)) + "\n", row_ids)
    contents = ([("overview", "Each metric at a glance")] + contents
                + [("forest", "ρ with its interval"), ("scatter", "OOD/ID ratio against OOD/ID error, by family")])
    root = templates_dir()
    css = "\n".join((root / name).read_text(encoding="utf-8") for name in ("report.css", STYLESHEET))
    return template_environment().get_template(TEMPLATE).render(
        s=summary, medium=medium, banner=banner(summary), conclusion=conclusion(summary), contents=contents,
        overview=overview_rows(summary), missing=[(labels.get(k, k), why) for k, why in not_measured(summary)],
        baseline=labels.get(vs.get("baseline"), vs.get("baseline")) if vs.get("baseline") else None,
        title=f"{summary['study_version']}, {summary['data_set']}: which metrics track the OOD error",
        running=f"{summary['study_version']} · {summary['data_set']}", body=Markup(body), version=traits.__version__,
        css=Markup(css), css_narrow=Markup((root / "report-narrow.css").read_text(encoding="utf-8")), **figures)


def write_study_summary(summary: dict, out: Path, pdf: bool = True) -> dict[str, Path]:
    """summary.json, summary.md, summary.html (plots embedded as SVG), summary.pdf (PNG plots; ``pdf``) and
    catalogue-evidence.json in ``out``. The page has the audit report's style (templates/report.css), the
    conclusion and the contents first, an overview table whose rows link to the full tables, and ids on every
    section. Everything is rendered before the first file is written."""
    from traits.report import figures as F
    from traits.study.stats import forest_figure, scatter_figure

    md = summary_markdown(summary)
    labels = cat.labels()
    # each figure drawn once, in the report's plotting style: SVG for the HTML page, PNG for the PDF
    with F.style():
        fig = forest_figure(summary["statistics"], labels)
        forest_height = float(fig.get_figheight())
        forest = F.encode(fig, svg=True, png_dpi=150 if pdf else None)
        fig = scatter_figure(summary["rows"], [m.name for m in cat.ranked()], labels)
        scatter_height = float(fig.get_figheight())
        scatter = F.encode(fig, svg=True, png_dpi=150 if pdf else None)

    heights = {"forest": forest_height, "scatter": scatter_height}

    def figs(kind: str) -> dict:
        # on the (landscape A4) page a figure is scaled to fit under its heading: at most PRINT_HEIGHT_IN tall
        return {name: {"src": getattr(enc, kind), "width": round(enc.width_in * (1.0 if kind == "svg" else min(
                    1.0, PRINT_HEIGHT_IN / heights[name])), 3)}
                for name, enc in (("forest", forest), ("scatter", scatter))}

    html_page = _page(summary, "screen", figs("svg"))
    pdf_bytes = None
    if pdf:
        from traits.report.render import html_to_pdf

        pdf_bytes = html_to_pdf(_page(summary, "print", figs("png")))
    out = ensure_dir(Path(out))
    paths = {"json": write_json_atomic(out / "summary.json", summary),
             "md": write_text_atomic(out / "summary.md", md),
             "evidence": write_json_atomic(out / "catalogue-evidence.json", evidence_json(summary)),
             "html": write_text_atomic(out / "summary.html", html_page)}
    if pdf_bytes is not None:
        from traits.files import write_bytes_atomic

        paths["pdf"] = write_bytes_atomic(out / "summary.pdf", pdf_bytes)
    return paths


def adopt_evidence(evidence: Path) -> Path:
    """Install a study's ``catalogue-evidence.json`` as the package's (:data:`traits.catalogue.EVIDENCE_FILE`),
    after checking it is a real study's (not a pipeline check) and readable by the catalogue."""
    raw = cat.read_evidence_file(Path(evidence))
    if not raw.get("metrics"):
        raise TraitsError(f"{evidence}: the evidence file measures no metric; nothing to adopt")
    if raw.get("pipeline_check", True):
        raise TraitsError(f"{evidence}: a pipeline check's evidence is never adopted (summarise with --evidence)")
    if raw.get("in_progress"):
        raise TraitsError(f"{evidence}: an interim summary of a study in progress is never adopted (summarise the "
                          "finished study without --in-progress)")
    target = write_json_atomic(cat.EVIDENCE_FILE, raw)
    cat.clear_cache()
    return target


def summarise_runs(runs: Path, out: Path, *, data_set: str | None, pipeline_check: bool, n_boot: int = 2000,
                   in_progress: bool = False, full_pool: Path | None = None, campaign: Path | None = None,
                   seeds: list[int] | None = None, profile: str | None = None, study_version: str = STUDY_VERSION,
                   log: Callable[[str], None] = lambda _m: None) -> dict:
    """Summarise ``runs``. An evidence summary (not a pipeline check, not ``in_progress``) describes a finished
    study: any audit of the grid (:func:`gaps`) still missing is an error, before anything is written."""
    unreadable: list[str] = []
    rows = collect_rows(runs, log, unreadable)
    if not pipeline_check and not in_progress:
        missing = gaps(runs, campaign, seeds) + [f"{where}: unreadable results.json" for where in unreadable]
        if missing:
            shown = "; ".join(missing[:5]) + (f"; and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise TraitsError(f"{runs}: not a finished study, {len(missing)} audits missing ({shown}); finish the "
                              "run, or summarise it with --in-progress (an interim summary, never adopted)")
    if not rows:
        raise TraitsError(f"{runs}: no finished task (no seed-*/TASK/results.json) to summarise")
    refs = full_pool_references(full_pool) if full_pool is not None else []
    summary = study_summary(rows, data_set=data_set, pipeline_check=pipeline_check, n_boot=n_boot, profile=profile,
                            in_progress=in_progress, full_pool=refs, study_version=study_version)
    write_study_summary(summary, out)
    log(f"study summary of {len(rows)} audits written to {out}")
    return summary


def watch(runs: Path, out: Path, every: float, log: Callable[[str], None] = lambda _m: None, rounds: int | None = None,
          **kw) -> None:
    """Rewrite the summary whenever the set of finished task folders changes (every ``every`` seconds)."""
    seen: tuple = ()
    done = 0
    while rounds is None or done < rounds:
        now = tuple(str(p) for p in result_paths(runs))
        if now and now != seen:
            # a study still running is summarised as interim; the round that sees it finished is not
            interim = kw.get("in_progress", False) or (not kw.get("pipeline_check", True) and bool(
                gaps(runs, kw.get("campaign"), kw.get("seeds"))))
            summarise_runs(runs, out, log=log, **{**kw, "in_progress": interim})
            seen = now
        done += 1
        if rounds is None or done < rounds:
            time.sleep(every)
