"""The crystal graph convolutional network (CGCNN, Xie & Grossman, PRL 120, 145301, 2018) on
torch_geometric layers, and :class:`GraphRegressor`, the interface every TRAITS model offers.

Architecture ``cgcnn``::

    h_i^0   = W_e x_i + b_e                                   (92 -> atom_fea_len)
    h_i^t+1 = softplus(CGConv(h^t, e)_i)                       (n_conv times)
    CGConv  : h_i + BN( Σ_j σ(W_f z_ij + b_f) ⊙ softplus(W_s z_ij + b_s) ),  z_ij = [h_i, h_j, e_ij]
    c       = pool_i(h_i^T)                                    (mean | sum | max over the atoms of a crystal)
    c       = softplus(W c + b)                                (atom_fea_len -> h_fea_len, then n_h - 1 more)
    ŷ       = (w_o · c + b_o) · σ_y + μ_y                      (de-normalised with the training-split μ_y, σ_y)

Predictions are in physical units; the normaliser (μ_y, σ_y) lives in non-persistent buffers that
a checkpoint's metadata sets at load time.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

#: Module types whose parameters count as normalisation parameters (excluded from probe directions).
_NORM_TYPES: tuple[type, ...] = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _norm_types() -> tuple[type, ...]:
    try:
        from torch_geometric.nn import norm as pyg_norm

        extra = tuple(
            getattr(pyg_norm, name)
            for name in ("BatchNorm", "LayerNorm", "GraphNorm", "InstanceNorm")
            if hasattr(pyg_norm, name)
        )
    except ImportError:  # pragma: no cover - torch_geometric is a dependency
        extra = ()
    return _NORM_TYPES + extra


def graph_index(batch) -> tuple[Tensor, int]:
    """The atom -> crystal index of a Batch (or of a single Data) and the number of crystals.

    Uses the Batch's Python-side ``num_graphs`` so no device sync (``.item()``) happens in forward.
    """
    index = getattr(batch, "batch", None)
    if index is None:
        return torch.zeros(batch.x.size(0), dtype=torch.long, device=batch.x.device), 1
    size = getattr(batch, "num_graphs", None)
    if size is None:  # pragma: no cover - a Batch always has num_graphs
        size = int(index.max()) + 1
    return index, int(size)


def bn_affine(params: dict[str, Tensor], prefix: str, bn: nn.Module) -> tuple[Tensor, Tensor]:
    """(scale, shift) of an eval-mode batch norm whose weight, bias and running statistics are in ``params``
    under ``prefix``: bn(x) = x * scale + shift."""
    var, mean = params[prefix + ".running_var"], params[prefix + ".running_mean"]
    scale = torch.rsqrt(var + bn.eps)
    shift = -mean * scale
    if bn.affine:
        scale, shift = scale * params[prefix + ".weight"], shift * params[prefix + ".weight"] + params[prefix + ".bias"]
    return scale, shift


def split_linear_messages(weight_bias: Tensor, h: Tensor, edge_index: Tensor, e: Tensor,
                          bn: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Σ_j sigmoid(f_ij) ⊙ softplus(s_ij) at each centre atom i, where [f_ij, s_ij] = W [h_i, h_j, e_ij] + b
    (``weight_bias`` = [W | b], 2F rows; optionally followed by the per-channel affine map ``bn``).

    W is applied block by block: its atom blocks once per atom (then gathered per edge), its edge block per edge,
    so the (E, 2F + B) concatenation is never built."""
    from torch_geometric.utils import scatter

    n_fea = h.shape[1]
    w, b = weight_bias[:, :-1], weight_bias[:, -1]
    if bn is not None:
        w, b = w * bn[0][:, None], b * bn[0] + bn[1]
    neighbour, centre = edge_index[0], edge_index[1]
    at_centre = F.linear(h, w[:, :n_fea].contiguous(), b)
    at_neighbour = F.linear(h, w[:, n_fea:2 * n_fea].contiguous())
    gated = F.linear(e, w[:, 2 * n_fea:].contiguous())
    if torch.is_grad_enabled():  # out of place, so that autograd can differentiate it (twice)
        gated = gated + at_centre.index_select(0, centre) + at_neighbour.index_select(0, neighbour)
        filt, core = gated.chunk(2, dim=1)
        message = torch.sigmoid(filt) * F.softplus(core)
        return scatter(message, centre, dim=0, dim_size=h.size(0), reduce="sum")
    # without gradients, in place (no (E, 2F) temporaries), and a regular graph's messages summed as one (n, k, 2F)
    # block: no gather of the centre term, no scatter (1.13-1.18x per loss evaluation on a quiet machine; under
    # autograd the block's backward measured slower, bench/README.md)
    k = regular_degree(centre, h.size(0))
    if k:
        at_centre, gated = at_centre.unsqueeze(1), gated.view(h.size(0), k, -1)
    else:
        at_centre = at_centre.index_select(0, centre)
    filt, core = gated.add_(at_centre).add_(at_neighbour.index_select(0, neighbour).view(gated.shape)).chunk(2, dim=-1)
    message = torch.sigmoid(filt).mul_(F.softplus(core))
    if k:
        return message.sum(dim=1)
    return scatter(message, centre, dim=0, dim_size=h.size(0), reduce="sum")


def regular_degree(centre: Tensor, n_atoms: int) -> int:
    """k when the edges are grouped by centre atom in order, k per atom (``centre`` = 0,…,0, 1,…,1, …, each k
    times: CGCNN's graphs of each atom's k nearest neighbours, padded or never short), else 0; always 0 while
    torch.compile traces (a data-dependent test; inductor fuses the scatter itself)."""
    n_edges = centre.numel()
    if n_atoms == 0 or n_edges == 0 or n_edges % n_atoms or torch.compiler.is_compiling():
        return 0
    k = n_edges // n_atoms
    steps = torch.arange(n_atoms, device=centre.device, dtype=centre.dtype)
    return k if bool(torch.equal(centre.view(n_atoms, k), steps.unsqueeze(1).expand(n_atoms, k))) else 0


class GraphRegressor(nn.Module):
    """Base class of TRAITS models: a graph network with a scalar head and a target normaliser.

    Subclasses implement :meth:`embed` (the pooled crystal vector before the output head) and
    define ``self.fc_out``. ``forward`` returns predictions in physical units.
    """

    architecture: str = ""

    def __init__(self, hyper: dict, node_dim: int, edge_dim: int):
        super().__init__()
        self.hyper = dict(hyper)
        self.node_dim = int(node_dim)
        self.edge_dim = int(edge_dim)
        self.register_buffer("target_mean", torch.tensor(0.0), persistent=False)
        self.register_buffer("target_std", torch.tensor(1.0), persistent=False)

    # -- normaliser -------------------------------------------------------------------------
    def set_target_normalizer(self, mean: float, std: float) -> None:
        """Set the training-split mean and std of the target (physical units)."""
        mean, std = float(mean), float(std)
        if not (std > 0 and torch.isfinite(torch.tensor([mean, std])).all()):
            raise ValueError(f"invalid target normaliser mean={mean}, std={std}")
        with torch.no_grad():
            self.target_mean.fill_(mean)
            self.target_std.fill_(std)

    def target_normalizer(self) -> tuple[float, float]:
        return float(self.target_mean), float(self.target_std)

    # -- forward ----------------------------------------------------------------------------
    def embed(self, batch) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict_normalized(self, batch) -> Tensor:
        """(B,) predictions in normalised units (what the training loss sees)."""
        return self.fc_out(self.embed(batch)).squeeze(-1)

    def forward(self, batch) -> Tensor:
        """(B,) predictions in physical units."""
        return self.predict_normalized(batch) * self.target_std + self.target_mean

    # -- the probes' fast forward ----------------------------------------------------------------
    def probe_forward(self, params: dict[str, Tensor], batch) -> Tensor:
        """``functional_call(self, params, (batch,))`` in eval mode, computed a cheaper way (the probes use it for
        loss evaluations without gradients; :class:`~traits.probes.objective.SplitObjective` checks it against the
        plain forward before relying on it).

        Each convolution's linear map of z_ij = [h_i, h_j, e_ij] is split into its three blocks, so the atom
        blocks are applied once per atom instead of once per edge and the concatenated (E, 2F + B) tensor is
        never built; eval-mode batch norm is folded into the affine maps beside it. Equal to the plain forward
        up to floating-point rounding (≈1e-6 relative in float32)."""
        from torch_geometric.nn import global_add_pool, global_max_pool, global_mean_pool

        if self.training:
            raise RuntimeError("probe_forward is for eval mode only (batch norm uses the running statistics)")
        dtype = params["embedding.weight"].dtype
        x, e = batch.x.to(dtype), batch.edge_attr.to(dtype)
        h = F.linear(x, params["embedding.weight"], params["embedding.bias"])
        for k in range(len(self.convs)):
            h = self._conv_fast(k, params, h, batch.edge_index, e)
        index, size = graph_index(batch)
        how = getattr(self, "pooling", "mean")
        weight = getattr(batch, "orbit_weight", None)
        if weight is None:
            pooled = {"mean": global_mean_pool, "sum": global_add_pool, "max": global_max_pool}[how](h, index, size)
        else:  # a batch reduced to one atom per class (probe_batch): each class pooled as its atoms
            from traits.models.orbits import weighted_pool

            pooled = weighted_pool(h, index, size, weight, how)
        c = self._head_fast(params, pooled)
        for j in range(len(getattr(self, "fcs", ()))):
            c = F.softplus(F.linear(c, params[f"fcs.{j}.weight"], params[f"fcs.{j}.bias"]))
        out = F.linear(c, params["fc_out.weight"], params["fc_out.bias"]).squeeze(-1)
        return out * params["target_std"] + params["target_mean"]

    def probe_batch(self, batch):
        """The batch ``probe_forward`` is given in its place: reduced to one atom per class of atoms no layer can
        tell apart (:mod:`traits.models.orbits`; on the bundled sample 2.1x fewer atoms and edges), or ``batch``
        itself when no two atoms are alike. Valid because every ``_conv_fast`` is a message-passing layer (each atom
        updated from its own state and the multiset of its incoming (neighbour state, edge features) pairs)."""
        from traits.models.orbits import orbit_batch

        reduced = orbit_batch(batch, *graph_index(batch))
        return batch if reduced is None else reduced

    def _head_fast(self, params: dict[str, Tensor], pooled: Tensor) -> Tensor:
        return pooled

    def _conv_fast(self, k: int, params, h, edge_index, e) -> Tensor:  # pragma: no cover - per architecture
        """Layer k: each atom's new state from its own state and the multiset of its incoming (h_j, e_ij) pairs
        only (``probe_batch`` relies on it)."""
        raise NotImplementedError

    def normalization_parameter_names(self) -> set[str]:
        """Names (as in ``named_parameters``) of batch-norm / normalisation parameters."""
        types = _norm_types()
        names: set[str] = set()
        for prefix, module in self.named_modules():
            if isinstance(module, types):
                for pname, _ in module.named_parameters(recurse=True):
                    names.add(f"{prefix}.{pname}" if prefix else pname)
        return names

    def _inputs(self, batch) -> tuple[Tensor, Tensor]:
        dtype = self.embedding.weight.dtype
        return batch.x.to(dtype), batch.edge_attr.to(dtype)

    def _hidden(self, c: Tensor) -> Tensor:
        """The hidden layers of the head: c = softplus(fc(c)) for each layer of ``self.fcs``, a subclass's
        ``nn.ModuleList`` of hidden ``nn.Linear`` layers (a subclass without hidden layers has no ``fcs``)."""
        for fc in getattr(self, "fcs", ()):
            c = F.softplus(fc(c))
        return c


_POOLS = ("mean", "sum", "max")


class CGCNN(GraphRegressor):
    """CGCNN on ``torch_geometric.nn.CGConv`` layers (architecture name ``cgcnn``)."""

    architecture = "cgcnn"

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
        from torch_geometric.nn import CGConv

        if pooling not in _POOLS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {list(_POOLS)}")
        hyper = dict(
            atom_fea_len=atom_fea_len, n_conv=n_conv, h_fea_len=h_fea_len, n_h=n_h,
            batch_norm=bool(batch_norm), pooling=pooling,
        )
        super().__init__(hyper, node_dim, edge_dim)
        self.pooling = pooling
        self.embedding = nn.Linear(node_dim, atom_fea_len)
        self.convs = nn.ModuleList(
            CGConv(atom_fea_len, dim=edge_dim, aggr="add", batch_norm=bool(batch_norm)) for _ in range(n_conv)
        )
        widths = [atom_fea_len] + [h_fea_len] * n_h
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.fc_out = nn.Linear(widths[-1], 1)

    def _conv_fast(self, k: int, params, h, edge_index, e) -> Tensor:
        """softplus(CGConv_k(h)) with its two linear maps (lin_f, lin_s) as one, split into blocks."""
        p, conv = f"convs.{k}.", self.convs[k]
        weight = torch.cat([params[p + "lin_f.weight"], params[p + "lin_f.bias"][:, None]], dim=1)
        weight = torch.cat([weight, torch.cat([params[p + "lin_s.weight"], params[p + "lin_s.bias"][:, None]],
                                              dim=1)], dim=0)
        summed = split_linear_messages(weight, h, edge_index, e)
        if conv.bn is not None:
            scale, shift = bn_affine(params, p + "bn", conv.bn)
            summed = summed * scale + shift
        return F.softplus(summed + h)

    def embed(self, batch) -> Tensor:
        from torch_geometric.nn import global_add_pool, global_max_pool, global_mean_pool

        x, edge_attr = self._inputs(batch)
        h = self.embedding(x)
        for conv in self.convs:
            h = F.softplus(conv(h, batch.edge_index, edge_attr))
        index, size = graph_index(batch)
        pool = {"mean": global_mean_pool, "sum": global_add_pool, "max": global_max_pool}[self.pooling]
        return self._hidden(pool(h, index, size))


def __getattr__(name: str):
    # the adapters moved to traits.models.cgcnn_adapter; imported from there on first use (no import circle)
    if name in ("CGCNNAdapter", "GraphAdapter"):
        from importlib import import_module

        return getattr(import_module("traits.models.cgcnn_adapter"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
