"""What reaches the terminal, part 2 (hostile report F6 and the lone-surrogate item): Python warnings and stray
log records printed during a command go through safe_text (no raw ESC or SO, no line starting with a user string),
and safe_text shows a lone surrogate as ``\\ud800`` so printing it never raises UnicodeEncodeError."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

from traits.progress import SafeConsole, safe_diagnostics, safe_text

ROOT = Path(__file__).resolve().parents[1]
HOSTILE = "\x1b[31m\x0e\u202e\ud800 ##[error]x\n::error title=forged::y"


def _assert_safe(text: str) -> None:
    assert not any(ch in text for ch in "\x1b\x0e\r\u202e\ud800"), repr(text)
    for line in text.splitlines():
        assert not line.lstrip().startswith("::") and "##[" not in line, repr(line)


NOISY_COMMAND = """
import logging, sys, warnings
import traits.threads

def noisy(*args, **kwargs):
    warnings.warn(HOSTILE, UserWarning, stacklevel=1)
    logging.getLogger("some.library").warning("glyph %s missing", HOSTILE)

traits.threads.configure_threads = noisy
from traits.cli import app
sys.argv = ["traits", "validate", sys.argv[1]]
app()
"""


def test_warnings_and_log_records_during_a_command_are_printed_escaped(tmp_path):
    """As in a real run (its own process and stderr): a warning and a library's log record (no logging
    configured) quoting hostile text, emitted while `traits validate` runs."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "always", "PYTHONIOENCODING": "utf-8"}
    script = f"HOSTILE = {HOSTILE!r}\n{NOISY_COMMAND}"
    res = subprocess.run([sys.executable, "-c", script, str(tmp_path / "missing.yaml")], capture_output=True,
                         env=env, timeout=120)
    stderr = res.stderr.decode("utf-8")
    assert res.returncode == 2, stderr
    _assert_safe(stderr)
    assert "warning: " in stderr and "UserWarning: \\x1b[31m\\x0e\\u202e\\ud800" in stderr
    assert "warning: glyph \\x1b[31m\\x0e" in stderr and "\\n::error title=forged" in stderr


def test_safe_diagnostics_restores_the_previous_handlers():
    fmt, last = warnings.formatwarning, logging.lastResort
    with safe_diagnostics():
        assert warnings.formatwarning is not fmt and logging.lastResort is not last
    assert warnings.formatwarning is fmt and logging.lastResort is last


def test_safe_text_escapes_a_lone_surrogate_so_printing_never_raises():
    assert safe_text("a\ud800b\udfffc") == "a\\ud800b\\udfffc"
    assert safe_text("Fe₂O₃ 😀") == "Fe₂O₃ 😀"  # a real astral character stays as it is
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    SafeConsole(file=stream, width=80).print("name \ud800 end")
    stream.flush()
    assert "name \\ud800 end" in stream.buffer.getvalue().decode("utf-8")


def test_a_campaign_workers_warnings_are_printed_escaped():
    """A local-pool worker prints its warnings through safe_text too (they reach the same terminal)."""
    import subprocess
    import sys

    code = ("import os, warnings\nfrom traits.study.executors import _start_worker\n"
            "_start_worker(1, os.getppid())\nwarnings.warn('glyph \\x1b[31m\\x0e missing\\n::error::x')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stderr and "\x0e" not in proc.stderr and "glyph" in proc.stderr
    assert not any(line.startswith("::") for line in proc.stderr.splitlines())
