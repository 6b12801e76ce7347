"""One exception family for everything a user can get wrong or must act on.

The CLI prints a ``TraitsError`` without a traceback and exits with status 2.
"""

from __future__ import annotations


class TraitsError(Exception):
    """Base class: a message a user can act on."""


class SpecError(TraitsError):
    """An audit spec is missing, unreadable or invalid."""


class DataError(TraitsError):
    """A data file is missing, unreadable, or yields no usable structures."""


class GraphError(DataError):
    """A crystal graph cannot be built (e.g. an atom with no neighbour in the cutoff)."""


class CheckpointError(TraitsError):
    """A checkpoint is missing, truncated, unsafe or does not match the model/spec."""


class ProbeError(TraitsError):
    """A probe cannot run with the given settings (e.g. an unsupported backend feature)."""


class OutputError(TraitsError):
    """An output directory or file cannot be written."""


def first_problem(exc) -> tuple[str, str, object]:
    """(the dotted field, the message, the input) of a pydantic ValidationError's first error, with "unknown key"
    for a field the model does not have: the one place that reads an error a message names a field from."""
    problem = exc.errors()[0]
    where = ".".join(str(p) for p in problem["loc"])
    msg = "unknown key" if problem["type"] == "extra_forbidden" else problem["msg"]
    return where, msg, problem.get("input")
