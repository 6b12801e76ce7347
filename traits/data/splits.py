"""Chemistry-omission splits: train / val / ID test / OOD, deterministic by seed; or named sets.

OOD is every compound that contains an omitted element. The remaining (in-distribution) pool is
shuffled with the seed and cut into train / val / ID test by the spec's fractions. With nothing
omitted (a random-split baseline) a random ``ood_fraction`` of the pool is held out as the "OOD" set,
drawn from a stream keyed by the seed *and* the share (:data:`SPLIT_SCHEME` 2), so baselines of different
shares at one seed are independent partitions, as a noise floor needs, not nested ones sharing one ID set.

With named sets (``data.sets``) nothing is split: each set is a file, its compounds are the split as
given (file order), and the manifest records each file with its sha256 (:func:`named_set_manifest`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from traits.errors import DataError
from traits.files import write_json_atomic

SPLITS = ("train", "val", "id", "ood")
#: How splits are drawn; recorded in every manifest and result (``provenance.split_scheme``).
#: 1: one permutation per seed for every split, so random holdouts of different shares at one seed were
#: nested (the 10 % inside the 15 % inside the 20 %) and all shared one ID test set.
#: 2: a random holdout draws from a stream keyed by (seed, share); omission, holdout-rule and named-set
#: splits are drawn exactly as in scheme 1 (same ids, same manifest hash).
SPLIT_SCHEME = 2


@dataclass(frozen=True)
class SplitManifest:
    """Ids per split, with the settings and data hash that produced them."""

    ids: dict[str, list[str]]
    omit: list[str]
    seed: int
    fractions: dict[str, float]
    data_hash: str
    #: Named sets only: split -> {"path", "sha256", "records" (read), "count" (usable graphs)}.
    sets: dict[str, dict] | None = None
    #: A generalised omission rule (spec ``holdout``: {"kind", "values"}) that chose the OOD set, if any.
    holdout: dict | None = None

    @property
    def hash(self) -> str:
        if self.sets is not None:  # named sets: the ids and the files, independent of the seed
            content = {"ids": self.ids, "sets": {k: v["sha256"] for k, v in self.sets.items()}}
        else:
            content = {"ids": self.ids, "omit": self.omit, "seed": self.seed, "data_hash": self.data_hash}
            if self.holdout is not None:
                content["holdout"] = self.holdout
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict:
        out = {
            "ids": self.ids,
            "omit": self.omit,
            "seed": self.seed,
            "fractions": self.fractions,
            "data_hash": self.data_hash,
            "manifest_hash": self.hash,
            "scheme": SPLIT_SCHEME,
            "counts": {k: len(v) for k, v in self.ids.items()},
        }
        if self.sets is not None:
            out["sets"] = self.sets
        if self.holdout is not None:
            out["holdout"] = self.holdout
        return out

    def write(self, path: Path) -> Path:
        write_json_atomic(path, self.to_dict())
        return path


def assign_splits(
    ids: Sequence[str],
    elements: Sequence[Iterable[str]],
    omit: Sequence[str],
    fractions: dict[str, float],
    seed: int,
    data_hash: str = "",
    ood_fraction: float = 0.1,
    *,
    ood_mask: Sequence[bool] | None = None,
    holdout: dict | None = None,
) -> SplitManifest:
    """Assign each compound to a split; raise DataError when a split would be empty.

    ``ood_mask`` (aligned with ``ids``; from :func:`holdout_mask`) marks the OOD compounds of a generalised
    ``holdout`` rule instead of ``omit``; the rule itself is recorded in the manifest."""
    if len(ids) != len(elements):
        raise ValueError("ids and elements differ in length")
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if list(ids).count(i) > 1)
        raise DataError(f"duplicate compound id {dup!r} in the data")
    omitted = set(omit)
    rng = np.random.default_rng(seed)
    order = np.argsort(np.asarray(ids, dtype=object), kind="stable")  # independent of input order
    sorted_ids = [ids[i] for i in order]
    if ood_mask is not None:
        if len(ood_mask) != len(ids):
            raise ValueError("ood_mask and ids differ in length")
        is_ood = np.array([bool(ood_mask[i]) for i in order])
    else:
        is_ood = np.array([bool(omitted & set(elements[i])) for i in order])
    if omitted or ood_mask is not None:
        ood = [i for i, o in zip(sorted_ids, is_ood) if o]
        pool = [i for i, o in zip(sorted_ids, is_ood) if not o]
        if not ood:
            rule = (f"matches holdout {holdout['kind']} {holdout['values']}" if holdout and ood_mask is not None
                    else f"contains {', '.join(sorted(omitted))}")
            raise DataError(
                f"no compound {rule}: the OOD set would be empty. "
                f"Check '{'holdout' if ood_mask is not None else 'omit'}' or use more data."
            )
        pool = [pool[i] for i in rng.permutation(len(pool))]
    else:
        share_rng = np.random.default_rng([seed, _share_key(ood_fraction)])
        shuffled = [sorted_ids[i] for i in share_rng.permutation(len(sorted_ids))]
        n_ood = max(1, int(round(ood_fraction * len(shuffled))))
        ood, pool = shuffled[:n_ood], shuffled[n_ood:]
    n = len(pool)
    n_train = int(round(fractions["train"] * n))
    n_val = int(round(fractions["val"] * n))
    split_ids = {
        "train": pool[:n_train],
        "val": pool[n_train : n_train + n_val],
        "id": pool[n_train + n_val :],
        "ood": ood,
    }
    empty = [k for k in ("train", "val", "id") if not split_ids[k]]
    if empty:
        raise DataError(
            f"split(s) {', '.join(empty)} would be empty with {n} in-distribution compounds; "
            "use more data or change the split fractions"
        )
    return SplitManifest(
        ids=split_ids, omit=sorted(omitted), seed=seed, fractions=dict(fractions), data_hash=data_hash,
        holdout=dict(holdout) if holdout is not None else None,
    )


def _share_key(ood_fraction: float) -> int:
    """The random holdout's share as a non-negative integer key of its random stream (to 1e-6)."""
    return int(round(float(ood_fraction) * 1_000_000))


#: spglib tolerance of the symmetry labels (MatFold's SpacegroupAnalyzer setting).
SYMPREC = 0.1


def compound_label(kind: str, elements: Iterable[str], structure=None):
    """The label(s) of one compound under a holdout ``kind``: a set for the element-wise kinds (element,
    group, row: held out when any is listed), one value for chemsys, spacegroup and crystal_system.
    ``structure`` (a pymatgen Structure, or a callable returning one) is needed only by the symmetry kinds."""
    from pymatgen.core.periodic_table import Element

    els = sorted(set(elements))
    if kind == "element":
        return set(els)
    if kind == "chemsys":
        return "-".join(els)
    if kind == "group":
        return {Element(e).group for e in els}
    if kind == "row":
        return {Element(e).row for e in els}
    if kind in ("spacegroup", "crystal_system"):
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        s = structure() if callable(structure) else structure
        sga = SpacegroupAnalyzer(s, symprec=SYMPREC)
        return sga.get_space_group_number() if kind == "spacegroup" else sga.get_crystal_system()
    raise ValueError(f"unknown holdout kind {kind!r}")


def holdout_mask(holdout: dict, elements: Sequence[Iterable[str]], structures: Sequence | None = None) -> list[bool]:
    """Which compounds a ``holdout`` rule ({"kind", "values"}) puts out of distribution."""
    kind, values = holdout["kind"], set(holdout["values"])
    if kind in ("spacegroup", "crystal_system") and structures is None:
        raise ValueError(f"holdout {kind} needs the structures")
    out = []
    for i, els in enumerate(elements):
        label = compound_label(kind, els, structures[i] if structures is not None else None)
        out.append(bool(label & values) if isinstance(label, set) else label in values)
    return out



def check_disjoint(ids: dict[str, Sequence[str]], paths: dict[str, object]) -> None:
    """Raise DataError, naming both files, when a compound id is in two named sets (or twice in one)."""
    owner: dict[str, str] = {}
    for name, members in ids.items():
        seen: set[str] = set()
        dup = next((i for i in members if i in seen or seen.add(i)), None)
        if dup is not None:
            raise DataError(f"{paths[name]}: compound id {dup!r} appears twice in the {name} set")
        shared = sorted(seen & owner.keys())
        if shared:
            other = owner[shared[0]]
            raise DataError(
                f"{paths[name]}: {len(shared)} compound id(s) of the {name} set are also in the {other} set "
                f"{paths[other]} (e.g. {', '.join(shared[:3])}); a compound must be in one set only"
            )
        owner.update(dict.fromkeys(members, name))


def named_set_manifest(ids: dict[str, Sequence[str]], files: dict[str, dict], seed: int = 0) -> SplitManifest:
    """The manifest of named sets: ``ids[split]`` in file order, ``files[split]`` = {"path", "sha256", ...}.

    The data hash is the sha256 of the sets' own hashes (one line ``split:sha256`` each, in split order).
    Raises DataError naming both files when an id is in two sets.
    """
    check_disjoint(ids, {k: v["path"] for k, v in files.items()})
    digest = hashlib.sha256("".join(f"{k}:{files[k]['sha256']}\n" for k in ids).encode()).hexdigest()
    return SplitManifest(ids={k: list(v) for k, v in ids.items()}, omit=[], seed=seed, fractions={},
                         data_hash=digest, sets={k: dict(files[k]) for k in ids})
