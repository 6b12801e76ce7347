"""Checks on input files before they are opened: that a path is a regular file (not a directory, a named
pipe or a device, whose reads can block forever or never end), that a file read whole into memory
fits, that a compressed stream is bounded while it expands, and that a YAML file does not expand without
bound through its aliases.

Every check raises the caller's :class:`~traits.errors.TraitsError` subclass with a message naming the
file and the reason, so the CLI reports it as bad input (exit 2).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from traits.errors import TraitsError

#: Files that are small by nature (specs, gate files, checkpoint sidecars): refused above this size.
SMALL_FILE_LIMIT = 64 << 20
#: Most of the available memory one file read whole may take (the rest is for what is built from it).
MEMORY_SHARE = 0.5



def parse_json(text: str, error: type[TraitsError], bad: Callable[[ValueError], str], deep: str):
    """``json.loads(text)`` with every way it can fail turned into ``error``: bad JSON and a value JSON cannot hold
    (an integer longer than Python's digit limit raises a plain ValueError, not a JSONDecodeError) give
    ``error(bad(exc))``, nesting deeper than the recursion limit gives ``error(deep)``. The messages are the
    caller's, naming its file."""
    import json

    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise error(bad(exc)) from None
    except RecursionError:
        raise error(deep) from None

def describe_kind(path: Path) -> str | None:
    """None for a regular file (or a symlink to one); otherwise what the path is, in words."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return f"a broken symbolic link (to {os.readlink(path)})"
        return "missing"
    except PermissionError:
        return "not accessible (permission denied)"
    except OSError as exc:
        return f"not accessible ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    kinds = [(stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]
    what = next((name for test, name in kinds if test(mode)), "not a regular file")
    if os.path.islink(path):
        what += f" (the symbolic link points to {os.path.realpath(path)})"
    return what


def require_file(path: Path, what: str, error: type[TraitsError] = TraitsError) -> Path:
    """``path`` when it is a readable regular file; else ``error`` saying what it is instead."""
    path = Path(path)
    kind = describe_kind(path)
    if kind == "missing":
        raise error(f"{path}: no such {what}")
    if kind is not None:
        raise error(f"{path}: the {what} is {kind}, not a regular file")
    if not os.access(path, os.R_OK):
        raise error(f"{path}: the {what} is not readable (permission denied)")
    return path


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux: MemAvailable), or None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def check_fits(path: Path, size: int, what: str, error: type[TraitsError] = TraitsError,
               limit: int | None = None) -> None:
    """Refuse to read ``size`` bytes of ``path`` into memory when they exceed ``limit`` or would not fit
    in the available memory (with room to spare for what is built from them)."""
    if limit is not None and size > limit:
        raise error(f"{path}: the {what} is {_human(size)}, more than the {_human(limit)} such a file may have; "
                    "is it the right file?")
    free = available_memory()
    if free is not None and size > MEMORY_SHARE * free:
        raise error(f"{path}: the {what} needs {_human(size)} of memory to read but only {_human(free)} is "
                    "available; free memory or use a machine with more")


def file_size(path: Path) -> int:
    return os.stat(path).st_size


def read_text_checked(path: Path, what: str, error: type[TraitsError] = TraitsError,
                      limit: int | None = SMALL_FILE_LIMIT) -> str:
    """The UTF-8 text of a regular file, after the kind and size checks above."""
    path = require_file(path, what, error)
    check_fits(path, file_size(path), what, error, limit)
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read the {what} ({exc})") from None


def read_stream_bounded(stream, path: Path, what: str, error: type[TraitsError], limit: int,
                        why: str = "such a file may have", chunk: int = 1 << 20) -> bytearray:
    """The bytes of ``stream`` (e.g. a gzip stream), read in chunks and refused with ``error`` as soon as more
    than ``limit`` bytes have come: what a compressed file expands to is bounded while it is read, whatever
    its header or trailer claims."""
    out = bytearray()
    while True:
        block = stream.read(min(chunk, limit + 1 - len(out)))
        if not block:
            return out
        out += block
        if len(out) > limit:
            raise error(f"{path}: the {what} expands to more than {_human(limit)}, the most {why}; reading stopped "
                        "there. Is it the right file?")


#: Most values a YAML file may expand to through its aliases (a spec has a few hundred).
MAX_YAML_VALUES = 100_000


def load_yaml_text(text: str, path: Path, error: type[TraitsError] = TraitsError, *, aliases: bool = True):
    """The data of one YAML document, loaded safely (no tags that construct objects), with ``error`` naming
    ``path`` and the line for: invalid YAML, nesting too deep, an alias (``*name``) when ``aliases`` is
    False, and a document that expands to more than :data:`MAX_YAML_VALUES` values through its aliases
    (an alias bomb) or refers to itself."""
    import yaml

    class Loader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if not aliases and self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise error(f"{path}: line {mark.line + 1}: YAML aliases (*name) are not allowed here; write the "
                            "value out in full")
            return super().compose_node(parent, index)

    loader = Loader(text)
    loader.name = str(path)  # error marks name the file
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _count_yaml_values(node, path, error)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None
    except RecursionError:
        raise error(f"{path}: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer too long to read (Python's int digit limit)
        raise error(f"{path}: cannot read a value of the YAML ({exc})") from None
    finally:
        loader.dispose()


def _count_yaml_values(root, path: Path, error: type[TraitsError]) -> int:
    """How many values the node graph ``root`` expands to, counting each alias use in full; ``error`` as soon
    as the count passes :data:`MAX_YAML_VALUES` or a node contains itself."""
    import yaml

    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise error(f"{path}: line {node.start_mark.line + 1}: the YAML refers to itself through an alias")
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > MAX_YAML_VALUES:
                raise error(f"{path}: line {node.start_mark.line + 1}: the YAML expands to more than "
                            f"{MAX_YAML_VALUES:,} values through its aliases (*name); write the values out instead")
        active.discard(key)
        sizes[key] = total
        return total

    return size(root)
