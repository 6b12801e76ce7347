"""Threads chosen from the CPUs actually available (affinity, cgroup quota), a passive OpenMP wait policy, the
user's TRAITS_THREADS / OMP_NUM_THREADS winning, and bad settings refused naming the variable."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from traits import threads as T
from traits.cli import app

ROOT = Path(__file__).resolve().parents[1]


def cgroup(tmp_path: Path, files: dict[str, str], proc: str = "0::/\n") -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    root.mkdir(exist_ok=True)
    (tmp_path / "proc-cgroup").write_text(proc)
    return root, tmp_path / "proc-cgroup"


def test_cgroup_v2_quota(tmp_path):
    assert T.cgroup_cpu_limit(*cgroup(tmp_path, {"cpu.max": "150000 100000\n"})) == 1.5
    assert T.cgroup_cpu_limit(*cgroup(tmp_path / "b", {"cpu.max": "max 100000\n"})) is None


def test_cgroup_v2_quota_of_the_process_group(tmp_path):
    root, proc = cgroup(tmp_path, {"cpu.max": "max 100000\n", "job/cpu.max": "50000 100000\n"}, "0::/job\n")
    assert T.cgroup_cpu_limit(root, proc) == 0.5


def test_cgroup_v1_quota(tmp_path):
    files = {"cpu,cpuacct/cpu.cfs_quota_us": "300000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}
    assert T.cgroup_cpu_limit(*cgroup(tmp_path, files)) == 3.0
    none = {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}
    assert T.cgroup_cpu_limit(*cgroup(tmp_path / "b", none)) is None


def test_available_cpus_is_the_affinity_capped_by_the_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert T.available_cpus(*cgroup(tmp_path, {"cpu.max": "250000 100000\n"}))[0] == 3  # 2.5 CPUs, rounded up
    count, why = T.available_cpus(*cgroup(tmp_path / "b", {"cpu.max": "max 100000\n"}))
    assert count == 8 and "affinity" in why
    assert T.available_cpus(*cgroup(tmp_path / "c", {"cpu.max": "10000 100000\n"}))[0] == 1  # at least one


def test_choice_from_the_cpus_with_a_short_spin_or_a_passive_wait_policy():
    r = T.choose_threads({}, cpus=(3, "3 CPUs in the process's affinity mask"), platform="linux")
    assert (r["threads"], r["source"], r["wait_policy"]) == (3, "available CPUs", "GOMP_SPINCOUNT=3000")
    assert "affinity" in r["why"]
    r = T.choose_threads({}, cpus=(3, "3 CPUs"), platform="darwin")  # not GNU OpenMP: sleep at once
    assert r["wait_policy"] == "PASSIVE"


def test_a_users_spin_count_or_policy_wins():
    r = T.choose_threads({"GOMP_SPINCOUNT": "0"}, cpus=(2, "2 CPUs"), platform="linux")
    assert r["wait_policy"] == "GOMP_SPINCOUNT=0" and r["wait_policy_why"].startswith("set by the user")
    r = T.choose_threads({"GOMP_SPINCOUNT": "0", "OMP_WAIT_POLICY": "active"}, cpus=(2, "2 CPUs"), platform="linux")
    assert r["wait_policy"] == "ACTIVE"


def test_the_users_settings_win():
    cpus = (8, "8 CPUs")
    assert T.choose_threads({"OMP_NUM_THREADS": "2"}, cpus)["threads"] == 2
    r = T.choose_threads({"OMP_NUM_THREADS": "2", "TRAITS_THREADS": "5", "OMP_WAIT_POLICY": "active"}, cpus)
    assert (r["threads"], r["source"], r["wait_policy"]) == (5, "TRAITS_THREADS", "ACTIVE")
    assert "set by the user" in r["why"] and "set by the user" in r["wait_policy_why"]


def test_settings_traits_made_are_not_taken_for_the_users():
    """A worker inherits the OMP_* variables TRAITS set in its parent: it counts the CPUs again."""
    env = {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE", "TRAITS_THREADS_CHOSEN": "policy,threads"}
    r = T.choose_threads(env, cpus=(4, "4 CPUs"))
    assert (r["threads"], r["source"]) == (4, "available CPUs")
    assert not r["wait_policy_why"].startswith("set by the user")


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", "100000"])
def test_a_bad_thread_count_names_the_variable(value):
    with pytest.raises(T.ThreadsError, match=f"TRAITS_THREADS='{value}'"):
        T.choose_threads({"TRAITS_THREADS": value}, cpus=(2, "2 CPUs"))


CONFIGURE = r"""
import json, os, sys
from traits.threads import configure_threads
record = configure_threads()
import torch
print(json.dumps({"record": record, "torch": torch.get_num_threads(),
                  "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}}))
"""


def run_fresh(script: str, **env: str) -> dict:
    """The JSON ``script`` prints last, run in a fresh Python without any thread setting of ours in its
    environment (plus ``env``)."""
    clean = {k: v for k, v in os.environ.items()
             if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "TRAITS_THREADS",
                          "TRAITS_THREADS_CHOSEN")}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=clean | env, capture_output=True,
                          text=True, timeout=120, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def configure(**env: str) -> dict:
    return run_fresh(CONFIGURE, **env)


def test_configure_sets_torch_before_it_starts():
    out = configure()
    # the CPUs a fresh process may use (this test process's own mask may have been narrowed by a library that
    # pins its threads), capped by the cgroup quota
    fresh = subprocess.run([sys.executable, "-c", "import os; print(len(os.sched_getaffinity(0)))"],
                           capture_output=True, text=True, timeout=60, check=True)
    cpus = int(fresh.stdout)
    limit = T.cgroup_cpu_limit()
    cpus = max(1, min(cpus, math.ceil(limit))) if limit is not None else cpus
    assert out["record"]["threads"] == cpus == out["torch"]
    assert out["env"] == {"OMP_NUM_THREADS": str(cpus), "OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "3000"}
    assert out["record"]["wait_policy"] == "GOMP_SPINCOUNT=3000"


def test_a_users_mkl_thread_count_is_their_choice_and_the_record_is_what_torch_runs():
    """torch also reads MKL_NUM_THREADS (the lower count wins): set by the user it is their choice, and the
    record says what torch runs (it said 2 while torch ran 1)."""
    out = configure(MKL_NUM_THREADS="1")
    assert out["record"]["threads"] == 1 == out["torch"] and out["record"]["source"] == "MKL_NUM_THREADS"


def test_configure_follows_traits_threads():
    out = configure(TRAITS_THREADS="1", OMP_NUM_THREADS="2")
    assert out["torch"] == 1 and out["record"]["source"] == "TRAITS_THREADS"


def test_cli_refuses_a_bad_traits_threads_with_exit_2(monkeypatch):
    monkeypatch.setattr(T, "_RECORD", None)
    monkeypatch.setenv("TRAITS_THREADS", "0")
    result = CliRunner().invoke(app, ["validate", str(ROOT / "audits" / "quickstart.yaml")])
    assert result.exit_code == 2
    assert "TRAITS_THREADS='0'" in result.output and "whole number" in result.output


def _stat(path: Path, rows: dict[int, tuple[int, int]]) -> Path:
    """A /proc/stat text: per CPU (busy user ticks, idle ticks), with the aggregate line and an unrelated one."""
    lines = [f"cpu  {sum(b for b, _ in rows.values())} 0 0 {sum(i for _, i in rows.values())} 0 0 0 0 0 0"]
    lines += [f"cpu{c} {b} 0 0 {i} 0 0 0 0 0 0" for c, (b, i) in rows.items()]
    path.write_text("\n".join(lines + ["intr 5 0 0", "ctxt 99"]) + "\n")
    return path


def test_cpu_ticks_read_each_cpu_of_the_mask_and_count_steal_as_busy(tmp_path):
    p = _stat(tmp_path / "stat", {0: (30, 70), 1: (5, 95), 2: (50, 50)})
    assert T._cpu_ticks(p, {0, 1}) == {0: (30, 100), 1: (5, 100)}
    p.write_text("cpu0 1 2 3 4 5 6 7 8 0 0\n")  # user nice system idle iowait irq softirq steal
    assert T._cpu_ticks(p, None) == {0: (1 + 2 + 3 + 6 + 7 + 8, 36)}
    assert T._cpu_ticks(tmp_path / "missing", None) == {}


def test_busy_elsewhere_is_the_cpus_used_less_this_process_and_at_least_the_groups_usage():
    start = {"wall": 10.0, "own": 1.0, "ticks": {0: (0, 100), 1: (0, 100)}, "cgroup": 5.0}
    end = {"wall": 12.0, "own": 1.8, "ticks": {0: (90, 200), 1: (50, 200)}, "cgroup": 6.0}
    # 0.9 + 0.5 CPUs busy, 0.4 of them this process's own (0.8 s over 2 s)
    assert T.busy_elsewhere(start, end) == pytest.approx(1.0)
    # the group used 2.0 CPUs over the window (other processes in it, beyond what /proc/stat's CPUs showed)
    assert T.busy_elsewhere(start, end | {"cgroup": 9.0}) == pytest.approx(2.0 - 0.4)
    assert T.busy_elsewhere(start, end | {"ticks": {}}) is None  # nothing read (no /proc/stat)
    idle = end | {"ticks": {0: (0, 200), 1: (0, 200)}, "cgroup": 5.0}
    assert T.busy_elsewhere(start, idle) == 0.0  # never below zero


def _settle(monkeypatch, tmp_path, busy: dict[int, tuple[int, int]], threads: int = 2, source="available CPUs"):
    import torch

    monkeypatch.setattr(T, "_RECORD", {"threads": threads, "source": source, "why": f"{threads} CPUs",
                                       "wait_policy": None, "wait_policy_why": ""})
    monkeypatch.setattr(T, "_START", {"wall": __import__("time").monotonic() - 1.0,
                                      "own": __import__("time").process_time(),
                                      "ticks": {0: (0, 0), 1: (0, 0)}, "cgroup": None})
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        record = T.settle_threads(_stat(tmp_path / "stat", busy), tmp_path / "no-cgroup", tmp_path / "no-proc")
        return record, torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_settle_lowers_the_threads_to_the_cpus_other_processes_leave_free(monkeypatch, tmp_path):
    record, now = _settle(monkeypatch, tmp_path, {0: (95, 5), 1: (90, 10)})  # 1.85 CPUs busy elsewhere
    assert now == record["threads"] == 1 and record["busy_elsewhere"] == pytest.approx(1.85, abs=0.06)
    assert "busy" in record["why"] and record["source"] == "available CPUs"
    assert T._START is None  # once per process


def test_settle_keeps_the_threads_on_idle_cpus_and_a_users_count(monkeypatch, tmp_path):
    record, now = _settle(monkeypatch, tmp_path, {0: (3, 97), 1: (2, 98)})
    assert now == record["threads"] == 2 and record["busy_elsewhere"] < 0.1
    record, now = _settle(monkeypatch, tmp_path, {0: (60, 40), 1: (0, 100)})  # 0.6 busy: round(1.4) = 1
    assert now == record["threads"] == 1
    record, now = _settle(monkeypatch, tmp_path, {0: (95, 5), 1: (90, 10)}, source="TRAITS_THREADS")
    assert now == record["threads"] == 2 and "busy_elsewhere" not in record


SETTLE = r"""
import json, os, subprocess, sys, time
os.sched_setaffinity(0, {0, 1})
spin = "import os; os.sched_setaffinity(0, {%d}); exec('while True: pass')"
busy = [subprocess.Popen([sys.executable, "-c", spin % c]) for c in (0, 1)]
time.sleep(0.5)
try:
    from traits.threads import configure_threads, settle_threads
    configure_threads()
    import torch
    record = settle_threads()
    print(json.dumps({"record": record, "torch": torch.get_num_threads()}))
finally:
    for p in busy:
        p.kill()
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or not {0, 1} <= set(os.sched_getaffinity(0))
                    or (T.cgroup_cpu_limit() or 2) < 2, reason="needs CPUs 0 and 1 and the right to pin to them")
def test_settle_runs_one_thread_beside_a_busy_process_on_each_cpu():
    """Two processes spinning on the two CPUs this one may use: torch gets one thread, and the record says why."""
    out = run_fresh(SETTLE)
    assert out["torch"] == out["record"]["threads"] == 1
    assert out["record"]["busy_elsewhere"] > 0.8 and "busy" in out["record"]["why"]


SET = r"""
import json
from traits.threads import configure_threads, set_threads, settle_threads
configure_threads()
import torch
set_threads(1, "set by the campaign (--threads 1)")
record = settle_threads()  # an audit of the campaign's job: the program's count stands
print(json.dumps({"record": record, "torch": torch.get_num_threads()}))
"""


def test_a_count_the_program_sets_is_what_the_record_says():
    """A campaign's --threads, set after the command chose its count (the jobs run in its own process): torch runs
    it and results.json says so (it said the count chosen at start)."""
    out = run_fresh(SET)
    assert out["torch"] == out["record"]["threads"] == 1
    assert out["record"]["source"] == "set by the program" and "--threads 1" in out["record"]["why"]
