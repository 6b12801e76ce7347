"""The PyHessian backend agrees with the built-in one and the dense Hessian; densities are refused."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from tiny_models import DT, make_data, randomize_batchnorm
from torch import nn

pytest.importorskip("pyhessian")

from traits.errors import ProbeError  # noqa: E402
from traits.probes.hessian import hutchinson_trace, top_eigenvalues  # noqa: E402
from traits.probes.objective import SplitObjective  # noqa: E402
from traits.probes.pyhessian_backend import (  # noqa: E402
    pyhessian_density,
    pyhessian_top_eigenvalues,
    pyhessian_trace,
)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(3, 6)
        self.bn = nn.BatchNorm1d(6)
        self.l2 = nn.Linear(6, 1)
        self.unused = nn.Linear(2, 2)  # gets no gradient: PyHessian alone would fail on it

    def forward(self, batch):
        return self.l2(self.bn(torch.tanh(self.l1(batch.x)))).squeeze(-1)


def make(sizes):
    torch.manual_seed(0)
    model = Net().to(DT)
    randomize_batchnorm(model.bn, weight=False, bias=False)
    model.train()
    _, _, batches = make_data(sizes)
    obj = SplitObjective(model, batches)
    dense = torch.stack([obj.hvp(e) for e in torch.eye(obj.dim, dtype=DT)])
    return model, batches, obj, (dense + dense.T) / 2


@pytest.mark.parametrize("sizes", [(10, 10, 10), (7, 16, 5)], ids=["equal", "uneven"])
def test_top_eigenvalue_agrees_with_the_traits_backend(sizes):
    model, batches, obj, dense = make(sizes)
    ev = torch.linalg.eigvalsh(dense)
    assert float(ev[-1]) > abs(float(ev[0]))  # power iteration's target is the top eigenvalue here
    ours = top_eigenvalues(
        obj.hvp,
        obj.dim,
        k=1,
        max_steps=obj.dim,
        tol=1e-8,
        generator=torch.Generator().manual_seed(2),
        device=obj.device,
        dtype=obj.dtype,
    )
    theirs = pyhessian_top_eigenvalues(
        model, batches, k=1, max_iter=1000, tol=1e-9, generator=torch.Generator().manual_seed(3)
    )
    assert abs(float(theirs.values[0]) - float(ours.values[0])) <= 1e-4 * float(ours.values[0])
    assert abs(float(ours.values[0]) - float(ev[-1])) <= 1e-8 * float(ev[-1])
    assert theirs.converged and theirs.n_hvp >= 2
    assert float(theirs.residuals[0]) < 1e-2
    # the vector is an eigenvector of the same Hessian (up to sign)
    assert abs(float(theirs.vectors[0] @ ours.vectors[0])) > 0.999


def test_trace_agrees_within_statistical_error():
    model, batches, obj, dense = make((10, 10, 10))
    exact = float(torch.trace(dense))
    theirs = pyhessian_trace(model, batches, max_iter=200, tol=0.0, generator=torch.Generator().manual_seed(4))
    ours = hutchinson_trace(obj.hvp, obj.dim, 200, torch.Generator().manual_seed(5), obj.device, obj.dtype)
    assert theirs.n_hvp == 200 and theirs.stderr > 0
    assert abs(theirs.estimate - exact) <= 3 * theirs.stderr
    assert abs(theirs.estimate - ours.estimate) <= 3 * math.hypot(theirs.stderr, ours.stderr)


def test_backend_is_reproducible_and_leaves_the_model_alone():
    model, batches, _, _ = make((10, 10))
    model.l1.weight.grad = torch.full_like(model.l1.weight, 7.0)
    model.l2.bias.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.random.get_rng_state()
    a = pyhessian_trace(model, batches, max_iter=5, tol=0.0, generator=torch.Generator().manual_seed(6))
    b = pyhessian_trace(model, batches, max_iter=5, tol=0.0, generator=torch.Generator().manual_seed(6))
    assert a == b
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    pyhessian_top_eigenvalues(model, batches, k=2, max_iter=20)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert model.training and model.bn.training
    assert torch.equal(model.l1.weight.grad, torch.full_like(model.l1.weight, 7.0))
    assert model.l2.weight.grad is None and model.unused.weight.grad is None
    assert not model.l2.bias.requires_grad and model.l2.weight.requires_grad


def test_density_is_refused():
    with pytest.raises(ProbeError, match="torch.eig"):
        pyhessian_density()


def test_missing_pyhessian_gives_an_install_hint(monkeypatch):
    model, batches, _, _ = make((4,))
    monkeypatch.setitem(sys.modules, "pyhessian", None)  # makes `import pyhessian` raise ImportError
    with pytest.raises(ProbeError, match=r"pip install 'traits\[pyhessian\]'"):
        pyhessian_trace(model, batches, max_iter=2)
