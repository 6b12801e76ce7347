"""Execute the example notebooks from a fresh kernel, so that they cannot rot (CI runs this).

``python examples/run_notebooks.py [NOTEBOOK ...]`` runs every ``examples/*.ipynb`` (or the ones named) with
nbclient in the repository root and exits 1 naming the notebook and the cell that failed. The notebooks are
not rewritten unless ``--write`` is given, which stores the fresh outputs in them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def run(path: Path, timeout: int = 600, write: bool = False) -> float:
    """Execute one notebook; returns its wall time in seconds. A failing cell raises nbclient's CellExecutionError."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    if write:
        nbformat.write(nb, path)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run (default: examples/*.ipynb)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell")
    parser.add_argument("--write", action="store_true", help="store the fresh outputs in the notebooks")
    args = parser.parse_args(argv)
    from nbclient.exceptions import CellExecutionError

    notebooks = args.notebooks or sorted(HERE.glob("*.ipynb"))
    for path in notebooks:
        try:
            seconds = run(path, args.timeout, args.write)
        except CellExecutionError as exc:
            print(f"{path}: a cell failed\n{exc}", file=sys.stderr)
            return 1
        print(f"{path}: ran in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
