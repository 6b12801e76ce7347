"""Report rendering: the figures drawn in worker processes (the default) against one process, on a real result.

    python bench/bench_report.py [--results out/quickstart/results.json] [--passes 3] [--format html,pdf]

``render_report`` writes the report of ``--results`` (read as ``traits report`` reads it, ``load_result``) into a
scratch folder, by each method in turn within each pass (A, B, C, A, B, C, ...), so that load on the machine hits
each alike; every time is the best of ``--passes`` passes. Read the ratios, not the absolute times.

- ``before``: one process, and every format lays its figures out again (the rendering before issue 38; its HTML
  is the same, its PDF's PNGs come from a second layout pass).
- ``serial``: one process (``workers=1``, as ``TRAITS_REPORT_WORKERS=1``); each figure laid out once where the
  layout is settled (``traits.report.figures.freeze_layout``).
- ``default``: what ``render_report`` does by default (``traits.report.render.figure_workers``: one forked worker
  per available CPU, at most one per figure).

Printed: the conditions, each method's best wall time, of it the figures' (``_build_figures``), the CPU seconds of
this process and of its workers, ``speed-up <N>x`` (serial / default) and the same against ``before``, and
``identical: true|false``: whether the default's files equal the serial path's byte for byte (and whether each
method's files are the same in every pass). Where the kernel schedules by session (autogroup, printed), the CPU
share of this benchmark and its workers together is its session's, however many processes it runs: beside a busy
session on a 2-core machine that is one core, and the workers cannot make it faster.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("before", "serial", "default")


def autogroup() -> str:
    try:
        on = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return "unknown"
    return "on (CPU shared between sessions, not processes)" if on else "off"


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def render(method: str, result, out: Path, formats: tuple[str, ...]) -> dict[str, float]:
    """One report by ``method``; its wall, figures, CPU (this process) and workers' CPU seconds."""
    from traits.report import figures as F
    from traits.report import render as R

    spent = {"figures": 0.0}
    build, freeze = R._build_figures, F.freeze_layout

    def timed_build(*args, **kwargs):
        t = time.perf_counter()
        try:
            return build(*args, **kwargs)
        finally:
            spent["figures"] += time.perf_counter() - t

    R._build_figures = timed_build
    if method == "before":
        F.freeze_layout = lambda fig: False
    cpu, kids, t = time.process_time(), children_cpu(), time.perf_counter()
    try:
        R.render_report(result, out, formats, workers=None if method == "default" else 1)
    finally:
        R._build_figures, F.freeze_layout = build, freeze
    return {"wall": time.perf_counter() - t, "figures": spent["figures"], "cpu": time.process_time() - cpu,
            "workers cpu": children_cpu() - kids}


def files(out: Path, formats: tuple[str, ...]) -> dict[str, bytes]:
    return {fmt: (out / f"report.{fmt}").read_bytes() for fmt in formats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=ROOT / "out" / "quickstart" / "results.json")
    parser.add_argument("--passes", type=int, default=3, help="passes per method; the best is kept (default 3)")
    parser.add_argument("--format", default="html,pdf", help="comma-separated: html,pdf (default both)")
    args = parser.parse_args()
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    import matplotlib
    import weasyprint

    from traits.report import render as R
    from traits.results import load_result
    from traits.threads import available_cpus

    result = load_result(args.results)
    n_figures = len(R.figure_names())
    cpus, counted = available_cpus()
    load = os.getloadavg()
    print(f"# report benchmark  {platform.machine()}  {counted}  load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}  "
          f"python {sys.version.split()[0]}  matplotlib {matplotlib.__version__}  weasyprint {weasyprint.__version__}")
    print(f"{args.results} ({result.name}): {n_figures} figure slots, formats {','.join(formats)}; default workers "
          f"{R.figure_workers(n_figures)} ({R.WORKERS_ENV}={os.environ.get(R.WORKERS_ENV, 'unset')}); "
          f"autogroup scheduling {autogroup()}; best of {args.passes} passes, methods interleaved")
    tmp = Path(tempfile.mkdtemp(prefix="traits-bench-report-"))
    best: dict[str, dict[str, float]] = {}
    outputs: dict[str, list[dict[str, bytes]]] = {m: [] for m in METHODS}
    for k in range(args.passes):
        for method in METHODS:
            out = tmp / f"{method}-{k}"
            times = render(method, result, out, formats)
            outputs[method].append(files(out, formats))
            if method not in best or times["wall"] < best[method]["wall"]:
                best[method] = times
            print(f"pass {k + 1} {method:8s} {times['wall']:6.2f} s", flush=True)
    print(f"\n{'method':8s} {'wall (s)':>9s} {'figures (s)':>12s} {'CPU here (s)':>13s} {'CPU workers (s)':>16s}")
    for method in METHODS:
        b = best[method]
        print(f"{method:8s} {b['wall']:9.2f} {b['figures']:12.2f} {b['cpu']:13.2f} {b['workers cpu']:16.2f}")
    same = all(o == outputs["serial"][0] for o in outputs["default"] + outputs["serial"])
    repeat = {m: all(o == outputs[m][0] for o in outputs[m]) for m in METHODS}
    print(f"\nspeed-up {best['serial']['wall'] / best['default']['wall']:.2f}x (serial / default; figures alone "
          f"{best['serial']['figures'] / best['default']['figures']:.2f}x)")
    print(f"speed-up {best['before']['wall'] / best['default']['wall']:.2f}x (before / default; layout once alone: "
          f"before / serial {best['before']['wall'] / best['serial']['wall']:.2f}x)")
    print(f"identical: {str(same).lower()} (default vs serial, {', '.join(formats)}); every pass the same: "
          + ", ".join(f"{m} {str(v).lower()}" for m, v in repeat.items()))
    html_same = "html" not in formats or outputs["before"][0]["html"] == outputs["serial"][0]["html"]
    print(f"HTML the same as before: {str(html_same).lower()}")


if __name__ == "__main__":
    main()
