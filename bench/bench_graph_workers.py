"""Graphs of a large screen built by forked worker processes (``traits.data.graphs.build_graphs``, one worker per
available CPU from ``PARALLEL_MIN_ENTRIES`` entries on) against the same build in one process.

    python bench/bench_graph_workers.py [--mp 8000] [--passes 2]

``--mp`` structures spread over the shared Materials Project file (``../shared/data/mp_36738.jsonl.gz``, every k-th
record), with the default graph settings and their features; the two ways interleaved (one process, workers, one
process, ...), best of ``--passes`` each. Printed: seconds for each, ``speed-up <N>x`` and ``identical graphs:
true|false`` (every graph's features, edges and edge features equal, in the same order).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def same(a, b) -> bool:
    if len(a.graphs) != len(b.graphs) or a.skipped != b.skipped:
        return False
    keys = ("x", "edge_index", "edge_attr")
    return all(str(g.material_id) == str(h.material_id) and all(torch.equal(g[k], h[k]) for k in keys)
               for g, h in zip(a.graphs, b.graphs))


def main() -> None:
    from bench_graphs import read_cifs

    from traits.data.graphs import GraphCache, build_graphs, graph_workers
    from traits.data.sources import Entry
    from traits.spec import GraphSpec
    from traits.threads import available_cpus

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mp", type=int, default=8000)
    parser.add_argument("--passes", type=int, default=2)
    args = parser.parse_args()
    cifs, label = read_cifs(False, args.mp)
    entries = [Entry(str(i), 0.0, cif, "cif") for i, cif in enumerate(cifs)]
    workers = graph_workers(len(entries))
    print(f"# graphs of {len(entries)} structures ({label}); workers {workers} ({available_cpus()[1]}); "
          f"torch threads {torch.get_num_threads()}; load {os.getloadavg()[0]:.2f}")
    settings = GraphSpec()
    best, built = {}, {}
    for _ in range(args.passes):
        for name, n in (("one process", 0), ("workers", workers)):
            t = time.perf_counter()
            built[name] = build_graphs(entries, settings, GraphCache(enabled=False), workers=n)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t)
            print(f"  {name}: {best[name]:.2f} s (best so far)", flush=True)
    print(f"one process {best['one process']:.2f} s, workers {best['workers']:.2f} s, "
          f"speed-up {best['one process'] / best['workers']:.2f}x; "
          f"identical graphs: {str(same(built['one process'], built['workers'])).lower()}; "
          f"load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
