"""Which CPU kernels an audit's numbers came from, recorded in ``provenance.kernels`` (results schema 1.10).

NumPy, its OpenBLAS and PyTorch each pick their compute kernels at run time from the CPU's instruction sets
(AVX2, AVX-512, ...). Kernels for different instruction sets may round differently in the last bits, and one place
where that changes a result rather than a last digit is the crystal graph: Cartesian coordinates are the BLAS
product of fractional coordinates and the lattice (pymatgen's and :mod:`traits.data.sources`'), so neighbours at
exactly tied distances in a symmetric crystal may come out a few ulps apart in either order, and each atom's
``max_neighbors`` nearest (ties in the search's order, as the original CGCNN keeps them) may then be another set.
Study v2 met this: the same checkpoints re-probed on an AVX-512 machine gave other graphs for about 1.3 % of the
Materials Project crystals (pyrochlores, zircons, ...) than on the AVX2 machine that trained them, predictions up to
0.09 eV apart and MAE ratios up to 4e-4 apart; running OpenBLAS's and NumPy's AVX2 kernels there
(``OPENBLAS_CORETYPE=Haswell``, ``NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL AVX512_SPR"``) gave the first graphs
back (docs/study/v2/README.md). The record below says which kernels ran, so two results that differ this way can
be told apart from two models that differ.

:func:`kernel_record` returns::

    {"blas": [{"internal_api", "version", "architecture"}, ...],   # BLAS libraries loaded (threadpoolctl)
     "numpy_simd": ["X86_V3", ...],                                 # NumPy's dispatch targets in use
     "torch_cpu": "AVX2",                                           # PyTorch's CPU capability
     "environment": {"OPENBLAS_CORETYPE": "Haswell", ...}}          # the variables that pin them, where set

Each part is left out where its library does not say (an older NumPy, no threadpoolctl).
"""
from __future__ import annotations

import os
from typing import Any

#: Environment variables that choose the kernels above, recorded where set.
KERNEL_VARIABLES = ("OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES", "NPY_ENABLE_CPU_FEATURES", "ATEN_CPU_CAPABILITY",
                    "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR")


def _blas() -> list[dict[str, Any]]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [{k: lib.get(k) for k in ("internal_api", "version", "architecture") if lib.get(k) is not None}
            for lib in threadpool_info() if lib.get("user_api") == "blas"]


def _numpy_simd() -> list[str] | None:
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:  # another NumPy layout: nothing to say
        return None
    return [t for t in __cpu_dispatch__ if __cpu_features__.get(t)]


def _torch_cpu() -> str | None:
    import torch

    get = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    return str(get()) if get is not None else None


def kernel_record(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The CPU kernels this process computes with (the module docstring's record)."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    blas = _blas()
    if blas:
        out["blas"] = blas
    simd = _numpy_simd()
    if simd is not None:
        out["numpy_simd"] = simd
    torch_cpu = _torch_cpu()
    if torch_cpu is not None:
        out["torch_cpu"] = torch_cpu
    pinned = {k: env[k] for k in KERNEL_VARIABLES if k in env}
    if pinned:
        out["environment"] = pinned
    return out
