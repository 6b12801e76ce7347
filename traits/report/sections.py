"""The sections of a report, in one registry.

A :class:`Section` names everything a report section needs: its anchor id, its heading, the template
that renders it, the function that builds its part of the template context from an
:class:`~traits.results.AuditResult`, and the figures it shows (names in :data:`FIGURES`, each a
function from a result to a matplotlib Figure or None). Adding a section is one template plus one
entry in :data:`SECTIONS`; the table of contents, the numbered headings, the figures drawn and the
template context all follow from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from traits import catalogue as _catalogue
from traits.report.formatting import (
    fmt_num,
    host_summary,
    kernel_summary,
    ordered_splits,
    portable_command,
    portable_path,
    portable_spec,
)
from traits.report.uncertainty import uncertainty_context, uncertainty_figure
from traits.results import AuditResult

Context = Callable[[AuditResult], dict[str, Any]]
FigureBuilder = Callable[[AuditResult], Any]


@dataclass(frozen=True)
class Section:
    id: str
    heading: str
    template: str
    context: Context | None = None
    figures: tuple[str, ...] = ()
    numbered: bool = True


def ratio_info() -> dict[str, tuple[str, str]]:
    """OOD/ID ratios of the catalogue (errors and landscape): label and the direction in which a ratio means "worse
    out of distribution" ("high" / "low": above / below 1; "negative": a difference, worse below 0). Read when
    called: a metric added to the catalogue is labelled without a change here."""
    return {m.name: (m.report_label, m.worse) for m in _catalogue.catalogue()
            if m.kind != "distance baseline" and m.source and m.unit != "fraction"}


def shift_ratio_info() -> dict[str, tuple[str, str]]:
    """Domain-shift ratios (shown in their own section, not among the landscape ratios)."""
    return {m.name: (m.report_label, m.worse) for m in _catalogue.catalogue() if m.kind == "distance baseline"}


#: The two above for the catalogue as imported.
RATIO_INFO = ratio_info()
SHIFT_RATIO_INFO = shift_ratio_info()


def ratio_label(key: str) -> str:
    info = ratio_info().get(key) or shift_ratio_info().get(key)
    return info[0] if info else key.removesuffix("_ratio").replace("_", " ")


# ----------------------------------------------------------------------------------------------
# Shared helpers


def loss_at_theta(result: AuditResult, split: str) -> float | None:
    """L(θ) of a split as the surfaces saw it: the curve at α = 0, else the grid centre, else metrics."""
    surf = result.surface
    if surf is not None:
        curves = surf.curves.get(split) or []
        if curves and surf.alphas_1d:
            i = min(range(len(surf.alphas_1d)), key=lambda k: abs(surf.alphas_1d[k]))
            for curve in curves:
                if i < len(curve) and curve[i] is not None:
                    return curve[i]
        grid = surf.grids.get(split) or []
        if grid and surf.alphas_2d:
            i = min(range(len(surf.alphas_2d)), key=lambda k: abs(surf.alphas_2d[k]))
            if i < len(grid) and i < len(grid[i]) and grid[i][i] is not None:
                return grid[i][i]
    m = result.metrics.get(split)
    return m.loss if m else None


def interval_of(result: AuditResult, key: str) -> dict[str, Any] | None:
    """``result.ratio_intervals[key]`` as {low, high, status, kind} when the result carries one (kind: what the
    interval is, :func:`traits.report.formatting.interval_kind`; '' without a bracket)."""
    from traits.report.headline import stored_interval, stored_kind

    low, high, status = stored_interval(result, key)
    if low is None and high is None and not status:
        return None
    return {"low": low, "high": high, "status": status,
            "kind": stored_kind(result, key) if low is not None or high is not None else ""}


# ----------------------------------------------------------------------------------------------
# Figures: name -> builder (None when the result has no data for it)


def _fig_ratios(result: AuditResult):
    from traits.report import figures as F

    points = summary_ratio_points(result)
    return F.ratio_figure(points) if points else None


def summary_ratio_points(result: AuditResult, series: str = "") -> list[Any]:
    """The OOD/ID ratios of the summary figure: every gated ratio, then the other landscape ratios."""
    from traits.report.figures import RatioPoint
    from traits.report.headline import ratio_value

    gates = {g.name: g for g in result.gates}
    keys = [g.name for g in result.gates if g.name.endswith("_ratio")]
    keys += [k for k in ("loss_ratio", "basin_area_ratio", "plane_basin_area_ratio", "first_jump_ratio")
             if k not in keys]
    points = []
    for key in keys:
        v = ratio_value(result, key)
        if v.value is None or v.value <= 0:
            continue
        g = gates.get(key)
        points.append(RatioPoint(label=ratio_label(key), value=v.value, low=v.low, high=v.high,
                                 threshold=g.threshold if g else None, level=g.level if g and g.value is not None
                                 else "", series=series))
    return points


def _fig_parity(result: AuditResult):
    from traits.report import figures as F

    panels = [
        F.ParityData(s, acc.targets, acc.predictions, acc.mae, acc.r2)
        for s in ("id", "ood")
        if (acc := result.accuracy.get(s)) is not None and acc.targets and acc.predictions
    ]
    return F.parity_figure(panels, result.unit, result.target) if panels else None


def _fig_elements(result: AuditResult):
    """MAE per element for ID and OOD on one colour scale (needs the stored formulas; none when label-free)."""
    from traits.report import figures as F
    from traits.report.compounds import element_errors

    panels = {s: {el: (e.mae, e.n) for el, e in errs.items()}
              for s in ("id", "ood") if (errs := element_errors(result, s))}
    return F.element_heatmap_figure(panels, result.unit) if panels else None


def _fig_shift(result: AuditResult):
    from traits.report import figures as F

    sh = result.shift
    if sh is None or not any(smp.targets or smp.distances for smp in sh.samples.values()):
        return None
    return F.shift_figure(
        {s: sh.samples[s].targets for s in ordered_splits(sh.samples)},
        {space: {s: sh.samples[s].distances[space] for s in ordered_splits(sh.samples)
                 if space in sh.samples[s].distances}
         for space in ("composition", "embedding")
         if any(space in smp.distances for smp in sh.samples.values())},
        result.unit, result.target, sh.k,
        band=(sh.splits["train"].targets.quantiles.get("q01"), sh.splits["train"].targets.quantiles.get("q99"))
        if "train" in sh.splits else None)


def _hessians(result: AuditResult):
    return {s: result.hessian[s] for s in ordered_splits(result.hessian)}


def _fig_eigenvalues(result: AuditResult):
    from traits.report import figures as F

    eig = {s: h.top_eigenvalues for s, h in _hessians(result).items() if h.top_eigenvalues}
    return F.eigenvalue_figure(eig, F.loss_unit(result.unit, result.loss)) if eig else None


def _fig_density(result: AuditResult):
    from traits.report import figures as F

    dens = {s: (h.density.grid, h.density.density) for s, h in _hessians(result).items()
            if h.density and h.density.grid}
    return F.density_figure(dens, F.loss_unit(result.unit, result.loss)) if dens else None


def _fig_surface_2d(result: AuditResult):
    from traits.report import figures as F

    surf = result.surface
    if surf is None or not surf.alphas_2d:
        return None
    grids = {s: surf.grids[s] for s in ordered_splits(surf.grids) if surf.grids[s]}
    if not grids:
        return None
    loss0 = {s: loss_at_theta(result, s) for s in grids}
    return F.surface_2d_figure(surf.alphas_2d, grids, loss0, surf.tolerance, F.loss_unit(result.unit, result.loss),
                               band=surf.band, outline=result.mode != "label-free")


def _fig_zoom_2d(result: AuditResult):
    from traits.report import figures as F

    surf = result.surface
    if surf is None or not surf.zoom_alphas_2d:
        return None
    grids = {s: surf.zoom_grids[s] for s in ordered_splits(surf.zoom_grids) if surf.zoom_grids[s]}
    if not grids:
        return None
    loss0 = {s: loss_at_theta(result, s) for s in grids}
    return F.surface_2d_figure(surf.zoom_alphas_2d, grids, loss0, surf.tolerance,
                               F.loss_unit(result.unit, result.loss), band=surf.band,
                               outline=result.mode != "label-free")


def _fig_plane_2d(result: AuditResult):
    from traits.report import figures as F

    surf = result.surface
    if surf is None or not surf.alphas_2d:
        return None
    planes = {s: surf.plane_grids[s] for s in ordered_splits(surf.plane_grids) if surf.plane_grids[s]}
    if not planes:
        return None
    loss0 = {s: loss_at_theta(result, s) for s in planes}
    return F.plane_2d_figure(surf.alphas_2d, planes, loss0, surf.tolerance, band=surf.band)


def _fig_curves_1d(result: AuditResult):
    from traits.report import figures as F

    surf = result.surface
    if surf is None or not surf.alphas_1d:
        return None
    sets = []
    for s in ordered_splits(surf.curves):
        if not surf.curves[s]:
            continue
        m = result.metrics.get(s)
        sets.append(F.CurveSet(
            split=s, curves=surf.curves[s], loss0=loss_at_theta(result, s),
            radius=m.robust_radius if m else None, censored=bool(m and m.robust_radius_censored),
            radius_per_direction=m.radius_per_direction if m else (),
            jumps=getattr(surf.landscape.get(s), "jumps_1d", None) or (),
        ))
    return F.curves_1d_figure(surf.alphas_1d, sets, surf.tolerance, band=surf.band) if sets else None


def _fig_persistence(result: AuditResult):
    from traits.report import figures as F

    surf = result.surface
    if surf is None or not surf.topology:
        return None
    ordered = {name: {s: splits[s] for s in ordered_splits(splits)} for name, splits in surf.topology.items()}
    return F.persistence_figure(ordered)


def _label_free_parts(result: AuditResult) -> dict[str, Any]:
    lf = getattr(result, "label_free", None)
    return {s: lf.splits[s] for s in ordered_splits(lf.splits)} if lf is not None else {}


def _fig_label_free_2d(result: AuditResult):
    """The label-free 2D surfaces (the mean squared change of the predictions) per split, one colour scale."""
    from traits.report import figures as F

    lf = getattr(result, "label_free", None)
    if lf is None or not lf.alphas_2d:
        return None
    grids = {s: part.grid for s, part in _label_free_parts(result).items() if part.grid}
    if not grids:
        return None
    return F.surface_2d_figure(lf.alphas_2d, grids, {}, 0.0, F.loss_unit(result.unit, "mse"), outline=False,
                               quantity="L₀")


def _fig_grad_norms(result: AuditResult):
    """Histograms of the per-structure gradient norms ‖∇θ f‖, per split."""
    from traits.report import figures as F

    norms = {s: part.grad_norms for s, part in _label_free_parts(result).items() if part.grad_norms}
    return F.grad_norm_figure(norms, result.unit) if norms else None


FIGURES: dict[str, FigureBuilder] = {
    "ratios": _fig_ratios,
    "parity": _fig_parity,
    "elements": _fig_elements,
    "shift": _fig_shift,
    "eigenvalues": _fig_eigenvalues,
    "density": _fig_density,
    "surface_2d": _fig_surface_2d,
    "zoom_2d": _fig_zoom_2d,
    "curves_1d": _fig_curves_1d,
    "plane_2d": _fig_plane_2d,
    "persistence": _fig_persistence,
    "uncertainty": uncertainty_figure,
    "label_free_2d": _fig_label_free_2d,
    "grad_norms": _fig_grad_norms,
}


# ----------------------------------------------------------------------------------------------
# Context builders, one per section that needs more than the result itself


def summary_context(result: AuditResult) -> dict[str, Any]:
    from traits.report.glance import glance
    from traits.report.headline import flagged, headlines, interval_of_finding

    findings = flagged(result)
    card = result.spec.get("card") or {}
    rows = headlines(result)
    flagged_rows = [{"finding": f, "ratio": interval_of_finding(result, f)} for f in findings]
    values = [v for h in rows for v in (h.id, h.ood, h.ratio)] + [x["ratio"] for x in flagged_rows
                                                                  if x["ratio"] is not None]
    sources = {v.source for v in values if v.has_interval}
    return {"summary": {
        "glance": glance(result),
        "headlines": rows,
        "sources": sorted(sources),
        "kinds": list(dict.fromkeys(v.kind for v in values if v.has_interval and v.kind)),
        "flagged": flagged_rows,
        "n_fail": sum(f.level == "fail" for f in result.findings),
        "n_warn": sum(f.level == "warn" for f in result.findings),
        "n_more": sum(f.level in ("fail", "warn") for f in result.findings) - len(findings),
        "case": next((f for f in result.findings if f.id == "domain_shift"), None),
        "intended_use": card.get("intended_use") if isinstance(card, dict) else None,
    }}


def verdict_context(result: AuditResult) -> dict[str, Any]:
    """The kind of the bracket each gate's finding prints (its stored ratio interval), by finding id."""
    from traits.report.headline import stored_kind

    kinds = {}
    for g in result.gates:
        lo, hi = g.low, g.high
        if lo is not None and hi is not None and not (lo == hi == g.value) and (kind := stored_kind(result, g.name)):
            kinds[g.name] = kind
    return {"finding_kinds": kinds}


def provenance_context(result: AuditResult) -> dict[str, Any]:
    p = result.provenance
    spec_path = p.spec_path
    card = result.spec.get("card")
    return {
        "checkpoint_name": portable_path(p.checkpoint_path, spec_path) if p.checkpoint_path else "",
        "data_source_name": portable_path(p.data_source, spec_path),
        "card": card if isinstance(card, dict) and any(card.values()) else None,
    }


def splits_context(result: AuditResult) -> dict[str, Any]:
    counted = (e for st in result.splits.values() for e in st.with_omitted)
    return {"split_names": ordered_splits(result.splits),
            "omitted_columns": list(dict.fromkeys([*result.omit, *counted]))}


def accuracy_context(result: AuditResult) -> dict[str, Any]:
    from traits.report.compounds import compounds_context
    from traits.report.headline import mae_value

    return {"accuracy_splits": ordered_splits(result.accuracy),
            "mae_intervals": {s: mae_value(result, s) for s in result.accuracy},
            **compounds_context(result)}


def shift_context(result: AuditResult) -> dict[str, Any]:
    """Rows of the domain-shift table (train / ID test / OOD / OOD:ID) and the verdict's case finding."""
    sh = result.shift
    if sh is None:
        return {"shift": None}
    cols = [s for s in ("train", "id", "ood") if s in sh.splits]
    sp = sh.splits
    unit = f" ({result.unit})" if result.unit else ""

    def row(label, get, ratio_key=None, digits=4, percent=False, note=""):
        values = []
        for s in cols:
            try:
                values.append(get(sp[s]))
            except (KeyError, AttributeError):
                values.append(None)
        return {"label": label, "values": values, "ratio": sh.ratios.get(ratio_key) if ratio_key else None,
                "has_ratio": ratio_key is not None, "percent": percent, "digits": digits, "note": note}

    q = lambda key: (lambda x: x.targets.quantiles.get(key))  # noqa: E731
    groups = [
        ("Targets" + unit, [
            row("compounds", lambda x: x.targets.n),
            row("mean", lambda x: x.targets.mean),
            row("standard deviation", lambda x: x.targets.std),
            row("1st percentile", q("q01")),
            row("median", q("q50")),
            row("99th percentile", q("q99")),
            row("outside the training range", lambda x: x.outside_range, percent=True),
            row("outside the training 1st–99th percentiles", lambda x: x.outside_p01_p99, percent=True),
            row("KS statistic vs train (p-value)", lambda x: None if x.ks_statistic is None else
                f"{fmt_num(x.ks_statistic, 3)} ({fmt_num(x.ks_pvalue, 2)})", "target_ks_ratio"),
            row("Wasserstein distance to train" + unit, lambda x: x.wasserstein, "target_wasserstein_ratio"),
            row("… in training standard deviations", lambda x: x.wasserstein_std),
        ]),
    ]
    for space, title in (("composition", "Composition: mean distance to the k nearest training compounds"),
                         ("embedding", "Embedding: mean distance to the k nearest training compounds")):
        if not any(space in sp[s].distances for s in cols):
            continue
        groups.append((title, [
            row("median", lambda x, sp_=space: x.distances[sp_].median, f"{space}_knn_ratio"),
            row("90th percentile", lambda x, sp_=space: x.distances[sp_].p90, f"{space}_knn_p90_ratio"),
            row("compounds measured", lambda x, sp_=space: x.distances[sp_].n),
            row("left out (non-finite vector)", lambda x, sp_=space: x.distances[sp_].n_excluded),
        ]))
    case = next((f for f in result.findings if f.id == "domain_shift"), None)
    return {"shift": {"cols": cols, "groups": groups, "case": case,
                      "spaces": [s for s in ("composition", "embedding") if any(s in sp[c].distances for c in cols)]}}


def hessian_context(result: AuditResult) -> dict[str, Any]:
    return {"hessian_splits": ordered_splits(result.hessian),
            "k_max": max((len(h.top_eigenvalues) for h in result.hessian.values()), default=0)}


def _nonfinite(result: AuditResult) -> list[dict[str, Any]]:
    """Where the surfaces hold no finite loss: per split, counts and coordinates."""
    surf = result.surface
    if surf is None:
        return []
    rows = []
    for s in ordered_splits([*surf.curves, *(k for k in surf.grids if k not in surf.curves)]):
        grid_points = [
            (surf.alphas_2d[i] if i < len(surf.alphas_2d) else math.nan,
             surf.alphas_2d[j] if j < len(surf.alphas_2d) else math.nan)
            for i, row in enumerate(surf.grids.get(s) or []) for j, v in enumerate(row) if v is None
        ]
        curve_points = [
            (d + 1, surf.alphas_1d[i] if i < len(surf.alphas_1d) else math.nan)
            for d, curve in enumerate(surf.curves.get(s) or []) for i, v in enumerate(curve) if v is None
        ]
        n_grid = sum(len(r) for r in surf.grids.get(s) or [])
        n_curve = sum(len(c) for c in surf.curves.get(s) or [])
        if grid_points or curve_points:
            rows.append({
                "split": s, "grid": grid_points, "n_grid": n_grid, "curve": curve_points, "n_curve": n_curve,
            })
    return rows


def surfaces_context(result: AuditResult) -> dict[str, Any]:
    from traits.report.figures import LOG_SCALE_SPAN, MAX_DIRECTIONS, label_free_scale, plane_scale, surface_scale

    surf = result.surface
    scale = plane = None
    if surf is not None and surf.grids:
        grids = {s: g for s, g in surf.grids.items() if g}  # a label-free surface is 0 at θ: its own scale
        scale = label_free_scale(grids) if result.mode == "label-free" else surface_scale(grids)
    if surf is not None and surf.plane_grids:
        grids = {s: g for s, g in surf.plane_grids.items() if g}
        plane = plane_scale(grids, {s: loss_at_theta(result, s) for s in grids}) if grids else None
    landscape, shift, own = ratio_info(), shift_ratio_info(), label_free_names()
    ratios = [
        {"key": k, "label": ratio_label(k), "worse": landscape.get(k, ("", ""))[1], "value": v,
         "interval": interval_of(result, k)}
        for k, v in result.ratios.items() if k not in shift and k not in own
    ]
    plane_info = surf.plane if surf is not None and surf.plane else {}
    lam_min = plane_info.get("lambda_min") if isinstance(plane_info, dict) else None
    return {
        "metric_splits": ordered_splits(result.metrics),
        "ratios": ratios,
        "any_ratio_interval": any(q["interval"] for q in ratios),
        "ratio_kinds": list(dict.fromkeys(q["interval"]["kind"] for q in ratios
                                          if q["interval"] and q["interval"]["kind"])),
        "basin_evidence": basin_evidence(),
        "nonfinite": _nonfinite(result),
        "surface_scale": scale,
        "plane_scale": plane,
        "plane_negative": lam_min is not None and isinstance(lam_min, (int, float)) and lam_min < 0,
        "plane_certified": bool(plane_info.get("converged_min")) and bool(plane_info.get("converged_max")),
        "log_span": LOG_SCALE_SPAN,
        "n_directions": max((len(c) for c in surf.curves.values()), default=0) if surf is not None else 0,
        "curve_jumps": sum(len(p) for st in (surf.landscape.values() if surf is not None else ())
                           for p in st.jumps_1d[:MAX_DIRECTIONS]),
        "max_directions": MAX_DIRECTIONS,
        "topology": topology_rows(result),
    }


def basin_evidence() -> dict[str, Any] | None:
    """What the adopted study measured about the basin-area ratio, whose expected reading (below 1 is worse) the
    study contradicts: ρ with the OOD/ID error ratio and its interval, the partial ρ given the loss at θ; None when
    the study did not measure it."""
    ev = _catalogue.evidence("basin_area_ratio")
    if ev is None or ev.rho is None or ev.pipeline_check:
        return None
    return {"rho": ev.rho, "low": ev.low, "high": ev.high, "partial": ev.partial, "study": ev.study_version,
            "data_set": ev.data_set, "n_tasks": ev.n_tasks,
            "opposite": ev.low is not None and ev.low > 0}  # expected ρ < 0 (smaller is worse); measured > 0


def topology_rows(result: AuditResult) -> list[dict[str, Any]]:
    """One row per 2D surface (plane, split) with its topology, or the reason it has none."""
    from traits.report.figures import PLANE_TITLES

    surf = result.surface
    rows = []
    for name, splits in (surf.topology.items() if surf is not None else ()):
        for split in ordered_splits(splits):
            rows.append({"plane": PLANE_TITLES.get(name, name), "split": split, **splits[split]})
    return rows


def label_free_names() -> tuple[str, ...]:
    """The ratios of the label-free section: the catalogue's label-free metrics (stage "label_free") and the
    embedding-density gap, read when called."""
    return tuple(m.name for m in _catalogue.catalogue() if m.stage == "label_free" or m.source == "shift.density")


#: The rows of the label-free table: (catalogue metric whose per-split quantity the row shows, label, unit kind:
#: "sq" the target unit squared, "unit" the target unit, "" none).
_LF_ROWS = (("gn_lambda_ratio", "Gauss-Newton λ<sub>max</sub>", "sq"),
            ("gn_trace_ratio", "Gauss-Newton trace", "sq"),
            ("grad_norm_ratio", "median gradient norm ‖∇<sub>θ</sub>f‖", "unit"),
            ("lf_sharpness_ratio", "prediction sharpness at r", "sq"),
            ("lf_smad_ratio", "SMAD of the label-free surface", "sq"),
            ("lf_persistence_ratio", "persistence range of the label-free surface", "sq"),
            ("embedding_density_gap", "embedding −log-likelihood (per compound)", ""))


def _lf_rows(result: AuditResult, splits: list[str]) -> list[dict[str, Any]]:
    """Per quantity: its label, unit and each split's value (a headline Value with the jackknife interval)."""
    from markupsafe import Markup

    from traits.report.figures import loss_unit
    from traits.report.headline import LABEL_FREE_JACKKNIFE, split_value

    units = {"sq": loss_unit(result.unit, "mse"), "unit": result.unit or "target units", "": "nats"}
    lf = result.label_free
    rows = []
    for name, label, unit in _LF_ROWS:
        m = _catalogue.metric(name)
        values = [split_value(result, m, s) for s in splits]
        jack = LABEL_FREE_JACKKNIFE.get(m.split_key, "")
        se = [getattr(getattr(lf.splits.get(s), jack, None), "stderr", None) if jack and lf is not None else None
              for s in splits]
        if any(v.value is not None for v in values):
            rows.append({"key": name, "label": Markup(label), "unit": units[unit], "values": values, "se": se})
    return rows


def label_free_evidence_note(keys) -> dict[str, Any] | None:
    """What the adopted label-free evidence (:data:`traits.catalogue.LABEL_FREE_EVIDENCE_FILE`) says of the ratios
    ``keys``: the study, the ratios whose per-task ρ with the MAE ratio and partial ρ given the control both have
    intervals above 0 in their expected direction (``tracked``, report labels), the control, and the gated
    landscape or distance metrics a label-free audit fails on by default (``fails``: the gates' own rule, seed
    stability included); None without real adopted evidence (absent, a pipeline check, interim)."""
    from markupsafe import Markup

    metrics = {m.name: m for m in _catalogue.catalogue(mode="label-free")}
    real = [metrics[k] for k in keys if k in metrics and metrics[k].evidence is not None
            and not metrics[k].evidence.pipeline_check and not metrics[k].evidence.in_progress
            and metrics[k].evidence.rho is not None]
    if not real:
        return None

    clear = _catalogue.clear_of_zero
    tracked = [m for m in real if clear(m.evidence.low, m.evidence.high, m.direction)
               and clear(m.evidence.partial[1], m.evidence.partial[2], m.direction)]
    return {"study": real[0].evidence.study_version, "control": real[0].evidence.control,
            "tracked": [Markup(m.report_label or m.name) for m in tracked],
            "fails": [Markup(metrics[n].report_label or n) for n in _catalogue.default_fail_on(mode="label-free")
                      if _catalogue.is_predictor(metrics[n])]}


def label_free_context(result: AuditResult) -> dict[str, Any]:
    """The label-free section: per-split table, the OOD/ID ratios with their intervals, and the trust risk."""
    from traits.report.figures import LABEL_FREE_DECADES, loss_unit
    from traits.report.glance import risk_baseline_only, risk_interval_kind, risk_sentence

    lf = getattr(result, "label_free", None)
    risk = getattr(result, "trust_risk", None)
    risk_view = None if risk is None else {
        "risk": risk, "sentence": risk_sentence(result), "baseline_only": risk_baseline_only(risk),
        "interval_kind": risk_interval_kind(risk)}
    if lf is None:
        return {"lf": {"run": False, "risk": risk_view, "problems": []}}
    parts = _label_free_parts(result)
    splits = list(parts)
    info = {m.name: m for m in _catalogue.catalogue()}
    ratios = [{"key": k, "label": info[k].report_label, "worse": info[k].worse, "value": result.ratios.get(k),
               "interval": interval_of(result, k), "unit": info[k].unit}
              for k in label_free_names() if k in result.ratios]
    rows = _lf_rows(result, splits)
    from traits.report.compounds import column_note, sensitive_compounds

    sensitive = {s: sensitive_compounds(result, s) for s in ("ood", "id") if s in parts}
    sensitive = {s: v for s, v in sensitive.items() if v}
    sensitive_extra = list(dict.fromkeys(c for v in sensitive.values() for r in v for c, x in r.extra.items()
                                         if x is not None))
    kinds = [q["interval"]["kind"] for q in ratios if q["interval"] and q["interval"]["kind"]]
    kinds += [v.kind for row in rows for v in row["values"] if v.has_interval and v.kind]
    return {"lf": {
        "run": True, "result": lf, "splits": splits, "rows": rows, "ratios": ratios,
        "kinds": list(dict.fromkeys(kinds)), "risk": risk_view, "problems": list(lf.problems),
        "evidence_note": label_free_evidence_note([q["key"] for q in ratios]),
        "n": {s: part.n_samples for s, part in parts.items()},
        "surface_n": {s: part.surface_samples for s, part in parts.items()},
        "topology": {s: part.topology for s, part in parts.items() if part.topology},
        "unit_sq": loss_unit(result.unit, "mse"), "decades": LABEL_FREE_DECADES,
        "sensitive": {"splits": list(sensitive), "rows": sensitive, "extra": sensitive_extra,
                      "notes": [n for n in (column_note(c) for c in sensitive_extra) if n],
                      "formula": any(r.formula for v in sensitive.values() for r in v),
                      "prediction": any(r.prediction is not None for v in sensitive.values() for r in v)},
    }}


def cite_context(result: AuditResult) -> dict[str, Any]:
    from traits.report.citation import bibtex, citations

    refs = citations(result)
    return {"references": refs, "bibtex": bibtex(refs)}


def _spec_text(spec: dict[str, Any]) -> str:
    try:
        return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, default_flow_style=False, width=96)
    except yaml.YAMLError:  # pragma: no cover - a spec is JSON data, always representable
        import json

        return json.dumps(spec, indent=2, ensure_ascii=False, default=str)


def appendix_context(result: AuditResult) -> dict[str, Any]:
    p = result.provenance
    return {
        "spec_text": _spec_text(portable_spec(result.spec, p.spec_path)),
        "command_text": portable_command(p.command, p.spec_path),
        "spec_name": portable_path(p.spec_path, p.spec_path) if p.spec_path else "",
        "host": host_summary(p.platform),
        "kernels_text": kernel_summary(p.kernels),
    }


#: Every section of the report, in order. ``numbered=False`` sections get no number and no TOC entry.
SECTIONS: tuple[Section, ...] = (
    Section("summary", "Summary", "partials/summary.html.j2", summary_context, ("ratios",), numbered=False),
    Section("verdict", "Verdict", "partials/verdict.html.j2", verdict_context),
    Section("provenance", "Model and data provenance", "partials/provenance.html.j2", provenance_context),
    Section("splits", "Data splits", "partials/splits.html.j2", splits_context),
    Section("accuracy", "Accuracy", "partials/accuracy.html.j2", accuracy_context, ("parity", "elements")),
    Section("shift", "Is the OOD set inside the training domain?", "partials/shift.html.j2", shift_context,
            ("shift",)),
    Section("hessian", "Hessian spectrum", "partials/hessian.html.j2", hessian_context,
            ("eigenvalues", "density")),
    Section("surfaces", "Loss surfaces", "partials/surfaces.html.j2", surfaces_context,
            ("surface_2d", "zoom_2d", "curves_1d", "plane_2d", "persistence")),
    Section("uncertainty", "Would we have known without labels?", "partials/uncertainty.html.j2",
            uncertainty_context, ("uncertainty",)),
    Section("label_free", "Label-free probes", "partials/label_free.html.j2", label_free_context,
            ("label_free_2d", "grad_norms")),
    Section("methods", "Methods", "partials/methods.html.j2"),
    Section("cite", "How to cite", "partials/cite.html.j2", cite_context),
    Section("appendix", "Appendix: reproducibility", "partials/appendix.html.j2", appendix_context),
)


def section_context(result: AuditResult, sections: tuple[Section, ...] = SECTIONS) -> dict[str, Any]:
    """The union of every section's context; two sections may not define the same key."""
    out: dict[str, Any] = {}
    for section in sections:
        if section.context is None:
            continue
        part = section.context(result)
        clash = set(part) & set(out)
        if clash:
            raise ValueError(f"report section {section.id!r} redefines context keys {sorted(clash)}")
        out.update(part)
    return out


def figure_names(sections: tuple[Section, ...] = SECTIONS) -> list[str]:
    return list(dict.fromkeys(name for s in sections for name in s.figures))
