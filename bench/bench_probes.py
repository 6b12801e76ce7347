"""Probe-engine benchmarks on a real crystal model and real data; prints ratios measured side by side.

    python bench/bench_probes.py [--quick] [--device cpu|cuda] [--models original,quickstart] [--only-surface]

1. 2D surface, side by side on the same model, data and grid size: TRAITS' engine (pre-collated batches; the
   model's fast forward where it has one; with the plain forward too) against two peers: the classic loop
   (per grid point, the perturbed state dict is loaded into the model and a DataLoader collates the split, as
   the loss-landscape code does) and the loss-landscapes package (``random_plane`` with filter normalisation and
   its own random directions, a metric computing the same loss on the same pre-collated batches). Each is also
   given as a multiple of the floor: points x one forward pass of the uncompiled model.
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


def load_setup(device: torch.device, n_graphs: int, small: bool = False, quickstart: bool = False):
    from traits.data.prepare import prepare_data
    from traits.models.cgcnn_original import load_cgcnn_original
    from traits.models.checkpoint import load_checkpoint
    from traits.models.registry import build_model
    from traits.spec import spec_from_mapping

    use_original = SHARED_CKPT.is_file() and not small and not quickstart
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


def bench_surface(device_name: str, n_graphs: int, points: int, which: str = "original", compile_: bool = False):
    from torch_geometric.loader import DataLoader

    from traits.probes.directions import random_direction
    from traits.probes.objective import SplitObjective
    from traits.probes.surface import surface_2d

    device = torch.device(device_name)
    model, graphs, name = load_setup(device, n_graphs, quickstart=which == "quickstart")
    batches = collate(graphs, device)
    obj = SplitObjective(model, batches, loss="mse")
    plain = SplitObjective(model, batches, loss="mse", fast_forward=False)
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

    def loss_landscapes_plane():
        """loss-landscapes' random_plane (filter-normalised random directions, its own) with a metric computing
        the same loss on the same pre-collated batches, in eval mode without gradients."""
        import copy

        import loss_landscapes
        from loss_landscapes.metrics import Metric

        class SplitMSE(Metric):
            def __call__(self, wrapper):
                total, n = 0.0, 0
                with torch.no_grad():
                    for batch in batches:
                        total += float(((wrapper.forward(batch) - batch.y.view(-1)) ** 2).sum())
                        n += batch.num_graphs
                return total / n

        copy_ = copy.deepcopy(model).eval()
        torch.manual_seed(0)
        return loss_landscapes.random_plane(copy_, SplitMSE(), distance=10, steps=points, normalization="filter")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        return out, time.perf_counter() - t

    try:
        import loss_landscapes  # noqa: F401

        have_ll = True
    except ImportError:
        have_ll = False
    naive()  # warm-up of every path (allocator, kernels)
    surface_2d(obj, d1, d2, axis[:2], axis[:2])
    surface_2d(plain, d1, d2, axis[:2], axis[:2])
    ref, t_naive = timed(naive)
    t_ll = timed(loss_landscapes_plane)[1] if have_ll else None
    grid_plain, t_plain = timed(lambda: surface_2d(plain, d1, d2, axis, axis).cpu().numpy())
    grid, t_engine = timed(lambda: surface_2d(obj, d1, d2, axis, axis).cpu().numpy())
    t_vmap = timed(lambda: surface_2d(obj, d1, d2, axis, axis, chunk_size=points))[1]  # one row per vmap pass
    t_scatter = timed_scatter(lambda: surface_2d(obj, d1, d2, axis, axis), timed)
    t_compiled = compile_s = compiled_diff = None
    if compile_:
        comp = SplitObjective(model, batches, loss="mse", compile_loss=True)
        comp.loss()  # compiles (timed in compile_seconds) and checks against the uncompiled loss at theta
        compile_s = comp.compile_seconds
        if comp.compiled:
            surface_2d(comp, d1, d2, axis[:2], axis[:2])
            grid_c, t_compiled = timed(lambda: surface_2d(comp, d1, d2, axis, axis).cpu().numpy())
            compiled_diff = float(np.max(np.abs(grid_c - grid_plain) / grid_plain))
        else:
            compile_s = comp.compile_error
    with torch.no_grad():
        plain.loss()
        reps = 5
        t_forward = timed(lambda: [plain.loss() for _ in range(reps)])[1] / reps  # the uncompiled plain forward
    return {
        "model": name, "n_graphs": len(graphs), "points": points * points, "t_naive": t_naive, "t_ll": t_ll,
        "t_plain": t_plain, "t_engine": t_engine, "t_vmap": t_vmap, "t_forward": t_forward, "t_scatter": t_scatter,
        "max_rel_diff": float(np.max(np.abs(grid - ref) / ref)),
        "max_rel_diff_plain": float(np.max(np.abs(grid - grid_plain) / grid_plain)),
        "vmap": obj.vmap_ok, "params": obj.dim, "fast_forward": obj.fast_forward,
        "fast_forward_error": obj.fast_forward_error, "t_compiled": t_compiled, "compile_s": compile_s,
        "compiled_diff": compiled_diff,
    }


def timed_scatter(fn, timed) -> float:
    """Seconds of ``fn`` with the CGCNNs' message sum forced back to the scatter over centre atoms (the fast forward
    before the (n, k, F) block sum of regular graphs, traits.models.cgcnn.regular_degree)."""
    import traits.models.cgcnn as cgcnn

    block = cgcnn.regular_degree
    cgcnn.regular_degree = lambda centre, n_atoms: 0
    try:
        return timed(fn)[1]
    finally:
        cgcnn.regular_degree = block


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
    parser.add_argument("--models", default="original,quickstart",
                        help="surface section: comma-separated models (original: the original CGCNN checkpoint; "
                        "quickstart: TRAITS' CGCNN checkpoint)")
    parser.add_argument("--only-surface", action="store_true", help="run section 1 only")
    parser.add_argument("--compile", action="store_true", help="surface section: also a torch.compile-d loss")
    args = parser.parse_args()
    quick = args.quick
    print(f"# TRAITS probe benchmarks  device={args.device}  torch={torch.__version__}  "
          f"threads={torch.get_num_threads()}  python={sys.version.split()[0]}")

    for which in args.models.split(","):
        s, rss = in_child(bench_surface, args.device, 64 if quick else 256, 5 if quick else 11, which,
                          args.compile)
        print(f"\n## 1. 2D surface, {s['points']} grid points, {s['n_graphs']} structures, {s['model']} "
              f"({s['params']} parameters, vmap={s['vmap']})")
        floor = s["points"] * s["t_forward"]
        chunk = "1" if args.device == "cpu" else "row"
        rows = [("classic loop (state dict + DataLoader per point)", s["t_naive"]),
                ("loss-landscapes random_plane (same loss, pre-collated batches)", s["t_ll"]),
                (f"TRAITS engine, plain forward (chunk {chunk})", s["t_plain"]),
                (f"TRAITS engine, fast forward, scatter message sum (before the block sum; chunk {chunk})",
                 s["t_scatter"]),
                (f"TRAITS engine, default: fast forward={s['fast_forward']} (chunk {chunk})", s["t_engine"]),
                ("TRAITS engine, one grid row per vmap pass", s["t_vmap"])]
        if s["t_compiled"] is not None:
            rows.append((f"TRAITS engine, torch.compile-d loss (compile {s['compile_s']:.1f} s, not included; "
                         f"max rel. diff {s['compiled_diff']:.1e})", s["t_compiled"]))
        elif args.compile:
            print(f"torch.compile not used: {s['compile_s']}")
        print(f"floor: points x one uncompiled forward = {floor:.2f} s (one forward {1000 * s['t_forward']:.1f} ms)")
        for label, t in rows:
            if t is None:
                print(f"{label}: not installed (pip install loss-landscapes)")
                continue
            print(f"{label}: {t:.2f} s   = {t / floor:.2f} x floor,  {t / s['t_engine']:.2f} x TRAITS default")
        print(f"targets (CPU): classic / TRAITS >= 2x: {s['t_naive'] / s['t_engine']:.2f}x; loss-landscapes / "
              "TRAITS >= 2x: " + (f"{s['t_ll'] / s['t_engine']:.2f}x" if s["t_ll"] else "n/a"))
        print(f"max relative difference TRAITS vs classic loop (same directions): {s['max_rel_diff']:.1e}; fast vs "
              f"plain forward: {s['max_rel_diff_plain']:.1e} (check at theta: {s['fast_forward_error']}); "
              f"peak RSS {rss:.0f} MB")
        if args.only_surface:
            continue
    if args.only_surface:
        return

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
