"""Property-based tests (hypothesis): random mutations of valid spec files, results files and data records
must end in exit 0, 1 or 2 — never a traceback, never exit 3 (an internal error is a bug), and never a
partial file left behind.

The default run is small enough for CI (profile ``traits-ci``: a fixed number of derandomised examples per
test). A longer, randomised run: ``TRAITS_FUZZ_PROFILE=traits-long python -m pytest tests/test_fuzz.py``,
or set the example count with ``TRAITS_FUZZ_EXAMPLES=500``.
"""

from __future__ import annotations

import copy
import functools
import gzip
import json
import os
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from result_factory import make_result
from typer.testing import CliRunner

from traits.cli import app

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "audits" / "quickstart.yaml"
CHECKPOINT = ROOT / "traits" / "data" / "quickstart" / "model.safetensors"
SAMPLE = ROOT / "traits" / "data" / "sample" / "mp_sample.jsonl.gz"

_COMMON = {"deadline": None, "database": None, "print_blob": True,
           "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture]}
settings.register_profile("traits-ci", max_examples=int(os.environ.get("TRAITS_FUZZ_EXAMPLES", "12")),
                          derandomize=True, **_COMMON)
settings.register_profile("traits-long", max_examples=int(os.environ.get("TRAITS_FUZZ_EXAMPLES", "400")),
                          **_COMMON)
PROFILE = settings.get_profile(os.environ.get("TRAITS_FUZZ_PROFILE", "traits-ci"))
#: Rendering a report draws every figure: fewer examples than the cheap commands.
REPORT_EXAMPLES = max(2, PROFILE.max_examples // 4)

runner = CliRunner()
ROCKSALT = ("data_NaCl\n_cell_length_a 5.64\n_cell_length_b 5.64\n_cell_length_c 5.64\n_cell_angle_alpha 90\n"
            "_cell_angle_beta 90\n_cell_angle_gamma 90\n_symmetry_space_group_name_H-M 'P 1'\nloop_\n"
            "_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n"
            "Na1 Na 0 0 0\nCl1 Cl 0.5 0.5 0.5\n")

HOSTILE = ["", " ", "[/]", "[link=https://evil.example]x[/link]", "[bold]", ":smile:", "<script>alert(1)</script>",
           "{{ 7*7 }}", "../../etc/passwd", "${TRAITS_DATA}/x", "\x00", "\u202e", "é" * 3, "1e309", "-0", "NaN",
           "x" * 300]
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12) | st.sampled_from(HOSTILE))
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_clean_exit(res, allowed=(0, 1, 2)) -> None:
    """The CLI contract: an allowed exit code, no traceback, no exception escaping the command."""
    assert res.exit_code in allowed, f"exit {res.exit_code}:\n{res.output}"
    assert "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)


def assert_no_partial_files(folder: Path) -> None:
    leftovers = [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == [], leftovers


# ------------------------------------------------------------------------------------------ mutations


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node[:4]):
            yield from _paths(value, prefix + (i,))


def _get(node, path):
    for part in path:
        node = node[part]
    return node


@st.composite
def mutated(draw, document: dict, max_ops: int = 3):
    """``document`` after 1..max_ops random edits: replace a value, delete a key or item, add an unknown
    key, wrap a value in a list, or change a number's size."""
    doc = copy.deepcopy(document)
    for _ in range(draw(st.integers(1, max_ops))):
        path = draw(st.sampled_from(list(_paths(doc))))
        op = draw(st.sampled_from(["replace", "delete", "add", "wrap", "number"]))
        parent = _get(doc, path[:-1]) if path else None
        if not path:
            if op == "add" and isinstance(doc, dict):
                doc[draw(st.text(max_size=8))] = draw(JSON_VALUES)
            continue
        key = path[-1]
        if op == "replace":
            parent[key] = draw(JSON_VALUES)
        elif op == "delete":
            del parent[key]
        elif op == "add":
            target = parent[key]
            if isinstance(target, dict):
                target[draw(st.text(max_size=8) | st.sampled_from(HOSTILE))] = draw(JSON_VALUES)
            elif isinstance(target, list):
                target.insert(draw(st.integers(0, len(target))), draw(JSON_VALUES))
        elif op == "wrap":
            parent[key] = [parent[key]]
        elif op == "number" and isinstance(parent[key], (int, float)) and not isinstance(parent[key], bool):
            parent[key] = draw(st.sampled_from([0, -1, 2**63, 10**308, float("inf"), float("nan"), 1e-300]))
    return doc


@st.composite
def mangled_text(draw, text: str):
    """``text`` cut short, with a slice replaced by random characters, or left whole."""
    op = draw(st.sampled_from(["truncate", "splice", "whole"]))
    if op == "truncate":
        return text[: draw(st.integers(0, max(0, len(text) - 1)))]
    if op == "splice":
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 40)))
        return text[:i] + draw(st.text(max_size=20) | st.sampled_from(HOSTILE)) + text[j:]
    return text


# ------------------------------------------------------------------------------------------ inputs


@functools.lru_cache(maxsize=1)
def base_spec() -> dict:
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["model"]["checkpoint"] = str(CHECKPOINT)
    raw["device"] = "cpu"
    raw.pop("report", None)
    return raw


@functools.lru_cache(maxsize=1)
def base_result() -> dict:
    return json.loads(make_result(shift=None).model_dump_json())


@functools.lru_cache(maxsize=1)
def base_records() -> tuple:
    """Twelve Materials Project records of the bundled sample, four of them with Fe."""
    with gzip.open(SAMPLE, "rt") as fh:
        records = [json.loads(line) for _, line in zip(range(200), fh)]
    fe = [r for r in records if "Fe" in json.dumps(r)][:4]
    return tuple(fe + [r for r in records if r not in fe][:8])


def _write_doc(path: Path, doc, as_json: bool) -> None:
    text = json.dumps(doc, allow_nan=True) if as_json else yaml.safe_dump(doc, allow_unicode=True)
    path.write_text(text, encoding="utf-8", errors="surrogatepass")


# ------------------------------------------------------------------------------------------ properties


@PROFILE
@given(doc=mutated(base_spec()), as_json=st.booleans(), mangle=st.booleans(), data=st.data())
def test_mutated_specs_validate_with_exit_0_or_2(tmp_path_factory, doc, as_json, mangle, data):
    folder = tmp_path_factory.mktemp("spec")
    path = folder / ("spec.json" if as_json else "spec.yaml")
    _write_doc(path, doc, as_json)
    if mangle:
        path.write_text(data.draw(mangled_text(path.read_text())), encoding="utf-8", errors="surrogatepass")
    res = invoke("validate", path)
    assert_clean_exit(res, (0, 2))
    assert_no_partial_files(folder)


@PROFILE
@given(doc=mutated(base_result()), mangle=st.booleans(), gates=st.none() | mutated({"max_mae_ratio": 2.0}),
       data=st.data())
def test_mutated_results_gate_with_exit_0_1_or_2(tmp_path_factory, doc, mangle, gates, data):
    folder = tmp_path_factory.mktemp("results")
    path = folder / "results.json"
    _write_doc(path, doc, as_json=True)
    if mangle:
        path.write_text(data.draw(mangled_text(path.read_text())), encoding="utf-8")
    args = ["gate", path, "--junit", folder / "gates.xml"]
    if gates is not None:
        _write_doc(folder / "gates.yaml", gates, as_json=False)
        args += ["--gates", folder / "gates.yaml"]
    res = invoke(*args)
    assert_clean_exit(res)
    if res.exit_code == 2:
        assert not (folder / "gates.xml").exists()
    assert_no_partial_files(folder)


@settings(PROFILE, max_examples=REPORT_EXAMPLES)
@given(doc=mutated(base_result(), max_ops=2))
def test_mutated_results_render_or_are_refused_without_partial_reports(tmp_path_factory, doc):
    folder = tmp_path_factory.mktemp("render")
    path = folder / "results.json"
    _write_doc(path, doc, as_json=True)
    out = folder / "report"
    res = invoke("report", path, "--out", out, "--format", "html")
    assert_clean_exit(res, (0, 2))
    if res.exit_code == 2:
        assert not (out / "report.html").exists()
    else:
        assert (out / "report.html").is_file()
    if out.exists():
        assert_no_partial_files(out)


@st.composite
def mutated_records(draw):
    records = [copy.deepcopy(r) for r in base_records()]
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(records) - 1))
        field = draw(st.sampled_from(["material_id", "formation_energy_per_atom", "structure", "cif", "record"]))
        if field == "record":
            records[i] = draw(JSON_VALUES)
        elif field in ("structure", "cif") and isinstance(records[i], dict) and field in records[i]:
            if field == "cif" and isinstance(records[i][field], str):
                records[i][field] = draw(mangled_text(records[i][field]))
            else:
                records[i][field] = draw(mutated(records[i][field]) if isinstance(records[i][field], dict)
                                         else JSON_VALUES)
        elif isinstance(records[i], dict):
            records[i][field] = draw(JSON_VALUES)
    return records


@PROFILE
@given(records=mutated_records(), mangle=st.booleans(), data=st.data())
def test_mutated_data_records_are_read_or_refused(tmp_path_factory, records, mangle, data):
    folder = tmp_path_factory.mktemp("data")
    text = "".join(json.dumps(r, allow_nan=True) + "\n" for r in records)
    if mangle:
        text = data.draw(mangled_text(text))
    (folder / "data.jsonl").write_text(text, encoding="utf-8", errors="surrogatepass")
    spec = copy.deepcopy(base_spec())
    spec["data"] = {"source": "mp", "path": str(folder / "data.jsonl"), "target": "formation_energy_per_atom"}
    spec["split"] = {"train": 0.5, "val": 0.25, "test": 0.25}
    _write_doc(folder / "spec.yaml", spec, as_json=False)
    res = invoke("data", folder / "spec.yaml", "--manifest", folder / "manifest.json")
    assert_clean_exit(res, (0, 2))
    if res.exit_code == 2:
        assert not (folder / "manifest.json").exists()
    assert_no_partial_files(folder)


@PROFILE
@given(rows=st.lists(st.tuples(st.sampled_from(["mp-1", "mp-2", "", "mp-1"]),
                               st.sampled_from(["-1.2", "x", "", "nan", "1e999"]),
                               st.booleans()), min_size=1, max_size=5),
       cut=st.integers(0, 400), data=st.data())
def test_mutated_csv_files_are_read_or_refused(tmp_path_factory, rows, cut, data):
    folder = tmp_path_factory.mktemp("csv")
    cif = ROCKSALT.replace('"', "")
    body = "".join(f'{i},{t},"{cif if ok else data.draw(mangled_text(cif))}"\n' for i, t, ok in rows)
    text = "material_id,formation_energy_per_atom,cif\n" + body
    text = text[: len(text) - cut] if cut < len(text) else text
    (folder / "data.csv").write_text(text, encoding="utf-8", errors="surrogatepass")
    spec = copy.deepcopy(base_spec())
    spec["data"] = {"source": "csv", "path": str(folder / "data.csv"), "target": "formation_energy_per_atom"}
    _write_doc(folder / "spec.yaml", spec, as_json=False)
    res = invoke("data", folder / "spec.yaml")
    assert_clean_exit(res, (0, 2))
