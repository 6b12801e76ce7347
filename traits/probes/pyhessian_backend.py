"""PyHessian as an alternative backend behind the same result types.

PyHessian (GPL-3.0) is an optional extra, imported only here: ``pip install 'traits[pyhessian]'``.
It is useful as an independent cross-check of the built-in Lanczos / Hutchinson code.

How the adapter meets PyHessian 0.1's expectations
--------------------------------------------------
* It calls ``model(inputs)`` and ``criterion(outputs, targets)`` and iterates a dataloader of
  ``(inputs, targets)``, calling ``inputs.to(device)``, ``targets.to(device)`` and ``inputs.size(0)``.
  Each pre-collated batch is wrapped in a handle whose ``to`` is a no-op (batches are already where the
  model is) and whose ``size(0)`` is the number of targets, and the model in a module that unwraps it.
* PyHessian weights each batch's Hessian-vector product by ``inputs.size(0)`` and divides by the total,
  so with a per-batch *mean* criterion the result is exactly the Hessian of
  (1/N) sum_i l(pred_i - y_i), the ``SplitObjective`` loss, also for batches of different sizes.
* It takes ``param.grad`` after ``backward(create_graph=True)``; a parameter that gets no gradient (or a
  gradient that does not depend on the weights) breaks its second ``autograd.grad``. The criterion adds
  ``0 * sum(p ** 2)`` over the trainable parameters: the value and the Hessian are unchanged, but every
  gradient exists and is differentiable.
* Its ``cuda`` flag means ``.to('cuda')``; it is set from the model's device and the work runs inside
  ``torch.cuda.device(...)`` so that 'cuda' is the model's GPU.
* It draws from the global RNG; a seed taken from the caller's generator seeds a forked RNG, so the
  global state is untouched and results are reproducible.
* It calls ``model.eval()`` and writes ``.grad``: the train/eval flags and every parameter's ``.grad``
  are restored afterwards; ``requires_grad`` flags are never changed.
* ``hessian.density`` calls ``torch.eig``, removed from PyTorch: densities are refused with a
  ``ProbeError``; use the built-in backend.

Power iteration (PyHessian's eigenvalue method) finds eigenvalues of largest *magnitude*, deflating
each found vector; when a negative eigenvalue dominates in magnitude it is returned. ``residuals`` are
computed afterwards with one extra product per pair (counted in ``n_hvp``); ``converged`` replays
PyHessian's own stopping rule (relative change of the estimate below ``tol``) on the recorded sequence.
Its normalisation divides by ||v|| + 1e-6, which biases estimates by about 2e-6 / ||Hv|| relative.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from traits.errors import ProbeError
from traits.probes.hessian import EigenResult, TraceResult
from traits.probes.objective import LossKind, _default_target

_INSTALL_HINT = "pyhessian is not installed; install the optional extra: pip install 'traits[pyhessian]'"
_DENSITY_MESSAGE = "pyhessian 0.1 calls torch.eig, removed from PyTorch; use backend 'traits' for densities"


def _pyhessian_class():
    try:
        from pyhessian import hessian as pyhessian_hessian
    except ImportError as exc:
        raise ProbeError(_INSTALL_HINT) from exc
    return pyhessian_hessian


class _Handle:
    """A batch (or its targets) dressed as a tensor for PyHessian: ``to`` is a no-op, ``size(0)`` = n."""

    def __init__(self, payload: Any, n: int) -> None:
        self.payload = payload
        self.n = n

    def to(self, *args, **kwargs) -> _Handle:
        return self

    def size(self, dim: int | None = None):
        return self.n if dim == 0 else torch.Size([self.n])


class _Unwrap(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, handle: _Handle) -> torch.Tensor:
        return self.model(handle.payload)


def _criterion(loss: LossKind, params: list[torch.Tensor]) -> Callable:
    def criterion(outputs: torch.Tensor, targets: _Handle) -> torch.Tensor:
        y = targets.payload
        pred = outputs.reshape(y.shape) if outputs.shape != y.shape else outputs
        r = pred - y
        value = (r * r).mean() if loss == "mse" else r.abs().mean()
        keep_alive = sum((p * p).sum() for p in params)
        return value + 0.0 * keep_alive

    return criterion


def _device_of(model: nn.Module) -> torch.device:
    try:
        return next(p for p in model.parameters() if p.requires_grad).device
    except StopIteration:
        raise ProbeError("the model has no trainable parameters to probe") from None


class _Session:
    """Set up PyHessian on the wrapped model; restore the model's flags and grads on exit."""

    def __init__(self, model, batches, loss, target_fn, generator) -> None:
        if loss not in ("mse", "mae"):
            raise ProbeError(f"unknown loss {loss!r}; use 'mse' or 'mae'")
        self.cls = _pyhessian_class()
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.device = _device_of(model)
        batches = list(batches)
        if not batches:
            raise ProbeError("at least one batch of data is needed")
        self.loader = []
        for b in batches:
            y = target_fn(b).detach()
            self.loader.append((_Handle(b, y.numel()), _Handle(y, y.numel())))
        self.criterion = _criterion(loss, self.params)
        self.generator = generator
        self.trace_values: list[float] = []
        self.n_hvp = 0

    def __enter__(self):
        try:
            return self._enter()
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def _enter(self):
        self._flags = [(m, m.training) for m in self.model.modules()]
        self._grads = [p.grad for p in self.model.parameters()]
        self._stack = contextlib.ExitStack()
        for p in self.model.parameters():
            p.grad = None
        self._stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore", UserWarning)  # backward(create_graph=True) reference-cycle notice
        cuda = self.device.type == "cuda"
        devices = [self.device.index if self.device.index is not None else torch.cuda.current_device()] if cuda else []
        self._stack.enter_context(torch.random.fork_rng(devices=devices))
        if cuda:
            self._stack.enter_context(torch.cuda.device(self.device))
        if self.generator is not None:
            seed = int(torch.randint(0, 2**62, (1,), generator=self.generator, device=self.generator.device))
            torch.random.default_generator.manual_seed(seed)
            if cuda:
                torch.cuda.manual_seed(seed)
        self._stack.enter_context(torch.enable_grad())
        self.h = self.cls(_Unwrap(self.model), self.criterion, dataloader=self.loader, cuda=cuda)
        original = self.h.dataloader_hv_product

        def counted(v):
            value, hv = original(v)
            self.n_hvp += 1
            self.trace_values.append(float(value))
            return value, hv

        self.h.dataloader_hv_product = counted
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._stack.close()
        finally:
            for module, training in self._flags:
                module.training = training
            for p, g in zip(self.model.parameters(), self._grads):
                p.grad = g

    def flat(self, vs: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([v.detach().reshape(-1).to(self.params[0].dtype) for v in vs])

    def hv(self, v: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        _, hv = self.h.dataloader_hv_product(list(v))
        return hv


def _replay_power_iteration(values: list[float], k: int, max_iter: int, tol: float) -> bool:
    """Re-run PyHessian's stopping rule on the recorded estimates: did every pair stop on tolerance?"""
    pos = 0
    all_converged = True
    for _ in range(k):
        previous = None
        stopped = False
        for _ in range(max_iter):
            if pos >= len(values):
                return False
            current = values[pos]
            pos += 1
            if previous is not None and abs(previous - current) / (abs(previous) + 1e-6) < tol:
                stopped = True
                break
            previous = current
        all_converged = all_converged and stopped
    return all_converged and pos == len(values)


def pyhessian_top_eigenvalues(
    model: nn.Module,
    batches: Sequence,
    loss: LossKind = "mse",
    k: int = 1,
    max_iter: int = 100,
    tol: float = 1e-3,
    *,
    generator: torch.Generator | None = None,
    target_fn: Callable[[Any], torch.Tensor] = _default_target,
) -> EigenResult:
    """PyHessian's power iteration with deflation: the k eigenvalues of largest magnitude (in the order
    found). ``n_hvp`` counts the power iterations plus one verification product per pair."""
    if k < 1:
        raise ProbeError(f"k must be >= 1, got {k}")
    with _Session(model, batches, loss, target_fn, generator) as s:
        values, vectors = s.h.eigenvalues(maxIter=max_iter, tol=tol, top_n=k)
        converged = _replay_power_iteration(s.trace_values, k, max_iter, tol)
        flat_vectors, residuals = [], []
        for lam, vec in zip(values, vectors):
            norm = math.sqrt(sum(float((x * x).sum()) for x in vec))
            unit = [x / norm for x in vec]
            hv = s.hv(unit)
            r = s.flat(hv) - lam * s.flat(unit)
            residuals.append(float(r.norm()) / max(abs(lam), torch.finfo(torch.float64).tiny))
            flat_vectors.append(s.flat(unit))
        n_hvp = s.n_hvp
    return EigenResult(
        values=torch.tensor([float(v) for v in values], dtype=torch.float64),
        vectors=torch.stack(flat_vectors),
        residuals=torch.tensor(residuals, dtype=torch.float64),
        n_hvp=n_hvp,
        converged=converged,
        n_steps=n_hvp - len(values),
        method="pyhessian-power",
    )


def pyhessian_trace(
    model: nn.Module,
    batches: Sequence,
    loss: LossKind = "mse",
    max_iter: int = 100,
    tol: float = 1e-3,
    *,
    generator: torch.Generator | None = None,
    target_fn: Callable[[Any], torch.Tensor] = _default_target,
) -> TraceResult:
    """PyHessian's Hutchinson estimate (Rademacher probes; it stops early when the running mean changes
    by less than ``tol`` relative; ``tol=0`` uses all ``max_iter`` probes). stderr from the samples."""
    with _Session(model, batches, loss, target_fn, generator) as s:
        samples = s.h.trace(maxIter=max_iter, tol=tol)
        n_hvp = s.n_hvp
    t = torch.tensor([float(x) for x in samples], dtype=torch.float64)
    stderr = float(t.std(correction=1) / math.sqrt(t.numel())) if t.numel() > 1 else float("nan")
    return TraceResult(estimate=float(t.mean()), stderr=stderr, n_hvp=n_hvp, method="pyhessian-hutchinson")


def pyhessian_density(*args: Any, **kwargs: Any):
    """Always raises: PyHessian 0.1's density needs ``torch.eig``, which PyTorch removed."""
    raise ProbeError(_DENSITY_MESSAGE)
