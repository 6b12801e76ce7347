"""The audit engine: spec -> data -> model -> probes -> metrics -> verdict -> results (and report).

Side effects (files, devices, progress) live here; the probes in ``traits.probes`` are pure.
"""

from __future__ import annotations

import datetime as _dt
import math
import platform
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import traits
from traits.data.prepare import PreparedData, prepare_data, prepare_for_adapter
from traits.data.sources import file_hash
from traits.data.splits import SPLIT_SCHEME
from traits.errors import CheckpointError, TraitsError
from traits.files import ensure_dir
from traits.kernels import kernel_record
from traits.models.base import set_probe_parameters
from traits.results import (
    Accuracy,
    AuditResult,
    Density,
    EigenRun,
    Finding,
    HessianResult,
    Jackknife,
    LabelFreeResult,
    LabelFreeSplit,
    LandscapeSplit,
    Provenance,
    ShiftResult,
    SplitMetrics,
    SplitStats,
    SurfaceResult,
    TraceEstimate,
    TrustRisk,
    UncertaintyResult,
    json_float,
    nan_array,
)
from traits.seeds import probe_seed, stream
from traits.spec import MODEL_TARGET, TARGET_UNITS, AuditSpec
from traits.threads import configure_threads, settle_threads, thread_record
from traits.trust import audit_risk

#: Stage name -> callback(done, total); the CLI attaches rich progress bars, the API stays quiet.
ProgressFactory = Callable[[str, int], Callable[[int, int], None]]


def resolve_device(choice: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise TraitsError("device 'cuda' was requested but no CUDA device is available; use 'auto' or 'cpu'")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


def package_versions() -> dict[str, str]:
    import pydantic
    import pymatgen.core
    import torch_geometric

    return {
        "traits": traits.__version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_geometric": torch_geometric.__version__,
        "pymatgen": getattr(pymatgen.core, "__version__", "unknown"),
        "pydantic": pydantic.__version__,
        "numpy": np.__version__,
    }


#: Bisection steps refining each robust radius between the grid points that bracket it.
RADIUS_BISECTIONS = 10


def _grid_to_lists(t: torch.Tensor) -> list:
    arr = t.detach().cpu().double().numpy()
    if arr.ndim == 1:
        return [json_float(v) for v in arr]
    return [_grid_to_lists(torch.from_numpy(row)) for row in arr]


# ------------------------------------------------------------------------------------------ model


@dataclass
class LoadedModel:
    model: torch.nn.Module
    metadata: dict
    checkpoint: Path | None
    trained_now: bool = False


def load_or_train(spec: AuditSpec, data: PreparedData, out_dir: Path, device: torch.device,
                  progress: bool | None = None) -> LoadedModel:
    """Load the spec's checkpoint, or train one into ``out_dir/model`` when the spec says how."""
    from traits.models.checkpoint import load_checkpoint

    ckpt = spec.model.checkpoint
    if ckpt is not None and ckpt.is_file():
        model, meta = load_checkpoint(
            ckpt, spec.model.format, architecture=spec.model.architecture,
            hyper=spec.model.hyper.model_dump(), target=spec.data.target, graph=spec.data.graph, device=device,
        )
        return LoadedModel(model, meta, ckpt)
    if spec.model.train is None:
        raise CheckpointError(f"{ckpt}: no such checkpoint file")
    from traits.train import train_model

    result = train_model(spec, data, out_dir / "model", device=device, resume=True, progress=progress)
    return LoadedModel(result.model, result.metadata, result.checkpoint, trained_now=True)


def check_checkpoint_against_spec(spec: AuditSpec, loaded: LoadedModel, data: PreparedData) -> list[Finding]:
    """Flag a checkpoint trained on another split or omission (graph settings are checked on load)."""
    meta = loaded.metadata or {}
    if spec.data.sets is not None:
        return _check_checkpoint_against_sets(meta, loaded, data)
    found = []
    if "omit" in meta and sorted(meta["omit"]) != sorted(spec.omit):
        found.append(Finding(
            id="checkpoint_omission", level="warn",
            statement=f"The checkpoint was trained omitting {meta['omit'] or 'nothing'} but this audit omits "
            f"{spec.omit or 'nothing'}: its 'OOD' set may contain compounds it was trained on",
        ))
    manifest_hash = meta.get("manifest_hash")
    if manifest_hash and manifest_hash != data.manifest.hash and not loaded.trained_now:
        found.append(Finding(
            id="checkpoint_split", level="warn",
            statement="The checkpoint was trained on another split of the data (manifest hash differs): "
            "ID test compounds may have been seen in training",
        ))
    return found


def _check_checkpoint_against_sets(meta: dict, loaded: LoadedModel, data: PreparedData) -> list[Finding]:
    """With named sets: ID compounds holding an element the checkpoint was trained without, and whether the
    checkpoint's training data is known at all (only when TRAITS trained it on these very sets)."""
    from traits.data.graphs import graph_elements

    found = []
    omitted = set(meta.get("omit") or [])
    with_omitted = sum(bool(omitted & graph_elements(g)) for g in data.splits.get("id", []))
    if with_omitted:
        found.append(Finding(
            id="checkpoint_omission", level="warn",
            statement=f"The checkpoint was trained omitting {sorted(omitted)}, yet {with_omitted} compounds of the "
            "named ID set contain one of them: they are not in distribution for this model",
            numbers={"id_with_omitted": float(with_omitted)},
        ))
    if loaded.trained_now or meta.get("manifest_hash") == data.manifest.hash:
        return found
    if meta.get("manifest_hash"):
        found.append(Finding(
            id="checkpoint_split", level="warn",
            statement="The checkpoint was trained on other data than these named sets (manifest hash differs): "
            "compounds of the ID or OOD set may have been seen in training",
        ))
    # without any record of its training data, provenance_findings warns that the OOD set may overlap training
    return found


def load_adapter_model(spec: AuditSpec, device: torch.device, model_object=None):
    """(adapter, options, LoadedModel) for a model loaded through its adapter (:mod:`traits.models.base`), or for
    ``model_object``, an ``nn.Module`` given to :func:`run_audit` (audited with the spec's adapter, 'torch' when
    the spec names a CGCNN one). The metadata holds the adapter's ``model_info``."""
    from traits.models.base import adapter_class, get_adapter

    name = spec.model.architecture
    if model_object is not None and getattr(adapter_class(name), "graph_model", False):
        name = "torch"  # a module given to run_audit with a CGCNN spec: TRAITS graphs, any forward
    adapter = get_adapter(name)
    if name == "torch" and model_object is not None:
        from traits.models.torch_module import TorchModuleOptions

        options = (TorchModuleOptions.model_validate(spec.model.options) if spec.model.options
                   else TorchModuleOptions(module="<in memory>:Module"))
        if spec.data.target != MODEL_TARGET and options.property is None:
            options = options.model_copy(update={"property": spec.data.target,
                                                 "units": TARGET_UNITS.get(spec.data.target)})
        model = adapter.load(None, options, device, module=model_object)
        source = None
    else:
        options = spec.model.adapter_options()
        source = spec.model.checkpoint
        if model_object is not None:
            model = model_object.to(device).eval()
        else:
            model = adapter.load(source, options, device)
    info = adapter.info(model, source, options)
    meta = {"adapter": name, "model_info": info.model_dump(mode="json"), "target": info.property,
            "unit": info.units, "training_data": info.training_data}
    return adapter, options, LoadedModel(model, meta, Path(source) if source and Path(source).is_file() else None)


def provenance_findings(spec: AuditSpec, loaded: LoadedModel) -> list[Finding]:
    """What is known of the model's training data: named when known; a warning when it is not (unless TRAITS
    trained the model on this very split, which the split checks cover)."""
    meta = loaded.metadata or {}
    if loaded.trained_now or meta.get("manifest_hash"):
        return []
    known = meta.get("training_data")
    if known:
        return [Finding(id="training_data", level="pass",
                        statement=f"Training data of the model (declared by its adapter): {known}. Whether the ID "
                        "and OOD sets overlap it is not checked by this audit")]
    return [Finding(id="training_data_unknown", level="warn",
                    statement="Training data unknown: the OOD set may overlap training. No element or compound is "
                    "called unseen by this audit")]


def clear_relative_metrics(m: SplitMetrics) -> None:
    """Label-free mode: L(θ) = 0 (to rounding), so radius, sharpness and basin areas (relative to L(θ)) are
    undefined, and so are the loss at θ itself as a ratio and the loss entropy, whose temperature is the ID loss
    at θ: their values would be ratios of rounding noise."""
    for name in ("robust_radius", "sharpness", "basin_area", "plane_basin_area", "loss", "entropy"):
        if hasattr(m, name):
            setattr(m, name, None)
    if hasattr(m, "radius_per_direction"):
        m.radius_per_direction = []


def result_unit(spec: AuditSpec, loaded: LoadedModel) -> str:
    """The unit of the predictions: the target's, or (label-free / adapters) the model's declared one."""
    if spec.data.target in TARGET_UNITS:
        return TARGET_UNITS[spec.data.target]
    meta = loaded.metadata or {}
    unit = meta.get("unit") or (meta.get("model_info") or {}).get("units")
    if not unit and meta.get("target") in TARGET_UNITS:
        unit = TARGET_UNITS[meta["target"]]
    return unit or "model units"


def _prediction_stats(preds) -> dict:
    p = np.asarray(preds, dtype=np.float64)
    if not p.size:
        return {"n": 0}
    return {"n": int(p.size), "mean": json_float(p.mean()), "std": json_float(p.std()), "min": json_float(p.min()),
            "max": json_float(p.max())}


# ------------------------------------------------------------------------------------------ probes


def collate(graphs: list, device: torch.device, dtype: torch.dtype, batch_size: int = 256) -> list:
    """Pre-collate a split once into batches that stay on the device."""
    from torch_geometric.data import Batch

    batches = []
    for start in range(0, len(graphs), batch_size):
        b = Batch.from_data_list(graphs[start : start + batch_size])
        b.x, b.edge_attr, b.y = b.x.to(dtype), b.edge_attr.to(dtype), b.y.to(dtype)
        batches.append(b.to(device))
    return batches


def subsample(graphs: list, limit: int | None, seed: int) -> list:
    if limit is None or len(graphs) <= limit:
        return graphs
    keep = np.sort(np.random.default_rng(seed).choice(len(graphs), size=limit, replace=False))
    return [graphs[i] for i in keep]


def ids_of_items(by_split: dict[str, list]) -> dict[str, list[str]]:
    """The id (``material_id``) of each graph or featurised structure per split, in order; a split with an item
    without one is left out (its per-compound values then store no ids: nothing to join on)."""
    out = {}
    for split, items in by_split.items():
        ids = [getattr(item, "material_id", None) for item in items]
        if all(i is not None for i in ids):
            out[split] = [str(i) for i in ids]
    return out


def formulas_of(items: list, ids: list[str]) -> list[str]:
    """The reduced formula of the graph or featurised structure with each id in ``ids`` (from its atomic
    numbers ``z``); empty when an id has no structure."""
    from collections import Counter

    from pymatgen.core import Composition, Element

    by_id = {}
    for item in items:
        counts = Counter(int(v) for v in item.z.reshape(-1).tolist())
        by_id[str(item.material_id)] = Composition({Element.from_Z(k): n for k, n in counts.items()}).reduced_formula
    out = [by_id.get(str(i)) for i in ids]
    return [] if any(f is None for f in out) else out


def hessian_groups(spec: AuditSpec, n: int, index: int, *, any_backend: bool = False) -> list[list[int]]:
    """The random structure groups of a Hessian sample of ``n`` (none for fewer than 2 structures, or for the
    pyhessian backend unless ``any_backend``: the label-free probes group the same sample whatever the backend)."""
    from traits.probes.sampling import assign_groups

    if n < 2 or (spec.probes.hessian.backend == "pyhessian" and not any_backend):
        return []
    rng = np.random.default_rng(stream(spec, "hessian_groups", index))
    return [g.tolist() for g in assign_groups(n, rng)]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def run_hessian(spec: AuditSpec, model, batches, n_samples: int, split_seed: int, device, dtype, progress=None,
                description: str = "Hessian", group_batches: list[list] | None = None,
                groups: list[list[int]] | None = None) -> HessianResult:
    """One split's Hessian probe; its stage (``description`` on ``progress``) counts the Hessian-vector products
    done out of the probe's budget (the pyhessian backend's stage only starts and ends).

    With ``group_batches`` (the sample's structures in G ≥ 2 random groups, each collated; ``groups`` their
    positions in the sample) the trace is the Gauss-Newton control-variate estimate and λ_max and the trace get
    their sampling errors from a jackknife over the groups (:mod:`traits.probes.sampling`); without them (or
    with the pyhessian backend) the trace is Hutchinson's and Hutch++'s and no sampling error is measured."""
    from traits.probes import hessian as hs
    from traits.probes.objective import SplitObjective
    from traits.progress import counted_stage, start_stage

    h = spec.probes.hessian
    t0 = time.perf_counter()
    obj = SplitObjective(model, batches, loss=spec.probes.loss, hvp_method=h.hvp)
    loss0 = float(obj.loss())
    kw = {"device": device, "dtype": dtype}
    if h.backend == "pyhessian":
        from traits.probes.pyhessian_backend import pyhessian_top_eigenvalues, pyhessian_trace

        stage_done = start_stage(progress, description)
        eig = pyhessian_top_eigenvalues(model, batches, spec.probes.loss, k=h.top_k, max_iter=h.max_steps,
                                        tol=h.tol, generator=_generator(split_seed))
        tr = pyhessian_trace(model, batches, spec.probes.loss, max_iter=h.trace_hvps, tol=0.0,
                             generator=_generator(split_seed + 2))
        traces = [TraceEstimate(method="hutchinson", estimate=json_float(tr.estimate),
                                stderr=json_float(tr.stderr), n_hvp=tr.n_hvp)]
        lam_min, density, low = None, None, None
        stage_done()
    else:
        grouped = bool(group_batches) and len(group_batches) >= 2
        budget = hs.hessian_budget(obj.dim, h.top_k, h.max_steps, h.trace_hvps, h.density_runs, h.density_steps,
                                   groups=len(group_batches) if grouped else 0)
        counter = hs.HVPCounter(obj.hvp, obj.hvp_many, counted_stage(progress, description, budget, "HVPs"), budget)
        eig = hs.top_eigenvalues(counter.hvp, obj.dim, k=h.top_k, max_steps=h.max_steps, tol=h.tol,
                                 generator=_generator(split_seed), **kw)
        low = hs.smallest_eigenvalue(counter.hvp, obj.dim, max_steps=h.max_steps, tol=h.tol,
                                     generator=_generator(split_seed + 1), **kw)
        lam_min = json_float(low.values[0])
        dens = hs.slq_density(counter.hvp, obj.dim, n_runs=h.density_runs, n_steps=h.density_steps,
                              generator=_generator(split_seed + 4), grid_size=400, **kw)
        d = dens.to_dict()
        density = Density(grid=d["grid"], density=d["density"], nodes=d["nodes"], weights=d["weights"])
        if grouped:
            traces, jackknife = _grouped_statistics(spec, model, group_batches, eig, counter, split_seed, kw)
        else:
            traces, jackknife = _plain_traces(h, obj, counter, split_seed, kw), None
        counter.finish()
    values = [float(v) for v in eig.values]
    top_run = eigen_run(eig)
    if h.backend == "pyhessian":  # power iteration's own rule is not a certificate: judge its verified residuals
        top_run.converged = [bool(r is not None and r <= h.tol) for r in top_run.residuals]
    return HessianResult(
        backend=h.backend, n_samples=n_samples, loss=json_float(loss0), top_eigenvalues=values,
        residuals=[float(r) for r in eig.residuals], converged=all(top_run.converged), n_hvp=int(eig.n_hvp),
        lambda_min=lam_min, top=top_run, bottom=eigen_run(low) if low is not None else None,
        traces=traces, density=density, seconds=time.perf_counter() - t0,
        groups=[list(map(int, g)) for g in groups] if groups and h.backend != "pyhessian" else [],
        lambda_max_jackknife=None if h.backend == "pyhessian" else jackknife,
    )


def _plain_traces(h, obj, counter, split_seed: int, kw: dict) -> list[TraceEstimate]:
    """Hutchinson and Hutch++ on the whole sample (a sample too small to split into groups)."""
    from traits.probes import hessian as hs

    hut = hs.hutchinson_trace(counter.hvp, obj.dim, n_samples=h.trace_hvps, generator=_generator(split_seed + 2),
                              hvp_many=counter.hvp_many, **kw)
    hpp = hs.hutchpp_trace(counter.hvp, obj.dim, n_hvp=h.trace_hvps, generator=_generator(split_seed + 3),
                           hvp_many=counter.hvp_many, **kw)
    return [
        TraceEstimate(method="hutchinson", estimate=json_float(hut.estimate), stderr=json_float(hut.stderr),
                      n_hvp=hut.n_hvp, df=hut.n_hvp - 1),
        TraceEstimate(method="hutch++", estimate=json_float(hpp.estimate), stderr=json_float(hpp.stderr),
                      n_hvp=hpp.n_hvp),
    ]


def _grouped_statistics(spec: AuditSpec, model, group_batches: list[list], eig, counter, split_seed: int,
                        kw: dict) -> tuple[list[TraceEstimate], Jackknife | None]:
    """The Gauss-Newton trace and the λ_max jackknife over structure groups (:mod:`traits.probes.sampling`)."""
    from traits.probes import sampling
    from traits.probes.objective import SplitObjective

    h = spec.probes.hessian
    objs = [SplitObjective(model, b, loss=spec.probes.loss, hvp_method=h.hvp) for b in group_batches]
    sizes = [o.n_samples for o in objs]

    batched = [True]  # one vmapped backward per group: 2-3x faster than a loop for small groups on a CPU

    def counted(o):
        def many(stack):
            out = None
            if batched[0]:
                try:
                    out = o.hvp_many(stack, batched=True)
                except RuntimeError:  # a model whose backward autograd cannot vmap: one product at a time
                    batched[0] = False
                    o.release_graphs()
            if out is None:
                out = o.hvp_many(stack, batched=False)
            counter._add(stack.shape[0])
            return out
        return many

    hvps = [counted(o) for o in objs]
    curvature = 2.0 if spec.probes.loss == "mse" else 0.0
    vectors = eig.vectors if eig.vectors is not None and eig.vectors.numel() else None
    tr, jk = sampling.grouped_statistics(hvps, [o.output_gradients for o in objs], sizes, vectors, objs[0].dim,
                                         h.trace_hvps, curvature, _generator(split_seed + 2), **kw)
    trace = TraceEstimate(method="gauss-newton+hutchinson", estimate=json_float(tr.estimate),
                          stderr=json_float(tr.stderr), n_hvp=tr.n_hvp, df=tr.mc_df,
                          sampling_stderr=json_float(tr.sampling_stderr), sampling_df=tr.df,
                          gauss_newton=json_float(tr.gauss_newton), leave_out=[json_float(v) for v in tr.leave_out],
                          residual_samples=[json_float(v) for v in tr.residual_samples])
    jackknife = None
    if jk is not None:
        jackknife = Jackknife(value=json_float(jk.value), leave_out=[json_float(v) for v in jk.leave_out],
                              stderr=json_float(jk.stderr), df=jk.df, n_hvp=jk.n_hvp)
    for o in objs:
        o.release_graphs()
    return [trace], jackknife


def eigen_run(eig) -> EigenRun:
    """A :class:`traits.probes.hessian.EigenResult` as stored in results.json."""
    d = eig.to_dict()
    n = len(d["values"])
    return EigenRun(
        values=[json_float(v) for v in d["values"]], residuals=[json_float(v) for v in d["residuals"]],
        abs_residuals=[json_float(v) for v in d["abs_residuals"]]
        or [json_float(r * abs(v)) for r, v in zip(d["residuals"], d["values"])],
        accuracy=[json_float(v) for v in d["accuracy"]] or [None] * n,
        converged=[bool(c) for c in d["converged_each"]], n_hvp=int(d["n_hvp"]), n_steps=int(d["n_steps"]),
    )


def run_surfaces(spec: AuditSpec, model, objectives: dict, out_dir: Path,
                 progress: ProgressFactory | None, train_objective=None,
                 groups: dict[str, list[list[int]]] | None = None) -> SurfaceResult:
    """The 1D curves with their refined robust radii (and, with ``groups``, each split's structure groups as
    indices into its objective's samples, the radius's jackknife over them), the 2D grid, its zoom, the
    eigenvector plane, the landscape statistics and the topology."""
    from traits.probes.metrics import band
    from traits.probes.surface import surface_1d, surface_2d

    s = spec.probes.surface
    first = next(iter(objectives.values()))
    skip = skipped_parameters(model)
    directions = surface_directions(spec, model, first.params)
    alphas = torch.linspace(-s.span, s.span, s.points_1d, dtype=torch.float64)
    result = SurfaceResult(span=s.span, tolerance=s.tolerance, include_bias_and_norm=s.include_bias_and_norm,
                           seed=stream(spec, "surface"), alphas_1d=alphas.tolist())
    # one absolute band for every split (traits.probes.metrics): tolerance × the ID loss at θ
    reference = objectives["id"] if "id" in objectives else first
    # label-free, L(θ) = 0 on every split: a band relative to it defines no region (no radius, basin or zoom)
    result.band = None if spec.data.target == MODEL_TARGET else band(s.tolerance, float(reference.loss()))
    t0, points = time.perf_counter(), 0
    chunk = s.chunk_size  # None: the engine's default for the device
    for split, obj in objectives.items():
        curves, radii, censored, terms = [], [], [], []
        loss0 = float(obj.loss())
        grouped = _jackknife_groups(groups, split, obj) if result.band is not None else None
        for k in range(s.directions_1d):
            cb = progress(f"1D surface {split} ({k + 1}/{s.directions_1d})", len(alphas)) if progress else None
            if grouped:  # every structure's loss along the line: the curve and each group's curve in one pass
                terms.append(surface_1d(obj, directions[k], alphas, chunk_size=chunk, progress=cb, per_sample=True))
                curve = terms[-1].double().sum(dim=1) / obj.n_samples
            else:
                curve = surface_1d(obj, directions[k], alphas, chunk_size=chunk, progress=cb)
            curves.append(_grid_to_lists(curve))
            points += len(alphas)
            radius, cens, evals = refined_radius(obj, directions[k], alphas, curve, loss0, result.band)
            radii.append(json_float(radius) if result.band is not None else None)
            censored.append(cens)
            result.refine_evaluations += evals
        result.curves[split] = curves
        if grouped:
            jk = radius_jackknife(grouped, terms, alphas, curves, result.band)
            if jk is not None:
                result.radius_jackknife[split] = jk
        result.radius[split] = radii
        result.radius_censored[split] = censored
        result.n_samples[split] = obj.n_samples
    if s.two_d:
        grid_axis = torch.linspace(-s.span, s.span, s.points_2d, dtype=torch.float64)
        result.alphas_2d = grid_axis.tolist()
        partial = ensure_dir(out_dir / ".partial")
        for split, obj in objectives.items():
            cb = progress(f"2D surface {split}", s.points_2d**2) if progress else None
            grid = surface_2d(obj, directions[0], directions[1], grid_axis, grid_axis, chunk_size=chunk,
                              progress=cb, resume_path=partial / f"surface2d-{split}.pt")
            result.grids[split] = _grid_to_lists(grid)
            points += s.points_2d**2
        if result.band is not None:
            points += zoomed_surfaces(spec, objectives, directions, result, partial, progress)
    if s.directions == "hessian":
        points += hessian_plane_surfaces(spec, model, objectives, train_objective, result, skip, out_dir, progress)
    points += gradients_and_perturbations(spec, objectives, directions, alphas, result, skip, progress)
    elapsed = time.perf_counter() - t0
    result.points_per_second = points / elapsed if elapsed > 0 else None
    result.batched = all(getattr(o, "vmap_ok", True) for o in objectives.values())
    add_landscape_stats(spec, objectives, directions, result)
    add_topology(result)
    return result


def gradients_and_perturbations(spec: AuditSpec, objectives: dict, directions: list, alphas: torch.Tensor,
                                result: SurfaceResult, skip: set, progress: ProgressFactory | None) -> int:
    """The gradient-norm curves and grid (:mod:`traits.probes.gradient_surface`) and the random-perturbation
    statistics (:mod:`traits.probes.perturbation`) that ``probes.surface`` asks for; returns the points evaluated."""
    from traits.probes.directions import random_direction
    from traits.probes.gradient_surface import gradient_line, gradient_plane, trapezoid_residuals
    from traits.probes.perturbation import random_perturbations

    s, points = spec.probes.surface, 0
    for split, obj in objectives.items():
        if s.gradient_1d:
            curves = []
            for k in range(s.directions_1d):
                cb = progress(f"gradient curve {split} ({k + 1}/{s.directions_1d})", len(alphas)) if progress else None
                line = gradient_line(obj, directions[k], alphas, progress=cb)
                trap = trapezoid_residuals(alphas.tolist(), line.loss, line.slopes[0])
                curves.append({**line.to_dict(), "trapezoid": [json_float(v) for v in trap]})
                points += len(alphas)
            result.gradient_curves[split] = curves
        if s.gradient_points_2d and s.two_d:
            axis = torch.linspace(-s.span, s.span, s.gradient_points_2d, dtype=torch.float64)
            result.gradient_grids[split] = gradient_plane(obj, directions[0], directions[1], axis, axis).to_dict()
            points += s.gradient_points_2d**2
    if s.perturbations:
        first = next(iter(objectives.values()))
        gen = _generator(stream(spec, "perturbation"))
        dirs = [random_direction(first.params, gen, skip=skip, include_skipped=s.include_bias_and_norm)
                for _ in range(s.perturbations)]
        scale = s.perturbation_scale or s.sharpness_radius
        for split, obj in objectives.items():
            result.perturbations[split] = random_perturbations(obj, scale, 0, gen, directions=dirs,
                                                               band=result.band, chunk_size=s.chunk_size).to_dict()
            points += 2 * len(dirs)
    return points


def gradient_metrics(m: SplitMetrics, surf: SurfaceResult, split: str) -> None:
    """The split's gradient-norm and perturbation metrics from the stored curves, grid and statistics."""
    curves = surf.gradient_curves.get(split) or []
    grid = surf.gradient_grids.get(split)
    if curves:
        alphas = np.asarray(curves[0]["alphas"], dtype=float)
        centre = int(np.argmin(np.abs(alphas)))
        m.loss_grad_norm = json_float(curves[0]["grad_norm"][centre]) if alphas[centre] == 0 else None
        traps = [v for c in curves for v in c.get("trapezoid", []) if v is not None]
        m.trapezoid_max = json_float(max(traps)) if traps else None
    norms = [v for row in grid["grad_norm"] for v in row] if grid else [v for c in curves for v in c["grad_norm"]]
    finite = [v for v in norms if v is not None and math.isfinite(v)]
    m.loss_grad_norm_median = json_float(float(np.median(finite))) if finite else None
    pert = surf.perturbations.get(split)
    if pert:
        m.perturbation_curvature = json_float(pert.get("curvature_mean"))
        m.perturbation_exceed_fraction = json_float(pert.get("exceed_fraction"))


def skipped_parameters(model) -> set[str]:
    """The normalisation parameters the filter-normalised directions leave out (unless asked to include them)."""
    return set(model.normalization_parameter_names()) if hasattr(model, "normalization_parameter_names") else set()


def surface_directions(spec: AuditSpec, model, params: dict) -> list[dict]:
    """The surfaces' random filter-normalised directions, drawn from the ``surface`` stream: the 1D curves use the
    first ``directions_1d``, the 2D plane the first two. The label-free probes draw the same ones."""
    from traits.probes.directions import random_direction

    s = spec.probes.surface
    gen = _generator(stream(spec, "surface"))
    n_dirs = max(s.directions_1d, 2 if s.two_d else 1)
    return [random_direction(params, gen, skip=skipped_parameters(model), include_skipped=s.include_bias_and_norm)
            for _ in range(n_dirs)]


#: A basin narrower than this many cells of the 2D grid gets a zoomed grid (``probes.surface.zoom_points``).
ZOOM_CELLS = 5
#: The zoomed grid spans ± this many robust radii (of the split with the widest basin).
ZOOM_RADII = 3.0


def zoom_span(result: SurfaceResult, points_2d: int) -> float | None:
    """The half-width of the zoomed grid: ZOOM_RADII robust radii of the split whose basin is widest (each split's
    radius is its smallest over the 1D directions), when that basin (2 radii across) spans fewer than ZOOM_CELLS
    cells of the main grid; None when the basin is wide enough, or a radius is missing or censored."""
    widest = None
    for split, radii in result.radius.items():
        finite = [r for r in radii if r is not None and r > 0]
        if not finite or any(result.radius_censored.get(split, [])):
            return None
        widest = max(widest or 0.0, min(finite))
    if widest is None:
        return None
    cell = 2 * result.span / (points_2d - 1)
    if 2 * widest >= ZOOM_CELLS * cell:
        return None
    return min(result.span, ZOOM_RADII * widest)


def zoomed_surfaces(spec: AuditSpec, objectives: dict, directions: list, result: SurfaceResult, partial: Path,
                    progress: ProgressFactory | None) -> int:
    """The zoomed 2D grid around θ (:func:`zoom_span`) for every split, on the random plane; returns the points
    evaluated (0 when no zoom is needed or ``probes.surface.zoom_points`` is 0)."""
    from traits.probes.surface import surface_2d

    s = spec.probes.surface
    half = zoom_span(result, s.points_2d) if s.zoom_points else None
    if half is None:
        return 0
    axis = torch.linspace(-half, half, s.zoom_points, dtype=torch.float64)
    result.zoom_alphas_2d = axis.tolist()
    for split, obj in objectives.items():
        cb = progress(f"zoomed 2D surface {split}", s.zoom_points**2) if progress else None
        grid = surface_2d(obj, directions[0], directions[1], axis, axis, chunk_size=s.chunk_size, progress=cb,
                          resume_path=partial / f"zoom2d-{split}.pt")
        result.zoom_grids[split] = _grid_to_lists(grid)
    return len(objectives) * s.zoom_points**2


def add_topology(result: SurfaceResult) -> None:
    """Persistence and SMAD (traits.probes.topology) of every finite 2D surface, random and eigenvector
    plane; a surface with a diverged point gets a reason instead."""
    for field_name in ("grids", "plane_grids"):
        for split, grid in getattr(result, field_name).items():
            result.topology.setdefault(field_name, {})[split] = topology_of(grid)


def topology_of(grid: list) -> dict:
    """Persistence and SMAD of one stored 2D grid, or ``{"reason": ...}`` when it cannot be computed."""
    from traits.errors import ProbeError
    from traits.probes.topology import surface_topology

    try:
        return surface_topology(nan_array(grid)).to_dict()
    except ProbeError as exc:
        return {"reason": str(exc)}
    except ImportError:
        return {"reason": "gudhi is not installed (pip install gudhi): the topology was not computed"}


def hessian_plane_surfaces(spec: AuditSpec, model, objectives: dict, train_objective, result: SurfaceResult,
                           skip: set, out_dir: Path, progress) -> int:
    """2D surfaces on the plane of the top and bottom Hessian eigenvectors of the training loss."""
    from traits.probes.planes import hessian_plane
    from traits.probes.surface import surface_2d

    s, h = spec.probes.surface, spec.probes.hessian
    if not np.isfinite(float(train_objective.loss())):
        return 0  # no curvature at a non-finite loss: the NaN share of the random surfaces reports it
    device, dtype = train_objective.device, train_objective.dtype
    plane = hessian_plane(train_objective, max_steps=h.max_steps, tol=h.tol,
                          generator=_generator(stream(spec, "hessian_plane")),
                          device=device, dtype=dtype, skip=skip, include_skipped=s.include_bias_and_norm)
    result.plane = plane.to_dict()
    axis = torch.linspace(-s.span, s.span, s.points_2d, dtype=torch.float64)
    result.alphas_2d = axis.tolist()
    partial = ensure_dir(out_dir / ".partial")
    for split, obj in objectives.items():
        cb = progress(f"eigenvector plane {split}", s.points_2d**2) if progress else None
        grid = surface_2d(obj, plane.d_max, plane.d_min, axis, axis, chunk_size=s.chunk_size, progress=cb,
                          resume_path=partial / f"plane2d-{split}.pt")
        result.plane_grids[split] = _grid_to_lists(grid)
    return len(objectives) * s.points_2d**2


def add_landscape_stats(spec: AuditSpec, objectives: dict, directions: list, result: SurfaceResult) -> None:
    """Discontinuities (refined by bisection along the sampled lines) and the loss entropy per split."""
    from traits.probes.discontinuity import objective_line, objective_point
    from traits.probes.landscape import landscape_stats

    s = spec.probes.surface
    losses = {split: json_float(obj.loss()) for split, obj in objectives.items()}
    temperature = s.entropy_temperature or losses.get("id")
    for split, obj in objectives.items():
        if losses[split] is None:
            continue
        stats = landscape_stats(
            result.alphas_1d, result.curves.get(split, []), losses[split], temperature,
            alphas_2d=result.alphas_2d or None, grid=result.grids.get(split),
            line_loss=lambda k, obj=obj: objective_line(obj, directions[k]),
            point_loss=objective_point(obj, directions[0], directions[1]) if result.grids.get(split) else None,
        )
        result.landscape[split] = LandscapeSplit(**stats.to_dict())


def _jackknife_groups(groups: dict[str, list[list[int]]] | None, split: str, obj) -> list[list[int]] | None:
    """The split's structure groups when they partition its objective's N targets (one per structure), else None."""
    found = (groups or {}).get(split)
    if not found or len(found) < 2:
        return None
    flat = sorted(i for g in found for i in g)
    return found if flat == list(range(obj.n_samples)) else None


def radius_jackknife(groups: list[list[int]], terms: list[torch.Tensor], alphas: torch.Tensor, curves: list,
                     band: float) -> Jackknife | None:
    """The robust radius's jackknife over the surface sample's structure groups: each group's loss along every
    1D direction is the mean of its structures' loss terms (``terms``: per direction, Tensor[A, N] from
    :func:`traits.probes.surface.surface_1d` with ``per_sample``), then
    :func:`traits.probes.sampling.radius_jackknife`."""
    from traits.probes.sampling import radius_jackknife as jackknife

    index = [torch.as_tensor(g, dtype=torch.long) for g in groups]
    group_curves = [[t.index_select(1, i.to(t.device)).double().mean(dim=1).cpu().tolist() for t in terms]
                    for i in index]
    full = [[np.nan if v is None else v for v in c] for c in curves]
    jk = jackknife(alphas.tolist(), full, group_curves, [len(g) for g in groups], band)
    if jk is None:
        return None
    return Jackknife(value=json_float(jk.value), leave_out=[json_float(v) for v in jk.leave_out],
                     stderr=json_float(jk.stderr), df=jk.df)


def refined_radius(obj, direction: dict, alphas: torch.Tensor, curve: torch.Tensor, loss0: float,
                   delta: float | None) -> tuple[float, bool, int]:
    """Robust radius along one direction: the grid brackets the crossing of L(θ) + δ (δ: the audit's absolute
    band) on each side of θ, bisection sharpens it. Returns (radius, censored, extra loss evaluations)."""
    from traits.probes.metrics import refine_radius, side_brackets

    if not np.isfinite(loss0) or delta is None:
        return 0.0, False, 0
    threshold = loss0 + delta
    names = list(direction)
    sides, evals = [], 0
    for sign, inside, outside in side_brackets(alphas.numpy(), curve.cpu().double().numpy(), loss0, delta):
        if outside is None:
            sides.append((inside, True))
            continue

        def line_loss(a: float, sign: int = sign) -> float:
            params = {n: obj.params[n] + (sign * a) * direction[n].to(obj.params[n]) for n in names}
            params.update({n: obj.params[n] for n in obj.names if n not in params})
            return float(obj.loss(params))

        radius, n = refine_radius(line_loss, inside, outside, threshold, iters=RADIUS_BISECTIONS)
        sides.append((radius, False))
        evals += n
    radius = min(r for r, _ in sides)
    return radius, any(c for r, c in sides if r == radius), evals


def run_shift(spec: AuditSpec, model, splits: dict[str, list], device) -> ShiftResult:
    """Domain-shift diagnostics (:mod:`traits.shift`): targets, composition and embedding distances of
    the ID test and OOD sets against the training split (subsampled to ``max_train``, seeded)."""
    from traits import shift as sh
    from traits.models.inference import embed

    cfg = spec.probes.shift
    thresholds = {"near_ratio": cfg.near_ratio, "target_outside_fraction": cfg.target_outside_fraction}
    if "train" not in splits:  # named sets without data.sets.train: nothing to measure against
        return sh.compute_shift(
            {s: [float(g.y) for g in splits.get(s, [])] for s in sh.COMPARED}, {}, k=cfg.k,
            seed=stream(spec, "shift_knn"),
            max_points=cfg.max_points, n_train_total=0, thresholds=thresholds,
            problems=["training data is not given (data.sets has no 'train'): the target shift and the distances "
                      "to the training compounds were not measured"],
        )
    train_all = splits.get("train", [])
    train = subsample(train_all, cfg.max_train, stream(spec, "shift_train"))
    graphs = {"train": train, "id": splits.get("id", []), "ood": splits.get("ood", [])}
    targets = {s: [float(g.y) for g in gs] for s, gs in graphs.items()}
    # the target shift uses every training target; distances use the subsample
    targets["train"] = [float(g.y) for g in train_all]
    problems: list[str] = []
    spaces: dict[str, dict | None] = {}
    with_props = cfg.composition == "fractions+properties"
    try:
        spaces["composition"] = sh.composition_space({s: [g.z.numpy() for g in gs] for s, gs in graphs.items()},
                                                     with_properties=with_props)
    except sh.ShiftInputError as exc:
        problems.append(f"composition distances were not measured: {exc}")
        spaces["composition"] = None
    if hasattr(model, "embed"):
        try:
            raw = {s: embed(model, gs, device) for s, gs in graphs.items()}
            spaces["embedding"] = sh.standardise(raw) if len(graphs["train"]) else None
        except sh.ShiftInputError as exc:
            problems.append(f"embedding distances were not measured: {exc}")
            spaces["embedding"] = None
    else:
        problems.append("the model exposes no crystal embedding: embedding distances were not measured")
    features = "element fractions (Z = 1..100)"
    if with_props:
        features += " + fraction-weighted " + ", ".join(sh.PROPERTY_NAMES) + " (standardised)"
    return sh.compute_shift(
        targets, spaces, k=cfg.k, seed=stream(spec, "shift_knn"), max_points=cfg.max_points,
        composition_features=features,
        n_train_total=len(train_all), problems=problems, thresholds=thresholds,
        density_components=cfg.density_components, ids=ids_of_items(graphs),
    )


def run_uncertainty(spec: AuditSpec, model, splits: dict[str, list], out_dir: Path, device,
                    dtype) -> UncertaintyResult:
    """Per-compound uncertainty (:mod:`traits.probes.uncertainty`) on the val / ID / OOD sets, scored against
    the errors; also writes the screening calibration (``model.calibration.json``) into ``out_dir``."""
    from traits.models.inference import embed
    from traits.probes import uncertainty as unc
    from traits.probes.directions import random_direction
    from traits.probes.hessian import top_eigenvalues
    from traits.probes.objective import SplitObjective
    from traits.probes.planes import hessian_plane
    from traits.screen import write_calibration

    u, s = spec.probes.uncertainty, spec.probes.surface
    if not (splits.get("train") and splits.get("val")) or spec.probes.loss != "mse":
        return UncertaintyResult(problems=["needs the training and validation splits and the 'mse' loss; not run"])
    queries = {name: subsample(splits[name], u.max_eval, stream(spec, "uncertainty_queries", k))
               for k, name in enumerate(("val", "id", "ood")) if splits.get(name)}
    batches = {name: collate(g, device, dtype) for name, g in queries.items()}
    targets = {name: np.array([float(g.y) for g in gs]) for name, gs in queries.items()}
    train = subsample(splits["train"], u.max_samples, stream(spec, "uncertainty_train"))
    obj = SplitObjective(model, collate(train, device, dtype))
    gen = _generator(stream(spec, "uncertainty_probes"))
    eig = top_eigenvalues(obj.hvp, obj.dim, k=u.top_k, max_steps=max(spec.probes.hessian.max_steps, 2 * u.top_k),
                          tol=spec.probes.hessian.tol, generator=gen, device=device, dtype=dtype)
    skip = skipped_parameters(model)
    dirs = [random_direction(obj.params, gen, skip=skip, include_skipped=s.include_bias_and_norm)
            for _ in range(2 * u.planes)]
    planes = [(f"random-{i + 1}", dirs[2 * i], dirs[2 * i + 1]) for i in range(u.planes)]
    plane = hessian_plane(obj, max_steps=spec.probes.hessian.max_steps, tol=spec.probes.hessian.tol, generator=gen,
                          device=device, dtype=dtype, skip=skip, include_skipped=s.include_bias_and_norm)
    planes.append(("hessian", plane.d_max, plane.d_min))
    axis = torch.linspace(-s.span, s.span, u.points, dtype=torch.float64)
    preds, info = unc.landscape_uncertainty(
        model, obj, batches, eig=eig, planes=planes, axis=axis,
        tolerance=s.tolerance, n_train=len(splits["train"]), train_batches=collate(splits["train"], device, dtype),
        val_targets=targets["val"])
    residuals = {name: targets[name] - preds["last_layer"][name].mean for name in targets}
    scores_of = {m: {name: p.std for name, p in by.items()} for m, by in preds.items()}
    train_emb = embed(model, splits["train"], device)
    scores_of["knn"] = {name: unc.knn_distance(train_emb, embed(model, g, device), k=spec.probes.shift.k)
                        for name, g in queries.items()}
    ids = ids_of_items(queries)
    methods = {m: unc.score_method(v, residuals, seed=stream(spec, "uncertainty_scores"), ids=ids)
               for m, v in scores_of.items() if "id" in v and "ood" in v}
    problems = []
    try:
        write_calibration(model, splits, out_dir / "model.calibration.json", device, seed=stream(spec, "calibration"))
    except TraitsError as exc:
        problems.append(f"no screening calibration written: {exc}")
    return UncertaintyResult.model_validate(
        {"methods": methods, "info": info, "n": {k: len(v) for k, v in targets.items()}, "problems": problems})


def run_label_free(spec: AuditSpec, model, splits: dict[str, list], prediction_batches: Callable[[list], list],
                   progress: ProgressFactory | None = None) -> LabelFreeResult:
    """The label-free probes (:mod:`traits.probes.labelfree`) of every probed split, on exactly the structures
    the labelled probes use: the Gauss-Newton spectrum, its jackknife and the gradient norms on the Hessian
    probe's sample and groups (streams ``hessian_subsample``, ``hessian_groups``), the prediction sharpness and
    the label-free 2D surface on the surfaces' sample and random directions (``surface_subsample``,
    ``surface``). ``prediction_batches(items)``: batches of ``items`` whose targets are the model's own
    predictions at θ."""
    from traits.probes.objective import SplitObjective

    cfg = spec.probes.label_free
    result = LabelFreeResult(radius=cfg.radius, seed=stream(spec, "surface"))
    directions = None
    for k, split in enumerate(spec.probes.splits):
        part = LabelFreeSplit()
        graphs = splits.get(split, [])
        sub = subsample(graphs, spec.probes.hessian.max_samples, stream(spec, "hessian_subsample", k))
        if sub:
            obj = SplitObjective(model, prediction_batches(sub), loss="mse")
            _label_free_curvature(spec, obj, k, part, result.problems, split)
            part.sample_ids = [str(g.material_id) for g in sub]
            part.sample_formulas = formulas_of(sub, part.sample_ids)
            part.sample_predictions = [json_float(v) for v in torch.cat([t.reshape(-1) for t in obj.targets]).tolist()]
        sub = subsample(graphs, spec.probes.surface.max_samples, stream(spec, "surface_subsample", k))
        if sub:
            obj = SplitObjective(model, prediction_batches(sub), loss="mse")
            directions = directions or surface_directions(spec, model, obj.params)
            _label_free_surfaces(spec, obj, directions, part, result, progress, split)
        result.splits[split] = part
    return result


def _label_free_curvature(spec: AuditSpec, obj, index: int, part: LabelFreeSplit, problems: list[str],
                          split: str) -> None:
    """The Gauss-Newton spectrum, its jackknife over the Hessian probe's groups, and the gradient norms."""
    from traits.errors import ProbeError
    from traits.probes.labelfree import gauss_newton_spectrum, gradient_norms

    n = obj.n_samples
    groups = hessian_groups(spec, n, index, any_backend=True)
    try:
        jac = obj.output_jacobian(max_entries=spec.probes.label_free.max_jacobian_entries)
    except ProbeError as exc:
        problems.append(f"{split}: the Gauss-Newton curvature was not measured: {exc}")
        return
    gn = gauss_newton_spectrum(jac, spec.probes.hessian.top_k, groups)
    part.n_samples = n
    part.gn_top_eigenvalues = [float(v) for v in gn.top]
    part.gn_trace = json_float(gn.trace)
    if groups:
        part.gn_lambda_jackknife = Jackknife(value=gn.lambda_max, leave_out=gn.lambda_leave_out,
                                             stderr=json_float(gn.lambda_stderr), df=gn.df)
        part.gn_trace_jackknife = Jackknife(value=gn.trace, leave_out=gn.trace_leave_out,
                                            stderr=json_float(gn.trace_stderr), df=gn.df)
    part.grad_norms = [float(v) for v in gradient_norms(jac)]
    part.grad_norm_median = json_float(float(np.median(part.grad_norms)))


def _label_free_surfaces(spec: AuditSpec, obj, directions: list, part: LabelFreeSplit, result: LabelFreeResult,
                         progress: ProgressFactory | None, split: str) -> None:
    """The prediction sharpness at ±radius along the 1D directions, and the label-free 2D grid and topology."""
    from traits.probes.labelfree import prediction_sharpness
    from traits.probes.surface import surface_1d, surface_2d

    s, cfg = spec.probes.surface, spec.probes.label_free
    radii = torch.tensor([-cfg.radius, cfg.radius], dtype=torch.float64)
    curves = [surface_1d(obj, d, radii).tolist() for d in directions[:s.directions_1d]]
    part.sharpness = json_float(prediction_sharpness(curves))
    part.surface_samples = obj.n_samples
    if cfg.two_d and len(directions) >= 2:
        axis = torch.linspace(-s.span, s.span, s.points_2d, dtype=torch.float64)
        result.span, result.alphas_2d = s.span, axis.tolist()
        cb = progress(f"label-free 2D surface {split}", s.points_2d**2) if progress else None
        grid = surface_2d(obj, directions[0], directions[1], axis, axis, chunk_size=s.chunk_size, progress=cb)
        part.grid = _grid_to_lists(grid)
        part.topology = topology_of(part.grid)


def split_metrics(spec: AuditSpec, split: str, hess: HessianResult | None, surf: SurfaceResult | None,
                  loss0: float | None) -> SplitMetrics:
    from traits.probes import metrics as pm

    m = SplitMetrics(loss=loss0)
    if hess is not None:  # an eigenvalue that was not certified is not a metric (its raw value stays in hess)
        if hess.top_eigenvalues and hess.lambda_max_certified:
            m.lambda_max = hess.top_eigenvalues[0]
            m.lambda_max_abs_residual = hess.top.abs_residuals[0] if hess.top is not None else None
        if hess.lambda_min_certified:
            m.lambda_min = hess.lambda_min
            m.lambda_min_abs_residual = hess.bottom.abs_residuals[0]
        best = next((t for t in hess.traces if t.method in ("gauss-newton+hutchinson", "hutch++")),
                    hess.traces[0] if hess.traces else None)
        if best is not None:
            m.trace, m.trace_stderr = best.estimate, best.stderr
    if surf is not None and split in surf.curves and loss0 is not None:
        delta = surf.band if surf.band is not None else surf.tolerance * loss0  # the absolute band
        alphas = np.asarray(surf.alphas_1d)
        curves = nan_array(surf.curves[split])
        radii = surf.radius.get(split)
        step = float(np.min(np.diff(alphas))) if len(alphas) > 1 else None
        if radii:  # refined by bisection along each direction (RADIUS_BISECTIONS halvings of a grid step)
            m.robust_radius_resolution = step / 2**RADIUS_BISECTIONS if step is not None else None
            finite = [r for r in radii if r is not None]
            m.robust_radius = min(finite) if finite else None
            m.robust_radius_censored = any(
                c for r, c in zip(radii, surf.radius_censored[split]) if r is not None and r == m.robust_radius
            )
            m.radius_per_direction = radii
        else:  # grid resolution only
            m.robust_radius_resolution = step
            radius = pm.robust_radius_directions(alphas, curves, loss0, delta)
            m.robust_radius = json_float(radius.radius)
            m.robust_radius_censored = bool(radius.censored)
            m.radius_per_direction = [json_float(r.radius) for r in radius.per_direction]
        eps = spec.probes.surface.sharpness_radius
        m.sharpness = json_float(max(pm.sharpness(alphas, c, loss0, eps) for c in curves))
        values = [v for c in surf.curves[split] for v in c]
        if split in surf.grids:
            grid = nan_array(surf.grids[split])
            m.basin_area = json_float(pm.basin_area_fraction(grid, loss0, delta))
            values += [v for row in surf.grids[split] for v in row]
        m.nan_fraction = sum(v is None for v in values) / len(values) if values else None
        if surf.plane_grids.get(split):
            plane = nan_array(surf.plane_grids[split])
            m.plane_basin_area = json_float(pm.basin_area_fraction(plane, loss0, delta))
        mark_below_resolution(m, step, surf)
        topo = (surf.topology.get("grids") or {}).get(split) or {}
        m.smad, m.smad_normalized = json_float(topo.get("smad")), json_float(topo.get("smad_normalized"))
        m.plane_smad = json_float(((surf.topology.get("plane_grids") or {}).get(split) or {}).get("smad"))
    elif surf is not None and split in surf.curves:  # L(θ) itself is NaN/inf: no radius, but count the points
        values = [v for c in surf.curves[split] for v in c] + [v for row in surf.grids.get(split, []) for v in row]
        m.nan_fraction = sum(v is None for v in values) / len(values) if values else None
    if hess is not None:
        from traits.probes.planes import nonconvexity

        m.nonconvexity = json_float(nonconvexity(m.lambda_min, m.lambda_max))
    if surf is not None:
        gradient_metrics(m, surf, split)
    stats = surf.landscape.get(split) if surf is not None else None
    if stats is not None:
        m.first_jump, m.smooth_to = stats.first_jump, stats.smooth_to
        m.n_jumps, m.entropy = stats.n_jumps, stats.entropy
    return m


def mark_below_resolution(m: SplitMetrics, step: float | None, surf: SurfaceResult) -> None:
    """A radius under one 1D grid step or a basin of one grid point is not a number: it becomes None (so
    no ratio or gate reads it) and its upper bound goes to ``below_resolution``."""
    from traits.probes import metrics as pm

    if pm.radius_below_resolution(m.robust_radius, step):
        m.below_resolution["robust_radius"] = step
        m.robust_radius, m.robust_radius_censored = None, False
    n2 = len(surf.alphas_2d)
    for name in ("basin_area", "plane_basin_area"):
        if pm.basin_below_resolution(getattr(m, name), (n2, n2)):
            m.below_resolution[name] = 1.0 / (n2 * n2)
            setattr(m, name, None)


def ratios(metrics: dict[str, SplitMetrics], accuracy: dict[str, Accuracy],
           label_free: LabelFreeResult | None = None) -> dict[str, float | None]:
    """Every OOD/ID ratio the metric catalogue lists with an ``accuracy.X``, ``metrics.X`` or ``label_free.X``
    source (a difference, OOD − ID, for a metric whose unit is "difference"; fractions are not ratios)."""
    from traits.catalogue import catalogue
    from traits.probes.metrics import ratio

    out = {}
    tables = {"accuracy": accuracy, "metrics": metrics, "label_free": label_free.splits if label_free else {}}
    for m in catalogue():
        table, _, attr = (m.source or "").partition(".")
        if table not in tables or m.unit == "fraction":
            continue
        i, o = tables[table].get("id"), tables[table].get("ood")
        if i is None or o is None:
            continue
        a, b = getattr(o, attr), getattr(i, attr)
        if m.unit == "difference":  # can change sign: a difference, not a ratio
            if a is not None and b is not None:
                out[m.name] = a - b
        else:
            out[m.name] = ratio(a, b)
    return {k: json_float(v) for k, v in out.items()}


@dataclass
class IntervalInputs:
    """What the interval recipes read: the per-split metrics and the probes' own results."""

    metrics: dict[str, SplitMetrics]
    accuracy: dict[str, Accuracy]
    hessians: dict[str, HessianResult]
    shift: ShiftResult | None
    seed: int
    surface: SurfaceResult | None = None
    label_free: LabelFreeResult | None = None

    def pair(self, mapping: dict) -> tuple:
        return mapping.get("id"), mapping.get("ood")


def _abs_errors(a: Accuracy) -> list[float]:
    return [abs(p - y) for p, y in zip(a.predictions, a.targets) if p is not None]


def _mae_interval(x: IntervalInputs) -> dict | None:
    from traits import intervals as iv

    i, o = x.pair(x.accuracy)
    return None if i is None or o is None else iv.bootstrap_ratio(_abs_errors(o), _abs_errors(i), np.mean, seed=x.seed)


def _rmse_interval(x: IntervalInputs) -> dict | None:
    from traits import intervals as iv

    i, o = x.pair(x.accuracy)
    if i is None or o is None:
        return None
    rms = lambda v: float(np.sqrt(np.mean(np.square(v))))  # noqa: E731
    return iv.bootstrap_ratio(_abs_errors(o), _abs_errors(i), rms, seed=x.seed + 1)


def _lambda_interval(x: IntervalInputs) -> dict | None:
    from traits import intervals as iv

    (i, o), (hi, ho) = x.pair(x.metrics), x.pair(x.hessians)
    if i is None or o is None or hi is None or ho is None or not hi.top_eigenvalues or not ho.top_eigenvalues:
        return None
    if hi.lambda_max_jackknife is not None and ho.lambda_max_jackknife is not None:
        return iv.sampled_ratio(sampled_lambda(ho, o), sampled_lambda(hi, i))

    def lam_max(h: HessianResult, m: SplitMetrics) -> iv.Estimate:  # no structure groups: the solver's bound only
        return iv.Estimate.plus_minus(h.top_eigenvalues[0], m.lambda_max_abs_residual, h.lambda_max_certified)

    return iv.bounds_ratio(lam_max(ho, o), lam_max(hi, i), "residual bounds")


def _trace_interval(x: IntervalInputs) -> dict | None:
    from traits import intervals as iv

    (i, o), (hi, ho) = x.pair(x.metrics), x.pair(x.hessians)
    if i is None or o is None or i.trace is None or o.trace is None:
        return None
    ti, to = sampled_trace(hi), sampled_trace(ho)
    if ti is not None and to is not None:
        return iv.sampled_ratio(to, ti)
    return iv.fieller_ratio(o.trace, o.trace_stderr, i.trace, i.trace_stderr)


def _radius_interval(x: IntervalInputs) -> dict | None:
    from traits import intervals as iv

    i, o = x.pair(x.metrics)
    if i is None or o is None or i.robust_radius is None or o.robust_radius is None:
        return None
    jr = x.surface.radius_jackknife if x.surface is not None else {}
    if "id" in jr and "ood" in jr and not (i.robust_radius_censored or o.robust_radius_censored):
        def sampled_radius(m: SplitMetrics, jk: Jackknife) -> iv.Sampled:  # bound: the bisection bracket
            return iv.Sampled(m.robust_radius, jk.stderr, jk.df, 2 * (m.robust_radius_resolution or 0.0))

        return iv.sampled_ratio(sampled_radius(o, jr["ood"]), sampled_radius(i, jr["id"]))

    def radius(m: SplitMetrics) -> iv.Estimate:
        res = m.robust_radius_resolution or 0.0
        # the refined radius is the last point known inside: the crossing lies within one bracket above
        high = None if m.robust_radius_censored else m.robust_radius + 2 * res
        return iv.Estimate(m.robust_radius, m.robust_radius, high)

    return iv.bounds_ratio(radius(o), radius(i), "bisection bracket")


def _nonconvexity_interval(x: IntervalInputs) -> dict | None:
    from traits import intervals as iv

    (i, o), (hi, ho) = x.pair(x.metrics), x.pair(x.hessians)
    if i is None or o is None:
        return None
    if i.nonconvexity is not None and o.nonconvexity is not None:
        return iv.bounds_ratio(iv.Estimate.exact(o.nonconvexity), iv.Estimate.exact(i.nonconvexity),
                               "certified eigenvalues")
    if hi is not None and ho is not None and hi.bottom is not None and ho.bottom is not None:
        return iv._result(None, None, None, "uncertified", "certified eigenvalues", True)
    return None


def _knn_interval(space: str, offset: int) -> Callable[[IntervalInputs], dict | None]:
    """The kNN-distance ratio of one space: a bootstrap over compounds of the OOD and ID medians (the point value
    is the full split's, the samples a seeded subsample)."""
    def recipe(x: IntervalInputs) -> dict | None:
        from traits import intervals as iv

        if x.shift is None:
            return None
        ood_s, id_s = x.shift.samples.get("ood"), x.shift.samples.get("id")
        if ood_s is None or id_s is None or space not in ood_s.distances or space not in id_s.distances:
            return None
        out = iv.bootstrap_ratio(ood_s.distances[space], id_s.distances[space], np.median, seed=x.seed + offset)
        if x.shift.ratios.get(f"{space}_knn_ratio") is not None:
            out["value"] = x.shift.ratios[f"{space}_knn_ratio"]
        return out

    return recipe


def _gauss_newton_interval(attr: str) -> Callable[[IntervalInputs], dict | None]:
    """The Gauss-Newton λ_max or trace ratio from each split's jackknife (the values are exact: no solver bound)."""
    def recipe(x: IntervalInputs) -> dict | None:
        from traits import intervals as iv

        i, o = x.pair(x.label_free.splits) if x.label_free is not None else (None, None)
        a, b = (getattr(o, attr), getattr(i, attr)) if i is not None and o is not None else (None, None)
        if a is None or b is None or a.stderr is None or b.stderr is None:
            return None
        return iv.sampled_ratio(iv.Sampled(a.value, a.stderr, a.df), iv.Sampled(b.value, b.stderr, b.df))

    return recipe


def _grad_norm_interval(x: IntervalInputs) -> dict | None:
    from traits import intervals as iv

    i, o = x.pair(x.label_free.splits) if x.label_free is not None else (None, None)
    if i is None or o is None or not i.grad_norms or not o.grad_norms:
        return None
    return iv.bootstrap_ratio(o.grad_norms, i.grad_norms, np.median, seed=x.seed + 3)


#: How the interval of each ratio is made, by catalogue name (the entry's ``interval`` says it in words). A ratio
#: with an interval is one recipe here plus its catalogue entry; :func:`ratio_intervals` runs them all.
INTERVALS: dict[str, Callable[[IntervalInputs], dict | None]] = {
    "mae_ratio": _mae_interval,
    "rmse_ratio": _rmse_interval,
    "lambda_ratio": _lambda_interval,
    "trace_ratio": _trace_interval,
    "radius_ratio": _radius_interval,
    "nonconvexity_ratio": _nonconvexity_interval,
    "embedding_knn_ratio": _knn_interval("embedding", 2),
    "composition_knn_ratio": _knn_interval("composition", 4),
    "gn_lambda_ratio": _gauss_newton_interval("gn_lambda_jackknife"),
    "gn_trace_ratio": _gauss_newton_interval("gn_trace_jackknife"),
    "grad_norm_ratio": _grad_norm_interval,
}


def ratio_intervals(metrics: dict[str, SplitMetrics], accuracy: dict[str, Accuracy],
                    hessians: dict[str, HessianResult], shift: ShiftResult | None, seed: int,
                    surface: SurfaceResult | None = None, label_free: LabelFreeResult | None = None) -> dict[str, dict]:
    """An interval for every ratio a gate or the verdict reads (:mod:`traits.intervals`), one recipe per ratio
    (:data:`INTERVALS`).

    λ_max and the trace: the jackknife over structure groups combined with the solver's bound or the
    Monte-Carlo error (``sampled``; the solver's bound or Fieller alone when no groups were formed); robust
    radius: its jackknife over the surface sample's structure groups widened by the bisection bracket (the
    bracket alone when no jackknife was made, unbounded above when censored); MAE/RMSE and the embedding kNN
    distance: a bootstrap over compounds; the label-free Gauss-Newton λ_max and trace: their jackknife over the
    Hessian sample's groups; the gradient-norm medians: a bootstrap over structures. Every interval decides its
    gate."""
    inputs = IntervalInputs(metrics, accuracy, hessians, shift, seed, surface, label_free)
    out: dict[str, dict] = {}
    for name, recipe in INTERVALS.items():
        interval = recipe(inputs)
        if interval is not None:
            out[name] = interval
    return out


def sampled_lambda(h: HessianResult, m: SplitMetrics):
    """λ_max of one split as an :class:`traits.intervals.Sampled`: the certified Ritz value, its jackknife
    standard error over structure groups, and its verified absolute residual as the solver bound."""
    from traits import intervals as iv

    jk = h.lambda_max_jackknife
    return iv.Sampled(h.top_eigenvalues[0], jk.stderr, jk.df, m.lambda_max_abs_residual or 0.0,
                      h.lambda_max_certified)


def sampled_trace(h: HessianResult | None):
    """The Gauss-Newton trace of one split as a :class:`traits.intervals.Sampled` (Monte-Carlo and sampling
    errors in quadrature, on the smaller of their degrees of freedom); None for other estimators."""
    from traits import intervals as iv

    t = next((t for t in (h.traces if h is not None else []) if t.method == "gauss-newton+hutchinson"), None)
    if t is None or t.stderr is None or t.sampling_stderr is None:
        return None
    se = math.sqrt(t.stderr**2 + t.sampling_stderr**2)
    return iv.Sampled(t.estimate, se, min(t.df or 0, t.sampling_df or 0) if t.stderr > 0 else (t.sampling_df or 0))


def certified_ratios(values: dict[str, float | None], intervals: dict[str, dict]) -> dict[str, float | None]:
    """The ratios as stored: None where the interval says the ratio is uncertified or undefined."""
    out = dict(values)
    for name, interval in intervals.items():
        if name in out and interval["status"] != "ok":
            out[name] = None
    return out


# ------------------------------------------------------------------------------------------ audit


def run_audit(
    spec: AuditSpec,
    out_dir: Path | None = None,
    *,
    spec_path: str = "",
    command: str = "",
    progress: ProgressFactory | None = None,
    train_progress: bool | None = False,
    render: bool = True,
    overwrite: bool = False,
    model=None,
    structures=None,
) -> AuditResult:
    """Run every probe of ``spec``; write results.json (and the report formats it asks for).

    The output folder is locked for the audit and must not hold another audit's results (see
    :mod:`traits.outdir`): ``overwrite`` removes them first; an audit of the same spec resumes there.

    ``model``: an ``nn.Module`` to audit instead of loading ``spec.model`` (its ``forward(batch)`` returns one
    value per structure; with a CGCNN architecture in the spec it gets TRAITS crystal graphs, otherwise the spec's
    adapter featurises). ``structures``: pymatgen Structures, ASE Atoms or (id, structure[, target]) tuples
    instead of ``spec.data``'s file, split by the spec's omission rule (label-free with ``data.target: model``)."""
    from traits.outdir import claim_output

    settle_threads()  # torch is imported here: it can only lower the count (fewer where other work holds CPUs)
    out_dir = ensure_dir(Path(out_dir) if out_dir is not None else spec.report.out_dir)
    lock = claim_output(out_dir, spec, overwrite=overwrite, spec_path=spec_path)
    try:
        return _run_audit(spec, out_dir, spec_path=spec_path, command=command, progress=progress,
                          train_progress=train_progress, render=render, model_object=model, structures=structures)
    finally:
        lock.release()


@dataclass
class AuditContext:
    """What the stages of one audit share: the inputs, then each stage's part of the result as it is made.

    A stage reads what earlier stages left here and adds its own part; the loop in :func:`_run_audit` times it
    (``walls``), reports its progress and names it in any error it raises."""

    spec: AuditSpec
    out_dir: Path
    device: torch.device
    dtype: torch.dtype
    progress: ProgressFactory | None = None
    train_progress: bool | None = False
    model_object: object = None
    structures: object = None
    walls: dict[str, float] = field(default_factory=dict)
    adapter: object = None
    loaded: LoadedModel | None = None
    model: object = None
    data: PreparedData | None = None
    pre_findings: list[Finding] = field(default_factory=list)
    acc: dict[str, Accuracy] = field(default_factory=dict)
    prediction_stats: dict[str, dict] = field(default_factory=dict)
    shift: ShiftResult | None = None
    hessians: dict[str, HessianResult] = field(default_factory=dict)
    objectives: dict[str, object] = field(default_factory=dict)
    surface_groups: dict[str, list[list[int]]] = field(default_factory=dict)  # indices into each surface sample
    loss0: dict[str, float | None] = field(default_factory=dict)
    surface: SurfaceResult | None = None
    uncertainty: UncertaintyResult | None = None
    label_free_result: LabelFreeResult | None = None
    compile_plan: dict | None = None  # probes.surface.compile: auto, the decision (provenance.compile)
    fast_forward: dict[str, dict] = field(default_factory=dict)  # provenance.fast_forward, per split

    @property
    def label_free(self) -> bool:
        return self.spec.data.target == MODEL_TARGET

    def batches_of(self, items: list) -> list:
        """Collated batches of ``items`` on the audit's device; label-free, their targets are the model's own
        predictions at θ on exactly these batches."""
        if self.adapter is None:
            out = collate(items, self.device, self.dtype)
        else:
            out = self.adapter.batches(items, self.device, self.dtype)
        return self._predicted(out) if self.label_free else out

    def prediction_batches(self, items: list) -> list:
        """Batches of ``items`` whose targets are the model's own predictions at θ (labelled audit or not)."""
        out = self.batches_of(items)
        return out if self.label_free else self._predicted(out)

    def _predicted(self, batches: list) -> list:
        with torch.no_grad():
            for b in batches:
                b.y = self.model(b).detach().reshape(b.y.shape).to(self.dtype)
        return batches


def _progress(ctx: AuditContext, label: str):
    return ctx.progress(label, 0) if ctx.progress else None


def _stage_model_and_data(ctx: AuditContext) -> None:
    """Load (or train) the model and prepare the split: an adapter featurises after loading the model, the
    CGCNN path builds graphs first (a checkpoint it trains needs them)."""
    from traits.models.base import adapter_class

    spec = ctx.spec
    if ctx.model_object is not None or ctx.structures is not None or \
            not getattr(adapter_class(spec.model.architecture), "graph_model", False):
        t = time.perf_counter()
        ctx.adapter, options, ctx.loaded = load_adapter_model(spec, ctx.device, ctx.model_object)
        ctx.model = ctx.loaded.model.to(device=ctx.device, dtype=ctx.dtype).eval()
        set_probe_parameters(ctx.model, ctx.adapter.probe_parameters(ctx.model))
        ctx.walls["model"] = time.perf_counter() - t
        t = time.perf_counter()
        ctx.data = prepare_for_adapter(spec, ctx.adapter, options, structures=ctx.structures,
                                       progress=_progress(ctx, "featurising structures"))
        ctx.data.manifest.write(ctx.out_dir / "split_manifest.json")
        ctx.walls["data"] = time.perf_counter() - t
        ctx.pre_findings = provenance_findings(spec, ctx.loaded)
        return
    t = time.perf_counter()
    ctx.data = prepare_data(spec, progress=_progress(ctx, "building crystal graphs"))
    ctx.data.manifest.write(ctx.out_dir / "split_manifest.json")
    ctx.walls["data"] = time.perf_counter() - t
    t = time.perf_counter()
    ctx.loaded = load_or_train(spec, ctx.data, ctx.out_dir, ctx.device, progress=ctx.train_progress)
    ctx.model = ctx.loaded.model.to(device=ctx.device, dtype=ctx.dtype).eval()
    ctx.walls["model"] = time.perf_counter() - t
    ctx.pre_findings = check_checkpoint_against_spec(spec, ctx.loaded, ctx.data) + provenance_findings(spec, ctx.loaded)


def _stage_predictions(ctx: AuditContext) -> None:
    """Predictions on every split; with labels, the accuracy per split (label-free, the predictions become the
    targets the shift diagnostics describe)."""
    from traits.models.inference import accuracy as accuracy_of
    from traits.models.inference import predict

    for split, graphs in ctx.data.splits.items():
        if ctx.adapter is None:
            ids, preds, targets = predict(ctx.model, graphs, ctx.device)
        else:
            ids, preds, targets = ctx.adapter.predict(ctx.model, graphs, ctx.device, ctx.dtype)
        ctx.prediction_stats[split] = _prediction_stats(preds)
        if ctx.label_free:
            for g, p in zip(graphs, preds):
                g.y = torch.full_like(g.y, float(p)) if g.y.dim() else torch.tensor(float(p), dtype=g.y.dtype)
            continue
        stats = accuracy_of(preds, targets)
        ctx.acc[split] = Accuracy(
            n=len(ids), mae=json_float(stats["mae"]), rmse=json_float(stats["rmse"]),
            r2=json_float(stats["r2"]), ids=list(ids),
            predictions=[json_float(p) for p in preds], targets=[float(y) for y in targets],
            formulas=formulas_of(graphs, ids),
        )


def _stage_shift(ctx: AuditContext) -> None:
    ctx.shift = run_shift(ctx.spec, ctx.model, ctx.data.splits, ctx.device)


def _stage_hessians_and_objectives(ctx: AuditContext) -> None:
    """Per probed split: the Hessian probe (timed per split), the loss objective the surfaces use and its
    structure groups (the robust radius's jackknife)."""
    from traits.probes.objective import SplitObjective
    from traits.probes.sampling import assign_groups

    spec = ctx.spec
    for k, split in enumerate(spec.probes.splits):
        graphs = ctx.data.splits[split]
        if spec.probes.hessian.enabled:
            t = time.perf_counter()
            sub = subsample(graphs, spec.probes.hessian.max_samples, stream(spec, "hessian_subsample", k))
            groups = hessian_groups(spec, len(sub), k)
            ctx.hessians[split] = run_hessian(
                spec, ctx.model, ctx.batches_of(sub), len(sub), stream(spec, "hessian", k), ctx.device, ctx.dtype,
                ctx.progress, f"Hessian {split}", group_batches=[ctx.batches_of([sub[i] for i in g]) for g in groups],
                groups=groups)
            ctx.hessians[split].sample_ids = [str(g.material_id) for g in sub]
            ctx.walls[f"hessian_{split}"] = time.perf_counter() - t
        sub = subsample(graphs, spec.probes.surface.max_samples, stream(spec, "surface_subsample", k))
        obj = SplitObjective(ctx.model, ctx.batches_of(sub), loss=spec.probes.loss,
                             hvp_method=spec.probes.hessian.hvp, compile_loss=spec.probes.surface.compile is True)
        ctx.objectives[split] = obj
        ctx.loss0[split] = json_float(obj.loss())
        ctx.fast_forward[split] = fast_forward_record(obj)
        if spec.probes.surface.compile == "auto":
            _decide_compile(ctx, obj, k)
        if spec.probes.surface.enabled and len(sub) >= 2:  # the radius's jackknife over structure groups
            rng = np.random.default_rng(stream(spec, "surface_groups", k))
            ctx.surface_groups[split] = [list(map(int, g)) for g in assign_groups(len(sub), rng)]
        if obj.compiled:  # the compile time of the first call (probes.surface.compile)
            ctx.walls[f"compile_{split}"] = obj.compile_seconds


def fast_forward_record(obj) -> dict:
    """How an objective evaluates its losses (``provenance.fast_forward``): whether the model's cheaper forward is
    used, its relative difference to the plain forward at θ (or why it is not used) and the atoms each computed atom
    stands for (:mod:`traits.models.orbits`)."""
    error = obj.fast_forward_error
    return {"used": bool(obj.fast_forward),
            "max_relative_difference": error if isinstance(error, float) else None,
            "why_not": error if isinstance(error, str) else None,
            "atoms_per_computed_atom": obj.fast_reduction}


def _decide_compile(ctx: AuditContext, obj, index: int) -> None:
    """``probes.surface.compile: auto``: on the first split, time one loss evaluation at θ (after the first, which
    also checks the fast forward) and compile when :func:`traits.probes.surface.compile_pays` says the planned
    evaluations of every split repay it; a later split follows that decision (the compile is then already paid).
    The decision and its numbers go to ``provenance.compile``."""
    from traits.probes.surface import COMPILE_SAVING, COMPILE_SECONDS, compile_pays, planned_evaluations

    spec = ctx.spec
    if index == 0:
        planned = planned_evaluations(spec.probes.surface, len(spec.probes.splits))
        seconds = None
        if spec.probes.surface.enabled and ctx.device.type == "cpu":  # only then is the evaluation worth timing
            t = time.perf_counter()
            obj.loss()
            seconds = time.perf_counter() - t
        wanted = seconds is not None and compile_pays(planned, seconds)
        ctx.compile_plan = {
            "mode": "auto", "compile": wanted, "planned_evaluations": planned, "seconds_per_evaluation": seconds,
            "expected_saving_s": None if seconds is None else planned * seconds * COMPILE_SAVING,
            "expected_compile_s": COMPILE_SECONDS,
            "why": ("compiled: the planned evaluations repay the compile" if wanted else
                    "not compiled: " + ("the surfaces are off" if not spec.probes.surface.enabled else
                                        "on a GPU the plain loss is kept" if ctx.device.type != "cpu" else
                                        "the planned evaluations would not repay the compile"))}
    plan = ctx.compile_plan or {}
    if plan.get("compile"):
        obj.compiled = None  # compiled on its next evaluation without gradients, if it matches the plain loss
        obj.loss()
        plan.setdefault("compiled", {})[ctx.spec.probes.splits[index]] = bool(obj.compiled)
        if obj.compile_error:
            plan.setdefault("errors", {})[ctx.spec.probes.splits[index]] = obj.compile_error


def _stage_surfaces(ctx: AuditContext) -> None:
    from traits.probes.objective import SplitObjective

    spec = ctx.spec
    train_objective = None
    if spec.probes.surface.directions == "hessian":  # the plane comes from the training loss
        train_objective = ctx.objectives.get("train") or SplitObjective(
            ctx.model, ctx.batches_of(subsample(ctx.data.splits["train"], spec.probes.hessian.max_samples,
                                                stream(spec, "plane_train_subsample"))),
            loss=spec.probes.loss, hvp_method=spec.probes.hessian.hvp)
    ctx.surface = run_surfaces(spec, ctx.model, ctx.objectives, ctx.out_dir, ctx.progress,
                               train_objective=train_objective, groups=ctx.surface_groups)


def _stage_label_free(ctx: AuditContext) -> None:
    ctx.label_free_result = run_label_free(ctx.spec, ctx.model, ctx.data.splits, ctx.prediction_batches,
                                           ctx.progress)


def _stage_uncertainty(ctx: AuditContext) -> None:
    ctx.uncertainty = run_uncertainty(ctx.spec, ctx.model, ctx.data.splits, ctx.out_dir, ctx.device, ctx.dtype)


@dataclass(frozen=True)
class Stage:
    """One step of an audit: ``run(ctx)`` adds its part to the context when ``enabled(spec)``. ``wall`` is the
    key its time is recorded under (None: the stage records its own, e.g. per split); ``label`` the progress
    stage the loop starts and ends around it (None: the stage reports its own progress)."""

    name: str
    run: Callable[[AuditContext], None]
    enabled: Callable[[AuditSpec], bool] = lambda spec: True
    wall: str | None = None
    label: str | None = None


#: The stages of an audit, in order. A new probe is its module plus one entry here (and its part of the result).
STAGES: tuple[Stage, ...] = (
    Stage("model and data", _stage_model_and_data),
    Stage("predictions", _stage_predictions, wall="accuracy", label="predictions"),
    Stage("domain shift", _stage_shift, lambda spec: spec.probes.shift.enabled, "shift", "domain-shift diagnostics"),
    Stage("Hessian", _stage_hessians_and_objectives),
    Stage("surfaces", _stage_surfaces, lambda spec: spec.probes.surface.enabled, "surfaces"),
    Stage("label-free probes", _stage_label_free, lambda spec: spec.probes.label_free.enabled, "label_free",
          "label-free probes"),
    Stage("uncertainty", _stage_uncertainty, lambda spec: spec.probes.uncertainty.enabled, "uncertainty",
          "per-compound uncertainty"),
)


def run_stages(ctx: AuditContext, stages: Sequence[Stage] = STAGES) -> AuditContext:
    """Run each enabled stage in order: its progress stage started and ended, its wall time recorded, and any
    error it raises noted with the stage's name (the error's type and message are kept).

    Args:
        ctx: the audit's context; the stages fill it in.
        stages: the stages to run (default :data:`STAGES`).

    Returns:
        ``ctx``, filled in."""
    from traits.progress import start_stage

    for stage in stages:
        if not stage.enabled(ctx.spec):
            continue
        t = time.perf_counter()
        done = start_stage(ctx.progress, stage.label) if stage.label else None
        try:
            stage.run(ctx)
        except Exception as exc:
            exc.add_note(f"(in the audit's {stage.name} stage)")
            raise
        if stage.wall:
            ctx.walls[stage.wall] = time.perf_counter() - t
        if done is not None:
            done()
    return ctx


def _assemble(ctx: AuditContext, started: str, spec_path: str, command: str) -> AuditResult:
    """The AuditResult from a context whose stages have run: metrics, ratios with their intervals, provenance."""
    spec, loaded, data = ctx.spec, ctx.loaded, ctx.data
    metrics = {s: split_metrics(spec, s, ctx.hessians.get(s), ctx.surface, ctx.loss0[s]) for s in spec.probes.splits}
    if ctx.label_free:
        for m in metrics.values():  # L(θ) = 0: a tolerance relative to it defines no region
            clear_relative_metrics(m)
    intervals = ratio_intervals(metrics, ctx.acc, ctx.hessians, ctx.shift, stream(spec, "ratio_intervals"),
                                ctx.surface, ctx.label_free_result)
    checkpoint_path = loaded.checkpoint
    provenance = Provenance(
        traits_version=traits.__version__, versions=package_versions(), platform=platform.platform(),
        device=str(ctx.device), dtype=spec.dtype, seed=spec.seed, probe_seed=probe_seed(spec), started_at=started,
        wall_seconds=ctx.walls, command=command, spec_path=spec_path,
        checkpoint_path=str(checkpoint_path) if checkpoint_path else None,
        checkpoint_sha256=file_hash(checkpoint_path) if checkpoint_path and checkpoint_path.is_file() else None,
        checkpoint_format=spec.model.format if ctx.adapter is None else spec.model.architecture,
        checkpoint_metadata=_jsonable(loaded.metadata),
        data_source=data.source, data_hash=data.manifest.data_hash, manifest_hash=data.manifest.hash,
        split_scheme=SPLIT_SCHEME, threads=thread_record() or configure_threads(), compile=ctx.compile_plan or {},
        fast_forward=ctx.fast_forward, kernels=kernel_record(),
    )
    shift = ctx.shift
    result = AuditResult(
        name=spec.name, description=spec.description, spec=spec.model_dump(mode="json"), provenance=provenance,
        target=spec.data.target, unit=result_unit(spec, loaded), omit=list(spec.omit), loss=spec.probes.loss,
        splits={k: SplitStats(**v) for k, v in data.stats(spec.omit).items()}, skipped=dict(data.skipped),
        accuracy=ctx.acc, hessian=ctx.hessians, surface=ctx.surface, shift=shift, uncertainty=ctx.uncertainty,
        metrics=metrics,
        ratios=certified_ratios({**ratios(metrics, ctx.acc, ctx.label_free_result),
                                 **(shift.ratios if shift is not None else {})}, intervals),
        label_free=ctx.label_free_result,
        ratio_intervals=intervals, mode="label-free" if ctx.label_free else "labels",
        prediction_stats=ctx.prediction_stats, model_info=(loaded.metadata or {}).get("model_info"),
    )
    result.findings = list(ctx.pre_findings)
    risk = audit_risk(result.ratios)
    result.trust_risk = TrustRisk(**risk) if risk is not None else None
    return result


def _run_audit(
    spec: AuditSpec,
    out_dir: Path | None = None,
    *,
    spec_path: str = "",
    command: str = "",
    progress: ProgressFactory | None = None,
    train_progress: bool | None = False,
    render: bool = True,
    model_object=None,
    structures=None,
) -> AuditResult:
    """The audit itself (:func:`run_audit` holds the output folder's lock around it): the stages, the result,
    the verdict, results.json and the report."""
    from traits.progress import start_stage
    from traits.verdict import apply_verdict

    out_dir = ensure_dir(Path(out_dir) if out_dir is not None else spec.report.out_dir)
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    device = resolve_device(spec.device)
    torch.manual_seed(spec.seed)
    ctx = AuditContext(spec=spec, out_dir=out_dir, device=device,
                       dtype=torch.float64 if spec.dtype == "float64" else torch.float32, progress=progress,
                       train_progress=train_progress, model_object=model_object, structures=structures)
    run_stages(ctx)
    result = _assemble(ctx, started, spec_path, command)
    apply_verdict(result, spec.gates)
    walls = ctx.walls
    walls["total"] = sum(walls.values())
    result.provenance.wall_seconds = dict(walls)  # the Provenance holds a copy made before the total
    result.write(out_dir / "results.json")
    shutil.rmtree(out_dir / ".partial", ignore_errors=True)  # resume files of a finished audit
    if render:
        formats = [f for f in spec.report.formats if f != "json"]
        if formats:
            from traits.report.render import render_report

            stage_done = start_stage(progress, f"report ({', '.join(formats)})")
            render_report(result, out_dir, formats=tuple(formats))
            stage_done()
    return result


def _jsonable(meta) -> dict:
    import json

    try:
        return json.loads(json.dumps(meta or {}, default=str))
    except (TypeError, ValueError):
        return {}
