"""Per-HVP time and peak memory of each model adapter's model on the CHGNet/SevenNet audit sets.

    python bench/bench_adapters.py ADAPTER [N_STRUCTURES] [N_HVP]

ADAPTER: chgnet, sevenn, cgcnn-original (the original CGCNN checkpoint from ../shared/models/cgcnn), alignn or mace.
No ALIGNN or MACE weights are on this machine: for those two a model of the published size is built with random
weights (timing and memory depend on the architecture, not the values) and written to a temporary folder: ALIGNN
with alignn's default hyper-parameters of the published property models (4 ALIGNN + 4 GCN layers, 256 hidden
features, CGCNN atom features, 8 Å cutoff, 12 neighbours); MACE with the MACE-MP-0 "small" settings (128x0e hidden,
2 interactions, correlation 3, max_ell 3, r_max 6 Å, 89 elements). Loads the model through its adapter,
featurises the first N_STRUCTURES (default 24) crystals of audits/chgnet/id-no-Fe.jsonl.gz,
builds the label-free objective (one batch, float32, CPU, ``hvp_method='retain'``) and times N_HVP (default 5)
Hessian-vector products after one warm-up product. Peak memory is the process's peak resident set size
(``ru_maxrss``) after the products, and before them (model and data loaded), in MiB. It ends with the torch
threads the run chose (``traits.threads``, as the command does) and the CPUs the process got while it ran the
products (its CPU time / wall time), so a slow-down under load can be compared with the share of CPU it lost.
"""

from __future__ import annotations

import resource
import sys
import time
import warnings
from pathlib import Path

from traits.threads import configure_threads

configure_threads()  # as the traits command does, before torch starts its threads (TRAITS_THREADS etc. win)
import torch  # noqa: E402

from traits.threads import settle_threads  # noqa: E402

settle_threads()  # as an audit does once torch runs: fewer threads where other work holds CPUs

HERE = Path(__file__).resolve().parent


def main(name: str, n: int = 24, n_hvp: int = 5) -> None:
    warnings.filterwarnings("ignore")
    from traits.data.sources import read_mp
    from traits.models.base import get_adapter, set_probe_parameters
    from traits.probes.objective import SplitObjective

    torch.manual_seed(0)
    dev = torch.device("cpu")
    adapter = get_adapter(name)
    source = HERE.parents[1] / "shared" / "models" / "cgcnn" / "formation-energy-per-atom.pth.tar" \
        if name == "cgcnn-original" else None
    options = adapter.Options() if name != "cgcnn-original" else None
    if name in ("alignn", "mace"):
        import tempfile

        source = random_model(name, Path(tempfile.mkdtemp(prefix=f"bench-{name}-")))
    model = adapter.load(source, options, dev)
    set_probe_parameters(model, adapter.probe_parameters(model))
    entries = read_mp(HERE.parent / "audits" / "chgnet" / "id-no-Fe.jsonl.gz", "model").entries[:n]
    items, _ = adapter.featurise_entries(entries, options)
    batches = adapter.batches(items, dev, torch.float32, batch_size=len(items))
    with torch.no_grad():
        for b in batches:
            b.y = model(b).detach().reshape(b.y.shape)
    obj = SplitObjective(model, batches, loss="mse")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    v = torch.randn(obj.dim, generator=torch.Generator().manual_seed(0))
    obj.hvp(v)
    t, cpu = time.perf_counter(), time.process_time()
    for _ in range(n_hvp):
        obj.hvp(v)
    per = (time.perf_counter() - t) / n_hvp
    used = (time.process_time() - cpu) / (n_hvp * per)  # CPUs this process got while it ran the products
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    atoms = sum(i.num_atoms for i in items)
    print(f"{name}: {obj.dim:,} parameters probed, {len(items)} structures ({atoms} atoms), "
          f"{per:.3f} s per HVP, peak RSS {peak:.0f} MiB (before products {before:.0f} MiB), "
          f"{torch.get_num_threads()} torch thread(s) using {used:.2f} CPUs")


def random_model(name: str, folder: Path) -> Path:
    """A model folder of the published size with random weights (see the module docstring)."""
    import json

    import numpy as np

    if name == "alignn":
        from alignn.models.alignn_atomwise_pure import ALIGNNAtomWisePure, ALIGNNAtomWisePureConfig

        cfg = {"name": "alignn_atomwise_pure", "alignn_layers": 4, "gcn_layers": 4, "atom_input_features": 92,
               "hidden_features": 256, "embedding_features": 64, "calculate_gradient": False, "gradwise_weight": 0}
        model = ALIGNNAtomWisePure(ALIGNNAtomWisePureConfig(**cfg))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps({"target": "formation_energy_peratom", "cutoff": 8.0,
                                                        "max_neighbors": 12, "atom_features": "cgcnn",
                                                        "model": cfg}))
        torch.save(model.state_dict(), folder / "best_model.pt")
        return folder
    from traits.models.mace import _import_mace, export

    modules = _import_mace()[0]
    from e3nn import o3

    zs = list(range(1, 90))
    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    model = modules.ScaleShiftMACE(
        r_max=6.0, num_bessel=10, num_polynomial_cutoff=5, max_ell=3, interaction_cls=block,
        interaction_cls_first=block, num_interactions=2, num_elements=len(zs), hidden_irreps=o3.Irreps("128x0e"),
        MLP_irreps=o3.Irreps("16x0e"), atomic_energies=np.zeros(len(zs)), avg_num_neighbors=30.0,
        atomic_numbers=zs, correlation=3, gate=torch.nn.functional.silu, atomic_inter_scale=1.0,
        atomic_inter_shift=0.0, radial_MLP=[64, 64, 64])
    return export(model.float(), folder, training_data="none (random weights, benchmark)")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], int(args[1]) if len(args) > 1 else 24, int(args[2]) if len(args) > 2 else 5)
