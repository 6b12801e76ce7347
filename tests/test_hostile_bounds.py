"""Bounded inputs (issue 31, items 2, 3, 7, 10, 14 and 15): a compressed data file, a YAML file, a checkpoint
sidecar or one spec field cannot ask for unbounded memory or work, and bad values are refused as bad input
(exit 2) with a message naming the file and the field."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import traits.inputs
from traits.cli import app
from traits.data import sources
from traits.data.prepare import prepare_data
from traits.data.sources import read_ase, read_csv, read_mp
from traits.errors import CheckpointError, DataError, SpecError
from traits.inputs import MAX_YAML_VALUES, load_yaml_text
from traits.models import load_checkpoint
from traits.spec import load_spec, read_mapping, spec_json_schema

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "audits" / "quickstart.yaml"
CHECKPOINT = ROOT / "traits" / "data" / "quickstart" / "model.safetensors"
SAMPLE = ROOT / "traits" / "data" / "sample" / "mp_sample.jsonl.gz"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_bad_input(res, *needles: str) -> None:
    """Exit 2, no traceback, and every needle in the message."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    for needle in needles:
        assert needle in res.output, (needle, res.output)


def sample_lines(n: int) -> list[str]:
    with gzip.open(SAMPLE, "rt") as fh:
        return [line for _, line in zip(range(n), fh)]


def write_spec(path: Path, **changes) -> Path:
    """The quickstart spec (absolute checkpoint, no probes) with dotted ``changes``."""
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["model"]["checkpoint"] = str(CHECKPOINT)
    raw["device"] = "cpu"
    raw["probes"] = {"hessian": {"enabled": False}, "surface": {"enabled": False}, "shift": {"enabled": False}}
    raw["report"] = {"formats": ["json"], "out_dir": str(path.parent / "out")}
    for key, value in changes.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(raw))
    return path


# ------------------------------------------------------------------------------ item 2: multi-member gzip


def two_member_gzip(path: Path, first: bytes, last: bytes) -> Path:
    """A gzip file of two members: its trailer records only the (small) last member's size."""
    path.write_bytes(gzip.compress(first) + gzip.compress(last))
    return path


def test_a_multi_member_gzip_is_bounded_while_it_is_read_whatever_its_trailer_says(tmp_path, monkeypatch):
    line = sample_lines(1)[0].encode()
    big = line * (2_000_000 // len(line))  # ~2 MB of text, a few KB compressed
    path = two_member_gzip(tmp_path / "bomb.jsonl.gz", big, line)
    size = path.stat().st_size
    assert int.from_bytes(path.read_bytes()[-4:], "little") == len(line)  # the trailer claims one line
    # memory for four times the compressed file: the size check before reading passes, the text does not fit
    monkeypatch.setattr(traits.inputs, "available_memory", lambda: 8 * size)
    with pytest.raises(DataError, match="expands to more than") as err:
        read_mp(path, "formation_energy_per_atom")
    assert str(path) in str(err.value) and "available memory" in str(err.value)


def test_the_decompressed_limit_names_the_file_and_a_two_member_file_within_it_reads_whole(tmp_path, monkeypatch):
    lines = sample_lines(6)
    first, last = "".join(lines[:4]).encode(), "".join(lines[4:]).encode()
    path = two_member_gzip(tmp_path / "two.jsonl.gz", first, last)
    assert [e.id for e in read_mp(path, "band_gap").entries] == [json.loads(x)["material_id"] for x in lines]
    monkeypatch.setattr(sources, "MAX_TEXT_BYTES", len(first))
    with pytest.raises(DataError, match=r"two\.jsonl\.gz: the data file expands to more than .*MAX_TEXT_BYTES"):
        read_mp(path, "band_gap")


def test_a_compressed_ase_file_is_bounded_before_ase_reads_it(tmp_path, monkeypatch):
    pytest.importorskip("ase")
    path = two_member_gzip(tmp_path / "frames.xyz.gz", b"garbage line\n" * 100_000, b"2\n")
    monkeypatch.setattr(sources, "MAX_TEXT_BYTES", 10_000)
    with pytest.raises(DataError, match=r"frames\.xyz\.gz: the data file expands to more than"):
        read_ase(path, "formation_energy_per_atom")


# ------------------------------------------------------------------------------ item 3: YAML aliases

BOMB = """\
    kwargs:
      a: &a [x, x, x, x, x, x, x, x, x, x]
      b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
      c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
      d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
      e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
      f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
      g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
      h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
      i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def test_a_spec_with_a_yaml_alias_bomb_is_refused_naming_the_file_and_line(tmp_path):
    text = write_spec(tmp_path / "bomb.yaml").read_text()
    text = text.replace("model:\n", "model:\n  options:\n" + BOMB, 1)
    spec = tmp_path / "bomb.yaml"
    spec.write_text(text)
    assert len(text) < 4000
    line = next(n for n, row in enumerate(text.splitlines(), 1) if "*a" in row)
    res = invoke("validate", spec)
    assert_bad_input(res, "bomb.yaml", f"line {line}", "aliases")
    with pytest.raises(SpecError, match="aliases"):
        load_spec(spec)


def test_yaml_aliases_are_bounded_where_they_are_allowed(tmp_path):
    path = tmp_path / "campaign.yaml"
    bomb = "profiles:\n" + BOMB.replace("    kwargs:\n", "  p:\n")
    with pytest.raises(SpecError, match=f"campaign.yaml: line 7: the YAML expands to more than {MAX_YAML_VALUES:,}"):
        load_yaml_text(bomb, path, SpecError)
    with pytest.raises(SpecError, match="refers to itself"):
        load_yaml_text("a: &a [1, *a]\n", path, SpecError)
    # what a campaign.yaml of profiles uses, a merge key, still loads
    profiles = read_mapping(ROOT / "audits" / "reference" / "campaign.yaml")["profiles"]
    assert profiles["cpu-planes"]["data.subsample"] == profiles["cpu"]["data.subsample"]
    assert load_yaml_text("a: &a {x: 1}\nb:\n  <<: *a\n  y: 2\n", path, SpecError) == {"a": {"x": 1},
                                                                                         "b": {"x": 1, "y": 2}}


# ------------------------------------------------------------------------------ items 7 and 10: sidecars


def sidecar_copy(tmp_path: Path, section: str | None = None, **changes) -> Path:
    ckpt = tmp_path / "model.safetensors"
    shutil.copy(CHECKPOINT, ckpt)
    meta = json.loads(CHECKPOINT.with_suffix(".json").read_text())
    (meta[section] if section else meta).update(changes)
    ckpt.with_suffix(".json").write_text(json.dumps(meta))
    return ckpt


@pytest.mark.parametrize(("section", "changes", "field"), [
    ("hyper", {"n_conv": 13}, "hyper.n_conv"),  # the spec caps n_conv at 12
    ("hyper", {"atom_fea_len": "32"}, "hyper.atom_fea_len"),  # a string where a number belongs
    ("graph", {"gaussian_step": 1e-300}, "graph.gaussian_step"),
    ("graph", {"cutoff": "eight"}, "graph.cutoff"),
    ("graph", {"spacing": 1}, "graph.spacing"),
    (None, {"node_dim": 5000}, "node_dim"),
    (None, {"omit": ["Xx"]}, "omit"),
])
def test_a_sidecar_is_held_to_the_spec_bounds(tmp_path, section, changes, field):
    ckpt = sidecar_copy(tmp_path, section, **changes)
    with pytest.raises(CheckpointError, match=rf"model\.json: field '{field}'"):
        load_checkpoint(ckpt, device="cpu")


def test_traits_predict_refuses_an_unbounded_sidecar_with_exit_2(tmp_path):
    from pymatgen.core import Lattice, Structure

    cif = tmp_path / "nacl.cif"
    Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(cif))
    ckpt = sidecar_copy(tmp_path, "graph", gaussian_step="0.2")
    assert_bad_input(invoke("predict", "--checkpoint", ckpt, "--device", "cpu", cif), "model.json",
                     "graph.gaussian_step")
    ckpt = sidecar_copy(tmp_path, "hyper", n_conv=10**9)  # grew without end before it was bounded
    assert_bad_input(invoke("predict", "--checkpoint", ckpt, "--device", "cpu", cif), "model.json", "hyper.n_conv")


def test_state_dict_hyper_parameters_are_held_to_the_spec_bounds(tmp_path):
    import torch

    from traits.models import build_model

    path = tmp_path / "w.pt"
    torch.save(build_model("cgcnn", {"atom_fea_len": 8, "n_conv": 1, "h_fea_len": 8}).state_dict(), path)
    with pytest.raises(CheckpointError, match="w.pt: hyper-parameter 'n_conv'"):
        load_checkpoint(path, "state-dict", architecture="cgcnn", hyper={"atom_fea_len": 8, "n_conv": 13},
                        normalizer=(0.0, 1.0), device="cpu")


# ------------------------------------------------------------------------------ item 14: bounded fields


def _properties(schema: dict):
    for name, model in schema.get("$defs", {}).items():
        for field, prop in model.get("properties", {}).items():
            yield f"{name}.{field}", prop
    for field, prop in schema["properties"].items():
        yield f"AuditSpec.{field}", prop


def _types(prop: dict) -> list[dict]:
    return [p for p in prop.get("anyOf", [prop]) if p.get("type") not in (None, "null")]


def test_every_count_and_free_text_field_of_the_spec_has_an_upper_bound():
    """Integers need a maximum, strings other than choices and paths a maximum length (paths are bounded by a
    validator, see the test below), lists other than of choices a maximum number of items."""
    unbounded = []
    for where, prop in _properties(spec_json_schema()):
        for kind in _types(prop):
            if kind["type"] == "integer" and "maximum" not in kind and "exclusiveMaximum" not in kind:
                unbounded.append(where)
            if (kind["type"] == "string" and "enum" not in kind and "const" not in kind
                    and kind.get("format") != "path" and "maxLength" not in kind):
                unbounded.append(where)
            if kind["type"] == "array" and "maxItems" not in kind and "enum" not in kind.get("items", {}):
                unbounded.append(where)
    assert not unbounded, unbounded


@pytest.mark.parametrize(("key", "value"), [
    ("probes.hessian.trace_hvps", 10**21),
    ("probes.hessian.max_steps", 10**9),
    ("probes.hessian.density_steps", 10**9),
    ("probes.surface.chunk_size", 10**12),
    ("model.train.epochs", 10**12),
    ("model.hyper.h_fea_len", 10**9),
    ("data.graph.gaussian_step", 1e-300),
    ("data.subsample", 10**30),
    ("description", "d" * 1_000_000),
    ("card.intended_use", "u" * 1_000_000),
    ("data.target_column", "c" * 100_000),
    ("report.out_dir", "o" * 100_000),
], ids=lambda v: v if isinstance(v, str) and len(v) < 60 else "")
def test_validate_refuses_an_unbounded_field_naming_it(tmp_path, key, value):
    spec = write_spec(tmp_path / "spec.yaml", **{key: value})
    assert_bad_input(invoke("validate", spec), "spec.yaml", key)


# ------------------------------------------------------------------------------ item 15: targets, omit


@pytest.mark.parametrize("value", [1e308, -1e200, "Infinity"])
def test_a_huge_or_infinite_target_is_refused_naming_file_record_and_field(tmp_path, value):
    records = [json.loads(line) for line in sample_lines(3)]
    records[1]["formation_energy_per_atom"] = value
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r).replace('"Infinity"', "Infinity") + "\n" for r in records))
    rid = records[1]["material_id"]
    with pytest.raises(DataError, match=rf"d\.jsonl: record '{rid}': target field 'formation_energy_per_atom'"):
        read_mp(path, "formation_energy_per_atom")


def test_a_huge_csv_target_is_refused_and_a_nan_one_still_skipped(tmp_path):
    cif = json.loads(sample_lines(1)[0])
    cif = cif.get("cif") or ""
    path = tmp_path / "t.csv"
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["material_id", "band_gap", "cif"])
        w.writerow(["a", "1.5", cif])
        w.writerow(["b", "nan", cif])
        w.writerow(["c", "-inf", cif])
    with pytest.raises(DataError, match=r"t\.csv: record 'c': target field 'band_gap' is -inf"):
        read_csv(path, "band_gap")
    path.write_text(path.read_text().replace("-inf", "0.5"))
    data = read_csv(path, "band_gap")
    assert [e.id for e in data.entries] == ["a", "c"]
    assert data.skipped["missing or non-numeric target"] == 1


def test_the_data_command_refuses_a_huge_target_with_exit_2(tmp_path):
    records = [json.loads(line) for line in sample_lines(20)]
    records[5]["formation_energy_per_atom"] = 1e308
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    spec = write_spec(tmp_path / "spec.yaml", **{"data.source": "mp", "data.path": str(data)})
    assert_bad_input(invoke("data", spec), "data.jsonl", records[5]["material_id"], "formation_energy_per_atom")


def test_an_omitted_element_no_compound_has_names_the_data_file(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(sample_lines(30)))
    spec = load_spec(write_spec(tmp_path / "spec.yaml", **{"data.source": "mp", "data.path": str(data),
                                                           "omit": ["D"]}))
    with pytest.raises(DataError, match=r"data\.jsonl: no compound contains D.*'omit'"):
        prepare_data(spec)
