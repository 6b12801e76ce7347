"""How many threads torch runs on, chosen from the CPUs this process may actually use, before torch starts.

torch's default is one thread per CPU of the machine and OpenMP threads that spin while they wait. On a shared
workstation or CI runner (a CPU quota, a pinned CPU set, other processes on the cores) that default collapses: a
thread that spins burns the CPU that the thread it waits for needs (bench/README.md, "Threads under contention").
So, once, at the start of the command line (and of the Python API's entry points), :func:`configure_threads`

- counts the CPUs available (:func:`available_cpus`): the CPUs of the process's affinity mask
  (``os.sched_getaffinity``), capped by the cgroup CPU quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` /
  ``cpu.cfs_period_us``) rounded up;
- sets torch's thread count to that number (``OMP_NUM_THREADS`` before torch is imported, then
  ``torch.set_num_threads``), unless the user chose: ``TRAITS_THREADS`` wins, then ``OMP_NUM_THREADS``;
- bounds how long waiting OpenMP threads spin before they sleep, unless the user set a policy (``OMP_WAIT_POLICY``
  or ``GOMP_SPINCOUNT``): on Linux, where torch's wheels run GNU OpenMP, ``GOMP_SPINCOUNT=3000`` (a short spin, then
  sleep: :data:`SPIN_COUNT`); elsewhere ``OMP_WAIT_POLICY=PASSIVE`` (sleep at once). It applies only when torch has
  not been imported yet (OpenMP reads it once, when its pool starts). Measured on the 2-core machine
  (bench/README.md, "Threads under contention"): torch's default spin ran an HVP in 5.8 ms alone and 127 ms beside
  two busy processes; the passive policy 10.2 ms and 13.1 ms, and made the quickstart's audit 95 s instead of 58 s
  on the idle machine; the short spin 6.3 ms and 18.2 ms, and the quickstart's audit 65 s.

It returns a record of the choice (:func:`thread_record`): threads, wait policy, where each came from and why, for
results.json. Nothing here imports torch.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from traits.errors import TraitsError

#: The user's own thread count for TRAITS (wins over OMP_NUM_THREADS and the CPUs counted).
THREADS_ENV = "TRAITS_THREADS"
#: OpenMP's thread count and wait policy (read by torch's OpenMP runtime when its pool starts).
OMP_THREADS_ENV = "OMP_NUM_THREADS"
OMP_WAIT_ENV = "OMP_WAIT_POLICY"
#: MKL's thread count, which torch also reads when it starts (a lower one wins over OMP_NUM_THREADS).
MKL_THREADS_ENV = "MKL_NUM_THREADS"
#: The wait policy TRAITS sets where GNU OpenMP's spin count does not apply: waiting threads sleep, so a loaded
#: machine's CPUs go to threads with work.
WAIT_POLICY = "PASSIVE"
#: GNU OpenMP's spin count before a waiting thread sleeps (its default is 300,000): short enough that threads
#: waiting beside other work give their CPU back, long enough that back-to-back parallel regions of one audit on an
#: idle machine do not pay a wake-up each.
SPIN_ENV = "GOMP_SPINCOUNT"
SPIN_COUNT = 3000
#: Marks OMP_NUM_THREADS / OMP_WAIT_POLICY as set by TRAITS (not by the user) in this process and the workers it
#: starts, which inherit the environment.
_CHOSEN_ENV = "TRAITS_THREADS_CHOSEN"
#: The most threads TRAITS_THREADS may ask for.
MAX_THREADS = 1024

_RECORD: dict | None = None


class ThreadsError(TraitsError):
    """A thread setting in the environment that is not a positive whole number."""


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _cgroup_dirs(root: Path, proc_cgroup: Path, controller: str) -> list[Path]:
    """The cgroup folders that may hold this process's CPU quota: the hierarchy's root and, where
    ``/proc/self/cgroup`` names one, the process's own group under it."""
    dirs = [root]
    text = _read(proc_cgroup) or ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers, group = parts[1].split(","), parts[2].strip("/")
        if group and controller in controllers:  # v2 lines ("0::/group") name no controller
            dirs.append(root / group)
    return dirs


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> \
        float | None:
    """The CPUs the cgroup CPU quota allows (quota / period; the smallest one found), or None without a quota.

    cgroup v2: ``cpu.max`` holds ``"QUOTA PERIOD"`` or ``"max PERIOD"``; v1: ``cpu.cfs_quota_us`` (-1 for none) and
    ``cpu.cfs_period_us`` under ``cpu`` or ``cpu,cpuacct``."""
    limits = []
    for folder in _cgroup_dirs(root, proc_cgroup, ""):
        fields = (_read(folder / "cpu.max") or "").split()
        if len(fields) == 2 and fields[0] != "max":
            try:
                quota, period = int(fields[0]), int(fields[1])
            except ValueError:
                continue
            if quota > 0 and period > 0:
                limits.append(quota / period)
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        for folder in _cgroup_dirs(root / name, proc_cgroup, "cpu"):
            try:
                quota = int(_read(folder / "cpu.cfs_quota_us") or "-1")
                period = int(_read(folder / "cpu.cfs_period_us") or "0")
            except ValueError:
                continue
            if quota > 0 and period > 0:
                limits.append(quota / period)
    return min(limits) if limits else None


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup"),
                   proc_cgroup: Path = Path("/proc/self/cgroup")) -> tuple[int, str]:
    """(CPUs this process may use, how they were counted): the affinity mask's CPUs (``os.cpu_count()`` where the
    platform has no affinity), capped by the cgroup quota rounded up; at least 1."""
    try:
        cpus, why = len(os.sched_getaffinity(0)), "CPUs in the process's affinity mask"
    except (AttributeError, OSError):
        cpus, why = os.cpu_count() or 1, "CPUs of the machine (no affinity mask on this platform)"
    limit = cgroup_cpu_limit(cgroup_root, proc_cgroup)
    if limit is not None and math.ceil(limit) < cpus:
        cpus, why = math.ceil(limit), f"the cgroup CPU quota ({limit:g} CPUs) of {cpus} {why}"
    else:
        why = f"{cpus} {why}" + ("" if limit is None else f", within the cgroup CPU quota ({limit:g} CPUs)")
    return max(1, cpus), why


def _count(environ: Mapping[str, str], key: str) -> int | None:
    raw = environ.get(key)
    if raw is None or not raw.strip():
        return None
    text = raw.strip().split(",")[0]  # OpenMP allows a list per nesting level; the first is the outer one
    if not text.isdigit() or not 1 <= int(text) <= MAX_THREADS:
        raise ThreadsError(f"environment variable {key}={raw!r}: the number of threads must be a whole number from "
                           f"1 to {MAX_THREADS}")
    return int(text)


def choose_threads(environ: Mapping[str, str] | None = None, cpus: tuple[int, str] | None = None,
                   platform: str | None = None) -> dict:
    """The thread count and wait policy for this process, and why (see the module docstring); sets nothing.

    ``cpus``: (count, how counted) instead of :func:`available_cpus`, ``platform`` instead of ``sys.platform``, for
    tests."""
    environ = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    chosen = environ.get(_CHOSEN_ENV, "")
    own = _count(environ, THREADS_ENV)
    omp = None if "threads" in chosen.split(",") else _count(environ, OMP_THREADS_ENV)
    mkl = None if "threads" in chosen.split(",") else _count(environ, MKL_THREADS_ENV)
    if own is not None:
        threads, source, why = own, "TRAITS_THREADS", f"set by the user ({THREADS_ENV}={own})"
    elif omp is not None:
        threads, source, why = omp, "OMP_NUM_THREADS", f"set by the user ({OMP_THREADS_ENV}={omp})"
    elif mkl is not None:
        threads, source, why = mkl, "MKL_NUM_THREADS", f"set by the user ({MKL_THREADS_ENV}={mkl})"
    else:
        count, counted = cpus if cpus is not None else available_cpus()
        threads, source, why = count, "available CPUs", counted
    user_policy, user_spin = (None, None) if "policy" in chosen.split(",") else (
        (environ.get(OMP_WAIT_ENV) or "").strip() or None, (environ.get(SPIN_ENV) or "").strip() or None)
    if user_policy is not None:
        policy, policy_why = user_policy.upper(), f"set by the user ({OMP_WAIT_ENV}={user_policy})"
    elif user_spin is not None:
        policy, policy_why = f"{SPIN_ENV}={user_spin}", f"set by the user ({SPIN_ENV}={user_spin})"
    elif _gnu_openmp(platform):
        policy, policy_why = f"{SPIN_ENV}={SPIN_COUNT}", "waiting threads spin briefly, then sleep, so other work " \
                                                         "on the cores does not stall the audit nor an idle machine " \
                                                         "wake them for every step"
    else:
        policy, policy_why = WAIT_POLICY, "waiting threads sleep instead of spinning, so other work on the cores " \
                                          "does not stall the audit"
    return {"threads": threads, "source": source, "why": why, "wait_policy": policy, "wait_policy_why": policy_why}


def _gnu_openmp(platform: str) -> bool:
    """Whether torch's OpenMP runtime here is GNU's (libgomp, which reads GOMP_SPINCOUNT): torch's Linux wheels."""
    return platform.startswith("linux")


def configure_threads(environ: MutableMapping[str, str] | None = None) -> dict:
    """Choose (:func:`choose_threads`) and apply the thread settings, once per process; returns the record
    (:func:`thread_record`). Call it before torch is imported: the wait policy cannot change after that, and the
    thread count is then set with ``torch.set_num_threads`` only where torch runs more threads than chosen (a count
    the program set itself is kept)."""
    global _RECORD
    if _RECORD is not None:
        return dict(_RECORD)
    environ = os.environ if environ is None else environ
    record = choose_threads(environ)
    started = "torch" in sys.modules
    marks = set(filter(None, environ.get(_CHOSEN_ENV, "").split(",")))
    if record["source"] != "OMP_NUM_THREADS" and not started:
        environ[OMP_THREADS_ENV] = str(record["threads"])
        if record["source"] != "MKL_NUM_THREADS":  # torch takes the lower of the two: keep them equal
            environ[MKL_THREADS_ENV] = str(record["threads"])
        marks.add("threads")
    if not record["wait_policy_why"].startswith("set by the user"):
        if started:
            record["wait_policy"] = None
            record["wait_policy_why"] = "not set: torch had started before TRAITS could set it"
        else:
            name, _, value = record["wait_policy"].partition("=")
            if value:  # the spin count (GNU OpenMP)
                environ[name] = value
            else:
                environ[OMP_WAIT_ENV] = record["wait_policy"]
            marks.add("policy")
    if marks:
        environ[_CHOSEN_ENV] = ",".join(sorted(marks))
    if started:
        import torch

        if record["source"] != "available CPUs" or torch.get_num_threads() > record["threads"]:
            torch.set_num_threads(record["threads"])
        record["threads"] = torch.get_num_threads()
    _RECORD = record
    return dict(record)


def thread_record() -> dict | None:
    """What :func:`configure_threads` chose in this process (threads, source, why, wait_policy, wait_policy_why),
    or None before it ran."""
    return None if _RECORD is None else dict(_RECORD)
