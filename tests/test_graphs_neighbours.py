"""Graph building (issue 38) against pymatgen as the reference.

The reference graph (:func:`reference_graph`) is built here from pymatgen alone: ``Structure.from_str`` parses the
CIF, ``Structure.get_neighbor_list`` finds the pairs, and each centre keeps its ``max_neighbors`` nearest after a
full ``np.lexsort`` by (centre, distance), padded as the original CGCNN pads: the algorithm TRAITS used before its
faster paths. TRAITS' paths (pymatgen's compiled search on the arrays, the candidate filter before the sort, and the
CIF reader for pymatgen's P1 layout, :func:`traits.data.sources.p1_cif_crystal`) must give the same edges in the same
order (ties at the 12th neighbour included), the same distances bit for bit, the same padding and node features."""

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
from pymatgen.io.cif import CifWriter

from tests.conftest import MP_FILE, needs_shared
from traits.data.graphs import (
    DISORDERED,
    GraphCache,
    GraphError,
    atom_feature_table,
    build_graphs,
    crystal_graph,
    expand_distances,
    neighbour_list,
    structure_graph,
    to_data,
)
from traits.data.sources import Entry, p1_cif_crystal, read_mp, sample_path
from traits.spec import GraphSpec

#: TRAITS' default graph, the original CGCNN's (12 neighbours, padded), a short cutoff that leaves atoms with
#: fewer than 12 neighbours, and one under 1 Å (pymatgen's search takes another path below 1 Å).
SETTINGS = [GraphSpec(), GraphSpec(pad_neighbors=True), GraphSpec(cutoff=4.0, max_neighbors=8),
            GraphSpec(cutoff=4.0, pad_neighbors=True)]


def parse(cif: str) -> Structure:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_str(cif, fmt="cif")


def reference_graph(structure: Structure, settings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | str:
    """(z, edge_index, dist) from pymatgen's ``get_neighbor_list`` and a full sort, or "isolated atom <i>"."""
    n = len(structure)
    centres, neighbours, _images, dists = structure.get_neighbor_list(r=settings.cutoff, numerical_tol=1e-8)
    order = np.lexsort((dists, centres))
    centres, neighbours, dists = centres[order], neighbours[order], dists[order]
    counts = np.bincount(centres, minlength=n)
    if (counts == 0).any():
        return f"isolated atom {int(np.flatnonzero(counts == 0)[0])}"
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
    return z, torch.from_numpy(np.stack([src, dst]).astype(np.int64)), torch.from_numpy(d.astype(np.float32))


def assert_equals_reference(got, ref, settings) -> None:
    """A GraphArrays (or the GraphError message it raised) equals the reference graph."""
    if isinstance(ref, str):
        assert isinstance(got, str) and f"atom {ref.split()[-1]} (" in got, (got, ref)
        return
    assert not isinstance(got, str), got
    z, edge_index, dist = ref
    assert torch.equal(got.z, z)
    assert torch.equal(got.edge_index, edge_index)
    assert torch.equal(got.dist, dist)
    assert torch.equal(to_data(got, 0.0, "x", settings).edge_attr, expand_distances(dist, settings))


def graph_or_error(build, *args):
    try:
        return build(*args)
    except GraphError as exc:
        return f"{type(exc).__name__}: {exc}"


def assert_same_graph(structure, settings) -> None:
    """Both neighbour-search backends give pymatgen's raw neighbour list, and graphs equal to the reference."""
    raw = [neighbour_list(structure, settings.cutoff, backend) for backend in ("kernel", "pymatgen")]
    for got, ref in zip(*raw):
        assert got.dtype == ref.dtype and np.array_equal(got, ref)
    ref = reference_graph(structure, settings)
    for backend in ("kernel", "pymatgen"):
        assert_equals_reference(graph_or_error(structure_graph, structure, settings, backend), ref, settings)


def assert_fast_path_equals_pymatgen(cif: str, settings_list=SETTINGS[:2]) -> bool:
    """The P1 reader gives pymatgen's arrays bit for bit, or None; with None the graph comes from pymatgen's parse.
    Either way the graph built from the CIF equals the reference. Returns whether the fast path applied."""
    crystal = p1_cif_crystal(cif)
    try:
        structure = parse(cif)
    except Exception:  # noqa: BLE001 - pymatgen refuses it: so must the fast path
        assert crystal is None
        return False
    if crystal is None:
        return False
    assert structure.is_ordered
    assert np.array_equal(crystal.matrix, structure.lattice.matrix)
    assert np.array_equal(crystal.coords, structure.cart_coords)
    assert crystal.z.tolist() == [site.specie.Z for site in structure]
    assert crystal.pbc == tuple(structure.pbc)
    for settings in settings_list:
        assert_equals_reference(graph_or_error(crystal_graph, crystal, settings),
                                reference_graph(structure, settings), settings)
    return True


def test_sample_graphs_equal_the_reference():
    entries = read_mp(sample_path(), "formation_energy_per_atom").entries[::20]
    assert len(entries) == 100
    for entry, settings in itertools.product(entries, SETTINGS):
        assert_same_graph(entry.structure(), settings)
    assert sum(assert_fast_path_equals_pymatgen(e.payload, SETTINGS) for e in entries) >= 95


def test_build_graphs_equals_the_reference_end_to_end():
    """``build_graphs`` (P1 reader, compiled search, candidate filter, features) against pymatgen from the text."""
    entries = read_mp(sample_path(), "formation_energy_per_atom").entries[::40]
    settings = GraphSpec(pad_neighbors=True)
    built = build_graphs(entries, settings, cache=GraphCache(enabled=False))
    assert built.built == len(entries) == len(built.graphs) and not built.skipped
    for entry, graph in zip(entries, built.graphs):
        z, edge_index, dist = reference_graph(parse(entry.payload), settings)
        assert graph.material_id == entry.id
        assert torch.equal(graph.z, z) and torch.equal(graph.edge_index, edge_index)
        assert torch.equal(graph.x, atom_feature_table()[z])
        assert torch.equal(graph.edge_attr, expand_distances(dist, settings))


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
        assert_fast_path_equals_pymatgen(CifWriter(s).__str__(), [settings])
    bcc = Structure(Lattice.cubic(3.3), ["W", "W"], [[0, 0, 0], [0.5, 0.5, 0.5]])  # 8 + 6 neighbours, cut at 12
    for settings in SETTINGS:
        assert_same_graph(bcc, settings)
    assert assert_fast_path_equals_pymatgen(str(CifWriter(bcc)), SETTINGS)


def test_isolated_atom_message_is_unchanged():
    s = Structure(Lattice.cubic(10.0), ["Na", "Cl"], [[0, 0, 0], [0.2, 0, 0]])
    with pytest.raises(GraphError, match=r"atom 0 \(Na\) has no neighbour within 1\.5 Å; increase data\.graph\.cutoff"):
        structure_graph(Structure(Lattice.cubic(10.0), ["Na"], [[0, 0, 0]]), GraphSpec(cutoff=1.5))
    with pytest.raises(GraphError, match=r"atom 0 \(Na\) has no neighbour within 1\.5 Å; increase data\.graph\.cutoff"):
        crystal_graph(p1_cif_crystal(str(CifWriter(Structure(Lattice.cubic(10.0), ["Na"], [[0, 0, 0]])))),
                      GraphSpec(cutoff=1.5))
    assert_same_graph(s, GraphSpec(cutoff=1.5))
    assert_same_graph(s, GraphSpec(cutoff=0.5))  # below pymatgen's 1 Å search radius: every atom isolated


def test_unknown_backend_is_refused():
    s = Structure(Lattice.cubic(3.0), ["Po"], [[0, 0, 0]])
    with pytest.raises(ValueError, match="unknown neighbour-search backend 'vesin'"):
        neighbour_list(s, 5.0, backend="vesin")
    with pytest.raises(ValueError, match="unknown neighbour-search backend 'vesin'"):
        structure_graph(s, GraphSpec(), backend="vesin")


def _p1_cif(lattice: Lattice, species, coords) -> str:
    return str(CifWriter(Structure(lattice, species, coords)))


@pytest.mark.filterwarnings("ignore")
def test_the_p1_reader_leaves_every_other_cif_to_pymatgen():
    """Symmetry operations, oxidation states, partial occupancy, sites pymatgen merges, an element without
    electronegativity, CRLF line ends, several data blocks: None (pymatgen parses them). Coordinates outside [0, 1)
    and near 1/3, 2/3 are read as pymatgen reads them."""
    rock_salt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    plain = str(CifWriter(rock_salt))
    assert assert_fast_path_equals_pymatgen(plain)
    assert p1_cif_crystal(str(CifWriter(rock_salt, symprec=0.1))) is None  # Fm-3m with its 192 operations
    oxidised = rock_salt.copy()
    oxidised.add_oxidation_state_by_element({"Na": 1, "Cl": -1})
    assert p1_cif_crystal(str(CifWriter(oxidised))) is None
    disordered = Structure(Lattice.cubic(4.0), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])
    assert p1_cif_crystal(str(CifWriter(disordered))) is None
    built = build_graphs([Entry("d", 0.0, str(CifWriter(disordered)), "cif")], GraphSpec(),
                         cache=GraphCache(enabled=False))
    assert built.skipped == {DISORDERED: 1} and not built.graphs
    merged = plain.replace("  Cl  Cl4  1  0.50000000  0.50000000  0.50000000  1",
                           "  Cl  Cl4  1  0.00005000  0.00000000  0.00000000  1")
    assert merged != plain and p1_cif_crystal(merged) is None  # pymatgen: one site, occupancy 2, refused
    assert p1_cif_crystal(_p1_cif(Lattice.cubic(5.0), ["Ar", "K"], [[0, 0, 0], [0.5, 0.5, 0.5]])) is None
    assert p1_cif_crystal(plain.replace("\n", "\r\n")) is None
    assert p1_cif_crystal(plain + plain.replace("data_", "data_second")) is None
    lines = plain.splitlines()
    for edited in (lines[2:3] + lines[1:2] + lines[3:],  # a key before the block: pymatgen drops it
                   [lines[1] + "powder_pattern"] + lines[2:],  # pymatgen skips such a block
                   [line.replace("Cl4", "_x") for line in lines], [line.replace("Cl4", "loop_1") for line in lines],
                   [line.replace("'Na4 Cl4'", "'Na4 #Cl4'") for line in lines]):
        assert p1_cif_crystal("\n".join(edited) + "\n") is None
    odd = _p1_cif(Lattice.hexagonal(3.2, 5.1), ["Zn", "O", "O"], [[1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, 0.5], [0, 0, 0]])
    rows = odd.splitlines()[-3:]
    for row, edited in zip(rows, ("  Zn  Zn0  1  0.33334  -0.33333  -0.0000000001  1",
                                  "  O  O1  1  0.66666667  1.33333  1.5  1.0",
                                  "  O  O2  1  2.25  0.0  -7.000001  1")):
        odd = odd.replace(row, edited)
    assert odd.splitlines()[-1] == "  O  O2  1  2.25  0.0  -7.000001  1"
    assert assert_fast_path_equals_pymatgen(odd)
    flat = _p1_cif(Lattice.orthorhombic(3.0, 3.0, 3.0), ["Cu"], [[0, 0, 0]]).replace(
        "_cell_length_c   3.00000000", "_cell_length_c   0.00500000")
    assert p1_cif_crystal(flat) is None


def test_an_edited_cif_is_read_as_pymatgen_reads_it_or_left_to_it():
    """Every line of a pymatgen CIF deleted, doubled, upper-cased, commented or given an extra token: the P1 reader
    gives pymatgen's structure bit for bit or None, never another structure."""
    cif = _p1_cif(Lattice.from_parameters(3.1, 4.2, 5.3, 80, 95, 110), ["Li", "Fe", "O", "O"],
                  [[0, 0, 0], [0.5, 0.25, 0.1], [0.2, 0.7, 0.4], [0.9, 0.1, 0.6]])
    lines = cif.splitlines()
    applied = 0
    for i, line in enumerate(lines):
        for edit in ([], [line, line], [line.upper()], [line + " # note"], [line + " 7"], [" " + line],
                     [line.replace("  ", " '", 1)]):
            applied += assert_fast_path_equals_pymatgen("\n".join(lines[:i] + edit + lines[i + 1:]) + "\n")
    assert applied > 0


def _crystal_system(structure) -> str:
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    return SpacegroupAnalyzer(structure, symprec=0.01).get_crystal_system()


@needs_shared(MP_FILE)
def test_mp_graphs_equal_the_reference_in_every_crystal_system():
    """612 Materials Project structures (every 60th record of the shared file), all seven crystal systems: the P1
    reader applies to every one and gives pymatgen's arrays, and every path gives the reference graph (about 40 s
    of CPU)."""
    with gzip.open(MP_FILE, "rt") as fh:
        cifs = [json.loads(line)["cif"] for line in itertools.islice(fh, 0, None, 60)]
    structures = [parse(cif) for cif in cifs]
    assert len(structures) >= 500
    systems = {_crystal_system(s) for s in structures}
    assert systems == {"triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic"}
    for structure, settings in itertools.product(structures, SETTINGS[:2]):
        assert_same_graph(structure, settings)
    assert all(assert_fast_path_equals_pymatgen(cif) for cif in cifs)
