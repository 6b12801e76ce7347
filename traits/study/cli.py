"""``traits study generate``, ``summary``, ``trust-score``, ``reprobe`` and ``bands`` (registered on the main app by
traits.cli).

``study summary`` needs ``--out`` (it never writes into a default folder such as the repository's ``docs/study``);
the counts of ``study generate`` are bounded (``--min-ood`` and ``--min-train`` at least 1, ...), so a negative
one is a usage error (exit 2). Paths and messages are printed through ``traits.progress.safe_text``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from traits.progress import safe_text


def register(app: typer.Typer, handles_errors, out) -> None:
    """Add the ``study`` commands (``generate``, ``summary``) to the main app.

    Args:
        app: the ``traits`` app.
        handles_errors: the main app's decorator turning a TraitsError into a message and exit 2.
        out: the console the commands print to.
    """
    study = typer.Typer(name="study", help="Generate a study's task families; summarise a running or finished "
                        "study.", no_args_is_help=True, rich_markup_mode=None)
    study.command()(handles_errors(_generate_command(out)))
    study.command()(handles_errors(_summary_command(out)))
    study.command("trust-score")(handles_errors(_trust_score_command(out)))
    study.command()(handles_errors(_reprobe_command(out)))
    study.command()(handles_errors(_bands_command(out)))
    app.add_typer(study, name="study")


def _printer(out) -> Callable[[str], None]:
    """A log function printing each message to ``out``, escaped (:func:`traits.progress.safe_text`)."""
    return lambda m: out.print(safe_text(m), highlight=False)


def _generate_command(out) -> Callable[..., None]:
    """The ``study generate`` command (its options), printing to ``out``.

    Args:
        out: the console.

    Returns:
        The command function, for ``typer.Typer.command``.
    """
    def generate(
        pool: Annotated[Path | None, typer.Option(
            help="Data pool (e.g. the MP JSONL); not for --source sample.")] = None,
        out_dir: Annotated[Path, typer.Option(
            "--out", help="Campaign directory to write the specs into.")] = Path("study"),
        source: Annotated[str, typer.Option(help="Reader of the pool: mp, jarvis, csv or sample.")] = "mp",
        elements: Annotated[str, typer.Option(help="auto (every element meeting the minimums), study (the "
                                                   "issue's list) or Fe,O,...")] = "auto",
        families: Annotated[str, typer.Option(help="Comma-separated: element,chemsys,spacegroup,crystal_system,"
                                                   "group,row,random.")] = "element,random",
        targets: Annotated[str, typer.Option(help="Comma-separated targets.")] = "formation_energy_per_atom,band_gap",
        target_column: Annotated[str | None, typer.Option(
            help="Column of the target, e.g. heat_ref (Perov-5).")] = None,
        min_ood: Annotated[int, typer.Option(min=1, help="Least OOD compounds per task, after the subsample.")] = 100,
        min_train: Annotated[int, typer.Option(min=1, help="Least compounds left for training, after the "
                                                           "subsample.")] = 1000,
        subsample: Annotated[int | None, typer.Option(min=1, help="Subsample the profile draws (counts are scaled "
                                                                  "to it); default: the study profile's.")] = None,
        per_family: Annotated[int, typer.Option(min=0, help="Tasks per family other than element and random.")] = 2,
        random_tasks: Annotated[int, typer.Option("--random", min=0, help="Random-split baselines per target "
                                                  "(holding out 10 %, 15 %, 20 %, ...).")] = 3,
        labels: Annotated[str, typer.Option(help="Label backend: traits (the splitter's own) or matfold.")] = "traits",
        seeds: Annotated[int, typer.Option(min=1, help="Seeds planned (for the compute estimate).")] = 3,
    ) -> None:
        """Write a campaign directory of generated tasks (specs, campaign.yaml with the study and tiny
        profiles, families.json) and print the plan with a compute estimate."""
        from traits.study import families as fm

        criteria = fm.Criteria(min_ood=min_ood, min_train=min_train, per_family=per_family, random_tasks=random_tasks,
                               subsample=subsample if subsample is not None else fm.STUDY_PROFILE["data.subsample"])
        generate_study(out, pool=pool, out_dir=out_dir, source=source, elements=elements,
                       families=[f.strip() for f in families.split(",") if f.strip()],
                       targets=[t.strip() for t in targets.split(",") if t.strip()], target_column=target_column,
                       criteria=criteria, labels=labels, seeds=seeds)

    return generate


def generate_study(out, *, pool: Path | None, out_dir: Path, source: str, elements: str, families: list[str],
                   targets: list[str], target_column: str | None, criteria, labels: str, seeds: int) -> None:
    """What ``study generate`` does: label the pool, choose the tasks, write the campaign directory, print the plan.

    Args:
        out: the console.
        pool: the data pool (None for the bundled sample).
        out_dir: the campaign directory to write.
        source: the pool's reader.
        elements: ``auto``, ``study`` or comma-separated elements.
        families: the task families.
        targets: the targets (the first labels the pool).
        target_column: the target's column, if the data names it otherwise.
        criteria: the task criteria (:class:`traits.study.families.Criteria`), the subsample resolved.
        labels: the label backend.
        seeds: the seeds planned (for the estimate).

    Raises:
        SpecError: no pool for a source other than ``sample``.
    """
    from traits.errors import SpecError
    from traits.study import families as fm

    if source != "sample" and pool is None:
        raise SpecError("--pool: give the data file (or --source sample)")
    symmetry = any(f in fm.SYMMETRY_KINDS for f in families)
    ensure = Path(out_dir)
    ensure.mkdir(parents=True, exist_ok=True)
    lab = fm.load_or_label(source, pool, targets[0], ensure / "labels.json.gz", symmetry=symmetry, backend=labels,
                           target_column=target_column, log=_printer(out))
    chosen = fm.generate_families(lab, families, criteria, elements=elements if elements in ("auto", "study")
                                  else elements.split(","))
    data = {"source": source}
    if pool is not None:
        data["path"] = fm.relative_data_path(pool, out_dir)
    if target_column:
        data["target_column"] = target_column
    profiles = fm.study_profiles(criteria.subsample)
    written = fm.write_study(out_dir, chosen, targets, data, profiles=profiles, meta={
        "pool": str(pool) if pool else "bundled sample", "pool_size": len(lab), "labels": lab.backend,
        "criteria": {"min_ood": criteria.min_ood, "min_train": criteria.min_train, "subsample": criteria.subsample,
                     "per_family": criteria.per_family, "random_tasks": criteria.random_tasks}})
    for f in chosen:
        out.print(f"{f.family:15s} {safe_text(f.slug):40s} pool {f.n_ood_pool:6d} → expected OOD "
                  f"{f.expected_ood:7.0f}, train pool {f.expected_train_left:7.0f}", highlight=False)
    n = len(written)
    shown = safe_text(out_dir)
    out.print(f"{n} specs ({len(chosen)} tasks × {len(targets)} targets) in {shown}; × {seeds} seeds = {n * seeds} "
              f"audits. Measure the time per task with `traits campaign {shown} --out RUNS --profile study "
              f"--max-tasks 1`; the campaign then prints tasks × seeds × measured time before it starts.",
              highlight=False)


def _summary_command(out) -> Callable[..., None]:
    """The ``study summary`` command (its options), printing to ``out``.

    Args:
        out: the console.

    Returns:
        The command function, for ``typer.Typer.command``.
    """
    def summary(
        runs: Annotated[Path, typer.Argument(help="Campaign output directory (seed-*/TASK/results.json).")],
        out_dir: Annotated[Path, typer.Option("--out", help="Where the study summary goes (required: e.g. "
                                              "docs/study to replace the repository's).", show_default=False)],
        data_set: Annotated[str | None, typer.Option(
            help="Name of the data set, cited by reports (default: named from the audits' data files, e.g. "
            "Materials Project (mp_36738)).")] = None,
        pipeline_check: Annotated[bool, typer.Option("--pipeline-check/--evidence",
                                                     help="Label the summary a pipeline check (tiny budget) or "
                                                     "evidence (the study budget).")] = True,
        n_boot: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 2000,
        profile: Annotated[str | None, typer.Option(help="Profile the runs used (recorded).")] = None,
        watch_s: Annotated[float | None, typer.Option(
            "--watch", help="Rewrite every N seconds as tasks finish.")] = None,
        in_progress: Annotated[bool, typer.Option(
            "--in-progress", help="Label the summary an interim one of a study still running (never adopted).",
        )] = False,
        full_pool: Annotated[Path | None, typer.Option(
            help="Folder of the full-pool models' checkpoint sidecars (e.g. docs/quality) for the table of "
            "reference tasks beside them.")] = None,
        campaign: Annotated[Path | None, typer.Option(
            help="The study's campaign directory (its specs): an evidence summary checks every one of its tasks "
            "finished, not only the tasks that have a folder.")] = None,
        seeds: Annotated[str | None, typer.Option(
            help="The seeds the study runs, e.g. 0,1,2 (default: the seed folders found); an evidence summary "
            "checks each finished.")] = None,
        adopt: Annotated[bool, typer.Option(
            "--adopt", help="Also install the summary's catalogue evidence as the package's defaults (what "
            "gates fail on by default and what reports cite); refused for a pipeline check.")] = False,
        study_version: Annotated[str, typer.Option(
            help="The study's name, carried by the summary and its catalogue evidence (reports cite it), e.g. "
            "study-2 for the labelled pass of study v2.")] = "study-1",
    ) -> None:
        """Summarise the finished tasks of a study (statistics, plots, catalogue evidence); --watch keeps it
        updated while the study runs."""
        from traits.errors import TraitsError

        if adopt and (pipeline_check or watch_s or in_progress):
            raise TraitsError("--adopt needs --evidence (a pipeline check never decides a default gate), no "
                              "--in-progress and no --watch (adopt a finished study's summary once)")
        kw = {"data_set": data_set, "pipeline_check": pipeline_check, "n_boot": n_boot, "profile": profile,
              "in_progress": in_progress, "full_pool": full_pool, "study_version": study_version}
        if seeds is not None:
            kw["seeds"] = _seed_list(seeds)
        if campaign is not None:
            kw["campaign"] = campaign
        summarise_study(out, runs, out_dir, watch_s=watch_s, adopt=adopt, **kw)

    return summary


def _trust_score_command(out) -> Callable[..., None]:
    """The ``study trust-score`` command (its options), printing to ``out``."""
    def trust_score(
        runs: Annotated[list[Path], typer.Argument(help="Folders of the study's results (seed-*/TASK/results.json).")],
        out_dir: Annotated[Path, typer.Option("--out", help="Where summary.{json,md,html,pdf}, trust-score.json and "
                                              "catalogue-evidence-label-free.json go.",
                                              show_default=False)],
        external: Annotated[list[Path] | None, typer.Option(
            help="Results of another pool to test the frozen score on (e.g. Perov-5); repeatable.")] = None,
        study_version: Annotated[str, typer.Option(help="The study's name, carried by the summary and the score "
                                                   "(reports cite it).")] = "study-2",
        n_boot: Annotated[int, typer.Option(min=100, max=100_000, help="Bootstrap resamples.")] = 2000,
        adopt: Annotated[bool, typer.Option("--adopt", help="Also install trust-score.json as the package's "
                                            "score, which audits report, and (unless a pipeline check or interim) "
                                            "the label-free gate evidence, which label-free audits' default "
                                            "gates read.")] = False,
        campaign: Annotated[Path | None, typer.Option(
            help="The study's campaign folder: with it, signal B4 (ensemble disagreement) is computed from the kept "
            "checkpoints of every task with two or more seeds (cached in OUT/ensemble.json).")] = None,
        profile: Annotated[str | None, typer.Option(help="The campaign profile the study ran with (for B4's "
                                                    "data settings).")] = None,
        labelled: Annotated[list[Path] | None, typer.Option(
            help="The second pass's results (the same models re-probed with the labelled probes): their labelled "
            "signals join each first-pass audit's row, matched on task and seed; repeatable.")] = None,
    ) -> None:
        """The registered study-v2 analysis (docs/study/v2/PREREGISTRATION.md) of finished study results: AUROC
        of each label-free signal, the trust score chosen by nested leave-one-rule-out, and its evidence."""
        make_trust_score(out, runs, out_dir, external=external or [], study_version=study_version, n_boot=n_boot,
                         adopt=adopt, campaign=campaign, profile=profile, labelled=labelled or [])

    return trust_score


def _reprobe_command(out) -> Callable[..., None]:
    """The ``study reprobe`` command (its options), printing to ``out``."""
    def reprobe(
        runs: Annotated[Path, typer.Argument(help="The study's finished audits (seed-S/TASK/results.json and "
                                             "model/model.safetensors).")],
        campaign: Annotated[Path, typer.Option(help="The study's campaign folder (its specs, campaign.yaml).",
                                               show_default=False)],
        out_dir: Annotated[Path, typer.Option("--out", help="Where the re-probe specs (specs/seed-S) and the "
                                              "re-probed audits (seed-S/TASK) go.", show_default=False)],
        profile: Annotated[str | None, typer.Option(help="campaign.yaml profile for every spec, e.g. v2.")] = None,
        seeds: Annotated[str | None, typer.Option(help="Only these seeds, e.g. 0,1 (default: every kept "
                                                  "one).")] = None,
        only: Annotated[str | None, typer.Option(help="Comma-separated shell patterns of task names.")] = None,
        workers: Annotated[int, typer.Option(min=1, max=256, help="Tasks run at once.")] = 1,
        threads: Annotated[int | None, typer.Option(min=1, max=1024, help="Torch threads per worker.")] = None,
    ) -> None:
        """Rerun probes on a study's kept checkpoints, without retraining: each becomes an audit of the same
        spec, seed and split with model.checkpoint set, run as a resumable campaign."""
        from traits.study.reprobe import reprobe as run

        done = run(runs, campaign, out_dir, profile=profile, seeds=_seed_list(seeds) if seeds else None,
                   only=[p.strip() for p in only.split(",")] if only else None, log=_printer(out),
                   workers=workers, threads=threads)
        out.print(f"re-probed seeds {', '.join(str(s) for s in done['seeds'])} into {safe_text(out_dir)}",
                  highlight=False)

    return reprobe


def _bands_command(out) -> Callable[..., None]:
    """The ``study bands`` command (its options), printing to ``out``."""
    def bands(
        runs: Annotated[list[Path], typer.Argument(help="Folders of the study's results (seed-*/TASK/results.json "
                                                   "with their surfaces): the primary pool, which decides.")],
        out_dir: Annotated[Path, typer.Option("--out", help="Where bands.json and README.md go.",
                                              show_default=False)],
        external: Annotated[list[Path] | None, typer.Option(
            help="Results of another pool, the replication (e.g. Perov-5); repeatable.")] = None,
        n_boot: Annotated[int, typer.Option(min=100, max=100_000, help="Bootstrap resamples.")] = 2000,
    ) -> None:
        """The tolerance-band analysis of issue 34 (docs/study/bands/PLAN.md): which band definition makes the
        robust radius, sharpness and basin area ratios track the OOD error, from stored surfaces."""
        import shlex

        from traits.errors import TraitsError
        from traits.study import bands as b

        log = _printer(out)
        rows = b.rows_from_results(runs, log=log)
        if not rows:
            raise TraitsError(f"no results.json under {', '.join(str(r) for r in runs)}")
        ext = b.rows_from_results(external, log=log) if external else None
        analysis = b.analyse(rows, ext, n_boot=n_boot)
        words = [*map(str, runs), *(w for e in external or [] for w in ("--external", str(e))), "--out", str(out_dir)]
        command = " ".join(shlex.quote(w) for w in ["traits", "study", "bands", *words]
                           + (["--n-boot", str(n_boot)] if n_boot != 2000 else []))
        paths = b.write_bands(analysis, out_dir, command)
        out.print(f"{safe_text(b.answer(analysis))}\nwritten: {safe_text(paths['json'])}, {safe_text(paths['md'])}",
                  highlight=False)

    return bands


def ensemble_signal(runs: Path, campaign: Path, profile: str | None, cache: Path,
                    log: Callable[[str], None]) -> dict[str, float | None]:
    """B4 of every task with kept checkpoints of two or more seeds, from cache where it was computed before.
    Beside the cache, ``ensemble-compounds.json`` keeps each task's per-compound disagreement (the standard
    deviation of the seeds' predictions of each ID and OOD compound: ``{task: {"seeds", "id", "ood"}}``)."""
    import json

    from traits.files import write_json_atomic
    from traits.study.reprobe import ensemble_predictions, kept_checkpoints
    from traits.study.v2 import compound_disagreement, ensemble_disagreement

    per_path = cache.with_name("ensemble-compounds.json")
    known = json.loads(cache.read_text(encoding="utf-8")) if cache.is_file() else {}
    per = json.loads(per_path.read_text(encoding="utf-8")) if per_path.is_file() else {}
    by_task: dict[str, dict[int, Path]] = {}
    for seed, tasks in kept_checkpoints(runs).items():
        for task, ckpt in tasks.items():
            by_task.setdefault(task, {})[seed] = ckpt
    for task, ckpts in sorted(by_task.items()):
        seeds = sorted(ckpts)
        key = f"{task}:{','.join(str(s) for s in seeds)}"
        if len(ckpts) < 2 or (key in known and (per.get(task) or {}).get("seeds") == seeds):
            continue
        log(f"ensemble of {task}: seeds {', '.join(str(s) for s in seeds)}")
        preds, id_ids, ood_ids = ensemble_predictions(campaign, task, ckpts, profile=profile)
        known[key] = ensemble_disagreement(preds, id_ids, ood_ids)
        per[task] = {"seeds": seeds, "id": compound_disagreement(preds, id_ids),
                     "ood": compound_disagreement(preds, ood_ids)}
        write_json_atomic(per_path, per)  # a long computation: keep each task as it finishes
        write_json_atomic(cache, known)
    return {k.split(":", 1)[0]: v for k, v in known.items()}


def make_trust_score(out, runs: list[Path], out_dir: Path, *, external: list[Path], study_version: str,
                     n_boot: int, adopt: bool, campaign: Path | None = None, profile: str | None = None,
                     labelled: list[Path] | None = None) -> Path:
    """What ``study trust-score`` does; returns the path of the score written."""
    from traits.errors import TraitsError
    from traits.files import ensure_dir, write_json_atomic, write_text_atomic
    from traits.study import v2
    from traits.trust import TRUST_FILE, adopted_score

    log = _printer(out)
    ensure_dir(out_dir)
    b4 = ensemble_signal(runs[0], campaign, profile, out_dir / "ensemble.json", log) if campaign else None
    rows = v2.rows_from_results(runs, b4, log=log)
    if not rows:
        raise TraitsError(f"no results.json under {', '.join(str(r) for r in runs)}")
    if labelled:
        second = v2.rows_from_results(labelled, log=log)
        rows = v2.merge_labelled(rows, second)
        matched = {(r["task"], r.get("seed")) for r in rows} & {(r["task"], r.get("seed")) for r in second}
        log(f"labelled signals from the second pass on {len(matched)} of {len(rows)} audits")
    analysis = v2.analyse(rows, v2.rows_from_results(external, log=log) if external else None, n_boot=n_boot,
                          study_version=study_version)
    v2.write_summary(analysis, out_dir)
    score = (analysis.get("trust_score") or {}).get("score")
    if not score:
        raise TraitsError(f"no trust score was made: {(analysis.get('trust_score') or {}).get('status')}")
    path = write_json_atomic(out_dir / "trust-score.json", score)
    gates = write_json_atomic(out_dir / "catalogue-evidence-label-free.json", analysis["label_free_gates"]["evidence"])
    out.print(f"{safe_text(score['statement'])}\nsummary, score and label-free gate evidence in {safe_text(out_dir)}",
              highlight=False)
    if adopt:
        why = _not_adoptable(analysis["label_free_gates"]["evidence"])
        if why:
            out.print(f"trust score not adopted: {why}", highlight=False)
        else:
            write_text_atomic(TRUST_FILE, path.read_text(encoding="utf-8"))
            adopted_score.cache_clear()
            out.print(f"adopted {safe_text(path)} as {TRUST_FILE}", highlight=False)
        _adopt_label_free_gates(out, gates, analysis["label_free_gates"]["default_fails"])
    return path


def _not_adoptable(evidence: dict) -> str | None:
    """Why an analysis may not become the package's default (a pipeline check or interim), or None. The score and
    the label-free gate evidence come from the same rows and resamples, so the evidence's flags hold for both."""
    if evidence.get("pipeline_check", True):
        return "a pipeline check (fewer resamples than registered)"
    if evidence.get("in_progress"):
        return "interim (not every task has its three seeds)"
    return None


def _adopt_label_free_gates(out, evidence: Path, fails: list[str]) -> None:
    """Install the label-free gate evidence as the package's (what label-free audits' default gates read),
    unless it is a pipeline check or interim, which is said instead."""
    from traits import catalogue as cat
    from traits.files import write_text_atomic

    why = _not_adoptable(cat.read_evidence_file(evidence))
    if why:
        out.print(f"label-free gate evidence not adopted: {why}", highlight=False)
        return
    write_text_atomic(cat.LABEL_FREE_EVIDENCE_FILE, evidence.read_text(encoding="utf-8"))
    cat.clear_cache()
    out.print(f"adopted {safe_text(evidence)} as {cat.LABEL_FREE_EVIDENCE_FILE}: label-free audits now fail by "
              f"default on {', '.join(fails) if fails else 'no landscape or distance metric'}", highlight=False)


def _seed_list(seeds: str) -> list[int]:
    """The seeds of ``--seeds 0,1,2``; a TraitsError for anything but comma-separated integers."""
    from traits.errors import TraitsError

    try:
        return [int(x) for x in seeds.split(",") if x.strip()]
    except ValueError:
        raise TraitsError(f"--seeds {seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None


def summarise_study(out, runs: Path, out_dir: Path, *, watch_s: float | None, adopt: bool, **kw) -> None:
    """What ``study summary`` does: summarise the runs once (and adopt the evidence) or keep rewriting it.

    Args:
        out: the console.
        runs: the campaign output directory.
        out_dir: where the summary goes.
        watch_s: rewrite every this many seconds (None or 0: once).
        adopt: install the summary's catalogue evidence as the package's defaults.
        **kw: the keyword arguments of :func:`traits.study.summary.summarise_runs`.
    """
    from traits.study import catalogue as cat
    from traits.study.summary import adopt_evidence, summarise_runs, watch

    if watch_s:
        watch(runs, out_dir, watch_s, log=_printer(out), **kw)
        return
    s = summarise_runs(runs, out_dir, log=_printer(out), **kw)
    out.print(f"{s['n_audits']} audits of {s['n_tasks']} tasks summarised in "
              f"{safe_text(out_dir)}/summary.{{json,md,html,pdf}}", highlight=False)
    if adopt:
        target = adopt_evidence(out_dir / "catalogue-evidence.json")
        out.print(f"adopted {safe_text(out_dir / 'catalogue-evidence.json')} as {target}: default gates now "
                  f"fail on {', '.join(cat.default_fail_on())}",
                  highlight=False)
