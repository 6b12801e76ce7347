"""The report section "Would we have known without labels?": per-compound uncertainty against the actual
error on the OOD set, and the calibration after recalibrating on validation (results field ``uncertainty``,
probe ``probes.uncertainty``). Registered in :data:`traits.report.sections.SECTIONS`."""

from __future__ import annotations

from typing import Any

from traits.results import AuditResult, UncertaintyMethod

METHOD_LABELS = {
    "hessian_wag": "Hessian-WAG",
    "laplace": "linearised Laplace (low rank)",
    "last_layer": "last-layer Laplace",
    "knn": "latent kNN distance",
    "ensemble": "deep ensemble",
}


def _methods(result: AuditResult) -> dict[str, UncertaintyMethod]:
    unc = getattr(result, "uncertainty", None)  # absent from results models older than the field
    methods = unc.methods if unc is not None else {}
    return {m: methods[m] for m in METHOD_LABELS if m in methods and methods[m].id and methods[m].ood}


def uncertainty_context(result: AuditResult) -> dict[str, Any]:
    unc = getattr(result, "uncertainty", None)
    methods = _methods(result)
    rows = []
    for m, s in methods.items():
        co, ci = s.ood.calibration, s.id.calibration
        rows.append({"label": METHOD_LABELS[m], "rho_ood": s.ood.spearman, "rho_id": s.id.spearman,
                     "area_ood": co.get("miscalibration_area"), "area_id": ci.get("miscalibration_area"),
                     "z_std": co.get("z_std"), "cov68": co.get("coverage_68"), "cov95": co.get("coverage_95"),
                     "u_ratio": s.u_ratio, "error_ratio": s.error_ratio})
    best = max((r for r in rows if r["rho_ood"] is not None), key=lambda r: r["rho_ood"], default=None)
    info = unc.info if unc is not None else {}
    return {"unc": {"run": unc is not None and bool(methods), "rows": rows, "best": best,
                    "problems": unc.problems if unc is not None else [], "n": unc.n if unc is not None else {},
                    "wag": info.get("hessian_wag") or {}, "laplace": info.get("laplace") or {},
                    "error_ratio": rows[0]["error_ratio"] if rows else None}}


def uncertainty_figure(result: AuditResult):
    """Top: each method's uncertainty against |error| (ID and OOD); bottom: observed against expected
    share of residuals inside the central intervals after recalibration on validation."""
    from traits.report import figures as F

    methods = _methods(result)
    if not methods:
        return None
    fig = F._new_figure(4.6)
    axes = fig.subplots(2, len(methods), squeeze=False)
    for j, (m, s) in enumerate(methods.items()):
        ax = axes[0][j]
        for split in ("id", "ood"):
            pts = getattr(s, split).points
            u, e = pts.u, pts.abs_err
            keep = [(a, b) for a, b in zip(u, e) if a is not None and b is not None and a > 0]
            if keep:
                ax.scatter(*zip(*keep), s=4, alpha=0.5, color=F.split_color(split), label=F.split_label(split))
        ax.set_xscale("log")
        ax.set_title(METHOD_LABELS[m], fontsize=8)
        ax.set_xlabel("uncertainty", fontsize=7)
        if j == 0:
            ax.set_ylabel(f"|error| ({result.unit})", fontsize=7)
            ax.legend(fontsize=6, frameon=False)
        ax = axes[1][j]
        for split in ("id", "ood"):
            cal = getattr(s, split).calibration
            if cal.get("expected"):
                ax.plot(cal["expected"], cal["observed"], color=F.split_color(split), lw=1.2)
        ax.plot([0, 1], [0, 1], color="#888888", lw=0.8, ls="--")
        ax.set_xlabel("expected share", fontsize=7)
        if j == 0:
            ax.set_ylabel("observed share", fontsize=7)
        for a in (axes[0][j], ax):
            a.tick_params(labelsize=6)
    return fig
