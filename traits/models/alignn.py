"""ALIGNN (Choudhary & DeCost, npj Comput. Mater. 7, 185, 2021) through the adapter seam, on the ``alignn``
package's DGL-free model (``ALIGNNAtomWisePure``, alignn 2026 and later).

An ALIGNN model is a folder as alignn's trainer and its pretrained-model archives write it: ``config.json`` (the
training settings, with the model's hyper-parameters under ``model``) beside ``best_model.pt`` (a state dict) or
``weights.safetensors``. ``model.checkpoint`` names the folder or the weights file in it. The weights are read
weights-only (never unpickled into code) and loaded strictly into a model built from ``config.json``; alignn's own
loader reads the file with ``weights_only=False``, which TRAITS never does. No pretrained model ships in the
``alignn`` wheel and TRAITS never downloads one: a missing folder is an error naming the file to fetch.

The property is read from ``config.json`` (``target``: e.g. ``formation_energy_peratom`` is formation energy per
atom in eV/atom; ``optb88vdw_bandgap`` / ``mbj_bandgap`` are band gaps in eV) or set with ``options.property``.
The graph is alignn's own (``build_pure_torch_graph`` with the model's cutoff, neighbour cap and atom features).
Predictions are alignn's ``out`` head; no force autograd runs (``calculate_gradient`` is switched off, and for a
force-field model the parameter-free ZBL term alignn adds to its per-atom energy is added the same way).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from traits.errors import CheckpointError
from traits.models.base import Adapter, Featurised, FeaturiseError, StructureBatch
from traits.models.options import ALIGNNOptions

#: ALIGNN / JARVIS target names -> (TRAITS property, units).
TARGETS = {
    "formation_energy_peratom": ("formation_energy_per_atom", "eV/atom"),
    "e_form": ("formation_energy_per_atom", "eV/atom"),
    "formation_energy_per_atom": ("formation_energy_per_atom", "eV/atom"),
    "optb88vdw_bandgap": ("band_gap", "eV"),
    "mbj_bandgap": ("band_gap", "eV"),
    "gap pbe": ("band_gap", "eV"),
    "band_gap": ("band_gap", "eV"),
    "energy_per_atom": ("energy_per_atom", "eV/atom"),
    "optb88vdw_total_energy": ("energy_per_atom", "eV/atom"),
}

#: ALIGNN dataset names -> what the model was trained on.
DATASETS = {
    "dft_3d": "JARVIS-DFT 3D (dft_3d)",
    "dft_2d": "JARVIS-DFT 2D (dft_2d)",
    "megnet": "Materials Project (MEGNet 2018 snapshot, megnet)",
    "mp_3d_2020": "Materials Project (2020 snapshot, mp_3d_2020)",
}

_MODEL_NAMES = ("alignn_atomwise_pure", "alignn_atomwise")


def _alignn_folder(source) -> tuple[Path, Path]:
    """(config.json, weights file) of an ALIGNN model folder or of a weights file inside one."""
    from traits.inputs import require_file

    if source is None:
        raise CheckpointError(
            "model 'alignn' needs model.checkpoint: a folder with config.json and best_model.pt (or "
            "weights.safetensors). No ALIGNN weights ship with the alignn package and TRAITS never downloads any: "
            "download a pretrained model archive (e.g. from alignn's model list, alignn.pretrained.ALIGNN2_MODELS, "
            "whose 'url' field gives the figshare file), unzip it and name the folder")
    path = Path(source)
    if path.is_dir():
        folder = path
        candidates = [folder / "weights.safetensors", folder / "best_model.pt"]
        weights = next((c for c in candidates if c.is_file()), None)
        if weights is None:
            raise CheckpointError(f"{folder}: no best_model.pt or weights.safetensors in the ALIGNN model folder")
    else:
        weights = require_file(path, "ALIGNN weights file", CheckpointError)
        folder = weights.parent
    config = folder / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{folder}: no config.json beside the ALIGNN weights (alignn writes the model's "
                              "hyper-parameters there; they are needed to build the model)")
    return config, weights


def _read_config(path: Path) -> dict:
    from traits.inputs import check_fits, file_size

    check_fits(path, file_size(path), "ALIGNN config", CheckpointError)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable JSON file ({type(exc).__name__}: {str(exc)[:120]})") \
            from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{path}: not an ALIGNN config (no 'model' section with the hyper-parameters)")
    return config


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    from traits.models.weights import load_state_file, safe_torch_load

    if path.suffix == ".safetensors":
        return load_state_file(path)
    raw = safe_torch_load(path)
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict):  # alignn's trainer checkpoints
        raw = raw["model"]
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in raw.items()):
        raise CheckpointError(f"{path}: not an ALIGNN state dict (a mapping of parameter names to tensors)")
    return raw


def build_model(config: dict) -> nn.Module:
    """The DGL-free ALIGNN of ``config`` (alignn's config.json contents), energy/property head only."""
    from alignn.models.alignn_atomwise_pure import ALIGNNAtomWisePure, ALIGNNAtomWisePureConfig

    mcfg = dict(config["model"])
    name = mcfg.get("name", "alignn_atomwise_pure")
    if name not in _MODEL_NAMES:
        raise CheckpointError(
            f"ALIGNN model {name!r} is not supported: the adapter builds alignn's DGL-free model "
            f"({', '.join(_MODEL_NAMES)}); the DGL-based 'alignn' class needs the dgl package and a checkpoint "
            "retrained or converted for the pure-PyTorch model")
    mcfg["name"] = "alignn_atomwise_pure"
    was_force_field = bool(mcfg.get("calculate_gradient", True)) and float(mcfg.get("gradwise_weight", 1.0)) != 0
    try:
        model = ALIGNNAtomWisePure(ALIGNNAtomWisePureConfig(**mcfg))
    except Exception as exc:
        raise CheckpointError(f"ALIGNN config: the hyper-parameters do not build a model "
                              f"({type(exc).__name__}: {str(exc)[:200]})") from None
    model._traits_force_field = was_force_field
    return model


class ALIGNNProperty(nn.Module):
    """``forward(batch)`` -> (B,) ALIGNN predictions (its ``out`` head), no force autograd."""

    def __init__(self, alignn: nn.Module, force_field: bool):
        super().__init__()
        self.alignn = alignn
        self.force_field = force_field
        self._embedding = None
        alignn.fc.register_forward_pre_hook(self._keep_embedding)

    def _keep_embedding(self, module, args):
        self._embedding = args[0]

    def forward(self, batch: StructureBatch) -> torch.Tensor:
        g, lg, lat = batch.payload
        cfg = self.alignn.config
        gradient, cfg.calculate_gradient = cfg.calculate_gradient, False
        try:
            out = self.alignn([g, lg, lat])["out"]
        finally:
            cfg.calculate_gradient = gradient
        out = out.reshape(-1)
        if self.force_field and getattr(self.alignn, "use_zbl", False) and "Z" in g.ndata:
            # the parameter-free ZBL repulsion alignn adds to a force field's per-atom energy, structure by
            # structure (alignn's zbl_edge_energy sums over the edges it is given)
            from alignn.models.alignn_atomwise_pure import zbl_edge_energy

            bond = torch.norm(g.edata["r"], dim=1)
            z = g.ndata["Z"].to(bond.dtype)
            zi, zj = z.index_select(0, g.src), z.index_select(0, g.dst)
            counts = (g.batch_num_edges.tolist() if g.batch_num_edges is not None else [int(bond.numel())])
            extra, start = [], 0
            for n_edges in counts:
                sl = slice(start, start + int(n_edges))
                extra.append(zbl_edge_energy(zi[sl], zj[sl], bond[sl], self.alignn.zbl_cutoff))
                start += int(n_edges)
            out = out + torch.stack(extra).to(out.dtype) / batch.num_atoms.to(out.dtype)
        return out

    def embed(self, batch: StructureBatch) -> torch.Tensor:
        self.forward(batch)
        return self._embedding


class ALIGNNAdapter(Adapter):
    name = "alignn"
    extra = "alignn"
    package = "alignn"
    property = None  # read from config.json (or options.property)
    units = None
    Options = ALIGNNOptions
    checkpoint_folder = True
    batch_size = 32

    def __init__(self) -> None:
        self._config: dict | None = None
        self._options = ALIGNNOptions()

    def declared_property(self, options) -> str | None:
        return options.property if options is not None else None

    def _target(self) -> tuple[str | None, str | None]:
        opts = self._options
        name = (self._config or {}).get("target")
        mapped = TARGETS.get(str(name)) if name is not None else None
        prop = opts.property or (mapped[0] if mapped else None)
        units = opts.units or (mapped[1] if mapped and prop == mapped[0] else None)
        if units is None and prop is not None:
            from traits.spec import TARGET_UNITS

            units = TARGET_UNITS.get(prop)
        return prop, units

    def load(self, source, options: ALIGNNOptions | None, device: torch.device) -> nn.Module:
        from traits.models.weights import load_weights

        self.require()
        self._options = options or ALIGNNOptions()
        config_path, weights = _alignn_folder(source)
        config = _read_config(config_path)
        trained_on = TARGETS.get(str(config.get("target")))
        if self._options.property and trained_on and trained_on[0] != self._options.property:
            raise CheckpointError(f"{config_path}: the model was trained on {config['target']!r} "
                                  f"({trained_on[0]}), not {self._options.property}")
        model = build_model(config)
        load_weights(model, _state_dict(weights), weights)
        self._config, self._weights = config, weights
        return ALIGNNProperty(model, model._traits_force_field).to(device).eval()

    def info(self, model, source, options):
        out = super().info(model, getattr(self, "_weights", source), options)
        out.property, out.units = self._target()
        dataset = (self._config or {}).get("dataset")
        out.training_data = self._options.training_data or DATASETS.get(str(dataset))
        out.weights = str(getattr(self, "_weights", source))
        out.weights_version = (self._config or {}).get("version")
        return out

    def _graph_settings(self) -> tuple[float, int, str]:
        if self._config is None:
            raise FeaturiseError("load the model before featurising (the graph settings come from its config)")
        cfg, opts = self._config, self._options
        cutoff = float(opts.cutoff or cfg.get("cutoff", 8.0))
        max_neighbors = int(opts.max_neighbors or cfg.get("max_neighbors", 12))
        features = cfg.get("atom_features")
        if not features:
            features = "atomic_number" if int(cfg["model"].get("atom_input_features", 92)) == 1 else "cgcnn"
        return cutoff, max_neighbors, str(features)

    def featurise(self, structure, options=None):
        from alignn.torch_graph_builder import build_pure_torch_graph
        from jarvis.core.atoms import Atoms

        cutoff, max_neighbors, features = self._graph_settings()
        try:
            atoms = Atoms(lattice_mat=structure.lattice.matrix, coords=structure.frac_coords,
                          elements=[site.specie.symbol for site in structure], cartesian=False)
            with torch.no_grad():
                g, lg = build_pure_torch_graph(atoms=atoms, two_body_cutoff=cutoff, max_neighbors=max_neighbors,
                                               atom_features=features, compute_line_graph=True)
            lat = torch.as_tensor(atoms.lattice_mat, dtype=torch.get_default_dtype())
        except Exception as exc:
            raise FeaturiseError(f"{type(exc).__name__}: {str(exc)[:60]}") from None
        if g.num_edges == 0:
            raise FeaturiseError(f"no neighbours within {cutoff} Å")
        return g, lg, lat

    def collate(self, items: Sequence[Featurised], device: torch.device, dtype: torch.dtype) -> StructureBatch:
        from alignn.torch_graph_builder import batch_torch_graph_pairs

        g, lg = batch_torch_graph_pairs([(item.payload[0], item.payload[1]) for item in items])
        lat = torch.stack([item.payload[2] for item in items])
        for graph in (g, lg):
            for data in (graph.ndata, graph.edata):
                for key, value in list(data.items()):
                    if isinstance(value, torch.Tensor) and value.is_floating_point():
                        data[key] = value.to(dtype)
        g, lg = g.to(device), lg.to(device)
        y = torch.stack([item.y for item in items]).to(device=device, dtype=dtype)
        out = StructureBatch((g, lg, lat.to(device=device, dtype=dtype)), y, [item.material_id for item in items])
        out.num_atoms = torch.tensor([item.num_atoms for item in items], device=device)
        return out
