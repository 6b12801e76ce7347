"""Task families generated from a data pool, written as a campaign directory.

A *family* is a kind of omission rule (MatFold's split types): ``element`` (leave one element out),
``chemsys``, ``spacegroup``, ``crystal_system``, ``group`` and ``row`` (periodic table), and ``random``
(the random-split baselines, nothing omitted). For each family the pool's labels are counted and the
held-out values chosen so that every task has at least ``min_ood`` OOD compounds and leaves at least
``min_train`` compounds for training, both counted *after* the subsample the profile draws (expected
counts: pool count × subsample / pool size).

Each task is an ordinary audit spec: the element family uses ``omit: [El]`` (backwards compatible, so
verdicts and reports name the element), the others the generalised ``holdout: {kind, values}`` rule,
the baselines ``omit: []``. :func:`write_study` writes the specs, ``campaign.yaml`` (profiles
``study`` and ``tiny``, the resources each task needs) and ``families.json`` (the table of tasks with
the counts that chose them).

Labels: TRAITS' splitter (:func:`traits.data.splits.compound_label`) computes them with MatFold's
definitions (chemsys from the composition, spglib symmetry with symprec 0.1, pymatgen rows and groups);
with ``labels="matfold"`` the generator takes them from MatFold itself (``pip install traits-audit[study]``)
and the counts are the same (tests/test_study_families.py checks the two agree).
"""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from traits.errors import DataError, SpecError
from traits.files import ensure_dir, write_json_atomic, write_text_atomic

FAMILIES = ("element", "chemsys", "spacegroup", "crystal_system", "group", "row", "random")
SYMMETRY_KINDS = ("spacegroup", "crystal_system")
STUDY_VERSION = "study-1"

#: The study's core elements across the periodic table (issue 16): alkali, alkaline-earth, 3d, 4d/5d,
#: p-block, chalcogens, halogens; Fe and O among them. In the 36,738-crystal MP pool W (451 compounds) and
#: Ta (730) fall short of 100 expected OOD compounds in a 5,000-crystal subsample; La (5d¹ 6s², row 6)
#: stands for the 5d row.
STUDY_ELEMENTS = ("Li", "Na", "Mg", "Ca", "Fe", "Co", "Mn", "Nb", "La", "Si", "O", "S", "Se", "F", "Cl")

TARGET_SHORT = {"formation_energy_per_atom": "enthalpy", "band_gap": "gap"}

#: The architecture, training and probe settings every generated task shares (the reference tasks'); the
#: campaign profile then sets the budget.
DEFAULT_TEMPLATE: dict[str, Any] = {
    "seed": 0,
    "split": {"train": 0.8, "val": 0.1, "test": 0.1, "ood_fraction": 0.1},
    "model": {
        "architecture": "cgcnn",
        "hyper": {"atom_fea_len": 32, "n_conv": 2, "h_fea_len": 64, "n_h": 1, "batch_norm": True, "pooling": "mean"},
        "train": {"epochs": 30, "batch_size": 64, "lr": 0.003, "weight_decay": 0.0001, "scheduler": "cosine",
                  "patience": 10},
    },
    "probes": {
        "loss": "mse", "splits": ["id", "ood"],
        "hessian": {"top_k": 5, "max_steps": 40, "trace_hvps": 24, "density_runs": 2, "density_steps": 24,
                    "max_samples": 128},
        "surface": {"span": 0.5, "points_1d": 31, "points_2d": 21, "directions_1d": 2, "tolerance": 0.1,
                    "max_samples": 256},
    },
    "report": {"formats": ["json", "html"]},
}

#: The issue's budget: early stopping with patience up to 40 epochs, 5,000-crystal subsamples, Hessians and
#: surfaces on 256 structures per split with certified convergence (Lanczos to a 1e-3 relative residual
#: within 120 steps), traces from 99 Hutch++ HVPs (with standard errors).
STUDY_PROFILE: dict[str, Any] = {
    "data.subsample": 5000,
    "model.train.epochs": 40,
    "model.train.patience": 8,
    "probes.hessian.max_samples": 256,
    "probes.hessian.max_steps": 120,
    "probes.hessian.tol": 0.001,
    "probes.hessian.trace_hvps": 99,
    "probes.hessian.density_runs": 3,
    "probes.hessian.density_steps": 40,
    "probes.surface.max_samples": 256,
    "probes.surface.points_1d": 31,
    "probes.surface.points_2d": 21,
    "probes.shift.max_train": 5000,
    "probes.surface.compile": False,  # as study 1 ran; a study's audits run alike, not by a timing decision
    "report.formats": ["json", "html"],
}
#: A pipeline check only (never evidence): the bundled sample's scale, one epoch, tiny probes.
TINY_PROFILE: dict[str, Any] = {
    "data.subsample": 400,
    "model.hyper.atom_fea_len": 8, "model.hyper.n_conv": 1, "model.hyper.h_fea_len": 8,
    "model.train.epochs": 1, "model.train.patience": 1, "model.train.batch_size": 32,
    "probes.hessian.top_k": 2, "probes.hessian.max_steps": 8, "probes.hessian.trace_hvps": 6,
    "probes.hessian.density_runs": 1, "probes.hessian.density_steps": 6, "probes.hessian.max_samples": 24,
    "probes.surface.points_1d": 7, "probes.surface.points_2d": 5, "probes.surface.directions_1d": 1,
    "probes.surface.max_samples": 32,
    "probes.shift.max_train": 200,
    "report.formats": ["json"],
}

#: Study v2 (docs/study/v2/PREREGISTRATION.md): the study's budget with the label-free probes beside the labelled
#: ones, on the same structures.
V2_PROFILE: dict[str, Any] = {**STUDY_PROFILE, "probes.label_free.enabled": True,
                              "probes.shift.density_components": 10,
                              "probes.surface.gradient_1d": True, "probes.surface.perturbations": 32,
                              "probes.surface.compile": True}  # every second-pass audit alike, and faster
#: Study v2's first pass: training (the checkpoint is kept), accuracy, domain shift and the label-free probes;
#: the labelled Hessians and surfaces run later on the kept checkpoints (``traits study reprobe``, profile v2).
V2_LABEL_FREE_PROFILE: dict[str, Any] = {**STUDY_PROFILE, "probes.label_free.enabled": True,
                                         "probes.shift.density_components": 10,
                                         "probes.hessian.enabled": False, "probes.surface.enabled": False,
                                         "report.formats": ["json"]}
#: Study v2's second pass: the labelled probes of v1 (and the surface extras v2 adds) on the kept checkpoints,
#: without the label-free probes, which the first pass already measured on the same models and structures.
V2_LABELLED_PROFILE: dict[str, Any] = {**V2_PROFILE, "probes.label_free.enabled": False}
#: A pipeline check of study v2 (never evidence).
V2_TINY_PROFILE: dict[str, Any] = {**TINY_PROFILE, "probes.label_free.enabled": True}


def study_profiles(subsample: int | None = None) -> dict[str, dict[str, Any]]:
    """The profiles a generated study's campaign.yaml offers (``subsample``: the study budget's data.subsample)."""
    import copy

    sub = {} if subsample is None else {"data.subsample": subsample}
    profiles = {"study": {**STUDY_PROFILE, **sub}, "tiny": dict(TINY_PROFILE), "v2": {**V2_PROFILE, **sub},
                "v2-label-free": {**V2_LABEL_FREE_PROFILE, **sub},
                "v2-labelled": {**V2_LABELLED_PROFILE, **sub}, "v2-tiny": dict(V2_TINY_PROFILE)}
    return {k: copy.deepcopy(v) for k, v in profiles.items()}  # no shared list: the YAML holds no aliases


@dataclass
class PoolLabels:
    """Per compound of a pool: its elements and (when computed) its symmetry labels."""

    ids: list[str]
    elements: list[frozenset[str]]
    spacegroup: list[int | None] | None = None
    crystal_system: list[str | None] | None = None
    data_hash: str = ""
    backend: str = "traits"

    def __len__(self) -> int:
        return len(self.ids)

    def labels(self, kind: str) -> list:
        """Each compound's label under ``kind`` (a set for element, group and row)."""
        from traits.data.splits import compound_label

        if kind in SYMMETRY_KINDS:
            got = getattr(self, kind)
            if got is None:
                raise DataError(f"the {kind} labels were not computed (pass symmetry=True)")
            return got
        return [compound_label(kind, els) for els in self.elements]

    def to_json(self) -> dict:
        return {"ids": self.ids, "elements": [sorted(e) for e in self.elements], "spacegroup": self.spacegroup,
                "crystal_system": self.crystal_system, "data_hash": self.data_hash, "backend": self.backend}

    @classmethod
    def from_json(cls, raw: dict) -> PoolLabels:
        return cls(ids=raw["ids"], elements=[frozenset(e) for e in raw["elements"]], spacegroup=raw["spacegroup"],
                   crystal_system=raw["crystal_system"], data_hash=raw["data_hash"], backend=raw["backend"])


def _structures(entries) -> list:
    out = []
    for e in entries:
        try:
            out.append(e.structure())
        except ValueError:
            out.append(None)
    return out


def label_pool(entries: Sequence, *, symmetry: bool = True, backend: str = "traits", data_hash: str = "",
               log: Callable[[str], None] = lambda _m: None) -> PoolLabels:
    """Labels of every readable entry (``traits.data.sources.Entry``); unreadable structures are left out.

    backend "traits": the splitter's own :func:`~traits.data.splits.compound_label`; "matfold": MatFold's
    label columns (its constructor runs SpacegroupAnalyzer on every structure whatever is asked)."""
    from traits.data.splits import compound_label

    structures = _structures(entries)
    keep = [i for i, s in enumerate(structures) if s is not None]
    ids = [entries[i].id for i in keep]
    structures = [structures[i] for i in keep]
    log(f"labelling {len(ids)} compounds ({backend}{', with symmetry' if symmetry else ''})")
    if backend == "matfold":
        return _label_matfold(ids, structures, data_hash)
    if backend != "traits":
        raise SpecError(f"labels backend {backend!r}: use 'traits' or 'matfold'")
    elements = [frozenset(el.symbol for el in s.composition.elements) for s in structures]
    sg = cs = None
    if symmetry:
        sg, cs = [], []
        for s, els in zip(structures, elements):
            try:
                sg.append(compound_label("spacegroup", els, s))
                cs.append(compound_label("crystal_system", els, s))
            except Exception:  # spglib can fail on a pathological cell: no symmetry label
                sg.append(None)
                cs.append(None)
    return PoolLabels(ids, elements, sg, cs, data_hash, "traits")


def _label_matfold(ids: list[str], structures: list, data_hash: str) -> PoolLabels:
    try:
        import pandas as pd
        from MatFold import MatFold
    except ImportError as exc:
        raise SpecError("labels 'matfold' needs MatFold: pip install 'traits-audit[study]'") from exc
    from pymatgen.symmetry.groups import SpaceGroup

    df = pd.DataFrame({"id": ids})
    mf = MatFold(df, {i: s.as_dict() for i, s in zip(ids, structures)}, cols_to_keep=["id"],
                 keep_splitlabel_cols=True, write_data_checksums=False)
    by_id = mf.df.set_index("structureid")

    def number(symbol: str) -> int | None:
        try:
            return SpaceGroup(symbol).int_number
        except Exception:
            return None

    return PoolLabels(ids, [frozenset(by_id.loc[i, "elements"]) for i in ids],
                      [number(by_id.loc[i, "sgnum"]) for i in ids], [str(by_id.loc[i, "crystalsys"]) for i in ids],
                      data_hash, "matfold")


def read_pool(source: str, path: Path | None, target: str, target_column: str | None = None):
    """Entries and data hash of a pool, read by TRAITS' own readers."""
    from traits.data.sources import read_source
    from traits.spec import DataSpec

    spec = DataSpec(source=source, path=path, target=target, target_column=target_column)
    data = read_source(spec)
    return data.entries, data.data_hash


def load_or_label(source: str, path: Path | None, target: str, cache: Path | None, *, symmetry: bool,
                  backend: str = "traits", target_column: str | None = None,
                  log: Callable[[str], None] = lambda _m: None) -> PoolLabels:
    """:func:`label_pool` with a cache file (gzip JSON) keyed by the pool's data hash and the options."""
    entries, digest = read_pool(source, path, target, target_column)
    key = f"{digest}:{backend}:{int(symmetry)}"
    if cache is not None and cache.is_file():
        raw = json.loads(gzip.decompress(cache.read_bytes()))
        if raw.get("key") == key:
            log(f"labels from {cache}")
            return PoolLabels.from_json(raw["labels"])
    labels = label_pool(entries, symmetry=symmetry, backend=backend, data_hash=digest, log=log)
    if cache is not None:
        from traits.files import write_bytes_atomic

        write_bytes_atomic(cache, gzip.compress(json.dumps({"key": key, "labels": labels.to_json()}).encode()))
    return labels


@dataclass
class Criteria:
    """Which held-out sets make a task: counted after the profile's subsample."""

    min_ood: int = 100
    min_train: int = 1000
    subsample: int | None = None
    per_family: int = 2
    #: Random-split baselines per target, holding out 10 %, 15 %, 20 %, ... (the noise floor's sample).
    random_tasks: int = 1

    def scale(self, n_pool: int) -> float:
        return 1.0 if self.subsample is None or self.subsample >= n_pool else self.subsample / n_pool


@dataclass
class Family:
    """One generated task: the rule and the counts that chose it."""

    family: str
    values: list
    n_ood_pool: int
    n_pool: int
    expected_ood: float
    expected_train_left: float
    name: str = ""
    target: str = ""
    notes: list[str] = field(default_factory=list)
    ood_fraction: float | None = None  # random baselines only: the held-out share

    @property
    def slug(self) -> str:
        if self.family == "random":
            return "random" if self.ood_fraction in (None, 0.1) else f"random-{round(100 * self.ood_fraction)}pct"
        if len(self.values) > 2:  # a bundle: the largest value and how many more (families.json lists them all)
            return f"{self.family}-{self.values[0]}-and-{len(self.values) - 1}-more"
        return f"{self.family}-" + "+".join(str(v) for v in self.values)


def _counts(labels: PoolLabels, kind: str) -> tuple[Counter, list]:
    per = labels.labels(kind)
    count: Counter = Counter()
    for lab in per:
        if lab is None:
            continue
        for v in (lab if isinstance(lab, set) else [lab]):
            count[v] += 1
    return count, per


def _held_out(per: list, values: set) -> int:
    return sum(1 for lab in per if lab is not None and (bool(lab & values) if isinstance(lab, set) else lab in values))


def element_candidates(labels: PoolLabels, criteria: Criteria) -> list[Family]:
    """Every element with enough compounds to hold out and enough left to train on, most compounds first."""
    count, _ = _counts(labels, "element")
    n, k = len(labels), criteria.scale(len(labels))
    out = [Family("element", [el], c, n, c * k, (n - c) * k) for el, c in count.items()
           if c * k >= criteria.min_ood and (n - c) * k >= criteria.min_train]
    return sorted(out, key=lambda f: (-f.n_ood_pool, f.values[0]))


def choose_elements(labels: PoolLabels, criteria: Criteria, elements: str | Iterable[str]) -> list[Family]:
    """``"auto"``: every qualifying element; ``"study"``: the study's list; else the named elements, each
    checked against the criteria (a SpecError names the ones that fail)."""
    if elements == "auto":
        return element_candidates(labels, criteria)
    wanted = list(STUDY_ELEMENTS) if elements == "study" else [e.strip() for e in elements if e.strip()]
    ok = {f.values[0]: f for f in element_candidates(labels, criteria)}
    count, _ = _counts(labels, "element")
    bad = [f"{e} ({count.get(e, 0)} compounds in the pool)" for e in wanted if e not in ok]
    if bad:
        raise SpecError(f"elements not meeting min_ood={criteria.min_ood} / min_train={criteria.min_train} after "
                        f"the subsample: {', '.join(bad)}; lower the minimums or drop them")
    return [ok[e] for e in wanted]


def group_candidates(labels: PoolLabels, kind: str, criteria: Criteria) -> list[Family]:
    """``per_family`` held-out sets of ``kind``: the largest single values that qualify; where no single
    value is large enough (chemical systems), the largest values bundled into one task until it is."""
    count, per = _counts(labels, kind)
    n, k = len(labels), criteria.scale(len(labels))
    ranked = sorted(count.items(), key=lambda kv: (-kv[1], str(kv[0])))
    out: list[Family] = []
    bundle: list = []
    for value, _c in ranked:
        if len(out) >= criteria.per_family:
            break
        trial = bundle + [value]
        held = _held_out(per, set(trial))
        if (n - held) * k < criteria.min_train:
            continue  # too large a share: skip this value
        if held * k >= criteria.min_ood:
            out.append(Family(kind, sorted(trial, key=str), held, n, held * k, (n - held) * k))
            bundle = []
        else:
            bundle = trial
    return out


def generate_families(labels: PoolLabels, families: Sequence[str], criteria: Criteria,
                      elements: str | Iterable[str] = "auto") -> list[Family]:
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise SpecError(f"unknown families {unknown}; choose from {', '.join(FAMILIES)}")
    out: list[Family] = []
    for fam in families:
        if fam == "element":
            out += choose_elements(labels, criteria, elements)
        elif fam == "random":
            n = len(labels)
            for k in range(max(1, criteria.random_tasks)):
                frac = round(0.1 + 0.05 * k, 2)
                out.append(Family("random", [], 0, n, frac * n * criteria.scale(n), (1 - frac) * n * criteria.scale(n),
                                  ood_fraction=frac))
        else:
            got = group_candidates(labels, fam, criteria)
            if not got:
                raise SpecError(f"family {fam}: no held-out set meets min_ood={criteria.min_ood} / "
                                f"min_train={criteria.min_train} after the subsample")
            out += got
    return out


def task_spec(fam: Family, target: str, data: dict, template: dict) -> dict:
    """The audit spec of one generated task."""
    import copy

    spec = copy.deepcopy(template)
    short = TARGET_SHORT.get(target, target)
    spec["name"] = f"{short}-{fam.slug}"
    if fam.family == "element":
        what = f"every compound containing {fam.values[0]} held out"
    elif fam.family == "random":
        what = "a random split (nothing omitted), the baseline"
    else:
        what = f"every compound with {fam.family} in {fam.values} held out"
    spec["description"] = f"Generated ({STUDY_VERSION}, family {fam.family}): CGCNN on {target} with {what}."
    spec["data"] = {**data, "target": target}
    spec["omit"] = list(fam.values) if fam.family == "element" else []
    if fam.family == "random" and fam.ood_fraction is not None:
        spec.setdefault("split", {})["ood_fraction"] = fam.ood_fraction
    if fam.family not in ("element", "random"):
        spec["holdout"] = {"kind": fam.family, "values": list(fam.values)}
    return spec


def write_study(out: Path, fams: list[Family], targets: Sequence[str], data: dict, *,
                template: dict | None = None, profiles: dict | None = None, resources: dict | None = None,
                meta: dict | None = None) -> list[Path]:
    """Write one spec per (family task, target), ``campaign.yaml`` and ``families.json`` into ``out``;
    every spec is validated (``need_checkpoint=False``) before anything is written."""
    from traits.spec import AuditSpec

    out = ensure_dir(Path(out))
    template = template or DEFAULT_TEMPLATE
    specs = []
    for target in targets:
        for fam in fams:
            spec = task_spec(fam, target, data, template)
            try:
                AuditSpec.model_validate(spec)
            except Exception as exc:
                raise SpecError(f"generated spec {spec['name']}: {exc}") from exc
            specs.append((fam, target, spec))
    names = [s["name"] for _, _, s in specs]
    if len(set(names)) != len(names):
        raise SpecError("two generated tasks share a name")
    written = []
    rows = []
    for fam, target, spec in specs:
        path = out / f"{spec['name']}.yaml"
        head = f"# Generated by `traits study generate` ({STUDY_VERSION}); family {fam.family}.\n"
        written.append(write_text_atomic(path, head + yaml.safe_dump(spec, sort_keys=False)))
        rows.append({**asdict(fam), "name": spec["name"], "target": target})
    campaign = {
        "profiles": profiles if profiles is not None else study_profiles(),
        "resources": resources or {"default": {"CPU": 1}},
    }
    write_text_atomic(out / "campaign.yaml", "# Profiles of the generated study: `study` is the issue-16 budget; "
                      "`v2` adds the label-free probes (study v2), `v2-label-free` is v2's first pass and "
                      "`v2-labelled` its second; `tiny` and `v2-tiny` are pipeline checks only.\n"
                      + yaml.safe_dump(campaign, sort_keys=False))
    write_json_atomic(out / "families.json", {"version": STUDY_VERSION, **(meta or {}), "tasks": rows})
    return written


def relative_data_path(path: Path | None, out: Path) -> str | None:
    """The data path as the specs in ``out`` name it (relative, so the study directory can move with it)."""
    if path is None:
        return None
    return os.path.relpath(Path(path).resolve(), Path(out).resolve())
