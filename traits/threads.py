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

Where the count came from the CPUs available, :func:`settle_threads` lowers it once torch is running if other
processes already keep some of those CPUs busy (:func:`busy_elsewhere`): threads = max(1, round(c − b)), where c is
the CPUs available and b the CPUs other processes used over the window from :func:`configure_threads` to
:func:`settle_threads` (mostly torch's import, so no wait is added; at least :data:`MIN_BUSY_WINDOW`):

    b = Σ_j busy_j / total_j − own,

summed over the CPUs of the affinity mask from ``/proc/stat`` (busy = user, nice, system, irq, softirq, steal ticks;
total adds idle and iowait), less this process's own CPU time over the window (``time.process_time``); under a
cgroup quota q also b ≥ u − own, u the group's usage over the window (cgroup v2 ``cpu.stat`` ``usage_usec``, v1
``cpuacct.usage``), against c = q. Threads that outnumber the free CPUs wait at every parallel step for the one
whose CPU another process holds: CHGNet's HVP beside two busy processes on the 2-core machine took 1.60-1.67 s
with 2 threads and 1.13-1.22 s with one (0.46-0.50 s and 0.67 s alone; bench/README.md, "Threads under
contention"). A user's count (TRAITS_THREADS, OMP_NUM_THREADS, MKL_NUM_THREADS) is never changed, and where
``/proc/stat`` is missing (not Linux) the count stays.

It returns a record of the choice (:func:`thread_record`): threads, wait policy, where each came from and why, for
results.json. Nothing here imports torch.
"""

from __future__ import annotations

import math
import os
import sys
import time
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

#: The shortest window (s) over which :func:`settle_threads` reads how busy the CPUs are; where torch's import
#: took less, it waits for the rest.
MIN_BUSY_WINDOW = 0.2

_RECORD: dict | None = None
#: The CPU counters read when the count was chosen (:func:`_snapshot`), until :func:`settle_threads` reads them again.
_START: dict | None = None


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
    global _RECORD, _START
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
    if record["source"] == "available CPUs" and record["threads"] > 1:
        _START = _snapshot()
    if started:
        import torch

        if record["source"] != "available CPUs" or torch.get_num_threads() > record["threads"]:
            torch.set_num_threads(record["threads"])
        record["threads"] = torch.get_num_threads()
    _RECORD = record
    return dict(record)


def _cpu_ticks(stat: Path, cpus: set[int] | None) -> dict[int, tuple[int, int]]:
    """Per CPU of ``cpus`` (all where None): (busy ticks, total ticks) from a ``/proc/stat`` text; {} without one."""
    ticks = {}
    for line in (_read(stat) or "").splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or not name[3:].isdigit() or len(fields) < 8:
            continue
        cpu = int(name[3:])
        if cpus is None or cpu in cpus:
            user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[:8])
            busy = user + nice + system + irq + softirq + steal
            ticks[cpu] = (busy, busy + idle + iowait)
    return ticks


def _cgroup_usage(root: Path, proc_cgroup: Path) -> float | None:
    """CPU seconds the process's cgroup has used (v2 ``cpu.stat`` usage_usec, else v1 ``cpuacct.usage``), or None."""
    for folder in reversed(_cgroup_dirs(root, proc_cgroup, "")):
        for line in (_read(folder / "cpu.stat") or "").splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec" and value.strip().isdigit():
                return int(value) / 1e6
    for name in ("cpuacct", "cpu,cpuacct", "cpuacct,cpu"):
        for folder in reversed(_cgroup_dirs(root / name, proc_cgroup, "cpuacct")):
            value = _read(folder / "cpuacct.usage")
            if value is not None and value.isdigit():
                return int(value) / 1e9
    return None


def _snapshot(stat: Path = Path("/proc/stat"), cgroup_root: Path = Path("/sys/fs/cgroup"),
              proc_cgroup: Path = Path("/proc/self/cgroup")) -> dict:
    """The counters :func:`busy_elsewhere` compares: wall and own CPU time, per-CPU ticks, the cgroup's usage."""
    try:
        cpus = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = None
    return {"wall": time.monotonic(), "own": time.process_time(), "ticks": _cpu_ticks(stat, cpus),
            "cgroup": _cgroup_usage(cgroup_root, proc_cgroup)}


def busy_elsewhere(start: dict, end: dict) -> float | None:
    """CPUs that other processes kept busy between two :func:`_snapshot` s (see the module docstring for b), or
    None where ``/proc/stat`` gave nothing to compare."""
    wall = end["wall"] - start["wall"]
    if wall <= 0:
        return None
    own = (end["own"] - start["own"]) / wall
    busy = []
    for cpu, (b1, t1) in end["ticks"].items():
        b0, t0 = start["ticks"].get(cpu, (None, None))
        if b0 is not None and t1 > t0:
            busy.append((b1 - b0) / (t1 - t0))
    if not busy:
        return None
    others = sum(busy) - own
    if start["cgroup"] is not None and end["cgroup"] is not None:
        others = max(others, (end["cgroup"] - start["cgroup"]) / wall - own)
    return max(0.0, others)


def settle_threads(stat: Path = Path("/proc/stat"), cgroup_root: Path = Path("/sys/fs/cgroup"),
                   proc_cgroup: Path = Path("/proc/self/cgroup")) -> dict:
    """Lower torch's thread count to the CPUs other processes leave free (module docstring), once per process and
    only where :func:`configure_threads` counted it from the CPUs available; imports torch. Returns the record,
    which then also holds ``busy_elsewhere`` (CPUs, None where unread) and ``busy_window_s``."""
    global _START
    record = configure_threads()
    if _START is None or record["source"] != "available CPUs":
        return dict(_RECORD)
    start, _START = _START, None
    rest = MIN_BUSY_WINDOW - (time.monotonic() - start["wall"])
    if rest > 0:
        time.sleep(rest)
    others = busy_elsewhere(start, _snapshot(stat, cgroup_root, proc_cgroup))
    _RECORD["busy_elsewhere"] = None if others is None else round(others, 2)
    _RECORD["busy_window_s"] = round(time.monotonic() - start["wall"], 2)
    if others is None:
        return dict(_RECORD)
    import torch

    free = record["threads"] - others
    threads = max(1, min(record["threads"], math.floor(free + 0.5)))
    if threads < torch.get_num_threads():
        torch.set_num_threads(threads)
        _RECORD["why"] = (f"{record['why']}; other processes kept {others:.2f} of them busy over "
                          f"{_RECORD['busy_window_s']:g} s at start (/proc/stat), so {torch.get_num_threads()}")
    _RECORD["threads"] = torch.get_num_threads()  # what torch runs, whoever set it
    return dict(_RECORD)


def set_threads(threads: int, why: str) -> dict:
    """Run ``threads`` torch threads in this process from now on, chosen by the program (a campaign's
    ``--threads``): the environment for a torch not started yet and for the processes it starts
    (``TRAITS_THREADS``, ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``), torch itself where it runs, and the record
    (source "set by the program", ``why``), which :func:`settle_threads` then leaves alone. Returns the record."""
    global _RECORD, _START
    record = configure_threads()
    for key in (THREADS_ENV, OMP_THREADS_ENV, MKL_THREADS_ENV):
        os.environ[key] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    _START = None
    _RECORD = {**record, "threads": threads if torch is None else torch.get_num_threads(),
               "source": "set by the program", "why": why}
    return dict(_RECORD)


def thread_record() -> dict | None:
    """What :func:`configure_threads` chose in this process (threads, source, why, wait_policy, wait_policy_why),
    or None before it ran."""
    return None if _RECORD is None else dict(_RECORD)
