"""Architecture name -> constructor, and building a model from a name and hyper-parameters."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import nn

from traits.errors import CheckpointError
from traits.models.cgcnn import CGCNN, GraphRegressor
from traits.models.cgcnn_original import CGCNNOriginal

#: Every architecture TRAITS can build, by the name used in specs and checkpoint metadata.
ARCHITECTURES: dict[str, Callable[..., GraphRegressor]] = {
    CGCNN.architecture: CGCNN,
    CGCNNOriginal.architecture: CGCNNOriginal,
}

_HYPER_KEYS = ("atom_fea_len", "n_conv", "h_fea_len", "n_h", "batch_norm", "pooling")


def _as_dict(hyper) -> dict:
    if hyper is None:
        return {}
    if hasattr(hyper, "model_dump"):
        return hyper.model_dump()
    if isinstance(hyper, Mapping):
        return dict(hyper)
    raise TypeError(f"hyper must be a mapping or CGCNNHyper, not {type(hyper).__name__}")


def build_model(architecture: str, hyper: Mapping | None = None, node_dim: int = 92, edge_dim: int = 41) -> nn.Module:
    """A freshly initialised model (global torch RNG; wrap in ``torch.random.fork_rng`` to seed it)."""
    if architecture not in ARCHITECTURES:
        raise CheckpointError(
            f"unknown architecture {architecture!r}; known architectures: {', '.join(sorted(ARCHITECTURES))}"
        )
    params = _as_dict(hyper)
    unknown = sorted(set(params) - set(_HYPER_KEYS))
    if unknown:
        raise CheckpointError(f"unknown hyper-parameter(s) for {architecture!r}: {', '.join(unknown)}")
    return ARCHITECTURES[architecture](**params, node_dim=node_dim, edge_dim=edge_dim)


def architecture_of(model: nn.Module) -> str:
    """The registry name of a model built by :func:`build_model`."""
    for name, cls in ARCHITECTURES.items():
        if type(model) is cls:
            return name
    raise CheckpointError(
        f"{type(model).__name__} is not a registered architecture ({', '.join(sorted(ARCHITECTURES))})"
    )
