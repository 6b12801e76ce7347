"""The ``torch`` adapter: a user's own ``nn.Module``, named by import path, with weights from a file.

``options.module: "package.module:Class"`` is imported (the user's explicit choice) and built with
``options.kwargs``; its weights come from ``model.checkpoint``, a safetensors file or a weights-only PyTorch
state dict, so the weights file never executes code. Structures become TRAITS' CGCNN crystal graphs
(``featuriser: cgcnn``, settings ``options.graph``; batches are ``torch_geometric`` batches with ``x``,
``edge_index``, ``edge_attr``, ``batch``, ``z`` and ``y``) or whatever a user callable returns
(``featuriser: "package.module:function"``, called with a pymatgen Structure; its outputs are collated by
``options.collate``, another callable taking the list, or passed as a list). ``forward(batch)`` must return one
value per structure of ``options.property`` (in ``options.units``).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from traits.errors import CheckpointError, SpecError
from traits.models.base import Adapter, Featurised, FeaturiseError, StructureBatch


def import_object(path: str, what: str):
    """``package.module:name`` -> the object; a SpecError names what could not be imported."""
    module, sep, attr = path.partition(":")
    if not sep or not module or not attr:
        raise SpecError(f"{what} {path!r} must be written 'package.module:Name'")
    try:
        obj = importlib.import_module(module)
    except Exception as exc:
        raise SpecError(f"{what} {path!r}: cannot import {module!r} ({type(exc).__name__}: {exc})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SpecError(f"{what} {path!r}: {module!r} has no {attr!r}")
        obj = getattr(obj, part)
    return obj


class TorchModuleOptions(BaseModel):
    """Settings of the ``torch`` adapter."""

    model_config = ConfigDict(extra="forbid")

    module: str = Field(description="The model class, 'package.module:Class' (imported: your explicit choice).")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the class.")
    featuriser: str = Field("cgcnn", description="'cgcnn' (TRAITS crystal graphs) or 'package.module:function' "
                            "(called with a pymatgen Structure).")
    collate: str | None = Field(None, description="With a featuriser callable: 'package.module:function' that "
                                "collates a list of its outputs (default: the list itself).")
    graph: dict[str, Any] = Field(default_factory=dict, description="Graph settings for featuriser 'cgcnn' "
                                  "(as data.graph).")
    property: str | None = Field(None, description="The property the model predicts (checked against data.target).")
    units: str | None = None
    training_data: str | None = Field(None, description="What the model was trained on, when known.")

    @field_validator("module")
    @classmethod
    def _path(cls, value: str) -> str:
        if ":" not in value:
            raise ValueError(f"module {value!r} must be written 'package.module:Class'")
        return value


class TorchModuleAdapter(Adapter):
    name = "torch"
    Options = TorchModuleOptions

    def __init__(self) -> None:
        self.options: TorchModuleOptions | None = None

    def declared_property(self, options) -> str | None:
        return options.property if options is not None else None

    def load(self, source, options: TorchModuleOptions, device: torch.device, module: nn.Module | None = None):
        from traits.models.weights import load_state_file, load_weights

        self.options = options
        if module is None:
            cls = import_object(options.module, "model.options.module")
            try:
                module = cls(**options.kwargs)
            except Exception as exc:
                raise SpecError(f"model.options.module {options.module!r} could not be built with "
                                f"{options.kwargs}: {type(exc).__name__}: {exc}") from None
            if not isinstance(module, nn.Module):
                raise SpecError(f"model.options.module {options.module!r} is not a torch.nn.Module")
            if source is None:
                raise CheckpointError("model 'torch' needs a weights file (model.checkpoint: a safetensors file or a "
                                      "state dict saved with torch.save(model.state_dict()))")
            load_weights(module, load_state_file(source), source)
        return module.to(device).eval()

    def info(self, model, source, options):
        out = super().info(model, source, options)
        opts = options or self.options
        if opts is not None:
            out.property, out.units, out.training_data = opts.property, opts.units, opts.training_data
            out.package = opts.module
        return out

    def _graph(self):
        from traits.spec import GraphSpec

        return GraphSpec(**(self.options.graph if self.options else {}))

    def featurise(self, structure, options=None):
        options = options or self.options
        if options is None or options.featuriser == "cgcnn":
            from traits.data.graphs import structure_graph, to_data
            from traits.errors import GraphError

            settings = self._graph()
            try:
                return to_data(structure_graph(structure, settings), float("nan"), "", settings)
            except GraphError as exc:
                raise FeaturiseError(str(exc)) from None
        fn = import_object(options.featuriser, "model.options.featuriser")
        try:
            return fn(structure)
        except Exception as exc:
            raise FeaturiseError(f"{type(exc).__name__}: {str(exc)[:60]}") from None

    def collate(self, items: Sequence[Featurised], device: torch.device, dtype: torch.dtype):
        options = self.options
        y = torch.stack([item.y for item in items]).to(device=device, dtype=dtype)
        ids = [item.material_id for item in items]
        if options is None or options.featuriser == "cgcnn":
            from torch_geometric.data import Batch

            b = Batch.from_data_list([item.payload for item in items])
            b.x, b.edge_attr = b.x.to(dtype), b.edge_attr.to(dtype)
            b = b.to(device)
            b.y = y
            b.material_id = ids
            return b
        payload = [item.payload for item in items]
        if options.collate:
            payload = import_object(options.collate, "model.options.collate")(payload)
        return StructureBatch(payload, y, ids)
