"""The one catalogue of metrics: what each OOD/ID number is, which way is worse, which gate reads it,
whether it fails an audit by default, and what the committed study measured about it.

Ratios, report rows, campaign columns and gates read this list instead of keeping their own, when they are
called (so a metric added here, with the function that computes it, needs no other change):
:class:`traits.spec.GateSpec` is built from the gated entries (field, default threshold, description); the
verdict (:mod:`traits.verdict`) gates each of them, words its finding from the entry's :class:`Sentences` (or a
generic sentence from its labels) and flags the landscape from its ``flag``; the report's summary table
(:mod:`traits.report.headline`: ``headline``, ``split_unit``, ``source``), its first screen
(:mod:`traits.report.glance`: ``short``, ``modes``, ``unit``), its ratio labels (:mod:`traits.report.sections`),
the comparison (:mod:`traits.compare`, :mod:`traits.pairing`: ``split_label``, ``source``, ``direction``) and the
campaign tables (``column``) read it too;
:mod:`traits.campaign` takes its columns, labels, kinds and expected signs from it; the study summary
(:mod:`traits.study.summary`) writes the measured ρ into ``catalogue-evidence.json`` beside the summary,
and an adopted copy (:data:`EVIDENCE_FILE`, in the package) is what :func:`evidence` reads, so a report can
cite the number next to a metric it flags on.

The default-fail rule (:func:`default_fail_on`, which ``GateSpec.fail_on`` defaults to): the error ratio
and the non-finite share of the surfaces fail an audit by default, because they are direct measurements
of failure, not predictors of it. Any other gated metric (the landscape metrics, the embedding distance)
fails by default only when the adopted study evidence shows it tracks OOD error beyond the noise floor and
beyond what the loss at θ already says (:func:`fails_by_default_from_evidence` and
:func:`threshold_clears_floor`); until then it warns.

Evidence is *adopted* deliberately: ``traits study summary`` writes ``catalogue-evidence.json`` beside the
study summary it describes (``docs/study/``); ``traits study summary --adopt`` (refused for a pipeline
check) also copies it to :data:`EVIDENCE_FILE`, inside the package, which is what installed copies read.
The adopted study is study-1 on the Materials Project pool (``docs/study/``, 168 audits); by this rule the λ_max
and trace ratios fail by default and every other landscape or distance metric warns. The label-free metrics
(stage ``label_free``: the Gauss-Newton, gradient-norm, prediction-sharpness and label-free surface ratios) and the
embedding-density gap have no gate: they are listed and ranked until a study measures them.

Each audit mode reads its own evidence (:func:`evidence_file_for`): labelled audits :data:`EVIDENCE_FILE`,
label-free audits :data:`LABEL_FREE_EVIDENCE_FILE`, which study v2's registered analysis writes and
``traits study trust-score --adopt`` installs (absent until then: label-free audits fail on no predictor by
default). There the control is the embedding kNN distance instead of the loss at θ (a label-free audit has no
loss at θ), so the embedding kNN ratio itself, the control, is never a default fail there. Evidence that counts
the tasks whose gate fires on one, two and three of their seeds (``seed_firing``, study v2) also needs one task
where it fires on all three: a gate that never agrees with itself across training seeds is not decision-grade.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

#: The adopted study's per-metric evidence (``traits study summary --adopt`` writes it; shipped in the wheel).
EVIDENCE_FILE = Path(__file__).resolve().parent / "study" / "catalogue-evidence.json"
#: The adopted label-free evidence (study v2's first pass; ``traits study trust-score --adopt`` writes it): what
#: label-free audits' default gates and evidence texts read.
LABEL_FREE_EVIDENCE_FILE = Path(__file__).resolve().parent / "study" / "catalogue-evidence-label-free.json"

#: What a report says next to a predictor that no adopted study has measured.
NOT_MEASURED = "not yet measured by an adopted study (warns, never fails, by default)"


@dataclass(frozen=True)
class Evidence:
    """What a study measured: Spearman ρ of the metric's OOD/ID ratio with the OOD/ID error ratio."""

    rho: float | None
    low: float | None
    high: float | None
    n_tasks: int
    n_audits: int
    noise_floor: float | None   # the metric on random splits: 97.5 % (2.5 % where smaller is worse); None from
                                # fewer than stats.MIN_FLOOR_AUDITS random-split audits
    study_version: str
    data_set: str
    pipeline_check: bool = True  # True: a tiny-budget run, not evidence
    p_holm: float | None = None
    in_progress: bool = False    # True: an interim summary of a study still running, not evidence
    n_clusters: int | None = None  # held-out rules (tasks that hold out the same compounds count once)
    #: Partial ρ given the control (:attr:`control`), with its interval: what the metric says about the error
    #: beyond what the control already says (None where the study did not measure it).
    partial: tuple[float | None, float | None, float | None] = (None, None, None)
    #: the audits the study measured: "labels" (Hessians of the labelled loss) or "label-free" (of the model's
    #: own predictions); a default fail applies only to audits of the same mode
    mode: str = "labels"
    #: what the partial ρ controls for: the loss at θ (labelled audits), the embedding kNN distance (label-free)
    control: str = "the loss at θ"
    #: tasks whose gate (the value beyond the default threshold) fires on exactly 1, 2 and 3 of their seeds, among
    #: the omission tasks with three seeds; None where the study did not count them (study-1) or had no such task
    seed_firing: tuple[int, int, int] | None = None

    def text(self) -> str:
        if self.rho is None:
            return f"not measured in {self.study_version}"
        tag = ", pipeline check only" if self.pipeline_check else (", interim: study in progress" if self.in_progress
                                                                   else "")
        rules = f", {self.n_clusters} held-out rules" if self.n_clusters else ""
        pr, pl, ph = self.partial
        beyond = f"; given {self.control}, partial ρ = {pr:.2f}{_interval(pl, ph)}" if pr is not None else ""
        return (f"ρ = {self.rho:.2f}{_interval(self.low, self.high)} over {self.n_tasks} tasks{rules}{beyond}"
                f"{self.firing_text()} ({self.study_version}, {self.data_set}{tag})")

    def firing_text(self) -> str:
        """'; its default gate fired on all three seeds of 2 tasks (...)', or nothing where not counted."""
        if self.seed_firing is None:
            return ""
        one, two, three = self.seed_firing
        return (f"; its default gate fired on all three training seeds of {three or 'no'} task"
                f"{'' if three in (0, 1) else 's'} ({one} on one seed, {two} on two)")


def _interval(low: float | None, high: float | None) -> str:
    """" [low, high]" to two decimals, or nothing when either end is missing."""
    return f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else ""


@dataclass(frozen=True)
class Sentences:
    """What the verdict says about a gate on the metric (:func:`traits.verdict._finding_for_gate`), as
    :meth:`str.format` templates with the fields ``shown`` (the value with its interval, '1.23 [1.10, 1.41]'),
    ``value`` (the number) and ``who`` (the OOD set, 'Fe-containing compounds')."""

    beyond: str                  # the gate fired (fail or warn)
    within: str                  # the gate passed
    neutral: str = ""            # the value is exactly the neutral one (0 for a fraction): overrides both


#: The modes of an audit (``AuditResult.mode``): Hessians of the labelled loss, or of the model's own predictions.
MODES = ("labels", "label-free")


@dataclass(frozen=True)
class Metric:
    name: str                    # the key in AuditResult.ratios / the campaign row
    label: str                   # short label for tables and figures
    kind: str                    # "error", "landscape", "distance baseline", "error at θ (reference)", "surface"
    direction: float = 1.0       # +1: a larger OOD/ID value is worse; -1: a smaller one is worse
    unit: str = "ratio"          # "ratio" (OOD/ID), "difference" (OOD − ID) or "fraction"
    gate_field: str | None = None    # the GateSpec threshold field, when a gate reads the metric
    comparison: str | None = None    # the gate's comparison ("<=" or ">=")
    threshold: float | None = None   # the gate's default threshold (GateSpec reads it from here)
    #: In GateSpec.fail_on by default: read for the direct measurements (error, surface) only; a predictor's
    #: default comes from the adopted evidence (:func:`default_fail_on`), whatever this says.
    fails_by_default: bool = False
    description: str = ""
    report_label: str = ""           # the report's longer label (traits.report.sections.RATIO_INFO today)
    source: str | None = None        # what the ratio divides: "accuracy.mae", "metrics.lambda_max", "shift..."
    ranked: bool = True              # ranked against the error ratio in campaign and study summaries
    gate_label: str = ""             # the gate's statement label (traits.verdict.GATES today)
    #: The audit stage that measures it (a key of ``provenance.wall_seconds``; "hessian" stands for every
    #: ``hessian_<split>``): what a JUnit case of its gate is timed by.
    stage: str = ""
    evidence: Evidence | None = None
    #: The audit modes that measure it (``AuditResult.mode``): an error needs labels.
    modes: tuple[str, ...] = MODES
    #: How its interval is made (what the gate decides on; :mod:`traits.intervals`), '' without one.
    interval: str = ""
    #: The verdict's finding sentences for its gate; None: a generic sentence built from this entry.
    sentences: Sentences | None = None
    #: The gate's short name in the report's first screen ("λmax ratio"; :mod:`traits.report.glance`).
    short: str = ""
    #: The GateSpec field's description (``traits schema`` shows it).
    gate_description: str = ""
    #: A landscape flag of the domain-shift rule when its gate fires beyond doubt: (kind, detail template with
    #: ``{value}``), e.g. ("sharp", "λ_max {value:.2f}x the ID value"); None: not a flag.
    flag: tuple[str, str] | None = None
    #: The gate reads the largest per-split value of ``source`` ("max"), not a ratio of ``AuditResult.ratios``.
    reduce: str = ""
    #: What one grid step is, when a split's value can lie below the grid's resolution ("one 1D grid step").
    resolution: str = ""
    #: The note a finding adds when a split's value is censored (``<split value>_censored`` in the metrics).
    censored_note: str = ""
    #: The summary table's row (:mod:`traits.report.headline`) and the comparison's per-split rows: its key
    #: ("lambda_max"), label ("largest Hessian eigenvalue λmax"; default ``report_label``) and the unit of the
    #: per-split values: "target" (the result's unit), "loss" (the loss's), or a unit named as is.
    headline: str = ""
    headline_label: str = ""
    split_unit: str = ""
    #: The comparison's label of a per-split value ("λmax": "ID test λmax", "OOD λmax"); '' : not compared per split.
    split_label: str = ""
    #: The campaign tables' short heading ("λ_max"); '': not a column of the campaign table.
    column: str = ""

    @property
    def split_key(self) -> str:
        """The per-split quantity behind the ratio ("lambda_max" for metrics.lambda_max), '' for none."""
        return self.source.split(".", 1)[1] if self.source and "." in self.source else ""

    @property
    def row_label(self) -> str:
        return self.headline_label or self.report_label or self.label

    @property
    def worse(self) -> str:
        """The report's direction word: "high", "low", or "negative" for a difference."""
        if self.unit == "difference":
            return "negative" if self.direction < 0 else "positive"
        return "high" if self.direction > 0 else "low"

    @property
    def neutral(self) -> float:
        """The value with nothing out of distribution: 1 for a ratio, 0 for a difference or a fraction."""
        return 1.0 if self.unit == "ratio" else 0.0


#: What the catalogue says about the label-free metrics until an adopted study measures them.
_LABEL_FREE_UNMEASURED = ("No adopted study has measured whether it tracks OOD error yet (study v2 measures it), "
                          "so it decides no gate: it is listed and ranked, never gated.")

#: The label-free landscape ratios (:mod:`traits.probes.labelfree`; :func:`traits.audit.ratios` and the report read
#: them from ``label_free.<quantity>``): (name, label, report label, per-split quantity, interval kind, what it is).
_LABEL_FREE = (
    ("gn_lambda_ratio", "Gauss-Newton λ_max (label-free)", "Gauss-Newton λmax of the predictions (label-free)",
     "gn_lambda_max", "jackknife over structures",
     "Largest eigenvalue of the Gauss-Newton matrix (2/N) JᵀJ of the model's own predictions (J: the per-structure "
     "gradients ∇θ f_i; exact, from the N×N Gram matrix), OOD over ID: how far the predictions move along the "
     "stiffest weight direction."),
    ("gn_trace_ratio", "Gauss-Newton trace (label-free)", "Gauss-Newton trace of the predictions (label-free)",
     "gn_trace", "jackknife over structures",
     "Trace of the Gauss-Newton matrix of the predictions, (2/N) Σ ‖∇θ f_i‖² (exact), OOD over ID: the total "
     "sensitivity of the predictions to the weights."),
    ("grad_norm_ratio", "gradient norm (label-free)", "median per-structure gradient norm ‖∇θ f‖ (label-free)",
     "grad_norm_median", "bootstrap over compounds",
     "Median over the structures of ‖∇θ f_i‖, how much one structure's prediction moves per unit of weight change, "
     "OOD over ID."),
    ("lf_sharpness_ratio", "prediction sharpness (label-free)", "prediction sharpness at radius r (label-free)",
     "sharpness", "",
     "Mean squared change of the predictions when the weights move by the filter-normalised radius r along random "
     "directions (both signs), OOD over ID."),
    ("lf_smad_ratio", "SMAD (label-free)", "SMAD of the label-free 2D surface", "smad", "",
     "Saddle-minimum average distance of the label-free 2D surface (the mean squared change of the predictions on "
     "the surfaces' random plane), OOD over ID."),
    ("lf_persistence_ratio", "persistence range (label-free)", "persistence range of the label-free 2D surface",
     "persistence_range", "",
     "Persistence range of the minima of the label-free 2D surface (sublevel-set persistence), OOD over ID."),
)


_METRICS: tuple[Metric, ...] = (
    Metric("mae_ratio", "MAE", "error", gate_field="max_mae_ratio", comparison="<=", threshold=2.0,
           fails_by_default=True,
           report_label="MAE", source="accuracy.mae", ranked=False, modes=("labels",),
           interval="bootstrap over compounds", short="OOD/ID MAE ratio",
           gate_description="Flag when OOD MAE / ID MAE exceeds this (fails by default).",
           headline="mae", headline_label="mean absolute error", split_unit="target", split_label="MAE", column="MAE",
           description="OOD MAE / ID MAE: the error itself, the quantity every other metric is ranked against."),
    Metric("rmse_ratio", "RMSE", "error", report_label="RMSE", source="accuracy.rmse", ranked=False,
           modes=("labels",), interval="bootstrap over compounds", split_unit="target", split_label="RMSE",
           description="OOD RMSE / ID RMSE."),
    Metric("lambda_ratio", "λ_max", "landscape", gate_field="max_lambda_ratio", comparison="<=", threshold=3.0,
           report_label="largest Hessian eigenvalue λmax", source="metrics.lambda_max",
           interval="jackknife over structures (or the solver bound, or sampled draws)", short="λmax ratio",
           gate_description="Flag when OOD λ_max / ID λ_max exceeds this.",
           sentences=Sentences("OOD λ_max is {shown}x the ID λ_max: the OOD loss is much sharper for {who}",
                               "OOD λ_max is {shown}x the ID λ_max: curvature is comparable for {who}"),
           flag=("sharp", "λ_max {value:.2f}x the ID value"),
           headline="lambda_max", split_unit="loss", split_label="λmax", column="λ_max",
           description="Top Hessian eigenvalue of the OOD loss over the ID one (certified Lanczos)."),
    Metric("trace_ratio", "trace", "landscape", gate_field="max_trace_ratio", comparison="<=", threshold=3.0,
           report_label="Hessian trace", source="metrics.trace",
           interval="jackknife over structures (or the Monte-Carlo error: Fieller's interval)",
           short="Hessian-trace ratio", gate_description="Flag when OOD trace / ID trace exceeds this.",
           sentences=Sentences("OOD Hessian trace is {shown}x the ID trace: more total curvature for {who}",
                               "OOD Hessian trace is {shown}x the ID trace: comparable total curvature for {who}"),
           flag=("sharp", "Hessian trace {value:.2f}x the ID value"),
           headline="trace", split_unit="loss", split_label="Hessian trace", column="trace",
           description="Hessian trace (Gauss-Newton control variate), OOD over ID."),
    Metric("radius_ratio", "robust radius", "landscape", direction=-1.0, gate_field="min_radius_ratio", threshold=0.5,
           comparison=">=", report_label="robust radius", source="metrics.robust_radius",
           interval="grid resolution (the bisection bracket), or sampled draws", short="robust-radius ratio",
           gate_description="Flag when OOD/ID robust radius is below this.",
           sentences=Sentences("OOD robust radius is {shown}x the ID radius: the representation is fragile for {who}",
                               "OOD robust radius is {shown}x the ID radius: the loss basin is as wide for {who}"),
           flag=("sharp", "robust radius {value:.2f}x the ID radius"), resolution="one 1D grid step",
           censored_note=" (at least one radius reached the edge of the grid: a lower bound)",
           headline="robust_radius", split_unit="α units", split_label="robust radius", column="radius",
           description="Radius of the region where the loss stays within L(θ) + δ (one absolute band δ for both "
           "splits), OOD over ID. Warn-only until a study shows it tracks OOD error."),
    Metric("sharpness_ratio", "sharpness", "landscape", report_label="sharpness", source="metrics.sharpness",
           description="ε-sharpness, OOD over ID."),
    Metric("basin_area_ratio", "basin area", "landscape", direction=-1.0, report_label="basin area fraction",
           source="metrics.basin_area", description="Area of the 2D robust basin, OOD over ID."),
    Metric("plane_basin_area_ratio", "basin area (eigenvector plane)", "landscape", direction=-1.0,
           report_label="basin area fraction, eigenvector plane", source="metrics.plane_basin_area",
           description="Basin area in the plane of the top and bottom Hessian eigenvectors, OOD over ID."),
    Metric("smad_ratio", "SMAD", "landscape", report_label="SMAD (saddle-minimum average distance)",
           source="metrics.smad",
           description="Saddle-minimum average distance of the random-plane 2D surface (Landscaper's definition), "
           "OOD over ID: proposed (Landscaper, 2026) as a sign of poor OOD generalisation. On study 1's 150 MP "
           "omission audits the claim is not supported (per-task ρ with the MAE ratio 0.15 [-0.17, 0.44], partial "
           "given the loss at θ -0.16 [-0.39, 0.19]; AUROC 0.60, below the embedding kNN's; "
           "docs/study/landscaper-v1), so it warns only."),
    Metric("smad_normalized_ratio", "SMAD / loss range", "landscape", report_label="SMAD over the loss range",
           source="metrics.smad_normalized", description="SMAD divided by the surface's loss range, OOD over ID."),
    Metric("plane_smad_ratio", "SMAD (eigenvector plane)", "landscape", report_label="SMAD, eigenvector plane",
           source="metrics.plane_smad", description="SMAD of the Hessian-eigenvector-plane surface, OOD over ID."),
    Metric("nonconvexity_ratio", "|λ_min|/λ_max", "landscape", report_label="non-convexity |λmin|/λmax",
           source="metrics.nonconvexity", interval="certified eigenvalues (exact when both are certified)",
           description="Non-convexity at θ, OOD over ID."),
    Metric("loss_grad_norm_ratio", "loss-gradient norm at θ", "landscape", report_label="‖∇θ L‖ at θ",
           source="metrics.loss_grad_norm",
           description="Norm of the loss gradient at θ, OOD over ID (probes.surface.gradient_1d): how far θ is "
           "from stationary on each split. Not a curvature; not yet measured by a study, so it warns only."),
    Metric("surface_grad_norm_ratio", "median loss-gradient norm", "landscape",
           report_label="median ‖∇θ L‖ over the gradient points", source="metrics.loss_grad_norm_median",
           description="Median norm of the loss gradient over the gradient curves (or grid), OOD over ID: how steep "
           "the surface is around θ (oxford-loss-landscapes' gradient surface metric)."),
    Metric("perturbation_curvature_ratio", "curvature along random directions", "landscape",
           report_label="mean curvature along random directions", source="metrics.perturbation_curvature",
           description="Mean (L(θ + s d) + L(θ − s d) − 2L(θ)) / s² over random filter-normalised directions, OOD "
           "over ID (probes.surface.perturbations): a direction-averaged curvature, about tr(H)/P per unit "
           "filter-normalised step."),
    Metric("perturbation_exceed_gap", "share of perturbations leaving the band (OOD − ID)", "landscape",
           unit="difference", report_label="share of random perturbations above the band, OOD − ID",
           source="metrics.perturbation_exceed_fraction",
           description="The share of random perturbations L(θ ± s d_k) above L(θ) + δ, OOD minus ID (a "
           "difference: a share can be 0 on ID)."),
    Metric("first_jump_ratio", "first jump scale", "landscape", direction=-1.0,
           report_label="scale of the first loss jump", source="metrics.first_jump",
           description="Distance to the first discontinuity of the 1D loss curves, OOD over ID."),
    Metric("entropy_ood_minus_id", "loss entropy (OOD − ID)", "landscape", direction=-1.0, unit="difference",
           report_label="loss entropy: a difference, OOD − ID", source="metrics.entropy",
           description="Entropy of the loss surface, OOD minus ID."),
    Metric("loss_ratio", "loss at θ", "error at θ (reference)", report_label="loss at θ", source="metrics.loss",
           headline="loss", split_unit="loss",
           description="The probes' own MSE at θ, OOD over ID; listed, never a 'best' predictor."),
    Metric("embedding_knn_ratio", "embedding kNN distance", "distance baseline",
           gate_field="max_embedding_knn_ratio", threshold=2.0,
           comparison="<=", report_label="embedding kNN distance, median", source="shift.embedding",
           interval="bootstrap over compounds", short="embedding-distance ratio",
           gate_description="Flag when the OOD compounds' median distance to their nearest training compounds in "
           "the model's embedding exceeds this multiple of the ID one (the verdict then reads the OOD errors as "
           "extrapolation).",
           sentences=Sentences("In the model's embedding, OOD compounds are {value:.2f}x as far from their nearest "
                               "training compounds as ID test compounds: the representation places {who} outside "
                               "the domain it learned",
                               "In the model's embedding, OOD compounds are {value:.2f}x as far from their nearest "
                               "training compounds as ID test compounds: the representation places {who} within "
                               "the domain it learned"),
           headline="embedding_knn", split_unit="dimensionless", column="embedding kNN",
           description="Median distance of OOD compounds to their nearest training compounds in the model's "
           "embedding, over the ID one."),
    Metric("composition_knn_ratio", "composition kNN distance", "distance baseline",
           report_label="composition kNN distance, median", source="shift.composition", column="composition kNN",
           interval="bootstrap over compounds",
           description="The same in a composition (element-fraction) space: needs no model."),
    Metric("target_wasserstein_ratio", "target Wasserstein to train", "distance baseline",
           report_label="Wasserstein distance of the targets to train", source="shift",
           description="Wasserstein distance of the OOD targets to the training targets, over the ID one."),
    Metric("composition_knn_p90_ratio", "composition kNN distance (p90)", "distance baseline", ranked=False,
           report_label="composition kNN distance, 90th percentile", source="shift"),
    Metric("embedding_knn_p90_ratio", "embedding kNN distance (p90)", "distance baseline", ranked=False,
           report_label="embedding kNN distance, 90th percentile", source="shift"),
    Metric("target_ks_ratio", "target KS statistic", "distance baseline", ranked=False,
           report_label="KS statistic of the targets against train", source="shift"),
    *(Metric(name, label, "landscape", report_label=report_label, source=f"label_free.{attr}", interval=interval,
             description=f"{what} Label-free: it needs no target and means the same in a labelled and a label-free "
             f"audit. {_LABEL_FREE_UNMEASURED}")
      for name, label, report_label, attr, interval, what in _LABEL_FREE),
    Metric("embedding_density_gap", "embedding density gap (OOD − ID)", "distance baseline", unit="difference",
           report_label="embedding negative log-likelihood: a difference, OOD − ID", source="shift.density",
           description="The mean negative log-likelihood of the OOD compounds' embeddings under a Gaussian mixture "
           "fitted to the training embeddings (components chosen by BIC), minus that of the ID test compounds: "
           "positive when the OOD compounds lie where training was sparse. A difference, not a ratio. "
           + _LABEL_FREE_UNMEASURED),
    Metric("nan_fraction", "non-finite share of the loss surfaces", "surface", unit="fraction",
           gate_field="max_nan_fraction", comparison="<=", threshold=0.0, fails_by_default=True, ranked=False,
           report_label="non-finite share of the loss surfaces", source="metrics.nan_fraction", reduce="max",
           short="non-finite share of the loss surfaces",
           gate_description="Flag when more of a surface is NaN (fails by default).",
           sentences=Sentences("{value:.1%} of the loss-surface points are NaN or infinite: the loss diverges within "
                               "the probed region",
                               "{value:.1%} of the loss-surface points are NaN or infinite: the loss diverges within "
                               "the probed region", neutral="every loss-surface point is finite"),
           description="A numerical failure of the model, not a predictor: not ranked."),
)


_GATE_LABELS = {"mae_ratio": "OOD/ID MAE ratio", "lambda_ratio": "OOD/ID λ_max ratio",
                "trace_ratio": "OOD/ID Hessian trace ratio", "radius_ratio": "OOD/ID robust-radius ratio",
                "nan_fraction": "non-finite share of the loss surfaces",
                "embedding_knn_ratio": "OOD/ID embedding kNN-distance ratio"}
_STAGES = {"accuracy": ("mae_ratio", "rmse_ratio"),
           "hessian": ("lambda_ratio", "trace_ratio", "nonconvexity_ratio", "plane_basin_area_ratio",
                       "plane_smad_ratio"),
           "surfaces": ("radius_ratio", "sharpness_ratio", "basin_area_ratio", "smad_ratio", "smad_normalized_ratio",
                        "first_jump_ratio",
                        "entropy_ood_minus_id", "loss_ratio", "nan_fraction", "loss_grad_norm_ratio",
                        "surface_grad_norm_ratio", "perturbation_curvature_ratio", "perturbation_exceed_gap"),
           "shift": ("embedding_knn_ratio", "composition_knn_ratio", "target_wasserstein_ratio",
                     "composition_knn_p90_ratio", "embedding_knn_p90_ratio", "target_ks_ratio",
                     "embedding_density_gap"),
           "label_free": tuple(row[0] for row in _LABEL_FREE)}
_STAGE_OF = {name: stage for stage, members in _STAGES.items() for name in members}
_METRICS = tuple(replace(m, gate_label=_GATE_LABELS.get(m.name, ""), stage=_STAGE_OF[m.name]) for m in _METRICS)


def read_evidence_file(path: Path, hint: str = "") -> dict:
    """The raw mapping of a catalogue evidence file, after checking its shape (the one check both the catalogue
    and adoption use). A file that is not one raises TraitsError naming it; ``hint`` says what to do next."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
        if not isinstance(raw, dict) or not isinstance(raw.get("metrics") or {}, dict) or not all(
                isinstance(e, dict) for e in (raw.get("metrics") or {}).values()):
            raise ValueError("expected {'metrics': {NAME: {rho, low, high, ...}}, ...}")
    except (OSError, ValueError) as exc:
        from traits.errors import TraitsError

        raise TraitsError(f"{p}: unreadable catalogue evidence ({exc}){hint}") from None
    return raw


@lru_cache(maxsize=4)
def _evidence(path: str) -> dict[str, Evidence]:
    p = Path(path)
    if not p.is_file():
        return {}
    return evidence_from_raw(read_evidence_file(p, "; restore it from git or adopt a study again with "
                                                   "`traits study summary ... --evidence --adopt`"))


def evidence_from_raw(raw: dict) -> dict[str, Evidence]:
    """The :class:`Evidence` per metric of an evidence file's mapping (:func:`read_evidence_file`)."""
    meta = {k: raw.get(k) for k in ("study_version", "data_set", "in_progress")}
    # a file that does not say it is a real study's is read as a pipeline check (adoption refuses it too)
    meta["pipeline_check"] = raw.get("pipeline_check", True)
    out = {}
    for name, e in (raw.get("metrics") or {}).items():
        out[name] = Evidence(rho=e.get("rho"), low=e.get("low"), high=e.get("high"), n_tasks=e.get("n_tasks", 0),
                             n_audits=e.get("n_audits", 0), noise_floor=e.get("noise_floor"),
                             study_version=meta["study_version"] or "?", data_set=meta["data_set"] or "?",
                             pipeline_check=bool(meta["pipeline_check"]), p_holm=e.get("p_holm"),
                             in_progress=bool(meta["in_progress"]), n_clusters=e.get("n_clusters"),
                             partial=tuple((e.get("partial_control") or e.get("partial_loss") or {}).get(q)
                                           for q in ("rho", "low", "high")),
                             mode=str(raw.get("mode") or "labels"), control=str(e.get("control") or "the loss at θ"),
                             seed_firing=_firing(e.get("seed_firing")))
    return out


def _firing(raw) -> tuple[int, int, int] | None:
    """``{"1": a, "2": b, "3": c, "n_tasks": n}`` of an evidence file as (a, b, c); None where absent, malformed
    or counted on no task with three seeds (a study of fewer seeds cannot show the gate agreeing across three)."""
    if not isinstance(raw, dict):
        return None
    try:
        counts = tuple(int(raw.get(k, 0)) for k in ("1", "2", "3"))
        return counts if int(raw.get("n_tasks", 1)) > 0 else None
    except (TypeError, ValueError):
        return None


def evidence_file_for(mode: str = "labels") -> Path:
    """The adopted evidence an audit of ``mode`` reads: :data:`EVIDENCE_FILE` (labels) or
    :data:`LABEL_FREE_EVIDENCE_FILE` (label-free)."""
    return LABEL_FREE_EVIDENCE_FILE if mode == "label-free" else EVIDENCE_FILE


def clear_cache() -> None:
    """Forget the evidence read so far (after a new evidence file was adopted)."""
    _evidence.cache_clear()


def catalogue(evidence_file: Path | None = None, mode: str = "labels") -> tuple[Metric, ...]:
    """Every metric, with the adopted study's evidence for audits of ``mode`` (:func:`evidence_file_for`, or
    ``evidence_file``) attached where it measured the metric."""
    ev = _evidence(str(evidence_file or evidence_file_for(mode)))
    return tuple(replace(m, evidence=ev.get(m.name)) for m in _METRICS)


def default_threshold(name: str) -> float:
    """The default gate threshold of a gated metric (read without the evidence file)."""
    for m in _METRICS:
        if m.name == name and m.threshold is not None:
            return m.threshold
    raise KeyError(name)


def metric(name: str) -> Metric:
    for m in catalogue():
        if m.name == name:
            return m
    raise KeyError(name)


def gated() -> tuple[Metric, ...]:
    """The metrics a gate reads, in the catalogue's order (read at call time, without the evidence file)."""
    return tuple(m for m in _METRICS if m.gate_field)


def gate_threshold(gates, m: Metric) -> float:
    """The threshold of ``m``'s gate in ``gates`` (a :class:`traits.spec.GateSpec`), its default where the spec
    has no such field."""
    return float(getattr(gates, m.gate_field, m.threshold))


def headlines() -> tuple[Metric, ...]:
    """The metrics of the summary table (:mod:`traits.report.headline`), in its order: the errors, the loss at θ,
    then the others in the catalogue's order."""
    first = ("error", "error at θ (reference)")
    return tuple(sorted((m for m in _METRICS if m.headline),
                        key=lambda m: first.index(m.kind) if m.kind in first else len(first)))


def columns() -> tuple[Metric, ...]:
    """The metrics of the campaign tables, in their order."""
    return tuple(m for m in _METRICS if m.column)


def names(kind: str | None = None) -> tuple[str, ...]:
    return tuple(m.name for m in _METRICS if kind is None or m.kind == kind)


def labels() -> dict[str, str]:
    return {m.name: m.label for m in _METRICS}


def ranked() -> tuple[Metric, ...]:
    """The metrics ranked against the error ratio (not the errors themselves, the NaN share, or the
    secondary shift statistics)."""
    return tuple(m for m in _METRICS if m.ranked)


def is_predictor(m: Metric) -> bool:
    """A metric that may predict OOD error (landscape, distance baseline, loss at θ) rather than measure it."""
    return m.kind not in ("error", "surface")


def default_fail_on(evidence_file: Path | None = None, mode: str = "labels") -> list[str]:
    """What ``GateSpec.fail_on`` defaults to: the direct measurements of failure (the MAE ratio, the NaN
    share), and a predictor only when the adopted study shows it tracks OOD error
    (:func:`fails_by_default_from_evidence`), its default threshold lies beyond the random-split noise
    floor (:func:`threshold_clears_floor`) and the study measured audits of this ``mode`` ("labels" or
    "label-free"): evidence from Hessians of the labelled loss fails no label-free audit."""
    decided = default_decisions(_evidence(str(evidence_file or evidence_file_for(mode))), mode)
    return [m.name for m in _METRICS if m.gate_field and (
        m.fails_by_default if not is_predictor(m) else decided.get(m.name) == [])]


def default_decisions(evidence: dict[str, Evidence], mode: str = "labels") -> dict[str, list[str]]:
    """Per gated predictor that ``evidence`` (:func:`evidence_from_raw`) measured on audits of ``mode``: the
    conditions of the default-fail rule it misses at its default threshold (:func:`default_fail_reasons`; an
    empty list: it fails by default). The one reading of the rule that :func:`default_fail_on` and the study
    summaries share."""
    return {m.name: default_fail_reasons(replace(m, evidence=evidence[m.name]), float(m.threshold))
            for m in _METRICS
            if m.gate_field and is_predictor(m) and m.threshold is not None and m.name in evidence
            and evidence[m.name].mode == mode}


def evidence_text(name: str, evidence_file: Path | None = None, mode: str = "labels") -> str | None:
    """What a report prints next to a flagged metric: the adopted study's ρ with its interval, data set and
    version, or :data:`NOT_MEASURED`; None for the direct measurements (errors, NaN share), which need none.
    A label-free audit reads the label-free evidence; where it has none for the metric, the labelled study's is
    shown with a note that it is not evidence for a label-free audit."""
    try:
        m = next(x for x in catalogue(evidence_file, mode) if x.name == name)
    except StopIteration:
        return None
    if not is_predictor(m):
        return None
    if m.evidence is None and evidence_file is None and mode != "labels":
        m = next(x for x in catalogue(None, "labels") if x.name == name)  # say what the labelled study measured
    if m.evidence is None:
        return NOT_MEASURED
    if m.evidence.mode != mode:
        return (f"{m.evidence.text()}; measured on {m.evidence.mode} audits, not evidence for a {mode} audit "
                "(warns, never fails, by default)")
    return m.evidence.text()


def evidence(name: str, evidence_file: Path | None = None) -> Evidence | None:
    return _evidence(str(evidence_file or EVIDENCE_FILE)).get(name)


def clear_of_zero(low: float | None, high: float | None, direction: float) -> bool:
    """An interval lying wholly on the expected side of 0."""
    if low is None or high is None:
        return False
    return (low if direction > 0 else -high) > 0


def fails_by_default_from_evidence(m: Metric) -> bool:
    """The study's rule: fail by default only when, in a real study (not a pipeline check or an interim
    summary), the metric's ρ interval taken in its expected direction lies above 0, its Holm-adjusted p is
    below 0.05, **and** its partial ρ given the control (the loss at θ; the embedding kNN distance for
    label-free evidence) has an interval above 0 in that direction too; where the study counted how often the
    gate fires across training seeds (``seed_firing``), it must fire on all three seeds of at least one task.
    (:func:`default_fail_reasons` names the conditions a metric misses.)

    The partial-ρ condition is there because every audit that measures a landscape also measures the error at θ,
    and its MAE gate fails by default: a predictor's own failure changes a verdict only where the MAE gate
    passes, and there only what the predictor says beyond the loss at θ counts. A metric that restates the
    loss at θ (partial ρ near 0) would add false alarms and nothing else, so it warns. The seed condition is
    there because a gate that never fires on all three models trained alike is a coin toss of the training
    seed, not a property of the task. (The random-split noise floor of the ratio, ``evidence.noise_floor``, is
    what a gate threshold must exceed: see :func:`threshold_clears_floor`.)"""
    return not default_fail_reasons(m)


#: :func:`default_fail_reasons`'s words for the seed condition: the one a metric that tracks the error beyond the
#: control can still miss.
UNSTABLE = "its gate fires on all three seeds of no task"


def default_fail_reasons(m: Metric, threshold: float | None = None) -> list[str]:
    """The conditions of :func:`fails_by_default_from_evidence` that ``m``'s evidence misses, in words (empty:
    the rule holds); with ``threshold``, also whether it lies beyond the random-split noise floor
    (:func:`threshold_clears_floor`)."""
    ev = m.evidence
    if ev is None or ev.rho is None:
        return ["not measured by the study"]
    if ev.pipeline_check:
        return ["a pipeline check decides nothing"]
    if ev.in_progress:
        return ["an interim summary decides nothing"]
    out = []
    if not clear_of_zero(ev.low, ev.high, m.direction):
        out.append("its ρ interval reaches 0 or lies on the wrong side")
    if ev.p_holm is None or ev.p_holm >= 0.05:
        out.append("p (Holm) ≥ 0.05")
    if not clear_of_zero(ev.partial[1], ev.partial[2], m.direction):
        out.append(f"its partial ρ given {ev.control} reaches 0")
    if ev.seed_firing is not None and ev.seed_firing[2] < 1:
        out.append(UNSTABLE)
    clears = None if threshold is None else threshold_clears_floor(m, threshold)
    if threshold is not None and clears is not True:
        out.append("the threshold lies within the random-split noise floor" if clears is False else
                   "no random-split noise floor judges the threshold")
    return out


def threshold_clears_floor(m: Metric, threshold: float) -> bool | None:
    """Whether a gate threshold lies beyond the metric's ratio on random splits (where nothing is out of
    distribution); a threshold inside that range fires on noise. None without a measured floor."""
    ev = m.evidence
    if ev is None or ev.noise_floor is None:
        return None
    return threshold > ev.noise_floor if m.direction > 0 else threshold < ev.noise_floor
