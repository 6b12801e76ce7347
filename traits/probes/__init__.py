"""The probe engine: loss landscapes of any ``nn.Module`` whose ``forward(batch)`` returns one value per structure.

Public API (imported lazily, so ``import traits.probes`` is cheap)::

    from traits.probes import SplitObjective, top_eigenvalues, hutchpp_trace, random_direction, surface_1d

    obj = SplitObjective(model, batches, loss="mse")   # batches: pre-collated inputs carrying .y
    eig = top_eigenvalues(obj.hvp, obj.dim, k=3, max_steps=30, generator=torch.Generator().manual_seed(0),
                          device=obj.device, dtype=obj.dtype)
    print(eig.values, eig.residuals, obj.n_hvp)

- :class:`SplitObjective` (``traits.probes.objective``): L(θ) = (1/N) Σ l(f_θ(x) − y) as a pure function of the
  parameters that have ``requires_grad`` (:func:`traits.models.base.set_probe_parameters` chooses them); ``loss``,
  ``loss_many``, ``gradient``, ``hvp`` (``"retain"``, ``"recompute"`` or ``"jvp"``). For a label-free audit, set
  each batch's ``y`` to the model's own predictions: the Hessian at θ is then the Gauss-Newton matrix.
- Hessian (``traits.probes.hessian``): :func:`top_eigenvalues`, :func:`smallest_eigenvalue`, :func:`lanczos`
  (certified Ritz pairs with verified residuals), :func:`hutchinson_trace`, :func:`hutchpp_trace`,
  :func:`slq_density`.
- Surfaces (``traits.probes.surface``, ``traits.probes.directions``): :func:`random_direction` (filter-normalised),
  :func:`surface_1d`, :func:`surface_2d`.
- Metrics (``traits.probes.metrics``): :func:`robust_radius`, :func:`sharpness`, :func:`basin_area_fraction`,
  :func:`ratio`; :func:`nonconvexity` (``traits.probes.planes``).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "SplitObjective": "objective", "HVP_METHODS": "objective", "eval_mode": "objective",
    "EigenResult": "hessian", "TraceResult": "hessian", "DensityResult": "hessian", "lanczos": "hessian",
    "top_eigenvalues": "hessian", "smallest_eigenvalue": "hessian", "hutchinson_trace": "hessian",
    "hutchpp_trace": "hessian", "slq_density": "hessian",
    "random_direction": "directions", "surface_1d": "surface", "surface_2d": "surface",
    "robust_radius": "metrics", "sharpness": "metrics", "basin_area_fraction": "metrics", "ratio": "metrics",
    "nonconvexity": "planes",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'traits.probes' has no attribute {name!r}")
    return getattr(importlib.import_module(f"traits.probes.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
