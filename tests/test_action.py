"""The GitHub Action (action.yml): its shape, and its shell steps run locally with bash against a fake
`traits` (and a fake `python`) on PATH, as the runner would run them, to check the commands it builds and
how it maps exit codes 0 / 1 / 2 / 3 to the job's outcome."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ACTION = ROOT / "action.yml"
BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash")

FAKE_TRAITS = """#!/usr/bin/env bash
# records its arguments, writes a results file where --out points, exits with $FAKE_TRAITS_EXIT
printf '%s\\n' "$*" >> "$FAKE_LOG"
out=""
while [ $# -gt 0 ]; do
  case "$1" in --out) out="$2"; shift ;; --junit) : > "$2" ;; esac
  shift
done
if [ -n "$out" ]; then mkdir -p "$out"; echo '{}' > "$out/results.json"; fi
exit "${FAKE_TRAITS_EXIT:-0}"
"""
FAKE_PYTHON = """#!/usr/bin/env bash
printf 'python %s\\n' "$*" >> "$FAKE_LOG"
"""


@pytest.fixture(scope="module")
def action() -> dict:
    return yaml.safe_load(ACTION.read_text(encoding="utf-8"))


def step(action: dict, name: str) -> dict:
    return next(s for s in action["runs"]["steps"] if s.get("name") == name)


def _expand(value: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    def sub(match: re.Match) -> str:
        expr = match.group(1).strip()
        if expr.startswith("inputs."):
            return inputs[expr.removeprefix("inputs.")]
        if expr.startswith("steps.run.outputs."):
            return outputs.get(expr.removeprefix("steps.run.outputs."), "")
        raise AssertionError(f"unexpected expression in a step's env: {expr}")

    return re.sub(r"\$\{\{(.*?)\}\}", sub, str(value))


class Runner:
    """Runs the action's bash steps the way a runner does: env from the step, $GITHUB_OUTPUT a file."""

    def __init__(self, action: dict, tmp: Path, inputs: dict[str, str] | None = None, exit_code: int = 0):
        self.action, self.tmp = action, tmp
        self.inputs = {k: str(v.get("default", "")) for k, v in action["inputs"].items()}
        self.inputs.update(inputs or {})
        bin_dir = tmp / "bin"
        bin_dir.mkdir(exist_ok=True)
        for name, text in (("traits", FAKE_TRAITS), ("python", FAKE_PYTHON), ("sudo", "#!/usr/bin/env bash\nexit 0\n")):
            path = bin_dir / name
            path.write_text(text)
            path.chmod(0o755)
        self.log = tmp / "calls.log"
        self.output = tmp / "github_output"
        self.output.write_text("")
        self.env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp),
                    "FAKE_LOG": str(self.log), "FAKE_TRAITS_EXIT": str(exit_code), "GITHUB_OUTPUT": str(self.output)}
        self.outputs: dict[str, str] = {}

    def run(self, name: str) -> subprocess.CompletedProcess:
        s = step(self.action, name)
        assert s.get("shell") == "bash" and "run" in s
        assert "${{" not in s["run"], "step scripts read their inputs from env only (no template injection)"
        env = {**self.env, **{k: _expand(v, self.inputs, self.outputs) for k, v in (s.get("env") or {}).items()}}
        # as the runner does for `shell: bash`: bash --noprofile --norc -eo pipefail {0}
        script = self.tmp / "step.sh"
        script.write_text(s["run"])
        res = subprocess.run([BASH, "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=self.tmp, env=env,
                             capture_output=True, text=True, timeout=60)
        for line in self.output.read_text().splitlines():
            key, _, value = line.partition("=")
            self.outputs[key] = value
        return res

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


def test_action_is_a_composite_that_caches_runs_uploads_and_decides(action):
    assert action["runs"]["using"] == "composite"
    names = [s.get("name") for s in action["runs"]["steps"]]
    assert names == ["Set up Python", "Cache the TRAITS graph cache (~/.cache/traits)", "Install TRAITS",
                     "Run traits", "Upload the trust report", "TRAITS verdict"]
    cache = step(action, "Cache the TRAITS graph cache (~/.cache/traits)")
    assert cache["uses"].startswith("actions/cache@") and cache["with"]["path"] == "~/.cache/traits"
    upload = step(action, "Upload the trust report")
    assert upload["uses"].startswith("actions/upload-artifact@") and upload["if"] == "always()"
    assert upload["with"]["path"] == "${{ inputs.out }}"
    assert set(action["outputs"]) >= {"exit-code", "status"}
    assert action["inputs"]["package"]["default"] == "traits-audit"


def test_install_step_installs_cpu_torch_then_traits(action, tmp_path):
    r = Runner(action, tmp_path, {"package": "."})
    res = r.run("Install TRAITS")
    assert res.returncode == 0, res.stderr
    calls = r.calls()
    pips = [c for c in calls if c.startswith("python -m pip install")]
    assert pips == ["python -m pip install --upgrade pip",
                    "python -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu",
                    "python -m pip install ."]
    assert calls[-1] == "--version"  # the fake traits recorded `traits --version`


@pytest.mark.parametrize("code,status", [(0, "pass"), (1, "gate-failed"), (2, "bad-input"), (3, "internal-error")])
def test_run_step_records_the_exit_code_and_the_verdict_maps_it(action, tmp_path, code, status):
    r = Runner(action, tmp_path, {"spec": "audits/my model.yaml", "args": "--format json,html"}, exit_code=code)
    res = r.run("Run traits")
    assert res.returncode == 0, res.stderr  # the report is uploaded before the job fails
    assert r.outputs["exit-code"] == str(code) and r.outputs["status"] == status
    assert r.calls() == ["audit audits/my model.yaml --out traits-out --junit traits-out/gates.xml --format json,html"]
    assert (tmp_path / "traits-out" / "results.json").exists()
    verdict = r.run("TRAITS verdict")
    assert verdict.returncode == code
    if code == 0:
        assert "every gate passed" in verdict.stdout and "::error" not in verdict.stdout
    else:
        title = {1: "TRAITS gate failed", 2: "TRAITS bad input", 3: "TRAITS internal error"}[code]
        assert f"::error title={title}::" in verdict.stdout


def test_gate_and_compare_commands(action, tmp_path):
    r = Runner(action, tmp_path, {"command": "gate", "results": "old/results.json", "gates": "strict.yaml"},
               exit_code=1)
    assert r.run("Run traits").returncode == 0
    assert r.calls() == ["gate old/results.json --gates strict.yaml --junit traits-out/gates.xml"]
    assert r.outputs["status"] == "gate-failed"

    second = tmp_path / "compare"
    second.mkdir()
    r = Runner(action, second, {"command": "compare", "baseline": "a/results.json", "results": "b/results.json",
                                "out": "cmp"})
    assert r.run("Run traits").returncode == 0
    assert r.calls() == ["compare a/results.json b/results.json --out cmp --junit cmp/gates.xml"]
    assert r.outputs["status"] == "pass"


@pytest.mark.parametrize("inputs", [{"command": "audit"}, {"command": "gate"}, {"command": "nonsense"},
                                    {"command": "compare", "results": "b.json"}])
def test_missing_or_wrong_inputs_are_bad_input_without_calling_traits(action, tmp_path, inputs):
    r = Runner(action, tmp_path, inputs)
    res = r.run("Run traits")
    assert res.returncode == 0
    assert r.outputs["exit-code"] == "2" and "::error title=TRAITS bad input::" in res.stdout
    assert r.calls() == []
    assert r.run("TRAITS verdict").returncode == 2


def test_verdict_without_an_exit_code_is_an_internal_error(action, tmp_path):
    r = Runner(action, tmp_path)
    res = r.run("TRAITS verdict")
    assert res.returncode == 3 and "internal error" in res.stdout


def test_documented_workflow_uses_the_action(action):
    """The workflow on the docs' CI page (the README links there) runs this action."""
    readme = (ROOT / "docs" / "ci.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    workflows = [yaml.safe_load(b) for b in blocks if "jobs:" in b]
    uses = [s.get("uses", "") for w in workflows for job in w["jobs"].values() for s in job["steps"]]
    assert any(u == "./" or u.endswith("/traits@v0.1.0") for u in uses), uses
    for w in workflows:
        for job in w["jobs"].values():
            for s in job["steps"]:
                if s.get("uses") in ("./",) or str(s.get("uses", "")).endswith("/traits@v0.1.0"):
                    assert set(s.get("with", {})) <= set(action["inputs"]), s


def _no_forged_lines(text: str) -> None:
    """Only the action's own workflow commands start a line (GitHub reads `::name ...::` at a line's start)."""
    for line in text.splitlines():
        assert not line.startswith("::") or line.startswith("::error title=TRAITS "), repr(line)


def test_a_newline_in_the_command_input_is_percent_encoded_not_a_forged_workflow_command(action, tmp_path):
    r = Runner(action, tmp_path, {"command": "x 100%\r\n::error title=forged::all gates passed\n::add-mask::y"})
    res = r.run("Run traits")
    assert res.returncode == 0 and r.outputs["exit-code"] == "2" and r.calls() == []
    _no_forged_lines(res.stdout)
    assert ("::error title=TRAITS bad input::unknown command 'x 100%25%0D%0A::error title=forged::all gates passed"
            "%0A::add-mask::y' (choose audit, gate or compare)") in res.stdout


@pytest.mark.parametrize("code", [0, 1])
def test_a_newline_in_the_out_input_never_starts_a_line(action, tmp_path, code):
    out = "o\n::error title=forged::passed\n::stop-commands::t"
    r = Runner(action, tmp_path, {"spec": "s.yaml", "out": out}, exit_code=code)
    assert r.run("Run traits").returncode == 0 and r.outputs["exit-code"] == str(code)
    assert (tmp_path / out / "results.json").exists()  # traits itself gets the directory as it is
    verdict = r.run("TRAITS verdict")
    assert verdict.returncode == code
    _no_forged_lines(verdict.stdout)
    assert "o%0A::error title=forged::passed%0A::stop-commands::t" in verdict.stdout


@pytest.mark.parametrize("args", ["--allow-code", "--format json --allow-code", "--allow-code=1"])
def test_args_cannot_smuggle_allow_code_past_the_allow_code_input(action, tmp_path, args):
    r = Runner(action, tmp_path, {"spec": "s.yaml", "args": args})
    res = r.run("Run traits")
    assert res.returncode == 0 and r.outputs["exit-code"] == "2" and r.outputs["status"] == "bad-input"
    assert r.calls() == []  # traits never ran, so no spec code was imported
    assert "::error title=TRAITS bad input::input 'args' passes --allow-code" in res.stdout
    assert r.run("TRAITS verdict").returncode == 2

    allowed = tmp_path / "allowed"
    allowed.mkdir()
    r = Runner(action, allowed, {"spec": "s.yaml", "args": args, "allow-code": "true"})
    assert r.run("Run traits").returncode == 0 and r.outputs["exit-code"] == "0"
    assert r.calls() == [f"audit s.yaml --out traits-out --junit traits-out/gates.xml {args}"]
