"""Topology of the 2-D loss surfaces (traits.probes.topology): persistence, contour tree, SMAD."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from traits.errors import ProbeError
from traits.probes.topology import contour_tree, smad, surface_topology

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "docs" / "study" / "runs-mp-partial" / "seed-0"
STORED = [STUDY / "enthalpy-chemsys-Ag-F-Li-and-10-more" / "results.json",
          STUDY / "enthalpy-crystal_system-monoclinic" / "results.json"]


def _axis(n: int = 21) -> np.ndarray:
    return np.linspace(-1.0, 1.0, n)


def _two_basins(depth_b: float = 0.3) -> np.ndarray:
    """Two bowls at x = -0.5 and x = +0.5 (the second raised by ``depth_b``) meeting on the line x = 0."""
    a = _axis()
    x, y = np.meshgrid(a, a, indexing="ij")
    return np.minimum((x + 0.5) ** 2 + y**2, (x - 0.5) ** 2 + y**2 + depth_b)


def test_one_basin_smad_is_the_rise_to_the_grid_boundary():
    """A single bowl L = x² + 2y² + 0.13x + 0.03y on a 0.1 grid over [-1, 1]²: one minimum, no finite pair,
    yet SMAD is not 0. The square's corners are maxima (3.16, 3.1, 2.9, 2.84); their superlevel sets merge
    at the midpoints of the top (2.027), bottom (1.967) and right (1.13) edges, split saddles of the contour
    tree, and the minimum (-0.003 at x = -0.1) first meets the lowest of them: SMAD = 1.13 + 0.003, the
    distance to the boundary's saddle, as Landscaper computes it. The persistence range is the loss range
    (3.163) less the smallest maximum persistence (2.9 - 2.027 = 0.873)."""
    a = _axis()
    x, y = np.meshgrid(a, a, indexing="ij")
    t = surface_topology(x**2 + 2 * y**2 + 0.13 * x + 0.03 * y)
    assert (t.n_minima, t.n_persistent_minima, t.pairs) == (1, 1, [])
    assert t.smad == pytest.approx(1.133)
    assert t.loss_range == pytest.approx(3.163)
    assert t.persistence_range == pytest.approx(3.163 - 0.873)


def test_one_minimum_one_maximum_has_zero_smad():
    """A plane tilted off the axes: one minimum corner, one maximum corner, a contour tree of one arc."""
    a = _axis(7)
    x, y = np.meshgrid(a, a, indexing="ij")
    t = surface_topology(x + 0.7 * y)
    assert (t.n_minima, t.smad, t.persistence_range) == (1, 0.0, 0.0)


def test_two_basins_with_a_known_saddle():
    """Bowls at (-0.5, 0) (level 0) and (0.5, 0) (raised to 0.3) on a 0.1 grid. On y = 0 the lower bowl's
    value (x + 0.5)² wins up to x = 0.1 (0.36) and the raised bowl's from x = 0.2 (0.39): the basins merge
    at 0.39, so the raised minimum's pair is (0.3, 0.39), and SMAD averages both minima's rise to that
    saddle, (0.39 + 0.09) / 2 = 0.24: it is not the mean persistence (0.09)."""
    g = _two_basins(0.3)
    t = surface_topology(g)
    assert t.n_minima == 2 and t.n_persistent_minima == 2
    assert t.pairs == [pytest.approx((0.3, 0.39))]
    assert t.smad == pytest.approx(0.24)
    assert t.n_saddle_minimum_arcs == 2
    assert t.smad_normalized == pytest.approx(0.24 / (g.max() - g.min()))
    _, minima, _ = contour_tree(g)
    assert minima == {5 * 21 + 10, 15 * 21 + 10}  # rows x = -0.5 and x = 0.5 (indices 5, 15), column y = 0
    assert t.persistence_range <= g.max() - g.min() - 0.09 + 1e-12  # the range less the smallest persistence


def test_a_shallow_pit_counts_as_a_minimum_but_not_as_persistent():
    g = _two_basins(0.3)
    # a pit of one grid point, 0.1 % of the loss range below its lowest neighbour: under the 1 % threshold
    g[3, 3] = min(g[2, 3], g[4, 3], g[3, 2], g[3, 4]) - 1e-3 * (g.max() - g.min())
    t = surface_topology(g)
    assert t.n_minima >= 3
    assert t.n_persistent_minima == 2


def test_constant_shift_and_positive_scale():
    rng = np.random.default_rng(3)
    g = _two_basins(0.2) + 0.01 * rng.standard_normal((21, 21))
    t0, t1 = surface_topology(g), surface_topology(g + 17.0)
    assert t1.smad == pytest.approx(t0.smad, rel=1e-9)
    assert t1.smad_normalized == pytest.approx(t0.smad_normalized, rel=1e-9)
    assert t1.persistence_range == pytest.approx(t0.persistence_range, rel=1e-9)
    assert (t1.n_minima, t1.n_persistent_minima) == (t0.n_minima, t0.n_persistent_minima)
    t2 = surface_topology(3.0 * g)
    assert t2.smad == pytest.approx(3.0 * t0.smad, rel=1e-9)
    assert t2.smad_normalized == pytest.approx(t0.smad_normalized, rel=1e-9)


def test_bad_grids_raise_probe_errors():
    with pytest.raises(ProbeError, match="non-finite"):
        surface_topology([[0.0, 1.0], [math.nan, 2.0]])
    with pytest.raises(ProbeError, match="2-D grid"):
        surface_topology([0.0, 1.0, 2.0])
    with pytest.raises(ProbeError, match="threshold"):
        surface_topology(np.zeros((3, 3)), threshold=-1.0)


def test_to_dict_is_json_ready():
    d = surface_topology(_two_basins(0.3)).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["n_minima"] == 2 and len(d["pairs"]) == 1


# ------------------------------------------------------------------------------ agreement with Landscaper
def _landscaper_smad(grid: np.ndarray, axis: np.ndarray) -> tuple[float, float, float]:
    landscaper = pytest.importorskip("landscaper")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ll = landscaper.LossLandscape(np.asarray(grid, dtype=float), [np.asarray(axis), np.asarray(axis)])
        return float(ll.smad()), float(ll.smad(normalize=True)), float(ll.persistence_range())


def _stored_grids() -> list[tuple[str, np.ndarray, np.ndarray]]:
    out = []
    for path in STORED:
        raw = json.loads(path.read_text())
        surf = raw["surface"]
        axis = np.asarray(surf["alphas_2d"], dtype=float)
        for field in ("grids", "plane_grids"):
            for split, grid in surf.get(field, {}).items():
                g = np.array([[np.nan if v is None else v for v in row] for row in grid], dtype=float)
                if np.isfinite(g).all():
                    out.append((f"{path.parent.name}:{field}.{split}", g, axis))
    return out


def test_smad_agrees_with_landscaper_on_stored_audit_grids():
    pytest.importorskip("landscaper")
    grids = _stored_grids()
    assert len(grids) >= 4
    for label, g, axis in grids:
        ref, ref_norm, ref_range = _landscaper_smad(g, axis)
        t = surface_topology(g)
        assert t.smad == pytest.approx(ref, rel=1e-6, abs=0), label
        assert t.smad_normalized == pytest.approx(ref_norm, rel=1e-6, abs=0), label
        # topopy keeps its persistences to 6 significant digits
        assert abs(t.persistence_range - ref_range) <= 1e-5 * t.loss_range, label


@pytest.mark.parametrize("seed", range(12))
def test_smad_agrees_with_landscaper_on_rough_grids(seed):
    """Noisy grids are where the contour tree has degenerate nodes (a minimum that is also a split saddle,
    a corner that is both a maximum and a join saddle): the values must still agree."""
    pytest.importorskip("landscaper")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 16))
    axis = _axis(n)
    x, y = np.meshgrid(axis, axis, indexing="ij")
    g = np.sin(3 * x + seed) * np.cos(2 * y) + (0.05 + 0.3 * (seed % 2)) * rng.standard_normal((n, n))
    ref, ref_norm, _ = _landscaper_smad(g, axis)
    assert smad(g) == pytest.approx(ref, rel=1e-6, abs=0, nan_ok=True)
    assert smad(g, normalize=True) == pytest.approx(ref_norm, rel=1e-6, abs=0, nan_ok=True)


# ------------------------------------------------------------------------------ in the audit result and report
def test_every_2d_surface_gets_its_topology_or_a_reason():
    from traits.audit import add_topology
    from traits.results import SurfaceResult

    good = _two_basins(0.3).tolist()
    bad = _two_basins(0.3).tolist()
    bad[0][0] = None  # a diverged point
    surf = SurfaceResult(span=1.0, tolerance=0.1, alphas_1d=[-1.0, 0.0, 1.0], alphas_2d=_axis().tolist(),
                         grids={"id": good, "ood": bad}, plane_grids={"id": good})
    add_topology(surf)
    assert surf.topology["grids"]["id"] == surface_topology(np.array(good)).to_dict()
    assert "non-finite" in surf.topology["grids"]["ood"]["reason"]
    assert surf.topology["plane_grids"]["id"]["smad"] == pytest.approx(0.24)
    again = SurfaceResult.model_validate_json(surf.model_dump_json())
    assert again.topology == surf.topology


def test_the_report_shows_the_barcode_and_says_what_smad_means(tmp_path):
    from traits.audit import add_topology
    from traits.report.render import render_report
    from traits.results import load_result

    result = load_result(STORED[1])
    add_topology(result.surface)
    html = render_report(result, tmp_path, formats=["html"])["html"].read_text()
    assert 'id="fig-persistence"' in html or "Persistence barcode" in html
    assert "saddle–minimum average distance" in html and "What it does not" in html
    assert f"{result.surface.topology['grids']['ood']['smad']:.4g}" in html
