"""Progress of long stages: rich bars on a terminal, plain timestamped lines in logs (CI), or nothing.

A :class:`Reporter` is a *progress factory*: ``reporter(description, total)`` opens a stage and returns a
callback ``update(done, total, status=None)``. On a terminal each stage is a rich progress bar; when
stderr is not a terminal (a CI log, a file) each stage prints plain lines::

    [2026-12-01T08:40:12Z] building crystal graphs: started
    [2026-12-01T08:40:22Z] building crystal graphs: 800/2000 (40%)
    [2026-12-01T08:40:31Z] building crystal graphs: done 2000/2000 in 19.2 s

a progress line at most every ``interval`` seconds or each time another 10 % is done (a stage that
reports no steps, such as one Hessian, prints "still running" every ``interval`` seconds instead, from
a heartbeat thread), and an end line with the stage's wall time (when the last item is done, when the
next stage opens, or when the reporter closes). ``verbosity`` 0 (``--quiet``) prints nothing, 2
(``--verbose``) prints every update and the detail lines. User strings are printed without rich markup.
"""

from __future__ import annotations

import datetime as _dt
import sys
import threading
import time
from collections.abc import Callable
from typing import Literal, TextIO

Mode = Literal["auto", "bars", "lines", "off"]
QUIET, NORMAL, VERBOSE = 0, 1, 2


def timestamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Stage:
    def __init__(self, reporter: Reporter, description: str, total: int):
        self.reporter, self.description, self.total = reporter, description, int(total or 0)
        self.done = 0
        self.started = reporter.clock()
        self.last_print = self.started
        self.last_decile = 0
        self.ended = False

    def __call__(self, done: int, total: int | None = None, status: str | None = None) -> None:
        r = self.reporter
        if self.ended:
            return
        self.done = int(done)
        if total:
            self.total = int(total)
        if r.mode == "bars":
            r._bar_update(self, status)
            return
        if r.mode != "lines":
            return
        if self.total and self.done >= self.total:
            self.end(status)
            return
        now = r.clock()
        decile = int(10 * self.done / self.total) if self.total else 0
        if r.verbosity >= VERBOSE or now - self.last_print >= r.interval or decile > self.last_decile:
            self.last_print, self.last_decile = now, decile
            r.line(f"{self.description}: {self._count()}" + (f" {status}" if status else ""))

    def beat(self) -> None:
        """From the heartbeat: a line when nothing was printed for ``interval`` seconds."""
        r = self.reporter
        now = r.clock()
        if not self.ended and now - self.last_print >= r.interval:
            self.last_print = now
            elapsed = f"after {now - self.started:.0f} s"
            if self.done and self.total > 1:
                r.line(f"{self.description}: {self._count()} {elapsed}")
            else:
                r.line(f"{self.description}: still running {elapsed}")

    def _count(self) -> str:
        if not self.total:
            return f"{self.done} done"
        return f"{self.done}/{self.total} ({100 * self.done / self.total:.0f}%)"

    def end(self, status: str | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        r = self.reporter
        if r.mode == "lines":
            seconds = r.clock() - self.started
            count = f" {self.done}/{self.total}" if self.total > 1 else ""
            r.line(f"{self.description}: done{count} in {seconds:.1f} s" + (f" {status}" if status else ""))
        if r._current is self:
            r._current = None


class Reporter:
    """A progress factory with stage lines; see the module docstring."""

    def __init__(self, verbosity: int = NORMAL, mode: Mode = "auto", stream: TextIO | None = None,
                 interval: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 heartbeat: bool | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.verbosity = verbosity
        if verbosity <= QUIET:
            mode = "off"
        elif mode == "auto":
            isatty = getattr(self.stream, "isatty", None)
            mode = "bars" if isatty is not None and isatty() else "lines"
        self.mode: Mode = mode
        self.interval = interval
        self.clock = clock
        self._current: _Stage | None = None
        self._bar = None
        self._tasks: dict[int, int] = {}
        self._write_lock = threading.Lock()
        self._heartbeat = (clock is time.monotonic) if heartbeat is None else heartbeat
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _beat_loop(self) -> None:
        while not self._stop.wait(min(1.0, self.interval)):
            stage = self._current
            if stage is not None:
                stage.beat()

    # ------------------------------------------------------------------ the factory
    def __call__(self, description: str, total: int = 0) -> _Stage:
        if self._current is not None:
            self._current.end()
        stage = _Stage(self, description, total)
        self._current = stage
        if self.mode == "lines":
            self.line(f"{description}: started" + (f" ({total} steps)" if total and total > 1 else ""))
            if self._heartbeat and self._thread is None:
                self._thread = threading.Thread(target=self._beat_loop, name="traits-progress", daemon=True)
                self._thread.start()
        elif self.mode == "bars":
            bar = self._ensure_bar()
            self._tasks[id(stage)] = bar.add_task(description, total=total or None, status="")
        return stage

    def log(self, message: str) -> None:
        """A line for every mode but quiet (above the bars on a terminal)."""
        if self.mode == "off":
            return
        if self.mode == "bars":
            self._console().print(message, markup=False, highlight=False, emoji=False)
        else:
            self.line(message)

    def detail(self, message: str) -> None:
        """A line shown only with --verbose."""
        if self.verbosity >= VERBOSE:
            self.log(message)

    def line(self, message: str) -> None:
        try:
            with self._write_lock:
                self.stream.write(f"[{timestamp()}] {message}\n")
                self.stream.flush()
        except (OSError, ValueError):  # a closed or broken log stream must not stop the work
            pass

    # ------------------------------------------------------------------ rich bars
    def _console(self):
        from rich.console import Console

        if getattr(self, "_rich_console", None) is None:
            self._rich_console = Console(file=self.stream, markup=False, highlight=False, emoji=False)
        return self._rich_console

    def _ensure_bar(self):
        if self._bar is None:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("{task.description}", markup=False), BarColumn(),
                TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[status]}", markup=False),
                console=self._console(), transient=True,
            )
            self._bar.start()
        return self._bar

    def _bar_update(self, stage: _Stage, status: str | None) -> None:
        task = self._tasks.get(id(stage))
        if task is None or self._bar is None:
            return
        self._bar.update(task, completed=stage.done, total=stage.total or None, status=status or "")

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        if self._current is not None:
            self._current.end()
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def start_stage(progress, description: str) -> Callable[[], None]:
    """Open a one-step stage on a progress factory (or nothing, for None); call the result when done."""
    if progress is None:
        return lambda: None
    update = progress(description, 1)
    return lambda: update(1, 1)
