"""The loss barrier between two audited models on the same compounds (``traits compare A B --barrier``).

Two audits of one task (two training seeds, a model before and after a change) each keep the weights they
measured. With both weight sets θ_A and θ_B of one architecture, trained on the same split, the loss along the
straight path

    w(t) = θ_A + t (θ_B − θ_A),   t = 0, 1/(m−1), ..., 1   (m = ``points``),

is evaluated on exactly the structures A's surfaces used on each probed split (A's spec and seed draw them),
and its barrier, the largest excess of the loss over the chord between the ends (:mod:`traits.probes.interpolation`),

    B_s = max_t  L_s(w(t)) − [(1 − t) L_s(θ_A) + t L_s(θ_B)],

is reported per split s in the loss's units. B_s ≈ 0: the two models lie in one linearly connected basin of that
split's loss. B_OOD ≫ B_ID: the two models agree in distribution but reach the omitted chemistry through
separated solutions, so which of them one trained was luck. What it does not say: a curved low-loss path may
join models the straight line separates, and the maximum is over the sampled ts only (a hill narrower than 1/(m−1)
is missed). It is a measurement of the pair, not a gate: it carries no interval (the structures are A's surfaces'
sample, so it describes those compounds) and never passes or fails a comparison.

The barrier needs the weights and the data, not only the results: each audit's checkpoint is taken from its
folder (``model/model.safetensors`` beside ``results.json``) or from the path its provenance records, and A's
spec must rebuild the split A recorded (its split manifest's hash). The two audits must share the data file and
the target; they may differ in their split (two training seeds draw two splits): the path is then evaluated on
A's structures, some of which B may have trained on, and the result says so (``same_split``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from traits.errors import DataError
from traits.results import AuditResult, MaybeFloat

#: Points of the path t in [0, 1], ends included, unless the caller asks otherwise.
DEFAULT_POINTS = 11


class SplitBarrier(BaseModel):
    """One split's path and barrier (:func:`traits.probes.interpolation.interpolation_barrier`)."""

    model_config = ConfigDict(extra="forbid")

    n_samples: int = Field(description="structures the loss is evaluated on (A's surfaces' sample)")
    height: MaybeFloat = Field(None, description="B: the loss's largest excess over the chord (loss units); None "
                               "when the path diverged")
    diverged: bool = False
    position: MaybeFloat = Field(None, description="the t of that maximum")
    loss_a: MaybeFloat = None
    loss_b: MaybeFloat = None
    relative: MaybeFloat = Field(None, description="B / max(L(θ_A), L(θ_B)): the barrier as a share of the ends' "
                                 "loss")
    ts: list[float] = Field(default_factory=list)
    losses: list[MaybeFloat] = Field(default_factory=list)


class BarrierResult(BaseModel):
    """The barrier of each probed split, and where the weights came from."""

    model_config = ConfigDict(extra="forbid")

    loss: str
    unit: str = ""
    checkpoint_a: str
    checkpoint_b: str
    same_split: bool = Field(True, description="A and B share their split; False: B was trained on another split "
                             "of the same data (e.g. another seed), so some of A's test compounds may be in B's "
                             "training set")
    splits: dict[str, SplitBarrier] = Field(default_factory=dict)
    note: str = ("straight-line path between the two models' weights, on A's surfaces' structures; a measurement "
                 "of the pair, not a gate, no interval")

    def ood_over_id(self) -> float | None:
        """B_OOD / B_ID when both are finite and B_ID > 0."""
        i, o = self.splits.get("id"), self.splits.get("ood")
        if i is None or o is None or i.height is None or o.height is None or not i.height > 0:
            return None
        return float(o.height / i.height)


def checkpoint_of(result: AuditResult, results_path: Path, label: str) -> Path:
    """The weights an audit measured: ``model/model.safetensors`` beside its results.json, else the checkpoint its
    provenance names; a DataError naming both places when neither exists."""
    beside = Path(results_path).parent / "model" / "model.safetensors"
    if beside.is_file():
        return beside
    recorded = result.provenance.checkpoint_path
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    raise DataError(f"{label} ({results_path}): the barrier needs the audit's weights, found neither {beside} nor "
                    f"the checkpoint its provenance records ({recorded or 'none recorded'})")


def _same_data(a: AuditResult, b: AuditResult) -> bool:
    """Whether A and B share their split (True), or only their data file and target (False); a DataError when
    they do not even share those (then the two losses are not the same function of the weights)."""
    pa, pb = a.provenance, b.provenance
    if a.target != b.target:
        raise DataError(f"A predicts {a.target!r} and B {b.target!r}: the barrier joins two models of one target")
    if pa.data_hash and pb.data_hash and pa.data_hash != pb.data_hash:
        raise DataError("A and B were audited on different data files (their data hashes differ); the barrier "
                        "compares two models on the same compounds")
    return bool(pa.manifest_hash) and pa.manifest_hash == pb.manifest_hash


def barrier_between(a: AuditResult, b: AuditResult, a_path: Path, b_path: Path, *, points: int = DEFAULT_POINTS,
                    device: str = "auto", progress=None) -> BarrierResult:
    """The loss barrier between A's and B's weights on each split A probed (module docstring).

    A's spec (with A's checkpoint as its model) rebuilds the data; the rebuilt split must be the one both audits
    recorded. B's weights must hold every trainable parameter of A's model with the same shape."""
    import torch

    from traits.audit import AuditContext, _stage_model_and_data, resolve_device, subsample
    from traits.probes.interpolation import difference_direction, interpolation_barrier
    from traits.probes.objective import SplitObjective
    from traits.probes.surface import surface_1d
    from traits.seeds import stream
    from traits.spec import AuditSpec

    if points < 3:
        raise DataError(f"--barrier-points must be at least 3 (the ends and one point between), got {points}")
    if a.mode == "label-free" or b.mode == "label-free":
        raise DataError("the barrier is a property of the labelled loss; A or B is a label-free audit")
    same_split = _same_data(a, b)
    ckpt_a, ckpt_b = checkpoint_of(a, a_path, "A"), checkpoint_of(b, b_path, "B")
    spec_a = AuditSpec.model_validate({**a.spec, "model": {**a.spec["model"], "checkpoint": str(ckpt_a)}})
    spec_b = spec_a.model_copy(update={"model": spec_a.model.model_copy(update={"checkpoint": ckpt_b})})
    dev = resolve_device(device)
    with tempfile.TemporaryDirectory(prefix="traits-barrier-") as tmp:
        ctx = AuditContext(spec=spec_a, out_dir=Path(tmp), device=dev, dtype=torch.float32, progress=progress)
        _stage_model_and_data(ctx)
        if ctx.data.manifest.hash != a.provenance.manifest_hash:
            raise DataError("A's spec no longer rebuilds the split A recorded (split manifest "
                            f"{ctx.data.manifest.hash[:16]} now, {a.provenance.manifest_hash[:16]} then): the data "
                            "file or the split code changed since; the barrier needs the audited compounds")
        other = AuditContext(spec=spec_b, out_dir=Path(tmp), device=dev, dtype=torch.float32, data=ctx.data)
        theta_b = _weights_of(other)
        ts = torch.linspace(0.0, 1.0, points, dtype=torch.float64)
        result = BarrierResult(loss=spec_a.probes.loss, unit=a.unit, checkpoint_a=str(ckpt_a), checkpoint_b=str(ckpt_b),
                               same_split=same_split)
        for k, split in enumerate(spec_a.probes.splits):
            sub = subsample(ctx.data.splits[split], spec_a.probes.surface.max_samples,
                            stream(spec_a, "surface_subsample", k))
            obj = SplitObjective(ctx.model, ctx.batches_of(sub), loss=spec_a.probes.loss)
            direction = difference_direction(obj, theta_b)
            losses = surface_1d(obj, direction, ts.to(obj.dtype)).detach().cpu().double().numpy()
            bar = interpolation_barrier(ts, losses).to_dict()
            top = max(abs(bar["loss_a"]), abs(bar["loss_b"]))
            rel = bar["height"] / top if bar["height"] is not None and top > 0 else None
            result.splits[split] = SplitBarrier(
                n_samples=len(sub), height=bar["height"], diverged=bar["diverged"], position=bar["position"],
                loss_a=_finite(bar["loss_a"]), loss_b=_finite(bar["loss_b"]), relative=rel,
                ts=[float(t) for t in ts], losses=[_finite(v) for v in losses])
    return result


def _weights_of(ctx) -> dict[str, Any]:
    """B's parameters (name → tensor), loaded the way the audit loads a model of its architecture."""
    from traits.audit import load_adapter_model, load_or_train
    from traits.models.base import adapter_class

    spec = ctx.spec
    if getattr(adapter_class(spec.model.architecture), "graph_model", False):
        loaded = load_or_train(spec, ctx.data, ctx.out_dir, ctx.device)
    else:
        _adapter, _options, loaded = load_adapter_model(spec, ctx.device)
    return {name: p.detach() for name, p in loaded.model.named_parameters()}


def _finite(value) -> float | None:
    v = float(value)
    return v if np.isfinite(v) else None
