"""A realistic synthetic :class:`~traits.results.AuditResult` for tests of reports, gates and the CLI.

``make_result()`` builds the result of an imaginary audit of a formation-energy model with every
Fe-containing compound held out: train / ID / OOD splits, parity data, Hessian spectra, 21-point 1D
curves and 15x15 2D grids drawn from quadratics (the OOD loss sharper and higher), a few non-finite
(``None``) grid points, then metrics, OOD/ID ratios and findings computed the way an audit computes
them (``traits.probes.metrics`` and ``traits.verdict.apply_verdict``), and domain-shift diagnostics
computed by ``traits.shift`` from synthetic targets, compositions and embeddings (the OOD compounds
contain Fe, their embeddings sit close to the training ones: with the sharp OOD landscape above, the
verdict reads a fragile representation).

Every top-level field of ``AuditResult`` can be overridden by keyword; metrics, ratios and findings
are then recomputed from the overridden data unless they are overridden themselves::

    make_result(name="x", hessian={}, surface=None)     # a run without Hessian or surface probes
    make_result(nan_points=0)                            # every surface point finite
    make_result(shift=None)                              # an old (schema 1.0) result: no shift diagnostics

An overridden ``ratios`` replaces the landscape and accuracy ratios; the distance ratios of the shift
result are kept unless ``ratios`` names them too.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from traits import shift as SH
from traits.data.splits import SPLIT_SCHEME
from traits.probes import metrics as M
from traits.results import AuditResult, ShiftResult
from traits.spec import AuditSpec, GateSpec
from traits.verdict import apply_verdict

#: Curvature of the synthetic quadratic loss along (direction 1, direction 2) per split, and L(θ).
CURVATURE = {"train": (0.20, 0.12), "id": (0.30, 0.18), "ood": (2.50, 1.40)}
LOSS_AT_THETA = {"train": 0.0042, "id": 0.0068, "ood": 0.0910}

FAKE_SHA = "3f1c9a7be2d4405f8a61c0de9b7e5a4412f0c3d9e8b7a6f5e4d3c2b1a0f9e8d7"


def _spec(name: str, description: str, omit: list[str], seed: int) -> dict[str, Any]:
    raw = {
        "name": name,
        "description": description,
        "seed": seed,
        "device": "cpu",
        "data": {"source": "sample", "target": "formation_energy_per_atom"},
        "omit": omit,
        "model": {
            "architecture": "cgcnn",
            "hyper": {"atom_fea_len": 32, "n_conv": 2, "h_fea_len": 64},
            "checkpoint": "/models/quickstart/model.safetensors",
        },
        "probes": {
            "splits": ["train", "id", "ood"],
            "hessian": {"top_k": 5, "max_steps": 40, "trace_hvps": 30, "density_runs": 2, "density_steps": 30},
            "surface": {"span": 1.0, "points_1d": 21, "points_2d": 15, "directions_1d": 2, "tolerance": 0.1},
        },
    }
    return AuditSpec.model_validate(raw).model_dump(mode="json")


def _accuracy(rng: np.random.Generator, n: int, noise: float, bias: float, prefix: int) -> dict[str, Any]:
    targets = rng.normal(-1.4, 0.9, n)
    predictions = targets + bias + rng.normal(0.0, noise, n)
    err = predictions - targets
    ss_res = float((err**2).sum())
    ss_tot = float(((targets - targets.mean()) ** 2).sum())
    return {
        "n": n,
        "mae": float(np.abs(err).mean()),
        "rmse": float(math.sqrt((err**2).mean())),
        "r2": 1.0 - ss_res / ss_tot,
        "ids": [f"mp-{prefix + i}" for i in range(n)],
        "predictions": [round(float(p), 6) for p in predictions],
        "targets": [round(float(t), 6) for t in targets],
    }


def _hessian(rng: np.random.Generator, split: str, scale: float, n_samples: int) -> dict[str, Any]:
    top = sorted((scale * np.array([1.0, 0.62, 0.41, 0.30, 0.22]) * (1 + 0.02 * rng.standard_normal(5))).tolist(),
                 reverse=True)
    grid = np.linspace(-0.1 * scale, 1.15 * scale, 160)
    # a bulk of near-zero eigenvalues plus a few outliers: what SLQ densities of trained nets look like
    density = 0.9 * np.exp(-0.5 * (grid / (0.015 * scale)) ** 2) / (0.015 * scale * math.sqrt(2 * math.pi))
    for lam, w in zip(top, (0.03, 0.025, 0.02, 0.015, 0.01)):
        density += w * np.exp(-0.5 * ((grid - lam) / (0.03 * scale)) ** 2) / (0.03 * scale * math.sqrt(2 * math.pi))
    trace = float(sum(top) * 3.1)
    residuals = [float(r) for r in rng.uniform(1e-5, 8e-4, 5)]
    lam_min = float(-0.03 * scale)
    # certified pairs: relative residuals below the audit's default tolerance 1e-3
    top_run = {"values": [float(v) for v in top], "residuals": residuals,
               "abs_residuals": [r * abs(v) for r, v in zip(residuals, top)],
               "accuracy": [1e-3 * abs(v) for v in top], "converged": [True] * 5, "n_hvp": 40, "n_steps": 35}
    bottom_run = {"values": [lam_min], "residuals": [5e-4], "abs_residuals": [5e-4 * abs(lam_min)],
                  "accuracy": [1e-3 * max(abs(lam_min), 1e-2 * top[0])], "converged": [True], "n_hvp": 30,
                  "n_steps": 29}
    return {
        "top": top_run,
        "bottom": bottom_run,
        "backend": "traits",
        "n_samples": n_samples,
        "loss": LOSS_AT_THETA[split],
        "top_eigenvalues": [float(v) for v in top],
        "residuals": residuals,
        "converged": True,
        "n_hvp": 40,
        "lambda_min": lam_min,
        "traces": [
            {"method": "hutch++", "estimate": trace, "stderr": 0.04 * trace, "n_hvp": 30},
            {"method": "hutchinson", "estimate": trace * 1.05, "stderr": 0.11 * trace, "n_hvp": 30},
        ],
        "density": {
            "grid": grid.tolist(),
            "density": density.tolist(),
            "nodes": [sorted(rng.uniform(-0.05, 1.0, 6) * scale) for _ in range(2)],
            "weights": [(w / w.sum()).tolist() for w in (rng.uniform(0.1, 1.0, 6) for _ in range(2))],
        },
        "seconds": round(float(rng.uniform(5, 40)), 2),
    }


def _surface(splits: list[str], nan_points: int, tolerance: float = 0.1, span: float = 1.0) -> dict[str, Any]:
    alphas_1d = np.linspace(-span, span, 21)
    alphas_2d = np.linspace(-span, span, 15)
    curves, grids = {}, {}
    for split in splits:
        l0 = LOSS_AT_THETA[split]
        c1, c2 = CURVATURE[split]
        curves[split] = [[float(l0 * (1 + c * a * a)) for a in alphas_1d] for c in (c1, c2)]
        a, b = np.meshgrid(alphas_2d, alphas_2d, indexing="ij")
        g = l0 * (1 + c1 * a * a + c2 * b * b + 0.1 * c1 * a * b)
        rows: list[list[float | None]] = g.tolist()
        if split == "ood":  # the loss diverges in a far corner of the OOD plane
            corner = [(0, 0), (0, 1), (1, 0), (14, 14), (13, 14), (14, 13)]
            for i, j in corner[:nan_points]:
                rows[i][j] = None
        grids[split] = rows
    return {
        "span": span,
        "tolerance": tolerance,
        "include_bias_and_norm": False,
        "seed": 0,
        "alphas_1d": alphas_1d.tolist(),
        "curves": curves,
        "alphas_2d": alphas_2d.tolist(),
        "grids": grids,
        "n_samples": {s: {"train": 300, "id": 200, "ood": 300}.get(s, 100) for s in splits},
        "points_per_second": 41.7,
        "batched": True,
    }


#: Elements of the synthetic compounds (Fe, Z = 26, only in the OOD set).
_ID_ELEMENTS = (3, 8, 11, 12, 13, 14, 15, 16, 19, 20, 22, 25, 27, 28, 29, 30)


def _compositions(rng: np.random.Generator, n: int, with_fe: bool) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        elements = list(rng.choice(_ID_ELEMENTS, size=int(rng.integers(2, 4)), replace=False))
        if with_fe:
            elements[0] = 26
        counts = rng.integers(1, 5, size=len(elements))
        out.append(np.repeat(np.array(elements), counts))
    return out


def make_shift(seed: int = 0, n_train: int = 300, n_id: int = 120, n_ood: int = 160,
               embedding_shift: float = 0.1, target_shift: float = 0.3, k: int = 5) -> ShiftResult:
    """Domain-shift diagnostics of synthetic data: Fe only in the OOD compositions, OOD targets shifted by
    ``target_shift`` (eV/atom) and OOD embeddings by ``embedding_shift`` (in feature standard deviations)."""
    return _make_shift(seed, n_train, n_id, n_ood, embedding_shift, target_shift, k).model_copy(deep=True)


@functools.lru_cache(maxsize=16)
def _make_shift(seed: int, n_train: int, n_id: int, n_ood: int, embedding_shift: float, target_shift: float,
                k: int) -> ShiftResult:
    rng = np.random.default_rng(seed + 7)
    targets = {"train": rng.normal(-1.5, 0.9, n_train), "id": rng.normal(-1.5, 0.9, n_id),
               "ood": rng.normal(-1.5 + target_shift, 0.8, n_ood)}
    zs = {"train": _compositions(rng, n_train, False), "id": _compositions(rng, n_id, False),
          "ood": _compositions(rng, n_ood, True)}
    emb = {"train": rng.normal(0, 1, (n_train, 8)), "id": rng.normal(0, 1, (n_id, 8)),
           "ood": rng.normal(embedding_shift, 1, (n_ood, 8))}
    spaces = {"composition": SH.composition_space(zs), "embedding": SH.standardise(emb)}
    return SH.compute_shift(targets, spaces, k=k, seed=seed, max_points=500, n_train_total=n_train,
                            composition_features="element fractions (Z = 1..100) + fraction-weighted properties",
                            thresholds={"near_ratio": 1.5, "target_outside_fraction": 0.2})


def _nan_array(values) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)


def compute_metrics(fields: dict[str, Any], sharpness_eps: float = 0.1) -> dict[str, dict[str, Any]]:
    """Per-split metrics from the (plain-dict) hessian and surface fields, as an audit computes them."""
    out: dict[str, dict[str, Any]] = {}
    hessian = fields.get("hessian") or {}
    surface = fields.get("surface")
    if hasattr(surface, "model_dump"):
        surface = surface.model_dump()
    hessian = {k: (v.model_dump() if hasattr(v, "model_dump") else v) for k, v in hessian.items()}
    splits = list(dict.fromkeys([*hessian, *((surface or {}).get("curves") or {})]))
    for split in splits:
        m: dict[str, Any] = {}
        h = hessian.get(split)
        if h:
            m["loss"] = h["loss"]
            m["lambda_max"] = h["top_eigenvalues"][0] if h["top_eigenvalues"] else None
            m["lambda_min"] = h["lambda_min"]
            if h["traces"]:
                m["trace"], m["trace_stderr"] = h["traces"][0]["estimate"], h["traces"][0]["stderr"]
        if surface and split in surface["curves"]:
            alphas = surface["alphas_1d"]
            curves = _nan_array(surface["curves"][split])
            centre = int(np.argmin(np.abs(np.asarray(alphas))))
            loss0 = float(curves[0, centre])
            m.setdefault("loss", loss0)
            tau = surface["tolerance"]
            rr = M.robust_radius_directions(alphas, curves, loss0, tau)
            m["robust_radius"], m["robust_radius_censored"] = rr.radius, rr.censored
            m["radius_per_direction"] = [r.radius for r in rr.per_direction]
            m["sharpness"] = max(M.sharpness(alphas, row, loss0, sharpness_eps) for row in curves)
            parts = [curves]
            if split in surface.get("grids", {}):
                grid = _nan_array(surface["grids"][split])
                m["basin_area"] = M.basin_area_fraction(grid, loss0, tau)
                parts.append(grid)
            m["nan_fraction"] = max(M.nan_fraction(p) for p in parts)
        out[split] = m
    return out


def compute_ratios(fields: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    acc = fields.get("accuracy") or {}

    def get(obj, key):
        if obj is None:
            return None
        return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)

    ood_m, id_m = metrics.get("ood", {}), metrics.get("id", {})
    return {
        "mae_ratio": M.ratio(get(acc.get("ood"), "mae"), get(acc.get("id"), "mae")),
        "rmse_ratio": M.ratio(get(acc.get("ood"), "rmse"), get(acc.get("id"), "rmse")),
        "loss_ratio": M.ratio(ood_m.get("loss"), id_m.get("loss")),
        "lambda_ratio": M.ratio(ood_m.get("lambda_max"), id_m.get("lambda_max")),
        "trace_ratio": M.ratio(ood_m.get("trace"), id_m.get("trace")),
        "radius_ratio": M.ratio(ood_m.get("robust_radius"), id_m.get("robust_radius")),
        "sharpness_ratio": M.ratio(ood_m.get("sharpness"), id_m.get("sharpness")),
        "basin_area_ratio": M.ratio(ood_m.get("basin_area"), id_m.get("basin_area")),
    }


def make_result(
    *,
    seed: int = 0,
    with_train: bool = True,
    nan_points: int = 3,
    n_id: int = 120,
    n_ood: int = 160,
    gates: GateSpec | None = None,
    **overrides: Any,
) -> AuditResult:
    """A synthetic audit result; keyword ``overrides`` replace top-level ``AuditResult`` fields.

    ``with_train`` adds the train split to the Hessian and surface probes; ``nan_points`` (0-6) puts
    that many ``None`` values in the OOD grid; ``gates`` (default ``GateSpec()``) decides the findings.
    """
    rng = np.random.default_rng(seed)
    name = overrides.get("name", "Formation energy, CGCNN, omit Fe (synthetic)")
    description = overrides.get(
        "description",
        "Synthetic audit of a CGCNN formation-energy model trained without Fe compounds; "
        "ID test compounds are compared with every Fe-containing compound.",
    )
    omit = overrides.get("omit", ["Fe"])
    probe_splits = (["train"] if with_train else []) + ["id", "ood"]
    fields: dict[str, Any] = {
        "name": name,
        "description": description,
        "spec": _spec(name[:200], description, [e for e in omit if e in ("Fe", "O", "Co", "Ni")], seed),
        "provenance": {
            "traits_version": "0.1.0",
            "split_scheme": SPLIT_SCHEME,
            "versions": {"python": "3.11.7", "torch": "2.3.1", "torch_geometric": "2.5.3", "pymatgen": "2024.5.1",
                         "numpy": "1.26.4"},
            "platform": "Linux-6.1-x86_64-with-glibc2.36",
            "device": "cpu",
            "dtype": "float32",
            "seed": seed,
            "started_at": "2024-06-01T12:00:00+00:00",
            "wall_seconds": {"data": 12.4, "model": 0.8, "accuracy": 2.1, "hessian": 61.5, "surface": 143.2,
                             "total": 220.0},
            "command": "traits audit audits/quickstart.yaml --out traits-out/quickstart",
            "spec_path": "audits/quickstart.yaml",
            "checkpoint_path": "/models/quickstart/model.safetensors",
            "checkpoint_sha256": FAKE_SHA,
            "checkpoint_format": "traits",
            "checkpoint_metadata": {"architecture": "cgcnn", "epochs": 30, "best_val_mae": 0.081},
            "data_source": "sample (bundled Materials Project, 2,000 structures)",
            "data_hash": "9d2e4b6a1c3f5e7d9b0a2c4e6f8a1b3c5d7e9f0a2b4c6d8e0f1a3b5c7d9e1f3",
            "manifest_hash": "c0ffee12ab34cd56ef78a9b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0",
        },
        "target": "formation_energy_per_atom",
        "unit": "eV/atom",
        "omit": omit,
        "loss": "mse",
        "splits": {
            "train": {"count": 1360, "target_mean": -1.52, "target_std": 0.94, "target_min": -4.31,
                      "target_max": 0.88, "with_omitted": {e: 0 for e in omit}, "n_elements": 71,
                      "elements_unseen_in_train": []},
            "val": {"count": 170, "target_mean": -1.49, "target_std": 0.97, "target_min": -3.98,
                    "target_max": 0.61, "with_omitted": {e: 0 for e in omit}, "n_elements": 58,
                    "elements_unseen_in_train": []},
            "id": {"count": n_id, "target_mean": -1.47, "target_std": 0.91, "target_min": -3.87,
                   "target_max": 0.54, "with_omitted": {e: 0 for e in omit}, "n_elements": 55,
                   "elements_unseen_in_train": []},
            "ood": {"count": n_ood, "target_mean": -1.21, "target_std": 0.78, "target_min": -3.12,
                    "target_max": 0.47, "with_omitted": {e: n_ood for e in omit}, "n_elements": 49,
                    "elements_unseen_in_train": list(omit)},
        },
        "skipped": {"isolated_atom": 3, "missing_target": 1},
        "accuracy": {
            "id": _accuracy(rng, n_id, 0.09, 0.0, 1000),
            "ood": _accuracy(rng, n_ood, 0.24, 0.12, 5000),
        },
        "hessian": {
            s: _hessian(rng, s, {"train": 1.9, "id": 2.6, "ood": 11.8}[s], {"train": 256, "id": 120, "ood": 160}[s])
            for s in probe_splits
        },
        "surface": _surface(probe_splits, nan_points),
        "shift": make_shift(seed, n_id=n_id, n_ood=n_ood),
    }
    fields.update({k: v for k, v in overrides.items() if k not in ("metrics", "ratios")})
    metrics = overrides.get("metrics")
    if metrics is None:
        metrics = compute_metrics(fields, sharpness_eps=0.1)
    fields["metrics"] = metrics
    shift = fields.get("shift")
    shift_ratios = dict((shift.ratios if hasattr(shift, "ratios") else (shift or {}).get("ratios")) or {})
    fields["ratios"] = {**shift_ratios, **overrides.get("ratios", compute_ratios(fields, {
        k: (v.model_dump() if hasattr(v, "model_dump") else v) for k, v in metrics.items()}))}
    result = AuditResult.model_validate(fields)
    if not any(k in overrides for k in ("findings", "gates", "status")):
        apply_verdict(result, gates or GateSpec())
    return result
