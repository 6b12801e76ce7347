"""Cost of screening: the cheap default (last-layer Laplace + kNN distance) against plain prediction on
10,000 structures, and the full-network methods' cost per compound.

    python bench/bench_screen.py [--n 10000] [--repeats 3]

The 2,000 bundled sample structures are repeated to ``--n`` graphs (built once, outside the timings); the
bundled quickstart checkpoint and its stored calibration score them. Each timing is the best of
``--repeats`` runs, plain prediction and screening interleaved so that a shared machine slows both alike.
Full-network methods: linearised Laplace = k Jacobian-vector products per compound (vmapped over the k
tangents, one curvature computation reused), Hessian-WAG = one forward pass per kept low-loss model.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "traits" / "data" / "quickstart" / "model.safetensors"


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from traits.audit import collate
    from traits.data.graphs import build_graphs
    from traits.data.sources import read_mp, sample_path
    from traits.models.checkpoint import load_checkpoint
    from traits.models.inference import predict
    from traits.probes import uncertainty as unc
    from traits.probes.hessian import top_eigenvalues
    from traits.probes.objective import SplitObjective
    from traits.screen import calibration_path, load_calibration, score
    from traits.spec import GraphSpec

    device = torch.device("cpu")
    model, meta = load_checkpoint(CKPT, device=device)
    model.eval()
    cal = load_calibration(calibration_path(CKPT))
    base = build_graphs(read_mp(sample_path(), "formation_energy_per_atom").entries, GraphSpec(**meta["graph"])).graphs
    graphs = [base[i % len(base)] for i in range(args.n)]
    print(f"{len(graphs)} graphs ({len(base)} distinct sample structures); torch threads {args.threads}; "
          f"{platform.processor() or platform.machine()}")

    plain = cheap = cheap_noknn = 0.0
    t_plain, t_cheap, t_noknn = [], [], []
    no_knn = {**cal, "knn": {**cal["knn"], "train_embedding": cal["knn"]["train_embedding"][:0]}}
    for _ in range(args.repeats):
        t_plain.append(best(lambda: predict(model, graphs, device), 1))
        t_cheap.append(best(lambda: score(model, graphs, device, cal), 1))
        t_noknn.append(best(lambda: score(model, graphs, device, no_knn), 1))
    plain, cheap, cheap_noknn = min(t_plain), min(t_cheap), min(t_noknn)
    print(f"plain prediction            {plain:8.2f} s  ({1e3 * plain / len(graphs):.3f} ms/compound)")
    print(f"last-layer Laplace + kNN    {cheap:8.2f} s  ratio {cheap / plain:.2f}x")
    print(f"last-layer Laplace only     {cheap_noknn:8.2f} s  ratio {cheap_noknn / plain:.2f}x")

    # full-network methods, per compound, on 256 compounds
    q = collate(base[:256], device, torch.float32)
    obj = SplitObjective(model, collate(base[256:384], device, torch.float32))
    t0 = time.perf_counter()
    eig = top_eigenvalues(obj.hvp, obj.dim, k=8, max_steps=40, tol=1e-3, generator=torch.Generator().manual_seed(0),
                          device=device, dtype=torch.float32)
    t_eig = time.perf_counter() - t0
    curv = unc.low_rank_curvature(eig)
    t_jvp = best(lambda: unc.jvp_projections(obj, curv.vectors, q), args.repeats)
    t_fwd = best(lambda: unc.predict_at(obj, None, q), args.repeats)
    stacked = {n: torch.stack([obj.params[n]] * 20) for n in obj.names}
    t_wag = best(lambda: unc.predict_points(obj, stacked, q), args.repeats)
    n = 256
    print(f"one curvature (Lanczos, {eig.n_hvp} HVPs on 128 training structures, reused for every compound): "
          f"{t_eig:.1f} s")
    print(f"linearised Laplace, k = {len(curv.values)} JVPs: {1e3 * t_jvp / n:.2f} ms/compound "
          f"({t_jvp / t_fwd:.1f}x a forward pass)")
    print(f"Hessian-WAG, 20 low-loss models: {1e3 * t_wag / n:.2f} ms/compound ({t_wag / t_fwd:.1f}x a forward pass; "
          "plus the one-off training-loss grid)")


if __name__ == "__main__":
    main()
