"""The random streams of an audit, named in one place.

Two seeds drive an audit:

* ``spec.seed`` (the *data seed*) decides the data: the subsample of the source, the ID/OOD split and the
  training of a model the audit trains itself. Nothing else reads it.
* ``spec.probes.seed`` (the *probe seed*, default ``spec.seed``) decides every random choice a probe makes:
  the structures subsampled for Hessians, surfaces, shift distances and uncertainty, the structure groups of
  the jackknife, the random surface directions, Lanczos start vectors, trace probes, SLQ runs, and the
  bootstrap resamples of the ratio intervals. Re-auditing one checkpoint on the same split with another
  probe seed therefore measures how much the probes' own draws move the numbers.

Each stream is the probe seed plus a fixed offset (plus ``stride × index`` for streams drawn once per
split or per query set). The offsets are those of earlier releases, so a spec without ``probes.seed``
reproduces their numbers exactly.
"""

from __future__ import annotations

from typing import Any

#: name -> (offset, stride): stream seed = probe seed + offset + stride * index
STREAMS: dict[str, tuple[int, int]] = {
    "surface": (0, 0),  # random directions and the surface's own draws
    "hessian_subsample": (0, 11),  # index: position of the split in probes.splits
    "surface_subsample": (0, 13),
    "shift_train": (17, 0),
    "shift_knn": (19, 0),
    "plane_train_subsample": (23, 0),
    "hessian_plane": (29, 0),
    "ratio_intervals": (31, 0),
    "uncertainty_queries": (41, 1),  # index: the query set
    "uncertainty_train": (43, 0),
    "uncertainty_probes": (47, 0),
    "uncertainty_scores": (0, 0),
    "calibration": (0, 0),
    "hessian_groups": (53, 1),  # index: position of the split
    "surface_groups": (61, 1),  # index: position of the split
    "perturbation": (67, 0),  # the perturbation statistics' directions (one draw shared by every split)
    "hessian": (101, 101),  # index: position of the split; the probe adds 0..5 for its own runs
}


def probe_seed(spec: Any) -> int:
    """The probe seed of an audit spec: ``spec.probes.seed``, or ``spec.seed`` when it is not set."""
    own = getattr(spec.probes, "seed", None)
    return int(spec.seed if own is None else own)


def stream(spec: Any, name: str, index: int = 0) -> int:
    """The seed of the named probe stream (see :data:`STREAMS`); ``index`` picks the split or query set."""
    try:
        offset, stride = STREAMS[name]
    except KeyError:
        raise KeyError(f"unknown random stream {name!r}; known: {', '.join(STREAMS)}") from None
    return probe_seed(spec) + offset + stride * index
