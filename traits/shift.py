"""Domain-shift diagnostics: is the OOD set inside the training domain?

When a model trained without a chemistry does badly on it, either the omitted compounds lie outside
what training covered (their targets sit in another range; they are far from every training compound),
or they lie within reach and the learned representation still breaks there. The landscape probes speak
to the second story; this module measures the first, for the ID test set and the OOD set, against the
training split:

* **Target shift** (model-free): mean, standard deviation and quantiles per split; the share of each
  split's targets outside the training range and outside its 1st-99th percentiles; the two-sample
  Kolmogorov-Smirnov statistic and the 1-D Wasserstein distance to the training targets (scipy), the
  latter also divided by the standard deviation of the training targets.
* **Composition distance** (model-free): each compound is a vector of element fractions over
  Z = 1..100, optionally followed by six fraction-weighted element properties from pymatgen
  (Pauling electronegativity, atomic radius, row, group, Mendeleev number, atomic mass), standardised
  by their training mean and standard deviation and scaled by 1/sqrt(6) so that the property block
  spans about as much as the fraction block (two unrelated compounds lie about sqrt(2) apart in each).
* **Representation distance**: the same, in the model's own pooled crystal embedding (the vector
  before the output head), each feature standardised by its training mean and standard deviation
  (a feature constant on the training split is left unscaled) so that no single unit dominates.

The distance of a compound is the *mean Euclidean distance to its k nearest training compounds*
(scikit-learn ``NearestNeighbors``); a training compound's own distance (for the histograms) leaves
itself out. Each split's distances are summarised by their median and 90th percentile, and the OOD/ID
ratio of each is reported: the ID test set was drawn like the training set, so its distances are the
yardstick of "inside the domain".

Everything here is a pure function of arrays (no files, no model): :mod:`traits.audit` gathers the
arrays and :mod:`traits.verdict` reads the result. Bad input (fewer training compounds than k,
constant targets, non-finite embeddings) is never a crash or a silent NaN: it is either a
:class:`ShiftInputError` from the low-level functions or, from :func:`compute_shift`, a line in
``ShiftResult.problems`` that the verdict turns into a finding.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np

from traits.errors import TraitsError
from traits.results import (
    DistanceSummary,
    EmbeddingDensity,
    ShiftResult,
    ShiftSamples,
    ShiftSplit,
    TargetSummary,
    json_float,
)

#: Compositions cover Z = 1..100 (the data readers drop structures with heavier elements).
N_ELEMENTS = 100
#: pymatgen ``Element`` attributes weighted by fraction in the composition vector.
ELEMENT_PROPERTIES = ("X", "atomic_radius", "row", "group", "mendeleev_no", "atomic_mass")
PROPERTY_NAMES = ("electronegativity", "atomic radius", "row", "group", "Mendeleev number", "atomic mass")
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
#: The splits compared with the training split.
COMPARED = ("id", "ood")
#: Distance spaces, in the order they are reported.
SPACES = ("composition", "embedding")


class ShiftInputError(TraitsError):
    """The inputs of a shift diagnostic cannot give a meaningful number (too few, constant, non-finite)."""


def _q(p: float) -> str:
    return f"q{round(p * 100):02d}"


# ------------------------------------------------------------------------------------------ targets


def _targets(y, name: str) -> np.ndarray:
    arr = np.asarray(y, dtype=np.float64).reshape(-1)
    if not np.isfinite(arr).all():
        raise ShiftInputError(f"the {name} targets contain {int((~np.isfinite(arr)).sum())} non-finite values")
    return arr


def target_summary(y) -> TargetSummary:
    """Count, mean, standard deviation, range and quantiles of a set of targets (None when empty)."""
    arr = _targets(y, "split")
    if arr.size == 0:
        return TargetSummary(n=0)
    qs = np.quantile(arr, QUANTILES)
    return TargetSummary(
        n=int(arr.size), mean=json_float(arr.mean()), std=json_float(arr.std()),
        min=json_float(arr.min()), max=json_float(arr.max()),
        quantiles={_q(p): json_float(v) for p, v in zip(QUANTILES, qs)},
    )


def target_shift(train_y, y) -> dict[str, float | None]:
    """How far the targets ``y`` sit from the training targets.

    Returns the share outside [min, max] and outside the 1st-99th percentiles of the training targets,
    the KS statistic and p-value, the 1-D Wasserstein distance and the Wasserstein distance in units of
    the training standard deviation (None when the training targets are constant, see
    :func:`compute_shift`). Raises :class:`ShiftInputError` when either set is empty or non-finite.
    """
    from scipy.stats import ks_2samp, wasserstein_distance

    train, arr = _targets(train_y, "training"), _targets(y, "compared")
    if train.size == 0 or arr.size == 0:
        raise ShiftInputError("target shift needs targets in both the training split and the compared split")
    lo, hi = np.quantile(train, [0.01, 0.99])
    ks = ks_2samp(arr, train)
    w = float(wasserstein_distance(arr, train))
    std = float(train.std())
    return {
        "outside_range": float(np.mean((arr < train.min()) | (arr > train.max()))),
        "outside_p01_p99": float(np.mean((arr < lo) | (arr > hi))),
        "ks_statistic": json_float(ks.statistic),
        "ks_pvalue": json_float(ks.pvalue),
        "wasserstein": json_float(w),
        "wasserstein_std": json_float(w / std) if std > 0 else None,
    }


# ------------------------------------------------------------------------------------------ compositions


@lru_cache(maxsize=1)
def element_property_table() -> np.ndarray:
    """(101, 6) table: row Z holds :data:`ELEMENT_PROPERTIES` of element Z (row 0 unused).

    A property pymatgen does not tabulate for an element (e.g. the electronegativity of He) is filled
    with that property's median over the elements that have it.
    """
    from pymatgen.core.periodic_table import Element

    table = np.full((N_ELEMENTS + 1, len(ELEMENT_PROPERTIES)), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for z in range(1, N_ELEMENTS + 1):
            el = Element.from_Z(z)
            for j, name in enumerate(ELEMENT_PROPERTIES):
                try:
                    value = getattr(el, name)
                    table[z, j] = float(value) if value is not None else np.nan
                except (AttributeError, TypeError, ValueError):
                    pass
    medians = np.nanmedian(table[1:], axis=0)
    rows, cols = np.where(np.isnan(table[1:]))
    table[rows + 1, cols] = medians[cols]
    table[0] = medians
    return table


def element_fractions(atomic_numbers: Sequence) -> np.ndarray:
    """(n, 100) element fractions of each compound, from its atoms' atomic numbers (Z = 1..100)."""
    out = np.zeros((len(atomic_numbers), N_ELEMENTS))
    for i, z in enumerate(atomic_numbers):
        z = np.asarray(z, dtype=np.int64).reshape(-1)
        if z.size == 0:
            raise ShiftInputError(f"compound {i} has no atoms")
        if z.min() < 1 or z.max() > N_ELEMENTS:
            raise ShiftInputError(f"compound {i} has an atomic number outside 1..{N_ELEMENTS}")
        out[i] = np.bincount(z, minlength=N_ELEMENTS + 1)[1:] / z.size
    return out


def _standardiser(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale of each column of ``train``; a (numerically) constant column keeps scale 1."""
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    constant = std <= 1e-12 * np.maximum(1.0, np.abs(mean))
    return mean, np.where(constant, 1.0, std)


def composition_space(atomic_numbers: Mapping[str, Sequence], with_properties: bool = True) -> dict[str, np.ndarray]:
    """Composition vectors per split (``atomic_numbers[split]``: one array of Z per compound).

    Element fractions over Z = 1..100, followed (``with_properties``) by the fraction-weighted element
    properties, standardised by the ``"train"`` split's statistics and scaled by 1/sqrt(6).
    """
    fractions = {s: element_fractions(zs) for s, zs in atomic_numbers.items()}
    if not with_properties:
        return fractions
    if "train" not in fractions:
        raise ShiftInputError("composition vectors are standardised by the training split, which is missing")
    table = element_property_table()[1:]
    props = {s: f @ table for s, f in fractions.items()}
    if len(props["train"]) == 0:
        raise ShiftInputError("the training split is empty")
    mean, scale = _standardiser(props["train"])
    weight = 1.0 / math.sqrt(table.shape[1])
    return {s: np.hstack([fractions[s], weight * (props[s] - mean) / scale]) for s in fractions}


def standardise(spaces: Mapping[str, np.ndarray], reference: str = "train") -> dict[str, np.ndarray]:
    """Every split's features standardised by the mean and standard deviation of ``reference``'s finite
    rows (a feature constant on the reference is left unscaled). Non-finite rows stay non-finite."""
    ref = np.asarray(spaces[reference], dtype=np.float64)
    finite = ref[np.isfinite(ref).all(axis=1)] if ref.ndim == 2 else ref[:0]
    if len(finite) == 0:
        raise ShiftInputError(f"the {reference} split has no compound with finite features")
    mean, scale = _standardiser(finite)
    return {s: (np.asarray(x, dtype=np.float64) - mean) / scale for s, x in spaces.items()}


# ------------------------------------------------------------------------------------------ distances


def _check(reference: np.ndarray, k: int, need: int) -> None:
    if reference.ndim != 2:
        raise ShiftInputError(f"features must be a 2-D array, got shape {reference.shape}")
    if k < 1:
        raise ShiftInputError(f"k must be at least 1, got {k}")
    if len(reference) < need:
        raise ShiftInputError(
            f"the training split has {len(reference)} compounds with finite features, fewer than the "
            f"{need} needed for k = {k} nearest neighbours; lower probes.shift.k or use more data"
        )
    if not np.isfinite(reference).all():
        raise ShiftInputError("the training features contain NaN or infinite values")


def knn_distances(reference: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """Mean Euclidean distance from each row of ``query`` to its ``k`` nearest rows of ``reference``."""
    from sklearn.neighbors import NearestNeighbors

    reference = np.asarray(reference, dtype=np.float64)
    query = np.asarray(query, dtype=np.float64)
    _check(reference, k, k)
    if query.size == 0:
        return np.zeros(0)
    if query.ndim != 2 or query.shape[1] != reference.shape[1]:
        raise ShiftInputError(f"query features of shape {query.shape} do not match the training features "
                              f"({reference.shape[1]} columns)")
    if not np.isfinite(query).all():
        raise ShiftInputError("the query features contain NaN or infinite values")
    dist, _ = NearestNeighbors(n_neighbors=k).fit(reference).kneighbors(query)
    return dist.mean(axis=1)


def knn_distances_within(reference: np.ndarray, k: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Mean distance from ``reference[rows]`` to their ``k`` nearest *other* rows of ``reference``.

    Each row is left out of its own neighbours by index (not by a zero distance, so that a duplicate
    compound elsewhere in the set still counts as a neighbour).
    """
    from sklearn.neighbors import NearestNeighbors

    reference = np.asarray(reference, dtype=np.float64)
    _check(reference, k, k + 1)
    rows = np.arange(len(reference)) if rows is None else np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return np.zeros(0)
    dist, ind = NearestNeighbors(n_neighbors=k + 1).fit(reference).kneighbors(reference[rows])
    is_self = ind == rows[:, None]
    # drop the row itself where the search returned it, else the farthest of the k + 1 (ties at 0)
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k)
    keep = np.ones_like(dist, dtype=bool)
    keep[np.arange(len(rows)), drop] = False
    return dist[keep].reshape(len(rows), k).mean(axis=1)


def summarise_distances(d, n_excluded: int = 0) -> DistanceSummary:
    arr = np.asarray(d, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        return DistanceSummary(n=0, n_excluded=n_excluded)
    return DistanceSummary(n=int(arr.size), median=json_float(np.median(arr)), p90=json_float(np.quantile(arr, 0.9)),
                           mean=json_float(arr.mean()), n_excluded=n_excluded)


def ratio(ood: float | None, idv: float | None) -> float | None:
    if ood is None or idv is None or not math.isfinite(ood) or not math.isfinite(idv) or idv <= 0:
        return None
    value = ood / idv
    return value if math.isfinite(value) else None


# ------------------------------------------------------------------------------------------ everything


def _pick(n: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    """The positions of a seeded subsample of at most ``limit`` of ``n`` values, in their order (all when
    ``n <= limit``, drawing nothing from ``rng``)."""
    if n > limit:
        return np.sort(rng.choice(n, size=limit, replace=False))
    return np.arange(n)


def _sample(values: np.ndarray, limit: int, rng: np.random.Generator) -> list[float]:
    return [float(f"{v:.6g}") for v in values[_pick(len(values), limit, rng)]]


def _sample_with_ids(values: np.ndarray, ids: Sequence[str] | None, limit: int,
                     rng: np.random.Generator) -> tuple[list[float], list[str]]:
    """A subsample of ``values`` (as :func:`_sample`, the same draw) and the ids of its compounds, in the same
    order; no ids ([]) when ``ids`` is None or does not name every value."""
    keep = _pick(len(values), limit, rng)
    named = ids is not None and len(ids) == len(values)
    return [float(f"{v:.6g}") for v in values[keep]], ([str(ids[i]) for i in keep] if named else [])


SPACE_LABELS = {"composition": "composition", "embedding": "the model's embedding"}


def _target_splits(
    targets: Mapping[str, Sequence[float]], max_points: int, rng: np.random.Generator, notes: list[str]
) -> tuple[dict[str, ShiftSplit], dict[str, ShiftSamples], dict[str, np.ndarray]]:
    """Per-split target summaries and samples, finite targets only (a non-finite one is noted and left out)."""
    splits: dict[str, ShiftSplit] = {}
    samples: dict[str, ShiftSamples] = {}
    ys: dict[str, np.ndarray] = {}
    for s in ("train", *COMPARED) if "train" in targets else COMPARED:
        arr = np.asarray(targets.get(s, []), dtype=np.float64).reshape(-1)
        bad = ~np.isfinite(arr)
        if bad.any():
            notes.append(f"{int(bad.sum())} {s} targets are NaN or infinite and were left out of the target shift")
            arr = arr[~bad]
        ys[s] = arr
        splits[s] = ShiftSplit(targets=target_summary(arr))
        samples[s] = ShiftSamples(targets=_sample(arr, max_points, rng))
    return splits, samples, ys


def _finite_features(
    by_split: Mapping[str, np.ndarray], label: str, notes: list[str]
) -> tuple[dict[str, np.ndarray], dict[str, int], dict[str, np.ndarray]]:
    """Each split's rows with a finite vector in one space, how many were left out (noted), and the positions
    of the rows kept (in ``by_split[s]``)."""
    feats, excluded, kept = {}, {}, {}
    for s, x in by_split.items():
        x = np.asarray(x, dtype=np.float64)
        x = x.reshape(len(x), -1) if x.ndim != 2 else x
        finite = np.isfinite(x).all(axis=1) if x.size else np.ones(len(x), dtype=bool)
        feats[s], excluded[s], kept[s] = x[finite], int((~finite).sum()), np.flatnonzero(finite)
        if excluded[s]:
            notes.append(f"{excluded[s]} of {len(x)} {s} compounds have a NaN or infinite vector in {label}: "
                         "they were left out of its distances")
    return feats, excluded, kept


def _space_distances(
    name: str,
    by_split: Mapping[str, np.ndarray],
    splits: dict[str, ShiftSplit],
    samples: dict[str, ShiftSamples],
    *,
    k: int,
    max_points: int,
    rng: np.random.Generator,
    notes: list[str],
    ids: Mapping[str, Sequence[str]] | None = None,
) -> int:
    """Fill the k-NN distance summaries and samples of one space; returns its usable training compounds.

    ``ids[split]``: the id of each row of ``by_split[split]``; the sample of a compared split (ID test, OOD: the
    splits whose compounds the report lists) whose ids name every row stores the id of each distance beside it
    (``samples[split].ids[name]``), else none; the training sample stores none (nothing reads them)."""
    label = SPACE_LABELS.get(name, name)
    feats, excluded, kept = _finite_features(by_split, label, notes)
    ids = ids or {}

    def ids_of(s: str) -> list[str] | None:
        """The ids of ``feats[s]``'s rows; None unless the split's ids name each of its rows."""
        given = ids.get(s)
        if given is None or len(given) != len(by_split[s]):
            return None
        return [str(given[i]) for i in kept[s]]

    def store(s: str, d: np.ndarray, row_ids: list[str] | None) -> None:
        values, named = _sample_with_ids(d, row_ids, max_points, rng)
        samples[s].distances[name] = values
        if named:
            samples[s].ids[name] = named

    train_x = feats["train"]
    if len(train_x) < k + 1:
        notes.append(f"the training split has {len(train_x)} compounds with a finite vector in {label}, "
                     f"too few for k = {k} nearest neighbours: distances in {label} were not measured")
        return len(train_x)
    rows = np.arange(len(train_x))
    if len(rows) > max_points:
        rows = np.sort(rng.choice(len(rows), size=max_points, replace=False))
    d_train = knn_distances_within(train_x, k, rows)
    splits["train"].distances[name] = summarise_distances(d_train, excluded["train"])
    store("train", d_train, None)
    for s in COMPARED:
        if s not in feats:
            continue
        d = knn_distances(train_x, feats[s], k)
        splits[s].distances[name] = summarise_distances(d, excluded[s])
        store(s, d, ids_of(s))
    return len(train_x)


def _shift_ratios(splits: Mapping[str, ShiftSplit], spaces: Mapping) -> dict[str, float | None]:
    """OOD/ID ratios of the distance medians and 90th percentiles per space, and of the target shift."""
    ratios: dict[str, float | None] = {}
    i, o = splits["id"], splits["ood"]
    for name in spaces:
        di, do = i.distances.get(name), o.distances.get(name)
        if di is None or do is None:
            continue
        ratios[f"{name}_knn_ratio"] = ratio(do.median, di.median)
        ratios[f"{name}_knn_p90_ratio"] = ratio(do.p90, di.p90)
    if i.wasserstein is not None or o.wasserstein is not None:
        ratios["target_wasserstein_ratio"] = ratio(o.wasserstein, i.wasserstein)
        ratios["target_ks_ratio"] = ratio(o.ks_statistic, i.ks_statistic)
    return ratios


def compute_shift(
    targets: Mapping[str, Sequence[float]],
    spaces: Mapping[str, Mapping[str, np.ndarray] | None] | None = None,
    *,
    k: int = 5,
    seed: int = 0,
    max_points: int = 2000,
    composition_features: str = "",
    n_train_total: int | None = None,
    thresholds: Mapping[str, float] | None = None,
    problems: Sequence[str] = (),
    density_components: int = 0,
    ids: Mapping[str, Sequence[str]] | None = None,
) -> ShiftResult:
    """Every diagnostic for the ``id`` and ``ood`` splits against ``train``.

    ``targets[split]``: the targets of each of ``train``, ``id``, ``ood`` (without a ``train`` key, when no
    training set is known, only the ID and OOD target summaries are filled). ``spaces[name][split]``: the
    (n, d) features of each compound in a distance space (``composition``, ``embedding``), already
    standardised; ``None`` for a space that could not be measured. Rows with a non-finite feature are
    left out of that space (counted, and recorded as a problem). Bad inputs never raise: each becomes a
    line of ``problems`` and the affected numbers stay ``None``. With ``ids[split]`` (the id of each row of
    ``spaces[name][split]``, the same compounds in every space) the stored distance samples of the ID test and
    OOD sets keep the id of the compound of each distance (``samples[split].ids[name]``); a split without ids, or
    with ids that do not name every row, stores none, and so does the training sample.

    Args:
        targets: the targets of each split, keyed ``train``, ``id``, ``ood``.
        spaces: the standardised features of each split per distance space (``None`` for an unmeasured one).
        k: nearest training neighbours averaged in each distance.
        seed: seed of the subsampling of training rows and of the stored samples.
        max_points: the most training rows searched, and the most values stored per sample.
        composition_features: how the composition vectors were made (recorded in the result).
        n_train_total: the size of the whole training split (default: the number of training targets).
        thresholds: the gate thresholds to record in the result.
        problems: problems found before this call, kept first in the result's ``problems``.
        density_components: fit the embedding density (:func:`embedding_density`) with up to this many
            mixture components; 0: not measured.
        ids: the id of each compound (row of the spaces' features) per split, for the stored samples.

    Returns:
        The :class:`~traits.results.ShiftResult` of every split, ratio and sample.
    """
    rng = np.random.default_rng(seed)
    notes = list(problems)
    # no "train" key at all (named sets without a training set): only the per-split target summaries;
    # the caller's ``problems`` say why nothing is measured against training
    train_given = "train" in targets
    splits, samples, ys = _target_splits(targets, max_points, rng, notes)
    train_y = ys.get("train", np.zeros(0))
    if not train_given:
        spaces = {}
    else:
        _fill_target_shift(train_y, ys, splits, notes)

    n_train_used = 0
    for name, by_split in (spaces or {}).items():
        if by_split is None or "train" not in by_split:
            continue
        used = _space_distances(name, by_split, splits, samples, k=k, max_points=max_points, rng=rng, notes=notes,
                                ids=ids)
        n_train_used = max(n_train_used, used)

    ratios = _shift_ratios(splits, spaces or {})
    density = None
    emb = (spaces or {}).get("embedding")
    if density_components and emb is not None and "train" in emb:
        density = embedding_density(emb, density_components, seed=seed, max_points=max_points, notes=notes)
        if density is not None and density.nll.get("ood") is not None and density.nll.get("id") is not None:
            ratios["embedding_density_gap"] = float(density.nll["ood"] - density.nll["id"])
    return ShiftResult(
        k=k, composition_features=composition_features, n_train=n_train_used,
        n_train_total=int(n_train_total if n_train_total is not None else train_y.size),
        splits=splits, ratios=ratios, samples=samples, thresholds=dict(thresholds or {}),
        problems=list(dict.fromkeys(notes)), density=density,
    )


def _fill_target_shift(train_y: np.ndarray, ys: Mapping[str, np.ndarray], splits: dict, notes: list[str]) -> None:
    """Each compared split's target shift against the training targets (:func:`target_shift`), or the note that
    says why it cannot be measured."""
    if train_y.size == 0:
        notes.append("the training split has no targets: the target shift was not measured")
    elif float(train_y.std()) == 0.0:
        notes.append(f"the training targets are constant (every one is {train_y[0]:.4g}): they have no spread, "
                     "so the spread-scaled target shift is undefined and any other value lies outside their range")
    for s in COMPARED:
        if train_y.size and ys[s].size:
            for key, value in target_shift(train_y, ys[s]).items():
                setattr(splits[s], key, value)


def embedding_density(by_split: Mapping[str, np.ndarray], max_components: int, *, seed: int = 0,
                      max_points: int = 2000, notes: list[str] | None = None) -> EmbeddingDensity | None:
    """The embedding density of each split under a Gaussian mixture fitted to the training embeddings.

    Mixtures of 1..``max_components`` full-covariance components (scikit-learn, k-means start, seeded,
    a 1e-6 ridge on each covariance) are fitted to at most ``max_points`` training rows (a seeded subsample) and
    the one with the lowest BIC is kept; each split's value is its mean negative log-likelihood per compound,

        NLL(split) = −(1/n) Σ_i log p(x_i),

    so a larger value means the split lies where the training data are sparse. Tan et al. (2023) found a
    Gaussian-mixture density on a model's latent space the most reliable of the distance and density
    baselines out of domain. Rows with a non-finite feature are left out; with fewer training rows than
    twice the dimension (plus one) nothing is fitted and a note says so."""
    from sklearn.mixture import GaussianMixture

    rows = {s: np.asarray(x, dtype=float) for s, x in by_split.items()}
    rows = {s: x[np.all(np.isfinite(x), axis=1)] if x.ndim == 2 and x.size else np.zeros((0, 1))
            for s, x in rows.items()}
    train = rows.get("train", np.zeros((0, 1)))
    if train.shape[0] < 2 * train.shape[1] + 1:
        if notes is not None:
            notes.append(f"the embedding density was not fitted: {train.shape[0]} training rows for a "
                         f"{train.shape[1]}-dimensional embedding")
        return None
    rng = np.random.default_rng(seed + 7)
    if train.shape[0] > max_points:
        train = train[rng.choice(train.shape[0], size=max_points, replace=False)]
    best, bics = None, []
    for n in range(1, min(max_components, train.shape[0] // 2) + 1):
        gm = GaussianMixture(n_components=n, covariance_type="full", reg_covar=1e-6, random_state=seed, n_init=1)
        gm.fit(train)
        bics.append(float(gm.bic(train)))
        if best is None or bics[-1] <= min(bics):
            best = gm
    nll = {s: (float(-best.score(x)) if x.shape[0] else None) for s, x in rows.items() if s != "train"}
    nll["train"] = float(-best.score(train))
    return EmbeddingDensity(n_components=int(best.n_components), bic=bics, n_train=int(train.shape[0]), nll=nll)
