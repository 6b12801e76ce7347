"""The generalised omission rule (spec ``holdout``) and the splitter that applies it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from traits.data.splits import assign_splits, compound_label, holdout_mask
from traits.spec import AuditSpec, HoldoutSpec


def _spec(**kw):
    base = {"name": "h", "data": {"source": "sample", "target": "band_gap"},
            "model": {"architecture": "cgcnn", "train": {"epochs": 1}}}
    return AuditSpec.model_validate({**base, **kw})


def test_holdout_spec_normalises_and_refuses():
    assert HoldoutSpec(kind="chemsys", values=["O-Fe", "Li-O"]).values == ["Fe-O", "Li-O"]
    assert HoldoutSpec(kind="spacegroup", values=["225", 62]).values == [225, 62]
    assert HoldoutSpec(kind="crystal_system", values=["Cubic"]).values == ["cubic"]
    for kind, bad in (("element", "Xx"), ("spacegroup", 231), ("group", 0), ("row", "two"),
                      ("crystal_system", "rhombic"), ("chemsys", "Fe-Qq")):
        with pytest.raises(ValidationError):
            HoldoutSpec(kind=kind, values=[bad])
    with pytest.raises(ValidationError, match="twice"):
        HoldoutSpec(kind="chemsys", values=["Fe-O", "O-Fe"])
    with pytest.raises(ValidationError, match="either 'omit'"):
        _spec(omit=["Fe"], holdout={"kind": "row", "values": [4]})
    spec = _spec(holdout={"kind": "row", "values": [4]})
    assert spec.holdout.label() == "row 4" and spec.omit == []
    assert _spec().holdout is None  # old specs are unchanged


def test_labels_follow_matfold_definitions():
    from pymatgen.core import Lattice, Structure

    nacl = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert compound_label("spacegroup", {"Na", "Cl"}, nacl) == 225
    assert compound_label("crystal_system", {"Na", "Cl"}, lambda: nacl) == "cubic"
    assert compound_label("chemsys", {"O", "Fe", "Li"}) == "Fe-Li-O"
    assert compound_label("group", {"Na", "Cl"}) == {1, 17}
    assert compound_label("row", {"Na", "Cl"}) == {3}
    mask = holdout_mask({"kind": "group", "values": [17]}, [{"Na", "Cl"}, {"Fe", "O"}, {"Cs", "I"}])
    assert mask == [True, False, True]
    assert holdout_mask({"kind": "chemsys", "values": ["Fe-O"]}, [{"Fe", "O"}, {"Fe", "O", "Li"}]) == [True, False]
    with pytest.raises(ValueError, match="needs the structures"):
        holdout_mask({"kind": "spacegroup", "values": [225]}, [{"Na"}])


def test_assign_splits_with_a_mask_records_the_rule():
    ids = [f"c{i}" for i in range(40)]
    elements = [{"Fe", "O"} if i % 4 == 0 else {"Na", "Cl"} for i in range(40)]
    rule = {"kind": "chemsys", "values": ["Fe-O"]}
    m = assign_splits(ids, elements, [], {"train": 0.8, "val": 0.1, "test": 0.1}, 0,
                      ood_mask=holdout_mask(rule, elements), holdout=rule)
    assert sorted(m.ood if hasattr(m, "ood") else m.ids["ood"]) == sorted(f"c{i}" for i in range(0, 40, 4))
    assert m.to_dict()["holdout"] == rule
    plain = assign_splits(ids, elements, ["Fe"], {"train": 0.8, "val": 0.1, "test": 0.1}, 0)
    assert plain.ids == m.ids and plain.hash != m.hash and "holdout" not in plain.to_dict()
    from traits.errors import DataError

    with pytest.raises(DataError, match="matches holdout chemsys"):
        assign_splits(ids, elements, [], {"train": 0.8, "val": 0.1, "test": 0.1}, 0,
                      ood_mask=[False] * 40, holdout=rule)


def test_prepare_data_applies_a_holdout_rule():
    from traits.data.graphs import graph_elements
    from traits.data.prepare import prepare_data

    spec = _spec(holdout={"kind": "row", "values": [2]}, data={"source": "sample", "target": "band_gap",
                                                               "subsample": 60})
    data = prepare_data(spec)
    rows_of = lambda g: {compound_label("row", graph_elements(g))}  # noqa: E731
    assert data.splits["ood"] and all(2 in compound_label("row", graph_elements(g)) for g in data.splits["ood"])
    for name in ("train", "val", "id"):
        assert all(2 not in compound_label("row", graph_elements(g)) for g in data.splits[name])
    assert data.manifest.holdout == {"kind": "row", "values": [2]}
    del rows_of
