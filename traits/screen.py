"""``traits screen``: predictions with per-compound uncertainty for unlabelled structures.

A checkpoint and structures without labels (CIF, POSCAR/CONTCAR/.vasp, Materials Project or JARVIS JSON
files) give, per compound, the prediction, its uncertainty by each cheap method, the distance to the
training set in the model's embedding, and a flag; per element and per chemical system a summary
(count, median uncertainty relative to the model's own ID test set, flag); and a screening report.

Calibration
-----------
What the scores need from the training data is stored once, beside the checkpoint, by ``traits train``
(and written by ``traits audit`` into its output folder when the uncertainty probe runs):
``<checkpoint stem>.calibration.json`` (:func:`write_calibration`). It holds the last-layer Laplace
posterior (:mod:`traits.probes.uncertainty`: the Gram matrix of the training features, the noise variance
= training MSE, the prior precision fitted on validation), a seeded sample of training embeddings for the
kNN distance, the recalibration sigma = sqrt(a^2 + b^2 u^2) of each score fitted on the validation
residuals, and the ID test set's scores (median and 95th percentile), the yardstick of the flags. Without
it, scores are uncalibrated: the last-layer score is the prior predictive spread (no training data), it
is compared with the screened set's own median, the kNN distance is unknown, and the outputs say so.

Flags: ``nan`` (the prediction is not finite; no number is written), ``high`` (an uncertainty or the kNN
distance above the ID test set's 95th percentile; without calibration: the score above twice the
screened set's median), ``ok`` otherwise. A chemistry is ``check`` when its median relative uncertainty
exceeds :data:`CHEMISTRY_RATIO` or more than half of its compounds are ``high``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from traits.data.graphs import DISORDERED
from traits.data.sources import Entry, read_structure_file
from traits.errors import DataError, TraitsError
from traits.files import ensure_dir, write_text_atomic

CALIBRATION_VERSION = 1
CALIBRATION_SUFFIX = ".calibration.json"
#: Training embeddings kept in the calibration file for the kNN distance.
MAX_TRAIN_ROWS = 500
#: A chemistry's median uncertainty above this multiple of the ID test set's median is flagged.
CHEMISTRY_RATIO = 1.5
KNN_K = 5
FLAG_QUANTILE = 0.95

STRUCTURE_SUFFIXES = (".cif", ".vasp", ".poscar")
JSON_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")


def calibration_path(checkpoint: Path) -> Path:
    """Where the calibration of ``checkpoint`` lives: beside it, ``<stem>.calibration.json``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name.split(".")[0] + CALIBRATION_SUFFIX)


# ---------------------------------------------------------------------------------------- scoring
def _batches(graphs: Sequence, device, dtype, batch_size: int = 256) -> list:
    from torch_geometric.data import Batch

    out = []
    for i in range(0, len(graphs), batch_size):
        b = Batch.from_data_list(list(graphs[i:i + batch_size])).to(device)
        for key in ("x", "edge_attr"):
            setattr(b, key, getattr(b, key).to(dtype))
        out.append(b)
    return out


def _forward(model, graphs: Sequence, device, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(predictions, last-layer features psi = s_y [phi, 1], embeddings phi) in one pass per batch."""
    from traits.probes.objective import eval_mode

    dtype = next(model.parameters()).dtype
    scale = float(getattr(model, "target_std", 1.0))
    shift = float(getattr(model, "target_mean", 0.0))
    preds, feats = [], []
    with torch.no_grad(), eval_mode(model):
        for b in _batches(graphs, device, dtype, batch_size):
            phi = model.embed(b)
            preds.append((model.fc_out(phi).reshape(-1) * scale + shift).to("cpu", torch.float64))
            feats.append(phi.to("cpu", torch.float64))
    if not preds:
        width = model.fc_out.in_features
        return np.zeros(0), np.zeros((0, width + 1)), np.zeros((0, width))
    phi = torch.cat(feats).numpy()
    psi = np.concatenate([phi, np.ones((len(phi), 1))], 1) * scale
    return torch.cat(preds).numpy(), psi, phi


def _targets(graphs: Sequence) -> np.ndarray:
    return np.array([float(g.y.reshape(-1)[0]) for g in graphs], dtype=np.float64)


def _summary(values: np.ndarray) -> dict:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"median": None, "p95": None, "n": 0}
    return {"median": float(np.median(v)), "p95": float(np.quantile(v, FLAG_QUANTILE)), "n": int(v.size)}


def build_calibration(model, splits: Mapping[str, Sequence], device, *, seed: int = 0) -> dict:
    """The calibration of a model from its own training, validation and ID test graphs (module docstring)."""
    from traits.probes import uncertainty as unc

    for need in ("train", "val"):
        if not splits.get(need):
            raise TraitsError(f"calibration needs the {need!r} split, which is empty or missing")
    p_tr, psi_tr, phi_tr = _forward(model, splits["train"], device)
    y_tr = _targets(splits["train"])
    ok = np.isfinite(p_tr) & np.isfinite(y_tr) & np.isfinite(psi_tr).all(1)
    noise_var = float(np.mean((p_tr[ok] - y_tr[ok]) ** 2))
    if not (noise_var > 0 and math.isfinite(noise_var)):
        raise TraitsError("calibration needs a positive, finite training MSE")
    p_va, psi_va, phi_va = _forward(model, splits["val"], device)
    r_va = _targets(splits["val"]) - p_va
    post = unc.fit_last_layer(psi_tr[ok], noise_var, val_features=psi_va, val_residuals=r_va)
    rng = np.random.default_rng(seed)
    rows = np.flatnonzero(ok)
    if len(rows) > MAX_TRAIN_ROWS:
        rows = np.sort(rng.choice(rows, MAX_TRAIN_ROWS, replace=False))
    ref = phi_tr[rows]
    knn = KnnReference(ref)
    std_va = np.sqrt(post.variance(psi_va))
    d_va = knn.distance(phi_va)
    out = {
        "version": CALIBRATION_VERSION,
        "n": {k: len(v) for k, v in splits.items()},
        "noise_var": noise_var,
        "last_layer": post.to_dict(),
        "knn": {"k": min(KNN_K, len(ref)), "train_embedding": np.round(ref, 6).tolist()},
        "recalibration": {"last_layer": unc.recalibrate(std_va, r_va).to_dict(),
                          "knn": unc.recalibrate(d_va, r_va).to_dict()},
        "val_mae": float(np.mean(np.abs(r_va[np.isfinite(r_va)]))),
        "id": None,
    }
    if splits.get("id"):
        p_id, psi_id, phi_id = _forward(model, splits["id"], device)
        err = np.abs(_targets(splits["id"]) - p_id)
        out["id"] = {"last_layer_std": _summary(np.sqrt(post.variance(psi_id))),
                     "knn_distance": _summary(knn.distance(phi_id)),
                     "mae": float(np.mean(err[np.isfinite(err)])) if np.isfinite(err).any() else None}
    return out


def write_calibration(model, splits: Mapping[str, Sequence], path: Path, device, *, seed: int = 0) -> Path:
    """Write :func:`build_calibration` to ``path`` (atomically)."""
    data = build_calibration(model, splits, device, seed=seed)
    write_text_atomic(Path(path), json.dumps(data))
    return Path(path)


class _Invalid(ValueError):
    """A calibration field that is missing, of the wrong type, or out of range: ``field`` names it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


def _get(mapping, key: str, where: str):
    if not isinstance(mapping, dict):
        raise _Invalid(where, f"must be a JSON object, got {type(mapping).__name__}")
    if key not in mapping:
        raise _Invalid(f"{where}.{key}" if where else key, "missing")
    return mapping[key]


def _real(value, field: str, *, low: float | None = None, strict: bool = False, null: bool = False) -> float | None:
    """A finite JSON number (not a string, not a boolean), above ``low`` (``strict``) or at least ``low``."""
    if value is None and null:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Invalid(field, f"must be a number, got {json.dumps(value)[:60]}")
    x = float(value)
    if not math.isfinite(x):
        raise _Invalid(field, f"must be finite, got {value}")
    if low is not None and (x <= low if strict else x < low):
        raise _Invalid(field, f"must be {'>' if strict else '>='} {low:g}, got {value}")
    return x


def _count(value, field: str, low: int) -> int:
    """A JSON integer of at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(field, f"must be an integer, got {json.dumps(value)[:60]}")
    if value < low:
        raise _Invalid(field, f"must be >= {low}, got {value}")
    return value


def _matrix(value, field: str) -> np.ndarray:
    """A non-empty rectangular list of lists of finite JSON numbers, as a float64 array."""
    if not isinstance(value, list) or not value or not all(isinstance(row, list) for row in value):
        raise _Invalid(field, "must be a non-empty list of rows (lists of numbers)")
    width = len(value[0])
    if width == 0 or any(len(row) != width for row in value):
        raise _Invalid(field, f"rows must all have the same, non-zero length (row 1 has {width})")
    if not all(type(x) in (float, int) for row in value for x in row):
        bad = next(x for row in value for x in row if type(x) not in (float, int))
        raise _Invalid(field, f"must hold numbers only, got {json.dumps(bad)[:60]}")
    out = np.asarray(value, dtype=np.float64)
    if not np.isfinite(out).all():
        raise _Invalid(field, "must hold finite numbers only")
    return out


def _reference(value, field: str) -> None:
    """``id.last_layer_std`` / ``id.knn_distance``: median and 95th percentile (positive, the percentile not below
    the median; both null when nothing was measured) and their count."""
    med = _real(_get(value, "median", field), f"{field}.median", low=0.0, strict=True, null=True)
    p95 = _real(_get(value, "p95", field), f"{field}.p95", low=0.0, strict=True, null=True)
    if (med is None) != (p95 is None):
        raise _Invalid(field, "median and p95 must both be numbers or both be null")
    if med is not None and p95 < med:
        raise _Invalid(f"{field}.p95", f"must be >= the median {med:g}, got {p95:g}")
    _count(_get(value, "n", field), f"{field}.n", 0)


def validate_calibration(data, embedding_width: int | None = None) -> None:
    """Every field the scores read, checked: types (JSON numbers, never strings or booleans), finite values,
    shapes consistent with each other (Gram matrix (h+1) x (h+1) for training embeddings of width h, and h the
    model's embedding width when ``embedding_width`` is given), a positive noise variance and prior precision,
    a Gram matrix that is symmetric positive semi-definite, recalibration coefficients >= 0 and not both 0,
    1 <= k <= the number of stored training embeddings, and the ID test set's reference scores positive.
    Raises :class:`_Invalid` naming the first bad field."""
    if not isinstance(data, dict):
        raise _Invalid("(top level)", f"must be a JSON object, got {type(data).__name__}")
    version = _get(data, "version", "")
    if version != CALIBRATION_VERSION:
        raise _Invalid("version", f"{json.dumps(version)[:40]}, expected {CALIBRATION_VERSION}")
    ll = _get(data, "last_layer", "")
    gram = _matrix(_get(ll, "gram", "last_layer"), "last_layer.gram")
    noise = _real(_get(ll, "noise_var", "last_layer"), "last_layer.noise_var", low=0.0, strict=True)
    prior = _real(_get(ll, "prior_precision", "last_layer"), "last_layer.prior_precision", low=0.0, strict=True)
    _count(_get(ll, "n_data", "last_layer"), "last_layer.n_data", 1)
    knn = _get(data, "knn", "")
    emb = _matrix(_get(knn, "train_embedding", "knn"), "knn.train_embedding")
    h = emb.shape[1]
    if embedding_width is not None and h != embedding_width:
        raise _Invalid("knn.train_embedding", f"rows of width {h}, but the model's embedding has width "
                       f"{embedding_width}: the calibration of another model?")
    if gram.shape != (h + 1, h + 1):
        raise _Invalid("last_layer.gram", f"shape {gram.shape[0]}x{gram.shape[1]}, expected {h + 1}x{h + 1} (the "
                       f"embedding width {h} plus the bias)")
    scale = max(float(np.abs(gram).max()), 1.0)
    if not np.allclose(gram, gram.T, rtol=1e-9, atol=1e-12 * scale):
        raise _Invalid("last_layer.gram", "is not symmetric")
    if float(np.linalg.eigvalsh(gram).min()) < -1e-8 * scale:
        raise _Invalid("last_layer.gram", "has a negative eigenvalue: not a Gram matrix")
    try:
        np.linalg.cholesky(gram / noise + prior * np.eye(h + 1))
    except np.linalg.LinAlgError:
        raise _Invalid("last_layer", "the posterior precision gram / noise_var + prior_precision I is not positive "
                       "definite") from None
    if "noise_var" in data:
        _real(data["noise_var"], "noise_var", low=0.0, strict=True)
    _count(_get(knn, "k", "knn"), "knn.k", 1)
    if knn["k"] > len(emb):
        raise _Invalid("knn.k", f"must be <= the {len(emb)} stored training embeddings, got {knn['k']}")
    rec = _get(data, "recalibration", "")
    for key in ("last_layer", "knn"):
        where = f"recalibration.{key}"
        one = _get(rec, key, "recalibration")
        a = _real(_get(one, "a", where), f"{where}.a", low=0.0)
        b = _real(_get(one, "b", where), f"{where}.b", low=0.0)
        if a == 0 and b == 0:
            raise _Invalid(where, "a and b are both 0: every sigma would be 0")
    ident = data.get("id")
    if ident is not None:
        if not isinstance(ident, dict):
            raise _Invalid("id", f"must be a JSON object or null, got {type(ident).__name__}")
        for key in ("last_layer_std", "knn_distance"):
            _reference(_get(ident, key, "id"), f"id.{key}")
        _real(_get(ident, "mae", "id"), "id.mae", low=0.0, null=True)


def load_calibration(path: Path, embedding_width: int | None = None) -> dict:
    """Read a calibration file and check it completely (:func:`validate_calibration`, against the model's
    embedding width when given); a file that is not a valid one is a DataError naming the file and the field."""
    from traits.inputs import SMALL_FILE_LIMIT, read_text_checked

    path = Path(path)
    text = read_text_checked(path, "calibration file", DataError, limit=max(SMALL_FILE_LIMIT, 64 << 20))
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise DataError(f"{path}: not a TRAITS calibration file (not valid JSON: {str(exc)[:200]})") from None
    try:
        validate_calibration(data, embedding_width)
    except _Invalid as exc:
        raise DataError(f"{path}: not a TRAITS calibration file: {exc}") from None
    return data


class KnnReference:
    """Mean distance to the k nearest stored training embeddings, standardised on those embeddings."""

    def __init__(self, train_embedding, k: int = KNN_K) -> None:
        self.train = np.asarray(train_embedding, dtype=np.float64)
        self.k = min(int(k), len(self.train))

    def distance(self, embedding) -> np.ndarray:
        from traits.probes.uncertainty import knn_distance

        e = np.asarray(embedding, dtype=np.float64)
        out = np.full(len(e), np.nan)
        ok = np.isfinite(e).all(1) if e.size else np.zeros(len(e), dtype=bool)
        if ok.any() and self.k >= 1:
            out[ok] = knn_distance(self.train, e[ok], self.k)
        return out


@dataclass
class Scores:
    """Per compound: prediction, last-layer Laplace std (functional) and its recalibrated predictive sigma,
    kNN distance (NaN when unknown), and the flag."""

    prediction: np.ndarray
    last_layer_std: np.ndarray
    last_layer_sigma: np.ndarray
    knn_distance: np.ndarray
    relative: np.ndarray
    flag: list[str]
    calibrated: bool
    seconds: float = 0.0


def score(model, graphs: Sequence, device, calibration: dict | None, batch_size: int = 256) -> Scores:
    """Predictions and cheap uncertainties of ``graphs`` (one forward pass, last-layer Laplace, kNN)."""
    from traits.probes.uncertainty import LastLayerLaplace, Recalibration

    t0 = time.perf_counter()
    pred, psi, phi = _forward(model, graphs, device, batch_size)
    finite = np.isfinite(pred) & np.isfinite(psi).all(1)
    n = len(pred)
    if calibration is not None:
        post = LastLayerLaplace.from_dict(calibration["last_layer"])
        std = np.full(n, np.nan)
        std[finite] = np.sqrt(post.variance(psi[finite]))
        sigma = Recalibration(**calibration["recalibration"]["last_layer"]).sigma(std)
        knn = KnnReference(calibration["knn"]["train_embedding"], calibration["knn"].get("k", KNN_K)).distance(phi)
        ident = calibration.get("id") or {}
        ref_std = (ident.get("last_layer_std") or {})
        ref_knn = (ident.get("knn_distance") or {})
        med = ref_std.get("median")
        cut_std, cut_knn = ref_std.get("p95"), ref_knn.get("p95")
    else:  # prior predictive only: no training data; relative to the screened set itself
        std = np.full(n, np.nan)
        std[finite] = np.sqrt((psi[finite] ** 2).sum(1))
        sigma = np.full(n, np.nan)
        knn = np.full(n, np.nan)
        med = float(np.median(std[finite])) if finite.any() else None
        cut_std = 2 * med if med is not None else None
        cut_knn = None
    relative = std / med if med else np.full(n, np.nan)
    flags = []
    for i in range(n):
        if not finite[i]:
            flags.append("nan")
        elif (cut_std is not None and std[i] > cut_std) or (cut_knn is not None and np.isfinite(knn[i])
                                                            and knn[i] > cut_knn):
            flags.append("high")
        else:
            flags.append("ok")
    pred = np.where(finite, pred, np.nan)
    return Scores(pred, std, sigma, knn, relative, flags, calibration is not None, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------- reading structures
@dataclass
class Inputs:
    entries: list = field(default_factory=list)   # traits.data.sources.Entry, target NaN
    sources: dict[str, str] = field(default_factory=dict)  # entry id -> file it came from
    skipped: Counter = field(default_factory=Counter)
    n_read: int = 0


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(JSON_SUFFIXES):
        return "json"
    if name.endswith(".extxyz") or name.endswith(".xyz"):
        return "extxyz"
    if name.endswith(STRUCTURE_SUFFIXES) or name.startswith(("poscar", "contcar")):
        return "structure"
    return "unknown"


def _unread(path: Path) -> str | None:
    """None for a regular file (or a link to one); otherwise why ``path`` is not read, in words shared by every
    such path (a named pipe, a device, a broken link, a link loop, a link to a folder: never followed)."""
    from traits.inputs import describe_kind

    kind = describe_kind(path)
    if kind is None:
        return None
    if kind.startswith("a broken symbolic link"):
        return "a broken symbolic link, not a regular file"
    if kind.startswith("not accessible"):
        return kind
    return kind.split(" (the symbolic link points to")[0] + ", not a regular file"


def _files(paths: Sequence[Path], out: Inputs) -> list[Path]:
    """The regular files of ``paths`` and of the folders among them (their subfolders too; a link to a folder is
    not followed); every other path found is counted in ``out`` as read and skipped, with the reason. A named
    path that does not exist is a DataError."""
    from traits.inputs import describe_kind

    files: list[Path] = []

    def skip(reason: str) -> None:
        out.n_read += 1
        out.skipped[reason] += 1

    def take(path: Path) -> None:
        reason = _unread(path)
        if reason is None:
            files.append(path)
        else:
            skip(reason)

    for p in paths:
        p = Path(p)
        if describe_kind(p) == "missing" and not p.is_symlink():
            raise DataError(f"{p}: no such file")
        if not p.is_dir():
            take(p)
            continue
        for q in sorted(p.rglob("*")):  # a folder named on the command line is read even through a link
            if q.is_dir() and not q.is_symlink():
                continue  # rglob descends into it
            if q.is_symlink() and q.is_dir():
                skip("a symbolic link to a folder, not followed")
            else:
                take(q)
    return files


@dataclass(frozen=True)
class _ParsedEntry(Entry):
    """An entry whose structure was parsed on reading (to check its sites): handed out again, not parsed twice."""

    parsed: Any = field(default=None, compare=False, repr=False)

    def structure(self):
        return self.parsed.copy() if self.parsed is not None else super().structure()


def read_inputs(paths: Sequence[Path]) -> Inputs:
    """Entries for every structure in ``paths`` (files or folders of files). Everything found that is not
    screened is counted in ``skipped`` with its reason (and in ``n_read``): a path that is not a regular file
    (named pipe, device, broken link, link loop), a file that is not a structure or cannot be read, a JSON file
    that does not parse, a record without a structure, and a structure with a partly occupied site
    (:data:`DISORDERED`)."""
    from traits.data.sources import _jarvis_structure, _json_records, _mp_structure

    out = Inputs()
    files = _files(paths, out)
    seen: Counter = Counter()

    def add(rid: str, payload: str, fmt: str, source: Path, structure=None) -> None:
        entry = Entry(rid, math.nan, payload, fmt)
        if structure is None:
            try:
                structure = entry.structure()
            except Exception:  # noqa: BLE001 - left to the graph builder, which counts it as unreadable
                structure = None
        if structure is not None and not structure.is_ordered:
            out.skipped[DISORDERED] += 1
            return
        seen[rid] += 1
        if seen[rid] > 1:
            rid = f"{rid}#{seen[rid]}"
        out.entries.append(_ParsedEntry(rid, math.nan, payload, fmt, structure))
        out.sources[rid] = str(source)

    for f in files:
        kind = _kind(f)
        if kind == "json":
            try:
                records = list(_json_records(f))
            except DataError:
                out.n_read += 1
                out.skipped["unreadable JSON file"] += 1
                continue
            for i, rec in enumerate(records):
                out.n_read += 1
                if not isinstance(rec, dict):
                    out.skipped["record is not a JSON object"] += 1
                    continue
                found = _mp_structure(rec) if ("cif" in rec or "structure" in rec) else _jarvis_structure(rec)
                if isinstance(found, str):
                    out.skipped[found] += 1
                    continue
                rid = str(rec.get("material_id") or rec.get("jid") or rec.get("id") or f"{f.name}:{i}")
                add(rid, found[0], found[1], f)
            continue
        out.n_read += 1
        if kind == "extxyz":
            out.skipped["extxyz needs ASE (pip install ase); not read"] += 1
            continue
        if kind == "unknown":
            out.skipped["not a structure file (CIF, POSCAR, .vasp, MP/JARVIS JSON)"] += 1
            continue
        try:
            structure = read_structure_file(f)  # bounded, parsed from its text: never imports code
        except DataError as exc:
            out.skipped["structure file too large when decompressed" if "expands to more than" in str(exc)
                        else "unreadable structure file"] += 1
            continue
        add(str(f.name), json.dumps(structure.as_dict()), "pymatgen-dict", f, structure)
    return out


def _build(entries: Sequence, settings):
    """The graphs of ``entries``; a structure whose graph cannot be built (a DataError such as a GraphError) is
    skipped and counted with the error's message, the others are built: a screen never stops on one structure."""
    from traits.data.graphs import GraphSet, build_graphs

    try:
        return build_graphs(entries, settings)
    except DataError:
        pass  # one entry stops the batch: build them one by one to find it
    built = GraphSet(graphs=[])
    for entry in entries:
        try:
            one = build_graphs([entry], settings)
        except DataError as exc:
            built.skipped[f"graph not built: {str(exc)[:200]}"] += 1
            continue
        built.graphs.extend(one.graphs)
        built.skipped.update(one.skipped)
        built.built += one.built
    return built


# ---------------------------------------------------------------------------------------- chemistry
def _chemistry(graph) -> tuple[list[str], str, str]:
    from pymatgen.core import Composition
    from pymatgen.core.periodic_table import Element

    zs = graph.z.tolist()
    counts = Counter(Element.from_Z(int(z)).symbol for z in zs)
    formula = Composition(dict(counts)).reduced_formula
    return sorted(counts), "-".join(sorted(counts)), formula


def chemistry_summary(rows: list[dict], key: str, calibrated: bool) -> list[dict]:
    """Per element (``key='elements'``) or chemical system (``'chemsys'``): count, median relative
    uncertainty, median kNN distance relative to the ID test set, share flagged high, flag."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        for g in (row["elements"] if key == "elements" else [row["chemsys"]]):
            groups.setdefault(g, []).append(row)
    out = []
    for name, members in groups.items():
        rel = np.array([m["relative_uncertainty"] for m in members if m["relative_uncertainty"] is not None])
        knn = np.array([m["knn_relative"] for m in members if m.get("knn_relative") is not None])
        high = sum(m["flag"] == "high" for m in members)
        nan = sum(m["flag"] == "nan" for m in members)
        med = float(np.median(rel)) if rel.size else None
        flag = "check" if ((med is not None and med > CHEMISTRY_RATIO) or high > len(members) / 2 or nan) else "ok"
        out.append({"name": name, "count": len(members), "median_relative_uncertainty": med,
                    "median_knn_relative": float(np.median(knn)) if knn.size else None,
                    "share_high": high / len(members), "n_nan": nan, "flag": flag})
    out.sort(key=lambda g: (-(g["median_relative_uncertainty"] or 0.0), g["name"]))
    return out


def _num(x) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


# ---------------------------------------------------------------------------------------- the command
@dataclass
class ScreenResult:
    out_dir: Path
    n_read: int
    n_screened: int
    skipped: dict
    calibrated: bool
    n_flagged: int
    n_nan: int
    files: dict[str, Path]
    document: dict


def screen(checkpoint: Path, paths: Sequence[Path], out_dir: Path, *, fmt: str = "auto",
           calibration: Path | None = None, device: torch.device | None = None,
           formats: Sequence[str] = ("html", "pdf"), batch_size: int = 256) -> ScreenResult:
    """Screen unlabelled structures with a checkpoint; write predictions.csv/json and the report."""
    from traits.models.checkpoint import load_checkpoint
    from traits.models.inference import detect_format, unit_of
    from traits.spec import GraphSpec

    device = device or torch.device("cpu")
    checkpoint = Path(checkpoint)
    if fmt == "auto":
        fmt = detect_format(checkpoint)
    model, meta = load_checkpoint(checkpoint, fmt, device=device)
    model = model.eval()
    if not (hasattr(model, "embed") and hasattr(model, "fc_out")):
        raise TraitsError(f"{checkpoint}: the model has no embedding and linear output layer to score")
    if fmt == "cgcnn-original":
        from traits.models.cgcnn_original import ORIGINAL_GRAPH

        settings = GraphSpec(**ORIGINAL_GRAPH)
    else:
        settings = GraphSpec(**meta["graph"]) if meta.get("graph") else GraphSpec()
    cal_file = Path(calibration) if calibration is not None else calibration_path(checkpoint)
    cal = (load_calibration(cal_file, embedding_width=model.fc_out.in_features)
           if (calibration is not None or cal_file.is_file()) else None)
    inputs = read_inputs(paths)
    built = _build(inputs.entries, settings)
    skipped = Counter(inputs.skipped)
    skipped.update(built.skipped)
    graphs = built.graphs
    sc = score(model, graphs, device, cal, batch_size)
    unit = unit_of(meta)
    ref_knn = ((cal or {}).get("id") or {}).get("knn_distance") or {}
    rows = []
    for i, g in enumerate(graphs):
        elements, chemsys, formula = _chemistry(g)
        rid = str(g.material_id)
        knn = _num(sc.knn_distance[i])
        rows.append({
            "id": rid, "source": Path(inputs.sources.get(rid, "")).name, "formula": formula, "chemsys": chemsys,
            "elements": elements, "prediction": _num(sc.prediction[i]), "unit": unit,
            "last_layer_std": _num(sc.last_layer_std[i]), "last_layer_sigma": _num(sc.last_layer_sigma[i]),
            "knn_distance": knn,
            "knn_relative": knn / ref_knn["median"] if knn is not None and ref_knn.get("median") else None,
            "relative_uncertainty": _num(sc.relative[i]), "flag": sc.flag[i],
        })
    doc = {
        "checkpoint": checkpoint.name, "format": fmt, "target": meta.get("target"), "unit": unit,
        "calibrated": cal is not None,
        "calibration": cal_file.name if cal is not None else None,
        "calibration_note": ("scores calibrated on the checkpoint's own validation split; relative "
                             "uncertainty = last-layer Laplace std / its median on the model's ID test set"
                             if cal is not None else
                             f"no calibration found ({cal_file.name} missing): uncalibrated scores (prior "
                             "predictive spread of the last layer), relative to the screened set's own median; "
                             "no kNN distance to training"),
        "id_reference": (cal or {}).get("id"),
        "n_read": inputs.n_read, "n_screened": len(rows), "skipped": dict(skipped),
        "n_flagged": sum(r["flag"] == "high" for r in rows), "n_nan": sum(r["flag"] == "nan" for r in rows),
        "seconds_scoring": sc.seconds,
        "compounds": rows,
        "by_element": chemistry_summary(rows, "elements", cal is not None),
        "by_chemsys": chemistry_summary(rows, "chemsys", cal is not None),
    }
    out_dir = ensure_dir(Path(out_dir))
    files = {"json": out_dir / "predictions.json", "csv": out_dir / "predictions.csv"}
    write_text_atomic(files["json"], json.dumps(doc, indent=1, allow_nan=False))
    write_text_atomic(files["csv"], _csv(rows))
    files.update(render_screen_report(doc, out_dir, formats))
    return ScreenResult(out_dir, inputs.n_read, len(rows), dict(skipped), cal is not None, doc["n_flagged"],
                        doc["n_nan"], files, doc)


CSV_COLUMNS = ("id", "source", "formula", "chemsys", "prediction", "unit", "last_layer_std", "last_layer_sigma",
               "knn_distance", "relative_uncertainty", "flag")


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        w.writerow(["" if r[c] is None else (f"{r[c]:.6g}" if isinstance(r[c], float) else r[c]) for c in CSV_COLUMNS])
    return buf.getvalue()


# ---------------------------------------------------------------------------------------- report
def _figure(doc: dict):
    from matplotlib.figure import Figure

    rows = [r for r in doc["compounds"] if r["relative_uncertainty"] is not None]
    if not rows:
        return None
    fig = Figure(figsize=(6.3, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    colours = {"ok": "#4c72b0", "high": "#dd8452"}
    if doc["calibrated"] and any(r["knn_relative"] is not None for r in rows):
        for flag in ("ok", "high"):
            pts = [(r["knn_relative"], r["relative_uncertainty"]) for r in rows
                   if r["flag"] == flag and r["knn_relative"] is not None]
            if pts:
                x, y = zip(*pts)
                ax.scatter(x, y, s=10, alpha=0.6, color=colours[flag], label=f"{flag} ({len(pts)})")
        ax.axvline(1.0, color="#888", lw=0.8, ls="--")
        ax.set_xlabel("kNN distance to training / its ID-test median")
    else:
        y = sorted(r["relative_uncertainty"] for r in rows)
        ax.plot(range(len(y)), y, ".", ms=3)
        ax.set_xlabel("compounds, sorted (no training distance without calibration)")
    ax.axhline(1.0, color="#888", lw=0.8, ls="--")
    ax.set_ylabel("last-layer Laplace std / reference median")
    ax.set_yscale("log")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def render_screen_report(doc: dict, out_dir: Path, formats: Sequence[str] = ("html", "pdf")) -> dict[str, Path]:
    """Write screen.html / screen.pdf from a predictions document."""
    from markupsafe import Markup

    from traits.report import figures as F
    from traits.report.render import html_to_pdf, template_environment, templates_dir

    formats = [f for f in formats if f in ("html", "pdf")]
    written: dict[str, Path] = {}
    if not formats:
        return written
    env = template_environment()

    def render(medium: str) -> str:
        with F.style():
            fig = _figure(doc)
            enc = F.encode(fig, svg=medium == "screen", png_dpi=None if medium == "screen" else 200,
                           salt="traits-screen") if fig is not None else None
        src = (enc.svg if medium == "screen" else enc.png) if enc is not None else None
        return env.get_template("screen.html.j2").render(
            d=doc, medium=medium, figure=src, ratio=CHEMISTRY_RATIO, quantile=FLAG_QUANTILE,
            flagged=[r for r in doc["compounds"] if r["flag"] != "ok"][:50],
            css=Markup((templates_dir() / "report.css").read_text(encoding="utf-8")),
        )

    if "html" in formats:
        written["html"] = out_dir / "screen.html"
        write_text_atomic(written["html"], render("screen"))
    if "pdf" in formats:
        from traits.files import write_bytes_atomic

        written["pdf"] = out_dir / "screen.pdf"
        write_bytes_atomic(written["pdf"], html_to_pdf(render("print")))
    return written
