"""Study v2 resumes from its committed audits: every finished first-pass audit must still count as the same audit
under today's campaign specs (profile v2-label-free), or a code change would silently rerun the whole study.
A new spec field is fine (fields absent from a stored spec are ignored); a changed default or profile value is not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from traits.campaign import load_campaign
from traits.outdir import same_audit

ROOT = Path(__file__).resolve().parents[1]
KEPT = ROOT / "docs" / "study" / "v2"


@pytest.mark.parametrize("pool", ["mp", "perov5"])
def test_finished_v2_audits_are_reused_by_todays_campaign(pool):
    results = sorted((KEPT / f"runs-{pool}").glob("seed-*/*/results.json"))
    if not results:
        pytest.skip(f"no finished v2 {pool} audit committed yet")
    by_seed: dict[int, dict] = {}
    for path in results:
        seed = int(path.parent.parent.name.split("-", 1)[1])
        if seed not in by_seed:
            by_seed[seed] = {t.name: t for t in load_campaign(ROOT / "audits" / "study" / pool, "v2-label-free", seed,
                                                               )}
        result = json.loads(path.read_text())
        live = by_seed[seed][path.parent.name].spec.model_dump(mode="json")
        # the data path is absolute: a checkout elsewhere (CI) reads the same bytes from another path
        assert same_audit(result["spec"], live, measurements_only=True,
                          data_hash=result["provenance"]["data_hash"]), path
