"""From a spec's ``data`` and ``omit`` to graphs per split: read, subsample, build graphs, split.

With named sets (``data.sets``) each set file is read by the spec's reader and becomes its split as
given: no subsample, no re-splitting; a split without a file (train, val) is absent from ``splits``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from traits.data.graphs import GraphCache, build_graphs, graph_elements
from traits.data.sources import read_source
from traits.data.splits import SPLITS, SplitManifest, assign_splits, check_disjoint, named_set_manifest
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
    if spec.data.sets is not None:
        return prepare_named_sets(spec, cache=cache, progress=progress)
    source = read_source(spec.data)
    entries = subsample_entries(source.entries, spec.data.subsample, spec.seed)
    graphs = build_graphs(entries, spec.data.graph, cache=cache, progress=progress)
    skipped = source.skipped + graphs.skipped
    if not graphs.graphs:
        raise DataError(f"{source.source or 'data'}: no structure could be turned into a graph ({dict(skipped)})")
    holdout = spec.holdout.model_dump(mode="json") if getattr(spec, "holdout", None) is not None else None
    elements = [graph_elements(g) for g in graphs.graphs]
    ood_mask = None
    if holdout is not None:  # a generalised omission rule (traits.spec.HoldoutSpec)
        from traits.data.splits import holdout_mask

        by_entry = {e.id: e for e in entries}
        ood_mask = holdout_mask(holdout, elements, [by_entry[g.material_id].structure for g in graphs.graphs])
    manifest = assign_splits(
        [g.material_id for g in graphs.graphs],
        elements,
        spec.omit,
        spec.split.model_dump(include={"train", "val", "test"}),
        spec.seed,
        data_hash=source.data_hash,
        ood_fraction=spec.split.ood_fraction,
        ood_mask=ood_mask,
        holdout=holdout,
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


def prepare_named_sets(
    spec,
    cache: GraphCache | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PreparedData:
    """Read each file of ``spec.data.sets`` with the spec's reader and build its graphs; each set is its split.

    Errors (DataError, naming the file): an unreadable file, a set with no usable record or no structure
    that becomes a graph, a compound id in two sets (or twice in one).
    """
    files = spec.data.sets.named()
    # the 'sample' source is the Materials Project reader on the bundled file: set files are read the same way
    reader = spec.data.model_copy(update={"source": "mp" if spec.data.source == "sample" else spec.data.source,
                                          "sets": None})
    sources = {name: read_source(reader.model_copy(update={"path": path})) for name, path in files.items()}
    check_disjoint({name: [e.id for e in src.entries] for name, src in sources.items()}, files)
    total = sum(len(src.entries) for src in sources.values())
    cache = cache if cache is not None else GraphCache()
    splits, info, skipped = {}, {}, Counter()
    n_read = cache_hits = built = offset = 0
    for name, src in sources.items():
        step = None
        if progress is not None:
            def step(done: int, _total: int, offset: int = offset) -> None:
                progress(offset + done, total)
        graphs = build_graphs(src.entries, spec.data.graph, cache=cache, progress=step)
        offset += len(src.entries)
        lost = src.skipped + graphs.skipped
        if not graphs.graphs:
            raise DataError(f"{files[name]}: the {name} set is empty: no structure could be turned into a graph "
                            f"({dict(lost)})")
        skipped.update({f"{name} set: {reason}": n for reason, n in lost.items()})
        records = len(src.entries) + sum(src.skipped.values())
        n_read += records
        cache_hits += graphs.cache_hits
        built += graphs.built
        splits[name] = graphs.graphs
        info[name] = {"path": str(files[name]), "sha256": src.data_hash, "records": records,
                      "count": len(graphs.graphs)}
    manifest = named_set_manifest({name: [g.material_id for g in gs] for name, gs in splits.items()}, info,
                                  seed=spec.seed)
    return PreparedData(
        splits=splits, manifest=manifest, skipped=skipped, n_read=n_read, cache_hits=cache_hits, built=built,
        source="named sets: " + ", ".join(f"{name} {path}" for name, path in files.items()),
    )


def split_statistics(splits: dict[str, list], omit: list[str]) -> dict[str, dict]:
    """Per split: count, target mean/std/min/max, compounds with each omitted element, element coverage.

    Without a training split (named sets with no ``train``) no element is called unseen in training."""
    has_train = "train" in splits
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
            "elements_unseen_in_train": sorted(present - train_elements) if has_train else [],
        }
    return out
