"""A command line that starts at once: `traits --help`, `validate`, `schema`, `gate` and `report` import no torch
(nor pymatgen, torch_geometric or weasyprint; only `report` draws figures with matplotlib), each checked in a fresh
interpreter running the command as `traits` would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from result_factory import make_result

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "audits" / "quickstart.yaml"

#: Runs `traits ARGS...` in this interpreter, then prints which heavy libraries it imported and the thread
#: settings chosen at start-up, as one JSON line on stderr after a marker.
RUN_CLI = r"""
import json, sys
sys.argv = ["traits", *sys.argv[1:]]
from traits.cli import app
try:
    app(prog_name="traits")
    code = 0
except SystemExit as exc:
    code = exc.code or 0
from traits.threads import thread_record
heavy = ("torch", "torch_geometric", "pymatgen", "matplotlib", "weasyprint")
print("\nIMPORTS " + json.dumps({"exit": code, "loaded": [m for m in heavy if m in sys.modules],
                                 "threads": thread_record()}), file=sys.stderr)
"""


def run_cli(*args: str, cwd: Path = ROOT) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TRAITS_ALLOW_CODE", "TRAITS_THREADS")}
    proc = subprocess.run([sys.executable, "-c", RUN_CLI, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)
    marker = [line for line in proc.stderr.splitlines() if line.startswith("IMPORTS ")]
    assert marker, proc.stderr[-2000:]
    out = json.loads(marker[-1].removeprefix("IMPORTS "))
    out["stdout"], out["stderr"] = proc.stdout, proc.stderr
    return out


@pytest.fixture(scope="module")
def results_file(tmp_path_factory) -> Path:
    return make_result().write(tmp_path_factory.mktemp("results") / "results.json")


def torch_spec(folder: Path) -> Path:
    """A spec of the torch adapter: options.module names code (refused without --allow-code)."""
    (folder / "weights.safetensors").write_bytes(b"")
    spec = folder / "torch.yaml"
    spec.write_text("name: own-model\ndata: {source: sample, target: formation_energy_per_atom}\nomit: [Fe]\n"
                    "model:\n  architecture: torch\n  checkpoint: weights.safetensors\n"
                    "  options: {module: 'mypackage.models:Net', property: formation_energy_per_atom}\n")
    return spec


def test_help_imports_nothing_heavy():
    r = run_cli("--help")
    assert r["exit"] == 0 and "validate" in r["stdout"]
    assert r["loaded"] == []


def test_validate_imports_no_torch_and_no_pymatgen():
    r = run_cli("validate", str(QUICKSTART))
    assert r["exit"] == 0, r["stderr"]
    assert "valid audit spec quickstart-formation-energy-omit-Fe" in r["stdout"]
    assert r["loaded"] == []
    assert r["threads"]["threads"] >= 1 and r["threads"]["source"] == "available CPUs"  # chosen at start-up


def test_validate_checks_the_torch_adapters_options_without_torch(tmp_path):
    spec = torch_spec(tmp_path)
    refused = run_cli("validate", str(spec))
    assert refused["exit"] == 2
    assert "model.options.module (torch): 'mypackage.models:Net' would import" in refused["stderr"]
    allowed = run_cli("validate", "--allow-code", str(spec))
    assert allowed["exit"] == 0, allowed["stderr"]
    assert "imports code: model.options.module 'mypackage.models:Net'" in allowed["stdout"]
    assert refused["loaded"] == [] and allowed["loaded"] == []


def test_validate_still_names_the_field_of_a_bad_element(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(QUICKSTART.read_text().replace("omit: [Fe]", "omit: [Xx]").replace("../", str(ROOT) + "/"))
    r = run_cli("validate", str(spec))
    assert r["exit"] == 2
    assert "omit: Value error, 'Xx' is not a chemical element symbol" in r["stderr"] or \
        "omit: 'Xx' is not a chemical element symbol" in r["stderr"]
    assert r["loaded"] == []


def test_schema_imports_no_torch_and_exports_every_builtin_adapters_options():
    from traits.models.base import BUILTIN_ADAPTERS

    r = run_cli("schema")
    assert r["exit"] == 0, r["stderr"]
    assert r["loaded"] == []
    schema = json.loads(r["stdout"])
    assert set(BUILTIN_ADAPTERS) <= set(schema["x-traits-model-options"])
    assert "version" in schema["x-traits-model-options"]["chgnet"]["properties"]


def test_gate_imports_nothing_heavy(results_file):
    r = run_cli("gate", str(results_file))
    assert r["exit"] in (0, 1), r["stderr"]
    assert r["loaded"] == []


def test_report_html_imports_no_torch(results_file, tmp_path):
    r = run_cli("report", str(results_file), "--out", str(tmp_path / "report"), "--format", "html")
    assert r["exit"] == 0, r["stderr"]
    assert (tmp_path / "report" / "report.html").is_file()
    assert set(r["loaded"]) <= {"matplotlib"}  # the figures; no torch, pymatgen, torch_geometric or weasyprint


def test_light_modules_import_no_torch():
    code = ("import sys\nimport traits.models, traits.models.base, traits.models.options, traits.models.torch_module, "
            "traits.spec, traits.threads, traits.progress\n"
            "assert not {'torch', 'numpy', 'pymatgen'} & set(sys.modules), sorted({'torch', 'numpy', 'pymatgen'} "
            "& set(sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_builtin_options_are_the_adapters_own():
    """The torch-free options model of each built-in adapter is the class the adapter validates with."""
    from traits.models.base import BUILTIN_ADAPTERS, BUILTIN_OPTIONS, adapter_class, options_class

    assert set(BUILTIN_OPTIONS) == set(BUILTIN_ADAPTERS)
    for name in BUILTIN_ADAPTERS:
        assert options_class(name) is adapter_class(name).Options, name


def test_lazy_model_names_resolve():
    import traits.models as models

    for name in models.__all__:
        assert getattr(models, name) is not None
    with pytest.raises(AttributeError):
        models.no_such_name  # noqa: B018


def test_element_symbols_are_pymatgens():
    from pymatgen.core.periodic_table import Element

    from traits.spec import ELEMENT_SYMBOLS

    assert set(ELEMENT_SYMBOLS) == set(Element.__members__)
