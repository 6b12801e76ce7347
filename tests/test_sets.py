"""Audits on sets you name: ``data.sets {id, ood, train, val}`` instead of an omission split.

Set files are cut from the bundled sample: ID and train/val sets of compounds without Fe, an OOD set of
Fe compounds. Audits use the shipped quickstart checkpoint with probes shrunk to seconds.
"""

from __future__ import annotations

import copy
import gzip
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from tests.conftest import CGCNN_DIR, MP_FILE
from traits.cli import app
from traits.data.prepare import prepare_data
from traits.data.sources import file_hash, sample_path
from traits.errors import DataError, SpecError
from traits.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "traits" / "data" / "quickstart" / "model.safetensors"
PUBLISHED = ROOT / "audits" / "published-cgcnn"
PUBLISHED_SPEC = PUBLISHED / "formation-energy.yaml"
runner = CliRunner()

SIZES = {"train": 30, "val": 8, "id": 10, "ood": 10}
SMALL_PROBES = {
    "hessian": {"top_k": 2, "max_steps": 6, "trace_hvps": 3, "density_runs": 1, "density_steps": 4,
                "max_samples": 64},
    "surface": {"points_1d": 7, "points_2d": 5, "directions_1d": 1, "max_samples": 64},
}


def _elements(cif: str) -> set[str]:
    line = next(ln for ln in cif.splitlines() if ln.startswith("_chemical_formula_sum"))
    return {re.sub(r"[^A-Za-z]", "", tok) for tok in line.split(None, 1)[1].strip("'\" ").split()}


def write_set(path: Path, records: list[dict]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    return path


@pytest.fixture(scope="module")
def sample_records() -> dict[str, list[dict]]:
    """Disjoint record lists per split from the bundled sample (OOD = Fe compounds)."""
    with gzip.open(sample_path(), "rt", encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh]
    plain = [r for r in records if "Fe" not in _elements(r["cif"])]
    fe = [r for r in records if "Fe" in _elements(r["cif"])]
    out, start = {}, 0
    for name in ("train", "val", "id"):
        out[name] = plain[start : start + SIZES[name]]
        start += SIZES[name]
    out["ood"] = fe[: SIZES["ood"]]
    return out


@pytest.fixture
def set_dir(tmp_path, sample_records) -> Path:
    """A folder holding one file per split (train.jsonl.gz, val..., id..., ood...)."""
    for name, recs in sample_records.items():
        write_set(tmp_path / f"{name}.jsonl.gz", recs)
    return tmp_path


def write_spec(folder: Path, sets: dict | None = None, **extra) -> Path:
    raw = {
        "name": "named-sets", "device": "cpu",
        "data": {"source": "mp", "target": "formation_energy_per_atom",
                 "sets": sets if sets is not None else {"id": "id.jsonl.gz", "ood": "ood.jsonl.gz"}},
        "model": {"architecture": "cgcnn",
                  "hyper": {"atom_fea_len": 32, "n_conv": 2, "h_fea_len": 64, "n_h": 1},
                  "checkpoint": str(CHECKPOINT)},
        "probes": copy.deepcopy(SMALL_PROBES),
        "report": {"formats": ["json", "html"]},
    }
    for key, value in extra.items():
        node = raw
        *parents, leaf = key.split("__")
        for part in parents:
            node = node[part]
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def flat(text: str) -> str:
    """CLI output without the line breaks and spaces a console inserts when it wraps long paths."""
    return "".join(text.split())


def cli(*args) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


# ------------------------------------------------------------------------------------------ spec


def test_set_paths_resolve_against_the_spec_file(set_dir, monkeypatch):
    monkeypatch.chdir("/")
    spec = load_spec(write_spec(set_dir, {"id": "id.jsonl.gz", "ood": "./ood.jsonl.gz", "train": "train.jsonl.gz"}),
                     need_checkpoint=False)
    assert spec.data.path is None and spec.omit == []
    assert spec.data.sets.id == set_dir / "id.jsonl.gz"
    assert spec.data.sets.ood == set_dir / "ood.jsonl.gz"
    assert spec.data.sets.train == set_dir / "train.jsonl.gz" and spec.data.sets.val is None
    assert list(spec.data.sets.named()) == ["train", "id", "ood"]


def test_set_paths_expand_the_data_root(set_dir, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRAITS_DATA", str(set_dir))
    elsewhere = tmp_path_factory.mktemp("spec-elsewhere")
    spec = load_spec(write_spec(elsewhere, {"id": "${TRAITS_DATA}/id.jsonl.gz", "ood": "${TRAITS_DATA}/ood.jsonl.gz"}))
    assert spec.data.sets.id == set_dir / "id.jsonl.gz"


def test_validate_accepts_named_sets(set_dir):
    code, output = cli("validate", write_spec(set_dir))
    assert code == 0, output


@pytest.mark.parametrize("missing", ["id", "ood", "train", "val"])
def test_a_missing_set_file_is_exit_2_naming_it(set_dir, missing):
    sets = {name: f"{name}.jsonl.gz" for name in ("train", "val", "id", "ood")}
    sets[missing] = f"no-such-{missing}.jsonl.gz"
    spec = write_spec(set_dir, sets)
    for command in (["validate", spec], ["data", spec], ["audit", spec, "--out", set_dir / "out"]):
        code, output = cli(*command)
        assert code == 2, output
        assert f"data.sets.{missing}" in output and str(set_dir / f"no-such-{missing}.jsonl.gz") in flat(output)
    assert not (set_dir / "out" / "results.json").exists()


@pytest.mark.parametrize("change, field", [
    ({"omit": ["Fe"]}, "omit"),
    ({"split": {"train": 0.8, "val": 0.1, "test": 0.1}}, "split"),
    ({"data__path": "id.jsonl.gz"}, "path"),
    ({"data__subsample": 5}, "subsample"),
    ({"model__train": {"epochs": 1}}, "model.train"),
    ({"probes__splits": ["train", "id", "ood"]}, "probes.splits"),
    ({"probes__surface__directions": "hessian"}, "probes.surface.directions"),
])
def test_spec_conflicts_with_named_sets_are_exit_2_naming_the_field(set_dir, change, field):
    code, output = cli("validate", write_spec(set_dir, **change))
    assert code == 2, output
    assert field in output and "sets" in output


def test_empty_omit_is_allowed_with_sets(set_dir):
    assert load_spec(write_spec(set_dir, omit=[])).omit == []


def test_model_train_needs_train_and_val_sets(set_dir):
    sets = {"id": "id.jsonl.gz", "ood": "ood.jsonl.gz", "train": "train.jsonl.gz"}
    code, output = cli("validate", write_spec(set_dir, sets, model__train={"epochs": 1}))
    assert code == 2 and "data.sets.val" in output and "data.sets.train" not in output.split("needs", 1)[1][:30]
    sets["val"] = "val.jsonl.gz"
    code, output = cli("validate", write_spec(set_dir, sets, model__train={"epochs": 1}))
    assert code == 0, output


def test_the_same_file_for_two_sets_is_a_spec_error(set_dir):
    code, output = cli("validate", write_spec(set_dir, {"id": "id.jsonl.gz", "ood": "id.jsonl.gz"}))
    assert code == 2 and "sets.id" in output and "sets.ood" in output


# ------------------------------------------------------------------------------------------ data


def test_the_splits_are_exactly_the_named_structures(set_dir, sample_records):
    spec = load_spec(write_spec(set_dir, {k: f"{k}.jsonl.gz" for k in ("train", "val", "id", "ood")}))
    data = prepare_data(spec)
    assert list(data.splits) == ["train", "val", "id", "ood"]
    for name, recs in sample_records.items():
        assert [g.material_id for g in data.splits[name]] == [r["material_id"] for r in recs]  # file order
        assert data.manifest.ids[name] == [r["material_id"] for r in recs]
    assert data.n_read == sum(SIZES.values()) and not data.skipped


def test_without_train_and_val_those_splits_are_absent(set_dir, sample_records):
    data = prepare_data(load_spec(write_spec(set_dir)))
    assert set(data.splits) == {"id", "ood"} and set(data.manifest.ids) == {"id", "ood"}
    stats = data.stats([])
    assert set(stats) == {"id", "ood"}
    # no training set: nothing is called "unseen in train"
    assert all(s["elements_unseen_in_train"] == [] for s in stats.values())


def test_with_a_train_set_unseen_elements_are_counted(set_dir):
    data = prepare_data(load_spec(write_spec(set_dir, {"id": "id.jsonl.gz", "ood": "ood.jsonl.gz",
                                                       "train": "train.jsonl.gz"})))
    assert "Fe" in data.stats([])["ood"]["elements_unseen_in_train"]


def test_manifest_records_the_set_files_and_their_hashes(set_dir, sample_records):
    spec_path = write_spec(set_dir, {"id": "id.jsonl.gz", "ood": "ood.jsonl.gz", "train": "train.jsonl.gz"})
    manifest = set_dir / "manifest.json"
    code, output = cli("data", spec_path, "--manifest", manifest)
    assert code == 0, output
    assert "id" in output and "ood" in output and "sets used as given" in output
    saved = json.loads(manifest.read_text())
    assert set(saved["sets"]) == {"train", "id", "ood"}
    for name in ("train", "id", "ood"):
        entry = saved["sets"][name]
        assert entry["path"] == str(set_dir / f"{name}.jsonl.gz")
        assert entry["sha256"] == file_hash(set_dir / f"{name}.jsonl.gz")
        assert entry["records"] == entry["count"] == SIZES[name]
        assert saved["ids"][name] == [r["material_id"] for r in sample_records[name]]
    assert saved["counts"] == {"train": 30, "id": 10, "ood": 10}
    assert saved["omit"] == [] and len(saved["manifest_hash"]) == 64
    before = saved["manifest_hash"]
    # another file content (same ids, another target) gives another manifest and data hash
    recs = [dict(r, formation_energy_per_atom=r["formation_energy_per_atom"] + 1) for r in sample_records["ood"]]
    write_set(set_dir / "ood.jsonl.gz", recs)
    again = prepare_data(load_spec(spec_path)).manifest
    assert again.hash != before and again.data_hash != saved["data_hash"]
    assert again.to_dict()["sets"]["ood"]["sha256"] == file_hash(set_dir / "ood.jsonl.gz")


def test_the_manifest_hash_does_not_depend_on_the_seed(set_dir):
    a = prepare_data(load_spec(write_spec(set_dir))).manifest
    b = prepare_data(load_spec(write_spec(set_dir, seed=7))).manifest
    assert a.hash == b.hash and a.ids == b.ids


@pytest.mark.parametrize("bad", ["ood", "id"])
def test_an_empty_set_is_exit_2_naming_the_file(set_dir, bad):
    (set_dir / f"{bad}.jsonl.gz").unlink()
    write_set(set_dir / f"{bad}.jsonl.gz", [])
    spec = write_spec(set_dir)
    for command in (["data", spec], ["audit", spec, "--out", set_dir / "out"]):
        code, output = cli(*command)
        assert code == 2, output
        assert str(set_dir / f"{bad}.jsonl.gz") in flat(output)


def test_a_set_with_only_unreadable_structures_is_empty(set_dir, sample_records):
    write_set(set_dir / "ood.jsonl.gz", [dict(r, cif="not a CIF") for r in sample_records["ood"]])
    with pytest.raises(DataError, match="the ood set is empty") as err:
        prepare_data(load_spec(write_spec(set_dir)))
    assert str(set_dir / "ood.jsonl.gz") in str(err.value)
    code, output = cli("data", write_spec(set_dir))
    assert code == 2 and str(set_dir / "ood.jsonl.gz") in flat(output)


def test_a_set_with_no_usable_record_is_exit_2(set_dir, sample_records):
    write_set(set_dir / "ood.jsonl.gz", [{k: v for k, v in r.items() if k != "formation_energy_per_atom"}
                                         for r in sample_records["ood"]])
    code, output = cli("data", write_spec(set_dir))
    assert code == 2 and str(set_dir / "ood.jsonl.gz") in flat(output)


def test_unreadable_structures_are_skipped_and_counted_per_set(set_dir, sample_records):
    recs = sample_records["ood"]
    write_set(set_dir / "ood.jsonl.gz", [dict(recs[0], cif="not a CIF"), *recs[1:]])
    data = prepare_data(load_spec(write_spec(set_dir)))
    assert len(data.splits["ood"]) == len(recs) - 1
    assert data.skipped == {"ood set: unreadable structure": 1}
    assert data.manifest.sets["ood"]["records"] == len(recs) and data.manifest.sets["ood"]["count"] == len(recs) - 1


def test_overlapping_ids_are_exit_2_naming_both_files(set_dir, sample_records):
    shared = sample_records["id"][:2]
    write_set(set_dir / "ood.jsonl.gz", sample_records["ood"] + shared)
    spec = write_spec(set_dir)
    for command in (["data", spec], ["audit", spec, "--out", set_dir / "out"]):
        code, output = cli(*command)
        assert code == 2, output
        text = flat(output)
        assert str(set_dir / "ood.jsonl.gz") in text and str(set_dir / "id.jsonl.gz") in text
        assert shared[0]["material_id"] in text
    assert not (set_dir / "out" / "results.json").exists()


def test_overlap_with_the_train_set_is_detected(set_dir, sample_records):
    write_set(set_dir / "train.jsonl.gz", sample_records["train"] + sample_records["ood"][-1:])
    spec = load_spec(write_spec(set_dir, {"id": "id.jsonl.gz", "ood": "ood.jsonl.gz", "train": "train.jsonl.gz"}))
    with pytest.raises(DataError, match="one set only") as err:
        prepare_data(spec)
    assert "train.jsonl.gz" in str(err.value) and "ood.jsonl.gz" in str(err.value)


def test_a_duplicate_id_within_one_set_is_an_error(set_dir, sample_records):
    write_set(set_dir / "id.jsonl.gz", sample_records["id"] + sample_records["id"][:1])
    with pytest.raises(DataError, match="duplicate|twice") as err:
        prepare_data(load_spec(write_spec(set_dir)))
    assert str(set_dir / "id.jsonl.gz") in str(err.value)


def test_the_sample_source_reads_set_files_in_the_mp_format(set_dir):
    data = prepare_data(load_spec(write_spec(set_dir, data__source="sample")))
    assert len(data.splits["id"]) == SIZES["id"] and len(data.splits["ood"]) == SIZES["ood"]


def test_a_spec_error_is_a_spec_error_through_the_api(set_dir):
    with pytest.raises(SpecError, match="omit"):
        load_spec(write_spec(set_dir, omit=["O"]))


# ------------------------------------------------------------------------------------------ audits


@pytest.fixture(scope="module")
def audited(tmp_path_factory, sample_records):
    """One audit on named ID and OOD sets (no train set), through the CLI."""
    folder = tmp_path_factory.mktemp("sets-audit")
    for name in ("id", "ood"):
        write_set(folder / f"{name}.jsonl.gz", sample_records[name])
    spec = write_spec(folder)
    out = folder / "out"
    code, output = cli("audit", spec, "--out", out)
    assert code in (0, 1), output
    return json.loads((out / "results.json").read_text()), out, sample_records


def test_probes_run_on_exactly_the_named_sets(audited):
    result, _, records = audited
    for name in ("id", "ood"):
        ids = [r["material_id"] for r in records[name]]
        assert result["accuracy"][name]["ids"] == ids
        assert result["hessian"][name]["n_samples"] == len(ids)  # full batch: max_samples 64 > 10
        assert result["surface"]["n_samples"][name] == len(ids)
    assert set(result["accuracy"]) == {"id", "ood"} and set(result["splits"]) == {"id", "ood"}


def test_no_train_set_skips_the_shift_distances_with_a_finding(audited):
    result, _, _ = audited
    shift = result["shift"]
    assert "train" not in shift["splits"] and shift["n_train"] == 0
    assert all(not s["distances"] for s in shift["splits"].values())
    assert not any(k.endswith("knn_ratio") or k.startswith("target_") for k in result["ratios"])
    assert any("training data is not given" in p for p in shift["problems"])
    statements = [f["statement"] for f in result["findings"]]
    assert any("training data is not given" in s for s in statements)
    # the target summaries per set are still there
    assert shift["splits"]["ood"]["targets"]["n"] == SIZES["ood"]


def test_no_unseen_in_train_claim_and_a_named_ood_set_in_statements(audited):
    result, _, _ = audited
    assert all(not s["elements_unseen_in_train"] for s in result["splits"].values())
    assert not any(f["id"] == "unseen_elements" for f in result["findings"])
    assert not any("random split" in f["statement"] for f in result["findings"])
    assert any("named OOD set (ood.jsonl.gz)" in f["statement"] for f in result["findings"])


def test_the_checkpoint_is_flagged_as_trained_on_other_data(audited):
    result, _, _ = audited
    ids = {f["id"] for f in result["findings"]}
    assert "checkpoint_split" in ids  # the quickstart checkpoint records another training split
    assert "checkpoint_omission" not in ids  # the named ID set holds no Fe, the element it was trained without


def test_the_audit_writes_the_manifest_and_a_report(audited):
    result, out, _ = audited
    manifest = json.loads((out / "split_manifest.json").read_text())
    assert set(manifest["sets"]) == {"id", "ood"}
    assert manifest["manifest_hash"] == result["provenance"]["manifest_hash"]
    assert result["spec"]["data"]["sets"]["ood"].endswith("ood.jsonl.gz")
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "training data is not given" in html
    assert "named OOD set ood.jsonl.gz" in html and "random held-out" not in html
    # no training set: the split table makes no claim about what training saw
    assert "Elements unseen in train" not in html and "the audit has no training set" in html


def test_a_past_sets_audit_re_renders(audited, tmp_path):
    _, out, _ = audited
    code, output = cli("report", out / "results.json", "--out", tmp_path / "again", "--format", "html")
    assert code == 0, output
    assert (tmp_path / "again" / "report.html").stat().st_size > 1000


def test_with_a_train_set_the_shift_distances_are_measured(set_dir):
    from traits.audit import run_audit

    spec = load_spec(write_spec(set_dir, {"id": "id.jsonl.gz", "ood": "ood.jsonl.gz", "train": "train.jsonl.gz"},
                                probes__hessian__enabled=False, probes__surface__enabled=False,
                                report__formats=["json"]))
    result = run_audit(spec, set_dir / "out", render=False)
    assert result.shift is not None and result.shift.n_train_total == SIZES["train"]
    assert not any("not given" in p for p in result.shift.problems)
    assert result.ratios.get("composition_knn_ratio") is not None
    assert result.splits["ood"].elements_unseen_in_train  # Fe is not in the train set


def test_training_on_named_train_and_val_sets(set_dir):
    from traits.train import train_model

    spec = load_spec(write_spec(set_dir, {k: f"{k}.jsonl.gz" for k in ("train", "val", "id", "ood")},
                                model__checkpoint=None, model__train={"epochs": 1, "batch_size": 16}))
    data = prepare_data(spec)
    trained = train_model(spec, data, set_dir / "model", device=torch.device("cpu"), resume=False, progress=False)
    assert trained.metadata["manifest_hash"] == data.manifest.hash


# ------------------------------------------------------------------------------------------ published spec


def test_the_published_cgcnn_sets_are_as_described():
    spec = load_spec(PUBLISHED_SPEC, check_files=False)
    assert spec.omit == [] and spec.data.sets is not None and spec.data.sets.train is None
    assert spec.model.architecture == "cgcnn-original" and spec.data.graph.pad_neighbors
    assert spec.probes.hessian.max_samples >= 100
    defaults = type(spec.probes.hessian)()
    for key in ("top_k", "max_steps", "tol", "trace_hvps", "density_runs", "density_steps"):
        assert getattr(spec.probes.hessian, key) == getattr(defaults, key), key
    data = prepare_data(spec)
    assert len(data.splits["id"]) == 100 and len(data.splits["ood"]) == 100 and not data.skipped
    from traits.data.graphs import graph_elements

    assert not any({"Fe", "O"} & graph_elements(g) for g in data.splits["id"])
    assert all("O" in graph_elements(g) for g in data.splits["ood"])


@pytest.mark.skipif(not (CGCNN_DIR / "formation-energy-per-atom.pth.tar").is_file(),
                    reason=f"{CGCNN_DIR} not available")
def test_the_published_cgcnn_spec_validates_with_its_checkpoint():
    code, output = cli("validate", PUBLISHED_SPEC)
    assert code == 0, output


@pytest.mark.slow
@pytest.mark.skipif(not MP_FILE.is_file(), reason=f"{MP_FILE} not available")
def test_the_published_cgcnn_sets_are_redrawn_identically(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("pick_sets", PUBLISHED / "pick_sets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(MP_FILE, tmp_path)
    for name in module.SETS:
        assert (tmp_path / name).read_bytes() == (PUBLISHED / name).read_bytes(), name
