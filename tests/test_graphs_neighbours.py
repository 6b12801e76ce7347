"""Graph building's neighbour search (issue 38): the default backend (pymatgen's compiled search called on the
arrays) gives exactly the graphs of the reference path (``Structure.get_neighbor_list``): the same edges in the
same order, the same distances bit for bit, the same padding and 12-neighbour selection at ties."""

from __future__ import annotations

import gzip
import itertools
import json
import math
import warnings

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from tests.conftest import MP_FILE, needs_shared
from traits.data.graphs import GraphError, neighbour_list, structure_graph, to_data
from traits.data.sources import read_mp, sample_path
from traits.spec import GraphSpec

#: TRAITS' default graph, the original CGCNN's (12 neighbours, padded), a short cutoff that leaves atoms with
#: fewer than 12 neighbours, and one under 1 Å (pymatgen's search takes another path below 1 Å).
SETTINGS = [GraphSpec(), GraphSpec(pad_neighbors=True), GraphSpec(cutoff=4.0, max_neighbors=8),
            GraphSpec(cutoff=4.0, pad_neighbors=True)]


def assert_same_graph(structure, settings) -> None:
    """Both backends give equal raw neighbour lists and equal graph tensors (or the same GraphError)."""
    raw = [neighbour_list(structure, settings.cutoff, backend) for backend in ("kernel", "pymatgen")]
    for got, ref in zip(*raw):
        assert got.dtype == ref.dtype and np.array_equal(got, ref)
    graphs = []
    for backend in ("kernel", "pymatgen"):
        try:
            graphs.append(structure_graph(structure, settings, backend=backend))
        except GraphError as exc:
            graphs.append(f"{type(exc).__name__}: {exc}")
    got, ref = graphs
    if isinstance(ref, str):
        assert got == ref
        return
    assert torch.equal(got.z, ref.z)
    assert torch.equal(got.edge_index, ref.edge_index)
    assert torch.equal(got.dist, ref.dist)
    assert torch.equal(to_data(got, 0.0, "x", settings).edge_attr, to_data(ref, 0.0, "x", settings).edge_attr)


def test_sample_graphs_equal_the_reference():
    entries = read_mp(sample_path(), "formation_energy_per_atom").entries[::20]
    assert len(entries) == 100
    for entry, settings in itertools.product(entries, SETTINGS):
        assert_same_graph(entry.structure(), settings)


def test_cutoff_boundary_is_inclusive_like_pymatgen():
    """Simple cubic, a = 4 Å, cutoff 4 Å: the six neighbours at exactly the cutoff are edges (d² < r² + 1e-8)."""
    s = Structure(Lattice.cubic(4.0), ["Po"], [[0, 0, 0]])
    centres, neighbours, images, dists = neighbour_list(s, 4.0)
    assert len(dists) == 6 and np.all(dists == 4.0) and np.all(neighbours == 0)
    assert sorted(map(tuple, images.astype(int))) == sorted(
        t for t in itertools.product((-1, 0, 1), repeat=3) if sum(map(abs, t)) == 1)
    assert len(neighbour_list(s, 4.0 - 1e-6)[0]) == 0
    assert_same_graph(s, GraphSpec(cutoff=4.0, pad_neighbors=True))


def test_an_atom_sees_its_own_images_and_ties_are_cut_in_the_reference_order():
    """One atom per cell: every neighbour is an image of itself; with 12 neighbours kept, 6 of the 12 second
    neighbours at one distance (a tie) are kept, the same ones and in the same order as the reference."""
    s = Structure(Lattice.cubic(3.0), ["Po"], [[0.1, 0.2, 0.3]])
    g = structure_graph(s, GraphSpec(cutoff=5.0))
    assert g.edge_index.shape == (2, 12) and bool((g.edge_index == 0).all())
    assert torch.allclose(g.dist[:6], torch.full((6,), 3.0))
    assert torch.allclose(g.dist[6:], torch.full((6,), 3.0 * math.sqrt(2)))
    for settings in (GraphSpec(cutoff=5.0), GraphSpec(cutoff=5.0, max_neighbors=8),
                     GraphSpec(cutoff=8.0, pad_neighbors=True)):
        assert_same_graph(s, settings)
    bcc = Structure(Lattice.cubic(3.3), ["W", "W"], [[0, 0, 0], [0.5, 0.5, 0.5]])  # 8 + 6 neighbours, cut at 12
    for settings in SETTINGS:
        assert_same_graph(bcc, settings)


def test_isolated_atom_message_is_unchanged():
    s = Structure(Lattice.cubic(10.0), ["Na", "Cl"], [[0, 0, 0], [0.2, 0, 0]])
    with pytest.raises(GraphError, match=r"atom 0 \(Na\) has no neighbour within 1\.5 Å; increase data\.graph\.cutoff"):
        structure_graph(Structure(Lattice.cubic(10.0), ["Na"], [[0, 0, 0]]), GraphSpec(cutoff=1.5))
    assert_same_graph(s, GraphSpec(cutoff=1.5))
    assert_same_graph(s, GraphSpec(cutoff=0.5))  # below pymatgen's 1 Å search radius: every atom isolated


def test_unknown_backend_is_refused():
    s = Structure(Lattice.cubic(3.0), ["Po"], [[0, 0, 0]])
    with pytest.raises(ValueError, match="unknown neighbour-search backend 'vesin'"):
        neighbour_list(s, 5.0, backend="vesin")
    with pytest.raises(ValueError, match="unknown neighbour-search backend 'vesin'"):
        structure_graph(s, GraphSpec(), backend="vesin")


def _crystal_system(structure) -> str:
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    return SpacegroupAnalyzer(structure, symprec=0.01).get_crystal_system()


@needs_shared(MP_FILE)
def test_mp_graphs_equal_the_reference_in_every_crystal_system():
    """612 Materials Project structures (every 60th record of the shared file), all seven crystal systems
    (about 20 s of CPU)."""
    structures = []
    with gzip.open(MP_FILE, "rt") as fh, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for line in itertools.islice(fh, 0, None, 60):
            structures.append(Structure.from_str(json.loads(line)["cif"], fmt="cif"))
    assert len(structures) >= 500
    systems = {_crystal_system(s) for s in structures}
    assert systems == {"triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic"}
    for structure, settings in itertools.product(structures, SETTINGS[:2]):
        assert_same_graph(structure, settings)
