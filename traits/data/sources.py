"""Readers for each data source, all yielding :class:`Entry` objects (id, target, structure text).

Structures are kept as the text they came in (a CIF string or a JSON structure dict) and parsed by
pymatgen only when a graph has to be built, so a warm graph cache skips parsing altogether.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from traits.errors import DataError

StructureFormat = Literal["cif", "pymatgen-dict", "jarvis-atoms"]

#: Default field names of each target per source kind.
DEFAULT_TARGET_FIELDS: dict[str, dict[str, list[str]]] = {
    "mp": {"formation_energy_per_atom": ["formation_energy_per_atom"], "band_gap": ["band_gap"]},
    "sample": {"formation_energy_per_atom": ["formation_energy_per_atom"], "band_gap": ["band_gap"]},
    "jarvis": {"formation_energy_per_atom": ["formation_energy_peratom"], "band_gap": ["optb88vdw_bandgap"]},
    "csv": {"formation_energy_per_atom": ["formation_energy_per_atom"], "band_gap": ["band_gap"]},
    "ase": {"formation_energy_per_atom": ["formation_energy_per_atom"], "band_gap": ["band_gap"]},
}

SAMPLE_FILE = "mp_sample.jsonl.gz"


@dataclass(frozen=True)
class Entry:
    """One compound as read from a source: its id, target value and structure text."""

    id: str
    target: float
    payload: str
    fmt: StructureFormat

    def structure(self):
        """Parse the structure with pymatgen (raises ``ValueError`` on an unreadable structure)."""
        from pymatgen.core import Lattice, Structure

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.fmt == "cif":
                try:
                    return Structure.from_str(self.payload, fmt="cif")
                except Exception as exc:  # pymatgen raises many kinds for bad CIFs
                    raise ValueError(f"unreadable CIF: {exc}") from exc
            data = json.loads(self.payload)
            try:
                if self.fmt == "pymatgen-dict":
                    return Structure.from_dict(data)
                lattice = Lattice(data["lattice_mat"])
                return Structure(
                    lattice,
                    [s.strip() for s in data["elements"]],
                    data["coords"],
                    coords_are_cartesian=bool(data.get("cartesian", False)),
                )
            except Exception as exc:
                raise ValueError(f"unreadable structure: {exc}") from exc


@dataclass
class SourceData:
    """What a reader returns: the usable entries, counted skips and a hash of the raw file."""

    entries: list[Entry]
    skipped: Counter = field(default_factory=Counter)
    data_hash: str = ""
    source: str = ""


def sample_path() -> Path:
    """Path of the Materials Project sample shipped inside the package."""
    return Path(str(resources.files("traits.data") / "sample" / SAMPLE_FILE))


def file_hash(path: Path) -> str:
    from traits.inputs import require_file

    require_file(Path(path), "data file", DataError)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the data file ({exc})") from exc
    return digest.hexdigest()


def _open_text(path: Path) -> io.TextIOBase:
    """The file's text (gzip or plain), after checking it is a regular file whose text fits in memory."""
    from traits.inputs import check_fits, file_size, require_file

    require_file(path, "data file", DataError)
    size = file_size(path)
    with open(path, "rb") as fh:
        magic = fh.read(2)
        if magic == b"\x1f\x8b" and size >= 18:
            fh.seek(-4, io.SEEK_END)  # gzip trailer: the uncompressed size modulo 2**32
            size = max(size, int.from_bytes(fh.read(4), "little"))
    check_fits(path, 2 * size, "data file", DataError)  # the text, and the records parsed from it
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _read_all(path: Path) -> str:
    try:
        with _open_text(path) as fh:
            return fh.read()
    except MemoryError:
        raise DataError(f"{path}: the data file does not fit in the available memory") from None
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable or truncated data file ({type(exc).__name__}: {exc})") from exc


def _json_records(path: Path) -> Iterator[dict[str, Any]]:
    """Records from a JSON list, a JSON object of records, or JSON Lines (plain or gzip)."""
    text = _read_all(path)
    stripped = text.lstrip()
    if not stripped:
        raise DataError(f"{path}: the data file is empty")
    if stripped[0] == "[":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc}); is the file truncated?") from exc
        except RecursionError:
            raise DataError(f"{path}: the JSON is nested too deeply to be a list of records") from None
        yield from data
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {lineno} is not valid JSON ({exc}); is the file truncated?") from exc
        except RecursionError:
            raise DataError(f"{path}: line {lineno} is nested too deeply to be a record") from None


def _to_float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _pick(record: dict[str, Any], names: list[str]) -> tuple[str | None, Any]:
    for name in names:
        if name in record:
            return name, record[name]
    return None, None


def _target_names(kind: str, target: str, column: str | None) -> list[str]:
    """Fields to read the target from; none for the label-free target 'model' (every entry gets NaN); a target
    without a default field is read from the field of its own name."""
    if target == "model":
        return []
    return [column] if column else DEFAULT_TARGET_FIELDS[kind].get(target, [target])


def _read_json_source(
    path: Path,
    names: list[str],
    record_id: Callable[[dict[str, Any], int], str],
    structure: Callable[[dict[str, Any]], tuple[str, StructureFormat] | str],
) -> SourceData:
    """The records of a JSON / JSONL source: ``record_id(record, index)`` names each, its target is the
    first of ``names`` it has, and ``structure(record)`` gives (structure text, format) or the reason to
    skip it. Records that are not objects or lack a numeric target are skipped and counted."""
    out = SourceData(entries=[], data_hash=file_hash(path), source=str(path))
    seen_target = False
    for i, rec in enumerate(_json_records(path)):
        if not isinstance(rec, dict):
            out.skipped["record is not a JSON object"] += 1
            continue
        rid = record_id(rec, i)
        name, raw = _pick(rec, names)
        seen_target |= name is not None or not names
        value = _to_float(raw) if names else math.nan  # JARVIS writes "na" for missing values
        if value is None:
            out.skipped["missing or non-numeric target"] += 1
            continue
        found = structure(rec)
        if isinstance(found, str):
            out.skipped[found] += 1
            continue
        out.entries.append(Entry(rid, value, *found))
    if not seen_target:
        raise DataError(f"{path}: no record has the target field {names[0]!r}")
    return out


def _mp_structure(rec: dict[str, Any]) -> tuple[str, StructureFormat] | str:
    if isinstance(rec.get("cif"), str):
        return rec["cif"], "cif"
    if isinstance(rec.get("structure"), dict):
        return json.dumps(rec["structure"], sort_keys=True), "pymatgen-dict"
    return "no structure (neither 'cif' nor 'structure')"


def _jarvis_structure(rec: dict[str, Any]) -> tuple[str, StructureFormat] | str:
    atoms = rec.get("atoms")
    if not isinstance(atoms, dict):
        return "no 'atoms' structure"
    return json.dumps(atoms, sort_keys=True), "jarvis-atoms"


def read_mp(path: Path, target: str, column: str | None = None, kind: str = "mp") -> SourceData:
    """Materials Project records: ``material_id``, the target, and ``cif`` or ``structure`` (a dict)."""
    return _read_json_source(
        path,
        _target_names(kind, target, column),
        lambda rec, i: str(rec.get("material_id", rec.get("task_id", f"row-{i}"))),
        _mp_structure,
    )


def read_jarvis(path: Path, target: str, column: str | None = None) -> SourceData:
    """JARVIS-DFT records: ``jid``, ``atoms`` (lattice_mat, coords, elements, cartesian) and targets."""
    return _read_json_source(
        path,
        _target_names("jarvis", target, column),
        lambda rec, i: str(rec.get("jid", f"row-{i}")),
        _jarvis_structure,
    )


def read_csv(
    path: Path,
    target: str,
    column: str | None = None,
    id_column: str | None = None,
    structure_column: str | None = None,
) -> SourceData:
    """A CSV file with an id column, a CIF column and target columns (plain or gzip)."""
    tcol = (_target_names("csv", target, column) or [None])[0]
    icol = id_column or "material_id"
    scol = structure_column or "cif"
    text = _read_all(path)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        # strict: a quoted field cut off by the end of the file is an error, not a short record
        reader = csv.DictReader(io.StringIO(text), strict=True)
        header = reader.fieldnames or []
        missing = [c for c in (tcol, scol) if c is not None and c not in header]
        if missing:
            raise DataError(f"{path}: column(s) {missing} not found; the file has {header}")
        out = SourceData(entries=[], data_hash=file_hash(path), source=str(path))
        for i, row in enumerate(reader):
            if None in row or any(v is None for v in row.values()):
                n_fields = len(header) - sum(v is None for v in row.values()) + len(row.get(None) or [])
                raise DataError(
                    f"{path}: line {reader.line_num} has {n_fields} fields but the header has {len(header)}; "
                    "is the file truncated?"
                )
            value = _to_float(row.get(tcol)) if tcol is not None else math.nan
            if value is None:
                out.skipped["missing or non-numeric target"] += 1
                continue
            cif = row.get(scol)
            if not cif:
                out.skipped["empty structure cell"] += 1
                continue
            out.entries.append(Entry(str(row.get(icol) or f"row-{i}"), value, cif, "cif"))
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc}); is the file truncated?") from exc
    return out


def read_ase(path: Path, target: str, column: str | None = None, id_column: str | None = None) -> SourceData:
    """Any file ASE reads (extxyz, an ASE database ``.db``, CIF, POSCAR, ...), every frame / row one compound.

    The target is the frame's ``info`` (database: key-value pair) named ``column`` or the target's own name, or,
    for ``energy_per_atom`` without such a field, the attached calculator's energy divided by the atoms; the id is
    ``info[id_column or 'material_id']`` or ``<file stem>-<index>``. Needs ``pip install 'traits-audit[ase]'``."""
    try:
        import ase.io
    except ImportError:
        raise DataError(f"{path}: reading ASE files needs the 'ase' package: run `pip install 'traits-audit[ase]'`") \
            from None
    from pymatgen.io.ase import AseAtomsAdaptor

    names = _target_names("ase", target, column) if target != "model" else []
    out = SourceData(entries=[], data_hash=file_hash(path), source=str(path))
    try:
        frames = ase.io.read(str(path), index=":")
    except Exception as exc:  # ASE raises many kinds for unreadable files
        raise DataError(f"{path}: ASE cannot read this file ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(frames, list):
        frames = [frames]
    key = id_column or "material_id"
    for i, atoms in enumerate(frames):
        info = dict(atoms.info or {})
        rid = str(info.get(key, f"{Path(path).name.split('.')[0]}-{i}"))
        value: float | None = math.nan
        if names:
            _name, raw = _pick(info, names)
            value = _to_float(raw)
            if value is None and target == "energy_per_atom" and atoms.calc is not None and len(atoms):
                try:
                    value = _to_float(atoms.get_potential_energy() / len(atoms))
                except Exception:  # no stored energy
                    value = None
        if value is None:
            out.skipped["missing or non-numeric target"] += 1
            continue
        try:
            structure = AseAtomsAdaptor.get_structure(atoms)
        except Exception:
            out.skipped["not a periodic crystal (no cell)"] += 1
            continue
        out.entries.append(Entry(rid, value, json.dumps(structure.as_dict(), sort_keys=True, default=float),
                                 "pymatgen-dict"))
    return out


def read_source(data_spec) -> SourceData:
    """Dispatch on ``data_spec.source`` (a :class:`traits.spec.DataSpec`)."""
    kind = data_spec.source
    if kind == "sample":
        return read_mp(sample_path(), data_spec.target, data_spec.target_column, kind="sample")
    path = Path(data_spec.path)
    if kind == "mp":
        data = read_mp(path, data_spec.target, data_spec.target_column)
    elif kind == "jarvis":
        data = read_jarvis(path, data_spec.target, data_spec.target_column)
    elif kind == "ase":
        data = read_ase(path, data_spec.target, data_spec.target_column, data_spec.id_column)
    elif kind == "csv":
        data = read_csv(path, data_spec.target, data_spec.target_column, data_spec.id_column,
                        data_spec.structure_column)
    else:  # pragma: no cover - the spec restricts the kinds
        raise DataError(f"unknown data source {kind!r}")
    if not data.entries:
        raise DataError(f"{path}: no usable records ({dict(data.skipped) or 'the file has none'})")
    check_unique_ids(path, data.entries)
    return data


def check_unique_ids(path: Path, entries: list[Entry]) -> None:
    """A DataError naming the file and the first id that two records share."""
    first: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if entry.id in first:
            raise DataError(
                f"{path}: duplicate compound id {entry.id!r} (usable records {first[entry.id] + 1} and {i + 1}); "
                "every compound needs its own id"
            )
        first[entry.id] = i
