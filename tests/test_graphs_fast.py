"""The batched graph path (issue 38): many CIFs read at once (``p1_cif_crystals``), many crystals' edges selected at
once (``crystal_graphs``), ``build_graphs`` chunk by chunk. Each must give, crystal by crystal, what pymatgen gives
(``tests/test_graphs_neighbours.py`` holds the reference graph and checks the one-structure paths), whatever else
shares the batch: CIFs left to pymatgen, crystals with an isolated atom or a singular lattice, chunk boundaries."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

import traits.data.graphs as graphs
from tests.test_graphs_neighbours import SETTINGS, assert_equals_reference, parse, reference_graph
from traits.data.graphs import (
    DegenerateStructure,
    GraphCache,
    GraphError,
    build_graphs,
    crystal_graph,
    crystal_graphs,
    graphs_of,
)
from traits.data.sources import (
    Crystal,
    Entry,
    _p1_fields,
    _p1_numbers,
    fast_crystals,
    p1_cif_crystal,
    p1_cif_crystals,
    read_mp,
    sample_path,
)
from traits.spec import GraphSpec


def _cif(lattice: Lattice, species, coords) -> str:
    return str(CifWriter(Structure(lattice, species, coords)))


def _sample_cifs(step: int) -> list[str]:
    return [e.payload for e in read_mp(sample_path(), "formation_energy_per_atom").entries[::step]]


def _bits(a) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def _mixed_cifs() -> list[str]:
    """Sample CIFs with, between them, CIFs the P1 reader must leave to pymatgen and odd but readable ones."""
    cifs = _sample_cifs(100)
    rock_salt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    plain = str(CifWriter(rock_salt))
    merged = plain.replace("  Cl  Cl4  1  0.50000000  0.50000000  0.50000000  1",
                           "  Cl  Cl4  1  0.00005000  0.00000000  0.00000000  1")
    others = [str(CifWriter(rock_salt, symprec=0.1)), merged, plain.replace("\n", "\r\n"),
              _cif(Lattice.cubic(5.0), ["Ar", "K"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
              plain.replace("_cell_length_a", "\n_cell_length_a"),  # a blank line: read line by line, not refused
              plain.replace("  1\n", "  1.0\n"),  # occupancy 1.0: line by line as well
              plain.rstrip("\n"),  # no final line end
              _cif(Lattice.hexagonal(3.2, 5.1), ["Zn", "O"], [[1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, 0.5]])]
    for i, other in enumerate(others):
        cifs.insert(3 * i + 1, other)
    return cifs


@pytest.mark.filterwarnings("ignore")
def test_reading_many_cifs_at_once_equals_reading_each_and_pymatgen():
    cifs = _mixed_cifs()
    together = p1_cif_crystals(cifs)
    assert len(together) == len(cifs)
    read = 0
    for cif, crystal in zip(cifs, together):
        alone = p1_cif_crystal(cif)
        assert (crystal is None) == (alone is None)
        if crystal is None:
            continue
        read += 1
        structure = parse(cif)
        for got in (crystal, alone):
            assert _bits(got.matrix) == _bits(structure.lattice.matrix)
            assert _bits(got.coords) == _bits(structure.cart_coords)
            assert got.z.tolist() == [site.specie.Z for site in structure]
    assert read == len(cifs) - 4  # symmetry operations, merged sites, CRLF, argon: None
    assert p1_cif_crystals([]) == []


def test_the_exact_layout_and_the_line_by_line_reading_agree():
    """The whole-text patterns for pymatgen's exact layout read the numbers the line-by-line reader reads."""
    for cif in _sample_cifs(50):
        values, rows = _p1_fields(cif)
        cell, symbols, fractions = _p1_numbers(cif)
        assert cell == [values[k] for k in ("_cell_length_a", "_cell_length_b", "_cell_length_c",
                                            "_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma")]
        assert symbols == [row[0] for row in rows]
        assert fractions == [x for row in rows for x in row[1:4]]


def test_without_the_whole_text_patterns_the_same_crystals_are_read(monkeypatch):
    """Where ``re`` lacks possessive quantifiers and atomic groups (Python 3.10) the layout patterns are None and
    every file is read line by line: the same crystals, bit for bit."""
    import traits.data.sources as sources

    cifs = _sample_cifs(30)
    fast = sources.p1_cif_crystals(cifs)
    monkeypatch.setattr(sources, "_p1_layout", lambda: None)
    slow = sources.p1_cif_crystals(cifs)
    assert sum(c is not None for c in fast) == len(cifs)
    for a, b in zip(fast, slow):
        assert np.array_equal(a.matrix, b.matrix) and np.array_equal(a.coords, b.coords)
        assert np.array_equal(a.z, b.z)


@pytest.mark.parametrize("settings", SETTINGS)
def test_many_crystals_at_once_each_equal_the_reference(settings):
    """Crystals of all sizes with, in the same batch, a crystal with an isolated atom (its GraphError in its place)
    and degenerate ones (DegenerateStructure in their place)."""
    cifs = _sample_cifs(40)
    cifs.insert(7, _cif(Lattice.cubic(5.0), ["Na"], [[0, 0, 0]]))  # its nearest images at 5 Å: isolated at 4 Å
    crystals = p1_cif_crystals(cifs)
    assert all(c is not None for c in crystals)
    flat = Crystal(np.zeros((3, 3)), np.zeros((1, 3)), np.array([11]))
    nan = Crystal(np.eye(3) * 4.0, np.full((1, 3), np.nan), np.array([11]))
    got = crystal_graphs(crystals[:20] + [flat] + crystals[20:] + [nan], settings)
    assert isinstance(got[20], DegenerateStructure) and isinstance(got[-1], DegenerateStructure)
    got = got[:20] + got[21:-1]
    assert isinstance(got[7], GraphError) == (settings.cutoff == 4.0)
    for cif, crystal, graph in zip(cifs, crystals, got):
        ref = reference_graph(parse(cif), settings)
        assert_equals_reference(f"{type(graph).__name__}: {graph}" if isinstance(graph, GraphError) else graph,
                                ref, settings)
        one = crystal_graphs([crystal], settings)[0]  # alone: the same graph
        assert type(one) is type(graph)
        if not isinstance(one, GraphError):
            assert torch.equal(one.edge_index, graph.edge_index) and torch.equal(one.dist, graph.dist)
    assert crystal_graphs([], settings) == []


def test_a_graph_owns_its_arrays():
    """A graph from a batch holds its own small tensors, not views of the batch's arrays (the cache saves them)."""
    crystals = [c for c in p1_cif_crystals(_sample_cifs(100)) if c is not None]
    graph = crystal_graphs(crystals, GraphSpec())[3]
    for tensor in (graph.z, graph.edge_index, graph.dist):
        assert tensor.is_contiguous()
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()


def test_distances_that_nearly_tie_are_sorted_exactly():
    """The sort by (centre, distance) against np.lexsort: exact ties kept in list order, distances a few ulps apart
    (which share the fast key) in value order, negative zero and a centre past 2^20 through the plain lexsort."""
    rng = np.random.default_rng(7)
    base = rng.uniform(0.5, 8.0, 40)
    for _ in range(50):
        dists = rng.choice(base, 400)
        nudge = rng.random(400) < 0.3
        dists[nudge] = np.nextafter(dists[nudge], np.inf if rng.random() < 0.5 else 0)  # 1 ulp: same fast key
        centres = np.sort(rng.integers(0, 30, 400))
        assert np.array_equal(graphs._by_centre_then_distance(centres, dists), np.lexsort((dists, centres)))
    dists = np.array([1.0, -0.0, 0.0, 2.0])
    centres = np.array([0, 0, 1, (1 << 20) + 1])
    assert np.array_equal(graphs._by_centre_then_distance(centres, dists), np.lexsort((dists, centres)))
    assert graphs._by_centre_then_distance(np.array([], dtype=np.int64), np.array([])).size == 0


@pytest.mark.filterwarnings("ignore")
def test_build_graphs_chunk_by_chunk(monkeypatch, tmp_path):
    """Chunks of three: every graph equals the reference and comes in the entries' order, skipped entries are
    counted, the progress is reported entry by entry, the cache serves the second build; an isolated atom raises
    at its own entry when isolated_atoms is "error"."""
    monkeypatch.setattr(graphs, "BUILD_CHUNK", 3)
    cifs = _mixed_cifs()[:10]
    lonely = _cif(Lattice.cubic(12.0), ["Na"], [[0, 0, 0]])
    entries = [Entry(f"e{i}", float(i), cif, "cif") for i, cif in enumerate(cifs[:5] + [lonely] + cifs[5:])]
    settings = GraphSpec(pad_neighbors=True)
    calls = []
    built = build_graphs(entries, settings, cache=GraphCache(tmp_path), progress=lambda i, n: calls.append(i))
    assert calls == list(range(1, len(entries) + 1))
    assert built.skipped["atom with no neighbour within 8.0 Å (raise data.graph.cutoff)"] == 1
    expected = []
    for entry in entries:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                structure = entry.structure()
        except ValueError:
            continue
        if entry.payload is lonely or not structure.is_ordered:
            continue
        expected.append((entry.id, reference_graph(structure, settings)))
    assert [g.material_id for g in built.graphs] == [i for i, _ in expected]
    assert sum(built.skipped.values()) == len(entries) - len(expected) and built.built == len(expected)
    for graph, (_, (z, edge_index, dist)) in zip(built.graphs, expected):
        assert torch.equal(graph.z, z) and torch.equal(graph.edge_index, edge_index)
        assert torch.equal(graph.edge_attr, graphs.expand_distances(dist, settings))
    again = build_graphs(entries, settings, cache=GraphCache(tmp_path))
    fast = sum(isinstance(g, graphs.GraphArrays) for g in graphs_of(entries, settings))  # built again, not cached
    assert 0 < fast < len(built.graphs)
    assert again.cache_hits == len(built.graphs) - fast and again.built == fast
    assert all(torch.equal(a.edge_index, b.edge_index) for a, b in zip(again.graphs, built.graphs))
    with pytest.raises(GraphError, match=r"atom 0 \(Na\) has no neighbour within 8\.0 Å"):
        build_graphs(entries, GraphSpec(isolated_atoms="error"), cache=GraphCache(enabled=False))


def test_graphs_of_leaves_other_entries_to_pymatgen():
    """graphs_of: None for an entry the fast path does not read (another format, a subclass that parses itself)."""
    cif = _sample_cifs(500)[0]

    class Own(Entry):
        def structure(self):
            return parse(self.payload)

    entries = [Entry("a", 0.0, cif, "cif"), Own("b", 0.0, cif, "cif"),
               Entry("c", 0.0, '{"lattice": {"matrix": [[3,0,0],[0,3,0],[0,0,3]]}, "sites": []}', "pymatgen-dict")]
    assert [c is not None for c in fast_crystals(entries)] == [True, False, False]
    got = graphs_of(entries, GraphSpec())
    assert got[1] is None and got[2] is None
    assert torch.equal(got[0].edge_index, crystal_graph(p1_cif_crystal(cif), GraphSpec()).edge_index)
    assert math.isfinite(float(got[0].dist.sum()))


def test_memory_budgets_split_the_work_not_the_results(monkeypatch):
    """With tiny budgets (a few crystals' neighbour pairs, a few site pairs per go) the same crystals and graphs."""
    import traits.data.sources as sources

    cifs = _mixed_cifs()
    crystals = p1_cif_crystals(cifs)
    read = [c for c in crystals if c is not None]
    settings = GraphSpec(pad_neighbors=True)
    whole = crystal_graphs(read + [Crystal(np.zeros((3, 3)), np.zeros((1, 3)), np.array([11]))], settings)
    monkeypatch.setattr(sources, "_MERGE_PAIR_BUDGET", 5)
    monkeypatch.setattr(graphs, "PAIR_BUDGET", 3000)
    again = p1_cif_crystals(cifs)
    assert [c is None for c in again] == [c is None for c in crystals]
    for a, b in zip(again, crystals):
        if a is not None:
            assert _bits(a.coords) == _bits(b.coords) and _bits(a.matrix) == _bits(b.matrix)
    split = crystal_graphs(read + [Crystal(np.zeros((3, 3)), np.zeros((1, 3)), np.array([11]))], settings)
    assert isinstance(split[-1], DegenerateStructure) and isinstance(whole[-1], DegenerateStructure)
    for a, b in zip(split[:-1], whole[:-1]):
        assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.dist, b.dist) and torch.equal(a.z, b.z)
    merged = str(CifWriter(Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]))).replace(
        "0.50000000  0.50000000  0.50000000", "0.00010000  0.00000000  0.99995000")
    assert p1_cif_crystals([cifs[0], merged, cifs[0]])[1] is None
