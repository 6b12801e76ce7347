"""From a spec's ``data`` and ``omit`` to graphs per split: read, subsample, build graphs, split."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from traits.data.graphs import GraphCache, build_graphs, graph_elements
from traits.data.sources import read_source
from traits.data.splits import SPLITS, SplitManifest, assign_splits
from traits.errors import DataError


@dataclass
class PreparedData:
    """Graphs per split plus everything needed to report how they were made."""

    splits: dict[str, list]
    manifest: SplitManifest
    skipped: Counter = field(default_factory=Counter)
    n_read: int = 0
    cache_hits: int = 0
    built: int = 0
    source: str = ""

    def stats(self, omit: list[str]) -> dict:
        return split_statistics(self.splits, omit)


def subsample_entries(entries: list, size: int | None, seed: int) -> list:
    if size is None or size >= len(entries):
        return entries
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(entries), size=size, replace=False))
    return [entries[i] for i in keep]


def prepare_data(
    spec,
    cache: GraphCache | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PreparedData:
    """Read the spec's data source, build graphs and split them (``spec`` is an AuditSpec)."""
    source = read_source(spec.data)
    entries = subsample_entries(source.entries, spec.data.subsample, spec.seed)
    graphs = build_graphs(entries, spec.data.graph, cache=cache, progress=progress)
    skipped = source.skipped + graphs.skipped
    if not graphs.graphs:
        raise DataError(f"{source.source or 'data'}: no structure could be turned into a graph ({dict(skipped)})")
    manifest = assign_splits(
        [g.material_id for g in graphs.graphs],
        [graph_elements(g) for g in graphs.graphs],
        spec.omit,
        spec.split.model_dump(include={"train", "val", "test"}),
        spec.seed,
        data_hash=source.data_hash,
        ood_fraction=spec.split.ood_fraction,
    )
    by_id = {g.material_id: g for g in graphs.graphs}
    splits = {name: [by_id[i] for i in manifest.ids[name]] for name in SPLITS}
    return PreparedData(
        splits=splits,
        manifest=manifest,
        skipped=skipped,
        n_read=len(source.entries) + sum(source.skipped.values()),
        cache_hits=graphs.cache_hits,
        built=graphs.built,
        source=source.source or "bundled sample",
    )


def split_statistics(splits: dict[str, list], omit: list[str]) -> dict[str, dict]:
    """Per split: count, target mean/std/min/max, compounds with each omitted element, element coverage."""
    train_elements: set[str] = set()
    for g in splits.get("train", []):
        train_elements |= graph_elements(g)
    out: dict[str, dict] = {}
    for name, graphs in splits.items():
        y = np.array([float(g.y) for g in graphs]) if graphs else np.array([])
        elems = [graph_elements(g) for g in graphs]
        present: set[str] = set().union(*elems) if elems else set()
        out[name] = {
            "count": len(graphs),
            "target_mean": float(y.mean()) if y.size else None,
            "target_std": float(y.std()) if y.size else None,
            "target_min": float(y.min()) if y.size else None,
            "target_max": float(y.max()) if y.size else None,
            "with_omitted": {el: sum(el in e for e in elems) for el in omit},
            "n_elements": len(present),
            "elements_unseen_in_train": sorted(present - train_elements),
        }
    return out
