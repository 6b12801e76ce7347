"""The CGCNNs' fast forward with each centre's messages summed as one (atoms, k, F) block (the default on regular
graphs, ``traits.models.cgcnn.regular_degree``) against the gather + scatter over centre atoms it replaced.

    python bench/bench_forward.py [--structures 256] [--reps 20] [--passes 7]

On the quickstart CGCNN and, where ``../shared/models/cgcnn/`` holds it, the original CGCNN (padded graphs), over
``--structures`` training structures of the bundled sample: a loss evaluation without gradients (what every surface
point costs), the best of ``--passes`` passes of ``--reps`` calls, the two methods interleaved within each pass
(A, B, A, B, ...). Printed: ms per call, ``speed-up <N>x`` (scatter / block) and the relative difference of the
losses. (Gradients and Hessian-vector products always scatter: with the block their backward measured slower.)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))


def scatter_only(centre, n_atoms):  # the message sum before the block path
    return 0


def timed(fn, reps: int) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def compare(which: str, n: int, reps: int, passes: int) -> None:
    from bench_probes import collate, load_setup

    import traits.models.cgcnn as cgcnn
    from traits.probes.objective import SplitObjective

    model, graphs, name = load_setup(torch.device("cpu"), n, quickstart=which == "quickstart")
    obj = SplitObjective(model, collate(graphs, torch.device("cpu")), loss="mse")
    block = cgcnn.regular_degree
    regular = all(block(b.edge_index[1], b.x.shape[0]) for b in obj.batches)
    methods = {"scatter": scatter_only, "block": block}
    results, best = {}, dict.fromkeys(methods, float("inf"))
    for m, fn in methods.items():  # warm-up
        cgcnn.regular_degree = fn
        results[m] = float(obj.loss())
    for _ in range(passes):
        for m, fn in methods.items():
            cgcnn.regular_degree = fn
            best[m] = min(best[m], timed(obj.loss, reps))
    cgcnn.regular_degree = block
    diff = abs(results["block"] - results["scatter"]) / abs(results["scatter"])
    print(f"\n## {name}, {len(graphs)} structures, regular graphs: {regular}")
    print(f"loss evaluation: scatter {1e3 * best['scatter']:.2f} ms, block {1e3 * best['block']:.2f} ms, "
          f"speed-up {best['scatter'] / best['block']:.2f}x; relative difference of the losses {diff:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--structures", type=int, default=256)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--passes", type=int, default=7)
    parser.add_argument("--models", default="quickstart,original")
    args = parser.parse_args()
    print(f"# message sum: block vs scatter  torch={torch.__version__}  threads={torch.get_num_threads()}  "
          f"load={os.getloadavg()[0]:.2f}")
    for which in args.models.split(","):
        compare(which, args.structures, args.reps, args.passes)


if __name__ == "__main__":
    main()
