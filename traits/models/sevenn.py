"""SevenNet (Park et al., J. Chem. Theory Comput. 20, 4857, 2024) through the adapter seam: total energy divided by
the number of atoms (eV/atom).

SevenNet-0 (11 July 2024) ships in the ``sevenn`` wheel (``options.model``: 7net-0); other pretrained models and
local checkpoints are read from files. Checkpoints are loaded with ``torch.load(weights_only=True)`` (numpy arrays
allowed), never by unpickling code. The force output is removed and no input needs gradients (energy only), and
the forward works on a clone of the input batch, which SevenNet's modules write into.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from traits.errors import CheckpointError
from traits.models.base import (
    Adapter,
    Featurised,
    FeaturiseError,
    ScoreFeatures,
    StructureBatch,
    output_gradients,
    segment_mean,
)
from traits.models.options import SevenNetOptions


def _numpy_globals() -> list:
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    allowed = [(core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
               (core.multiarray._reconstruct, "numpy._core.multiarray._reconstruct"),
               (core.multiarray.scalar, "numpy.core.multiarray.scalar"),
               (core.multiarray.scalar, "numpy._core.multiarray.scalar"), np.ndarray, np.dtype]
    for code in "?bBhHiIlLqQefdgFDG":
        allowed.append(type(np.dtype(code)))
    return allowed


@contextlib.contextmanager
def _weights_only_loading(path: Path):
    """Make SevenNet's checkpoint reader load ``path`` weights-only (numpy arrays allowed, no code)."""
    import sevenn.checkpoint as sc

    from traits.models.weights import safe_torch_load

    original = sc.torch_load

    def load(p, *args, **kwargs):
        return safe_torch_load(Path(p), extra_globals=_numpy_globals())

    sc.torch_load = load
    try:
        yield
    finally:
        sc.torch_load = original


class SevenNetEnergy(nn.Module):
    """``forward(batch)`` -> (B,) SevenNet total energies divided by the atoms of each structure."""

    def __init__(self, sevennet: nn.Module):
        super().__init__()
        self.sevennet = sevennet
        onehot = sevennet._modules.get("onehot_idx_to_onehot")
        if onehot is not None:  # SevenNet casts its one-hot features to float32; follow the model's dtype
            onehot.register_forward_hook(self._onehot_dtype)

    def _onehot_dtype(self, module, args, data):
        dtype = next(self.sevennet.parameters()).dtype
        for key in {module.key_output, module.key_additional_output} - {None}:
            if data[key].dtype != dtype:
                data[key] = data[key].to(dtype)
        return data

    def forward(self, batch: StructureBatch) -> torch.Tensor:
        import sevenn._keys as KEY

        data = batch.payload.clone()  # SevenNet's modules write their outputs into the batch
        out = self.sevennet(data)
        energy = out[KEY.PRED_TOTAL_ENERGY].reshape(-1)
        return energy / batch.num_atoms.to(energy.dtype)

    # -- the readout, for the screening scores ---------------------------------------------------------------
    #: The linear layer from the per-atom hidden features to the atomic energies (before the per-species scale
    #: and shift and the sum): the energy per atom is linear in its weights.
    OUTPUT_LAYER = "reduce_hidden_to_energy"

    def output_layer_name(self) -> str | None:
        """The module name (under this wrapper) of the e3nn linear layer the energy is linear in, or None."""
        layer = self.sevennet._modules.get(self.OUTPUT_LAYER)
        return f"sevennet.{self.OUTPUT_LAYER}.linear" if getattr(layer, "linear", None) is not None else None

    @contextlib.contextmanager
    def keeping_readout(self):
        """Within the block, the per-atom features the output layer reads in each forward are appended to the
        list it yields."""
        kept: list = []
        layer = self.sevennet._modules[self.OUTPUT_LAYER]
        handle = layer.register_forward_hook(lambda module, args, out: kept.append(out[module.key_input]))
        try:
            yield kept
        finally:
            handle.remove()

    def embed(self, batch: StructureBatch) -> torch.Tensor:
        """(B, h): the per-atom features the output layer reads, averaged over each structure's atoms."""
        with self.keeping_readout() as kept:
            self(batch)
        return segment_mean(kept[-1], batch.num_atoms.tolist())


class SevenNetAdapter(Adapter):
    name = "sevenn"
    extra = "sevenn"
    package = "sevenn"
    property = "energy_per_atom"
    units = "eV/atom"
    training_data = "MPtrj (Materials Project relaxation trajectories; SevenNet-0)"
    bundled = ("7net-0",)
    Options = SevenNetOptions
    batch_size = 16

    def __init__(self) -> None:
        self._cutoff: float | None = None

    def _checkpoint_path(self, source, options: SevenNetOptions) -> Path:
        if source is not None and str(source) not in ("7net-0", "sevennet-0"):
            from traits.inputs import require_file

            return require_file(Path(source), "SevenNet checkpoint", CheckpointError)
        name = str(source) if source is not None else options.model
        import sevenn._const as const
        from sevenn.util import pretrained_name_to_path

        try:
            return Path(pretrained_name_to_path(name))
        except ValueError:
            raise CheckpointError(f"unknown SevenNet pretrained model {name!r}") from None
        except Exception:  # the file is not there and SevenNet would download it: refuse instead
            from sevenn import util as su

            mapping = {"7net-l3i5": "SEVENNET_l3i5", "7net-mf-ompa": "SEVENNET_MF_ompa",
                       "7net-omat": "SEVENNET_omat", "7net-omni": "SEVENNET_omni"}
            local = getattr(const, mapping.get(name.lower(), ""), None)
            url = const.CHECKPOINT_DOWNLOAD_LINKS.get(local) if local else None
            del su
            raise CheckpointError(
                f"SevenNet model {name!r} is not on this machine and TRAITS never downloads weights: download "
                f"{url or 'its checkpoint'} and put it at {local or '~/.cache/sevennet/'} (or name the file in "
                "model.checkpoint)") from None

    def load(self, source, options: SevenNetOptions | None, device: torch.device) -> nn.Module:
        self.require()
        import sevenn.checkpoint as sc

        options = options or SevenNetOptions()
        path = self._checkpoint_path(source, options)
        self._path = path
        try:
            with _weights_only_loading(path):
                cp = sc.SevenNetCheckpoint(str(path))
                model = cp.build_model()
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"{path}: not a SevenNet checkpoint ({type(exc).__name__}: {str(exc)[:200]})") \
                from None
        if options.modal is not None:
            model.prepare_modal_deploy(options.modal)
        if "force_output" in model._modules:
            model.delete_module_by_key("force_output")
        model.key_grad = None  # energy only: no input needs a gradient
        edge = model._modules.get("edge_embedding")
        if edge is not None and hasattr(edge, "is_stress"):
            edge.is_stress = False
        model.set_is_batch_data(True)
        self._cutoff = float(model.cutoff)
        self._version = cp.config.get("version")
        return SevenNetEnergy(model).to(device).eval()

    def info(self, model, source, options):
        out = super().info(model, getattr(self, "_path", source), options)
        out.weights = str(getattr(self, "_path", source))
        out.weights_version = (options.model if options else "7net-0") + (
            f" (sevenn {self._version})" if getattr(self, "_version", None) else "")
        return out

    def featurise(self, structure, options=None):
        if self._cutoff is None:
            raise FeaturiseError("load the model before featurising (the cutoff comes from the checkpoint)")
        from pymatgen.io.ase import AseAtomsAdaptor
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph

        try:
            atoms = AseAtomsAdaptor.get_atoms(structure)
            return AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(atoms, self._cutoff, with_shift=False))
        except Exception as exc:
            raise FeaturiseError(f"{type(exc).__name__}: {str(exc)[:60]}") from None

    def collate(self, items: Sequence[Featurised], device: torch.device, dtype: torch.dtype) -> StructureBatch:
        from torch_geometric.data import Batch

        batch = Batch.from_data_list([item.payload for item in items])
        for key in batch.keys():
            value = batch[key]
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                batch[key] = value.to(dtype)
        batch = batch.to(device)
        y = torch.stack([item.y for item in items]).to(device=device, dtype=dtype)
        out = StructureBatch(batch, y, [item.material_id for item in items])
        out.num_atoms = torch.tensor([item.num_atoms for item in items], device=device)
        return out

    # -- screening: the linear layer to the atomic energies, and what it reads -------------------------------
    def output_layer(self, model: nn.Module) -> tuple[str, str | None] | None:
        layer = model.output_layer_name() if isinstance(model, SevenNetEnergy) else None
        if layer is None:
            return None
        names = {n for n, _ in model.get_submodule(layer).named_parameters(recurse=False)}
        if "weight" not in names:
            return None
        return f"{layer}.weight", (f"{layer}.bias" if "bias" in names else None)

    def embedding_width(self, model: nn.Module) -> int | None:
        layer = model.sevennet._modules.get(SevenNetEnergy.OUTPUT_LAYER) if isinstance(model, SevenNetEnergy) else None
        irreps = getattr(layer, "irreps_in", None)
        return int(irreps.dim) if irreps is not None else None

    def score_features(self, model: nn.Module, batch) -> ScoreFeatures:
        """One forward: predictions, ψ (:func:`~traits.models.base.output_gradients`; SevenNet's output layer has
        no bias, so its column is zero) and φ, the output layer's input averaged over each structure's atoms."""
        layer = self.output_layer(model)
        if layer is None:
            return super().score_features(model, batch)
        with model.keeping_readout() as kept:
            pred, psi = output_gradients(model, batch, *layer, name=self.name)
        return ScoreFeatures(pred, psi, segment_mean(kept[-1].detach(), batch.num_atoms.tolist()))
