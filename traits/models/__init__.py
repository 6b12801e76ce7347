"""Models under audit: the adapter seam (:mod:`traits.models.base`), the adapters (the CGCNN ones in
:mod:`traits.models.cgcnn_adapter`, apart from the networks), the architecture registry, checkpoints, inference and
loading any adapter's model to predict files (:mod:`traits.models.predicting`).

The names below are imported when first used, so that importing a light submodule (``traits.models.base``, the
adapters' options) does not start torch.
"""

from __future__ import annotations

import importlib

#: Public name -> the submodule that defines it.
_WHERE = {
    "ModelAdapter": "base", "ModelInfo": "base", "adapter_names": "base", "get_adapter": "base",
    "set_probe_parameters": "base",
    "ScoreFeatures": "base", "output_gradients": "base",
    "CGCNN": "cgcnn", "GraphRegressor": "cgcnn",
    "CGCNNAdapter": "cgcnn_adapter", "CGCNNOriginalAdapter": "cgcnn_adapter", "GraphAdapter": "cgcnn_adapter",
    "ORIGINAL_GRAPH": "cgcnn_original", "CGCNNOriginal": "cgcnn_original", "load_cgcnn_original": "cgcnn_original",
    "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint", "detect_format": "checkpoint",
    "AdapterModel": "predicting", "load_model": "predicting", "predict_paths": "predicting",
    "accuracy": "inference", "embed": "inference", "predict": "inference", "predict_structures": "inference",
    "ARCHITECTURES": "registry", "architecture_of": "registry", "build_model": "registry",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"traits.models.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'traits.models' has no attribute {name!r}")
