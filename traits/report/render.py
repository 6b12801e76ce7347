"""An :class:`~traits.results.AuditResult` as a self-contained HTML page and a printable PDF.

The report reads nothing but the result: figures are drawn from its numbers (:mod:`traits.report.figures`),
the text comes from Jinja2 templates in the top-level ``templates/`` directory (shipped in the wheel as
``traits/templates``). Everything a result holds is escaped (autoescape is on for every template), the
HTML embeds its CSS and its figures (SVG data URIs), and the PDF is typeset by WeasyPrint with figures
as 200 dpi PNGs and a URL fetcher that can only read the bundled templates: a report never touches
the network.

Most of a report's time goes into drawing its figures, so they are built in worker processes when more than
one CPU is available to this process (:func:`traits.threads.available_cpus`): one worker per CPU, at most one
per figure (:func:`figure_workers`). ``TRAITS_REPORT_WORKERS=N`` sets the number of workers (``1``: none, every
figure is drawn in this process, as ``render_report(..., workers=1)`` does). Workers are forked (Linux only;
elsewhere, inside a daemonic process, while another non-daemon thread runs, or with fewer than
:data:`MIN_PARALLEL_FIGURES` figures, the figures are drawn here): they inherit the result rather than receive a
copy, run only matplotlib and numpy, and send back each figure's encoded strings, and the warnings and log records
it raised, which are passed on here in figure order. The report is byte-identical either way. A figure that fails
in a worker is drawn again here, so its error is the one the serial path raises; if the workers cannot start or
one dies, the figures are drawn here and a warning is logged once (later reports of the process draw here too).
"""

from __future__ import annotations

import functools
import gc
import importlib.resources
import logging
import mimetypes
import multiprocessing
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterable, Mapping
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
from traits.threads import available_cpus

FORMATS = ("html", "pdf")
PDF_DPI = 200
#: How many worker processes draw a report's figures (1: none); unset, one per available CPU.
WORKERS_ENV = "TRAITS_REPORT_WORKERS"
#: The most workers TRAITS_REPORT_WORKERS may ask for.
MAX_WORKERS = 64
#: With fewer figures than this (and no number of workers asked for) the figures are drawn in this process:
#: starting the workers costs 0.1-0.3 s.
MIN_PARALLEL_FIGURES = 3

_log = logging.getLogger("traits.report")


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


class ReportWorkersError(TraitsError):
    """A number of report workers (TRAITS_REPORT_WORKERS, or ``workers=``) that is not a whole number from 1 to
    :data:`MAX_WORKERS`."""


#: What forked workers read (inherited from this process, never pickled): (result, svg, png_dpi), while they run.
_SHARED: tuple[AuditResult, bool, int | None] | None = None
#: Set when workers failed to start or died: the later reports of this process draw their figures here.
_WORKERS_FAILED = False
#: A worker's answer for a figure that raised: this process draws it again, to raise the serial path's error.
_FAILED = "failed"
#: The log records of a worker's current figure (kept in the worker, passed on by the parent).
_LOGGED: list[dict] = []


def _encode_figure(result: AuditResult, name: str, svg: bool, png_dpi: int | None) -> Any:
    """Figure ``name`` of the result as an :class:`~traits.report.figures.EncodedFigure`, or None without data."""
    from traits.report import figures as F

    with F.style():
        fig = FIGURES[name](result)
        return None if fig is None else F.encode(fig, svg=svg, png_dpi=png_dpi, salt=f"traits-{name}")


def _fork_is_safe() -> bool:
    """Whether figures may be drawn in forked workers: on Linux (matplotlib's font cache resets in a forked
    child), not inside a daemonic process (which may not start children), and with no other non-daemon thread
    running (it could hold a lock at the fork that a child then waits for forever). Daemon threads (progress
    bars, heartbeats) are allowed: the workers leave the streams and log handlers they use alone."""
    if not sys.platform.startswith("linux") or "fork" not in multiprocessing.get_all_start_methods():
        return False
    if multiprocessing.current_process().daemon:
        return False
    me = threading.current_thread()
    return all(t is me or t.daemon for t in threading.enumerate())


def figure_workers(n_figures: int, workers: int | None = None, environ: Mapping[str, str] | None = None) -> int:
    """How many worker processes draw ``n_figures`` figures (1: none, this process draws them): ``workers`` if
    given, else TRAITS_REPORT_WORKERS if set, else the CPUs available to this process
    (:func:`~traits.threads.available_cpus`; 1 with fewer than :data:`MIN_PARALLEL_FIGURES` figures); at most one
    per figure; 1 where forking is not safe (:func:`_fork_is_safe`) or workers failed earlier in this process."""
    environ = os.environ if environ is None else environ
    raw = str(workers) if workers is not None else (environ.get(WORKERS_ENV) or "").strip()
    if raw:
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_WORKERS:
            source = "workers=" if workers is not None else f"environment variable {WORKERS_ENV}="
            raise ReportWorkersError(f"{source}{raw!r}: the number of report workers must be a whole number from "
                                     f"1 to {MAX_WORKERS} (1: draw the figures in this process)")
        wanted = int(raw)
    else:
        wanted = available_cpus()[0] if n_figures >= MIN_PARALLEL_FIGURES else 1
    if min(wanted, n_figures) < 2 or _WORKERS_FAILED or not _fork_is_safe():
        return 1
    return min(wanted, n_figures)


def _keep_record(_logger: logging.Logger, record: logging.LogRecord) -> None:
    """In a worker, instead of ``Logger.callHandlers``: keep the record (message formatted, as a plain dict, as
    :class:`logging.handlers.SocketHandler` sends one) for the parent's handlers."""
    fields = dict(record.__dict__)
    if record.exc_info and not record.exc_text:
        fields["exc_text"] = logging.Formatter().formatException(record.exc_info)
    fields.update(msg=record.getMessage(), args=None, exc_info=None)
    fields.pop("message", None)
    _LOGGED.append(fields)


def _start_worker(parent: int) -> None:
    """Initializer of a figure worker (a forked child of ``parent``): Ctrl-C is the parent's to handle (it stops
    the pool), the worker ends with its parent (Linux's parent-death signal), the objects inherited from the parent
    are left to it (frozen: the worker's garbage collector never finalises the parent's garbage, e.g. torch
    tensors), and log records are kept for the parent rather than handled here, where a handler's stream or lock
    may be held by a thread of the parent that was not forked."""
    gc.freeze()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass
    if os.getppid() != parent:  # the parent died before the signal was set up
        os._exit(1)
    logging.Logger.callHandlers = _keep_record


def _worker_figure(name: str) -> tuple[Any, list[tuple], list[dict]]:
    """In a worker: (figure ``name`` encoded or None, its warnings, its log records), or (:data:`_FAILED`, [], [])
    if it raised (the parent draws it again, and so raises the error and shows the warnings itself)."""
    result, svg, png_dpi = _SHARED
    _LOGGED.clear()
    with warnings.catch_warnings(record=True) as caught:  # the filters stay the parent's
        try:
            encoded = _encode_figure(result, name, svg, png_dpi)
        except Exception:
            return _FAILED, [], []
    return encoded, [(w.message, w.category, w.filename, w.lineno) for w in caught], list(_LOGGED)


def _encode_in_workers(result: AuditResult, names: list[str], svg: bool, png_dpi: int | None,
                       workers: int) -> dict[str, tuple] | None:
    """{name: a worker's answer (:func:`_worker_figure`)} for every figure, drawn by ``workers`` forked
    processes; None (and a warning, logged once) if the workers could not start or one died."""
    global _SHARED, _WORKERS_FAILED
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from traits.report import figures  # noqa: F401  (matplotlib imported once, here, for every worker)

    _SHARED = (result, svg, png_dpi)
    try:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"),
                                   initializer=_start_worker, initargs=(os.getpid(),))
        try:
            futures = {name: pool.submit(_worker_figure, name) for name in names}
            answers = {}
            for name, future in futures.items():
                try:
                    answers[name] = future.result()
                except BrokenProcessPool:
                    raise
                except Exception:  # an answer that did not travel back: drawn again here
                    answers[name] = (_FAILED, [], [])
            return answers
        finally:  # Ctrl-C or an error: the figures not started yet are dropped, not waited for
            pool.shutdown(wait=True, cancel_futures=True)
    except (BrokenProcessPool, OSError, ImportError) as exc:
        _WORKERS_FAILED = True
        _log.warning("report: the figure workers failed (%s); this process draws the figures instead", exc)
        return None
    finally:
        _SHARED = None


def _pass_on(caught: list[tuple], logged: list[dict], registry: dict) -> None:
    """A worker's warnings and log records, raised and handled here as if the figure had been drawn here."""
    for message, category, filename, lineno in caught:
        warnings.warn_explicit(message, category, filename, lineno, registry=registry)
    for fields in logged:
        record = logging.makeLogRecord(fields)
        logging.getLogger(record.name).callHandlers(record)


def _build_figures(result: AuditResult, *, svg: bool, png_dpi: int | None,
                   sections: tuple[Section, ...] = SECTIONS, workers: int | None = None) -> dict[str, Any]:
    """Every figure the sections show and the result has data for, as
    :class:`~traits.report.figures.EncodedFigure` (builders in :data:`~traits.report.sections.FIGURES`), in
    worker processes where :func:`figure_workers` allows (see the module docstring), else one after another."""
    names = figure_names(sections)
    count = figure_workers(len(names), workers)
    answers = _encode_in_workers(result, names, svg, png_dpi, count) if count > 1 else None
    out: dict[str, Any] = {}
    registry: dict = {}
    for name in names:
        if answers is None:
            encoded = _encode_figure(result, name, svg, png_dpi)
        else:
            encoded, caught, logged = answers[name]
            _pass_on(caught, logged, registry)
            if isinstance(encoded, str):  # _FAILED
                encoded = _encode_figure(result, name, svg, png_dpi)
        if encoded is not None:
            out[name] = encoded
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


def render_html(result: AuditResult, *, workers: int | None = None) -> str:
    """The report as one self-contained HTML document (CSS and SVG figures embedded). ``workers``: processes
    drawing the figures (:func:`figure_workers`)."""
    return _render(result, _build_figures(result, svg=True, png_dpi=None, workers=workers), "svg", "screen")


def render_pdf(result: AuditResult, *, dpi: int = PDF_DPI, workers: int | None = None) -> bytes:
    """The report as PDF bytes (WeasyPrint; figures as PNG at ``dpi``). ``workers``: as for :func:`render_html`."""
    figures = _build_figures(result, svg=False, png_dpi=dpi, workers=workers)
    return _pdf_bytes(_render(result, figures, "png", "print"))


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


def render_report(result: AuditResult, out_dir: Path, formats: Iterable[str] = FORMATS, *,
                  workers: int | None = None) -> dict[str, Path]:
    """Write ``report.html`` and/or ``report.pdf`` into ``out_dir``; returns {format: path}. With the result's
    ``report.interactive`` set, also ``report-interactive.html`` (:mod:`traits.report.interactive`, key
    ``"interactive"``).

    Both are rendered in memory first and then written atomically; if a write fails, the files this
    call already wrote are removed again, so a report is never left half-written.

    ``workers``: how many processes draw the figures (1: this one; default: TRAITS_REPORT_WORKERS, else one per
    available CPU; see :func:`figure_workers`). The files are byte-identical whatever the number.
    """
    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise TraitsError(f"unknown report format(s) {', '.join(map(repr, unknown))}; choose from html, pdf")
    out_dir = ensure_dir(Path(out_dir))
    figures = _build_figures(result, svg="html" in formats, png_dpi=PDF_DPI if "pdf" in formats else None,
                             workers=workers)
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

