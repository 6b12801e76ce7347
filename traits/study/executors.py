"""Executors for campaign tasks: in-process, a local process pool (default for ``--workers N``), or Dask.

Every executor takes a picklable task function and a list of jobs and returns, in job order, each job's
result or the exception it raised (:class:`TaskFailed`), so one failing audit does not stop the others.

Registry: each executor is one :class:`Executor` subclass registered by name with ``@register_executor(NAME)``
(:data:`EXECUTORS`: ``local``, ``dask``). A campaign names its executor and the executor's settings in one
:class:`ExecutorOptions` (``workers``, ``threads`` and a mapping of settings only that executor reads, such as
Dask's ``scheduler``); :func:`make_executor` picks the class by name and checks the settings before anything
runs, and :func:`execute` runs the jobs with it. Adding an executor is one subclass and its registration line.

Tasks are idempotent (the task function skips a finished task folder), so a lost worker costs only the
task it was running: the local pool starts a fresh pool and resubmits the unfinished jobs, Dask's
scheduler reschedules the tasks of a dead worker on another (its nanny restarts the worker process).

Stopping: a campaign stopped by Ctrl-C or SIGTERM ends its local pool's workers at once (their tasks resume
on the next run), and a worker whose campaign process is gone without that (SIGKILL) ends itself within a
second (:func:`_exit_when_orphaned`): an orphaned worker would otherwise finish its task beside the next run.

Threads: each worker runs ``threads`` torch threads, ``workers × threads ≤ cores``
(:func:`plan_threads`). Resources: a job declares what it needs (``{"CPU": 1}`` or ``{"GPU": 1}``); on
Dask these are worker resources, so a GPU audit runs only on a worker started with ``--resources GPU=1``.

Dask (``pip install 'traits-audit[distributed]'``) is imported only when chosen.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from traits.errors import SpecError, TraitsError

#: Transports a ``--scheduler`` address may name (Dask's, less ``inproc``, which only one process can reach).
SCHEDULER_SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")
#: Seconds to wait for a Dask scheduler to answer before the campaign is refused (Dask's own default is 30).
SCHEDULER_TIMEOUT = 10.0
_ADDRESS = re.compile(r"(?:(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://)?"
                      r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?)"
                      r":(?P<port>[0-9]{1,5})")
#: Exit status of a local-pool worker that found its campaign process gone.
ORPHAN_EXIT = 75


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the campaign's main thread while a local pool runs, so the pool stops its workers
    (the CLI reports it like Ctrl-C: partial work is kept)."""


@dataclass
class TaskFailed:
    """A job that raised (or whose worker was lost more often than allowed)."""

    job: Any
    error: str
    kind: str = "error"


@dataclass(frozen=True)
class Job:
    """One (seed, task) of a campaign, everything a worker needs to run it (picklable)."""

    index: int
    task: str
    seed: int | None
    spec_path: str
    overrides: dict
    where: str
    campaign: str
    threads: int = 1
    resources: dict = field(default_factory=lambda: {"CPU": 1})

    @property
    def label(self) -> str:
        return f"seed {self.seed if self.seed is not None else '-'} {self.task}"


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def plan_threads(workers: int, threads: int | None = None, n_cores: int | None = None) -> int:
    """Torch threads per worker so that ``workers × threads ≤ cores`` (at least 1)."""
    n_cores = n_cores or cores()
    if workers < 1:
        raise SpecError(f"--workers must be at least 1, got {workers}")
    if threads is None:
        return max(1, n_cores // workers)
    if threads < 1:
        raise SpecError(f"--threads must be at least 1, got {threads}")
    if workers * threads > n_cores:
        raise SpecError(f"--workers {workers} × --threads {threads} = {workers * threads} exceeds the {n_cores} "
                        "cores of this machine; lower one of them")
    return threads


def _set_threads(threads: int) -> None:
    """Torch threads of this process (:func:`traits.threads.set_threads`: the environment for a torch not
    imported yet, which reads it when it starts; importing it here would slow every worker's start; else
    directly), recorded as the campaign's choice."""
    from traits.threads import set_threads

    os.environ["TRAITS_REPORT_WORKERS"] = "1"  # the pool's workers share the CPUs already: reports drawn in-process
    set_threads(threads, f"set by the campaign (--threads {threads})")


def run_inline(fn: Callable, jobs: Sequence, log: Callable[[str], None] = lambda _m: None) -> list:
    """In this process, one job after another (progress bars and logs as before)."""
    out = []
    for job in jobs:
        try:
            out.append(fn(job))
        except TraitsError as exc:
            log(f"{getattr(job, 'label', job)}: failed: {exc}")
            out.append(TaskFailed(job, str(exc)))
    return out


def _start_worker(threads: int, parent: int) -> None:
    """Initializer of a local-pool worker: its torch threads, escaped warnings and the orphan watchdog."""
    from traits.progress import install_safe_diagnostics

    _set_threads(threads)
    install_safe_diagnostics()  # a worker's warnings reach the same terminal: escaped like the parent's
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True, name="traits-orphan-watchdog").start()


def _exit_when_orphaned(parent: int, every: float = 0.5) -> None:
    """End this worker once ``parent`` (the campaign process) is no longer its parent. Its task's files are
    written atomically and its lock names a dead process, so the next run resumes the task."""
    while True:
        time.sleep(every)
        if os.getppid() != parent:
            os._exit(ORPHAN_EXIT)


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While the pool runs, SIGTERM raises :class:`Terminated` in the main thread (else it would end the
    campaign process at once and leave the workers running)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop_workers(pool) -> None:
    """Terminate a ProcessPoolExecutor's workers now, without waiting for their tasks."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # shutdown() forgets them
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(timeout=10)
    pool.shutdown(wait=False, cancel_futures=True)


def run_local(fn: Callable, jobs: Sequence, workers: int, threads: int,
              log: Callable[[str], None] = lambda _m: None, max_lost: int = 2) -> list:
    """A pool of ``workers`` spawned processes (no server). A worker that dies breaks the pool, and every task
    still in it is stopped: a fresh pool is started and the unfinished jobs are resubmitted.

    Only the jobs that had *started* when the pool broke are charged with the loss (each job marks its start
    in a scratch folder; the queued ones had not run and go on as before). Which of the started ones killed its
    worker is not known, so they are *suspects*: once the other jobs are done they run one at a time, where a
    death names its job, and a job whose worker was lost more than ``max_lost`` times fails alone. A task that
    kills its worker every time (out of memory, say) so costs only itself."""
    import shutil
    import tempfile

    results: dict[int, Any] = {}
    lost: dict[int, int] = {}
    pending = dict(enumerate(jobs))
    idle_breaks = 0
    scratch = Path(tempfile.mkdtemp(prefix="traits-pool-"))
    try:
        with _sigterm_raises():  # for the whole run, the gaps between pools included
            while pending:
                clear = {i: j for i, j in pending.items() if not lost.get(i)}
                batch, n = (clear, workers) if clear else (dict(pending), 1)
                if not _pool_round(fn, jobs, batch, pending, results, n, threads, log, scratch):
                    continue
                started = 0
                for marker in scratch.iterdir():  # the jobs that were running when the pool broke
                    i = int(marker.name)
                    marker.unlink()
                    if i in pending:
                        lost[i] = lost.get(i, 0) + 1
                        started += 1
                idle_breaks = 0 if started else idle_breaks + 1
                if idle_breaks > max_lost:  # the workers die before any job starts (their start-up fails)
                    for i in list(pending):
                        results[i] = TaskFailed(jobs[i], "the pool's workers died before running it, "
                                                f"{idle_breaks} times in a row", "lost")
                        pending.pop(i)
                for i in list(pending):
                    if lost.get(i, 0) > max_lost:
                        results[i] = TaskFailed(jobs[i], f"the worker running it was lost {lost[i]} times", "lost")
                        pending.pop(i)
                if pending:
                    log(f"a worker was lost; resubmitting {len(pending)} unfinished task(s)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return [results[i] for i in range(len(jobs))]


def _run_marked(fn: Callable, job: Any, marker: str) -> Any:
    """Run one job in a pool worker, its start marked by the file ``marker`` (removed when the job ends, by
    returning or raising): a marker left behind names a job whose worker died under it."""
    path = Path(marker)
    path.touch()
    try:
        return fn(job)
    finally:
        path.unlink(missing_ok=True)


def _pool_round(fn: Callable, jobs: Sequence, batch: dict, pending: dict, results: dict, workers: int,
                threads: int, log: Callable[[str], None], scratch: Path) -> bool:
    """One pool of ``workers`` processes over the jobs of ``batch``: each job that ends is moved from
    ``pending`` into ``results``; a job whose pool broke stays pending (its start marker, if it had started,
    stays in ``scratch``). True if the pool broke."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool
    from multiprocessing import get_context

    broken = False
    with ProcessPoolExecutor(max_workers=min(workers, len(batch)), mp_context=get_context("spawn"),
                             initializer=_start_worker, initargs=(threads, os.getpid())) as pool:
        try:
            futures = {pool.submit(_run_marked, fn, job, str(scratch / str(i))): i for i, job in batch.items()}
            for fut in as_completed(futures):
                i = futures[fut]
                label = getattr(jobs[i], "label", i)
                try:
                    results[i] = fut.result()
                    log(f"{label}: finished")
                except BrokenProcessPool:
                    broken = True
                    continue
                except Exception as exc:  # the task raised: record it, go on with the others
                    log(f"{label}: failed: {exc}")
                    results[i] = TaskFailed(jobs[i], f"{type(exc).__name__}: {exc}")
                pending.pop(i, None)
        except BaseException:  # Ctrl-C, SIGTERM (Terminated), or a bug here: stop the running tasks too
            log(f"stopping: {len(pending)} unfinished task(s) are left to the next run")
            _stop_workers(pool)
            raise
    return broken


def check_scheduler_address(address: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a Dask scheduler address ``[SCHEME://]HOST:PORT`` (SCHEME one of
    :data:`SCHEDULER_SCHEMES`, tcp when left out; HOST a name, an IPv4 address or a bracketed IPv6 one; PORT
    1-65535); anything else is a SpecError naming the address."""
    m = _ADDRESS.fullmatch(address.strip()) if isinstance(address, str) else None
    scheme = (m.group("scheme") or "tcp").lower() if m else None
    if m is None or scheme not in SCHEDULER_SCHEMES or not 1 <= int(m.group("port")) <= 65535:
        why = (f"the transport {scheme!r} is not one of {', '.join(SCHEDULER_SCHEMES)}"
               if m is not None and scheme not in SCHEDULER_SCHEMES else
               "the port must be 1-65535" if m is not None else "expected [SCHEME://]HOST:PORT")
        raise SpecError(f"--scheduler {address!r}: not a Dask scheduler address ({why}), e.g. tcp://HOST:8786")
    return scheme, m.group("host").strip("[]"), int(m.group("port"))


def _connect(scheduler: str, timeout: float):
    """A Dask client of the scheduler at ``scheduler``, or a TraitsError naming the address when nothing answers
    there within ``timeout`` seconds (a refused connection is reported at once)."""
    import socket

    from distributed import Client

    scheme, host, port = check_scheduler_address(scheduler)
    if scheme != "ucx":  # every other transport starts with a TCP connection: try it first, briefly
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as exc:
            raise TraitsError(f"--scheduler {scheduler}: no Dask scheduler reachable there "
                              f"({exc.strerror or type(exc).__name__}); start one (`dask scheduler`) or check the "
                              "address") from None
    try:
        return Client(scheduler, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise TraitsError(f"--scheduler {scheduler}: no Dask scheduler answered within {timeout:g} s "
                          f"({type(exc).__name__}: {str(exc)[:200]}); check the address") from None


def run_dask(fn: Callable, jobs: Sequence, workers: int, threads: int, scheduler: str | None = None,
             log: Callable[[str], None] = lambda _m: None, processes: bool = True) -> list:
    """On Dask distributed: a LocalCluster on 127.0.0.1 (``workers`` single-threaded workers, each offering
    ``CPU=1``, and ``GPU=1`` too when torch sees a GPU and ``workers`` is 1: several local workers would share
    one GPU, so with more than one a GPU task is refused) or the running scheduler at ``scheduler``. Each job
    is one Dask task declaring ``job.resources`` (under a key unique to this run); the scheduler reschedules
    the task of a lost worker."""
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError as exc:
        raise SpecError("--executor dask needs Dask distributed: pip install 'traits-audit[distributed]'") from exc

    cluster = None
    if scheduler:
        client = _connect(scheduler, SCHEDULER_TIMEOUT)
    else:
        resources = {"CPU": 1}
        if _cuda_devices() and workers == 1:
            resources["GPU"] = 1
        # loopback only; tcp even in-process (the inproc transport does not parse a host-only address)
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=processes, protocol="tcp://",
                               host="127.0.0.1", dashboard_address=None, resources=resources)
        client = Client(cluster)
    try:
        offered = [w.get("resources") or {} for w in client.scheduler_info().get("workers", {}).values()]
        use_resources = any(offered)  # workers started without --resources: tasks cannot ask for any
        if not use_resources:
            log("the Dask workers declare no resources: tasks are placed without CPU/GPU constraints")
        for job in jobs:
            need = getattr(job, "resources", None) or {"CPU": 1}
            if use_resources and not any(all(o.get(k, 0) >= v for k, v in need.items()) for o in offered):
                local = "" if scheduler else (" (a LocalCluster offers GPU=1 only with --workers 1 on a machine "
                                              "with a GPU)")
                raise SpecError(f"{getattr(job, 'label', job)} needs {need} but no Dask worker offers it{local}; "
                                "start workers with e.g. --resources 'GPU=1,CPU=1' and pass --scheduler")
        client.run(_set_threads, threads)
        run = uuid.uuid4().hex[:12]  # keys unique to this run: a shared scheduler may hold another campaign's
        futures = {}
        for i, job in enumerate(jobs):
            fut = client.submit(_call, fn, job, key=f"traits-{run}-{i}-{getattr(job, 'task', i)}",
                                resources=(getattr(job, "resources", None) or {"CPU": 1}) if use_resources else None,
                                pure=False)
            futures[fut] = i
        results: dict[int, Any] = {}
        for fut in as_completed(list(futures)):
            i = futures[fut]
            label = getattr(jobs[i], "label", i)
            try:
                results[i] = fut.result()
                log(f"{label}: finished")
            except Exception as exc:
                log(f"{label}: failed: {exc}")
                results[i] = TaskFailed(jobs[i], f"{type(exc).__name__}: {exc}")
        return [results[i] for i in range(len(jobs))]
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _cuda_devices() -> int:
    """Visible CUDA devices, without importing torch unless it is already imported."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return 1 if Path("/dev/nvidia0").exists() else 0


def _call(fn: Callable, job: Any) -> Any:
    threads = getattr(job, "threads", None)
    if threads:
        _set_threads(threads)
    return fn(job)


# ----------------------------------------------------------------------------------------------
# The registry


@dataclass(frozen=True)
class ExecutorOptions:
    """How a campaign's tasks run: the executor, how many at once, and the settings only that executor reads.

    Attributes:
        executor: the name of a registered executor (:data:`EXECUTORS`).
        workers: tasks run at once (worker processes, or Dask workers).
        threads: torch threads per worker; None: cores / workers (:func:`plan_threads`).
        settings: the executor's own settings by name (Dask: ``scheduler``, the address of a running scheduler,
            and ``processes``, False to run a LocalCluster's workers as threads of this process); a setting
            whose value is None counts as not given.
    """

    executor: str = "local"
    workers: int = 1
    threads: int | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        given = {k: v for k, v in dict(self.settings or {}).items() if v is not None}
        object.__setattr__(self, "settings", given)


@dataclass(frozen=True)
class NoSettings:
    """The settings of an executor that has none of its own."""


class Executor:
    """One way of running a campaign's jobs, registered by name with :func:`register_executor`.

    A subclass implements :meth:`run`; it may declare its own settings as a dataclass ``Settings`` (read from
    :attr:`ExecutorOptions.settings`, checked by :meth:`check` before anything runs), say how many torch threads
    a worker gets (:meth:`threads_per_worker`) and whether the jobs run in this process (:attr:`in_process`).
    """

    #: The name it is registered under (set by :func:`register_executor`).
    name: ClassVar[str] = ""
    #: Its own settings: a dataclass whose fields are the keys ExecutorOptions.settings may hold for it.
    Settings: ClassVar[type] = NoSettings

    def __init__(self, options: ExecutorOptions):
        """Args:
            options: the campaign's executor options; ``options.settings`` must hold only fields of
                :attr:`Settings` (:func:`make_executor` checks that first, naming the executor a setting belongs to).
        """
        self.options = options
        self.settings = self.Settings(**options.settings)
        self.check()

    @property
    def workers(self) -> int:
        """Tasks run at once."""
        return self.options.workers

    @property
    def in_process(self) -> bool:
        """True when the jobs run one after another in this process (the task function may then use the
        campaign's progress display and log); False when they run elsewhere (the task function is pickled)."""
        return False

    def check(self) -> None:
        """Refuse bad settings before anything runs or is written.

        Raises:
            SpecError: a setting is invalid (the CLI's exit 2).
        """

    def threads_per_worker(self) -> int | None:
        """Torch threads each worker runs.

        Returns:
            The threads per worker (``workers × threads ≤ cores``, :func:`plan_threads`), or None where the jobs
            keep this process's threads.

        Raises:
            SpecError: ``workers`` or ``threads`` is out of range.
        """
        return plan_threads(self.options.workers, self.options.threads)

    def run(self, fn: Callable, jobs: Sequence, log: Callable[[str], None]) -> list:
        """Run ``fn`` on every job.

        Args:
            fn: the task function (picklable unless :attr:`in_process`).
            jobs: the jobs, at least one.
            log: receives one line per event (a task finished, failed, a worker was lost).

        Returns:
            Each job's result, or a :class:`TaskFailed`, in job order.
        """
        raise NotImplementedError

    def describe(self) -> dict:
        """What a campaign summary records of its executor.

        Returns:
            ``{"kind", "workers", "threads_per_worker", "scheduler"}`` (``scheduler`` None unless the executor's
            settings name one).
        """
        return {"kind": self.name, "workers": self.options.workers, "threads_per_worker": self.threads_per_worker(),
                "scheduler": getattr(self.settings, "scheduler", None)}


#: The registered executors by name, in registration order.
EXECUTORS: dict[str, type[Executor]] = {}
_E = TypeVar("_E", bound=type[Executor])


def register_executor(name: str) -> Callable[[_E], _E]:
    """Class decorator registering an :class:`Executor` subclass under ``name`` (``--executor NAME``).

    Args:
        name: the executor's name; registering another class under a name already taken is refused.

    Returns:
        The decorator, which returns the class unchanged but for its ``name``.
    """
    def add(cls: _E) -> _E:
        if EXECUTORS.get(name, cls) is not cls:
            raise ValueError(f"executor {name!r} is registered already ({EXECUTORS[name].__qualname__})")
        cls.name = name
        EXECUTORS[name] = cls
        return cls

    return add


def executor_class(name: str) -> type[Executor]:
    """The executor registered under ``name``.

    Raises:
        SpecError: no executor has that name (the message lists the registered ones).
    """
    if name not in EXECUTORS:
        raise SpecError(f"--executor {name!r}: choose one of {', '.join(EXECUTORS)}")
    return EXECUTORS[name]


def _setting_names(cls: type[Executor]) -> set[str]:
    return {f.name for f in fields(cls.Settings)}


def make_executor(options: ExecutorOptions) -> Executor:
    """The executor ``options`` name, with its settings checked.

    Args:
        options: the executor's name, workers, threads and its own settings.

    Returns:
        An instance of the registered class.

    Raises:
        SpecError: an unknown executor, a setting this executor does not read (naming the executor that does,
            e.g. ``--scheduler needs --executor dask``), or a setting it refuses.
    """
    cls = executor_class(options.executor)
    known = _setting_names(cls)
    for key in options.settings:
        if key in known:
            continue
        flag = "--" + key.replace("_", "-")
        owners = [n for n, c in EXECUTORS.items() if key in _setting_names(c)]
        if owners:
            raise SpecError(f"{flag} needs --executor {' or '.join(owners)}")
        raise SpecError(f"{flag}: not a setting of the {cls.name} executor (its settings: "
                        f"{', '.join(sorted(known)) or 'none'})")
    return cls(options)


def execute(fn: Callable, jobs: Sequence, options: ExecutorOptions | None = None, *,
            log: Callable[[str], None] = lambda _m: None) -> list:
    """Run ``fn`` on every job with the executor ``options`` name.

    Args:
        fn: the task function (picklable for an executor that runs it elsewhere).
        jobs: the jobs (:class:`Job`, or anything the task function takes).
        options: executor, workers, threads and the executor's settings (default: ``local``, one worker).
        log: receives one line per event.

    Returns:
        Each job's result, or a :class:`TaskFailed`, in job order.

    Raises:
        SpecError: bad options (checked before anything runs, even with no jobs).
    """
    executor = make_executor(options or ExecutorOptions())
    if not jobs:
        return []
    return executor.run(fn, jobs, log)


@register_executor("local")
class LocalExecutor(Executor):
    """In this process, one job after another, with one worker; a pool of spawned processes with more
    (:func:`run_inline`, :func:`run_local`)."""

    @property
    def in_process(self) -> bool:
        return self.options.workers == 1

    def threads_per_worker(self) -> int | None:
        if self.options.workers == 1 and self.options.threads is None:
            return None
        return super().threads_per_worker()

    def run(self, fn: Callable, jobs: Sequence, log: Callable[[str], None]) -> list:
        threads = plan_threads(self.options.workers, self.options.threads)
        if self.options.workers == 1:
            return run_inline(fn, jobs, log)
        return run_local(fn, jobs, self.options.workers, threads, log)


@dataclass(frozen=True)
class DaskSettings:
    """Settings of the ``dask`` executor.

    Attributes:
        scheduler: address of a running scheduler (``[SCHEME://]HOST:PORT``); None: a LocalCluster.
        processes: the LocalCluster's workers are processes (False: threads of this process).
    """

    scheduler: str | None = None
    processes: bool = True


@register_executor("dask")
class DaskExecutor(Executor):
    """On Dask distributed: a LocalCluster, or the running scheduler of the ``scheduler`` setting
    (:func:`run_dask`)."""

    Settings = DaskSettings

    def check(self) -> None:
        if self.settings.scheduler:
            check_scheduler_address(self.settings.scheduler)

    def threads_per_worker(self) -> int | None:
        if self.settings.scheduler:  # the workers are someone else's: the number of them is not known here
            return self.options.threads or 1
        return super().threads_per_worker()

    def run(self, fn: Callable, jobs: Sequence, log: Callable[[str], None]) -> list:
        return run_dask(fn, jobs, self.options.workers, self.threads_per_worker(), self.settings.scheduler, log,
                        processes=self.settings.processes)
