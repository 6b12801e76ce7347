"""`traits screen` through the adapter seam: CHGNet and SevenNet screen a handful of structures with the last-layer
score on their linear output layer (ψ is exactly the derivative of the prediction by that layer's weights) and the
kNN distance on their readout embedding once calibrated; an adapter that offers neither screens its predictions and
says which scores are unavailable. Skipped per adapter when its extra is not installed."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from traits.cli import app
from traits.data.sources import read_mp, sample_path
from traits.errors import DataError, TraitsError
from traits.models.base import Adapter, StructureBatch
from traits.probes.objective import eval_mode

CPU = torch.device("cpu")
runner = CliRunner()


def sample_entries(start: int, n: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_mp(sample_path(), "formation_energy_per_atom", kind="sample").entries[start:start + n]


@pytest.fixture(scope="module")
def structures(tmp_path_factory) -> Path:
    """Five sample records without labels (one JSON file) and one CIF."""
    folder = tmp_path_factory.mktemp("screen-in")
    entries = sample_entries(100, 6)
    records = [{"material_id": e.id, "structure": e.structure().as_dict()} for e in entries[:5]]
    (folder / "records.json").write_text(json.dumps(records))
    entries[5].structure().to(filename=str(folder / "one.cif"))
    return folder


def loaded(name: str):
    pytest.importorskip(name)
    from traits.models.predicting import load_model

    return load_model(name, None, CPU)


@pytest.fixture(scope="module")
def chgnet():
    return loaded("chgnet")


@pytest.fixture(scope="module")
def sevenn():
    return loaded("sevenn")


# ---------------------------------------------------------------------------------------------- ψ and φ
@pytest.mark.parametrize("name", ["chgnet", "sevenn"])
def test_last_layer_features_are_the_derivative_by_the_output_layer(name, request):
    model = request.getfixturevalue(name)
    adapter, net = model.adapter, model.model
    items, skipped = adapter.featurise_entries(sample_entries(0, 4), model.options)
    assert len(items) == 4 and not skipped
    batch = adapter.collate(items, CPU, torch.float32)
    with eval_mode(net):
        got = adapter.score_features(net, batch)
        with torch.no_grad():
            plain = net(batch)
            embedded = adapter.embed(net, batch)
    width = adapter.embedding_width(net)
    assert got.last_layer.shape == (4, width + 1) and got.embedding.shape == (4, width)
    assert torch.equal(got.prediction, plain) and torch.allclose(got.embedding, embedded)
    weight, _bias = adapter.output_layer(net)
    w = dict(net.named_parameters())[weight]
    step = torch.randn(w.shape, generator=torch.Generator().manual_seed(0)) * 1e-2
    with torch.no_grad():
        w.add_(step)
        moved = net(batch)
        w.sub_(step)
    change = (got.last_layer[:, :-1] @ step.reshape(-1)).double()
    assert torch.allclose((moved - plain).double(), change, rtol=1e-3, atol=1e-5), (moved - plain, change)
    assert change.abs().max() > 1e-4  # the step moved the predictions: the check can fail


# ---------------------------------------------------------------------------------------------- screening
def chgnet_reference(structures: list) -> list[float]:
    from chgnet.model import CHGNet

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
        return [float(model.predict_structure(s, task="e")["e"]) for s in structures]


def test_screen_chgnet_uncalibrated(structures, tmp_path, chgnet):
    from traits.screen import read_inputs, screen

    res = screen(None, [structures], tmp_path / "out", model="chgnet", formats=["html"], device=CPU)
    doc = res.document
    assert res.n_screened == 6 and not res.skipped and not res.calibrated and res.unavailable == {}
    assert doc["model"]["architecture"] == "chgnet" and doc["unit"] == "eV/atom" and doc["target"] == "energy_per_atom"
    assert "chgnet (bundled weights)" == doc["checkpoint"]
    entries = read_inputs([structures]).entries
    want = dict(zip([e.id for e in entries], chgnet_reference([e.structure() for e in entries])))
    for row in doc["compounds"]:
        assert abs(row["prediction"] - want[row["id"]]) <= 1e-4 * abs(want[row["id"]])
        assert row["last_layer_std"] > 0 and row["knn_distance"] is None and row["flag"] in ("ok", "high")
    assert "CHGNet model of energy per atom" in (tmp_path / "out" / "screen.html").read_text()


def test_screen_sevenn_uncalibrated_on_the_command_line(structures, tmp_path, sevenn):
    res = runner.invoke(app, ["screen", "--model", "sevenn", "bundled", str(structures), "--out",
                              str(tmp_path / "out"), "--report", "none", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "screened 6 of 6 structures" in res.output and "not available" not in res.output
    doc = json.loads((tmp_path / "out" / "predictions.json").read_text())
    items, _ = sevenn.adapter.featurise_entries(
        __import__("traits.screen", fromlist=["read_inputs"]).read_inputs([structures]).entries, sevenn.options)
    ids, preds, _ = sevenn.adapter.predict(sevenn.model, items, CPU)
    want = dict(zip(ids, preds))
    assert doc["model"]["architecture"] == "sevenn" and doc["scores_unavailable"] == {}
    assert doc["checkpoint"] == "sevenn (bundled weights)"
    for row in doc["compounds"]:
        assert row["prediction"] == pytest.approx(want[row["id"]], rel=1e-6)
        assert row["last_layer_std"] > 0 and math.isfinite(row["relative_uncertainty"])


@pytest.fixture(scope="module")
def chgnet_calibration(tmp_path_factory, chgnet) -> Path:
    """A calibration of CHGNet built through its adapter: its own predictions plus seeded noise as labels."""
    from traits.screen import write_calibration

    items, _ = chgnet.adapter.featurise_entries(sample_entries(0, 24), chgnet.options)
    _ids, preds, _ = chgnet.adapter.predict(chgnet.model, items, CPU)
    noise = np.random.default_rng(0).normal(0.0, 0.05, len(items))
    for item, p, e in zip(items, preds, noise):
        item.y = torch.tensor(float(p + e), dtype=torch.float64)
    splits = {"train": items[:12], "val": items[12:18], "id": items[18:]}
    return write_calibration(chgnet.model, splits, tmp_path_factory.mktemp("cal") / "chgnet.calibration.json", CPU,
                             adapter=chgnet.adapter)


def test_screen_chgnet_calibrated_has_every_score(structures, tmp_path, chgnet_calibration):
    from traits.screen import load_calibration, screen

    cal = load_calibration(chgnet_calibration, embedding_width=64)
    assert len(cal["knn"]["train_embedding"]) == 12 and cal["id"]["knn_distance"]["n"] == 6
    res = screen(None, [structures], tmp_path / "out", model="chgnet", calibration=chgnet_calibration,
                 formats=[], device=CPU)
    assert res.calibrated and res.n_screened == 6
    for row in res.document["compounds"]:
        assert row["knn_distance"] > 0 and row["last_layer_sigma"] > 0 and row["knn_relative"] > 0
    assert "calibrated on the checkpoint's own validation split" in res.document["calibration_note"]


def test_a_calibration_of_another_width_is_bad_input_naming_the_file(structures, tmp_path, chgnet_calibration):
    from traits.screen import screen

    cal = json.loads(chgnet_calibration.read_text())
    cal["knn"]["train_embedding"] = [row[:32] for row in cal["knn"]["train_embedding"]]
    cal["last_layer"]["gram"] = [row[:33] for row in cal["last_layer"]["gram"][:33]]
    other = tmp_path / "other.calibration.json"
    other.write_text(json.dumps(cal))
    with pytest.raises(DataError, match=r"other\.calibration\.json.*width 32.*width 64"):
        screen(None, [structures], tmp_path / "out", model="chgnet", calibration=other, formats=[], device=CPU)


# ---------------------------------------------------------------------------------------------- no scores
class FractionNet(nn.Module):
    """Energy from element fractions through a small MLP: no embedding, no named output layer."""

    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(100, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, batch):
        return self.mlp(batch.payload).reshape(-1)


class BareAdapter(Adapter):
    """An adapter that offers only predictions (registered for these tests as 'bare')."""

    name = "bare"
    property = "energy_per_atom"
    units = "eV/atom"
    bundled = ("default",)

    def load(self, source, options, device):
        torch.manual_seed(0)
        return FractionNet().to(device).eval()

    def featurise(self, structure, options=None):
        x = torch.zeros(100)
        for element, fraction in structure.composition.fractional_composition.items():
            x[element.Z - 1] = fraction
        return x

    def collate(self, items, device, dtype):
        y = torch.stack([i.y for i in items]).to(device=device, dtype=dtype)
        return StructureBatch(torch.stack([i.payload for i in items]).to(device=device, dtype=dtype), y,
                              [i.material_id for i in items])


@pytest.fixture
def bare(monkeypatch):
    from traits.models import base

    monkeypatch.setitem(base.BUILTIN_ADAPTERS, "bare", f"{__name__}:BareAdapter")
    return "bare"


def test_an_adapter_without_scores_screens_its_predictions_and_says_why(structures, tmp_path, bare):
    res = runner.invoke(app, ["screen", "--model", bare, "bundled", str(structures), "--out", str(tmp_path / "o"),
                              "--report", "html", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "the last-layer std is not available for this model: the bare adapter names no linear output layer" \
        in res.output
    assert "the kNN distance to training is not available for this model: the bare adapter offers no embedding" \
        in res.output
    doc = json.loads((tmp_path / "o" / "predictions.json").read_text())
    assert set(doc["scores_unavailable"]) == {"last_layer_std", "knn_distance"}
    assert "no score flags a compound" in doc["calibration_note"]
    rows = doc["compounds"]
    assert len(rows) == 6 and all(math.isfinite(r["prediction"]) and r["last_layer_std"] is None and r["flag"] == "ok"
                                  for r in rows)
    assert (tmp_path / "o" / "screen.html").is_file()


def test_calibration_needs_what_the_adapter_does_not_offer(bare):
    from traits.models.base import get_adapter
    from traits.screen import build_calibration

    adapter = get_adapter(bare)
    model = adapter.load(None, None, CPU)
    items, _ = adapter.featurise_entries(sample_entries(0, 6), None)
    with pytest.raises(TraitsError, match="linear output layer and an embedding"):
        build_calibration(model, {"train": items[:3], "val": items[3:]}, CPU, adapter=adapter)


def test_predict_through_the_registered_adapter(structures, bare):
    res = runner.invoke(app, ["predict", "--model", bare, "--device", "cpu", str(structures / "one.cif")])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[1].endswith(",eV/atom")
