"""The CI-grade guarantees of the command line (README "Guarantees"): exit codes (3 for an internal error,
with a log file), the output-folder policy (one audit per folder, a lock against a second writer), bad
input of every kind as a clear exit 2 or a skipped-and-counted record, plain-text terminal output (no rich
markup from user strings), and progress lines when stderr is not a terminal."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from result_factory import make_result
from typer.testing import CliRunner

from traits.cli import app
from traits.errors import CheckpointError, OutputError, SpecError, TraitsError
from traits.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "audits" / "quickstart.yaml"
CHECKPOINT = ROOT / "traits" / "data" / "quickstart" / "model.safetensors"
SAMPLE = ROOT / "traits" / "data" / "sample" / "mp_sample.jsonl.gz"
CGCNN_ORIGINAL = ROOT.parent / "shared" / "models" / "cgcnn" / "formation-energy-per-atom.pth.tar"
runner = CliRunner()

#: An audit with as little work as possible: data, predictions, no probes.
FAST = {
    "device": "cpu", "data.subsample": 120, "probes.hessian.enabled": False, "probes.surface.enabled": False,
    "probes.shift.enabled": False, "report.formats": ["json"],
}
ROCKSALT = """data_NaCl
_cell_length_a 5.64
_cell_length_b 5.64
_cell_length_c 5.64
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Na1 Na 0 0 0
Cl1 Cl 0.5 0.5 0.5
"""


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def no_traceback(res) -> None:
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)


def fast_spec(**overrides):
    return load_spec(QUICKSTART, overrides={**FAST, **overrides})


def write_spec(path: Path, **changes) -> Path:
    """The quickstart spec (checkpoint made absolute, fast settings) with top-level ``changes``."""
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["model"]["checkpoint"] = str(CHECKPOINT)
    raw["device"] = "cpu"
    raw["data"]["subsample"] = 120
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


def sample_records(n: int) -> list[dict]:
    with gzip.open(SAMPLE, "rt") as fh:
        records = [json.loads(line) for _, line in zip(range(4 * n), fh)]
    fe = [r for r in records if "Fe" in json.dumps(r.get("structure", "")) or "Fe" in str(r.get("cif", ""))][:n // 3]
    rest = [r for r in records if r not in fe][: n - len(fe)]
    return fe + rest


def mp_spec(tmp_path: Path, records: list[dict], **changes) -> Path:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    return write_spec(tmp_path / "spec.yaml", **{"data.source": "mp", "data.path": str(data),
                                                 "data.subsample": None, **changes})


# ------------------------------------------------------------------------------------------ exit code 3


def test_internal_error_exits_3_and_names_a_log_with_the_traceback(monkeypatch, tmp_path):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))

    def broken(*args, **kwargs):
        return 1 / 0

    monkeypatch.setattr("traits.spec.load_spec", broken)
    res = invoke("validate", QUICKSTART)
    assert res.exit_code == 3, res.output
    no_traceback(res)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "internal error" in lines[0] and "ZeroDivisionError" in lines[0]
    logs = list(tmp_path.glob("traits-error-*.log"))
    assert len(logs) == 1 and str(logs[0]) in res.output
    text = logs[0].read_text()
    assert "Traceback" in text and "ZeroDivisionError" in text and "broken" in text
    assert not list(tmp_path.glob("*.tmp"))  # written atomically


def test_debug_prints_the_traceback_of_an_internal_error(monkeypatch, tmp_path):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.setattr("traits.spec.load_spec", lambda *a, **k: {}["missing"])
    res = invoke("--debug", "validate", QUICKSTART)
    assert res.exit_code == 3
    assert "Traceback" in res.output and "KeyError" in res.output


def test_internal_error_log_goes_into_the_output_folder(monkeypatch, tmp_path):
    def crash(*args, **kwargs):
        raise RuntimeError("probe engine bug")

    monkeypatch.setattr("traits.audit.run_audit", crash)
    out = tmp_path / "out"
    out.mkdir()
    res = invoke("audit", write_spec(tmp_path / "s.yaml"), "--out", out)
    assert res.exit_code == 3, res.output
    logs = list(out.glob("traits-error-*.log"))
    assert len(logs) == 1 and "probe engine bug" in logs[0].read_text() and str(logs[0]) in res.output
    no_traceback(res)


def test_help_documents_exit_code_3_and_version_prints():
    import traits

    res = invoke("--help")
    assert res.exit_code == 0 and "3 an internal error" in res.output and "1 a gate failed" in res.output
    res = invoke("--version")
    assert res.exit_code == 0 and res.output.strip() == f"traits {traits.__version__}"


# ------------------------------------------------------------------------------------------ output folder


def test_audit_refuses_a_folder_holding_another_audits_results(tmp_path):
    from traits.audit import run_audit

    out = tmp_path / "out"
    run_audit(fast_spec(name="first"), out)
    (out / "report.html").write_text("the first audit's report")
    before = (out / "results.json").read_bytes()
    res = invoke("audit", write_spec(tmp_path / "second.yaml", name="second"), "--out", out)
    assert res.exit_code == 2, res.output
    no_traceback(res)
    assert "another audit" in res.output and "'first'" in res.output and "--overwrite" in res.output
    assert (out / "results.json").read_bytes() == before and (out / "report.html").is_file()


def test_resume_of_the_same_spec_is_allowed(tmp_path):
    from traits.audit import run_audit

    out = tmp_path / "out"
    first = run_audit(fast_spec(), out)
    again = run_audit(fast_spec(**{"report.formats": []}), out)  # the formats do not change the audit
    assert again.accuracy["ood"].mae == first.accuracy["ood"].mae


def test_one_notion_of_the_same_audit_with_and_without_the_verdict():
    """A folder holds one audit, verdict included; a campaign asks only whether the numbers are the same
    measurement. Both questions are outdir's, on the same identity."""
    from traits.outdir import same_audit

    base = fast_spec().model_dump(mode="json")
    regated = fast_spec(**{"gates.max_mae_ratio": 9.0}).model_dump(mode="json")
    moved = fast_spec(**{"report.out_dir": "elsewhere", "report.formats": []}).model_dump(mode="json")
    other = fast_spec(**{"seed": 7}).model_dump(mode="json")
    assert not same_audit(base, regated) and same_audit(base, regated, measurements_only=True)
    assert same_audit(base, moved) and same_audit(base, moved, measurements_only=True)
    assert not same_audit(base, other) and not same_audit(base, other, measurements_only=True)
    older = {k: v for k, v in base.items() if k != "gates"}  # a spec written before a field existed
    assert same_audit(older, regated, measurements_only=True)


def test_overwrite_removes_stale_artefacts_first(tmp_path):
    from traits.audit import run_audit

    out = tmp_path / "out"
    run_audit(fast_spec(name="first"), out)
    (out / "report.html").write_text("the first audit's report")
    (out / "notes.txt").write_text("mine")
    (out / ".partial").mkdir()
    (out / ".partial" / "surface2d-id.pt").write_bytes(b"stale")
    with pytest.raises(OutputError, match="another audit"):
        run_audit(fast_spec(name="second"), out)
    result = run_audit(fast_spec(name="second"), out, overwrite=True)
    assert result.name == "second" and json.loads((out / "results.json").read_text())["name"] == "second"
    assert not (out / "report.html").exists()  # the first audit's report is gone, not left beside the results
    assert not (out / ".partial").exists()
    assert (out / "notes.txt").read_text() == "mine"  # not an audit's artefact: kept


def test_report_refuses_to_render_beside_another_audits_results(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    make_result(name="audit-a").write(a / "results.json")
    make_result(name="audit-b", seed=1).write(b / "results.json")
    res = invoke("report", a / "results.json", "--out", b, "--format", "html")
    assert res.exit_code == 2, res.output
    assert "another audit" in res.output and not (b / "report.html").exists()
    res = invoke("report", b / "results.json", "--out", b, "--format", "html")  # its own folder: fine
    assert res.exit_code == 0, res.output
    assert (b / "report.html").is_file()


def test_a_folder_without_marker_is_judged_by_its_results(tmp_path):
    from traits.outdir import MARKER, check_folder

    make_result(name="old").write(tmp_path / "results.json")
    spec = make_result(name="old").spec
    check_folder(tmp_path, spec)  # the same audit (results written before markers existed)
    assert (tmp_path / MARKER).is_file()
    with pytest.raises(OutputError, match="another audit"):
        check_folder(tmp_path, {**spec, "name": "new"})
    (tmp_path / MARKER).unlink()
    (tmp_path / "results.json").unlink()
    (tmp_path / "report.pdf").write_bytes(b"%PDF")
    with pytest.raises(OutputError, match="unknown audit"):  # reports of an unknown audit
        check_folder(tmp_path, spec)


def test_a_live_lock_stops_a_second_audit(tmp_path):
    from traits.audit import run_audit
    from traits.outdir import LOCK

    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (out / LOCK).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "purpose": "x"}))
        with pytest.raises(OutputError, match=f"another TRAITS run.*pid {holder.pid}"):
            run_audit(fast_spec(), out)
        assert not (out / "results.json").exists()
        assert json.loads((out / LOCK).read_text())["pid"] == holder.pid  # not stolen
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_of_a_dead_pid_is_taken_over(tmp_path):
    import socket

    from traits.audit import run_audit
    from traits.outdir import LOCK

    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    run_audit(fast_spec(), out)
    assert (out / "results.json").is_file() and not (out / LOCK).exists()  # taken over, then released


def test_lock_is_released_when_the_audit_fails(tmp_path):
    from traits.audit import run_audit
    from traits.outdir import LOCK

    out = tmp_path / "out"
    with pytest.raises(CheckpointError):
        run_audit(fast_spec(**{"data.target": "band_gap"}), out)
    assert not (out / LOCK).exists()


# ------------------------------------------------------------------------------------------ item 2: crashes


def test_singular_lattice_is_skipped_and_counted():
    from traits.data.graphs import GraphCache, build_graphs
    from traits.data.sources import Entry
    from traits.spec import GraphSpec

    flat = {"@module": "pymatgen.core.structure", "@class": "Structure", "lattice": {
        "matrix": [[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 1.0]]},
        "sites": [{"species": [{"element": "Na", "occu": 1}], "abc": [0, 0, 0], "label": "Na"}]}
    good = Entry("good", 0.0, ROCKSALT, "cif")
    bad = Entry("flat", 0.0, json.dumps(flat), "pymatgen-dict")
    seen = []
    out = build_graphs([good, bad], GraphSpec(), cache=GraphCache(enabled=False),
                       progress=lambda done, total: seen.append((done, total)))
    assert [g.material_id for g in out.graphs] == ["good"]
    assert sum(v for k, v in out.skipped.items() if "singular lattice" in k) == 1
    assert seen[-1] == (2, 2)  # progress counts the skipped record too


def test_predict_on_a_singular_lattice_is_bad_input(tmp_path):
    poscar = tmp_path / "POSCAR"
    poscar.write_text("flat\n1.0\n1 0 0\n2 0 0\n0 0 1\nNa\n1\nDirect\n0 0 0\n")
    res = invoke("predict", "--checkpoint", CHECKPOINT, "--device", "cpu", poscar)
    assert res.exit_code == 2, res.output
    assert "POSCAR" in res.output
    no_traceback(res)


def _sidecar_copy(tmp_path: Path, **changes) -> Path:
    ckpt = tmp_path / "model.safetensors"
    shutil.copy(CHECKPOINT, ckpt)
    meta = json.loads(CHECKPOINT.with_suffix(".json").read_text())
    meta.update(changes)
    ckpt.with_suffix(".json").write_text(json.dumps(meta))
    return ckpt


@pytest.mark.parametrize("changes, field", [
    ({"target_std": "wide"}, "target_std"),
    ({"target_mean": None}, "target_mean"),
    ({"graph": [8.0, 12]}, "graph"),
    ({"hyper": "big"}, "hyper"),
    ({"node_dim": "92"}, "node_dim"),
])
def test_a_bad_sidecar_field_is_bad_input_naming_the_file_and_field(tmp_path, changes, field):
    ckpt = _sidecar_copy(tmp_path, **changes)
    res = invoke("predict", "--checkpoint", ckpt, "--device", "cpu", tmp_path / "x.cif")
    assert res.exit_code == 2, res.output
    assert "model.json" in res.output and repr(field) in res.output
    no_traceback(res)


@pytest.mark.parametrize("graph, where", [({"cutoff": "far"}, "graph.cutoff"), ({"bogus": 1}, "graph.bogus")])
def test_invalid_sidecar_graph_settings_are_bad_input(tmp_path, graph, where):
    ckpt = _sidecar_copy(tmp_path, graph=graph)
    cif = tmp_path / "nacl.cif"
    cif.write_text(ROCKSALT)
    res = invoke("predict", "--checkpoint", ckpt, "--device", "cpu", cif)
    assert res.exit_code == 2, res.output
    assert "model.json" in res.output and where in res.output
    no_traceback(res)


def test_an_unknown_sidecar_architecture_names_the_file(tmp_path):
    ckpt = _sidecar_copy(tmp_path, architecture="transformer-9000")
    res = invoke("predict", "--checkpoint", ckpt, "--device", "cpu", tmp_path / "x.cif")
    assert res.exit_code == 2, res.output
    assert str(ckpt.with_suffix(".json")) in res.output and "transformer-9000" in res.output


def test_seed_of_2_63_is_rejected_at_validation(tmp_path):
    res = invoke("validate", write_spec(tmp_path / "s.yaml", seed=2**63))
    assert res.exit_code == 2 and "seed" in res.output
    res = invoke("validate", write_spec(tmp_path / "s.yaml", seed=2**63 - 1))
    assert res.exit_code == 0, res.output


def _surface_result(tmp_path: Path, mutate) -> Path:
    raw = json.loads(make_result().model_dump_json())
    mutate(raw)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(raw))
    return path


@pytest.mark.parametrize("mutate, where", [
    (lambda r: r["surface"]["grids"]["ood"][3].pop(), "surface.grids.ood[3]"),
    (lambda r: r["surface"].update(alphas_2d=r["surface"]["alphas_2d"][:4]), "surface.grids"),
    (lambda r: r["surface"]["curves"]["id"][0].append(0.1), "surface.curves.id[0]"),
    (lambda r: r["accuracy"]["id"]["predictions"].pop(), "accuracy.id"),
])
def test_report_on_inconsistent_arrays_is_bad_input(tmp_path, mutate, where):
    path = _surface_result(tmp_path, mutate)
    res = invoke("report", path, "--out", tmp_path / "r", "--format", "html")
    assert res.exit_code == 2, res.output
    assert where in res.output and str(path) in res.output
    assert not (tmp_path / "r" / "report.html").exists()
    no_traceback(res)


def test_gate_on_deeply_nested_json_is_bad_input(tmp_path):
    path = tmp_path / "results.json"
    path.write_text('{"schema_version": "1.1", "spec": ' + "[" * 100000 + "]" * 100000 + "}")
    res = invoke("gate", path)
    assert res.exit_code == 2, res.output
    assert "nested too deeply" in res.output
    spec = tmp_path / "deep.json"
    spec.write_text("[" * 100000 + "]" * 100000)
    res = invoke("validate", spec)
    assert res.exit_code == 2 and "deep.json" in res.output
    no_traceback(res)


def test_a_checkpoint_too_big_for_memory_is_refused_before_reading(tmp_path, monkeypatch):
    import traits.inputs

    reads = []
    real_read = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self) or real_read(self))
    monkeypatch.setattr(traits.inputs, "available_memory", lambda: 1000)
    res = invoke("predict", "--checkpoint", CHECKPOINT, "--device", "cpu", tmp_path / "x.cif")
    assert res.exit_code == 2, res.output
    assert "memory" in res.output and "available" in res.output
    assert CHECKPOINT not in reads


def test_a_truncated_safetensors_file_is_caught_by_its_header(tmp_path):
    from traits.models.checkpoint import safetensors_size

    ckpt = _sidecar_copy(tmp_path)
    ckpt.write_bytes(CHECKPOINT.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="header describes"):
        safetensors_size(ckpt)
    ckpt.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match="claims"):
        safetensors_size(ckpt)


def test_a_large_data_file_is_refused_before_it_is_read(tmp_path, monkeypatch):
    import traits.inputs

    spec = mp_spec(tmp_path, sample_records(30))
    assert (tmp_path / "data.jsonl").stat().st_size > 20 * spec.stat().st_size
    monkeypatch.setattr(traits.inputs, "available_memory", lambda: 10 * spec.stat().st_size)
    res = invoke("data", spec)
    assert res.exit_code == 2 and "memory" in res.output and "data.jsonl" in res.output


# ------------------------------------------------------------------------------------------ item 3: markup


def test_rich_markup_in_a_missing_file_name_is_printed_verbatim(tmp_path):
    name = tmp_path / "a[/].yaml"
    res = invoke("validate", name)
    assert res.exit_code == 2, res.output
    assert str(name) in res.output
    no_traceback(res)
    old = tmp_path / "[old]" / "spec.yaml"
    res = invoke("validate", old)
    assert res.exit_code == 2 and str(old) in res.output


def test_a_spec_name_with_markup_is_printed_verbatim(tmp_path):
    hostile = "x[/] [link=https://evil.example]click[/link] [bold]b :smile:"
    spec = write_spec(tmp_path / "s.yaml", name=hostile)
    res = invoke("validate", spec)
    assert res.exit_code == 0, res.output
    assert hostile in res.output
    spec = mp_spec(tmp_path, sample_records(30), name=hostile)
    res = invoke("data", spec)
    assert res.exit_code == 0, res.output
    assert hostile in res.output
    assert "\x1b]8;" not in res.output  # no terminal hyperlink escape


def test_error_messages_with_markup_are_printed_verbatim(tmp_path):
    spec = write_spec(tmp_path / "[red]s[bold].yaml", **{"probes.surface.span": "[bold]x"})
    res = invoke("validate", spec)
    assert res.exit_code == 2
    assert "[red]s[bold].yaml" in res.output and "probes.surface.span" in res.output


# ------------------------------------------------------------------------------------------ items 4, 5


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.csv"
    path.write_text(text)
    return write_spec(tmp_path / "spec.yaml", **{"data.source": "csv", "data.path": str(path),
                                                 "data.subsample": None})


def test_a_truncated_csv_is_an_error(tmp_path):
    cif = ROCKSALT.replace('"', "")
    rows = "".join(f'mp-{i},-1.0,"{cif}"\n' for i in range(3))
    spec = _csv(tmp_path, "material_id,formation_energy_per_atom,cif\n" + rows + f'mp-9,-1.0,"{cif[:40]}')
    res = invoke("data", spec)
    assert res.exit_code == 2, res.output
    assert "data.csv" in res.output and "truncated" in res.output
    spec = _csv(tmp_path, "material_id,formation_energy_per_atom,cif\n" + rows + "mp-9,-1.")
    res = invoke("data", spec)
    assert res.exit_code == 2 and "line 5" in res.output and "truncated" in res.output, res.output


def test_infinite_span_is_rejected_at_validation_naming_the_field(tmp_path):
    path = write_spec(tmp_path / "s.yaml")
    path.write_text(path.read_text() + "")
    raw = yaml.safe_load(path.read_text())
    raw["probes"]["surface"] = {"span": float("inf")}
    path.write_text(yaml.safe_dump(raw))
    assert ".inf" in path.read_text()
    res = invoke("validate", path)
    assert res.exit_code == 2, res.output
    assert "probes.surface.span" in res.output and "finite" in res.output
    with pytest.raises(SpecError, match="probes.hessian.tol"):
        load_spec(QUICKSTART, overrides={"probes.hessian.tol": float("nan")})


# ------------------------------------------------------------------------------------------ item 6: predict


def parse_rows(text: str) -> list[list[str]]:
    import csv

    return list(csv.reader(io.StringIO(text)))


def test_predict_detects_a_traits_checkpoint_and_writes_a_unit_column(tmp_path):
    cif = tmp_path / "NaCl, rock salt.cif"
    cif.write_text(ROCKSALT)
    res = invoke("predict", "--checkpoint", CHECKPOINT, "--device", "cpu", cif)
    assert res.exit_code == 0, res.output
    rows = parse_rows(res.stdout)
    assert rows[0] == ["id", "prediction", "unit"]
    assert rows[1][0] == str(cif) and rows[1][2] == "eV/atom" and float(rows[1][1]) < -1.0


def test_predict_takes_a_state_dict_with_architecture_on_the_command_line(tmp_path):
    import torch
    from safetensors.torch import load_file

    meta = json.loads(CHECKPOINT.with_suffix(".json").read_text())
    plain = tmp_path / "weights.pt"
    torch.save(load_file(CHECKPOINT), plain)
    cif = tmp_path / "nacl.cif"
    cif.write_text(ROCKSALT)
    res = invoke("predict", "--checkpoint", plain, "--device", "cpu", cif)
    assert res.exit_code == 2 and "--architecture" in res.output, res.output
    hyper = ",".join(f"{k}={v}" for k, v in meta["hyper"].items())
    res = invoke("predict", "--checkpoint", plain, "--architecture", "cgcnn", "--hyper", hyper,
                 "--normalizer", f"{meta['target_mean']},{meta['target_std']}", "--target",
                 "formation_energy_per_atom", "--device", "cpu", cif)
    assert res.exit_code == 0, res.output
    want = parse_rows(invoke("predict", "--checkpoint", CHECKPOINT, "--device", "cpu", cif).stdout)
    got = parse_rows(res.stdout)
    assert got[1][2] == "eV/atom" and float(got[1][1]) == pytest.approx(float(want[1][1]), rel=1e-5)


@pytest.mark.skipif(not CGCNN_ORIGINAL.is_file(), reason="original CGCNN checkpoint not available")
def test_predict_detects_an_original_cgcnn_checkpoint(tmp_path):
    cif = tmp_path / "nacl.cif"
    cif.write_text(ROCKSALT)
    res = invoke("predict", "--checkpoint", CGCNN_ORIGINAL, "--device", "cpu", cif)
    assert res.exit_code == 0, res.output
    rows = parse_rows(res.stdout)
    assert rows[0] == ["id", "prediction", "unit"] and rows[1][2] == "eV/atom"


# ------------------------------------------------------------------------------------------ item 8


def test_traits_data_unset_names_the_spec_and_field(tmp_path, monkeypatch):
    monkeypatch.delenv("TRAITS_DATA", raising=False)
    spec = write_spec(tmp_path / "s.yaml", **{"data.source": "mp", "data.path": "${TRAITS_DATA}/mp.jsonl"})
    res = invoke("validate", spec)
    assert res.exit_code == 2
    assert str(spec) in res.output and "data.path" in res.output and "TRAITS_DATA" in res.output


def test_a_duplicate_id_names_the_data_file(tmp_path):
    records = sample_records(30)
    records.append(dict(records[5]))
    spec = mp_spec(tmp_path, records)
    res = invoke("data", spec)
    assert res.exit_code == 2, res.output
    assert "data.jsonl" in res.output and records[5]["material_id"] in res.output and "duplicate" in res.output


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_fifo_or_device_is_reported_as_such(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    res = invoke("predict", "--checkpoint", fifo, "--device", "cpu", tmp_path / "x.cif")
    assert res.exit_code == 2 and "named pipe" in res.output and "no such" not in res.output, res.output
    link = tmp_path / "zero.safetensors"
    link.symlink_to("/dev/zero")
    res = invoke("predict", "--checkpoint", link, "--device", "cpu", tmp_path / "x.cif")
    assert res.exit_code == 2 and "character device" in res.output, res.output
    spec = write_spec(tmp_path / "s.yaml", **{"model.checkpoint": str(link)})
    res = invoke("validate", spec)
    assert res.exit_code == 2 and "character device" in res.output and "model.checkpoint" in res.output
    spec_fifo = tmp_path / "spec-fifo.yaml"
    os.mkfifo(spec_fifo)
    res = invoke("validate", spec_fifo)  # must not block reading the pipe
    assert res.exit_code == 2 and "named pipe" in res.output


# ------------------------------------------------------------------------------------------ item 7: progress


def test_reporter_prints_start_progress_and_end_lines_by_time_and_decile():
    from traits.progress import Reporter

    now = [0.0]
    stream = io.StringIO()
    rep = Reporter(mode="lines", stream=stream, interval=10.0, clock=lambda: now[0])
    update = rep("building crystal graphs", 1000)
    for done in range(1, 1000):
        now[0] += 0.001
        update(done, 1000)
    now[0] = 30.0
    update(1000, 1000)
    rep("second", 0)(5, 0)
    now[0] = 45.0
    rep.close()
    lines = stream.getvalue().splitlines()
    assert all(line.startswith("[20") and "Z] " in line for line in lines)
    text = [line.split("Z] ", 1)[1] for line in lines]
    assert text[0] == "building crystal graphs: started (1000 steps)"
    assert text[1] == "building crystal graphs: 100/1000 (10%)" and text[9] == "building crystal graphs: 900/1000 (90%)"
    assert text[10] == "building crystal graphs: done 1000/1000 in 30.0 s"
    assert text[11:] == ["second: started", "second: done in 15.0 s"]


def test_reporter_prints_by_time_between_deciles_and_is_silent_when_quiet():
    from traits.progress import Reporter

    now = [0.0]
    stream = io.StringIO()
    update = Reporter(mode="lines", stream=stream, interval=10.0, clock=lambda: now[0])("slow", 10**6)
    for done in (1, 2, 3):
        now[0] += 11.0
        update(done, 10**6)
    assert stream.getvalue().count("slow: ") == 4  # started + one line per 10 s
    quiet = io.StringIO()
    rep = Reporter(verbosity=0, stream=quiet)
    rep("x", 3)(3, 3)
    rep.log("hello")
    assert quiet.getvalue() == ""


def test_a_stage_without_steps_prints_still_running_lines():
    import time

    from traits.progress import Reporter

    stream = io.StringIO()
    with Reporter(mode="lines", stream=stream, interval=0.05, heartbeat=True) as rep:
        done = rep("Hessian id", 1)
        time.sleep(0.4)
        done(1, 1)
    text = stream.getvalue()
    assert "Hessian id: still running after" in text and "Hessian id: done in" in text
    assert text.index("still running") < text.index("done in")


def test_a_piped_audit_prints_timestamped_progress_lines(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", **{"probes.hessian": {"enabled": True, "top_k": 1, "max_steps": 3,
                                                                 "trace_hvps": 3, "density_runs": 1,
                                                                 "density_steps": 3, "max_samples": 4}})
    res = invoke("audit", spec, "--out", tmp_path / "out")
    assert res.exit_code in (0, 1), res.output
    err = res.stderr
    for stage in ("building crystal graphs: started", "building crystal graphs: done", "predictions: done",
                  "Hessian id: started", "Hessian ood: done"):
        assert stage in err, err
    assert all(line.startswith("[") for line in err.splitlines() if line.strip())
    res = invoke("audit", spec, "--out", tmp_path / "out", "--quiet")
    assert res.exit_code in (0, 1) and res.stderr == ""


def test_train_prints_epoch_progress_lines(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", **{"model.train": {"epochs": 2, "batch_size": 64}})
    res = invoke("train", spec, "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    assert "training: started (2 steps)" in res.stderr and "training: done" in res.stderr
    assert "val MAE" in res.stderr


def test_campaign_passes_progress_to_training(tmp_path, monkeypatch):
    import traits.audit
    from traits.campaign import run_campaign
    from traits.progress import Reporter

    seen = {}

    def fake_run_audit(spec, where, **kwargs):
        seen.update(kwargs)
        raise OutputError("stop here")

    monkeypatch.setattr(traits.audit, "run_audit", fake_run_audit)
    camp = tmp_path / "camp"
    camp.mkdir()
    write_spec(camp / "task.yaml")
    rep = Reporter(mode="lines", stream=io.StringIO())
    with pytest.raises(TraitsError, match="stop here"):  # the task's error, however the campaign reports it
        run_campaign(camp, tmp_path / "out", progress=rep, log=rep.log)
    assert seen["progress"] is rep and seen["train_progress"] is rep


@pytest.mark.parametrize("field, hash_kw", [("data.path", "data_hash"), ("model.checkpoint", "checkpoint_hash")])
def test_a_moved_file_with_the_same_bytes_is_the_same_audit(tmp_path, field, hash_kw):
    """A checkout moved elsewhere (another machine, CI) reads its data, or a study's kept checkpoint, from another
    absolute path: the audit is the same when the file there has the content hash the stored audit recorded
    (provenance.data_hash, provenance.checkpoint_sha256), and only then."""
    import hashlib
    import shutil

    from traits.data.sources import sample_path
    from traits.outdir import same_audit

    original = sample_path()
    base = fast_spec(**{field: str(original)}).model_dump(mode="json")
    copy = tmp_path / "elsewhere" / original.name
    copy.parent.mkdir()
    shutil.copyfile(original, copy)
    recorded = hashlib.sha256(original.read_bytes()).hexdigest()
    other_kw = "checkpoint_hash" if hash_kw == "data_hash" else "data_hash"
    live = fast_spec(**{field: str(copy)}).model_dump(mode="json")
    assert not same_audit(base, live, measurements_only=True)  # no recorded hash: the paths decide
    assert not same_audit(base, live, measurements_only=True, **{other_kw: recorded})  # the other file's hash
    assert same_audit(base, live, measurements_only=True, **{hash_kw: recorded})
    assert same_audit(base, live, **{hash_kw: recorded})
    copy.write_bytes(copy.read_bytes() + b"\n")  # other bytes at the new path: another audit
    assert not same_audit(base, live, measurements_only=True, **{hash_kw: recorded})
    assert not same_audit(base, live, measurements_only=True, **{hash_kw: "0" * 64})
