"""1-D and 2-D loss surfaces through theta: L(theta + alpha d) and L(theta + alpha d1 + beta d2).

Grid points are evaluated many at a time through ``SplitObjective.loss_many`` (vmap over stacked
weights). ``progress``, if given, is called as ``progress(done, total)`` after each chunk, counting
grid points; the probes print nothing themselves.

A 2-D surface can be resumed: with ``resume_path`` the partial grid, a mask of finished points and a
fingerprint are written atomically after every chunk, and a later call with the same inputs continues
from the file. The fingerprint hashes alphas, betas and both directions (as the design asks) and, to
avoid resuming against another model or split, also theta, the loss kind and the targets. A file whose
fingerprint differs, or which cannot be read, is ignored and overwritten. The file is left in place
when the grid is complete, so a rerun returns at once; delete it to recompute.

NaN and inf are legitimate grid values (a diverged loss); the mask, not the value, says what is done.
Results have the objective's dtype and live on the device of ``alphas``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from traits.errors import OutputError, ProbeError
from traits.probes.objective import SplitObjective

Progress = Callable[[int, int], None]
_RESUME_VERSION = 1


def _check_direction(objective: SplitObjective, direction: dict[str, torch.Tensor], label: str) -> None:
    for name in objective.names:
        if name not in direction:
            raise ProbeError(f"direction {label} lacks parameter {name!r}")
        if direction[name].shape != objective.params[name].shape:
            raise ProbeError(
                f"direction {label}[{name!r}] has shape {tuple(direction[name].shape)}, "
                f"parameter has {tuple(objective.params[name].shape)}"
            )


def _check_coords(coords: torch.Tensor, label: str) -> None:
    if coords.dim() != 1 or coords.numel() == 0:
        raise ProbeError(f"{label} must be a non-empty 1-D tensor, got shape {tuple(coords.shape)}")


def _stack_points(
    objective: SplitObjective,
    terms: list[tuple[torch.Tensor, dict[str, torch.Tensor]]],
) -> dict[str, torch.Tensor]:
    """theta + sum_k coeff_k[:, None...] * d_k for every parameter, stacked along dim 0."""
    stacked = {}
    for name in objective.names:
        theta = objective.params[name]
        point = theta.unsqueeze(0)
        for coeff, direction in terms:
            c = coeff.to(device=theta.device, dtype=theta.dtype).reshape(-1, *([1] * theta.dim()))
            point = point + c * direction[name].to(device=theta.device, dtype=theta.dtype).unsqueeze(0)
        stacked[name] = point
    return stacked


def default_chunk(objective: SplitObjective, row: int) -> int:
    """Grid points per pass when the caller does not say: one point at a time on a CPU, where batching
    weight sets with vmap measured slower per point than plain evaluations (bench/README.md), and a
    whole row on an accelerator, where many points per pass keep the device busy."""
    return row if objective.device.type != "cpu" else 1


def surface_1d(
    objective: SplitObjective,
    direction: dict[str, torch.Tensor],
    alphas: torch.Tensor,
    chunk_size: int | None = None,
    progress: Progress | None = None,
    per_sample: bool = False,
) -> torch.Tensor:
    """L(theta + alpha * direction) for every alpha; Tensor[len(alphas)]. With ``per_sample``, every target's loss
    term ℓ_i(theta + alpha * direction) instead (L is their mean): Tensor[len(alphas), N], in the objective's batch
    order, so the curve of any group of structures is the mean of its columns, from the same evaluations."""
    _check_coords(alphas, "alphas")
    _check_direction(objective, direction, "d")
    total = alphas.numel()
    step = default_chunk(objective, total) if chunk_size is None else chunk_size
    if step < 1:
        raise ProbeError(f"chunk_size must be >= 1, got {chunk_size}")
    shape = (total, objective.n_samples) if per_sample else (total,)
    out = torch.empty(shape, dtype=objective.dtype, device=objective.device)
    for start in range(0, total, step):
        coeff = alphas[start : start + step]
        out[start : start + step] = objective.loss_many(_stack_points(objective, [(coeff, direction)]),
                                                        per_sample=per_sample)
        if progress is not None:
            progress(min(start + step, total), total)
    return out.to(alphas.device)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def surface_fingerprint(
    objective: SplitObjective,
    d1: dict[str, torch.Tensor],
    d2: dict[str, torch.Tensor],
    alphas: torch.Tensor,
    betas: torch.Tensor,
) -> str:
    """SHA-256 over the grid coordinates, the directions, theta, the loss kind and the targets."""
    h = hashlib.sha256()

    def add(label: str, t: torch.Tensor) -> None:
        h.update(f"{label}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_tensor_bytes(t))

    add("alphas", alphas)
    add("betas", betas)
    for name in objective.names:
        add(f"d1:{name}", d1[name])
        add(f"d2:{name}", d2[name])
        add(f"theta:{name}", objective.params[name])
    h.update(f"loss={objective.loss_kind}|n={objective.n_samples}".encode())
    for i, y in enumerate(objective.targets):
        add(f"y{i}", y)
    return h.hexdigest()


def _load_partial(path: Path, fingerprint: str, shape: tuple[int, int]):
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable partial file is simply not resumed
        return None
    if not isinstance(state, dict) or state.get("version") != _RESUME_VERSION:
        return None
    if state.get("fingerprint") != fingerprint:
        return None
    grid, done = state.get("grid"), state.get("done")
    if not (isinstance(grid, torch.Tensor) and isinstance(done, torch.Tensor)):
        return None
    if tuple(grid.shape) != shape or tuple(done.shape) != shape or done.dtype != torch.bool:
        return None
    return grid.to(torch.float64), done.clone()


def _save_partial(path: Path, fingerprint: str, grid: torch.Tensor, done: torch.Tensor) -> None:
    state = {"version": _RESUME_VERSION, "fingerprint": fingerprint, "grid": grid, "done": done}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(state, fh)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise OutputError(f"cannot write the surface resume file {path}: {exc}") from exc


def surface_2d(
    objective: SplitObjective,
    d1: dict[str, torch.Tensor],
    d2: dict[str, torch.Tensor],
    alphas: torch.Tensor,
    betas: torch.Tensor,
    chunk_size: int | None = None,
    progress: Progress | None = None,
    resume_path: Path | None = None,
) -> torch.Tensor:
    """L(theta + alpha_i d1 + beta_j d2) on the grid; Tensor[len(alphas), len(betas)].

    Points are visited row by row (alpha-major); ``chunk_size`` points per ``loss_many`` call (default:
    :func:`default_chunk`). With ``resume_path`` the partial grid is saved about once per row.
    """
    _check_coords(alphas, "alphas")
    _check_coords(betas, "betas")
    _check_direction(objective, d1, "d1")
    _check_direction(objective, d2, "d2")
    na, nb = alphas.numel(), betas.numel()
    total = na * nb
    step = default_chunk(objective, nb) if chunk_size is None else chunk_size
    if step < 1:
        raise ProbeError(f"chunk_size must be >= 1, got {chunk_size}")

    grid = torch.full((na, nb), float("nan"), dtype=torch.float64)
    done = torch.zeros((na, nb), dtype=torch.bool)
    fingerprint = None
    if resume_path is not None:
        resume_path = Path(resume_path)
        fingerprint = surface_fingerprint(objective, d1, d2, alphas, betas)
        partial = _load_partial(resume_path, fingerprint, (na, nb))
        if partial is not None:
            grid, done = partial

    todo = torch.nonzero(~done.reshape(-1)).reshape(-1)
    a_cpu, b_cpu = alphas.detach().to("cpu"), betas.detach().to("cpu")
    n_done = int(done.sum())
    unsaved = 0
    try:
        for start in range(0, todo.numel(), step):
            idx = todo[start : start + step]
            rows, cols = idx // nb, idx % nb
            points = _stack_points(objective, [(a_cpu[rows], d1), (b_cpu[cols], d2)])
            values = objective.loss_many(points).detach().to("cpu", torch.float64)
            grid[rows, cols] = values
            done[rows, cols] = True
            n_done += idx.numel()
            unsaved += idx.numel()
            if resume_path is not None and unsaved >= nb:  # about once per row
                _save_partial(resume_path, fingerprint, grid, done)
                unsaved = 0
            if progress is not None:
                progress(n_done, total)
    finally:
        # also on an interruption (Ctrl-C, an error): what was computed is kept for the next run
        if resume_path is not None and unsaved:
            _save_partial(resume_path, fingerprint, grid, done)
    return grid.to(device=alphas.device, dtype=objective.dtype)


# ------------------------------------------------------------------------------------------ compile or not

#: The seconds one inductor compile of the per-batch loss is taken to cost (measured on the 2-core CPU: 12-27 s,
#: the lower end with inductor's on-disk cache holding an earlier compile; bench/README.md).
COMPILE_SECONDS = 20.0
#: The share of a loss evaluation's time the compiled loss is taken to save (measured on the 2-core CPU: the
#: compiled loss ran at 0.77-0.81 of the fast forward's time per point on the quickstart CGCNN's reduced graphs,
#: traits.models.orbits; 0.50-0.58 before that reduction; the saving is taken as 0.15, below those).
COMPILE_SAVING = 0.15


def compile_pays(planned_evaluations: int, seconds_per_evaluation: float, *,
                 compile_seconds: float = COMPILE_SECONDS, saving: float = COMPILE_SAVING) -> bool:
    """Whether compiling the surface loss is expected to save time (``probes.surface.compile: auto``):

        planned_evaluations · seconds_per_evaluation · saving  >  compile_seconds,

    the time the compiled loss would save on the evaluations still to come against what compiling it costs. The
    compile is paid once per process (a second split reuses it), so ``planned_evaluations`` counts every split's.
    A non-finite or non-positive time never compiles."""
    if not (seconds_per_evaluation > 0 and seconds_per_evaluation < float("inf")):
        return False
    return planned_evaluations * seconds_per_evaluation * saving > compile_seconds


def planned_evaluations(surface, n_splits: int) -> int:
    """The loss evaluations the surface probe is expected to make (``surface``: a spec's ``probes.surface``), over
    ``n_splits`` splits: the 1D curves, the random 2D grid, the Hessian-eigenvector plane and the zoomed grid (as if
    the basin needed it). Gradients and perturbations are left out (they differentiate, and are never compiled)."""
    if not surface.enabled:
        return 0
    per_split = surface.directions_1d * surface.points_1d
    if surface.two_d:
        per_split += surface.points_2d ** 2 * (2 if surface.directions == "hessian" else 1)
        per_split += surface.zoom_points ** 2
    return per_split * n_splits
