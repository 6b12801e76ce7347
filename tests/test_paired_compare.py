"""`traits compare` pairs two audits of the same compounds (traits.pairing).

Real audits (the quickstart checkpoint, shrunk probe settings): an audit compared with itself changes by exactly
zero with zero-width intervals and no "settings differ" note; two checkpoints (the quickstart one and a copy
with perturbed weights) audited on the same split and probe seed give paired intervals narrower than the
unpaired computation of the same changes; probe draws that differ leave the Hessian unpaired and say so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_audit import QUICKSTART, SMALL
from tiny_models import quickstart_checkpoint_with

from traits import compare as C
from traits.audit import run_audit
from traits.pairing import hessian_change, pairing, same_inputs
from traits.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {**SMALL, "probes.hessian.max_samples": 48, "probes.hessian.trace_hvps": 6,
            "probes.hessian.max_steps": 12, "probes.surface.enabled": False, "report.formats": ["json"]}


def perturbed_checkpoint(folder: Path, scale: float = 0.03) -> Path:
    """A copy of the quickstart checkpoint whose weights carry seeded relative noise (its sidecar updated)."""
    g = torch.Generator().manual_seed(3)
    return quickstart_checkpoint_with(
        folder, lambda k, v: v + scale * v.abs().mean() * torch.randn(v.shape, generator=g, dtype=v.dtype))


@pytest.fixture(scope="module")
def audits(tmp_path_factory):
    base = tmp_path_factory.mktemp("paired")
    a = run_audit(load_spec(QUICKSTART, overrides=SETTINGS), base / "a", render=False)
    again = run_audit(load_spec(QUICKSTART, overrides=SETTINGS), base / "a2", render=False)
    (base / "ckpt").mkdir()
    ckpt = perturbed_checkpoint(base / "ckpt")
    b = run_audit(load_spec(QUICKSTART, overrides={**SETTINGS, "model.checkpoint": str(ckpt)}), base / "b",
                  render=False)
    other_probes = run_audit(load_spec(QUICKSTART, overrides={**SETTINGS, "probes.seed": 5}), base / "c",
                             render=False)
    return a, again, b, other_probes


def test_an_audit_compared_with_itself_changes_by_exactly_zero(audits):
    a, again, _, _ = audits
    assert same_inputs(a, again)
    c = C.compare_results(a, again)
    measured = [r for r in c.rows if r.delta is not None]
    assert len(measured) >= 10
    for r in measured:
        assert r.delta == 0, r
        if r.delta_low is not None:
            assert r.delta_low == 0 and r.delta_high == 0, r
    assert {r.interval for r in measured if r.key in ("lambda_ratio", "trace_ratio", "mae_ratio")} == {
        "identical inputs"}
    ids = {f.id for f in c.findings}
    assert "same_inputs" in ids and "same_checkpoint" not in ids and "unpaired" not in ids


def test_the_same_audit_on_other_cpu_kernels_is_paired_not_identical(audits):
    """Other kernels can round differently and, where neighbour distances tie, build other graphs: the same
    checkpoint, split and probes on them are the same checkpoint, not the same inputs, and the comparison says so.
    A result that records no kernels (written before schema 1.10) is taken at its word."""
    a, again, _, _ = audits
    assert a.provenance.kernels and a.provenance.kernels == again.provenance.kernels
    other = again.model_copy(deep=True)
    other.provenance.kernels = {**other.provenance.kernels, "torch_cpu": "DEFAULT" if
                                other.provenance.kernels.get("torch_cpu") != "DEFAULT" else "AVX2"}
    assert not same_inputs(a, other)
    ids = {f.id for f in C.compare_results(a, other).findings}
    assert {"different_kernels", "same_checkpoint"} <= ids and "same_inputs" not in ids
    old = again.model_copy(deep=True)
    old.provenance.kernels = {}
    assert same_inputs(a, old) and "different_kernels" not in {f.id for f in C.compare_results(a, old).findings}


def width(r) -> float:
    return r.delta_high - r.delta_low


def test_two_checkpoints_on_the_same_compounds_are_paired_and_narrower(audits):
    a, _, b, _ = audits
    pair = pairing(a, b)
    assert all(pair.values()), pair
    assert not same_inputs(a, b)
    paired = {r.key: r for r in C.compare_results(a, b).rows}
    # the same two audits with their pairing information removed: the unpaired computation
    ua, ub = a.model_copy(deep=True), b.model_copy(deep=True)
    for r in (ub,):
        for acc in r.accuracy.values():
            acc.ids = [f"x{i}" for i in range(len(acc.ids))]
        for h in r.hessian.values():
            h.sample_ids = []
    unpaired = {r.key: r for r in C.compare_results(ua, ub).rows}
    for key in ("mae_ratio", "ood_mae", "lambda_ratio", "trace_ratio", "ood_trace"):
        p, u = paired[key], unpaired[key]
        assert p.interval.startswith("paired"), (key, p.interval)
        assert not u.interval.startswith("paired"), (key, u.interval)
        assert p.delta == pytest.approx(u.delta, rel=1e-9, abs=1e-12)
        assert p.delta_low <= p.delta <= p.delta_high
        assert width(p) < width(u), (key, width(p), width(u))
    assert any(f.id == "unpaired" for f in C.compare_results(ua, ub).findings)


def test_paired_jackknife_of_a_change_is_the_jackknife_of_the_differences(audits):
    """The λ_max change's interval, recomputed from the stored leave-out values by hand."""
    from scipy.stats import t

    a, _, b, _ = audits
    change = hessian_change(a, b, "ood_lambda_max")
    la, lb = a.hessian["ood"].lambda_max_jackknife.leave_out, b.hessian["ood"].lambda_max_jackknife.leave_out
    d = [y - x for x, y in zip(la, lb)]
    g = len(d)
    mean = sum(d) / g
    se = ((g - 1) / g * sum((x - mean) ** 2 for x in d)) ** 0.5
    rho = a.hessian["ood"].top.abs_residuals[0] + b.hessian["ood"].top.abs_residuals[0]
    half = t.ppf(0.975, g - 1) * se + rho
    delta = b.hessian["ood"].top_eigenvalues[0] - a.hessian["ood"].top_eigenvalues[0]
    assert change.delta == pytest.approx(delta)
    assert change.low == pytest.approx(delta - half) and change.high == pytest.approx(delta + half)


def test_other_probe_draws_are_not_paired_and_say_so(audits):
    a, _, _, c = audits
    pair = pairing(a, c)
    assert pair["accuracy_ood"] and not pair["hessian_ood"] and not pair["probes"]
    comparison = C.compare_results(a, c)
    assert any(f.id == "same_checkpoint" for f in comparison.findings)
    assert any(f.id == "unpaired" and "Hessian" in f.statement for f in comparison.findings)
    assert not {r.interval for r in comparison.rows if r.key == "lambda_ratio"} & {"identical inputs"}


def test_the_embedding_distances_pair_by_compound_id(audits):
    """B's distance sample stored in another order (ids kept beside their distances) gives the same paired change;
    a sample of other compounds is not paired at all."""
    from traits.pairing import shift_change

    a, _, b, _ = audits
    assert a.shift.samples["ood"].ids.get("embedding"), "the audits store the ids of their distance samples"
    base = shift_change(a, b, "embedding_knn_ratio")
    assert base is not None and base.kind == "paired bootstrap over compounds"
    shuffled = b.model_copy(deep=True)
    for s in ("id", "ood"):
        sample = shuffled.shift.samples[s]
        ids, dist = sample.ids["embedding"], sample.distances["embedding"]
        order = np.random.default_rng(4).permutation(len(ids))
        sample.ids["embedding"] = [ids[i] for i in order]
        sample.distances["embedding"] = [dist[i] for i in order]
    again = shift_change(a, shuffled, "embedding_knn_ratio")
    assert (again.low, again.high) == pytest.approx((base.low, base.high), rel=1e-12)
    foreign = b.model_copy(deep=True)
    n = len(foreign.shift.samples["ood"].ids["embedding"])
    foreign.shift.samples["ood"].ids["embedding"] = [f"x-{i}" for i in range(n)]
    assert shift_change(a, foreign, "embedding_knn_ratio") is None
