"""Running a model over graphs (predictions, embeddings), accuracy metrics, and predicting from files."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from traits.errors import DataError
from traits.models.checkpoint import detect_format  # noqa: F401  (re-exported: it lives beside load_checkpoint)


def _loader(graphs: Sequence, batch_size: int):
    from torch_geometric.loader import DataLoader

    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    # A private generator: creating a loader iterator draws a seed, which must not come from the global RNG.
    return DataLoader(list(graphs), batch_size=batch_size, shuffle=False, generator=torch.Generator())


def _ids(batch) -> list[str]:
    ids = getattr(batch, "material_id", None)
    if ids is None:
        return [""] * int(batch.num_graphs)
    return [str(i) for i in ids] if isinstance(ids, (list, tuple)) else [str(ids)]


def _run(model: nn.Module, graphs: Sequence, device: torch.device, batch_size: int, fn):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in _loader(graphs, batch_size):
                yield batch, fn(batch.to(device))
    finally:
        model.train(was_training)


def predict(
    model: nn.Module, graphs: Sequence, device: torch.device, batch_size: int = 256
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Predictions (physical units) for ``graphs`` in eval mode: (ids, predictions, targets)."""
    ids: list[str] = []
    preds: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    for batch, out in _run(model, graphs, device, batch_size, model):
        ids.extend(_ids(batch))
        preds.append(out.detach().to("cpu", torch.float64).reshape(-1))
        targets.append(batch.y.detach().to("cpu", torch.float64).reshape(-1))
    if not preds:
        return [], np.zeros(0), np.zeros(0)
    return ids, torch.cat(preds).numpy(), torch.cat(targets).numpy()


def embed(model: nn.Module, graphs: Sequence, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """The pooled crystal vectors before the output head, (n, h), in eval mode."""
    chunks = [out.detach().to("cpu", torch.float64) for _, out in _run(model, graphs, device, batch_size, model.embed)]
    if not chunks:
        return np.zeros((0, 0))
    return torch.cat(chunks).numpy()


def accuracy(preds, targets) -> dict:
    """MAE, RMSE, R² and count; NaN metrics for an empty set (R² is NaN when the targets are constant)."""
    p = np.asarray(preds, dtype=np.float64).reshape(-1)
    t = np.asarray(targets, dtype=np.float64).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"predictions {p.shape} and targets {t.shape} differ in shape")
    n = int(p.size)
    if n == 0:
        return {"mae": math.nan, "rmse": math.nan, "r2": math.nan, "n": 0}
    err = p - t
    ss_tot = float(((t - t.mean()) ** 2).sum())
    r2 = 1.0 - float((err**2).sum()) / ss_tot if ss_tot > 0 else math.nan
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err**2).mean())), "r2": r2, "n": n}


def _structure_data(path: Path, settings):
    from traits.data.graphs import atom_feature_table, structure_graph, to_data
    from traits.data.sources import read_structure_file
    from traits.errors import GraphError

    structure = read_structure_file(path)  # CIF, POSCAR or pymatgen JSON only; bounded; never imports code
    try:
        arrays = structure_graph(structure, settings)
    except GraphError as exc:
        raise DataError(f"{path}: {exc}") from None
    table = atom_feature_table()
    if int(arrays.z.max()) >= table.shape[0] or torch.isnan(table[arrays.z]).any():
        raise DataError(f"{path}: contains an element without atom features (Z > 100)")
    return to_data(arrays, math.nan, str(path), settings)


def unit_of(meta: dict, target: str | None = None) -> str:
    """The unit of a checkpoint's predictions: its sidecar's 'unit', or that of its (or the given) target."""
    from traits.spec import TARGET_UNITS

    if isinstance(meta.get("unit"), str) and meta["unit"]:
        return meta["unit"]
    return TARGET_UNITS.get(meta.get("target") or target or "", "unknown")


def predict_files(
    checkpoint: Path,
    fmt: str,
    files: Sequence[Path],
    device: torch.device,
    *,
    architecture: str | None = None,
    hyper=None,
    graph=None,
    normalizer: tuple[float, float] | None = None,
    target: str | None = None,
    batch_size: int = 256,
) -> tuple[list[tuple[str, float]], str]:
    """Predict the target of each CIF/POSCAR file with a checkpoint: ([(file as given, prediction)], unit).

    ``fmt`` 'auto' detects the format (:func:`detect_format`). Graphs are built with the checkpoint's own
    graph settings (``ORIGINAL_GRAPH`` for 'cgcnn-original'); for a 'state-dict' without a sidecar, with
    ``graph`` or the defaults. Unreadable files raise a DataError naming the file. The model is loaded and run
    through its adapter (:func:`traits.models.predicting.load_model`, :func:`~traits.models.predicting.predict_paths`).
    """
    from traits.models.predicting import load_model, predict_paths

    loaded = load_model(None, Path(checkpoint), device, fmt=fmt, architecture=architecture, hyper=hyper,
                        normalizer=normalizer, graph=graph)
    return predict_paths(loaded, files, device), unit_of(loaded.meta, target)


def predict_structures(
    checkpoint: Path,
    fmt: str,
    files: Sequence[Path],
    device: torch.device,
    *,
    architecture: str | None = None,
    hyper=None,
    graph=None,
    batch_size: int = 256,
) -> list[tuple[str, float]]:
    """Predict the target of each CIF/POSCAR file with a checkpoint: [(file as given, prediction)]
    (see :func:`predict_files`, which also gives the unit)."""
    rows, _unit = predict_files(checkpoint, fmt, files, device, architecture=architecture, hyper=hyper,
                                graph=graph, batch_size=batch_size)
    return rows
