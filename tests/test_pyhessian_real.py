"""The PyHessian backend agrees with the built-in one on a real crystal model: the shipped quickstart
CGCNN on 32 graphs of the bundled Materials Project sample."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("pyhessian")

from traits.audit import collate  # noqa: E402
from traits.data.prepare import prepare_data  # noqa: E402
from traits.models.checkpoint import load_checkpoint  # noqa: E402
from traits.probes.hessian import hutchinson_trace, top_eigenvalues  # noqa: E402
from traits.probes.objective import SplitObjective  # noqa: E402
from traits.probes.pyhessian_backend import pyhessian_top_eigenvalues, pyhessian_trace  # noqa: E402
from traits.spec import load_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DT = torch.float64
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def crystal_problem():
    spec = load_spec(ROOT / "audits" / "quickstart.yaml", overrides={"data.subsample": 400})
    data = prepare_data(spec)
    # 32 training crystals of at most 8 sites (in split order): real chemistry, fast products
    graphs = [g for g in data.splits["train"] if g.num_nodes <= 8][:32]
    assert len(graphs) == 32
    model, _ = load_checkpoint(spec.model.checkpoint, spec.model.format, architecture=spec.model.architecture,
                               target=spec.data.target, graph=spec.data.graph, device=CPU)
    model = model.to(DT).eval()
    batches = collate(graphs, CPU, DT, batch_size=8)  # four equal batches of 8 crystals
    assert [int(b.num_graphs) for b in batches] == [8, 8, 8, 8]
    return model, batches, SplitObjective(model, batches, loss="mse")


def test_top_eigenvalue_agrees(crystal_problem):
    model, batches, obj = crystal_problem
    ours = top_eigenvalues(obj.hvp, obj.dim, k=1, max_steps=80, tol=1e-4, generator=torch.Generator().manual_seed(0),
                           device=obj.device, dtype=DT)
    theirs = pyhessian_top_eigenvalues(model, batches, "mse", k=1, max_iter=300, tol=1e-4,
                                       generator=torch.Generator().manual_seed(1))
    assert ours.converged and theirs.converged
    lam, mu = float(ours.values[0]), float(theirs.values[0])
    assert lam > 0 and mu > 0
    assert abs(lam - mu) <= 1e-2 * lam, (lam, mu)
    assert float(ours.residuals[0]) < 1e-3
    # the model was left as found: eval mode, no gradients
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_traces_agree_within_their_standard_errors(crystal_problem):
    model, batches, obj = crystal_problem
    ours = hutchinson_trace(obj.hvp, obj.dim, n_samples=40, generator=torch.Generator().manual_seed(2),
                            device=obj.device, dtype=DT)
    theirs = pyhessian_trace(model, batches, "mse", max_iter=40, tol=0.0, generator=torch.Generator().manual_seed(3))
    assert ours.n_hvp == 40 and theirs.n_hvp == 40
    assert ours.stderr > 0 and theirs.stderr > 0
    combined = math.sqrt(ours.stderr**2 + theirs.stderr**2)
    assert abs(ours.estimate - theirs.estimate) <= 3 * combined, (ours, theirs)
    # a trained net at a minimum: the trace is positive and well resolved by 40 probes
    assert ours.estimate > 3 * ours.stderr and theirs.estimate > 3 * theirs.stderr
