"""Hostile inputs, second round: a compare gate's metric name that is not a plain key (F8), integers too long
for Python to read in a spec, results file, checkpoint sidecar or gates file, a lone surrogate in a results
file, the torch adapter's in-memory placeholder named by a spec, and data.target_column with data.target: model.
Each is bad input (exit 2) naming the file and the field, not an internal error (exit 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from result_factory import make_result
from typer.testing import CliRunner

from traits.cli import app
from traits.compare import read_gates
from traits.errors import CheckpointError, SpecError, TraitsError
from traits.models.checkpoint import _read_sidecar
from traits.models.torch_module import IN_MEMORY, TorchModuleOptions
from traits.results import load_result
from traits.spec import load_spec

runner = CliRunner()
BIG = "1" * 5000  # more digits than Python's int string limit (4300)


def _output(res) -> str:
    return " ".join(res.output.split())


@pytest.fixture(scope="module")
def results_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("r") / "results.json"
    make_result().write(path)
    return path


def _spec_dict(**data) -> dict:
    return {"name": "s", "device": "cpu", "data": {"source": "sample", "target": "formation_energy_per_atom", **data},
            "model": {"architecture": "cgcnn", "hyper": {"atom_fea_len": 32, "n_conv": 2, "h_fea_len": 64},
                      "checkpoint": "model.safetensors"}}


# ------------------------------------------------------------------------------------------------ F8


FORGED = "\x1b]0;T\x07\x1b[2J\n::error title=f::forged <script>x</script>_ratio"


def test_a_gate_metric_that_is_not_a_plain_key_is_refused_naming_file_and_field(tmp_path, results_file):
    gates = tmp_path / "g2.yaml"
    gates.write_text(yaml.safe_dump({"gates": [{"metric": FORGED, "max_growth": 1.0}]}), encoding="utf-8")
    with pytest.raises(SpecError, match=r"g2\.yaml: gates\[0\]\.metric: .* is not a metric key"):
        read_gates(gates)
    res = runner.invoke(app, ["compare", str(results_file), str(results_file), "--gates", str(gates),
                              "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert "g2.yaml" in _output(res) and "metric" in _output(res)
    assert "\x07" not in res.output and "\n::error" not in res.output
    # catalogue names and plain ratio keys of the results still read
    gates.write_text(yaml.safe_dump({"gates": {"ood_mae": {"max_growth": 1.0}, "my_own_ratio": {"max_drop": 1.0}}}))
    assert sorted(g.metric for g in read_gates(gates)) == ["my_own_ratio", "ood_mae"]


# ------------------------------------------------------------------------------------- big integers


def test_an_integer_too_long_to_read_in_a_spec_is_bad_input_naming_the_file(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: s\nseed: {BIG}\n", encoding="utf-8")
    with pytest.raises(SpecError, match=r"spec\.yaml: .*4300"):
        load_spec(spec, check_files=False)
    spec_json = tmp_path / "spec.json"
    spec_json.write_text(f'{{"name": "s", "seed": {BIG}}}', encoding="utf-8")
    with pytest.raises(SpecError, match=r"spec\.json: .*4300"):
        load_spec(spec_json, check_files=False)
    res = runner.invoke(app, ["validate", str(spec)])
    assert res.exit_code == 2 and "spec.yaml" in _output(res), res.output


def test_an_integer_too_long_to_read_in_a_gates_file_is_bad_input_naming_the_file(tmp_path):
    gates = tmp_path / "gates.yaml"
    gates.write_text(f"gates: {{ood_mae: {{max_growth: {BIG}}}}}\n", encoding="utf-8")
    with pytest.raises(SpecError, match=r"gates\.yaml: .*4300"):
        read_gates(gates)


def test_an_integer_too_long_to_read_in_a_results_file_is_bad_input_naming_the_file(tmp_path, results_file):
    results = tmp_path / "results.json"
    results.write_text(results_file.read_text().replace('"seed": 0', f'"seed": {BIG}', 1), encoding="utf-8")
    assert BIG in results.read_text()
    with pytest.raises(TraitsError, match=r"results\.json: not a readable results file .*4300"):
        load_result(results)
    res = runner.invoke(app, ["report", str(results), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "results.json" in _output(res), res.output


def test_an_integer_too_long_to_read_in_a_checkpoint_sidecar_is_bad_input_naming_the_file(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    (tmp_path / "model.json").write_text(f'{{"format": {BIG}}}', encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"model\.json: unreadable checkpoint metadata .*4300"):
        _read_sidecar(weights, required=True)


# ------------------------------------------------------------------------------------- lone surrogates


def test_a_lone_surrogate_in_a_results_file_is_refused_naming_the_field(tmp_path, results_file):
    raw = json.loads(results_file.read_text())
    raw["name"] = "bad \ud800 name"
    results = tmp_path / "results.json"
    results.write_text(json.dumps(raw), encoding="utf-8")  # ensure_ascii: the valid JSON escape \ud800
    with pytest.raises(TraitsError, match=r"results\.json: invalid results file at name: .*lone surrogate"):
        load_result(results)
    res = runner.invoke(app, ["report", str(results), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "lone surrogate" in _output(res), res.output

    raw["name"] = "fine"
    raw["accuracy"]["id"]["ids"][0] = "mp-\udc00"
    results.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(TraitsError, match=r"at accuracy\.id\.ids\[0\]: .*lone surrogate"):
        load_result(results)
    raw["accuracy"]["id"]["ids"][0] = "mp-1"
    raw["ratios"]["x\ud83d_ratio"] = 1.0
    results.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(TraitsError, match=r"at ratios\.\(a key\): .*lone surrogate"):
        load_result(results)
    raw["ratios"].pop("x\ud83d_ratio")
    raw["name"] = "emoji \U0001f600 fine"  # a pair written as two escapes is one character: read
    results.write_text(json.dumps(raw), encoding="utf-8")
    assert load_result(results).name == "emoji \U0001f600 fine"


# ------------------------------------------------------------------------------ the in-memory placeholder


def test_a_spec_cannot_name_the_in_memory_model_placeholder(tmp_path):
    raw = _spec_dict()
    raw["model"] = {"architecture": "torch", "checkpoint": "model.pt", "options": {"module": IN_MEMORY}}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(SpecError, match=r"spec\.yaml[\s\S]*model\.options\.module[\s\S]*run_audit\(model=\.\.\.\)"):
        load_spec(spec, check_files=False)
    res = runner.invoke(app, ["validate", str(spec)])
    assert res.exit_code == 2 and "spec.yaml" in _output(res), res.output
    # what run_audit(model=...) builds itself still holds it
    assert TorchModuleOptions(module=IN_MEMORY).module == IN_MEMORY


# ------------------------------------------------------------------------- target_column, label-free


def test_target_column_with_a_label_free_target_is_refused_naming_both_fields(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(_spec_dict(target="model", target_column="energy")), encoding="utf-8")
    with pytest.raises(SpecError, match=r"spec\.yaml[\s\S]*data\.target_column[\s\S]*data\.target: model"):
        load_spec(spec, check_files=False)
    spec.write_text(yaml.safe_dump(_spec_dict(target="model")), encoding="utf-8")
    assert load_spec(spec, check_files=False).data.target_column is None
