"""The model-adapter seam: what TRAITS needs from any model it audits, and the registry of adapters.

An adapter turns a saved model into the three things the probes need:

- ``load(source, hyper, device)``: an eval-mode, uncompiled ``nn.Module`` whose ``forward(batch)`` returns one
  value per structure for the adapter's declared ``property`` (in ``units``). ``source`` is a local file or a
  bundled weights name; an adapter never reaches the network: weights that would be downloaded raise a
  :class:`~traits.errors.CheckpointError` naming the file to fetch and where to put it.
- ``featurise(structure)`` and ``collate(items, device, dtype)``: a pymatgen ``Structure`` becomes an
  adapter-specific payload (wrapped in a :class:`Featurised` carrying ``material_id``, ``y`` and ``z``), and a
  list of them becomes one batch object carrying ``.y`` (a ``(B,)`` tensor), ``num_graphs`` and ``material_id``.
  A structure the adapter cannot featurise raises :class:`FeaturiseError`; it is skipped and counted. A
  structure with a partly occupied site is one (:meth:`Adapter.featurise_structure` checks it first).
- ``probe_parameters(model)``: the names of the parameters to probe. ``requires_grad`` is not trusted (CHGNet
  freezes its AtomRef, other packages freeze everything unless loaded for training):
  :func:`set_probe_parameters` makes exactly these trainable, every other parameter frozen.

and describes the model in :class:`ModelInfo` (property, units, dtype, package and weights versions, weights
hash, training data when known). Each adapter validates its own settings with its own Pydantic model
(``Options``; ``traits schema`` exports them).

Each adapter also declares, as class attributes read without loading a model: ``trainable`` (TRAITS trains it
from a spec: ``model.train``), ``checkpoint_formats`` (the ``model.format`` values it reads; empty when it reads
only its own kind of file and ``model.format`` does not apply) and ``options_field`` (the spec field holding its
settings: ``options``, or ``hyper`` for the CGCNN adapters).

For ``traits screen`` an adapter may offer two more things (:meth:`Adapter.scoring_support` says which):
``output_layer(model)``, the names of the weight and bias of a linear output layer the prediction is affine in
(the last-layer Laplace score), and ``embed(model, batch)``, one vector per structure (the kNN distance to
training). :meth:`Adapter.score_features` returns the prediction with both, or None for what is not offered.

Adapters are found by name: the built-ins below, then entry points of the group ``traits.models``
(``[project.entry-points."traits.models"] myadapter = "mypkg.adapter:MyAdapter"``), so a third party adds one
without editing TRAITS. An adapter whose package is missing raises a SpecError saying which ``pip install`` to run.
"""

from __future__ import annotations

import importlib
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from traits.errors import SpecError, TraitsError

if TYPE_CHECKING:  # torch and numpy are imported where they are used: the registry and options load without them
    import numpy as np
    import torch
    from torch import nn

#: Entry-point group third-party adapters register under.
ENTRY_POINT_GROUP = "traits.models"

#: Built-in adapters: name -> "module:Class" (imported only when chosen).
BUILTIN_ADAPTERS: dict[str, str] = {
    "cgcnn": "traits.models.cgcnn_adapter:CGCNNAdapter",
    "cgcnn-original": "traits.models.cgcnn_adapter:CGCNNOriginalAdapter",
    "chgnet": "traits.models.chgnet:CHGNetAdapter",
    "sevenn": "traits.models.sevenn:SevenNetAdapter",
    "alignn": "traits.models.alignn:ALIGNNAdapter",
    "mace": "traits.models.mace:MACEAdapter",
    "torch": "traits.models.torch_module:TorchModuleAdapter",
}

#: The options model of each built-in adapter: name -> "module:Class" in a module that imports no torch, so that
#: ``traits validate`` and ``traits schema`` check and export ``model.options`` without starting torch. The same
#: class is the adapter's ``Options``.
BUILTIN_OPTIONS: dict[str, str] = {
    "cgcnn": "traits.spec:CGCNNHyper",
    "cgcnn-original": "traits.spec:CGCNNHyper",
    "chgnet": "traits.models.options:CHGNetOptions",
    "sevenn": "traits.models.options:SevenNetOptions",
    "alignn": "traits.models.options:ALIGNNOptions",
    "mace": "traits.models.options:MACEOptions",
    "torch": "traits.models.torch_module:TorchModuleOptions",
}

#: The label-free target: the model is scored against its own unperturbed predictions.
MODEL_TARGET = "model"

#: Environment switches that keep model libraries from reaching the network (set before they are imported).
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "WANDB_MODE": "offline", "WANDB_DISABLED": "true"}


class FeaturiseError(TraitsError):
    """A structure the adapter cannot turn into its input (skipped and counted, not fatal)."""


class NotOffered(TraitsError):
    """The adapter does not offer what was asked (an embedding, a linear output layer)."""


class NoOptions(BaseModel):
    """An adapter without settings."""

    model_config = ConfigDict(extra="forbid")


class ModelInfo(BaseModel):
    """What an adapter knows about the model it loaded (recorded in results.json)."""

    model_config = ConfigDict(extra="forbid")

    adapter: str
    property: str | None = None
    units: str | None = None
    dtype: str | None = None
    package: str | None = None
    package_version: str | None = None
    weights: str | None = None
    weights_version: str | None = None
    weights_sha256: str | None = None
    training_data: str | None = None
    n_parameters: int | None = None
    n_probed: int | None = None


@dataclass
class Featurised:
    """One structure as an adapter's input: the payload plus what TRAITS reads (id, target, atomic numbers)."""

    material_id: str
    y: torch.Tensor
    z: torch.Tensor
    payload: Any
    num_atoms: int = 0


@dataclass
class StructureBatch:
    """A collated batch: the adapter's payload and the targets ``y`` ((B,) tensor)."""

    payload: Any
    y: torch.Tensor
    material_id: list[str] = field(default_factory=list)

    @property
    def num_graphs(self) -> int:
        return int(self.y.numel())

    def to(self, device) -> StructureBatch:  # payloads are built on the device by ``collate``
        self.y = self.y.to(device)
        return self


@dataclass
class ScoreFeatures:
    """What the screening scores read for a batch: the predictions ``(B,)``; ``last_layer`` ψ ``(B, h + 1)``,
    the derivatives of each prediction by the weights of the linear output layer and by its bias (a zero column
    when the layer has none), so that a prediction is ψ · (weights, bias) plus a part the layer does not touch;
    ``embedding`` φ ``(B, h)``. None where the adapter does not offer it."""

    prediction: torch.Tensor
    last_layer: torch.Tensor | None = None
    embedding: torch.Tensor | None = None


@runtime_checkable
class ModelAdapter(Protocol):
    """The protocol every adapter implements (see the module docstring)."""

    name: ClassVar[str]
    extra: ClassVar[str | None]
    package: ClassVar[str | None]
    property: ClassVar[str | None]
    units: ClassVar[str | None]
    training_data: ClassVar[str | None]
    Options: ClassVar[type[BaseModel]]

    def load(self, source: str | Path | None, options: BaseModel, device: torch.device) -> nn.Module: ...

    def featurise(self, structure, options: BaseModel) -> Any: ...

    def collate(self, items: Sequence[Featurised], device: torch.device, dtype: torch.dtype) -> Any: ...

    def probe_parameters(self, model: nn.Module) -> list[str]: ...

    def info(self, model: nn.Module, source: str | Path | None, options: BaseModel) -> ModelInfo: ...


class Adapter:
    """Shared behaviour of the adapters; subclasses set the class attributes and implement load/featurise/
    collate (the batch they return must carry ``.y``)."""

    name: ClassVar[str] = ""
    extra: ClassVar[str | None] = None  # the pip extra of traits-audit that installs the package
    package: ClassVar[str | None] = None  # the distribution to import / report the version of
    property: ClassVar[str | None] = None  # None: whatever the checkpoint records
    units: ClassVar[str | None] = None
    training_data: ClassVar[str | None] = None
    bundled: ClassVar[tuple[str, ...]] = ()  # weights names shipped in the package (no file needed)
    checkpoint_folder: ClassVar[bool] = False  # model.checkpoint may name a folder (config + weights)
    Options: ClassVar[type[BaseModel]] = NoOptions
    batch_size: ClassVar[int] = 64
    #: TRAITS trains this model from a spec (``model.train``; ``model.hyper`` applies).
    trainable: ClassVar[bool] = False
    #: The ``model.format`` values the adapter reads; empty: it reads its own kind of file only and
    #: ``model.format`` does not apply.
    checkpoint_formats: ClassVar[tuple[str, ...]] = ()
    #: The spec field holding the adapter's settings (validated by ``Options``): ``options`` or ``hyper``.
    options_field: ClassVar[str] = "options"

    # -- availability ---------------------------------------------------------------------------
    @classmethod
    def require(cls) -> None:
        """Raise a SpecError naming the ``pip install`` to run when the adapter's package is missing."""
        if cls.package is None:
            return
        for key, value in OFFLINE_ENV.items():
            os.environ.setdefault(key, value)
        try:
            importlib.import_module(cls.package.replace("-", "_"))
        except ImportError as exc:
            extra = f"'traits-audit[{cls.extra}]'" if cls.extra else cls.package
            raise SpecError(
                f"model.architecture {cls.name!r} needs the {cls.package!r} package, which is not installed "
                f"({exc}): run `pip install {extra}`"
            ) from None

    @classmethod
    def package_version(cls) -> str | None:
        if cls.package is None:
            return None
        try:
            return importlib_metadata.version(cls.package)
        except importlib_metadata.PackageNotFoundError:
            return None

    # -- defaults -------------------------------------------------------------------------------
    def declared_property(self, options) -> str | None:
        """The property the model predicts (None: recorded in the checkpoint, checked on load)."""
        return self.property

    def probe_parameters(self, model: nn.Module) -> list[str]:
        """Every parameter, whatever its ``requires_grad`` flag."""
        return [name for name, _ in model.named_parameters()]

    def info(self, model: nn.Module, source, options) -> ModelInfo:
        from traits.models.weights import sha256_file

        path = Path(source) if source is not None and Path(str(source)).is_file() else None
        dtype = next((p.dtype for p in model.parameters()), None)
        return ModelInfo(
            adapter=self.name, property=self.property, units=self.units,
            dtype=str(dtype).replace("torch.", "") if dtype is not None else None,
            package=self.package, package_version=self.package_version(),
            weights=str(source) if source is not None else None,
            weights_sha256=sha256_file(path) if path is not None else None,
            training_data=self.training_data,
            n_parameters=sum(p.numel() for p in model.parameters()),
            n_probed=sum(p.numel() for n, p in model.named_parameters() if n in set(self.probe_parameters(model))),
        )

    def featurise_entries(self, entries, options, target_is_model: bool = False) -> tuple[list[Featurised], Counter]:
        """Featurise source entries (``traits.data.sources.Entry``); unreadable or unfeaturisable ones are
        skipped and counted by reason."""
        items: list[Featurised] = []
        skipped: Counter = Counter()
        for entry in entries:
            try:
                structure = entry.structure()
            except ValueError:
                skipped["unreadable structure"] += 1
                continue
            try:
                items.append(self.featurise_structure(entry.id, structure, entry.target, options))
            except FeaturiseError as exc:
                skipped[f"cannot featurise ({str(exc)[:80]})"] += 1
        return items, skipped

    def featurise_structure(self, material_id: str, structure, target: float, options) -> Featurised:
        """The adapter's input for one structure; a partly occupied site raises FeaturiseError naming the site
        and its occupancies before the adapter's featuriser sees it (every adapter needs ordered structures)."""
        import torch

        from traits.data.graphs import check_ordered

        check_ordered(structure, FeaturiseError)
        payload = self.featurise(structure, options)
        z = torch.tensor([site.specie.Z for site in structure], dtype=torch.long)
        return Featurised(str(material_id), torch.tensor(float(target), dtype=torch.float64), z, payload,
                          num_atoms=len(structure))

    def batches(self, items: Sequence[Featurised], device: torch.device, dtype: torch.dtype,
                batch_size: int | None = None) -> list:
        """Pre-collated batches of ``items`` (in order), each carrying ``.y`` in ``dtype``."""
        size = batch_size or self.batch_size
        out = []
        for start in range(0, len(items), size):
            out.append(self.collate(list(items[start:start + size]), device, dtype))
        return out

    def predict(self, model: nn.Module, items: Sequence[Featurised], device: torch.device,
                dtype: torch.dtype | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(ids, predictions, targets) for ``items`` in eval mode, without gradients."""
        import numpy as np
        import torch

        from traits.probes.objective import eval_mode

        dtype = dtype or next(model.parameters()).dtype
        ids, preds, targets = [], [], []
        with torch.no_grad(), eval_mode(model):
            for batch in self.batches(items, device, dtype):
                out = model(batch)
                check_output(out, batch, self.name)
                ids.extend(batch.material_id)
                preds.append(out.detach().to("cpu", torch.float64).reshape(-1))
                targets.append(batch.y.detach().to("cpu", torch.float64).reshape(-1))
        if not preds:
            return [], np.zeros(0), np.zeros(0)
        return ids, torch.cat(preds).numpy(), torch.cat(targets).numpy()


    # -- what the screening scores need (optional) -------------------------------------------------
    def output_layer(self, model: nn.Module) -> tuple[str, str | None] | None:
        """The names (as in ``named_parameters``) of the weight and the bias (None: no bias) of the model's linear
        output layer, when every prediction is affine in them (the last-layer Laplace score of ``traits screen``);
        None when the adapter offers none (the default)."""
        return None

    def embed(self, model: nn.Module, batch) -> torch.Tensor:
        """One vector per structure, ``(B, h)``, for the kNN distance to training: the model's own ``embed`` when
        it has one; otherwise :class:`NotOffered`."""
        own = getattr(model, "embed", None)
        if not callable(own):
            raise NotOffered(f"model {self.name!r} offers no embedding")
        return own(batch)

    def offers_embedding(self, model: nn.Module) -> bool:
        """Whether :meth:`embed` works for ``model`` (an adapter that overrides it, or a model with ``embed``)."""
        return type(self).embed is not Adapter.embed or callable(getattr(model, "embed", None))

    def scoring_support(self, model: nn.Module) -> dict[str, str | None]:
        """For each screening input (``last_layer``, ``embedding``): None when the adapter offers it, otherwise
        why not, in words."""
        return {"last_layer": None if self.output_layer(model) is not None else
                f"the {self.name} adapter names no linear output layer",
                "embedding": None if self.offers_embedding(model) else f"the {self.name} adapter offers no embedding"}

    def score_features(self, model: nn.Module, batch) -> ScoreFeatures:
        """Predictions, last-layer features ψ and embeddings φ of one batch (the model in eval mode); ψ and φ None
        where not offered. ψ comes from one forward with gradients on the output layer only (:func:`output_gradients`),
        φ from :meth:`embed`."""
        import torch

        layer = self.output_layer(model)
        if layer is not None:
            pred, psi = output_gradients(model, batch, *layer, name=self.name)
        else:
            with torch.no_grad():
                pred, psi = model(batch), None
            check_output(pred, batch, self.name)
            pred = pred.reshape(-1)
        phi = None
        if self.offers_embedding(model):
            with torch.no_grad():
                phi = self.embed(model, batch)
        return ScoreFeatures(pred, psi, phi)

    def embedding_width(self, model: nn.Module) -> int | None:
        """The width h of :meth:`embed`'s vectors when known without a forward pass (to check a calibration file
        before reading structures); None: checked after scoring."""
        return None


def output_gradients(model: nn.Module, batch, weight: str, bias: str | None, *,
                     name: str = "model") -> tuple[torch.Tensor, torch.Tensor]:
    """(predictions (B,), ψ (B, n + 1)): one forward
    with gradients on the output layer's ``weight`` (n numbers) and ``bias`` alone (every other parameter frozen
    for it, the flags restored afterwards), then ψ_b = ∂prediction_b / ∂(weight, bias), one backward per structure
    through the few operations after that layer; a zero last column when ``bias`` is None. Unknown names are a
    ProbeError."""
    import torch

    from traits.errors import ProbeError

    params = dict(model.named_parameters())
    unknown = [n for n in (weight, bias) if n is not None and n not in params]
    if unknown:
        raise ProbeError(f"model {name!r}: output layer parameter(s) {', '.join(unknown)} not in the model")
    wanted = [params[weight]] + ([params[bias]] if bias is not None else [])
    flags = {n: p.requires_grad for n, p in params.items()}
    try:
        for n, p in params.items():
            p.requires_grad_(n in (weight, bias))
        with torch.enable_grad():
            out = model(batch)
            check_output(out, batch, name)
            pred = out.reshape(-1)
            rows = []
            for i in range(pred.numel()):
                grads = torch.autograd.grad(pred[i], wanted, retain_graph=i + 1 < pred.numel(), allow_unused=True)
                parts = [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, wanted)]
                if bias is None:
                    parts.append(pred.new_zeros(1))
                rows.append(torch.cat(parts))
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
    width = params[weight].numel() + 1
    psi = torch.stack(rows).detach() if rows else pred.new_zeros((0, width))
    return pred.detach(), psi


def segment_mean(values: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """The mean of each consecutive segment of rows of ``values`` (``counts[b]`` rows for structure b): per-atom
    rows to one row per structure."""
    import torch

    index = torch.repeat_interleave(torch.arange(len(counts), device=values.device),
                                    torch.as_tensor(list(counts), device=values.device))
    total = values.new_zeros((len(counts),) + tuple(values.shape[1:])).index_add_(0, index, values)
    return total / torch.as_tensor(list(counts), dtype=values.dtype, device=values.device).reshape(
        (-1,) + (1,) * (values.dim() - 1))


def check_output(out, batch, name: str) -> None:
    """A forward must return a finite (B,) tensor; anything else is a ProbeError naming the adapter."""
    import torch

    from traits.errors import ProbeError

    n = int(batch.num_graphs) if hasattr(batch, "num_graphs") else None
    if not isinstance(out, torch.Tensor):
        raise ProbeError(f"model {name!r}: forward returned {type(out).__name__}, not a tensor of one value "
                         "per structure")
    if n is not None and (out.numel() != n or out.dim() > 2 or (out.dim() == 2 and out.shape[1] != 1)):
        raise ProbeError(f"model {name!r}: forward returned shape {tuple(out.shape)} for {n} structures; it must "
                         "return one value per structure")
    if not torch.isfinite(out).all():
        raise ProbeError(f"model {name!r}: forward returned NaN or infinite predictions")


def set_probe_parameters(model: nn.Module, names: Sequence[str]) -> list[str]:
    """Make exactly ``names`` trainable (``requires_grad``) and freeze every other parameter; returns the names
    in ``named_parameters`` order. Unknown names are a SpecError."""
    wanted = set(names)
    known = {n for n, _ in model.named_parameters()}
    unknown = sorted(wanted - known)
    if unknown:
        raise SpecError(f"parameters to probe not in the model: {', '.join(unknown[:5])}")
    for n, p in model.named_parameters():
        p.requires_grad_(n in wanted)
    return [n for n, _ in model.named_parameters() if n in wanted]


# ---------------------------------------------------------------------------------------------- registry


def _entry_points() -> dict[str, importlib_metadata.EntryPoint]:
    try:
        eps = importlib_metadata.entry_points(group=ENTRY_POINT_GROUP)
    except TypeError:  # pragma: no cover - Python < 3.10
        eps = importlib_metadata.entry_points().get(ENTRY_POINT_GROUP, [])
    return {ep.name: ep for ep in eps}


def adapter_names() -> list[str]:
    """Every adapter name: the built-ins, then those registered through entry points."""
    return list(BUILTIN_ADAPTERS) + sorted(n for n in _entry_points() if n not in BUILTIN_ADAPTERS)


def adapter_class(name: str) -> type[Adapter]:
    """The adapter class of ``name`` (importable without its package); an unknown name is a SpecError listing the
    installed adapters."""
    target = BUILTIN_ADAPTERS.get(name)
    if target is not None:
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)
    ep = _entry_points().get(name)
    if ep is None:
        raise SpecError(f"unknown model adapter {name!r}; installed adapters: {', '.join(adapter_names())}")
    try:
        cls = ep.load()
    except Exception as exc:  # a third-party adapter that fails to import
        raise SpecError(f"model adapter {name!r} (entry point {ep.value}) cannot be imported: "
                        f"{type(exc).__name__}: {exc}") from None
    return cls


def get_adapter(name: str) -> Adapter:
    """An instance of the adapter ``name``."""
    return adapter_class(name)()


def options_class(name: str) -> type[BaseModel]:
    """The options model of the adapter ``name``: a built-in's from :data:`BUILTIN_OPTIONS` (torch not imported),
    another's ``Options`` (its adapter class imported); an unknown name is a SpecError listing the adapters."""
    target = BUILTIN_OPTIONS.get(name)
    if target is not None:
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)
    return adapter_class(name).Options


def options_schemas() -> dict[str, dict]:
    """Each importable adapter's options JSON schema, by adapter name (for ``traits schema``; the built-ins'
    without importing torch)."""
    out = {}
    for name in adapter_names():
        try:
            out[name] = options_class(name).model_json_schema()
        except SpecError:
            continue
    return out
