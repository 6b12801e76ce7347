"""The loss of one data split as a pure function of the weights.

``SplitObjective`` turns a model and a list of pre-collated batches into

    L(theta) = (1/N) * sum_batches sum_i l(pred_i(theta) - y_i),   l = square ("mse") or abs ("mae"),

with N the total number of samples, so batches of different sizes are weighted correctly. Every
evaluation goes through :func:`torch.func.functional_call` with an explicit parameter dict, in eval
mode (BatchNorm uses its running statistics), so probing never changes the model: its parameters,
buffers, ``.grad`` fields and ``requires_grad`` flags are left as found, and its train/eval flags are
restored after each call.

Hessian-vector products (``hvp_method``, see :data:`HVP_METHODS`):

* ``"retain"`` (the default): double backward with each batch's gradient graph kept between products.
  The first product runs the forward pass and the first backward (``create_graph=True``) per batch and
  keeps the resulting gradient graph; every later product is only the second backward through it. The
  graphs are dropped as soon as ``params``, ``buffers`` or the frozen weights change (new tensors or
  in-place edits), by :meth:`SplitObjective.release_graphs` or ``loss_many`` (surface grids), or when
  another objective starts keeping graphs (at most one objective holds them at a time). Graphs are kept
  only while their total size, counted from the tensors autograd saves, fits ``hvp_memory_budget``; the
  batches beyond it are recomputed per product as in ``"recompute"``. Results are bit-identical to
  ``"recompute"``.
* ``"recompute"``: double backward, forward pass and gradient graph rebuilt for every product.
* ``"jvp"``: forward-over-reverse, ``torch.func.jvp(torch.func.grad(batch loss))`` per batch; equal to
  the others within float rounding.

On the original CGCNN (96,641 parameters; 100 crystals in one batch, or 256 in two; CPU) ``"retain"`` is
1.4-1.6x faster per product than ``"recompute"`` and ``"jvp"`` 1.2-1.4x slower (``bench/bench_hvp.py``,
figures in ``bench/README.md``), so ``"retain"`` is the default. It is the default on CUDA too, untimed
there (no GPU was available): it skips the same forward pass and first backward on any device.

Device and dtype are those of the model's parameters; nothing is moved.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn
from torch.func import functional_call, vmap

from traits.errors import ProbeError

LossKind = Literal["mse", "mae"]
HvpMethod = Literal["retain", "recompute", "jvp"]

#: Largest relative difference (to the largest |prediction|) between a model's ``probe_forward`` and its plain
#: forward at theta for the fast forward to be used (float32 rounding of a reordered sum is ~1e-7 to 1e-6).
FAST_FORWARD_RTOL = 1e-5
#: The same for the gradient of a fixed random projection wᵀf of the first batch's predictions (‖g_fast − g_plain‖ /
#: ‖g_plain‖), before ``probe_forward`` is differentiated for gradients, Hessian-vector products and gradient rows.
FAST_GRADIENT_RTOL = 1e-4

#: The Hessian-vector product variants of ``SplitObjective`` (``hvp_method``); the first is the default.
HVP_METHODS: tuple[str, ...] = ("retain", "recompute", "jvp")


def default_graph_budget(device: torch.device) -> int:
    """Bytes of retained gradient graphs allowed by default: a quarter of the free memory of a CUDA
    device, else a quarter of the machine's physical memory (1 GiB when that cannot be read)."""
    if device.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(device)
        return int(free // 4)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4)
    except (ValueError, OSError, AttributeError):
        return 1 << 30


class _SavedBytes:
    """``saved_tensors_hooks`` pair that adds up the bytes of the distinct storages autograd saves."""

    def __init__(self) -> None:
        self.storages: dict[tuple[int, int], int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        self.storages[(storage.data_ptr(), tensor.device.index or 0)] = storage.nbytes()
        return tensor

    @staticmethod
    def unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    @property
    def total(self) -> int:
        return int(sum(self.storages.values()))


class _RetainedGraphs:
    """Per-batch gradient graphs kept for a sequence of products at one point theta."""

    def __init__(
        self, state: list[tuple[str, torch.Tensor, int]], full: dict[str, torch.Tensor],
        inputs: list[torch.Tensor], n_batches: int,
    ) -> None:
        self.state = state  # (name, tensor, version) of every tensor the loss read when the graphs were built
        self.full = full
        self.inputs = inputs
        self.grads: list[list[tuple[int, torch.Tensor]] | None] = [None] * n_batches  # (name index, grad)
        self.constant: list[bool] = [False] * n_batches  # batch loss independent of theta: contributes 0
        self.nbytes = 0


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule of ``model`` in eval mode for the duration, then restore each flag."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


def _default_target(batch: Any) -> torch.Tensor:
    return batch.y


class SplitObjective:
    """Loss of ``model`` on ``batches`` as a function of its trainable parameters.

    Attributes
    ----------
    names: trainable parameter names, in ``model.named_parameters()`` order (``requires_grad`` only).
    params: name -> detached copy of the parameter at theta (the point being probed).
    buffers: name -> copy of each buffer, passed unchanged to every evaluation.
    n_samples: total number of targets over all batches (N).
    dim: number of trainable scalars.
    n_hvp: number of Hessian-vector products computed so far.
    hvp_method: how ``hvp`` computes products (``"retain"``, ``"recompute"`` or ``"jvp"``; module docstring).
    hvp_memory_budget: bytes of gradient graphs ``"retain"`` may keep (default: ``default_graph_budget``).
    retained_bytes: bytes of the graphs kept now (0 when none).
    fast_forward: whether loss evaluations without gradients (surfaces, ``loss``, ``loss_many``) use the model's
        ``probe_forward`` (an algebraically equal, cheaper forward a model may define, e.g. the CGCNNs): ``None``
        until first needed, then whether it matched the plain forward at theta (``fast_forward_error``: the
        relative difference, or why it failed); ``False`` when the model has none or ``fast_forward=False``.
    fast_gradient: whether gradients and the "retain"/"recompute" Hessian-vector products differentiate
        ``probe_forward`` too (checked once against the plain forward's gradient at theta on the first batch,
        ``fast_gradient_error``); the "jvp" products always differentiate the plain forward. On the original
        CGCNN a "retain" product was 2.6-3.0x faster this way (``bench/README.md`` §4b).
    compiled: with ``compile_loss=True``, whether those evaluations run a ``torch.compile``-d per-batch loss
        (inductor, dynamic shapes): ``None`` until first needed, then whether it compiled and matched the
        uncompiled loss at theta (``compile_seconds``: the first call; ``compile_error``: why not). Off by default:
        on the 2-core CPU a surface point was 1.5-1.7x faster than with the fast forward, after a 12-24 s compile
        that one 121-point surface does not repay (``bench/README.md`` §1).
    vmap_ok: ``None`` until ``loss_many`` first ran, then whether ``torch.func.vmap`` works for this
        model; once it failed, ``loss_many`` loops over points (``vmap_error`` says why).
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Sequence,
        loss: LossKind = "mse",
        target_fn: Callable[[Any], torch.Tensor] = _default_target,
        *,
        hvp_method: HvpMethod = "retain",
        hvp_memory_budget: int | None = None,
        fast_forward: bool = True,
        compile_loss: bool = False,
    ) -> None:
        if loss not in ("mse", "mae"):
            raise ProbeError(f"unknown loss {loss!r}; use 'mse' or 'mae'")
        if hvp_method not in HVP_METHODS:
            raise ProbeError(f"unknown hvp_method {hvp_method!r}; use one of {', '.join(HVP_METHODS)}")
        if hvp_memory_budget is not None and hvp_memory_budget < 0:
            raise ProbeError(f"hvp_memory_budget must be >= 0 bytes, got {hvp_memory_budget}")
        self.model = model
        self.batches = list(batches)
        if not self.batches:
            raise ProbeError("the objective needs at least one batch of data")
        self.loss_kind: LossKind = loss

        named = list(model.named_parameters())
        self.names: list[str] = [name for name, p in named if p.requires_grad]
        if not self.names:
            raise ProbeError("the model has no trainable parameters (requires_grad=True) to probe")
        self.params: dict[str, torch.Tensor] = {name: p.detach().clone() for name, p in named if p.requires_grad}
        self._frozen: dict[str, torch.Tensor] = {name: p.detach().clone() for name, p in named if not p.requires_grad}
        self.buffers: dict[str, torch.Tensor] = {name: b.detach().clone() for name, b in model.named_buffers()}
        self._shapes = [self.params[n].shape for n in self.names]
        self._sizes = [self.params[n].numel() for n in self.names]
        self.dim = int(sum(self._sizes))
        first = self.params[self.names[0]]
        self.device: torch.device = first.device
        self.dtype: torch.dtype = first.dtype

        self.targets = [target_fn(b).detach() for b in self.batches]
        self.n_samples = int(sum(t.numel() for t in self.targets))
        if self.n_samples == 0:
            raise ProbeError("the batches hold no targets (N = 0); the loss is undefined")

        self.n_hvp = 0
        self.vmap_ok: bool | None = None
        self.vmap_error: str | None = None
        self.hvp_method: HvpMethod = hvp_method
        self.hvp_memory_budget: int = (
            default_graph_budget(self.device) if hvp_memory_budget is None else int(hvp_memory_budget)
        )
        self._graphs: _RetainedGraphs | None = None
        # the model's own cheaper forward (``probe_forward``): for losses once it matched the plain forward at theta
        # on the first batch, for gradients once its gradient matched too
        self.fast_forward: bool | None = None if fast_forward and callable(getattr(model, "probe_forward", None)) \
            else False
        self.fast_forward_error: float | str | None = None
        self._fast_batches: list | None = None  # the batches probe_forward is given (model.probe_batch), lazily
        # torch.compile of the per-batch loss without gradients (opt-in): None until first needed, then whether it
        # compiled and matched the uncompiled loss at theta; the first call's seconds are recorded
        self.compiled: bool | None = None if compile_loss else False
        self.compile_seconds: float | None = None
        self.compile_error: str | None = None
        self._compiled_loss = None
        self._vmapping = False
        self._transforming = False  # inside torch.func transforms (the "jvp" product): the plain forward
        self.fast_gradient: bool | None = None if self.fast_forward is None else False
        self.fast_gradient_error: float | str | None = None

    # ------------------------------------------------------------------ flat <-> dict
    def flatten(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate ``params[name]`` over ``names`` into one flat vector."""
        try:
            return torch.cat([params[n].reshape(-1) for n in self.names])
        except KeyError as exc:
            raise ProbeError(f"parameter {exc.args[0]!r} missing from the dict to flatten") from None

    def unflatten(self, vec: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat vector of length ``dim`` into a name -> tensor dict (views into ``vec``)."""
        if vec.dim() != 1 or vec.numel() != self.dim:
            raise ProbeError(f"expected a flat vector of length {self.dim}, got shape {tuple(vec.shape)}")
        pieces = torch.split(vec, self._sizes)
        return {n: piece.view(shape) for n, piece, shape in zip(self.names, pieces, self._shapes)}

    # ------------------------------------------------------------------ loss
    def _full(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = [n for n in self.names if n not in params]
        if missing:
            raise ProbeError(f"parameter dict lacks {missing[:3]}{'...' if len(missing) > 3 else ''}")
        full = dict(self._frozen)
        full.update(self.buffers)
        full.update({n: params[n] for n in self.names})
        return full

    def _settle(self, flag: str, measure: Callable[[], float], rtol: float) -> None:
        """Decide the flag ``flag`` once: ``measure()`` gives the relative difference to the plain path (stored in
        ``<flag>_error``); the flag is set when it is within ``rtol``, and any failure clears it, keeping the
        reason."""
        try:
            diff = measure()
            setattr(self, f"{flag}_error", diff)
            setattr(self, flag, bool(diff <= rtol))
        except Exception as exc:  # noqa: BLE001 - any failure means: keep the plain path
            setattr(self, f"{flag}_error", f"{type(exc).__name__}: {exc}")
            setattr(self, flag, False)

    def _check_fast_forward(self) -> bool:
        """Whether ``model.probe_forward`` may stand in for the plain forward: decided once, by comparing both at
        theta on the first batch (relative difference within :data:`FAST_FORWARD_RTOL`)."""
        if self.fast_forward is None:

            def measure() -> float:
                full = self._full(self.params)
                with torch.no_grad(), eval_mode(self.model):
                    plain = functional_call(self.model, full, (self.batches[0],)).reshape(-1)
                    fast = self.model.probe_forward(full, self._fast_batch(0)).reshape(-1)
                return float((fast - plain).abs().max() / plain.abs().max().clamp_min(torch.finfo(plain.dtype).tiny))

            self._settle("fast_forward", measure, FAST_FORWARD_RTOL)
        return bool(self.fast_forward)

    def _fast_batch(self, i: int):
        """Batch ``i`` as ``probe_forward`` takes it: ``model.probe_batch(batch)`` where the model defines it (the
        CGCNNs: one atom per class of atoms no layer can tell apart, :mod:`traits.models.orbits`), else the batch;
        prepared once for all batches, on first use."""
        if self._fast_batches is None:
            prepare = getattr(self.model, "probe_batch", None)
            self._fast_batches = [prepare(b) if callable(prepare) else b for b in self.batches]
        return self._fast_batches[i]

    @property
    def fast_reduction(self) -> float | None:
        """Atoms of the batches per atom ``probe_forward`` computes (1.0: no reduction); None before first use."""
        if self._fast_batches is None:
            return None
        full = sum(int(b.x.shape[0]) for b in self.batches)
        return full / max(sum(int(b.x.shape[0]) for b in self._fast_batches), 1)

    def _batch_terms(self, full: dict[str, torch.Tensor], batch, y: torch.Tensor, fast: bool) -> torch.Tensor:
        """Each target's loss term of one batch, flat: (f - y)² (mse) or |f - y| (mae)."""
        pred = self.model.probe_forward(full, batch) if fast else functional_call(self.model, full, (batch,))
        if pred.shape != y.shape:
            if pred.numel() != y.numel():
                raise ProbeError(f"model predictions have shape {tuple(pred.shape)} but targets {tuple(y.shape)}")
            pred = pred.reshape(y.shape)
        r = pred - y
        return (r * r).reshape(-1) if self.loss_kind == "mse" else r.abs().reshape(-1)

    def _batch_loss(self, full: dict[str, torch.Tensor], batch, y: torch.Tensor, fast: bool) -> torch.Tensor:
        return self._batch_terms(full, batch, y, fast).sum()

    def _check_compiled(self, fast: bool) -> bool:
        """Whether the compiled per-batch loss may be used: decided once, by compiling it on the first batch at
        theta (the seconds of that first call are ``compile_seconds``) and comparing with the uncompiled loss."""
        if self.compiled is None:
            import time

            full = self._full(self.params)
            try:
                compiled = torch.compile(self._batch_loss, dynamic=True)
                t = time.perf_counter()
                batch = self._fast_batch(0) if fast else self.batches[0]
                value = compiled(full, batch, self.targets[0], fast)
                self.compile_seconds = time.perf_counter() - t
                plain = self._batch_loss(full, batch, self.targets[0], fast)
                diff = float((value - plain).abs() / plain.abs().clamp_min(torch.finfo(plain.dtype).tiny))
                self.compiled = bool(diff <= FAST_FORWARD_RTOL)
                if not self.compiled:
                    self.compile_error = f"compiled loss differs from the plain one by {diff:.1e} (relative)"
                self._compiled_loss = compiled if self.compiled else None
            except Exception as exc:  # noqa: BLE001 - a model that does not compile keeps the plain path
                self.compile_error = f"{type(exc).__name__}: {str(exc)[:300]}"
                self.compiled = False
        return bool(self.compiled)

    def _check_fast_gradient(self) -> bool:
        """Whether ``probe_forward`` may also stand in for the plain forward under autograd (gradients, the
        "retain"/"recompute" products, the per-structure gradient rows): decided once, after the forward check, by
        comparing ∇θ (wᵀf) of the first batch's predictions f at theta through both forwards, for a fixed
        standard-normal w (seed 0): relative difference of the norms within :data:`FAST_GRADIENT_RTOL`. A projection
        of the predictions, not the loss, so that the check holds where the loss gradient vanishes (targets equal to
        the model's own predictions, as in label-free audits)."""
        if self.fast_gradient is None:
            if not self._check_fast_forward():
                self.fast_gradient = False
                return False

            def measure() -> float:
                grads, weights = [], None
                with torch.enable_grad(), eval_mode(self.model):
                    for fast in (False, True):
                        leaves = self._leaves()
                        full = self._full(leaves)
                        pred = (self.model.probe_forward(full, self._fast_batch(0)) if fast
                                else functional_call(self.model, full, (self.batches[0],))).reshape(-1)
                        if weights is None:
                            weights = torch.randn(pred.shape, generator=torch.Generator().manual_seed(0),
                                                  dtype=torch.float64).to(pred)
                        grads.append(self._flat_or_zero(torch.autograd.grad(
                            (pred * weights).sum(), [leaves[n] for n in self.names], allow_unused=True)))
                return float((grads[1] - grads[0]).norm() / grads[0].norm().clamp_min(torch.finfo(grads[0].dtype).tiny))

            self._settle("fast_gradient", measure, FAST_GRADIENT_RTOL)
        return bool(self.fast_gradient)

    def _batch_sum(self, full: dict[str, torch.Tensor], i: int) -> torch.Tensor:
        """Sum of per-sample losses of batch ``i`` (not divided by N)."""
        no_grad = not torch.is_grad_enabled() and not self.model.training
        if no_grad:
            fast = self.fast_forward is not False and self._check_fast_forward()
        else:
            fast = (self.fast_forward is not False and not self._transforming and not self.model.training
                    and self._check_fast_gradient())
        batch = self._fast_batch(i) if fast else self.batches[i]
        if self.compiled is not False and no_grad and not self._vmapping and self._check_compiled(fast):
            return self._compiled_loss(full, batch, self.targets[i], fast)
        return self._batch_loss(full, batch, self.targets[i], fast)

    def _total(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        full = self._full(params)
        total = self._batch_sum(full, 0)
        for i in range(1, len(self.batches)):
            total = total + self._batch_sum(full, i)
        return total / self.n_samples

    def _terms(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Every target's loss term at ``params`` (no gradients, eval mode), in batch order: Tensor[N]."""
        full = self._full(params)
        fast = self.fast_forward is not False and self._check_fast_forward()
        return torch.cat([self._batch_terms(full, self._fast_batch(i) if fast else self.batches[i], self.targets[i],
                                            fast) for i in range(len(self.batches))])

    def loss(self, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """L at ``params`` (default theta) as a 0-d tensor without grad; NaN/inf are returned as is."""
        with torch.no_grad(), eval_mode(self.model):
            return self._total(self.params if params is None else params)

    def loss_many(self, param_sets: dict[str, torch.Tensor], chunk_size: int | None = None, *,
                  per_sample: bool = False) -> torch.Tensor:
        """L at P weight sets, stacked along dim 0 of each ``param_sets[name]``; returns Tensor[P], or with
        ``per_sample`` every target's loss term ℓ_i (L = (1/N) Σ_i ℓ_i) at each set: Tensor[P, N], in batch order
        (a subset's loss is the mean of its terms, so one pass gives the loss of every group of structures).

        Points are evaluated ``chunk_size`` at a time (default: all at once) with ``torch.func.vmap``;
        if vmap fails for this model the failure is remembered and every later call loops over points.
        """
        missing = [n for n in self.names if n not in param_sets]
        if missing:
            raise ProbeError(f"stacked parameter dict lacks {missing[:3]}")
        sizes = {param_sets[n].shape[0] for n in self.names}
        if len(sizes) != 1:
            raise ProbeError(f"stacked parameters disagree on the number of points: {sorted(sizes)}")
        n_points = sizes.pop()
        if chunk_size is not None and chunk_size < 1:
            raise ProbeError(f"chunk_size must be >= 1, got {chunk_size}")
        step = n_points if chunk_size is None else chunk_size
        self.release_graphs()  # surface grids need the memory more than a sequence of products
        shape = (n_points, self.n_samples) if per_sample else (n_points,)
        out = torch.empty(shape, dtype=self.dtype, device=self.device)
        fn = self._terms if per_sample else self._total
        with torch.no_grad(), eval_mode(self.model):
            for start in range(0, n_points, max(step, 1)):
                chunk = {n: param_sets[n][start : start + step] for n in self.names}
                out[start : start + step] = self._chunk_losses(chunk, fn)
        return out

    def _chunk_losses(self, chunk: dict[str, torch.Tensor], fn: Callable) -> torch.Tensor:
        n_points = next(iter(chunk.values())).shape[0]
        if n_points == 1:  # one point per pass: a plain evaluation, no vmap overhead
            return fn({n: t[0] for n, t in chunk.items()}).unsqueeze(0)
        if self.vmap_ok is not False:
            try:
                self._vmapping = True
                values = vmap(fn, randomness="error")(chunk)
                self.vmap_ok = True
                return values
            except Exception as exc:  # noqa: BLE001 - any vmap failure means: loop instead
                self.vmap_ok = False
                self.vmap_error = f"{type(exc).__name__}: {exc}"
            finally:
                self._vmapping = False
        return torch.stack([fn({n: t[j] for n, t in chunk.items()}) for j in range(n_points)])

    # ------------------------------------------------------------------ derivatives
    def _leaves(self) -> dict[str, torch.Tensor]:
        return {n: self.params[n].detach().requires_grad_(True) for n in self.names}

    def _accumulate(
        self, contribution: Callable[[torch.Tensor, list[torch.Tensor]], torch.Tensor | None]
    ) -> torch.Tensor:
        """Sum over batches of ``contribution(value, inputs)``, a flat vector of length ``dim`` (or None
        for nothing), where ``value`` is the batch's loss sum / N with grad w.r.t. the leaves ``inputs``
        (theta, in ``names`` order); batches whose value does not depend on the parameters are skipped."""
        out = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        with torch.enable_grad(), eval_mode(self.model):
            leaves = self._leaves()
            inputs = [leaves[n] for n in self.names]
            full = self._full(leaves)
            for i in range(len(self.batches)):
                value = self._batch_sum(full, i) / self.n_samples
                if not value.requires_grad:
                    continue
                part = contribution(value, inputs)
                if part is not None:
                    out += part
        return out

    def gradient(self) -> torch.Tensor:
        """Flat gradient of L at theta (accumulated batch by batch)."""

        def batch_gradient(value: torch.Tensor, inputs: list[torch.Tensor]) -> torch.Tensor:
            return self._flat_or_zero(torch.autograd.grad(value, inputs, allow_unused=True))

        return self._accumulate(batch_gradient)

    def loss_and_gradient(self, point: dict[str, torch.Tensor] | None = None) -> tuple[float, torch.Tensor]:
        """(L(w), ∇_w L(w)) at the weights ``point`` (name -> tensor; default theta), the gradient flat in name
        order: L(w) = (1/N) Σ_b Σ_{i∈b} ℓ(f_w(x_i) − y_i), differentiated batch by batch and summed (a batch whose
        loss does not depend on the weights adds 0), in eval mode; the model is left untouched."""
        src = self.params if point is None else point
        missing = [n for n in self.names if n not in src]
        if missing:
            raise ProbeError(f"the point lacks parameters {missing[:3]}")
        grad = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        total = torch.zeros((), dtype=self.dtype, device=self.device)
        with torch.enable_grad(), eval_mode(self.model):
            leaves = {n: src[n].detach().to(device=self.device, dtype=self.dtype).requires_grad_(True)
                      for n in self.names}
            full = self._full(leaves)
            inputs = [leaves[n] for n in self.names]
            for i in range(len(self.batches)):
                value = self._batch_sum(full, i) / self.n_samples
                total = total + value.detach()
                if value.requires_grad:
                    grad += self._flat_or_zero(torch.autograd.grad(value, inputs, allow_unused=True))
        return float(total), grad

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """Hessian-vector product H(theta) @ v, accumulated over batches, by ``hvp_method``."""
        if v.dim() != 1 or v.numel() != self.dim:
            raise ProbeError(f"hvp expects a flat vector of length {self.dim}, got shape {tuple(v.shape)}")
        vd = self.unflatten(v.detach().to(device=self.device, dtype=self.dtype))
        if self.hvp_method == "retain":
            out = self._hvp_retained(vd)
        elif self.hvp_method == "jvp":
            out = self._hvp_jvp(vd)
        else:
            out = self._accumulate(self._batch_hvp(vd))
        self.n_hvp += 1
        return out

    def _batch_hvp(self, vd: dict[str, torch.Tensor]):
        """Double backward for one batch: ``contribution`` for ``_accumulate`` (the "recompute" variant)."""

        def batch_hvp(value: torch.Tensor, inputs: list[torch.Tensor]) -> torch.Tensor | None:
            grads = torch.autograd.grad(value, inputs, create_graph=True, allow_unused=True)
            dot = None
            for name, g in zip(self.names, grads):
                if g is None or not g.requires_grad:
                    continue  # this block of the gradient is constant: its Hessian rows are zero
                term = (g * vd[name]).sum()
                dot = term if dot is None else dot + term
            if dot is None:
                return None
            return self._flat_or_zero(torch.autograd.grad(dot, inputs, allow_unused=True))

        return batch_hvp

    def output_gradients(self, probes: torch.Tensor | None = None,
                         batched: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-sample gradients of the model's outputs at theta, reduced on the fly (never stored together).

        Returns ``(sq, proj)``: ``sq[i] = ‖∇f_i‖²`` for each of the N samples in batch order, and, given a
        (n, dim) stack of ``probes`` Z, ``proj[i] = Z ∇f_i`` (an (N, n) tensor; None without probes). The
        Gauss-Newton part of the Hessian is G = (1/N) Σ_i ℓ''(r_i) ∇f_i ∇f_iᵀ, so tr(G) and zᵀGz follow
        from these (:mod:`traits.probes.sampling`). One forward pass per batch, then, with ``batched``, one
        backward vmapped over up to 64 samples at a time (autograd's ``is_grads_batched``), or one backward per
        sample (without ``batched``, or for a model whose backward autograd cannot vmap)."""
        if probes is not None and (probes.dim() != 2 or probes.shape[1] != self.dim):
            raise ProbeError(f"output_gradients expects a (n, {self.dim}) stack of probes, got {tuple(probes.shape)}")
        sq: list[torch.Tensor] = []
        proj: list[torch.Tensor] = []
        z = None if probes is None else probes.detach().to(device=self.device, dtype=self.dtype)
        for g in self._gradient_rows(batched):
            sq.extend((g * g).sum(dim=1))
            if z is not None:
                proj.extend(g @ z.T)
        return torch.stack(sq), (torch.stack(proj) if z is not None else None)

    def output_jacobian(self, batched: bool = True, max_entries: int | None = None) -> torch.Tensor:
        """The (N, dim) Jacobian J of the model's outputs at theta: row i is ∇θ f_i, in batch order.

        It is held whole (N × dim values), so ``max_entries`` refuses a Jacobian larger than that before any
        backward pass (a :class:`~traits.errors.ProbeError` naming the size)."""
        if max_entries is not None and self.n_samples * self.dim > max_entries:
            raise ProbeError(f"the Jacobian of {self.n_samples} outputs by {self.dim} parameters holds "
                             f"{self.n_samples * self.dim:,} values, more than the {max_entries:,} allowed")
        return torch.cat(list(self._gradient_rows(batched)))

    def _gradient_rows(self, batched: bool) -> Iterator[torch.Tensor]:
        """Per batch, the (n_b, dim) rows ∇θ f_i of its samples (one forward, then vmapped or single backwards)."""
        with torch.enable_grad(), eval_mode(self.model):
            leaves = self._leaves()
            inputs = [leaves[n] for n in self.names]
            full = self._full(leaves)
            fast = self.fast_forward is not False and not self._transforming and self._check_fast_gradient()
            for i, batch in enumerate(self.batches):
                pred = (self.model.probe_forward(full, self._fast_batch(i)) if fast
                        else functional_call(self.model, full, (batch,))).reshape(-1)
                if pred.numel() != self.targets[i].numel():
                    raise ProbeError(f"model predictions have {pred.numel()} values but the batch "
                                     f"{self.targets[i].numel()} targets")
                if not pred.requires_grad:  # the outputs do not depend on the parameters
                    yield torch.zeros((pred.numel(), self.dim), dtype=self.dtype, device=self.device)
                elif batched and self.vmap_grads_ok is not False:
                    g = self._rows_batched(pred, inputs)
                    yield g if g is not None else self._rows_one_by_one(pred, inputs)
                else:
                    yield self._rows_one_by_one(pred, inputs)

    #: None until output_gradients first tried a vmapped backward, then whether it worked for this model
    vmap_grads_ok: bool | None = None

    def _rows_batched(self, pred: torch.Tensor, inputs: list[torch.Tensor], rows: int = 64) -> torch.Tensor | None:
        """∇f_i for every sample of one batch, ``rows`` vmapped backward rows at a time; None if autograd cannot."""
        out = []
        n = pred.numel()
        try:
            for start in range(0, n, rows):
                stop = min(start + rows, n)
                eye = torch.zeros((stop - start, n), dtype=pred.dtype, device=pred.device)
                eye[torch.arange(stop - start), torch.arange(start, stop)] = 1
                grads = torch.autograd.grad(pred, inputs, grad_outputs=eye, is_grads_batched=True, retain_graph=True,
                                            allow_unused=True)
                out.append(self._flat_or_zero(grads, stop - start))
        except RuntimeError:
            self.vmap_grads_ok = False
            return None
        self.vmap_grads_ok = True
        return torch.cat(out)

    def _rows_one_by_one(self, pred: torch.Tensor, inputs: list[torch.Tensor]) -> torch.Tensor:
        """∇f_i for every sample of one batch, one backward each."""
        return torch.stack([self._flat_or_zero(torch.autograd.grad(pred[j], inputs, retain_graph=True,
                                                                   allow_unused=True)) for j in range(pred.numel())])

    # ------------------------------------------------------------------ retained gradient graphs
    _holder: weakref.ReferenceType | None = None  # the one objective (of all) that keeps graphs now

    @property
    def retained_bytes(self) -> int:
        return 0 if self._graphs is None else self._graphs.nbytes

    def release_graphs(self) -> None:
        """Drop the retained gradient graphs (the next "retain" product builds them again)."""
        self._graphs = None
        if SplitObjective._holder is not None and SplitObjective._holder() is self:
            SplitObjective._holder = None

    def _state(self) -> list[tuple[str, torch.Tensor, int]]:
        """(name, tensor, in-place version) of every tensor the loss reads."""
        stores = (self.params, self._frozen, self.buffers)
        return [(name, t, t._version) for store in stores for name, t in store.items()]

    def _graphs_current(self) -> bool:
        """Whether retained graphs exist and theta (params, frozen weights, buffers) is unchanged since."""
        if self._graphs is None:
            return False
        now = self._state()
        kept = self._graphs.state
        return len(now) == len(kept) and all(
            a[0] == b[0] and a[1] is b[1] and a[2] == b[2] for a, b in zip(now, kept)
        )

    def _claim_graphs(self) -> _RetainedGraphs:
        if self._graphs_current():
            return self._graphs  # type: ignore[return-value]
        self.release_graphs()
        holder = SplitObjective._holder() if SplitObjective._holder is not None else None
        if holder is not None and holder is not self:
            holder.release_graphs()
        leaves = self._leaves()
        self._graphs = _RetainedGraphs(
            self._state(), self._full(leaves), [leaves[n] for n in self.names], len(self.batches)
        )
        SplitObjective._holder = weakref.ref(self)
        return self._graphs

    def hvp_many(self, vectors: torch.Tensor, batched: bool | None = None) -> torch.Tensor:
        """H(theta) @ v for every row of a (K, dim) stack, as a (K, dim) tensor; counts K products.

        With ``batched`` (default: on CUDA, where one wide kernel beats K narrow ones) the K products share each
        batch's backward pass through the retained gradient graph (autograd's ``is_grads_batched``, a vmap over
        the vectors); otherwise, and for the "recompute"/"jvp" variants, they are computed one by one. Both give
        the same products to rounding (``tests/test_fast_forward.py``)."""
        if vectors.dim() != 2 or vectors.shape[1] != self.dim:
            raise ProbeError(f"hvp_many expects a (K, {self.dim}) stack of vectors, got shape {tuple(vectors.shape)}")
        if batched is None:
            batched = self.device.type == "cuda"
        if not batched or self.hvp_method != "retain" or vectors.shape[0] < 2:
            return torch.stack([self.hvp(v) for v in vectors]) if vectors.shape[0] else vectors.clone()
        stack = vectors.detach().to(device=self.device, dtype=self.dtype)
        k = stack.shape[0]
        pieces = torch.split(stack, self._sizes, dim=1)
        vd = {n: piece.reshape(k, *shape) for n, piece, shape in zip(self.names, pieces, self._shapes)}
        out = self._hvp_retained(vd, batched=k)
        self.n_hvp += k
        return out

    def _hvp_retained(self, vd: dict[str, torch.Tensor], batched: int = 0) -> torch.Tensor:
        """The "retain" product; with ``batched`` = K, ``vd`` holds K stacked vectors and the result is (K, dim)."""
        graphs = self._claim_graphs()
        out = torch.zeros((batched, self.dim) if batched else self.dim, dtype=self.dtype, device=self.device)
        inputs = graphs.inputs
        with torch.enable_grad(), eval_mode(self.model):
            for i in range(len(self.batches)):
                if graphs.constant[i]:
                    continue
                kept = graphs.grads[i]
                if kept is None:
                    counter = _SavedBytes()
                    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
                        value = self._batch_sum(graphs.full, i) / self.n_samples
                        if not value.requires_grad:
                            graphs.constant[i] = True
                            continue
                        grads = torch.autograd.grad(value, inputs, create_graph=True, allow_unused=True)
                    kept = [(j, g) for j, g in enumerate(grads) if g is not None and g.requires_grad]
                    if not kept:
                        graphs.constant[i] = True
                        continue
                    if graphs.nbytes + counter.total <= self.hvp_memory_budget:
                        graphs.grads[i] = kept
                        graphs.nbytes += counter.total
                        retain = True
                    else:  # over the budget: use this graph once, rebuild it for every later product
                        retain = False
                else:
                    retain = True
                part = torch.autograd.grad(
                    [g for _, g in kept], inputs, grad_outputs=[vd[self.names[j]] for j, _ in kept],
                    retain_graph=retain, allow_unused=True, is_grads_batched=bool(batched),
                )
                out += self._flat_or_zero(part, batched)
        return out

    # ------------------------------------------------------------------ forward-over-reverse
    def _hvp_jvp(self, vd: dict[str, torch.Tensor]) -> torch.Tensor:
        from torch.func import grad, jvp

        theta = {n: self.params[n].detach() for n in self.names}
        tangent = {n: vd[n] for n in self.names}
        out = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        with torch.enable_grad(), eval_mode(self.model):
            for i in range(len(self.batches)):

                def batch_loss(params: dict[str, torch.Tensor], i: int = i) -> torch.Tensor:
                    return self._batch_sum(self._full(params), i) / self.n_samples

                self._transforming = True
                try:
                    _, part = jvp(grad(batch_loss), (theta,), (tangent,))
                finally:
                    self._transforming = False
                out += self.flatten(part).detach()
        return out

    def _flat_or_zero(self, grads: Sequence[torch.Tensor | None], batched: int = 0) -> torch.Tensor:
        if batched:
            parts = [(torch.zeros((batched, size), dtype=self.dtype, device=self.device) if g is None
                      else g.reshape(batched, -1)) for g, size in zip(grads, self._sizes)]
            return torch.cat(parts, dim=1).detach()
        parts = [
            (torch.zeros(size, dtype=self.dtype, device=self.device) if g is None else g.reshape(-1))
            for g, size in zip(grads, self._sizes)
        ]
        return torch.cat(parts).detach()
