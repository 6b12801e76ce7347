"""Issue 31, item 9: a structure with a partly occupied site is skipped and counted with its reason (graph
building, adapter featurisation, ``traits data``), never an internal error."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from pymatgen.core import Lattice, Structure
from typer.testing import CliRunner

from traits.cli import app
from traits.data.graphs import DisorderedStructure, GraphCache, GraphError, build_graphs, structure_graph
from traits.data.sources import Entry
from traits.models.base import Adapter, FeaturiseError
from traits.spec import GraphSpec

MESSAGE = "site 1 is disordered (partial occupancy: Fe0.5 Ni0.5); TRAITS models need ordered structures"
SKIPPED = "disordered structure (partial occupancy)"
runner = CliRunner()


def rocksalt(a: float = 4.2) -> Structure:
    return Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def disordered(a: float = 4.2) -> Structure:
    """Rock salt with its second site half Fe, half Ni."""
    return Structure(Lattice.cubic(a), ["O", {"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0], [0.5, 0.5, 0.5]])


def entry(name: str, structure: Structure, target: float = -1.0) -> Entry:
    return Entry(id=name, target=target, payload=json.dumps(structure.as_dict()), fmt="pymatgen-dict")


def test_graph_of_a_disordered_structure_names_the_site_and_its_occupancy():
    with pytest.raises(DisorderedStructure) as err:
        structure_graph(disordered(), GraphSpec())
    assert str(err.value) == MESSAGE
    assert isinstance(err.value, GraphError)  # callers that catch GraphError (predict on a file) still catch it
    vacancy = Structure(Lattice.cubic(4.2), ["O", {"Fe": 0.75}], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(DisorderedStructure, match=r"site 1 is disordered \(partial occupancy: Fe0\.75\)"):
        structure_graph(vacancy, GraphSpec())


@pytest.mark.parametrize("isolated_atoms", ["drop", "error"])
def test_build_graphs_skips_and_counts_a_disordered_record(isolated_atoms):
    entries = [entry("good-1", rocksalt()), entry("bad", disordered()), entry("good-2", rocksalt(4.3))]
    out = build_graphs(entries, GraphSpec(isolated_atoms=isolated_atoms), cache=GraphCache(enabled=False))
    assert [g.material_id for g in out.graphs] == ["good-1", "good-2"]
    assert out.skipped == Counter({SKIPPED: 1})


class RecordingAdapter(Adapter):
    """An adapter whose featuriser records what it is given (a stand-in for a library that crashes on
    disordered sites: it must never see one)."""

    name = "recording"
    seen: list

    def __init__(self):
        self.seen = []

    def featurise(self, structure, options=None):
        self.seen.append(structure.composition.reduced_formula)
        return torch.tensor([float(site.specie.Z) for site in structure])  # raises on a disordered site


def test_adapter_featurisation_refuses_a_disordered_structure_before_its_featuriser():
    adapter = RecordingAdapter()
    with pytest.raises(FeaturiseError) as err:
        adapter.featurise_structure("bad", disordered(), -1.0, None)
    assert str(err.value) == MESSAGE and adapter.seen == []
    items, skipped = adapter.featurise_entries([entry("good", rocksalt()), entry("bad", disordered())], None)
    assert [i.material_id for i in items] == ["good"] and adapter.seen == ["NaCl"]
    assert sum(skipped.values()) == 1 and "is disordered (partial occupancy: Fe0.5 Ni0.5)" in next(iter(skipped))


def test_cgcnn_featurisation_refuses_a_disordered_structure():
    from traits.models.cgcnn import CGCNNAdapter

    with pytest.raises(FeaturiseError, match=r"site 1 is disordered \(partial occupancy: Fe0\.5 Ni0\.5\)"):
        CGCNNAdapter().featurise_structure("bad", disordered(), -1.0, None)


def test_cli_data_counts_a_disordered_record(tmp_path):
    records = [{"material_id": f"mp-{i}", "formation_energy_per_atom": -1.0 - 0.1 * i, "band_gap": 1.0,
                "cif": rocksalt(4.2 + 0.05 * i).to(fmt="cif")} for i in range(6)]
    records += [{"material_id": f"mp-fe{i}", "formation_energy_per_atom": -0.5, "band_gap": 0.0,
                 "structure": Structure(Lattice.cubic(4.0 + 0.05 * i), ["Fe", "O"],
                                        [[0, 0, 0], [0.5, 0.5, 0.5]]).as_dict()} for i in range(3)]
    records.append({"material_id": "mp-disordered", "formation_energy_per_atom": -0.7, "band_gap": 0.0,
                    "structure": disordered().as_dict()})
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps({"name": "t", "data": {"source": "mp", "path": str(path),
                                "target": "formation_energy_per_atom"}, "omit": ["Fe"],
                                "split": {"train": 0.6, "val": 0.2, "test": 0.2}, "model": {"train": {}}}))
    result = runner.invoke(app, ["data", str(spec)])
    assert result.exit_code == 0, result.output
    assert f"skipped 1: {SKIPPED}" in result.output
    assert "10 records read" in result.output
