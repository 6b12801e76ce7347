"""MACE (Batatia et al., NeurIPS 2022) through the adapter seam: energy per atom (eV/atom), from a local model.

A MACE model file (``*.model``, as MACE's trainer and the MACE-MP foundation models ship them) is a whole pickled
module: unpickling it runs code named in the file (e3nn even compiles generated source when it is unpickled).
TRAITS never does that while auditing. A MACE model is audited from a folder holding ``mace-config.json`` (the
constructor arguments of ``ScaleShiftMACE``: numbers, strings and the names of MACE's own interaction/readout
classes and gates, nothing importable by path) beside ``weights.safetensors``. :func:`export` writes that folder from
a model object, and ``traits export-mace MODEL_FILE FOLDER`` from a model file; that one step unpickles the file, so
run it once, on a file you trust.

``mace-torch`` pins e3nn 0.4.4 while ``sevenn`` needs e3nn >= 0.5: install ``traits-audit[mace]`` in its own
environment (``.ci/run`` tests it in a second one). Importing mace sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` for the
whole process; the adapter puts the variable back as it was, and TRAITS passes ``weights_only=True`` explicitly
anyway. The forward is energy-only (``compute_force=False``), on a shallow copy of the batch dictionary.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from traits.errors import CheckpointError, SpecError, TraitsError
from traits.models.base import Adapter, Featurised, FeaturiseError, StructureBatch
from traits.models.options import MACEOptions

CONFIG_NAME = "mace-config.json"
WEIGHTS_NAME = "weights.safetensors"
FORMAT = "traits-mace-1"

_CLASS_KEYS = {"interaction_cls": "interaction_classes", "interaction_cls_first": "interaction_classes",
               "readout_cls": "readout_classes"}
_IRREPS_KEYS = ("hidden_irreps", "MLP_irreps", "edge_irreps")
_ARRAY_KEYS = ("atomic_energies", "atomic_inter_scale", "atomic_inter_shift")


@contextlib.contextmanager
def _keep_weights_only_switch():
    """mace sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 when imported: put the variable back as it was."""
    before = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = before


#: How to get mace-torch (the ``mace`` extra of pyproject.toml), named wherever it is missing.
INSTALL = ("`pip install 'traits-audit[mace]'` (in its own environment: mace-torch pins e3nn 0.4.4, which sevenn "
           "cannot use)")


def _import_mace():
    """(mace.modules, mace.data, mace.tools.torch_geometric, mace.tools.utils), imported without leaving mace's
    process-wide switch off weights-only loading behind."""
    with _keep_weights_only_switch():
        import mace.modules as modules
        from mace import data as mace_data
        from mace.tools import torch_geometric, utils
    return modules, mace_data, torch_geometric, utils


def _encode(config: dict) -> dict:
    """MACE's constructor arguments as JSON: irreps as strings, classes and gates by their names in MACE's tables."""
    modules = _import_mace()[0]
    out = {}
    for key, value in config.items():
        if key in _CLASS_KEYS:
            table = getattr(modules, _CLASS_KEYS[key])
            names = [n for n, cls in table.items() if cls is value]
            if not names:
                raise CheckpointError(f"MACE {key} {getattr(value, '__name__', value)!r} is not in "
                                      f"mace.modules.{_CLASS_KEYS[key]}")
            out[key] = names[0]
        elif key == "gate":
            names = [n for n, fn in modules.gate_dict.items() if fn is value]
            if not names:
                raise CheckpointError(f"MACE gate {value!r} is not in mace.modules.gate_dict")
            out[key] = names[0]
        elif key in _IRREPS_KEYS:
            out[key] = None if value is None else str(value)
        elif isinstance(value, (np.ndarray, torch.Tensor)):
            out[key] = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value).tolist()
        elif isinstance(value, (np.floating, np.integer)):
            out[key] = value.item()
        else:
            out[key] = value
    json.dumps(out)  # every value must be JSON (a TypeError names the one that is not)
    return out


def _decode(config: dict) -> dict:
    from e3nn import o3

    modules = _import_mace()[0]
    out = dict(config)
    for key, table_name in _CLASS_KEYS.items():
        if key in out:
            table = getattr(modules, table_name)
            if out[key] not in table:
                raise CheckpointError(f"{CONFIG_NAME}: {key} {out[key]!r} is not one of MACE's "
                                      f"({', '.join(table)})")
            out[key] = table[out[key]]
    if "gate" in out:
        if str(out["gate"]) not in modules.gate_dict:
            raise CheckpointError(f"{CONFIG_NAME}: gate {out['gate']!r} is not one of {', '.join(modules.gate_dict)}")
        out["gate"] = modules.gate_dict[str(out["gate"])]
    for key in _IRREPS_KEYS:
        if out.get(key) is not None:
            out[key] = o3.Irreps(out[key])
    for key in _ARRAY_KEYS:
        if key in out:
            out[key] = np.asarray(out[key], dtype=np.float64)
    return out


def export(model: nn.Module, folder: str | Path, training_data: str | None = None) -> Path:
    """Write ``model`` (a ``ScaleShiftMACE`` object) as ``folder/mace-config.json`` + ``folder/weights.safetensors``,
    the form the ``mace`` adapter audits. Returns the folder."""
    from safetensors.torch import save as safetensors_bytes

    from traits.files import write_bytes_atomic, write_text_atomic

    MACEAdapter.require()
    with _keep_weights_only_switch():
        from mace.tools.scripts_utils import extract_config_mace_model
    if model.__class__.__name__ != "ScaleShiftMACE":
        raise SpecError(f"export: a ScaleShiftMACE model is needed, not {model.__class__.__name__}")
    config = extract_config_mace_model(model)
    if "error" in config:
        raise SpecError(f"export: {config['error']}")
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    body = {"format": FORMAT, "class": "ScaleShiftMACE", "dtype": dtype, "training_data": training_data,
            "mace_version": MACEAdapter.package_version(), "config": _encode(config)}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    write_bytes_atomic(folder / WEIGHTS_NAME, safetensors_bytes(state))
    write_text_atomic(folder / CONFIG_NAME, json.dumps(body, indent=1) + "\n")
    return folder


def export_file(model_file: str | Path, folder: str | Path, training_data: str | None = None) -> Path:
    """Unpickle the MACE model file ``model_file`` (this RUNS CODE from the file: only for a file you trust) and
    :func:`export` it to ``folder``."""
    from traits.inputs import require_file

    try:
        _import_mace()
    except ImportError as exc:
        raise TraitsError(f"traits export-mace needs the 'mace-torch' package, which is not installed ({exc}): "
                          f"{INSTALL}") from None
    path = require_file(Path(model_file), "MACE model file", CheckpointError)
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot be read as a MACE model ({type(exc).__name__}: {str(exc)[:200]})") \
            from None
    return export(model, folder, training_data)


def _foundation_message(name: str) -> str | None:
    try:
        with _keep_weights_only_switch():
            from mace.calculators.foundations_models import mace_mp_urls
    except Exception:
        return None
    url = mace_mp_urls.get(name)
    if url is None:
        return None
    return (f"MACE foundation model {name!r} is not shipped with mace-torch and TRAITS never downloads weights: "
            f"download {url}, convert it once with `traits export-mace <downloaded file> <folder>` (this unpickles "
            "the file: do it for a file you trust) and name the folder in model.checkpoint")


class MACEEnergy(nn.Module):
    """``forward(batch)`` -> (B,) MACE energies divided by the atoms of each structure, energy only."""

    def __init__(self, mace: nn.Module):
        super().__init__()
        self.mace = mace

    def forward(self, batch: StructureBatch) -> torch.Tensor:
        out = self.mace(dict(batch.payload), training=False, compute_force=False, compute_virials=False,
                        compute_stress=False)
        energy = out["energy"].reshape(-1)
        return energy / batch.num_atoms.to(energy.dtype)


class MACEAdapter(Adapter):
    name = "mace"
    extra = "mace"
    package = "mace-torch"
    property = "energy_per_atom"
    units = "eV/atom"
    Options = MACEOptions
    checkpoint_folder = True
    batch_size = 16

    def __init__(self) -> None:
        self._body: dict | None = None
        self._options = MACEOptions()

    @classmethod
    def require(cls) -> None:
        """The distribution is mace-torch, the import name mace."""
        from traits.models.base import OFFLINE_ENV

        for key, value in OFFLINE_ENV.items():
            os.environ.setdefault(key, value)
        try:
            _import_mace()
        except ImportError as exc:
            raise SpecError(f"model.architecture 'mace' needs the 'mace-torch' package, which is not installed "
                            f"({exc}): run {INSTALL}") from None

    def load(self, source, options: MACEOptions | None, device: torch.device) -> nn.Module:
        from traits.inputs import check_fits, file_size
        from traits.models.weights import load_state_file, load_weights

        self.require()
        self._options = options or MACEOptions()
        if source is None:
            raise CheckpointError(f"model 'mace' needs model.checkpoint: a folder with {CONFIG_NAME} and "
                                  f"{WEIGHTS_NAME} (write one with `traits export-mace MODEL_FILE FOLDER`)")
        path = Path(source)
        if not path.exists():
            message = _foundation_message(str(source))
            if message:
                raise CheckpointError(message)
            raise CheckpointError(f"{path}: no such MACE model folder")
        if path.is_file():
            if path.name == CONFIG_NAME or path.suffix == ".safetensors":
                path = path.parent
            else:
                raise CheckpointError(
                    f"{path}: a pickled MACE model file; loading it would run code from the file, which TRAITS never "
                    "does. Convert it once with `traits export-mace "
                    f"{path} <folder>` (only for a file you trust) and name the folder in model.checkpoint")
        config_path, weights = path / CONFIG_NAME, path / WEIGHTS_NAME
        for needed in (config_path, weights):
            if not needed.is_file():
                raise CheckpointError(f"{path}: no {needed.name} in the MACE model folder (write the folder with "
                                      "`traits export-mace MODEL_FILE FOLDER`)")
        check_fits(config_path, file_size(config_path), "MACE config", CheckpointError)
        try:
            body = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{config_path}: not readable JSON ({type(exc).__name__}: {str(exc)[:120]})") \
                from None
        if not isinstance(body, dict) or body.get("format") != FORMAT or not isinstance(body.get("config"), dict):
            raise CheckpointError(f"{config_path}: not a TRAITS MACE config (format {FORMAT!r}, written by "
                                  "`traits export-mace`)")
        modules = _import_mace()[0]
        try:
            model = modules.ScaleShiftMACE(**_decode(body["config"]))
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"{config_path}: the settings do not build a ScaleShiftMACE "
                                  f"({type(exc).__name__}: {str(exc)[:200]})") from None
        dtype = getattr(torch, str(body.get("dtype", "float64")), None)
        if not isinstance(dtype, torch.dtype):
            raise CheckpointError(f"{config_path}: unknown dtype {body.get('dtype')!r}")
        model = model.to(dtype)
        load_weights(model, load_state_file(weights), weights)
        self._body, self._weights = body, weights
        heads = list(body["config"].get("heads") or ["Default"])
        if self._options.head is not None and self._options.head not in heads:
            raise SpecError(f"model.options.head {self._options.head!r} is not a head of this model "
                            f"({', '.join(heads)})")
        self._heads = heads
        self._z_table = [int(z) for z in body["config"]["atomic_numbers"]]
        self._r_max = float(body["config"]["r_max"])
        return MACEEnergy(model).to(device).eval()

    def info(self, model, source, options):
        out = super().info(model, getattr(self, "_weights", source), options)
        body = self._body or {}
        out.training_data = self._options.training_data or body.get("training_data")
        out.weights = str(getattr(self, "_weights", source))
        out.weights_version = f"mace-torch {body['mace_version']}" if body.get("mace_version") else None
        return out

    def featurise(self, structure, options=None):
        if self._body is None:
            raise FeaturiseError("load the model before featurising (the cutoff comes from the model)")
        from pymatgen.io.ase import AseAtomsAdaptor

        _, mace_data, _, utils = _import_mace()
        missing = sorted({site.specie.symbol for site in structure if site.specie.Z not in self._z_table})
        if missing:
            raise FeaturiseError(f"elements the model has no embedding for: {', '.join(missing)}")
        head = self._options.head or self._heads[0]
        try:
            atoms = AseAtomsAdaptor.get_atoms(structure)
            config = mace_data.config_from_atoms(atoms, head_name=head)
            return mace_data.AtomicData.from_config(config, z_table=utils.AtomicNumberTable(self._z_table),
                                                    cutoff=self._r_max, heads=self._heads)
        except Exception as exc:
            raise FeaturiseError(f"{type(exc).__name__}: {str(exc)[:60]}") from None

    def collate(self, items: Sequence[Featurised], device: torch.device, dtype: torch.dtype) -> StructureBatch:
        _, _, torch_geometric, _ = _import_mace()
        batch = torch_geometric.batch.Batch.from_data_list([item.payload for item in items]).to(device)
        payload = batch.to_dict()
        for key, value in payload.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                payload[key] = value.to(dtype)
        y = torch.stack([item.y for item in items]).to(device=device, dtype=dtype)
        out = StructureBatch(payload, y, [item.material_id for item in items])
        out.num_atoms = torch.tensor([item.num_atoms for item in items], device=device)
        return out
