"""Audit specs: what to audit, on which data, with which probes and gates.

A spec is a YAML or JSON file validated by the Pydantic models below (unknown keys are errors).
Relative paths in a spec are resolved against the directory of the spec file, so a spec and the
files it names can travel together.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from traits import catalogue as _catalogue
from traits.errors import SpecError

#: Targets TRAITS knows how to read from each source kind, with their physical units.
TARGET_UNITS = {
    "formation_energy_per_atom": "eV/atom",
    "band_gap": "eV",
    "energy_per_atom": "eV/atom",
}

#: ``data.target: model``: a label-free audit, scored against the model's own unperturbed predictions.
MODEL_TARGET = "model"

#: Environment variable naming the root that ``${TRAITS_DATA}`` in a spec path expands to.
DATA_ROOT_ENV = "TRAITS_DATA"


#: Bounds on what one field can ask for, so no spec can ask for unbounded work or memory: names and
#: column names, free text, file paths (Linux PATH_MAX), and counts of structures a cap may name.
MAX_NAME = 200
MAX_TEXT = 4000
MAX_PATH = 4096
MAX_STRUCTURES = 10_000_000


def _path_length(value: Any) -> Any:
    if isinstance(value, str | os.PathLike) and len(str(value)) > MAX_PATH:
        raise ValueError(f"a path of {len(str(value)):,} characters; at most {MAX_PATH} are allowed")
    return value


#: A file path of a spec (at most MAX_PATH characters).
SpecPath = Annotated[Path, BeforeValidator(_path_length)]
#: A name or column name (at most MAX_NAME characters).
Name = Annotated[str, Field(max_length=MAX_NAME)]


class _Strict(BaseModel):
    # NaN and ±inf are refused in every number of a spec (e.g. `span: .inf`), naming the field
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


#: The element symbols a spec may name: pymatgen's (``Element.__members__``, deuterium and tritium included), listed
#: here so that checking a spec does not import pymatgen (``tests/test_startup_imports.py`` compares the two).
ELEMENT_SYMBOLS = frozenset(
    "H D T He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr Rb Sr Y "
    "Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os "
    "Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh "
    "Fl Mc Lv Ts Og".split())


def _check_element(symbol: str) -> str:
    if not isinstance(symbol, str) or symbol not in ELEMENT_SYMBOLS:
        raise ValueError(f"{symbol!r} is not a chemical element symbol (e.g. 'Fe', 'O')")
    return symbol


class GraphSpec(_Strict):
    """How a crystal becomes a graph."""

    cutoff: float = Field(8.0, gt=0, le=20, description="Neighbour cutoff radius in Å (periodic).")
    max_neighbors: int = Field(12, ge=1, le=64, description="Nearest neighbours kept per atom.")
    gaussian_step: float = Field(0.2, ge=0.01, le=20, description="Spacing (Å) of the Gaussian distance basis "
                                 "(at least 0.01 Å, so at most 2001 Gaussians).")
    gaussian_width: float | None = Field(
        None, gt=0, le=20, description="Width (Å) of each Gaussian; defaults to the step, as in CGCNN."
    )
    pad_neighbors: bool = Field(
        False,
        description="Pad atoms with fewer than max_neighbors neighbours with dummy edges beyond the "
        "cutoff, as the original CGCNN code does (needed to reproduce its checkpoints exactly).",
    )
    isolated_atoms: Literal["drop", "error"] = Field(
        "drop",
        description="What to do with a structure that has an atom with no neighbour within the cutoff: "
        "drop it (counted and reported) or stop with an error.",
    )


class DataSets(_Strict):
    """Named sets: each a data file read by the spec's ``source`` reader; the probes run on exactly these."""

    id: SpecPath = Field(description="The in-distribution (ID) test set.")
    ood: SpecPath = Field(description="The out-of-distribution (OOD) set.")
    train: SpecPath | None = Field(
        None, description="The training set, when known: the domain-shift distances are measured against it "
        "(they are skipped without it), and 'model.train' trains on it."
    )
    val: SpecPath | None = Field(None, description="The validation set (early stopping when 'model.train' is set).")

    def named(self) -> dict[str, Path]:
        """The given sets in split order (train, val, id, ood)."""
        return {k: v for k, v in (("train", self.train), ("val", self.val), ("id", self.id), ("ood", self.ood))
                if v is not None}


class DataSpec(_Strict):
    """Where the structures and targets come from: one file split by the omission rule, or named sets."""

    source: Literal["sample", "csv", "mp", "jarvis", "ase"] = Field(
        description="Reader: 'sample' (the bundled Materials Project sample), 'csv' (a CIF column and "
        "target columns), 'mp' (Materials Project JSON / JSON Lines), 'jarvis' (JARVIS-DFT JSON), 'ase' (any "
        "file ASE reads: extxyz, an ASE database, ...; targets from each frame's info / key-value pairs)."
    )
    path: SpecPath | None = Field(None, description="Data file; not used for source 'sample' or with 'sets'.")
    sets: DataSets | None = Field(
        None, description="Named sets instead of an omission split: {id: FILE, ood: FILE, train: FILE, val: FILE} "
        "(train and val optional), each read by 'source' with the options below; 'omit' must then be empty. "
        "The probes run on exactly these structures (no re-splitting, no subsample).",
    )
    target: Name = Field(description="Target property: formation_energy_per_atom, band_gap or energy_per_atom "
                        "(read from target_column, e.g. your own DFT energies), or 'model' for a label-free audit "
                        "(the loss is the mean squared deviation from the model's own unperturbed predictions; "
                        "no labels are read).")
    target_column: Name | None = Field(
        None, description="Column/field holding the target, when it differs from the source's default."
    )
    id_column: Name | None = Field(None, description="Column/field holding the id (csv: default 'material_id').")
    structure_column: Name | None = Field(None, description="Column holding the CIF text (csv: default 'cif').")
    subsample: int | None = Field(None, gt=0, le=MAX_STRUCTURES,
        description="Use at most this many structures (seeded).")
    graph: GraphSpec = Field(default_factory=GraphSpec)

    @field_validator("target")
    @classmethod
    def _known_target(cls, value: str) -> str:
        if value not in TARGET_UNITS and value != MODEL_TARGET:
            raise ValueError(f"unknown target {value!r}; choose one of {sorted(TARGET_UNITS) + [MODEL_TARGET]}")
        return value

    @model_validator(mode="after")
    def _path_needed(self) -> DataSpec:
        if self.target == MODEL_TARGET and self.target_column is not None:
            raise ValueError(f"data.target_column ({self.target_column!r}) does not apply with data.target: "
                             f"{MODEL_TARGET} (a label-free audit reads no labels); remove data.target_column, or "
                             "name the property it holds as data.target")
        if self.sets is not None:
            if self.path is not None:
                raise ValueError("give either 'path' (one file, split by 'omit') or 'sets' (named set files), "
                                 "not both")
            if self.subsample is not None:
                raise ValueError("'subsample' does not apply to 'sets': the probes run on exactly the named "
                                 "structures (probes.hessian.max_samples and probes.surface.max_samples still "
                                 "cap what each probe uses)")
            files = self.sets.named()
            names = {}
            for name, file in files.items():
                if file in names:
                    raise ValueError(f"sets.{names[file]} and sets.{name} name the same file {file}")
                names[file] = name
            return self
        if self.source != "sample" and self.path is None:
            raise ValueError(f"source {self.source!r} needs a 'path' to the data file (or 'sets' naming set files)")
        return self


class SplitSpec(_Strict):
    """Fractions of the in-distribution pool (every compound free of omitted elements)."""

    train: float = Field(0.8, gt=0, lt=1)
    val: float = Field(0.1, gt=0, lt=1)
    test: float = Field(0.1, gt=0, lt=1)
    ood_fraction: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="Only when nothing is omitted (a random-split baseline): the fraction held out as the "
        "'OOD' set, drawn at random, so the baseline has a comparable second test set.",
    )

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitSpec:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1, got {total:.6g}")
        return self


#: Kinds of held-out rule a spec's ``holdout`` can name (MatFold's split types of the same names).
HOLDOUT_KINDS = ("element", "chemsys", "spacegroup", "crystal_system", "group", "row")
CRYSTAL_SYSTEMS = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic")


class HoldoutSpec(_Strict):
    """A generalised omission rule: the OOD set is every compound carrying one of ``values`` of ``kind``.

    element: contains any listed element (the same as ``omit``); chemsys: its chemical system is one of the
    listed ones ("Fe-O", elements sorted); spacegroup: its space-group number (spglib, symprec 0.1) is listed;
    crystal_system: likewise its crystal system; group / row: it contains an element of a listed
    periodic-table group (1-18) or row (1-7)."""

    kind: Literal["element", "chemsys", "spacegroup", "crystal_system", "group", "row"]
    values: list[Name | int] = Field(min_length=1, max_length=500)

    @model_validator(mode="after")
    def _values(self) -> HoldoutSpec:
        out: list[str | int] = []
        for v in self.values:
            if self.kind == "element":
                out.append(_check_element(str(v)))
            elif self.kind == "chemsys":
                parts = str(v).split("-")
                out.append("-".join(sorted(_check_element(e) for e in parts)))
            elif self.kind in ("spacegroup", "group", "row"):
                hi = {"spacegroup": 230, "group": 18, "row": 7}[self.kind]
                try:
                    number = int(v)
                except (TypeError, ValueError):
                    raise ValueError(f"holdout {self.kind}: {v!r} is not a number (1-{hi})") from None
                if not 1 <= number <= hi or str(number) != str(v).strip():
                    raise ValueError(f"holdout {self.kind}: {v!r} is not a number from 1 to {hi}")
                out.append(number)
            else:
                if str(v).lower() not in CRYSTAL_SYSTEMS:
                    raise ValueError(f"holdout crystal_system: {v!r} is not one of {', '.join(CRYSTAL_SYSTEMS)}")
                out.append(str(v).lower())
        if len(set(out)) != len(out):
            raise ValueError("holdout lists a value twice")
        if out != list(self.values):
            object.__setattr__(self, "values", out)  # normalised, without re-running validation
        return self

    def label(self) -> str:
        return f"{self.kind} {', '.join(str(v) for v in self.values)}"


class CGCNNHyper(_Strict):
    """Hyper-parameters of the crystal graph convolutional network."""

    atom_fea_len: int = Field(64, ge=1, le=1024)
    n_conv: int = Field(3, ge=1, le=12)
    h_fea_len: int = Field(128, ge=1, le=4096)
    n_h: int = Field(1, ge=0, le=6)
    batch_norm: bool = True
    pooling: Literal["mean", "sum", "max"] = "mean"


class TrainSpec(_Strict):
    """How to train a model when no checkpoint is given."""

    epochs: int = Field(30, ge=1, le=100_000)
    batch_size: int = Field(64, ge=1, le=65_536)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    scheduler: Literal["cosine", "plateau", "none"] = "cosine"
    loss: Literal["mse", "mae", "huber"] = "mse"
    patience: int = Field(10, ge=1, le=100_000, description="Early stopping: epochs without validation improvement.")
    checkpoint_every: int = Field(1, ge=1, le=100_000, description="Save a resumable state every this many epochs.")


ModelFormat = Literal["traits", "state-dict", "cgcnn-original"]


def _adapter(architecture: str):
    """The adapter class of ``architecture``: its declarations (``trainable``, ``checkpoint_formats``,
    ``options_field``) decide which model fields apply, with no list of architectures kept here."""
    from traits.models.base import adapter_class

    return adapter_class(architecture)


def trainable_architectures() -> list[str]:
    """The adapters TRAITS trains itself (``trainable``), for messages; an adapter that fails to import is left out."""
    from traits.models.base import adapter_class, adapter_names

    out = []
    for name in adapter_names():
        try:
            if adapter_class(name).trainable:
                out.append(name)
        except Exception:  # noqa: BLE001 - a broken third-party adapter is named elsewhere, not here
            continue
    return out


class ModelSpec(_Strict):
    """The model under audit: an adapter (architecture) and either a checkpoint or how to train one."""

    architecture: Name = Field("cgcnn", description="The model adapter: cgcnn, cgcnn-original, chgnet, sevenn, "
                              "torch, or one registered through the 'traits.models' entry points.")
    hyper: CGCNNHyper = Field(default_factory=CGCNNHyper, description="CGCNN hyper-parameters (cgcnn, "
                              "cgcnn-original).")
    options: dict[str, Any] = Field(default_factory=dict, description="The adapter's own settings, validated by "
                                    "its options model (see 'traits schema'), e.g. chgnet {version: 0.3.0}.")
    checkpoint: SpecPath | None = Field(None, description="Weights to audit (safetensors + JSON sidecar, "
                                    "a plain state dict, or an original CGCNN .pth.tar; for chgnet / sevenn a "
                                    "local checkpoint instead of the weights bundled in the package).")
    format: ModelFormat = "traits"
    train: TrainSpec | None = None

    @field_validator("architecture")
    @classmethod
    def _known_adapter(cls, value: str) -> str:
        from traits.models.base import adapter_names

        if value not in adapter_names():
            raise ValueError(f"unknown model adapter {value!r}; installed adapters: {', '.join(adapter_names())}")
        return value

    def adapter_options(self):
        """``options`` validated by the adapter's own options model (CGCNN: ``hyper``)."""
        from traits.models.base import options_class

        if _adapter(self.architecture).options_field == "hyper":
            return self.hyper
        # the context marks options read from a spec (not given by run_audit with a model object)
        return options_class(self.architecture).model_validate(self.options, context={"spec": True})

    @model_validator(mode="after")
    def _adapter_fields(self) -> ModelSpec:
        cls = _adapter(self.architecture)
        if cls.options_field == "hyper":
            if self.options:
                raise ValueError(f"model.options does not apply to {self.architecture!r} (use model.hyper)")
            return self
        if self.train is not None and not cls.trainable:
            raise ValueError(f"model.train applies to {', '.join(trainable_architectures())} only, not "
                             f"{self.architecture!r}")
        if self.format != "traits" and self.format not in cls.checkpoint_formats:
            raise ValueError(f"model.format applies to {', '.join(trainable_architectures())} only, not "
                             f"{self.architecture!r}")
        if "hyper" in self.model_fields_set:
            raise ValueError(f"model.hyper holds CGCNN hyper-parameters; {self.architecture!r} takes model.options")
        try:
            self.adapter_options()
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(p) for p in problem["loc"])
            raise ValueError(f"model.options{'.' + where if where else ''} ({self.architecture}): "
                             f"{problem['msg']}") from None
        if self.checkpoint is None and not cls.bundled:
            raise ValueError(f"model {self.architecture!r} needs model.checkpoint (a weights file)")
        return self

    @model_validator(mode="after")
    def _checkpoint_or_train(self) -> ModelSpec:
        cls = _adapter(self.architecture)
        if not cls.trainable:
            return self
        if self.checkpoint is None and self.train is None:
            raise ValueError("give either 'checkpoint' (weights to audit) or 'train' (how to train them)")
        if self.format not in cls.checkpoint_formats:
            readers = [n for n in trainable_architectures() if self.format in _adapter(n).checkpoint_formats]
            raise ValueError(f"format {self.format!r} needs architecture {' or '.join(map(repr, readers))}")
        return self


class HessianSpec(_Strict):
    enabled: bool = True
    backend: Literal["traits", "pyhessian"] = "traits"
    top_k: int = Field(5, ge=1, le=50)
    max_steps: int = Field(60, ge=2, le=1000,
        description="Most Lanczos steps (HVPs) of each eigenvalue run (top-k, λ_min).")
    tol: float = Field(1e-3, gt=0, description="Relative residual at which a Ritz pair counts as converged "
                       "(for λ_min relative to |λ_min|, floored at 1% of the spectral radius).")
    hvp: Literal["retain", "recompute", "jvp"] = Field(
        "retain", description="Hessian-vector products: double backward keeping each batch's gradient graph "
        "between products (fastest, bit-identical to 'recompute'), rebuilding it per product, or "
        "forward-over-reverse ('jvp').")
    trace_hvps: int = Field(60, ge=3, le=10_000, description="HVP budget of each trace estimate.")
    density_runs: int = Field(3, ge=1, le=100)
    density_steps: int = Field(40, ge=2, le=1000)
    max_samples: int | None = Field(
        512, gt=0, le=MAX_STRUCTURES,
            description="Subsample each split to at most this many structures for the Hessian."
    )


class SurfaceSpec(_Strict):
    enabled: bool = True
    span: float = Field(1.0, gt=0, description="Grid covers α, β in [-span, span] (filter-normalised units).")
    points_1d: int = Field(41, ge=5, le=401)
    points_2d: int = Field(21, ge=5, le=101)
    directions_1d: int = Field(2, ge=1, le=32, description="Random directions for the 1D curves.")
    two_d: bool = Field(True, description="Also compute the 2D surface.")
    include_bias_and_norm: bool = Field(False, description="Perturb biases and normalisation layers too.")
    tolerance: float = Field(0.1, gt=0, description="τ: the band δ = τ·L_ID(θ), one absolute band for every split; "
                             "the robust region keeps L ≤ L(θ) + δ (traits.probes.metrics.band).")
    sharpness_radius: float = Field(0.1, gt=0, description="ε of the sharpness metric.")
    chunk_size: int | None = Field(None, ge=1, le=100_000, description="Grid points per pass (auto when empty).")
    compile: bool | Literal["auto"] = Field(
        "auto", description="Evaluate the surface losses with a torch.compile-d (inductor) loss, used only if it "
        "matches the uncompiled loss at θ (relative 1e-5); its compile time is recorded. 'auto' (default): compile "
        "when the audit's planned surface evaluations, at the measured time of one, would save more than a compile "
        "costs (traits.probes.surface.compile_pays; the decision and its numbers are in provenance.compile); on a "
        "2-core CPU a CGCNN point was 1.2-1.3x faster after a 12-27 s compile. It changes no number beyond rounding, "
        "so it is not part of what makes two audits the same.")
    max_samples: int | None = Field(1024, gt=0, le=MAX_STRUCTURES, description="Subsample each split for the surfaces.")
    zoom_points: int = Field(
        13, ge=0, le=101, description="When the robust basin around θ spans fewer than 5 cells of the 2D grid, also "
        "evaluate a zoomed zoom_points × zoom_points grid on the same directions, spanning ±3 robust radii (the "
        "basin then spans about 4 of its cells), so the basin can be read; 0 turns it off.")
    gradient_1d: bool = Field(False, description="Also evaluate ‖∇θ L‖ and the slope dL/dα at every point of the "
                              "1D curves (traits.probes.gradient_surface; about 3 loss evaluations' cost per "
                              "point), with the trapezoid check of the curves against their slopes.")
    gradient_points_2d: int = Field(0, ge=0, le=101, description="Also evaluate ‖∇θ L‖ on an n × n grid of the "
                                    "random plane (0: off; keep it coarser than points_2d).")
    perturbations: int = Field(0, ge=0, le=1024, description="Random filter-normalised directions d_k for the "
                               "perturbation statistics L(θ ± s d_k) − L(θ) (traits.probes.perturbation): mean rise, "
                               "curvature along random directions, share leaving the band; 0: off.")
    perturbation_scale: float | None = Field(None, gt=0, le=10, description="s of the perturbations (default: "
                                             "sharpness_radius).")
    directions: Literal["random", "hessian"] = Field(
        "random",
        description="'hessian' adds a 2D surface in the plane of the eigenvectors of the largest and the "
        "smallest Hessian eigenvalues of the training loss (Böttcher & Wheeler 2022), evaluated for every "
        "split on that same plane, next to the random-direction surface.",
    )
    entropy_temperature: float | None = Field(
        None, gt=0, description="Temperature of the loss entropy; default: the ID test loss at θ."
    )


class ShiftSpec(_Strict):
    """Domain-shift diagnostics: target shift and k-nearest-neighbour distances to the training split."""

    enabled: bool = True
    k: int = Field(5, ge=1, le=100, description="Neighbours: the distance of a compound is the mean distance "
                   "to its k nearest training compounds.")
    max_train: int | None = Field(
        5000, gt=0, le=MAX_STRUCTURES,
            description="Measure distances against at most this many training compounds (seeded)."
    )
    composition: Literal["fractions", "fractions+properties"] = Field(
        "fractions+properties",
        description="Composition vector: element fractions over Z = 1..100, optionally with six "
        "fraction-weighted element properties (electronegativity, radius, row, group, Mendeleev number, mass).",
    )
    max_points: int = Field(2000, ge=10, le=MAX_STRUCTURES,
        description="Per-compound values kept per split for the histograms.")
    near_ratio: float = Field(
        1.5, gt=0, description="The OOD set is 'close' to training in the model's embedding when its median "
        "kNN distance is at most this multiple of the ID one (the verdict's fragile-representation case).",
    )
    target_outside_fraction: float = Field(
        0.2, gt=0, le=1, description="The OOD targets 'lie outside the training range' when at least this share "
        "falls outside the training 1st-99th percentiles (about 0.02 for a split drawn like the training set).",
    )
    density_components: int = Field(
        0, ge=0, le=30, description="Fit Gaussian mixtures of 1 to this many components to the training "
        "compounds' standardised embeddings (at most max_points of them, seeded), keep the one with the lowest "
        "BIC, and report each split's mean negative log-likelihood under it (the embedding density; OOD minus ID "
        "is `embedding_density_gap`). 0 (the default) turns it off: with full covariances it took 4-90 s on the "
        "quickstart's 64-dimensional embeddings on a shared 2-core machine. Study v2 uses 10.")


class UncertaintySpec(_Strict):
    """Per-compound predictive uncertainty (:mod:`traits.probes.uncertainty`), scored against the errors."""

    enabled: bool = Field(False, description="Run Hessian-WAG, linearised and last-layer Laplace and the kNN "
                          "baseline, and score them against the actual errors (section 'Would we have known "
                          "without labels?'). The WAG span and tolerance are those of probes.surface.")
    top_k: int = Field(10, ge=1, le=50, description="Lanczos pairs of the training-loss Hessian for the Laplace "
                       "posterior (only certified pairs are used).")
    planes: int = Field(2, ge=0, le=8, description="Random filter-normalised planes for Hessian-WAG, besides "
                        "the Hessian-eigenvector plane.")
    points: int = Field(9, ge=3, le=41, description="Grid points per axis of each WAG plane.")
    max_samples: int | None = Field(256, gt=0, le=MAX_STRUCTURES,
        description="Training structures of the curvature and WAG losses.")
    max_eval: int | None = Field(1000, gt=0, le=MAX_STRUCTURES,
        description="At most this many val / ID / OOD compounds scored.")


class LabelFreeSpec(_Strict):
    """Label-free probes (:mod:`traits.probes.labelfree`), run beside the labelled ones on the same structures:
    they need no target, so they mean the same in a labelled and a label-free audit."""

    enabled: bool = Field(False, description="Measure the Gauss-Newton curvature of the model's own predictions "
                          "(λ_max and trace of (2/N)JᵀJ, exact, on the Hessian probe's sample), per-structure "
                          "gradient norms, the prediction sharpness at `radius`, and the label-free 2D surface "
                          "(its SMAD and persistence) on the surfaces' random plane and sample.")
    radius: float = Field(0.1, gt=0, le=10, description="Filter-normalised radius of the prediction sharpness.")
    two_d: bool = Field(True, description="Also evaluate the label-free 2D surface (probes.surface.points_2d "
                        "squared forward passes per split) and its topology.")
    max_jacobian_entries: int = Field(
        200_000_000, ge=1, le=2_000_000_000, description="Refuse (with a note in the result) a Jacobian of more "
        "structures × parameters than this: it is held whole (8 bytes each in float64).")


class ProbeSpec(_Strict):
    seed: int | None = Field(
        None, ge=0, lt=2**63, description="Seed of every probe's random choices (structure subsamples, jackknife "
        "groups, directions, Lanczos starts, trace probes, bootstrap resamples) and of nothing else; default: the "
        "spec's `seed`. Re-audit one checkpoint on the same split with other probe seeds to see how much the "
        "probes' own draws move the numbers.")
    loss: Literal["mse", "mae"] = Field("mse", description="Loss in physical units used by every probe.")
    splits: list[Literal["train", "id", "ood"]] = Field(default_factory=lambda: ["id", "ood"])
    hessian: HessianSpec = Field(default_factory=HessianSpec)
    surface: SurfaceSpec = Field(default_factory=SurfaceSpec)
    shift: ShiftSpec = Field(default_factory=ShiftSpec)
    uncertainty: UncertaintySpec = Field(default_factory=UncertaintySpec)
    label_free: LabelFreeSpec = Field(default_factory=LabelFreeSpec)

    @field_validator("splits")
    @classmethod
    def _has_id_ood(cls, value: list[str]) -> list[str]:
        if "id" not in value or "ood" not in value:
            raise ValueError("probes.splits must include both 'id' and 'ood' (they are compared)")
        return list(dict.fromkeys(value))


#: A gate's default threshold, from its catalogue entry (the one place it is written).
_threshold = _catalogue.default_threshold

#: The metrics a gate reads, in the catalogue's order (``gates.fail_on`` may name these).
GATED_METRICS = tuple(m.name for m in _catalogue.gated())

_GATE_DOC = """Thresholds turning measurements into pass / warn / fail findings.

    A violated gate fails the audit when its metric is in ``fail_on`` and warns otherwise. ``fail_on``
    defaults to :func:`traits.catalogue.default_fail_on`: the MAE ratio and the non-finite share of the
    surfaces, plus a landscape or distance metric only when the adopted study shows it tracks OOD error
    beyond the noise floor and fires on all three training seeds of some task (the adopted study, study-2 on MP,
    adds none: the λ_max and trace ratios track it but never fire on all three seeds of a task)."""


def gate_spec_model(metrics: tuple[_catalogue.Metric, ...] | None = None) -> type[_Strict]:
    """The gate spec class for these gated metrics (default: the catalogue's, :func:`traits.catalogue.gated`): one
    threshold field per metric, in the catalogue's order (its ``gate_field``, default ``threshold`` and
    ``gate_description``; a fraction lies between 0 and 1, any other unit above 0), and ``fail_on``, which may
    name any of them. :data:`GateSpec` is this class for the catalogue as imported."""
    from pydantic import create_model

    metrics = tuple(m for m in (metrics if metrics is not None else _catalogue.gated()) if m.gate_field)
    fields: dict[str, Any] = {}
    for m in metrics:
        bounds = {"ge": 0, "le": 1} if m.unit == "fraction" else {"gt": 0}
        fields[m.gate_field] = (float, Field(m.threshold, **bounds, description=m.gate_description
                                             or f"Flag when the OOD/ID {m.label} ratio is beyond this."))
    names = tuple(m.name for m in metrics)
    default_fail_on = _catalogue.default_fail_on
    fields["fail_on"] = (list[Literal[names]], Field(  # type: ignore[valid-type]
        default_factory=lambda: [n for n in default_fail_on() if n in names],
        description="Gates whose violation fails the audit; the others only warn. Default: the MAE ratio and "
        "the non-finite share, plus any metric the adopted study shows to track OOD error (see `traits study`).",
    ))
    return create_model("GateSpec", __base__=_Strict, __doc__=_GATE_DOC, __module__=__name__, **fields)


GateSpec = gate_spec_model()


class ReportSpec(_Strict):
    formats: list[Literal["json", "html", "pdf"]] = Field(default_factory=lambda: ["json", "html", "pdf"])
    out_dir: SpecPath = Path("traits-out")
    interactive: bool = Field(
        False, description="Also write report-interactive.html: 3D loss surfaces you can turn and sortable tables, "
        "self-contained (its script is inlined, nothing is fetched), beside the script-free report.html and the PDF.")


class CardSpec(_Strict):
    """Optional model-card fields, shown in the report (provenance section and summary page)."""

    intended_use: str = Field("", max_length=MAX_TEXT, description="What the model is for, and what it is not for.")
    training_data: str = Field("", max_length=MAX_TEXT,
        description="The data the model was trained on (source, size, licence).")
    licence: str = Field("", max_length=MAX_NAME,
        description="Licence of the model weights, e.g. 'CC-BY-4.0' or 'MIT'.")


class AuditSpec(_Strict):
    """A whole audit."""

    name: str = Field(min_length=1, max_length=MAX_NAME)
    description: str = Field("", max_length=MAX_TEXT)
    seed: int = Field(0, ge=0, lt=2**63, description="Seed of every random choice (0 <= seed < 2**63).")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "float64"] = "float32"
    data: DataSpec
    omit: list[Name] = Field(
        default_factory=list,
        max_length=118,
        description="Element symbols; a compound containing any of them is out of distribution. "
        "Empty: a random-split baseline.",
    )
    holdout: HoldoutSpec | None = Field(
        None, description="Instead of 'omit': a generalised omission rule {kind: element|chemsys|spacegroup|"
        "crystal_system|group|row, values: [...]}; every compound it matches is out of distribution.")
    split: SplitSpec = Field(default_factory=SplitSpec)
    model: ModelSpec
    probes: ProbeSpec = Field(default_factory=ProbeSpec)
    gates: GateSpec = Field(default_factory=GateSpec)
    report: ReportSpec = Field(default_factory=ReportSpec)
    card: CardSpec | None = Field(None, description="Optional model card: intended use, training data, licence.")

    @model_validator(mode="after")
    def _near_below_far(self) -> AuditSpec:
        near, far = self.probes.shift.near_ratio, self.gates.max_embedding_knn_ratio
        if near > far:
            raise ValueError(f"probes.shift.near_ratio ({near:g}) must not exceed gates.max_embedding_knn_ratio "
                             f"({far:g}): a set cannot be both close to and far from the training compounds")
        return self

    @model_validator(mode="after")
    def _mode_aware_fail_on(self) -> AuditSpec:
        """A label-free audit's default ``fail_on`` holds only metrics whose evidence was measured label-free."""
        if self.data.target == MODEL_TARGET and "fail_on" not in self.gates.model_fields_set:
            self.gates.fail_on = _catalogue.default_fail_on(mode="label-free")
            self.gates.model_fields_set.discard("fail_on")
        return self

    @model_validator(mode="after")
    def _target_matches_model(self) -> AuditSpec:
        from traits.models.base import adapter_class

        if self.data.target == MODEL_TARGET:
            return self
        adapter = adapter_class(self.model.architecture)()
        have = adapter.declared_property(self.model.adapter_options())
        if have is not None and have != self.data.target:
            raise ValueError(
                f"model {self.model.architecture!r} predicts {have} but data.target is {self.data.target}: scoring "
                f"one against the other is meaningless. Use data.target: {have} with a target_column holding it, "
                "or data.target: model for a label-free audit")
        return self

    @model_validator(mode="after")
    def _one_omission_rule(self) -> AuditSpec:
        if self.holdout is not None and self.omit:
            raise ValueError("give either 'omit' (elements) or 'holdout' (a generalised rule), not both")
        if self.holdout is not None and self.data.sets is not None:
            raise ValueError("holdout: does not apply to data.sets (the OOD set is data.sets.ood)")
        return self

    @model_validator(mode="after")
    def _named_sets(self) -> AuditSpec:
        sets = self.data.sets
        if sets is None:
            return self
        problems = []
        if self.omit:
            problems.append(f"omit: must be empty when data.sets names the sets (got {self.omit}); the OOD set is "
                            "data.sets.ood")
        if "split" in self.model_fields_set:
            problems.append("split: the fractions do not apply to data.sets (the sets are used as given); remove it")
        if self.model.train is not None and (sets.train is None or sets.val is None):
            missing = " and ".join(f"data.sets.{k}" for k in ("train", "val") if getattr(sets, k) is None)
            problems.append(f"model.train: training needs {missing} (the set files to train and early-stop on); "
                            "give them, or a model.checkpoint without model.train")
        if sets.train is None:
            if "train" in self.probes.splits:
                problems.append("probes.splits: 'train' needs data.sets.train")
            if self.probes.surface.directions == "hessian":
                problems.append("probes.surface.directions: 'hessian' takes its plane from the training loss and "
                                "needs data.sets.train")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @field_validator("omit")
    @classmethod
    def _elements(cls, value: list[str]) -> list[str]:
        for symbol in value:
            _check_element(symbol)
        if len(set(value)) != len(value):
            raise ValueError("omit lists an element twice")
        return value


# ----------------------------------------------------------------------------------------------
# Loading


def _expand(path: Path, base: Path, where: str = "the spec") -> Path:
    text = str(path)
    if "${" + DATA_ROOT_ENV + "}" in text:
        root = os.environ.get(DATA_ROOT_ENV)
        if not root:
            raise SpecError(f"{where}: the path {text!r} uses ${{{DATA_ROOT_ENV}}} but the environment variable "
                            f"{DATA_ROOT_ENV} is not set; set it to the data root")
        text = text.replace("${" + DATA_ROOT_ENV + "}", root)
    p = Path(os.path.expanduser(text))
    return p if p.is_absolute() else (base / p).resolve()


def _format_location(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid audit spec ({err.error_count()} problem{'s' * (err.error_count() > 1)})"]
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not part of the audit spec; check the spelling)"
        lines.append(f"  - {_format_location(e['loc'])}: {msg}")
    return "\n".join(lines)


def read_mapping(path: Path, *, aliases: bool = True) -> dict[str, Any]:
    """Read a YAML or JSON file into a dict, with errors naming the file.

    YAML is loaded by :func:`traits.inputs.load_yaml_text`: what aliases expand to is bounded, and with
    ``aliases=False`` (audit specs) an alias is refused, naming the line."""
    from traits.inputs import load_yaml_text, parse_json, read_text_checked

    path = Path(path)
    text = read_text_checked(path, "spec file", SpecError)
    if path.suffix.lower() == ".json":
        raw = parse_json(text, SpecError, lambda exc: f"{path}: not valid JSON: {exc}",
                         f"{path}: nested too deeply to be an audit spec")
    else:
        raw = load_yaml_text(text, path, SpecError, aliases=aliases)
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: an audit spec must be a mapping of keys to values, got {type(raw).__name__}")
    return raw


def load_spec(
    path: str | Path,
    *,
    check_files: bool = True,
    need_checkpoint: bool = True,
    overrides: dict[str, Any] | None = None,
) -> AuditSpec:
    """Load and validate an audit spec; relative paths are resolved against the spec's directory.

    ``overrides`` are dotted keys (e.g. ``{"data.subsample": 200}``) applied before validation.
    """
    path = Path(path)
    raw = read_mapping(path, aliases=False)
    for key, value in (overrides or {}).items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpecError(f"{path}: cannot override {key}: {part} is not a mapping")
        node[leaf] = value
    return spec_from_mapping(
        raw, source=str(path), base=path.parent, check_files=check_files, need_checkpoint=need_checkpoint
    )


def spec_from_mapping(
    raw: dict[str, Any],
    *,
    source: str = "<spec>",
    base: Path | None = None,
    check_files: bool = True,
    need_checkpoint: bool = True,
) -> AuditSpec:
    """Validate a mapping; with ``check_files`` the data file (and, with ``need_checkpoint``, a
    checkpoint that is not to be trained) must exist."""
    try:
        spec = AuditSpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, source)) from None
    base = Path(base or Path.cwd())
    if spec.data.path is not None:
        spec.data.path = _expand(spec.data.path, base, f"{source}: data.path")
    if spec.data.sets is not None:
        for name, file in spec.data.sets.named().items():
            setattr(spec.data.sets, name, _expand(file, base, f"{source}: data.sets.{name}"))
    if spec.model.checkpoint is not None:
        spec.model.checkpoint = _expand(spec.model.checkpoint, base, f"{source}: model.checkpoint")
    spec.report.out_dir = _expand(spec.report.out_dir, base, f"{source}: report.out_dir")
    if check_files:
        problems = []
        if spec.data.path is not None and not spec.data.path.is_file():
            problems.append(f"  - data.path: {_not_a_file(spec.data.path)}")
        if spec.data.sets is not None:
            problems += [f"  - data.sets.{name}: {_not_a_file(file)}"
                         for name, file in spec.data.sets.named().items() if not file.is_file()]
        ckpt = spec.model.checkpoint
        if need_checkpoint and ckpt is not None and not ckpt.is_file() and not (
                ckpt.is_dir() and _folder_checkpoints(spec.model.architecture)) and (
                spec.model.train is None or os.path.lexists(ckpt)):  # training replaces a missing file only
            problems.append(f"  - model.checkpoint: {_not_a_file(ckpt)}")
        if problems:
            raise SpecError(f"{source}: invalid audit spec\n" + "\n".join(problems))
    return spec


def _folder_checkpoints(architecture: str) -> bool:
    """Whether the adapter reads a model folder (ALIGNN, MACE) rather than one weights file."""
    from traits.models.base import adapter_class

    try:
        return bool(getattr(adapter_class(architecture), "checkpoint_folder", False))
    except SpecError:
        return False


def _not_a_file(path: Path) -> str:
    """Why ``path`` is not a usable file: missing, or a directory / FIFO / device (see traits.inputs)."""
    from traits.inputs import describe_kind

    kind = describe_kind(path)
    return f"no such file: {path}" if kind in (None, "missing") else f"{path} is {kind}, not a regular file"


def spec_json_schema() -> dict[str, Any]:
    """The JSON schema of an audit spec (for editors and validation in other tools)."""
    from traits.models.base import options_schemas

    schema = AuditSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "TRAITS audit spec"
    # each adapter's own settings (model.options), by model.architecture
    schema["x-traits-model-options"] = options_schemas()
    return schema
