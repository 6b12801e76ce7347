"""Study v2's summary as a page: summary.html (figures as SVG) and summary.pdf (WeasyPrint, figures as PNG), from
:func:`traits.study.v2.analyse`'s dict, in study 1's summary style (templates/report.css, study-summary.css).

The page: the question and the registration, the sample, the deviations, a forest plot of every signal's AUROC
(lines at B1's AUROC and at 0.5), the Δ AUROC table, the Spearman tables per target, the trust score (what was
chosen, its nested-LORO AUROC, Δ over M0, the goal beside what was reached, what ships and why) with a reliability
diagram of the out-of-fold probabilities, the external test, Landscaper's claim, the per-audit rows, and a
conclusion generated from the numbers that calls weak results weak.

Every string from the data reaches the page through the template's autoescaping (nothing from the data is marked
safe); the figures are images (data URIs) whose text is drawn as outlines, with mathtext off.

- :func:`forest_rows`        the forest plot's rows (signals, then the trust score's candidates)
- :func:`forest_figure`      AUROC per signal with its interval
- :func:`reliability_figure` mean predicted against observed rate per bin, the diagonal, the count per bin
- :func:`conclusion`         the paragraph at the top
- :func:`pages`              {"html": str, "pdf": bytes}, rendered in memory
- :func:`render_summary`     summary.html and summary.pdf, written atomically (both or neither)
"""

from __future__ import annotations

import os
from pathlib import Path

from traits.study.v2_markdown import _f, _iv, _p, also_shipped, gates_block

__all__ = ["conclusion", "forest_figure", "forest_rows", "pages", "reliability_figure", "render_summary"]

TEMPLATE = "study-v2-summary.html.j2"
STYLESHEETS = ("report.css", "study-summary.css")
#: The tallest a figure prints, in inches (the landscape A4 page holds about 6.8 in of text height; at this the
#: forest plot fits under its heading on the page that holds the sample and the deviations).
PRINT_HEIGHT_IN = 4.2
PNG_DPI = 150
COLOURS = {"comparator": "#d62728", "candidate": "#1f77b4", "score": "#2ca02c", "undefined": "#7f7f7f"}
#: An interval at least this wide (AUROC units) is called wide in the conclusion.
WIDE = 0.25


# ----------------------------------------------------------------------------------------------
# Figures


def forest_rows(a: dict) -> list[dict]:
    """The forest plot's rows, top to bottom: every signal (its AUROC and interval, or why it has none), then the
    trust score's candidates and the chosen score by nested LORO (when the trust score ran)."""
    rows = []
    comparator = a["settings"].get("comparator", "B1")
    for sid, v in a["auroc"].items():
        d = a["signals"].get(sid) or {}
        group = "comparator" if sid == comparator else "candidate"
        why = None if v.get("auroc") is not None else (
            f"no AUROC: defined on {d.get('n_defined', 0)}/{d.get('n_audits', 0)} audits")
        rows.append({"label": f"{sid}  {v.get('key', '')}", "auroc": v.get("auroc"), "low": v.get("low"),
                     "high": v.get("high"), "group": group if why is None else "undefined", "why": why})
    t = a.get("trust_score") or {}
    if t.get("status") == "run":
        for c, v in t["per_candidate_loro_auroc"].items():
            rows.append({"label": f"{c} (nested LORO)", "auroc": v.get("auroc"), "low": v.get("low"),
                         "high": v.get("high"), "group": "score", "why": None})
        v = t["loro_auroc"]
        rows.append({"label": "trust score (chosen per fold)", "auroc": v.get("auroc"), "low": v.get("low"),
                     "high": v.get("high"), "group": "score", "why": None})
    return rows


def forest_figure(a: dict):
    """AUROC with its 95 % cluster-bootstrap interval per signal and per trust-score candidate (nested LORO), a
    dashed line at the comparator's AUROC and a dotted one at 0.5 (chance)."""
    from matplotlib.figure import Figure

    rows = forest_rows(a)
    fig = Figure(figsize=(6.6, 0.3 * max(4, len(rows)) + 1.1), layout="constrained")
    ax = fig.add_subplot()
    n = len(rows)
    for i, r in enumerate(rows):
        y = n - 1 - i
        if r["why"] is not None:
            ax.text(0.02, y, r["why"], va="center", ha="left", fontsize=7, color=COLOURS["undefined"],
                    style="italic")
            continue
        colour = COLOURS[r["group"]]
        if r["low"] is not None and r["high"] is not None:
            ax.plot([r["low"], r["high"]], [y, y], color=colour, lw=2, solid_capstyle="butt")
        ax.plot(r["auroc"], y, "o", color=colour, ms=5)
    b1 = (a["auroc"].get(a["settings"].get("comparator", "B1")) or {}).get("auroc")
    ax.axvline(0.5, color="black", lw=0.8, ls=":")
    if b1 is not None:
        ax.axvline(b1, color=COLOURS["comparator"], lw=0.9, ls="--")
    ax.set_yticks(range(n), [r["label"] for r in reversed(rows)], fontsize=7.5)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("AUROC for Y = [OOD/ID MAE ratio ≥ 2] (95 % cluster-bootstrap interval over held-out rules)",
                  fontsize=8)
    labels = {"comparator": "comparator (B1)", "candidate": "label-free candidate", "score": "trust score, nested LORO"}
    handles = [ax.plot([], [], "o-", color=COLOURS[k], label=v)[0] for k, v in labels.items()]
    handles += [ax.plot([], [], ls="--", color=COLOURS["comparator"], lw=0.9, label="B1's AUROC")[0],
                ax.plot([], [], ls=":", color="black", lw=0.8, label="chance (0.5)")[0]]
    fig.legend(handles=handles, fontsize=7, loc="outside lower center", ncols=3, frameon=False)
    return fig


def reliability_figure(panels: list[tuple[str, dict]]):
    """One reliability diagram per (title, calibration) panel: each equal-count bin's mean predicted probability
    against its observed rate of Y = 1 (the first line of each axes), the bin's range of predictions as a thin bar,
    its count beside it, and the diagonal (perfect calibration)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.3 * len(panels), 3.5), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, cal) in zip(axes, panels):
        bins = cal.get("bins") or []
        x = [b["mean_predicted"] for b in bins]
        y = [b["observed"] for b in bins]
        ax.plot(x, y, "o-", color=COLOURS["score"], ms=5, lw=1.2, label="bins", gid="reliability-bins")
        for b in bins:
            ax.plot([b["low"], b["high"]], [b["observed"]] * 2, color=COLOURS["score"], lw=0.7, alpha=0.6)
        ax.text(0.97, 0.03, "audits per bin, left to right:\n" + ", ".join(str(b["n"]) for b in bins),
                transform=ax.transAxes, ha="right", va="bottom", fontsize=6.5, color="#3a4a5c")
        ax.plot([0, 1], [0, 1], ls="--", color="#7f7f7f", lw=0.8, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.02, 1.05)
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=8.5)
        ax.set_xlabel("mean predicted probability", fontsize=8)
        ax.set_ylabel("observed rate of Y = 1", fontsize=8)
    axes[0].legend(fontsize=7, loc="upper left", frameon=False)
    return fig


def _figures(a: dict, png: bool) -> dict:
    """The page's figures, encoded once: {name: {"svg", "png", "width", "height"}}."""
    from traits.report import figures as F

    cal = reliability_panels(a)
    out = {}
    with F.style():
        for name, fig in (("forest", forest_figure(a)), ("reliability", reliability_figure(cal) if cal else None)):
            if fig is None:
                continue
            height = float(fig.get_figheight())
            enc = F.encode(fig, svg=True, png_dpi=PNG_DPI if png else None, salt=name)
            out[name] = {"svg": enc.svg, "png": enc.png, "width": enc.width_in,
                         "print_width": round(enc.width_in * min(1.0, PRINT_HEIGHT_IN / height), 3)}
    return out


def reliability_panels(a: dict) -> list[tuple[str, dict]]:
    """(title, calibration) of the trust score's out-of-fold probabilities and, when run, of the external test."""
    t = a.get("trust_score") or {}
    if t.get("status") != "run":
        return []
    panels = [("(a) MP, nested-LORO out-of-fold", t["calibration"])]
    e = a.get("external_test") or {}
    if e.get("status") == "run" and (e.get("calibration") or {}).get("bins"):
        panels.append(("(b) Perov-5, frozen score (external)", e["calibration"]))
    return panels


# ----------------------------------------------------------------------------------------------
# Tables


def signal_rows(a: dict) -> list[dict]:
    """The AUROC and Δ AUROC table: per signal its definedness, AUROC, sample, Δ over B1 with p and Holm p."""
    out = []
    for sid, v in a["auroc"].items():
        d = a["signals"].get(sid) or {}
        delta = v.get("delta_vs_B1") or {}
        out.append({"id": sid, "key": v.get("key", ""), "defined": f"{d.get('n_defined', 0)}/{d.get('n_audits', 0)}",
                    "excluded": bool(d.get("excluded")), "auroc": _iv(v, "auroc"),
                    "n": f"{v.get('n_audits', 0)} ({v.get('n_clusters', 0)})", "delta": _iv(delta, "delta"),
                    "p": _p(delta.get("p")), "p_holm": _p(delta.get("p_holm")),
                    "undefined": v.get("auroc") is None and not d.get("n_defined"),
                    "comparator": sid == a["settings"].get("comparator", "B1"),
                    "beats": bool(delta.get("low") is not None and delta["low"] > 0)})
    return out


def spearman_blocks(a: dict) -> list[dict]:
    """Per block (pooled, then each target): the rows of the signals defined on some task, and the others."""
    blocks = []
    for name, got in a["spearman"].items():
        rows, missing = [], []
        for sid, v in got.items():
            if v.get("rho") is None and not v.get("n_tasks"):
                missing.append(f"{sid} {v.get('key', '')}")
                continue
            rows.append({"id": sid, "key": v.get("key", ""), "n": f"{v.get('n_tasks', 0)} ({v.get('n_clusters', 0)})",
                         "rho": _iv(v, "rho"), "p": _p(v.get("p")), "p_holm": _p(v.get("p_holm")),
                         "partial": _iv((v.get("partial") or {}).get("B1"), "rho")})
        blocks.append({"name": name, "rows": rows, "missing": missing})
    return blocks


def labelled_rows(a: dict) -> list[dict]:
    return [{"key": key, "n": v.get("n_tasks", 0), "rho": _iv(v, "rho"), "p": _p(v.get("p")),
             "partial": _iv((v.get("partial") or {}).get("loss"), "rho")}
            for key, v in (a.get("labelled") or {}).items()]


def trust_block(a: dict) -> dict | None:
    """The trust score's numbers as the page states them; None when it did not run (the status says why)."""
    t = a.get("trust_score") or {}
    if t.get("status") != "run":
        return None
    chosen: dict = {}
    for f in t["folds"]:
        chosen[f["candidate"]] = chosen.get(f["candidate"], 0) + 1
    ev, score, sel, cal = t["evidence"], t["score"], t["selection_on_all"], t["calibration"]
    delta = t["delta_auroc_over_M0"]
    only_m0 = set(chosen) == {"M0"}
    return {"features": [(c, ", ".join(f)) for c, f in t["features"].items()],
            "folds": ", ".join(f"{c} in {n}" for c, n in sorted(chosen.items())), "n_folds": len(t["folds"]),
            "selected": sel["candidate"], "C": _g(sel["C"]), "shipped": score["candidate"],
            "default": bool(score.get("ships_as_default")),
            "per_candidate": [(c, _iv(v, "auroc")) for c, v in t["per_candidate_loro_auroc"].items()],
            "loro": _iv(t["loro_auroc"], "auroc"), "delta": _iv(delta, "delta"),
            "delta_note": "every outer fold chose M0, so the out-of-fold predictions are M0's and Δ is 0 by "
                          "construction" if only_m0 else "",
            "n": f"{ev['n_audits']} audits, {ev['n_rules']} rules, {ev['n_positive']} with Y = 1",
            "goal": ev["goal"], "goal_reached": bool(ev["goal_reached"]), "statement": score["statement"],
            "also": also_shipped(score),
            "brier": _f(cal.get("brier"), 3), "slope": _f(cal.get("slope")), "method": cal.get("method", ""),
            "bins": [{"i": i + 1, "n": b["n"], "range": f"{_f(b['low'])}–{_f(b['high'])}",
                      "predicted": _f(b["mean_predicted"]), "observed": _f(b["observed"])}
                     for i, b in enumerate(cal.get("bins") or [])]}


def _g(x) -> str:
    return "–" if x is None else f"{x:g}"


def external_block(a: dict) -> dict:
    e = a.get("external_test")
    if not e:
        return {"run": False, "status": "not run (no external audits given)"}
    if e.get("status") != "run":
        return {"run": False, "status": str(e.get("status"))}
    cal = e.get("calibration") or {}
    return {"run": True, "candidate": e.get("candidate"), "auroc": _iv(e["auroc"], "auroc"), "n_scored": e["n_scored"],
            "n_omission": e["n_omission_audits"], "n_clusters": e["n_clusters"],
            "n_positive": (e.get("auroc") or {}).get("n_positive"), "weak": bool(e.get("weak")),
            "note": e.get("note", ""), "brier": _f(cal.get("brier"), 3), "slope": _f(cal.get("slope")),
            "unscored": sorted((e.get("unscored_by_missing_feature") or {}).items()),
            "bins": [{"i": i + 1, "n": b["n"], "predicted": _f(b["mean_predicted"]), "observed": _f(b["observed"])}
                     for i, b in enumerate(cal.get("bins") or [])]}


def audit_rows(a: dict) -> tuple[list[str], list[dict], list[str]]:
    """The per-audit rows: the signal columns defined on some audit, the rows, and the signals left out."""
    keys = [(sid, v["key"]) for sid, v in a["signals"].items()]
    shown = [(sid, k) for sid, k in keys if any(r.get(k) is not None for r in a["rows"])]
    rows = [{"task": r.get("task"), "seed": r.get("seed"), "target": r.get("target"), "rule": r.get("rule"),
             "kind": r.get("kind"), "mae": _f(r.get("mae_ratio")), "y": "–" if r.get("y") is None else r["y"],
             "values": [_f(r.get(k), 3) for _, k in shown]} for r in a["rows"]]
    return [sid for sid, _ in shown], rows, [f"{sid} {k}" for sid, k in keys if (sid, k) not in shown]


# ----------------------------------------------------------------------------------------------
# Conclusion


def _auroc_words(v: dict | None) -> str:
    """An AUROC in words that never oversell it: its interval against chance and its width."""
    if not v or v.get("auroc") is None:
        return "not measured"
    if v.get("low") is None:
        return f"{_f(v['auroc'])} (no interval)"
    words = f"{_f(v['auroc'])} [{_f(v['low'])}, {_f(v['high'])}]"
    if v["low"] <= 0.5:
        return words + ", an interval that reaches chance (0.5)"
    if v["high"] - v["low"] >= WIDE:
        return words + ", above chance but with a wide interval"
    return words + ", above chance"


def _conclusion_signals(a: dict) -> list[str]:
    s, comp = a["sample"], a["settings"].get("comparator", "B1")
    cands = a["settings"].get("candidates") or []
    excluded = [c for c in cands if (a["signals"].get(c) or {}).get("excluded")]
    compared = [c for c in cands if c not in excluded]
    out = [f"On {s['n_omission_audits']} omission audits ({s['n_positive']} with Y = 1) over {s['n_rules']} "
           f"held-out rules, {comp} (the embedding kNN distance) has AUROC "
           f"{_auroc_words(a['auroc'].get(comp))}."]
    if excluded:
        out.append(f"{len(excluded)} of the {len(cands)} label-free candidates ({', '.join(excluded)}) are undefined "
                   f"on more than {100 * a['settings']['max_undefined']:.0f} % of the audits and enter no comparison"
                   + ("; none is left to compare." if not compared else "."))
    better = [c for c in compared if ((a["auroc"][c].get("delta_vs_B1") or {}).get("low") or 0) > 0
              and ((a["auroc"][c].get("delta_vs_B1") or {}).get("p_holm") or 1) < 0.05]
    if compared and better:
        out.append("Beating " + comp + " (Δ AUROC interval above 0, Holm p < 0.05): " + ", ".join(
            f"{c} by {_iv(a['auroc'][c]['delta_vs_B1'], 'delta')}" for c in better) + ".")
    elif compared:
        out.append(f"No compared candidate beats {comp} by the registered test (Δ AUROC interval above 0 and Holm "
                   "p < 0.05): " + "; ".join(
                       f"{c} Δ AUROC {_iv(a['auroc'][c].get('delta_vs_B1'), 'delta')}, Holm p "
                       f"{_p((a['auroc'][c].get('delta_vs_B1') or {}).get('p_holm'))}" for c in compared) + ".")
    return out


def _conclusion_score(a: dict) -> list[str]:
    t = a.get("trust_score") or {}
    if t.get("status") != "run":
        return [f"The trust score was {t.get('status', 'not run')}."]
    ev, score, cal = t["evidence"], t["score"], t["calibration"]
    ships = (f"{score['candidate']} ships as the default score (its Δ AUROC over M0 lies above 0)"
             if score.get("ships_as_default") else f"{score['candidate']} (B1 alone) ships as the score: no "
             "candidate beat B1 alone")
    out = [f"{ships}; the nested leave-one-rule-out AUROC is {_auroc_words(t['loro_auroc'])}, so the goal "
           f"({ev['goal']}) is {'reached' if ev['goal_reached'] else 'not reached'}."]
    slope = cal.get("slope")
    if slope is not None:
        spread = ("too extreme" if slope < 0.8 else "too timid" if slope > 1.25 else "about right")
        out.append(f"Its out-of-fold probabilities have Brier {_f(cal.get('brier'), 3)} and calibration slope "
                   f"{_f(slope)} (spread {spread}).")
    return out


def _conclusion_external(a: dict) -> list[str]:
    e = a.get("external_test") or {}
    if not e:
        return ["The external test on Perov-5 is not in this analysis: no external audits were given."]
    if e.get("status") != "run":
        return []
    cal = e.get("calibration") or {}
    bins = cal.get("bins") or []
    weak = ": weak evidence whichever way it falls, too few clusters." if e.get("weak") else "."
    out = [f"On Perov-5 the frozen score has AUROC {_auroc_words(e['auroc'])} ({e['n_scored']} audits, "
           f"{e['n_clusters']} clusters){weak}"]
    if bins:
        n = sum(b["n"] for b in bins)
        pred = sum(b["n"] * b["mean_predicted"] for b in bins) / n
        obs = sum(b["n"] * b["observed"] for b in bins) / n
        if abs(obs - pred) >= 0.1:
            out.append(f"Its probabilities are off there: a mean predicted {_f(pred)} against an observed rate of "
                       f"{_f(obs)} (Brier {_f(cal.get('brier'), 3)}); they do not transfer as probabilities.")
    return out


def _conclusion_claim(a: dict) -> list[str]:
    got = a.get("landscaper_claim") or {}
    states = {m: v.get("supported") for m, v in got.items()}
    if states and all(s is None for s in states.values()):
        return ["Landscaper's claim cannot be tested on these audits: SMAD is not defined on them."]
    return [f"Landscaper's claim ({m} SMAD): " + ("supported" if s else "not supported" if s is False
                                                  else "not testable") + "." for m, s in states.items()]


def _conclusion_gates(a: dict) -> list[str]:
    g = gates_block(a)
    if not g:
        return []
    if g["state"] != "evidence":
        return [f"Default gates of label-free audits: {g['state']}, so they decide nothing."]
    from traits import catalogue as cat
    from traits.study.summary import unstable_text

    unstable = [r["name"] for r in g["rows"] if r["reasons"] == [cat.UNSTABLE]]
    why = f" ({unstable_text(unstable)})" if unstable else ""
    return [f"Adopted, this study makes label-free audits fail by default on {g['fails']}{why}."]


def conclusion(a: dict) -> str:
    """The paragraph at the top of the page, from the numbers: what B1 reaches, whether any candidate beats it,
    what ships and how it compares with the goal, calibration, the external test, Landscaper's claim and the
    default gates of label-free audits."""
    parts = (_conclusion_signals(a) + _conclusion_score(a) + _conclusion_external(a) + _conclusion_claim(a)
             + _conclusion_gates(a))
    if a.get("deviations"):
        parts.append(f"{len(a['deviations'])} deviation(s) from the registration are listed below.")
    return " ".join(parts)


# ----------------------------------------------------------------------------------------------
# The page


def _registration(a: dict, out_dir: Path | None) -> dict:
    """The registration's path as given, and a relative link to it when it is a file of this checkout."""
    import traits

    path = str(a.get("registration") or "")
    root = Path(traits.__file__).resolve().parents[1]
    target = (root / path).resolve() if path else None
    href = None
    if out_dir is not None and target is not None and target.is_file() and target.is_relative_to(root):
        href = Path(os.path.relpath(target, Path(out_dir).resolve())).as_posix()
    return {"path": path, "href": href}


CONTENTS = [("question", "Question and registration"), ("sample", "Sample"), ("deviations", "Deviations"),
            ("signals", "AUROC per signal"), ("spearman", "Spearman ρ per task"), ("trust", "The trust score"),
            ("external", "External test (Perov-5)"), ("landscaper", "Landscaper's claim"),
            ("gates", "Default gates of label-free audits"), ("rows", "Per-audit rows")]


def _page(a: dict, medium: str, figures: dict, out_dir: Path | None) -> str:
    from markupsafe import Markup

    import traits
    from traits.report.render import template_environment, templates_dir

    root = templates_dir()
    css = "\n".join((root / name).read_text(encoding="utf-8") for name in STYLESHEETS)
    columns, rows, left_out = audit_rows(a)
    gates = gates_block(a)  # None for an analysis made before the label-free gates: no section, no contents line
    kind = "svg" if medium == "screen" else "png"
    figs = {name: {"src": f[kind], "width": f["width"] if medium == "screen" else f["print_width"]}
            for name, f in figures.items()}
    return template_environment().get_template(TEMPLATE).render(
        a=a, s=a["sample"], medium=medium, title=f"{a.get('study_version', 'study-2')}: can a label-free signal "
        "predict OOD failure?", running=str(a.get("study_version", "study-2")), registration=_registration(a, out_dir),
        conclusion=conclusion(a), contents=[c for c in CONTENTS if gates or c[0] != "gates"],
        signal_rows=signal_rows(a), spearman=spearman_blocks(a),
        labelled=labelled_rows(a), trust=trust_block(a), external=external_block(a), gates=gates,
        claims=list((a.get("landscaper_claim") or {}).values()), iv=_iv, columns=columns, rows=rows,
        left_out=left_out, figures=figs, version=traits.__version__, css=Markup(css),
        css_narrow=Markup((root / "report-narrow.css").read_text(encoding="utf-8")))


def pages(a: dict, out_dir=None, pdf: bool = True) -> dict[str, str | bytes]:
    """summary.html's text and (``pdf``) summary.pdf's bytes, rendered in memory; ``out_dir`` is where they will
    be written (for the relative link to the registration)."""
    figures = _figures(a, png=pdf)
    out: dict[str, str | bytes] = {"html": _page(a, "screen", figures, out_dir)}
    if pdf:
        from traits.report.render import html_to_pdf

        out["pdf"] = html_to_pdf(_page(a, "print", figures, out_dir))
    return out


def render_summary(analysis: dict, out_dir) -> dict[str, Path]:
    """``out_dir/summary.html`` and ``out_dir/summary.pdf``, both rendered first and then each written atomically
    (both or neither)."""
    from traits.files import write_formats_atomic

    return write_formats_atomic(Path(out_dir), "summary", pages(analysis, out_dir))
