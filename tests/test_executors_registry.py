"""The executor registry: an executor is one class and one registration line; it is chosen by name (an unknown
name lists the known ones, exit 2), and its own settings travel in ExecutorOptions."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import yaml
from typer.testing import CliRunner

from traits.errors import SpecError
from traits.study.executors import (
    EXECUTORS,
    Executor,
    ExecutorOptions,
    TaskFailed,
    execute,
    make_executor,
    register_executor,
)


@dataclass(frozen=True)
class EchoSettings:
    tag: str = "echo"


@pytest.fixture(autouse=True)
def _restore_thread_settings():
    """A campaign run in this process with --threads sets this process's thread variables (as asked): put them
    back so later tests' subprocesses do not inherit them."""
    import os

    import torch

    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    threads = torch.get_num_threads()
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    torch.set_num_threads(threads)


@pytest.fixture()
def echo():
    """An executor added the way a new one is: one class, one registration line (removed after the test)."""

    @register_executor("echo")
    class EchoExecutor(Executor):
        """In this process, one job after another, each logged with the executor's own ``tag`` setting."""

        Settings = EchoSettings
        ran: list[str] = []

        def run(self, fn, jobs, log):
            out = []
            for job in jobs:
                EchoExecutor.ran.append(job.label)
                log(f"{self.settings.tag}: {job.label}")
                try:
                    out.append(fn(job))
                except Exception as exc:
                    out.append(TaskFailed(job, f"{type(exc).__name__}: {exc}"))
            return out

    try:
        yield EchoExecutor
    finally:
        EXECUTORS.pop("echo", None)


def _double(job) -> int:
    return 2 * job


def test_the_built_in_executors_are_registered_by_name():
    assert list(EXECUTORS)[:2] == ["local", "dask"]
    assert make_executor(ExecutorOptions()).describe() == {"kind": "local", "workers": 1, "threads_per_worker": None,
                                                           "scheduler": None}
    assert make_executor(ExecutorOptions()).in_process and not make_executor(ExecutorOptions(workers=2)).in_process


def test_an_unknown_executor_lists_the_registered_ones(echo):
    with pytest.raises(SpecError, match=r"--executor 'slurm': choose one of local, dask, echo$"):
        make_executor(ExecutorOptions("slurm"))
    with pytest.raises(SpecError, match="choose one of"):
        execute(_double, [], ExecutorOptions("slurm"))  # refused even with nothing to run


def test_settings_belong_to_one_executor(echo):
    assert ExecutorOptions(settings={"scheduler": None}).settings == {}  # None: not given
    with pytest.raises(SpecError, match="^--scheduler needs --executor dask$"):
        make_executor(ExecutorOptions("echo", settings={"scheduler": "tcp://127.0.0.1:8786"}))
    with pytest.raises(SpecError, match="^--tag needs --executor echo$"):
        make_executor(ExecutorOptions("local", settings={"tag": "x"}))
    with pytest.raises(SpecError, match=r"--bogus: not a setting of the dask executor \(its settings: processes, "
                                        r"scheduler\)"):
        make_executor(ExecutorOptions("dask", settings={"bogus": 1}))
    assert make_executor(ExecutorOptions("echo", settings={"tag": "t"})).settings == EchoSettings("t")


def test_a_name_is_registered_once(echo):
    with pytest.raises(ValueError, match="registered already"):
        register_executor("echo")(type("Other", (Executor,), {}))
    assert register_executor("echo")(echo) is echo  # the same class again is harmless


def test_a_registered_executor_runs_jobs(echo):
    logs: list[str] = []
    got = execute(_double_job, [_Job(1), _Job(2)], ExecutorOptions("echo", settings={"tag": "e"}), log=logs.append)
    assert got == [2, 4] and logs == ["e: job 1", "e: job 2"]


@dataclass(frozen=True)
class _Job:
    n: int

    @property
    def label(self) -> str:
        return f"job {self.n}"


def _double_job(job: _Job) -> int:
    return 2 * job.n


def test_run_campaign_takes_options_or_the_flags_not_both(tmp_path):
    from traits.campaign import run_campaign

    with pytest.raises(TypeError, match="not both"):
        run_campaign(tmp_path / "c", tmp_path / "out", options=ExecutorOptions(), workers=2)
    with pytest.raises(SpecError, match="choose one of"):
        run_campaign(tmp_path / "c", tmp_path / "out", executor="slurm")
    assert not (tmp_path / "out").exists()  # bad executor options are refused before the output folder


def test_a_tiny_campaign_through_a_registered_executor(echo, tmp_path):
    """The new executor runs a real (tiny) campaign from run_campaign, and the CLI selects it by name."""
    from tests.test_campaign import mini_spec
    from traits.campaign import run_campaign
    from traits.cli import app

    campaign = tmp_path / "campaign"
    campaign.mkdir()
    (campaign / "a-fe.yaml").write_text(yaml.safe_dump(mini_spec("a-fe", "formation_energy_per_atom", ["Fe"])))
    (campaign / "campaign.yaml").write_text(yaml.safe_dump({"profiles": {"tiny": {"data.subsample": 120}}}))
    out = tmp_path / "out"
    logs: list[str] = []
    summary = run_campaign(campaign, out, seeds=[0], profile="tiny", log=logs.append,
                           options=ExecutorOptions("echo", threads=1, settings={"tag": "via-echo"}))
    assert echo.ran == ["seed 0 a-fe"] and "via-echo: seed 0 a-fe" in logs
    assert [r["task"] for r in summary["rows"]] == ["a-fe"]
    assert summary["executor"] == {"kind": "echo", "workers": 1, "threads_per_worker": 1, "scheduler": None}
    assert json.loads((out / "seed-0" / "a-fe" / "results.json").read_text())["provenance"]["seed"] == 0
    # the command line names it like a built-in one; the finished task is reused, not run again
    res = CliRunner().invoke(app, ["campaign", str(campaign), "--out", str(out), "--seeds", "0", "--profile", "tiny",
                                   "--executor", "echo"])
    assert res.exit_code == 0, res.output
    assert echo.ran == ["seed 0 a-fe"]
    assert json.loads((out / "summary.json").read_text())["executor"]["kind"] == "echo"
    res = CliRunner().invoke(app, ["campaign", str(campaign), "--out", str(out), "--executor", "nope"])
    assert res.exit_code == 2 and "choose one of local, dask, echo" in " ".join(res.output.split())
