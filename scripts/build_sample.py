"""Build the Materials Project sample shipped inside the package (traits/data/sample/).

    python scripts/build_sample.py ../shared/data/mp_mtcgcnn/mp_36738.jsonl.gz

Source: ../shared/data/mp_mtcgcnn/mp_36738.jsonl.gz (Materials Project via MT-CGCNN, CC BY 4.0).
Selection, deterministic by seed: crystals with at most MAX_SITES sites in the cell (keeps the
quickstart fast on a laptop CPU), then N_FE compounds that contain Fe and N_REST that do not,
drawn at random. Records are copied unchanged (material_id, formation_energy_per_atom, band_gap, cif).
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
from pathlib import Path

import numpy as np

MAX_SITES = 24
N_FE = 300
N_REST = 1700
SEED = 2026
OUT = Path(__file__).resolve().parents[1] / "traits" / "data" / "sample" / "mp_sample.jsonl.gz"


def formula_counts(cif: str) -> dict[str, float]:
    match = re.search(r"_chemical_formula_sum\s+'?([^'\n]+)'?", cif)
    if not match:
        return {}
    return {el: float(n or 1) for el, n in re.findall(r"([A-Z][a-z]?)([\d.]*)", match.group(1))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("source", type=Path)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    fe, rest = [], []
    with gzip.open(args.source, "rt", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            counts = formula_counts(rec["cif"])
            if not counts or sum(counts.values()) > MAX_SITES:
                continue
            (fe if "Fe" in counts else rest).append(rec)
    rng = np.random.default_rng(SEED)
    chosen = [fe[i] for i in rng.choice(len(fe), N_FE, replace=False)]
    chosen += [rest[i] for i in rng.choice(len(rest), N_REST, replace=False)]
    chosen.sort(key=lambda r: r["material_id"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(args.out, "wt", encoding="utf-8", compresslevel=9) as fh:
        for rec in chosen:
            fh.write(json.dumps(rec) + "\n")
    n_o = sum("O" in formula_counts(r["cif"]) for r in chosen)
    print(f"wrote {len(chosen)} records ({N_FE} with Fe, {n_o} with O) to {args.out}")


if __name__ == "__main__":
    main()
