"""Saving and loading model checkpoints, safely.

Formats:

- ``traits``: ``model.safetensors`` (the state dict; safetensors cannot carry code) beside a JSON sidecar
  ``model.json`` with the architecture, hyper-parameters, graph settings, target and its normaliser,
  split/data hashes, seed, package versions, training metrics and the sha256 of the weights file.
- ``state-dict``: a plain PyTorch state dict (``torch.save(model.state_dict())``); the architecture and
  hyper-parameters come from the spec, the target normaliser from an optional JSON sidecar or arguments.
- ``cgcnn-original``: a checkpoint of the original CGCNN code (see :mod:`traits.models.cgcnn_original`).

Pickled files are only ever read with ``torch.load(weights_only=True)``: a file that asks to import
anything beyond tensors and plain containers is refused before any of its code can run.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path

import torch
from torch import nn

from traits.errors import CheckpointError, first_problem
from traits.files import write_bytes_atomic, write_json_atomic
from traits.models.registry import architecture_of, build_model
from traits.models.weights import (  # noqa: F401  (re-exported: the safe loaders live in traits.models.weights)
    _shape,
    _short_list,
    load_weights,
    safe_torch_load,
    safetensors_size,
)

#: Version of the ``traits`` sidecar layout; bumped on incompatible changes.
FORMAT_VERSION = 1

#: Graph settings that must agree between a checkpoint and the graphs it is evaluated on.
GRAPH_KEYS = ("cutoff", "max_neighbors", "gaussian_step", "gaussian_width", "pad_neighbors")

FORMATS = ("traits", "state-dict", "cgcnn-original")


# ----------------------------------------------------------------------------------------------
# Low-level helpers


def _versions() -> dict[str, str]:
    import torch_geometric

    from traits.version import __version__

    out = {"traits": __version__, "torch": torch.__version__, "torch_geometric": torch_geometric.__version__}
    try:
        out["pymatgen"] = importlib_metadata.version("pymatgen")
    except importlib_metadata.PackageNotFoundError:  # pragma: no cover
        out["pymatgen"] = "unknown"
    return out


def _graph_dict(graph) -> dict | None:
    if graph is None:
        return None
    return graph.model_dump() if hasattr(graph, "model_dump") else dict(graph)


def _full_graph(graph) -> dict | None:
    """Graph settings with every default filled in (validated as a GraphSpec)."""
    from pydantic import ValidationError

    from traits.spec import GraphSpec

    if graph is None:
        return None
    try:
        return GraphSpec.model_validate(_graph_dict(graph)).model_dump()
    except ValidationError as exc:
        raise CheckpointError(f"invalid graph settings for the checkpoint metadata: {exc}") from None


def sidecar_path(path: Path) -> Path:
    return Path(path).with_suffix(".json")


# ----------------------------------------------------------------------------------------------
# Save


def canonical_safetensors(blob: bytes) -> bytes:
    """``blob`` (a safetensors file) with its header's ``__metadata__`` keys in sorted order, so that the same
    tensors and metadata always give the same bytes (and the same ``weights_sha256``).

    safetensors keeps the metadata in a hash map whose iteration order changes from process to process, so two
    saves of identical tensors could differ in the order of two header keys. Reordering keys leaves the header's
    length unchanged (it is padded with spaces to that length, as safetensors pads it) and the tensor entries and
    data untouched; a header that does not read back as expected is returned as it was."""
    if len(blob) < 8:
        return blob
    n = int.from_bytes(blob[:8], "little")
    try:
        header = json.loads(blob[8:8 + n])
    except (ValueError, UnicodeDecodeError):
        return blob
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        return blob
    ordered = {"__metadata__": dict(sorted(meta.items())), **{k: v for k, v in header.items() if k != "__metadata__"}}
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > n or json.loads(text) != header:
        return blob
    return blob[:8] + text + b" " * (n - len(text)) + blob[8 + n:]


def save_checkpoint(model: nn.Module, path: Path, metadata: dict) -> Path:
    """Write ``model`` to ``path`` (safetensors) and its JSON sidecar ``path.with_suffix('.json')``.

    ``metadata`` supplies what the model itself does not know: ``graph`` (settings dict or GraphSpec),
    ``target``, ``unit``, ``omit``, ``manifest_hash``, ``data_hash``, ``seed``, ``metrics`` and any extra
    JSON-serialisable keys. Architecture, hyper-parameters, the target normaliser, package versions and
    the weights' sha256 are filled in here. Both files are written atomically. Returns ``path``.
    """
    from safetensors.torch import save as safetensors_save

    from traits.spec import TARGET_UNITS

    path = Path(path)
    if path.suffix == ".json":
        raise CheckpointError(f"{path}: a checkpoint's weights file cannot end in .json (that is the sidecar)")
    state = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    blob = canonical_safetensors(
        safetensors_save(state, metadata={"format": "traits", "traits_checkpoint": str(FORMAT_VERSION)}))
    mean, std = model.target_normalizer()
    meta = dict(metadata)
    target = meta.get("target")
    sidecar = {
        "traits_checkpoint": FORMAT_VERSION,
        "architecture": architecture_of(model),
        "hyper": dict(model.hyper),
        "node_dim": model.node_dim,
        "edge_dim": model.edge_dim,
        "graph": _full_graph(meta.pop("graph", None)),
        "target": target,
        "unit": meta.pop("unit", TARGET_UNITS.get(target)),
        "target_mean": mean,
        "target_std": std,
        "omit": list(meta.pop("omit", [])),
        "manifest_hash": meta.pop("manifest_hash", None),
        "data_hash": meta.pop("data_hash", None),
        "seed": meta.pop("seed", None),
        "versions": _versions(),
        "metrics": meta.pop("metrics", {}),
        "weights_file": path.name,
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
    }
    meta.pop("target", None)
    for key, value in meta.items():
        sidecar.setdefault(key, value)
    write_bytes_atomic(path, blob)
    write_json_atomic(sidecar_path(path), sidecar)
    return path


# ----------------------------------------------------------------------------------------------
# Load


#: Sidecar fields and the JSON types they must have (checked before any is used).
_NUMBER = "a number"
SIDECAR_TYPES: dict[str, tuple[str, tuple]] = {
    "traits_checkpoint": ("an integer", (int,)),
    "architecture": ("a string", (str,)),
    "hyper": ("a mapping of hyper-parameters", (dict,)),
    "node_dim": ("an integer", (int,)),
    "edge_dim": ("an integer", (int,)),
    "graph": ("a mapping of graph settings or null", (dict, type(None))),
    "target": ("a string or null", (str, type(None))),
    "unit": ("a string or null", (str, type(None))),
    "target_mean": (_NUMBER, (int, float)),
    "target_std": (_NUMBER, (int, float)),
    "omit": ("a list of element symbols", (list,)),
    "weights_sha256": ("a string or null", (str, type(None))),
    "metrics": ("a mapping", (dict,)),
}


#: Bounds of the sidecar's feature widths (CGCNN: 92 atom features; one edge feature per Gaussian, at most
#: 2001 with the spec's bounds on data.graph).
SIDECAR_BOUNDS = {"node_dim": (1, 4096), "edge_dim": (1, 4096)}


def _shown(value) -> str:
    shown = json.dumps(value, default=str)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def check_sidecar(sidecar: Path, meta: dict) -> dict:
    """Refuse a sidecar whose known fields have the wrong JSON type or are out of bounds, naming the file and
    the field: ``hyper`` and ``graph`` are held to the spec's own models (``model.hyper``, ``data.graph``: the
    same bounds, strict JSON types, no unknown keys), so a sidecar cannot ask for more than a spec can."""
    from pydantic import ValidationError

    from traits.spec import CGCNNHyper, GraphSpec, _check_element

    for key, (kind, types) in SIDECAR_TYPES.items():
        if key not in meta:
            continue
        value = meta[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise CheckpointError(f"{sidecar}: field {key!r} must be {kind}, got {_shown(value)}")
        if kind == _NUMBER and not math.isfinite(value):
            raise CheckpointError(f"{sidecar}: field {key!r} must be a finite number, got {value}")
    for key, (lo, hi) in SIDECAR_BOUNDS.items():
        if key in meta and not lo <= meta[key] <= hi:
            raise CheckpointError(f"{sidecar}: field {key!r} must be from {lo} to {hi}, got {meta[key]}")
    for key, model in (("hyper", CGCNNHyper), ("graph", GraphSpec)):
        if not isinstance(meta.get(key), dict):
            continue
        try:
            model.model_validate(meta[key], strict=True)
        except ValidationError as exc:
            where, msg, given = first_problem(exc)
            where = f"{key}.{where}" if where else key
            raise CheckpointError(f"{sidecar}: field {where!r}: {msg}, got {_shown(given)}") from None
    for symbol in meta.get("omit", []):
        try:
            _check_element(symbol)
        except ValueError as exc:
            raise CheckpointError(f"{sidecar}: field 'omit': {exc}") from None
    return meta


def _check_hyper(path: Path, hyper: dict) -> None:
    """Hyper-parameters given for a plain state dict (the spec's, or ``traits predict --hyper``) held to the
    spec's bounds (``model.hyper``), before a model is built from them."""
    from pydantic import ValidationError

    from traits.spec import CGCNNHyper

    try:
        CGCNNHyper.model_validate(hyper)
    except ValidationError as exc:
        where, msg, given = first_problem(exc)
        raise CheckpointError(f"{path}: hyper-parameter {where!r}: {msg}, got {_shown(given)}") from None


def _read_sidecar(path: Path, required: bool) -> dict | None:
    from traits.inputs import SMALL_FILE_LIMIT, check_fits, describe_kind, file_size, parse_json

    sidecar = sidecar_path(path)
    kind = describe_kind(sidecar)
    if kind not in (None, "missing"):
        raise CheckpointError(f"{sidecar}: the checkpoint metadata is {kind}, not a regular file")
    if kind == "missing":
        if required:
            raise CheckpointError(
                f"{path}: its metadata sidecar {sidecar.name} is missing (TRAITS writes it beside the weights; "
                "it holds the architecture, hyper-parameters and target normaliser). Copy it along with the "
                "weights, or load a plain state dict with model.format: state-dict."
            )
        return None
    check_fits(sidecar, file_size(sidecar), "checkpoint metadata", CheckpointError, limit=SMALL_FILE_LIMIT)
    try:
        text = sidecar.read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:  # ValueError: bad UTF-8
        raise CheckpointError(f"{sidecar}: unreadable checkpoint metadata ({exc})") from None
    meta = parse_json(text, CheckpointError,
                      lambda exc: f"{sidecar}: unreadable checkpoint metadata ({exc})",
                      f"{sidecar}: unreadable checkpoint metadata (nested too deeply)")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{sidecar}: checkpoint metadata must be a JSON object")
    return check_sidecar(sidecar, meta)


def _check_target(path: Path, have: str | None, want: str | None) -> None:
    """A checkpoint is audited on the target it predicts; a label-free audit (``data.target: model``) reads
    whatever it predicts."""
    if want == "model":
        return
    if want is not None and have is not None and have != want:
        raise CheckpointError(
            f"{path}: the checkpoint predicts {have!r} but the spec's data.target is {want!r}; "
            "audit it on the target it was trained for"
        )


def _check_graph(path: Path, have: dict | None, want) -> None:
    want = _graph_dict(want)
    if want is None or have is None:
        return

    def norm(g: dict, key: str):
        if key == "gaussian_width":
            return g.get("gaussian_width") or g.get("gaussian_step")
        return g.get(key, {"pad_neighbors": False}.get(key))

    diffs = [
        f"{k}: checkpoint {norm(have, k)!r}, spec {norm(want, k)!r}"
        for k in GRAPH_KEYS
        if norm(have, k) != norm(want, k)
    ]
    if diffs:
        raise CheckpointError(
            f"{path}: the checkpoint was trained on graphs built with other settings ({'; '.join(diffs)}); "
            "set data.graph to match the checkpoint"
        )


def _normalizer(path: Path, meta: dict | None, normalizer) -> tuple[float, float]:
    if normalizer is not None:
        mean, std = (float(v) for v in normalizer)
    elif meta is not None and "target_mean" in meta and "target_std" in meta:
        try:
            mean, std = float(meta["target_mean"]), float(meta["target_std"])
        except (TypeError, ValueError):
            raise CheckpointError(
                f"{sidecar_path(path)}: target_mean and target_std must be numbers, got "
                f"{meta['target_mean']!r:.40} and {meta['target_std']!r:.40}"
            ) from None
    else:
        raise CheckpointError(
            f"{path}: no target normaliser: write {sidecar_path(path).name} beside it with "
            '{"target_mean": ..., "target_std": ...} (the training-split mean and std of the target; '
            "use 0 and 1 if the network predicts physical units directly)"
        )
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise CheckpointError(f"{path}: invalid target normaliser mean={mean}, std={std}")
    return mean, std


def _infer_dims(architecture: str, hyper: dict, state: Mapping) -> tuple[int, int]:
    """(node_dim, edge_dim) from a state dict's first layers, defaulting to CGCNN's 92 and 41."""
    node_dim, edge_dim = 92, 41
    width = int(hyper.get("atom_fea_len", 64))
    emb = state.get("embedding.weight")
    if isinstance(emb, torch.Tensor) and emb.dim() == 2:
        node_dim = int(emb.shape[1])
    key = "convs.0.fc_full.weight" if architecture == "cgcnn-original" else "convs.0.lin_f.weight"
    w = state.get(key)
    if isinstance(w, torch.Tensor) and w.dim() == 2 and w.shape[1] > 2 * width:
        edge_dim = int(w.shape[1]) - 2 * width
    return node_dim, edge_dim


def load_checkpoint(
    path: Path,
    fmt: str = "traits",
    *,
    architecture: str | None = None,
    hyper=None,
    target: str | None = None,
    graph=None,
    normalizer: tuple[float, float] | None = None,
    device: torch.device,
) -> tuple[nn.Module, dict]:
    """Load a checkpoint as a model in eval mode on ``device``, plus its metadata dict.

    - ``traits``: architecture and hyper-parameters come from the sidecar (``hyper`` is ignored); a
      different ``architecture`` argument is an error. The weights' sha256 is verified.
    - ``state-dict``: ``architecture`` and ``hyper`` (the spec's) are required; the normaliser comes from
      ``normalizer`` or a sidecar JSON with ``target_mean``/``target_std``.
    - ``cgcnn-original``: see :func:`traits.models.cgcnn_original.load_cgcnn_original`.

    ``target`` (the spec's target) and ``graph`` (the spec's graph settings), when given, are checked
    against what the checkpoint records. Every problem raises a CheckpointError.
    """
    from traits.inputs import require_file

    path = Path(path)
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; choose one of {', '.join(FORMATS)}")
    require_file(path, "checkpoint file", CheckpointError)
    if fmt == "cgcnn-original":
        return _load_original(path, architecture, target, graph, device)
    if fmt == "traits":
        return _load_traits(path, architecture, target, graph, normalizer, device)
    return _load_state_dict(path, architecture, hyper, target, graph, normalizer, device)


def _load_original(path: Path, architecture: str | None, target, graph, device) -> tuple[nn.Module, dict]:
    """A checkpoint of the original CGCNN code (format ``cgcnn-original``)."""
    from traits.models.cgcnn_original import load_cgcnn_original

    if architecture not in (None, "cgcnn-original"):
        raise CheckpointError(f"{path}: format 'cgcnn-original' needs architecture 'cgcnn-original'")
    model, meta = load_cgcnn_original(path, device)
    _check_target(path, meta.get("target"), target)
    _check_graph(path, meta["graph"], graph)
    return model, meta


def _traits_state(path: Path, meta: dict) -> dict:
    """The state dict of a ``traits`` checkpoint, its size checked before it is read and its sha256 against the
    one the sidecar records."""
    from safetensors.torch import load as safetensors_load

    from traits.inputs import check_fits

    check_fits(path, safetensors_size(path), "checkpoint", CheckpointError)  # before reading it whole
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc})") from None
    except MemoryError:
        raise CheckpointError(f"{path}: the checkpoint does not fit in the available memory") from None
    recorded = meta.get("weights_sha256")
    if recorded and hashlib.sha256(blob).hexdigest() != recorded:
        raise CheckpointError(
            f"{path}: truncated or corrupt checkpoint: its sha256 does not match the one recorded in "
            f"{sidecar_path(path).name} (the file was damaged or replaced after it was saved)"
        )
    try:
        return safetensors_load(blob)
    except Exception as exc:  # safetensors raises its own SafetensorError for bad headers
        raise CheckpointError(
            f"{path}: truncated or corrupt safetensors file ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None


def _load_traits(path: Path, architecture: str | None, target, graph, normalizer,
                 device) -> tuple[nn.Module, dict]:
    """A TRAITS checkpoint (format ``traits``): safetensors weights and their JSON sidecar."""
    meta = _read_sidecar(path, required=True)
    version = meta.get("traits_checkpoint")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{sidecar_path(path)}: not a TRAITS checkpoint sidecar of a known version "
            f"(traits_checkpoint={version!r}; this TRAITS reads up to {FORMAT_VERSION})"
        )
    state = _traits_state(path, meta)
    arch = meta.get("architecture")
    if architecture is not None and arch != architecture:
        raise CheckpointError(
            f"{path}: the checkpoint holds a {arch!r} model but the spec says model.architecture: "
            f"{architecture!r}"
        )
    _check_target(path, meta.get("target"), target)
    _check_graph(path, meta.get("graph"), graph)
    try:
        model = build_model(arch, meta.get("hyper") or {}, int(meta.get("node_dim", 92)),
                            int(meta.get("edge_dim", 41)))
    except CheckpointError as exc:  # unknown architecture or hyper-parameter: name the sidecar
        raise CheckpointError(f"{sidecar_path(path)}: {exc}") from None
    except (TypeError, ValueError, RuntimeError, MemoryError) as exc:
        raise CheckpointError(f"{sidecar_path(path)}: invalid hyper-parameters ({type(exc).__name__}: "
                              f"{str(exc)[:200]})") from None
    load_weights(model, state, path)
    model.set_target_normalizer(*_normalizer(path, meta, normalizer))
    meta = {**meta, "format": "traits"}
    return model.to(device).eval(), meta


def _load_state_dict(path: Path, architecture: str | None, hyper, target, graph, normalizer,
                     device) -> tuple[nn.Module, dict]:
    """A plain PyTorch state dict (format ``state-dict``): the architecture and hyper-parameters from the caller,
    the normaliser from ``normalizer`` or an optional sidecar."""
    raw = safe_torch_load(path)
    state = raw
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        state = raw["state_dict"]
    if architecture is None:
        raise CheckpointError(f"{path}: format 'state-dict' needs model.architecture and model.hyper in the spec")
    meta = _read_sidecar(path, required=False) or {}
    _check_target(path, meta.get("target"), target)
    _check_graph(path, meta.get("graph"), graph)
    hyper_dict = hyper.model_dump() if hasattr(hyper, "model_dump") else dict(hyper or {})
    _check_hyper(path, hyper_dict)
    node_dim, edge_dim = _infer_dims(architecture, hyper_dict, state if isinstance(state, Mapping) else {})
    model = build_model(architecture, hyper_dict, node_dim, edge_dim)
    load_weights(model, state, path)
    mean, std = _normalizer(path, meta, normalizer)
    model.set_target_normalizer(mean, std)
    out = {
        **meta,
        "format": "state-dict",
        "architecture": architecture,
        "hyper": dict(model.hyper),
        "target": meta.get("target", target),
        "target_mean": mean,
        "target_std": std,
    }
    return model.to(device).eval(), out


def detect_format(path: Path) -> str:
    """The checkpoint format of a file, from its content: 'traits' (safetensors), 'cgcnn-original' (a
    PyTorch file holding the original CGCNN dict: state_dict, normalizer, args) or 'state-dict' (any other
    PyTorch file). Loading uses the same safe readers as :func:`load_checkpoint`."""
    import argparse

    from traits.inputs import file_size, require_file

    path = require_file(Path(path), "checkpoint file", CheckpointError)
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") from None
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < file_size(path):
        return "traits"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch.save's zip, or a legacy pickle
        raw = safe_torch_load(path, extra_globals=[argparse.Namespace])
        if isinstance(raw, dict) and {"state_dict", "normalizer", "args"} <= set(raw):
            return "cgcnn-original"
        return "state-dict"
    raise CheckpointError(
        f"{path}: cannot tell the checkpoint format (neither safetensors nor a PyTorch file); give --format"
    )
