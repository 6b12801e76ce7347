"""CHGNet (Deng et al., Nat. Mach. Intell. 5, 1031, 2023) through the adapter seam: energy per atom (eV/atom).

The weights ship in the ``chgnet`` wheel (``options.version``: 0.3.0, 0.2.0 or r2scan); a local checkpoint file
(``model.checkpoint``) is read with ``weights_only`` loading. The forward is called energy-only (``task='e'``), so
CHGNet's internal force/stress autograd never runs; the composition model (AtomRef), which CHGNet freezes, is
probed like every other parameter. Structures become CHGNet's own ``CrystalGraph`` with the model's converter.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from traits.errors import CheckpointError
from traits.models.base import Adapter, Featurised, FeaturiseError, ScoreFeatures, StructureBatch, output_gradients
from traits.models.options import CHGNetOptions


class CHGNetEnergy(nn.Module):
    """``forward(batch)`` -> (B,) CHGNet energies per atom, energy-only (no force autograd).

    The energy is affine in the weights and bias of the last ``nn.Linear`` of CHGNet's readout MLP
    (:meth:`output_layer_name`): per-atom energies summed and divided by the atoms (``mlp_first``), or the crystal
    vector's energy; :meth:`embed` is what that layer reads, averaged over the atoms of each structure."""

    def __init__(self, chgnet: nn.Module):
        super().__init__()
        self.chgnet = chgnet
        self._kept: list | None = None
        layer = self.output_layer_name()
        if layer is not None:
            self.get_submodule(layer).register_forward_pre_hook(self._keep_readout)

    def forward(self, batch: StructureBatch) -> torch.Tensor:
        # CHGNet.forward(graphs, task="e") step by step, with the composition features in the model's dtype
        # (CHGNet casts them to float32, which would stop float64 audits)
        from chgnet.model.model import BatchedGraph

        m = self.chgnet
        batched = BatchedGraph.from_graphs(batch.payload, bond_basis_expansion=m.bond_basis_expansion,
                                           angle_basis_expansion=m.angle_basis_expansion, compute_stress=False)
        energy = m._compute(batched, compute_force=False, compute_stress=False, compute_magmom=False)["e"]
        if m.composition_model is not None:
            feas = m.composition_model._assemble_graphs(batch.payload).to(energy.dtype)
            energy = energy + m.composition_model._get_energy(feas)
        return energy.reshape(-1)

    # -- the readout, for the screening scores ---------------------------------------------------------------
    def output_layer_name(self) -> str | None:
        """The module name (under this wrapper) of the last ``nn.Linear`` of CHGNet's readout MLP, or None."""
        mlp = getattr(self.chgnet, "mlp", None)
        if mlp is None:
            return None
        names = [n for n, mod in mlp.named_modules() if isinstance(mod, nn.Linear)]
        return f"chgnet.mlp.{names[-1]}" if names else None

    def _keep_readout(self, module, args) -> None:
        if self._kept is not None:
            self._kept.append(args[0])

    @contextlib.contextmanager
    def keeping_readout(self):
        """Within the block, the inputs of the output layer in each forward are appended to the list it yields."""
        self._kept = kept = []
        try:
            yield kept
        finally:
            self._kept = None

    def readout(self, features: torch.Tensor, batch: StructureBatch) -> torch.Tensor:
        """(B, h): the output layer's input ``features`` per structure (averaged over its atoms when the MLP runs
        on atoms first)."""
        from traits.models.base import segment_mean

        if not getattr(self.chgnet, "mlp_first", True):
            return features
        return segment_mean(features, [int(g.atomic_number.shape[0]) for g in batch.payload])

    def embed(self, batch: StructureBatch) -> torch.Tensor:
        """(B, h): what the output layer reads, per structure (:meth:`readout`)."""
        with self.keeping_readout() as kept:
            self(batch)
        if not kept:
            raise FeaturiseError("CHGNet's readout MLP was not run")
        return self.readout(kept[-1], batch)


_FLOAT_FIELDS = ("atom_frac_coord", "lattice", "neighbor_image")


def bundled_weights(version: str) -> Path | None:
    """The weights file of a bundled CHGNet ``version`` inside the installed chgnet package
    (``chgnet/pretrained/VERSION/*.pth.tar``), found without importing or downloading anything; None when
    the package is not installed or holds no single such file."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("chgnet")
    except (ImportError, ValueError):
        return None
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    found = [p for root in roots for p in sorted((Path(root) / "pretrained" / version).glob("*.pth.tar"))
             if p.is_file()]
    return found[0] if len(found) == 1 else None


class CHGNetAdapter(Adapter):
    name = "chgnet"
    extra = "chgnet"
    package = "chgnet"
    property = "energy_per_atom"
    units = "eV/atom"
    training_data = "MPtrj (Materials Project relaxation trajectories, CHGNet 0.3.0 / 0.2.0)"
    bundled = ("0.3.0", "0.2.0", "r2scan")
    Options = CHGNetOptions
    batch_size = 32

    def __init__(self) -> None:
        self._converter = None
        self._frozen: set[str] = set()

    def load(self, source, options: CHGNetOptions | None, device: torch.device) -> nn.Module:
        self.require()
        from chgnet.model import CHGNet

        options = options or CHGNetOptions()
        if source is not None and str(source) not in self.bundled:
            from traits.inputs import require_file
            from traits.models.weights import safe_torch_load

            path = require_file(Path(source), "CHGNet checkpoint", CheckpointError)
            raw = safe_torch_load(path)
            if not isinstance(raw, dict) or "model" not in raw or "state_dict" not in raw.get("model", {}):
                raise CheckpointError(f"{path}: not a CHGNet checkpoint (expected {{'model': {{'model_args', "
                                      "'state_dict'}}}} as written by CHGNet's trainer)")
            try:
                with contextlib.redirect_stdout(sys.stderr):  # CHGNet prints a line on loading: not into a CSV
                    model = CHGNet.from_dict(raw["model"])
            except Exception as exc:
                raise CheckpointError(f"{path}: the weights do not fit a CHGNet model "
                                      f"({type(exc).__name__}: {str(exc)[:200]})") from None
        else:
            version = str(source) if source is not None else options.version
            with contextlib.redirect_stdout(sys.stderr):
                model = CHGNet.load(model_name=version, use_device="cpu", verbose=False)
        self._converter = model.graph_converter
        self._frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        self._probe = options.probe
        wrapped = CHGNetEnergy(model).to(device).eval()
        return wrapped

    def probe_parameters(self, model: nn.Module) -> list[str]:
        names = [n for n, _ in model.named_parameters()]
        if getattr(self, "_probe", "all") == "trainable":
            return [n for n in names if n.removeprefix("chgnet.") not in self._frozen]
        return names

    def info(self, model, source, options):
        out = super().info(model, source, options)
        out.weights_version = getattr(model.chgnet, "version", None) or (options.version if options else None)
        if source is None or str(source) in self.bundled:
            version = str(source) if source is not None else (options.version if options else "0.3.0")
            path = bundled_weights(version)
            if path is not None:
                from traits.models.weights import sha256_file

                out.weights = str(path)
                out.weights_sha256 = sha256_file(path)
        return out

    def _graph_converter(self):
        if self._converter is None:
            self.require()
            from chgnet.graph import CrystalGraphConverter

            self._converter = CrystalGraphConverter(atom_graph_cutoff=6, bond_graph_cutoff=3)
        return self._converter

    def featurise(self, structure, options=None):
        try:
            return self._graph_converter()(structure, graph_id=None)
        except Exception as exc:  # CHGNet raises ValueError / RuntimeError for isolated atoms and the like
            raise FeaturiseError(f"{type(exc).__name__}: {str(exc)[:60]}") from None

    def collate(self, items: Sequence[Featurised], device: torch.device, dtype: torch.dtype) -> StructureBatch:
        graphs = []
        for item in items:
            g = item.payload
            if any(getattr(g, f).dtype != dtype for f in _FLOAT_FIELDS) or str(device) != "cpu":
                g = g.to(device)
                for f in _FLOAT_FIELDS:
                    setattr(g, f, getattr(g, f).to(dtype))
            for f in _FLOAT_FIELDS:  # CHGNet's converter marks coordinates for force autograd: energy only here
                if getattr(g, f).requires_grad:
                    setattr(g, f, getattr(g, f).detach())
            graphs.append(g)
        y = torch.stack([item.y for item in items]).to(device=device, dtype=dtype)
        return StructureBatch(graphs, y, [item.material_id for item in items])

    # -- screening: the linear output layer of the readout MLP, and what it reads ----------------------------
    def output_layer(self, model: nn.Module) -> tuple[str, str | None] | None:
        layer = model.output_layer_name() if isinstance(model, CHGNetEnergy) else None
        if layer is None:
            return None
        return f"{layer}.weight", (f"{layer}.bias" if model.get_submodule(layer).bias is not None else None)

    def embedding_width(self, model: nn.Module) -> int | None:
        layer = model.output_layer_name() if isinstance(model, CHGNetEnergy) else None
        return int(model.get_submodule(layer).in_features) if layer is not None else None

    def score_features(self, model: nn.Module, batch) -> ScoreFeatures:
        """One forward: predictions, ψ (:func:`~traits.models.base.output_gradients`) and φ, the output layer's
        input averaged over each structure's atoms (:meth:`CHGNetEnergy.readout`)."""
        layer = self.output_layer(model)
        if layer is None:
            return super().score_features(model, batch)
        with model.keeping_readout() as kept:
            pred, psi = output_gradients(model, batch, *layer, name=self.name)
        return ScoreFeatures(pred, psi, model.readout(kept[-1].detach(), batch))
