"""Graph building: the neighbour search TRAITS uses against pymatgen's ``Structure.get_neighbor_list`` (the
reference), and against the field libraries vesin and matscipy where installed, on the same structures.

    python bench/bench_graphs.py [--quick] [--mp N]

Structures: the bundled Materials Project sample (2,000; every 10th with ``--quick``), or with ``--mp N`` every
k-th of the shared 36,738-structure file (``../shared/data/mp_mtcgcnn``) so that N are read. Prints, per
structure (best of three passes over all of them, taken in turn so that load on the machine hits each alike):

- the neighbour search at the default cutoff (8 Å): the reference, TRAITS' default backend (pymatgen's
  compiled search called on the arrays), vesin and matscipy, each with whether its pairs (centre, neighbour,
  image) equal the reference's and its distances agree to 1e-9 Å;
- where the rest of a graph's time goes: parsing the CIF, the whole ``structure_graph`` with each backend,
  and ``to_data`` (Gaussian expansion, atom features);
- ``speed-up <N>x``: the reference search's time over the default backend's, and ``identical edges:
  true|false``: whether every final graph (z, edge_index, distances, edge_attr) equals the reference's, for
  TRAITS' default graph and the original CGCNN's (12 neighbours, padded).
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
MP_FILE = ROOT.parent / "shared" / "data" / "mp_mtcgcnn" / "mp_36738.jsonl.gz"
MP_RECORDS = 36738


def read_cifs(quick: bool, mp: int | None) -> tuple[list[str], str]:
    if mp:
        step = max(1, MP_RECORDS // mp)
        with gzip.open(MP_FILE, "rt") as fh:
            cifs = [json.loads(line)["cif"] for line in itertools.islice(fh, 0, None, step)][:mp]
        return cifs, f"one record in {step} of {MP_FILE.name}"
    from traits.data.sources import read_mp, sample_path

    entries = read_mp(sample_path(), "formation_energy_per_atom").entries
    entries = entries[::10] if quick else entries
    return [e.payload for e in entries], "the bundled Materials Project sample" + (" (every 10th)" if quick else "")


def best_of(fns: dict, items: list, repeats: int = 3) -> dict[str, float]:
    """Seconds per item of each function (best of ``repeats`` passes, the functions taken in turn)."""
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            for item in items:
                fn(item)
            best[name] = min(best[name], (time.perf_counter() - t) / len(items))
    return best


def same_pairs(ref, got) -> bool:
    """Whether two neighbour lists hold the same (centre, neighbour, image) pairs, distances within 1e-9 Å."""
    def keyed(centres, neighbours, images, dists):
        keys = np.column_stack([centres, neighbours, np.rint(images).astype(np.int64)])
        order = np.lexsort(keys.T[::-1])
        return keys[order], np.asarray(dists)[order]

    (k1, d1), (k2, d2) = keyed(*ref), keyed(*got)
    return k1.shape == k2.shape and np.array_equal(k1, k2) and bool(np.all(np.abs(d1 - d2) <= 1e-9))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 structures instead of 2,000")
    parser.add_argument("--mp", type=int, default=None, metavar="N",
                        help="N structures from the shared Materials Project file instead of the sample")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    from pymatgen.core import Structure

    from traits.data.graphs import neighbour_list, structure_graph, to_data
    from traits.spec import GraphSpec

    cifs, origin = read_cifs(args.quick, args.mp)
    t = time.perf_counter()
    structures = [Structure.from_str(c, fmt="cif") for c in cifs]
    t_parse = (time.perf_counter() - t) / len(structures)
    sizes = np.array([len(s) for s in structures])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# graph-building benchmark  {platform.machine()}  {os.cpu_count()} CPUs  load {load:.1f}  "
          f"python {sys.version.split()[0]}  torch {torch.__version__} (1 thread)")
    print(f"{len(structures)} structures from {origin}: {sizes.mean():.1f} atoms on average, at most {sizes.max()}")
    cutoff = GraphSpec().cutoff
    pbc = np.ones(3, dtype=bool)

    def arrays(s):
        return np.ascontiguousarray(s.cart_coords), np.ascontiguousarray(s.lattice.matrix)

    fns = {
        "pymatgen Structure.get_neighbor_list (reference)": lambda s: neighbour_list(s, cutoff, "pymatgen"),
        "TRAITS default (pymatgen's compiled search on the arrays)": lambda s: neighbour_list(s, cutoff),
    }
    others = {}
    try:
        import vesin

        calculator = vesin.NeighborList(cutoff=cutoff, full_list=True)
        others[f"vesin {vesin.__version__}"] = lambda s: calculator.compute(*arrays(s), True, "ijSd")
    except ImportError:
        print("vesin: not installed (pip install vesin)")
    try:
        import matscipy
        from matscipy.neighbours import neighbour_list as matscipy_list

        others[f"matscipy {matscipy.__version__}"] = lambda s: matscipy_list(
            "ijSd", positions=np.ascontiguousarray(s.cart_coords), cell=np.ascontiguousarray(s.lattice.matrix),
            pbc=pbc, cutoff=cutoff)
    except ImportError:
        print("matscipy: not installed (pip install matscipy)")
    times = best_of({**fns, **others}, structures)
    reference = [neighbour_list(s, cutoff, "pymatgen") for s in structures]
    ref_name = next(iter(fns))
    print(f"\n## neighbour search, cutoff {cutoff} Å (ms per structure; x: reference time / this time)")
    for name, seconds in times.items():
        if name in others:
            equal = all(same_pairs(r, others[name](s)) for r, s in zip(reference, structures))
        else:
            equal = all(same_pairs(r, fns[name](s)) for r, s in zip(reference, structures))
        print(f"{name}: {1e3 * seconds:.3f} ms  {times[ref_name] / seconds:.2f}x  "
              f"pairs equal the reference's: {str(equal).lower()}")

    settings = [GraphSpec(), GraphSpec(pad_neighbors=True)]
    graph_times = best_of({
        "structure_graph, reference search": lambda s: structure_graph(s, settings[0], backend="pymatgen"),
        "structure_graph, default search": lambda s: structure_graph(s, settings[0]),
    }, structures)
    graphs = [structure_graph(s, settings[0]) for s in structures]
    to_data(graphs[0], 0.0, "x", settings[0])  # its first call imports torch_geometric (seconds)
    t_data = best_of({"to_data": lambda g: to_data(g, 0.0, "x", settings[0])}, graphs)["to_data"]
    print("\n## where a graph's time goes (ms per structure)")
    print(f"parsing the CIF (pymatgen Structure.from_str): {1e3 * t_parse:.3f} ms")
    for name, seconds in graph_times.items():
        print(f"{name}: {1e3 * seconds:.3f} ms")
    print(f"to_data (Gaussian expansion, atom features): {1e3 * t_data:.3f} ms")

    identical = True
    for s, st in itertools.product(structures, settings):
        got, ref = structure_graph(s, st), structure_graph(s, st, backend="pymatgen")
        identical &= (torch.equal(got.z, ref.z) and torch.equal(got.edge_index, ref.edge_index)
                      and torch.equal(got.dist, ref.dist)
                      and torch.equal(to_data(got, 0.0, "x", st).edge_attr, to_data(ref, 0.0, "x", st).edge_attr))
    print(f"\nspeed-up {times[ref_name] / times[next(iter(list(fns)[1:]))]:.2f}x  (neighbour search; target >= 10x)")
    print(f"identical edges: {str(identical).lower()}")


if __name__ == "__main__":
    main()
