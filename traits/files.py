"""Atomic file writes: every result, report and checkpoint goes to a temporary file first and is
renamed into place, so an interrupted run never leaves a half-written file behind."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from traits.errors import OutputError


def ensure_dir(path: Path) -> Path:
    """Create a directory (and parents), with an OutputError a user can act on."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create the output directory ({exc.strerror or exc})") from exc
    if not os.access(path, os.W_OK):
        raise OutputError(f"{path}: the output directory is not writable")
    return path


def write_atomic(path: Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it onto ``path``."""
    path = Path(path)
    ensure_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions of a new file
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    return write_atomic(path, lambda tmp: Path(tmp).write_bytes(data))


def write_json_atomic(path: Path, payload) -> Path:
    return write_text_atomic(path, json.dumps(payload, indent=1, allow_nan=True))


def write_formats_atomic(out_dir: Path, stem: str, payload: dict[str, str | bytes]) -> dict[str, Path]:
    """Write ``out_dir/stem.FMT`` for each format of ``payload`` (text or bytes), each atomically; when one
    fails, the ones already written by this call are removed too, so the formats always describe one run."""
    written: dict[str, Path] = {}
    try:
        for fmt, data in payload.items():
            path = Path(out_dir) / f"{stem}.{fmt}"
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
