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
        f"omit {', '.join(loaded.omit) or 'nothing (random split)'}; "
        f"{prepared.n_read} records read, {prepared.cache_hits} graphs from cache, {prepared.built} built",
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


def main() -> None:  # pragma: no cover - console-script entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
