"""Loading a model through its adapter for ``traits predict`` and ``traits screen``, and predicting structure files.

Every adapter goes the same way: :func:`load_model` loads it (a CGCNN checkpoint in any of its formats, or the
adapter named by ``--model`` with its weights file, model folder or bundled weights), :func:`featurise_files` turns
structure files into the adapter's input, and :func:`predict_paths` runs the adapter's own forward over them, so
that what is printed is what the model itself predicts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from traits.errors import CheckpointError, DataError, SpecError
from traits.models.base import Adapter, FeaturiseError, ModelInfo, get_adapter

if TYPE_CHECKING:
    import torch
    from torch import nn


#: The weights name that stands for an adapter's default bundled weights (``--model chgnet --checkpoint bundled``).
BUNDLED = "bundled"


@dataclass
class AdapterModel:
    """A model loaded through its adapter: the adapter, the eval-mode model, its options, where its weights came
    from (a path, a bundled weights name, or None for the adapter's default), what the adapter says about it, and
    the checkpoint's metadata (CGCNN checkpoints; empty otherwise)."""

    adapter: Adapter
    model: nn.Module
    options: Any
    source: str | None
    info: ModelInfo
    meta: dict = field(default_factory=dict)


def parse_options(name: str, text: str | None, flag: str = "--options"):
    """The adapter ``name``'s settings from a JSON object (None: its defaults), validated by its options model; a
    problem is a SpecError naming ``flag`` and the field."""
    from pydantic import ValidationError

    from traits.models.base import options_class

    cls = options_class(name)
    if text is None:
        return cls()
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise SpecError(f"{flag}: not a JSON object ({exc})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{flag}: give a JSON object of the {name!r} adapter's settings, e.g. '{{}}'")
    try:
        return cls.model_validate(raw, context={"spec": True})  # user input: the code policy applies in full
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"])
        raise SpecError(f"{flag}{'.' + where if where else ''} ({name}): {problem['msg']}") from None


def load_model(name: str | None, source: str | Path | None, device: torch.device, *, fmt: str = "auto",
               architecture: str | None = None, hyper=None, normalizer: tuple[float, float] | None = None,
               options=None, graph=None) -> AdapterModel:
    """Load a model through its adapter.

    Args:
        name: the adapter (``chgnet``, ``sevenn``, ``cgcnn``, ...); None: the CGCNN checkpoint ``source``, its
            adapter chosen by its format (``cgcnn-original`` for an original CGCNN file) or by ``architecture``.
        source: a weights file or model folder, a bundled weights name, or None (or ``bundled``) for the adapter's
            bundled default.
        device: where the model runs.
        fmt, architecture, hyper, normalizer: for the adapters that read several checkpoint formats (CGCNN):
            the format ('auto' detects it), the architecture and hyper-parameters of a plain state dict and its
            target normaliser.
        options: the adapter's settings (its ``Options``; None: the defaults).
        graph: graph settings for a CGCNN checkpoint that records none.

    Returns:
        The :class:`AdapterModel`, in eval mode. A bad file or setting raises a TraitsError naming it.
    """
    from traits.models.checkpoint import detect_format

    if name is None:
        if source is None:
            raise CheckpointError("give a checkpoint (--checkpoint) or a model adapter (--model)")
        kind = detect_format(Path(source)) if fmt == "auto" else fmt
        if kind == "state-dict" and architecture is None:
            raise CheckpointError(f"{source}: a plain state dict holds no architecture; give --architecture "
                                  "(and --hyper unless the hyper-parameters are the defaults)")
        name = "cgcnn-original" if kind == "cgcnn-original" else (architecture or "cgcnn")
        fmt, architecture = kind, architecture if kind == "state-dict" else None
    else:
        architecture = ""  # the adapter's own name, checked against what the checkpoint records
    adapter = get_adapter(name)
    adapter.require()
    if adapter.checkpoint_formats:
        return _load_formats(adapter, source, device, fmt, architecture, hyper, normalizer, graph)
    if fmt not in ("auto",) or hyper is not None or normalizer is not None:
        raise SpecError(f"--format, --hyper and --normalizer apply to the CGCNN checkpoint formats, not to the "
                        f"{name!r} adapter (give its settings with --options)")
    if source is not None and str(source) == BUNDLED:
        source = None
    if source is None and not adapter.bundled:
        raise CheckpointError(f"model {name!r} needs its weights: give --checkpoint (a weights file or model folder)")
    options = options if options is not None else adapter.Options()
    model = adapter.load(str(source) if source is not None else None, options, device).eval()
    return AdapterModel(adapter, model, options, str(source) if source is not None else None,
                       adapter.info(model, source, options))


def model_source_of_spec(spec, verb: str = "predict") -> dict:
    """What an audit spec's ``model`` section names, as :func:`load_model`'s arguments: ``name`` (the adapter),
    ``source``, ``fmt``, ``hyper``, ``options`` and ``graph``, and ``checkpoint_formats`` (True for the CGCNN
    family, whose checkpoint formats TRAITS reads). A CGCNN-family spec that trains its model and has no
    checkpoint yet is refused, naming the field (``verb``: what it was wanted for)."""
    from traits.models.base import adapter_class

    m = spec.model
    if adapter_class(m.architecture).checkpoint_formats:
        if m.checkpoint is None or not Path(m.checkpoint).is_file():
            raise CheckpointError(f"model.checkpoint: {m.checkpoint or 'not set'}: no checkpoint to {verb} with "
                                  f"(a spec that trains its model can {verb} only once the audit has trained it)")
        return {"name": m.architecture, "source": m.checkpoint, "fmt": "auto" if m.format == "traits" else m.format,
                "hyper": m.hyper.model_dump(), "options": None, "graph": spec.data.graph, "checkpoint_formats": True}
    return {"name": m.architecture, "source": m.checkpoint, "fmt": "auto", "hyper": None,
            "options": m.adapter_options(), "graph": None, "checkpoint_formats": False}


def load_model_from_spec(spec, device: torch.device) -> AdapterModel:
    """The model of an audit spec's ``model`` section (:func:`model_source_of_spec`), loaded as :func:`load_model`
    does, so ``traits predict --spec`` predicts with exactly what the audit audits."""
    src = model_source_of_spec(spec)
    return load_model(src["name"], src["source"], device, fmt=src["fmt"], hyper=src["hyper"],
                      options=src["options"], graph=src["graph"])


def _load_formats(adapter, source, device, fmt: str, architecture, hyper, normalizer, graph) -> AdapterModel:
    """A model of an adapter that reads several checkpoint formats (the CGCNN ones)."""
    from traits.spec import GraphSpec

    if source is None:
        raise CheckpointError(f"model {adapter.name!r} needs a checkpoint (--checkpoint)")
    if fmt != "auto" and fmt not in adapter.checkpoint_formats:
        raise SpecError(f"--format: {adapter.name!r} reads {', '.join(adapter.checkpoint_formats)}, not {fmt!r}")
    kwargs = {"architecture": architecture} if architecture != "" else {}
    model = adapter.load(Path(source), hyper, device, fmt=fmt, normalizer=normalizer, **kwargs)
    options = adapter.Options.model_validate(hyper) if isinstance(hyper, dict) else (hyper or adapter.Options())
    meta = dict(getattr(adapter, "metadata", None) or {})
    if graph is not None and not meta.get("graph"):
        adapter.graph = graph if isinstance(graph, GraphSpec) else GraphSpec(**dict(graph))
    return AdapterModel(adapter, model.eval(), options, str(source), adapter.info(model, source, options), meta)


def featurise_files(loaded: AdapterModel, files: Sequence[Path]) -> list:
    """The adapter's input for each structure file (CIF, POSCAR/CONTCAR, pymatgen JSON), its id the file as given;
    a file that cannot be read or featurised is a DataError naming it."""
    from traits.data.sources import read_structure_file

    items = []
    for f in files:
        structure = read_structure_file(Path(f))  # bounded, parsed from its text: never imports code
        try:
            items.append(loaded.adapter.featurise_structure(str(f), structure, math.nan, loaded.options))
        except FeaturiseError as exc:
            raise DataError(f"{f}: {exc}") from None
    return items


def predict_paths(loaded: AdapterModel, files: Sequence[Path], device: torch.device) -> list[tuple[str, float]]:
    """[(file as given, prediction)] for each structure file, from the adapter's own forward (eval mode, the model's
    dtype)."""
    items = featurise_files(loaded, files)
    ids, preds, _ = loaded.adapter.predict(loaded.model, items, device)
    return [(i, float(p)) for i, p in zip(ids, preds)]
