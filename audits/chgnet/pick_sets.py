"""Pick the two named sets of the CHGNet and SevenNet label-free audits from the Materials Project pool.

    python audits/chgnet/pick_sets.py [POOL [OUT_DIR]]

reads POOL (default ../shared/data/mp_mtcgcnn/mp_36738.jsonl.gz) and writes ``id-no-Fe.jsonl.gz`` (N crystals
without Fe) and ``ood-Fe.jsonl.gz`` (N crystals with Fe) into OUT_DIR (default: next to this script). The
candidates (CIF readable by pymatgen, at most MAX_SITES sites per cell so the audits stay within CPU minutes) are
shuffled by ``numpy.random.default_rng(SEED)`` and the first N of each kind kept. Records are copied unchanged
(material_id, formation_energy_per_atom, band_gap, cif); the gzip header carries no time stamp, so a rerun writes
byte-identical files. audits/sevenn uses the same two files.
"""

from __future__ import annotations

import gzip
import json
import sys
import warnings
from pathlib import Path

import numpy as np

SEED = 7
N = 24
MAX_SITES = 8
HERE = Path(__file__).resolve().parent
DEFAULT_POOL = HERE.parents[2] / "shared" / "data" / "mp_mtcgcnn" / "mp_36738.jsonl.gz"
SETS = {"id-no-Fe.jsonl.gz": lambda els: "Fe" not in els, "ood-Fe.jsonl.gz": lambda els: "Fe" in els}


def elements_and_sites(record: dict) -> tuple[set[str], int] | None:
    from pymatgen.core import Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            structure = Structure.from_str(record["cif"], fmt="cif")
        except Exception:
            return None
    return {el.symbol for el in structure.composition.elements}, len(structure)


def main(pool: Path = DEFAULT_POOL, out_dir: Path = HERE) -> None:
    with gzip.open(pool, "rt", encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    order = np.random.default_rng(SEED).permutation(len(records))
    picked: dict[str, list[dict]] = {name: [] for name in SETS}
    for i in order:
        if all(len(v) == N for v in picked.values()):
            break
        found = elements_and_sites(records[i])
        if found is None or found[1] > MAX_SITES:
            continue
        for name, rule in SETS.items():
            if rule(found[0]) and len(picked[name]) < N:
                picked[name].append(records[i])
                break
    for name, rows in picked.items():
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()
        with open(out_dir / name, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
            gz.write(text)
        print(f"{name}: {len(rows)} records")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(Path(args[0]) if args else DEFAULT_POOL, Path(args[1]) if len(args) > 1 else HERE)
