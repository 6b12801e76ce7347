"""A miniature campaign end to end (tiny subsample, one epoch, small grids), so the path never rots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import MP_FILE, needs_shared
from traits.campaign import load_campaign, run_campaign, summarise, summary_markdown
from traits.cli import app
from traits.errors import SpecError, TraitsError

ROOT = Path(__file__).resolve().parents[1]


def mini_spec(name: str, target: str, omit: list[str]) -> dict:
    return {
        "name": name, "seed": 0,
        "data": {"source": "sample", "target": target},
        "omit": omit,
        "split": {"train": 0.7, "val": 0.15, "test": 0.15},
        "model": {"hyper": {"atom_fea_len": 8, "n_conv": 1, "h_fea_len": 8},
                  "train": {"epochs": 1, "batch_size": 32}},
        "probes": {
            "hessian": {"top_k": 2, "max_steps": 8, "trace_hvps": 6, "density_runs": 1, "density_steps": 6,
                        "max_samples": 24},
            "surface": {"points_1d": 7, "points_2d": 5, "directions_1d": 1, "max_samples": 32, "span": 0.5},
        },
        "report": {"formats": ["json"]},
    }


@pytest.fixture()
def campaign_dir(tmp_path):
    d = tmp_path / "campaign"
    d.mkdir()
    (d / "a-enthalpy-fe.yaml").write_text(yaml.safe_dump(mini_spec("enthalpy-fe", "formation_energy_per_atom", ["Fe"])))
    (d / "b-gap-random.yaml").write_text(yaml.safe_dump(mini_spec("gap-random", "band_gap", [])))
    (d / "campaign.yaml").write_text(yaml.safe_dump({"profiles": {"tiny": {"data.subsample": 160}}}))
    return d


def test_mini_campaign_runs_resumes_and_summarises(campaign_dir, tmp_path):
    out = tmp_path / "out"
    logs: list[str] = []
    summary = run_campaign(campaign_dir, out, seeds=[0, 1], profile="tiny", log=logs.append)
    assert len(summary["rows"]) == 4
    assert {r["task"] for r in summary["rows"]} == {"a-enthalpy-fe", "b-gap-random"}
    for seed in (0, 1):
        for task in ("a-enthalpy-fe", "b-gap-random"):
            res = json.loads((out / f"seed-{seed}" / task / "results.json").read_text())
            assert res["provenance"]["seed"] == seed
            assert res["spec"]["data"]["subsample"] == 160
            assert (out / f"seed-{seed}" / task / "model" / "model.safetensors").is_file()
    for name in ("summary.json", "summary.md", "summary.html", "summary.pdf"):
        assert (out / name).stat().st_size > 0
    saved = json.loads((out / "summary.json").read_text())
    fe = next(t for t in saved["tasks"] if t["task"] == "a-enthalpy-fe")
    rows = [r for r in saved["rows"] if r["task"] == "a-enthalpy-fe"]
    assert fe["mae_ratio"] == pytest.approx(sum(r["mae_ratio"] for r in rows) / 2)
    assert rows[0]["mae_ratio"] == pytest.approx(rows[0]["ood_mae"] / rows[0]["id_mae"])
    assert set(saved["spearman_vs_mae_ratio"]) >= {"lambda_ratio", "trace_ratio", "radius_ratio"}
    md = (out / "summary.md").read_text()
    assert "a-enthalpy-fe" in md and "none (random)" in md and "Spearman" in md
    html = (out / "summary.html").read_text()
    assert "Tasks compared" in html and "data:image/svg+xml" in html

    # A second run resumes: every task is reused, nothing is retrained.
    logs.clear()
    again = run_campaign(campaign_dir, out, seeds=[0, 1], profile="tiny", log=logs.append)
    assert sum("done earlier" in m for m in logs) == 4
    assert [r["id_mae"] for r in again["rows"]] == [r["id_mae"] for r in summary["rows"]]


def test_changed_spec_is_rerun_not_reused(campaign_dir, tmp_path):
    spec = yaml.safe_load((campaign_dir / "a-enthalpy-fe.yaml").read_text())
    spec["report"]["formats"] = ["json", "html"]
    (campaign_dir / "a-enthalpy-fe.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    run_campaign(campaign_dir, out, seeds=[0], profile="tiny")
    spec = yaml.safe_load((campaign_dir / "b-gap-random.yaml").read_text())
    spec["probes"]["surface"]["tolerance"] = 0.2
    (campaign_dir / "b-gap-random.yaml").write_text(yaml.safe_dump(spec))
    logs: list[str] = []
    run_campaign(campaign_dir, out, seeds=[0], profile="tiny", log=logs.append)
    assert any("a-enthalpy-fe: done earlier" in m for m in logs)
    assert any("b-gap-random: running" in m for m in logs)

    # Other gates do not change a measurement: the finished audit is re-gated, not rerun.
    where = out / "seed-0" / "a-enthalpy-fe"
    before = json.loads((where / "results.json").read_text())
    assert "FAIL" not in (where / "report.html").read_text()
    spec = yaml.safe_load((campaign_dir / "a-enthalpy-fe.yaml").read_text())
    spec["gates"] = {"max_mae_ratio": 1e-6, "fail_on": ["mae_ratio"]}
    (campaign_dir / "a-enthalpy-fe.yaml").write_text(yaml.safe_dump(spec))
    logs.clear()
    summary = run_campaign(campaign_dir, out, seeds=[0], profile="tiny", log=logs.append)
    assert not any("running" in m for m in logs)
    assert any("re-gated" in m and "a-enthalpy-fe" in m for m in logs)
    after = json.loads((where / "results.json").read_text())
    assert after["ratios"] == before["ratios"] and after["accuracy"] == before["accuracy"]
    assert after["spec"]["gates"]["max_mae_ratio"] == 1e-6 and after["status"] == "fail"
    assert json.loads((where / ".traits-audit.json").read_text())["spec"]["gates"] == after["spec"]["gates"]
    assert "FAIL" in (where / "report.html").read_text()  # the report describes the new verdict
    assert next(r for r in summary["rows"] if r["task"] == "a-enthalpy-fe")["status"] == "fail"
    logs.clear()
    run_campaign(campaign_dir, out, seeds=[0], profile="tiny", log=logs.append)
    assert not any("re-gated" in m for m in logs) and sum("done earlier" in m for m in logs) == 2

    # A task stopped before its results.json, whose gates changed since, resumes instead of being refused.
    (where / "results.json").unlink()
    spec["gates"] = {"fail_on": ["mae_ratio", "radius_ratio"]}
    (campaign_dir / "a-enthalpy-fe.yaml").write_text(yaml.safe_dump(spec))
    logs.clear()
    run_campaign(campaign_dir, out, seeds=[0], profile="tiny", log=logs.append)
    assert any("only the gates changed" in m for m in logs) and any("a-enthalpy-fe: running" in m for m in logs)
    resumed = json.loads((where / "results.json").read_text())
    assert resumed["spec"]["gates"]["fail_on"] == ["mae_ratio", "radius_ratio"]
    assert resumed["accuracy"]["id"]["mae"] == pytest.approx(before["accuracy"]["id"]["mae"])  # the same model


def test_campaign_errors(tmp_path, campaign_dir):
    with pytest.raises(SpecError, match="no such campaign directory"):
        load_campaign(tmp_path / "absent")
    with pytest.raises(SpecError, match="no profile 'huge'"):
        load_campaign(campaign_dir, "huge")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SpecError, match="no audit specs"):
        load_campaign(empty)


def test_spearman_and_markdown_on_planted_rows():
    rows = [{"task": f"t{i}", "target": "band_gap", "omit": ["O"], "unit": "eV", "seed": 0, "status": "pass",
             "id_mae": 1.0, "ood_mae": float(i), "mae_ratio": float(i), "lambda_ratio": 2.0 * i,
             "trace_ratio": 10.0 - i, "radius_ratio": None, "sharpness_ratio": 1.0, "basin_area_ratio": 1.0,
             "loss_ratio": float(i) ** 2, "id_lambda_max": 1.0, "ood_lambda_max": 2.0, "id_trace": 1.0,
             "ood_trace": 1.0, "id_robust_radius": 0.1, "ood_robust_radius": None}
            for i in range(1, 6)]
    s = summarise(rows)
    assert s["spearman_vs_mae_ratio"]["lambda_ratio"]["rho"] == pytest.approx(1.0)
    assert s["spearman_vs_mae_ratio"]["trace_ratio"]["rho"] == pytest.approx(-1.0)
    assert s["spearman_vs_mae_ratio"]["radius_ratio"]["rho"] is None  # never measured
    assert s["spearman_vs_mae_ratio"]["sharpness_ratio"]["rho"] is None  # constant
    assert "| t3 |" in summary_markdown(s)


def test_summary_pages_name_a_holdout_rule_not_a_random_split(tmp_path):
    from traits.campaign import write_summary

    rows = [{"task": f"t{i}", "target": "band_gap", "omit": [], "unit": "eV", "seed": 0, "status": "pass",
             "holdout": {"kind": "chemsys", "values": ["Fe-O", "Li-O"]} if i == 1 else None,
             "id_mae": 1.0, "ood_mae": float(i), "mae_ratio": float(i), "lambda_ratio": 2.0 * i,
             "trace_ratio": 1.0, "radius_ratio": 1.0, "failed_gates": [], "wall_seconds": 1.0}
            for i in range(1, 4)]
    summary = {**summarise(rows), "campaign": "planted", "profile": None, "missing": [], "wall_seconds_this_run": 1.0,
               "executor": {"kind": "local", "workers": 1, "threads_per_worker": None, "scheduler": None}}
    write_summary(summary, tmp_path)
    for name in ("summary.md", "summary.html"):
        text = (tmp_path / name).read_text()
        assert "chemsys Fe-O, Li-O" in text and text.count("none (random)") == 2, name


@needs_shared(MP_FILE)
def test_reference_campaign_specs_share_settings():
    tasks = load_campaign(ROOT / "audits" / "reference", "cpu", seed=0)
    assert len(tasks) == 6
    first = tasks[0].spec
    for t in tasks:
        assert t.spec.model.hyper == first.model.hyper
        assert t.spec.model.train == first.model.train
        assert t.spec.probes == first.probes
        assert t.spec.data.subsample == first.data.subsample == 2500
    assert sorted((t.spec.data.target, tuple(t.spec.omit)) for t in tasks) == sorted(
        (target, omit) for target in ("band_gap", "formation_energy_per_atom") for omit in (("Fe",), ("O",), ()))


def test_cli_campaign(campaign_dir, tmp_path):
    result = CliRunner().invoke(app, ["campaign", str(campaign_dir), "--out", str(tmp_path / "o"),
                                      "--profile", "tiny", "--seeds", "3"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "seed-3" / "a-enthalpy-fe" / "results.json").is_file()
    assert "OOD/ID MAE" in result.output


def test_summary_only_runs_nothing_and_lists_missing(campaign_dir, tmp_path):
    out = tmp_path / "out"
    run_campaign(campaign_dir, out, seeds=[0], profile="tiny")
    logs: list[str] = []
    summary = run_campaign(campaign_dir, out, seeds=[0, 5], profile="tiny", log=logs.append, summary_only=True)
    assert len(summary["rows"]) == 2
    assert summary["missing"] == [{"seed": 5, "task": "a-enthalpy-fe"}, {"seed": 5, "task": "b-gap-random"}]
    assert not (out / "seed-5").exists()
    assert "Not finished" in (out / "summary.md").read_text()
    with pytest.raises(TraitsError, match="no finished audit"):
        run_campaign(campaign_dir, tmp_path / "empty", seeds=[0], profile="tiny", summary_only=True)
    only = run_campaign(campaign_dir, out, seeds=[0], profile="tiny", summary_only=True, only=["b-*"])
    assert [r["task"] for r in only["rows"]] == ["b-gap-random"] and only["missing"] == []
    with pytest.raises(SpecError, match="no task matches --only"):
        run_campaign(campaign_dir, out, seeds=[0], profile="tiny", summary_only=True, only=["zz*"])


def test_a_random_split_of_an_older_split_scheme_is_redrawn_not_reused(campaign_dir, tmp_path):
    """A random-split task folder whose audit (and trained model) came from split scheme 1 holds another
    partition under the same spec: the campaign neither reuses it nor resumes its model, but redraws it. An
    omission task is drawn alike by both schemes and stays reused."""
    from traits.data.splits import SPLIT_SCHEME

    out = tmp_path / "out"
    run_campaign(campaign_dir, out, seeds=[0], profile="tiny")
    for task in ("a-enthalpy-fe", "b-gap-random"):  # make both look as if drawn by scheme 1
        where = out / "seed-0" / task
        res = json.loads((where / "results.json").read_text())
        res["provenance"]["split_scheme"] = 1
        (where / "results.json").write_text(json.dumps(res))
        manifest = json.loads((where / "model" / "split_manifest.json").read_text())
        manifest.pop("scheme")
        (where / "model" / "split_manifest.json").write_text(json.dumps(manifest))
    logs: list[str] = []
    run_campaign(campaign_dir, out, seeds=[0], profile="tiny", log=logs.append)
    assert any("a-enthalpy-fe: done earlier" in m for m in logs)
    assert any("b-gap-random: running" in m for m in logs)
    assert any("drawn by split scheme 1" in m and "the trained model included" in m for m in logs)
    redrawn = out / "seed-0" / "b-gap-random"
    assert json.loads((redrawn / "results.json").read_text())["provenance"]["split_scheme"] == SPLIT_SCHEME
    assert json.loads((redrawn / "model" / "split_manifest.json").read_text())["scheme"] == SPLIT_SCHEME


def test_a_task_asks_for_what_its_pinned_device_needs(campaign_dir):
    """campaign.yaml's task entry wins; else a spec pinned to a device asks for it (a ``device: cpu`` audit
    under a GPU default must not wait for a GPU worker); else the default; else one CPU."""
    from dataclasses import replace

    from traits.campaign import task_resources

    task = load_campaign(campaign_dir)[0]
    pinned = {d: replace(task, spec=task.spec.model_copy(update={"device": d})) for d in ("auto", "cpu", "cuda")}
    gpu_default = {"default": {"GPU": 1}}
    assert task_resources(pinned["cpu"], gpu_default) == {"CPU": 1}
    assert task_resources(pinned["auto"], gpu_default) == {"GPU": 1}
    assert task_resources(pinned["cuda"], {}) == {"GPU": 1}
    assert task_resources(pinned["auto"], {}) == {"CPU": 1}
    assert task_resources(pinned["cpu"], {task.name: {"GPU": 1}}) == {"GPU": 1}
