"""Tiny models, data and references shared by several test modules.

* ``gen(seed)``: a seeded CPU ``torch.Generator``.
* ``MLP`` / ``make_mlp``: the float64 tanh MLP 3 -> 8 (-> BatchNorm) -> 6 -> 1 of the Hessian and objective
  tests; ``randomize_batchnorm`` gives a BatchNorm non-trivial running statistics (and affine weights).
* ``manual_forward`` / ``reference_parts`` / ``reference_loss``: that MLP's forward and MSE / MAE loss written
  out by hand as functions of one flat weight vector (BatchNorm in eval form: running statistics). They never
  go through ``SplitObjective`` or ``torch.func``, so they are independent references for the probes.
* ``make_data``: seeded float64 regression data (x, y) cut into uneven batches ``SimpleNamespace(x=, y=)``.
* ``graph_cache`` / ``prepare_sample``: graphs of the bundled 'sample' data set, prepared once per test session
  in a graph cache under pytest's base temporary folder (shared by every module that asks for it).
* ``quickstart_checkpoint_with``: a copy of the quickstart checkpoint with changed weights (sidecar updated).
"""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

DT = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------- tiny MLP
class MLP(nn.Module):
    def __init__(self, batchnorm: bool) -> None:
        super().__init__()
        self.l1 = nn.Linear(3, 8)
        self.bn = nn.BatchNorm1d(8) if batchnorm else None
        self.l2 = nn.Linear(8, 6)
        self.l3 = nn.Linear(6, 1)

    def forward(self, batch):
        h = torch.tanh(self.l1(batch.x))
        if self.bn is not None:
            h = self.bn(h)
        return self.l3(torch.tanh(self.l2(h))).squeeze(-1)


def randomize_batchnorm(bn: nn.BatchNorm1d, *, weight: bool = True, bias: bool = True) -> None:
    """Draw running statistics (and, if asked, the affine weight and bias) from the global torch RNG."""
    with torch.no_grad():
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
        if weight:
            bn.weight.uniform_(0.5, 1.5)
        if bias:
            bn.bias.uniform_(-0.2, 0.2)


def make_mlp(batchnorm: bool, seed: int = 0, bn_bias: bool = True) -> MLP:
    """A float64 ``MLP`` seeded with ``seed``, left in training mode (probes must still use running statistics)."""
    torch.manual_seed(seed)
    model = MLP(batchnorm).to(DT)
    if batchnorm:
        randomize_batchnorm(model.bn, bias=bn_bias)
    model.train()
    return model


def manual_forward(model: MLP, p: dict, x: torch.Tensor) -> torch.Tensor:
    h = torch.tanh(x @ p["l1.weight"].T + p["l1.bias"])
    if model.bn is not None:
        bn = model.bn
        h = (h - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * p["bn.weight"] + p["bn.bias"]
    h = torch.tanh(h @ p["l2.weight"].T + p["l2.bias"])
    return (h @ p["l3.weight"].T + p["l3.bias"]).squeeze(-1)


def reference_parts(model: nn.Module):
    """The trainable weights as one flat vector, and a function splitting such a vector into named tensors."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for n, p in model.named_parameters() if p.requires_grad]
    theta = torch.cat([p.detach().reshape(-1) for n, p in model.named_parameters() if p.requires_grad])

    def split(flat):
        out, i = {}, 0
        for n, s in zip(names, shapes):
            k = int(torch.Size(s).numel())
            out[n] = flat[i : i + k].reshape(s)
            i += k
        return out

    return theta, split


def reference_loss(model, x, y, kind="mse"):
    """``theta`` and the hand-written loss (mean over all samples at once) as a function of a flat vector."""
    theta, split = reference_parts(model)

    def f(flat):
        r = manual_forward(model, split(flat), x) - y
        return (r**2).mean() if kind == "mse" else r.abs().mean()

    return theta, f


# ------------------------------------------------------------------------------- data
def make_data(sizes=(7, 12, 5), seed: int = 1, features: int = 3):
    """``sum(sizes)`` samples x ~ N(0, 1)^features, y ~ N(0, 1) from ``gen(seed)``, and batches of ``sizes``."""
    g = gen(seed)
    n = sum(sizes)
    x = torch.randn(n, features, generator=g, dtype=DT)
    y = torch.randn(n, generator=g, dtype=DT)
    batches, start = [], 0
    for s in sizes:
        batches.append(types.SimpleNamespace(x=x[start : start + s], y=y[start : start + s]))
        start += s
    return x, y, batches


# ------------------------------------------------------------------------------- crystal graphs
def graph_cache(tmp_path_factory) -> str:
    """The graph cache shared by the modules of one test session (under pytest's base temporary folder)."""
    return str(tmp_path_factory.getbasetemp() / "traits-graph-cache")


def prepare_sample(tmp_path_factory, name: str, subsample: int = 40):
    """``prepare_data`` of a formation-energy spec named ``name`` on ``subsample`` compounds of the bundled
    'sample' source, with the shared session graph cache."""
    from traits.data.prepare import prepare_data
    from traits.spec import spec_from_mapping

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRAITS_CACHE", graph_cache(tmp_path_factory))
        spec = spec_from_mapping({
            "name": name, "data": {"source": "sample", "target": "formation_energy_per_atom", "subsample": subsample},
            "model": {"train": {}},
        })
        return prepare_data(spec)


def quickstart_checkpoint_with(folder, change):
    """A copy of the quickstart checkpoint in ``folder`` whose floating-point weights (running statistics kept)
    are ``change(name, tensor)``, its sidecar's weights_sha256 updated. Returns the weights file."""
    import hashlib
    import json
    import shutil
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    source = Path(__file__).resolve().parents[1] / "traits" / "data" / "quickstart"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "model.json", folder / "model.json")
    tensors = {k: (change(k, v) if v.is_floating_point() and "running" not in k else v)
               for k, v in load_file(source / "model.safetensors").items()}
    save_file(tensors, folder / "model.safetensors")
    meta = json.loads((folder / "model.json").read_text())
    meta["weights_sha256"] = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    (folder / "model.json").write_text(json.dumps(meta))
    return folder / "model.safetensors"
