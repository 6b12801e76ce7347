"""The loss barrier between two audited models (traits.barrier, ``traits compare A B --barrier``).

Checked against the audits themselves, not against the barrier code: the path's ends are the losses at θ that
the audits of A and of B measured on the same structures, and its midpoint is the loss at θ measured by a third
audit of a checkpoint holding the average of A's and B's weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_audit import QUICKSTART, SMALL
from tiny_models import quickstart_checkpoint_with
from typer.testing import CliRunner

from traits.audit import run_audit
from traits.barrier import barrier_between
from traits.cli import app
from traits.errors import DataError
from traits.results import load_result
from traits.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "traits" / "data" / "quickstart"
SETTINGS = {**SMALL, "probes.hessian.enabled": False, "probes.surface.enabled": False,
            "probes.shift.enabled": False, "report.formats": ["json"]}


@pytest.fixture(scope="module")
def audits(tmp_path_factory):
    base = tmp_path_factory.mktemp("barrier")
    g = torch.Generator().manual_seed(11)
    noise = {k: 0.3 * v.abs().mean() * torch.randn(v.shape, generator=g, dtype=v.dtype)
             for k, v in load_file(SOURCE / "model.safetensors").items() if v.is_floating_point()}
    ckpt_b = quickstart_checkpoint_with(base / "ckpt-b", lambda k, v: v + noise[k])
    ckpt_mid = quickstart_checkpoint_with(base / "ckpt-mid", lambda k, v: v + 0.5 * noise[k])  # (θ_A + θ_B) / 2
    folders = {}
    for name, ckpt in (("a", None), ("b", ckpt_b), ("mid", ckpt_mid)):
        overrides = SETTINGS if ckpt is None else {**SETTINGS, "model.checkpoint": str(ckpt)}
        run_audit(load_spec(QUICKSTART, overrides=overrides), base / name, render=False)
        folders[name] = base / name / "results.json"
    return folders


def test_the_path_ends_and_midpoint_are_the_audited_losses(audits):
    a, b, mid = (load_result(audits[k]) for k in ("a", "b", "mid"))
    bar = barrier_between(a, b, audits["a"], audits["b"], points=5, device="cpu")
    assert bar.same_split and set(bar.splits) == set(a.metrics)
    for split, s in bar.splits.items():
        assert s.ts == [0.0, 0.25, 0.5, 0.75, 1.0]
        assert s.losses[0] == pytest.approx(a.metrics[split].loss, rel=1e-5)
        assert s.losses[-1] == pytest.approx(b.metrics[split].loss, rel=1e-5)
        assert s.losses[2] == pytest.approx(mid.metrics[split].loss, rel=1e-4)
        chord = [(1 - t) * s.losses[0] + t * s.losses[-1] for t in s.ts]
        assert s.height == pytest.approx(max(x - c for x, c in zip(s.losses, chord)), abs=1e-9)
        assert s.height >= 0 and s.position in s.ts
        assert s.relative == pytest.approx(s.height / max(s.losses[0], s.losses[-1]))


def test_a_model_against_itself_has_no_barrier(audits):
    a = load_result(audits["a"])
    bar = barrier_between(a, a, audits["a"], audits["a"], points=3, device="cpu")
    for s in bar.splits.values():
        assert s.height == 0.0 and len(set(s.losses)) == 1


def test_compare_writes_it_and_refuses_what_it_cannot_measure(audits, tmp_path):
    out = tmp_path / "cmp"
    run = CliRunner().invoke(app, ["compare", str(audits["a"]), str(audits["b"]), "--out", str(out), "--format",
                                   "json,html", "--barrier", "--barrier-points", "3", "--device", "cpu"])
    assert run.exit_code in (0, 1), run.output
    stored = json.loads((out / "compare.json").read_text())
    assert set(stored["barrier"]["splits"]) == {"id", "ood"} and stored["schema_version"] == "1.1"
    html = (out / "compare.html").read_text()
    assert 'id="barrier"' in html and "Loss barrier between the two models" in html
    assert "loss barrier A→B on OOD" in run.output

    plain = tmp_path / "plain"
    run = CliRunner().invoke(app, ["compare", str(audits["a"]), str(audits["b"]), "--out", str(plain), "--format",
                                   "json"])
    assert json.loads((plain / "compare.json").read_text())["barrier"] is None

    lonely = tmp_path / "lonely" / "results.json"  # a results.json without its weights anywhere
    lonely.parent.mkdir()
    data = json.loads(Path(audits["b"]).read_text())
    data["provenance"]["checkpoint_path"] = str(tmp_path / "gone.safetensors")
    lonely.write_text(json.dumps(data))
    with pytest.raises(DataError, match="needs the audit's weights"):
        barrier_between(load_result(audits["a"]), load_result(lonely), audits["a"], lonely, device="cpu")
    run = CliRunner().invoke(app, ["compare", str(audits["a"]), str(lonely), "--out", str(tmp_path / "x"),
                                   "--barrier"])
    assert run.exit_code == 2, run.output

    other = tmp_path / "other" / "results.json"
    other.parent.mkdir()
    data = json.loads(Path(audits["b"]).read_text())
    data["provenance"]["data_hash"] = "0" * 64
    other.write_text(json.dumps(data))
    with pytest.raises(DataError, match="different data files"):
        barrier_between(load_result(audits["a"]), load_result(other), audits["a"], other, device="cpu")
