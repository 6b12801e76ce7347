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
import mimetypes
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from traits import catalogue as _catalogue
from traits.errors import OutputError, TraitsError
from traits.files import ensure_dir, write_formats_atomic
from traits.report.formatting import (  # noqa: F401  (re-exported: templates and tests use them here)
    SPLIT_ORDER,
    fmt_interval,
    fmt_num,
    fmt_seconds,
    formula_html,
    interval_kind,
    kind_legend,
    kind_marker,
    ordered_splits,
    split_label,
)
from traits.report.glance import ood_phrase
from traits.report.sections import (  # noqa: F401
    FIGURES,
    RATIO_INFO,
    SECTIONS,
    SHIFT_RATIO_INFO,
    Section,
    figure_names,
    loss_at_theta,
    section_context,
)
from traits.results import AuditResult

FORMATS = ("html", "pdf")
PDF_DPI = 200


# ----------------------------------------------------------------------------------------------
# Where the templates live, and what WeasyPrint may read


def _is_predictor(name: str) -> bool:
    """Whether a gate's metric predicts OOD error (a landscape or distance metric) rather than measuring it."""
    try:
        return _catalogue.is_predictor(_catalogue.metric(name))
    except KeyError:
        return False


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
# The template environment


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
    env.filters["interval"] = fmt_interval
    env.filters["seconds"] = fmt_seconds
    env.filters["split"] = split_label
    env.filters["formula"] = formula_html
    env.globals["kind_marker"] = kind_marker
    env.globals["kind_legend"] = kind_legend
    env.globals["interval_kind"] = interval_kind
    env.globals["ordered"] = ordered_splits
    env.globals["metric_label"] = lambda name: _catalogue.labels().get(name, name)
    env.globals["is_predictor"] = _is_predictor
    return env


# ----------------------------------------------------------------------------------------------
# Figures


def _build_figures(result: AuditResult, *, svg: bool, png_dpi: int | None,
                   sections: tuple[Section, ...] = SECTIONS) -> dict[str, Any]:
    """Every figure the sections show and the result has data for, as
    :class:`~traits.report.figures.EncodedFigure` (builders in :data:`~traits.report.sections.FIGURES`)."""
    from traits.report import figures as F

    out: dict[str, Any] = {}
    for name in figure_names(sections):
        with F.style():
            fig = FIGURES[name](result)
            if fig is not None:
                out[name] = F.encode(fig, svg=svg, png_dpi=png_dpi, salt=f"traits-{name}")
    return out


# ----------------------------------------------------------------------------------------------
# The template context


def _ood_who(result: AuditResult) -> str:
    """Who the OOD compounds are, for the running text: 'compounds containing Fe', 'cubic compounds', 'the
    compounds of the named OOD set ood.json', 'a random held-out set (no chemistry omitted)'."""
    phrase = ood_phrase(result)
    return f"the compounds of {phrase}" if phrase.startswith("the named") else phrase.removeprefix("the ")


def _context(result: AuditResult, figures: dict[str, Any], image: str) -> dict[str, Any]:
    from traits.report.figures import loss_unit

    numbered = [s for s in SECTIONS if s.numbered]
    context = {
        "r": result,
        "sections": SECTIONS,
        "numbers": {s.id: i for i, s in enumerate(numbered, 1)},
        "figures": {name: {"src": getattr(enc, image), "width": enc.width_in} for name, enc in figures.items()},
        "loss_unit": loss_unit(result.unit, result.loss),
        "loss_name": {"mse": "mean squared error", "mae": "mean absolute error"}.get(result.loss, result.loss),
        "css": Markup((templates_dir() / "report.css").read_text(encoding="utf-8")),
        "css_narrow": Markup((templates_dir() / "report-narrow.css").read_text(encoding="utf-8")),
        "ood_who": _ood_who(result),
    }
    extra = section_context(result)
    clash = set(extra) & set(context)
    if clash:
        raise ValueError(f"report section context redefines {sorted(clash)}")
    return {**context, **extra}


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
    """Write ``report.html`` and/or ``report.pdf`` into ``out_dir``; returns {format: path}. With the result's
    ``report.interactive`` set, also ``report-interactive.html`` (:mod:`traits.report.interactive`, key
    ``"interactive"``).

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
    written = write_formats_atomic(out_dir, "report", payload)
    if ((result.spec or {}).get("report") or {}).get("interactive"):  # report.interactive: the opt-in 3D page
        from traits.report.interactive import write_interactive

        written["interactive"] = write_interactive(result, out_dir)
    return written

