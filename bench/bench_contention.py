"""Threads under contention: Hessian-vector products timed with torch's default thread settings and with those
``traits.threads.configure_threads`` chooses, on an idle machine and with a busy process on every CPU.

    python bench/bench_contention.py [--repeats 3] [--seconds 6]

Each setting runs in a fresh process (OpenMP reads its settings once, when its pool starts) that times HVPs of a
small MLP's loss (torch.func, forward-over-reverse) for ``--seconds``; the busy processes are ``python -c "while
True: pass"``, one per CPU available. Prints the median milliseconds per HVP of each setting and load, and the
slow-down under load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

WORKER = r"""
import json, os, sys, time
if sys.argv[1] == "chosen":
    from traits.threads import configure_threads
    record = configure_threads()
else:
    record = {"threads": None, "wait_policy": None}
import torch
from torch.func import grad, jvp

torch.manual_seed(0)
x, y = torch.randn(256, 64), torch.randn(256, 1)
params = {"w1": torch.randn(64, 256) / 8, "w2": torch.randn(256, 256) / 16, "w3": torch.randn(256, 1) / 16}


def loss(p):
    h = torch.tanh(x @ p["w1"])
    h = torch.tanh(h @ p["w2"])
    return ((h @ p["w3"] - y) ** 2).mean()


v = {k: torch.randn_like(t) for k, t in params.items()}
hvp = lambda: jvp(grad(loss), (params,), (v,))[1]
for _ in range(3):
    hvp()
times, end = [], time.perf_counter() + float(sys.argv[2])
while time.perf_counter() < end or len(times) < 5:
    t0 = time.perf_counter()
    hvp()
    times.append(time.perf_counter() - t0)
times.sort()
print(json.dumps({"ms": 1000 * times[len(times) // 2], "n": len(times), "threads": torch.get_num_threads(),
                  "policy": os.environ.get("OMP_WAIT_POLICY")}))
"""


def run(setting: str, seconds: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "TRAITS_THREADS",
                                                           "TRAITS_THREADS_CHOSEN", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", WORKER, setting, str(seconds)], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    from traits.threads import available_cpus

    cpus, why = available_cpus()
    print(f"CPUs available: {cpus} ({why}); load average before: {os.getloadavg()[0]:.2f}")
    results: dict[tuple[str, str], list[float]] = {}
    for load in ("idle", "busy"):
        busy = []
        if load == "busy":
            busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cpus)]
            time.sleep(1.0)
        try:
            for _ in range(args.repeats):
                for setting in ("default", "chosen"):  # interleaved, so drifting load hits both alike
                    r = run(setting, args.seconds)
                    results.setdefault((setting, load), []).append(r["ms"])
                    print(f"  {load:4s} {setting:7s} threads {r['threads']} policy {r['policy'] or 'default':7s} "
                          f"{r['ms']:8.2f} ms/HVP ({r['n']} HVPs)", flush=True)
        finally:
            for proc in busy:
                proc.kill()
                proc.wait()
    print("\nmedian ms per HVP (slow-down under load)")
    for setting in ("default", "chosen"):
        idle = statistics.median(results[(setting, "idle")])
        loaded = statistics.median(results[(setting, "busy")])
        print(f"{setting:8s} idle {idle:8.2f}  busy {loaded:8.2f}  ({loaded / idle:.2f}x)")
    d, c = statistics.median(results[("default", "busy")]), statistics.median(results[("chosen", "busy")])
    print(f"under load, chosen settings vs default: {d / c:.2f}x faster")


if __name__ == "__main__":
    main()
