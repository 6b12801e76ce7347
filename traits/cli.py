"""The ``traits`` command line: validate, schema, data, train, predict, audit, report, gate, campaign.

Exit codes: 0 success (all gates pass), 1 a gate failed, 2 bad input (the message says what to fix),
3 an internal error (a bug: one line naming the log file that holds the traceback; ``--debug`` shows it).
Everything printed on the terminal is plain text: rich markup, highlighting and emoji codes are off, so
a file name or spec string such as ``a[/].yaml`` or ``[link=...]`` is printed as it is; control characters in
user strings are printed escaped (ESC as ``\\x1b``, a newline as ``\\n``: ``traits.progress.safe_text``), and
no output line starts with a user string (error lines start with ``error:``), so neither the terminal nor a GitHub
Actions log reads a spec's text as a command.

Options shared by the commands that run specs: ``--quiet`` (no progress, and no library warnings or log messages),
``--verbose``, ``--debug`` and ``--allow-code`` (a spec may import Python code: the torch adapter's
``options.module``, ``featuriser`` and ``collate``; off by default, also set by ``TRAITS_ALLOW_CODE=1``: see
``traits.models.torch_module``).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import functools
import json
import os
import platform
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from traits.errors import TraitsError
from traits.progress import SafeConsole, safe_diagnostics, safe_text

EXIT_OK, EXIT_GATE_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL_ERROR = 0, 1, 2, 3

EXIT_CODES_HELP = (
    "Exit codes: 0 success (every gate passes); 1 a gate failed; 2 bad input (spec, data, checkpoint, "
    "results file, output folder: one message naming the file and what to fix); 3 an internal error "
    "(a bug in TRAITS: one line naming a log file with the traceback; --debug prints it)."
)

#: Value names for the types typer 0.2x prints as ``<path>``, ``<str>``, ...: the names click prints.
_VALUE_NAMES = {"path": "PATH", "file": "FILE", "directory": "DIRECTORY", "str": "TEXT", "int": "INTEGER",
                "float": "FLOAT", "bool": "BOOLEAN", "datetime": "DATETIME", "uuid": "UUID"}


def _value_name(label: str) -> str:
    """The value name for a type label of typer's help (the text inside ``<...>``): ``path`` -> ``PATH``,
    ``int range`` -> ``INTEGER RANGE``, a choice ``a|b|c`` -> ``[a|b|c]``, ``list[X]`` -> X's name (an option
    named again for each value), ``int,float`` (a tuple) -> ``INTEGER FLOAT``."""
    import re

    inner = re.fullmatch(r"list\[(.*)\]", label)
    if inner:
        return _value_name(inner.group(1))
    if "|" in label:
        return f"[{label}]"
    if label.endswith(" range"):
        return f"{_value_name(label[:-len(' range')])} RANGE"
    if "," in label:
        return " ".join(_value_name(part) for part in label.split(","))
    return _VALUE_NAMES.get(label.lower(), label.upper())


class HelpFormatter(typer.Context.formatter_class):
    """Help in the usual click style whatever typer prints: usage ``traits compare [OPTIONS] A B`` and
    ``traits screen [OPTIONS] CHECKPOINT STRUCTURES...`` (typer >= 0.20 writes ``{a} {b}``), options
    ``--out PATH``, ``--max-tasks INTEGER RANGE``, choices ``--format [auto|traits]`` (it writes ``<path>``,
    ``<int range>``, ``<auto|traits>``), arguments listed by name, ``FILES...`` for a list (it writes
    ``files... <list[Path]>``). Only the names typer generates are rewritten, never help text."""

    def write_usage(self, prog: str, args: str = "", prefix: str | None = None) -> None:
        import re

        args = re.sub(r"\{([A-Za-z_][\w-]*)\}", lambda m: m.group(1).upper(), args)
        args = re.sub(r"\[([a-z_][\w-]*)\]", lambda m: f"[{m.group(1).upper()}]", args)
        super().write_usage(prog, args, prefix)

    def write_dl(self, rows, col_max: int = 30, col_spacing: int = 2) -> None:
        super().write_dl([(self._name(first), second) for first, second in rows], col_max, col_spacing)

    @staticmethod
    def _name(first: str) -> str:
        import re

        if first.startswith("-"):  # an option: --out <path>, --a <x> / --b <x>
            return re.sub(r"<([^<>]+)>", lambda m: _value_name(m.group(1)), first)
        found = re.fullmatch(r"(\S+?)(\.\.\.)? <([^<>]+)>", first)  # an argument: name <type>, name... <list[T]>
        if not found:
            return first  # a command's name, or typer's own format changed: left as it is
        many = bool(found.group(2)) or found.group(3).startswith("list[")
        return found.group(1).upper() + ("..." if many else "")


class _HelpContext(typer.Context):
    formatter_class = HelpFormatter


class HelpGroup(typer.core.TyperGroup):
    """The command group of ``traits``: every command and subcommand under it prints its help and usage lines
    with :class:`HelpFormatter` (plain text, click-style value names)."""

    context_class = _HelpContext

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        todo = list(self.commands.values())
        while todo:
            command = todo.pop()
            command.context_class = _HelpContext
            todo.extend(getattr(command, "commands", {}).values())


app = typer.Typer(
    cls=HelpGroup,
    name="traits",
    help="TRAITS: audit materials ML models by their loss landscapes, in and out of distribution.\n\n"
    + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
# Plain text only: user strings (paths, spec names, messages) must never be read as rich markup, and their
# control characters are printed escaped (SafeConsole).
out = SafeConsole(soft_wrap=True)
err = SafeConsole(stderr=True, soft_wrap=True)

#: Settings of this invocation (the global options and the per-command --quiet / --verbose / --debug /
#: --allow-code).
OPTIONS = {"debug": False, "verbosity": 1, "allow_code": False}
#: What this command has switched on (code allowed, libraries quiet), undone when it ends.
_SCOPE: list[tuple[contextlib.ExitStack, set]] = []

SpecArg = Annotated[Path, typer.Argument(help="Audit spec (YAML or JSON).", show_default=False)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output (errors and results only).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="More progress output (every update).")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="On an internal error, print the traceback too.")]
AllowCodeOpt = Annotated[bool, typer.Option(
    "--allow-code", help="Let the spec import Python code (the torch adapter's options.module, featuriser and "
    "collate), which runs that code: only for a spec you trust. Off by default; TRAITS_ALLOW_CODE=1 also allows it.")]


def _version(value: bool) -> None:
    if value:
        import traits

        out.print(f"traits {traits.__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the TRAITS version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", envvar="TRAITS_DEBUG",
                                        help="On an internal error, print the traceback too.")] = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    allow_code: AllowCodeOpt = False,
) -> None:
    OPTIONS["debug"] = bool(debug)
    OPTIONS["verbosity"] = 0 if quiet else (2 if verbose else 1)
    OPTIONS["allow_code"] = bool(allow_code)


def _set_local(quiet: bool = False, verbose: bool = False, debug: bool = False, allow_code: bool = False) -> None:
    if quiet:
        OPTIONS["verbosity"] = 0
    elif verbose:
        OPTIONS["verbosity"] = 2
    if debug:
        OPTIONS["debug"] = True
    if allow_code:
        OPTIONS["allow_code"] = True
    _apply_options()


@contextlib.contextmanager
def _environment(key: str, value: str):
    """``os.environ[key] = value`` until the block ends (inherited by the worker processes it starts)."""
    previous = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous


@contextlib.contextmanager
def _quiet_libraries():
    """No Python warnings and no library log messages below ERROR until the block ends (--quiet), in worker
    processes started meanwhile too."""
    import logging
    import warnings

    previous = logging.root.manager.disable
    with warnings.catch_warnings(), _environment("PYTHONWARNINGS", "ignore"):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous)


def _apply_options() -> None:
    """Switch on, for the rest of the running command, what its options ask for: code allowed (--allow-code:
    TRAITS_ALLOW_CODE=1, inherited by campaign workers) and quiet libraries (--quiet)."""
    if not _SCOPE:
        return
    stack, done = _SCOPE[-1]
    if OPTIONS["allow_code"] and "allow_code" not in done:
        from traits.models.torch_module import ALLOW_CODE_ENV

        stack.enter_context(_environment(ALLOW_CODE_ENV, "1"))
        done.add("allow_code")
    if OPTIONS["verbosity"] <= 0 and "quiet" not in done:
        stack.enter_context(_quiet_libraries())
        done.add("quiet")


def print_error(message: str) -> None:
    """``error: `` and the message, control characters escaped. A line break followed by an indent (the
    problems of a spec, a parser's position) stays one, its line starting with ``error:`` as well; any other line
    break (in a user string) is printed as ``\\n``."""
    parts = str(message).split("\n")
    lines = [parts[0]]
    for part in parts[1:]:
        if part.startswith("  "):
            lines.append(part)
        else:
            lines[-1] += "\n" + part
    for line in lines:
        err.print(Text.assemble(("error: ", "bold red"), safe_text(line)), soft_wrap=True)


def write_crash_log(exc: BaseException, out_dir: Path | None) -> Path | None:
    """Write the traceback of an internal error atomically, into ``out_dir`` when it exists, else the
    temporary directory. Returns the log's path, or None when nothing could be written."""
    import traits
    from traits.files import write_text_atomic

    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    text = (
        f"TRAITS internal error\ntime: {stamp}\ntraits: {traits.__version__}\npython: {sys.version.split()[0]}\n"
        f"platform: {platform.platform()}\ncommand: {_command_line()}\n\n"
        + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    )
    folders = [Path(out_dir)] if out_dir is not None and Path(out_dir).is_dir() else []
    folders.append(Path(tempfile.gettempdir()))
    for folder in folders:
        try:
            return write_text_atomic(folder / f"traits-error-{stamp}-{os.getpid()}.log", text)
        except (TraitsError, OSError):
            continue
    return None


def report_internal_error(exc: BaseException, out_dir: Path | None) -> None:
    log = write_crash_log(exc, out_dir)
    summary = (str(exc).splitlines() or [""])[0][:200]
    where = f"the traceback is in {log}" if log is not None else "no log file could be written"
    print_error(f"internal error ({type(exc).__name__}: {summary}); this is a bug in TRAITS, not a problem with "
                f"the input: {where}. Please report it; --debug prints the traceback.")
    if OPTIONS["debug"]:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)


def _pass_through() -> tuple[type[BaseException], ...]:
    """The exceptions the CLI framework uses for its own exits and usage errors: typer's own, and click's where
    the installed typer still builds on click (typer < 0.20 depends on it; later releases do not)."""
    kinds: list[type[BaseException]] = [typer.Exit, typer.Abort]
    kinds += [getattr(typer, name) for name in ("TyperException", "BadParameter") if hasattr(typer, name)]
    try:
        import click
    except ImportError:
        return tuple(kinds)
    return (*kinds, click.exceptions.Exit, click.exceptions.ClickException, click.exceptions.Abort)


_PASS_THROUGH = _pass_through()


def handles_errors(func):
    """A TraitsError becomes one clear message and exit 2; any other exception (a bug) exit 3 with a log.

    Before the command runs (and before it imports torch), torch's threads are chosen from the CPUs available
    (:func:`traits.threads.configure_threads`; TRAITS_THREADS or OMP_NUM_THREADS win)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with contextlib.ExitStack() as stack:
            _SCOPE.append((stack, set()))
            stack.enter_context(safe_diagnostics())  # warnings and stray log records printed escaped
            try:
                _apply_options()
                return _run(args, kwargs)
            finally:
                _SCOPE.pop()

    def _run(args, kwargs):
        try:
            from traits.threads import configure_threads

            configure_threads()
            return func(*args, **kwargs)
        except TraitsError as exc:
            print_error(str(exc))
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except _PASS_THROUGH:
            raise
        except KeyboardInterrupt:
            err.print("interrupted; partial work is kept where the command supports resuming")
            raise typer.Exit(130) from None
        except Exception as exc:  # noqa: BLE001 - every other exception is a bug: exit 3, never 1
            report_internal_error(exc, kwargs.get("out_dir"))
            raise typer.Exit(EXIT_INTERNAL_ERROR) from None

    return wrapper


def reporter():
    """Progress for this invocation: bars on a terminal, timestamped lines otherwise, none when quiet."""
    from traits.progress import Reporter

    return Reporter(verbosity=OPTIONS["verbosity"])


@app.command()
@handles_errors
def validate(spec: SpecArg, allow_code: AllowCodeOpt = False) -> None:
    """Check an audit spec: exit 0 when valid, 2 with the file, field and problem when not.

    A spec that imports Python code (the torch adapter) is valid only with --allow-code or TRAITS_ALLOW_CODE=1;
    each module it imports is listed (validate imports none)."""
    from traits.models.torch_module import ALLOW_CODE_ENV, ALLOW_CODE_OPTION, code_allowed, code_imports
    from traits.spec import load_spec

    _set_local(allow_code=allow_code)
    loaded = load_spec(spec)
    out.print(Text.assemble("valid audit spec ", (safe_text(loaded.name), "bold"), f" ({safe_text(spec)})"))
    if loaded.model.architecture == "torch":
        state = (f"allowed by {ALLOW_CODE_OPTION} or {ALLOW_CODE_ENV}" if code_allowed() else
                 f"not allowed: pass {ALLOW_CODE_OPTION} or set {ALLOW_CODE_ENV}=1")
        for field, path in code_imports(loaded.model.options):
            module = path.partition(":")[0]
            out.print(f"imports code: {field} {safe_text(repr(path))} (the Python module {safe_text(repr(module))}, "
                      f"{state}; not imported by validate)")


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
            safe_text(name),
            str(s["count"]),
            *[str(s["with_omitted"][el]) for el in omit],
            _fmt(s["target_mean"]),
            _fmt(s["target_std"]),
            str(s["n_elements"]),
            safe_text(", ".join(s["elements_unseen_in_train"])) or "–",
        )
    console.print(table)


def load_data_with_progress(spec, progress=None):
    """Prepare the spec's data, showing the graph-building stage on ``progress`` (a Reporter)."""
    from traits.data.prepare import prepare_data

    if progress is None:
        with reporter() as rep:
            return prepare_data(spec, progress=rep("building crystal graphs", 0))
    return prepare_data(spec, progress=progress("building crystal graphs", 0))


@app.command()
@handles_errors
def data(
    spec: SpecArg,
    manifest: Annotated[
        Path | None, typer.Option(help="Also write the split manifest (ids per split, data hash) here.")
    ] = None,
    allow_code: AllowCodeOpt = False,
) -> None:
    """Load the spec's data, split it by the omitted chemistry and print the split table."""
    from traits.spec import TARGET_UNITS, load_spec

    _set_local(allow_code=allow_code)
    loaded = load_spec(spec, need_checkpoint=False)
    prepared = load_data_with_progress(loaded)
    out.print(Text.assemble(
        "data of ", (safe_text(loaded.name), "bold"),
        f": {safe_text(prepared.source)}, target {loaded.data.target}, "
        + (f"omit {', '.join(loaded.omit) or 'nothing (random split)'}; " if loaded.data.sets is None else
           "sets used as given; ")
        + f"{prepared.n_read} records read, {prepared.cache_hits} graphs from cache, {prepared.built} built",
    ))
    if prepared.skipped:
        for reason, count in sorted(prepared.skipped.items()):
            out.print(f"  skipped {count}: {safe_text(reason)}")
    print_split_table(prepared.stats(loaded.omit), loaded.omit, TARGET_UNITS[loaded.data.target])
    out.print(f"split manifest hash {prepared.manifest.hash[:16]}, data hash {prepared.manifest.data_hash[:16]}")
    if manifest is not None:
        prepared.manifest.write(manifest)
        out.print(f"wrote {safe_text(manifest)}")


def _command_line() -> str:
    import shlex

    return "traits " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def print_verdict(result, console: Console = out) -> None:
    from traits.catalogue import labels as metric_labels

    labels = metric_labels()
    colours = {"pass": "green", "warn": "yellow", "fail": "red"}
    table = Table(title=Text(f"audit {safe_text(result.name)}: {result.status.upper()}"), title_justify="left")
    table.add_column("level")
    table.add_column("finding")
    for f in result.findings:
        text = Text(safe_text(f.statement))  # user strings (names, elements, data sets) print without markup
        for name, evidence in f.evidence.items():
            text.append(f"\n  study evidence, {safe_text(labels.get(name, name))}: {safe_text(evidence)}",
                        style="dim")
        table.add_row(Text(safe_text(f.level), style=colours.get(f.level, "")), text)
    console.print(table)


@app.command()
@handles_errors
def audit(
    spec: SpecArg,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output directory (default: report.out_dir).")] = None,
    formats: Annotated[str | None, typer.Option("--format", help="Comma-separated: json,html,pdf.")] = None,
    junit: Annotated[Path | None, typer.Option(help="Also write the gates as JUnit XML here.")] = None,
    overwrite: Annotated[bool, typer.Option(
        help="Replace another audit's results in the output folder (removes its results, reports, "
        "split manifest, resume files and trained model first).")] = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    debug: DebugOpt = False,
    allow_code: AllowCodeOpt = False,
) -> None:
    """Run the audit a spec declares; exit 0 if all gates pass, 1 if one fails, 2 on bad input, 3 on a bug.

    The output folder must not hold another audit's results (use --overwrite); an audit of the same spec
    resumes there. Progress goes to stderr: bars on a terminal, timestamped lines in a log."""
    from traits.audit import run_audit
    from traits.spec import load_spec
    from traits.verdict import exit_code

    _set_local(quiet, verbose, debug, allow_code)
    overrides = {"report.formats": [f.strip() for f in formats.split(",") if f.strip()]} if formats else None
    loaded = load_spec(spec, overrides=overrides)
    target = Path(out_dir) if out_dir else loaded.report.out_dir
    with reporter() as rep:
        rep.detail(f"audit {loaded.name} into {target}")
        result = run_audit(loaded, target, spec_path=str(spec), command=_command_line(), progress=rep,
                           train_progress=rep, overwrite=overwrite)
    print_verdict(result)
    if junit is not None:
        from traits.junit import write_junit

        write_junit(result, junit)
    out.print(f"results and report in {safe_text(target)}")
    raise typer.Exit(exit_code(result))


@app.command()
@handles_errors
def report(
    results: Annotated[Path, typer.Argument(help="A results.json written by `traits audit`.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("."),
    formats: Annotated[str, typer.Option("--format", help="Comma-separated: html,pdf.")] = "html,pdf",
    overwrite: Annotated[bool, typer.Option(
        help="Replace another audit's results and reports in the output folder.")] = False,
) -> None:
    """Re-render the report of a past audit from its results.json (no model or data needed).

    The output folder must not hold another audit's results or reports (use --overwrite)."""
    from traits.outdir import acquire_lock, check_folder
    from traits.report.render import render_report
    from traits.results import load_result

    wanted = tuple(f.strip() for f in formats.split(",") if f.strip())
    bad = [f for f in wanted if f not in ("html", "pdf")]
    if bad:
        raise typer.BadParameter(f"unknown format(s) {bad}; choose html and/or pdf")
    result = load_result(results)
    with acquire_lock(out_dir, purpose=f"report of {result.name!r}"):
        check_folder(out_dir, result.spec, overwrite=overwrite, spec_path=str(results))
        written = render_report(result, out_dir, formats=wanted)
    for path in written.values():
        out.print(f"wrote {safe_text(path)}")


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
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    debug: DebugOpt = False,
    allow_code: AllowCodeOpt = False,
) -> None:
    """Train the spec's model on its train split (early stopping on val); write a checkpoint."""
    from traits.audit import resolve_device
    from traits.outdir import acquire_lock
    from traits.spec import load_spec
    from traits.train import train_model

    _set_local(quiet, verbose, debug, allow_code)
    loaded = load_spec(spec, need_checkpoint=False)
    if loaded.model.train is None:
        raise TraitsError(f"{spec}: model.train is not set; add training settings to train a model")
    with acquire_lock(out_dir, purpose=f"train {loaded.name!r}"), reporter() as rep:
        prepared = load_data_with_progress(loaded, rep)
        result = train_model(loaded, prepared, out_dir, device=resolve_device(loaded.device), resume=resume,
                             progress=rep)
    table = Table(title=f"MAE ({loaded.data.target})", title_justify="left")
    for col in ("split", "MAE", "RMSE", "R²", "n"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for split, m in result.metrics.items():
        table.add_row(safe_text(split), _fmt(m["mae"], 4), _fmt(m["rmse"], 4), _fmt(m["r2"], 3), str(m["n"]))
    out.print(table)
    out.print(f"checkpoint {safe_text(result.checkpoint)} ({result.epochs_run} epochs)")


def _parse_hyper(text: str | None) -> dict | None:
    """``--hyper``: a JSON object or comma-separated key=value pairs, validated as CGCNN hyper-parameters."""
    from pydantic import ValidationError

    from traits.spec import CGCNNHyper, format_validation_error

    if text is None:
        return None
    if text.lstrip().startswith("{"):
        try:
            raw = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise TraitsError(f"--hyper: not a JSON object ({exc})") from None
        if not isinstance(raw, dict):
            raise TraitsError("--hyper: give a JSON object or key=value pairs")
    else:
        raw = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            if not sep:
                raise TraitsError(f"--hyper: {part!r} is not key=value")
            raw[key.strip()] = value.strip()
    try:
        return CGCNNHyper.model_validate(raw).model_dump()
    except ValidationError as exc:
        message = format_validation_error(exc, "--hyper").replace("invalid audit spec", "invalid value")
        raise TraitsError(message) from None


def _parse_normalizer(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        mean, std = (float(v) for v in text.split(","))
    except ValueError:
        raise TraitsError(f"--normalizer: give MEAN,STD (two numbers), got {text!r}") from None
    return mean, std


ModelOpt = Annotated[str | None, typer.Option(
    "--model", help="Model adapter: chgnet, sevenn, alignn, mace, torch, cgcnn, cgcnn-original or one registered "
    "through the 'traits.models' entry points (default: a CGCNN checkpoint, its adapter chosen by its format).")]
OptionsOpt = Annotated[str | None, typer.Option(
    "--options", help="The --model adapter's settings (its model.options) as a JSON object, e.g. "
    "'{\"version\": \"0.2.0\"}' for chgnet ('traits schema' lists them).")]


def _model_options(model: str | None, options: str | None, architecture: str | None = None):
    """The adapter's settings from ``--options`` (None when no --model), refusing the flags that do not apply."""
    from traits.models.base import adapter_class
    from traits.models.predicting import parse_options

    if model is None:
        if options is not None:
            raise TraitsError("--options: give the adapter they are for with --model")
        return None
    if architecture is not None:
        raise TraitsError("--architecture: names the architecture of a plain state dict without --model; with "
                          "--model the adapter is the architecture")
    if adapter_class(model).checkpoint_formats:
        if options is not None:
            raise TraitsError(f"--options: the {model!r} adapter takes its settings as --hyper")
        return None
    return parse_options(model, options)


def _model_of_spec(path: Path, device, **given):
    """The model of the spec at ``path`` (``predict --spec``); the model flags it replaces must not be given."""
    from traits.models.predicting import load_model_from_spec
    from traits.spec import load_spec

    clash = [f"--{k}" for k, v in given.items() if v is not None and not (k == "fmt" and v == "auto")]
    if clash:
        raise TraitsError(f"--spec names the model: drop {', '.join(c.replace('--fmt', '--format') for c in clash)}")
    return load_model_from_spec(load_spec(path), device)


def _screen_model_of_spec(path: Path, *, model, options, reference):
    """``traits screen SPEC.yaml ...``: the spec's model section (adapter, checkpoint or bundled weights, format,
    options) and, unless given, the spec itself as the risk's reference."""
    from traits.models.predicting import model_source_of_spec
    from traits.spec import load_spec

    if model is not None or options is not None:
        raise TraitsError("an audit spec names the model: drop --model and --options")
    src = model_source_of_spec(load_spec(path), "screen")
    model = None if src["checkpoint_formats"] else src["name"]  # a CGCNN checkpoint: its format picks the adapter
    return src["source"] or Path("bundled"), model, src["options"], src["fmt"], reference or path


@app.command()
@handles_errors
def predict(
    files: Annotated[list[Path], typer.Argument(help="CIF, POSCAR or pymatgen JSON files.", show_default=False)],
    checkpoint: Annotated[Path | None, typer.Option(
        help="Checkpoint to predict with: a CGCNN checkpoint, or with --model the adapter's weights file, model "
        "folder or bundled weights name (default with --model: the weights bundled with its package).")] = None,
    model: ModelOpt = None,
    options: OptionsOpt = None,
    fmt: Annotated[str, typer.Option(
        "--format", help="auto (detect from the file) | traits | state-dict | cgcnn-original")] = "auto",
    architecture: Annotated[str | None, typer.Option(
        help="Architecture of a plain state dict: cgcnn | cgcnn-original.")] = None,
    hyper: Annotated[str | None, typer.Option(
        help="Hyper-parameters of a plain state dict: JSON or key=value pairs, e.g. "
        "atom_fea_len=32,n_conv=2,h_fea_len=64.")] = None,
    normalizer: Annotated[str | None, typer.Option(
        help="MEAN,STD of the target a plain state dict was trained on (default: its JSON sidecar).")] = None,
    target: Annotated[str | None, typer.Option(
        help="Target the checkpoint predicts, for the unit column when the checkpoint does not say.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    spec: Annotated[Path | None, typer.Option(
        help="Predict with an audit spec's model section (its adapter, checkpoint, format, hyper-parameters or "
        "options): what `traits audit` of that spec audits. Replaces --checkpoint, --model, --options, --format, "
        "--architecture and --hyper.")] = None,
) -> None:
    """Print `id,prediction,unit` (CSV) for each structure file: what the model itself predicts, a quick sanity
    check of any checkpoint or adapter (e.g. `--model chgnet`: CHGNet's energy per atom, or `--spec audit.yaml`:
    the model the spec audits).

    A checkpoint's format is detected from the file: safetensors with its model.json sidecar, an original CGCNN
    .pth.tar, or a plain state dict (which needs --architecture and, unless they are the defaults,
    --hyper)."""
    from traits.audit import resolve_device
    from traits.models.inference import unit_of
    from traits.models.predicting import load_model, predict_paths
    from traits.models.registry import ARCHITECTURES
    from traits.spec import TARGET_UNITS

    if fmt not in ("auto", "traits", "state-dict", "cgcnn-original"):
        raise TraitsError(f"--format: unknown checkpoint format {fmt!r}; choose auto, traits, state-dict or "
                          "cgcnn-original")
    if architecture is not None and architecture not in ARCHITECTURES:
        raise TraitsError(f"--architecture: unknown architecture {architecture!r}; choose "
                          f"{' or '.join(sorted(ARCHITECTURES))}")
    if target is not None and target not in TARGET_UNITS:
        raise TraitsError(f"--target: unknown target {target!r}; choose {' or '.join(sorted(TARGET_UNITS))}")
    dev = resolve_device(device)
    if spec is not None:
        loaded = _model_of_spec(spec, dev, checkpoint=checkpoint, model=model, options=options, fmt=fmt,
                                architecture=architecture, hyper=hyper)
    else:
        if checkpoint is None and model is None:
            raise TraitsError("give a checkpoint (--checkpoint), a model adapter (--model, e.g. --model chgnet) or "
                              "an audit spec (--spec)")
        settings = _model_options(model, options, architecture)
        hyper_dict, norm = _parse_hyper(hyper), _parse_normalizer(normalizer)
        loaded = load_model(model, checkpoint, dev, fmt=fmt, architecture=architecture, hyper=hyper_dict,
                            normalizer=norm, options=settings)
    rows = predict_paths(loaded, list(files), dev)
    unit = unit_of(loaded.meta or {"unit": loaded.info.units, "target": loaded.info.property}, target)
    # ids come from file names: escaped, and quoted where a line would start with a workflow command
    writer = csv.writer(sys.stdout, lineterminator="\n")
    quoted = csv.writer(sys.stdout, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow(["id", "prediction", "unit"])
    for ident, value in rows:
        ident = safe_text(ident)
        (quoted if ident.lstrip().startswith("::") else writer).writerow([ident, f"{value:.6g}", safe_text(unit)])


@app.command()
@handles_errors
def campaign(
    directory: Annotated[Path, typer.Argument(help="Directory of audit specs (and campaign.yaml profiles).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output directory (one folder per seed and task).")],
    profile: Annotated[str | None, typer.Option(help="Profile of campaign.yaml to apply, e.g. cpu or full.")] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds, e.g. 0,1,2 (default: each spec's).")] = None,
    data: Annotated[Path | None, typer.Option(help="Use this data file instead of each spec's data.path.")] = None,
    summary_only: Annotated[bool, typer.Option(help="Run nothing; summarise the tasks finished so far.")] = False,
    executor: Annotated[str, typer.Option(help="local (this process, or a process pool with --workers > 1) or "
                                               "dask (a LocalCluster, or --scheduler).")] = "local",
    workers: Annotated[int, typer.Option(help="Tasks run at once (processes or Dask workers).")] = 1,
    threads: Annotated[int | None, typer.Option(help="Torch threads per worker (default: cores / workers).")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Dask scheduler address, e.g. tcp://HOST:8786.")] = None,
    max_tasks: Annotated[int | None, typer.Option(min=1, help="Run at most this many unfinished tasks.")] = None,
    only: Annotated[str | None, typer.Option(help="Comma-separated shell patterns of task names to run, e.g. "
                                                  "'*-element-*' (default: every task).")] = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    debug: DebugOpt = False,
    allow_code: AllowCodeOpt = False,
) -> None:
    """Run every spec of a campaign (resuming finished tasks) and write a comparison summary."""
    from traits.campaign import TasksFailed, campaign_exit_code, run_campaign, summary_markdown
    from traits.study.executors import ExecutorOptions

    _set_local(quiet, verbose, debug, allow_code)
    try:
        seed_list = [int(x) for x in seeds.split(",") if x.strip()] if seeds else None
    except ValueError:
        raise TraitsError(f"--seeds: give comma-separated integers, got {seeds!r}") from None
    if seed_list is not None and any(not 0 <= s < 2**63 for s in seed_list):
        raise TraitsError(f"--seeds: every seed must satisfy 0 <= seed < 2**63, got {seeds}")
    with reporter() as rep:
        try:
            options = ExecutorOptions(executor, workers, threads, settings={"scheduler": scheduler})
            summary = run_campaign(directory, out_dir, seeds=seed_list, profile=profile, data_path=data,
                                   log=rep.log, progress=rep, summary_only=summary_only, options=options,
                                   max_tasks=max_tasks, only=[p.strip() for p in only.split(",")] if only else None)
        except TasksFailed as exc:  # the others are summarised; exit 3 below (traits.campaign's exit contract)
            summary = exc.summary
            print_error(str(exc))
    out.print(summary_markdown(summary))
    out.print(f"summary in {safe_text(out_dir)}/summary.{{json,md,html,pdf}}")
    raise typer.Exit(campaign_exit_code(summary))  # 0 passed, 1 a gate failed, 3 a task failed


@app.command()
@handles_errors
def compare(
    a: Annotated[Path, typer.Argument(help="results.json of the reference audit A (e.g. the previous model).")],
    b: Annotated[Path, typer.Argument(help="results.json of the audit B compared with it (e.g. the new model).")],
    gates: Annotated[Path | None, typer.Option(help="YAML/JSON file of gates on the change.")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Output directory for compare.json/html/pdf.")] = Path("."),
    formats: Annotated[str, typer.Option("--format", help="Comma-separated: json,html,pdf.")] = "json,html,pdf",
    junit: Annotated[Path | None, typer.Option(help="Also write the gates on the change as JUnit XML here.")] = None,
    barrier: Annotated[bool, typer.Option(
        "--barrier", help="Also measure the loss barrier on the straight line between A's and B's weights, per "
        "split, on A's surfaces' structures (needs both audits' checkpoints and A's data; same split).")] = False,
    barrier_points: Annotated[int, typer.Option(help="Points on that line, ends included.", min=3)] = 11,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda (for --barrier)")] = "auto",
) -> None:
    """Compare two audits side by side and gate on the change: exit 0 if every gate holds, 1 if one fails, 2 on
    bad input."""
    from traits.compare import compare_files, exit_code, print_comparison

    wanted = [f.strip() for f in formats.split(",") if f.strip()]
    if barrier:
        with reporter() as rep:
            comparison = compare_files(a, b, gates, out_dir, wanted, junit, barrier_points=barrier_points,
                                       device=device, progress=rep)
    else:
        comparison = compare_files(a, b, gates, out_dir, wanted, junit)
    print_comparison(comparison, out)
    out.print(f"comparison in {safe_text(out_dir)}", highlight=False)
    raise typer.Exit(exit_code(comparison))


@app.command("export-mace")
@handles_errors
def export_mace(
    model_file: Annotated[Path, typer.Argument(help="A MACE model file (*.model), as MACE's trainer or the MACE-MP "
                                               "foundation models ship it. It is UNPICKLED: only a file you trust.")],
    folder: Annotated[Path, typer.Argument(help="Folder to write mace-config.json and weights.safetensors to.")],
    training_data: Annotated[str | None, typer.Option(help="What the model was trained on (recorded, reported).")]
    = None,
) -> None:
    """Convert a pickled MACE model into the folder the 'mace' adapter audits (config JSON + safetensors).

    Unpickling a MACE model file runs code from it; audits never do. Run this once, on a file you trust; every
    audit afterwards reads only the JSON and the safetensors weights."""
    from traits.models.mace import export_file

    written = export_file(model_file, folder, training_data)
    out.print(Text.assemble("MACE model written to ", safe_text(written), " (model.architecture: mace, "
                            "model.checkpoint: this folder)"))


@app.command()
@handles_errors
def screen(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint to screen with (its sidecar beside it); with --model "
                                               "the adapter's weights file, model folder or bundled weights name "
                                               "('bundled': its default, e.g. CHGNet 0.3.0); or an audit spec "
                                               "(.yaml): its model section, and its split as the --reference.")],
    structures: Annotated[list[Path], typer.Argument(
        help="CIF, POSCAR/CONTCAR/.vasp, or Materials Project / JARVIS JSON files, or folders of them.",
        show_default=False)],
    out_dir: Annotated[Path, typer.Option("--out", help="Output directory.")],
    calibration: Annotated[Path | None, typer.Option(
        help="Calibration file (default: <checkpoint stem>.calibration.json beside the checkpoint).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="Checkpoint format: auto | traits | cgcnn-original.")] = "auto",
    model: ModelOpt = None,
    options: OptionsOpt = None,
    report_formats: Annotated[str, typer.Option("--report", help="Comma-separated: html,pdf (or none).")] = "html,pdf",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    reference: Annotated[Path | None, typer.Option(
        help="Audit spec the model was trained or audited with: its training and ID test compounds are the "
             "yardstick of the risk of a >= 2x error per element (checked against the checkpoint's split); "
             "without it no risk is given.")] = None,
) -> None:
    """Predict unlabelled structures with per-compound uncertainty and flags: predictions.csv/json, a
    per-element and per-chemical-system summary, the risk of a >= 2x error per element (with --reference) and a
    screening report (screen.html/pdf). Any adapter screens (--model chgnet bundled STRUCTURES...); a score the
    model does not offer is reported unavailable."""
    from traits.audit import resolve_device
    from traits.screen import SCORE_NAMES, risk_summary
    from traits.screen import screen as run_screen
    from traits.threads import settle_threads

    settle_threads()  # torch is running now: fewer threads where other processes hold some of the CPUs
    wanted = [f.strip() for f in report_formats.split(",") if f.strip() and f.strip() != "none"]
    bad = [f for f in wanted if f not in ("html", "pdf")]
    if bad:
        raise TraitsError(f"--report: unknown format(s) {', '.join(bad)}; choose html, pdf or none")
    if checkpoint.suffix.lower() in (".yaml", ".yml"):  # an audit spec: its model section, and its split as reference
        checkpoint, model, settings, fmt, reference = _screen_model_of_spec(checkpoint, model=model, options=options,
                                                                           reference=reference)
    else:
        settings = _model_options(model, options)
    res = run_screen(checkpoint, list(structures), out_dir, fmt=fmt, calibration=calibration,
                     device=resolve_device(device), formats=wanted, model=model, options=settings,
                     reference=reference)
    skipped = sum(res.skipped.values())
    out.print(f"screened {res.n_screened} of {res.n_read} structures ({skipped} skipped"
              f"{': ' + '; '.join(f'{safe_text(k)}: {v}' for k, v in res.skipped.items()) if skipped else ''}); "
              f"{res.n_flagged} flagged high, {res.n_nan} without a finite prediction", highlight=False)
    if not res.calibrated:
        out.print("no calibration stored with this checkpoint: the scores are uncalibrated (see the report)",
                  highlight=False)
    for key, why in res.unavailable.items():
        out.print(f"{SCORE_NAMES.get(key, key)} is not available for this model: {safe_text(why)}", highlight=False)
    for line in risk_summary(res.risk):
        out.print(safe_text(line), highlight=False)
    out.print(f"results in {safe_text(out_dir)}: {safe_text(', '.join(p.name for p in res.files.values()))}",
              highlight=False)


from traits.study.cli import register as _register_study  # noqa: E402  (traits study generate | summary)

_register_study(app, handles_errors, out)


def main() -> None:  # pragma: no cover - console-script entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
