"""Executors: the local process pool and Dask give the same results; a worker killed mid-task is rerun;
a mini campaign gives identical summaries on both."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from traits.errors import SpecError
from traits.study.executors import ExecutorOptions, TaskFailed, execute, plan_threads


@dataclass(frozen=True)
class Toy:
    index: int
    marker: str = ""
    task: str = "toy"
    threads: int = 1
    resources: tuple = ()

    @property
    def label(self) -> str:
        return f"toy {self.index}"


def square(job: Toy) -> int:
    if job.index == 3:
        raise ValueError("three is bad")
    return job.index ** 2


def die_once(job: Toy) -> int:
    """Kills its own worker process the first time it runs (a marker file remembers), then succeeds."""
    marker = Path(job.marker)
    if job.index == 1 and not marker.exists():
        marker.write_text("killed once")
        os._exit(17)
    return job.index * 10


def one_always_dies(job: Toy) -> int:
    """Job 1 kills its worker every time it runs (each run leaves a file in ``job.marker``); the others take
    a moment, so that they are running beside it when it dies."""
    if job.index == 1:
        (Path(job.marker) / f"run-{time.monotonic_ns()}").write_text("died")
        time.sleep(0.5)
        os._exit(9)
    time.sleep(1.0)
    return job.index * 10


def sleep_and_report(job: Toy) -> int:
    """Writes its worker's pid into the folder ``job.marker``, then works for two minutes."""
    (Path(job.marker) / str(os.getpid())).write_text("running")
    time.sleep(120)
    return job.index


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_stopped_campaign_leaves_no_worker_running(tmp_path, sig):
    """SIGTERM makes the pool stop its workers; after SIGKILL (no chance to) each worker notices that its
    campaign process is gone and ends itself. Either way no worker goes on with its task beside the next run."""
    driver = ("import sys; from tests.test_study_executors import Toy, sleep_and_report; "
              "from traits.study.executors import ExecutorOptions, execute; "
              "execute(sleep_and_report, [Toy(i, marker=sys.argv[1]) for i in range(4)], "
              "ExecutorOptions(workers=2, threads=1))")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", driver, str(tmp_path)], cwd=root,
                            env={**os.environ, "PYTHONPATH": str(root)})
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = [int(p.name) for p in tmp_path.iterdir()]
        assert len(workers) == 2 and all(_alive(w) for w in workers)
        proc.send_signal(sig)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 20
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers), "a worker outlived its campaign"
        assert len(list(tmp_path.iterdir())) == 2  # and none of the other two tasks was started
    finally:
        proc.kill()
        for w in [int(p.name) for p in tmp_path.iterdir()]:
            if _alive(w):
                os.kill(w, signal.SIGKILL)


def test_plan_threads():
    assert plan_threads(2, n_cores=2) == 1
    assert plan_threads(1, n_cores=16) == 16
    assert plan_threads(3, n_cores=16) == 5
    with pytest.raises(SpecError, match="exceeds"):
        plan_threads(2, 2, n_cores=2)
    with pytest.raises(SpecError, match="at least 1"):
        plan_threads(0)
    with pytest.raises(SpecError, match="choose one of"):
        execute(square, [Toy(0)], ExecutorOptions("slurm"))
    with pytest.raises(SpecError, match="needs --executor dask"):
        execute(square, [Toy(0)], ExecutorOptions(settings={"scheduler": "tcp://127.0.0.1:1"}))


def test_local_pool_results_in_order_failures_recorded_and_lost_worker_rerun(tmp_path):
    jobs = [Toy(i) for i in range(5)]
    got = execute(square, jobs, ExecutorOptions(workers=2, threads=1))
    assert got[:3] == [0, 1, 4] and got[4] == 16
    assert isinstance(got[3], TaskFailed) and "three is bad" in got[3].error
    logs: list[str] = []
    killing = [Toy(i, marker=str(tmp_path / "killed")) for i in range(3)]
    assert execute(die_once, killing, ExecutorOptions(workers=2, threads=1), log=logs.append) == [0, 10, 20]
    assert (tmp_path / "killed").read_text() == "killed once"
    assert any("worker was lost" in m for m in logs)


def test_a_task_that_always_kills_its_worker_fails_alone(tmp_path):
    """Only the jobs running when a worker died are charged, and they are then run one at a time: the job that
    kills its worker every time fails after 1 + max_lost runs, and its neighbours, queued or running beside it,
    all finish (before, every unfinished job was charged with every loss and all of them failed)."""
    jobs = [Toy(i, marker=str(tmp_path)) for i in range(6)]
    got = execute(one_always_dies, jobs, ExecutorOptions(workers=2, threads=1))
    assert [g for i, g in enumerate(got) if i != 1] == [0, 20, 30, 40, 50]
    assert isinstance(got[1], TaskFailed) and got[1].kind == "lost" and "lost 3 times" in got[1].error
    assert len(list(tmp_path.glob("run-*"))) == 3


def test_dask_local_cluster_matches_local_pool(tmp_path):
    pytest.importorskip("distributed")
    jobs = [Toy(i) for i in range(5)]
    got = execute(square, jobs, ExecutorOptions("dask", workers=1, threads=1, settings={"processes": False}))
    assert got[:3] == [0, 1, 4] and got[4] == 16 and isinstance(got[3], TaskFailed)


def slow_cube(job: Toy) -> int:
    time.sleep(0.3)
    return job.index ** 3


def test_two_campaigns_on_one_dask_scheduler_keep_their_own_results():
    """Two runs at once on one scheduler, with the same task names and indices: each gets its own results
    (task keys are unique to a run; keyed by index and task name alone, one run received the other's)."""
    pytest.importorskip("distributed")
    from concurrent.futures import ThreadPoolExecutor

    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp://", host="127.0.0.1",
                      dashboard_address=None, resources={"CPU": 2}) as cluster:
        jobs = [Toy(i) for i in range(4) if i != 3]
        with ThreadPoolExecutor(2) as pool:
            on_cluster = ExecutorOptions("dask", settings={"scheduler": cluster.scheduler_address})
            cubes = pool.submit(execute, slow_cube, jobs, on_cluster)
            time.sleep(0.1)
            squares = pool.submit(execute, square, jobs, on_cluster)
            assert cubes.result(timeout=120) == [0, 1, 8]
            assert squares.result(timeout=120) == [0, 1, 4]


@pytest.mark.slow
def test_dask_worker_killed_mid_task_is_rerun(tmp_path):
    pytest.importorskip("distributed")
    jobs = [Toy(i, marker=str(tmp_path / "killed")) for i in range(3)]
    assert execute(die_once, jobs, ExecutorOptions("dask", workers=1, threads=1)) == [0, 10, 20]
    assert (tmp_path / "killed").exists()


# ----------------------------------------------------------------------------------------------
# A mini campaign on each executor


def _mini(name, target, omit=(), holdout=None):
    from tests.test_campaign import mini_spec

    spec = mini_spec(name, target, list(omit))
    if holdout:
        spec["holdout"] = holdout
    return spec


@pytest.fixture()
def mini_campaign(tmp_path):
    d = tmp_path / "campaign"
    d.mkdir()
    (d / "a-fe.yaml").write_text(yaml.safe_dump(_mini("a-fe", "formation_energy_per_atom", ["Fe"])))
    (d / "b-row2.yaml").write_text(yaml.safe_dump(_mini("b-row2", "band_gap", holdout={"kind": "row", "values": [2]})))
    (d / "campaign.yaml").write_text(yaml.safe_dump({"profiles": {"tiny": {"data.subsample": 120}},
                                                     "resources": {"default": {"CPU": 1}}}))
    return d


def _comparable(summary: dict) -> dict:
    s = json.loads(json.dumps(summary))
    for key in ("wall_seconds_this_run", "executor"):
        s.pop(key, None)
    return s


def _kill_first_audit(job):
    """The campaign's task function, except that the first attempt of the first task kills its worker."""
    from traits.campaign import run_task

    marker = Path(job.where).parent.parent / "killed-once"
    if job.index == 0 and not marker.exists():
        marker.write_text("x")
        os._exit(9)
    return run_task(job)


@pytest.mark.slow
def test_mini_campaign_identical_on_local_pool_and_dask(mini_campaign, tmp_path):
    pytest.importorskip("distributed")
    from traits.campaign import run_campaign

    pool = ExecutorOptions("local", workers=2, threads=1)
    local = run_campaign(mini_campaign, tmp_path / "local", seeds=[0], profile="tiny", options=pool,
                         task_fn=_kill_first_audit)
    assert (tmp_path / "local" / "killed-once").exists()  # the first task's worker died and the task was rerun
    dask = run_campaign(mini_campaign, tmp_path / "dask", seeds=[0], profile="tiny",
                        options=ExecutorOptions("dask", workers=1, threads=1, settings={"processes": False}))
    assert len(local["rows"]) == len(dask["rows"]) == 2
    a, b = _comparable(local), _comparable(dask)
    for row in a["rows"] + b["rows"]:
        row.pop("wall_seconds")
    assert a == b
    assert {r["family"] for r in a["rows"]} == {"element", "row"}
    assert "row 2" in (tmp_path / "dask" / "summary.md").read_text()
    # idempotent: a second run on the pool reuses every finished task folder
    logs: list[str] = []
    run_campaign(mini_campaign, tmp_path / "local", seeds=[0], profile="tiny", options=pool, log=logs.append)
    assert sum("done earlier" in m for m in logs) == 2


def test_compute_estimate_text():
    from traits.campaign import estimate_text

    assert "no finished task" in estimate_text(6, 6, 2, 3, [], 2)
    text = estimate_text(4, 6, 2, 3, [100.0, 300.0], 2)
    assert "6 audits (2 tasks × 3 seeds), 4 to run" in text and "200 s per task" in text
    assert "4 × 200 s / 2 workers ≈ 0.1 h" in text
    assert estimate_text(0, 6, 2, 3, [1.0], 1).endswith("0 to run.")


def test_dask_refuses_a_gpu_task_without_a_gpu_worker():
    pytest.importorskip("distributed")

    @dataclass(frozen=True)
    class GpuToy(Toy):
        resources: dict = None  # type: ignore[assignment]

    job = GpuToy(0, resources={"GPU": 1})
    with pytest.raises(SpecError, match="no Dask worker offers it"):
        execute(square, [job], ExecutorOptions("dask", workers=2, threads=1, settings={"processes": False}))
