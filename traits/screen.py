"""``traits screen``: predictions with per-compound uncertainty for unlabelled structures.

A checkpoint and structures without labels (CIF, POSCAR/CONTCAR/.vasp, Materials Project or JARVIS JSON
files) give, per compound, the prediction, its uncertainty by each cheap method, the distance to the
training set in the model's embedding, and a flag; per element and per chemical system a summary
(count, mean prediction, mean and median uncertainty relative to the model's own ID test set, share flagged,
flag); and a screening report (:func:`render_screen_report`).

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

Risk of a ≥ 2× error
--------------------
With a reference (the audit spec the model was trained or audited with, :func:`risk_reference`), the adopted trust
score (:mod:`traits.trust`) is applied to the embedding kNN ratio of the whole screened set and of the compounds
holding each element (:func:`screen_risk`), measured as the audit's domain-shift probe measures it; without one, or
for a group of fewer than :data:`RISK_MIN_COMPOUNDS` compounds, there is no risk and the outputs say why.
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
from traits.data.sources import Entry, p1_cif_crystal, parse_structure_text, read_structure_text
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
@dataclass
class ScoringPass:
    """One pass of a model over structures: predictions (n,), last-layer features ψ (n, h + 1) and embeddings
    φ (n, h) in float64; ψ or φ None where the adapter does not offer them, with the reason in ``unavailable``
    (keys ``last_layer_std``, ``knn_distance``)."""

    prediction: np.ndarray
    psi: np.ndarray | None
    phi: np.ndarray | None
    unavailable: dict[str, str] = field(default_factory=dict)


def _graph_adapter():
    """The adapter of TRAITS' own graph models: what scores a list of graphs given without an adapter."""
    from traits.models.cgcnn_adapter import CGCNNAdapter

    return CGCNNAdapter()


def _no_features(adapter, model, n: int, offered: dict[str, str | None]) -> tuple[np.ndarray | None, ...]:
    width = adapter.embedding_width(model)
    psi = np.zeros((n, width + 1)) if offered["last_layer"] is None and width is not None else None
    phi = np.zeros((n, width)) if offered["embedding"] is None and width is not None else None
    return psi, phi


def score_pass(model, items: Sequence, device, batch_size: int = 256, adapter=None) -> ScoringPass:
    """Predictions, ψ and φ of ``items`` (an adapter's featurised structures, or graphs of TRAITS' own models
    when ``adapter`` is None) in one pass per batch, through :meth:`~traits.models.base.Adapter.score_features`."""
    from traits.probes.objective import eval_mode

    adapter = adapter if adapter is not None else _graph_adapter()
    offered = adapter.scoring_support(model)
    unavailable = {key: why for key, why in (("last_layer_std", offered["last_layer"]),
                                             ("knn_distance", offered["embedding"])) if why is not None}
    dtype = next(model.parameters()).dtype
    preds, psis, phis = [], [], []
    with eval_mode(model):
        for b in adapter.batches(list(items), device, dtype, batch_size):
            got = adapter.score_features(model, b)
            preds.append(got.prediction.detach().to("cpu", torch.float64).reshape(-1))
            if got.last_layer is not None:
                psis.append(got.last_layer.detach().to("cpu", torch.float64))
            if got.embedding is not None:
                phis.append(got.embedding.detach().to("cpu", torch.float64))
    if not preds:
        psi, phi = _no_features(adapter, model, 0, offered)
        return ScoringPass(np.zeros(0), psi, phi, unavailable)
    psi = torch.cat(psis).numpy() if len(psis) == len(preds) else None
    phi = torch.cat(phis).numpy() if len(phis) == len(preds) else None
    return ScoringPass(torch.cat(preds).numpy(), psi, phi, unavailable)


def _forward(model, graphs: Sequence, device, batch_size: int = 256, adapter=None):
    """(predictions, last-layer features psi = s_y [phi, 1], embeddings phi) in one pass per batch (None for what
    the adapter does not offer)."""
    got = score_pass(model, graphs, device, batch_size, adapter)
    return got.prediction, got.psi, got.phi


def _targets(graphs: Sequence) -> np.ndarray:
    return np.array([float(g.y.reshape(-1)[0]) for g in graphs], dtype=np.float64)


def _summary(values: np.ndarray) -> dict:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"median": None, "p95": None, "n": 0}
    return {"median": float(np.median(v)), "p95": float(np.quantile(v, FLAG_QUANTILE)), "n": int(v.size)}


def _calibration_pass(model, items: Sequence, device, adapter) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    got = score_pass(model, items, device, adapter=adapter)
    if got.psi is None or got.phi is None:
        raise TraitsError("calibration needs a linear output layer and an embedding: "
                          + "; ".join(got.unavailable.values()))
    return got.prediction, got.psi, got.phi


def build_calibration(model, splits: Mapping[str, Sequence], device, *, seed: int = 0, adapter=None) -> dict:
    """The calibration of a model from its own training, validation and ID test structures (module docstring):
    graphs of TRAITS' own models, or an adapter's featurised structures with ``adapter``."""
    from traits.probes import uncertainty as unc

    for need in ("train", "val"):
        if not splits.get(need):
            raise TraitsError(f"calibration needs the {need!r} split, which is empty or missing")
    p_tr, psi_tr, phi_tr = _calibration_pass(model, splits["train"], device, adapter)
    y_tr = _targets(splits["train"])
    ok = np.isfinite(p_tr) & np.isfinite(y_tr) & np.isfinite(psi_tr).all(1)
    noise_var = float(np.mean((p_tr[ok] - y_tr[ok]) ** 2))
    if not (noise_var > 0 and math.isfinite(noise_var)):
        raise TraitsError("calibration needs a positive, finite training MSE")
    p_va, psi_va, phi_va = _calibration_pass(model, splits["val"], device, adapter)
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
        p_id, psi_id, phi_id = _calibration_pass(model, splits["id"], device, adapter)
        err = np.abs(_targets(splits["id"]) - p_id)
        out["id"] = {"last_layer_std": _summary(np.sqrt(post.variance(psi_id))),
                     "knn_distance": _summary(knn.distance(phi_id)),
                     "mae": float(np.mean(err[np.isfinite(err)])) if np.isfinite(err).any() else None}
    return out


def write_calibration(model, splits: Mapping[str, Sequence], path: Path, device, *, seed: int = 0,
                      adapter=None) -> Path:
    """Write :func:`build_calibration` to ``path`` (atomically)."""
    data = build_calibration(model, splits, device, seed=seed, adapter=adapter)
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
    kNN distance (NaN when unknown), and the flag; ``unavailable``: the scores the model does not offer, and why."""

    prediction: np.ndarray
    last_layer_std: np.ndarray
    last_layer_sigma: np.ndarray
    knn_distance: np.ndarray
    relative: np.ndarray
    flag: list[str]
    calibrated: bool
    seconds: float = 0.0
    unavailable: dict[str, str] = field(default_factory=dict)


def score(model, graphs: Sequence, device, calibration: dict | None, batch_size: int = 256,
          adapter=None) -> Scores:
    """Predictions and cheap uncertainties of ``graphs`` (one forward pass, last-layer Laplace, kNN): graphs of
    TRAITS' own models, or an adapter's featurised structures with ``adapter``."""
    t0 = time.perf_counter()
    return scores_of(score_pass(model, graphs, device, batch_size, adapter), calibration, t0)


def _last_layer_std(got: ScoringPass, finite: np.ndarray, calibration: dict | None) -> tuple[np.ndarray, ...]:
    """(std, sigma, the ID test set's median std or None, the flag threshold or None) of the last-layer score:
    the posterior's with a calibration, the prior predictive spread |ψ| without; NaN where ψ is not offered."""
    from traits.probes.uncertainty import LastLayerLaplace, Recalibration

    n = len(got.prediction)
    std, sigma = np.full(n, np.nan), np.full(n, np.nan)
    if got.psi is None:
        return std, sigma, None, None
    psi = got.psi
    if calibration is not None:
        post = LastLayerLaplace.from_dict(calibration["last_layer"])
        std[finite] = np.sqrt(post.variance(psi[finite]))
        sigma = Recalibration(**calibration["recalibration"]["last_layer"]).sigma(std)
        ref = (calibration.get("id") or {}).get("last_layer_std") or {}
        return std, sigma, ref.get("median"), ref.get("p95")
    # prior predictive only: no training data; relative to the screened set itself
    std[finite] = np.sqrt((psi[finite] ** 2).sum(1))
    med = float(np.median(std[finite])) if finite.any() else None
    return std, sigma, med, 2 * med if med is not None else None


def scores_of(got: ScoringPass, calibration: dict | None, t0: float | None = None) -> Scores:
    """The scores and flags of one :func:`score_pass` (module docstring): a score the model does not offer is NaN
    and flags nothing."""
    n = len(got.prediction)
    finite = np.isfinite(got.prediction)
    if got.psi is not None:
        finite &= np.isfinite(got.psi).all(1)
    std, sigma, med, cut_std = _last_layer_std(got, finite, calibration)
    knn, cut_knn = np.full(n, np.nan), None
    if calibration is not None and got.phi is not None:
        knn = KnnReference(calibration["knn"]["train_embedding"], calibration["knn"].get("k", KNN_K)).distance(got.phi)
        cut_knn = (((calibration.get("id") or {}).get("knn_distance")) or {}).get("p95")
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
    pred = np.where(finite, got.prediction, np.nan)
    seconds = time.perf_counter() - t0 if t0 is not None else 0.0
    return Scores(pred, std, sigma, knn, relative, flags, calibration is not None, seconds, dict(got.unavailable))


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
        fast = structure is None and entry.fast_crystal() is not None  # P1 layout: ordered, read from its numbers
        if structure is None and not fast:
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
        # an entry left to the fast reader stays a plain Entry: the graph builder reads it from its numbers again
        # (cheaper than keeping the crystal), and pymatgen never parses it
        out.entries.append(Entry(rid, math.nan, payload, fmt) if fast
                           else _ParsedEntry(rid, math.nan, payload, fmt, structure))
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
            text, fmt = read_structure_text(f)  # bounded; parsed from its text below: never imports code
            if fmt == "cif" and p1_cif_crystal(text) is not None:
                add(str(f.name), text, "cif", f)  # pymatgen's P1 layout: read straight from its numbers
                continue
            structure = parse_structure_text(text, fmt, f)
        except DataError as exc:
            out.skipped["structure file too large when decompressed" if "expands to more than" in str(exc)
                        else "unreadable structure file"] += 1
            continue
        add(str(f.name), json.dumps(structure.as_dict()), "pymatgen-dict", f, structure)
    return out


def _build(entries: Sequence, settings):
    """The graphs of ``entries``, a structure whose graph cannot be built skipped and counted
    (:func:`traits.data.graphs.build_graphs_skipping`): a screen never stops on one structure."""
    from traits.data.graphs import build_graphs_skipping

    return build_graphs_skipping(entries, settings)


# ---------------------------------------------------------------------------------------- chemistry
def _chemistry(graph) -> tuple[list[str], str, str]:
    from pymatgen.core import Composition
    from pymatgen.core.periodic_table import Element

    zs = graph.z.tolist()
    counts = Counter(Element.from_Z(int(z)).symbol for z in zs)
    formula = Composition(dict(counts)).reduced_formula
    return sorted(counts), "-".join(sorted(counts)), formula


def chemistry_summary(rows: list[dict], key: str, calibrated: bool) -> list[dict]:
    """Per element (``key='elements'``: a compound counts once for each of its elements) or chemical system
    (``'chemsys'``): count, mean prediction, mean and median relative uncertainty, median kNN distance relative
    to the ID test set, share flagged high, number without a finite prediction, flag (``check`` when the median
    relative uncertainty exceeds :data:`CHEMISTRY_RATIO`, more than half are flagged high, or a prediction is
    not finite). Sorted least certain first."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        for g in (row["elements"] if key == "elements" else [row["chemsys"]]):
            groups.setdefault(g, []).append(row)
    out = []
    for name, members in groups.items():
        rel = np.array([m["relative_uncertainty"] for m in members if m["relative_uncertainty"] is not None])
        knn = np.array([m["knn_relative"] for m in members if m.get("knn_relative") is not None])
        pred = np.array([m["prediction"] for m in members if m.get("prediction") is not None])
        high = sum(m["flag"] == "high" for m in members)
        nan = sum(m["flag"] == "nan" for m in members)
        med = float(np.median(rel)) if rel.size else None
        flag = "check" if ((med is not None and med > CHEMISTRY_RATIO) or high > len(members) / 2 or nan) else "ok"
        out.append({"name": name, "count": len(members), "mean_prediction": float(np.mean(pred)) if pred.size else None,
                    "mean_relative_uncertainty": float(np.mean(rel)) if rel.size else None,
                    "median_relative_uncertainty": med,
                    "median_knn_relative": float(np.median(knn)) if knn.size else None,
                    "share_high": high / len(members), "n_nan": nan, "flag": flag})
    out.sort(key=lambda g: (-(g["median_relative_uncertainty"] or 0.0), g["name"]))
    return out


def _num(x) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


# ---------------------------------------------------------------------------------------- risk of a 2x error
#: A group (the screened compounds holding one element) needs at least this many compounds with an embedding for a
#: risk: the median of fewer kNN distances is itself too uncertain (at 20, its 95 % interval already spans about
#: the group's 30th to 70th percentile), and the score was fitted on OOD sets of 87 to 3,051 compounds.
RISK_MIN_COMPOUNDS = 20
#: What the risk is, and how far it may be trusted (repeated wherever a risk is shown).
RISK_CAVEAT = ("The score is the embedding-distance baseline alone (the median kNN distance of the group in the "
               "model's embedding over that of the ID test set), fitted on one study: omission audits of CGCNN "
               "formation-energy and band-gap models on Materials Project data. Outside it (other architectures, "
               "targets or data, or groups unlike an omitted chemistry) it is weak evidence, and its interval is how "
               "much the fitted score moves over the study's held-out rules, not a sampling interval of this screen.")


def distance_model(score: dict | None) -> dict | None:
    """The score's first model on the embedding distance alone (what a screen can apply), or None."""
    return next((m for m in (score or {}).get("models") or [] if m.get("features") == ["embedding_knn_ratio"]),
                None)


def risk_caveat(score: dict | None) -> str:
    """:data:`RISK_CAVEAT` for a score on the embedding distance alone; for a score that ships another candidate,
    which of its models the screen applies and what that rests on."""
    models = (score or {}).get("models") or []
    if not score or (models and models[0].get("features") == ["embedding_knn_ratio"]):
        return RISK_CAVEAT
    features = list(models[0].get("features", [])) if models else []
    fallback = distance_model(score)
    lead = (f"The score rests on {score.get('study_version', 'its study')} ({', '.join(features)}); a screen measures "
            "only the embedding distance, so ")
    tail = (" Its interval is how much the fitted score moves over the study's held-out rules, not a sampling "
            "interval of this screen.")
    if fallback is None:
        return lead + "a score that needs other signals gives no risk here." + tail
    from traits.trust import evidence_text

    evidence = evidence_text(score, fallback["name"])
    return (lead + f"the risk here is the score's model on that distance alone ({evidence}), weaker evidence than "
            "the shipped candidate." + tail)


RISK_NOT_GIVEN = ("no reference given: the risk needs the model's training and ID test compounds (--reference "
                  "SPEC, the audit spec the model was trained or audited with); the calibration's 500 stored "
                  "training embeddings are not the audit's yardstick, so no risk is computed")


@dataclass
class RiskReference:
    """The yardstick of the embedding kNN ratio, rebuilt as the audit measures it (:func:`traits.audit.run_shift`):
    the embeddings of the training split subsampled to ``probes.shift.max_train`` (seeded stream ``shift_train``)
    and of the ID test split, with the spec's ``probes.shift.k``; ``info`` says where they came from. ``reason``
    (embeddings None) says why there is no yardstick."""

    train: np.ndarray | None
    id: np.ndarray | None
    k: int
    info: dict = field(default_factory=dict)
    reason: str | None = None


def _subsample(items: list, limit: int | None, seed: int) -> list:
    """The audit's training subsample (``traits.audit.subsample``): at most ``limit``, drawn without replacement,
    in the original order."""
    if limit is None or len(items) <= limit:
        return items
    keep = np.sort(np.random.default_rng(seed).choice(len(items), size=limit, replace=False))
    return [items[i] for i in keep]


def _reference_data(spec, loaded):
    """The spec's splits as the audit prepares them for this model: TRAITS' graph models build graphs first with
    the checkpoint's own graph settings (as its training did), other adapters featurise after splitting."""
    from traits.data.prepare import prepare_data, prepare_for_adapter

    adapter = loaded.adapter
    if getattr(adapter, "graph_model", False):
        graph = getattr(adapter, "graph", None)
        if graph is not None:
            spec = spec.model_copy(update={"data": spec.data.model_copy(update={"graph": graph})})
        return prepare_data(spec)
    return prepare_for_adapter(spec, adapter, loaded.options)


def _manifest_check(meta: Mapping, manifest) -> tuple[str, str | None]:
    """(what the report says about the reference's split, the reason for no risk when it is not the model's)."""
    recorded = meta.get("manifest_hash") if isinstance(meta.get("manifest_hash"), str) else None
    if recorded is None:
        return "not checked: the checkpoint records no split manifest", None
    if recorded == manifest.hash:
        return f"the checkpoint's own training split (manifest {recorded[:12]})", None
    return "", (f"the reference's split (manifest {manifest.hash[:12]}) is not the one the checkpoint was trained on "
                f"(manifest {recorded[:12]}): its distances would not be to the model's training compounds")


def risk_reference(spec_path: Path, loaded, device, batch_size: int | None = None) -> RiskReference:
    """The training subsample and ID test embeddings of ``loaded`` from the audit spec ``spec_path`` (its data,
    omission and split rebuild the compounds; the split is checked against the checkpoint's manifest hash where
    it records one). A spec that cannot be read is an error; a reference that cannot serve is a ``reason``."""
    from traits.seeds import stream
    from traits.spec import load_spec

    spec = load_spec(spec_path, need_checkpoint=False)
    cfg = spec.probes.shift
    data = _reference_data(spec, loaded)
    split_note, mismatch = _manifest_check(loaded.meta or {}, data.manifest)
    info = {"spec": Path(spec_path).name, "name": spec.name, "source": data.source, "split": split_note,
            "n_train_total": len(data.splits.get("train") or []), "n_id": len(data.splits.get("id") or []),
            "k": cfg.k, "max_train": cfg.max_train}
    if mismatch:
        return RiskReference(None, None, cfg.k, info, mismatch)
    if not data.splits.get("train") or not data.splits.get("id"):
        return RiskReference(None, None, cfg.k, info, "the reference has no training or no ID test compounds "
                             "(data.sets needs 'train' and 'id')")
    train = _subsample(data.splits["train"], cfg.max_train, stream(spec, "shift_train"))
    info["n_train"] = len(train)
    size = batch_size or loaded.adapter.batch_size
    got_train = score_pass(loaded.model, train, device, size, loaded.adapter)
    got_id = score_pass(loaded.model, data.splits["id"], device, size, loaded.adapter)
    if got_train.phi is None or got_id.phi is None:
        return RiskReference(None, None, cfg.k, info, "the model offers no embedding: "
                             + got_train.unavailable.get("knn_distance", "no crystal vector"))
    return RiskReference(got_train.phi, got_id.phi, cfg.k, info)


def _finite_rows(x: np.ndarray) -> np.ndarray:
    return np.isfinite(x).all(axis=1) if x.size else np.zeros(len(x), dtype=bool)


def embedding_distances(ref: RiskReference, phi: np.ndarray) -> tuple[np.ndarray, float | None, str | None]:
    """(each screened compound's mean distance to its k nearest reference training compounds, NaN where its
    embedding is not finite; the ID test set's median distance; why none could be measured), in the embedding
    standardised on the training subsample's finite rows, as :func:`traits.shift.compute_shift` measures them."""
    from traits import shift as sh

    d = np.full(len(phi), np.nan)
    try:
        std = sh.standardise({"train": ref.train, "id": ref.id, "screened": np.asarray(phi, dtype=np.float64)})
        train = std["train"][_finite_rows(std["train"])]
        if len(train) < ref.k + 1:
            return d, None, (f"the reference has {len(train)} training compounds with a finite embedding, too few "
                             f"for k = {ref.k} nearest neighbours")
        d_id = sh.knn_distances(train, std["id"][_finite_rows(std["id"])], ref.k)
        ok = _finite_rows(std["screened"])
        if ok.any():
            d[ok] = sh.knn_distances(train, std["screened"][ok], ref.k)
    except sh.ShiftInputError as exc:
        return d, None, f"the embedding distances could not be measured: {exc}"
    med = float(np.median(d_id)) if d_id.size else None
    if not (med is not None and math.isfinite(med) and med > 0):
        return d, None, "the ID test set's median kNN distance is not a positive number: no yardstick"
    return d, med, None


def _group_risk(name: str, d: np.ndarray, id_median: float, score: dict | None, minimum: int) -> dict:
    """One group's count, embedding kNN ratio and risk (None below ``minimum`` compounds, with why)."""
    from traits.shift import ratio
    from traits.trust import audit_risk

    d = d[np.isfinite(d)]
    r = ratio(float(np.median(d)), id_median) if d.size else None
    out = {"name": name, "n": int(d.size), "knn_ratio": r, "probability": None, "low": None, "high": None,
           "why": None}
    if d.size < minimum:
        out["why"] = f"fewer than {minimum} compounds"
        return out
    risk = audit_risk({"embedding_knn_ratio": r}, score)
    if risk is None or risk["probability"] is None:
        out["why"] = (risk or {}).get("note") or "no trust score is adopted"
        return out
    return out | {k: risk[k] for k in ("probability", "low", "high")}


def _score_fields(score: dict) -> dict:
    from traits.trust import INTERVAL_KIND, evidence_text

    model = distance_model(score) or (score.get("models") or [{}])[0]  # the model a screen applies
    return {"candidate": score.get("candidate"), "model": model.get("name"), "features": model.get("features"),
            "study_version": str(score.get("study_version", "")), "evidence": evidence_text(score, model.get("name")),
            "outcome": score.get("outcome"), "interval_kind": score.get("interval_kind") or INTERVAL_KIND,
            "ships_as_default": bool(score.get("ships_as_default"))}


def screen_risk(rows: Sequence[dict], phi: np.ndarray | None, ref: RiskReference | None, *,
                score: dict | None = None, minimum: int = RISK_MIN_COMPOUNDS) -> dict:
    """The risk of a ≥ 2× OOD/ID error (:func:`traits.trust.audit_risk` on the embedding kNN ratio) of the whole
    screened set and of the compounds holding each element (groups of at least ``minimum``), against ``ref``;
    ``computed`` False with the ``reason`` when there is no reference, embedding or adopted score."""
    from traits.trust import adopted_score

    score = score if score is not None else adopted_score()
    out = {"computed": False, "reason": None, "min_compounds": minimum, "grouping": "element",
           "caveat": risk_caveat(score), "reference": dict(ref.info) if ref is not None else None,
           "score": _score_fields(score) if score is not None else None, "overall": None, "by_element": []}
    reason = (RISK_NOT_GIVEN if ref is None else ref.reason or
              ("the model offers no embedding" if phi is None else None) or
              ("no trust score is adopted" if score is None else None) or
              ("no structure was screened" if not rows else None))
    if reason:
        return out | {"reason": reason}
    d, id_median, why = embedding_distances(ref, phi)
    if why:
        return out | {"reason": why}
    out["reference"] |= {"id_median_distance": id_median, "k": ref.k, "n_train": len(ref.train), "n_id": len(ref.id)}
    out["reference"].setdefault("n_train_total", len(ref.train))
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        for el in row["elements"]:
            groups.setdefault(el, []).append(i)
    by = [_group_risk(el, d[idx], id_median, score, minimum) for el, idx in groups.items()]
    by.sort(key=lambda g: (g["probability"] is None, -(g["probability"] or 0.0), -(g["knn_ratio"] or 0.0), g["name"]))
    overall = _group_risk("all screened", d, id_median, score, minimum)
    return out | {"computed": True, "overall": overall, "by_element": by}


def format_risk(g: Mapping) -> str:
    """"0.83 [0.60, 0.95]" (no interval without refits; "—" without a risk)."""
    p = g.get("probability")
    if p is None:
        return "—"
    lo, hi = g.get("low"), g.get("high")
    return f"{p:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else "")


#: Elements named per line of the terminal summary; the rest are in the report and predictions.json.
RISK_LINES = 5


#: Elements in the report's risk table (every group is in predictions.json).
RISK_ROWS = 25


def format_ratio(r) -> str:
    """A kNN ratio with two decimals ("—" when undefined)."""
    return "—" if r is None else f"{r:.2f}"


def _risk_of(g: Mapping) -> str:
    return f"{g['name']} {format_risk(g)} (kNN ratio {format_ratio(g['knn_ratio'])}, {_plural(g['n'], 'compound')})"


def risk_summary(risk: Mapping | None) -> list[str]:
    """The terminal's lines on the risk of a ≥ 2× error: the whole set, the riskiest elements, the evidence and the
    caveat, or why no risk was computed (plain text; the caller prints it through a safe console)."""
    if not risk or not risk.get("computed"):
        return [f"risk of a ≥ 2× error: not computed ({(risk or {}).get('reason') or RISK_NOT_GIVEN})"]
    overall, minimum = risk["overall"], risk["min_compounds"]
    first = (f"risk of a ≥ 2× error (P(OOD/ID MAE ≥ 2) from the embedding kNN ratio): {_risk_of(overall)}"
             if overall["probability"] is not None else
             f"risk of a ≥ 2× error: none for the whole set ({overall['why']})")
    rated = [g for g in risk["by_element"] if g["probability"] is not None]
    small = len(risk["by_element"]) - len(rated)
    lines = [first]
    if rated:
        more = f"; {len(rated) - RISK_LINES} more in the report" if len(rated) > RISK_LINES else ""
        lines.append(f"by element (compounds holding it; at least {minimum}), highest first: "
                     + "; ".join(_risk_of(g) for g in rated[:RISK_LINES]) + more)
    if small:
        lines.append(f"{_plural(small, 'element')} in fewer than {minimum} compounds: no risk")
    score = risk.get("score") or {}
    lines.append(f"score: {score.get('evidence')}; interval: {score.get('interval_kind')}")
    lines.append("caveat: the embedding-distance baseline alone, fitted on one study of CGCNN formation-energy and "
                 "band-gap models on Materials Project data: weak evidence outside it")
    return lines


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
    unavailable: dict[str, str] = field(default_factory=dict)
    risk: dict = field(default_factory=dict)


#: How the outputs name the scores (the keys of :attr:`Scores.unavailable`).
SCORE_NAMES = {"last_layer_std": "the last-layer std", "knn_distance": "the kNN distance to training"}


def _calibration_file(checkpoint: Path | None, calibration: Path | None) -> Path | None:
    """The calibration file named, or the one beside a checkpoint file (None: bundled weights, nothing beside)."""
    if calibration is not None:
        return Path(calibration)
    if checkpoint is not None and Path(checkpoint).is_file():
        return calibration_path(Path(checkpoint))
    return None


def _check_widths(cal: dict | None, cal_file: Path | None, got: ScoringPass) -> None:
    """A calibration of another model (other embedding or last-layer widths) is a DataError naming the file."""
    if cal is None:
        return
    try:
        validate_calibration(cal, got.phi.shape[1] if got.phi is not None else None)
    except _Invalid as exc:
        raise DataError(f"{cal_file}: not a TRAITS calibration file: {exc}") from None
    width = len(cal["last_layer"]["gram"])
    if got.psi is not None and got.psi.shape[1] != width:
        raise DataError(f"{cal_file}: not a TRAITS calibration file: last_layer.gram: shape {width}x{width}, but "
                        f"the model's last layer has {got.psi.shape[1]} features: the calibration of another model?")


def _calibration_note(cal: dict | None, cal_file: Path | None, unavailable: Mapping[str, str]) -> str:
    """What the scores are relative to, and which ones the model does not offer."""
    if cal is not None:
        note = ("scores calibrated on the checkpoint's own validation split; relative uncertainty = last-layer "
                "Laplace std / its median on the model's ID test set")
    else:
        why = f"{cal_file.name} missing" if cal_file is not None else "none beside bundled weights; give --calibration"
        note = (f"no calibration found ({why}): "
                + ("uncalibrated scores (prior predictive spread of the last layer), relative to the screened set's "
                   "own median; no kNN distance to training" if "last_layer_std" not in unavailable else
                   "no kNN distance to training, and no score flags a compound"))
    if unavailable:
        note += "; not available for this model: " + "; ".join(f"{SCORE_NAMES.get(k, k)} ({why})"
                                                               for k, why in unavailable.items())
    return note


def _model_meta(loaded) -> dict:
    """What the report says about the model: a CGCNN checkpoint's metadata, or the adapter's description."""
    if loaded.meta:
        return loaded.meta
    info = loaded.info
    return {"architecture": loaded.adapter.name, "target": info.property, "unit": info.units,
            "training_data": info.training_data}


def _rows(items: Sequence, sources: Mapping[str, str], sc: Scores, unit: str, cal: dict | None) -> list[dict]:
    ref_knn = ((cal or {}).get("id") or {}).get("knn_distance") or {}
    rows = []
    for i, g in enumerate(items):
        elements, chemsys, formula = _chemistry(g)
        rid = str(g.material_id)
        knn = _num(sc.knn_distance[i])
        rows.append({
            "id": rid, "source": Path(sources.get(rid, "")).name, "formula": formula, "chemsys": chemsys,
            "elements": elements, "prediction": _num(sc.prediction[i]), "unit": unit,
            "last_layer_std": _num(sc.last_layer_std[i]), "last_layer_sigma": _num(sc.last_layer_sigma[i]),
            "knn_distance": knn,
            "knn_relative": knn / ref_knn["median"] if knn is not None and ref_knn.get("median") else None,
            "relative_uncertainty": _num(sc.relative[i]), "flag": sc.flag[i],
        })
    return rows


def _document(loaded, rows: list[dict], sc: Scores, cal: dict | None, cal_file: Path | None, inputs: Inputs,
              skipped: Counter) -> dict:
    from traits.models.inference import unit_of

    meta = _model_meta(loaded)
    source = loaded.source
    name = (Path(source).name if source is not None and Path(source).is_file() else
            source if source is not None else f"{loaded.adapter.name} (bundled weights)")
    return {
        "checkpoint": name, "format": meta.get("format") or loaded.adapter.name, "adapter": loaded.adapter.name,
        "target": meta.get("target"), "unit": unit_of(meta),
        "model": model_summary(meta), "traits_version": _traits_version(),
        "calibrated": cal is not None,
        "calibration": cal_file.name if cal is not None else None,
        "calibration_note": _calibration_note(cal, cal_file, sc.unavailable),
        "scores_unavailable": dict(sc.unavailable),
        "id_reference": (cal or {}).get("id"),
        "n_read": inputs.n_read, "n_screened": len(rows), "skipped": dict(skipped),
        "n_flagged": sum(r["flag"] == "high" for r in rows), "n_nan": sum(r["flag"] == "nan" for r in rows),
        "seconds_scoring": sc.seconds,
        "compounds": rows,
        "by_element": chemistry_summary(rows, "elements", cal is not None),
        "by_chemsys": chemistry_summary(rows, "chemsys", cal is not None),
    }


def screen(checkpoint: Path | None, paths: Sequence[Path], out_dir: Path, *, fmt: str = "auto",
           calibration: Path | None = None, device: torch.device | None = None,
           formats: Sequence[str] = ("html", "pdf"), batch_size: int | None = None, model: str | None = None,
           options=None, reference: Path | None = None) -> ScreenResult:
    """Screen unlabelled structures with a model loaded through its adapter; write predictions.csv/json and the
    report.

    Args:
        checkpoint: a CGCNN checkpoint (``model`` None), or the weights file, model folder or bundled weights name
            of the adapter ``model`` (None: its bundled default).
        paths: structure files, or folders of them.
        out_dir: where the outputs go.
        fmt: the CGCNN checkpoint format ('auto' detects it).
        calibration: the calibration file (default: the one beside a checkpoint file).
        device, formats, batch_size: where the model runs, the report formats, structures per batch (default:
            the adapter's).
        model, options: the adapter (``chgnet``, ``sevenn``, ...) and its settings.
        reference: the audit spec the model was trained or audited with: its training and ID test compounds are
            the yardstick of the risk of a ≥ 2× error (:func:`screen_risk`); None: no risk, and the outputs say why.

    Returns:
        The :class:`ScreenResult`; the scores the model does not offer are listed in ``unavailable`` (and in the
        outputs) instead of failing.
    """
    from traits.models.predicting import load_model

    device = device or torch.device("cpu")
    loaded = load_model(model, checkpoint, device, fmt=fmt, options=options)
    adapter, net = loaded.adapter, loaded.model
    cal_file = _calibration_file(checkpoint, calibration)
    cal = (load_calibration(cal_file, embedding_width=adapter.embedding_width(net))
           if cal_file is not None and (calibration is not None or cal_file.is_file()) else None)
    inputs = read_inputs(paths)
    items, not_featurised = adapter.featurise_entries(inputs.entries, loaded.options)
    skipped = Counter(inputs.skipped)
    skipped.update(not_featurised)
    t0 = time.perf_counter()
    got = score_pass(net, items, device, batch_size or adapter.batch_size, adapter)
    _check_widths(cal, cal_file, got)
    sc = scores_of(got, cal, t0)
    rows = _rows(items, inputs.sources, sc, unit_of_model(loaded), cal)
    doc = _document(loaded, rows, sc, cal, cal_file, inputs, skipped)
    ref = risk_reference(Path(reference), loaded, device, batch_size) if reference is not None else None
    doc["risk"] = screen_risk(rows, got.phi, ref)
    out_dir = ensure_dir(Path(out_dir))
    files = {"json": out_dir / "predictions.json", "csv": out_dir / "predictions.csv"}
    write_text_atomic(files["json"], json.dumps(doc, indent=1, allow_nan=False))
    write_text_atomic(files["csv"], _csv(rows))
    files.update(render_screen_report(doc, out_dir, formats))
    return ScreenResult(out_dir, inputs.n_read, len(rows), dict(skipped), cal is not None, doc["n_flagged"],
                        doc["n_nan"], files, doc, dict(sc.unavailable), doc["risk"])


def unit_of_model(loaded) -> str:
    """The unit of a loaded model's predictions (its checkpoint's, or the adapter's)."""
    from traits.models.inference import unit_of

    return unit_of(_model_meta(loaded))


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
#: How the report names the architectures a screen can score (models with an embedding and a linear output).
ARCHITECTURE_NAMES = {"cgcnn": "CGCNN", "cgcnn-original": "CGCNN (original implementation)", "chgnet": "CHGNet",
                      "sevenn": "SevenNet", "alignn": "ALIGNN", "mace": "MACE", "torch": "PyTorch"}
#: Groups with fewer compounds than this are called single observations in the report's summary.
FEW_COMPOUNDS = 3
#: Rows of the flagged-compounds and chemical-system tables in the report (everything is in predictions.csv).
REPORT_ROWS = 50


def _traits_version() -> str:
    from traits.version import __version__

    return str(__version__)


def _real_or_none(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _str_or_none(x) -> str | None:
    return x if isinstance(x, str) and x else None


def model_summary(meta: Mapping) -> dict:
    """What the screening report says about the model, read from the checkpoint's metadata: architecture, the
    chemistry its training omitted, its training seed, data hash, the TRAITS version that trained it, the
    number of training compounds and its ID test MAE (a field the checkpoint does not hold, or holds with the
    wrong type, is None)."""
    splits = (meta.get("metrics") or {}).get("splits") if isinstance(meta.get("metrics"), dict) else None
    splits = splits if isinstance(splits, dict) else {}

    def split(name: str, key: str):
        one = splits.get(name)
        return one.get(key) if isinstance(one, dict) else None

    omit = meta.get("omit")
    n_train = split("train", "n")
    return {"architecture": _str_or_none(meta.get("architecture")),
            "omit": [str(e) for e in omit if isinstance(e, str)] if isinstance(omit, list) else None,
            "seed": meta.get("seed") if isinstance(meta.get("seed"), int) and not isinstance(meta.get("seed"), bool)
            else None,
            "data_hash": _str_or_none(meta.get("data_hash")),
            "trained_with": _str_or_none((meta.get("versions") or {}).get("traits")
                                         if isinstance(meta.get("versions"), dict) else None),
            "n_train": n_train if isinstance(n_train, int) and not isinstance(n_train, bool) else None,
            "id_mae": _real_or_none(split("id", "mae"))}


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _join(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1] if items else ""


def _architecture(doc: dict) -> str | None:
    arch = (doc.get("model") or {}).get("architecture") or (doc.get("format") if doc.get("format") != "traits"
                                                               else None)
    return ARCHITECTURE_NAMES.get(arch, arch) if arch else None


def _target(doc: dict) -> str:
    return str(doc.get("target") or "an unnamed target").replace("_", " ")


def screen_title(doc: dict) -> str:
    """The report's title: what was screened, with which model (the checkpoint file is named in the
    provenance), e.g. "10 structures screened with a CGCNN model of formation energy per atom"."""
    arch = _architecture(doc)
    article = "an" if arch and arch[0].upper() in "AEIO" else "a"
    model = f"{article} {arch} model" if arch else "a model"
    return f"{_plural(doc['n_screened'], 'structure')} screened with {model} of {_target(doc)}"


def running_title(doc: dict) -> str:
    """The short title of the PDF's running header."""
    arch = _architecture(doc)
    return f"Screening of {_plural(doc['n_screened'], 'structure')}" + (f" with {arch}" if arch else "")


def _inputs_phrase(doc: dict) -> str:
    """Where the screened structures came from, by kind of file (never by name): "10 CIF files"."""
    kinds: dict[str, set] = {}
    for r in doc["compounds"]:
        name = str(r.get("source") or "").lower()
        kind = ("JSON" if name.endswith(JSON_SUFFIXES) else "CIF" if name.endswith(".cif") else
                "POSCAR" if name.endswith((".vasp", ".poscar")) or name.startswith(("poscar", "contcar")) else "other")
        kinds.setdefault(kind, set()).add(str(r.get("source") or ""))
    parts = [_plural(len(v), f"{k} file") for k, v in sorted(kinds.items(), key=lambda kv: (kv[0] == "other", kv[0]))]
    return _join(parts)


def _omit_phrase(doc: dict) -> str | None:
    omit = (doc.get("model") or {}).get("omit")
    if omit is None:
        return None
    return f"trained without the compounds containing {_join(omit)}" if omit else "trained on a random split"


def screen_sentences(doc: dict) -> list[str]:
    """The report's first paragraph, in plain sentences generated from the numbers: what was flagged and
    against which yardstick, which chemistries to check, and how many compounds the per-group numbers rest on."""
    n, high, nan = doc["n_screened"], doc["n_flagged"], doc["n_nan"]
    if n == 0:
        return ["No structure could be screened: every input was skipped (reasons below)."]
    out = []
    share = f" ({100 * high / n:.0f} %)" if high else ""
    if doc["calibrated"]:
        yardstick = (f"their uncertainty or their distance to the training set lies above the "
                     f"{100 * FLAG_QUANTILE:.0f}th percentile of the model's own ID test set")
    else:
        yardstick = ("their uncertainty lies above twice the screened set's median (no calibration: nothing here is "
                     "compared with the training data)")
    out.append(f"Of the {_plural(n, 'structure')} screened, {high}{share} {'is' if high == 1 else 'are'} flagged high"
               + (f": {yardstick}." if high else f"; flagged would mean that {yardstick}.")
               + (f" {_plural(nan, 'structure')} gave no finite prediction." if nan else ""))
    for key, what in (("by_element", "element"), ("by_chemsys", "chemical system")):
        groups = doc[key]
        check = [g for g in groups if g["flag"] == "check"]
        if not groups:
            continue
        if check:
            worst = [f"{g['name']} ({_fmt(g['median_relative_uncertainty'])}, {_plural(g['count'], 'compound')})"
                     for g in check[:3]]
            out.append(f"{len(check)} of {_plural(len(groups), what)}"
                       f" {'is' if len(check) == 1 else 'are'} marked check; the least certain "
                       f"(median relative uncertainty, compounds): {_join(worst)}.")
        else:
            out.append(f"No {what} is marked check (none has a median relative uncertainty above {CHEMISTRY_RATIO:g} "
                       "or most of its compounds flagged).")
    few = [g for g in doc["by_element"] if g["count"] < FEW_COMPOUNDS]
    if few:
        one = len(few) == 1
        out.append(f"{len(few)} of the {len(doc['by_element'])} elements {'occurs' if one else 'occur'} in fewer "
                   f"than {FEW_COMPOUNDS} compounds: {'its' if one else 'their'} numbers are single observations, "
                   "pointers rather than estimates.")
    return out


def _fmt(x, digits: int = 3) -> str:
    from traits.report.formatting import fmt_num

    return fmt_num(None if x is None else float(x), digits)


def _plain_log_axis(axis, values: Sequence[float]) -> None:
    """A log axis whose tick labels are plain numbers (0.5, 1, 2; mathtext is off in the report's style, so the
    default labels would print as raw TeX), with more ticks per decade when the data span fewer decades."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    v = np.asarray([x for x in values if x is not None and np.isfinite(x) and x > 0], dtype=np.float64)
    decades = float(np.log10(v.max() / v.min())) if v.size else 1.0
    subs = ((1.0, 1.5, 2.0, 3.0, 5.0, 7.0) if decades < 1 else (1.0, 2.0, 5.0) if decades < 2 else
            (1.0, 3.0) if decades < 4 else (1.0,))
    axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=30))
    axis.set_major_formatter(FuncFormatter(lambda x, _pos: _fmt(float(x), 3)))
    axis.set_minor_formatter(NullFormatter())


def _figure(doc: dict):
    """Each compound's relative uncertainty against its relative distance to training (sorted uncertainties
    without calibration), the flag thresholds drawn; sized to the report's page width."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    from traits.report import figures as F

    rows = [r for r in doc["compounds"] if r["relative_uncertainty"] is not None and r["relative_uncertainty"] > 0]
    if not rows:
        return None
    fig = Figure(figsize=(F.PAGE_WIDTH, 3.1), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    colours = {"ok": F.SPLIT_COLORS["id"], "high": F.SPLIT_COLORS["ood"]}
    names = {"ok": "not flagged", "high": "flagged high"}
    size = float(np.clip(2000 / len(rows), 5, 26))
    ref = doc.get("id_reference") or {}
    cut_y = cut_x = None
    if doc["calibrated"]:
        std, knn = ref.get("last_layer_std") or {}, ref.get("knn_distance") or {}
        cut_y = std["p95"] / std["median"] if std.get("median") and std.get("p95") else None
        cut_x = knn["p95"] / knn["median"] if knn.get("median") and knn.get("p95") else None
    else:  # the flag of an uncalibrated score: above twice the screened set's median (:func:`score`)
        cut_y = 2.0
    ys = [r["relative_uncertainty"] for r in rows]
    if doc["calibrated"] and any(r["knn_relative"] is not None for r in rows):
        for flag in ("ok", "high"):
            pts = [(r["knn_relative"], r["relative_uncertainty"]) for r in rows
                   if r["flag"] == flag and r["knn_relative"] is not None]
            if pts:
                x, y = zip(*pts)
                ax.scatter(x, y, s=size, alpha=0.75, color=colours[flag], edgecolors="none",
                           label=f"{names[flag]} ({len(pts)})", zorder=3)
        ax.axvline(1.0, color="#666", lw=0.8, ls="--", label="1 = ID-test median")
        if cut_x is not None:
            ax.axvline(cut_x, color="#666", lw=0.8, ls=":",
                       label=f"ID-test {100 * FLAG_QUANTILE:.0f}th percentile (flag threshold)")
        ax.set_xlabel("kNN distance to training / its ID-test median")
        xs = [r["knn_relative"] for r in rows if r["knn_relative"] is not None and r["knn_relative"] > 0]
        if xs:  # a ratio: log scale, so that half and twice the ID test set's distance lie equally far from 1
            ax.set_xscale("log")
            xlo, xhi = min(xs + [1.0] + ([cut_x] if cut_x else [])), max(xs + [1.0] + ([cut_x] if cut_x else []))
            ax.set_xlim(xlo / 1.12, xhi * 1.12)
            _plain_log_axis(ax.xaxis, [xlo, xhi])
    else:
        order = sorted(rows, key=lambda r: r["relative_uncertainty"])
        for flag in ("ok", "high"):
            pts = [(i + 1, r["relative_uncertainty"]) for i, r in enumerate(order) if r["flag"] == flag]
            if pts:
                x, y = zip(*pts)
                ax.scatter(x, y, s=size, alpha=0.75, color=colours[flag], edgecolors="none",
                           label=f"{names[flag]} ({len(pts)})", zorder=3)
        ax.set_xlabel("compounds, by rank of uncertainty (no distance to training without calibration)")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:.0f}"))
    ax.axhline(1.0, color="#666", lw=0.8, ls="--", label=None if doc["calibrated"] else "1 = screened-set median")
    if cut_y is not None:
        ax.axhline(cut_y, color="#666", lw=0.8, ls=":",
                   label=None if doc["calibrated"] else "2 × screened-set median (flag threshold)")
    ax.set_yscale("log")
    ax.set_ylabel("last-layer std / " + ("ID-test median" if doc["calibrated"] else "screened median"))
    lo, hi = min(ys + [1.0] + ([cut_y] if cut_y else [])), max(ys + [1.0] + ([cut_y] if cut_y else []))
    ax.set_ylim(lo / 1.15, hi * 1.15)
    _plain_log_axis(ax.yaxis, [lo, hi])
    ax.grid(True, which="major", color="#e6e6e6", lw=0.6, zorder=0)
    fig.legend(loc="outside lower center", ncols=4, frameon=False, fontsize=7.5,
               columnspacing=1.2, handletextpad=0.4)
    return fig


def _cell(z: int, row: int, group: int | None) -> tuple[float, float]:
    """(column, row) of an element in the usual periodic-table layout, the lanthanides and actinides in two
    rows below it."""
    if 57 <= z <= 71:
        return 3 + (z - 57), 8.4
    if 89 <= z <= 103:
        return 3 + (z - 89), 9.4
    return float(group), float(row)


def _element_figure(doc: dict):
    """A periodic table coloured by each element's mean relative uncertainty (1 = the yardstick, a diverging
    scale), with the number of compounds holding it; elements marked check are outlined, elements in fewer than
    :data:`FEW_COMPOUNDS` compounds hatched (as in the audit report's error-by-element tables), elements not
    screened grey."""
    import seaborn as sns
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle
    from pymatgen.core.periodic_table import Element

    from traits.report import figures as F

    groups = {g["name"]: g for g in doc["by_element"]}
    if not groups:
        return None
    values = [g["mean_relative_uncertainty"] for g in groups.values()
              if g["mean_relative_uncertainty"] is not None and g["mean_relative_uncertainty"] > 0]
    span = max([2.0] + [max(v, 1 / v) for v in values])
    norm = LogNorm(1 / span, span)
    cmap = sns.color_palette("vlag", as_cmap=True)
    fig = Figure(figsize=(F.PAGE_WIDTH, 3.75))
    ax = fig.add_axes((0.005, 0.005, 0.99, 0.99))
    ax.set_axis_off()
    ax.set_xlim(0.5, 18.55)
    ax.set_ylim(-10.0, -0.45)
    for z in range(1, 104):
        el = Element.from_Z(z)
        col, row = _cell(z, el.row, el.group)
        g = groups.pop(el.symbol, None)
        x, y = col - 0.47, -row - 0.47
        if g is None:
            ax.add_patch(Rectangle((x, y), 0.94, 0.94, facecolor="#ececec", edgecolor="none"))
            ax.text(col, -row, el.symbol, ha="center", va="center", fontsize=6, color="#a0a0a0")
            continue
        v = g["mean_relative_uncertainty"]
        face = cmap(norm(v)) if v is not None and v > 0 else "#d9d9d9"
        check = g["flag"] == "check"
        ax.add_patch(Rectangle((x, y), 0.94, 0.94, facecolor=face, edgecolor="#1d2129" if check else "none",
                               lw=1.4, zorder=2 if check else 1))
        dark = v is not None and v > 0 and abs(math.log(v)) > 0.6 * math.log(span)
        ink = "white" if dark else "#1d2129"
        if g["count"] < FEW_COMPOUNDS:
            ax.add_patch(Rectangle((x, y), 0.94, 0.94, facecolor="none", edgecolor=ink, hatch="////", lw=0,
                                   alpha=0.45, zorder=2))
        ax.text(col, -row + 0.13, el.symbol, ha="center", va="center", fontsize=6.8, color=ink, fontweight="bold",
                zorder=3)
        ax.text(col, -row - 0.25, f"n {g['count']}", ha="center", va="center", fontsize=5, color=ink, zorder=3)
    cax = ax.inset_axes((3.0, -1.95, 9.0, 0.28), transform=ax.transData)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax, orientation="horizontal")
    ticks = [t for t in (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0) if 1 / span <= t <= span]
    bar.set_ticks(ticks, labels=[_fmt(t, 3) for t in ticks])
    bar.ax.minorticks_off()
    bar.ax.tick_params(labelsize=6.5, length=2)
    yard = "ID test set" if doc["calibrated"] else "screened set"
    bar.set_label(f"mean relative uncertainty (1 = median of the {yard})", fontsize=7)
    ax.text(3.0, -1.0, f"n: compounds holding the element · outlined: marked check · hatched: fewer than "
            f"{FEW_COMPOUNDS} compounds · grey: none screened", fontsize=6.3, color="#5b6270", va="center")
    if groups:  # elements past Z = 103: listed, not placed
        ax.text(3.0, -7.7, "also: " + ", ".join(f"{k} ({g['count']})" for k, g in sorted(groups.items())),
                fontsize=6.3, color="#5b6270")
    return fig


def _screen_css() -> str:
    from traits.report.render import templates_dir

    root = templates_dir()
    return (root / "report.css").read_text(encoding="utf-8") + "\n" + (root / "screen.css").read_text(encoding="utf-8")


def render_screen_report(doc: dict, out_dir: Path, formats: Sequence[str] = ("html", "pdf")) -> dict[str, Path]:
    """Write screen.html / screen.pdf from a predictions document: the audit report's style with the screening
    report's title, running header and page flow (templates/screen.css); figures sized to the page width."""
    from markupsafe import Markup

    from traits.report import figures as F
    from traits.report.render import html_to_pdf, template_environment, templates_dir

    formats = [f for f in formats if f in ("html", "pdf")]
    written: dict[str, Path] = {}
    if not formats:
        return written
    env = template_environment()
    flagged = sorted((r for r in doc["compounds"] if r["flag"] != "ok"),
                     key=lambda r: (r["flag"] != "nan", -(r["relative_uncertainty"] or 0.0), r["id"]))
    n_flagged_all = len(flagged)
    context = {
        "d": doc, "model": {**model_summary({}), **(doc.get("model") or {})}, "version": doc.get("traits_version"),
        "title": screen_title(doc), "running": running_title(doc), "sentences": screen_sentences(doc),
        "inputs": _inputs_phrase(doc), "omit": _omit_phrase(doc), "architecture": _architecture(doc),
        "ratio": CHEMISTRY_RATIO, "quantile": FLAG_QUANTILE, "few": FEW_COMPOUNDS, "rows": REPORT_ROWS,
        "flagged": flagged[:REPORT_ROWS], "n_flagged_all": n_flagged_all,
        "caveat": RISK_CAVEAT, "risk_text": format_risk, "ratio_text": format_ratio, "risk_rows": RISK_ROWS,
        "css": Markup(_screen_css()),
        "css_narrow": Markup((templates_dir() / "report-narrow.css").read_text(encoding="utf-8")),
    }

    def render(medium: str) -> str:
        figures = {}
        for name, build in (("distance", _figure), ("elements", _element_figure)):
            with F.style():
                fig = build(doc)
                enc = F.encode(fig, svg=medium == "screen", png_dpi=None if medium == "screen" else 200,
                               salt=f"traits-screen-{name}") if fig is not None else None
            if enc is not None:
                figures[name] = {"src": enc.svg if medium == "screen" else enc.png, "width": enc.width_in}
        return env.get_template("screen.html.j2").render(medium=medium, figures=figures, **context)

    if "html" in formats:
        written["html"] = out_dir / "screen.html"
        write_text_atomic(written["html"], render("screen"))
    if "pdf" in formats:
        from traits.files import write_bytes_atomic

        written["pdf"] = out_dir / "screen.pdf"
        write_bytes_atomic(written["pdf"], html_to_pdf(render("print")))
    return written
