"""Per-HVP time and peak memory of each model adapter's model on the CHGNet/SevenNet audit sets.

    python bench/bench_adapters.py ADAPTER [N_STRUCTURES] [N_HVP]

ADAPTER: chgnet, sevenn or cgcnn-original (the original CGCNN checkpoint from ../shared/models/cgcnn). Loads the
model through its adapter, featurises the first N_STRUCTURES (default 24) crystals of audits/chgnet/id-no-Fe.jsonl.gz,
builds the label-free objective (one batch, float32, CPU, ``hvp_method='retain'``) and times N_HVP (default 5)
Hessian-vector products after one warm-up product. Peak memory is the process's peak resident set size
(``ru_maxrss``) after the products, and before them (model and data loaded), in MiB.
"""

from __future__ import annotations

import resource
import sys
import time
import warnings
from pathlib import Path

import torch

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
    t = time.perf_counter()
    for _ in range(n_hvp):
        obj.hvp(v)
    per = (time.perf_counter() - t) / n_hvp
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    atoms = sum(i.num_atoms for i in items)
    print(f"{name}: {obj.dim:,} parameters probed, {len(items)} structures ({atoms} atoms), "
          f"{per:.3f} s per HVP, peak RSS {peak:.0f} MiB (before products {before:.0f} MiB)")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], int(args[1]) if len(args) > 1 else 24, int(args[2]) if len(args) > 2 else 5)
