"""From a spec's ``data`` and ``omit`` to graphs per split: read, subsample, build graphs, split.

With named sets (``data.sets``) each set file is read by the spec's reader and becomes its split as
given: no subsample, no re-splitting; a split without a file (train, val) is absent from ``splits``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from traits.data.graphs import GraphCache, build_graphs, graph_elements
from traits.data.sources import SourceData, read_source
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


def _assign_splits(source: SourceData, *args, **kwargs) -> SplitManifest:
    """:func:`~traits.data.splits.assign_splits`, with its DataErrors (an omission rule that matches no
    compound, a duplicate id) naming the data they are about."""
    try:
        return assign_splits(*args, **kwargs)
    except DataError as exc:
        raise DataError(f"{source.source or 'the bundled sample'}: {exc}") from None


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
    manifest = _assign_splits(
        source,
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


def _parse_entries(entries: list) -> tuple[list, list, Counter]:
    """(entries, structures) of the entries whose structure parses, and the count of those that do not."""
    kept, structures, skipped = [], [], Counter()
    for entry in entries:
        try:
            structures.append(entry.structure())
            kept.append(entry)
        except ValueError:
            skipped["unreadable structure"] += 1
    return kept, structures, skipped


def _featurise(adapter, options, entries: list, structures: list, progress=None, offset: int = 0,
               total: int = 0) -> tuple[list, Counter]:
    from traits.models.base import FeaturiseError

    items, skipped = [], Counter()
    for k, (entry, structure) in enumerate(zip(entries, structures)):
        try:
            items.append(adapter.featurise_structure(entry.id, structure, entry.target, options))
        except FeaturiseError as exc:
            skipped[f"the model cannot featurise it ({str(exc)[:60]})"] += 1
        if progress is not None:
            progress(offset + k + 1, total)
    return items, skipped


@dataclass(frozen=True)
class InMemoryEntry:
    """A structure given in memory (``run_audit(..., structures=...)``), shaped like a source ``Entry``."""

    id: str
    target: float
    value: object

    def structure(self):
        return self.value


def in_memory_entries(structures) -> list[InMemoryEntry]:
    """Entries from pymatgen Structures, ASE Atoms, or (id, structure) / (id, structure, target) tuples."""
    out = []
    for k, item in enumerate(structures):
        target = math.nan
        if isinstance(item, tuple):
            if len(item) not in (2, 3):
                raise DataError(f"structures[{k}]: a tuple must be (id, structure) or (id, structure, target)")
            sid, value = str(item[0]), item[1]
            if len(item) == 3:
                target = float(item[2])
        else:
            sid, value = f"structure-{k}", item
        if not hasattr(value, "composition"):
            try:
                from pymatgen.io.ase import AseAtomsAdaptor

                value = AseAtomsAdaptor.get_structure(value)
            except Exception as exc:
                raise DataError(f"structures[{k}]: neither a pymatgen Structure nor ASE Atoms "
                                f"({type(value).__name__}: {exc})") from None
        out.append(InMemoryEntry(sid, target, value))
    if not out:
        raise DataError("structures: the list is empty")
    return out


def prepare_for_adapter(spec, adapter, options, progress: Callable[[int, int], None] | None = None,
                        structures=None) -> PreparedData:
    """Read the spec's data, split on the entries (ids, element sets; or the named sets as given), then featurise
    each split with the model adapter (``traits.models.base``); structures it cannot featurise are skipped and
    counted. Items carry ``material_id``, ``y`` and ``z`` like the crystal graphs of :func:`prepare_data`."""
    from traits.data.splits import holdout_mask

    if spec.data.sets is not None and structures is None:
        files = spec.data.sets.named()
        reader = spec.data.model_copy(update={"source": "mp" if spec.data.source == "sample" else spec.data.source,
                                              "sets": None})
        sources = {name: read_source(reader.model_copy(update={"path": path})) for name, path in files.items()}
        check_disjoint({name: [e.id for e in src.entries] for name, src in sources.items()}, files)
        total = sum(len(src.entries) for src in sources.values())
        splits, info, skipped, n_read, offset = {}, {}, Counter(), 0, 0
        for name, src in sources.items():
            entries, structures, lost = _parse_entries(src.entries)
            items, lost2 = _featurise(adapter, options, entries, structures, progress, offset, total)
            offset += len(src.entries)
            lost = src.skipped + lost + lost2
            if not items:
                raise DataError(f"{files[name]}: the {name} set is empty: no structure could be featurised by the "
                                f"model ({dict(lost)})")
            skipped.update({f"{name} set: {reason}": n for reason, n in lost.items()})
            records = len(src.entries) + sum(src.skipped.values())
            n_read += records
            splits[name] = items
            info[name] = {"path": str(files[name]), "sha256": src.data_hash, "records": records, "count": len(items)}
        manifest = named_set_manifest({name: [g.material_id for g in gs] for name, gs in splits.items()}, info,
                                      seed=spec.seed)
        return PreparedData(splits=splits, manifest=manifest, skipped=skipped, n_read=n_read, built=offset,
                            source="named sets: " + ", ".join(f"{n} {p}" for n, p in files.items()))
    if structures is not None:
        import hashlib

        given = in_memory_entries(structures)
        digest = hashlib.sha256("\n".join(e.id for e in given).encode()).hexdigest()
        source = SourceData(entries=given, data_hash=digest, source=f"{len(given)} structures given in memory")
    else:
        source = read_source(spec.data)
    entries = subsample_entries(source.entries, spec.data.subsample, spec.seed)
    entries, structures, lost = _parse_entries(entries)
    if not entries:
        raise DataError(f"{source.source or 'data'}: no readable structure ({dict(source.skipped + lost)})")
    elements = [frozenset(el.symbol for el in s.composition.elements) for s in structures]
    holdout = spec.holdout.model_dump(mode="json") if getattr(spec, "holdout", None) is not None else None
    ood_mask = holdout_mask(holdout, elements, structures) if holdout is not None else None
    manifest = _assign_splits(
        source, [e.id for e in entries], elements, spec.omit, spec.split.model_dump(include={"train", "val", "test"}),
        spec.seed, data_hash=source.data_hash, ood_fraction=spec.split.ood_fraction, ood_mask=ood_mask,
        holdout=holdout,
    )
    index = {e.id: k for k, e in enumerate(entries)}
    splits, skipped = {}, source.skipped + lost
    total, done = len(entries), 0
    for name in SPLITS:
        members = [index[i] for i in manifest.ids[name]]
        items, lost2 = _featurise(adapter, options, [entries[k] for k in members], [structures[k] for k in members],
                                  progress, done, total)
        done += len(members)
        skipped += lost2
        splits[name] = items
    return PreparedData(splits=splits, manifest=manifest, skipped=skipped,
                        n_read=len(source.entries) + sum(source.skipped.values()), built=done,
                        source=source.source or "bundled sample")
