"""The adapters of TRAITS' own CGCNN (``cgcnn``) and of the original CGCNN code's checkpoints (``cgcnn-original``).

Both read checkpoints with :func:`traits.models.checkpoint.load_checkpoint` and featurise structures as TRAITS
crystal graphs (:mod:`traits.data.graphs`) with the graph settings the checkpoint records. They are the adapters
TRAITS can train (``trainable``) and the ones that read several checkpoint formats (``checkpoint_formats``).

This module imports no torch when it is imported (the spec reads the adapters' declarations without starting it)
and no network module: the networks live in :mod:`traits.models.cgcnn` and :mod:`traits.models.cgcnn_original`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from traits.models.base import Adapter, Featurised, FeaturiseError, ScoreFeatures
from traits.spec import CGCNNHyper

if TYPE_CHECKING:
    from torch import nn

#: The checkpoint formats of TRAITS' own CGCNN (``model.format``): a TRAITS checkpoint or a plain state dict; the
#: original CGCNN code's ``.pth.tar`` (format ``cgcnn-original``) holds the ``cgcnn-original`` network only.
CGCNN_FORMATS = ("traits", "state-dict")


class GraphAdapter(Adapter):
    """What the two CGCNN adapters share: TRAITS crystal graphs, checkpoints read by
    :func:`traits.models.checkpoint.load_checkpoint`, the linear output layer ``fc_out`` on the pooled crystal
    vector ``embed`` (both screening scores). Audits of these models keep the graph-first data path of
    :func:`traits.data.prepare.prepare_data` (``graph_model``)."""

    graph_model = True
    fmt = "traits"
    package = None
    property = None  # the target recorded in the checkpoint
    Options = CGCNNHyper
    trainable = True
    checkpoint_formats = CGCNN_FORMATS
    options_field = "hyper"

    def __init__(self) -> None:
        self.graph = None
        self.metadata: dict = {}

    def default_graph(self) -> dict:
        """Graph settings when the checkpoint records none."""
        return {}

    def load(self, source, options=None, device=None, *, fmt: str = "auto", architecture: str | None = "",
             **kwargs) -> nn.Module:
        """Load ``source`` (format ``fmt``, detected when 'auto'); ``architecture`` '' means this adapter's name
        (checked against the checkpoint), None takes whatever a TRAITS checkpoint records. Other keywords go to
        :func:`~traits.models.checkpoint.load_checkpoint` (``target``, ``graph``, ``normalizer``)."""
        import torch
        from pydantic import ValidationError

        from traits.errors import CheckpointError
        from traits.models.checkpoint import detect_format, load_checkpoint, sidecar_path
        from traits.spec import GraphSpec

        if source is None:
            raise CheckpointError(f"model {self.name!r} needs a checkpoint file (model.checkpoint)")
        path = Path(source)
        fmt = detect_format(path) if fmt == "auto" else fmt
        hyper = options.model_dump() if hasattr(options, "model_dump") else options
        model, meta = load_checkpoint(path, fmt, architecture=self.name if architecture == "" else architecture,
                                      hyper=hyper, device=device or torch.device("cpu"), **kwargs)
        self.metadata = meta
        try:
            self.graph = GraphSpec(**meta["graph"]) if meta.get("graph") else GraphSpec(**self.default_graph())
        except (ValidationError, TypeError) as exc:
            problem = exc.errors()[0] if isinstance(exc, ValidationError) else {"loc": (), "msg": str(exc)}
            where = ".".join(str(p) for p in problem["loc"])
            raise CheckpointError(f"{sidecar_path(path)}: invalid graph settings"
                                  f"{' at graph.' + where if where else ''}: {problem['msg']}") from None
        return model

    def _settings(self):
        from traits.spec import GraphSpec

        return self.graph or GraphSpec(**self.default_graph())

    def featurise(self, structure, options=None):
        """The structure's crystal graph (a ``torch_geometric`` ``Data``); an element without atom features
        (Z > 100) or a structure whose graph cannot be built is a FeaturiseError."""
        import torch

        from traits.data.graphs import atom_feature_table, structure_graph, to_data
        from traits.errors import GraphError

        settings = self._settings()
        try:
            arrays = structure_graph(structure, settings)
        except GraphError as exc:
            raise FeaturiseError(str(exc)) from None
        table = atom_feature_table()
        if int(arrays.z.max()) >= table.shape[0] or torch.isnan(table[arrays.z]).any():
            raise FeaturiseError("contains an element without atom features (Z > 100)")
        return to_data(arrays, float("nan"), "", settings)

    def featurise_structure(self, material_id, structure, target, options):
        import torch

        data = self.featurise(structure, options)
        data.y = torch.tensor([float(target)], dtype=data.y.dtype if hasattr(data, "y") else torch.float32)
        data.material_id = str(material_id)
        return Featurised(str(material_id), torch.tensor(float(target), dtype=torch.float64), data.z, data,
                          num_atoms=int(data.z.numel()))

    def featurise_entries(self, entries, options, target_is_model: bool = False) -> tuple[list[Featurised], Counter]:
        """The graphs of ``entries`` built as the audit builds them (:func:`traits.data.graphs.build_graphs`, with
        its reasons for skipping), one by one when one entry stops the batch (its error counted as the reason)."""
        import torch

        from traits.data.graphs import build_graphs_skipping

        settings = self._settings()
        built = build_graphs_skipping(list(entries), settings)
        items = [Featurised(str(g.material_id), torch.tensor(float(g.y.reshape(-1)[0]), dtype=torch.float64), g.z, g,
                            num_atoms=int(g.z.numel())) for g in built.graphs]
        return items, Counter(built.skipped)

    def collate(self, items, device, dtype):
        from torch_geometric.data import Batch

        b = Batch.from_data_list([getattr(i, "payload", i) for i in items])
        b.x, b.edge_attr, b.y = b.x.to(dtype), b.edge_attr.to(dtype), b.y.to(dtype)
        return b.to(device)

    def probe_parameters(self, model: nn.Module) -> list[str]:
        return [n for n, p in model.named_parameters() if p.requires_grad]

    def predict(self, model, items, device, dtype=None):
        from traits.models.inference import predict

        return predict(model, [getattr(i, "payload", i) for i in items], device)

    # -- screening: the pooled crystal vector and the linear head on it ------------------------------------
    def output_layer(self, model: nn.Module) -> tuple[str, str | None] | None:
        return ("fc_out.weight", "fc_out.bias") if hasattr(model, "fc_out") and hasattr(model, "embed") else None

    def embedding_width(self, model: nn.Module) -> int | None:
        return int(model.fc_out.in_features) if hasattr(model, "fc_out") else None

    def score_features(self, model: nn.Module, batch) -> ScoreFeatures:
        """One pass: φ = ``embed``, prediction = (w · φ + b) σ_y + μ_y, ψ = σ_y [φ, 1] (its derivative by w and b)."""
        import torch

        if self.output_layer(model) is None:
            return super().score_features(model, batch)
        scale = float(getattr(model, "target_std", 1.0))
        shift = float(getattr(model, "target_mean", 0.0))
        with torch.no_grad():
            phi = model.embed(batch)
            pred = model.fc_out(phi).reshape(-1) * scale + shift
        phi64 = phi.to(torch.float64)
        psi = torch.cat([phi64, phi64.new_ones((phi.shape[0], 1))], 1) * scale
        return ScoreFeatures(pred, psi, phi)

    def info(self, model, source, options):
        out = super().info(model, source, options)
        meta = self.metadata or {}
        out.property = meta.get("target")
        out.units = meta.get("unit")
        if out.units is None and out.property:
            from traits.spec import TARGET_UNITS

            out.units = TARGET_UNITS.get(out.property)
        out.weights_sha256 = meta.get("weights_sha256") or out.weights_sha256
        out.training_data = meta.get("training_data") or (
            f"{meta['data_hash'][:12]} (data hash recorded by traits train)" if meta.get("data_hash") else None)
        return out


#: The former name of :class:`GraphAdapter`.
_GraphAdapterMixin = GraphAdapter


class CGCNNAdapter(GraphAdapter):
    """The ``cgcnn`` adapter: TRAITS' own CGCNN, loaded from a TRAITS checkpoint or a plain state dict."""

    name = "cgcnn"


class CGCNNOriginalAdapter(GraphAdapter):
    """The ``cgcnn-original`` adapter: checkpoints of the original CGCNN code (``.pth.tar``, weights-only)."""

    name = "cgcnn-original"
    checkpoint_formats = (*CGCNN_FORMATS, "cgcnn-original")

    def default_graph(self) -> dict:
        from traits.models.cgcnn_original import ORIGINAL_GRAPH

        return dict(ORIGINAL_GRAPH)
