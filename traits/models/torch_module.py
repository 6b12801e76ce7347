"""The ``torch`` adapter: a user's own ``nn.Module``, named by import path, with weights from a file.

``options.module: "package.module:Class"`` is imported and built with ``options.kwargs``; its weights come from
``model.checkpoint``, a safetensors file or a weights-only PyTorch state dict, so the weights file never executes
code. Structures become TRAITS' CGCNN crystal graphs (``featuriser: cgcnn``, settings ``options.graph``; batches
are ``torch_geometric`` batches with ``x``, ``edge_index``, ``edge_attr``, ``batch``, ``z`` and ``y``) or whatever
a user callable returns (``featuriser: "package.module:function"``, called with a pymatgen Structure; its outputs
are collated by ``options.collate``, another callable taking the list, or passed as a list). ``forward(batch)``
must return one value per structure of ``options.property`` (in ``options.units``).

Code import policy. Importing a module runs its code, so a spec may name code to import (``options.module``,
``options.featuriser`` other than ``cgcnn``, ``options.collate``) only when the person running TRAITS allows it:
the ``--allow-code`` option of the command line, or the environment variable ``TRAITS_ALLOW_CODE=1`` (also
``true``, ``yes``, ``on``; the GitHub Action's ``allow-code`` input sets it). It is off by default, so a spec
from a pull request cannot run code in CI. Without it the spec is refused when it is loaded (``traits validate``
included: a SpecError, exit 2, naming the field, the module, the option and the variable), before anything is
imported. Allowed or not, every import goes through :func:`import_object`, which also

- refuses modules of the Python standard library (``os``, ``subprocess``, ``runpy``, ...: none holds a model),
  before importing;
- checks ``options.module`` names a class that subclasses ``torch.nn.Module`` before calling it (so
  ``os:system``, ``subprocess:Popen`` or ``runpy:run_path`` are refused without being called);
- checks ``options.featuriser`` and ``options.collate`` name plain Python functions (``def`` or ``lambda``)
  defined in the module named, not builtins, classes, methods or objects re-exported from another module.

``traits validate`` lists the code a spec imports (:func:`code_imports`) without importing it.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from traits.errors import CheckpointError, SpecError, first_problem
from traits.models.base import Adapter, Featurised, FeaturiseError, StructureBatch

if TYPE_CHECKING:  # imported where used: the options and the import policy are checked without torch
    import torch
    from torch import nn

#: The command-line option and the environment variable that allow a spec to import code.
ALLOW_CODE_OPTION = "--allow-code"
ALLOW_CODE_ENV = "TRAITS_ALLOW_CODE"
_TRUE = ("1", "true", "t", "yes", "y", "on")
#: The options that name code to import, each with what the object must be.
CODE_OPTIONS = {"module": "class", "featuriser": "function", "collate": "function"}
#: ``options.module`` of a model given as an object (``run_audit(model=...)``): names nothing to import.
IN_MEMORY = "<in memory>:Module"
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\Z")


def code_allowed() -> bool:
    """Whether the person running TRAITS allowed spec code: ``TRAITS_ALLOW_CODE`` is 1, true, yes or on (the
    command line's ``--allow-code`` sets it for the command)."""
    return os.environ.get(ALLOW_CODE_ENV, "").strip().lower() in _TRUE


def code_imports(options: Mapping[str, Any] | BaseModel | None) -> list[tuple[str, str]]:
    """``(field, "package.module:Name")`` for every option of the torch adapter's ``options`` (a mapping or
    :class:`TorchModuleOptions`) that names code to import, in field order; nothing is imported."""
    if options is None:
        return []
    get = options.get if isinstance(options, Mapping) else (lambda key: getattr(options, key, None))
    out = []
    for key in CODE_OPTIONS:
        value = get(key)
        if isinstance(value, str) and not (key == "featuriser" and value == "cgcnn"):
            out.append((f"model.options.{key}", value))
    return out


def _split(path: str, what: str) -> tuple[str, str]:
    module, sep, attr = str(path).partition(":")
    if not sep or not _DOTTED.match(module) or not _DOTTED.match(attr):
        raise SpecError(f"{what + ' ' if what else ''}{path!r} must be written 'package.module:Name'")
    return module, attr


def check_code_allowed(path: str, what: str) -> str:
    """The import policy, applied before any import: ``path`` is well formed, code is allowed
    (:func:`code_allowed`) and the module is not part of the standard library. Returns the module's name;
    a SpecError names ``what`` (the option's field), the module, the option and the variable."""
    module, _ = _split(path, what)
    named = f"{what} {path!r}" if what else repr(path)
    if not code_allowed():
        raise SpecError(
            f"{named} would import the Python module {module!r}, which runs its code; a spec may import "
            f"code only when you allow it: pass {ALLOW_CODE_OPTION} (e.g. `traits audit {ALLOW_CODE_OPTION} "
            f"spec.yaml`) or set the environment variable {ALLOW_CODE_ENV}=1, and only for a spec and module you "
            "trust")
    if module.split(".")[0] in sys.stdlib_module_names:
        raise SpecError(f"{named}: {module!r} is part of the Python standard library, which holds no "
                        "model, featuriser or collate function; name your own module")
    return module


def _describe(obj) -> str:
    if inspect.isclass(obj):
        return f"the class {obj.__module__}.{obj.__qualname__}"
    if inspect.isbuiltin(obj):
        return f"the builtin {getattr(obj, '__name__', obj)!r}"
    if inspect.isfunction(obj):
        return f"the function {obj.__module__}.{obj.__qualname__}"
    return f"a {type(obj).__name__}"


def import_object(path: str, what: str, kind: str = "class"):
    """``package.module:Name`` -> the object, by the code import policy (see the module docstring): allowed
    (:func:`check_code_allowed`) before the import, then checked to be ``kind`` before anything is called:
    ``"class"`` a subclass of ``torch.nn.Module``, ``"function"`` a plain Python function defined in that module.
    Every refusal is a SpecError naming ``what``."""
    from torch import nn

    module = check_code_allowed(path, what)
    attr = _split(path, what)[1]
    try:
        obj = importlib.import_module(module)
    except Exception as exc:
        raise SpecError(f"{what} {path!r}: cannot import {module!r} ({type(exc).__name__}: {exc})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SpecError(f"{what} {path!r}: {module!r} has no {attr!r}")
        obj = getattr(obj, part)
    if kind == "class":
        if not (inspect.isclass(obj) and issubclass(obj, nn.Module)):
            raise SpecError(f"{what} {path!r} is {_describe(obj)}, not a subclass of torch.nn.Module; it was not "
                            "called")
    elif not (inspect.isfunction(obj) and obj.__module__ == module):
        raise SpecError(f"{what} {path!r} is {_describe(obj)}, not a Python function defined in {module!r}; it was "
                        "not called")
    return obj


class TorchModuleOptions(BaseModel):
    """Settings of the ``torch`` adapter."""

    model_config = ConfigDict(extra="forbid")

    module: str = Field(description="The model class, 'package.module:Class', a torch.nn.Module subclass (imported "
                        "only with --allow-code or TRAITS_ALLOW_CODE=1).")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the class.")
    featuriser: str = Field("cgcnn", description="'cgcnn' (TRAITS crystal graphs) or 'package.module:function' "
                            "(called with a pymatgen Structure).")
    collate: str | None = Field(None, description="With a featuriser callable: 'package.module:function' that "
                                "collates a list of its outputs (default: the list itself).")
    graph: dict[str, Any] = Field(default_factory=dict, description="Graph settings for featuriser 'cgcnn' "
                                  "(as data.graph).")
    property: str | None = Field(None, description="The property the model predicts (checked against data.target).")
    units: str | None = None
    training_data: str | None = Field(None, description="What the model was trained on, when known.")

    @field_validator("module", "featuriser", "collate")
    @classmethod
    def _code(cls, value: str | None, info: ValidationInfo) -> str | None:
        """The code import policy when a spec is loaded: code to import must be allowed (nothing is imported)."""
        if value == IN_MEMORY and (info.context or {}).get("spec"):
            raise PydanticCustomError("code_import", "{message}", {"message": (
                f"{IN_MEMORY!r} stands for a model object given to run_audit(model=...); a spec names the class "
                "as 'package.module:Class'")})
        if value is None or (info.field_name == "featuriser" and value == "cgcnn") or value == IN_MEMORY:
            return value
        try:
            check_code_allowed(value, "")
        except SpecError as exc:
            raise PydanticCustomError("code_import", "{message}", {"message": str(exc)}) from None
        return value

    @field_validator("graph")
    @classmethod
    def _graph_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        """The graph settings held to ``data.graph``'s own model (its bounds, no unknown keys) when the spec is
        loaded, so ``cutoff: -1`` is bad input found by ``traits validate``, not an error in the middle of a run."""
        from pydantic import ValidationError

        from traits.spec import GraphSpec

        try:
            GraphSpec.model_validate(value)
        except ValidationError as exc:
            where, msg, _ = first_problem(exc)
            raise PydanticCustomError("graph_settings", "graph.{where}: {msg}", {"where": where, "msg": msg}) from None
        return value


class TorchModuleAdapter(Adapter):
    name = "torch"
    Options = TorchModuleOptions

    def __init__(self) -> None:
        self.options: TorchModuleOptions | None = None

    def declared_property(self, options) -> str | None:
        return options.property if options is not None else None

    def load(self, source, options: TorchModuleOptions, device: torch.device, module: nn.Module | None = None):
        from torch import nn

        from traits.models.weights import load_state_file, load_weights

        self.options = options
        if module is None:
            cls = import_object(options.module, "model.options.module", "class")
            try:
                module = cls(**options.kwargs)
            except Exception as exc:
                raise SpecError(f"model.options.module {options.module!r} could not be built with "
                                f"{options.kwargs}: {type(exc).__name__}: {exc}") from None
            if not isinstance(module, nn.Module):
                raise SpecError(f"model.options.module {options.module!r} is not a torch.nn.Module")
            if source is None:
                raise CheckpointError("model 'torch' needs a weights file (model.checkpoint: a safetensors file or a "
                                      "state dict saved with torch.save(model.state_dict()))")
            load_weights(module, load_state_file(source), source)
        return module.to(device).eval()

    def info(self, model, source, options):
        out = super().info(model, source, options)
        opts = options or self.options
        if opts is not None:
            out.property, out.units, out.training_data = opts.property, opts.units, opts.training_data
            out.package = opts.module
        return out

    def _graph(self):
        from traits.spec import GraphSpec

        return GraphSpec(**(self.options.graph if self.options else {}))

    def featurise(self, structure, options=None):
        options = options or self.options
        if options is None or options.featuriser == "cgcnn":
            from traits.data.graphs import structure_graph, to_data
            from traits.errors import GraphError

            settings = self._graph()
            try:
                return to_data(structure_graph(structure, settings), float("nan"), "", settings)
            except GraphError as exc:
                raise FeaturiseError(str(exc)) from None
        fn = import_object(options.featuriser, "model.options.featuriser", "function")
        try:
            return fn(structure)
        except Exception as exc:
            raise FeaturiseError(f"{type(exc).__name__}: {str(exc)[:60]}") from None

    def collate(self, items: Sequence[Featurised], device: torch.device, dtype: torch.dtype):
        import torch

        options = self.options
        y = torch.stack([item.y for item in items]).to(device=device, dtype=dtype)
        ids = [item.material_id for item in items]
        if options is None or options.featuriser == "cgcnn":
            from torch_geometric.data import Batch

            b = Batch.from_data_list([item.payload for item in items])
            b.x, b.edge_attr = b.x.to(dtype), b.edge_attr.to(dtype)
            b = b.to(device)
            b.y = y
            b.material_id = ids
            return b
        payload = [item.payload for item in items]
        if options.collate:
            payload = import_object(options.collate, "model.options.collate", "function")(payload)
        return StructureBatch(payload, y, ids)
