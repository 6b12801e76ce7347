"""Hessian-vector product variants of ``SplitObjective``, timed side by side in one run on a real crystal model.

    python bench/bench_hvp.py [--quick] [--device cpu|cuda] [--rounds R]

Variants (``SplitObjective(hvp_method=...)``): "recompute" (the former default: forward pass and gradient
graph rebuilt per product), "retain" (double backward with the per-batch gradient graph kept between
products), "jvp" (forward-over-reverse ``torch.func.jvp(torch.func.grad(...))``), and "retain" with a
memory budget of about half its graphs (the batches beyond the budget are recomputed per product).

The variants run in one process on the same objective data, interleaved (one product each per round, same
vectors), so machine load hits them alike; printed: min and median seconds per product, recompute /
variant, the largest difference from "recompute" relative to max |Hv|, the bytes of the retained graphs
(counted from the tensors autograd saves) and the peak RSS of the forked child that ran one size.

Model: the original CGCNN formation-energy checkpoint (../shared/models/cgcnn/) when present, else the
quickstart checkpoint; data: the bundled Materials Project sample (training split, Fe omitted).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_probes import collate, in_child, load_setup  # noqa: E402


def timed_products(objectives: dict, vs: list, rounds: int, device) -> dict:
    """Interleaved rounds (each variant one product per round, same vector): per-variant times and outputs.
    The minimum over rounds is the figure least disturbed by other load on a shared machine."""
    times = {m: [] for m in objectives}
    outs = {m: [] for m in objectives}
    for r in range(rounds):
        for m, obj in objectives.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            out = obj.hvp(vs[r])
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[m].append(time.perf_counter() - t)
            outs[m].append(out.cpu().numpy())
    return {m: {"times": times[m], "outs": np.stack(outs[m])} for m in objectives}


def bench_size(device_name: str, n_graphs: int, batch_size: int, rounds: int):
    from traits.probes.objective import SplitObjective

    device = torch.device(device_name)
    model, graphs, name = load_setup(device, n_graphs)
    batches = collate(graphs, device, batch_size)
    objectives = {m: SplitObjective(model, batches, loss="mse", hvp_method=m) for m in ("recompute", "retain", "jvp")}
    # the former defaults, differentiating the model's plain forward instead of its probe_forward
    objectives["recompute, plain fwd"] = SplitObjective(model, batches, loss="mse", hvp_method="recompute",
                                                        fast_forward=False)
    dim = objectives["retain"].dim
    gen = torch.Generator().manual_seed(0)
    vs = [torch.randn(dim, generator=gen).to(device) for _ in range(rounds + 1)]
    t = time.perf_counter()
    objectives["retain"].hvp(vs[-1])  # builds and keeps the graphs
    t_build = time.perf_counter() - t
    for m in ("recompute", "jvp", "recompute, plain fwd"):
        objectives[m].hvp(vs[-1])  # warm-up
    res = timed_products(objectives, vs, rounds, device)
    retained = objectives["retain"].retained_bytes  # before another objective takes the graphs over
    # "retain" with the plain forward, timed on its own (one objective keeps graphs at a time), then the default
    # "retain" again beside it
    sequential = {}
    for label, fast in (("retain, plain fwd", False), ("retain (again)", True)):
        obj = SplitObjective(model, batches, loss="mse", hvp_method="retain", fast_forward=fast)
        obj.hvp(vs[-1])
        sequential[label] = {"retained": obj.retained_bytes, **timed_products({label: obj}, vs, rounds, device)[label]}
        obj.release_graphs()
    out = {"model": name, "dim": dim, "n_graphs": len(graphs), "n_batches": len(batches), "build": t_build,
           "retained": retained, "budget_default": objectives["retain"].hvp_memory_budget,
           "rows": res, "sequential": sequential}
    for obj in objectives.values():
        obj.release_graphs()
    if len(batches) > 1:  # a budget of about half the graphs: the batches beyond it are recomputed per product
        budget = out["retained"] // 2
        part = {"recompute": objectives["recompute"],
                "retain, half budget": SplitObjective(model, batches, loss="mse", hvp_method="retain",
                                                      hvp_memory_budget=budget)}
        part["retain, half budget"].hvp(vs[-1])
        out["half"] = timed_products(part, vs, rounds, device)
        out["half_retained"] = part["retain, half budget"].retained_bytes
        out["half_budget"] = budget
        part["retain, half budget"].release_graphs()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="one size, fewer rounds (a smoke run)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 6, quick 3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's; 1 on a machine shared with other jobs, where "
                             "OpenMP threads waiting on each other cost far more than they gain)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = args.rounds or (3 if args.quick else 6)
    sizes = [(64, 128)] if args.quick else [(100, 128), (256, 128)]
    print(f"# TRAITS HVP variants  device={args.device}  torch={torch.__version__}  "
          f"threads={torch.get_num_threads()}  python={sys.version.split()[0]}  rounds={rounds}")
    for n_graphs, batch_size in sizes:
        r, rss = in_child(bench_size, args.device, n_graphs, batch_size, rounds)
        print(f"\n## {r['n_graphs']} structures in {r['n_batches']} batch(es) of <= {batch_size}, {r['model']} "
              f"({r['dim']} parameters); peak RSS {rss:.0f} MB")
        print(f"retain: first product (builds the graphs) {r['build']:.2f} s, retained graphs "
              f"{r['retained'] / 2**20:.0f} MB (default budget {r['budget_default'] / 2**30:.1f} GiB)")
        tables = [r["rows"]] + ([r["half"]] if "half" in r else [])
        print("variant               min per HVP   median   recompute/variant (min, median)   "
              "max |diff vs recompute| / max |Hv|")
        for table in tables:
            base = table["recompute"]
            scale = float(np.abs(base["outs"]).max())
            b_min, b_med = min(base["times"]), float(np.median(base["times"]))
            for label, row in table.items():
                t_min, t_med = min(row["times"]), float(np.median(row["times"]))
                diff = float(np.abs(row["outs"] - base["outs"]).max()) / scale
                print(f"{label:20s}  {t_min:9.2f} s  {t_med:6.2f} s   {b_min / t_min:8.2f}x, {b_med / t_med:.2f}x"
                      f"{'':17s}{diff:.1e}")
        base = r["rows"]["recompute"]
        for label, row in r["sequential"].items():
            t_min, t_med = min(row["times"]), float(np.median(row["times"]))
            diff = float(np.abs(row["outs"] - base["outs"]).max()) / float(np.abs(base["outs"]).max())
            print(f"{label:20s}  {t_min:9.2f} s  {t_med:6.2f} s   (timed on its own)  retained "
                  f"{row['retained'] / 2**20:.0f} MB   {diff:.1e}")
        if "half" in r:
            print(f"(half budget: {r['half_budget'] / 2**20:.0f} MB allowed, {r['half_retained'] / 2**20:.0f} MB kept)")


if __name__ == "__main__":
    main()
