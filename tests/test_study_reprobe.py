"""``traits study reprobe`` and the cross-seed ensemble of study v2 (traits.study.reprobe), on a tiny campaign of
the bundled sample: two seeds of one omission task are trained, then re-probed from their kept checkpoints.

The reference for a re-probed audit is the audit that trained the model: the same model on the same split
must give the same predictions, compound by compound; the ensemble's predictions are checked against those too.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from test_campaign import mini_spec

from traits.campaign import run_campaign
from traits.errors import TraitsError
from traits.study.reprobe import ensemble_predictions, kept_checkpoints, reprobe
from traits.study.v2 import ensemble_disagreement

TASK = "a-enthalpy-fe"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("reprobe")
    campaign = root / "campaign"
    campaign.mkdir()
    spec = mini_spec("enthalpy-fe", "formation_energy_per_atom", ["Fe"])
    spec["probes"]["hessian"]["enabled"] = False
    spec["probes"]["surface"]["enabled"] = False
    (campaign / f"{TASK}.yaml").write_text(yaml.safe_dump(spec))
    (campaign / "campaign.yaml").write_text(yaml.safe_dump({"profiles": {
        "tiny": {"data.subsample": 200},
        "tiny-lf": {"data.subsample": 200, "probes.label_free.enabled": True, "probes.surface.enabled": True,
                    "probes.surface.two_d": False}}}))
    runs = root / "runs"
    run_campaign(campaign, runs, seeds=[0, 1], profile="tiny")
    return campaign, runs, root


def _result(path):
    return json.loads(path.read_text())


def test_reprobe_reuses_the_kept_checkpoints_on_the_same_split(trained):
    campaign, runs, root = trained
    kept = kept_checkpoints(runs)
    assert set(kept) == {0, 1} and set(kept[0]) == {TASK}
    out = root / "reprobed"
    reprobe(runs, campaign, out, profile="tiny-lf")
    for seed in (0, 1):
        before = _result(runs / f"seed-{seed}" / TASK / "results.json")
        after = _result(out / f"seed-{seed}" / TASK / "results.json")
        assert after["provenance"]["checkpoint_path"] == str(kept[seed][TASK])
        assert after["provenance"]["seed"] == seed and after["label_free"] is not None
        assert not (out / f"seed-{seed}" / TASK / "model").exists()  # nothing was trained
        for split in ("id", "ood"):
            assert after["accuracy"][split]["ids"] == before["accuracy"][split]["ids"]
            assert after["accuracy"][split]["predictions"] == pytest.approx(before["accuracy"][split]["predictions"],
                                                                           rel=1e-6)
    written = yaml.safe_load((out / "specs" / "seed-1" / f"{TASK}.yaml").read_text())
    assert written["seed"] == 1 and written["model"]["checkpoint"] == str(kept[1][TASK])


def test_the_ensemble_predicts_compounds_no_seed_trained_on(trained):
    campaign, runs, _ = trained
    kept = kept_checkpoints(runs)
    ckpts = {s: kept[s][TASK] for s in kept}
    preds, id_ids, ood_ids = ensemble_predictions(campaign, TASK, ckpts, profile="tiny")
    assert id_ids and ood_ids and set(preds) == {0, 1}
    trained_ids = set()
    for s in (0, 1):
        manifest = json.loads((runs / f"seed-{s}" / TASK / "split_manifest.json").read_text())
        trained_ids |= set(manifest["ids"]["train"])
    assert trained_ids and not trained_ids & set(id_ids + ood_ids)
    for s in (0, 1):  # each model's predictions equal those its own audit made on the compounds they share
        acc = _result(runs / f"seed-{s}" / TASK / "results.json")["accuracy"]
        own = {i: p for split in ("id", "ood") for i, p in zip(acc[split]["ids"], acc[split]["predictions"])}
        shared = [i for i in id_ids + ood_ids if i in own]
        assert shared
        assert [preds[s][i] for i in shared] == pytest.approx([own[i] for i in shared], rel=1e-5)
    b4 = ensemble_disagreement(preds, id_ids, ood_ids)
    assert b4 is not None and b4 > 0


def test_a_missing_checkpoint_is_never_trained_in_its_place(trained, tmp_path):
    campaign, _, _ = trained
    with pytest.raises(TraitsError, match="no such checkpoint"):
        ensemble_predictions(campaign, TASK, {0: tmp_path / "gone.safetensors"}, profile="tiny")
    with pytest.raises(TraitsError, match="no finished audit with a kept checkpoint"):
        reprobe(tmp_path, campaign, tmp_path / "out", profile="tiny")


def test_the_ensemble_signal_is_cached_task_by_task(trained, tmp_path, monkeypatch):
    from traits.study import reprobe as rp
    from traits.study.cli import ensemble_signal

    campaign, runs, _ = trained
    cache = tmp_path / "ensemble.json"
    first = ensemble_signal(runs, campaign, "tiny", cache, lambda _m: None)
    assert set(first) == {TASK} and first[TASK] > 0
    assert json.loads(cache.read_text()) == {f"{TASK}:0,1": first[TASK]}
    per = json.loads((tmp_path / "ensemble-compounds.json").read_text())[TASK]
    assert per["seeds"] == [0, 1] and per["id"] and per["ood"]
    # the task's value is the mean OOD over the mean ID per-compound disagreement kept beside it
    assert first[TASK] == pytest.approx(np.mean(list(per["ood"].values())) / np.mean(list(per["id"].values())))

    def fail(*_a, **_k):
        raise AssertionError("recomputed a cached task")

    monkeypatch.setattr(rp, "ensemble_predictions", fail)
    assert ensemble_signal(runs, campaign, "tiny", cache, lambda _m: None) == first
    (tmp_path / "ensemble-compounds.json").unlink()  # a cache made before the per-compound file: recomputed
    with pytest.raises(AssertionError, match="recomputed"):
        ensemble_signal(runs, campaign, "tiny", cache, lambda _m: None)
