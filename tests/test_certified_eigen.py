"""Certified extreme eigenvalues: a converged flag is true only when the value is the extreme eigenvalue to
the stated accuracy, in every budget regime (early stops included), against dense references.

Two references, both independent of the Lanczos code:

* an analytic spectrum built to fool a residual test relative to max |theta|: a few large positive
  eigenvalues, a dense near-zero bulk and a few small negative ones at the bottom (what trained crystal
  networks show). The rule TRAITS used before accepted a bulk Ritz value near +0.1 after 7 steps as
  "converged" λ_min while the true value is -5.5;
* a small CGCNN trained a few steps on real crystals of the bundled sample, whose dense Hessian is built
  with ``torch.func.hessian`` of a loss written here through ``functional_call`` (not ``SplitObjective``).
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import DT, gen, prepare_sample

from traits.probes.hessian import MIN_FLOOR, smallest_eigenvalue, top_eigenvalues

CPU = torch.device("cpu")
BUDGETS = [3, 5, 8, 12, 20, 30, 45, 70, 120]


def fooling_matrix(n: int = 1500, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = gen(seed)
    pos = torch.tensor([600.0, 400, 250, 150, 90, 60, 40, 25, 15, 10], dtype=DT)
    neg = torch.tensor([-5.5, -3.0, -2.0, -1.2, -0.8], dtype=DT)
    bulk = (torch.rand(n - 15, generator=g, dtype=DT) - 0.3) * 0.5
    spectrum = torch.cat([pos, bulk, neg])
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DT))
    a = q @ torch.diag(spectrum) @ q.T
    return (a + a.T) / 2, torch.sort(spectrum).values


@pytest.fixture(scope="module")
def fooling():
    return fooling_matrix()


def _old_rule_stop(a: torch.Tensor, steps: int, tol: float, seed: int) -> tuple[int | None, float]:
    """The stopping rule TRAITS used before (residual estimate |beta_m s_m1| <= tol * max |theta|, checked
    at every step), replayed on one plain Lanczos run: the first step it accepts and its Ritz value."""
    from traits.probes.hessian import lanczos

    alpha, beta, _ = lanczos(lambda v: a @ v, a.shape[0], steps + 1, gen(seed), CPU, DT)
    for m in range(1, steps + 1):
        t = torch.diag(alpha[:m]) + torch.diag(beta[: m - 1], 1) + torch.diag(beta[: m - 1], -1)
        theta, s = torch.linalg.eigh(t)
        if float(beta[m - 1] * s[-1, 0].abs()) <= tol * float(theta.abs().max()):
            return m, float(theta[0])
    return None, float("nan")


def test_the_matrix_fools_a_residual_rule_relative_to_lambda_max(fooling):
    a, exact = fooling
    for seed in (0, 1, 2):
        m, value = _old_rule_stop(a, 60, 1e-3, seed=seed)
        # it stops early on a value that is not λ_min to its tolerance (here: a bulk value near +0.1)
        assert m is not None and m < 15 and abs(value - float(exact[0])) > 1e-3 * abs(float(exact[0])), (seed, m)
    m, value = _old_rule_stop(a, 60, 1e-3, seed=0)
    assert value > 0 > float(exact[0])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tol", [1e-3, 1e-5])
def test_lambda_min_is_right_or_marked_unconverged_at_every_budget(fooling, seed, tol):
    a, exact = fooling
    lam_min, spectral = float(exact[0]), float(exact.abs().max())
    certified_somewhere = False
    for steps in BUDGETS:
        res = smallest_eigenvalue(lambda v: a @ v, a.shape[0], max_steps=steps, tol=tol, generator=gen(seed),
                                  device=CPU, dtype=DT)
        value = float(res.values[0])
        assert value >= lam_min - 1e-9 * spectral  # a Ritz value never undershoots λ_min
        if res.converged:
            accuracy = tol * max(abs(value), MIN_FLOOR * spectral)
            assert abs(value - lam_min) <= accuracy, (steps, value, lam_min)
            assert float(res.abs_residuals[0]) <= float(res.accuracy[0])
            certified_somewhere = True
        else:
            assert res.n_steps == min(steps, a.shape[0])  # it spent the budget before giving up
    assert certified_somewhere  # the largest budget is enough


@pytest.mark.parametrize("seed", [0, 3])
def test_top_k_are_right_or_marked_unconverged_at_every_budget(fooling, seed):
    a, exact = fooling
    want = torch.flip(exact, [0])[:5]
    for steps in BUDGETS:
        res = top_eigenvalues(lambda v: a @ v, a.shape[0], k=5, max_steps=steps, tol=1e-6, generator=gen(seed),
                              device=CPU, dtype=DT)
        for i, ok in enumerate(res.converged_each):
            if ok:
                assert abs(float(res.values[i]) - float(want[i])) <= 1e-6 * float(want[i]) + 1e-9, (steps, i)
                assert float(res.residuals[i]) <= 1e-6
        assert res.converged == all(res.converged_each)
    assert res.converged  # 120 steps resolve the top five


def test_the_converged_flag_follows_the_verified_residual_not_the_estimate(fooling):
    a, _ = fooling
    res = smallest_eigenvalue(lambda v: a @ v, a.shape[0], max_steps=4, tol=1e-3, generator=gen(0), device=CPU,
                              dtype=DT)
    true = float((a @ res.vectors[0] - res.values[0] * res.vectors[0]).norm())
    assert float(res.abs_residuals[0]) == pytest.approx(true, rel=1e-8)
    assert not res.converged and true > float(res.accuracy[0])
    d = res.to_dict()
    assert d["converged_each"] == [False] and d["abs_residuals"] and d["accuracy"]


# ------------------------------------------------------------------------------- a small trained CGCNN
@pytest.fixture(scope="module")
def trained_crystal_problem(tmp_path_factory):
    from torch.func import functional_call

    from traits.audit import collate
    from traits.models.cgcnn import CGCNN
    from traits.probes.objective import SplitObjective

    data = prepare_sample(tmp_path_factory, "certified-eigen", subsample=60)
    graphs = [g for g in data.splits["train"] if g.num_nodes <= 10][:24]
    node_dim, edge_dim = graphs[0].x.shape[1], graphs[0].edge_attr.shape[1]
    torch.manual_seed(0)
    model = CGCNN(atom_fea_len=3, n_conv=1, h_fea_len=4, n_h=1, batch_norm=False, node_dim=node_dim,
                  edge_dim=edge_dim).to(DT)
    batches = collate(graphs, CPU, DT, batch_size=len(graphs))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):  # a few hundred steps: near a minimum, with a few negative directions left
        opt.zero_grad()
        loss = ((model(batches[0]) - batches[0].y) ** 2).mean()
        loss.backward()
        opt.step()
    model.eval()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(flat):
        params, i = {}, 0
        for name, shape in zip(names, shapes):
            n = int(torch.tensor(shape).prod()) if len(shape) else 1
            params[name] = flat[i : i + n].reshape(shape)
            i += n
        pred = functional_call(model, params, (batches[0],))
        return ((pred - batches[0].y) ** 2).mean()

    dense = torch.func.hessian(loss_of)(flat0)
    dense = (dense + dense.T) / 2
    return SplitObjective(model, batches, loss="mse"), torch.linalg.eigvalsh(dense)


def test_trained_crystal_model_lambda_min_and_top_against_its_dense_hessian(trained_crystal_problem):
    obj, exact = trained_crystal_problem
    assert obj.dim == exact.numel() and obj.dim > 50
    spectral = float(exact.abs().max())
    lam_min, lam_max = float(exact[0]), float(exact[-1])
    assert lam_min < 0 < lam_max  # the case the certificate is about
    tol = 1e-4
    certified = 0
    for steps in [3, 6, 10, 16, 25, 40, obj.dim]:
        low = smallest_eigenvalue(obj.hvp, obj.dim, max_steps=steps, tol=tol, generator=gen(7), device=CPU, dtype=DT)
        top = top_eigenvalues(obj.hvp, obj.dim, k=3, max_steps=steps, tol=tol, generator=gen(8), device=CPU, dtype=DT)
        if low.converged:
            certified += 1
            assert abs(float(low.values[0]) - lam_min) <= tol * max(abs(lam_min), MIN_FLOOR * spectral) * 1.01
        if top.converged_each[0]:
            assert abs(float(top.values[0]) - lam_max) <= tol * lam_max * 1.01
    assert certified >= 1 and low.converged and top.converged
