"""Loss entropy against closed forms.

* constant landscape: S = k ln N - L/T (paper), k ln N (relative, Gibbs);
* one point dominating: S -> 0;
* L = c alpha^2 sampled finely: the sum is a Riemann sum of a Gaussian integral, so
  Q = sqrt(pi T / c) / h (and pi T / sqrt(c1 c2) / (h_a h_b) in 2-D), the Gibbs entropy adds 1/2 per
  dimension (the equipartition value <L>/T);
* the authors' own formula (np.log(np.sum(np.exp(-L / T)))) where it does not underflow.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from traits.errors import ProbeError
from traits.probes.entropy import entropy_summary, loss_entropy


def authors_formula(losses, temperature, k=1.0):
    """get_entropy of the paper's notebook: k * log(sum(exp(-x / (k T))))."""
    return k * np.log(np.sum(np.exp(-np.asarray(losses) / (k * temperature))))


@pytest.mark.parametrize("n", [1, 7, 81])
def test_constant_landscape(n):
    losses = np.full(n, 0.3)
    assert loss_entropy(losses, 0.3, 0.1) == pytest.approx(math.log(n) - 3.0, abs=1e-12)
    assert loss_entropy(losses, 0.3, 0.1, relative=True) == pytest.approx(math.log(n), abs=1e-12)
    assert loss_entropy(losses, 0.3, 0.1, definition="gibbs") == pytest.approx(math.log(n), abs=1e-12)
    assert loss_entropy(losses, 0.3, 0.1, k=2.0, relative=True) == pytest.approx(2.0 * math.log(n), abs=1e-12)


def test_one_point_dominating_gives_zero():
    losses = np.array([0.0] + [50.0] * 20)
    assert loss_entropy(losses, 0.0, 1.0) == pytest.approx(0.0, abs=1e-18)
    assert loss_entropy(losses, 0.0, 1.0, definition="gibbs") == pytest.approx(0.0, abs=1e-15)
    # two equal minima dominating: ln 2 for both readings
    two = np.array([0.0, 0.0] + [80.0] * 20)
    assert loss_entropy(two, 0.0, 1.0) == pytest.approx(math.log(2), abs=1e-15)
    assert loss_entropy(two, 0.0, 1.0, definition="gibbs") == pytest.approx(math.log(2), abs=1e-12)


def test_gaussian_landscape_matches_the_integral():
    t, c, h = 0.01, 1.0, 0.005
    alphas = np.arange(-400, 401) * h  # [-2, 2]: the Gaussian of width sqrt(T/c) = 0.1 is far inside
    losses = c * alphas**2
    q = math.sqrt(math.pi * t / c) / h
    assert loss_entropy(losses, 0.0, t) == pytest.approx(math.log(q), abs=1e-10)
    assert loss_entropy(losses, 0.0, t, definition="gibbs") == pytest.approx(math.log(q) + 0.5, abs=1e-10)
    # 2-D grid, anisotropic: Q = pi T / sqrt(c1 c2) / h^2, Gibbs adds 1/2 per dimension
    c1, c2 = 1.0, 4.0
    grid = c1 * alphas[:, None] ** 2 + c2 * alphas[None, :] ** 2
    q2 = math.pi * t / math.sqrt(c1 * c2) / h**2
    assert loss_entropy(torch.tensor(grid), 0.0, t) == pytest.approx(math.log(q2), abs=1e-9)
    assert loss_entropy(grid, 0.0, t, definition="gibbs") == pytest.approx(math.log(q2) + 1.0, abs=1e-9)
    # a level shift L0 moves the paper's entropy by -L0 / T, and nothing else
    assert loss_entropy(losses + 0.02, 0.02, t) == pytest.approx(math.log(q) - 2.0, abs=1e-10)
    assert loss_entropy(losses + 0.02, 0.02, t, relative=True) == pytest.approx(math.log(q), abs=1e-10)
    assert loss_entropy(losses + 0.02, 0.02, t, definition="gibbs") == pytest.approx(math.log(q) + 0.5, abs=1e-10)


def test_agrees_with_the_authors_formula_and_does_not_underflow():
    rng = np.random.default_rng(0)
    losses = 0.01 + np.abs(rng.standard_normal(81)) * 0.02
    for t in (4e-3, 4e-2):
        assert loss_entropy(losses, None, t) == pytest.approx(float(authors_formula(losses, t)), rel=1e-12)
    # every L / T beyond ~745: the naive sum underflows to 0 and its log to -inf; the log-sum-exp does not
    big = np.array([10.0, 10.0, 12.0, 30.0])
    with np.errstate(divide="ignore"):
        assert authors_formula(big, 4e-3) == -math.inf
    assert loss_entropy(big, None, 4e-3) == pytest.approx(-10.0 / 4e-3 + math.log(2), rel=1e-14)
    assert loss_entropy(big, 10.0, 4e-3, definition="gibbs") == pytest.approx(math.log(2), abs=1e-12)


def test_gibbs_is_the_entropy_of_the_boltzmann_weights():
    rng = np.random.default_rng(1)
    losses, t = rng.uniform(0.0, 1.0, 50), 0.2
    w = np.exp(-losses / t)
    p = w / w.sum()
    assert loss_entropy(losses, None, t, definition="gibbs") == pytest.approx(float(-(p * np.log(p)).sum()), rel=1e-12)
    # H = ln Q + <L> / T
    assert loss_entropy(losses, None, t, definition="gibbs") == pytest.approx(
        loss_entropy(losses, None, t) + float((p * losses).sum()) / t, rel=1e-12
    )


def test_flatter_landscapes_have_higher_entropy():
    alphas = np.linspace(-0.25, 0.25, 81)
    curvatures = [0.5, 1.0, 2.0, 4.0, 8.0]
    for definition in ("paper", "gibbs"):
        values = [loss_entropy(0.01 + c * alphas**2, 0.01, 0.01, definition=definition) for c in curvatures]
        assert all(a > b for a, b in zip(values, values[1:])), (definition, values)
        assert values[0] <= math.log(81) + 1e-12


def test_nonfinite_losses_have_zero_weight_but_count():
    alphas = np.linspace(-0.25, 0.25, 81)
    losses = 0.01 + alphas**2
    base = loss_entropy(losses, 0.01, 0.01)
    broken = np.concatenate([losses, [np.nan, np.inf, -np.inf]])
    assert loss_entropy(broken, 0.01, 0.01) == pytest.approx(base, abs=1e-14)
    assert loss_entropy(broken, 0.01, 0.01, definition="gibbs") == pytest.approx(
        loss_entropy(losses, 0.01, 0.01, definition="gibbs"), abs=1e-14
    )
    summary = entropy_summary(broken, 0.01, 0.01)
    assert summary.n_points == 84 and summary.n_nonfinite == 3
    assert summary.max_entropy == pytest.approx(math.log(84))
    assert summary.entropy == pytest.approx(base) and summary.entropy_relative == pytest.approx(base + 1.0)
    out = summary.to_dict()
    json.dumps(out, allow_nan=False)
    assert "Vita" in out["source"]

    dead = np.full(5, np.nan)
    assert loss_entropy(dead, 0.01, 0.01) == -math.inf
    assert math.isnan(loss_entropy(dead, 0.01, 0.01, definition="gibbs"))
    out = entropy_summary(dead, 0.01, 0.01).to_dict()
    json.dumps(out, allow_nan=False)
    assert out["entropy"] is None and out["gibbs"] is None and out["n_nonfinite"] == 5


def test_input_errors():
    with pytest.raises(ProbeError, match="temperature"):
        loss_entropy([1.0, 2.0], None, 0.0)
    with pytest.raises(ProbeError, match="temperature"):
        loss_entropy([1.0, 2.0], None, float("nan"))
    with pytest.raises(ProbeError, match="loss0"):
        loss_entropy([1.0, 2.0], None, 1.0, relative=True)
    with pytest.raises(ProbeError, match="definition"):
        loss_entropy([1.0, 2.0], None, 1.0, definition="shannon")
    with pytest.raises(ProbeError, match="at least one"):
        loss_entropy([], None, 1.0)
    assert entropy_summary([1.0, 2.0], None, 1.0).entropy_relative is None
