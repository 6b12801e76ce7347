"""The ``traits`` command line: validate, schema, data, train, predict, audit, report, gate.

Exit codes: 0 success (all gates pass), 1 a gate failed, 2 bad input (the message says what to fix).
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from traits.errors import TraitsError

app = typer.Typer(
    name="traits",
    help="TRAITS: audit materials ML models by their loss landscapes, in and out of distribution.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

EXIT_OK, EXIT_GATE_FAILED, EXIT_BAD_INPUT = 0, 1, 2

SpecArg = Annotated[Path, typer.Argument(help="Audit spec (YAML or JSON).", show_default=False)]


def handles_errors(func):
    """Print a TraitsError as one clear message (no traceback) and exit 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except TraitsError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except KeyboardInterrupt:
            err.print("interrupted; partial work is kept where the command supports resuming")
            raise typer.Exit(130) from None

    return wrapper


def progress_enabled() -> bool:
    return sys.stderr.isatty()


@app.command()
@handles_errors
def validate(spec: SpecArg) -> None:
    """Check an audit spec: exit 0 when valid, 2 with the file, field and problem when not."""
    from traits.spec import load_spec

    loaded = load_spec(spec)
    out.print(f"{spec}: valid audit spec [bold]{loaded.name}[/]", highlight=False)


@app.command()
@handles_errors
def schema() -> None:
    """Print the JSON schema of audit specs (point your editor's YAML/JSON support at it)."""
    from traits.spec import spec_json_schema

    sys.stdout.write(json.dumps(spec_json_schema(), indent=2) + "\n")


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def print_split_table(stats: dict, omit: list[str], unit: str, console: Console = out) -> None:
    table = Table(title=f"Splits (targets in {unit})", title_justify="left")
    table.add_column("split")
    table.add_column("compounds", justify="right")
    for el in omit:
        table.add_column(f"with {el}", justify="right")
    table.add_column("mean", justify="right")
    table.add_column("std", justify="right")
    table.add_column("elements", justify="right")
    table.add_column("unseen in train")
    for name, s in stats.items():
        table.add_row(
            name,
            str(s["count"]),
            *[str(s["with_omitted"][el]) for el in omit],
            _fmt(s["target_mean"]),
            _fmt(s["target_std"]),
            str(s["n_elements"]),
            ", ".join(s["elements_unseen_in_train"]) or "–",
        )
    console.print(table)


def load_data_with_progress(spec):
    """Prepare the spec's data with a progress bar on a terminal."""
    from traits.data.prepare import prepare_data

    if not progress_enabled():
        return prepare_data(spec)
    from rich.progress import Progress

    with Progress(console=err, transient=True) as bar:
        task = bar.add_task("building crystal graphs", total=None)
        return prepare_data(spec, progress=lambda done, total: bar.update(task, completed=done, total=total))


@app.command()
@handles_errors
def data(
    spec: SpecArg,
    manifest: Annotated[
        Path | None, typer.Option(help="Also write the split manifest (ids per split, data hash) here.")
    ] = None,
) -> None:
    """Load the spec's data, split it by the omitted chemistry and print the split table."""
    from traits.spec import TARGET_UNITS, load_spec

    loaded = load_spec(spec, need_checkpoint=False)
    prepared = load_data_with_progress(loaded)
    out.print(
        f"[bold]{loaded.name}[/]: {prepared.source}, target {loaded.data.target}, "
        + (f"omit {', '.join(loaded.omit) or 'nothing (random split)'}; " if loaded.data.sets is None else
           "sets used as given; ")
        + f"{prepared.n_read} records read, {prepared.cache_hits} graphs from cache, {prepared.built} built",
        highlight=False,
    )
    if prepared.skipped:
        for reason, count in sorted(prepared.skipped.items()):
            out.print(f"  skipped {count}: {reason}", highlight=False)
    print_split_table(prepared.stats(loaded.omit), loaded.omit, TARGET_UNITS[loaded.data.target])
    out.print(f"split manifest hash {prepared.manifest.hash[:16]}, data hash {prepared.manifest.data_hash[:16]}")
    if manifest is not None:
        prepared.manifest.write(manifest)
        out.print(f"wrote {manifest}")


def progress_factory():
    """A ProgressFactory drawing rich bars on a terminal (None when not a TTY: quiet)."""
    if not progress_enabled():
        return None, None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True)

    def factory(description: str, total: int):
        task = bar.add_task(description, total=total or None)
        return lambda done, n: bar.update(task, completed=done, total=n)

    return bar, factory


def _command_line() -> str:
    import shlex

    return "traits " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def print_verdict(result, console: Console = out) -> None:
    colours = {"pass": "green", "warn": "yellow", "fail": "red"}
    table = Table(title=f"{result.name}: {result.status.upper()}", title_justify="left")
    table.add_column("level")
    table.add_column("finding")
    for f in result.findings:
        table.add_row(f"[{colours[f.level]}]{f.level}[/]", f.statement)
    console.print(table)


@app.command()
@handles_errors
def audit(
    spec: SpecArg,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output directory (default: report.out_dir).")] = None,
    formats: Annotated[str | None, typer.Option("--format", help="Comma-separated: json,html,pdf.")] = None,
    junit: Annotated[Path | None, typer.Option(help="Also write the gates as JUnit XML here.")] = None,
) -> None:
    """Run the audit a spec declares; exit 0 if all gates pass, 1 if one fails, 2 on bad input."""
    from traits.audit import run_audit
    from traits.spec import load_spec
    from traits.verdict import exit_code

    overrides = {"report.formats": [f.strip() for f in formats.split(",") if f.strip()]} if formats else None
    loaded = load_spec(spec, overrides=overrides)
    bar, factory = progress_factory()
    if bar is not None:
        with bar:
            result = run_audit(loaded, out_dir, spec_path=str(spec), command=_command_line(), progress=factory,
                               train_progress=None)
    else:
        result = run_audit(loaded, out_dir, spec_path=str(spec), command=_command_line())
    target = Path(out_dir) if out_dir else loaded.report.out_dir
    print_verdict(result)
    if junit is not None:
        from traits.junit import write_junit

        write_junit(result, junit)
    out.print(f"results and report in {target}", highlight=False)
    raise typer.Exit(exit_code(result))


@app.command()
@handles_errors
def report(
    results: Annotated[Path, typer.Argument(help="A results.json written by `traits audit`.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("."),
    formats: Annotated[str, typer.Option("--format", help="Comma-separated: html,pdf.")] = "html,pdf",
) -> None:
    """Re-render the report of a past audit from its results.json (no model or data needed)."""
    from traits.report.render import render_report
    from traits.results import load_result

    wanted = tuple(f.strip() for f in formats.split(",") if f.strip())
    bad = [f for f in wanted if f not in ("html", "pdf")]
    if bad:
        raise typer.BadParameter(f"unknown format(s) {bad}; choose html and/or pdf")
    written = render_report(load_result(results), out_dir, formats=wanted)
    for path in written.values():
        out.print(f"wrote {path}", highlight=False)


@app.command()
@handles_errors
def gate(
    results: Annotated[Path, typer.Argument(help="A results.json written by `traits audit`.")],
    gates: Annotated[Path | None, typer.Option(help="YAML/JSON file of gate thresholds (the spec's `gates`).")] = None,
    junit: Annotated[Path | None, typer.Option(help="Write the gates as JUnit XML here.")] = None,
) -> None:
    """Re-evaluate gates on stored results: exit 0 if all pass, 1 if one fails, 2 on bad input."""
    from pydantic import ValidationError

    from traits.errors import SpecError
    from traits.results import load_result
    from traits.spec import GateSpec, format_validation_error, read_mapping
    from traits.verdict import apply_verdict, exit_code

    result = load_result(results)
    if gates is not None:
        raw = read_mapping(gates)
        raw = raw.get("gates", raw)
        try:
            gate_spec = GateSpec.model_validate(raw)
        except ValidationError as exc:
            raise SpecError(format_validation_error(exc, str(gates))) from None
    else:
        try:
            gate_spec = GateSpec.model_validate(result.spec.get("gates", {}))
        except ValidationError as exc:
            raise SpecError(format_validation_error(exc, f"{results} (the stored spec's gates)")) from None
    apply_verdict(result, gate_spec)
    print_verdict(result)
    if junit is not None:
        from traits.junit import write_junit

        write_junit(result, junit)
    raise typer.Exit(exit_code(result))


@app.command()
@handles_errors
def train(
    spec: SpecArg,
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the checkpoint and training logs.")],
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its last saved epoch.")] = False,
) -> None:
    """Train the spec's model on its train split (early stopping on val); write a checkpoint."""
    from traits.audit import resolve_device
    from traits.spec import load_spec
    from traits.train import train_model

    loaded = load_spec(spec, need_checkpoint=False)
    if loaded.model.train is None:
        raise TraitsError(f"{spec}: model.train is not set; add training settings to train a model")
    prepared = load_data_with_progress(loaded)
    result = train_model(loaded, prepared, out_dir, device=resolve_device(loaded.device), resume=resume,
                         progress=None)
    table = Table(title=f"MAE ({loaded.data.target})", title_justify="left")
    for col in ("split", "MAE", "RMSE", "R²", "n"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for split, m in result.metrics.items():
        table.add_row(split, _fmt(m["mae"], 4), _fmt(m["rmse"], 4), _fmt(m["r2"], 3), str(m["n"]))
    out.print(table)
    out.print(f"checkpoint {result.checkpoint} ({result.epochs_run} epochs)", highlight=False)


@app.command()
@handles_errors
def predict(
    files: Annotated[list[Path], typer.Argument(help="CIF or POSCAR files.", show_default=False)],
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint to predict with.")],
    fmt: Annotated[str, typer.Option("--format", help="traits | state-dict | cgcnn-original")] = "traits",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
) -> None:
    """Print `id,prediction` for each structure file (a quick sanity check of any checkpoint)."""
    from traits.audit import resolve_device
    from traits.models.inference import predict_structures

    if fmt not in ("traits", "state-dict", "cgcnn-original"):
        raise TraitsError(f"unknown checkpoint format {fmt!r}; choose traits, state-dict or cgcnn-original")
    rows = predict_structures(checkpoint, fmt, list(files), device=resolve_device(device))
    sys.stdout.write("id,prediction\n")
    for ident, value in rows:
        sys.stdout.write(f"{ident},{value:.6g}\n")


@app.command()
@handles_errors
def campaign(
    directory: Annotated[Path, typer.Argument(help="Directory of audit specs (and campaign.yaml profiles).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output directory (one folder per seed and task).")],
    profile: Annotated[str | None, typer.Option(help="Profile of campaign.yaml to apply, e.g. cpu or full.")] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds, e.g. 0,1,2 (default: each spec's).")] = None,
    data: Annotated[Path | None, typer.Option(help="Use this data file instead of each spec's data.path.")] = None,
    summary_only: Annotated[bool, typer.Option(help="Run nothing; summarise the tasks finished so far.")] = False,
) -> None:
    """Run every spec of a campaign (resuming finished tasks) and write a comparison summary."""
    from traits.campaign import run_campaign

    seed_list = [int(x) for x in seeds.split(",") if x.strip()] if seeds else None
    bar, factory = progress_factory()
    log = lambda msg: err.print(msg, highlight=False)  # noqa: E731
    if bar is not None:
        with bar:
            summary = run_campaign(directory, out_dir, seeds=seed_list, profile=profile, data_path=data, log=log,
                                   progress=factory, summary_only=summary_only)
    else:
        summary = run_campaign(directory, out_dir, seeds=seed_list, profile=profile, data_path=data, log=log,
                               summary_only=summary_only)
    from traits.campaign import summary_markdown

    out.print(summary_markdown(summary), highlight=False, markup=False)
    out.print(f"summary in {out_dir}/summary.{{json,md,html,pdf}}", highlight=False, markup=False)


def main() -> None:  # pragma: no cover - console-script entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
