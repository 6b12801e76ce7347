"""The help of every command prints click-style value names: no typer ``{name}`` usage pieces, no ``<type>``
labels, ``FILES...`` for a list argument and ``[a|b|c]`` for a choice (traits.cli.HelpFormatter)."""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from traits.cli import HelpGroup, app


def _paths(command, prefix=()):
    yield prefix
    for name, sub in (getattr(command, "commands", None) or {}).items():
        yield from _paths(sub, (*prefix, name))


def _every_command() -> list[tuple[str, ...]]:
    return list(_paths(typer.main.get_command(app)))


def _help(*argv: str, target=app) -> str:
    res = CliRunner().invoke(target, [*argv, "--help"], env={"COLUMNS": "100"})
    assert res.exit_code == 0, res.output
    return res.output


def test_every_command_is_found():
    names = {" ".join(p) for p in _every_command()}
    assert {"", "audit", "screen", "predict", "compare", "study", "study summary"} <= names


@pytest.mark.parametrize("argv", _every_command(), ids=lambda p: " ".join(p) or "traits")
def test_no_typer_labels_in_any_help(argv):
    text = _help(*argv)
    assert text.startswith("Usage: traits")
    usage = text.split("\n\n")[0]
    assert "{" not in usage and "}" not in usage, usage
    assert "<list[" not in text
    for line in text.splitlines():
        # option and argument names are never followed by a typer type label such as <path>, <str>, <int range>
        assert not re.match(r"\s+(-\S+(, )?)+ <[^>]+>", line), line
        assert not re.match(r"\s+[a-z_]+(\.\.\.)? <[^>]+>", line), line


def test_arguments_and_options_read_as_in_click():
    screen = _help("screen")
    assert "Usage: traits screen [OPTIONS] CHECKPOINT STRUCTURES..." in screen
    assert re.search(r"^\s+STRUCTURES\.\.\.\s+CIF", screen, re.M)
    assert re.search(r"^\s+--out PATH\s+Output directory", screen, re.M)
    assert re.search(r"^\s+--format TEXT\s", screen, re.M)
    assert "Usage: traits compare [OPTIONS] A B" in _help("compare")
    assert "Usage: traits predict [OPTIONS] FILES..." in _help("predict")
    assert re.search(r"^\s+--max-tasks INTEGER RANGE\s", _help("campaign"), re.M)
    # help text is not rewritten: the <checkpoint stem> placeholder stays as written
    assert "<checkpoint" in screen


def test_usage_line_of_an_error_uses_the_same_names():
    res = CliRunner().invoke(app, ["compare"], env={"COLUMNS": "100"})
    assert res.exit_code == 2
    assert "Usage: traits compare [OPTIONS] A B" in res.output


class _Fmt(str, enum.Enum):
    auto = "auto"
    cif = "cif"
    poscar = "poscar"


def _toy() -> typer.Typer:
    toy = typer.Typer(cls=HelpGroup, rich_markup_mode=None, add_completion=False)

    @toy.command()
    def run(files: Annotated[list[Path], typer.Argument(help="Structure files.")],
            fmt: Annotated[_Fmt, typer.Option("--fmt", help="Reader.")] = _Fmt.auto,
            tags: Annotated[list[str] | None, typer.Option("--tag", help="A tag.")] = None,
            extra: Annotated[str | None, typer.Argument(help="Optional.")] = None) -> None:
        pass

    @toy.command()
    def other() -> None:
        pass

    return toy


def test_choices_lists_and_optional_arguments():
    text = _help("run", target=_toy())
    assert re.search(r"^Usage: \S+ run \[OPTIONS\] FILES\.\.\. \[EXTRA\]$", text, re.M), text
    assert re.search(r"^\s+--fmt \[auto\|cif\|poscar\]\s+Reader\.", text, re.M), text
    assert re.search(r"^\s+--tag TEXT\s+A tag\.", text, re.M), text
    assert re.search(r"^\s+FILES\.\.\.\s+Structure files\.", text, re.M), text
    assert re.search(r"^\s+EXTRA\s+Optional\.", text, re.M), text
    assert "<" not in text and "{" not in text
