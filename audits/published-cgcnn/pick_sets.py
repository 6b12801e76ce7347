"""Pick the two named sets of this audit from the Materials Project pool, deterministically.

    python audits/published-cgcnn/pick_sets.py [POOL [OUT_DIR]]

reads POOL (default ../shared/data/mp_mtcgcnn/mp_36738.jsonl.gz) and writes ``id-no-Fe-no-O.jsonl.gz``
(100 crystals containing neither Fe nor O) and ``ood-oxides.jsonl.gz`` (100 crystals containing O) into
OUT_DIR (default: next to this script). Rule: the elements of every record come from its CIF;
the candidates of each set (at most MAX_SITES sites per cell, so the audit stays within CPU minutes)
are shuffled by ``numpy.random.default_rng(SEED)`` and taken in that order, keeping the first N whose
CIF pymatgen reads and whose graph (the original CGCNN graph: 8 Å, 12 neighbours, padded) TRAITS
builds. Records are copied unchanged (material_id, formation_energy_per_atom, band_gap, cif), in the
order drawn; the gzip header carries no time stamp, so a rerun writes byte-identical files.
"""

from __future__ import annotations

import gzip
import json
import sys
import warnings
from pathlib import Path

import numpy as np

SEED = 13
N = 100
MAX_SITES = 24
HERE = Path(__file__).resolve().parent
DEFAULT_POOL = HERE.parents[2] / "shared" / "data" / "mp_mtcgcnn" / "mp_36738.jsonl.gz"
SETS = {
    "id-no-Fe-no-O.jsonl.gz": lambda els: not ({"Fe", "O"} & els),
    "ood-oxides.jsonl.gz": lambda els: "O" in els,
}


def usable(record: dict) -> tuple[bool, set[str], int]:
    """(readable and graph-buildable, elements, sites) of one record."""
    from pymatgen.core import Structure

    from traits.data.graphs import structure_graph
    from traits.errors import GraphError
    from traits.models.cgcnn_original import ORIGINAL_GRAPH
    from traits.spec import GraphSpec

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            structure = Structure.from_str(record["cif"], fmt="cif")
        except Exception:
            return False, set(), 0
    elements = {el.symbol for el in structure.composition.elements}
    if len(structure) > MAX_SITES or any(el.Z > 100 for el in structure.composition.elements):
        return False, elements, len(structure)
    try:
        structure_graph(structure, GraphSpec(**ORIGINAL_GRAPH))
    except GraphError:
        return False, elements, len(structure)
    return True, elements, len(structure)


def formula_elements(cif: str) -> set[str]:
    """Elements of the ``_chemical_formula_sum`` line of a pymatgen-written CIF (a cheap pre-filter)."""
    for line in cif.splitlines():
        if line.startswith("_chemical_formula_sum"):
            text = line.split(None, 1)[1].strip().strip("'\"")
            return {"".join(c for c in tok if c.isalpha()) for tok in text.split()}
    return set()


def main(pool: Path, out_dir: Path = HERE) -> None:
    with gzip.open(pool, "rt", encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(records))
    taken: set[str] = set()
    for name, wanted in SETS.items():
        chosen = []
        for i in order:
            rec = records[i]
            if rec["material_id"] in taken or not wanted(formula_elements(rec["cif"])):
                continue
            ok, elements, _ = usable(rec)
            if ok and wanted(elements):  # the CIF's own sites decide, the formula line only pre-filters
                chosen.append(rec)
                taken.add(rec["material_id"])
                if len(chosen) == N:
                    break
        if len(chosen) < N:
            raise SystemExit(f"only {len(chosen)} records qualify for {name}")
        path = Path(out_dir) / name
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
            for rec in chosen:
                keep = {k: rec[k] for k in ("material_id", "formation_energy_per_atom", "band_gap", "cif")}
                gz.write((json.dumps(keep) + "\n").encode("utf-8"))
        print(f"{path}: {len(chosen)} records")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_POOL, Path(sys.argv[2]) if len(sys.argv) > 2 else HERE)
