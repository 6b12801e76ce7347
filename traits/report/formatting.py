"""Formatting for reports: numbers, durations, split names, and portable paths and host details.

Reports travel (attached to papers, uploaded as CI artefacts), so what they show of the machine that
made them is kept to what reproducing the audit needs: file *names* (with their hashes elsewhere) or
paths relative to the spec, never absolute local paths; the operating system and architecture, never
the kernel build or the host name.
"""

from __future__ import annotations

import math
import posixpath
import re
import shlex
from collections.abc import Iterable
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from traits.results import SPLIT_LABELS

SPLIT_ORDER = ("train", "val", "id", "ood")
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


#: Characters with a meaning in inline Markdown; each is backslash-escaped in a string from the data.
_MD_SPECIAL = re.compile(r"[\\`*\[\]<>|~&]|(?<![^\W_])_|_(?![^\W_])")
_MD_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")


def markdown_literal(value) -> str:
    """A string from the data (a task, target, family, data set or held-out name) as literal Markdown text: line
    breaks and control characters become one space, and every character with an inline Markdown meaning
    (emphasis, code, links and images, raw HTML, entities, table cells) is backslash-escaped, so the text shows as
    written and never becomes markup. An underscore inside a word (``band_gap``) means nothing and is left."""
    text = _MD_CONTROL.sub(" ", str(value))
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), text)


def fmt_num(value: Any, digits: int = 4) -> str:
    """A number for a table: 4 significant digits, '—' for missing, NaN/∞ spelled out."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}".replace(",", "\u202f") if abs(value) >= 10000 else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        text = f"{value:.{digits}g}"
        if "e" in text:
            mantissa, exp = text.split("e")
            return f"{mantissa.replace('-', '−')}×10{str(int(exp)).translate(_SUPERSCRIPT)}"
        return text.replace("-", "−") if value < 0 else text
    return str(value)


def fmt_interval(low: Any, high: Any, digits: int = 3) -> str:
    """``[low, high]`` for an interval; an open end (None) is ∞; '' when both ends are missing."""
    if low is None and high is None:
        return ""
    left = "(−∞" if low is None else f"[{fmt_num(float(low), digits)}"
    right = "∞)" if high is None else f"{fmt_num(float(high), digits)}]"
    return f"{left}, {right}"


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 60:
        return f"{value:.1f} s"
    minutes, seconds = divmod(value, 60)
    if minutes < 60:
        return f"{int(minutes)} min {seconds:.0f} s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)} h {int(minutes)} min"


_DIGITS = re.compile(r"(\d+(?:\.\d+)?)")


def formula_html(formula: Any) -> Any:
    """A chemical formula as escaped HTML with its counts as subscripts ('Fe6OF11' → Fe<sub>6</sub>OF<sub>11</sub>);
    every other character is escaped, so a formula from the data can never become markup."""
    from markupsafe import Markup, escape

    parts = _DIGITS.split(str(formula if formula is not None else ""))
    return Markup("").join(Markup("<sub>{}</sub>").format(p) if i % 2 else escape(p) for i, p in enumerate(parts))


def split_label(split: str) -> str:
    return SPLIT_LABELS.get(split, split)


def ordered_splits(keys: Iterable[str]) -> list[str]:
    keys = list(keys)
    known = [s for s in SPLIT_ORDER if s in keys]
    return known + [k for k in keys if k not in SPLIT_ORDER]


# ----------------------------------------------------------------------------------------------
# Portable paths and host details


def _is_absolute(text: str) -> bool:
    return text.startswith(("/", "~")) or bool(re.match(r"^[A-Za-z]:[\\/]", text)) or text.startswith("\\\\")


def _name(text: str) -> str:
    if "\\" in text and "/" not in text:
        return PureWindowsPath(text).name
    return PurePosixPath(text).name or text


def portable_path(path: Any, spec_path: str = "") -> str:
    """A path as a report may show it: relative to the spec's directory when both are absolute and the
    path lies below that directory, else just the file name. Relative paths and non-paths are kept."""
    if path is None:
        return ""
    text = str(path)
    if not text or not _is_absolute(text):
        return text
    spec = str(spec_path or "")
    if spec and _is_absolute(spec) and not text.startswith("~"):
        base = posixpath.dirname(posixpath.normpath(spec))
        norm = posixpath.normpath(text)
        if base not in ("", "/") and norm.startswith(base.rstrip("/") + "/"):
            return posixpath.relpath(norm, base)
    return _name(text)


def portable_command(command: str, spec_path: str = "") -> str:
    """A command line with every absolute path argument made portable (see :func:`portable_path`)."""
    if not command:
        return ""
    try:
        words = shlex.split(command)
    except ValueError:
        return command
    out = []
    for w in words:
        if "=" in w and w.startswith("--"):
            key, _, value = w.partition("=")
            out.append(f"{key}={portable_path(value, spec_path)}" if _is_absolute(value) else w)
        else:
            out.append(portable_path(w, spec_path) if _is_absolute(w) else w)
    return " ".join(shlex.quote(w) for w in out)


def portable_spec(value: Any, spec_path: str = "") -> Any:
    """The stored spec with every absolute path string made portable (nested dicts and lists)."""
    if isinstance(value, dict):
        return {k: portable_spec(v, spec_path) for k, v in value.items()}
    if isinstance(value, list):
        return [portable_spec(v, spec_path) for v in value]
    if isinstance(value, str) and _is_absolute(value) and "\n" not in value:
        return portable_path(value, spec_path)
    return value


_ARCHES = ("x86_64", "amd64", "aarch64", "arm64", "armv7l", "ppc64le", "s390x", "i686", "riscv64")


def host_summary(platform: str) -> str:
    """Operating system and CPU architecture from ``platform.platform()`` (e.g. 'Linux, x86_64'): what
    affects floating-point reproducibility, without the kernel build or distribution details."""
    if not platform:
        return ""
    system = platform.split("-", 1)[0]
    lowered = platform.lower()
    arch = next((a for a in _ARCHES if a in lowered), "")
    if system.lower() in ("macos", "darwin"):
        system = "macOS"
    return ", ".join(x for x in (system, arch) if x)


def kernel_summary(kernels: dict) -> str:
    """The CPU kernels an audit ran with (``provenance.kernels``, :mod:`traits.kernels`) in one line, e.g.
    'OpenBLAS 0.3.31 (Haswell) · NumPy SIMD X86_V3 · PyTorch AVX512 · pinned: OPENBLAS_CORETYPE=Haswell': the kernels
    decide the last bits of every number and, where neighbour distances tie, which neighbours a crystal graph keeps.
    Empty for a result written before schema 1.10."""
    parts = []
    for lib in kernels.get("blas") or []:
        name = {"openblas": "OpenBLAS", "mkl": "MKL", "blis": "BLIS"}.get(str(lib.get("internal_api")),
                                                                        str(lib.get("internal_api") or "BLAS"))
        arch = f" ({lib['architecture']})" if lib.get("architecture") else ""
        parts.append(f"{name} {lib.get('version') or ''}".strip() + arch)
    if kernels.get("numpy_simd") is not None:
        parts.append("NumPy SIMD " + (", ".join(map(str, kernels["numpy_simd"])) or "baseline only"))
    if kernels.get("torch_cpu"):
        parts.append(f"PyTorch {kernels['torch_cpu']}")
    env = kernels.get("environment") or {}
    if env:
        parts.append("pinned: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    return " · ".join(parts)


# ----------------------------------------------------------------------------------------------
# What a bracket is: the kind of an interval

#: The kinds of interval a report prints, each with the mark that follows its bracket and what it carries
#: (:mod:`traits.intervals`). Sampling kinds say how a number would move with another draw of compounds or
#: structures; estimator kinds bound the numerical error of the number itself. A gate whose threshold lies inside
#: a bracket that decides (every interval from results schema 1.6 on) is undetermined.
INTERVAL_KINDS: dict[str, tuple[str, str]] = {
    "bootstrap over compounds": ("B", "percentile bootstrap over each split's compounds: how the number would "
                                 "move with another draw of compounds"),
    "jackknife over structures": ("J", "delete-a-group jackknife over the structures the Hessian was computed on, "
                                  "with the solver's own error: how it would move with another draw of them"),
    "solver bound": ("S", "the eigensolver's verified residual bound: the numerical error of a certified "
                     "eigenvalue"),
    "Monte-Carlo error": ("MC", "the Monte-Carlo error of a random-probe estimator (Hutchinson / Hutch++ trace; "
                          "Fieller's interval for a ratio of two)"),
    "grid resolution": ("G", "where a crossing lies between grid points (the bisection bracket of a robust "
                        "radius)"),
}
#: ``method`` of an interval (results written before ``kind`` was stored) → its kind.
_METHOD_KINDS = {
    "bootstrap": "bootstrap over compounds",
    "jackknife": "jackknife over structures",
    "sampled": "jackknife over structures",
    "residual bounds": "solver bound",
    "certified eigenvalues": "solver bound",
    "fieller": "Monte-Carlo error",
    "stderr": "Monte-Carlo error",
    "bisection bracket": "grid resolution",
}


def interval_kind(interval: Any) -> str:
    """The kind of a stored interval (an entry of ``AuditResult.ratio_intervals``, as a dict or a model): its
    ``kind`` when it names one of :data:`INTERVAL_KINDS`, else read from its ``method`` (results written before
    the kind was stored); '' when neither says."""
    if interval is None:
        return ""
    if hasattr(interval, "model_dump"):
        interval = interval.model_dump()
    if not isinstance(interval, dict):
        return ""
    kind = str(interval.get("kind") or "").strip()
    if kind in INTERVAL_KINDS:
        return kind
    lowered = kind.lower()
    for known in INTERVAL_KINDS:
        if lowered == known.lower():
            return known
    return _METHOD_KINDS.get(str(interval.get("method") or "").strip().lower(), "")


def kind_marker(kind: str) -> str:
    """The short marker printed after a bracket of this kind ('B', 'S', ...); '' for an unknown kind."""
    return INTERVAL_KINDS.get(kind, ("", ""))[0]


def kind_legend(kinds: Iterable[str]) -> list[tuple[str, str, str]]:
    """(marker, kind, what it bounds) for each known kind in ``kinds``, once each, in :data:`INTERVAL_KINDS` order."""
    wanted = set(kinds)
    return [(marker, kind, text) for kind, (marker, text) in INTERVAL_KINDS.items() if kind in wanted]
