"""The tolerance-band analysis (traits.study.bands, issue 34): the bands recompute what the audit computes, S is
scale-free, sub-resolution values drop out and are counted, and the bootstrap draws whole held-out rules."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from traits.audit import ratios, split_metrics
from traits.results import SplitMetrics, SurfaceResult
from traits.spec import load_spec
from traits.study import bands as B

ALPHAS = np.linspace(-0.5, 0.5, 11)  # step 0.1
QUICKSTART = "audits/quickstart.yaml"
TAU = 0.1
STUDY1 = Path("docs/study/runs-mp-partial/seed-0/enthalpy-element-Fe/results.json")


def _curve(level: float, c1: float, c2: float) -> np.ndarray:
    """A 1D bowl with a cubic term (not symmetric, so the two sides differ)."""
    return level + c1 * ALPHAS**2 + c2 * ALPHAS**3


def _grid(level: float, ca: float, cb: float) -> np.ndarray:
    a, b = np.meshgrid(ALPHAS, ALPHAS, indexing="ij")
    return level + ca * a**2 + cb * b**2 + 0.37 * ca * a * b


def _surface(levels: dict, shapes: dict, band: float | None = None) -> SurfaceResult:
    """Two splits on the same axes; ``shapes[s]`` = (c1, c2, ca, cb)."""
    curves = {s: [_curve(levels[s], c1, c2), _curve(levels[s], 1.3 * c1, -c2)] for s, (c1, c2, _, _) in shapes.items()}
    grids = {s: _grid(levels[s], ca, cb) for s, (_, _, ca, cb) in shapes.items()}
    return SurfaceResult(span=0.5, tolerance=TAU, alphas_1d=ALPHAS.tolist(), alphas_2d=ALPHAS.tolist(),
                         curves={s: [c.tolist() for c in v] for s, v in curves.items()},
                         grids={s: g.tolist() for s, g in grids.items()}, band=band)


def _result(surf: SurfaceResult, mae_ratio: float = 1.5, rule: str = "Fe", eps: float = 0.1):
    """The fields of an AuditResult that traits.study.bands reads."""
    metrics = {s: SplitMetrics(loss=surf.curves[s][0][len(ALPHAS) // 2]) for s in ("id", "ood")}
    return SimpleNamespace(surface=surf, metrics=metrics, spec={"probes": {"surface": {"sharpness_radius": eps}}},
                           omit=[rule], ratios={"mae_ratio": mae_ratio, "loss_ratio": None}, target="t",
                           provenance=SimpleNamespace(seed=0, split_scheme=2))


SHAPES = {"id": (0.6, 0.2, 0.9, 1.7), "ood": (1.2, -0.3, 1.9, 2.6)}
LEVELS = {"id": 0.8, "ood": 1.7}


# ---------------------------------------------------------------------------------------------- (a)


def test_band_A_recomputes_what_the_audit_computes():
    """Band A from stored curves and grids gives the audit's own radius, sharpness and basin ratios
    (traits.audit.split_metrics on the same SurfaceResult, grid radius: no bisection record)."""
    spec = load_spec(QUICKSTART)
    eps = spec.probes.surface.sharpness_radius
    surf = _surface(LEVELS, SHAPES, band=TAU * LEVELS["id"])
    audit = {s: split_metrics(spec, s, None, surf, LEVELS[s]) for s in ("id", "ood")}
    want = ratios(audit, {})
    got = B.audit_bands(_result(surf, eps=eps))["A"]
    assert got["delta"] == {"id": pytest.approx(TAU * LEVELS["id"]), "ood": pytest.approx(TAU * LEVELS["id"])}
    assert all(got["status"][m] == B.OK for m in B.METRICS)
    assert want["radius_ratio"] is not None and want["basin_area_ratio"] is not None
    assert got["ratio"]["radius"] == pytest.approx(want["radius_ratio"])
    assert got["ratio"]["basin_area"] == pytest.approx(want["basin_area_ratio"])
    assert got["ratio"]["sharpness"] == pytest.approx(want["sharpness_ratio"])
    assert got["ratio"]["radius"] < 1 and got["ratio"]["basin_area"] < 1  # the OOD bowl is the steeper one
    for s in ("id", "ood"):
        assert got["values"][s]["radius"] == pytest.approx(audit[s].robust_radius)
        assert got["values"][s]["basin_area"] == pytest.approx(audit[s].basin_area)


@pytest.mark.skipif(not STUDY1.is_file(), reason="study 1's stored results are not in this checkout")
def test_band_R_reproduces_study_1s_stored_relative_ratios():
    """Study 1 (schema 1.3) measured against δ_s = τ L_s(θ) and divided the sharpness by L_s(θ): band R with no
    resolution rule gives its stored basin-area and sharpness ratios from the stored surfaces."""
    from traits.results import load_result

    result = load_result(STUDY1)
    got = B.audit_bands(result)["R"]["raw_ratio"]
    assert got["basin_area"] == pytest.approx(result.ratios["basin_area_ratio"], rel=1e-12)
    assert got["sharpness"] == pytest.approx(result.ratios["sharpness_ratio"], rel=1e-12)


# ---------------------------------------------------------------------------------------------- (b)


@pytest.mark.parametrize("scale, shift", [(4.0, 0.5), (0.25, -0.3), (1.0, 7.0)])
def test_S_is_unchanged_by_scaling_and_shifting_a_splits_losses(scale, shift):
    base = B.audit_bands(_result(_surface(LEVELS, SHAPES)))["S"]
    levels = {"id": LEVELS["id"], "ood": scale * LEVELS["ood"] + shift}
    moved_surf = _surface(LEVELS, SHAPES)
    moved_surf.curves["ood"] = [[scale * v + shift for v in c] for c in moved_surf.curves["ood"]]
    moved_surf.grids["ood"] = [[scale * v + shift for v in row] for row in moved_surf.grids["ood"]]
    moved = B.audit_bands(_result(moved_surf))["S"]
    assert moved["delta"]["ood"] == pytest.approx(scale * base["delta"]["ood"])
    assert moved["delta"]["id"] == base["delta"]["id"]
    for m in B.METRICS:
        assert base["status"][m] == B.OK
        assert moved["ratio"][m] == pytest.approx(base["ratio"][m], rel=1e-9), m
    assert levels["ood"] == pytest.approx(moved_surf.curves["ood"][0][5])


def test_A_ignores_a_shift_of_the_ood_losses_and_R_widens_the_ood_band_with_it():
    """A: one δ = τ L_ID(θ); a constant added to OOD's losses changes no rise, so no ratio (module docstring of
    traits.probes.metrics). R: δ_OOD = τ L_OOD(θ) grows by τ k, so the OOD region looks wider for a higher loss."""
    k = 6.0
    base = B.audit_bands(_result(_surface(LEVELS, SHAPES)))
    moved = B.audit_bands(_result(_surface({"id": LEVELS["id"], "ood": LEVELS["ood"] + k}, SHAPES)))
    for m in B.METRICS:
        assert moved["A"]["ratio"][m] == pytest.approx(base["A"]["ratio"][m], rel=1e-9), m
    assert moved["A"]["delta"] == base["A"]["delta"]
    assert moved["R"]["delta"]["ood"] == pytest.approx(base["R"]["delta"]["ood"] + TAU * k)
    assert moved["R"]["ratio"]["basin_area"] > base["R"]["ratio"]["basin_area"]
    assert moved["R"]["ratio"]["radius"] > base["R"]["ratio"]["radius"]
    assert moved["R"]["ratio"]["sharpness"] < base["R"]["ratio"]["sharpness"]  # rise / δ_s: a wider band


def test_C_is_the_curvature_band_and_no_band_without_positive_curvature():
    kappa = B.curvature(ALPHAS, [_curve(1.0, 2.0, 0.5), _curve(1.0, 4.0, -0.5)])
    assert kappa == pytest.approx(2 * 3.0)  # mean of 2·2 and 2·4; the cubic term cancels in a central difference
    assert B.split_band("C", TAU, 1.0, 1.0, None, kappa) == pytest.approx(TAU * 0.5 * 6.0 * 0.25)
    assert B.split_band("C", TAU, 1.0, 1.0, None, -1.0) is None
    concave = {"id": SHAPES["id"], "ood": (-0.5, 0.0, 1.9, 2.6)}
    got = B.audit_bands(_result(_surface(LEVELS, concave)))["C"]
    assert got["delta"]["ood"] is None and set(got["status"].values()) == {B.NO_BAND}


# ---------------------------------------------------------------------------------------------- (c)


def test_a_one_cell_basin_gives_a_missing_ratio_and_counts_as_excluded():
    """OOD's bowl so steep (400 a²) that under A no grid point but θ lies within δ: radius under one step, basin
    one cell. The ratio is None, the status says why, and the cell counts the audit as excluded, not as data."""
    steep = {"id": SHAPES["id"], "ood": (400.0, 0.0, 400.0, 400.0)}
    sharp = B.audit_row("gap-element-Fe", _result(_surface(LEVELS, steep), mae_ratio=3.0))
    assert sharp["A:radius"] is None and sharp["A:basin_area"] is None
    assert sharp["A:radius:status"] == sharp["A:basin_area:status"] == B.BELOW
    assert sharp["A:basin_area:raw"] is not None and sharp["A:radius:raw"] == 0.0  # what the rule keeps out
    assert sharp["A:sharpness"] is not None  # the sharpness has no resolution rule
    rows = [sharp] + [B.audit_row(f"gap-element-{e}", _result(_surface(LEVELS, SHAPES), mae_ratio=1 + i / 10, rule=e))
                      for i, e in enumerate(("Co", "Ni", "Mn", "Cu"))]
    assert all(r["kind"] == "omission" and r["rule"] == f"element:{r['task'].split('-')[-1]}" for r in rows)
    c = B.cell(B.sample(rows), "A", "basin_area", n_boot=100)
    assert (c["n_pool"], c["n"], c["n_excluded_below_resolution"], c["n_no_band"]) == (5, 4, 1, 0)
    assert c["usable"] and c["unresolved_share"] == pytest.approx(0.2)


# ---------------------------------------------------------------------------------------------- (d)


def _row(rule: str, x: float, y: float, a: float | None = None) -> dict:
    row = {"task": f"t-{rule}-{x}", "kind": "omission", "rule": rule, "mae_ratio": y, "y": int(y >= 2)}
    for d in B.DEFINITIONS:
        value = x if d != "A" or a is None else a
        row |= {f"{d}:basin_area": value, f"{d}:basin_area:status": B.OK}
    return row


def test_the_bootstrap_draws_whole_held_out_rules():
    """Rule P: 20 audits with ratio and error rising together; rule N: 20 with them opposed, on disjoint ranges.
    Drawing whole rules, a quarter of the resamples hold P twice (ρ = +1 exactly) and a quarter N twice (ρ = −1),
    so the 95 % interval is exactly [−1, 1]; drawing audits it would almost never reach either end. The paired
    Δρ of a definition identical to A is 0 on every resample."""
    rows = [_row("P", float(i), float(i)) for i in range(20)]
    rows += [_row("N", 100.0 + i, 119.0 - i) for i in range(20)]
    c = B.cell(rows, "S", "basin_area", n_boot=400)
    assert c["rho"]["n_clusters"] == 2 and c["n"] == 40
    assert c["rho"]["low"] == pytest.approx(-1.0, abs=1e-12) and c["rho"]["high"] == pytest.approx(1.0, abs=1e-12)
    assert "held-out rules" in c["rho"]["interval"] and "percentile" in c["rho"]["interval"]
    d = c["delta_rho_vs_A"]
    assert d["delta"] == pytest.approx(0.0) and d["low"] == pytest.approx(0.0) and d["high"] == pytest.approx(0.0)
    assert "paired" in d["interval"]


def _cell(rho, low, high, sign, delta=None, usable=True):
    c = {"rho": {"rho": rho, "low": low, "high": high}, "expected_sign": sign, "usable": usable}
    if delta is not None:
        c["delta_rho_vs_A"] = {"delta": delta[0], "low": delta[1], "high": delta[2]}
    return c


def test_the_decision_rule():
    """A tracks the radius and sharpness; X tracks the basin where A does not and is not worse elsewhere: the
    default moves to X. Make X worse than A on the sharpness and it stays A (one band for all metrics)."""
    base = {"radius": _cell(-0.4, -0.6, -0.2, -1), "sharpness": _cell(0.6, 0.4, 0.8, 1),
            "basin_area": _cell(0.3, 0.1, 0.5, -1)}
    x = {"radius": _cell(-0.4, -0.6, -0.2, -1, (0.0, -0.1, 0.1)), "sharpness": _cell(0.6, 0.4, 0.8, 1, (0, -0.1, 0.1)),
         "basin_area": _cell(-0.3, -0.5, -0.1, -1, (0.6, 0.4, 0.8))}
    none = {m: _cell(0.0, -0.2, 0.2, B.EXPECTED_SIGN[m], (0.0, -0.3, 0.3)) for m in B.METRICS}
    dec = B.decide({"A": base, "S": x, "R": none, "C": none})
    assert dec["per_metric"]["basin_area"]["moves_to"] == ["S"] and dec["default"] == "S" and dec["why"] == "moves"
    x["sharpness"] = _cell(0.3, 0.1, 0.5, 1, (0.3, 0.1, 0.5))  # tracks, but worse than A
    dec = B.decide({"A": base, "S": x, "R": none, "C": none})
    assert dec["default"] == "A" and dec["why"] == "conflict" and dec["against_on"] == {"S": ["sharpness"]}
    assert not dec["gates"]["basin_area"]["default_failing_gate_allowed"]
    x["basin_area"]["usable"] = False
    x["sharpness"] = _cell(0.6, 0.4, 0.8, 1, (0, -0.1, 0.1))
    assert B.decide({"A": base, "S": x, "R": none, "C": none})["default"] == "A"  # unusable: cannot move
