"""Crystal structures as graphs, and the on-disk graph cache.

A crystal becomes a graph whose nodes are the atoms of the unit cell and whose directed edges join
each atom to its ``max_neighbors`` nearest periodic neighbours within ``cutoff`` (pymatgen's compiled
neighbour search, :func:`neighbour_list`; :func:`crystal_graph` for a crystal read straight from a CIF's numbers,
:func:`crystal_graphs` for many at once, :func:`structure_graph` for a pymatgen ``Structure``). Edge features are
the distances expanded in Gaussians (as in CGCNN); node features are the 92-long per-element vectors of CGCNN's
``atom_init.json`` (MIT, see ``traits/data/NOTICE.md``).

Edges point from neighbour to centre: ``edge_index[0]`` is the neighbour j, ``edge_index[1]`` the
centre i, so messages flow into the centre atom (torch_geometric's ``source_to_target``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from traits.data.sources import Crystal, Entry, fast_crystals
from traits.errors import DataError, GraphError

CACHE_ENV = "TRAITS_CACHE"
GRAPH_FORMAT_VERSION = 1


@lru_cache(maxsize=1)
def atom_feature_table() -> torch.Tensor:
    """(101, 92) float table; row Z holds the features of atomic number Z (row 0 and unknowns are NaN)."""
    raw = json.loads((resources.files("traits.data") / "atom_init.json").read_text())
    table = torch.full((101, 92), float("nan"))
    for key, vec in raw.items():
        table[int(key)] = torch.tensor(vec, dtype=torch.float32)
    return table


def gaussian_centres(settings) -> torch.Tensor:
    n = int(round(settings.cutoff / settings.gaussian_step)) + 1
    return torch.linspace(0.0, settings.gaussian_step * (n - 1), n)


def expand_distances(dist: torch.Tensor, settings) -> torch.Tensor:
    """Gaussian basis exp(-(d - μ_k)² / w²) on centres 0, step, ..., cutoff.

    A term whose exponent lies below log(smallest normal number) of the dtype (−87.3 in float32) is 0: its exact
    value is subnormal or underflows, and torch's vectorised exp takes a slow path for such arguments (20-70x
    per element on this CPU), which made the expansion most of building a graph. Every other term is the plain
    exp of the same exponent, bit for bit; a subnormal feature changes no sum it enters beside normal terms."""
    width = settings.gaussian_width or settings.gaussian_step
    centres = gaussian_centres(settings).to(dist)
    exponent = -((dist.unsqueeze(-1) - centres) ** 2) / width**2
    under = exponent < math.log(torch.finfo(exponent.dtype).tiny)
    return torch.exp(exponent.masked_fill(under, 0.0)).masked_fill_(under, 0.0)


def settings_key(settings) -> str:
    return json.dumps({"v": GRAPH_FORMAT_VERSION, **settings.model_dump()}, sort_keys=True)


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV)
    return Path(root) if root else Path.home() / ".cache" / "traits" / "graphs"


@dataclass
class GraphArrays:
    """The geometry of one crystal graph: atomic numbers, edges and edge lengths."""

    z: torch.Tensor  # (n_atoms,) long
    edge_index: torch.Tensor  # (2, n_edges) long, [neighbour, centre]
    dist: torch.Tensor  # (n_edges,) float32, Å

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {"z": self.z, "edge_index": self.edge_index, "dist": self.dist}


class DegenerateStructure(GraphError):
    """A structure with no usable geometry: a singular or non-finite lattice, non-finite coordinates."""


#: Smallest cell volume (Å³) taken for a real crystal; below it the lattice is singular.
MIN_VOLUME = 1e-6


#: The skip reason counted for a structure with a partly occupied site (graph building, screening).
DISORDERED = "disordered structure (partial occupancy)"


class DisorderedStructure(GraphError):
    """A structure with a partly occupied site: a crystal graph needs one element on every site."""


def disorder_message(structure) -> str | None:
    """Why ``structure`` cannot become a graph because of disorder (its first partly occupied site, with its
    species and occupancies), or None when every site holds one element with occupancy 1."""
    if structure.is_ordered:
        return None
    index, site = next((i, site) for i, site in enumerate(structure) if not site.is_ordered)
    occupancy = " ".join(f"{species}{amount:g}" for species, amount in site.species.items()) or "empty"
    return (f"site {index} is disordered (partial occupancy: {occupancy}); "
            "TRAITS models need ordered structures")


def check_ordered(structure, error: type[Exception] = DisorderedStructure) -> None:
    """Raise ``error`` (DisorderedStructure unless given) naming the first partly occupied site."""
    message = disorder_message(structure)
    if message is not None:
        raise error(message)


def _geometry(structure) -> tuple[np.ndarray, np.ndarray]:
    """(lattice matrix, Cartesian coordinates) as float arrays; raises DegenerateStructure for a singular
    lattice (zero volume), non-finite numbers or no atoms."""
    try:
        matrix = np.asarray(structure.lattice.matrix, dtype=float)
        coords = np.asarray(structure.cart_coords, dtype=float)
        volume = abs(float(np.linalg.det(matrix)))
    except (ValueError, TypeError, ArithmeticError, np.linalg.LinAlgError) as exc:
        raise DegenerateStructure(f"unusable lattice ({type(exc).__name__}: {exc})") from None
    _check_cell(matrix, coords, volume, len(structure))
    return matrix, coords


def _check_cell(matrix: np.ndarray, coords: np.ndarray, volume: float, n_atoms: int) -> None:
    """DegenerateStructure for non-finite numbers, a singular lattice (``volume``, Å³) or no atoms."""
    if not (np.isfinite(matrix).all() and np.isfinite(coords).all()):
        raise DegenerateStructure("the lattice or the atomic coordinates hold non-finite numbers")
    if not volume > MIN_VOLUME:
        raise DegenerateStructure(f"singular lattice (cell volume {volume:.3g} Å³)")
    if n_atoms == 0:
        raise DegenerateStructure("the structure has no atoms")


def check_geometry(structure) -> None:
    """Raise DegenerateStructure for a singular lattice (zero volume) or non-finite numbers."""
    _geometry(structure)


#: Neighbour-search backends. "kernel" (the default) calls pymatgen's compiled search
#: (``pymatgen.optimization.neighbors.find_points_in_spheres``) on the coordinate arrays directly;
#: "pymatgen" goes through ``Structure.get_neighbor_list``, which wraps the same search in per-site Python and
#: is kept as the reference the tests compare against. Both give the same pairs, images, distances and order.
NEIGHBOUR_BACKENDS = ("kernel", "pymatgen")

#: pymatgen's numerical tolerance (Å): a pair is kept when d² < cutoff² + tol; an atom's own image closer
#: than tol is itself and dropped.
NEIGHBOUR_TOL = 1e-8


def _check_backend(backend: str) -> None:
    if backend not in NEIGHBOUR_BACKENDS:
        raise ValueError(f"unknown neighbour-search backend {backend!r}; one of {', '.join(NEIGHBOUR_BACKENDS)}")


#: pymatgen's search takes the periodicity as an int64 array: the usual one, made once.
_PBC_ARRAYS = {(True, True, True): np.ones(3, dtype=np.int64)}


def _raw_search(matrix: np.ndarray, coords: np.ndarray, pbc, cutoff: float):
    """pymatgen's compiled search on the arrays: (centres, neighbours, images, distances), each atom's pair with
    itself included (d <= 1e-8)."""
    from pymatgen.optimization.neighbors import find_points_in_spheres

    coords = np.ascontiguousarray(coords, dtype=float)
    pbc = tuple(bool(p) for p in pbc)
    pbc_array = _PBC_ARRAYS.get(pbc)
    return find_points_in_spheres(coords, coords, r=float(cutoff),
                                  pbc=pbc_array if pbc_array is not None else np.array(pbc, dtype=np.int64),
                                  lattice=np.ascontiguousarray(matrix, dtype=float), tol=NEIGHBOUR_TOL)


def _kernel_neighbours(matrix: np.ndarray, coords: np.ndarray, pbc, cutoff: float):
    """pymatgen's compiled search on the arrays, the atom itself dropped: what ``get_neighbor_list`` returns."""
    centres, neighbours, images, dists = _raw_search(matrix, coords, pbc, cutoff)
    keep = ~((centres == neighbours) & (dists <= NEIGHBOUR_TOL))
    return centres[keep], neighbours[keep], images[keep], dists[keep]


@lru_cache(maxsize=1)
def fast_path_available() -> bool:
    """Whether pymatgen's compiled neighbour search is importable (always, for pymatgen's wheels)."""
    try:
        from pymatgen.optimization.neighbors import find_points_in_spheres  # noqa: F401
    except ImportError:  # pymatgen built without its extension: its pure-Python search is the only one
        return False
    return True


def neighbour_list(structure, cutoff: float, backend: str = "kernel",
                   geometry: tuple[np.ndarray, np.ndarray] | None = None):
    """(centres, neighbours, images, distances) of every periodic pair within ``cutoff``, exactly as
    ``Structure.get_neighbor_list(r=cutoff)`` gives them (same order; a pair is kept when d² < cutoff² + 1e-8,
    an atom's own periodic images are included, the atom itself is not). ``geometry`` is
    ``(lattice matrix, Cartesian coordinates)`` when the caller already has them."""
    _check_backend(backend)
    if backend == "pymatgen" or not fast_path_available():
        return structure.get_neighbor_list(r=cutoff, numerical_tol=NEIGHBOUR_TOL)
    matrix, coords = geometry if geometry is not None else _geometry(structure)
    return _kernel_neighbours(matrix, coords, structure.pbc, cutoff)


def structure_graph(structure, settings, backend: str = "kernel") -> GraphArrays:
    """Build the neighbour graph of a pymatgen ``Structure`` (raises DisorderedStructure on a partly occupied
    site, DegenerateStructure on a singular lattice or non-finite numbers, GraphError on isolated atoms).
    ``backend`` is the neighbour search (:data:`NEIGHBOUR_BACKENDS`); every backend gives the same graph."""
    _check_backend(backend)
    check_ordered(structure)
    geometry = _geometry(structure)
    z = np.array([site.specie.Z for site in structure], dtype=np.int64)
    try:
        found = neighbour_list(structure, settings.cutoff, backend, geometry)
    except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
        raise DegenerateStructure(f"the neighbour search failed ({type(exc).__name__}: {exc})") from None
    return _raise_or_return(_graphs([z], [found], settings, [lambda i: structure[i].specie])[0])


def _raise_or_return(result: GraphArrays | GraphError) -> GraphArrays:
    if isinstance(result, GraphError):
        raise result
    return result


def crystal_graph(crystal: Crystal, settings) -> GraphArrays:
    """The graph of a :class:`traits.data.sources.Crystal` (arrays read straight from a file), equal to
    ``structure_graph`` of the same structure; the same errors for degenerate geometry and isolated atoms. Needs
    pymatgen's compiled search (:func:`fast_path_available`)."""
    return _raise_or_return(crystal_graphs([crystal], settings)[0])


def _crystal_search(crystal: Crystal, cutoff: float):
    """(atomic numbers, pymatgen's raw neighbour list: self pairs included) of one crystal; DegenerateStructure for
    a singular lattice, non-finite numbers, no atoms, or a search that fails."""
    matrix = np.ascontiguousarray(crystal.matrix, dtype=float)
    coords = np.ascontiguousarray(crystal.coords, dtype=float)
    if matrix.shape != (3, 3) or coords.ndim != 2 or coords.shape[1:] != (3,):
        raise DegenerateStructure(f"a lattice of shape {matrix.shape} and coordinates of shape {coords.shape}")
    (a1, a2, a3), (b1, b2, b3), (c1, c2, c3) = matrix.tolist()  # the triple product: cheaper than np.linalg.det
    volume = abs(a1 * (b2 * c3 - b3 * c2) - a2 * (b1 * c3 - b3 * c1) + a3 * (b1 * c2 - b2 * c1))
    _check_cell(matrix, coords, volume, len(coords))
    try:
        found = _raw_search(matrix, coords, crystal.pbc, cutoff)
    except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
        raise DegenerateStructure(f"the neighbour search failed ({type(exc).__name__}: {exc})") from None
    return np.asarray(crystal.z, dtype=np.int64), found


#: Most neighbour pairs whose edges :func:`crystal_graphs` selects together (some 80 bytes each at the peak): a list
#: of large cells is taken in several goes.
PAIR_BUDGET = 1_000_000


def crystal_graphs(crystals: Sequence[Crystal], settings) -> list[GraphArrays | GraphError]:
    """:func:`crystal_graph` of every crystal, the selection of their edges done together (a few numpy calls for up
    to :data:`PAIR_BUDGET` neighbour pairs instead of some thirty per crystal); a crystal whose graph cannot be built
    gets its error (DegenerateStructure, or GraphError for an isolated atom) in its place, nothing is raised."""
    out: list[GraphArrays | GraphError | None] = [None] * len(crystals)
    searched, zs, founds, pairs = [], [], [], 0
    for i, crystal in enumerate(crystals):
        try:
            z, (centres, neighbours, _images, dists) = _crystal_search(crystal, settings.cutoff)
        except DegenerateStructure as exc:
            out[i] = exc
            continue
        searched.append(i)
        zs.append(z)
        founds.append((centres, neighbours, None, dists))  # the image offsets are not needed: let them go
        pairs += len(dists)
        if pairs >= PAIR_BUDGET or i == len(crystals) - 1:
            for j, graph in zip(searched, _graphs(zs, founds, settings)):
                out[j] = graph
            searched, zs, founds, pairs = [], [], [], 0
    if searched:  # the last crystal was degenerate
        for j, graph in zip(searched, _graphs(zs, founds, settings)):
            out[j] = graph
    return out


#: Distance buckets per cutoff in the selection's first pass (:func:`_nearest_pairs`).
_BUCKETS = 64


def _nearest_pairs(centres, local, neighbours, dists, n_total: int, settings):
    """Each centre's ``max_neighbors`` nearest pairs, self pairs (an atom itself, d <= 1e-8) dropped, ties in list
    order: what a stable sort by (centre, distance) of the whole list keeps, as (centres, neighbours, distances)
    sorted so, plus every centre's number of neighbours. ``centres`` are numbered over all crystals (ascending, the
    search's order), ``local`` within each crystal.

    First pass: the distances go into 64 buckets (a monotone rounding of d / cutoff), each centre's bucket holding
    its k-th nearest is found from one histogram, and only the pairs up to that bucket are kept (ties and all): every
    pair as near as the k-th is among them. Then those few are sorted (:func:`_by_centre_then_distance`)."""
    k, width = settings.max_neighbors, _BUCKETS
    bucket = (dists * (width / settings.cutoff)).astype(np.int64)
    np.minimum(bucket, width, out=bucket)
    tiny = np.flatnonzero(dists <= NEIGHBOUR_TOL)
    bucket[tiny[local[tiny] == neighbours[tiny]]] = width + 1  # self pairs: a bucket of their own, never kept
    hist = np.bincount(centres * (width + 2) + bucket, minlength=n_total * (width + 2)).reshape(n_total, width + 2)
    cumulative = np.cumsum(hist[:, :width + 1], axis=1)
    counts = cumulative[:, -1]
    last = np.where(counts >= k, np.argmax(cumulative >= k, axis=1), width)
    kept = np.flatnonzero(bucket <= last[centres])
    centres, neighbours, dists = centres[kept], neighbours[kept], dists[kept]
    order = _by_centre_then_distance(centres, dists)
    centres, neighbours, dists = centres[order], neighbours[order], dists[order]
    per = np.bincount(centres, minlength=n_total)
    rank = np.arange(len(centres)) - np.repeat(np.cumsum(per) - per, per)
    keep = rank < k
    return centres[keep], neighbours[keep], dists[keep], counts


def _by_centre_then_distance(centres: np.ndarray, dists: np.ndarray) -> np.ndarray:
    """``np.lexsort((dists, centres))`` (stable: ties in list order), faster, by two stable argsorts of 64-bit keys
    (a non-negative double's bits sort as its value): first (the centre in 20 bits, the distance's top 44 bits), then,
    where two distances share that key (symmetric neighbours a few ulps apart), (the run of equal keys, the
    distance's other 19 bits). A centre past 2^20 or a negative distance: the lexsort."""
    if len(centres) and (int(centres.max()) >= 1 << 20 or int(centres.min()) < 0 or np.signbit(dists).any()):
        return np.lexsort((dists, centres))
    bits = dists.view(np.uint64)
    key = (centres.astype(np.uint64) << np.uint64(44)) | (bits >> np.uint64(19))
    order = np.argsort(key, kind="stable")
    key, low = key[order], bits[order] & np.uint64((1 << 19) - 1)
    same = key[1:] == key[:-1]
    if not (same & (low[1:] < low[:-1])).any():
        return order
    run = np.zeros(len(key), dtype=np.uint64)  # the run of equal keys each position is in
    np.cumsum(~same, dtype=np.uint64, out=run[1:])
    return order[np.argsort((run << np.uint64(19)) | low, kind="stable")]


def _graphs(zs: list[np.ndarray], founds: list, settings,
            labels: list[Callable[[int], object]] | None = None) -> list[GraphArrays | GraphError]:
    """The graphs of crystals from their atomic numbers and neighbour lists (pymatgen's order; self pairs may be
    in them), all at once: each centre's ``max_neighbors`` nearest (ties in the search's order), padded for the
    original CGCNN; a GraphError naming the first atom without a neighbour in place of a crystal that has one."""
    sizes = np.array([len(z) for z in zs], dtype=np.int64)
    offsets = np.cumsum(sizes) - sizes
    n_total = int(sizes.sum())
    local = np.concatenate([f[0] for f in founds]).astype(np.int64, copy=False)
    centres = local + np.repeat(offsets, [len(f[0]) for f in founds])
    neighbours = np.concatenate([f[1] for f in founds]).astype(np.int64, copy=False)
    dists = np.concatenate([f[3] for f in founds]).astype(np.float64, copy=False)
    dst, src, d, counts = _nearest_pairs(centres, local, neighbours, dists, n_total, settings)
    if settings.pad_neighbors:
        missing = np.maximum(settings.max_neighbors - counts, 0)
        if missing.any():
            pad_dst = np.repeat(np.arange(n_total), missing)
            src = np.concatenate([src, np.zeros_like(pad_dst)])
            dst = np.concatenate([dst, pad_dst])
            d = np.concatenate([d, np.full(len(pad_dst), settings.cutoff + 1.0)])
            order = np.argsort(dst, kind="stable")
            src, dst, d = src[order], dst[order], d[order]
    bounds = np.searchsorted(dst, np.append(offsets, n_total)).tolist()
    edge_index = np.stack([src, dst - np.repeat(offsets, np.diff(bounds))])
    d = d.astype(np.float32)
    lonely = np.flatnonzero(counts == 0)
    first_lonely = dict(zip(np.searchsorted(offsets, lonely, side="right").tolist()[::-1],
                            lonely.tolist()[::-1]))  # crystal (1-based) -> its first atom without a neighbour
    out: list[GraphArrays | GraphError] = []
    for j, z in enumerate(zs):
        atom = first_lonely.get(j + 1)
        if atom is not None:
            atom -= int(offsets[j])
            label = labels[j](atom) if labels else _element(int(z[atom]))
            out.append(GraphError(f"atom {atom} ({label}) has no neighbour within {settings.cutoff} Å; "
                                  "increase data.graph.cutoff"))
            continue
        a, b = bounds[j], bounds[j + 1]
        out.append(GraphArrays(z=torch.from_numpy(np.array(z, dtype=np.int64)),
                               edge_index=torch.from_numpy(edge_index[:, a:b].copy()),
                               dist=torch.from_numpy(d[a:b].copy())))
    return out


def _element(z: int):
    from pymatgen.core import Element

    return Element.from_Z(z)


def to_data(arrays: GraphArrays, target: float, material_id: str, settings):
    """A ``torch_geometric.data.Data`` with x, edge_index, edge_attr, y, z and the id."""
    from torch_geometric.data import Data

    return Data(
        x=atom_feature_table()[arrays.z],
        z=arrays.z,
        edge_index=arrays.edge_index,
        edge_attr=expand_distances(arrays.dist, settings),
        y=torch.tensor([target], dtype=torch.float32),
        material_id=material_id,
        num_nodes=int(arrays.z.numel()),
    )


def entry_key(entry: Entry, settings) -> str:
    digest = hashlib.sha256()
    digest.update(entry.fmt.encode())
    digest.update(b"\0")
    digest.update(entry.payload.encode())
    digest.update(b"\0")
    digest.update(settings_key(settings).encode())
    return digest.hexdigest()


class GraphCache:
    """Graphs on disk, one small file per (structure, graph settings) content hash."""

    def __init__(self, root: Path | None = None, enabled: bool = True):
        self.root = Path(root) if root else cache_dir()
        self.enabled = enabled
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.pt"

    def get(self, key: str) -> GraphArrays | None:
        if not self.enabled:
            return None
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            raw = torch.load(path, weights_only=True)
            arrays = GraphArrays(z=raw["z"], edge_index=raw["edge_index"], dist=raw["dist"])
        except Exception:  # a damaged cache file is rebuilt, never trusted
            return None
        self.hits += 1
        return arrays

    def put(self, key: str, arrays: GraphArrays) -> None:
        if not self.enabled:
            return
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            os.close(fd)
            torch.save(arrays.as_dict(), tmp)
            os.replace(tmp, path)
        except OSError:
            # The cache is an optimisation: an unwritable cache directory must not stop an audit.
            self.enabled = False


@dataclass
class GraphSet:
    """Graphs built from a source, with what was skipped and why."""

    graphs: list  # torch_geometric Data
    skipped: Counter = field(default_factory=Counter)
    cache_hits: int = 0
    built: int = 0


#: Entries whose graphs are built together (:func:`graphs_of`): their numbers are read, and their edges selected, by
#: one numpy call per step for the lot; a chunk of 256 MP structures needs some 40 MB at the peak.
BUILD_CHUNK = 256


def graphs_of(entries: Sequence[Entry], settings) -> list[GraphArrays | GraphError | None]:
    """The graph of every entry the fast path reads (a CIF in pymatgen's P1 layout: :func:`fast_crystals`, then
    :func:`crystal_graphs`), chunk by chunk: a GraphArrays, or in its place the error that stopped it
    (DegenerateStructure, GraphError for an isolated atom); None for an entry the fast path leaves to pymatgen
    (then :meth:`Entry.structure` and :func:`structure_graph`). Nothing is cached; nothing is raised for one entry."""
    out: list[GraphArrays | GraphError | None] = [None] * len(entries)
    if not fast_path_available():
        return out
    for first in range(0, len(entries), BUILD_CHUNK):
        crystals = fast_crystals([entries[i] for i in range(first, min(first + BUILD_CHUNK, len(entries)))])
        read = [j for j, crystal in enumerate(crystals) if crystal is not None]
        for j, graph in zip(read, crystal_graphs([crystals[j] for j in read], settings)):
            out[first + j] = graph
    return out


def _entry_arrays(entry: Entry, built: GraphArrays | GraphError | None, settings, out: GraphSet) -> GraphArrays | None:
    """The graph of one entry: ``built`` by the fast path, else from pymatgen's parse; None when it is skipped (the
    reason counted in ``out``). An isolated atom raises GraphError when ``settings.isolated_atoms`` is "error"."""
    try:
        if isinstance(built, GraphError):
            raise built
        if built is not None:
            return built
        try:
            structure = entry.structure()
        except ValueError:
            out.skipped["unreadable structure"] += 1
            return None
        return structure_graph(structure, settings)
    except DisorderedStructure:
        out.skipped[DISORDERED] += 1
    except DegenerateStructure:
        out.skipped["degenerate structure (singular lattice or non-finite numbers)"] += 1
    except GraphError:
        if settings.isolated_atoms == "error":
            raise
        out.skipped[f"atom with no neighbour within {settings.cutoff} Å (raise data.graph.cutoff)"] += 1
    return None


def _chunk_entry(entry: Entry, built: GraphArrays | GraphError | None, settings, cache: GraphCache,
                 out: GraphSet) -> GraphArrays | None:
    """One entry's graph in :func:`build_graphs`: ``built`` by the fast path (counted as built), else from the cache
    or pymatgen's parse (then cached); None when it is skipped (counted in ``out``)."""
    if built is not None:
        arrays = _entry_arrays(entry, built, settings, out)
        out.built += arrays is not None
        return arrays
    key = entry_key(entry, settings)
    arrays = cache.get(key)
    if arrays is not None:
        out.cache_hits += 1
        return arrays
    arrays = _entry_arrays(entry, None, settings, out)
    if arrays is not None:
        cache.put(key, arrays)
        out.built += 1
    return arrays


def build_graphs(
    entries: Sequence[Entry],
    settings,
    cache: GraphCache | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> GraphSet:
    """Build (or load from the cache) the graph of every entry; bad structures are skipped and counted. The entries
    are taken :data:`BUILD_CHUNK` at a time and built together where the fast path reads them (:func:`graphs_of`),
    without the cache: building such a graph costs what reading it back does (2,000 sample structures with their
    features, best of 5 interleaved on a loaded machine: 5.48 s built, 5.34 s read from a warm cache), and a first
    run saves the cache's writes (about 0.7 ms a structure, ``bench/README.md``) and its disk. The cache keeps the
    graphs of the other entries, those pymatgen parses (another CIF layout, POSCAR, ASE files), whose parse is the
    slow part."""
    cache = cache if cache is not None else GraphCache()
    table = atom_feature_table()
    out = GraphSet(graphs=[])
    n = len(entries)
    for first in range(0, n, BUILD_CHUNK):
        chunk = [entries[i] for i in range(first, min(first + BUILD_CHUNK, n))]
        built = graphs_of(chunk, settings)
        for j, entry in enumerate(chunk):
            if progress is not None and first + j:
                progress(first + j, n)  # every entry counts, skipped ones too
            arrays = _chunk_entry(entry, built[j], settings, cache, out)
            if arrays is None:
                continue
            if int(arrays.z.max()) >= table.shape[0] or torch.isnan(table[arrays.z]).any():
                out.skipped["element without atom features (Z > 100)"] += 1
                continue
            out.graphs.append(to_data(arrays, entry.target, entry.id, settings))
    if progress is not None and n:
        progress(n, n)
    return out


def graph_elements(graph) -> frozenset[str]:
    """Element symbols present in a graph."""
    from pymatgen.core.periodic_table import Element

    return frozenset(Element.from_Z(int(z)).symbol for z in torch.unique(graph.z))


def build_graphs_skipping(entries: Sequence[Entry], settings) -> GraphSet:
    """The graphs of ``entries``; a structure whose graph cannot be built (a DataError such as a GraphError) is
    skipped and counted with the error's message ("graph not built: ..."), the others are built: one structure
    never stops a batch (screening, an adapter's featurisation)."""
    try:
        return build_graphs(entries, settings)
    except DataError:
        pass  # one entry stops the batch: build them one by one to find it
    built = GraphSet(graphs=[])
    for entry in entries:
        try:
            one = build_graphs([entry], settings)
        except DataError as exc:
            built.skipped[f"graph not built: {str(exc)[:200]}"] += 1
            continue
        built.graphs.extend(one.graphs)
        built.skipped.update(one.skipped)
        built.built += one.built
    return built
