"""The risk of a ≥ 2× error in `traits screen`: the embedding kNN ratio of the screened set and of each element's
compounds against the model's own training and ID test compounds (rebuilt from the audit spec given as the
reference), the adopted trust score applied to it, and what the outputs say when it cannot be computed."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from traits.cli import app
from traits.data.sources import sample_path
from traits.screen import (
    RISK_MIN_COMPOUNDS,
    RiskReference,
    ScreenResult,
    render_screen_report,
    risk_summary,
    screen,
    screen_risk,
)
from traits.trust import adopted_score, audit_risk

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "traits" / "data" / "quickstart" / "model.safetensors"
SPEC = ROOT / "audits" / "quickstart.yaml"
N_ID_SCREENED = 60


def _records(ids: list[str]) -> list[dict]:
    wanted = set(ids)
    with gzip.open(sample_path(), "rt", encoding="utf-8") as fh:
        recs = [json.loads(line) for line in fh]
    out = [r for r in recs if r["material_id"] in wanted]
    for r in out:
        r.pop("formation_energy_per_atom", None)
        r.pop("band_gap", None)
    return out


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """The quickstart checkpoint screening its 300 Fe compounds (the OOD set it was trained without) and 60 of its
    ID test compounds, with the quickstart spec as the reference; the spec's splits prepared independently."""
    from traits.data.prepare import prepare_data
    from traits.spec import load_spec

    spec = load_spec(SPEC, need_checkpoint=False)
    data = prepare_data(spec)
    ids = data.manifest.ids["ood"] + data.manifest.ids["id"][:N_ID_SCREENED]
    d = tmp_path_factory.mktemp("screen-risk")
    (d / "new.json").write_text(json.dumps(_records(ids)), encoding="utf-8")
    res = screen(CKPT, [d / "new.json"], d / "out", formats=("html",), reference=SPEC)
    assert res.n_screened == len(ids)
    return {"spec": spec, "data": data, "ids": ids, "res": res, "dir": d}


def _independent_ratio(case) -> tuple[float, float]:
    """(the whole screened set's embedding kNN ratio, the ID test set's median kNN distance), recomputed from the
    checkpoint's embeddings with scikit-learn, the standardisation written out here."""
    from sklearn.neighbors import NearestNeighbors

    from traits.models.checkpoint import load_checkpoint
    from traits.models.inference import embed

    model, _ = load_checkpoint(CKPT, "traits", device=torch.device("cpu"))
    model.eval()
    splits = case["data"].splits
    assert len(splits["train"]) <= case["spec"].probes.shift.max_train  # no subsample: every training compound
    by_id = {g.material_id: g for s in ("id", "ood") for g in splits[s]}
    train = embed(model, splits["train"], torch.device("cpu"))
    ident = embed(model, splits["id"], torch.device("cpu"))
    screened = embed(model, [by_id[i] for i in case["ids"]], torch.device("cpu"))
    mean, sd = train.mean(0), train.std(0)
    sd = np.where(sd > 1e-12 * np.maximum(1.0, np.abs(mean)), sd, 1.0)
    k = case["spec"].probes.shift.k
    nn = NearestNeighbors(n_neighbors=k).fit((train - mean) / sd)
    d_id = nn.kneighbors((ident - mean) / sd)[0].mean(1)
    d_new = nn.kneighbors((screened - mean) / sd)[0].mean(1)
    return float(np.median(d_new) / np.median(d_id)), float(np.median(d_id))


def test_whole_set_ratio_equals_an_independent_recomputation_and_the_risk_is_the_trust_score(case):
    risk = case["res"].risk
    assert risk["computed"] and risk["reason"] is None
    expected, id_median = _independent_ratio(case)
    overall = risk["overall"]
    assert overall["n"] == len(case["ids"])
    assert overall["knn_ratio"] == pytest.approx(expected, rel=1e-5)
    assert risk["reference"]["id_median_distance"] == pytest.approx(id_median, rel=1e-5)
    want = audit_risk({"embedding_knn_ratio": overall["knn_ratio"]})
    assert (overall["probability"], overall["low"], overall["high"]) == (want["probability"], want["low"], want["high"])
    assert 0 < overall["low"] <= overall["probability"] <= overall["high"] < 1
    assert risk["score"]["evidence"] == want["evidence"] and "AUROC" in risk["score"]["evidence"]
    assert "checkpoint's own training split" in risk["reference"]["split"]


def test_the_fe_group_is_the_audits_ood_set_and_gets_the_audits_ratio(case):
    """The compounds holding Fe are exactly the quickstart audit's OOD set: their ratio is the one the audit's
    domain-shift probe measures (traits.audit.run_shift), which the trust score was fitted on."""
    from traits.audit import run_shift
    from traits.models.checkpoint import load_checkpoint

    model, _ = load_checkpoint(CKPT, "traits", device=torch.device("cpu"))
    shift = run_shift(case["spec"], model.eval(), case["data"].splits, torch.device("cpu"))
    fe = {g["name"]: g for g in case["res"].risk["by_element"]}["Fe"]
    assert fe["n"] == 300
    assert fe["knn_ratio"] == pytest.approx(shift.ratios["embedding_knn_ratio"], rel=1e-5)
    assert fe["probability"] == audit_risk({"embedding_knn_ratio": fe["knn_ratio"]})["probability"]


def test_small_groups_get_no_risk_and_large_ones_do(case):
    groups = case["res"].risk["by_element"]
    small = [g for g in groups if g["n"] < RISK_MIN_COMPOUNDS]
    large = [g for g in groups if g["n"] >= RISK_MIN_COMPOUNDS]
    assert small and large
    assert all(g["probability"] is None and g["low"] is None and "fewer than" in g["why"] for g in small)
    assert all(g["probability"] is not None and g["why"] is None for g in large)
    assert all(g["knn_ratio"] is not None and g["knn_ratio"] > 0 for g in groups)
    rated = [g["probability"] for g in groups if g["probability"] is not None]
    assert rated == sorted(rated, reverse=True)
    html = case["res"].files["html"].read_text(encoding="utf-8")
    section = html[html.index('<section id="risk">'):]
    section = section[:section.index("</section>")]
    assert "Risk of a ≥ 2× error" in section and "AUROC" in section and "Caveat" in section
    assert f'<td class="name">{large[0]["name"]}</td>' in section
    assert f'<td class="name">{small[0]["name"]}</td>' not in section
    assert f"{small[0]['name']} {small[0]['n']}" in section


def test_the_report_and_terminal_show_the_risk_with_its_evidence(case):
    lines = risk_summary(case["res"].risk)
    assert lines[0].startswith("risk of a ≥ 2× error") and "all screened" in lines[0]
    assert any(line.startswith("score: ") and "leave-one-rule-out AUROC" in line for line in lines)
    assert any("weak evidence outside it" in line for line in lines)
    html = case["res"].files["html"].read_text(encoding="utf-8")
    overall = case["res"].risk["overall"]
    assert f"{overall['probability']:.2f} [{overall['low']:.2f}, {overall['high']:.2f}]" in html
    doc = json.loads((case["dir"] / "out" / "predictions.json").read_text(encoding="utf-8"))
    assert doc["risk"]["overall"]["knn_ratio"] == pytest.approx(overall["knn_ratio"])


def test_no_reference_gives_no_risk_and_says_why(case, tmp_path):
    res = screen(CKPT, [case["dir"] / "new.json"], tmp_path, formats=("html",))
    assert not res.risk["computed"] and res.risk["overall"] is None and res.risk["by_element"] == []
    assert "--reference" in res.risk["reason"]
    html = (tmp_path / "screen.html").read_text(encoding="utf-8")
    assert "Not computed: no reference given" in html and "not computed</td>" in html
    assert risk_summary(res.risk)[0].startswith("risk of a ≥ 2× error: not computed (no reference given")


def test_a_reference_that_is_not_the_models_training_split_gives_no_risk(case, tmp_path):
    text = SPEC.read_text(encoding="utf-8").replace("  target: formation_energy_per_atom",
                                                    "  target: formation_energy_per_atom\n  subsample: 300")
    other = tmp_path / "other.yaml"
    other.write_text(text, encoding="utf-8")
    res = screen(CKPT, [case["dir"] / "new.json"], tmp_path / "out", formats=(), reference=other)
    assert not res.risk["computed"] and "not the one the checkpoint was trained on" in res.risk["reason"]
    assert res.risk["reference"]["spec"] == "other.yaml"


def _synthetic(names_per_row: list[list[str]], seed: int = 0):
    rng = np.random.default_rng(seed)
    ref = RiskReference(rng.normal(size=(200, 4)), rng.normal(size=(50, 4)), 5, {"spec": "s.yaml", "split": "x"})
    phi = rng.normal(size=(len(names_per_row), 4)) * 1.5
    rows = [{"elements": names} for names in names_per_row]
    return rows, phi, ref


def test_screen_risk_groups_by_element_and_excludes_non_finite_embeddings():
    rows, phi, ref = _synthetic([["A", "B"]] * 25 + [["A"]] * 5 + [["C"]] * 3)
    phi[0] = np.nan
    risk = screen_risk(rows, phi, ref, minimum=20)
    by = {g["name"]: g for g in risk["by_element"]}
    assert by["A"]["n"] == 29 and by["B"]["n"] == 24 and by["C"]["n"] == 3 and risk["overall"]["n"] == 32
    assert by["C"]["probability"] is None and by["A"]["probability"] is not None
    from sklearn.neighbors import NearestNeighbors

    mean, sd = ref.train.mean(0), ref.train.std(0)
    nn = NearestNeighbors(n_neighbors=5).fit((ref.train - mean) / sd)
    d_id = np.median(nn.kneighbors((ref.id - mean) / sd)[0].mean(1))
    d_b = np.median(nn.kneighbors((phi[1:25] - mean) / sd)[0].mean(1))
    assert by["B"]["knn_ratio"] == pytest.approx(d_b / d_id, rel=1e-9)
    assert by["B"]["knn_ratio"] > 1  # the screened embeddings are spread wider than the training ones


def _model(name: str, features: list[str], coef: float) -> dict:
    n = len(features)
    return {"name": name, "features": features, "means": [0.0] * n, "sds": [1.0] * n, "coef": [coef] * n,
            "intercept": 0.0, "refits": []}


def test_a_score_shipping_other_signals_is_applied_through_its_distance_fallback():
    """A screen measures only the embedding distance: of a score whose shipped candidate needs other signals it
    applies the M0 fallback, and says so with the fallback's own evidence; without a fallback, no risk."""
    from traits.screen import risk_caveat

    rows, phi, ref = _synthetic([["A"]] * 30)
    ev = {"n_audits": 150, "n_rules": 25, "loro_auroc": {"auroc": 0.91, "low": 0.8, "high": 0.97}}
    m0 = _model("M0", ["embedding_knn_ratio"], 2.0) | {
        "evidence": {"role": "fallback where M1's signals are not measured",
                     "loro_auroc": {"auroc": 0.74, "low": 0.6, "high": 0.85}}}
    score = {"study_version": "s2", "candidate": "M1", "ships_as_default": True, "evidence": ev,
             "models": [_model("M1", ["embedding_knn_ratio", "gn_trace_ratio"], 1.0), m0]}
    risk = screen_risk(rows, phi, ref, score=score)
    assert risk["computed"] and risk["score"]["model"] == "M0"
    assert "AUROC 0.74 [0.60, 0.85]" in risk["score"]["evidence"] and "0.91" not in risk["score"]["evidence"]
    z = math.log(risk["overall"]["knn_ratio"])
    assert risk["overall"]["probability"] == pytest.approx(1 / (1 + math.exp(-2.0 * z)))
    assert "model on that distance alone" in risk_caveat(score) and "0.74" in risk_caveat(score)
    without = score | {"models": score["models"][:1]}
    bare = screen_risk(rows, phi, ref, score=without)
    assert bare["overall"]["probability"] is None and "gives no risk here" in risk_caveat(without)


def test_without_an_adopted_score_or_embedding_there_is_no_risk(monkeypatch):
    rows, phi, ref = _synthetic([["A"]] * 30)
    assert screen_risk(rows, None, ref)["reason"] == "the model offers no embedding"
    monkeypatch.setattr("traits.trust.adopted_score", lambda: None)
    risk = screen_risk(rows, phi, ref)
    assert not risk["computed"] and risk["reason"] == "no trust score is adopted"
    assert adopted_score is not None


def _hostile_doc(evil: str) -> dict:
    from tests.test_screen_report import _doc, _row

    rows = [_row(str(i), ["Fe", "O"], -1.0, 1.0, 1.0, "ok") for i in range(3)]
    names, phi, ref = _synthetic([[evil]] * 25)
    ref.info["spec"] = evil + ".yaml"
    ref.info["split"] = evil
    doc = _doc(rows)
    doc["risk"] = screen_risk(names, phi, ref)
    return doc


def test_hostile_group_and_reference_names_are_escaped_in_the_report(tmp_path):
    evil = "<script>alert(1)</script>"
    doc = _hostile_doc(evil)
    assert doc["risk"]["by_element"][0]["name"] == evil and doc["risk"]["by_element"][0]["probability"] is not None
    html = render_screen_report(doc, tmp_path, ("html",))["html"].read_text(encoding="utf-8")
    assert "<script" not in html.lower()
    assert '<td class="name">&lt;script&gt;alert(1)&lt;/script&gt;</td>' in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.yaml" in html


def test_hostile_group_names_reach_the_terminal_without_control_characters(monkeypatch, tmp_path):
    evil = "\x1b[2J\x1b]0;owned\x07Fe\u202e"
    doc = _hostile_doc(evil)

    def fake(*_args, **_kwargs):
        return ScreenResult(tmp_path, 3, 3, {}, True, 0, 0, {}, doc, {}, doc["risk"])

    monkeypatch.setattr("traits.screen.screen", fake)
    got = CliRunner().invoke(app, ["screen", str(CKPT), str(tmp_path), "--out", str(tmp_path / "o")])
    assert got.exit_code == 0, got.output
    assert "\x1b" not in got.output and "\x07" not in got.output and "\u202e" not in got.output
    assert "\\x1b[2J" in got.output and "risk of a ≥ 2× error" in got.output


def test_a_spec_as_the_model_screens_with_its_model_and_its_split_as_reference(case, tmp_path):
    """`traits screen SPEC.yaml STRUCTURES`: the spec's checkpoint screens, and its split is the risk's reference,
    so the numbers equal those of the checkpoint given explicitly with --reference SPEC."""
    got = CliRunner().invoke(app, ["screen", str(SPEC), str(case["dir"] / "new.json"), "--out", str(tmp_path / "o"),
                                   "--report", "none"])
    assert got.exit_code == 0, got.output
    mine = json.loads((tmp_path / "o" / "predictions.json").read_text())
    theirs = json.loads((case["dir"] / "out" / "predictions.json").read_text())
    assert mine["risk"]["overall"]["probability"] == pytest.approx(theirs["risk"]["overall"]["probability"])
    assert [r["prediction"] for r in mine["compounds"]] == pytest.approx([r["prediction"] for r in theirs["compounds"]])
    clash = CliRunner().invoke(app, ["screen", str(SPEC), str(case["dir"] / "new.json"), "--out", str(tmp_path / "p"),
                                     "--model", "chgnet"])
    assert clash.exit_code == 2 and "drop --model" in clash.output
