"""The zoomed 2D grid around θ: asked for exactly when the basin spans fewer than ZOOM_CELLS cells of the main
grid, sized from the widest split's robust radius, evaluated on the same plane, and drawn in the report."""

from __future__ import annotations

import pytest
from test_audit import QUICKSTART, SMALL

from traits.audit import ZOOM_CELLS, ZOOM_RADII, run_audit, zoom_span
from traits.results import SurfaceResult
from traits.spec import load_spec


def surface(radii: dict, censored: dict | None = None, span: float = 1.0) -> SurfaceResult:
    return SurfaceResult(span=span, tolerance=0.1, alphas_1d=[-span, 0.0, span], radius=radii,
                         radius_censored=censored or {k: [False] * len(v) for k, v in radii.items()})


def test_zoom_span_follows_the_widest_basin():
    cell = 2 * 1.0 / (21 - 1)
    narrow = surface({"id": [0.03, 0.05], "ood": [0.02, 0.04]})
    # each split's radius is its smallest over directions; the widest split (ID, 0.03) sets the zoom
    assert zoom_span(narrow, 21) == pytest.approx(ZOOM_RADII * 0.03)
    wide = ZOOM_CELLS * cell / 2 + 1e-9
    assert zoom_span(surface({"id": [wide], "ood": [0.01]}), 21) is None
    assert zoom_span(surface({"id": [wide - 2e-9], "ood": [0.01]}), 21) == pytest.approx(ZOOM_RADII * (wide - 2e-9))
    assert zoom_span(surface({"id": [0.03], "ood": [None]}), 21) is None  # a split without a radius
    assert zoom_span(surface({"id": [0.03], "ood": [0.02]}, {"id": [True], "ood": [False]}), 21) is None
    assert zoom_span(surface({"id": [0.2], "ood": [0.1]}, span=0.5), 5) == pytest.approx(0.5)  # capped at the span


def test_a_narrow_basin_gets_a_zoomed_grid_in_results_and_report(tmp_path):
    spec = load_spec(QUICKSTART, overrides={**SMALL, "probes.surface.zoom_points": 7, "probes.hessian.enabled": False,
                                            "report.formats": ["json", "html"]})
    result = run_audit(spec, tmp_path / "out", render=True)
    s = result.surface
    half = zoom_span(s, spec.probes.surface.points_2d)
    assert half is not None, s.radius  # the shrunk grid (5 × 5 over ±0.5) cannot resolve the quickstart's basin
    assert s.zoom_alphas_2d[0] == pytest.approx(-half) and s.zoom_alphas_2d[-1] == pytest.approx(half)
    assert set(s.zoom_grids) == set(s.grids)
    for split, grid in s.zoom_grids.items():
        assert len(grid) == 7 and all(len(row) == 7 for row in grid)
        centre = grid[3][3]
        assert centre == pytest.approx(result.metrics[split].loss, rel=1e-5)  # θ itself, on the same objective
    html = (tmp_path / "out" / "report.html").read_text()
    assert 'id="fig-zoom_2d"' in html and "Zoomed in:" in html  # the figure was drawn, with its caption
    off = load_spec(QUICKSTART, overrides={**SMALL, "probes.surface.zoom_points": 0, "probes.hessian.enabled": False,
                                           "report.formats": ["json"]})
    assert run_audit(off, tmp_path / "off", render=False).surface.zoom_grids == {}
