"""The code import policy of specs (issue 31, item 1): a spec imports Python code (the torch adapter's
options.module, featuriser, collate) only with --allow-code or TRAITS_ALLOW_CODE=1, refused before any import
otherwise; allowed, the named object is checked before anything is called; validate lists the imports without
importing; the GitHub Action passes its allow-code input through env."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from traits.cli import app
from traits.errors import SpecError
from traits.models.base import get_adapter
from traits.models.torch_module import ALLOW_CODE_ENV, TorchModuleOptions, import_object

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
PROBE = "traits_hostile_probe"  # the module a hostile spec names (written into tmp_path)

PROBE_SOURCE = '''
import os
from pathlib import Path
from shutil import rmtree as wipe

import torch

Path(os.environ["PROBE_IMPORTED"]).write_text("imported")


def _mark():
    Path(os.environ["PROBE_CALLED"]).write_text("called")


def build(**kwargs):
    _mark()


class NotAModule:
    def __init__(self, **kwargs):
        _mark()


def featurise(structure):
    return structure


system = os.system


class Net(torch.nn.Module):
    def __init__(self, width=2):
        super().__init__()
        self.lin = torch.nn.Linear(width, 1)
'''


def _invoke(*args, env: dict | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


@pytest.fixture
def probe(tmp_path, monkeypatch):
    """A module PROBE on sys.path that records being imported (PROBE_IMPORTED) and a callable being called
    (PROBE_CALLED)."""
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / f"{PROBE}.py").write_text(PROBE_SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PROBE_IMPORTED", str(tmp_path / "imported"))
    monkeypatch.setenv("PROBE_CALLED", str(tmp_path / "called"))
    monkeypatch.delenv(ALLOW_CODE_ENV, raising=False)
    monkeypatch.delitem(sys.modules, PROBE, raising=False)
    yield tmp_path
    sys.modules.pop(PROBE, None)


def _torch_spec(folder: Path, **options) -> Path:
    weights = folder / "w.safetensors"
    weights.write_bytes(b"")
    spec = folder / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "code", "device": "cpu", "data": {"source": "sample", "target": "formation_energy_per_atom",
                                                  "subsample": 60},
        "model": {"architecture": "torch", "checkpoint": str(weights), "options": options},
        "report": {"formats": ["json"]},
    }))
    return spec


def test_a_spec_that_runs_os_system_is_refused_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.delenv(ALLOW_CODE_ENV, raising=False)
    pwned = tmp_path / "pwned"
    spec = _torch_spec(tmp_path, module="os:system", kwargs={"command": f"id > {pwned}"})
    for command in (["validate", spec], ["audit", spec, "--out", tmp_path / "out"], ["data", spec]):
        res = _invoke(*command)
        assert res.exit_code == 2, res.output
        text = " ".join(res.output.split())
        assert "model.options.module" in text and "'os'" in text, text
        assert "--allow-code" in text and "TRAITS_ALLOW_CODE=1" in text and str(spec) in text
        assert "Traceback" not in res.output
    assert not pwned.exists() and not (tmp_path / "out").exists()
    with pytest.raises(ValidationError) as info:  # every option that imports code needs the permission
        TorchModuleOptions.model_validate({"module": "x.y:Net", "featuriser": "subprocess:Popen",
                                           "collate": "runpy:run_path"})
    assert [e["loc"] for e in info.value.errors()] == [("module",), ("featuriser",), ("collate",)]
    assert all("--allow-code" in e["msg"] for e in info.value.errors())


def test_refused_without_permission_before_the_module_is_imported(probe):
    for what, kind in (("model.options.module", "class"), ("model.options.featuriser", "function")):
        with pytest.raises(SpecError, match=f"{what} '{PROBE}:build' would import the Python module '{PROBE}'.*"
                                            "--allow-code.*TRAITS_ALLOW_CODE=1"):
            import_object(f"{PROBE}:build", what, kind)
    with pytest.raises(ValidationError, match="--allow-code"):
        TorchModuleOptions(module=f"{PROBE}:Net")
    assert not (probe / "imported").exists() and PROBE not in sys.modules


def test_allowed_a_callable_that_is_not_a_module_class_is_refused_before_it_is_called(probe, monkeypatch):
    monkeypatch.setenv(ALLOW_CODE_ENV, "1")
    adapter = get_adapter("torch")
    weights = probe / "w.safetensors"
    weights.write_bytes(b"")
    for name, what in (("build", "the function"), ("NotAModule", "the class"), ("system", "the builtin")):
        options = TorchModuleOptions(module=f"{PROBE}:{name}")
        with pytest.raises(SpecError, match=f"model.options.module '{PROBE}:{name}' is {what}.*not a subclass of "
                                            "torch.nn.Module; it was not called"):
            adapter.load(weights, options, CPU)
    assert (probe / "imported").exists() and not (probe / "called").exists()
    for path in ("subprocess:Popen", "runpy:run_path", "os:system"):  # refused before the import, by load too
        with pytest.raises(ValidationError, match="standard library"):
            TorchModuleOptions(module=path)
        with pytest.raises(SpecError, match="standard library"):
            adapter.load(weights, TorchModuleOptions.model_construct(module=path), CPU)
    for name in ("NotAModule", "system", "wipe"):  # a class, a builtin, a function of another module
        with pytest.raises(SpecError, match=f"model.options.featuriser '{PROBE}:{name}' is .*not a Python "
                                            f"function defined in '{PROBE}'"):
            import_object(f"{PROBE}:{name}", "model.options.featuriser", "function")
    assert not (probe / "called").exists()
    assert import_object(f"{PROBE}:featurise", "model.options.featuriser", "function").__name__ == "featurise"
    with pytest.raises(SpecError, match="must be written 'package.module:Name'"):
        import_object("os;system:x", "model.options.module")


def test_allowed_an_nn_module_subclass_is_built_and_its_weights_loaded(probe, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setenv(ALLOW_CODE_ENV, "yes")
    Net = importlib.import_module(PROBE).Net  # noqa: N806 - the probe's class
    net = Net(width=3)
    weights = probe / "net.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    options = TorchModuleOptions(module=f"{PROBE}:Net", kwargs={"width": 3})
    model = get_adapter("torch").load(weights, options, CPU)
    assert isinstance(model, Net) and torch.equal(model.lin.weight, net.lin.weight)


def test_validate_lists_the_code_a_spec_imports_without_importing_it(probe):
    spec = _torch_spec(probe, module=f"{PROBE}:Net", featuriser=f"{PROBE}:featurise")
    res = _invoke("validate", spec)
    assert res.exit_code == 2 and "--allow-code" in res.output
    for args, env in ((["validate", "--allow-code", spec], None), (["--allow-code", "validate", spec], None),
                      (["validate", spec], {ALLOW_CODE_ENV: "1"})):
        res = _invoke(*args, env=env)
        assert res.exit_code == 0, res.output
        lines = [line for line in res.output.splitlines() if line.startswith("imports code:")]
        assert len(lines) == 2, res.output
        assert f"model.options.module '{PROBE}:Net' (the Python module '{PROBE}'" in lines[0]
        assert "model.options.featuriser" in lines[1] and all("allowed by --allow-code" in x for x in lines)
    assert not (probe / "imported").exists() and PROBE not in sys.modules
    assert ALLOW_CODE_ENV not in os.environ  # the option holds for its command only


def test_the_action_passes_allow_code_through_env_and_defaults_to_off(tmp_path):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("needs bash")
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    assert action["inputs"]["allow-code"]["default"] == "false"
    run = next(s for s in action["runs"]["steps"] if s.get("name") == "Run traits")
    assert "${{" not in run["run"] and run["env"]["TRAITS_ALLOW_CODE_INPUT"] == "${{ inputs.allow-code }}"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "traits"
    fake.write_text('#!/usr/bin/env bash\necho "allow=${TRAITS_ALLOW_CODE-unset}" >> "$FAKE_LOG"\n')
    fake.chmod(0o755)
    script = tmp_path / "step.sh"
    script.write_text(run["run"])
    seen = []
    for given, inherited in (("false", "1"), ("true", None), ("$(touch x)", None)):
        log = tmp_path / "calls.log"
        log.unlink(missing_ok=True)
        env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path), "FAKE_LOG": str(log),
               "GITHUB_OUTPUT": str(tmp_path / "out.txt"), "TRAITS_COMMAND": "audit", "TRAITS_SPEC": "s.yaml",
               "TRAITS_RESULTS": "", "TRAITS_BASELINE": "", "TRAITS_GATES": "", "TRAITS_OUT": str(tmp_path / "o"),
               "TRAITS_ARGS": "", "TRAITS_ALLOW_CODE_INPUT": given}
        if inherited is not None:
            env[ALLOW_CODE_ENV] = inherited
        res = subprocess.run([bash, "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        seen.append(log.read_text().strip())
    assert seen == ["allow=unset", "allow=1", "allow=unset"] and not (tmp_path / "x").exists()


@pytest.mark.parametrize("graph, field", [({"cutoff": -1}, "graph.cutoff"), ({"radius": 8}, "graph.radius")])
def test_the_torch_adapters_graph_settings_are_validated_with_the_spec(monkeypatch, graph, field):
    """options.graph is held to data.graph's own bounds when the spec is loaded (validate exits 2 naming it)."""
    from traits.models.torch_module import TorchModuleOptions

    monkeypatch.setenv("TRAITS_ALLOW_CODE", "1")
    with pytest.raises(ValueError, match=field):
        TorchModuleOptions(module="mypkg.nets:Net", graph=graph)
    assert TorchModuleOptions(module="mypkg.nets:Net", graph={"cutoff": 6.0}).graph == {"cutoff": 6.0}
