"""``traits study generate`` and ``traits study summary`` (registered on the main app by traits.cli).

``study summary`` needs ``--out`` (it never writes into a default folder such as the repository's ``docs/study``);
the counts of ``study generate`` are bounded (``--min-ood`` and ``--min-train`` at least 1, ...), so a negative
one is a usage error (exit 2). Paths and messages are printed through ``traits.progress.safe_text``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from traits.progress import safe_text


def register(app: typer.Typer, handles_errors, out) -> None:
    study = typer.Typer(name="study", help="Generate a study's task families; summarise a running or finished "
                        "study.", no_args_is_help=True, rich_markup_mode=None)

    @study.command()
    @handles_errors
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
        from traits.errors import SpecError
        from traits.study import families as fm

        fams = [f.strip() for f in families.split(",") if f.strip()]
        tgts = [t.strip() for t in targets.split(",") if t.strip()]
        if source != "sample" and pool is None:
            raise SpecError("--pool: give the data file (or --source sample)")
        sub = subsample if subsample is not None else fm.STUDY_PROFILE["data.subsample"]
        symmetry = any(f in fm.SYMMETRY_KINDS for f in fams)
        ensure = Path(out_dir)
        ensure.mkdir(parents=True, exist_ok=True)
        lab = fm.load_or_label(source, pool, tgts[0], ensure / "labels.json.gz", symmetry=symmetry, backend=labels,
                               target_column=target_column, log=lambda m: out.print(safe_text(m), highlight=False))
        criteria = fm.Criteria(min_ood=min_ood, min_train=min_train, subsample=sub, per_family=per_family,
                               random_tasks=random_tasks)
        chosen = fm.generate_families(lab, fams, criteria, elements=elements if elements in ("auto", "study")
                                      else elements.split(","))
        data = {"source": source}
        if pool is not None:
            data["path"] = fm.relative_data_path(pool, out_dir)
        if target_column:
            data["target_column"] = target_column
        profiles = {"study": {**fm.STUDY_PROFILE, "data.subsample": sub}, "tiny": dict(fm.TINY_PROFILE)}
        written = fm.write_study(out_dir, chosen, tgts, data, profiles=profiles, meta={
            "pool": str(pool) if pool else "bundled sample", "pool_size": len(lab), "labels": lab.backend,
            "criteria": {"min_ood": min_ood, "min_train": min_train, "subsample": sub, "per_family": per_family,
                         "random_tasks": random_tasks}})
        for f in chosen:
            out.print(f"{f.family:15s} {safe_text(f.slug):40s} pool {f.n_ood_pool:6d} → expected OOD "
                      f"{f.expected_ood:7.0f}, train pool {f.expected_train_left:7.0f}", highlight=False)
        n = len(written)
        shown = safe_text(out_dir)
        out.print(f"{n} specs ({len(chosen)} tasks × {len(tgts)} targets) in {shown}; × {seeds} seeds = {n * seeds} "
                  f"audits. Measure the time per task with `traits campaign {shown} --out RUNS --profile study "
                  f"--max-tasks 1`; the campaign then prints tasks × seeds × measured time before it starts.",
                  highlight=False)

    @study.command()
    @handles_errors
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
    ) -> None:
        """Summarise the finished tasks of a study (statistics, plots, catalogue evidence); --watch keeps it
        updated while the study runs."""
        from traits.errors import TraitsError
        from traits.study import catalogue as cat
        from traits.study.summary import adopt_evidence, summarise_runs, watch

        if adopt and (pipeline_check or watch_s or in_progress):
            raise TraitsError("--adopt needs --evidence (a pipeline check never decides a default gate), no "
                              "--in-progress and no --watch (adopt a finished study's summary once)")
        kw = {"data_set": data_set, "pipeline_check": pipeline_check, "n_boot": n_boot, "profile": profile,
              "in_progress": in_progress, "full_pool": full_pool}
        if seeds is not None:
            try:
                kw["seeds"] = [int(x) for x in seeds.split(",") if x.strip()]
            except ValueError:
                raise TraitsError(f"--seeds {seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
        if campaign is not None:
            kw["campaign"] = campaign
        if watch_s:
            watch(runs, out_dir, watch_s, log=lambda m: out.print(safe_text(m), highlight=False), **kw)
            return
        s = summarise_runs(runs, out_dir, log=lambda m: out.print(safe_text(m), highlight=False), **kw)
        out.print(f"{s['n_audits']} audits of {s['n_tasks']} tasks summarised in "
                  f"{safe_text(out_dir)}/summary.{{json,md,html,pdf}}", highlight=False)
        if adopt:
            target = adopt_evidence(out_dir / "catalogue-evidence.json")
            out.print(f"adopted {safe_text(out_dir / 'catalogue-evidence.json')} as {target}: default gates now "
                      f"fail on {', '.join(cat.default_fail_on())}",
                      highlight=False)

    app.add_typer(study, name="study")
