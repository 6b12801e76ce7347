"""Chemistry-omission splits: train / val / ID test / OOD, deterministic by seed.

OOD is every compound that contains an omitted element. The remaining (in-distribution) pool is
shuffled with the seed and cut into train / val / ID test by the spec's fractions. With nothing
omitted (a random-split baseline) a random ``ood_fraction`` of the pool is held out as the "OOD" set.
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


@dataclass(frozen=True)
class SplitManifest:
    """Ids per split, with the settings and data hash that produced them."""

    ids: dict[str, list[str]]
    omit: list[str]
    seed: int
    fractions: dict[str, float]
    data_hash: str

    @property
    def hash(self) -> str:
        payload = json.dumps(
            {"ids": self.ids, "omit": self.omit, "seed": self.seed, "data_hash": self.data_hash},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def to_dict(self) -> dict:
        return {
            "ids": self.ids,
            "omit": self.omit,
            "seed": self.seed,
            "fractions": self.fractions,
            "data_hash": self.data_hash,
            "manifest_hash": self.hash,
            "counts": {k: len(v) for k, v in self.ids.items()},
        }

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
) -> SplitManifest:
    """Assign each compound to a split; raise DataError when a split would be empty."""
    if len(ids) != len(elements):
        raise ValueError("ids and elements differ in length")
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if list(ids).count(i) > 1)
        raise DataError(f"duplicate compound id {dup!r} in the data")
    omitted = set(omit)
    rng = np.random.default_rng(seed)
    order = np.argsort(np.asarray(ids, dtype=object), kind="stable")  # independent of input order
    sorted_ids = [ids[i] for i in order]
    is_ood = np.array([bool(omitted & set(elements[i])) for i in order])
    if omitted:
        ood = [i for i, o in zip(sorted_ids, is_ood) if o]
        pool = [i for i, o in zip(sorted_ids, is_ood) if not o]
        if not ood:
            raise DataError(
                f"no compound contains {', '.join(sorted(omitted))}: the OOD set would be empty. "
                "Check 'omit' or use more data."
            )
        pool = [pool[i] for i in rng.permutation(len(pool))]
    else:
        shuffled = [sorted_ids[i] for i in rng.permutation(len(sorted_ids))]
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
        ids=split_ids, omit=sorted(omitted), seed=seed, fractions=dict(fractions), data_hash=data_hash
    )
