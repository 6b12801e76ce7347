"""Topology of a 2-D loss surface: persistence of its minima, the contour tree and SMAD.

The grid ``L[i, j]`` is read as a function on the graph whose vertices are the grid points and whose edges
join the 4 nearest neighbours (left, right, up, down). That is the neighbourhood graph Landscaper (Vis4SciML,
``LossLandscape``) builds on a regular grid: its empty-region graph (beta = 1, p = 2, the Gabriel graph)
keeps the axis-aligned neighbours and drops the diagonals, whose two other cell corners lie on the empty
disc. Ties are broken by the flat (row-major) index, so the order of the points is total.

What is computed
----------------
* **Persistence of the minima** (0-dimensional sublevel-set persistence, by gudhi's cubical complex on the
  grid's vertices, whose 0-skeleton is this 4-neighbour graph): a local minimum is born at its value and
  dies at the saddle where its basin merges with an older one; ``persistence = death - birth``. The global
  minimum never dies. ``n_minima`` counts all local minima; ``n_persistent_minima`` those whose persistence
  is at least ``threshold`` times the loss range (the global minimum always counts). The same pairs of the
  superlevel sets (maxima) are computed for the persistence range.
* **Persistence range**: the loss range minus the smallest persistence of any minimum or maximum pair
  (0 when the surface has a single minimum and a single maximum). This is Landscaper's
  ``persistence_range()``: the spread of its Morse-Smale complex's cancellation persistences, whose
  largest entry is the loss range. (topopy reports those persistences to 6 significant digits, so the
  two agree to about 1e-5 of the loss range, not to machine precision.)
* **SMAD**, the saddle-minimum average distance (Landscaper's ``LossLandscape.smad()``): build the
  contour tree from the join tree (minima merging upwards) and the split tree (maxima merging
  downwards), then average ``|L(a) - L(b)|`` over the contour-tree arcs ``(a, b)`` that join a local
  minimum ``b`` to a node ``a`` of degree > 1 (a saddle, in a well-formed tree). Each minimum contributes
  the rise to the first node above it: the older minimum of a merge counts as well as the younger one, so
  SMAD is *not* the mean persistence. ``smad_normalized`` divides it by the loss range. A tree without
  such a node (one minimum rising to one maximum) gives 0.

What SMAD means and does not: it is the mean depth of the surface's local pits below the contour-tree
node each one first meets, in the loss's units. On a sampled grid it mixes genuine basins with sampling
noise (a pit one grid point deep counts as much as a basin); it is not a curvature, not a width, and it
grows with the loss's own scale, so the normalised SMAD is the one to compare across splits of
different loss level.

The contour tree is the join/split-tree merge of Carr, Snoeyink and Axen (2003) with the join tree
augmented only by split-tree nodes and vice versa (topopy's "short-circuit" variant, which Landscaper
uses). gudhi has no contour tree and topopy pins numpy < 2, so that merge is done here, on the union-find
join and split trees; the persistence pairs come from gudhi.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from traits.errors import ProbeError

#: Default persistence threshold of ``n_persistent_minima``, as a fraction of the loss range.
PERSISTENCE_THRESHOLD = 0.01


def _grid(values) -> np.ndarray:
    g = np.asarray(values, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] < 2 or g.shape[1] < 2:
        raise ProbeError(f"a loss surface for topology must be a 2-D grid of at least 2 x 2, got shape {g.shape}")
    if not np.isfinite(g).all():
        raise ProbeError("the loss surface has non-finite values (the loss diverged): its topology is undefined")
    return g


def _neighbours(shape: tuple[int, int]) -> list[list[int]]:
    """The 4-neighbour lists of a row-major grid of ``shape``."""
    rows, cols = shape
    out: list[list[int]] = []
    for i in range(rows):
        for j in range(cols):
            k = i * cols + j
            nb = []
            if i > 0:
                nb.append(k - cols)
            if j > 0:
                nb.append(k - 1)
            if j < cols - 1:
                nb.append(k + 1)
            if i < rows - 1:
                nb.append(k + cols)
            out.append(nb)
    return out


@dataclass
class _MergeTree:
    """A merge tree: ``parent[v]`` of each node (the root has none), and for each node the vertices that
    joined its component after it and before the next node above (its arc, in sweep order)."""

    parent: dict[int, int] = field(default_factory=dict)
    arcs: dict[int, list[int]] = field(default_factory=dict)
    nodes: list[int] = field(default_factory=list)


def _merge_tree(order: np.ndarray, rank: np.ndarray, nbrs: list[list[int]]) -> _MergeTree:
    """The merge tree of the sweep that adds the vertices in ``order`` (a vertex's earlier neighbours are
    those of lower ``rank``): a vertex with no earlier neighbour starts a component (a leaf); one touching
    two or more components merges them (a saddle); the last vertex is the root."""
    n = len(order)
    uf = np.arange(n)

    def find(x: int) -> int:
        while uf[x] != x:
            uf[x] = uf[uf[x]]
            x = uf[x]
        return x

    head = np.full(n, -1)
    tree = _MergeTree()
    for v in map(int, order):
        roots = {find(u) for u in nbrs[v] if rank[u] < rank[v]}
        if len(roots) == 1:
            r = roots.pop()
            tree.arcs[int(head[r])].append(v)
            uf[v] = r
            continue
        tree.nodes.append(v)
        tree.arcs[v] = []
        for r in roots:
            tree.parent[int(head[r])] = v
            uf[r] = v
        head[v] = v
    root = int(order[-1])
    if root not in tree.arcs:  # the last vertex joined one component: it closes that component's arc
        top = int(head[find(root)])
        tree.arcs[top].remove(root)
        tree.parent[top] = root
        tree.nodes.append(root)
        tree.arcs[root] = []
    return tree


class _Tree:
    """A merge tree as a directed graph towards its root, augmented with the nodes of the other tree."""

    def __init__(self, tree: _MergeTree, keep: set[int]) -> None:
        self.up: dict[int, int | None] = {v: None for v in tree.nodes}
        self.down: dict[int, list[int]] = {v: [] for v in tree.nodes}
        for v in tree.nodes:
            target = tree.parent.get(v)
            chain = [u for u in tree.arcs[v] if u in keep]
            start = v
            for u in chain:
                self.up.setdefault(u, None)
                self.down.setdefault(u, [])
                self._link(start, u)
                start = u
            if target is not None:
                self._link(start, target)

    def _link(self, a: int, b: int) -> None:
        self.up[a] = b
        self.down[b].append(a)

    def remove(self, v: int) -> None:
        """Drop ``v``, joining its child (if one) to its parent (if any)."""
        parent = self.up.pop(v)
        children = self.down.pop(v)
        if parent is not None:
            self.down[parent].remove(v)
        for c in children:
            self.up[c] = None
        if parent is not None and children:
            self._link(children[0], parent)


def _peel(this: _Tree, that: _Tree, values: np.ndarray, edges: list[tuple[int, int]]) -> None:
    """Carr's step: move every leaf of ``this`` that is not a merge node of ``that`` onto the contour tree
    (``edges``, as (lower, upper)), removing it from both trees, until none is left."""
    def leaves() -> list[int]:
        if len(this.up) <= 1:
            return []
        return sorted(v for v in this.up if not this.down[v] and v in that.up and len(that.down[v]) < 2)

    todo = leaves()
    while todo:
        v = todo[0]
        target = this.up[v]
        if target is None:  # a lone root: nothing left to attach it to
            break
        edges.append((v, target) if values[v] < values[target] else (target, v))
        this.remove(v)
        that.remove(v)
        todo = leaves()


def contour_tree(values) -> tuple[list[tuple[int, int]], set[int], set[int]]:
    """The contour tree of a grid on its 4-neighbour graph: (arcs as (lower, upper) flat indices, the local
    minima, the local maxima). See the module docstring."""
    g = _grid(values)
    flat = g.ravel()
    n = flat.size
    order = np.argsort(flat.astype(np.float32), kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    nbrs = _neighbours(g.shape)
    join = _merge_tree(order, rank, nbrs)
    split = _merge_tree(order[::-1], n - 1 - rank, nbrs)
    jt = _Tree(join, set(split.nodes))
    st = _Tree(split, set(join.nodes))
    edges: list[tuple[int, int]] = []
    _peel(st, jt, flat, edges)  # the maxima's tree first, as topopy's contour tree does
    _peel(jt, st, flat, edges)
    minima = {v for v in range(n) if all(rank[u] > rank[v] for u in nbrs[v])}
    maxima = {v for v in range(n) if all(rank[u] < rank[v] for u in nbrs[v])}
    return edges, minima, maxima


def _pairs(g: np.ndarray) -> list[tuple[float, float]]:
    """Finite (birth, death) pairs of the 0-dimensional sublevel-set persistence of the 4-neighbour grid."""
    import gudhi

    cc = gudhi.CubicalComplex(vertices=g)
    cc.compute_persistence(homology_coeff_field=2, min_persistence=0.0)
    return sorted((float(b), float(d)) for b, d in cc.persistence_intervals_in_dimension(0) if math.isfinite(d))


@dataclass
class SurfaceTopology:
    """The topology of one 2-D surface (module docstring). ``pairs``: the minima's finite (birth, death)
    pairs, by birth; ``threshold``: the persistence threshold as a fraction of ``loss_range``."""

    smad: float
    smad_normalized: float | None
    persistence_range: float
    n_minima: int
    n_persistent_minima: int
    threshold: float
    loss_min: float
    loss_range: float
    pairs: list[tuple[float, float]]
    n_saddle_minimum_arcs: int

    def to_dict(self) -> dict:
        def num(x):
            return None if x is None or not math.isfinite(x) else float(x)

        return {
            "smad": num(self.smad),
            "smad_normalized": num(self.smad_normalized),
            "persistence_range": num(self.persistence_range),
            "n_minima": int(self.n_minima),
            "n_persistent_minima": int(self.n_persistent_minima),
            "threshold": float(self.threshold),
            "loss_min": num(self.loss_min),
            "loss_range": num(self.loss_range),
            "pairs": [[num(b), num(d)] for b, d in self.pairs],
            "n_saddle_minimum_arcs": int(self.n_saddle_minimum_arcs),
        }


def smad(values, normalize: bool = False) -> float:
    """Saddle-minimum average distance of a grid (module docstring); ``normalize`` divides by the loss
    range. NaN when the tree has merge nodes but no minimum hangs from one (a degenerate tree)."""
    g = _grid(values)
    flat = g.ravel()
    edges, minima, _ = contour_tree(g)
    gaps = _smad_gaps(edges, minima, flat)
    if gaps is None:
        return 0.0
    if not gaps:
        return math.nan
    value = float(np.mean(gaps))
    if normalize:
        span = float(flat.max() - flat.min())
        return value / span if span > 0 else math.nan
    return value


def _smad_gaps(edges: list[tuple[int, int]], minima: set[int], flat: np.ndarray) -> list[float] | None:
    """|L(a) - L(b)| of each contour-tree arc joining a minimum to a node of degree > 1; None when no node
    has degree > 1."""
    degree: dict[int, int] = {}
    for a, b in edges:
        degree[a] = degree.get(a, 0) + 1
        degree[b] = degree.get(b, 0) + 1
    branches = {v for v, d in degree.items() if d > 1}
    if not branches:
        return None
    return [abs(float(flat[a]) - float(flat[b])) for a, b in edges
            if (a in branches and b in minima) or (b in branches and a in minima)]


def surface_topology(values, threshold: float = PERSISTENCE_THRESHOLD) -> SurfaceTopology:
    """Every number of the module docstring for one grid. ``threshold`` >= 0 is a fraction of the loss
    range."""
    if not (threshold >= 0 and math.isfinite(threshold)):
        raise ProbeError(f"the persistence threshold must be a finite number >= 0, got {threshold}")
    g = _grid(values)
    flat = g.ravel()
    lo, span = float(flat.min()), float(flat.max() - flat.min())
    edges, minima, _ = contour_tree(g)
    gaps = _smad_gaps(edges, minima, flat)
    if gaps is None:
        smad_value = 0.0
    else:
        smad_value = float(np.mean(gaps)) if gaps else math.nan
    pairs = _pairs(g)
    upper = _pairs(-g)
    persistences = [d - b for b, d in pairs] + [d - b for b, d in upper]
    p_range = span - min(persistences) if persistences else 0.0
    cut = threshold * span
    persistent = 1 + sum(1 for b, d in pairs if d - b >= cut and d - b > 0)
    return SurfaceTopology(
        smad=smad_value,
        smad_normalized=smad_value / span if span > 0 else None,
        persistence_range=p_range,
        n_minima=len(minima),
        n_persistent_minima=persistent,
        threshold=float(threshold),
        loss_min=lo,
        loss_range=span,
        pairs=pairs,
        n_saddle_minimum_arcs=len(gaps) if gaps else 0,
    )
