"""Landscaper 1.3.1 beside TRAITS on the same CGCNN and the same batch: top-k Hessian eigenvalues and a 2D
surface, and the topology (SMAD) both compute from the same grid.

    python bench/bench_landscaper.py [--quick] [--n N] [--accuracy 1e-3] [--steps 21] [--threads 1]

Problem: as ``bench/bench_eigensolvers.py`` (``load_problem``): the original CGCNN on the 100-crystal ID set of
``audits/published-cgcnn/`` or, with ``--quick``, the quickstart CGCNN on 64 training crystals; one batch, MSE.

Eigenvalues. Reference: scipy ``eigsh`` at tol 1e-9 on TRAITS' HVP operator (cached, shared with
bench_eigensolvers). TRAITS: ``traits.probes.hessian.top_eigenvalues`` (Lanczos), swept as in bench_eigensolvers.
Landscaper: ``landscaper.hessian.PyHessian.eigenvalues(top_n=k, tol, maxIter)`` (power iteration with
deflation, PyHessian-derived) on a wrapper module whose ``forward(batch)`` returns the CGCNN's predictions and
with ``data = [(batch, targets)]``, so its products are its own (double backward through the model), not
TRAITS'; its ``tol`` is swept from loose to tight and the first setting whose returned top-k values all lie
within ``--accuracy`` (relative) of the reference is reported with its HVPs (calls of ``hv_product``), wall
time and peak memory (the increase of resident memory while it ran, bench_eigensolvers' ``peak_increase``).

2D surface. Landscaper's ``compute_loss_landscape`` (dim 2, ``--steps`` points a side) on two seeded random
directions, and TRAITS' ``surface_2d`` on the *same* scaled directions and grid (Landscaper filter-normalises
the directions and scales them to ``||theta|| * distance / (steps / 2)`` per step, and reaches a grid point by
repeated addition; TRAITS evaluates theta + i d1 + j d2 with integer i, j from the centre). Reported: the wall
time of each and the largest relative difference between the two grids (Landscaper perturbs its grid's
maximum with 1 % noise of the grid's spread to avoid flat regions: that one point is left out). Then SMAD:
Landscaper's ``LossLandscape.smad()`` and TRAITS' ``traits.probes.topology.surface_topology`` on Landscaper's
grid (agreement) and their wall times.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_eigensolvers import (  # noqa: E402 - the shared problem and measuring tools of the eigensolver bench
    TOLS,
    CountedOperator,
    load_problem,
    log,
    peak_increase,
    reference,
    top_error,
    traits_solver,
)


class Predictor(torch.nn.Module):
    """The CGCNN as Landscaper expects a model: ``forward(batch)`` -> a flat prediction vector."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model(batch).reshape(-1)


def landscaper_eigen(model, batch, target, ref_top, k: int, accuracy: float, max_iter: int) -> dict:
    from landscaper.hessian import PyHessian

    wrapped = Predictor(model).eval()
    crit = torch.nn.MSELoss()
    rows, best = [], None
    for tol in [t for t in TOLS if t <= 1e-2]:  # looser power-iteration tolerances never reach 1e-3
        torch.manual_seed(3)
        h = PyHessian(wrapped, crit, [(batch, target)], "cpu")
        calls = [0]
        product = h.hv_product

        def counted(v, product=product, calls=calls):
            calls[0] += 1
            return product(v)

        h.hv_product = counted
        t0 = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):
            values, _ = h.eigenvalues(maxIter=max_iter, tol=tol, top_n=k)
        wall = time.perf_counter() - t0
        err = top_error(values, ref_top)
        row = {"setting": f"tol={tol:g}, maxIter={max_iter}", "tol": tol, "hvp": calls[0], "wall": wall, "err": err,
               "values": [float(v) for v in values]}
        rows.append(row)
        log(f"  landscaper {row['setting']}: {calls[0]} HVPs, {wall:.1f} s, err {err:.1e}")
        if err <= accuracy:
            best = row
            break
    if best is not None:
        def rerun():
            torch.manual_seed(3)
            h = PyHessian(wrapped, crit, [(batch, target)], "cpu")
            with contextlib.redirect_stderr(io.StringIO()):
                h.eigenvalues(maxIter=max_iter, tol=best["tol"], top_n=k)

        best["peak_mb"] = peak_increase(rerun)
    return {"rows": rows, "best": best}


def surfaces(model, obj, batch, target, steps: int, distance: float, seed: int) -> dict:
    from landscaper import LossLandscape
    from landscaper.compute import compute_loss_landscape, normalize_direction

    from traits.probes.surface import surface_2d
    from traits.probes.topology import surface_topology

    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters()]
    dirs = [[torch.randn(p.shape, generator=gen) for p in params] for _ in range(2)]

    def loss_of(m, data):
        b, y = data
        with torch.no_grad():
            return float(torch.mean((m(b).reshape(-1) - y) ** 2))

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        grid_l, coords = compute_loss_landscape(model, (batch, target), [list(d) for d in dirs], loss_of,
                                                steps=steps, distance=distance, dim=2, device="cpu")
    wall_l = time.perf_counter() - t0

    # the same scaled directions as Landscaper's (its normalisation and step length, reproduced on copies)
    start = [p.data for p in params]
    model_norm = math.sqrt(sum(float((p.double() ** 2).sum()) for p in start))
    scaled = []
    for d in dirs:
        d = [x.clone() for x in d]
        normalize_direction(d, start)
        norm = math.sqrt(sum(float((x.double() ** 2).sum()) for x in d))
        factor = (model_norm * distance / (steps / 2)) / norm
        scaled.append({name: x * factor for (name, _), x in zip(model.named_parameters(), d)})
    names = obj.names
    d1 = {n: scaled[0][n] for n in names}
    d2 = {n: scaled[1][n] for n in names}
    axis = torch.arange(steps, dtype=torch.float64) - steps // 2
    t0 = time.perf_counter()
    grid_t = surface_2d(obj, d1, d2, axis, axis).double().numpy()
    wall_t = time.perf_counter() - t0

    mask = grid_l != np.max(grid_l)
    rel = np.abs(grid_l - grid_t) / np.maximum(np.abs(grid_t), 1e-300)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ll = LossLandscape(grid_l, coords)
        smad_l, smad_ln = float(ll.smad()), float(ll.smad(normalize=True))
    wall_sl = time.perf_counter() - t0
    t0 = time.perf_counter()
    topo = surface_topology(grid_l)
    wall_st = time.perf_counter() - t0
    return {"points": steps * steps, "wall_landscaper": wall_l, "wall_traits": wall_t,
            "max_rel_diff": float(rel[mask].max()), "median_rel_diff": float(np.median(rel[mask])),
            "smad_landscaper": smad_l, "smad_traits": topo.smad, "smad_norm_landscaper": smad_ln,
            "smad_norm_traits": topo.smad_normalized, "smad_rel_diff": abs(topo.smad - smad_l) / abs(smad_l)
            if smad_l else abs(topo.smad), "wall_smad_landscaper": wall_sl, "wall_smad_traits": wall_st,
            "n_minima": topo.n_minima}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="quickstart model on 64 crystals")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--k", type=int, default=5, help="top-k eigenvalues (at most 5: the reference's)")
    parser.add_argument("--accuracy", type=float, default=1e-3)
    parser.add_argument("--max-iter", type=int, default=300, help="Landscaper's maxIter per eigenvalue")
    parser.add_argument("--steps", type=int, default=21, help="2D grid points a side")
    parser.add_argument("--distance", type=float, default=0.05, help="Landscaper's distance (relative to ||θ||)")
    parser.add_argument("--no-ref-cache", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-eigen", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from traits.probes.objective import SplitObjective

    model, batches, name, ids, label = load_problem(args.quick, args.n)
    batch = batches[0]
    obj = SplitObjective(model, batches, loss="mse")
    target = obj.targets[0].reshape(-1)
    op = CountedOperator(obj.hvp, obj.dim)
    key = hashlib.sha256(json.dumps([name, ids, obj.dim, float(obj.loss())]).encode()).hexdigest()[:16]
    print(f"# Landscaper 1.3.1 beside TRAITS (relative accuracy {args.accuracy:g})")
    print(f"# {platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads), python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.1f}")
    print(f"# problem: {name}, {obj.dim} parameters, {label}, one batch, MSE {float(obj.loss()):.4g}")
    out = {}
    if not args.skip_eigen:
        ref = reference(op, key, not args.no_ref_cache)
        ref_top = np.array(ref["top"][: args.k])
        print("reference top-k (eigsh tol 1e-9): " + ", ".join(f"{x:.6g}" for x in ref_top))
        tr = traits_solver(op, obj.dim, "top", {"top": ref_top}, args.accuracy)
        best = tr["best"]
        peak = peak_increase(tr["rerun"]) if tr["rerun"] else None
        if best:
            print(f"TRAITS Lanczos: {best['hvp']} HVPs, {best['wall']:.1f} s, err {best['err']:.1e} ({best['setting']})"
                  f", peak +{peak:.0f} MB")
        else:
            print("TRAITS Lanczos: did not reach the accuracy")
        ls = landscaper_eigen(model, batch, target, ref_top, args.k, args.accuracy, args.max_iter)
        lb = ls["best"]
        if lb:
            print(f"Landscaper PyHessian: {lb['hvp']} HVPs, {lb['wall']:.1f} s, err {lb['err']:.1e} ({lb['setting']}), "
                  f"peak +{lb['peak_mb']:.0f} MB")
        else:
            last = ls["rows"][-1]
            print(f"Landscaper PyHessian: did not reach the accuracy (tightest tol: {last['hvp']} HVPs, "
                  f"{last['wall']:.1f} s, err {last['err']:.1e})")
        out["eigen"] = {"traits": best and {**{k: v for k, v in best.items() if k != "args"}, "peak_mb": peak},
                        "landscaper": ls}
    s = surfaces(model, obj, batch, target, args.steps, args.distance, seed=7)
    print(f"2D surface {args.steps}x{args.steps}: Landscaper {s['wall_landscaper']:.1f} s, TRAITS "
          f"{s['wall_traits']:.1f} s; grids agree to {s['max_rel_diff']:.1e} relative (max; median "
          f"{s['median_rel_diff']:.1e})")
    print(f"SMAD on Landscaper's grid: Landscaper {s['smad_landscaper']:.6g} ({s['wall_smad_landscaper']:.2f} s), "
          f"TRAITS {s['smad_traits']:.6g} ({s['wall_smad_traits']:.3f} s), relative difference "
          f"{s['smad_rel_diff']:.1e}; {s['n_minima']} minima")
    out["surface"] = s
    print(json.dumps(out, default=float)[:2000] if os.environ.get("BENCH_JSON") else "", end="")


if __name__ == "__main__":
    main()
