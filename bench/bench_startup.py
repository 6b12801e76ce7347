"""Start-up time of the commands CI calls most: `traits --help`, `validate`, `schema`, `gate` and `report`.

    python bench/bench_startup.py [--repeats 5] [--baseline /tmp/base]

Each command runs in a fresh interpreter, as the `traits` script runs it, ``--repeats`` times; the median wall
time is printed with the heavy libraries it imported (torch, torch_geometric, pymatgen, matplotlib, weasyprint).
``--baseline`` names another checkout of TRAITS (e.g. ``git worktree add /tmp/base HEAD``) timed the same way,
interleaved with this one, with the ratio baseline / this. gate and report read a results.json made by each
checkout's own ``tests/result_factory.py``; report writes HTML only (PDF adds WeasyPrint's own time to both).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = r"""
import json, sys
sys.argv = ["traits", *sys.argv[1:]]
from traits.cli import app
try:
    app(prog_name="traits")
except SystemExit:
    pass
heavy = ("torch", "torch_geometric", "pymatgen", "matplotlib", "weasyprint")
print("\nIMPORTS " + json.dumps([m for m in heavy if m in sys.modules]), file=sys.stderr)
"""
MAKE_RESULT = r"""
import sys
sys.path.insert(0, sys.argv[1] + "/tests")
from result_factory import make_result
make_result().write(__import__("pathlib").Path(sys.argv[2]))
"""


def commands(root: Path, results: Path, out: Path) -> dict[str, list[str]]:
    return {
        "--help": ["--help"],
        "validate": ["validate", str(root / "audits" / "quickstart.yaml")],
        "schema": ["schema"],
        "gate": ["gate", str(results)],
        "report (html)": ["report", str(results), "--out", str(out), "--format", "html", "--overwrite"],
    }


def run_once(root: Path, args: list[str]) -> tuple[float, list[str]]:
    env = dict(os.environ, PYTHONPATH=str(root))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUN, *args], cwd=root, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    marker = [line for line in proc.stderr.splitlines() if line.startswith("IMPORTS ")]
    if not marker:
        raise SystemExit(f"{root}: traits {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return seconds, json.loads(marker[-1].removeprefix("IMPORTS "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", type=Path, default=None, help="another TRAITS checkout to compare with")
    args = parser.parse_args()
    roots = {"this": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    tmp = Path(tempfile.mkdtemp(prefix="traits-startup-"))
    plans = {}
    for label, root in roots.items():
        results = tmp / label / "results.json"
        results.parent.mkdir(parents=True)
        subprocess.run([sys.executable, "-c", MAKE_RESULT, str(root), str(results)], cwd=root, check=True,
                       env=dict(os.environ, PYTHONPATH=str(root)))
        plans[label] = commands(root, results, tmp / label / "report")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
          f"median of {args.repeats} runs each")
    times: dict[tuple[str, str], list[float]] = {}
    loaded: dict[tuple[str, str], list[str]] = {}
    for _ in range(args.repeats):
        for name in plans["this"]:
            for label, root in roots.items():  # interleaved, so drifting load hits both alike
                seconds, mods = run_once(root, plans[label][name])
                times.setdefault((label, name), []).append(seconds)
                loaded[(label, name)] = mods
    header = f"{'command':15s} {'this (s)':>9s}  imports"
    if args.baseline:
        header += f"{'':28s} {'baseline (s)':>12s}  imports{'':22s} speed-up"
    print(header)
    for name in plans["this"]:
        this = statistics.median(times[("this", name)])
        line = f"{name:15s} {this:9.2f}  {', '.join(loaded[('this', name)]) or '-':34s}"
        if args.baseline:
            base = statistics.median(times[("baseline", name)])
            line += f" {base:12.2f}  {', '.join(loaded[('baseline', name)]) or '-':28s} {base / this:6.1f}x"
        print(line)


if __name__ == "__main__":
    main()
