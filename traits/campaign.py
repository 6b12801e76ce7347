"""Campaigns: run a directory of audit specs (over several seeds) and compare the tasks.

A campaign directory holds audit specs (``*.yaml`` / ``*.json``) and an optional ``campaign.yaml``
with named *profiles*: dotted overrides applied to every spec (e.g. ``data.subsample: 3000``), so all
tasks share one architecture, training budget and probe settings. Each (seed, task) runs in
``OUT/seed-S/TASK/``; a task whose ``results.json`` was produced by the same spec is not run again, so
an interrupted campaign resumes where it stopped (training and 2D surfaces also resume mid-way). A task
stopped after its ``results.json`` but before every report format its spec asks for was written has its
missing reports rendered from that ``results.json`` on the next run (nothing is measured again).

``campaign.yaml`` is checked before anything runs: ``profiles`` maps profile names to mappings of dotted
spec keys to values, ``resources`` maps task names (or ``default``) to mappings of resource names to
non-negative numbers; anything else is a SpecError naming the file and the field.

Exit contract (:func:`campaign_exit_code`, the status of ``traits campaign``): **0** every task ran (or was
finished earlier) and passed its gates (warnings allowed); **1** every task ran and at least one failed a
gate; **2** bad input: the campaign directory, ``campaign.yaml`` or a spec is invalid, and nothing ran;
**3** a task failed (it raised, or its worker was lost): the summary covers the others and lists the
failed ones with their errors (``failed`` in summary.json, "Failed" in summary.md), and
:func:`run_campaign` raises :class:`TasksFailed` (holding that summary) once it is written. Tasks left
out on purpose (``max_tasks``, ``summary_only``) do not change the status.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from traits.data.splits import SPLIT_SCHEME
from traits.errors import SpecError, TraitsError
from traits.files import ensure_dir, write_json_atomic, write_text_atomic
from traits.outdir import same_audit
from traits.report.formatting import markdown_literal
from traits.results import AuditResult, json_float, load_result
from traits.spec import AuditSpec, load_spec, read_mapping
from traits.study import catalogue as _catalogue

if TYPE_CHECKING:
    from traits.study.executors import Executor, ExecutorOptions

CAMPAIGN_FILE = "campaign.yaml"
EXIT_PASSED, EXIT_GATE_FAILED, EXIT_BAD_INPUT, EXIT_TASK_FAILED = 0, 1, 2, 3
#: Files of a campaign directory that are not audit specs (the generated study's table of tasks).
NOT_SPECS = (CAMPAIGN_FILE, "families.json")

# Columns, labels, kinds and expected signs come from the one metric catalogue (traits.study.catalogue).
_RANKED = _catalogue.ranked()
#: Landscape metrics whose OOD/ID ratio is compared with the error ratio (the loss at θ listed last).
LANDSCAPE_RATIOS = tuple(m.name for m in _RANKED if m.kind == "landscape") + ("loss_ratio",)
#: The sceptic's baselines: how far the OOD set lies from training (traits.shift), OOD/ID.
DISTANCE_RATIOS = tuple(m.name for m in _RANKED if m.kind == "distance baseline")
#: OOD/ID ratios compared across tasks; the first is the error ratio the others are ranked against.
SUMMARY_RATIOS = ("mae_ratio", *LANDSCAPE_RATIOS, *DISTANCE_RATIOS)
RATIO_LABELS = {k: v for k, v in _catalogue.labels().items() if k in SUMMARY_RATIOS}
# the loss at θ is the probes' own error (MSE on their subsample): listed, never a "best" predictor
RATIO_KIND = {m.name: m.kind for m in _RANKED}
#: The sign a ratio's correlation with the error ratio should have if the metric tracks OOD error
#: (a smaller robust radius or basin means a worse OOD landscape).
EXPECTED_SIGN = {m.name: m.direction for m in _RANKED if m.direction < 0}


@dataclass
class Task:
    name: str
    path: Path
    spec: AuditSpec


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def campaign_settings(directory: Path) -> dict[str, dict]:
    """``profiles`` and ``resources`` of a campaign directory's campaign.yaml, checked (empty without the
    file): {"profiles": {NAME: {DOTTED_KEY: value}}, "resources": {TASK: {RESOURCE: amount}}}."""
    settings = Path(directory) / CAMPAIGN_FILE
    if not os.path.lexists(settings):
        return {"profiles": {}, "resources": {}}
    raw = read_mapping(settings)
    profiles = raw.get("profiles")
    profiles = {} if profiles is None else profiles
    if not isinstance(profiles, dict):
        raise SpecError(f"{settings}: profiles: must map profile names to dotted overrides (e.g. "
                        f"{{cpu: {{data.subsample: 3000}}}}), got {type(profiles).__name__}")
    checked: dict[str, dict] = {}
    for name, overrides in profiles.items():
        if not isinstance(name, str) or not name:
            raise SpecError(f"{settings}: profiles: a profile name must be a non-empty string, got {name!r}")
        overrides = {} if overrides is None else overrides
        if not isinstance(overrides, dict):
            raise SpecError(f"{settings}: profiles.{name}: must map dotted spec keys to values (e.g. "
                            f"data.subsample: 3000), got {type(overrides).__name__}")
        for key in overrides:
            if not isinstance(key, str) or not all(key.split(".")):
                raise SpecError(f"{settings}: profiles.{name}: {key!r} is not a dotted spec key such as "
                                "data.subsample")
        checked[name] = dict(overrides)
    resources = raw.get("resources")
    resources = {} if resources is None else resources
    if not isinstance(resources, dict):
        raise SpecError(f"{settings}: resources: must map task names (or 'default') to e.g. {{GPU: 1}}, got "
                        f"{type(resources).__name__}")
    for task, need in resources.items():
        if not isinstance(task, str) or not isinstance(need, dict) or not all(
                isinstance(k, str) and _number(v) and v >= 0 for k, v in need.items()):
            raise SpecError(f"{settings}: resources.{task}: must map resource names to non-negative numbers "
                            f"(e.g. {{GPU: 1}}), got {need!r}"[:300])
    return {"profiles": checked, "resources": dict(resources)}


def profile_overrides(directory: Path, profile: str | None) -> dict[str, Any]:
    """The dotted overrides of ``profile`` (none for None); a SpecError when campaign.yaml lacks it."""
    if profile is None:
        return {}
    directory = Path(directory)
    if not os.path.lexists(directory / CAMPAIGN_FILE):
        raise SpecError(f"{directory}: profile {profile!r} requested but there is no {CAMPAIGN_FILE}")
    profiles = campaign_settings(directory)["profiles"]
    if profile not in profiles:
        raise SpecError(f"{directory / CAMPAIGN_FILE}: no profile {profile!r}; it defines {sorted(profiles)}")
    return dict(profiles[profile])


def load_campaign(directory: Path, profile: str | None = None, seed: int | None = None,
                  data_path: Path | None = None) -> list[Task]:
    """The specs of a campaign directory with the profile's overrides (and seed / data path) applied."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SpecError(f"{directory}: no such campaign directory")
    campaign_settings(directory)  # a malformed campaign.yaml is refused even when no profile is asked for
    overrides = profile_overrides(directory, profile)
    if seed is not None:
        overrides["seed"] = seed
    if data_path is not None:
        overrides["data.path"] = str(Path(data_path).resolve())
    paths = sorted(p for p in directory.iterdir()
                   if p.suffix in (".yaml", ".yml", ".json") and p.name not in NOT_SPECS)
    if not paths:
        raise SpecError(f"{directory}: no audit specs (*.yaml, *.json) in the campaign directory")
    tasks = [Task(p.stem, p, load_spec(p, overrides=overrides, need_checkpoint=False)) for p in paths]
    names = [t.spec.name for t in tasks]
    if len(set(names)) != len(names):
        raise SpecError(f"{directory}: two specs share a name; task names must be unique")
    return tasks


def select_tasks(tasks: list[Task], only: list[str] | None, directory: Path) -> list[Task]:
    """The tasks whose name matches one of the shell patterns ``only`` (all when it is None or empty)."""
    patterns = [p for p in (only or []) if p]
    if not patterns:
        return tasks
    chosen = [t for t in tasks if any(fnmatch.fnmatchcase(t.name, p) for p in patterns)]
    if not chosen:
        raise SpecError(f"{directory}: no task matches --only {','.join(patterns)}; the tasks are "
                        + ", ".join(t.name for t in tasks[:8]) + (" ..." if len(tasks) > 8 else ""))
    return chosen


def campaign_resources(directory: Path) -> dict[str, dict]:
    """``resources`` of campaign.yaml: {"default": {"CPU": 1}, TASK: {"GPU": 1}, ...} (Dask worker resources)."""
    return campaign_settings(directory)["resources"]


def task_resources(task: Task, declared: dict[str, dict]) -> dict:
    """What a task needs: its entry in campaign.yaml ``resources``; else what its spec's pinned device needs
    (GPU for ``device: cuda``, one CPU for ``device: cpu``, so a CPU audit never waits for a GPU worker under
    a GPU default); else the campaign's default; else one CPU."""
    if task.name in declared:
        return dict(declared[task.name])
    if task.spec.device == "cuda":
        return {"GPU": 1}
    if task.spec.device == "cpu":
        return {"CPU": 1}
    return dict(declared.get("default", {"CPU": 1}))


def finished_row(where: Path, spec: AuditSpec, task: str, *, rewrite: bool = True,
                 log: Callable[[str], None] = lambda _m: None) -> dict | None:
    """The summary row of a finished task folder (its results.json measured by this spec), else None.

    A result gated with other gates than the spec's is re-gated (:func:`traits.verdict.regate`); with
    ``rewrite`` its results.json and reports are rewritten, so the folder keeps describing one verdict.
    With ``rewrite``, a report format the spec asks for that is missing (the task was stopped while its
    reports were written) is rendered from the results.json."""
    previous = where / "results.json"
    if not previous.is_file():
        return None
    try:
        done = load_result(previous)
    except TraitsError:
        return None
    if not same_audit(done.spec, spec.model_dump(mode="json"), measurements_only=True,
                      data_hash=done.provenance.data_hash, checkpoint_hash=done.provenance.checkpoint_sha256):
        return None
    if task_family(done) == "random" and done.provenance.split_scheme != SPLIT_SCHEME:
        return None  # the same spec drew another partition then: not this task's audit (run_task redoes it)
    from traits.verdict import regate

    if regate(done, spec.gates) and rewrite:
        if _rewrite_regated(where, done, spec):
            log(f"{where}: re-gated with the spec's gates (status {done.status}); measurements reused")
        else:
            log(f"{where}: re-gated in this summary (status {done.status}), but its reports could not be "
                "rewritten; the folder keeps its earlier verdict and the next run tries again")
    elif rewrite and (missing := missing_reports(where, spec)):
        if _finish_reports(where, done, missing):
            log(f"{where}: its results.json was written but not its {', '.join('report.' + f for f in missing)} "
                "(stopped while reporting); rendered from the results.json")
        else:
            log(f"{where}: its {', '.join('report.' + f for f in missing)} could not be rendered; the next run "
                "tries again")
    return summary_row(task, done)


def missing_reports(where: Path, spec: AuditSpec) -> list[str]:
    """The report formats ``spec`` asks for (html, pdf) that the task folder lacks."""
    from traits.outdir import REPORT_FILES

    wanted = [f for f in spec.report.formats if f != "json" and f"report.{f}" in REPORT_FILES]
    return [f for f in wanted if not (where / f"report.{f}").is_file()]


def _finish_reports(where: Path, result: AuditResult, formats: list[str]) -> bool:
    """Render the missing report ``formats`` of a finished task from its result, under the folder's lock.
    False (and a warning logged) when the folder is busy or a report would not render."""
    import logging

    from traits.outdir import acquire_lock
    from traits.report.render import render_report

    try:
        with acquire_lock(where, purpose=f"reports of {result.name!r}"):
            render_report(result, where, formats=tuple(formats))
    except (TraitsError, OSError) as exc:
        logging.getLogger("traits.campaign").warning("%s: missing reports not written (%s)", where, exc)
        return False
    return True


def _rewrite_regated(where: Path, result: AuditResult, spec: AuditSpec) -> bool:
    """Rewrite a re-gated task folder under its lock: the reports first, then the marker, then results.json
    (atomically) last, so a failure part-way leaves the old results.json and the next run re-gates again.
    False (and nothing more written) when the reports could not be rendered."""
    import logging

    from traits.outdir import acquire_lock, folder_owner, write_marker
    from traits.report.render import render_report

    formats = tuple(f for f in spec.report.formats if f != "json")
    try:
        with acquire_lock(where, purpose=f"re-gating {result.name!r}"):
            if formats:
                render_report(result, where, formats=formats)
            owner = folder_owner(where)
            write_marker(where, result.spec, owner.spec_path if owner is not None else "")
            result.write(where / "results.json")
    except (TraitsError, OSError) as exc:  # a busy folder, a report that would not render, a full disk
        logging.getLogger("traits.campaign").warning("%s: re-gated verdict not written (%s)", where, exc)
        return False
    return True


def run_task(job, progress=None, log: Callable[[str], None] | None = None) -> dict:
    """Run one (seed, task) job (:class:`traits.study.executors.Job`) and return its summary row.

    Idempotent: a folder whose results.json came from this spec is reused, not rerun. The audit writes
    into the task's own folder and results.json (renamed into place) is written last, so a task whose
    worker was lost has no results.json and runs again (training resumes from its saved state)."""
    from traits.audit import run_audit

    log = log or (lambda _m: None)
    if getattr(job, "threads", 0):
        from traits.study.executors import _set_threads

        _set_threads(job.threads)
    spec = load_spec(Path(job.spec_path), overrides=dict(job.overrides), need_checkpoint=False)
    where = Path(job.where)
    row = finished_row(where, spec, job.task)
    if row is not None:
        log(f"{job.label}: done earlier, reusing {where / 'results.json'}")
        return row
    log(f"{job.label}: running")
    _clear_stale_task(where, spec, log)
    t = time.perf_counter()
    result = run_audit(spec, where, spec_path=job.spec_path, command=f"traits campaign {job.campaign}",
                       progress=progress, train_progress=progress if callable(progress) else False)
    log(f"{job.label}: {result.status} in {time.perf_counter() - t:.0f} s")
    return summary_row(job.task, result)


def estimate_text(n_pending: int, n_total: int, n_tasks: int, n_seeds: int, measured: list[float],
                  workers: int) -> str:
    """The compute estimate printed before a campaign starts: tasks × seeds × measured time per task."""
    head = f"{n_total} audits ({n_tasks} tasks × {n_seeds} seed{'s' * (n_seeds != 1)}), {n_pending} to run"
    if not n_pending:
        return head + "."
    if not measured:
        return (head + "; no finished task of this campaign to measure the time per task from yet (run one "
                "with --max-tasks 1 to get an estimate).")
    per = float(np.median(measured))
    hours = n_pending * per / max(1, workers) / 3600
    return (head + f"; measured {per:.0f} s per task (median of {len(measured)} finished) → about "
            f"{n_pending} × {per:.0f} s / {workers} worker{'s' * (workers != 1)} ≈ {hours:.1f} h.")


@dataclass
class CampaignPlan:
    """Every (seed, task) of a campaign run, in summary order, and the jobs left to run.

    Attributes:
        slots: one per (seed, task): its summary row when finished, else None (until its job returns).
        jobs: (slot index, job) of each task to run.
        missing: ``{"seed", "task"}`` of each task left out of this run (``summary_only``, ``max_tasks``).
        n_tasks: tasks per seed.
        n_seeds: seeds.
    """

    slots: list[dict | None] = field(default_factory=list)
    jobs: list[tuple[int, Any]] = field(default_factory=list)
    missing: list[dict] = field(default_factory=list)
    n_tasks: int = 0
    n_seeds: int = 1

    def estimate(self, workers: int) -> str:
        """The compute estimate of the jobs (:func:`estimate_text`), timed by the finished tasks.

        Args:
            workers: tasks run at once.

        Returns:
            One sentence.
        """
        measured = [r["wall_seconds"] for r in self.slots if r is not None and r.get("wall_seconds")]
        return estimate_text(len(self.jobs), len(self.slots), self.n_tasks, self.n_seeds, measured, workers)

    def keep_first(self, max_tasks: int | None) -> None:
        """Keep the first ``max_tasks`` jobs (all for None); the others are listed as missing."""
        if max_tasks is not None and len(self.jobs) > max_tasks:
            self.missing.extend({"seed": job.seed, "task": job.task} for _i, job in self.jobs[max_tasks:])
            self.jobs = self.jobs[:max_tasks]


def run_campaign(
    directory: Path,
    out_dir: Path,
    *,
    seeds: list[int] | None = None,
    profile: str | None = None,
    data_path: Path | None = None,
    log: Callable[[str], None] = lambda _msg: None,
    progress=None,
    summary_only: bool = False,
    options: ExecutorOptions | None = None,
    max_tasks: int | None = None,
    only: list[str] | None = None,
    task_fn: Callable | None = None,
    executor: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    scheduler: str | None = None,
) -> dict:
    """Run (or resume) every task for every seed, then write the summary (JSON, Markdown, HTML, PDF).

    Tasks run in this process (one worker, the default), on a local process pool (``workers > 1``) or on Dask
    (executor ``dask``, a LocalCluster or the running ``scheduler``): whatever ``options`` names, see
    traits.study.executors. ``max_tasks`` runs at most that many unfinished tasks (e.g. one, to measure the time
    per task). ``only`` keeps the tasks whose name matches one of these shell patterns (e.g. ``["*-element-*"]``
    to run a study's core first); the summary then covers those tasks only. With ``summary_only`` nothing runs:
    the summary covers the tasks already finished (and lists the others as missing), e.g. to look at a campaign
    that is still running elsewhere.

    Args:
        directory: the campaign directory (audit specs and an optional campaign.yaml).
        out_dir: where each task's folder (``seed-S/TASK``) and the summary go.
        seeds: the seeds to run every task with (default: each spec's own).
        profile: the campaign.yaml profile whose overrides apply to every spec.
        data_path: a data file replacing every spec's ``data.path``.
        log: receives one line per event.
        progress: the progress display of tasks run in this process.
        summary_only: run nothing; summarise the finished tasks.
        options: the executor, its workers, threads and settings (default: ``local``, one worker).
        max_tasks: run at most this many unfinished tasks.
        only: shell patterns of the task names to keep.
        task_fn: the function run on each job (default :func:`run_task`).
        executor, workers, threads, scheduler: the command line's flags, read into the options when
            ``options`` is None (give one or the other).

    Returns:
        The summary (also written to ``out_dir``).

    Raises:
        SpecError: bad input (the executor options, the campaign directory or a spec), before anything runs.
        TasksFailed: a task failed; the summary of the others has been written.
    """
    from traits.study.executors import make_executor

    chosen = make_executor(_executor_options(options, executor, workers, threads, scheduler))
    out_dir = ensure_dir(Path(out_dir))  # bad executor options are refused before the output folder exists
    t_start = time.perf_counter()
    per_thread = chosen.threads_per_worker()
    plan = plan_campaign(directory, out_dir, seeds=seeds, profile=profile, data_path=data_path, only=only,
                         summary_only=summary_only, threads=per_thread or 0, log=log)
    if not summary_only:
        log(plan.estimate(chosen.workers))
    plan.keep_first(max_tasks)
    fn = task_fn if task_fn is not None else _task_function(chosen, progress, log)
    failed = run_jobs(plan, chosen, fn, log)
    rows = [r for r in plan.slots if r is not None]
    if not rows and not failed:
        raise TraitsError(f"{out_dir}: no finished audit to summarise")
    summary = summarise(rows)
    summary.update(profile=profile, campaign=str(directory), wall_seconds_this_run=time.perf_counter() - t_start,
                   missing=plan.missing, executor=chosen.describe())
    if failed:
        summary["failed"] = failed
    write_summary(summary, out_dir)
    if failed:
        raise TasksFailed(failed_text(failed), summary)
    return summary


def _executor_options(options: ExecutorOptions | None, executor: str | None, workers: int | None,
                      threads: int | None, scheduler: str | None) -> ExecutorOptions:
    """The executor options of a campaign: ``options``, or the command line's flags read into them.

    Args:
        options: the options given whole, or None.
        executor, workers, threads, scheduler: the flags (None: not given; then local, one worker, cores / workers).

    Returns:
        The options.

    Raises:
        TypeError: both the options and a flag were given.
    """
    flags = (executor, workers, threads, scheduler)
    if options is not None:
        if any(f is not None for f in flags):
            raise TypeError("run_campaign: give options or executor/workers/threads/scheduler, not both")
        return options
    from traits.study.executors import ExecutorOptions

    return ExecutorOptions(executor or "local", 1 if workers is None else workers, threads,
                           settings={"scheduler": scheduler})


def _task_overrides(directory: Path, profile: str | None, seed: int | None, data_path: Path | None) -> dict:
    """The dotted overrides a job applies to its spec: the profile's, the seed and the data path."""
    overrides = profile_overrides(Path(directory), profile)
    if seed is not None:
        overrides["seed"] = seed
    if data_path is not None:
        overrides["data.path"] = str(Path(data_path).resolve())
    return overrides


def plan_campaign(directory: Path, out_dir: Path, *, seeds: list[int] | None, profile: str | None,
                  data_path: Path | None, only: list[str] | None, summary_only: bool, threads: int,
                  log: Callable[[str], None]) -> CampaignPlan:
    """Every (seed, task) of a campaign: the finished ones' summary rows (re-gated and their missing reports
    rendered, unless ``summary_only``) and a job for each of the others (none with ``summary_only``).

    Args:
        directory: the campaign directory.
        out_dir: the campaign's output folder.
        seeds: the seeds (None: each spec's own).
        profile: the campaign.yaml profile.
        data_path: a data file replacing every spec's.
        only: shell patterns of the task names to keep.
        summary_only: make no jobs; list the unfinished tasks as missing.
        threads: torch threads of each job (0: the worker's own).
        log: receives a line per task reused or left out.

    Returns:
        The plan, its slots in seed order then task order.
    """
    from traits.study.executors import Job

    declared = campaign_resources(Path(directory)) if Path(directory).is_dir() else {}
    seed_list = seeds if seeds else [None]
    plan = CampaignPlan(n_seeds=len(seed_list))
    for seed in seed_list:
        tasks = select_tasks(load_campaign(directory, profile, seed, data_path), only, directory)
        plan.n_tasks = len(tasks)
        overrides = _task_overrides(directory, profile, seed, data_path)
        for task in tasks:
            where = out_dir / f"seed-{task.spec.seed}" / task.name
            row = finished_row(where, task.spec, task.name, rewrite=not summary_only, log=log)
            if row is not None:
                log(f"seed {task.spec.seed} {task.name}: done earlier, reusing {where / 'results.json'}")
            elif summary_only:
                log(f"seed {task.spec.seed} {task.name}: not finished, left out of the summary")
                plan.missing.append({"seed": task.spec.seed, "task": task.name})
            else:
                job = Job(index=len(plan.slots), task=task.name, seed=task.spec.seed, spec_path=str(task.path),
                          overrides=overrides, where=str(where), campaign=str(directory), threads=threads,
                          resources=task_resources(task, declared))
                plan.jobs.append((len(plan.slots), job))
            plan.slots.append(row)
    return plan


def _task_function(executor: Executor, progress, log: Callable[[str], None]) -> Callable:
    """:func:`run_task`, given the campaign's progress display and log when the jobs run in this process."""
    if executor.in_process:
        return functools.partial(run_task, progress=progress, log=log)
    return run_task


def run_jobs(plan: CampaignPlan, executor: Executor, fn: Callable, log: Callable[[str], None]) -> list[dict]:
    """Run the plan's jobs with ``executor``, each finished job's row into its slot.

    Args:
        plan: the campaign's plan; its slots are filled in.
        executor: the executor to run the jobs with.
        fn: the task function.
        log: receives one line per event.

    Returns:
        ``{"seed", "task", "error", "kind"}`` of each job that failed.
    """
    from traits.study.executors import TaskFailed

    if not plan.jobs:
        return []
    failed = []
    results = executor.run(fn, [j for _, j in plan.jobs], log)
    for (i, job), res in zip(plan.jobs, results):
        if isinstance(res, TaskFailed):
            failed.append({"seed": job.seed, "task": job.task, "error": res.error, "kind": res.kind})
        else:
            plan.slots[i] = res
    return failed


class TasksFailed(TraitsError):
    """Tasks of a campaign failed; the summary of the others (``summary``, its ``failed`` naming them) has
    been written. The campaign's exit status is then 3 (:func:`campaign_exit_code`)."""

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary


def failed_text(failed: list[dict]) -> str:
    """One line naming the failed tasks and the first errors."""
    return (f"{len(failed)} task(s) failed (the summary covers the others): "
            + "; ".join(f"{f['task']} (seed {f['seed']}): {f['error']}" for f in failed[:3])
            + (" ..." if len(failed) > 3 else ""))


def campaign_exit_code(summary: dict) -> int:
    """The campaign's exit status (see the module docstring): 3 when a task failed, else 1 when a finished
    task failed a gate, else 0. Bad input (2) is raised as a TraitsError before anything runs."""
    if summary.get("failed"):
        return EXIT_TASK_FAILED
    if any(row.get("failed_gates") for row in summary.get("rows", [])):
        return EXIT_GATE_FAILED
    return EXIT_PASSED


def _clear_stale_task(where: Path, spec: AuditSpec, log: Callable[[str], None]) -> None:
    """A task folder holding another spec's audit (the profile or the spec changed) is the campaign's own:
    remove that audit's results and reports so the new run does not mix with them; the trained model is
    kept (training resumes when its settings are unchanged, and refuses a state of other settings). When
    only the gates changed, the folder's partial work is the same measurement: its marker takes the new
    spec and nothing is removed."""
    from traits.outdir import MARKER, folder_owner, remove_artefacts, write_marker
    from traits.train import MANIFEST_FILE

    if not where.is_dir():
        return
    live = spec.model_dump(mode="json")
    drawn = _split_scheme_of(where / "model" / MANIFEST_FILE)
    if _spec_family(live) == "random" and drawn not in (None, SPLIT_SCHEME):
        removed = remove_artefacts(where)
        log(f"{where}: its random split was drawn by split scheme {drawn}, not {SPLIT_SCHEME} (another partition); "
            f"removed {', '.join(removed)}, the trained model included")
        return
    owner = folder_owner(where)
    if owner is None:
        return
    if owner.spec is None or not same_audit(owner.spec, live, measurements_only=True, data_hash=owner.data_hash):
        removed = remove_artefacts(where, keep=("model",))
        log(f"{where}: the spec changed since the last run; removed {', '.join(removed)}")
    elif not same_audit(owner.spec, live, data_hash=owner.data_hash) and (where / MARKER).is_file():
        write_marker(where, live, owner.spec_path)
        log(f"{where}: only the gates changed since the last run; resuming its measurements")


def _get(d: dict, *keys):
    for k in keys:
        if d is None:
            return None
        d = d.get(k) if isinstance(d, dict) else getattr(d, k, None)
    return d


def summary_row(task: str, result: AuditResult) -> dict:
    """One (task, seed) line of the campaign table."""
    m = {s: result.metrics.get(s) for s in ("id", "ood")}
    row = {
        "task": task, "name": result.name, "seed": result.provenance.seed, "target": result.target,
        "unit": result.unit, "omit": result.omit, "holdout": (result.spec or {}).get("holdout"),
        "family": task_family(result), "rule": held_out_rule(result), "status": result.status,
        "id_mae": _get(result.accuracy.get("id"), "mae"), "ood_mae": _get(result.accuracy.get("ood"), "mae"),
        "n_id": _get(result.accuracy.get("id"), "n"), "n_ood": _get(result.accuracy.get("ood"), "n"),
        "wall_seconds": sum(v for k, v in result.provenance.wall_seconds.items() if k != "total"),
        "data": data_source(result.spec or {}),
    }
    for key in ("lambda_max", "trace", "robust_radius", "sharpness", "basin_area", "loss"):
        row[f"id_{key}"] = getattr(m["id"], key, None) if m["id"] else None
        row[f"ood_{key}"] = getattr(m["ood"], key, None) if m["ood"] else None
    ratios = dict(result.ratios)
    if result.surface is not None and "entropy_ood_minus_id" not in ratios:
        ratios.update(_landscape_ratios(result))  # results from before these statistics: recompute
    for key in SUMMARY_RATIOS:
        row[key] = ratios.get(key)
    ood_shift = result.shift.splits.get("ood") if result.shift is not None else None
    row["ood_target_outside"] = ood_shift.outside_p01_p99 if ood_shift is not None else None
    case = next((f for f in result.findings if f.id == "domain_shift"), None)
    row["shift_case"] = case.numbers.get("case") if case is not None else None
    row["failed_gates"] = [g.name for g in result.gates if g.level == "fail"]
    return row


def data_source(spec: dict) -> str:
    """The data an audit ran on, as a summary names it: the data file's stem (``mp_36738``, ``perov5``) or the
    bundled sample, with the target column when the spec names one (``perov5:heat_ref``)."""
    data = spec.get("data") or {}
    path = data.get("path")
    name = Path(str(path)).name.split(".")[0] if path else (data.get("source") or "sample")
    return f"{name}:{data['target_column']}" if data.get("target_column") else name


def task_family(result: AuditResult) -> str:
    """element (omit), the holdout kind, named sets, or random (nothing omitted)."""
    return _spec_family(result.spec or {}, result.omit)


def _spec_family(spec: dict, omit: list | None = None) -> str:
    holdout = spec.get("holdout")
    if holdout:
        return str(holdout.get("kind"))
    if omit if omit is not None else spec.get("omit"):
        return "element"
    if (spec.get("data") or {}).get("sets"):
        return "named sets"
    return "random"


def _split_scheme_of(manifest: Path) -> int | None:
    """The split scheme a trained model's split manifest records (1 when it predates the field), or None
    when there is no readable manifest. A manifest that is not a regular file is an OutputError naming it."""
    from traits.files import read_output_file

    raw = read_output_file(manifest, "split manifest", 64 << 20)
    try:
        return int(json.loads(raw).get("scheme", 1)) if raw is not None else None
    except (ValueError, TypeError, AttributeError, RecursionError):
        return None


def held_out_rule(result: AuditResult) -> str:
    """What a task holds out, without its target or seed (``element:Fe``, ``chemsys:Fe-O,Li-O``,
    ``random:0.15``, ...): the tasks of different targets with one rule test the same compounds, so the study
    statistics treat them as one cluster (:mod:`traits.study.stats`). Random splits drawn by split scheme 1
    (``provenance.split_scheme``) nested every share of one seed inside one partition, so all of them form one
    cluster, ``random:nested``."""
    spec = result.spec or {}
    family = task_family(result)
    if family == "element":
        what = ",".join(sorted(result.omit))
    elif family == "random":
        nested = result.provenance.split_scheme < 2
        what = "nested" if nested else str((spec.get("split") or {}).get("ood_fraction"))
    elif family == "named sets":
        what = json.dumps((spec.get("data") or {}).get("sets"), sort_keys=True, default=str)
    else:
        what = ",".join(sorted(str(v) for v in ((spec.get("holdout") or {}).get("values") or [])))
    return f"{family}:{what}"


def held_out_text(entry: dict) -> str:
    holdout = entry.get("holdout")
    if holdout:
        return f"{holdout['kind']} {', '.join(str(v) for v in holdout['values'])}"
    return ", ".join(entry.get("omit") or []) or "none (random)"


def _landscape_ratios(result: AuditResult) -> dict:
    """Jump scale and entropy from stored curves and grids (located to the grid, not refined)."""
    from traits.probes.landscape import landscape_stats
    from traits.probes.metrics import ratio

    s, stats = result.surface, {}
    temperature = result.metrics["id"].loss if "id" in result.metrics else None
    for split in ("id", "ood"):
        loss0 = result.metrics[split].loss if split in result.metrics else None
        if loss0 is None or split not in s.curves:
            return {}
        stats[split] = landscape_stats(s.alphas_1d, s.curves[split], loss0, temperature,
                                       alphas_2d=s.alphas_2d or None, grid=s.grids.get(split))
    out = {"first_jump_ratio": ratio(stats["ood"].first_jump, stats["id"].first_jump)}
    if stats["ood"].entropy is not None and stats["id"].entropy is not None:
        out["entropy_ood_minus_id"] = stats["ood"].entropy - stats["id"].entropy
    return out


def _mean_std(values: list) -> tuple[float | None, float | None]:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return None, None
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None)


def summarise(rows: list[dict]) -> dict:
    """Per-task means over seeds and Spearman rank correlations of each ratio with the MAE ratio."""
    from scipy.stats import spearmanr

    tasks: dict[str, dict] = {}
    for row in rows:
        tasks.setdefault(row["task"], {"task": row["task"], "target": row["target"], "omit": row["omit"],
                                       "holdout": row.get("holdout"), "family": row.get("family"),
                                       "unit": row["unit"], "rows": []})["rows"].append(row)
    per_task = []
    for t in tasks.values():
        entry = {k: t[k] for k in ("task", "target", "omit", "unit")}
        if t.get("holdout"):
            entry["holdout"] = t["holdout"]
        if t.get("family"):
            entry["family"] = t["family"]
        entry["seeds"] = [r["seed"] for r in t["rows"]]
        for key in ("id_mae", "ood_mae", *SUMMARY_RATIOS, "id_lambda_max", "ood_lambda_max", "id_trace",
                    "ood_trace", "id_robust_radius", "ood_robust_radius", "ood_target_outside"):
            entry[key], entry[f"{key}_std"] = _mean_std([r.get(key) for r in t["rows"]])
        statuses = [r["status"] for r in t["rows"]]
        entry["verdict"] = max(statuses, key=["pass", "warn", "fail"].index)
        entry["verdicts"] = statuses
        entry["shift_cases"] = [r.get("shift_case") or "–" for r in t["rows"]]
        per_task.append(entry)
    correlations = {}
    for key in SUMMARY_RATIOS[1:]:
        pairs = [(r["mae_ratio"], r.get(key)) for r in rows
                 if r.get("mae_ratio") is not None and r.get(key) is not None]
        entry = {"kind": RATIO_KIND[key], "expected_sign": EXPECTED_SIGN.get(key, 1.0), "n": len(pairs)}
        if len(pairs) >= 3 and len({p[1] for p in pairs}) > 1 and len({p[0] for p in pairs}) > 1:
            rho, p = spearmanr([a for a, _ in pairs], [b for _, b in pairs])
            entry |= {"rho": json_float(rho), "p_value": json_float(p)}
        else:
            entry |= {"rho": None, "p_value": None}
        correlations[key] = entry
    return {"rows": rows, "tasks": per_task, "spearman_vs_mae_ratio": correlations,
            "best_predictor": best_predictors(correlations)}


def best_predictors(correlations: dict) -> dict:
    """The landscape metric and the distance baseline whose OOD/ID ratio tracks the error ratio best
    (largest Spearman ρ in the expected direction), and which of the two wins."""
    best: dict[str, dict | None] = {}
    for kind in ("landscape", "distance baseline"):
        scored = [(c["rho"] * c["expected_sign"], key) for key, c in correlations.items()
                  if c["kind"] == kind and c["rho"] is not None]
        if scored:
            score, key = max(scored)
            best[kind] = {"metric": key, "label": RATIO_LABELS[key], "rho": correlations[key]["rho"], "score": score}
        else:
            best[kind] = None
    land, base = best["landscape"], best["distance baseline"]
    if land is None and base is None:
        text = "No metric could be ranked against the error ratio (fewer than 3 audits with both numbers)."
        winner = None
    elif land is None or base is None:
        only = land or base
        winner = "landscape" if land else "distance baseline"
        text = (f"Only the {winner} metrics could be ranked: the best is {only['label']} (ρ = {only['rho']:.2f}).")
    else:
        winner = "landscape" if land["score"] > base["score"] else "distance baseline"
        if land["score"] == base["score"]:
            winner = "tie"
        verb = {"landscape": "the landscape metric tracks the OOD error more closely than any distance baseline",
                "distance baseline": "the distance baseline tracks the OOD error more closely than any landscape "
                "metric", "tie": "the two tie"}[winner]
        n = max(correlations[land["metric"]]["n"], correlations[base["metric"]]["n"])
        text = (f"Best landscape metric: {land['label']} (ρ = {land['rho']:.2f}); best distance baseline: "
                f"{base['label']} (ρ = {base['rho']:.2f}): {verb} over these {n} audits (a ranking, not a "
                "significance test: compare the p-values).")
    return {**best, "winner": winner, "statement": text}


def _f(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}g}"


def _pm(entry: dict, key: str) -> str:
    mean, std = entry.get(key), entry.get(f"{key}_std")
    return _f(mean) if std is None else f"{_f(mean)} ± {_f(std, 2)}"


def table_columns() -> list[tuple[str, str]]:
    """The campaign table's metric columns, from the catalogue (:func:`traits.catalogue.columns`): (heading, key),
    a metric's ID and OOD values first where the catalogue compares them per split ('ID MAE', 'λ_max ID'), then
    its OOD/ID ratio ('OOD/ID λ_max')."""
    out = []
    for m in _catalogue.columns():
        if m.split_label and m.split_key:
            heads = (f"ID {m.column}", f"OOD {m.column}") if m.kind == "error" else (f"{m.column} ID",
                                                                                    f"{m.column} OOD")
            out += [(heads[0], f"id_{m.split_key}"), (heads[1], f"ood_{m.split_key}")]
        out.append((f"OOD/ID {m.column}", m.name))
    return out


def summary_markdown(summary: dict) -> str:
    columns = table_columns()
    lines = [
        "| task | target | omitted | " + " | ".join(head for head, _ in columns)
        + " | OOD targets outside train p1–p99 | domain shift | verdict |",
        "|" + "---|" * (len(columns) + 6),
    ]
    for e in summary["tasks"]:
        outside = e.get("ood_target_outside")
        lines.append("| " + " | ".join([
            markdown_literal(e["task"]), markdown_literal(e["target"]), markdown_literal(held_out_text(e)),
            *(_pm(e, key) for _, key in columns), "–" if outside is None else f"{outside:.1%}",
            markdown_literal("/".join(e.get("shift_cases", [])) or "–"), markdown_literal("/".join(e["verdicts"])),
        ]) + " |")
    lines += ["", "Spearman rank correlation of each metric's OOD/ID ratio with the OOD/ID MAE ratio, over every "
              "(task, seed): landscape metrics and the distance baselines side by side. A metric that tracks the "
              "OOD error has ρ near +1, or near −1 for the metrics marked ↓ (a smaller ratio is worse).", "",
              "| kind | metric (OOD/ID) | ρ | p | n |", "|---|---|---|---|---|"]
    for key, c in summary["spearman_vs_mae_ratio"].items():
        kind = c.get("kind", RATIO_KIND.get(key, ""))
        label = RATIO_LABELS.get(key, key).replace("|", "\\|")  # a '|' would split the Markdown cell
        label += " ↓" if c.get("expected_sign", 1.0) < 0 else ""
        lines.append(f"| {kind} | {label} | {_f(c['rho'])} | {_f(c['p_value'], 2)} | {c['n']} |")
    best = summary.get("best_predictor")
    if best:
        lines += ["", best["statement"]]
    if summary.get("missing"):
        lines += ["", "Not finished (left out of this summary): "
                  + ", ".join(f"{markdown_literal(m['task'])} (seed {m['seed']})" for m in summary["missing"]) + "."]
    if summary.get("failed"):
        lines += ["", "Failed (left out of this summary): "
                  + "; ".join(f"{markdown_literal(f['task'])} (seed {f['seed']}): {markdown_literal(f['error'])}"
                            for f in summary["failed"]) + "."]
    return "\n".join(lines) + "\n"


def summary_figure(summary: dict):
    """Grouped bars: OOD/ID ratios (MAE, λ_max, trace, robust radius; hatched: the embedding and
    composition kNN-distance baselines) per task, log scale, ± std."""
    from matplotlib.figure import Figure

    keys = tuple(m.name for m in _catalogue.columns())
    labels = _catalogue.labels()
    tasks = summary["tasks"]
    fig = Figure(figsize=(6.7, 3.6), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(keys)
    x = np.arange(len(tasks))
    for i, key in enumerate(keys):
        means = [e.get(key) or np.nan for e in tasks]
        stds = [e.get(f"{key}_std") or 0.0 for e in tasks]
        ax.bar(x + (i - (len(keys) - 1) / 2) * width, means, width, yerr=stds, label=labels[key], capsize=2,
               hatch="///" if _catalogue.metric(key).kind == "distance baseline" else None, edgecolor="white", lw=0.3)
    ax.axhline(1.0, color="black", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xticks(x, [e["task"] for e in tasks], rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("OOD / ID ratio (log scale)")
    fig.legend(*ax.get_legend_handles_labels(), fontsize=7.5, ncols=3, loc="outside upper center", frameon=False)
    return fig


def _html_columns() -> list[dict]:
    """The summary page's metric columns (:func:`traits.catalogue.columns`): key, heading (HTML, λ_max as
    λ<sub>max</sub>) and, for an error, the per-split key its ID and OOD values are read from."""
    from markupsafe import Markup, escape

    return [{"key": m.name, "head": Markup(str(escape(m.column)).replace("λ_max", "λ<sub>max</sub>")),
             "split": m.split_key if m.kind == "error" else ""} for m in _catalogue.columns()]


def write_summary(summary: dict, out_dir: Path) -> dict[str, Path]:
    from markupsafe import Markup

    from traits.report.figures import encode
    from traits.report.render import html_to_pdf, template_environment

    paths = {
        "json": write_json_atomic(out_dir / "summary.json", summary),
        "md": write_text_atomic(out_dir / "summary.md", summary_markdown(summary)),
    }
    env = template_environment()
    # the package's own style sheet, not data: marked safe, or autoescape would turn its quotes into entities
    css = Markup((Path(env.loader.searchpath[0]) / "report.css").read_text(encoding="utf-8"))
    for medium in ("html", "pdf"):
        fig = encode(summary_figure(summary), svg=medium == "html", png_dpi=None if medium == "html" else 200)
        html = env.get_template("summary.html.j2").render(
            summary=summary, figure=fig.svg if medium == "html" else fig.png, css=css,
            labels=RATIO_LABELS, pm=_pm, f=_f, held_out=held_out_text, columns=_html_columns(),
        )
        if medium == "html":
            paths["html"] = write_text_atomic(out_dir / "summary.html", html)
        else:
            from traits.files import write_bytes_atomic

            paths["pdf"] = write_bytes_atomic(out_dir / "summary.pdf", html_to_pdf(html))
    return paths
