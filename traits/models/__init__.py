"""Models under audit: the adapter seam (:mod:`traits.models.base`), the architecture registry, checkpoints,
inference."""

from traits.models.base import ModelAdapter, ModelInfo, adapter_names, get_adapter, set_probe_parameters
from traits.models.cgcnn import CGCNN, GraphRegressor
from traits.models.cgcnn_original import ORIGINAL_GRAPH, CGCNNOriginal, load_cgcnn_original
from traits.models.checkpoint import load_checkpoint, save_checkpoint
from traits.models.inference import accuracy, embed, predict, predict_structures
from traits.models.registry import ARCHITECTURES, architecture_of, build_model

__all__ = [
    "ARCHITECTURES",
    "CGCNN",
    "CGCNNOriginal",
    "GraphRegressor",
    "ModelAdapter",
    "ModelInfo",
    "ORIGINAL_GRAPH",
    "accuracy",
    "adapter_names",
    "architecture_of",
    "build_model",
    "embed",
    "get_adapter",
    "load_cgcnn_original",
    "load_checkpoint",
    "predict",
    "predict_structures",
    "save_checkpoint",
    "set_probe_parameters",
]
