"""The audit engine end to end on the bundled sample and the shipped quickstart checkpoint.

Probe settings are shrunk by overrides so that the whole file runs in seconds; with ``data.subsample``
the split differs from the checkpoint's training split, which the audit must flag ('checkpoint_split').
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import traits.files
from traits.audit import run_audit
from traits.data.splits import SPLIT_SCHEME
from traits.errors import CheckpointError, DataError, OutputError, TraitsError
from traits.results import AuditResult, load_result
from traits.spec import load_spec
from traits.verdict import exit_code

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "audits" / "quickstart.yaml"
CHECKPOINT = ROOT / "traits" / "data" / "quickstart" / "model.safetensors"

SMALL = {
    "device": "cpu",
    "data.subsample": 400,
    "probes.hessian.max_samples": 16,
    "probes.hessian.top_k": 2,
    "probes.hessian.max_steps": 6,
    "probes.hessian.trace_hvps": 3,
    "probes.hessian.density_runs": 1,
    "probes.hessian.density_steps": 4,
    "probes.surface.points_1d": 9,
    "probes.surface.points_2d": 5,
    "probes.surface.max_samples": 32,
    "report.formats": ["json", "html"],
}
#: Settings for the error paths: as little work as possible before the error.
TINY = {**SMALL, "data.subsample": 200, "probes.hessian.max_samples": 4, "probes.surface.max_samples": 4,
        "probes.surface.points_1d": 5, "report.formats": ["json"]}


def spec_with(**overrides):
    return load_spec(QUICKSTART, overrides={**SMALL, **overrides})


def dotted(**overrides):
    return {k.replace("__", "."): v for k, v in overrides.items()}


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """One audit of the quickstart spec; records every atomic rename made while it ran."""
    out = tmp_path_factory.mktemp("audit") / "out"
    renames: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def recording_replace(src, dst, *args, **kwargs):
        renames.append((Path(src), Path(dst)))
        return real_replace(src, dst, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(traits.files.os, "replace", recording_replace)
        result = run_audit(spec_with(), out, spec_path=str(QUICKSTART), command="pytest")
    return result, out, renames


def test_results_json_is_written_and_loads(audited):
    result, out, _ = audited
    assert isinstance(result, AuditResult)
    loaded = load_result(out / "results.json")
    assert loaded.model_dump() == result.model_dump()
    assert loaded.name == "quickstart-formation-energy-omit-Fe" and loaded.omit == ["Fe"]
    assert loaded.target == "formation_energy_per_atom" and loaded.unit == "eV/atom"
    prov = loaded.provenance
    assert prov.checkpoint_path == str(CHECKPOINT.resolve())
    assert prov.checkpoint_sha256 == hashlib.sha256(CHECKPOINT.read_bytes()).hexdigest()
    assert prov.device == "cpu" and prov.seed == 0 and prov.command == "pytest"
    assert {"data", "model", "accuracy", "hessian_id", "hessian_ood", "surfaces"} <= set(prov.wall_seconds)
    manifest = json.loads((out / "split_manifest.json").read_text())
    assert manifest["manifest_hash"] == prov.manifest_hash
    assert manifest["scheme"] == prov.split_scheme == SPLIT_SCHEME
    assert manifest["counts"] == {k: v.count for k, v in loaded.splits.items()}
    assert sum(manifest["counts"].values()) == 400


def test_wall_seconds_include_the_total(audited):
    """The audit computes walls['total'] after the Provenance copied the dict: it must reach the result
    (JUnit's time attribute and the report read it)."""
    result, out, _ = audited
    walls = load_result(out / "results.json").provenance.wall_seconds
    assert "total" in walls
    stages = sum(v for k, v in walls.items() if k != "total")
    assert walls["total"] == pytest.approx(stages, rel=1e-6) and walls["total"] > 0


def test_the_thread_settings_are_recorded(audited):
    """results.json says how many torch threads ran and why (traits.threads), as torch itself reports them."""
    import torch

    result, out, _ = audited
    threads = load_result(out / "results.json").provenance.threads
    assert threads["threads"] >= 1 and threads["source"] and threads["why"]
    assert torch.get_num_threads() <= threads["threads"]


def test_the_cpu_kernels_are_recorded(audited):
    """results.json names the kernels its numbers came from (traits.kernels), as the libraries report them now."""
    import torch

    result, out, _ = audited
    kernels = load_result(out / "results.json").provenance.kernels
    assert kernels["torch_cpu"] == torch.backends.cpu.get_cpu_capability()
    assert kernels.get("blas"), "numpy's BLAS is loaded in every audit"


def test_smad_is_a_catalogue_ratio_read_from_the_surface_topology(audited):
    """SMAD of each split's random-plane surface (surface.topology) reaches the split metrics and the ratios."""
    from traits.catalogue import metric

    result, out, _ = audited
    result = load_result(out / "results.json")
    for split in ("id", "ood"):
        topo = result.surface.topology["grids"][split]
        assert result.metrics[split].smad == topo["smad"]
        assert result.metrics[split].smad_normalized == topo["smad_normalized"]
    i, o = result.metrics["id"].smad, result.metrics["ood"].smad
    if i and o is not None:
        assert result.ratios["smad_ratio"] == pytest.approx(o / i)
    assert metric("smad_ratio").source == "metrics.smad" and metric("smad_ratio").gate_field is None


def test_every_split_has_accuracy(audited):
    result, _, _ = audited
    assert set(result.accuracy) == {"train", "val", "id", "ood"}
    for name, acc in result.accuracy.items():
        assert acc.n == result.splits[name].count > 0
        assert len(acc.ids) == len(acc.predictions) == len(acc.targets) == acc.n
        assert acc.mae is not None and 0 < acc.mae < 1.0, (name, acc.mae)  # eV/atom, a trained model
        assert acc.rmse >= acc.mae
        errors = np.abs(np.array(acc.predictions) - np.array(acc.targets))
        assert acc.mae == pytest.approx(float(errors.mean()), rel=1e-9)
    assert result.splits["ood"].with_omitted == {"Fe": result.splits["ood"].count}
    assert result.splits["id"].with_omitted == {"Fe": 0}


def test_hessian_and_surface_for_id_and_ood(audited):
    result, _, _ = audited
    assert set(result.hessian) == {"id", "ood"}
    for name, h in result.hessian.items():
        assert h.backend == "traits" and h.n_samples == 16
        assert len(h.top_eigenvalues) == 2 and h.top_eigenvalues[0] >= h.top_eigenvalues[1]
        assert h.top_eigenvalues[0] > 0 and math.isfinite(h.top_eigenvalues[0])
        assert h.lambda_min is not None and h.lambda_min <= h.top_eigenvalues[0]
        assert [t.method for t in h.traces] == ["gauss-newton+hutchinson"]
        t = h.traces[0]
        assert t.sampling_stderr > 0 and t.sampling_df == 15 and len(t.leave_out) == 16  # 16 groups of one
        assert len(h.sample_ids) == 16 and sorted(i for g in h.groups for i in g) == list(range(16))
        assert h.lambda_max_jackknife is not None and h.lambda_max_jackknife.stderr > 0
        assert result.ratio_intervals["lambda_ratio"].kind == "jackknife over structures"
        assert h.density is not None and len(h.density.grid) == len(h.density.density) == 400
        assert result.metrics[name].lambda_max == h.top_eigenvalues[0]
    s = result.surface
    assert s is not None and s.span == 0.5 and len(s.alphas_1d) == 9 and len(s.alphas_2d) == 5
    for name in ("id", "ood"):
        assert len(s.curves[name]) == 2 and all(len(c) == 9 for c in s.curves[name])
        assert len(s.grids[name]) == 5 and all(len(row) == 5 for row in s.grids[name])
        assert s.n_samples[name] == min(32, result.splits[name].count)
        assert all(v is not None for c in s.curves[name] for v in c)
        assert result.metrics[name].nan_fraction == 0.0


def test_curve_at_theta_equals_the_split_loss(audited):
    result, _, _ = audited
    s = result.surface
    centre = int(np.argmin(np.abs(s.alphas_1d)))
    assert abs(s.alphas_1d[centre]) < 1e-12
    for name in ("id", "ood"):
        loss = result.metrics[name].loss
        assert loss is not None and loss > 0
        for curve in s.curves[name]:
            assert curve[centre] == pytest.approx(loss, rel=1e-5)
            assert all(v is not None and v > 0 for v in curve)
        assert s.grids[name][len(s.alphas_2d) // 2][len(s.alphas_2d) // 2] == pytest.approx(loss, rel=1e-5)


def test_robust_radii_are_positive_and_within_the_span(audited):
    result, _, _ = audited
    span = result.surface.span
    for name in ("id", "ood"):
        m = result.metrics[name]
        assert len(m.radius_per_direction) == 2
        for r in m.radius_per_direction:
            assert r is not None and 0 < r <= span
        if "robust_radius" in m.below_resolution:  # under one grid step: a bound, never a number
            assert m.robust_radius is None and min(m.radius_per_direction) < m.below_resolution["robust_radius"]
        else:
            assert m.robust_radius == min(m.radius_per_direction)
        assert m.basin_area is None if "basin_area" in m.below_resolution else 0 <= m.basin_area <= 1


def test_the_eigenvector_plane_has_its_own_basin_area(audited):
    """The quickstart spec asks for the Hessian plane: each split's basin area on it, from its plane grid."""
    from traits.probes.metrics import basin_area_fraction

    result, _, _ = audited
    s = result.surface
    assert s.plane is not None
    for name in ("id", "ood"):
        grid = np.array([[np.nan if v is None else v for v in row] for row in s.plane_grids[name]])
        assert grid.shape == (5, 5)
        expected = basin_area_fraction(grid, result.metrics[name].loss, s.band)  # one absolute band for all
        if "plane_basin_area" in result.metrics[name].below_resolution:  # one grid point: a bound, not a number
            assert expected * grid.size == 1 and result.metrics[name].plane_basin_area is None
            continue
        assert result.metrics[name].plane_basin_area == pytest.approx(expected)
        assert 0 < result.metrics[name].plane_basin_area <= 1


def _expected_ratio(ood, idv):
    if ood is None or idv is None or idv == 0:
        return None
    return ood / idv


def test_ratios_are_ood_over_id(audited):
    result, _, _ = audited
    acc, m, ratios = result.accuracy, result.metrics, result.ratios
    assert ratios["mae_ratio"] == pytest.approx(acc["ood"].mae / acc["id"].mae, rel=1e-12)
    assert ratios["rmse_ratio"] == pytest.approx(acc["ood"].rmse / acc["id"].rmse, rel=1e-12)
    for key, field in [("lambda_ratio", "lambda_max"), ("trace_ratio", "trace"), ("radius_ratio", "robust_radius"),
                       ("loss_ratio", "loss"), ("basin_area_ratio", "basin_area"), ("sharpness_ratio", "sharpness"),
                       ("plane_basin_area_ratio", "plane_basin_area")]:
        expected = _expected_ratio(getattr(m["ood"], field), getattr(m["id"], field))
        interval = result.ratio_intervals.get(key)
        if interval is not None and interval.status != "ok":  # uncertified or undefined: never stored as a number
            assert ratios[key] is None, key
            continue
        if expected is None:
            assert ratios[key] is None, key
        else:
            assert ratios[key] == pytest.approx(expected, rel=1e-12), key
        if interval is not None:
            assert interval.value == pytest.approx(ratios[key], rel=1e-12), key
            assert (interval.low is None or interval.low <= ratios[key]) and \
                (interval.high is None or ratios[key] <= interval.high), key
    for key in ("mae_ratio", "lambda_ratio", "radius_ratio", "loss_ratio"):
        if key == "radius_ratio" and any("robust_radius" in m[s].below_resolution for s in ("id", "ood")):
            assert ratios[key] is None  # a radius under one grid step is a bound: no ratio
            continue
        assert ratios[key] is not None and ratios[key] > 0, key
    # the trace ratio is a number only when the ID trace is significantly positive (Fieller interval at the t
    # quantile, Monte-Carlo and sampling errors in quadrature)
    tr = result.ratio_intervals["trace_ratio"]
    t_id = result.hessian["id"].traces[0]
    se = math.hypot(t_id.stderr, t_id.sampling_stderr)
    if tr.status == "ok":
        assert m["id"].trace > 1.959 * se and tr.low <= ratios["trace_ratio"] <= tr.high
    else:
        from scipy.stats import t

        assert tr.status == "undefined" and m["id"].trace <= t.ppf(0.975, min(t_id.df, t_id.sampling_df)) * se
    gate_values = {g.name: g.value for g in result.gates}
    assert gate_values["mae_ratio"] == ratios["mae_ratio"] and gate_values["radius_ratio"] == ratios["radius_ratio"]


def test_a_subsample_split_is_flagged_against_the_checkpoint(audited):
    result, _, _ = audited
    finding = next((f for f in result.findings if f.id == "checkpoint_split"), None)
    assert finding is not None, [f.id for f in result.findings]
    assert finding.level == "warn" and "another split" in finding.statement
    assert result.status in ("warn", "fail")
    assert not any(f.id == "checkpoint_omission" for f in result.findings)  # both omit Fe
    assert result.provenance.checkpoint_metadata["manifest_hash"] != result.provenance.manifest_hash


def test_report_html_is_written(audited):
    result, out, _ = audited
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html")
    assert result.name in html and "checkpoint was trained on another split" in html
    assert not (out / "report.pdf").exists()  # not asked for


def test_outputs_are_written_atomically(audited):
    _, out, renames = audited
    by_target = {dst.resolve(): src for src, dst in renames}
    for name in ("results.json", "split_manifest.json", "report.html"):
        target = (out / name).resolve()
        assert target in by_target, f"{name} was not renamed into place"
        src = by_target[target]
        assert src.parent.resolve() == out.resolve() and src.name != name and not src.exists()
    leftovers = [p for p in out.rglob("*") if p.is_file() and (p.suffix == ".tmp" or p.name.startswith(".results"))]
    assert leftovers == []


def _numbers(result: AuditResult) -> dict:
    dump = result.model_dump()
    dump.pop("provenance")
    for h in dump["hessian"].values():
        h.pop("seconds")
    dump["surface"].pop("points_per_second")
    return dump


def test_same_spec_gives_the_same_numbers(audited, tmp_path):
    result, _, _ = audited
    again = run_audit(spec_with(), tmp_path / "again", spec_path=str(QUICKSTART), command="pytest", render=False)
    assert _numbers(again) == _numbers(result)
    assert again.provenance.manifest_hash == result.provenance.manifest_hash
    assert again.provenance.data_hash == result.provenance.data_hash


def test_training_spec_trains_into_the_out_dir(tmp_path):
    absent = tmp_path / "absent" / "model.safetensors"
    spec = load_spec(QUICKSTART, overrides={
        **TINY, "model.checkpoint": str(absent), "model.train.epochs": 1, "model.train.batch_size": 64,
    })
    assert spec.model.train is not None and not absent.exists()
    out = tmp_path / "out"
    result = run_audit(spec, out, render=False)
    ckpt = out / "model" / "model.safetensors"
    assert ckpt.is_file() and (out / "model" / "model.json").is_file() and not absent.exists()
    assert result.provenance.checkpoint_path == str(ckpt)
    assert result.provenance.checkpoint_sha256 == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    meta = result.provenance.checkpoint_metadata
    assert meta["manifest_hash"] == result.provenance.manifest_hash and meta["omit"] == ["Fe"]
    assert meta["metrics"]["epochs_run"] == 1
    assert not any(f.id.startswith("checkpoint_") for f in result.findings)  # trained on this very split
    assert sum(s.count for s in result.splits.values()) == 200
    assert all(a.mae is not None for a in result.accuracy.values())
    assert set(result.hessian) == {"id", "ood"} and result.surface is not None
    assert load_result(out / "results.json").model_dump() == result.model_dump()


# ------------------------------------------------------------------------------------------ bad inputs


def assert_no_results(out: Path) -> None:
    assert not (out / "results.json").exists()
    assert not (out / "report.html").exists()


def test_checkpoint_for_another_target(tmp_path):
    spec = load_spec(QUICKSTART, overrides={**TINY, "data.target": "band_gap"})
    out = tmp_path / "out"
    with pytest.raises(CheckpointError) as err:
        run_audit(spec, out)
    message = str(err.value)
    assert "formation_energy_per_atom" in message and "band_gap" in message and "data.target" in message
    assert_no_results(out)


def test_unwritable_out_dir(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    out = blocker / "out"
    with pytest.raises(OutputError, match="cannot create the output directory") as err:
        run_audit(load_spec(QUICKSTART, overrides=TINY), out)
    assert str(out) in str(err.value)
    assert not out.exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_out_dir(tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable"):
            run_audit(load_spec(QUICKSTART, overrides=TINY), out)
    finally:
        out.chmod(0o700)
    assert_no_results(out)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(TraitsError, match="no CUDA device") as err:
        run_audit(load_spec(QUICKSTART, overrides={**TINY, "device": "cuda"}), out)
    assert "'cpu'" in str(err.value) or "auto" in str(err.value)
    assert_no_results(out)


def test_an_omitted_element_no_compound_contains(tmp_path):
    # (the bundled sample does hold 10 Pu compounds; none contains polonium)
    out = tmp_path / "out"
    with pytest.raises(DataError, match="no compound contains Po") as err:
        run_audit(load_spec(QUICKSTART, overrides={**TINY, "omit": ["Po"]}), out)
    assert "OOD set would be empty" in str(err.value)
    assert_no_results(out)


@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory) -> Path:
    """A copy of the quickstart checkpoint with one NaN weight in the output head (every prediction is
    NaN) and a sidecar whose sha256 matches the new weights, so it loads."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("nan-ckpt")
    state = {k: v.clone() for k, v in load_file(str(CHECKPOINT)).items()}
    state["fc_out.weight"].view(-1)[0] = float("nan")
    path = folder / "model.safetensors"
    save_file(state, str(path), metadata={"format": "traits", "traits_checkpoint": "1"})
    meta = json.loads(CHECKPOINT.with_suffix(".json").read_text())
    meta["weights_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_suffix(".json").write_text(json.dumps(meta))
    return path


def test_nan_weights_stop_the_hessian_probe_with_a_clear_error(nan_checkpoint, tmp_path):
    from traits.models.checkpoint import load_checkpoint

    model, _ = load_checkpoint(nan_checkpoint, device=torch.device("cpu"))  # the copy is a valid checkpoint
    assert any(torch.isnan(p).any() for p in model.parameters())
    out = tmp_path / "out"
    spec = load_spec(QUICKSTART, overrides={**TINY, "model.checkpoint": str(nan_checkpoint)})
    with pytest.raises(TraitsError, match="NaN or inf"):
        run_audit(spec, out)
    assert_no_results(out)


def test_nan_weights_fail_the_audit_when_only_surfaces_are_probed(nan_checkpoint, tmp_path):
    """Every prediction and every loss-surface point is NaN: the audit completes and records the NaN
    losses as None, and must not pass its gates."""
    out = tmp_path / "out"
    spec = load_spec(QUICKSTART, overrides={**TINY, "model.checkpoint": str(nan_checkpoint),
                                            "probes.hessian.enabled": False})
    result = run_audit(spec, out)
    assert (out / "results.json").is_file()
    assert all(a.mae is None and all(p is None for p in a.predictions) for a in result.accuracy.values())
    for name in ("id", "ood"):
        assert result.metrics[name].loss is None
        assert all(v is None for c in result.surface.curves[name] for v in c)
    nan_gate = next(g for g in result.gates if g.name == "nan_fraction")
    assert nan_gate.value == 1.0 and nan_gate.level == "fail", nan_gate
    assert exit_code(result) == 1 and result.status == "fail"
