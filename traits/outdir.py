"""The output-folder policy: one folder, one audit, one writer at a time.

- **One audit per folder.** An audit marks its folder with ``.traits-audit.json`` (the spec, its hash and
  name). A later audit of the *same* spec (the spec minus :data:`IGNORED_FIELDS`)
  resumes there; an audit of another spec is refused (exit 2) unless ``overwrite`` is set, which first
  removes every artefact an audit writes (:data:`OWNED_FILES`, :data:`OWNED_DIRS`) and nothing else. A
  folder without the marker is judged by its ``results.json`` (folders written before the marker existed);
  reports without results (from an unknown audit) count as another audit's. So the results and reports
  in one folder always describe the same audit.
- **One writer per folder.** ``.traits.lock`` (pid, host, start time, purpose: at most
  :data:`PURPOSE_LIMIT` characters of it, so a lock is always small) is created atomically before anything
  is written and removed at the end by its holder (recognised by the lock file's identity and its random
  token, whatever else it holds). A second run on the folder is refused with a message naming the holder; a
  lock left by a run that died (its pid no longer exists on this host) is taken over. A lock that cannot be
  read (not a regular file, over :data:`LOCK_READ_LIMIT` bytes, not JSON, no pid) is held, not stale: the
  run is refused and the message says to delete the lock if no run owns it.
"""

from __future__ import annotations

import copy
import datetime as _dt
import functools
import hashlib
import json
import os
import shutil
import socket
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traits.errors import OutputError
from traits.files import OUTPUT_READ_LIMIT, ensure_dir, read_output_file, write_json_atomic
from traits.inputs import describe_kind

MARKER = ".traits-audit.json"
LOCK = ".traits.lock"
#: Files an audit writes into its folder (``--overwrite`` removes these, and only these, besides the dirs).
OWNED_FILES = ("results.json", "report.html", "report.pdf", "split_manifest.json", MARKER)
#: Folders an audit writes into its folder: 2D-surface resume files and the model it trained.
OWNED_DIRS = (".partial", "model")
REPORT_FILES = ("report.html", "report.pdf")
#: The most characters of a lock's purpose (it names the audit, whose name a spec may make long) recorded.
PURPOSE_LIMIT = 200
#: A lock file longer than this is not one TRAITS wrote: it is read as unreadable (held).
LOCK_READ_LIMIT = 64 << 10
#: Spec fields that do not change what an audit measures (where it is written, which formats, whether the surface
#: losses run compiled: the compiled loss is used only where it equals the plain one to 1e-5).
IGNORED_FIELDS = (("report", "out_dir"), ("report", "formats"), ("probes", "surface", "compile"))


# ------------------------------------------------------------------------------------------ identity


def audit_identity(spec_dict: dict[str, Any]) -> dict[str, Any]:
    """The parts of a spec (as a JSON-mode dict) that define the audit."""
    ident = copy.deepcopy(spec_dict) if isinstance(spec_dict, dict) else {}
    for *sections, key in IGNORED_FIELDS:
        node = ident
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(key, None)
    return ident


def spec_hash(spec_dict: dict[str, Any]) -> str:
    text = json.dumps(audit_identity(spec_dict), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _moved_file(stored: dict[str, Any], live: dict[str, Any], section: str, key: str,
               content_hash: str) -> dict[str, Any]:
    """``stored`` with its file path ``section.key`` (the data file, the checkpoint) replaced by the live one when
    they differ and the live file's content hash is ``content_hash`` (what the stored audit read); otherwise
    ``stored`` unchanged."""
    old, new = (d.get(section, {}).get(key) if isinstance(d.get(section), dict) else None for d in (stored, live))
    if not (isinstance(old, str) and isinstance(new, str)) or old == new:
        return stored
    if _content_hash(new) != content_hash:
        return stored
    moved = copy.deepcopy(stored)
    moved[section][key] = new
    return moved


def _content_hash(path: str) -> str | None:
    """The sha256 of a data file's bytes (as :func:`traits.data.sources.file_hash` records it), cached by
    the file's size and modification time; None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return _hash_of(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _hash_of(path: str, _size: int, _mtime_ns: int) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _project(live, stored):
    if isinstance(live, dict) and isinstance(stored, dict):
        return {k: _project(live[k], stored[k]) for k in stored if k in live}
    return live


def same_audit(stored: dict[str, Any], live: dict[str, Any], *, measurements_only: bool = False,
               data_hash: str | None = None, checkpoint_hash: str | None = None) -> bool:
    """Whether a stored spec and a live one describe the same audit. Fields added to the spec schema
    since the stored one was written (absent from it) are ignored, so upgrading TRAITS does not turn a
    folder's own audit into "another audit".

    ``data_hash`` is the content hash the stored audit recorded for its data file
    (``provenance.data_hash``). With it, a ``data.path`` that differs only because the data (or the whole
    checkout) moved is the same audit when the live path's file has that hash: the same bytes measured.
    ``checkpoint_hash`` (``provenance.checkpoint_sha256``) does the same for ``model.checkpoint``.

    ``measurements_only`` also ignores the gates: the question a campaign asks (are the numbers the same
    measurement?), since gates only turn numbers into a verdict and a finished audit is re-gated, not rerun,
    when they change. Without it, the gates count: a folder holds one audit, verdict included."""
    a, b = audit_identity(stored), audit_identity(live)
    if data_hash:
        a = _moved_file(a, b, "data", "path", data_hash)
    if checkpoint_hash:
        a = _moved_file(a, b, "model", "checkpoint", checkpoint_hash)
    if measurements_only:
        a, b = ({k: v for k, v in d.items() if k != "gates"} for d in (a, b))
    if not set(a) <= set(b):
        return False
    return _project(b, a) == a


# ------------------------------------------------------------------------------------------ the lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return True


def _read_lock(path: Path) -> dict | None:
    """The lock's content; None when there is no lock, {} when there is one that cannot be read as a lock
    (not a regular file, too long, not a JSON object). Never blocks: a named pipe is not opened for reading."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {}
        raw = os.read(fd, LOCK_READ_LIMIT + 1)
    except OSError:
        return {}
    finally:
        os.close(fd)
    if len(raw) > LOCK_READ_LIMIT:
        return {}
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _readable(holder: dict) -> bool:
    """Whether a lock's content names a process (a pid), as every lock TRAITS writes does."""
    pid = holder.get("pid")
    return isinstance(pid, int) and not isinstance(pid, bool)


def _is_stale(holder: dict) -> bool:
    """A lock whose process is gone (same host) is stale; one that cannot be read is not (it is held)."""
    if not _readable(holder):
        return False
    if holder.get("host") not in (None, socket.gethostname()):
        return False  # another machine (a shared file system): cannot tell, assume it is running
    return not _pid_alive(holder["pid"])


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


@dataclass
class OutputLock:
    path: Path
    info: dict
    identity: tuple[int, int] | None = None  # (device, inode) of the lock file this holder created

    def held(self) -> bool:
        """Whether the lock file at ``path`` is still the one this holder created: the same file (when its
        identity is known) holding this holder's token (or unreadable: then the identity decides)."""
        try:
            st = os.lstat(self.path)
        except OSError:
            return False
        if self.identity is not None and _identity(st) != self.identity:
            return False
        holder = _read_lock(self.path)
        if holder is None:
            return False
        if holder.get("token") == self.info["token"] and holder.get("pid") == self.info["pid"]:
            return True
        return self.identity is not None and not _readable(holder)

    def release(self) -> None:
        if self.held():
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def _busy(path: Path, holder: dict) -> OutputError:
    if not _readable(holder):
        return OutputError(
            f"{path.parent}: the folder's lock {path.name} cannot be read as a TRAITS lock, so another run may be "
            f"writing into this folder; wait for it to finish or use another --out. If no such run exists, "
            f"delete {path}"
        )
    who = f"pid {holder.get('pid')}"
    if holder.get("host"):
        who += f" on {_bounded(str(holder['host']))}"
    if holder.get("started"):
        who += f", started {_bounded(str(holder['started']))}"
    what = f" ({_bounded(str(holder['purpose']))})" if holder.get("purpose") else ""
    return OutputError(
        f"{path.parent}: another TRAITS run is writing into this folder ({who}{what}); wait for it to finish or "
        f"use another --out. If no such run exists, delete {path}"
    )


def _bounded(text: str) -> str:
    """``text`` cut to :data:`PURPOSE_LIMIT` characters (an ellipsis marks the cut)."""
    return text if len(text) <= PURPOSE_LIMIT else text[:PURPOSE_LIMIT - 1] + "…"


def acquire_lock(out_dir: Path, purpose: str = "") -> OutputLock:
    """Create ``out_dir/.traits.lock`` atomically (with its content), taking over a stale one."""
    out_dir = ensure_dir(Path(out_dir))
    path = out_dir / LOCK
    info = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": _bounded(purpose),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "token": os.urandom(8).hex()}
    for _attempt in range(5):
        try:
            fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f"{LOCK}.", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(info, fh)
        except OSError as exc:
            raise OutputError(f"{out_dir}: cannot create the lock file ({exc.strerror or exc})") from None
        try:
            os.link(tmp, path)  # atomic, and the lock never exists without its content
            return OutputLock(path, info, _identity(os.stat(tmp)))
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                identity = _identity(os.fstat(fd))
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump(info, fh)
                return OutputLock(path, info, identity)
            except FileExistsError:
                pass
            except OSError as exc:
                raise OutputError(f"{out_dir}: cannot create the lock file ({exc.strerror or exc})") from None
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        holder = _read_lock(path)
        if holder is None:
            continue  # released meanwhile
        if not _is_stale(holder):
            raise _busy(path, holder)
        # take the stale lock over: move it aside, and put it back if it turns out to be a fresh one
        aside = out_dir / f"{LOCK}.{os.getpid()}.{info['token']}.stale"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise OutputError(f"{path}: cannot remove the stale lock ({exc.strerror or exc})") from None
        moved = _read_lock(aside)
        if moved is not None and moved != holder and not _is_stale(moved):
            try:
                os.link(aside, path)
            except OSError:
                pass
            os.unlink(aside)
            raise _busy(path, moved)
        os.unlink(aside)
    raise OutputError(f"{path}: could not take the output folder's lock; try again")


# ------------------------------------------------------------------------------------------ ownership


@dataclass
class Owner:
    spec: dict | None  # None: unknown (unreadable evidence)
    evidence: str  # the file that says so
    spec_path: str = ""  # the spec file the marker names, when it names one
    data_hash: str | None = None  # the data file's content hash its results.json recorded, when it has one

    @property
    def name(self) -> str:
        return str((self.spec or {}).get("name", "?"))


def _read_json(path: Path, what: str, limit: int = OUTPUT_READ_LIMIT):
    """The JSON of a file in the output folder; None when it is missing, too long or not JSON. A path that is
    not a regular file (a named pipe, a device, a link to one) is an OutputError naming it (never read)."""
    raw = read_output_file(path, what, limit)
    if raw is None:
        return None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, MemoryError, ValueError):
        return None


def folder_owner(out_dir: Path) -> Owner | None:
    """Which audit a folder belongs to: from its marker, else its results.json, else None (no audit's
    artefacts) — or an Owner with spec None when there are artefacts of an unknown audit. A marker or
    results.json that is not a regular file is an OutputError naming it."""
    out_dir = Path(out_dir)
    marker = out_dir / MARKER
    if os.path.lexists(marker):
        data = _read_json(marker, "output folder's marker", 64 << 20)
        spec = data.get("spec") if isinstance(data, dict) else None
        spec_path = str(data.get("spec_path") or "") if isinstance(data, dict) else ""
        return Owner(spec if isinstance(spec, dict) else None, str(marker), spec_path,
                     _recorded_data_hash(out_dir / "results.json"))
    results = out_dir / "results.json"
    if os.path.lexists(results):
        data = _read_json(results, "results file")
        spec = data.get("spec") if isinstance(data, dict) else None
        return Owner(spec if isinstance(spec, dict) else None, str(results),
                     data_hash=_recorded_data_hash(results, data))
    reports = [name for name in REPORT_FILES if os.path.lexists(out_dir / name)]
    if reports:
        return Owner(None, str(out_dir / reports[0]))
    return None


def _recorded_data_hash(results: Path, data: Any = None) -> str | None:
    """The data file's content hash a results.json recorded (``provenance.data_hash``), else None."""
    if data is None:
        try:
            data = _read_json(results, "results file") if os.path.isfile(results) else None
        except OutputError:
            return None
    prov = data.get("provenance") if isinstance(data, dict) else None
    value = prov.get("data_hash") if isinstance(prov, dict) else None
    return value if isinstance(value, str) and value else None


def _foreign_artefact(path: Path, want_dir: bool) -> str | None:
    """What ``path`` is when it exists but is not what an audit writes there (a regular file, or a real
    directory for :data:`OWNED_DIRS`); None when it is missing or is that."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"not accessible ({exc.strerror or exc})"
    if stat.S_ISLNK(mode):
        kind = describe_kind(path)
        return kind if kind is not None and kind.startswith("a broken") else (
            f"a symbolic link (to {os.path.realpath(path)})")
    if (stat.S_ISDIR(mode) if want_dir else stat.S_ISREG(mode)):
        return None
    return describe_kind(path) or "not a regular file"


def remove_artefacts(out_dir: Path, keep: tuple[str, ...] = ()) -> list[str]:
    """Remove every file and folder an audit writes into ``out_dir`` (except ``keep``); return their names.
    An artefact path that holds something else than an audit writes there (a named pipe, a device, a socket,
    a symbolic link, a directory instead of a file) is an OutputError naming it, and nothing is removed."""
    names = [name for name in OWNED_FILES + OWNED_DIRS if name not in keep]
    for name in names:
        path = Path(out_dir) / name
        kind = _foreign_artefact(path, name in OWNED_DIRS)
        if kind is not None:
            expected = "a directory" if name in OWNED_DIRS else "a regular file"
            raise OutputError(f"{path}: --overwrite removes only what TRAITS writes there ({expected}), and this is "
                              f"{kind}; it was left alone: remove or move it yourself, or use another --out")
    removed = []
    for name in names:
        path = Path(out_dir) / name
        try:
            if name in OWNED_DIRS and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif name not in OWNED_DIRS and _foreign_artefact(path, False) is None and path.is_file():
                path.unlink()
            else:
                continue
        except OSError as exc:
            raise OutputError(f"{path}: cannot remove the stale artefact ({exc.strerror or exc})") from None
        removed.append(name)
    return removed


def _refusal(out_dir: Path, owner: Owner, name: str, new_hash: str, keep: tuple[str, ...]) -> OutputError:
    if owner.spec is None:
        what = f"artefacts of an unknown audit ({Path(owner.evidence).name} cannot be matched to a spec)"
    else:
        what = (f"the outputs of another audit ({owner.name!r}, spec hash {spec_hash(owner.spec)[:12]}, "
                f"per {Path(owner.evidence).name})")
    listed = ", ".join(n + ("/" if n in OWNED_DIRS else "") for n in OWNED_FILES + OWNED_DIRS if n not in keep)
    return OutputError(
        f"{out_dir}: the folder holds {what}; this audit ({name!r}, spec hash {new_hash[:12]}) would leave its "
        f"results and reports mixed with them. Use another --out, or --overwrite to replace them (removes "
        f"{listed} there)"
    )


def write_marker(out_dir: Path, spec_dict: dict, spec_path: str = "") -> Path:
    return write_json_atomic(Path(out_dir) / MARKER, {
        "traits_output": 1, "name": spec_dict.get("name"), "spec_hash": spec_hash(spec_dict),
        "spec_path": spec_path, "spec": spec_dict,
    })


def check_folder(out_dir: Path, spec_dict: dict, *, overwrite: bool = False, keep: tuple[str, ...] = (),
                 spec_path: str = "") -> list[str]:
    """Apply the one-audit-per-folder rule for an audit of ``spec_dict`` (JSON-mode) and mark the folder
    as its own. Returns the names of the artefacts removed (``overwrite``)."""
    owner = folder_owner(out_dir)
    removed: list[str] = []
    if overwrite:
        removed = remove_artefacts(out_dir, keep)
    elif owner is not None and (owner.spec is None or not same_audit(owner.spec, spec_dict, data_hash=owner.data_hash)):
        raise _refusal(Path(out_dir), owner, str(spec_dict.get("name")), spec_hash(spec_dict), keep)
    write_marker(out_dir, spec_dict, spec_path)
    return removed


def claim_output(out_dir: Path, spec, *, overwrite: bool = False, keep: tuple[str, ...] = (),
                 spec_path: str = "") -> OutputLock:
    """Lock ``out_dir`` and make it the folder of ``spec``'s audit (see the module docstring). The caller
    releases the returned lock when the audit ends."""
    spec_dict = spec.model_dump(mode="json") if hasattr(spec, "model_dump") else dict(spec)
    lock = acquire_lock(out_dir, purpose=f"audit {spec_dict.get('name')!r}")
    try:
        check_folder(out_dir, spec_dict, overwrite=overwrite, keep=keep, spec_path=spec_path)
    except BaseException:
        lock.release()
        raise
    return lock
