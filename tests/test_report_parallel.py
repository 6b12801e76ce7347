"""Report figures drawn in worker processes: the same bytes as drawn in one process, the same errors, warnings
and log records, a fallback when a worker dies, and the rules that choose the number of workers."""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings

import pytest
from matplotlib.figure import Figure
from result_factory import make_result

from traits.report import figures as F
from traits.report import render as R
from traits.report.sections import Section

#: Three cheap figures: enough for a pool, fast to draw.
FEW = (Section("few", "Few", "unused.html.j2", figures=("ratios", "eigenvalues", "density")),)
LOGGER = "traits.tests.report_parallel"


def needs_fork() -> None:
    """Skip where forking is unsafe. A non-daemon thread an earlier test left finishing (on a loaded CI machine it
    can still be running) is waited for first, so these tests skip only where forking is really unsafe, and the skip
    names the threads."""
    me = threading.current_thread()
    for t in threading.enumerate():
        if t is not me and not t.daemon:
            t.join(timeout=60)
    if not R._fork_is_safe():
        others = [t.name for t in threading.enumerate() if t is not me and not t.daemon]
        pytest.skip("figures are drawn in workers only where forking is safe (Linux, no other non-daemon thread; "
                    f"running: {', '.join(others) or 'none'})")


@pytest.fixture(scope="module")
def result():
    return make_result()


@pytest.fixture
def serial_few(result):
    return R._build_figures(result, svg=True, png_dpi=40, sections=FEW, workers=1)


@pytest.fixture(autouse=True)
def workers_not_failed(monkeypatch):
    """Each test starts as a process whose workers never failed (the flag is restored afterwards)."""
    monkeypatch.setattr(R, "_WORKERS_FAILED", False)


def test_the_report_written_with_workers_is_byte_identical(result, tmp_path, monkeypatch):
    needs_fork()
    monkeypatch.setattr(R, "PDF_DPI", 50)  # the same path with smaller PNGs: a faster test
    pools, typeset = [], {}
    real, real_pdf = R._encode_in_workers, R._pdf_bytes

    def spy(*args):
        answers = real(*args)
        pools.append((args[-1], answers is not None))
        return answers

    def pdf_once(html):  # WeasyPrint runs in this process either way: the same HTML gives the same PDF
        if html not in typeset:
            typeset[html] = real_pdf(html)
        return typeset[html]

    monkeypatch.setattr(R, "_encode_in_workers", spy)
    monkeypatch.setattr(R, "_pdf_bytes", pdf_once)
    serial = R.render_report(result, tmp_path / "serial", workers=1)
    assert pools == []
    parallel = R.render_report(result, tmp_path / "parallel", workers=2)
    assert pools == [(2, True)]
    for fmt in ("html", "pdf"):
        assert parallel[fmt].read_bytes() == serial[fmt].read_bytes(), fmt
    assert len(typeset) == 1  # the HTML typeset for the PDF, its PNGs included, was the same too


def test_a_figure_that_raises_raises_the_same_error_with_workers(result, monkeypatch):
    needs_fork()

    def broken(_result):
        raise ValueError("eigenvalue figure: bad data")

    monkeypatch.setitem(R.FIGURES, "eigenvalues", broken)
    for workers in (1, 2):
        with pytest.raises(ValueError, match="eigenvalue figure: bad data"):
            R._build_figures(result, svg=True, png_dpi=40, sections=FEW, workers=workers)


def test_a_figure_that_fails_only_in_a_worker_is_drawn_again_here(result, monkeypatch, serial_few):
    needs_fork()
    parent, real = os.getpid(), R.FIGURES["eigenvalues"]

    def picky(res):
        if os.getpid() != parent:
            raise RuntimeError("only in a worker")
        return real(res)

    monkeypatch.setitem(R.FIGURES, "eigenvalues", picky)
    figures = R._build_figures(result, svg=True, png_dpi=40, sections=FEW, workers=2)
    assert list(figures) == list(serial_few) and figures == serial_few


def test_a_worker_that_dies_falls_back_to_this_process_and_says_so_once(result, monkeypatch, caplog, serial_few):
    needs_fork()
    parent, real = os.getpid(), R.FIGURES["density"]

    def dies(res):
        if os.getpid() != parent:
            os._exit(3)
        return real(res)

    monkeypatch.setitem(R.FIGURES, "density", dies)
    with caplog.at_level(logging.WARNING, logger="traits.report"):
        figures = R._build_figures(result, svg=True, png_dpi=40, sections=FEW, workers=2)
        again = R._build_figures(result, svg=True, png_dpi=40, sections=FEW, workers=2)
    assert figures == serial_few and again == serial_few
    said = [r for r in caplog.records if "figure workers failed" in r.getMessage()]
    assert len(said) == 1
    assert R.figure_workers(11, 2) == 1  # later reports of this process draw here


def test_warnings_and_log_records_of_workers_are_passed_on_in_figure_order(result, monkeypatch, caplog):
    needs_fork()

    def chatty(name, real):
        def build(res):
            warnings.warn(f"{name} warns", UserWarning, stacklevel=1)
            logging.getLogger(LOGGER).warning("%s logs", name)
            return real(res)

        return build

    names = list(FEW[0].figures)
    for name in names:
        monkeypatch.setitem(R.FIGURES, name, chatty(name, R.FIGURES[name]))
    for workers in (1, 2):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=LOGGER), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            R._build_figures(result, svg=True, png_dpi=40, sections=FEW, workers=workers)
        ours = [w for w in caught if str(w.message).endswith(" warns")]
        assert [str(w.message) for w in ours] == [f"{n} warns" for n in names]
        assert all(w.category is UserWarning and w.filename == __file__ for w in ours)
        records = [r for r in caplog.records if r.name == LOGGER]
        assert [r.getMessage() for r in records] == [f"{n} logs" for n in names]
        assert all(r.funcName == "build" and r.levelno == logging.WARNING for r in records)
        drawn_here = {r.process == os.getpid() for r in records}
        assert drawn_here == ({True} if workers == 1 else {False})


def test_how_many_workers_draw_the_figures(monkeypatch):
    monkeypatch.setattr(R, "available_cpus", lambda: (2, "2 CPUs"))
    monkeypatch.setattr(R, "_fork_is_safe", lambda: True)
    env = R.WORKERS_ENV
    assert R.figure_workers(11, environ={}) == 2
    assert R.figure_workers(R.MIN_PARALLEL_FIGURES - 1, environ={}) == 1  # a pool costs more than it saves
    assert R.figure_workers(11, environ={env: "1"}) == 1
    assert R.figure_workers(11, environ={env: " 8 "}) == 8
    assert R.figure_workers(3, environ={env: "8"}) == 3  # at most one per figure
    assert R.figure_workers(2, environ={env: "2"}) == 2  # asked for, even for two figures
    assert R.figure_workers(11, 1, environ={env: "4"}) == 1  # the argument wins over the environment
    for bad in ("0", "two", "-1", "1.5", "²", str(R.MAX_WORKERS + 1)):
        with pytest.raises(R.ReportWorkersError, match=env):
            R.figure_workers(11, environ={env: bad})
    with pytest.raises(R.ReportWorkersError, match="workers="):
        R.figure_workers(11, 0, environ={})
    monkeypatch.setattr(R, "available_cpus", lambda: (1, "1 CPU"))
    assert R.figure_workers(11, environ={}) == 1
    monkeypatch.setattr(R, "_fork_is_safe", lambda: False)
    assert R.figure_workers(11, 4, environ={}) == 1


def test_workers_are_forked_only_on_linux_outside_daemons_and_beside_daemon_threads(monkeypatch):
    if not sys.platform.startswith("linux"):
        assert not R._fork_is_safe()
        return
    needs_fork()
    stop = threading.Event()
    for daemon, safe in ((True, True), (False, False)):
        helper = threading.Thread(target=stop.wait, daemon=daemon)
        helper.start()
        try:
            assert R._fork_is_safe() is safe
        finally:
            stop.set()
            helper.join()
        stop.clear()
    monkeypatch.setattr(R.multiprocessing.current_process(), "daemon", True, raising=False)
    assert not R._fork_is_safe()
    monkeypatch.undo()
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not R._fork_is_safe()


def test_the_png_reuses_the_svg_layout_unless_an_axes_has_a_fixed_aspect():
    def density():
        with F.style():
            return F.density_figure({"id": ([0.0, 1.0, 2.0], [1.0, 0.0, 0.5])}, "(eV/atom)²")

    fig = density()
    F.figure_to_svg(fig)
    assert F.freeze_layout(fig) and fig.get_layout_engine().__class__.__name__ == "PlaceHolderLayoutEngine"
    fig.clear()
    square = Figure(layout="constrained")
    square.subplots().set_aspect("equal")
    assert not F.freeze_layout(square) and square.get_layout_engine().__class__.__name__ == "ConstrainedLayoutEngine"
    # the SVG is drawn first, laid out as always; only the PNG reuses its layout
    both = F.encode(density(), svg=True, png_dpi=40)
    assert both.svg == F.encode(density(), svg=True).svg
    assert both.png.startswith("data:image/png;base64,")
