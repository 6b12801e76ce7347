"""Models under audit: the adapter seam (:mod:`traits.models.base`), the architecture registry, checkpoints,
inference.

The names below are imported when first used, so that importing a light submodule (``traits.models.base``, the
adapters' options) does not start torch.
"""

from __future__ import annotations

import importlib

#: Public name -> the submodule that defines it.
_WHERE = {
    "ModelAdapter": "base", "ModelInfo": "base", "adapter_names": "base", "get_adapter": "base",
    "set_probe_parameters": "base",
    "CGCNN": "cgcnn", "GraphRegressor": "cgcnn",
    "ORIGINAL_GRAPH": "cgcnn_original", "CGCNNOriginal": "cgcnn_original", "load_cgcnn_original": "cgcnn_original",
    "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
    "accuracy": "inference", "embed": "inference", "predict": "inference", "predict_structures": "inference",
    "ARCHITECTURES": "registry", "architecture_of": "registry", "build_model": "registry",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"traits.models.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'traits.models' has no attribute {name!r}")
