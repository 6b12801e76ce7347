"""The Gaussian distance expansion: every normal term is the plain exp of its exponent, bit for bit; terms whose
exact value is subnormal (or underflows) are 0, which changes no model output or gradient."""

from __future__ import annotations

import math

import pytest
import torch
from test_fast_forward import CONFIGS, build
from torch.func import functional_call

from traits.data.graphs import atom_feature_table, expand_distances, gaussian_centres
from traits.spec import GraphSpec


def plain(dist: torch.Tensor, settings) -> torch.Tensor:
    """The expansion as written: exp(-(d - μ_k)² / w²) for every term."""
    width = settings.gaussian_width or settings.gaussian_step
    return torch.exp(-((dist.unsqueeze(-1) - gaussian_centres(settings).to(dist)) ** 2) / width**2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("settings", [GraphSpec(), GraphSpec(cutoff=6.0, gaussian_step=0.1),
                                      GraphSpec(gaussian_width=0.5)])
def test_normal_terms_are_the_plain_exp_and_the_rest_are_zero(dtype, settings):
    dist = torch.linspace(0.0, 9.0, 20001, dtype=dtype)
    got, ref = expand_distances(dist, settings), plain(dist, settings)
    tiny = torch.finfo(dtype).tiny
    normal = ref >= tiny
    assert torch.equal(got[normal], ref[normal])
    assert (got[~normal] == 0).all()
    if dtype == torch.float32 and settings.gaussian_width is None:
        assert ((ref > 0) & (ref < tiny)).sum() > 1000  # the regime the change is about occurs on this grid
    # the boundary: the smallest normal value survives, the exponent just below it gives 0
    width = settings.gaussian_width or settings.gaussian_step
    edge = math.sqrt(-math.log(tiny)) * width * 0.999999
    at = expand_distances(torch.tensor([edge], dtype=dtype), settings)[0, 0]
    assert at >= tiny and at == plain(torch.tensor([edge], dtype=dtype), settings)[0, 0]


@pytest.mark.parametrize("arch,hyper", CONFIGS)
def test_a_cgcnn_gives_the_same_outputs_and_gradients_bit_for_bit(arch, hyper):
    """Random crystal-like graphs whose edge features come from each expansion: predictions and every parameter
    gradient of a CGCNN are identical."""
    from torch_geometric.data import Batch, Data

    settings = GraphSpec()
    gen = torch.Generator().manual_seed(3)
    graphs = {"new": [], "plain": []}
    for _ in range(12):
        n = int(torch.randint(2, 9, (1,), generator=gen))
        z = torch.randint(1, 84, (n,), generator=gen)
        src = torch.randint(0, n, (n * 12,), generator=gen)
        dst = torch.arange(n).repeat_interleave(12)
        dist = 1.5 + 6.0 * torch.rand(n * 12, generator=gen)
        x = atom_feature_table()[z]
        for name, f in (("new", expand_distances), ("plain", plain)):
            graphs[name].append(Data(x=x, z=z, edge_index=torch.stack([src, dst]), edge_attr=f(dist, settings),
                                     y=torch.zeros(1), num_nodes=n))
    assert any(not torch.equal(a.edge_attr, b.edge_attr) for a, b in zip(graphs["new"], graphs["plain"]))
    model = build(arch, hyper)
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    out = {}
    for name, gs in graphs.items():
        batch = Batch.from_data_list(gs)
        pred = functional_call(model, params, (batch,))
        grads = torch.autograd.grad((pred ** 2).sum(), list(params.values()))
        out[name] = (pred.detach(), grads)
    assert torch.equal(out["new"][0], out["plain"][0])
    assert all(torch.equal(a, b) for a, b in zip(out["new"][1], out["plain"][1]))
