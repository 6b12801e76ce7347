"""The Markdown of study v2's summary (:func:`traits.study.v2.analyse`'s dict). Every string from the data (task,
target, rule, family, feature names) goes through :func:`traits.report.formatting.markdown_literal`."""

from __future__ import annotations

from traits import catalogue as cat
from traits.report.formatting import markdown_literal as _md


def _f(x, d: int = 2) -> str:
    return "–" if x is None else f"{x:.{d}f}"


def _p(x) -> str:
    return "–" if x is None else (f"{x:.2g}" if x >= 1e-3 else f"{x:.1e}")


def _iv(v: dict | None, key: str) -> str:
    if not v or v.get(key) is None:
        return "–"
    if v.get("low") is None:
        return f"{_f(v[key])} (no interval)"
    return f"{_f(v[key])} [{_f(v['low'])}, {_f(v['high'])}]"


def _head(a: dict) -> list[str]:
    s = a["sample"]
    lines = [f"# {_md(a.get('study_version', 'study-2'))}: can a label-free signal predict OOD failure? "
             "(the registered v2 analysis)", "",
             f"Analysis as registered in `{a['registration']}`; generated {_md(a['generated_utc'])}. "
             f"Data: {_md(', '.join(s['data']))}. {s['n_audits']} audits: {s['n_omission_audits']} omission audits "
             f"with an outcome ({s['n_positive']} with OOD/ID MAE ≥ {a['settings']['mae_gate']:g}), "
             f"{s['n_tasks']} tasks, {s['n_rules']} held-out rules; {s['n_random_audits']} random splits (not in "
             f"the statistics); {s['n_without_outcome']} omission audits without an MAE ratio.", "",
             f"Intervals: {_md(a['settings']['interval'])}, clusters = {_md(a['settings']['cluster'])}.", "",
             "## Deviations from the registration", ""]
    if not a["deviations"]:
        return lines + ["None."]
    lines += ["| what | why |", "|---|---|"]
    return lines + [f"| {_md(d.get('what', ''))} | {_md(d.get('why', ''))} |" for d in a["deviations"]]


def _signals(a: dict) -> list[str]:
    lines = ["", "## Signals and AUROC (omission audits)", "",
             "AUROC for Y in the expected direction (larger = more risk); Δ over B1 paired on the same resamples; "
             "p one-sided (Δ > 0, cluster swap permutation), Holm across L1–L6, B2–B4. A signal undefined on more "
             f"than {100 * a['settings']['max_undefined']:.0f} % of the audits enters no comparison.", "",
             "| id | signal | defined | AUROC [95 %] | audits (rules) | Δ AUROC vs B1 [95 %] | p | p Holm |",
             "|---|---|---|---|---|---|---|---|"]
    for sid, v in a["auroc"].items():
        d = a["signals"][sid]
        delta = v.get("delta_vs_B1") or {}
        defined = f"{d['n_defined']}/{d['n_audits']}" + (" (excluded)" if d["excluded"] else "")
        lines.append(f"| {sid} | {_md(v['key'])} | {defined} | {_iv(v, 'auroc')} | {v.get('n_audits', 0)} "
                     f"({v.get('n_clusters', 0)}) | {_iv(delta, 'delta')} | {_p(delta.get('p'))} | "
                     f"{_p(delta.get('p_holm'))} |")
    return lines


def _spearman(a: dict) -> list[str]:
    lines = ["", "## Spearman ρ per task with the OOD/ID MAE ratio", "",
             "Per-task means over seeds; ρ and partial ρ given B1 with cluster-bootstrap intervals; p one-sided "
             "(cluster permutation), Holm across the candidates."]
    for block, got in a["spearman"].items():
        lines += ["", f"### {_md(block)}", "",
                  "| id | signal | tasks (rules) | ρ [95 %] | p | p Holm | partial ρ given B1 |",
                  "|---|---|---|---|---|---|---|"]
        for sid, v in got.items():
            part = (v.get("partial") or {}).get("B1")
            lines.append(f"| {sid} | {_md(v['key'])} | {v.get('n_tasks', 0)} ({v.get('n_clusters', 0)}) | "
                         f"{_iv(v, 'rho')} | {_p(v.get('p'))} | {_p(v.get('p_holm'))} | {_iv(part, 'rho')} |")
    if a.get("labelled"):
        lines += ["", "### Labelled signals (pooled; partial ρ given the loss at θ)", "",
                  "| signal | tasks | ρ [95 %] | p | partial ρ given loss |", "|---|---|---|---|---|"]
        for key, v in a["labelled"].items():
            lines.append(f"| {_md(key)} | {v.get('n_tasks', 0)} | {_iv(v, 'rho')} | {_p(v.get('p'))} | "
                         f"{_iv((v.get('partial') or {}).get('loss'), 'rho')} |")
    return lines


def _trust(a: dict) -> list[str]:
    t = a["trust_score"]
    lines = ["", "## The trust score (nested leave-one-rule-out)", ""]
    if t.get("status") != "run":
        return lines + [_md(t.get("status"))]
    chosen: dict = {}
    for f in t["folds"]:
        chosen[f["candidate"]] = chosen.get(f["candidate"], 0) + 1
    ev, score = t["evidence"], t["score"]
    lines += ["Features: " + "; ".join(f"{c} = {', '.join(_md(x) for x in f)}" for c, f in t["features"].items()),
              "", "Outer folds choosing each candidate: " + ", ".join(f"{c} {n}" for c, n in sorted(chosen.items())),
              "", f"- LORO AUROC of the out-of-fold predictions: {_iv(t['loro_auroc'], 'auroc')} "
              f"({ev['n_audits']} audits, {ev['n_rules']} rules, {ev['n_positive']} positives)",
              f"- Δ AUROC over M0's own out-of-fold predictions: {_iv(t['delta_auroc_over_M0'], 'delta')}"]
    lines += [f"- {c} alone (nested): {_iv(v, 'auroc')}" for c, v in t["per_candidate_loro_auroc"].items()]
    cal = t["calibration"]
    lines += [f"- Calibration: Brier {_f(cal['brier'], 3)}, slope {_f(cal['slope'])}", "",
              "| bin | audits | mean predicted | observed |", "|---|---|---|---|"]
    lines += [f"| {i + 1} | {b['n']} | {_f(b['mean_predicted'])} | {_f(b['observed'])} |"
              for i, b in enumerate(cal["bins"])]
    lines += ["", f"**What ships:** {_md(score['statement'])}"]
    lines += [f"- beside it: {_md(x)}" for x in also_shipped(score)]
    lines += ["", f"Goal ({_md(ev['goal'])}): {'reached' if ev['goal_reached'] else 'not reached'}."]
    return lines


def also_shipped(score: dict) -> list[str]:
    """The shipped score's models after the first, each with what it is for (the registered model without B4;
    the M0 fallback with its own LORO AUROC)."""
    out = []
    for m in (score.get("models") or [])[1:]:
        own = m.get("evidence") or {}
        what = own.get("role") or "for audits without the ensemble disagreement (one seed)"
        auc = f", LORO AUROC {_iv(own['loro_auroc'], 'auroc')}" if own.get("loro_auroc") else ""
        out.append(f"{m['name']} ({', '.join(m.get('features', []))}): {what}{auc}")
    return out


def _external(a: dict) -> list[str]:
    e = a.get("external_test")
    lines = ["", "## External test (Perov-5, frozen score)", ""]
    if not e:
        return lines + ["Not run (no external audits given)."]
    if e.get("status") != "run":
        return lines + [_md(e["status"])]
    cal = e["calibration"]
    return lines + [f"AUROC {_iv(e['auroc'], 'auroc')} on {e['n_scored']} of {e['n_omission_audits']} omission "
                    f"audits ({e['n_clusters']} clusters); Brier {_f(cal['brier'], 3)}, slope {_f(cal['slope'])}. "
                    + (_md(e["note"]) if e.get("weak") else "")]


def gates_block(a: dict) -> dict | None:
    """The label-free gate evidence as the page states it (:mod:`traits.study.v2_gates`); None without it."""
    g = a.get("label_free_gates")
    if not g:
        return None
    ev = g["evidence"]
    decided = cat.default_decisions(cat.evidence_from_raw(ev), mode="label-free")
    rows = []
    for name, e in ev["metrics"].items():
        sf = e.get("seed_firing")
        rows.append({"name": name, "signal": e["signal"], "rho": _iv(e, "rho"), "p": _p(e.get("p_holm")),
                     "partial": _iv(e["partial_control"], "rho"), "floor": _f(e.get("noise_floor")),
                     "fires": f"{sf['1']} / {sf['2']} / {sf['3']} of {sf['n_tasks']}" if sf else "no gate",
                     "reasons": decided.get(name), "decides": _decides(e, decided.get(name))})
    state = ("a pipeline check, not evidence" if ev["pipeline_check"] else
             "interim: not every task has its three seeds, not evidence" if ev["in_progress"] else "evidence")
    note = (f"Rule: {ev['rule']}. Sample: {ev['settings']['sample']} ({state}). Per-task Spearman ρ with the MAE "
            "ratio [cluster-bootstrap interval over held-out rules], Holm p, partial ρ given B1, the random-split "
            "noise floor (97.5 %), and the tasks whose gate fires on 1 / 2 / 3 of their three seeds.")
    return {"note": note, "state": state, "rows": rows,
            "fails": ", ".join(g["default_fails"]) or (
                "no landscape or distance metric" + ("" if state == "evidence" else " (a pipeline check decides "
                                                     "nothing)" if ev["pipeline_check"] else
                                                     " (interim evidence decides nothing)"))}


def _decides(entry: dict, why: list[str] | None) -> str:
    """What the rule makes of one metric's gate (``why``: its missed conditions from
    :func:`traits.catalogue.default_decisions`, None without a gate): "fails", "warns: <the conditions>", "the
    control (B1): warns" or "no gate"."""
    from traits.study.v2_gates import CONTROL

    if why is None:
        return "no gate"
    if entry.get("signal") == CONTROL:
        return "the control (B1): warns"
    return "fails" if not why else "warns: " + "; ".join(why)


def _gates(a: dict) -> list[str]:
    g = gates_block(a)
    if not g:
        return []
    lines = ["", "## Default gates of label-free audits", "", _md(g["note"]),
             "", "| metric | signal | ρ | p (Holm) | partial ρ given B1 | noise floor | fires on 1 / 2 / 3 seeds | "
             "by default |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {_md(r['name'])} | {_md(r['signal'])} | {r['rho']} | {r['p']} | {r['partial']} | {r['floor']} | "
              f"{r['fires']} | {_md(r['decides'])} |" for r in g["rows"]]
    return lines + ["", f"Adopted, this evidence makes label-free audits fail by default on: {_md(g['fails'])}."]


def _rows(a: dict) -> list[str]:
    keys = [v["key"] for v in a["signals"].values()]
    lines = ["", "## Per-audit rows", "", "| task | seed | target | rule | kind | MAE ratio | Y | "
             + " | ".join(a["signals"]) + " |", "|" + "---|" * (7 + len(keys))]
    for r in a["rows"]:
        vals = " | ".join(_f(r.get(k), 3) for k in keys)
        lines.append(f"| {_md(r.get('task'))} | {r.get('seed')} | {_md(r.get('target'))} | {_md(r.get('rule'))} | "
                     f"{_md(r.get('kind'))} | {_f(r.get('mae_ratio'))} | {'–' if r.get('y') is None else r['y']} | "
                     f"{vals} |")
    return lines


def markdown(a: dict) -> str:
    claim = ["", "## Landscaper's claim", ""] + [f"- {_md(v['answer'])} AUROC {_iv(v['auroc'], 'auroc')}; Δ AUROC "
                                                 f"over B1 {_iv(v['delta_auroc_vs_B1'], 'delta')}."
                                                 for v in a["landscaper_claim"].values()]
    parts = _head(a) + _signals(a) + _spearman(a) + _trust(a) + _external(a) + claim + _gates(a) + _rows(a)
    return "\n".join(parts) + "\n"
