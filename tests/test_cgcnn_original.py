"""The 'cgcnn-original' architecture reproduces the published CGCNN checkpoints exactly.

The reference below is written independently of traits.models and traits.data.graphs: it builds the
dense (N, M) neighbour tensors the way the original CGCNN data pipeline does (pymatgen
``get_all_neighbors``, sorted by distance, padded to M with index 0 and distance cutoff + 1) and runs
the original forward pass with the checkpoint's tensors and plain torch functions.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import itertools
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CGCNN_DIR = SHARED / "models" / "cgcnn"
PEROV_FILE = SHARED / "data" / "perov5" / "perov5.csv.gz"
MP_FILE = SHARED / "data" / "mp_mtcgcnn" / "mp_36738.jsonl.gz"
CHECKPOINTS = ["formation-energy-per-atom.pth.tar", "band-gap.pth.tar"]

pytestmark = pytest.mark.skipif(not CGCNN_DIR.is_dir(), reason=f"{CGCNN_DIR} not available")

CUTOFF, M, STEP = 8.0, 12, 0.2


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRAITS_CACHE", str(tmp_path_factory.mktemp("cache")))


# ----------------------------------------------------------------------------------------------
# Independent dense reference (the original CGCNN data pipeline and forward pass)


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def reference_inputs(structure):
    raw = json.loads((CGCNN_DIR / "atom_init.json").read_text())
    atom_fea = torch.tensor(np.vstack([raw[str(site.specie.Z)] for site in structure]), dtype=torch.float32)
    all_nbrs = [sorted(n, key=lambda x: x[1]) for n in structure.get_all_neighbors(CUTOFF, include_index=True)]
    idx, dist = [], []
    for nbr in all_nbrs:
        pad = max(M - len(nbr), 0)
        idx.append([x[2] for x in nbr[:M]] + [0] * pad)
        dist.append([x[1] for x in nbr[:M]] + [CUTOFF + 1.0] * pad)
    dist = np.array(dist)
    centres = np.arange(0.0, CUTOFF + STEP, STEP)
    nbr_fea = np.exp(-((dist[..., None] - centres) ** 2) / STEP**2)
    return atom_fea, torch.tensor(nbr_fea, dtype=torch.float32), torch.tensor(idx, dtype=torch.long)


def _bn(x, sd, prefix):
    return F.batch_norm(
        x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"], sd[f"{prefix}.weight"],
        sd[f"{prefix}.bias"], training=False, eps=1e-5,
    )


def reference_predict(ck, structure) -> float:
    sd, args = ck["state_dict"], ck["args"]
    args = vars(args) if isinstance(args, argparse.Namespace) else args
    atom_fea, nbr_fea, nbr_idx = reference_inputs(structure)
    n, m = nbr_idx.shape
    h = F.linear(atom_fea, sd["embedding.weight"], sd["embedding.bias"])
    f = h.shape[1]
    for k in range(args["n_conv"]):
        p = f"convs.{k}"
        total = torch.cat([h.unsqueeze(1).expand(n, m, f), h[nbr_idx, :], nbr_fea], dim=2)
        gated = F.linear(total, sd[f"{p}.fc_full.weight"], sd[f"{p}.fc_full.bias"])
        gated = _bn(gated.view(-1, 2 * f), sd, f"{p}.bn1").view(n, m, 2 * f)
        filt, core = gated.chunk(2, dim=2)
        summed = torch.sum(torch.sigmoid(filt) * F.softplus(core), dim=1)
        h = F.softplus(h + _bn(summed, sd, f"{p}.bn2"))
    crys = h.mean(dim=0, keepdim=True)
    crys = F.softplus(F.linear(F.softplus(crys), sd["conv_to_fc.weight"], sd["conv_to_fc.bias"]))
    for k in range(args["n_h"] - 1):
        crys = F.softplus(F.linear(crys, sd[f"fcs.{k}.weight"], sd[f"fcs.{k}.bias"]))
    out = F.linear(crys, sd["fc_out.weight"], sd["fc_out.bias"])
    return float(out) * ck["normalizer"]["std"] + ck["normalizer"]["mean"]


def raw_checkpoint(name):
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(CGCNN_DIR / name, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------------------------
# Structures


def sample_cifs():
    from pymatgen.core import Structure

    files = sorted((CGCNN_DIR / "sample-cifs").glob("*.cif"))
    assert len(files) == 10
    return [(f.stem, _quiet(Structure.from_file, f)) for f in files]


def perovskites(n=20):
    from pymatgen.core import Structure

    if not PEROV_FILE.is_file():
        return []
    with gzip.open(PEROV_FILE, "rt", encoding="utf-8") as fh:
        rows = list(itertools.islice(csv.DictReader(io.StringIO(fh.read())), 0, 400, 20))[:n]
    return [(f"perov-{r['material_id']}", _quiet(Structure.from_str, r["cif"], fmt="cif")) for r in rows]


def traits_predictions(model, named_structures):
    from traits.data.graphs import structure_graph, to_data
    from traits.models.cgcnn_original import ORIGINAL_GRAPH
    from traits.models.inference import predict
    from traits.spec import GraphSpec

    settings = GraphSpec(**ORIGINAL_GRAPH)
    assert settings.pad_neighbors and settings.max_neighbors == M and settings.cutoff == CUTOFF
    graphs = [to_data(structure_graph(s, settings), 0.0, name, settings) for name, s in named_structures]
    ids, preds, _ = predict(model, graphs, torch.device("cpu"), batch_size=7)  # several crystals per batch
    assert ids == [name for name, _ in named_structures]
    return preds


@pytest.fixture(scope="module")
def structures():
    return sample_cifs() + perovskites()


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_matches_dense_reference(name, structures):
    from traits.models.cgcnn_original import load_cgcnn_original

    model, meta = load_cgcnn_original(CGCNN_DIR / name, torch.device("cpu"))
    assert not model.training
    ck = raw_checkpoint(name)
    assert meta["hyper"] == {"atom_fea_len": 64, "h_fea_len": 32, "n_conv": 4, "n_h": 1}
    assert meta["target"] == ("band_gap" if "band" in name else "formation_energy_per_atom")
    ref = np.array([reference_predict(ck, s) for _, s in structures])
    ours = traits_predictions(model, structures)
    diff = np.abs(ours - ref)
    print(f"\n{name}: {len(ref)} structures, max |diff| = {diff.max():.3g}, max rel = "
          f"{(diff / np.maximum(np.abs(ref), 1e-3)).max():.3g}")
    assert len(ref) >= 10 + (20 if PEROV_FILE.is_file() else 0)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_state_dict_keys_match_exactly(name):
    from traits.models.cgcnn_original import CGCNNOriginal

    sd = raw_checkpoint(name)["state_dict"]
    model = CGCNNOriginal(atom_fea_len=64, n_conv=4, h_fea_len=32, n_h=1)
    result = model.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    ours = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    assert ours == set(sd)
    for key, value in sd.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_n_h_adds_fcs_like_the_original():
    from traits.models.cgcnn_original import CGCNNOriginal

    keys = set(CGCNNOriginal(atom_fea_len=8, n_conv=1, h_fea_len=6, n_h=3).state_dict())
    assert {"fcs.0.weight", "fcs.1.bias"} <= keys and "fcs.2.weight" not in keys


@pytest.mark.skipif(not MP_FILE.is_file(), reason=f"{MP_FILE} not available")
def test_formation_energy_mae_on_materials_project():
    """A real-model sanity check: the checkpoint was trained on this pool (paper: ~0.04 eV/atom on test)."""
    from pymatgen.core import Structure

    from traits.models.cgcnn_original import load_cgcnn_original

    with gzip.open(MP_FILE, "rt", encoding="utf-8") as fh:
        records = [json.loads(line) for line in itertools.islice(fh, 0, 2000, 40)]
    structures = [(r["material_id"], _quiet(Structure.from_str, r["cif"], fmt="cif")) for r in records]
    y = np.array([r["formation_energy_per_atom"] for r in records])
    model, _ = load_cgcnn_original(CGCNN_DIR / CHECKPOINTS[0], torch.device("cpu"))
    mae = float(np.abs(traits_predictions(model, structures) - y).mean())
    print(f"\nformation energy MAE on {len(y)} Materials Project structures: {mae:.4f} eV/atom")
    assert len(y) == 50
    assert mae < 0.15


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_predictions_match_cpu(structures):
    from traits.models.cgcnn_original import load_cgcnn_original

    cpu_model, _ = load_cgcnn_original(CGCNN_DIR / CHECKPOINTS[0], torch.device("cpu"))
    cuda_model, _ = load_cgcnn_original(CGCNN_DIR / CHECKPOINTS[0], torch.device("cuda"))
    assert next(cuda_model.parameters()).device.type == "cuda"
    from traits.data.graphs import structure_graph, to_data
    from traits.models.cgcnn_original import ORIGINAL_GRAPH
    from traits.models.inference import predict
    from traits.spec import GraphSpec

    settings = GraphSpec(**ORIGINAL_GRAPH)
    graphs = [to_data(structure_graph(s, settings), 0.0, name, settings) for name, s in structures]
    _, on_cpu, _ = predict(cpu_model, graphs, torch.device("cpu"))
    _, on_cuda, _ = predict(cuda_model, graphs, torch.device("cuda"))
    np.testing.assert_allclose(on_cuda, on_cpu, rtol=1e-4, atol=1e-4)


def test_checkpoint_args_are_held_to_the_spec_bounds_before_a_model_is_built(tmp_path):
    """A .pth.tar whose args ask for a billion convolutions is refused naming the field, without building."""
    from traits.errors import CheckpointError
    from traits.models.cgcnn_original import load_cgcnn_original

    raw = torch.load(CGCNN_DIR / CHECKPOINTS[0], map_location="cpu", weights_only=False)
    args = vars(raw["args"]) if isinstance(raw["args"], argparse.Namespace) else dict(raw["args"])
    raw["args"] = argparse.Namespace(**{**args, "n_conv": 1_000_000_000})
    bad = tmp_path / "huge.pth.tar"
    torch.save(raw, bad)
    with pytest.raises(CheckpointError, match=r"args\.n_conv"):
        load_cgcnn_original(bad, torch.device("cpu"))
