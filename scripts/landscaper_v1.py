"""Landscaper's SMAD claim on study 1's stored labelled surfaces (docs/study/landscaper-v1/PLAN.md).

    python scripts/landscaper_v1.py [--out docs/study/landscaper-v1]

Reads study 1's results (docs/study/runs-mp-partial, runs-perov5-partial), computes each split's SMAD from its stored
random-plane 2D grid exactly as an audit does today (traits.audit.topology_of) and the OOD/ID ratio by the
catalogue's rule (traits.probes.metrics.ratio), then runs the labelled half of study v2's registered test
(traits.study.v2.landscaper_claim) on the MP omission audits and, as a replication, on Perov-5's. Writes claim.json
(every number, with the per-audit SMADs) and README.md. Evaluates no model; deterministic (seed 0).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POOLS = {"mp": ROOT / "docs" / "study" / "runs-mp-partial", "perov5": ROOT / "docs" / "study" / "runs-perov5-partial"}


def rows_with_smad(runs: Path) -> list[dict]:
    """Study v2's analysis rows of every results.json under ``runs``, each with ``smad_ratio`` (and the two SMADs)
    computed from the audit's stored grids."""
    from traits.audit import topology_of
    from traits.probes.metrics import ratio
    from traits.results import load_result
    from traits.study.v2 import audit_row, result_files

    rows = []
    for path in result_files(runs):
        result = load_result(path)
        row = audit_row(path.parent.name, result)
        grids = (result.surface.grids if result.surface is not None else {}) or {}
        smad = {s: topology_of(grids[s]).get("smad") if s in grids else None for s in ("id", "ood")}
        row["smad_id"], row["smad_ood"] = smad["id"], smad["ood"]
        row["smad_ratio"] = ratio(smad["ood"], smad["id"])
        row["seed"] = path.parent.parent.name
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "study" / "landscaper-v1")
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--n-perm", type=int, default=2000)
    args = parser.parse_args(argv)

    from traits.files import write_text_atomic
    from traits.study.v2 import _jsonable, landscaper_claim, omission_rows

    opts = {"n_boot": args.n_boot, "n_perm": args.n_perm, "seed": 0, "level": 0.95}
    out: dict = {"plan": "docs/study/landscaper-v1/PLAN.md", "test": "traits.study.v2.landscaper_claim (labelled half)",
                 "command": "python scripts/landscaper_v1.py", "settings": opts, "pools": {}}
    for pool, runs in POOLS.items():
        rows = omission_rows(rows_with_smad(runs))
        claim = landscaper_claim(rows, **opts)["labelled"]
        if pool != "mp":  # the registered sentence names the MP pool it was written for
            claim["answer"] = claim["answer"].replace("on the MP omission tasks", f"on the {pool} omission tasks")
        out["pools"][pool] = {
            "n_omission_audits": len(rows), "n_rules": len({r["rule"] for r in rows}),
            "n_smad_defined": sum(1 for r in rows if r["smad_ratio"] is not None), "claim": claim,
            "rows": [{k: r.get(k) for k in ("task", "seed", "rule", "target", "mae_ratio", "loss_ratio",
                                            "embedding_knn_ratio", "smad_id", "smad_ood", "smad_ratio")}
                     for r in rows]}
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "claim.json", json.dumps(_jsonable(out), indent=1))
    write_text_atomic(args.out / "README.md", _markdown(_jsonable(out)))
    for pool, got in out["pools"].items():
        print(f"{pool}: {got['claim']['answer']}")
    return 0


def _iv(d: dict | None, key: str) -> str:
    if not d or d.get(key) is None:
        return "–"
    lo, hi = d.get("low"), d.get("high")
    return f"{d[key]:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else " [–]")


def _markdown(out: dict) -> str:
    lines = ["# Landscaper's SMAD claim on study 1's labelled surfaces", "",
             "The analysis of [`PLAN.md`](PLAN.md) (committed before these numbers): study v2's registered test of "
             "Landscaper's claim, its labelled half, on the random-plane loss surfaces study 1 stored. Every number is "
             "in `claim.json`; made by `python scripts/landscaper_v1.py` (no model evaluated; seed 0).", "",
             "| pool | omission audits (rules) | SMAD ratio defined | per-task ρ with the MAE ratio | partial ρ given "
             "the loss at θ | AUROC for MAE ratio ≥ 2 | Δ AUROC over embedding kNN | supported |",
             "|---|---|---|---|---|---|---|---|"]
    for pool, got in out["pools"].items():
        c = got["claim"]
        st = c["spearman"] or {}
        part = ((st.get("partial") or {}).get("control")) or {}
        lines.append(f"| {pool} | {got['n_omission_audits']} ({got['n_rules']}) | {got['n_smad_defined']} | "
                     f"{_iv(st, 'rho')} | {_iv(part, 'rho')} | {_iv(c['auroc'], 'auroc')} | "
                     f"{_iv(c['delta_auroc_vs_B1'], 'delta')} | {c['supported']} |")
    lines += ["", "Intervals: 95 % percentile, cluster bootstrap over held-out rules (2,000 resamples, seed 0); ρ per "
              "task (its seeds averaged), as the v2 registration defines it. Supported needs the ρ and the partial ρ "
              "intervals both above 0.", "", "## Answer", ""]
    for pool, got in out["pools"].items():
        weak = " (weak evidence: 12 held-out rules)" if pool == "perov5" else ""
        lines.append(f"- **{pool}**{weak}: {got['claim']['answer']}")
    lines += ["", "What this does not answer: the label-free half of the claim (v2's first pass measures it) and v2's "
              "own models (its second pass repeats this test on them).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
