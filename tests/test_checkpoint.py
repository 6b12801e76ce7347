"""Checkpoints: round trips, metadata, and a clear CheckpointError for every way a file can be wrong —
including a pickle that would run code, which must be refused without running it."""

from __future__ import annotations

import hashlib
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import prepare_sample

from traits.errors import CheckpointError
from traits.models import build_model, load_checkpoint, predict, save_checkpoint

CGCNN_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "cgcnn"
ORIGINAL = CGCNN_DIR / "formation-energy-per-atom.pth.tar"
CPU = torch.device("cpu")
HYPER = {"atom_fea_len": 8, "n_conv": 2, "h_fea_len": 6, "n_h": 1}
GRAPH = {"cutoff": 8.0, "max_neighbors": 12, "gaussian_step": 0.2}


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    return prepare_sample(tmp_path_factory, "ckpt").splits["train"][:20]


def trained_like(arch="cgcnn", seed=0, **hyper):
    torch.manual_seed(seed)
    model = build_model(arch, {**HYPER, **hyper})
    # Non-trivial BatchNorm statistics, as after training.
    for name, buf in model.named_buffers():
        if name.endswith("running_mean"):
            buf.normal_(0, 0.3)
        elif name.endswith("running_var"):
            buf.uniform_(0.5, 2.0)
    model.set_target_normalizer(-1.25, 0.75)
    return model.eval()


def saved(tmp_path, model=None, **meta) -> Path:
    model = model or trained_like()
    metadata = {"graph": GRAPH, "target": "formation_energy_per_atom", "omit": ["Fe"], "manifest_hash": "m" * 8,
                "data_hash": "d" * 8, "seed": 7, "metrics": {"val": {"mae": 0.1}}, **meta}
    return save_checkpoint(model, tmp_path / "model.safetensors", metadata)


# ----------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("arch", ["cgcnn", "cgcnn-original"])
def test_traits_round_trip_gives_identical_predictions(arch, tmp_path, graphs):
    model = trained_like(arch)
    path = saved(tmp_path, model)
    loaded, meta = load_checkpoint(path, "traits", target="formation_energy_per_atom", device=CPU)
    assert not loaded.training
    assert loaded.target_normalizer() == model.target_normalizer()
    _, before, _ = predict(model, graphs, CPU)
    _, after, _ = predict(loaded, graphs, CPU)
    np.testing.assert_array_equal(before, after)
    assert meta["architecture"] == arch and meta["format"] == "traits"


def test_sidecar_records_what_an_audit_needs(tmp_path):
    path = saved(tmp_path)
    meta = json.loads(path.with_suffix(".json").read_text())
    for key in ("traits_checkpoint", "architecture", "hyper", "graph", "target", "unit", "target_mean",
                "target_std", "omit", "manifest_hash", "data_hash", "seed", "versions", "metrics", "weights_sha256"):
        assert key in meta, key
    assert meta["hyper"]["atom_fea_len"] == 8 and meta["unit"] == "eV/atom"
    assert meta["target_mean"] == -1.25 and meta["target_std"] == 0.75
    assert set(meta["versions"]) == {"traits", "torch", "torch_geometric", "pymatgen"}
    assert meta["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not list(tmp_path.glob("*.tmp")), "atomic writes leave no temporary files"


def test_state_dict_round_trip_with_sidecar_or_arguments(tmp_path, graphs):
    model = trained_like()
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match="no target normaliser"):
        load_checkpoint(path, "state-dict", architecture="cgcnn", hyper=HYPER, device=CPU)
    loaded, meta = load_checkpoint(path, "state-dict", architecture="cgcnn", hyper=HYPER,
                                   normalizer=(-1.25, 0.75), device=CPU)
    _, before, _ = predict(model, graphs, CPU)
    np.testing.assert_array_equal(before, predict(loaded, graphs, CPU)[1])
    path.with_suffix(".json").write_text(json.dumps({"target_mean": -1.25, "target_std": 0.75, "target": "band_gap"}))
    loaded, meta = load_checkpoint(path, "state-dict", architecture="cgcnn", hyper=HYPER, device=CPU)
    np.testing.assert_array_equal(before, predict(loaded, graphs, CPU)[1])
    with pytest.raises(CheckpointError, match="predicts 'band_gap'"):
        load_checkpoint(path, "state-dict", architecture="cgcnn", hyper=HYPER, target="formation_energy_per_atom",
                        device=CPU)
    # A training checkpoint dict holding a 'state_dict' entry is accepted too.
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "wrapped.pt")
    loaded, _ = load_checkpoint(tmp_path / "wrapped.pt", "state-dict", architecture="cgcnn", hyper=HYPER,
                                normalizer=(-1.25, 0.75), device=CPU)
    np.testing.assert_array_equal(before, predict(loaded, graphs, CPU)[1])


# ----------------------------------------------------------------------------------------------
# Missing, truncated, corrupt


def test_missing_file_and_missing_sidecar(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.safetensors", device=CPU)
    path = saved(tmp_path)
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="sidecar model.json is missing"):
        load_checkpoint(path, device=CPU)


def test_truncated_safetensors_is_refused(tmp_path):
    path = saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path, device=CPU)


def test_corrupt_header_without_recorded_hash(tmp_path):
    path = saved(tmp_path)
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    del meta["weights_sha256"]
    sidecar.write_text(json.dumps(meta))
    path.write_bytes(b"\xff" * 8 + path.read_bytes()[8:])
    with pytest.raises(CheckpointError, match="corrupt safetensors"):
        load_checkpoint(path, device=CPU)


def test_modified_weights_fail_the_hash(tmp_path):
    path = saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # same size, one weight changed
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 does not match"):
        load_checkpoint(path, device=CPU)


@pytest.mark.parametrize("fmt", ["state-dict", "cgcnn-original"])
def test_truncated_or_garbage_pickle(tmp_path, fmt):
    good = tmp_path / "good.pt"
    torch.save(trained_like().state_dict(), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    for path in (truncated, garbage):
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            load_checkpoint(path, fmt, architecture="cgcnn" if fmt == "state-dict" else None, hyper=HYPER,
                            normalizer=(0.0, 1.0), device=CPU)


# ----------------------------------------------------------------------------------------------
# Unsafe pickles


class _Payload:
    """Unpickling this runs code that creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_the_payload_is_armed(tmp_path):
    """Proves the payload really runs code when unpickled naively (in a child process)."""
    marker = tmp_path / "armed"
    blob = pickle.dumps(_Payload(marker))
    subprocess.run([sys.executable, "-c", f"import pickle; pickle.loads({blob!r})"], check=True)
    assert marker.exists()


@pytest.mark.parametrize("fmt", ["state-dict", "cgcnn-original"])
def test_unsafe_pickle_is_refused_without_running_code(tmp_path, fmt):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth.tar"
    state = {k: v for k, v in trained_like().state_dict().items()}
    torch.save({"state_dict": state, "normalizer": {"mean": 0.0, "std": 1.0}, "args": _Payload(marker)}, evil)
    with pytest.raises(CheckpointError, match="non-allowed global") as info:
        load_checkpoint(evil, fmt, architecture="cgcnn" if fmt == "state-dict" else None, hyper=HYPER,
                        normalizer=(0.0, 1.0), device=CPU)
    assert "exec" in str(info.value)
    assert not marker.exists(), "code from the checkpoint ran"


# ----------------------------------------------------------------------------------------------
# Mismatches


def test_architecture_mismatch_with_the_spec(tmp_path):
    path = saved(tmp_path)
    expected = "holds a 'cgcnn' model but the spec says model.architecture: 'cgcnn-original'"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(path, architecture="cgcnn-original", device=CPU)


def test_shape_mismatch_names_the_parameter_and_both_shapes(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(trained_like().state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, "state-dict", architecture="cgcnn", hyper={**HYPER, "h_fea_len": 9},
                        normalizer=(0.0, 1.0), device=CPU)
    msg = str(info.value)
    assert "'fcs.0.weight'" in msg and "(6, 8)" in msg and "(9, 8)" in msg


def test_missing_and_unexpected_keys_are_named(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(trained_like(n_conv=3).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"unexpected keys: 'convs\.2\."):
        load_checkpoint(path, "state-dict", architecture="cgcnn", hyper=HYPER, normalizer=(0.0, 1.0), device=CPU)
    torch.save(trained_like(n_conv=1).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"missing keys: 'convs\.1\."):
        load_checkpoint(path, "state-dict", architecture="cgcnn", hyper=HYPER, normalizer=(0.0, 1.0), device=CPU)
    torch.save(trained_like().state_dict(), path)
    with pytest.raises(CheckpointError, match=r"missing keys: 'convs\.0\.fc_full"):
        load_checkpoint(path, "state-dict", architecture="cgcnn-original", hyper=HYPER, normalizer=(0.0, 1.0),
                        device=CPU)


def test_target_and_graph_mismatch(tmp_path):
    path = saved(tmp_path)
    expected = "predicts 'formation_energy_per_atom' but the spec's data.target is 'band_gap'"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(path, target="band_gap", device=CPU)
    with pytest.raises(CheckpointError, match="cutoff: checkpoint 8.0, spec 6.0"):
        load_checkpoint(path, graph={**GRAPH, "cutoff": 6.0}, device=CPU)
    load_checkpoint(path, graph={**GRAPH, "gaussian_width": 0.2, "pad_neighbors": False}, device=CPU)


def test_unknown_format(tmp_path):
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_checkpoint(saved(tmp_path), "onnx", device=CPU)


@pytest.mark.skipif(not ORIGINAL.is_file(), reason="shared CGCNN checkpoints not available")
def test_original_checkpoint_through_load_checkpoint():
    model, meta = load_checkpoint(ORIGINAL, "cgcnn-original", target="formation_energy_per_atom", device=CPU)
    assert meta["epoch"] == 968 and meta["best_mae_error"] == pytest.approx(0.0397, abs=1e-4)
    assert meta["args"]["n_conv"] == 4 and meta["graph"]["pad_neighbors"] is True
    assert model.target_normalizer()[0] == pytest.approx(-1.6992, abs=1e-4)
    with pytest.raises(CheckpointError, match="spec's data.target is 'band_gap'"):
        load_checkpoint(ORIGINAL, "cgcnn-original", target="band_gap", device=CPU)
    with pytest.raises(CheckpointError, match="pad_neighbors"):
        load_checkpoint(ORIGINAL, "cgcnn-original", graph={"cutoff": 8.0, "max_neighbors": 12, "gaussian_step": 0.2},
                        device=CPU)


def test_traits_checkpoint_feeds_predict_structures(tmp_path, monkeypatch):
    """``traits predict`` builds graphs with the checkpoint's own graph settings."""
    from pymatgen.core import Lattice, Structure

    from traits.data.graphs import structure_graph, to_data
    from traits.models import predict_structures
    from traits.spec import GraphSpec

    monkeypatch.setenv("TRAITS_CACHE", str(tmp_path / "cache"))
    settings = GraphSpec(cutoff=5.0, max_neighbors=6, gaussian_step=0.5)  # 11 Gaussians, not the default 41
    torch.manual_seed(0)
    model = build_model("cgcnn", HYPER, edge_dim=11).eval()
    model.set_target_normalizer(0.5, 2.0)
    path = saved(tmp_path, model, graph=settings)
    cif = tmp_path / "NaCl.cif"
    Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(cif))
    poscar = tmp_path / "POSCAR"
    Structure(Lattice.cubic(2.87), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(poscar), fmt="poscar")
    out = predict_structures(path, "traits", [cif, poscar], CPU)
    assert [i for i, _ in out] == [str(cif), str(poscar)]
    graphs = [to_data(structure_graph(Structure.from_file(f), settings), 0.0, str(f), settings) for f in (cif, poscar)]
    np.testing.assert_allclose([p for _, p in out], predict(model, graphs, CPU)[1], rtol=1e-6)


def test_the_same_weights_always_give_the_same_bytes(tmp_path):
    """safetensors orders its header's metadata by a per-process hash map; the checkpoint writer puts the keys in
    sorted order, so identical weights give an identical file and weights_sha256 in every process."""
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    from traits.models.checkpoint import canonical_safetensors

    blob = st_save({"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2)}, metadata={"x": "1", "a": "2"})
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    variants = []
    for keys in (["x", "a"], ["a", "x"]):  # both orders a process may write
        h = {"__metadata__": {k: header["__metadata__"][k] for k in keys},
             **{k: v for k, v in header.items() if k != "__metadata__"}}
        text = json.dumps(h, separators=(",", ":")).encode()
        variants.append(blob[:8] + text + b" " * (n - len(text)) + blob[8 + n:])
    assert variants[0] != variants[1]
    fixed = [canonical_safetensors(v) for v in variants]
    assert fixed[0] == fixed[1]
    assert list(json.loads(fixed[0][8:8 + n])["__metadata__"]) == ["a", "x"]
    for name, tensor in st_load(fixed[0]).items():
        assert torch.equal(tensor, st_load(blob)[name])
    assert canonical_safetensors(b"\x05\x00") == b"\x05\x00"  # not a safetensors file: left as it was

    path = saved(tmp_path)  # the writer applies it
    raw = path.read_bytes()
    meta = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])["__metadata__"]
    assert list(meta) == sorted(meta)
    recorded = json.loads(path.with_suffix(".json").read_text())["weights_sha256"]
    assert recorded == hashlib.sha256(raw).hexdigest()
