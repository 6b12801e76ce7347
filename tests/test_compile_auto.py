"""``probes.surface.compile: auto``: compile the surface loss when the planned evaluations repay it.

The rule (traits.probes.surface.compile_pays) is checked at its boundary; an audit records its decision in
provenance.compile; an audit made to compile gives the uncompiled audit's numbers (the compiled loss is used only
where it matches the plain one), and whether it compiled does not make it another audit.
"""

from __future__ import annotations

import pytest
from test_audit import QUICKSTART

from traits.audit import run_audit
from traits.outdir import same_audit
from traits.probes import surface as S
from traits.spec import load_spec

FAST = {"device": "cpu", "data.subsample": 200, "probes.hessian.enabled": False, "probes.shift.enabled": False,
        "probes.surface.points_1d": 5, "probes.surface.points_2d": 5, "probes.surface.max_samples": 24,
        "probes.surface.directions": "random", "probes.surface.zoom_points": 0, "report.formats": ["json"]}


def test_the_rule_compiles_only_when_the_saving_exceeds_the_compile():
    # 1000 evaluations of 0.05 s, 40 % saved: 20 s saved against a 20 s compile, not more: no compile
    assert not S.compile_pays(1000, 0.05, compile_seconds=20.0, saving=0.4)
    assert S.compile_pays(1001, 0.05, compile_seconds=20.0, saving=0.4)
    assert not S.compile_pays(10**9, 0.0) and not S.compile_pays(10**9, float("nan"))
    assert not S.compile_pays(10**9, float("inf"))


def test_the_planned_evaluations_follow_the_surface_settings():
    def planned(**kw):
        return S.planned_evaluations(load_spec(QUICKSTART, overrides={**FAST, **kw}).probes.surface, 2)

    base = planned()
    assert base == 2 * (2 * 5 + 5 * 5)  # two 1D directions of 5 points and a 5 × 5 grid, per split
    assert planned(**{"probes.surface.directions": "hessian"}) == base + 2 * 25  # the eigenvector plane
    assert planned(**{"probes.surface.zoom_points": 7}) == base + 2 * 49
    assert planned(**{"probes.surface.enabled": False}) == 0


@pytest.fixture(scope="module")
def audits(tmp_path_factory):
    base = tmp_path_factory.mktemp("compile")
    plain = run_audit(load_spec(QUICKSTART, overrides=FAST), base / "auto")
    mp = pytest.MonkeyPatch()
    mp.setattr(S, "compile_pays", lambda *a, **k: True)
    try:
        compiled = run_audit(load_spec(QUICKSTART, overrides=FAST), base / "forced")
    finally:
        mp.undo()
    return plain, compiled


def test_an_audit_records_why_it_did_not_compile(audits):
    plain, _ = audits
    plan = plain.provenance.compile
    assert plan["mode"] == "auto" and plan["compile"] is False and "would not repay" in plan["why"]
    assert plan["planned_evaluations"] == 2 * (2 * 5 + 25) and plan["seconds_per_evaluation"] > 0
    assert not any(k.startswith("compile_") for k in plain.provenance.wall_seconds)


def test_a_compiled_audit_gives_the_plain_audits_numbers(audits):
    plain, compiled = audits
    plan = compiled.provenance.compile
    assert plan["compile"] is True and plan["compiled"] == {"id": True, "ood": True}, plan
    assert "compile_id" in compiled.provenance.wall_seconds
    for split in ("id", "ood"):
        assert compiled.metrics[split].loss == plain.metrics[split].loss  # θ's loss: the plain evaluation
        a, b = plain.surface.grids[split], compiled.surface.grids[split]
        assert [x for row in b for x in row] == pytest.approx([x for row in a for x in row], rel=1e-5)
        a, b = plain.surface.curves[split], compiled.surface.curves[split]
        assert [x for row in b for x in row] == pytest.approx([x for row in a for x in row], rel=1e-5)


def test_compiling_or_not_is_the_same_audit():
    specs = [load_spec(QUICKSTART, overrides={**FAST, "probes.surface.compile": c}).model_dump(mode="json")
             for c in ("auto", True, False)]
    assert all(same_audit(specs[0], s) for s in specs[1:])
    other = load_spec(QUICKSTART, overrides={**FAST, "probes.surface.points_2d": 7}).model_dump(mode="json")
    assert not same_audit(specs[0], other)
