"""Surface metrics measure shape, not level: an absolute band, and no ratio from a sub-resolution value."""

from __future__ import annotations

import numpy as np
import pytest

from traits.audit import ratios, split_metrics
from traits.probes.metrics import (
    basin_area_fraction,
    robust_radius,
    robust_radius_directions,
    sharpness,
    side_brackets,
)
from traits.results import SplitMetrics, SurfaceResult
from traits.spec import load_spec

ALPHAS = np.linspace(-0.5, 0.5, 11)  # step 0.1
QUICKSTART = "audits/quickstart.yaml"


def _bowl(curvature: float, level: float) -> np.ndarray:
    return level + curvature * ALPHAS**2


def _bowl_2d(curvature: float, level: float) -> np.ndarray:
    a, b = np.meshgrid(ALPHAS, ALPHAS, indexing="ij")
    return level + curvature * (a**2 + b**2)


@pytest.mark.parametrize("shift", [0.0, 0.7, 25.0])
def test_shifting_every_loss_by_a_constant_leaves_the_metrics_unchanged(shift):
    """With the old relative tolerance (1 + tau) L(theta) the band grew with the shift (a level of 25 with
    tau = 0.1 allowed a rise of 2.5 instead of 0.1), so radius, sharpness and basin area all changed."""
    delta = 0.1
    curve, grid = _bowl(4.0, 1.0), _bowl_2d(4.0, 1.0)
    base = (robust_radius(ALPHAS, curve, 1.0, delta), sharpness(ALPHAS, curve, 1.0, 0.2),
            basin_area_fraction(grid, 1.0, delta), side_brackets(ALPHAS, curve, 1.0, delta),
            robust_radius_directions(ALPHAS, [curve, 2 * curve - 1.0], 1.0, delta).radius)
    moved = (robust_radius(ALPHAS, curve + shift, 1.0 + shift, delta),
             sharpness(ALPHAS, curve + shift, 1.0 + shift, 0.2),
             basin_area_fraction(grid + shift, 1.0 + shift, delta),
             side_brackets(ALPHAS, curve + shift, 1.0 + shift, delta),
             robust_radius_directions(ALPHAS, [curve + shift, 2 * curve - 1.0 + shift], 1.0 + shift, delta).radius)
    assert moved[0] == base[0] and moved[3] == base[3] and moved[4] == base[4]
    assert moved[1] == pytest.approx(base[1]) and moved[2] == base[2]
    # and the numbers themselves: 4 a² <= 0.1 up to |a| = 0.1 (0.04), not 0.2 (0.16); rise at 0.2 is 0.16
    assert base[0] == (pytest.approx(0.1), False)
    assert base[1] == pytest.approx(0.16)
    assert base[2] == pytest.approx(9 / 121)  # the 3 x 3 block round the centre (4 (a² + b²) <= 0.08)


def _surface(id_level: float, ood_level: float, ood_curvature: float) -> SurfaceResult:
    """Two splits' surfaces on the same axes; the ID bowl is wide, the OOD one as given."""
    tol = 0.1
    grids = {"id": _bowl_2d(1.0, id_level), "ood": _bowl_2d(ood_curvature, ood_level)}
    curves = {"id": [_bowl(1.0, id_level)] * 2, "ood": [_bowl(ood_curvature, ood_level)] * 2}
    return SurfaceResult(
        span=0.5, tolerance=tol, alphas_1d=ALPHAS.tolist(), alphas_2d=ALPHAS.tolist(),
        curves={k: [c.tolist() for c in v] for k, v in curves.items()},
        grids={k: g.tolist() for k, g in grids.items()}, band=tol * id_level,
    )


def test_one_band_for_both_splits_so_a_higher_ood_level_does_not_widen_its_basin():
    spec = load_spec(QUICKSTART)
    surf = _surface(id_level=1.0, ood_level=3.0, ood_curvature=1.0)  # same shape, OOD 3x higher at theta
    m = {s: split_metrics(spec, s, None, surf, surf.grids[s][5][5]) for s in ("id", "ood")}
    assert m["ood"].basin_area == m["id"].basin_area  # same shape, same area (the old rule tripled OOD's band)
    assert m["ood"].robust_radius == m["id"].robust_radius
    assert m["ood"].sharpness == pytest.approx(m["id"].sharpness)
    r = ratios(m, {})
    assert r["basin_area_ratio"] == pytest.approx(1.0) and r["radius_ratio"] == pytest.approx(1.0)


def test_sub_resolution_values_give_no_ratio():
    """OOD's bowl is so steep (400 a²) that its band of 0.1 ends before the first grid step (0.1 -> 4.0):
    the radius is under one step and the basin is theta's point alone. Both are bounds, not numbers."""
    spec = load_spec(QUICKSTART)
    surf = _surface(id_level=1.0, ood_level=1.0, ood_curvature=400.0)
    m = {s: split_metrics(spec, s, None, surf, surf.grids[s][5][5]) for s in ("id", "ood")}
    ood = m["ood"]
    assert ood.robust_radius is None and ood.basin_area is None
    assert ood.below_resolution == {"robust_radius": pytest.approx(0.1), "basin_area": pytest.approx(1 / 121)}
    assert m["id"].robust_radius is not None and m["id"].basin_area is not None and not m["id"].below_resolution
    r = ratios(m, {})
    assert r.get("radius_ratio") is None and r.get("basin_area_ratio") is None
    assert isinstance(ood, SplitMetrics)


def test_a_gate_on_a_ratio_below_resolution_says_so_and_names_the_bound():
    """The radius gate of a split whose radius is under one grid step is undetermined, and says why (the bound),
    instead of 'not measured'."""
    from result_factory import make_result

    from traits.spec import GateSpec
    from traits.verdict import evaluate_gates

    result = make_result()
    result.ratios["radius_ratio"] = None
    result.ratio_intervals.pop("radius_ratio", None)
    result.metrics["ood"].robust_radius = None
    result.metrics["ood"].below_resolution["robust_radius"] = 0.0333
    gate = next(g for g in evaluate_gates(result, GateSpec()) if g.name == "radius_ratio")
    assert not gate.determined and gate.level == "warn"
    assert "below the grid's resolution (OOD robust radius < 0.0333, one 1D grid step)" in gate.statement
    result.metrics["ood"].below_resolution.clear()
    gate = next(g for g in evaluate_gates(result, GateSpec()) if g.name == "radius_ratio")
    assert "not measured" in gate.statement


def test_the_summary_table_shows_a_value_below_resolution_as_its_bound():
    from result_factory import make_result

    from traits.report.headline import headlines
    from traits.report.render import render_html

    result = make_result()
    result.ratios["radius_ratio"] = None
    result.ratio_intervals.pop("radius_ratio", None)
    result.metrics["ood"].robust_radius = None
    result.metrics["ood"].below_resolution["robust_radius"] = 0.0333
    row = next(h for h in headlines(result) if h.key == "robust_radius")
    assert row.ood.value is None and row.ood.below == 0.0333 and row.ratio.value is None
    html = render_html(result)
    assert "&lt; 0.033</span> <span class=\"ci\">below resolution</span>" in html
    assert "under the grid's resolution" in html
