"""Progress of long stages: rich bars on a terminal, plain timestamped lines in logs (CI), or nothing.

A :class:`Reporter` is a *progress factory*: ``reporter(description, total)`` opens a stage and returns a
callback ``update(done, total, status=None)``. On a terminal each stage is a rich progress bar; when
stderr is not a terminal (a CI log, a file) each stage prints plain lines::

    [2026-12-01T08:40:12Z] building crystal graphs: started
    [2026-12-01T08:40:22Z] building crystal graphs: 800/2000 (40%)
    [2026-12-01T08:40:31Z] building crystal graphs: done 2000/2000 in 19.2 s

a progress line at most every ``interval`` seconds or each time another 10 % is done (a stage with a
``unit`` names it: ``Hessian id: 40/120 HVPs (33%)``), the count again every ``interval`` seconds while
nothing else was printed (a stage that reports no steps prints "still running" instead; both from a
heartbeat thread), and an end line with the stage's wall time (when the last item is done, when the
next stage opens, or when the reporter closes). ``verbosity`` 0 (``--quiet``) prints nothing, 2
(``--verbose``) prints every update and the detail lines. User strings are printed without rich markup.

Terminal safety. Whatever reaches the terminal or a CI log goes through :func:`safe_text`: control characters
(ESC and the other C0 and C1 codes, carriage returns, line and paragraph separators, bidirectional overrides) are
printed as Python-style escapes (ESC as ``\\x1b``, a newline in a user string as ``\\n``), and ``##[`` (a
workflow command anywhere in a GitHub Actions log line) as ``#\\x23[``, so a spec name, path or message can neither
drive the terminal (clear it, colour it, set its title, plant a link) nor start a line that GitHub reads as a
workflow command. :class:`SafeConsole` applies it to everything rich prints (keeping the line breaks of TRAITS'
own multi-line text); progress lines escape newlines too, and start with their timestamp. While a command runs
(:func:`safe_diagnostics`), Python warnings and library log records that nothing else handles are printed the same
way, each line starting with ``warning:``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import sys
import threading
import time
import unicodedata
import warnings
from collections.abc import Callable
from typing import Literal, TextIO

from rich.console import Console
from rich.text import Span, Text

Mode = Literal["auto", "bars", "lines", "off"]
QUIET, NORMAL, VERBOSE = 0, 1, 2


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _unsafe(ch: str) -> bool:
    return ch in _BIDI or unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp")


def _escapes(text: str, keep_newlines: bool) -> list[str]:
    """Each character of ``text`` as printed (see :func:`safe_text`)."""
    out = []
    for i, ch in enumerate(text):
        if ch == "#" and i > 0 and text[i - 1] == "#" and text[i + 1:i + 2] == "[":
            out.append("\\x23")
        elif ch == "\n" and keep_newlines:
            out.append(ch)
        elif _unsafe(ch):
            code = ord(ch)
            out.append(_NAMED.get(ch) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"))
        else:
            out.append(ch)
    return out


def _is_safe(text: str, keep_newlines: bool = False) -> bool:
    return "##[" not in text and not any(_unsafe(ch) and not (keep_newlines and ch == "\n") for ch in text)


def safe_text(text: object, keep_newlines: bool = False) -> str:
    """``text`` as printed on a terminal or in a CI log: control characters, line and paragraph separators,
    bidirectional overrides and lone surrogates (which no terminal encoding can print) as Python-style escapes
    (``\\x1b``, ``\\n``, ``\\u202e``, ``\\ud800``) and ``##[`` as
    ``#\\x23[``; ``keep_newlines`` keeps line breaks (TRAITS' own multi-line text). Other text is unchanged."""
    text = str(text)
    if _is_safe(text, keep_newlines):
        return text
    return "".join(_escapes(text, keep_newlines))


def safe_rich_text(text: Text) -> Text:
    """A rich Text with :func:`safe_text` applied (line breaks kept), its styles moved with the characters."""
    plain = text.plain
    if _is_safe(plain, keep_newlines=True):
        return text
    offsets, pos = [], 0
    pieces = _escapes(plain, keep_newlines=True)
    for piece in pieces:
        offsets.append(pos)
        pos += len(piece)
    offsets.append(pos)
    out = text.copy()
    out.plain = "".join(pieces)
    out.spans = [Span(offsets[s.start], offsets[min(s.end, len(plain))], s.style) for s in text.spans]
    return out


class SafeConsole(Console):
    """A rich Console for text that holds user strings: plain (no markup, highlighting or emoji codes), and every
    string and Text it renders, table cells and titles included, passes through :func:`safe_text` with line
    breaks kept. A user string that may hold a newline is escaped whole by the caller (``safe_text(name)``)."""

    def __init__(self, **kwargs) -> None:
        for key in ("markup", "highlight", "emoji"):
            kwargs.setdefault(key, False)
        super().__init__(**kwargs)

    def render_str(self, text: str, **kwargs) -> Text:
        return super().render_str(safe_text(text, keep_newlines=True), **kwargs)

    def render(self, renderable, options=None):
        if isinstance(renderable, Text):
            renderable = safe_rich_text(renderable)
        return super().render(renderable, options)


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """``warnings.formatwarning`` for a TRAITS command: one line ``warning: file:line: Category: message``, every
    part through :func:`safe_text`, so a library's warning that quotes a user string (a file name with ESC in it)
    neither drives the terminal nor starts a line with that string."""
    name = getattr(category, "__name__", "Warning")
    return f"warning: {safe_text(filename)}:{lineno}: {safe_text(name)}: {safe_text(message)}\n"


class SafeLogFormatter(logging.Formatter):
    """Log records as one line ``<level>: <message>`` (traceback included), through :func:`safe_text`."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {safe_text(super().format(record))}"


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record is emitted (as logging's own lastResort does)."""

    def __init__(self, level: int) -> None:
        logging.Handler.__init__(self, level)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.setStream; the stream is always the current stderr
        pass


@contextlib.contextmanager
def safe_diagnostics():
    """Until the block ends, Python warnings (their format: ``warnings.formatwarning``, so that recording them
    still works) and the log records no handler takes (``logging.lastResort``, where a library's warning goes when
    nothing configured logging) are printed on stderr through :func:`safe_text`, each line starting with
    ``warning:`` (or the record's level), never with a user string."""
    previous_format, previous_last = warnings.formatwarning, logging.lastResort
    install_safe_diagnostics()
    try:
        yield
    finally:
        warnings.formatwarning, logging.lastResort = previous_format, previous_last


def install_safe_diagnostics() -> None:
    """:func:`safe_diagnostics` for the rest of the process (a campaign worker, which runs nothing else)."""
    last = _StderrHandler(logging.WARNING)
    last.setFormatter(SafeLogFormatter())
    warnings.formatwarning, logging.lastResort = _format_warning, last


def timestamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Stage:
    def __init__(self, reporter: Reporter, description: str, total: int, unit: str = ""):
        self.reporter, self.description, self.total = reporter, description, int(total or 0)
        self.unit = f" {unit}" if unit else ""
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
            return f"{self.done}{self.unit} done"
        return f"{self.done}/{self.total}{self.unit} ({100 * self.done / self.total:.0f}%)"

    def end(self, status: str | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        r = self.reporter
        if r.mode == "lines":
            seconds = r.clock() - self.started
            count = f" {self.done}/{self.total}{self.unit}" if self.total > 1 else ""
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
    def __call__(self, description: str, total: int = 0, unit: str = "") -> _Stage:
        if self._current is not None:
            self._current.end()
        stage = _Stage(self, description, total, unit)
        self._current = stage
        if self.mode == "lines":
            self.line(f"{description}: started" + (f" ({total} {unit or 'steps'})" if total and total > 1 else ""))
            if self._heartbeat and self._thread is None:
                self._thread = threading.Thread(target=self._beat_loop, name="traits-progress", daemon=True)
                self._thread.start()
        elif self.mode == "bars":
            bar = self._ensure_bar()
            self._tasks[id(stage)] = bar.add_task(safe_text(description), total=total or None, status="")
        return stage

    def log(self, message: str) -> None:
        """A line for every mode but quiet (above the bars on a terminal)."""
        if self.mode == "off":
            return
        if self.mode == "bars":
            self._console().print(safe_text(message), markup=False, highlight=False, emoji=False)
        else:
            self.line(message)

    def detail(self, message: str) -> None:
        """A line shown only with --verbose."""
        if self.verbosity >= VERBOSE:
            self.log(message)

    def line(self, message: str) -> None:
        try:
            with self._write_lock:
                self.stream.write(f"[{timestamp()}] {safe_text(message)}\n")
                self.stream.flush()
        except (OSError, ValueError):  # a closed or broken log stream must not stop the work
            pass

    # ------------------------------------------------------------------ rich bars
    def _console(self):
        if getattr(self, "_rich_console", None) is None:
            self._rich_console = SafeConsole(file=self.stream)
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
        self._bar.update(task, completed=stage.done, total=stage.total or None, status=safe_text(status or ""))

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


def counted_stage(progress, description: str, total: int, unit: str) -> Callable[..., None] | None:
    """Open a stage of ``total`` steps counted in ``unit`` (e.g. "HVPs") on a progress factory; None for None. A
    :class:`Reporter` prints the unit with the count; any other factory is called as ``progress(description,
    total)``. The result is called as ``update(done, total)``; a stage ends when done reaches its total or when the
    next stage opens."""
    if progress is None:
        return None
    if isinstance(progress, Reporter):
        return progress(description, total, unit=unit)
    return progress(description, total)
