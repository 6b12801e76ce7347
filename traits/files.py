"""Atomic file writes: every result, report and checkpoint goes to a temporary file first and is
renamed into place, so an interrupted run never leaves a half-written file behind.

What an output path may be (:func:`output_target`, checked before anything is written):

- **missing or a regular file**: the new file is written beside it and renamed onto it;
- **a symbolic link to a regular file**: written *through* the link: the new file is written beside the
  link's final target and renamed onto that, so the link stays and points to the new content. A link in a
  sticky world-writable folder (``/tmp``) is followed only when the current user owns it, as the kernel's
  ``protected_symlinks`` does for ``open``, so another user's link cannot redirect a write;
- **anything else** (a directory, a named pipe, a device, a socket, a broken link, a link to any of these)
  is refused with an :class:`~traits.errors.OutputError` naming the path (exit 2): a rename would replace a
  device or a pipe with a regular file, and writing into one could block or never end.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from traits.errors import OutputError
from traits.inputs import describe_kind

#: The most bytes :func:`read_output_file` reads of a file TRAITS wrote into an output folder, unless told.
OUTPUT_READ_LIMIT = 1 << 30


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


def read_output_file(path: Path, what: str, limit: int = OUTPUT_READ_LIMIT) -> bytes | None:
    """The bytes of a file TRAITS wrote into an output folder (a marker, a results.json, a manifest); None when
    there is none, or when it is longer than ``limit`` bytes (not one TRAITS wrote). Anything else at ``path``
    than a regular file or a symbolic link to one (a named pipe, a device, a socket, a directory, a broken link)
    is an :class:`~traits.errors.OutputError` naming it: it is never read, so a read never blocks or never
    ends."""
    path = Path(path)
    if not os.path.lexists(path):
        return None
    kind = describe_kind(path)
    if kind is None:
        try:  # non-blocking, and checked again on the open file: it may have been swapped since
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise OutputError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                chunks, size = [], 0
                while size <= limit:
                    block = os.read(fd, min(1 << 20, limit + 1 - size))
                    if not block:
                        return b"".join(chunks)
                    chunks.append(block)
                    size += len(block)
                return None
            kind = "not a regular file"
        except OSError as exc:
            raise OutputError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
        finally:
            os.close(fd)
    if kind == "missing":
        return None
    raise OutputError(f"{path}: the {what} is {kind}, not a regular file; TRAITS does not read it (a read could "
                      "block or never end): remove or move it, or use another --out")


def _foreign_link_in_sticky_dir(link: Path) -> bool:
    """Whether ``link`` is another user's symbolic link in a sticky, world-writable folder."""
    try:
        folder, own = os.stat(link.parent), os.lstat(link)
    except OSError:
        return False
    sticky_shared = bool(folder.st_mode & stat.S_ISVTX) and bool(folder.st_mode & stat.S_IWOTH)
    return sticky_shared and own.st_uid != os.geteuid() and own.st_uid != folder.st_uid


def output_target(path: Path) -> Path:
    """The file a write to ``path`` replaces: ``path`` itself when it is missing or a regular file, the
    final target of a symbolic link to a regular file; an OutputError for every other kind of path (see the
    module docstring)."""
    path = Path(path)
    kind = describe_kind(path)
    if os.path.islink(path):
        if kind is not None:
            what = kind if kind.startswith("a broken") else f"a symbolic link to {kind}"
            raise OutputError(f"{path}: the output path is {what}, not a regular file or a link to one; TRAITS "
                              "writes regular files only: give another path")
        if _foreign_link_in_sticky_dir(path):
            raise OutputError(f"{path}: the output path is another user's symbolic link in a shared folder "
                              f"(to {os.path.realpath(path)}); TRAITS does not follow it: give another path")
        return Path(os.path.realpath(path))
    if kind is None or kind == "missing":
        return path
    raise OutputError(f"{path}: the output path is {kind}, not a regular file; TRAITS writes regular files only "
                      "(it would replace it): give another path")


def write_atomic(path: Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path`` (or beside the regular file a symbolic
    link at ``path`` points to), then rename it onto that file. Returns ``path``."""
    path = Path(path)
    ensure_dir(path.parent)
    target = output_target(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions of a new file
        os.replace(tmp, target)
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
    fails, the ones already written by this call are removed too, so the formats always describe one run.
    Every path is checked (:func:`output_target`) before any is written."""
    paths = {fmt: Path(out_dir) / f"{stem}.{fmt}" for fmt in payload}
    targets = {fmt: output_target(path) for fmt, path in paths.items()}
    written: dict[str, Path] = {}
    try:
        for fmt, data in payload.items():
            if isinstance(data, bytes):
                write_bytes_atomic(paths[fmt], data)
            else:
                write_text_atomic(paths[fmt], data)
            written[fmt] = paths[fmt]
    except OutputError:
        for fmt in written:
            targets[fmt].unlink(missing_ok=True)
        raise
    return written
