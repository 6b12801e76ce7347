"""Graph building from CIF text: TRAITS' path against the pymatgen reference on the same structures.

    python bench/bench_graphs.py [--quick] [--mp N] [--passes K]

Structures: the bundled Materials Project sample (2,000; every 10th with ``--quick``), or with ``--mp N`` every
k-th of the shared 36,738-structure file (``../shared/data/mp_mtcgcnn``) so that N are read. Every time is the best
of ``--passes`` passes (default 3) over all the structures, the methods taken in turn within each pass (A, B, A, B,
...) so that load on the machine hits each alike; read the ratios, not the absolute times. Times are per structure:
a method that works on the whole list at once (TRAITS' path) is timed on the list and divided by its length.

- The reference is the pipeline TRAITS had before issue 38, all pymatgen, one structure at a time:
  ``Structure.from_str(cif, fmt="cif")``, ``Structure.get_neighbor_list``, each centre's 12 nearest after a full
  ``np.lexsort``, then ``to_data``.
- TRAITS' path is what ``build_graphs`` does for CIFs (without its cache): ``graphs_of``, which reads the CIFs in
  pymatgen's P1 layout ``BUILD_CHUNK`` at a time (``traits.data.sources.p1_cif_crystals``), runs pymatgen's compiled
  search on each crystal's arrays and selects the edges of the whole chunk at once (``crystal_graphs``); pymatgen's
  parse and ``structure_graph`` for any other CIF; then ``to_data`` for each.
- The Gaussian distance expansion alone, as computed before (exp of every term) and now (the terms whose exact
  value is subnormal set to 0 without calling exp, whose slow path they take), on the same graphs.
- Printed: the neighbour search alone (reference, TRAITS, and vesin and matscipy where installed, with whether their
  pairs equal the reference's); each stage's time; ``speed-up <N>x end to end (parse + graph)``, the same with the
  features, ``speed-up <N>x neighbour search only``; and ``identical edges: true|false``: whether every graph of
  TRAITS' path equals the reference's bit for bit (z, edge_index, distances, x, edge_attr), for TRAITS' default graph
  and the original CGCNN's (12 neighbours, padded).
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


def best_of(fns: dict, items: list, repeats: int) -> dict[str, float]:
    """Seconds per item of each function of the whole list (best of ``repeats`` passes, the functions in turn)."""
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn(items)
            best[name] = min(best[name], (time.perf_counter() - t) / len(items))
    return best


def each(fn):
    """A function of a list that applies ``fn`` to each item in turn."""
    return lambda items: [fn(item) for item in items]


def same_pairs(ref, got) -> bool:
    """Whether two neighbour lists hold the same (centre, neighbour, image) pairs, distances within 1e-9 Å."""
    def keyed(centres, neighbours, images, dists):
        keys = np.column_stack([centres, neighbours, np.rint(images).astype(np.int64)])
        order = np.lexsort(keys.T[::-1])
        return keys[order], np.asarray(dists)[order]

    (k1, d1), (k2, d2) = keyed(*ref), keyed(*got)
    return k1.shape == k2.shape and np.array_equal(k1, k2) and bool(np.all(np.abs(d1 - d2) <= 1e-9))


def parse(cif: str):
    from pymatgen.core import Structure

    return Structure.from_str(cif, fmt="cif")


def reference_graph(structure, settings):
    """The pre-issue-38 graph, all pymatgen: get_neighbor_list, full lexsort, 12 nearest, CGCNN padding."""
    from traits.data.graphs import GraphArrays

    n = len(structure)
    centres, neighbours, _images, dists = structure.get_neighbor_list(r=settings.cutoff, numerical_tol=1e-8)
    order = np.lexsort((dists, centres))
    centres, neighbours, dists = centres[order], neighbours[order], dists[order]
    counts = np.bincount(centres, minlength=n)
    rank = np.arange(len(centres)) - np.concatenate([[0], np.cumsum(counts)[:-1]])[centres]
    keep = rank < settings.max_neighbors
    src, dst, d = neighbours[keep], centres[keep], dists[keep]
    if settings.pad_neighbors:
        pad = np.repeat(np.arange(n), np.maximum(settings.max_neighbors - counts, 0))
        src, dst = np.concatenate([src, np.zeros_like(pad)]), np.concatenate([dst, pad])
        d = np.concatenate([d, np.full(len(pad), settings.cutoff + 1.0)])
        order = np.argsort(dst, kind="stable")
        src, dst, d = src[order], dst[order], d[order]
    z = torch.tensor([site.specie.Z for site in structure], dtype=torch.long)
    return GraphArrays(z=z, edge_index=torch.from_numpy(np.stack([src, dst]).astype(np.int64)),
                       dist=torch.from_numpy(d.astype(np.float32)))


def traits_graphs(cifs: list[str], settings) -> list:
    """What build_graphs does for a list of CIFs (without the cache): a GraphArrays, or the error, for each."""
    from traits.data.graphs import GraphError, graphs_of, structure_graph
    from traits.data.sources import Entry

    built = graphs_of([Entry(str(i), 0.0, cif, "cif") for i, cif in enumerate(cifs)], settings)
    for i, graph in enumerate(built):
        if graph is None:  # not in the P1 layout: pymatgen parses it
            try:
                built[i] = structure_graph(parse(cifs[i]), settings)
            except GraphError as exc:
                built[i] = exc
    return built


def same_graph(got, ref, settings) -> bool:
    from traits.data.graphs import to_data

    if isinstance(got, Exception):
        return False
    a, b = to_data(got, 0.0, "x", settings), to_data(ref, 0.0, "x", settings)
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("z", "x", "edge_index", "edge_attr")) \
        and torch.equal(got.dist, ref.dist)


def search_section(structures, cutoff: float, passes: int) -> float:
    """Times the neighbour searches; prints them; returns the reference's time over TRAITS'."""
    from traits.data.graphs import neighbour_list

    pbc = np.ones(3, dtype=bool)

    def arrays(s):
        return np.ascontiguousarray(s.cart_coords), np.ascontiguousarray(s.lattice.matrix)

    fns = {
        "pymatgen Structure.get_neighbor_list (reference)": lambda s: neighbour_list(s, cutoff, "pymatgen"),
        "TRAITS (pymatgen's compiled search on the arrays)": lambda s: neighbour_list(s, cutoff),
    }
    try:
        import vesin

        calculator = vesin.NeighborList(cutoff=cutoff, full_list=True)
        fns[f"vesin {vesin.__version__}"] = lambda s: calculator.compute(*arrays(s), True, "ijSd")
    except ImportError:
        print("vesin: not installed (pip install vesin)")
    try:
        import matscipy
        from matscipy.neighbours import neighbour_list as matscipy_list

        fns[f"matscipy {matscipy.__version__}"] = lambda s: matscipy_list(
            "ijSd", positions=np.ascontiguousarray(s.cart_coords), cell=np.ascontiguousarray(s.lattice.matrix),
            pbc=pbc, cutoff=cutoff)
    except ImportError:
        print("matscipy: not installed (pip install matscipy)")
    times = best_of({name: each(fn) for name, fn in fns.items()}, structures, passes)
    reference = [neighbour_list(s, cutoff, "pymatgen") for s in structures]
    ref_name, traits_name = list(fns)[:2]
    print(f"\n## neighbour search only, cutoff {cutoff} Å (ms per structure; x: reference time / this time)")
    for name, seconds in times.items():
        equal = all(same_pairs(r, fns[name](s)) for r, s in zip(reference, structures))
        print(f"{name}: {1e3 * seconds:.3f} ms  {times[ref_name] / seconds:.2f}x  "
              f"pairs equal the reference's: {str(equal).lower()}")
    return times[ref_name] / times[traits_name]


def plain_expansion(dist: torch.Tensor, settings) -> torch.Tensor:
    """The Gaussian expansion as TRAITS computed it before: exp of every term, subnormal results included."""
    from traits.data.graphs import gaussian_centres

    width = settings.gaussian_width or settings.gaussian_step
    return torch.exp(-((dist.unsqueeze(-1) - gaussian_centres(settings).to(dist)) ** 2) / width**2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 structures instead of 2,000")
    parser.add_argument("--mp", type=int, default=None, metavar="N",
                        help="N structures from the shared Materials Project file instead of the sample")
    parser.add_argument("--passes", type=int, default=3, help="passes per method; the best is kept (default 3)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    from traits.data.graphs import crystal_graphs, expand_distances, to_data
    from traits.data.sources import p1_cif_crystals
    from traits.spec import GraphSpec

    cifs, origin = read_cifs(args.quick, args.mp)
    structures = [parse(c) for c in cifs]
    sizes = np.array([len(s) for s in structures])
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"# graph-building benchmark  {platform.machine()}  {os.cpu_count()} CPUs  "
          f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}  python {sys.version.split()[0]}  "
          f"torch {torch.__version__} (1 thread)  best of {args.passes} passes, methods interleaved")
    print(f"{len(cifs)} structures from {origin}: {sizes.mean():.1f} atoms on average, at most {sizes.max()}; "
          f"{sum(c is not None for c in p1_cif_crystals(cifs))} read by the P1 reader, the rest by pymatgen")
    settings = [GraphSpec(), GraphSpec(pad_neighbors=True)]
    st = settings[0]
    search = search_section(structures, st.cutoff, args.passes)

    crystals = [c for c in p1_cif_crystals(cifs) if c is not None]
    graphs = [g for g in traits_graphs(cifs, st) if not isinstance(g, Exception)]
    to_data(graphs[0], 0.0, "x", st)  # its first call imports torch_geometric (seconds)
    stages = best_of({
        "parse, reference (pymatgen Structure.from_str)": each(parse),
        "parse, TRAITS (P1 reader, the list at once)": lambda cs: [c or parse(cs[i])
                                                                  for i, c in enumerate(p1_cif_crystals(cs))],
    }, cifs, args.passes)
    stages.update(best_of({
        "graph, reference (get_neighbor_list, full sort)": each(lambda s: reference_graph(s, st)),
    }, structures, args.passes))
    stages.update(best_of({"graph, TRAITS (crystal_graphs, the list at once)": lambda cs: crystal_graphs(cs, st)},
                          crystals, args.passes))
    stages.update(best_of({"features (to_data: Gaussian expansion, atom features)":
                           each(lambda g: to_data(g, 0.0, "x", st))}, graphs, args.passes))
    expansion = best_of({"Gaussian expansion, every term (the formula as written, before)":
                         each(lambda g: plain_expansion(g.dist, st)),
                         "Gaussian expansion, TRAITS (normal terms; the rest 0)": each(lambda g: expand_distances(
                             g.dist, st))}, graphs, args.passes)
    stages.update(expansion)
    print("\n## stages (ms per structure)")
    for name, seconds in stages.items():
        print(f"{name}: {1e3 * seconds:.3f} ms")

    total = best_of({
        "reference: parse + graph": each(lambda c: reference_graph(parse(c), st)),
        "TRAITS: parse + graph": lambda cs: traits_graphs(cs, st),
        "reference: parse + graph + features": each(lambda c: to_data(reference_graph(parse(c), st), 0.0, "x", st)),
        "TRAITS: parse + graph + features": lambda cs: [to_data(g, 0.0, "x", st) for g in traits_graphs(cs, st)
                                                       if not isinstance(g, Exception)],
    }, cifs, args.passes)
    print("\n## end to end from the CIF text (ms per structure)")
    for name, seconds in total.items():
        print(f"{name}: {1e3 * seconds:.3f} ms")

    identical = all(same_graph(got, reference_graph(structure, s), s)
                    for s in settings for got, structure in zip(traits_graphs(cifs, s), structures))
    values = list(total.values())
    print(f"\nspeed-up {values[0] / values[1]:.2f}x end to end (parse + graph; target >= 10x)")
    print(f"speed-up {values[2] / values[3]:.2f}x end to end with the features (parse + graph + to_data)")
    print(f"speed-up {search:.2f}x neighbour search only")
    before, now = expansion.values()
    print(f"speed-up {before / now:.2f}x Gaussian distance expansion (subnormal terms set to 0 without exp)")
    print(f"identical edges: {str(identical).lower()}")


if __name__ == "__main__":
    main()
