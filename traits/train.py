"""Fit a registered model on the training split, early-stop on validation MAE, write a checkpoint.

Determinism: the model is initialised from ``spec.seed`` inside ``torch.random.fork_rng`` (the global
RNG is left untouched) and the training loader shuffles with its own ``torch.Generator`` seeded from
``spec.seed``; nothing else draws random numbers. The same spec therefore gives the same numbers on the
same machine (on CUDA, scatter-add atomics may still reorder floating-point sums).

Resuming: every ``model.train.checkpoint_every`` epochs (and at the last epoch) the whole training
state — weights, optimiser, scheduler, best weights so far, early-stopping counters, history and the
shuffling generator's state — is written atomically to ``out_dir/train_state.pt`` (tensors and plain
containers only, readable with ``weights_only=True``). ``train_model(..., resume=True)`` continues from
it, and the result is bit-identical (on CPU) to an uninterrupted run. ``stop_after_epoch=k`` ends a run
after epoch k as an interruption would (the state is saved, no final checkpoint is written); it exists
for tests and for splitting long runs. A state written for another spec (seed, target, architecture,
hyper-parameters, graph settings, training settings, data or split) is refused.

Outputs in ``out_dir`` (all atomic): ``model.safetensors`` + ``model.json`` (see
:mod:`traits.models.checkpoint`), ``metrics.json``, ``split_manifest.json`` and ``train_state.pt``.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from traits.errors import CheckpointError, TraitsError
from traits.files import ensure_dir, write_atomic, write_json_atomic
from traits.models.checkpoint import load_weights, safe_torch_load, save_checkpoint, sidecar_path
from traits.models.inference import accuracy, predict
from traits.models.registry import build_model

STATE_FILE = "train_state.pt"
CHECKPOINT_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
MANIFEST_FILE = "split_manifest.json"
STATE_VERSION = 1

_LOSSES = {
    "mse": F.mse_loss,
    "mae": F.l1_loss,
    "huber": lambda pred, target: F.huber_loss(pred, target, delta=1.0),
}


@dataclass
class TrainResult:
    """What a training run produced."""

    model: nn.Module
    checkpoint: Path | None  # None when the run was stopped early by ``stop_after_epoch``
    metrics: dict[str, dict]  # split -> {mae, rmse, r2, n}; empty when not completed
    history: list[dict] = field(default_factory=list)  # per epoch: epoch, train_loss, val_mae, lr
    epochs_run: int = 0
    resumed: bool = False
    best_epoch: int = 0
    stopped_early: bool = False  # early stopping on validation MAE triggered
    completed: bool = True
    metadata: dict = field(default_factory=dict)  # the checkpoint's sidecar, as load_checkpoint returns it


def _fingerprint(spec, data) -> dict[str, str]:
    """What a resume state must agree on with the current spec and data (plain strings)."""

    def dump(obj, **kw) -> str:
        return json.dumps(obj.model_dump(**kw), sort_keys=True, default=str)

    return {
        "seed": str(spec.seed),
        "target": spec.data.target,
        "architecture": spec.model.architecture,
        "hyper": dump(spec.model.hyper),
        "graph": dump(spec.data.graph),
        "train": dump(spec.model.train, exclude={"checkpoint_every"}),
        "dtype": spec.dtype,
        "data_hash": str(data.manifest.data_hash),
        "split_manifest": data.manifest.hash,
    }


def _optimizer(ts, params):
    if ts.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=ts.lr, weight_decay=ts.weight_decay)
    if ts.optimizer == "adam":
        return torch.optim.Adam(params, lr=ts.lr, weight_decay=ts.weight_decay)
    return torch.optim.SGD(params, lr=ts.lr, momentum=0.9, weight_decay=ts.weight_decay)


def _scheduler(ts, optimizer):
    """Cosine annealing over ``epochs``; plateau halves the LR after patience//3 flat epochs; none."""
    if ts.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=ts.epochs)
    if ts.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=0.5, patience=max(1, ts.patience // 3)
        )
    return None


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}


def _target_normalizer(graphs) -> tuple[float, float]:
    y = torch.cat([g.y.reshape(-1).to(torch.float64) for g in graphs])
    if not torch.isfinite(y).all():
        raise TraitsError("the training split has non-finite target values; clean the data first")
    mean, std = float(y.mean()), float(y.std(correction=0))
    if not std > 1e-12:
        raise TraitsError(
            f"every training target equals {mean:g}: the target has no spread (std 0), so there is nothing "
            "to learn and it cannot be normalised; use more or different data"
        )
    return mean, std


class _NullProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *args, **kwargs):
        return 0

    def update(self, *args, **kwargs):
        pass


def _progress(show: bool):
    if not show:
        return _NullProgress()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epochs  {task.fields[status]}"),
        TimeElapsedColumn(),
    )


def _save_state(path: Path, state: dict) -> None:
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def _load_state(path: Path, fingerprint: dict) -> dict:
    state = safe_torch_load(path)
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise CheckpointError(f"{path}: not a TRAITS training state of version {STATE_VERSION}")
    theirs = state.get("fingerprint") or {}
    differs = [k for k in fingerprint if theirs.get(k) != fingerprint[k]]
    if differs:
        details = "; ".join(f"{k}: saved {theirs.get(k)!r}, now {fingerprint[k]!r}" for k in differs[:3])
        raise CheckpointError(
            f"{path}: this resume state was written for a different spec or data ({', '.join(differs)} "
            f"differ: {details}). Train from scratch (no --resume) or use another output directory."
        )
    return state


@dataclass
class _Run:
    """What a training run is built from: the model, its data loader, optimiser and settings."""

    model: nn.Module
    loader: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    generator: torch.Generator
    loss_fn: object
    fingerprint: dict
    mean: float
    std: float
    device: torch.device
    dtype: torch.dtype
    eval_batch: int


@dataclass
class _Loop:
    """The training loop's counters, best weights and history (what a resume state carries)."""

    best_state: dict
    epoch: int = 0
    best_val: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    resumed: bool = False


def _setup(spec, data, ts, device: torch.device, dtype: torch.dtype) -> _Run:
    """Build the seeded model, the shuffling loader, optimiser, scheduler and loss of a training run."""
    from torch_geometric.loader import DataLoader

    train = data.splits["train"]
    mean, std = _target_normalizer(train)
    node_dim, edge_dim = int(train[0].x.shape[1]), int(train[0].edge_attr.shape[1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = build_model(spec.model.architecture, spec.model.hyper, node_dim, edge_dim)
    model.set_target_normalizer(mean, std)
    model.to(device=device, dtype=dtype)

    generator = torch.Generator()
    generator.manual_seed(spec.seed)
    # A training batch of a single one-atom crystal would break batch norm; drop such a last batch.
    drop_last = len(train) > ts.batch_size and len(train) % ts.batch_size == 1
    loader = DataLoader(train, batch_size=ts.batch_size, shuffle=True, generator=generator, drop_last=drop_last)
    optimizer = _optimizer(ts, model.parameters())
    scheduler = _scheduler(ts, optimizer)
    return _Run(
        model=model, loader=loader, optimizer=optimizer, scheduler=scheduler, generator=generator,
        loss_fn=_LOSSES[ts.loss], fingerprint=_fingerprint(spec, data), mean=mean, std=std,
        device=device, dtype=dtype, eval_batch=max(256, ts.batch_size),
    )


def _restore(run: _Run, state_path: Path) -> _Loop:
    """The loop state of a saved resume state, with the model, optimiser, scheduler and shuffling restored."""
    state = _load_state(state_path, run.fingerprint)
    load_weights(run.model, state["model"], state_path)
    run.optimizer.load_state_dict(state["optimizer"])
    if run.scheduler is not None:
        run.scheduler.load_state_dict(state["scheduler"])
    run.generator.set_state(state["generator"])
    return _Loop(
        epoch=int(state["epoch"]), best_val=float(state["best_val"]),
        best_epoch=int(state["best_epoch"]), bad_epochs=int(state["bad_epochs"]),
        best_state=dict(state["best_state"]), history=list(state["history"]), resumed=True,
    )


def _snapshot(run: _Run, loop: _Loop) -> dict:
    """The whole training state as written to ``train_state.pt``."""
    return {
        "version": STATE_VERSION,
        "fingerprint": run.fingerprint,
        "epoch": loop.epoch,
        "model": _cpu_state(run.model),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else {},
        "generator": run.generator.get_state(),
        "best_state": loop.best_state,
        "best_val": loop.best_val,
        "best_epoch": loop.best_epoch,
        "bad_epochs": loop.bad_epochs,
        "history": loop.history,
        "target_mean": run.mean,
        "target_std": run.std,
    }


def _progress_hooks(progress, ts, epoch: int):
    """The per-epoch callback of a progress factory (or None) and whether to show a rich bar instead."""
    factory = progress if callable(progress) else None
    show = False if factory is not None else (progress if progress is not None else sys.stdout.isatty())
    epoch_done = factory("training", ts.epochs) if factory is not None else None
    if epoch_done is not None and epoch:
        epoch_done(epoch, ts.epochs, status=f"(resumed after epoch {epoch})")
    return epoch_done, show


def _train_pass(run: _Run) -> float:
    """One pass over the shuffled training split; returns the mean training loss per crystal."""
    model = run.model
    model.train()
    total = torch.zeros((), dtype=torch.float64, device=run.device)
    count = 0
    for batch in run.loader:
        batch = batch.to(run.device)
        target = (batch.y.to(run.dtype) - model.target_mean) / model.target_std
        loss = run.loss_fn(model.predict_normalized(batch), target)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        total += loss.detach().to(torch.float64) * batch.num_graphs
        count += int(batch.num_graphs)
    return float(total) / max(count, 1)


def _run_epoch(run: _Run, loop: _Loop, ts, val) -> str:
    """Train one epoch, validate, track the best weights and step the scheduler; returns the status line."""
    loop.epoch += 1
    epoch = loop.epoch
    lr = float(run.optimizer.param_groups[0]["lr"])
    train_loss = _train_pass(run)
    _, val_pred, val_true = predict(run.model, val, run.device, run.eval_batch)
    val_mae = accuracy(val_pred, val_true)["mae"]
    if not (math.isfinite(train_loss) and math.isfinite(val_mae)):
        raise TraitsError(
            f"training diverged at epoch {epoch}: the loss became NaN or infinite. Lower the learning "
            f"rate (model.train.lr is {ts.lr:g}; try {ts.lr / 10:g}). No checkpoint was written."
        )
    if val_mae < loop.best_val:
        loop.best_val, loop.best_epoch, loop.bad_epochs = val_mae, epoch, 0
        loop.best_state = _cpu_state(run.model)
    else:
        loop.bad_epochs += 1
    if isinstance(run.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        run.scheduler.step(val_mae)
    elif run.scheduler is not None:
        run.scheduler.step()
    loop.history.append({"epoch": epoch, "train_loss": train_loss, "val_mae": val_mae, "lr": lr})
    return f"val MAE {val_mae:.4g} (best {loop.best_val:.4g} @ {loop.best_epoch})"


def _finish(spec, data, out_dir: Path, run: _Run, loop: _Loop, ts) -> TrainResult:
    """Restore the best weights, measure every split and write the checkpoint, metrics and manifest."""
    model, device, epoch = run.model, run.device, loop.epoch
    load_weights(model, loop.best_state, "best weights")
    model.to(device=device, dtype=run.dtype)
    metrics = {}
    for name in ("train", "val", "id", "ood"):
        _, p, t = predict(model, data.splits.get(name, []), device, run.eval_batch)
        metrics[name] = accuracy(p, t)
    stopped_early = loop.bad_epochs >= ts.patience and epoch < ts.epochs
    from traits.spec import TARGET_UNITS

    summary = {
        "target": spec.data.target,
        "unit": TARGET_UNITS.get(spec.data.target),
        "splits": metrics,
        "best_epoch": loop.best_epoch,
        "best_val_mae": loop.best_val,
        "epochs_run": epoch,
        "stopped_early": stopped_early,
        "history": loop.history,
    }
    checkpoint = save_checkpoint(
        model,
        out_dir / CHECKPOINT_FILE,
        {
            "graph": spec.data.graph,
            "target": spec.data.target,
            "omit": list(spec.omit),
            "manifest_hash": data.manifest.hash,
            "data_hash": data.manifest.data_hash,
            "seed": spec.seed,
            "metrics": {k: v for k, v in summary.items() if k not in ("history", "target", "unit")},
            "train": ts.model_dump(),
            "dtype": spec.dtype,
        },
    )
    metadata = {**json.loads(sidecar_path(checkpoint).read_text(encoding="utf-8")), "format": "traits"}
    write_json_atomic(out_dir / METRICS_FILE, summary)
    _write_calibration(model, data, checkpoint, device)
    write_json_atomic(out_dir / MANIFEST_FILE, data.manifest.to_dict())
    return TrainResult(
        model=model.eval(),
        checkpoint=checkpoint,
        metrics=metrics,
        history=list(loop.history),
        epochs_run=epoch,
        resumed=loop.resumed,
        best_epoch=loop.best_epoch,
        stopped_early=stopped_early,
        completed=True,
        metadata=metadata,
    )


def train_model(
    spec,
    data,
    out_dir: Path,
    *,
    device: torch.device,
    resume: bool = False,
    progress: bool | None = None,
    stop_after_epoch: int | None = None,
) -> TrainResult:
    """Train ``spec.model`` on ``data.splits['train']``, early-stopping on 'val' MAE, and write outputs.

    ``progress``: a rich progress bar when True, or when None and stdout is a terminal; or a progress
    factory (:class:`traits.progress.Reporter`), which gets one "training" stage counting epochs.
    ``resume``: continue from ``out_dir/train_state.pt`` when it exists (otherwise start afresh).
    ``stop_after_epoch``: end after that epoch as if interrupted (state saved, ``completed=False``).

    Args:
        spec: the run's spec; its ``model.train`` section says how to train.
        data: the prepared data, with non-empty ``train`` and ``val`` splits.
        out_dir: the folder of the checkpoint, metrics, split manifest and resume state.
        device: the device to train on.
        resume: continue from a resume state in ``out_dir`` when there is one.
        progress: True, False, None (a bar when stdout is a terminal) or a progress factory.
        stop_after_epoch: end after this epoch as an interruption would.

    Returns:
        The :class:`TrainResult`: the model with the best validation weights, its metrics and history.
    """
    ts = spec.model.train
    if ts is None:
        raise TraitsError("the spec has no model.train section: nothing says how to train a model")
    device = torch.device(device)
    dtype = torch.float64 if spec.dtype == "float64" else torch.float32
    out_dir = ensure_dir(Path(out_dir))
    state_path = out_dir / STATE_FILE
    train, val = data.splits["train"], data.splits["val"]
    if not train or not val:
        raise TraitsError("training needs non-empty 'train' and 'val' splits")

    run = _setup(spec, data, ts, device, dtype)
    loop = _Loop(best_state=_cpu_state(run.model))
    if resume and state_path.is_file():
        loop = _restore(run, state_path)
    epoch_done, show = _progress_hooks(progress, ts, loop.epoch)
    with _progress(show) as bar:
        task = bar.add_task("train", total=ts.epochs, completed=loop.epoch, status="")
        while loop.epoch < ts.epochs and loop.bad_epochs < ts.patience:
            status = _run_epoch(run, loop, ts, val)
            epoch = loop.epoch
            bar.update(task, completed=epoch, status=status)
            if epoch_done is not None:
                epoch_done(epoch, ts.epochs, status=status)
            finished = epoch >= ts.epochs or loop.bad_epochs >= ts.patience
            interrupted = stop_after_epoch is not None and epoch >= stop_after_epoch and not finished
            if finished or interrupted or epoch % ts.checkpoint_every == 0:
                _save_state(state_path, _snapshot(run, loop))
            if interrupted:
                return TrainResult(
                    model=run.model.eval(), checkpoint=None, metrics={}, history=list(loop.history),
                    epochs_run=epoch, resumed=loop.resumed, best_epoch=loop.best_epoch, stopped_early=False,
                    completed=False,
                )

    if epoch_done is not None and hasattr(epoch_done, "end"):
        epoch_done.end(f"after {loop.epoch} epochs (best {loop.best_epoch})")
    return _finish(spec, data, out_dir, run, loop, ts)


def _write_calibration(model, data, checkpoint: Path, device) -> None:
    """The screening calibration beside the checkpoint (:mod:`traits.screen`); a model it cannot calibrate
    (no validation split, a non-finite training error) simply gets none, and ``traits screen`` says so."""
    from traits.screen import calibration_path, write_calibration

    try:
        write_calibration(model, data.splits, calibration_path(checkpoint), device)
    except TraitsError:
        calibration_path(checkpoint).unlink(missing_ok=True)


__all__ = ["TrainResult", "train_model", "STATE_FILE", "CHECKPOINT_FILE", "METRICS_FILE", "MANIFEST_FILE"]
