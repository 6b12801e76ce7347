"""Hostile inputs to the study summary, screen, compare, the Dask executor and export-mace (issue 31): each is
refused as bad input naming the file and the field (exit 2), or skipped and counted, never exit 3, a hang, a
wrong score or markup from the data."""

from __future__ import annotations

import copy
import gzip
import json
import os
import re
import socket
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.result_factory import make_result
from traits.cli import app
from traits.data.sources import sample_path
from traits.errors import DataError, SpecError, TraitsError
from traits.screen import DISORDERED, calibration_path, load_calibration, read_inputs, screen

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "traits" / "data" / "quickstart" / "model.safetensors"
HOSTILE_TARGET = "x ![t](http://127.0.0.1:8765/a.png) <img src=http://127.0.0.1:8765/b.png> [l](http://e.org)"


def _flat(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------- study summary (4)
def test_markdown_in_a_results_file_never_becomes_an_image_or_link_in_the_study_summary(tmp_path):
    from traits.study.summary import summarise_runs

    runs = tmp_path / "runs"
    make_result(target=HOSTILE_TARGET).write(runs / "seed-0" / "evil" / "results.json")
    make_result(seed=1).write(runs / "seed-1" / "plain_task" / "results.json")
    summarise_runs(runs, tmp_path / "out", data_set=None, pipeline_check=True, n_boot=10)
    html = (tmp_path / "out" / "summary.html").read_text(encoding="utf-8")
    imgs = re.findall(r"<img\b[^>]*>", html, flags=re.I)
    assert imgs and all(re.search(r'\bsrc="data:', tag) for tag in imgs), imgs  # only the two embedded plots
    tags = re.findall(r"<[A-Za-z][^>]*>", html)
    assert not [t for t in tags if re.search(r"""\b(src|href)\s*=\s*["']?\s*https?:""", t, flags=re.I)]
    assert all(re.match(r'<a href="#[a-z0-9_-]+">', a) for a in re.findall(r"<a\b[^>]*>", html))  # in-page only
    assert "x ![t](http://127.0.0.1:8765/a.png) &lt;img src=http://127.0.0.1:8765/b.png&gt;" in html  # as text
    md = (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")
    assert r"x !\[t\](http://127.0.0.1:8765/a.png) \<img src=http://127.0.0.1:8765/b.png\>" in md
    assert "| plain_task |" in md  # an underscore inside a word is left as it is


def test_the_summary_markdown_renderer_draws_no_link_image_or_raw_html():
    from traits.study.summary import _md, markdown_html

    html = markdown_html("![i](http://h/i.png) [l](http://h/) <http://h/> <b>x</b>\n\n[r]: http://h/r\n\n[r]\n")
    assert "<img" not in html and "<a " not in html and "<b>" not in html and "href" not in html
    assert _md("a|b\nc *d* `e` _f_ band_gap &amp; ~g~") == r"a\|b c \*d\* \`e\` \_f\_ band_gap \&amp; \~g\~"


# ---------------------------------------------------------------------------------------- calibration (11, 10)
def _tampered(tmp_path: Path, change) -> Path:
    data = json.loads(calibration_path(CKPT).read_text(encoding="utf-8"))
    change(data)
    path = tmp_path / "tampered.calibration.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _set(*keys_value):
    *keys, value = keys_value

    def change(data):
        d = data
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = copy.deepcopy(value)
    return change


TAMPERED = {
    "1x1 Gram matrix": (_set("last_layer", "gram", [[1.0]]), "last_layer.gram"),
    "negative noise variance": (_set("last_layer", "noise_var", -0.02), "last_layer.noise_var"),
    "zero prior precision": (_set("last_layer", "prior_precision", 0), "last_layer.prior_precision"),
    "k 0": (_set("knn", "k", 0), "knn.k"),
    "k above the reference points": (_set("knn", "k", 501), "knn.k"),
    "k a string": (_set("knn", "k", "5"), "knn.k"),
    "noise variance a string": (_set("last_layer", "noise_var", "0.02"), "last_layer.noise_var"),
    "a string in the Gram matrix": (lambda d: d["last_layer"]["gram"][3].__setitem__(2, "1.0"), "last_layer.gram"),
    "NaN in the embeddings": (lambda d: d["knn"]["train_embedding"][0].__setitem__(0, float("nan")),
                              "knn.train_embedding"),
    "ragged embeddings": (lambda d: d["knn"]["train_embedding"][7].pop(), "knn.train_embedding"),
    "asymmetric Gram matrix": (lambda d: d["last_layer"]["gram"][0].__setitem__(1, 1e6), "last_layer.gram"),
    "recalibration a string": (_set("recalibration", "knn", "b", "0.1"), "recalibration.knn.b"),
    "recalibration both zero": (_set("recalibration", "last_layer", {"a": 0.0, "b": 0.0}), "recalibration.last_layer"),
    "ID median a string": (_set("id", "last_layer_std", "median", "0.03"), "id.last_layer_std.median"),
    "ID median zero": (_set("id", "knn_distance", "median", 0.0), "id.knn_distance.median"),
    "ID p95 below the median": (_set("id", "knn_distance", "p95", 1.0), "id.knn_distance.p95"),
    "n_data a boolean": (_set("last_layer", "n_data", True), "last_layer.n_data"),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_a_tampered_calibration_file_is_refused_naming_the_field(tmp_path, case):
    change, field = TAMPERED[case]
    path = _tampered(tmp_path, change)
    with pytest.raises(DataError) as err:
        load_calibration(path)
    assert str(path) in str(err.value) and field in str(err.value), str(err.value)


def test_a_calibration_of_another_embedding_width_is_refused(tmp_path, one_cif):
    assert load_calibration(calibration_path(CKPT), embedding_width=64)["version"] == 1  # the real one holds
    with pytest.raises(DataError, match="knn.train_embedding.*width 64.*width 32"):
        load_calibration(calibration_path(CKPT), embedding_width=32)

    def narrower(d):  # consistent in itself (63 + bias), but not the model's 64
        d["knn"]["train_embedding"] = [row[:63] for row in d["knn"]["train_embedding"]]
        d["last_layer"]["gram"] = [row[:63] + row[64:] for row in d["last_layer"]["gram"][:63]] + \
            [d["last_layer"]["gram"][64][:63] + d["last_layer"]["gram"][64][64:]]
    path = _tampered(tmp_path, narrower)
    load_calibration(path)  # nothing says which model it belongs to
    res = CliRunner().invoke(app, ["screen", str(CKPT), str(one_cif), "--calibration", str(path),
                                   "--out", str(tmp_path / "o"), "--report", "none"])
    assert res.exit_code == 2, res.output
    assert "knn.train_embedding" in _flat(res.output) and not (tmp_path / "o" / "predictions.csv").exists()


def test_cli_screen_with_a_tampered_calibration_exits_2_and_writes_nothing(tmp_path, one_cif):
    path = _tampered(tmp_path, _set("knn", "k", 0))
    res = CliRunner().invoke(app, ["screen", str(CKPT), str(one_cif), "--calibration", str(path),
                                   "--out", str(tmp_path / "o"), "--report", "none"])
    assert res.exit_code == 2, res.output
    assert "knn.k" in _flat(res.output) and "tampered.calibration.json" in _flat(res.output)
    assert not (tmp_path / "o" / "predictions.csv").exists()


# ---------------------------------------------------------------------------------------- screen inputs (13, 10)
@pytest.fixture(scope="module")
def sample_records() -> list[dict]:
    with gzip.open(sample_path(), "rt", encoding="utf-8") as fh:
        recs = [json.loads(next(fh)) for _ in range(3)]
    for r in recs:
        r.pop("formation_energy_per_atom", None)
        r.pop("band_gap", None)
    return recs


@pytest.fixture(scope="module")
def one_cif(tmp_path_factory, sample_records) -> Path:
    from pymatgen.core import Structure

    path = tmp_path_factory.mktemp("one") / "one.cif"
    Structure.from_str(sample_records[0]["cif"], fmt="cif").to(filename=str(path))
    return path


def test_every_path_not_read_is_counted_with_its_reason(tmp_path, one_cif):
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "one.cif").write_bytes(one_cif.read_bytes())
    os.mkfifo(d / "pipe.cif")
    (d / "loop.cif").symlink_to(d / "loop.cif")
    (d / "gone.cif").symlink_to(d / "nowhere.cif")
    (d / "elsewhere").symlink_to(d / "sub", target_is_directory=True)
    got = read_inputs([d])
    assert len(got.entries) == 1 and got.n_read == 5
    assert got.skipped == {"a named pipe (FIFO), not a regular file": 1,
                           "not accessible (Too many levels of symbolic links)": 1,
                           "a broken symbolic link, not a regular file": 1,
                           "a symbolic link to a folder, not followed": 1}
    named = read_inputs([d / "loop.cif", d / "sub" / "one.cif"])  # a loop named on the command line
    assert len(named.entries) == 1 and named.n_read == 2
    assert named.skipped == {"not accessible (Too many levels of symbolic links)": 1}
    t0 = time.monotonic()
    res = CliRunner().invoke(app, ["screen", str(CKPT), str(d), "--out", str(tmp_path / "o"), "--report", "none"])
    assert res.exit_code == 0, res.output
    assert "screened 1 of 5 structures (4 skipped" in _flat(res.output) and "named pipe" in res.output
    assert time.monotonic() - t0 < 120  # the pipe is never opened
    with pytest.raises(DataError, match="no such file"):
        read_inputs([d / "missing.cif"])


def test_a_json_file_that_does_not_parse_is_counted_not_fatal(tmp_path, one_cif):
    (tmp_path / "broken.json").write_text('[{"cif": "x"', encoding="utf-8")
    got = read_inputs([tmp_path / "broken.json", one_cif])
    assert len(got.entries) == 1 and got.n_read == 2 and got.skipped == {"unreadable JSON file": 1}


def _disordered():
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(2.87), [{"Fe": 0.5, "Ni": 0.5}, "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_a_structure_with_a_partly_occupied_site_is_skipped_and_counted(tmp_path, one_cif, sample_records):
    s = _disordered()
    assert not s.is_ordered
    s.to(filename=str(tmp_path / "alloy.cif"))
    recs = [{"material_id": "dis-1", "structure": s.as_dict()}, sample_records[1],
            {"material_id": "dis-2", "cif": s.to(fmt="cif")}]
    (tmp_path / "recs.json").write_text(json.dumps(recs), encoding="utf-8")
    got = read_inputs([tmp_path / "alloy.cif", tmp_path / "recs.json", one_cif])
    assert got.skipped == {DISORDERED: 3} and len(got.entries) == 2 and got.n_read == 5
    res = screen(CKPT, [tmp_path / "alloy.cif", tmp_path / "recs.json", one_cif], tmp_path / "o", formats=())
    assert res.n_screened == 2 and res.skipped == {DISORDERED: 3} and res.n_read == 5
    cli = CliRunner().invoke(app, ["screen", str(CKPT), str(tmp_path / "alloy.cif"), str(one_cif),
                                   "--out", str(tmp_path / "c"), "--report", "none"])
    assert cli.exit_code == 0, cli.output
    assert f"screened 1 of 2 structures (1 skipped: {DISORDERED}: 1)" in _flat(cli.output)


def test_a_graph_that_cannot_be_built_skips_that_structure_only(tmp_path, one_cif):
    from pymatgen.core import Lattice, Structure

    from traits.screen import _build
    from traits.spec import GraphSpec

    lonely = Structure(Lattice.cubic(30.0), ["Na"], [[0, 0, 0]])  # no neighbour within the cutoff
    (tmp_path / "lonely.cif").write_text(lonely.to(fmt="cif"), encoding="utf-8")
    got = read_inputs([tmp_path / "lonely.cif", one_cif])
    built = _build(got.entries, GraphSpec(isolated_atoms="error"))
    assert len(built.graphs) == 1 and sum(built.skipped.values()) == 1
    assert next(iter(built.skipped)).startswith("graph not built: ")


# ---------------------------------------------------------------------------------------- compare --gates (10)
@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("pair")
    make_result().write(d / "a.json")
    make_result(seed=1).write(d / "b.json")
    return d / "a.json", d / "b.json"


GATES = {
    "a limit given as a string": ("gates: {mae_ratio: '0.1'}\n", "gates.mae_ratio"),
    "a limit given as a list": ("gates: {mae_ratio: [0.1]}\n", "gates.mae_ratio"),
    "a number given as a string": ("gates: {mae_ratio: {max_relative_growth: '0.1'}}\n", "max_relative_growth"),
    "fail given as a string": ("- {metric: mae_ratio, max_growth: 1, fail: 'no'}\n", "fail"),
    "a limit that is NaN": ("- {metric: mae_ratio, max_growth: .nan}\n", "max_growth"),
    "a metric that is a number": ("- {metric: 5, max_growth: 1}\n", "metric"),
    "a gate that is a string": ("- mae_ratio\n", "gate 1"),
    "a YAML alias": ("limit: &l {max_growth: 1}\ngates: {mae_ratio: *l}\n", "line 2: YAML aliases"),
}


@pytest.mark.parametrize("case", sorted(GATES))
def test_compare_gates_of_the_wrong_type_exit_2_naming_the_file_and_field(tmp_path, pair, case):
    from traits.compare import read_gates

    text, field = GATES[case]
    path = tmp_path / "gates.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SpecError) as err:
        read_gates(path)
    assert str(path) in str(err.value) and field in str(err.value), str(err.value)
    res = CliRunner().invoke(app, ["compare", str(pair[0]), str(pair[1]), "--gates", str(path),
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert field in _flat(res.output) and not (tmp_path / "o" / "compare.json").exists()


# ---------------------------------------------------------------------------------------- Dask scheduler (10)
def _double(job: int) -> int:
    return 2 * job


@pytest.mark.parametrize("address", ["not an address", "http://127.0.0.1:8786", "tcp://127.0.0.1:0",
                                     "tcp://127.0.0.1", "tcp://127.0.0.1:8786/x", "tcp://h\x1b[2J:8786"])
def test_a_malformed_dask_scheduler_address_is_refused_at_once(address):
    from traits.study.executors import ExecutorOptions, execute

    t0 = time.monotonic()
    with pytest.raises(SpecError, match="not a Dask scheduler address"):
        execute(_double, [1], ExecutorOptions("dask", settings={"scheduler": address}))
    assert time.monotonic() - t0 < 5


def test_an_unreachable_dask_scheduler_is_bad_input_naming_the_address():
    pytest.importorskip("distributed")
    from traits.study.executors import ExecutorOptions, execute

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    t0 = time.monotonic()
    with pytest.raises(TraitsError, match=re.escape(address)):
        execute(_double, [1, 2], ExecutorOptions("dask", settings={"scheduler": address}))
    assert time.monotonic() - t0 < 10


# ---------------------------------------------------------------------------------------- export-mace (10)
def test_export_mace_without_mace_names_the_pip_install(tmp_path, monkeypatch):
    from traits.models import mace

    def missing():
        raise ModuleNotFoundError("No module named 'mace'")

    monkeypatch.setattr(mace, "_import_mace", missing)
    model = tmp_path / "m.model"
    model.write_bytes(b"not read")
    res = CliRunner().invoke(app, ["export-mace", str(model), str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    assert "pip install 'traits-audit[mace]'" in _flat(res.output) and "export-mace needs" in _flat(res.output)
    assert not (tmp_path / "out").exists()


def test_a_campaign_with_a_malformed_scheduler_creates_nothing(tmp_path):
    from traits.campaign import run_campaign

    out = tmp_path / "out"
    with pytest.raises(SpecError, match="not a Dask scheduler address"):
        run_campaign(tmp_path / "no-campaign", out, executor="dask", scheduler="tcp://host:99999")
    assert not out.exists()
