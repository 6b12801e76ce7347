"""Crystal structures as graphs, and the on-disk graph cache.

A crystal becomes a graph whose nodes are the atoms of the unit cell and whose directed edges join
each atom to its ``max_neighbors`` nearest periodic neighbours within ``cutoff`` (pymatgen's compiled
neighbour search, :func:`neighbour_list`; :func:`crystal_graph` for a crystal read straight from a CIF's numbers,
:func:`structure_graph` for a pymatgen ``Structure``). Edge features are the distances expanded in Gaussians (as in
CGCNN); node features are the 92-long per-element vectors of CGCNN's ``atom_init.json`` (MIT, see
``traits/data/NOTICE.md``).

Edges point from neighbour to centre: ``edge_index[0]`` is the neighbour j, ``edge_index[1]`` the
centre i, so messages flow into the centre atom (torch_geometric's ``source_to_target``).
"""

from __future__ import annotations

import hashlib
import json
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

from traits.data.sources import Crystal, Entry
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
    """Gaussian basis exp(-(d - μ_k)² / w²) on centres 0, step, ..., cutoff."""
    width = settings.gaussian_width or settings.gaussian_step
    centres = gaussian_centres(settings).to(dist)
    return torch.exp(-((dist.unsqueeze(-1) - centres) ** 2) / width**2)


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
    if not (np.isfinite(matrix).all() and np.isfinite(coords).all()):
        raise DegenerateStructure("the lattice or the atomic coordinates hold non-finite numbers")
    if not volume > MIN_VOLUME:
        raise DegenerateStructure(f"singular lattice (cell volume {volume:.3g} Å³)")
    if len(structure) == 0:
        raise DegenerateStructure("the structure has no atoms")
    return matrix, coords


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


def _kernel_neighbours(matrix: np.ndarray, coords: np.ndarray, pbc, cutoff: float):
    """pymatgen's compiled search on the arrays, the atom itself dropped: what ``get_neighbor_list`` returns."""
    from pymatgen.optimization.neighbors import find_points_in_spheres

    coords = np.ascontiguousarray(coords, dtype=float)
    centres, neighbours, images, dists = find_points_in_spheres(
        coords, coords, r=float(cutoff), pbc=np.ascontiguousarray(pbc, dtype=np.int64),
        lattice=np.ascontiguousarray(matrix, dtype=float), tol=NEIGHBOUR_TOL,
    )
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
    return _edges(z, found, settings, name=lambda i: structure[i].specie)


def crystal_graph(crystal: Crystal, settings) -> GraphArrays:
    """The graph of a :class:`traits.data.sources.Crystal` (arrays read straight from a file), equal to
    ``structure_graph`` of the same structure; the same errors for degenerate geometry and isolated atoms. Needs
    pymatgen's compiled search (:func:`fast_path_available`)."""
    matrix, coords = np.asarray(crystal.matrix, dtype=float), np.asarray(crystal.coords, dtype=float)
    if not (np.isfinite(matrix).all() and np.isfinite(coords).all()):
        raise DegenerateStructure("the lattice or the atomic coordinates hold non-finite numbers")
    volume = abs(float(np.linalg.det(matrix)))
    if not volume > MIN_VOLUME:
        raise DegenerateStructure(f"singular lattice (cell volume {volume:.3g} Å³)")
    if len(coords) == 0:
        raise DegenerateStructure("the structure has no atoms")
    try:
        found = _kernel_neighbours(matrix, coords, crystal.pbc, settings.cutoff)
    except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
        raise DegenerateStructure(f"the neighbour search failed ({type(exc).__name__}: {exc})") from None
    return _edges(np.asarray(crystal.z, dtype=np.int64), found, settings)


def _nearest_first(centres: np.ndarray, dists: np.ndarray, counts: np.ndarray, k: int) -> np.ndarray:
    """Indices of the pairs that can be among each centre's ``k`` nearest, in the order of
    ``np.lexsort((dists, centres))`` (by centre, then distance, ties in list order): a centre's pairs farther than its
    k-th smallest distance are dropped before sorting (a few hundred pairs sorted instead of thousands), which
    leaves the first ``k`` of every centre, and their order, as the full sort gives them."""
    by_centre = np.argsort(centres, kind="stable")  # already in centre order from the search: one linear pass
    c, d = centres[by_centre], dists[by_centre]
    widest = int(counts.max()) if len(counts) else 0
    if widest > k > 0:
        slot = np.arange(len(c)) - (np.cumsum(counts) - counts)[c]
        table = np.full((len(counts), widest), np.inf)
        table[c, slot] = d
        kth = np.partition(table, k - 1, axis=1)[:, k - 1]  # inf for a centre with fewer than k pairs
        candidates = np.flatnonzero(d <= kth[c])
        by_centre, c, d = by_centre[candidates], c[candidates], d[candidates]
    return by_centre[np.lexsort((d, c))]


def _edges(z: np.ndarray, found, settings, name: Callable[[int], object] | None = None) -> GraphArrays:
    """The graph from a neighbour list: each centre's ``max_neighbors`` nearest (ties in the search's order),
    padded for the original CGCNN; GraphError naming the first atom without a neighbour."""
    n = len(z)
    centres, neighbours, _images, dists = found
    counts = np.bincount(centres, minlength=n)
    order = _nearest_first(centres, dists, counts, settings.max_neighbors)
    centres, neighbours, dists = centres[order], neighbours[order], dists[order]
    if (counts == 0).any():
        from pymatgen.core import Element

        lonely = int(np.flatnonzero(counts == 0)[0])
        label = name(lonely) if name else Element.from_Z(int(z[lonely]))
        raise GraphError(
            f"atom {lonely} ({label}) has no neighbour within {settings.cutoff} Å; "
            "increase data.graph.cutoff"
        )
    kept = np.bincount(centres, minlength=n)
    starts = np.concatenate([[0], np.cumsum(kept)[:-1]])
    rank = np.arange(len(centres)) - starts[centres]
    keep = rank < settings.max_neighbors
    src, dst, d = neighbours[keep], centres[keep], dists[keep]
    if settings.pad_neighbors:
        missing = np.maximum(settings.max_neighbors - counts, 0)
        if missing.any():
            pad_dst = np.repeat(np.arange(n), missing)
            src = np.concatenate([src, np.zeros_like(pad_dst)])
            dst = np.concatenate([dst, pad_dst])
            d = np.concatenate([d, np.full(len(pad_dst), settings.cutoff + 1.0)])
            order = np.argsort(dst, kind="stable")
            src, dst, d = src[order], dst[order], d[order]
    edge_index = torch.from_numpy(np.stack([src, dst]).astype(np.int64))
    return GraphArrays(z=torch.from_numpy(z), edge_index=edge_index, dist=torch.from_numpy(d.astype(np.float32)))


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


def build_graphs(
    entries: Sequence[Entry],
    settings,
    cache: GraphCache | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> GraphSet:
    """Build (or load from the cache) the graph of every entry; bad structures are skipped and counted."""
    cache = cache if cache is not None else GraphCache()
    table = atom_feature_table()
    out = GraphSet(graphs=[])
    n = len(entries)
    for i, entry in enumerate(entries):
        if progress is not None and i:
            progress(i, n)  # every entry counts, skipped ones too
        key = entry_key(entry, settings)
        arrays = cache.get(key)
        if arrays is None:
            # read straight from the numbers of a CIF in pymatgen's P1 layout, else parsed by pymatgen
            crystal = entry.fast_crystal() if fast_path_available() else None
            try:
                structure = entry.structure() if crystal is None else None
            except ValueError:
                out.skipped["unreadable structure"] += 1
                continue
            try:
                arrays = structure_graph(structure, settings) if crystal is None else crystal_graph(crystal, settings)
            except DisorderedStructure:
                out.skipped[DISORDERED] += 1
                continue
            except DegenerateStructure:
                out.skipped["degenerate structure (singular lattice or non-finite numbers)"] += 1
                continue
            except GraphError:
                if settings.isolated_atoms == "error":
                    raise
                out.skipped[f"atom with no neighbour within {settings.cutoff} Å (raise data.graph.cutoff)"] += 1
                continue
            cache.put(key, arrays)
            out.built += 1
        else:
            out.cache_hits += 1
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
