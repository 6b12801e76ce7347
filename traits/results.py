"""The result of one audit: every number, schema-versioned, written atomically to ``results.json``.

Reports and gates read only an :class:`AuditResult`, so a past audit can be re-rendered or re-gated
without the model or the data. Non-finite losses (NaN, inf) are stored as ``null``: grids and curves
therefore hold ``float | None``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from traits.errors import TraitsError
from traits.files import write_text_atomic

#: Minor versions add optional fields only: a reader of "1.x" reads every "1.y" (see :func:`load_result`);
#: the fields of a newer minor version that this reader does not know are ignored.
SCHEMA_VERSION = "1.10"
SPLIT_LABELS = {"train": "train", "val": "validation", "id": "ID test", "ood": "OOD"}

Level = Literal["pass", "warn", "fail"]
MaybeFloat = float | None


def json_float(x) -> float | None:
    """A JSON-ready number: None for None, NaN and ±inf, else ``float(x)``."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def nan_array(values) -> np.ndarray:
    """Stored numbers (a list, or a list of lists, of float | None; None marks a non-finite value) as a
    float array with NaN for None."""
    if len(values) and np.ndim(values[0]) > 0:
        return np.array([[np.nan if v is None else float(v) for v in row] for row in values], dtype=float)
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


class _Result(BaseModel):
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="null")


class Provenance(_Result):
    traits_version: str
    versions: dict[str, str] = Field(default_factory=dict, description="python, torch, torch_geometric, ...")
    platform: str = ""
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    probe_seed: int | None = Field(None, description="seed of the probes' random choices (probes.seed, default "
                                   "the spec's seed; None in results written before 1.6)")
    started_at: str = ""
    wall_seconds: dict[str, float] = Field(default_factory=dict, description="per stage of the audit")
    command: str = ""
    spec_path: str = ""
    checkpoint_path: str | None = None
    checkpoint_sha256: str | None = None
    checkpoint_format: str | None = None
    checkpoint_metadata: dict[str, Any] = Field(default_factory=dict)
    data_source: str = ""
    data_hash: str = ""
    manifest_hash: str = ""
    split_scheme: int = Field(1, description="how the split was drawn (traits.data.splits.SPLIT_SCHEME); 1 for "
                              "results written before it was recorded")
    threads: dict[str, Any] = Field(default_factory=dict, description="torch threads and the OpenMP wait policy "
                                    "chosen at start, with why (traits.threads); empty in results written before")
    compile: dict[str, Any] = Field(default_factory=dict, description="probes.surface.compile: auto, whether the "
                                    "surface loss was compiled and why (planned evaluations, measured seconds of one, "
                                    "expected saving and compile cost; schema 1.8); empty otherwise")
    fast_forward: dict[str, Any] = Field(default_factory=dict, description="per probed split, how the surface "
                                         "losses were evaluated: whether the model's cheaper forward was used "
                                         "(used), its largest relative difference to the plain forward at θ "
                                         "(max_relative_difference) and how many atoms each atom it computed stood "
                                         "for (atoms_per_computed_atom, traits.models.orbits; schema 1.9); empty "
                                         "otherwise")
    kernels: dict[str, Any] = Field(default_factory=dict, description="the CPU kernels the numbers came from: BLAS "
                                    "libraries and their kernel architecture, NumPy's SIMD targets, PyTorch's CPU "
                                    "capability and the variables pinning them (traits.kernels; schema 1.10); empty "
                                    "in results written before")


class SplitStats(_Result):
    count: int
    target_mean: MaybeFloat = None
    target_std: MaybeFloat = None
    target_min: MaybeFloat = None
    target_max: MaybeFloat = None
    with_omitted: dict[str, int] = Field(default_factory=dict)
    n_elements: int = 0
    elements_unseen_in_train: list[str] = Field(default_factory=list)


class Accuracy(_Result):
    n: int
    mae: MaybeFloat
    rmse: MaybeFloat
    r2: MaybeFloat
    ids: list[str] = Field(default_factory=list)
    predictions: list[MaybeFloat] = Field(default_factory=list)
    targets: list[float] = Field(default_factory=list)
    #: reduced formula of each compound, in the order of ``ids`` (empty in results written before 1.6)
    formulas: list[str] = Field(default_factory=list)


class TraceEstimate(_Result):
    """One trace estimate. ``stderr``: its Monte-Carlo error for these structures (``df`` degrees of freedom);
    ``sampling_stderr``: how it would move with another draw of them (jackknife over ``sampling_df`` + 1
    structure groups; schema 1.6, None for estimators without one). ``gauss_newton``: the exact Gauss-Newton
    part of a "gauss-newton+hutchinson" estimate (traits.probes.sampling)."""

    method: Literal["hutchinson", "hutch++", "gauss-newton+hutchinson"]
    estimate: MaybeFloat
    stderr: MaybeFloat
    n_hvp: int
    df: int | None = None
    sampling_stderr: MaybeFloat = None
    sampling_df: int | None = None
    gauss_newton: MaybeFloat = None
    leave_out: list[MaybeFloat] = Field(default_factory=list, description="the estimate with each structure group "
                                        "left out (jackknife; paired comparisons read it)")
    residual_samples: list[MaybeFloat] = Field(default_factory=list, description="per probe, zᵀHz − zᵀGz (the "
                                               "Monte-Carlo part; paired comparisons with the same probes read it)")


class Jackknife(_Result):
    """A delete-a-group jackknife over the structures of a Hessian sample (traits.probes.sampling): the
    statistic, its value with each group left out, the standard error and its degrees of freedom (G − 1)."""

    value: MaybeFloat
    leave_out: list[MaybeFloat] = Field(default_factory=list)
    stderr: MaybeFloat = None
    df: int = 0
    n_hvp: int = 0


class Density(_Result):
    grid: list[float]
    density: list[float]
    nodes: list[list[float]] = Field(default_factory=list)
    weights: list[list[float]] = Field(default_factory=list)


class EigenRun(_Result):
    """One Lanczos run's certified pairs (``traits.probes.hessian``): per pair the Ritz value, its verified
    relative residual ||Hv - θv|| / |θ|, the absolute residual (an eigenvalue lies within it of the
    value), the accuracy it had to reach, and whether it did (``converged``: true only when earned)."""

    values: list[MaybeFloat] = Field(default_factory=list)
    residuals: list[MaybeFloat] = Field(default_factory=list)
    abs_residuals: list[MaybeFloat] = Field(default_factory=list)
    accuracy: list[MaybeFloat] = Field(default_factory=list)
    converged: list[bool] = Field(default_factory=list)
    n_hvp: int = 0
    n_steps: int = 0


class HessianResult(_Result):
    backend: str
    n_samples: int
    loss: MaybeFloat
    top_eigenvalues: list[float]
    residuals: list[float] = Field(default_factory=list)
    converged: bool = True
    n_hvp: int = 0
    lambda_min: MaybeFloat = None
    top: EigenRun | None = Field(None, description="the top-k run, pair by pair (schema 1.2)")
    bottom: EigenRun | None = Field(None, description="the λ_min run (schema 1.2); None for backends without one")
    traces: list[TraceEstimate] = Field(default_factory=list)
    density: Density | None = None
    seconds: float = 0.0
    sample_ids: list[str] = Field(default_factory=list, description="ids of the structures the Hessian was "
                                  "computed on, in sample order (schema 1.6)")
    groups: list[list[int]] = Field(default_factory=list, description="the structure groups of the jackknife, "
                                    "as positions in the Hessian's sample (schema 1.6)")
    lambda_max_jackknife: Jackknife | None = Field(None, description="λ_max's sampling error: delete-a-group "
                                                   "jackknife in the top-k Ritz space (schema 1.6)")

    @property
    def lambda_max_certified(self) -> bool:
        if self.top is not None:
            return bool(self.top.converged and self.top.converged[0])
        return bool(self.converged and self.top_eigenvalues)

    @property
    def lambda_min_certified(self) -> bool:
        return bool(self.bottom is not None and self.bottom.converged and self.bottom.converged[0])


class SurfaceResult(_Result):
    """1D curves and 2D grids of the loss, all splits on the same directions."""

    span: float
    tolerance: float
    include_bias_and_norm: bool = False
    seed: int = 0
    alphas_1d: list[float]
    curves: dict[str, list[list[MaybeFloat]]] = Field(
        default_factory=dict, description="split -> one curve per direction"
    )
    alphas_2d: list[float] = Field(default_factory=list)
    grids: dict[str, list[list[MaybeFloat]]] = Field(default_factory=dict, description="split -> [α][β]")
    zoom_alphas_2d: list[float] = Field(default_factory=list, description="axis of the zoomed 2D grid around θ, "
                                        "evaluated when the basin spans fewer than 5 cells of the main one (1.6)")
    zoom_grids: dict[str, list[list[MaybeFloat]]] = Field(default_factory=dict, description="split -> [α][β] on "
                                                          "the zoomed axis, the same directions as grids")
    n_samples: dict[str, int] = Field(default_factory=dict)
    radius: dict[str, list[MaybeFloat]] = Field(
        default_factory=dict, description="split -> robust radius per 1D direction, refined by bisection"
    )
    radius_censored: dict[str, list[bool]] = Field(
        default_factory=dict, description="split -> per direction: the loss never left tolerance (lower bound)"
    )
    radius_jackknife: dict[str, Jackknife] = Field(
        default_factory=dict, description="split -> the robust radius's jackknife over structure groups (the "
        "interpolated radius; traits.probes.sampling.radius_jackknife; schema 1.6)")
    refine_evaluations: int = 0
    landscape: dict[str, LandscapeSplit] = Field(
        default_factory=dict, description="split -> discontinuities and loss entropy (traits.probes.landscape)")
    plane: dict[str, Any] | None = Field(None, description="Hessian-eigenvector plane: eigenvalues, residuals")
    plane_grids: dict[str, list[list[MaybeFloat]]] = Field(
        default_factory=dict, description="split -> [α][β] on the (d_max, d_min) eigenvector plane"
    )
    points_per_second: MaybeFloat = None
    batched: bool = True
    band: MaybeFloat = Field(
        None, description="the absolute loss rise (loss units) the radius, sharpness and basin areas are measured "
        "against, one for every split: tolerance × the ID loss at θ (schema 1.5; None in older files, whose band "
        "was tolerance × each split's own loss)")
    gradient_curves: dict[str, list[dict[str, Any]]] = Field(
        default_factory=dict, description="split -> per 1D direction: loss, ‖∇θ L‖, slopes and trapezoid residuals "
        "at alphas_1d (probes.surface.gradient_1d; schema 1.7)")
    gradient_grids: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="split -> ‖∇θ L‖ on the gradient grid (probes.surface.gradient_points_2d)")
    perturbations: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="split -> random-perturbation statistics (probes.surface.perturbations)")
    topology: dict[str, dict[str, dict[str, Any]]] = Field(
        default_factory=dict, description="'grids' / 'plane_grids' -> split -> the surface's topology: persistence "
        "pairs, minima, SMAD (traits.probes.topology; schema 1.5)")


class SplitMetrics(_Result):
    """Per-split numbers the ratios and gates read. An eigenvalue that was not certified is None here (its
    raw value stays in ``hessian``); ``*_abs_residual`` bound its error."""

    loss: MaybeFloat = None
    lambda_max: MaybeFloat = None
    lambda_max_abs_residual: MaybeFloat = None
    lambda_min: MaybeFloat = None
    lambda_min_abs_residual: MaybeFloat = None
    trace: MaybeFloat = None
    trace_stderr: MaybeFloat = None
    robust_radius: MaybeFloat = None
    robust_radius_censored: bool = False
    robust_radius_resolution: MaybeFloat = Field(None, description="half-width of the radius' bracket")
    radius_per_direction: list[MaybeFloat] = Field(default_factory=list)
    sharpness: MaybeFloat = None
    basin_area: MaybeFloat = None
    plane_basin_area: MaybeFloat = Field(
        None, description="basin area fraction on the Hessian-eigenvector plane (surface.directions: hessian)"
    )
    nan_fraction: MaybeFloat = None
    nonconvexity: MaybeFloat = Field(None, description="|λ_min| / λ_max (0 when λ_min ≥ 0)")
    first_jump: MaybeFloat = Field(None, description="smallest perturbation scale at which the loss jumps")
    smooth_to: MaybeFloat = Field(None, description="the sampled loss is smooth at least this far from θ")
    n_jumps: int | None = None
    entropy: MaybeFloat = Field(None, description="loss-landscape entropy (Vita & Schwalbe-Koda 2023)")
    smad: MaybeFloat = Field(None, description="SMAD of the random-plane 2D surface (surface.topology; schema 1.5)")
    smad_normalized: MaybeFloat = Field(None, description="that SMAD over the surface's loss range")
    plane_smad: MaybeFloat = Field(None, description="SMAD of the Hessian-eigenvector-plane surface")
    loss_grad_norm: MaybeFloat = Field(None, description="‖∇θ L‖ at θ (schema 1.7; probes.surface.gradient_1d)")
    loss_grad_norm_median: MaybeFloat = Field(None, description="median ‖∇θ L‖ over the gradient points")
    trapezoid_max: MaybeFloat = Field(None, description="largest |ΔL − h·(s_i + s_{i+1})/2| over the 1D intervals")
    perturbation_curvature: MaybeFloat = Field(None, description="mean (D⁺ + D⁻)/s² over the random directions")
    perturbation_exceed_fraction: MaybeFloat = Field(None, description="share of L(θ ± s d_k) above the band")
    below_resolution: dict[str, float] = Field(
        default_factory=dict, description="metric -> its upper bound, for a metric under the grid's resolution (a "
        "radius shorter than one grid step, a basin of one grid point): the metric itself is None (schema 1.5)")


class TargetSummary(_Result):
    """Distribution of one split's targets (physical units)."""

    n: int = 0
    mean: MaybeFloat = None
    std: MaybeFloat = None
    min: MaybeFloat = None
    max: MaybeFloat = None
    quantiles: dict[str, MaybeFloat] = Field(
        default_factory=dict, description="'q01' ... 'q99' -> the 1st ... 99th percentile"
    )


class DistanceSummary(_Result):
    """Per-compound k-nearest-training-neighbour distances of one split, summarised."""

    n: int = 0
    median: MaybeFloat = None
    p90: MaybeFloat = None
    mean: MaybeFloat = None
    n_excluded: int = Field(0, description="compounds left out (non-finite embedding or features)")


class ShiftSplit(_Result):
    """One split against the training split: target shift and distances to training compounds."""

    targets: TargetSummary = Field(default_factory=TargetSummary)
    outside_range: MaybeFloat = Field(None, description="share of targets outside [train min, train max]")
    outside_p01_p99: MaybeFloat = Field(
        None, description="share of targets outside the training 1st-99th percentiles"
    )
    ks_statistic: MaybeFloat = Field(None, description="two-sample Kolmogorov-Smirnov statistic vs train")
    ks_pvalue: MaybeFloat = None
    wasserstein: MaybeFloat = Field(None, description="1-D Wasserstein distance to the train targets (units)")
    wasserstein_std: MaybeFloat = Field(None, description="wasserstein / standard deviation of train targets")
    distances: dict[str, DistanceSummary] = Field(
        default_factory=dict, description="space ('composition', 'embedding') -> kNN distance summary"
    )


class ShiftSamples(_Result):
    """Per-compound values for the histograms (a seeded subsample when a split is large).

    ``ids[space]`` names the compound of each value of ``distances[space]``, in the same order (schema 1.8; each
    space has its own subsample and its own compounds left out, so each has its own ids). Only the ID test and
    OOD samples store ids (the training sample's are never read); a space without ids (results before 1.8)
    cannot be joined to a compound."""

    targets: list[float] = Field(default_factory=list)
    distances: dict[str, list[float]] = Field(default_factory=dict)
    ids: dict[str, list[str]] = Field(default_factory=dict, description="space -> the id of the compound of each "
                                      "distance, in the order of distances[space] (schema 1.8; empty before)")


class EmbeddingDensity(_Result):
    """Each split's mean negative log-likelihood under a Gaussian mixture fitted to the training embeddings
    (:func:`traits.shift.embedding_density`; schema 1.7)."""

    n_components: int
    bic: list[float] = Field(default_factory=list, description="BIC of the mixtures of 1, 2, ... components")
    n_train: int = 0
    nll: dict[str, MaybeFloat] = Field(default_factory=dict, description="split -> mean −log p per compound")


class ShiftResult(_Result):
    """Domain-shift diagnostics: is the OOD set inside the training domain? (see :mod:`traits.shift`)"""

    k: int
    composition_features: str = ""
    n_train: int = Field(0, description="training compounds the distances are measured against")
    n_train_total: int = 0
    splits: dict[str, ShiftSplit] = Field(default_factory=dict, description="train (self excluded), id, ood")
    ratios: dict[str, MaybeFloat] = Field(default_factory=dict, description="OOD / ID of each distance")
    samples: dict[str, ShiftSamples] = Field(default_factory=dict)
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="the verdict rule's thresholds in force when it was measured"
    )
    problems: list[str] = Field(default_factory=list, description="bad inputs met; each becomes a finding")
    density: EmbeddingDensity | None = Field(None, description="the embedding density (schema 1.7)")


class UncertaintyPoints(_Result):
    """A seeded subsample of the compounds scored: the method's uncertainty u (before recalibration) and the
    absolute error, finite pairs only; ``ids`` names the compound of each pair, in the same order (schema 1.8;
    empty before, and then the points cannot be joined to a compound)."""

    u: list[float] = Field(default_factory=list)
    abs_err: list[float] = Field(default_factory=list)
    ids: list[str] = Field(default_factory=list, description="the id of the compound of each point, in the order "
                           "of u and abs_err (schema 1.8; empty before)")


class UncertaintySplit(_Result):
    """How one method's uncertainty tracks the errors on one split (:func:`traits.probes.uncertainty.score_method`)."""

    spearman: MaybeFloat = Field(None, description="Spearman ρ of the uncertainty with the absolute error")
    mean_u: MaybeFloat = None
    calibration: dict[str, Any] = Field(default_factory=dict, description="coverage, z spread, miscalibration "
                                        "area, expected/observed curve after recalibration on validation")
    points: UncertaintyPoints = Field(default_factory=UncertaintyPoints)


class UncertaintyMethod(_Result):
    """One uncertainty method scored on ID and OOD, with the OOD/ID ratios of its mean and of the error."""

    recalibration: dict[str, Any] = Field(default_factory=dict, description="σ = √(a² + b²u²) fitted on val")
    id: UncertaintySplit | None = None
    ood: UncertaintySplit | None = None
    u_ratio: dict[str, Any] = Field(default_factory=dict, description="OOD/ID mean uncertainty, bootstrap interval")
    error_ratio: dict[str, Any] = Field(default_factory=dict, description="OOD/ID MAE, bootstrap interval")


class UncertaintyResult(_Result):
    """Per-compound uncertainty methods scored against the errors (``probes.uncertainty``; typed in schema 1.7)."""

    methods: dict[str, UncertaintyMethod] = Field(default_factory=dict, description="hessian_wag, laplace, "
                                                  "last_layer, knn -> scores")
    info: dict[str, Any] = Field(default_factory=dict, description="settings and diagnostics of each method")
    n: dict[str, int] = Field(default_factory=dict, description="compounds scored per split (val, id, ood)")
    problems: list[str] = Field(default_factory=list)


class LandscapeSplit(_Result):
    """Discontinuities and entropy of one split's surfaces (:class:`traits.probes.landscape.LandscapeStats`)."""

    first_jump: MaybeFloat = Field(None, description="smallest perturbation scale at which the loss jumps")
    smooth_to: MaybeFloat = Field(None, description="the sampled loss is smooth at least this far from θ")
    n_jumps: int = 0
    extra_evaluations: int = 0
    entropy: MaybeFloat = None
    entropy_relative: MaybeFloat = None
    temperature: MaybeFloat = None
    jumps_1d: list[list[float]] = Field(default_factory=list, description="per 1D direction, the signed α of "
                                        "its counting jumps, nearest θ first")


class LabelFreeSplit(_Result):
    """One split's label-free probes (:mod:`traits.probes.labelfree`; schema 1.7): the Gauss-Newton curvature of
    the model's own predictions, exact from the per-structure gradients, on the Hessian probe's sample; the
    prediction sharpness and the label-free 2D surface on the surfaces' sample."""

    n_samples: int = 0
    sample_ids: list[str] = Field(default_factory=list, description="ids of the Hessian sample, in sample order")
    sample_formulas: list[str] = Field(default_factory=list, description="their reduced formulas, in the same "
                                       "order (schema 1.8)")
    sample_predictions: list[MaybeFloat] = Field(default_factory=list, description="the model's prediction for "
                                                 "each, in the same order (schema 1.8)")
    gn_top_eigenvalues: list[float] = Field(default_factory=list, description="top eigenvalues of (2/N) JᵀJ")
    gn_trace: MaybeFloat = Field(None, description="tr((2/N) JᵀJ) = (2/N) Σ ‖∇θ f_i‖², exact")
    gn_lambda_jackknife: Jackknife | None = Field(None, description="λ_max's delete-a-group jackknife over the "
                                                  "Hessian sample's structure groups")
    gn_trace_jackknife: Jackknife | None = None
    grad_norms: list[float] = Field(default_factory=list, description="‖∇θ f_i‖ per structure of the sample")
    grad_norm_median: MaybeFloat = None
    sharpness: MaybeFloat = Field(None, description="mean squared change of the predictions at the radius, "
                                  "along the random directions, both signs")
    surface_samples: int = 0
    grid: list[list[MaybeFloat]] = Field(default_factory=list, description="[α][β] label-free loss on the "
                                         "random plane of the surfaces (alphas_2d)")
    topology: dict[str, Any] = Field(default_factory=dict, description="persistence and SMAD of that grid")

    # the per-split quantities the catalogue's ``label_free.<x>`` sources name that are not stored fields
    @property
    def gn_lambda_max(self) -> float | None:
        return self.gn_top_eigenvalues[0] if self.gn_top_eigenvalues else None

    @property
    def smad(self) -> float | None:
        return self.topology.get("smad")

    @property
    def smad_normalized(self) -> float | None:
        return self.topology.get("smad_normalized")

    @property
    def persistence_range(self) -> float | None:
        return self.topology.get("persistence_range")


class LabelFreeResult(_Result):
    """The label-free probes of every probed split (``probes.label_free``; schema 1.7)."""

    radius: float = Field(0.1, description="filter-normalised radius of the prediction sharpness")
    span: MaybeFloat = None
    alphas_2d: list[float] = Field(default_factory=list)
    seed: int = 0
    splits: dict[str, LabelFreeSplit] = Field(default_factory=dict)
    problems: list[str] = Field(default_factory=list, description="what was not measured, and why")


class TrustRisk(_Result):
    """The adopted trust score applied to this audit's label-free ratios (:mod:`traits.trust`; schema 1.7):
    P(OOD/ID MAE ≥ 2) with its interval over the score's refits."""

    probability: MaybeFloat = None
    low: MaybeFloat = None
    high: MaybeFloat = None
    interval_kind: str = "bootstrap over held-out rules (refits)"
    model: str | None = None
    candidate: str | None = None
    study_version: str = ""
    evidence: str = Field("", description="what the score rests on: study, features, audits, rules, LORO AUROC")
    ships_as_default: bool = False
    features_missing: list[str] = Field(default_factory=list)
    note: str = ""


class Finding(_Result):
    id: str
    level: Level
    statement: str
    numbers: dict[str, MaybeFloat | str] = Field(default_factory=dict)
    evidence: dict[str, str] = Field(
        default_factory=dict, description="For each metric the finding flags on: what the adopted study measured "
        "about it (ρ with its interval, data set, version), or that no study has measured it")


class RatioInterval(_Result):
    """One ratio with its interval (:mod:`traits.intervals`): ``status`` ok / uncertified / undefined;
    ``kind``: what the interval carries; every interval decides its gate (``decides`` is False only in results
    written before schema 1.6, whose bootstrap intervals did not)."""

    value: MaybeFloat = None
    low: MaybeFloat = None
    high: MaybeFloat = None
    status: Literal["ok", "uncertified", "undefined"] = "ok"
    method: str = ""
    decides: bool = True
    kind: str = Field("", description="what the interval carries: bootstrap over compounds, jackknife over "
                      "structures, solver bound, Monte-Carlo error or grid resolution (traits.intervals.KINDS; "
                      "schema 1.6, empty before)")


class GateOutcome(_Result):
    name: str
    passed: bool
    level: Level
    value: MaybeFloat
    threshold: float
    comparison: Literal["<=", ">="]
    statement: str
    determined: bool = Field(True, description="False when the value or its interval cannot decide the gate")
    low: MaybeFloat = None
    high: MaybeFloat = None
    evidence: str | None = Field(None, description="What the adopted study measured about the gate's metric "
                                 "(None for the direct measurements: the MAE ratio and the NaN share)")


class AuditResult(_Result):
    schema_version: str = SCHEMA_VERSION
    name: str
    description: str = ""
    spec: dict[str, Any]
    provenance: Provenance
    target: str
    unit: str
    omit: list[str]
    loss: Literal["mse", "mae"] = "mse"
    splits: dict[str, SplitStats]
    skipped: dict[str, int] = Field(default_factory=dict)
    accuracy: dict[str, Accuracy] = Field(default_factory=dict)
    hessian: dict[str, HessianResult] = Field(default_factory=dict)
    surface: SurfaceResult | None = None
    shift: ShiftResult | None = None
    uncertainty: UncertaintyResult | None = Field(
        None, description="per-compound uncertainty methods scored against the errors (probes.uncertainty)")
    label_free: LabelFreeResult | None = Field(
        None, description="label-free probes: Gauss-Newton curvature of the predictions, gradient norms, prediction "
        "sharpness, the label-free surface's topology (probes.label_free; schema 1.7)")
    trust_risk: TrustRisk | None = Field(
        None, description="the adopted trust score's P(OOD/ID MAE ≥ 2) from the label-free ratios (schema 1.7)")
    metrics: dict[str, SplitMetrics] = Field(default_factory=dict)
    ratios: dict[str, MaybeFloat] = Field(default_factory=dict, description="OOD / ID of each metric")
    ratio_intervals: dict[str, RatioInterval] = Field(
        default_factory=dict, description="each ratio with its interval and status (schema 1.2)"
    )
    findings: list[Finding] = Field(default_factory=list)
    gates: list[GateOutcome] = Field(default_factory=list)
    status: Level = "pass"
    mode: Literal["labels", "label-free"] = Field(
        "labels", description="label-free (data.target: model): the loss is the mean squared deviation from the "
        "model's own predictions at θ, so the Hessian at θ is the Gauss-Newton matrix and no accuracy is measured")
    prediction_stats: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per split: n, mean, std, min, max of the predictions at θ")
    model_info: dict[str, Any] | None = Field(
        None, description="the model adapter's description: property, units, package and weights versions, "
        "weights sha256, training data when known")

    def _repr_html_(self) -> str:
        """A compact summary for notebooks (:func:`traits.report.notebook.audit_summary_html`)."""
        from traits.report.notebook import audit_summary_html

        return audit_summary_html(self)

    def write(self, path: Path) -> Path:
        return write_text_atomic(path, self.model_dump_json(indent=1))


def _minor(version: str) -> int | None:
    """The minor number of a "MAJOR.MINOR" schema version, None when it has none."""
    parts = str(version).split(".")
    return int(parts[1]) if len(parts) == 2 and parts[1].isdigit() and len(parts[1]) <= 6 else None


def _drop_unknown(raw: dict, errors: list[dict]) -> bool:
    """Remove from ``raw`` the fields ``errors`` (pydantic's) call unknown ("extra_forbidden"); False, and
    nothing removed, when there is another error or a field cannot be found."""
    if not errors or any(e["type"] != "extra_forbidden" for e in errors):
        return False
    found = []
    for e in errors:
        node, key = raw, e["loc"][-1] if e["loc"] else None
        for part in e["loc"][:-1]:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                return False
        if not isinstance(node, dict) or key not in node:
            return False
        found.append((node, key))
    for node, key in found:
        node.pop(key, None)
    return True


#: The longest text a results file may hold (a name, a finding, a path): TRAITS writes a few hundred characters
#: at most, and a report typesets every one, so a longer string is a tampered file, refused before it is read.
MAX_RESULT_STRING = 20_000


def _overlong_string(raw: Any, where: str = "") -> str | None:
    """Where the first bad string (key or value) is and what is wrong with it, or None: longer than
    :data:`MAX_RESULT_STRING`, or holding a lone surrogate (a ``\\ud800`` escape, which no UTF-8 text can hold)."""
    too_long = (f"a text longer than {MAX_RESULT_STRING:,} characters (TRAITS writes none; a report of it would "
                "not end)")
    surrogate = "a text with a lone surrogate (\\ud800-\\udfff), which is not a character (TRAITS writes none)"

    def problem(text: str) -> str | None:
        if len(text) > MAX_RESULT_STRING:
            return too_long
        return surrogate if _SURROGATE.search(text) else None

    stack = [(raw, where)]
    while stack:
        node, at = stack.pop()
        if isinstance(node, str):
            if (bad := problem(node)) is not None:
                return f"{at or '(top level)'}: {bad}"
        elif isinstance(node, dict):
            for key, value in node.items():
                if isinstance(key, str) and (bad := problem(key)) is not None:
                    return f"{at + '.(a key)' if at else '(a key)'}: {bad}"
                stack.append((value, f"{at}.{key}" if at else str(key)))
        elif isinstance(node, list):
            stack.extend((value, f"{at}[{i}]") for i, value in enumerate(node))
    return None


_SURROGATE = re.compile("[\ud800-\udfff]")


def load_result(path: str | Path) -> AuditResult:
    """Read a ``results.json``; errors say which file and what is wrong with it.

    Any minor version of this major version is read. A newer minor version's fields that this TRAITS does
    not know are ignored (the result is then this version's: ``schema_version`` is :data:`SCHEMA_VERSION`,
    so that writing it again never claims fields it lacks); in a file of this or an older minor version an
    unknown field is refused (a tampered or hand-edited file)."""
    from traits.inputs import parse_json, read_text_checked

    path = Path(path)
    text = read_text_checked(path, "results file", TraitsError, limit=None)
    raw = parse_json(text, TraitsError, lambda exc: f"{path}: not a readable results file ({exc})",
                     f"{path}: not a results file (its JSON is nested too deeply)")
    long_string = _overlong_string(raw)
    if long_string is not None:
        raise TraitsError(f"{path}: invalid results file at {long_string}")
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version is None or str(version).split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise TraitsError(f"{path}: results schema version {version!r}; this TRAITS reads {SCHEMA_VERSION}")
    minor = _minor(version)
    newer = minor is not None and minor > (_minor(SCHEMA_VERSION) or 0)
    dropped = False
    for _attempt in range(2):
        try:
            result = AuditResult.model_validate(raw)
            break
        except ValidationError as exc:
            errors = exc.errors()
            if newer and not dropped and _drop_unknown(raw, errors):
                dropped = True
                continue
            first = next((e for e in errors if e["type"] != "extra_forbidden"), errors[0]) if newer else errors[0]
            where = ".".join(str(p) for p in first["loc"])
            raise TraitsError(f"{path}: invalid results file at {where}: {first['msg']}") from None
        except RecursionError:
            raise TraitsError(f"{path}: not a results file (nested too deeply)") from None
    if dropped:
        result.schema_version = SCHEMA_VERSION
    problem = shape_problem(result)
    if problem is not None:
        raise TraitsError(f"{path}: invalid results file at {problem}")
    return result


def shape_problem(result: AuditResult) -> str | None:
    """The first place where a result's arrays do not fit together (a ragged grid, a curve longer than
    its α axis, a short ``alphas_2d``, ...) as "field: problem", or None when they all fit."""
    def finite(x) -> bool:
        return x is not None and math.isfinite(x)

    s = result.surface
    if s is not None:
        if not (finite(s.span) and s.span > 0):
            return f"surface.span: must be a positive finite number, got {s.span!r}"
        if not finite(s.tolerance):
            return f"surface.tolerance: must be a finite number, got {s.tolerance!r}"
        if any(not finite(a) for a in s.alphas_1d + s.alphas_2d):
            return "surface.alphas_1d / alphas_2d: the axes must hold finite numbers only"
        n1, n2 = len(s.alphas_1d), len(s.alphas_2d)
        if s.curves and n1 < 2:
            return f"surface.alphas_1d: {n1} value(s); curves need at least 2"
        for split, curves in s.curves.items():
            for k, curve in enumerate(curves):
                if len(curve) != n1:
                    return f"surface.curves.{split}[{k}]: {len(curve)} values but alphas_1d has {n1}"
            for name, per_direction in (("radius", s.radius.get(split)),
                                        ("radius_censored", s.radius_censored.get(split))):
                if per_direction is not None and len(per_direction) != len(curves):
                    return f"surface.{name}.{split}: {len(per_direction)} values for {len(curves)} directions"
        for field_name, grids in (("grids", s.grids), ("plane_grids", s.plane_grids)):
            for split, grid in grids.items():
                if n2 < 2:
                    return f"surface.alphas_2d: {n2} value(s) but surface.{field_name}.{split} needs its axis"
                if len(grid) != n2:
                    return f"surface.{field_name}.{split}: {len(grid)} rows but alphas_2d has {n2}"
                for i, row in enumerate(grid):
                    if len(row) != n2:
                        return (f"surface.{field_name}.{split}[{i}]: {len(row)} values but alphas_2d has {n2} "
                                "(ragged grid)")
    for split, acc in result.accuracy.items():
        if len(acc.predictions) != len(acc.targets):
            return f"accuracy.{split}: {len(acc.predictions)} predictions but {len(acc.targets)} targets"
        if acc.ids and len(acc.ids) != len(acc.targets):
            return f"accuracy.{split}: {len(acc.ids)} ids but {len(acc.targets)} targets"
    for split, h in result.hessian.items():
        d = h.density
        if d is not None:
            if len(d.grid) != len(d.density):
                return f"hessian.{split}.density: {len(d.density)} density values on a grid of {len(d.grid)}"
            if len(d.nodes) != len(d.weights) or any(len(a) != len(b) for a, b in zip(d.nodes, d.weights)):
                return f"hessian.{split}.density: nodes and weights differ in shape"
    return None
