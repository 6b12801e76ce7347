"""Safe loading of weights files: the bottom of ``traits.models``, imported by every adapter.

Nothing here imports another ``traits.models`` module. Pickled files are only ever read with
``torch.load(weights_only=True)``; safetensors files cannot carry code. Sizes are checked before a file
is read whole.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from traits.errors import CheckpointError


def _shape(t) -> tuple:
    return tuple(getattr(t, "shape", ()))


def _short_list(names: Iterable[str], limit: int = 6) -> str:
    names = list(names)
    text = ", ".join(repr(n) for n in names[:limit])
    return text + (f" and {len(names) - limit} more" if len(names) > limit else "")


def safe_torch_load(path: Path, extra_globals: Iterable = ()) -> object:
    """``torch.load(path, map_location='cpu', weights_only=True)`` with CheckpointErrors a user can act on.

    Only tensors, plain containers and the classes in ``extra_globals`` may be unpickled; a file that
    names any other global (a class or function, e.g. one whose ``__reduce__`` would run code) is
    refused without executing it.
    """
    from traits.inputs import check_fits, file_size, require_file

    path = require_file(Path(path), "checkpoint file", CheckpointError)
    check_fits(path, file_size(path), "checkpoint", CheckpointError)
    try:
        with torch.serialization.safe_globals(list(extra_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"GLOBAL (\S+)", text)
        if found:
            raise CheckpointError(
                f"{path}: refused: the file tries to load the non-allowed global {found.group(1)!r}. TRAITS loads "
                "pickled checkpoints with weights_only=True and never runs code from a file; a checkpoint that "
                "needs more than tensors and plain containers may contain malicious code. Re-save the weights as "
                "a plain state dict (torch.save(model.state_dict(), path)) or as safetensors from a trusted "
                "environment."
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        detail = detail.group(1).strip() if detail else text.splitlines()[0]
        raise CheckpointError(
            f"{path}: truncated or corrupt checkpoint, or one using pickle features that weights-only loading "
            f"refuses ({detail[:200]})"
        ) from None
    except Exception as exc:  # torch raises RuntimeError / EOFError / KeyError / ... for damaged files
        first = (str(exc).splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"{path}: truncated or corrupt checkpoint, cannot be read ({type(exc).__name__}: {first})"
        ) from None


def load_weights(model: nn.Module, state: Mapping, source) -> None:
    """Load ``state`` into ``model`` strictly, with a CheckpointError naming what does not fit."""
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{source}: not a state dict (a mapping of parameter names to tensors)")
    expected = model.state_dict()
    state = dict(state)
    # Files from older PyTorch versions have no BatchNorm step counters; they do not affect outputs.
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = expected[key].clone()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and _shape(state[k]) != _shape(expected[k])]
    if missing or unexpected or mismatched:
        arch = getattr(model, "architecture", type(model).__name__)
        problems = []
        if mismatched:
            k = mismatched[0]
            problems.append(
                f"parameter {k!r} has shape {_shape(state[k])} in the checkpoint but {_shape(expected[k])} "
                "in the model" + (f" ({len(mismatched) - 1} more mismatched)" if len(mismatched) > 1 else "")
            )
        if missing:
            problems.append(f"missing keys: {_short_list(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {_short_list(unexpected)}")
        raise CheckpointError(
            f"{source}: the weights do not fit a {arch!r} model with hyper-parameters "
            f"{getattr(model, 'hyper', {})}: " + "; ".join(problems)
            + ". Check model.architecture and model.hyper against the checkpoint."
        )
    model.load_state_dict(state, strict=True)


def safetensors_size(path: Path) -> int:
    """The size a safetensors file must have according to its header (8-byte length, JSON header,
    tensor data); a CheckpointError for a header that is cut off, oversized or malformed."""
    from traits.inputs import file_size

    actual = file_size(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(
                    f"{path}: truncated or corrupt safetensors file ({actual} bytes, shorter than its header)"
                )
            n = int.from_bytes(head, "little")
            if n > min(actual - 8, 100 << 20):
                raise CheckpointError(
                    f"{path}: truncated or corrupt safetensors file (its header claims {n} bytes; the file has "
                    f"{actual})"
                )
            header = json.loads(fh.read(n))
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path}: corrupt safetensors file (its header is not valid JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors file (its header is not a JSON object)")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)):
            raise CheckpointError(f"{path}: corrupt safetensors file (tensor {str(name)[:60]!r} has no valid offsets)")
        end = max(end, offsets[1])
    expected = 8 + n + end
    if actual < expected:
        raise CheckpointError(
            f"{path}: truncated or corrupt safetensors file: its header describes {expected} bytes but the file "
            f"has {actual}"
        )
    return expected



def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for piece in iter(lambda: fh.read(chunk), b""):
            h.update(piece)
    return h.hexdigest()


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file or a weights-only PyTorch file (``{'state_dict': ...}`` unwrapped).

    Never executes code from the file; a CheckpointError names what is wrong."""
    from traits.inputs import check_fits, require_file

    path = require_file(Path(path), "weights file", CheckpointError)
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        from safetensors.torch import load as safetensors_load

        check_fits(path, safetensors_size(path), "weights file", CheckpointError)
        try:
            return dict(safetensors_load(path.read_bytes()))
        except Exception as exc:  # safetensors raises its own SafetensorError
            raise CheckpointError(f"{path}: corrupt safetensors file ({type(exc).__name__}: {str(exc)[:200]})") \
                from None
    raw = safe_torch_load(path)
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in raw.items()):
        raise CheckpointError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    return dict(raw)
