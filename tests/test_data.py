"""Readers, omission splits, graph construction, the graph cache and bad data."""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from typer.testing import CliRunner

from tests.conftest import MP_FILE, PEROV_FILE, needs_shared
from traits.cli import app
from traits.data.graphs import (
    GraphCache,
    atom_feature_table,
    build_graphs,
    entry_key,
    expand_distances,
    graph_elements,
    structure_graph,
)
from traits.data.prepare import prepare_data, split_statistics
from traits.data.sources import Entry, read_csv, read_jarvis, read_mp, read_source, sample_path
from traits.data.splits import SPLIT_SCHEME, assign_splits
from traits.errors import DataError, GraphError, OutputError
from traits.spec import GraphSpec, spec_from_mapping

runner = CliRunner()


def nacl() -> Structure:
    return Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def fe2o3_like() -> Structure:
    return Structure(Lattice.hexagonal(5.0, 13.7), ["Fe", "Fe", "O", "O", "O"],
                     [[0, 0, 0.35], [0, 0, 0.65], [0.3, 0, 0.25], [0, 0.3, 0.25], [0.7, 0.7, 0.25]])


def mp_records(n_plain: int = 6, n_fe: int = 3) -> list[dict]:
    recs = []
    for i in range(n_plain):
        s = nacl()
        s.scale_lattice(s.volume * (1 + 0.02 * i))
        recs.append({"material_id": f"mp-{i}", "formation_energy_per_atom": -1.0 - 0.1 * i,
                     "band_gap": 2.0, "cif": s.to(fmt="cif")})
    for i in range(n_fe):
        s = fe2o3_like()
        s.scale_lattice(s.volume * (1 + 0.02 * i))
        recs.append({"material_id": f"mp-fe{i}", "formation_energy_per_atom": -0.5,
                     "band_gap": 0.1 * i, "structure": s.as_dict()})
    return recs


def write_jsonl(path: Path, recs: list[dict], gz: bool = True) -> Path:
    opener = gzip.open if gz else open
    with opener(path, "wt") as fh:
        for r in recs:
            fh.write(json.dumps(r) + "\n")
    return path


def spec_for(path: Path | None, source: str = "mp", **extra) -> object:
    raw = {"name": "t", "data": {"source": source, "target": "formation_energy_per_atom"},
           "omit": ["Fe"], "split": {"train": 0.6, "val": 0.2, "test": 0.2}, "model": {"train": {}}}
    if path is not None:
        raw["data"]["path"] = str(path)
    raw.update(extra)
    return spec_from_mapping(raw)


# ---------------------------------------------------------------- readers

def test_mp_reader_accepts_cif_and_structure_dicts_gzip_or_plain(tmp_path):
    recs = mp_records()
    for gz in (True, False):
        data = read_mp(write_jsonl(tmp_path / f"d{gz}.jsonl", recs, gz), "formation_energy_per_atom")
        assert [e.id for e in data.entries] == [r["material_id"] for r in recs]
        assert {e.fmt for e in data.entries} == {"cif", "pymatgen-dict"}
        assert data.entries[0].structure().composition.reduced_formula == "NaCl"
        assert data.entries[-1].structure().composition.reduced_formula == "Fe2O3"
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps(recs))
    assert len(read_mp(listed, "band_gap").entries) == len(recs)


def test_jarvis_reader(tmp_path):
    s = nacl()
    atoms = {"lattice_mat": s.lattice.matrix.tolist(), "coords": s.frac_coords.tolist(),
             "elements": ["Na", "Cl"], "cartesian": False}
    recs = [{"jid": "JVASP-1", "atoms": atoms, "formation_energy_peratom": -2.1, "optb88vdw_bandgap": 5.0},
            {"jid": "JVASP-2", "atoms": atoms, "formation_energy_peratom": "na", "optb88vdw_bandgap": 1.0}]
    path = tmp_path / "jarvis.json"
    path.write_text(json.dumps(recs))
    data = read_jarvis(path, "formation_energy_per_atom")
    assert [e.id for e in data.entries] == ["JVASP-1"]
    assert data.skipped["missing or non-numeric target"] == 1
    st = data.entries[0].structure()
    assert st.composition.reduced_formula == "NaCl"
    assert np.allclose(st.lattice.abc, s.lattice.abc)
    assert read_jarvis(path, "band_gap").entries[1].target == 1.0


def test_csv_reader_with_named_columns(tmp_path):
    path = tmp_path / "p.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["material_id", "heat_ref", "cif"])
        w.writerow(["a", "1.5", nacl().to(fmt="cif")])
        w.writerow(["b", "nan", nacl().to(fmt="cif")])
        w.writerow(["c", "0.5", "not a cif"])
    data = read_csv(path, "formation_energy_per_atom", column="heat_ref")
    assert [e.id for e in data.entries] == ["a", "c"]
    assert data.skipped["missing or non-numeric target"] == 1
    with pytest.raises(DataError, match="column"):
        read_csv(path, "band_gap")


@needs_shared(PEROV_FILE)
def test_csv_reader_on_real_perovskites():
    data = read_csv(PEROV_FILE, "band_gap", column="ind_gap")
    assert len(data.entries) == 7572
    assert len(data.entries[0].structure()) == 5


@needs_shared(MP_FILE)
def test_bundled_sample_is_a_subset_of_the_shared_data():
    sample = read_source(spec_for(None, source="sample").data)
    assert len(sample.entries) == 2000
    assert sum("Fe" in graph_elements_from_entry(e) for e in sample.entries[:400]) > 0
    wanted = {e.id: e for e in sample.entries}
    found = 0
    with gzip.open(MP_FILE, "rt") as fh:
        for line in fh:
            rec = json.loads(line)
            if rec["material_id"] in wanted:
                e = wanted[rec["material_id"]]
                assert e.target == rec["formation_energy_per_atom"] and e.payload == rec["cif"]
                found += 1
    assert found == len(wanted)


def graph_elements_from_entry(entry: Entry) -> set[str]:
    return {el.symbol for el in entry.structure().composition}


def test_truncated_gzip_is_a_clear_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl.gz", mp_records())
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="truncated"):
        read_mp(path, "band_gap")


def test_truncated_json_and_missing_file(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(mp_records())[:-50])
    with pytest.raises(DataError, match="truncated"):
        read_mp(path, "band_gap")
    with pytest.raises(DataError, match="no such data file"):
        read_mp(tmp_path / "absent.json", "band_gap")


def test_missing_target_field_everywhere_is_an_error(tmp_path):
    recs = [{k: v for k, v in r.items() if k != "band_gap"} for r in mp_records()]
    with pytest.raises(DataError, match="band_gap"):
        read_mp(write_jsonl(tmp_path / "d.jsonl", recs), "band_gap")


def test_bad_cif_and_nan_target_are_skipped_and_counted(tmp_path):
    recs = mp_records()
    recs.append({"material_id": "bad-cif", "formation_energy_per_atom": -1.0, "cif": "data_x\n_cell_length_a 1\n"})
    recs.append({"material_id": "nan", "formation_energy_per_atom": float("nan"), "cif": recs[0]["cif"]})
    recs.append({"material_id": "none", "formation_energy_per_atom": None, "cif": recs[0]["cif"]})
    prepared = prepare_data(spec_for(write_jsonl(tmp_path / "d.jsonl", recs)))
    assert prepared.skipped["unreadable structure"] == 1
    assert prepared.skipped["missing or non-numeric target"] == 2
    assert sum(len(v) for v in prepared.splits.values()) == len(recs) - 3


def test_empty_ood_set_is_a_clear_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", mp_records())
    with pytest.raises(DataError, match="no compound contains U"):
        prepare_data(spec_for(path, omit=["U"]))


def test_isolated_atom_dropped_with_count_or_error(tmp_path):
    lonely = Structure(Lattice.cubic(12.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    recs = mp_records() + [{"material_id": "lonely", "formation_energy_per_atom": 0.0,
                            "cif": lonely.to(fmt="cif")}]
    path = write_jsonl(tmp_path / "d.jsonl", recs)
    graph = {"cutoff": 5.5}
    prepared = prepare_data(spec_for(path, data={"source": "mp", "path": str(path),
                                                 "target": "formation_energy_per_atom", "graph": graph}))
    reason = next(k for k in prepared.skipped if "no neighbour" in k)
    assert prepared.skipped[reason] == 1 and "cutoff" in reason
    with pytest.raises(GraphError, match="increase data.graph.cutoff"):
        structure_graph(lonely, GraphSpec(cutoff=5.5))
    with pytest.raises(GraphError):
        prepare_data(spec_for(path, data={"source": "mp", "path": str(path), "target": "formation_energy_per_atom",
                                          "graph": graph | {"isolated_atoms": "error"}}))


def test_unwritable_output_directory(tmp_path):
    prepared = prepare_data(spec_for(write_jsonl(tmp_path / "d.jsonl", mp_records())))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot"):
        prepared.manifest.write(blocker / "sub" / "manifest.json")
    assert blocker.read_text() == "x"


# ---------------------------------------------------------------- splits

def toy_pool(n=400, seed=0):
    rng = np.random.default_rng(seed)
    pool = ["Na", "Cl", "O", "Fe", "Si", "Li"]
    ids = [f"c{i}" for i in range(n)]
    elements = [set(rng.choice(pool, size=rng.integers(1, 4), replace=False)) for _ in range(n)]
    return ids, elements


def test_omission_split_no_leakage_and_deterministic():
    ids, elements = toy_pool()
    fr = {"train": 0.8, "val": 0.1, "test": 0.1}
    m1 = assign_splits(ids, elements, ["Fe", "O"], fr, seed=3)
    m2 = assign_splits(ids, elements, ["Fe", "O"], fr, seed=3)
    assert m1.ids == m2.ids and m1.hash == m2.hash
    lookup = dict(zip(ids, elements))
    for split in ("train", "val", "id"):
        assert all(not ({"Fe", "O"} & lookup[i]) for i in m1.ids[split])
    assert all({"Fe", "O"} & lookup[i] for i in m1.ids["ood"])
    assert sorted(sum(m1.ids.values(), [])) == sorted(ids)
    n_id = len(ids) - len(m1.ids["ood"])
    assert abs(len(m1.ids["train"]) - 0.8 * n_id) <= 1
    m3 = assign_splits(ids, elements, ["Fe", "O"], fr, seed=4)
    assert m3.ids["train"] != m1.ids["train"] and m3.ids["ood"] == m1.ids["ood"]


def test_split_independent_of_input_order():
    ids, elements = toy_pool()
    fr = {"train": 0.8, "val": 0.1, "test": 0.1}
    perm = np.random.default_rng(1).permutation(len(ids))
    a = assign_splits(ids, elements, ["Fe"], fr, seed=0)
    b = assign_splits([ids[i] for i in perm], [elements[i] for i in perm], ["Fe"], fr, seed=0)
    assert a.ids == b.ids


def test_random_baseline_split_and_empty_splits():
    ids, elements = toy_pool(100)
    fr = {"train": 0.8, "val": 0.1, "test": 0.1}
    m = assign_splits(ids, elements, [], fr, seed=0, ood_fraction=0.2)
    assert len(m.ids["ood"]) == 20 and sum(len(v) for v in m.ids.values()) == 100
    with pytest.raises(DataError, match="empty"):
        assign_splits(ids[:3], elements[:3], [], fr, seed=0)
    with pytest.raises(DataError, match="duplicate"):
        assign_splits(["a", "a"], [{"Na"}, {"Cl"}], [], fr, seed=0)


def test_random_baselines_of_different_shares_are_independent_partitions():
    """Two random baselines at one seed must be two draws (a noise floor pools them), not nested holdouts
    sharing one ID test set: their overlaps sit near chance (share x share), never near containment."""
    ids, elements = toy_pool(4000)
    fr = {"train": 0.8, "val": 0.1, "test": 0.1}
    a, b = (assign_splits(ids, elements, [], fr, seed=0, ood_fraction=f) for f in (0.15, 0.2))
    ood_a, ood_b, id_a, id_b = set(a.ids["ood"]), set(b.ids["ood"]), set(a.ids["id"]), set(b.ids["id"])
    assert len(ood_a) == 600 and len(ood_b) == 800
    assert len(ood_a & ood_b) / len(ood_a) < 0.35      # chance: 0.20 of them; nested: 1.0
    assert len(id_a & id_b) / len(id_a) < 0.25         # chance: about 0.1; one shared ID set: 1.0
    again = assign_splits(ids, elements, [], fr, seed=0, ood_fraction=0.15)
    assert again.ids == a.ids and again.to_dict()["scheme"] == SPLIT_SCHEME


def test_omission_split_is_one_permutation_of_the_sorted_pool():
    """An omission split is the seed's permutation of the sorted in-distribution ids, cut by the fractions,
    as in every earlier split scheme: the random-holdout change moved no omission compound."""
    ids, elements = toy_pool()
    fr = {"train": 0.8, "val": 0.1, "test": 0.1}
    m = assign_splits(ids, elements, ["Fe"], fr, seed=7)
    pool = sorted(i for i, e in zip(ids, elements) if "Fe" not in e)
    order = [pool[j] for j in np.random.default_rng(7).permutation(len(pool))]
    n_train, n_val = round(0.8 * len(pool)), round(0.1 * len(pool))
    assert m.ids["train"] == order[:n_train] and m.ids["val"] == order[n_train:n_train + n_val]
    assert m.ids["id"] == order[n_train + n_val:]


def test_split_statistics_counts_omitted_and_unseen(tmp_path):
    prepared = prepare_data(spec_for(write_jsonl(tmp_path / "d.jsonl", mp_records())))
    stats = split_statistics(prepared.splits, ["Fe"])
    assert stats["ood"]["with_omitted"]["Fe"] == stats["ood"]["count"] == 3
    assert stats["train"]["with_omitted"]["Fe"] == 0
    assert "Fe" in stats["ood"]["elements_unseen_in_train"]
    ys = [float(g.y) for g in prepared.splits["ood"]]
    assert math.isclose(stats["ood"]["target_mean"], float(np.mean(ys)), rel_tol=1e-6)


# ---------------------------------------------------------------- graphs

def reference_neighbours(structure, cutoff, k):
    """Per atom, the sorted distances of its k nearest neighbours, from pymatgen's get_all_neighbors."""
    return [sorted(n.nn_distance for n in nbrs)[:k] for nbrs in structure.get_all_neighbors(cutoff)]


@pytest.mark.parametrize("make", [nacl, fe2o3_like])
def test_graph_distances_match_pymatgen(make):
    s = make()
    settings = GraphSpec(cutoff=6.0, max_neighbors=8)
    g = structure_graph(s, settings)
    assert g.z.tolist() == [site.specie.Z for site in s]
    ref = reference_neighbours(s, 6.0, 8)
    for i, dists in enumerate(ref):
        mine = sorted(g.dist[g.edge_index[1] == i].tolist())
        assert np.allclose(mine, dists, atol=1e-5)
    for e in range(g.edge_index.shape[1]):
        j, i = g.edge_index[:, e].tolist()
        # the edge length is a periodic-image distance between atoms i and j
        d = s.get_distance(i, j, jimage=None)
        assert g.dist[e] >= d - 1e-5


def test_padding_like_original_cgcnn():
    s = Structure(Lattice.cubic(4.0), ["Na"], [[0, 0, 0]])  # 6 neighbours at 4 Å within 4.5 Å
    g = structure_graph(s, GraphSpec(cutoff=4.5, max_neighbors=12, pad_neighbors=True))
    assert g.edge_index.shape[1] == 12
    assert sorted(g.dist.tolist())[-6:] == [5.5] * 6
    assert (g.dist[:6] < 4.01).all()


def test_gaussian_expansion_and_features():
    settings = GraphSpec()
    e = expand_distances(torch.tensor([0.0, 4.0]), settings)
    assert e.shape == (2, 41)
    assert e[0, 0] == 1.0 and e[1, 20] == 1.0
    assert torch.isclose(e[1, 21], torch.exp(torch.tensor(-1.0)))
    table = atom_feature_table()
    assert table.shape == (101, 92) and not torch.isnan(table[1:]).any()


def test_graph_cache_skips_rebuilding(tmp_path):
    """The cache keeps the graphs of structures pymatgen parses (here the structure dicts); the P1 CIFs the fast
    path reads are built again every time, never cached (building them is faster than reading them back)."""
    path = write_jsonl(tmp_path / "d.jsonl", mp_records())
    entries = read_mp(path, "formation_energy_per_atom").entries
    fast = [e for e in entries if e.fmt == "cif"]
    cache = GraphCache(tmp_path / "cache")
    first = build_graphs(entries, GraphSpec(), cache=cache)
    assert first.built == len(entries) and first.cache_hits == 0 and 0 < len(fast) < len(entries)
    assert not any(cache._path(entry_key(e, GraphSpec())).exists() for e in fast)
    second = build_graphs(entries, GraphSpec(), cache=GraphCache(tmp_path / "cache"))
    assert second.built == len(fast) and second.cache_hits == len(entries) - len(fast)
    for a, b in zip(first.graphs, second.graphs):
        assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.edge_attr, b.edge_attr)
    other = build_graphs(entries, GraphSpec(cutoff=6.0), cache=GraphCache(tmp_path / "cache"))
    assert other.built == len(entries)  # other settings, other key
    # a damaged cache file is rebuilt, not trusted
    victim = cache._path(entry_key(entries[-1], GraphSpec()))
    victim.write_bytes(b"garbage")
    third = build_graphs(entries, GraphSpec(), cache=GraphCache(tmp_path / "cache"))
    assert third.built == len(fast) + 1


def test_sample_graphs_and_elements():
    assert sample_path().is_file()
    prepared = prepare_data(spec_for(None, source="sample", data={
        "source": "sample", "target": "formation_energy_per_atom", "subsample": 120}))
    assert sum(len(v) for v in prepared.splits.values()) == 120
    assert all("Fe" in graph_elements(g) for g in prepared.splits["ood"])


def test_cli_data_prints_split_table(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", mp_records())
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps({"name": "t", "data": {"source": "mp", "path": str(path),
                                "target": "formation_energy_per_atom"}, "omit": ["Fe"],
                                "split": {"train": 0.6, "val": 0.2, "test": 0.2}, "model": {"train": {}}}))
    manifest = tmp_path / "m.json"
    result = runner.invoke(app, ["data", str(spec), "--manifest", str(manifest)])
    assert result.exit_code == 0, result.output
    for word in ("train", "val", "ood", "with Fe", "mean", "eV/atom"):
        assert word in result.output
    saved = json.loads(manifest.read_text())
    assert saved["counts"]["ood"] == 3 and saved["manifest_hash"]
    result = runner.invoke(app, ["data", str(spec), "--manifest", "/proc/forbidden/m.json"])
    assert result.exit_code == 2 and "cannot" in result.output


def test_cli_data_exits_2_on_bad_data(tmp_path):
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(os.urandom(64))
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: t\ndata: {{source: mp, path: {path}, target: band_gap}}\nomit: [Fe]\n"
                    "model: {train: {}}\n")
    result = runner.invoke(app, ["data", str(spec)])
    assert result.exit_code == 2 and "Traceback" not in result.output


@pytest.mark.parametrize("layout", ["list", "lines"])
def test_an_integer_too_long_for_python_is_a_data_error_naming_the_file(tmp_path, layout):
    """json.loads raises a plain ValueError (not a JSONDecodeError) for an integer beyond Python's digit limit:
    the data reader must still answer with a DataError naming the file (exit 2), not an internal error."""
    from traits.data.sources import read_mp
    from traits.errors import DataError

    record = '{"material_id": "mp-1", "formation_energy_per_atom": ' + "1" * 5000 + ', "cif": "x"}'
    path = tmp_path / "long.json"
    path.write_text("[" + record + "]" if layout == "list" else record + "\n")
    with pytest.raises(DataError, match="long.json.*not valid JSON"):
        read_mp(path, "formation_energy_per_atom")
