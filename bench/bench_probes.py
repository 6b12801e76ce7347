"""Probe-engine benchmarks on a real crystal model and real data; prints ratios measured side by side.

    python bench/bench_probes.py [--quick] [--device cpu|cuda]

1. 2D surface: the engine (pre-collated batches, many grid points per pass) vs a naive loop that,
   per grid point, loads the perturbed state dict into the model and iterates a DataLoader over the
   split (how the classic loss-landscape code works). Also: engine time / (points x one forward pass).
2. Top-5 Hessian eigenvalues: Lanczos vs the pyhessian backend's power iteration, both stopped at the
   same relative tolerance, errors against a converged Lanczos reference; HVP counts and wall time.
3. Hessian trace: Hutch++ vs Hutchinson error at equal HVP budgets, against the exact trace of a small
   real CGCNN (its full Hessian built column by column from HVPs).
Each phase runs in a forked child so its peak resident memory can be reported.

Model: the original CGCNN formation-energy checkpoint (../shared/models/cgcnn/) when present,
else the quickstart checkpoint; data: the bundled Materials Project sample (ID split, Fe omitted).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_CKPT = ROOT.parent / "shared" / "models" / "cgcnn" / "formation-energy-per-atom.pth.tar"
QUICKSTART_CKPT = ROOT / "traits" / "data" / "quickstart" / "model.safetensors"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def in_child(fn, *args):
    """Run fn(*args) in a forked process; return (its result, its peak RSS in MB)."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)

    def target():
        out = fn(*args)
        child.send((out, peak_rss_mb()))

    proc = ctx.Process(target=target)
    proc.start()
    result = parent.recv()
    proc.join()
    return result


def load_setup(device: torch.device, n_graphs: int, small: bool = False):
    from traits.data.prepare import prepare_data
    from traits.models.cgcnn_original import load_cgcnn_original
    from traits.models.checkpoint import load_checkpoint
    from traits.models.registry import build_model
    from traits.spec import spec_from_mapping

    use_original = SHARED_CKPT.is_file() and not small
    graph = {"pad_neighbors": True} if use_original else {}
    spec = spec_from_mapping({
        "name": "bench", "data": {"source": "sample", "target": "formation_energy_per_atom", "graph": graph},
        "omit": ["Fe"], "model": {"train": {}},
    })
    data = prepare_data(spec)
    graphs = data.splits["train"][:n_graphs]
    if small:
        torch.manual_seed(0)
        model = build_model("cgcnn", {"atom_fea_len": 8, "n_conv": 1, "h_fea_len": 8, "n_h": 1,
                                      "batch_norm": True, "pooling": "mean"})
        model.target_mean.fill_(-1.2)
        model.target_std.fill_(1.1)
        name = "small CGCNN (random init, 8 features)"
    elif use_original:
        model, _ = load_cgcnn_original(SHARED_CKPT, device)
        name = "original CGCNN, formation energy (Xie & Grossman)"
    else:
        model, _ = load_checkpoint(QUICKSTART_CKPT, "traits", device=device)
        name = "quickstart CGCNN"
    return model.to(device).eval(), graphs, name


def collate(graphs, device, batch_size=128):
    from traits.audit import collate as engine_collate

    return engine_collate(graphs, device, torch.float32, batch_size)


# ------------------------------------------------------------------------------------ 1. surface


def bench_surface(device_name: str, n_graphs: int, points: int):
    from torch_geometric.loader import DataLoader

    from traits.probes.directions import random_direction
    from traits.probes.objective import SplitObjective
    from traits.probes.surface import surface_2d

    device = torch.device(device_name)
    model, graphs, name = load_setup(device, n_graphs)
    batches = collate(graphs, device)
    obj = SplitObjective(model, batches, loss="mse")
    gen = torch.Generator().manual_seed(0)
    skip = model.normalization_parameter_names()
    d1 = random_direction(obj.params, gen, skip=skip)
    d2 = random_direction(obj.params, gen, skip=skip)
    axis = torch.linspace(-1, 1, points, dtype=torch.float64)

    def naive():
        base = {k: v.clone() for k, v in model.state_dict().items()}
        grid = np.zeros((points, points))
        for i, a in enumerate(axis.tolist()):
            for j, b in enumerate(axis.tolist()):
                state = dict(base)
                for k in d1:
                    state[k] = base[k] + a * d1[k] + b * d2[k]
                model.load_state_dict(state)
                total, n = 0.0, 0
                with torch.no_grad():
                    for batch in DataLoader(graphs, batch_size=128, shuffle=False):
                        batch = batch.to(device)
                        total += float(((model(batch) - batch.y.view(-1)) ** 2).sum())
                        n += batch.num_graphs
                grid[i, j] = total / n
        model.load_state_dict(base)
        return grid

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    naive()  # warm-up of both paths (allocator, kernels)
    surface_2d(obj, d1, d2, axis[:2], axis[:2])
    sync()
    t = time.perf_counter()
    ref = naive()
    sync()
    t_naive = time.perf_counter() - t
    t = time.perf_counter()
    grid = surface_2d(obj, d1, d2, axis, axis).cpu().numpy()
    sync()
    t_engine = time.perf_counter() - t
    t = time.perf_counter()
    surface_2d(obj, d1, d2, axis, axis, chunk_size=points)  # one row per vmap pass
    sync()
    t_vmap = time.perf_counter() - t
    with torch.no_grad():
        obj.loss()
        sync()
        t = time.perf_counter()
        reps = 5
        for _ in range(reps):
            obj.loss()
        sync()
        t_forward = (time.perf_counter() - t) / reps
    return {
        "model": name, "n_graphs": len(graphs), "points": points * points, "t_naive": t_naive,
        "t_engine": t_engine, "t_vmap": t_vmap, "t_forward": t_forward,
        "max_rel_diff": float(np.max(np.abs(grid - ref) / ref)),
        "vmap": obj.vmap_ok, "params": obj.dim,
    }


# ------------------------------------------------------------------------------------ 2. eigenvalues


def bench_eigen(device_name: str, n_graphs: int, tol: float):
    from traits.probes.hessian import top_eigenvalues
    from traits.probes.objective import SplitObjective
    from traits.probes.pyhessian_backend import pyhessian_top_eigenvalues

    device = torch.device(device_name)
    model, graphs, name = load_setup(device, n_graphs)
    batches = collate(graphs, device)
    obj = SplitObjective(model, batches, loss="mse")
    kw = {"device": device, "dtype": torch.float32}
    ref = top_eigenvalues(obj.hvp, obj.dim, k=5, max_steps=150, tol=1e-6,
                          generator=torch.Generator().manual_seed(1), **kw)
    t = time.perf_counter()
    lz = top_eigenvalues(obj.hvp, obj.dim, k=5, max_steps=150, tol=tol,
                         generator=torch.Generator().manual_seed(2), **kw)
    t_lanczos = time.perf_counter() - t
    t = time.perf_counter()
    ph = pyhessian_top_eigenvalues(model, batches, "mse", k=5, max_iter=100, tol=tol,
                                   generator=torch.Generator().manual_seed(3))
    t_pyhessian = time.perf_counter() - t
    ref_v = ref.values.numpy()

    def err(values):
        v = np.sort(np.asarray(values, dtype=float))[::-1][:5]
        return float(np.max(np.abs(v - ref_v) / np.abs(ref_v)))

    return {
        "model": name, "n_graphs": len(graphs), "reference": ref_v.tolist(), "ref_converged": ref.converged,
        "lanczos_hvp": lz.n_hvp, "lanczos_err": err(lz.values), "lanczos_s": t_lanczos,
        "pyhessian_hvp": ph.n_hvp, "pyhessian_err": err(ph.values), "pyhessian_s": t_pyhessian,
        "pyhessian_converged": ph.converged,
    }


# ------------------------------------------------------------------------------------ 3. trace


def bench_trace(device_name: str, n_graphs: int, budgets: list[int], trials: int):
    from traits.probes.hessian import hutchinson_trace, hutchpp_trace
    from traits.probes.objective import SplitObjective

    device = torch.device(device_name)
    model, graphs, name = load_setup(device, n_graphs, small=True)
    obj = SplitObjective(model, collate(graphs, device), loss="mse")
    eye = torch.eye(obj.dim)
    exact = float(sum(float(obj.hvp(eye[i].to(device))[i]) for i in range(obj.dim)))
    kw = {"device": device, "dtype": torch.float32}
    rows = []
    for budget in budgets:
        e_h, e_pp = [], []
        for trial in range(trials):
            h = hutchinson_trace(obj.hvp, obj.dim, n_samples=budget,
                                 generator=torch.Generator().manual_seed(10 + trial), **kw)
            pp = hutchpp_trace(obj.hvp, obj.dim, n_hvp=budget,
                               generator=torch.Generator().manual_seed(10 + trial), **kw)
            e_h.append((h.estimate - exact) / abs(exact))
            e_pp.append((pp.estimate - exact) / abs(exact))
        rows.append({"budget": budget, "hutchinson_rms": float(np.sqrt(np.mean(np.square(e_h)))),
                     "hutchpp_rms": float(np.sqrt(np.mean(np.square(e_pp))))})
    return {"model": name, "params": obj.dim, "n_graphs": len(graphs), "exact": exact, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="smaller grids and budgets (a smoke run)")
    args = parser.parse_args()
    quick = args.quick
    print(f"# TRAITS probe benchmarks  device={args.device}  torch={torch.__version__}  "
          f"threads={torch.get_num_threads()}  python={sys.version.split()[0]}")

    s, rss = in_child(bench_surface, args.device, 64 if quick else 256, 5 if quick else 11)
    print(f"\n## 1. 2D surface, {s['points']} grid points, {s['n_graphs']} structures, {s['model']} "
          f"({s['params']} parameters, vmap={s['vmap']})")
    print(f"naive loop (state dict + DataLoader per point): {s['t_naive']:.2f} s")
    chunk = "1" if args.device == "cpu" else "row"
    print(f"engine, default for the device (chunk {chunk}):    {s['t_engine']:.2f} s")
    print(f"engine, one grid row per vmap pass:             {s['t_vmap']:.2f} s")
    print(f"speed-up naive/engine: {s['t_naive'] / s['t_engine']:.2f}x   (target >= 5x)")
    print(f"engine / (points x one forward pass): {s['t_engine'] / (s['points'] * s['t_forward']):.2f}   "
          f"(target <= 1.1; one forward pass = {1000 * s['t_forward']:.1f} ms)")
    print(f"max relative difference engine vs naive: {s['max_rel_diff']:.1e}; peak RSS {rss:.0f} MB")

    e, rss = in_child(bench_eigen, args.device, 64 if quick else 256, 1e-3)
    print(f"\n## 2. top-5 eigenvalues, {e['n_graphs']} structures, {e['model']}, tol 1e-3")
    print(f"reference (Lanczos, tol 1e-6, converged={e['ref_converged']}): "
          + ", ".join(f"{v:.4g}" for v in e["reference"]))
    print(f"Lanczos:   {e['lanczos_hvp']:4d} HVPs  {e['lanczos_s']:.1f} s  max rel err {e['lanczos_err']:.1e}")
    print(f"pyhessian: {e['pyhessian_hvp']:4d} HVPs  {e['pyhessian_s']:.1f} s  max rel err {e['pyhessian_err']:.1e}"
          f"  (converged={e['pyhessian_converged']})")
    print(f"HVP ratio pyhessian/Lanczos: {e['pyhessian_hvp'] / e['lanczos_hvp']:.2f}x   (target >= 3x); "
          f"time ratio {e['pyhessian_s'] / e['lanczos_s']:.2f}x; peak RSS {rss:.0f} MB")

    budgets = [12, 30, 90] if quick else [15, 45, 150]
    tr, rss = in_child(bench_trace, args.device, 32 if quick else 64, budgets, 4 if quick else 10)
    print(f"\n## 3. trace at equal HVP budgets, {tr['model']} ({tr['params']} parameters), "
          f"{tr['n_graphs']} structures, exact trace {tr['exact']:.4g}")
    print("budget  Hutchinson RMS rel err  Hutch++ RMS rel err  ratio")
    for row in tr["rows"]:
        print(f"{row['budget']:6d}  {row['hutchinson_rms']:22.3e}  {row['hutchpp_rms']:19.3e}  "
              f"{row['hutchinson_rms'] / max(row['hutchpp_rms'], 1e-300):.2f}x")
    print(f"peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
