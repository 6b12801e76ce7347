"""Progress that counts: a Hessian stage reports the Hessian-vector products done out of its budget
("Hessian id: 40/120 HVPs"), counted by a wrapper around the HVP that the pure probes call."""

from __future__ import annotations

import io

import torch

from traits.probes import hessian as hs
from traits.progress import Reporter, counted_stage

DIM = 40


def diagonal_hvp():
    diag = torch.linspace(-1.0, 10.0, DIM, dtype=torch.float64)
    return (lambda v: diag * v), (lambda stack: stack * diag)


def run_probe(counter: hs.HVPCounter) -> int:
    """The products of one Hessian probe as the audit runs it (top-k, lambda_min, two traces, density)."""
    kw = {"device": "cpu", "dtype": torch.float64}
    g = torch.Generator().manual_seed(0)
    used = hs.top_eigenvalues(counter.hvp, DIM, k=3, max_steps=20, tol=1e-6, generator=g, **kw).n_hvp
    used += hs.smallest_eigenvalue(counter.hvp, DIM, max_steps=20, tol=1e-6, generator=g, **kw).n_hvp
    used += hs.hutchinson_trace(counter.hvp, DIM, n_samples=9, generator=g, hvp_many=counter.hvp_many, **kw).n_hvp
    used += hs.hutchpp_trace(counter.hvp, DIM, n_hvp=9, generator=g, hvp_many=counter.hvp_many, **kw).n_hvp
    used += hs.slq_density(counter.hvp, DIM, n_runs=2, n_steps=8, generator=g, grid_size=50, **kw).n_hvp
    return used


def test_the_counter_counts_every_product_and_reports_it():
    hvp, hvp_many = diagonal_hvp()
    calls = []
    budget = hs.hessian_budget(DIM, top_k=3, max_steps=20, trace_hvps=9, density_runs=2, density_steps=8)
    assert budget == (20 + 3) + (20 + 1) + 9 + 9 + 2 * 8
    counter = hs.HVPCounter(hvp, hvp_many, on_progress=lambda done, total: calls.append((done, total)),
                            budget=budget)
    used = run_probe(counter)
    assert counter.done == used > 0  # every product the probes report, single and batched, was counted
    dones = [d for d, _ in calls]
    assert dones == sorted(dones) and dones[-1] == used
    assert all(done < total for done, total in calls)  # the stage never ends before the probe does
    counter.finish()
    assert calls[-1] == (used, used)


def test_counting_changes_no_result():
    hvp, hvp_many = diagonal_hvp()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    plain = hs.top_eigenvalues(hvp, DIM, k=3, max_steps=20, generator=g1, device="cpu", dtype=torch.float64)
    counted = hs.top_eigenvalues(hs.HVPCounter(hvp).hvp, DIM, k=3, max_steps=20, generator=g2, device="cpu",
                                 dtype=torch.float64)
    assert torch.equal(plain.values, counted.values) and plain.n_hvp == counted.n_hvp


def test_a_hessian_stage_prints_hvps_done_out_of_its_budget():
    stream = io.StringIO()
    reporter = Reporter(mode="lines", stream=stream, interval=1e9, heartbeat=False)
    update = counted_stage(reporter, "Hessian id", 120, "HVPs")
    for done in range(1, 121):
        update(done, 120)
    reporter.close()
    lines = [line.split("] ", 1)[1] for line in stream.getvalue().splitlines()]
    assert lines[0] == "Hessian id: started (120 HVPs)"
    assert "Hessian id: 36/120 HVPs (30%)" in lines  # a line each time another 10 % is done
    assert lines[-1].startswith("Hessian id: done 120/120 HVPs in ")


def test_the_heartbeat_repeats_the_count():
    now = [0.0]
    stream = io.StringIO()
    reporter = Reporter(mode="lines", stream=stream, interval=10.0, clock=lambda: now[0], heartbeat=False)
    update = counted_stage(reporter, "Hessian ood", 300, "HVPs")
    update(40, 300)
    now[0] = 25.0
    reporter._current.beat()
    assert "Hessian ood: 40/300 HVPs (13%) after 25 s" in stream.getvalue()
    assert "still running" not in stream.getvalue()


def test_any_other_progress_factory_is_called_as_before():
    opened = []
    update = counted_stage(lambda description, total: opened.append((description, total)) or "cb", "Hessian id",
                           50, "HVPs")
    assert opened == [("Hessian id", 50)] and update == "cb"
    assert counted_stage(None, "Hessian id", 50, "HVPs") is None
