"""Audit specs: valid specs load, every kind of bad spec gets an error naming file and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from traits.cli import app
from traits.errors import SpecError
from traits.spec import AuditSpec, load_spec, spec_json_schema

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def base_spec() -> dict:
    return {
        "name": "t",
        "data": {"source": "sample", "target": "formation_energy_per_atom"},
        "omit": ["Fe"],
        "model": {"architecture": "cgcnn", "train": {"epochs": 1}},
    }


def write(tmp_path: Path, spec: dict, suffix: str = ".yaml") -> Path:
    path = tmp_path / f"spec{suffix}"
    path.write_text(json.dumps(spec) if suffix == ".json" else yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_valid_spec_loads_with_defaults(tmp_path, suffix):
    spec = load_spec(write(tmp_path, base_spec(), suffix))
    assert isinstance(spec, AuditSpec)
    assert spec.omit == ["Fe"]
    assert spec.data.graph.cutoff == 8.0 and spec.data.graph.max_neighbors == 12
    assert spec.probes.hessian.top_k == 5
    assert spec.report.out_dir == (tmp_path / "traits-out").resolve()


def bad(mutate) -> dict:
    spec = base_spec()
    mutate(spec)
    return spec


BAD_SPECS = {
    "unknown top-level key": (bad(lambda s: s.update(colour="red")), "colour", "unknown key"),
    "unknown nested key": (bad(lambda s: s["data"].update(cutof=5)), "data.cutof", "unknown key"),
    "invalid element": (bad(lambda s: s.update(omit=["Xx"])), "omit", "'Xx' is not a chemical element"),
    "duplicate element": (bad(lambda s: s.update(omit=["O", "O"])), "omit", "twice"),
    "negative fraction": (bad(lambda s: s.update(split={"train": -0.1, "val": 0.6, "test": 0.5})),
                          "split.train", "greater than 0"),
    "fractions not summing to one": (bad(lambda s: s.update(split={"train": 0.5, "val": 0.1, "test": 0.1})),
                                     "split", "sum to 1"),
    "unknown target": (bad(lambda s: s["data"].update(target="bandgap")), "data.target", "unknown target"),
    "path missing for csv": (bad(lambda s: s["data"].update(source="csv")), "data", "needs a 'path'"),
    "neither checkpoint nor train": (bad(lambda s: s["model"].pop("train")), "model", "either 'checkpoint'"),
    "bad device": (bad(lambda s: s.update(device="tpu")), "device", "'auto', 'cpu' or 'cuda'"),
    "probes without ood": (bad(lambda s: s.update(probes={"splits": ["id"]})), "probes.splits", "both"),
    "missing name": (bad(lambda s: s.pop("name")), "name", "Field required"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_names_file_and_field(tmp_path, case):
    spec, field, message = BAD_SPECS[case]
    path = write(tmp_path, spec)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    text = str(info.value)
    assert str(path) in text
    assert f"- {field}:" in text
    assert message in text


def test_missing_files_are_caught(tmp_path):
    spec = base_spec()
    spec["data"] = {"source": "mp", "path": "nowhere.jsonl", "target": "band_gap"}
    spec["model"] = {"checkpoint": "absent.safetensors"}
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, spec))
    assert "data.path: no such file" in str(info.value)
    assert "model.checkpoint: no such file" in str(info.value)


def test_unparseable_and_non_mapping_files(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(broken)
    listy = tmp_path / "list.json"
    listy.write_text("[1, 2]")
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(listy)
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "absent.yaml")


def test_relative_paths_and_env_expansion(tmp_path, monkeypatch):
    data = tmp_path / "store" / "d.jsonl"
    data.parent.mkdir()
    data.write_text("{}\n")
    spec = base_spec()
    spec["data"] = {"source": "mp", "path": "${TRAITS_DATA}/d.jsonl", "target": "band_gap"}
    monkeypatch.setenv("TRAITS_DATA", str(data.parent))
    assert load_spec(write(tmp_path, spec)).data.path == data
    spec["data"]["path"] = "store/d.jsonl"
    assert load_spec(write(tmp_path, spec)).data.path == data


def test_overrides_apply_before_validation(tmp_path):
    path = write(tmp_path, base_spec())
    assert load_spec(path, overrides={"data.subsample": 50}).data.subsample == 50
    with pytest.raises(SpecError, match="data.subsample"):
        load_spec(path, overrides={"data.subsample": -1})


def test_cli_validate_exit_codes(tmp_path):
    good = write(tmp_path, base_spec())
    result = runner.invoke(app, ["validate", str(good)])
    assert result.exit_code == 0, result.output
    assert "valid audit spec" in result.output
    bad_path = write(tmp_path, bad(lambda s: s.update(omit=["Qq"])), ".json")
    result = runner.invoke(app, ["validate", str(bad_path)])
    assert result.exit_code == 2
    assert "omit" in result.output and "Traceback" not in result.output


def test_schema_is_json_and_describes_spec():
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert schema == json.loads(json.dumps(spec_json_schema()))
    assert {"name", "data", "omit", "model", "probes", "gates", "report"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("path", sorted(p for p in (ROOT / "audits").rglob("*.yaml") if p.name != "campaign.yaml"),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_specs_validate(path):
    load_spec(path, check_files=False)
