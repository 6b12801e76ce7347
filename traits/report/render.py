"""An :class:`~traits.results.AuditResult` as a self-contained HTML page and a printable PDF.

The report reads nothing but the result: figures are drawn from its numbers (:mod:`traits.report.figures`),
the text comes from Jinja2 templates in the top-level ``templates/`` directory (shipped in the wheel as
``traits/templates``). Everything a result holds is escaped (autoescape is on for every template), the
HTML embeds its CSS and its figures (SVG data URIs), and the PDF is typeset by WeasyPrint with figures
as 200 dpi PNGs and a URL fetcher that can only read the bundled templates: a report never touches
the network.
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
import math
import mimetypes
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from traits.errors import OutputError, TraitsError
from traits.files import ensure_dir, write_bytes_atomic, write_text_atomic
from traits.results import SPLIT_LABELS, AuditResult

#: (id, heading) of every report section, in order.
SECTIONS = (
    ("verdict", "Verdict"),
    ("provenance", "Model and data provenance"),
    ("splits", "Data splits"),
    ("accuracy", "Accuracy"),
    ("shift", "Is the OOD set inside the training domain?"),
    ("hessian", "Hessian spectrum"),
    ("surfaces", "Loss surfaces"),
    ("methods", "Methods"),
    ("appendix", "Appendix: reproducibility"),
)
FORMATS = ("html", "pdf")
PDF_DPI = 200
SPLIT_ORDER = ("train", "val", "id", "ood")

#: OOD/ID ratios: label and the direction in which a ratio means "worse out of distribution" ("high" /
#: "low": above / below 1; "negative": a difference, worse below 0).
RATIO_INFO = {
    "mae_ratio": ("MAE", "high"),
    "rmse_ratio": ("RMSE", "high"),
    "loss_ratio": ("loss at θ", "high"),
    "lambda_ratio": ("largest Hessian eigenvalue λmax", "high"),
    "trace_ratio": ("Hessian trace", "high"),
    "radius_ratio": ("robust radius", "low"),
    "sharpness_ratio": ("sharpness", "high"),
    "basin_area_ratio": ("basin area fraction", "low"),
    "plane_basin_area_ratio": ("basin area fraction, eigenvector plane", "low"),
    "nonconvexity_ratio": ("non-convexity |λmin|/λmax", "high"),
    "first_jump_ratio": ("scale of the first loss jump", "low"),
    "entropy_ood_minus_id": ("loss entropy: a difference, OOD − ID", "negative"),
}
#: Domain-shift ratios (shown in their own section, not among the landscape ratios).
SHIFT_RATIO_INFO = {
    "composition_knn_ratio": ("composition kNN distance, median", "high"),
    "composition_knn_p90_ratio": ("composition kNN distance, 90th percentile", "high"),
    "embedding_knn_ratio": ("embedding kNN distance, median", "high"),
    "embedding_knn_p90_ratio": ("embedding kNN distance, 90th percentile", "high"),
    "target_wasserstein_ratio": ("Wasserstein distance of the targets to train", "high"),
    "target_ks_ratio": ("KS statistic of the targets against train", "high"),
}


# ----------------------------------------------------------------------------------------------
# Where the templates live, and what WeasyPrint may read


def templates_dir() -> Path:
    """The templates directory: ``traits/templates`` in an installed wheel, else ``<repo>/templates``."""
    try:
        packaged = importlib.resources.files("traits") / "templates"
        if packaged.is_dir():
            return Path(str(packaged)).resolve()
    except (ModuleNotFoundError, TypeError, NotImplementedError):  # pragma: no cover - exotic loaders
        pass
    source = Path(__file__).resolve().parents[2] / "templates"
    if not source.is_dir():
        raise TraitsError(f"the report templates are missing (looked in traits/templates and {source})")
    return source


def _fetcher_base():
    from weasyprint.urls import URLFetcher

    return URLFetcher


class RefusedURL(OutputError):
    """A report tried to load something other than an embedded data URI or a bundled template file."""


def make_url_fetcher(root: Path | None = None):
    """A WeasyPrint URL fetcher that serves ``data:`` URIs and files inside ``root`` (the templates
    directory) and raises :class:`RefusedURL` for everything else (http, https, ftp, other files)."""
    root = Path(root or templates_dir()).resolve()
    base = _fetcher_base()

    class LocalOnlyFetcher(base):
        def __init__(self):
            super().__init__(allowed_protocols=("data", "file"), allow_redirects=False, timeout=1)
            self.root = root

        def fetch(self, url, headers=None):
            from weasyprint.urls import URLFetcherResponse

            scheme = url.split(":", 1)[0].lower() if ":" in url else ""
            if scheme == "data":
                return super().fetch(url, headers)
            if scheme == "file":
                parts = urlsplit(url)
                if parts.netloc not in ("", "localhost"):
                    raise RefusedURL(f"refused to fetch {url!r}: not a local file")
                path = Path(unquote(parts.path)).resolve()
                if not path.is_relative_to(self.root) or not path.is_file():
                    raise RefusedURL(f"refused to fetch {url!r}: a report may read only files in {self.root}")
                mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                return URLFetcherResponse(path.as_uri(), path.read_bytes(), {"Content-Type": mime})
            raise RefusedURL(f"refused to fetch {url!r}: reports never load anything from the network")

    return LocalOnlyFetcher()


# ----------------------------------------------------------------------------------------------
# Formatting filters

_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def fmt_num(value: Any, digits: int = 4) -> str:
    """A number for a table: 4 significant digits, '—' for missing, NaN/∞ spelled out."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}".replace(",", "\u202f") if abs(value) >= 10000 else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        text = f"{value:.{digits}g}"
        if "e" in text:
            mantissa, exp = text.split("e")
            return f"{mantissa.replace('-', '−')}×10{str(int(exp)).translate(_SUPERSCRIPT)}"
        return text.replace("-", "−") if value < 0 else text
    return str(value)


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 60:
        return f"{value:.1f} s"
    minutes, seconds = divmod(value, 60)
    if minutes < 60:
        return f"{int(minutes)} min {seconds:.0f} s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)} h {int(minutes)} min"


def split_label(split: str) -> str:
    return SPLIT_LABELS.get(split, split)


def ordered_splits(keys: Iterable[str]) -> list[str]:
    keys = list(keys)
    known = [s for s in SPLIT_ORDER if s in keys]
    return known + [k for k in keys if k not in SPLIT_ORDER]


@functools.lru_cache(maxsize=4)
def _environment(directory: str) -> Environment:
    env = Environment(
        loader=FileSystemLoader(directory),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = fmt_num
    env.filters["seconds"] = fmt_seconds
    env.filters["split"] = split_label
    env.globals["ordered"] = ordered_splits
    return env


# ----------------------------------------------------------------------------------------------
# Figures


def _build_figures(result: AuditResult, *, svg: bool, png_dpi: int | None) -> dict[str, Any]:
    """Every figure the result has data for, as :class:`~traits.report.figures.EncodedFigure`."""
    from traits.report import figures as F

    lunit = F.loss_unit(result.unit, result.loss)
    out: dict[str, Any] = {}

    def keep(name, make):
        with F.style():
            fig = make()
            out[name] = F.encode(fig, svg=svg, png_dpi=png_dpi, salt=f"traits-{name}")

    panels = [
        F.ParityData(s, acc.targets, acc.predictions, acc.mae, acc.r2)
        for s in ("id", "ood")
        if (acc := result.accuracy.get(s)) is not None and acc.targets and acc.predictions
    ]
    if panels:
        keep("parity", lambda: F.parity_figure(panels, result.unit, result.target))

    sh = result.shift
    if sh is not None and any(smp.targets or smp.distances for smp in sh.samples.values()):
        keep("shift", lambda: F.shift_figure(
            {s: sh.samples[s].targets for s in ordered_splits(sh.samples)},
            {space: {s: sh.samples[s].distances[space] for s in ordered_splits(sh.samples)
                     if space in sh.samples[s].distances}
             for space in ("composition", "embedding")
             if any(space in smp.distances for smp in sh.samples.values())},
            result.unit, result.target, sh.k,
            band=(sh.splits["train"].targets.quantiles.get("q01"), sh.splits["train"].targets.quantiles.get("q99"))
            if "train" in sh.splits else None))

    hess = {s: result.hessian[s] for s in ordered_splits(result.hessian)}
    eig = {s: h.top_eigenvalues for s, h in hess.items() if h.top_eigenvalues}
    if eig:
        keep("eigenvalues", lambda: F.eigenvalue_figure(eig, lunit))
    dens = {s: (h.density.grid, h.density.density) for s, h in hess.items() if h.density and h.density.grid}
    if dens:
        keep("density", lambda: F.density_figure(dens, lunit))

    surf = result.surface
    if surf is not None:
        grids = {s: surf.grids[s] for s in ordered_splits(surf.grids) if surf.grids[s]}
        if grids and surf.alphas_2d:
            loss0 = {s: _loss_at_theta(result, s) for s in grids}
            keep("surface_2d", lambda: F.surface_2d_figure(surf.alphas_2d, grids, loss0, surf.tolerance, lunit))
        planes = {s: surf.plane_grids[s] for s in ordered_splits(surf.plane_grids) if surf.plane_grids[s]}
        if planes and surf.alphas_2d:
            loss0 = {s: _loss_at_theta(result, s) for s in planes}
            keep("plane_2d", lambda: F.surface_2d_figure(surf.alphas_2d, planes, loss0, surf.tolerance, lunit))
        sets = []
        for s in ordered_splits(surf.curves):
            if not surf.curves[s]:
                continue
            m = result.metrics.get(s)
            sets.append(F.CurveSet(
                split=s, curves=surf.curves[s], loss0=_loss_at_theta(result, s),
                radius=m.robust_radius if m else None, censored=bool(m and m.robust_radius_censored),
                radius_per_direction=m.radius_per_direction if m else (),
                jumps=(surf.landscape.get(s) or {}).get("jumps_1d") or (),
            ))
        if sets and surf.alphas_1d:
            keep("curves_1d", lambda: F.curves_1d_figure(surf.alphas_1d, sets, surf.tolerance))
    return out


def _loss_at_theta(result: AuditResult, split: str) -> float | None:
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


# ----------------------------------------------------------------------------------------------
# The template context


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


def _shift_context(result: AuditResult) -> dict[str, Any] | None:
    """Rows of the domain-shift table (train / ID test / OOD / OOD:ID) and the verdict's case finding."""
    sh = result.shift
    if sh is None:
        return None
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
    return {"cols": cols, "groups": groups, "case": case, "spaces": [s for s in ("composition", "embedding")
                                                                     if any(s in sp[c].distances for c in cols)]}


def _spec_text(spec: dict[str, Any]) -> str:
    try:
        return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, default_flow_style=False, width=96)
    except yaml.YAMLError:  # pragma: no cover - a spec is JSON data, always representable
        import json

        return json.dumps(spec, indent=2, ensure_ascii=False, default=str)


def _context(result: AuditResult, figures: dict[str, Any], image: str) -> dict[str, Any]:
    from traits.report.figures import LOG_SCALE_SPAN, MAX_DIRECTIONS, loss_unit, surface_scale

    surf = result.surface
    scale = None
    if surf is not None and surf.grids:
        scale = surface_scale({s: g for s, g in surf.grids.items() if g})
    ratios = [
        {"key": k, "label": RATIO_INFO.get(k, (k.removesuffix("_ratio").replace("_", " "), ""))[0],
         "worse": RATIO_INFO.get(k, ("", ""))[1], "value": v}
        for k, v in result.ratios.items() if k not in SHIFT_RATIO_INFO
    ]
    hess_splits = ordered_splits(result.hessian)
    k_max = max((len(h.top_eigenvalues) for h in result.hessian.values()), default=0)
    counted = (e for st in result.splits.values() for e in st.with_omitted)
    omitted_columns = list(dict.fromkeys([*result.omit, *counted]))
    return {
        "r": result,
        "sections": SECTIONS,
        "figures": {name: {"src": getattr(enc, image), "width": enc.width_in} for name, enc in figures.items()},
        "loss_unit": loss_unit(result.unit, result.loss),
        "loss_name": {"mse": "mean squared error", "mae": "mean absolute error"}.get(result.loss, result.loss),
        "split_names": ordered_splits(result.splits),
        "accuracy_splits": ordered_splits(result.accuracy),
        "hessian_splits": hess_splits,
        "k_max": k_max,
        "metric_splits": ordered_splits(result.metrics),
        "omitted_columns": omitted_columns,
        "ratios": ratios,
        "shift": _shift_context(result),
        "nonfinite": _nonfinite(result),
        "surface_scale": scale,
        "log_span": LOG_SCALE_SPAN,
        "n_directions": max((len(c) for c in surf.curves.values()), default=0) if surf is not None else 0,
        "curve_jumps": sum(len(p) for st in (surf.landscape.values() if surf is not None else ())
                           for p in (st.get("jumps_1d") or [])[:MAX_DIRECTIONS]),
        "max_directions": MAX_DIRECTIONS,
        "spec_text": _spec_text(result.spec),
        "css": Markup((templates_dir() / "report.css").read_text(encoding="utf-8")),
        "ood_who": (f"compounds containing {', '.join(result.omit)}" if result.omit else
                    "a random held-out set (no chemistry omitted)"),
    }


def _render(result: AuditResult, figures: dict[str, Any], image: str, medium: str) -> str:
    env = _environment(str(templates_dir()))
    context = _context(result, figures, image)
    context["medium"] = medium
    return env.get_template("report.html.j2").render(context)


# ----------------------------------------------------------------------------------------------
# Public API


def render_html(result: AuditResult) -> str:
    """The report as one self-contained HTML document (CSS and SVG figures embedded)."""
    return _render(result, _build_figures(result, svg=True, png_dpi=None), "svg", "screen")


def render_pdf(result: AuditResult, *, dpi: int = PDF_DPI) -> bytes:
    """The report as PDF bytes (WeasyPrint; figures as PNG at ``dpi``)."""
    return _pdf_bytes(_render(result, _build_figures(result, svg=False, png_dpi=dpi), "png", "print"))


class _DropFontSubsetNotice(logging.Filter):
    """WeasyPrint warns on every font when HarfBuzz-Subset is missing: a property of the system, not of
    the report, so it is dropped (while the PDF renders only); every other warning still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "HarfBuzz-Subset" not in record.getMessage()


def _pdf_bytes(html: str) -> bytes:
    from weasyprint import HTML

    root = templates_dir()
    logger, notice = logging.getLogger("weasyprint"), _DropFontSubsetNotice()
    logger.addFilter(notice)
    try:
        return HTML(string=html, base_url=root.as_uri() + "/", url_fetcher=make_url_fetcher(root)).write_pdf()
    finally:
        logger.removeFilter(notice)


def template_environment() -> Environment:
    """The Jinja2 environment of the package's templates (autoescaped, strict), for other documents."""
    return _environment(str(templates_dir()))


def html_to_pdf(html: str) -> bytes:
    """Render an HTML document to PDF with WeasyPrint, fetching only the package's own assets."""
    return _pdf_bytes(html)


def render_report(result: AuditResult, out_dir: Path, formats: Iterable[str] = FORMATS) -> dict[str, Path]:
    """Write ``report.html`` and/or ``report.pdf`` into ``out_dir``; returns {format: path}.

    Both are rendered in memory first and then written atomically; if a write fails, the files this
    call already wrote are removed again, so a report is never left half-written.
    """
    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise TraitsError(f"unknown report format(s) {', '.join(map(repr, unknown))}; choose from html, pdf")
    out_dir = ensure_dir(Path(out_dir))
    figures = _build_figures(result, svg="html" in formats, png_dpi=PDF_DPI if "pdf" in formats else None)
    payload: dict[str, str | bytes] = {}
    if "html" in formats:
        payload["html"] = _render(result, figures, "svg", "screen")
    if "pdf" in formats:
        payload["pdf"] = _pdf_bytes(_render(result, figures, "png", "print"))
    written: dict[str, Path] = {}
    try:
        for fmt, data in payload.items():
            path = out_dir / f"report.{fmt}"
            if isinstance(data, bytes):
                write_bytes_atomic(path, data)
            else:
                write_text_atomic(path, data)
            written[fmt] = path
    except OutputError:
        for path in written.values():
            path.unlink(missing_ok=True)
        raise
    return written

