"""Do gate outcomes flip when only the probes' random draws change?

Re-audits one checkpoint on one split with several probe seeds (``probes.seed``; the data seed, so the split
and the model, stay fixed), then counts, per gate, how many seeds disagree with the majority outcome:

* **now**: the stored gate outcomes (every interval decides: a gate fails only when the whole interval is
  beyond its threshold, passes only when it is wholly within it, else it is undetermined);
* **point rule**: the rule before schema 1.6 for the Hessian gates, whose intervals were the solver's bounds
  (about ±0.1 % here) and so decided on the point value: pass or fail by the point value alone.

Both at the spec's thresholds and at a *hard* threshold placed at the median value over the seeds (the case
where a point rule flips most), so the comparison is not won by thresholds far from the values.

Each seed's audit is kept under OUT/seed-N/ and reused on a rerun (the script resumes where it stopped).

    python scripts/gate_stability.py audits/quickstart.yaml --seeds 0 1 2 3 4 --out out/gate-stability
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

from traits.files import write_text_atomic

GATES = {  # gate -> (threshold field, comparison)
    "mae_ratio": ("max_mae_ratio", "<="),
    "lambda_ratio": ("max_lambda_ratio", "<="),
    "trace_ratio": ("max_trace_ratio", "<="),
    "radius_ratio": ("min_radius_ratio", ">="),
    "embedding_knn_ratio": ("max_embedding_knn_ratio", "<="),
}


def audit(spec_path: Path, seed: int, out: Path):
    from traits.audit import run_audit
    from traits.results import load_result
    from traits.spec import load_spec

    where = out / f"seed-{seed}"
    if (where / "results.json").is_file():
        return load_result(where / "results.json")
    spec = load_spec(spec_path, overrides={"probes.seed": seed, "report.formats": ["json"]})
    print(f"probe seed {seed}: auditing into {where}", flush=True)
    return run_audit(spec, where, spec_path=str(spec_path), render=False, overwrite=True)


def point(value, threshold: float, comparison: str) -> str:
    if value is None:
        return "undetermined"
    return "pass" if (value <= threshold if comparison == "<=" else value >= threshold) else "fail"


def flips(outcomes: list[str]) -> int:
    """How many outcomes differ from the most common one."""
    return len(outcomes) - Counter(outcomes).most_common(1)[0][1] if outcomes else 0


def analyse(results: dict[int, object]) -> dict:
    from traits.intervals import decision

    first = next(iter(results.values()))
    gates = first.spec["gates"]
    table = {}
    for name, (field, comparison) in GATES.items():
        values = [r.ratios.get(name) for r in results.values()]
        intervals = [r.ratio_intervals.get(name) for r in results.values()]
        if all(v is None for v in values):
            continue
        threshold = float(gates[field])
        now = [next((g.level if g.determined else "undetermined") for g in r.gates if g.name == name)
               for r in results.values()]
        old = [point(v, threshold, comparison) for v in values]
        finite = [v for v in values if v is not None]
        hard = statistics.median(finite) if finite else None
        now_hard = [decision(iv.model_dump(), hard, comparison) if iv is not None else "undetermined"
                    for iv in intervals] if hard is not None else []
        old_hard = [point(v, hard, comparison) for v in values] if hard is not None else []
        table[name] = {
            "values": values,
            "intervals": [[iv.low, iv.high] if iv is not None else None for iv in intervals],
            "kind": next((iv.kind for iv in intervals if iv is not None), ""),
            "threshold": threshold, "now": now, "point_rule": old, "flips_now": flips(now),
            "flips_point_rule": flips(old), "hard_threshold": hard, "now_at_hard": now_hard,
            "point_rule_at_hard": old_hard, "flips_now_at_hard": flips(now_hard),
            "flips_point_rule_at_hard": flips(old_hard),
        }
    return table


def markdown(spec: str, seeds: list[int], table: dict) -> str:
    lines = [f"Gate stability over probe seeds {', '.join(map(str, seeds))} ({spec}; one checkpoint, one split).",
             "", "| gate | values over seeds | interval kind | at the spec's threshold: now / point rule | "
             "at a threshold at the median: now / point rule |", "|---|---|---|---|---|"]
    for name, row in table.items():
        vals = ", ".join("–" if v is None else f"{v:.3g}" for v in row["values"])
        now = "/".join(o[0] for o in row["now"])
        old = "/".join(o[0] for o in row["point_rule"])
        hard = row["hard_threshold"]
        nh = "/".join(o[0] for o in row["now_at_hard"])
        oh = "/".join(o[0] for o in row["point_rule_at_hard"])
        lines.append(f"| {name} | {vals} | {row['kind']} | {now} ({row['flips_now']} flips) / {old} "
                     f"({row['flips_point_rule']} flips) at {row['threshold']:g} | {nh} ({row['flips_now_at_hard']} "
                     f"flips) / {oh} ({row['flips_point_rule_at_hard']} flips) at {hard:.3g} |")
    lines += ["", "p = pass, f = fail, w = warn (a violated gate that only warns), u = undetermined; a flip is a seed "
              "whose outcome differs from the most common one."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec", type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--out", type=Path, default=Path("out/gate-stability"))
    args = ap.parse_args(argv)
    results = {s: audit(args.spec, s, args.out) for s in args.seeds}
    table = analyse(results)
    write_text_atomic(args.out / "gate_stability.json", json.dumps(
        {"spec": str(args.spec), "seeds": args.seeds, "gates": table}, indent=1))
    text = markdown(str(args.spec), args.seeds, table)
    write_text_atomic(args.out / "gate_stability.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
