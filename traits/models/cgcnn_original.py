"""The network of the original CGCNN code (txie-93/cgcnn), reproduced layer for layer so its published
checkpoints load with identical state-dict keys and give identical predictions.

Architecture ``cgcnn-original``. Per edge j -> i, with z_ij = [h_i, h_j, e_ij]::

    g_ij        = BN1(W_full z_ij + b_full)               (batch norm over edges, 2F channels)
    f, s        = split(g_ij)                             (filter and core halves)
    m_i         = BN2( Σ_j sigmoid(f) ⊙ softplus(s) )
    h_i'        = softplus(h_i + m_i)

and after ``n_conv`` such layers::

    c = softplus(conv_to_fc(softplus(mean_i h_i)))         (the original applies softplus twice here)
    c = softplus(fcs[k](c))                                (n_h - 1 hidden layers, only when n_h > 1)
    ŷ = fc_out(c) · σ_y + μ_y

The original applies BN1 to the (N·M, 2F) neighbour tensor; with graphs padded to exactly M edges
per atom (``ORIGINAL_GRAPH``) that is batch norm over the edges, and in eval mode only the running
statistics matter. Note the softplus *before* ``conv_to_fc``: it is in the original code (and the
checkpoints were trained with it), although descriptions of the model usually leave it out.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from traits.errors import CheckpointError, SpecError, first_problem
from traits.models.cgcnn import GraphRegressor, bn_affine, graph_index, split_linear_messages
from traits.models.weights import load_weights, safe_torch_load
from traits.spec import CGCNNHyper

#: Graph settings the original checkpoints need (pass as ``GraphSpec(**ORIGINAL_GRAPH)``).
ORIGINAL_GRAPH: dict = {"cutoff": 8.0, "max_neighbors": 12, "gaussian_step": 0.2, "pad_neighbors": True}

#: Targets of the original training runs, read from ``args["data_options"][-1]``.
_KNOWN_TARGETS = ("formation_energy_per_atom", "band_gap")


class OriginalConv(nn.Module):
    """One convolution of the original code (state-dict keys ``fc_full``, ``bn1``, ``bn2``)."""

    def __init__(self, atom_fea_len: int, edge_dim: int):
        super().__init__()
        self.atom_fea_len = atom_fea_len
        self.fc_full = nn.Linear(2 * atom_fea_len + edge_dim, 2 * atom_fea_len)
        self.bn1 = nn.BatchNorm1d(2 * atom_fea_len)
        self.bn2 = nn.BatchNorm1d(atom_fea_len)

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        from torch_geometric.utils import scatter

        neighbour, centre = edge_index[0], edge_index[1]
        z = torch.cat([h.index_select(0, centre), h.index_select(0, neighbour), edge_attr], dim=1)
        gated = self.bn1(self.fc_full(z))
        filt, core = gated.chunk(2, dim=1)
        message = torch.sigmoid(filt) * F.softplus(core)
        summed = scatter(message, centre, dim=0, dim_size=h.size(0), reduce="sum")
        return F.softplus(h + self.bn2(summed))


class CGCNNOriginal(GraphRegressor):
    """The original CGCNN network (architecture name ``cgcnn-original``)."""

    architecture = "cgcnn-original"

    def __init__(
        self,
        atom_fea_len: int = 64,
        n_conv: int = 3,
        h_fea_len: int = 128,
        n_h: int = 1,
        batch_norm: bool = True,
        pooling: str = "mean",
        node_dim: int = 92,
        edge_dim: int = 41,
    ):
        if not batch_norm or pooling != "mean":
            raise SpecError(
                "architecture 'cgcnn-original' always uses batch norm and mean pooling; "
                "set model.hyper.batch_norm: true and model.hyper.pooling: mean (or use architecture 'cgcnn')"
            )
        if n_h < 1:
            raise SpecError("architecture 'cgcnn-original' needs model.hyper.n_h >= 1 (conv_to_fc is always there)")
        hyper = dict(atom_fea_len=atom_fea_len, n_conv=n_conv, h_fea_len=h_fea_len, n_h=n_h)
        super().__init__(hyper, node_dim, edge_dim)
        self.embedding = nn.Linear(node_dim, atom_fea_len)
        self.convs = nn.ModuleList(OriginalConv(atom_fea_len, edge_dim) for _ in range(n_conv))
        self.conv_to_fc = nn.Linear(atom_fea_len, h_fea_len)
        if n_h > 1:
            self.fcs = nn.ModuleList(nn.Linear(h_fea_len, h_fea_len) for _ in range(n_h - 1))
        self.fc_out = nn.Linear(h_fea_len, 1)

    def _conv_fast(self, k: int, params, h, edge_index, e) -> Tensor:
        """OriginalConv_k with bn1 folded into fc_full and fc_full split into blocks."""
        p, conv = f"convs.{k}.", self.convs[k]
        weight = torch.cat([params[p + "fc_full.weight"], params[p + "fc_full.bias"][:, None]], dim=1)
        summed = split_linear_messages(weight, h, edge_index, e, bn=bn_affine(params, p + "bn1", conv.bn1))
        scale, shift = bn_affine(params, p + "bn2", conv.bn2)
        return F.softplus(h + summed * scale + shift)

    def _head_fast(self, params, pooled: Tensor) -> Tensor:
        return F.softplus(F.linear(F.softplus(pooled), params["conv_to_fc.weight"], params["conv_to_fc.bias"]))

    def embed(self, batch) -> Tensor:
        from torch_geometric.nn import global_mean_pool

        x, edge_attr = self._inputs(batch)
        h = self.embedding(x)
        for conv in self.convs:
            h = conv(h, batch.edge_index, edge_attr)
        index, size = graph_index(batch)
        c = global_mean_pool(h, index, size)
        return self._hidden(F.softplus(self.conv_to_fc(F.softplus(c))))


def _plain(value):
    """Checkpoint values as JSON-friendly Python values."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _check_original_sizes(path: Path, hyper: dict, node_dim: int, edge_dim: int) -> None:
    """The checkpoint's ``args`` held to the spec's bounds (``model.hyper``) and its feature widths to 1-4096,
    before a model is built from them: the arguments of a file are data, and a model of a billion layers is
    refused, not built."""
    from pydantic import ValidationError

    try:
        CGCNNHyper.model_validate(hyper)
    except ValidationError as exc:
        where, msg, given = first_problem(exc)
        raise CheckpointError(f"{path}: args.{where}: {msg}, got {given!r}") from None
    for name, value in (("node features", node_dim), ("edge features", edge_dim)):
        if not 1 <= value <= 4096:
            raise CheckpointError(f"{path}: {name} {value} out of bounds (1 to 4096)")


def load_cgcnn_original(path: Path, device: torch.device) -> tuple[CGCNNOriginal, dict]:
    """Load an original CGCNN ``.pth.tar`` checkpoint (``weights_only``; no code from the file runs).

    Returns the model in eval mode on ``device`` with its normaliser set, and metadata: ``args`` (the
    training arguments as a dict), ``epoch``, ``best_mae_error``, ``target`` (when recognisable),
    ``target_mean``, ``target_std``, ``hyper``, ``architecture`` and the ``graph`` settings it needs.
    """
    path = Path(path)
    raw = safe_torch_load(path, extra_globals=[argparse.Namespace])
    if not isinstance(raw, dict) or not {"state_dict", "normalizer", "args"} <= set(raw):
        keys = sorted(map(str, raw)) if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(
            f"{path}: not an original CGCNN checkpoint (expected a dict with 'state_dict', 'normalizer' "
            f"and 'args'; found {keys}). For a plain state dict use format 'state-dict'."
        )
    args = raw["args"]
    args = dict(vars(args)) if isinstance(args, argparse.Namespace) else dict(args)
    state = raw["state_dict"]
    try:
        hyper = {k: int(args[k]) for k in ("atom_fea_len", "n_conv", "h_fea_len", "n_h")}
        node_dim = int(state["embedding.weight"].shape[1])
        edge_dim = int(state["convs.0.fc_full.weight"].shape[1]) - 2 * hyper["atom_fea_len"]
        mean, std = float(raw["normalizer"]["mean"]), float(raw["normalizer"]["std"])
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"{path}: incomplete original CGCNN checkpoint ({type(exc).__name__}: {exc})") from exc
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise CheckpointError(f"{path}: invalid normalizer mean={mean}, std={std}")
    _check_original_sizes(path, hyper, node_dim, edge_dim)
    model = CGCNNOriginal(**hyper, node_dim=node_dim, edge_dim=edge_dim)
    load_weights(model, state, path)
    model.set_target_normalizer(mean, std)
    model.to(device).eval()
    options = args.get("data_options") or []
    target = options[-1] if options and options[-1] in _KNOWN_TARGETS else None
    best = raw.get("best_mae_error")
    metadata = {
        "format": "cgcnn-original",
        "architecture": CGCNNOriginal.architecture,
        "hyper": dict(model.hyper),
        "graph": dict(ORIGINAL_GRAPH),
        "target": target,
        "target_mean": mean,
        "target_std": std,
        "args": _plain(args),
        "epoch": int(raw["epoch"]) if raw.get("epoch") is not None else None,
        "best_mae_error": float(best) if best is not None else None,
    }
    return model, metadata


def __getattr__(name: str):
    # the adapter moved to traits.models.cgcnn_adapter; imported from there on first use (no import circle)
    if name == "CGCNNOriginalAdapter":
        from importlib import import_module

        return getattr(import_module("traits.models.cgcnn_adapter"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
