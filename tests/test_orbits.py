"""Classes of atoms no message-passing layer can tell apart (``traits.models.orbits``): the refinement on graphs
whose classes are known by hand, the claim itself checked on real crystals against each atom's state computed by
the plain CGCNN layers (with a deliberately too-coarse partition failing the same check), and the reduced forward
against the plain forward for every pooling and both CGCNNs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_fast_forward import CONFIGS, build, full_params
from tiny_models import prepare_sample
from torch.func import functional_call

from traits.models.orbits import atom_classes, orbit_batch


def undirected(pairs, n_edges_features=None):
    src = [a for a, b in pairs] + [b for a, b in pairs]
    dst = [b for a, b in pairs] + [a for a, b in pairs]
    e = np.ones((len(src), 2), dtype=np.float32) if n_edges_features is None else n_edges_features
    return np.array(src), np.array(dst), e


def classes_of(n, pairs, x=None, e=None, crystal=None):
    src, dst, e = undirected(pairs, e)
    x = np.ones((n, 3), dtype=np.float32) if x is None else x
    crystal = np.zeros(n, dtype=np.int64) if crystal is None else crystal
    return atom_classes(x, e, src, dst, crystal).tolist()


def test_a_path_splits_by_distance_from_its_ends_over_several_rounds():
    # 0-1-2-3-4-5: one round tells the ends from the rest; a second tells 1, 4 (next to an end) from 2, 3
    assert classes_of(6, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]) == [0, 1, 2, 2, 1, 0]
    assert classes_of(5, [(0, 1), (1, 2), (2, 3), (3, 4)]) == [0, 1, 2, 1, 0]


def test_a_ring_is_one_class_until_a_feature_differs():
    ring = [(i, (i + 1) % 6) for i in range(6)]
    assert classes_of(6, ring) == [0] * 6
    x = np.ones((6, 3), dtype=np.float32)
    x[3, 1] = 2.0  # one atom of another element: the ring splits by distance from it
    assert classes_of(6, ring, x=x) == [0, 1, 2, 3, 2, 1]
    e = np.ones((12, 2), dtype=np.float32)
    e[0] = e[6] = np.float32(1.0 + 2.0 ** -23)  # one bond one ulp longer (both directions): no longer alike
    assert classes_of(6, ring, e=e) == [0, 0, 1, 2, 2, 1]  # mirror through the long bond: 0↔1, 2↔5, 3↔4


def test_atoms_of_different_crystals_never_share_a_class():
    pairs = [(0, 1), (2, 3)]
    assert classes_of(4, pairs) == [0, 0, 0, 0]
    assert classes_of(4, pairs, crystal=np.array([0, 0, 1, 1])) == [0, 0, 1, 1]


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    from traits.audit import collate

    data = prepare_sample(tmp_path_factory, "orbits", subsample=64)
    return collate(data.splits["train"][:48], torch.device("cpu"), torch.float64, 24)


def atom_states(model, batch):
    """Every atom's state after the last convolution, by the plain CGCNN layers (torch_geometric's CGConv)."""
    from torch.nn import functional as F

    with torch.no_grad():
        h = model.embedding(batch.x)
        for conv in model.convs:
            h = F.softplus(conv(h, batch.edge_index, batch.edge_attr))
    return h


def spread_within_classes(h, classes):
    """Largest difference between an atom's state and its class's first atom's, relative to the largest |h|."""
    first = {}
    worst = 0.0
    for i, c in enumerate(classes):
        j = first.setdefault(c, i)
        worst = max(worst, float((h[i] - h[j]).abs().max()))
    return worst / float(h.abs().max())


def test_atoms_of_one_class_have_equal_states_in_real_crystals(batches):
    model = build(*CONFIGS[0], dtype=torch.float64)
    reduced_atoms = 0
    for batch in batches:
        classes = atom_classes(batch.x.numpy(), batch.edge_attr.numpy(), *batch.edge_index.numpy(),
                               batch.batch.numpy())
        reduced_atoms += len(set(classes.tolist()))
        h = atom_states(model, batch)
        assert spread_within_classes(h, classes) < 1e-12
        # the check can fail: classes of equal element and crystal alone (no refinement) mix unequal states
        coarse = [hash((batch.x[i].numpy().tobytes(), int(batch.batch[i]))) for i in range(batch.x.shape[0])]
        assert spread_within_classes(h, coarse) > 1e-3
    atoms = sum(b.x.shape[0] for b in batches)
    assert atoms > 1.3 * reduced_atoms  # the sample's crystals do have alike atoms


@pytest.mark.parametrize("arch,hyper", CONFIGS)
def test_the_reduced_forward_equals_the_plain_forward(batches, arch, hyper):
    model = build(arch, hyper, dtype=torch.float64)
    params = full_params(model)
    with torch.no_grad():
        for batch in batches:
            reduced = model.probe_batch(batch)
            assert reduced is not batch and reduced.x.shape[0] < batch.x.shape[0]
            assert float(reduced.orbit_weight.sum()) == batch.x.shape[0]
            plain = functional_call(model, params, (batch,))
            assert torch.allclose(model.probe_forward(params, reduced), plain, rtol=1e-12,
                                  atol=1e-12 * float(plain.abs().max()))


def test_a_batch_without_alike_atoms_is_left_as_it_is(batches):
    batch = batches[0]
    one = batch.get_example(0)
    distinct = one.clone()
    distinct.x = distinct.x + torch.arange(distinct.x.shape[0], dtype=distinct.x.dtype)[:, None] * 1e-3
    assert orbit_batch(distinct, torch.zeros(distinct.x.shape[0], dtype=torch.long), 1) is None
    model = build(*CONFIGS[0], dtype=torch.float64)
    assert model.probe_batch(distinct) is distinct


def test_the_objective_reports_its_reduction_and_keeps_its_losses(batches):
    from traits.probes.objective import SplitObjective

    model = build(*CONFIGS[3], dtype=torch.float64)
    fast, plain = SplitObjective(model, batches), SplitObjective(model, batches, fast_forward=False)
    assert fast.fast_reduction is None
    assert float(fast.loss()) == pytest.approx(float(plain.loss()), rel=1e-12)
    assert fast.fast_reduction > 1.3 and plain.fast_reduction is None
