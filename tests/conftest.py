"""Shared fixtures: an isolated graph cache, paths to the real data in ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MP_FILE = SHARED / "data" / "mp_mtcgcnn" / "mp_36738.jsonl.gz"
PEROV_FILE = SHARED / "data" / "perov5" / "perov5.csv.gz"
CGCNN_DIR = SHARED / "models" / "cgcnn"


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models on a shared 2-core machine run fastest single-threaded (no thread contention)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def _graph_cache(tmp_path_factory):
    """Every test session gets its own graph cache, so tests never read a user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TRAITS_CACHE", str(tmp_path_factory.mktemp("graph-cache")))
    yield
    mp.undo()


#: The package's adopted study evidence, as shipped (tests run without it; see _no_adopted_evidence).
SHIPPED_EVIDENCE = ROOT / "traits" / "study" / "catalogue-evidence.json"


@pytest.fixture(autouse=True, scope="session")
def _no_adopted_evidence(tmp_path_factory):
    """Tests describe the gates for a stated evidence file (none, or one a test adopts), not for whatever
    study the checkout has adopted; tests/test_verdict_evidence.py checks the shipped file itself."""
    from traits import catalogue

    mp = pytest.MonkeyPatch()
    folder = tmp_path_factory.mktemp("evidence")
    mp.setattr(catalogue, "EVIDENCE_FILE", folder / "catalogue-evidence.json")
    mp.setattr(catalogue, "LABEL_FREE_EVIDENCE_FILE", folder / "catalogue-evidence-label-free.json")
    catalogue.clear_cache()
    yield
    mp.undo()
    catalogue.clear_cache()


def needs_shared(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"{path} not available")
