"""Domain-shift diagnostics: planted shifts are detected and absent ones are not, bad inputs give a clear
error or a finding (never a crash or a NaN), the verdict names the case, and the audit and report carry it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from result_factory import make_result, make_shift

from traits import shift as SH
from traits.campaign import summarise, summary_markdown, summary_row
from traits.errors import SpecError
from traits.report import render_html
from traits.results import AuditResult, load_result
from traits.spec import GateSpec, load_spec
from traits.verdict import apply_verdict

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "audits" / "quickstart.yaml"


def finding(result: AuditResult, fid: str):
    return next((f for f in result.findings if f.id == fid), None)


# ------------------------------------------------------------------------------------------ targets


def test_target_shift_none_when_drawn_alike():
    rng = np.random.default_rng(0)
    train = rng.normal(-1.0, 0.8, 4000)
    same = rng.normal(-1.0, 0.8, 800)
    t = SH.target_shift(train, same)
    assert t["outside_p01_p99"] < 0.05 and t["outside_range"] < 0.01
    assert t["ks_statistic"] < 0.08 and t["ks_pvalue"] > 0.01
    assert t["wasserstein_std"] < 0.1


def test_target_shift_detects_a_shifted_copy_of_the_training_targets():
    rng = np.random.default_rng(1)
    train = rng.normal(-1.0, 0.8, 4000)
    shifted = train[:1000] + 0.8  # one training standard deviation
    t = SH.target_shift(train, shifted)
    assert t["wasserstein"] == pytest.approx(0.8, abs=0.05)
    assert t["wasserstein_std"] == pytest.approx(1.0, abs=0.07)
    assert t["ks_statistic"] > 0.3 and t["ks_pvalue"] < 1e-10
    far = SH.target_shift(train, train[:1000] + 4 * 0.8)  # far beyond the training range
    assert far["outside_p01_p99"] > 0.9 and far["outside_range"] > 0.5


def test_target_summary_quantiles():
    s = SH.target_summary(np.arange(101, dtype=float))
    assert s.n == 101 and s.mean == 50 and s.min == 0 and s.max == 100
    assert s.quantiles["q01"] == pytest.approx(1.0) and s.quantiles["q50"] == 50 and s.quantiles["q99"] == 99
    assert SH.target_summary([]).n == 0 and SH.target_summary([]).mean is None


# ------------------------------------------------------------------------------------------ distances


def test_knn_distances_exact_and_leave_one_out():
    ref = np.array([[0.0], [1.0], [3.0]])
    assert SH.knn_distances(ref, np.array([[2.0]]), k=2) == pytest.approx([1.0])
    assert SH.knn_distances_within(ref, k=1) == pytest.approx([1.0, 1.0, 2.0])
    # a duplicate compound is a neighbour at distance 0; the row itself never is
    dup = np.array([[0.0], [0.0], [5.0]])
    assert SH.knn_distances_within(dup, k=1) == pytest.approx([0.0, 0.0, 5.0])
    assert SH.knn_distances_within(dup, k=2, rows=np.array([2])) == pytest.approx([5.0])


def _compounds(rng, elements, n):
    out = []
    for _ in range(n):
        chosen = rng.choice(elements, size=int(rng.integers(2, 4)), replace=False)
        out.append(np.repeat(chosen, rng.integers(1, 6, size=len(chosen))))
    return out


@pytest.mark.parametrize("with_properties", [False, True])
def test_composition_distance_detects_disjoint_elements_and_not_a_fresh_draw(with_properties):
    rng = np.random.default_rng(2)
    known = np.array([3, 8, 9, 11, 12, 16, 17, 19, 20, 35])  # Li O F Na Mg S Cl K Ca Br
    other = np.array([26, 27, 28, 29, 30, 34, 42, 47, 52, 74])  # Fe Co Ni Cu Zn Se Mo Ag Te W
    zs = {"train": _compounds(rng, known, 600), "id": _compounds(rng, known, 150),
          "ood": _compounds(rng, other, 150)}
    space = SH.composition_space(zs, with_properties=with_properties)
    assert space["train"].shape[1] == 100 + (6 if with_properties else 0)
    r = SH.compute_shift({s: np.zeros(len(v)) + rng.normal(0, 1, len(v)) for s, v in zs.items()},
                         {"composition": space}, k=5)
    assert r.ratios["composition_knn_ratio"] > 2.5
    same = {**zs, "ood": _compounds(rng, known, 150)}
    r_same = SH.compute_shift({s: rng.normal(0, 1, len(v)) for s, v in same.items()},
                              {"composition": SH.composition_space(same, with_properties=with_properties)}, k=5)
    assert 0.75 < r_same.ratios["composition_knn_ratio"] < 1.33


def test_element_fractions_and_property_table():
    f = SH.element_fractions([np.array([26, 26, 8, 8, 8])])
    assert f.shape == (1, 100) and f[0, 25] == pytest.approx(0.4) and f[0, 7] == pytest.approx(0.6)
    table = SH.element_property_table()
    assert table.shape == (101, 6) and np.isfinite(table).all()  # gaps (He electronegativity) are filled
    with pytest.raises(SH.ShiftInputError, match="outside 1..100"):
        SH.element_fractions([np.array([0, 8])])


def test_embedding_distance_detects_shifted_gaussians_and_not_a_fresh_draw():
    rng = np.random.default_rng(3)
    emb = {"train": rng.normal(0, 1, (500, 16)), "id": rng.normal(0, 1, (150, 16)),
           "ood": rng.normal(0, 1, (150, 16)) + 2.0}
    ys = {s: rng.normal(0, 1, len(v)) for s, v in emb.items()}
    shifted = SH.compute_shift(ys, {"embedding": SH.standardise(emb)}, k=5)
    assert shifted.ratios["embedding_knn_ratio"] > 1.8 and shifted.ratios["embedding_knn_p90_ratio"] > 1.5
    emb["ood"] = rng.normal(0, 1, (150, 16))
    alike = SH.compute_shift(ys, {"embedding": SH.standardise(emb)}, k=5)
    assert 0.85 < alike.ratios["embedding_knn_ratio"] < 1.18
    # the train split's own distances leave each compound out and look like the ID ones
    tr, idd = alike.splits["train"].distances["embedding"], alike.splits["id"].distances["embedding"]
    assert tr.median == pytest.approx(idd.median, rel=0.15)


def test_standardise_by_the_training_split():
    emb = {"train": np.array([[1.0, 5.0], [3.0, 5.0]]), "ood": np.array([[2.0, 7.0]])}
    out = SH.standardise(emb)
    assert out["train"][:, 0] == pytest.approx([-1.0, 1.0])
    assert out["ood"][0] == pytest.approx([0.0, 2.0])  # a feature constant on train is left unscaled


# ------------------------------------------------------------------------------------------ bad inputs


def _no_nan(result) -> None:
    """Every number of the result is finite (a missing one is None, never a silent NaN)."""

    def walk(x):
        if isinstance(x, dict):
            return all(walk(v) for v in x.values())
        if isinstance(x, list | tuple):
            return all(walk(v) for v in x)
        return not isinstance(x, float) or math.isfinite(x)

    assert walk(result.model_dump())


def test_training_split_smaller_than_k():
    with pytest.raises(SH.ShiftInputError, match="fewer than the 5 needed for k = 5"):
        SH.knn_distances(np.zeros((3, 2)), np.zeros((1, 2)), k=5)
    rng = np.random.default_rng(4)
    emb = {"train": rng.normal(size=(3, 4)), "id": rng.normal(size=(10, 4)), "ood": rng.normal(size=(10, 4))}
    r = SH.compute_shift({s: rng.normal(size=len(v)) for s, v in emb.items()}, {"embedding": SH.standardise(emb)}, k=5)
    assert "embedding" not in r.splits["id"].distances and "embedding_knn_ratio" not in r.ratios
    assert any("3 compounds" in p and "k = 5" in p for p in r.problems)
    assert r.splits["ood"].ks_statistic is not None  # the target shift is still measured
    _no_nan(r)
    res = make_result(shift=r, nan_points=0)
    warn = finding(res, "shift_input")
    assert warn is not None and warn.level == "warn" and "too few for k = 5" in warn.statement
    assert next(g for g in res.gates if g.name == "embedding_knn_ratio").value is None


def test_constant_training_targets():
    rng = np.random.default_rng(5)
    r = SH.compute_shift({"train": np.full(50, -1.0), "id": np.full(10, -1.0), "ood": rng.normal(-1, 0.5, 20)})
    assert r.splits["ood"].wasserstein_std is None and r.splits["ood"].wasserstein is not None
    assert r.splits["id"].outside_range == 0.0 and r.splits["ood"].outside_range > 0.9
    assert any("constant" in p for p in r.problems)
    _no_nan(r)
    res = make_result(shift=r, nan_points=0)
    assert "constant" in finding(res, "shift_input").statement
    assert finding(res, "domain_shift").numbers["case"] == "extrapolation"  # every OOD target is off the point
    assert "NaN" not in render_html(res).split('<section id="shift">')[1].split("</section>")[0]


def test_nan_embeddings_are_left_out_and_recorded():
    rng = np.random.default_rng(6)
    emb = {"train": rng.normal(size=(80, 4)), "id": rng.normal(size=(20, 4)), "ood": rng.normal(size=(30, 4))}
    emb["ood"][:4, 1] = np.nan
    emb["train"][0, 0] = np.inf
    r = SH.compute_shift({s: rng.normal(size=len(v)) for s, v in emb.items()}, {"embedding": SH.standardise(emb)}, k=5)
    assert r.splits["ood"].distances["embedding"].n == 26 and r.splits["ood"].distances["embedding"].n_excluded == 4
    assert r.splits["train"].distances["embedding"].n_excluded == 1
    assert any("4 of 30 ood compounds" in p for p in r.problems)
    assert r.ratios["embedding_knn_ratio"] is not None
    _no_nan(r)
    emb["train"][:] = np.nan
    with pytest.raises(SH.ShiftInputError, match="no compound with finite features"):
        SH.standardise(emb)
    with pytest.raises(SH.ShiftInputError, match="NaN or infinite"):
        SH.knn_distances(np.full((10, 2), np.nan), np.zeros((1, 2)), k=2)


def test_each_stored_distance_keeps_the_id_of_its_compound():
    """ids travel with the subsample and with the rows left out for a NaN vector: the distance stored beside an
    id is that compound's own, recomputed here by brute force; the draw of the sample does not change; the
    training sample stores no ids."""
    rng = np.random.default_rng(11)
    emb = {"train": rng.normal(size=(40, 3)), "id": rng.normal(size=(12, 3)), "ood": rng.normal(1.0, 1, (30, 3))}
    emb["ood"][[2, 7], 0] = np.nan  # left out of the distances: no id for them
    emb["train"][5, 1] = np.inf
    ids = {s: [f"{s}-{i}" for i in range(len(x))] for s, x in emb.items()}
    targets = {s: rng.normal(size=len(x)) for s, x in emb.items()}
    spaces = {"embedding": SH.standardise(emb)}
    k, limit = 3, 20  # ood (28 finite) and train are subsampled, id is not
    r = SH.compute_shift(targets, spaces, k=k, seed=4, max_points=limit, ids=ids)
    x = spaces["embedding"]
    train_rows = [i for i in range(40) if i != 5]
    for s in ("id", "ood"):
        sample = r.samples[s]
        named, d = sample.ids["embedding"], sample.distances["embedding"]
        assert len(named) == len(d) == min(limit, len(x[s]) - {"id": 0, "ood": 2}[s])
        assert len(set(named)) == len(named)
        for cid, value in zip(named, d):
            i = int(cid.split("-")[1])
            dist = np.sort(np.linalg.norm(x["train"][train_rows] - x[s][i], axis=1))[:k].mean()
            assert value == pytest.approx(dist, rel=1e-5), cid
    ood_ids = r.samples["ood"].ids["embedding"]
    assert len(ood_ids) == limit and not {"ood-2", "ood-7"} & set(ood_ids)
    assert r.samples["train"].ids == {} and len(r.samples["train"].distances["embedding"]) == limit
    plain = SH.compute_shift(targets, spaces, k=k, seed=4, max_points=limit)
    assert all(not plain.samples[s].ids for s in plain.samples)  # no ids given: none stored
    assert {s: v.distances for s, v in plain.samples.items()} == {s: v.distances for s, v in r.samples.items()}
    short = SH.compute_shift(targets, spaces, k=k, seed=4, max_points=limit, ids={**ids, "ood": ids["ood"][:-1]})
    assert "embedding" not in short.samples["ood"].ids and short.samples["id"].ids["embedding"] == ids["id"]


# ------------------------------------------------------------------------------------------ verdict

#: Landscape ratios that pass every default gate.
CALM = {"mae_ratio": 1.2, "rmse_ratio": 1.1, "loss_ratio": 1.3, "lambda_ratio": 1.2, "trace_ratio": 1.1,
        "radius_ratio": 0.9, "sharpness_ratio": 1.0, "basin_area_ratio": 0.9}


def test_case_extrapolation_from_targets():
    res = make_result(shift=make_shift(target_shift=4.0), nan_points=0)
    f = finding(res, "domain_shift")
    assert f.numbers["case"] == "extrapolation" and f.level == "warn"
    assert f.statement.startswith("OOD targets lie outside the training range") and "extrapolation" in f.statement
    assert "not evidence of a fragile representation" in f.statement  # the sharp factory landscape is not blamed


def test_case_extrapolation_from_the_embedding_and_its_gate():
    res = make_result(shift=make_shift(embedding_shift=3.0), ratios=CALM, nan_points=0)
    f = finding(res, "domain_shift")
    assert f.numbers["case"] == "extrapolation" and "far from every training compound" in f.statement
    gate = next(g for g in res.gates if g.name == "embedding_knn_ratio")
    assert gate.level == "warn" and gate.value > 2.0 and res.status == "warn"
    strict = apply_verdict(res, GateSpec(fail_on=["embedding_knn_ratio"]))
    assert strict.status == "fail"


def test_case_fragile_when_close_in_the_embedding_but_sharp():
    res = make_result()  # factory: OOD close in embedding, landscape sharp and partly non-finite
    f = finding(res, "domain_shift")
    assert f.numbers["case"] == "fragile" and f.level == "warn"
    assert "close to training compounds in the model's embedding" in f.statement
    assert "sharp / discontinuous" in f.statement and "the representation is fragile" in f.statement


def test_case_fragile_when_the_ood_loss_jumps_first():
    res = make_result(ratios=CALM, nan_points=0)
    res.metrics["ood"].first_jump, res.metrics["id"].first_jump, res.metrics["id"].smooth_to = 0.12, None, 0.8
    apply_verdict(res, GateSpec())
    f = finding(res, "domain_shift")
    assert f.numbers["case"] == "fragile" and "discontinuous" in f.statement and "jumps at α = 0.12" in f.statement


def test_case_neither_when_close_and_calm():
    res = make_result(ratios=CALM, nan_points=0)
    f = finding(res, "domain_shift")
    assert f.numbers["case"] == "neither" and f.level == "pass" and res.status == "pass"
    assert "no sign of extrapolation or of a fragile representation" in f.statement


def test_no_shift_result_no_case():
    res = make_result(shift=None, ratios=CALM, nan_points=0)
    assert finding(res, "domain_shift") is None
    assert next(g for g in res.gates if g.name == "embedding_knn_ratio").value is None


def test_near_ratio_must_not_exceed_the_far_gate():
    with pytest.raises(SpecError, match="near_ratio"):
        load_spec(QUICKSTART, check_files=False, overrides={"probes.shift.near_ratio": 3.0})


def test_results_of_schema_1_0_still_load(tmp_path):
    old = json.loads(make_result(shift=None).model_dump_json())
    old["schema_version"] = "1.0"
    old.pop("shift")
    for key in [k for k in old["ratios"] if "knn" in k or k.startswith("target_")]:
        old["ratios"].pop(key)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(old))
    loaded = load_result(path)
    assert loaded.shift is None and loaded.schema_version == "1.0"
    assert "Domain-shift diagnostics: not run." in render_html(loaded)


# ------------------------------------------------------------------------------------------ campaign


def test_campaign_ranks_landscape_and_distance_side_by_side():
    rows = []
    for i in range(1, 7):
        row = summary_row(f"t{i}", make_result(ratios=CALM, nan_points=0))
        row |= {"seed": 0, "mae_ratio": float(i), "lambda_ratio": float((i * 7) % 5 + 1),
                "embedding_knn_ratio": 0.5 + i, "composition_knn_ratio": 2.0}
        rows.append(row)
    s = summarise(rows)
    c = s["spearman_vs_mae_ratio"]
    assert c["embedding_knn_ratio"]["rho"] == pytest.approx(1.0)
    assert c["embedding_knn_ratio"]["kind"] == "distance baseline"
    assert c["lambda_ratio"]["kind"] == "landscape" and c["composition_knn_ratio"]["rho"] is None
    best = s["best_predictor"]
    assert best["winner"] == "distance baseline" and best["distance baseline"]["metric"] == "embedding_knn_ratio"
    md = summary_markdown(s)
    assert "| distance baseline | embedding kNN distance | 1 |" in md and "| landscape | λ_max |" in md
    assert "OOD/ID embedding kNN" in md and "neither" in md and best["statement"] in md
    assert all(not (isinstance(v, float) and math.isnan(v)) for r in rows for v in r.values())


# ------------------------------------------------------------------------------------------ end to end


def test_audit_of_the_quickstart_has_a_shift_section(tmp_path):
    from traits.audit import run_audit

    spec = load_spec(QUICKSTART, overrides={
        "device": "cpu", "data.subsample": 300, "probes.hessian.enabled": False,
        "probes.surface.points_1d": 5, "probes.surface.two_d": False, "probes.surface.directions_1d": 1,
        "probes.surface.max_samples": 16, "probes.shift.max_train": 150, "report.formats": ["json", "html"],
    })
    out = tmp_path / "out"
    result = run_audit(spec, out)
    sh = result.shift
    assert sh is not None and sh.k == 5 and sh.n_train == 150 and sh.n_train_total == result.splits["train"].count
    assert set(sh.splits) == {"train", "id", "ood"}
    for s in ("id", "ood"):
        assert sh.splits[s].targets.n == result.splits[s].count
        assert set(sh.splits[s].distances) == {"composition", "embedding"}
        assert sh.splits[s].ks_statistic is not None and sh.splits[s].distances["embedding"].median > 0
        assert len(sh.samples[s].distances["embedding"]) == result.splits[s].count
        assert sorted(sh.samples[s].ids["embedding"]) == sorted(result.accuracy[s].ids)
        assert sorted(sh.samples[s].ids["composition"]) == sorted(result.accuracy[s].ids)
    for key in ("composition_knn_ratio", "embedding_knn_ratio", "target_wasserstein_ratio"):
        assert result.ratios[key] == sh.ratios[key] and result.ratios[key] > 0
    assert "shift" in result.provenance.wall_seconds
    assert finding(result, "domain_shift").numbers["case"] in ("extrapolation", "fragile", "neither")
    assert load_result(out / "results.json").shift == sh
    html = (out / "report.html").read_text(encoding="utf-8")
    section = html.split('<section id="shift">')[1].split("</section>")[0]
    assert "Is the OOD set inside the training domain?" in section and 'id="fig-shift"' in section
    assert "Embedding: mean distance to the k nearest training compounds" in section
    accuracy = html.split('<section id="accuracy">')[1].split("</section>")[0]
    assert '<th class="num joined">embedding distance to training' in accuracy  # joined to the worst compounds by id
