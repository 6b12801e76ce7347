"""Directions in weight space for loss surfaces.

``random_direction`` draws a Gaussian direction and applies filter normalisation (Li et al. 2018,
"Visualizing the Loss Landscape of Neural Nets"): every filter of the direction gets the norm of the
same filter of theta, so a step of alpha moves each filter by the same *relative* amount whatever the
scale of its weights. A "filter" is one index along dim 0 of a weight tensor with ndim >= 2 (one output
row of a linear layer, one output channel of a convolution).

Vectors (biases, ndim <= 1) and the names in ``skip`` (the caller passes normalisation-layer
parameters) are set to zero by default, as in the paper. With ``include_skipped=True`` they are kept:
skipped tensors with ndim >= 2 are filter-normalised like any weight, and tensors with ndim <= 1 are
scaled to the norm of the whole tensor.

Randomness comes only from the generator passed in; a value is drawn for every tensor, zeroed or not,
so the same seed gives the same direction for the weights whatever ``skip`` and ``include_skipped`` are.
"""

from __future__ import annotations

from collections.abc import Set

import torch

from traits.errors import ProbeError


def _draw_gaussian(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard normal tensor shaped like ``like``, drawn on the generator's device, moved to ``like``'s."""
    sample = torch.randn(like.shape, generator=generator, device=generator.device, dtype=like.dtype)
    return sample.to(like.device)


def _rescale_filters(direction: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Scale each row (index along dim 0) of ``direction`` to the norm of the same row of ``reference``."""
    d = direction.reshape(direction.shape[0], -1)
    r = reference.reshape(reference.shape[0], -1)
    tiny = torch.finfo(d.dtype).tiny
    scale = r.norm(dim=1, keepdim=True) / d.norm(dim=1, keepdim=True).clamp_min(tiny)
    return (d * scale).reshape(direction.shape)


def _rescale_whole(direction: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    tiny = torch.finfo(direction.dtype).tiny
    return direction * (reference.norm() / direction.norm().clamp_min(tiny))


def random_direction(
    params: dict[str, torch.Tensor],
    generator: torch.Generator,
    skip: Set[str] = frozenset(),
    include_skipped: bool = False,
    filter_normalize: bool = True,
) -> dict[str, torch.Tensor]:
    """A random direction with the names, shapes, dtypes and devices of ``params``.

    With ``filter_normalize=False`` the Gaussian draw is returned unscaled (the zeroing of vectors and
    skipped names still follows ``include_skipped``).
    """
    unknown = set(skip) - set(params)
    if unknown:
        raise ProbeError(f"skip names not among the parameters: {sorted(unknown)[:5]}")
    direction: dict[str, torch.Tensor] = {}
    for name, theta in params.items():
        if not theta.is_floating_point():
            raise ProbeError(f"parameter {name!r} is not floating point ({theta.dtype})")
        theta = theta.detach()
        draw = _draw_gaussian(theta, generator)
        is_vector = theta.dim() <= 1
        if (is_vector or name in skip) and not include_skipped:
            direction[name] = torch.zeros_like(theta)
        elif not filter_normalize:
            direction[name] = draw
        elif is_vector:
            direction[name] = _rescale_whole(draw, theta)
        else:
            direction[name] = _rescale_filters(draw, theta)
    return direction


def hessian_direction(vec: torch.Tensor, objective) -> dict[str, torch.Tensor]:
    """An eigenvector (flat, length ``objective.dim``) as a direction dict in the objective's name order.

    The vector is used as given (Lanczos vectors have unit norm); the dict holds copies, not views.
    """
    return {name: t.clone() for name, t in objective.unflatten(vec.detach()).items()}
