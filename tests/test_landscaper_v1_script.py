"""scripts/landscaper_v1.py: its rows carry the SMAD of each split's stored grid; the registered test runs on them."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "docs" / "study" / "runs-mp-partial" / "seed-0"


def _script():
    spec = importlib.util.spec_from_file_location("landscaper_v1", ROOT / "scripts" / "landscaper_v1.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_carry_each_splits_smad_and_the_claim_runs(tmp_path):
    pytest.importorskip("gudhi")
    from traits.probes.topology import surface_topology
    from traits.results import nan_array
    from traits.study.v2 import landscaper_claim

    tasks = ["enthalpy-element-O", "enthalpy-element-Fe", "gap-element-O", "gap-element-Fe"]
    for task in tasks:
        shutil.copytree(RUNS / task, tmp_path / "seed-0" / task, ignore=shutil.ignore_patterns("*.html", "*.pdf"))
    rows = _script().rows_with_smad(tmp_path)
    assert sorted(r["task"] for r in rows) == sorted(tasks)
    for row in rows:
        stored = json.loads((tmp_path / "seed-0" / row["task"] / "results.json").read_text())["surface"]["grids"]
        smad = {s: surface_topology(nan_array(stored[s])).smad for s in ("id", "ood")}
        assert row["smad_id"] == pytest.approx(smad["id"]) and row["smad_ood"] == pytest.approx(smad["ood"])
        assert row["smad_ratio"] == pytest.approx(smad["ood"] / smad["id"])
    claim = landscaper_claim(rows, n_boot=50, n_perm=50, seed=0, level=0.95)["labelled"]
    assert claim["n_audits_defined"] == 4 and "Landscaper's claim" in claim["answer"]
