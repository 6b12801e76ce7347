"""What the sampling errors cost: the Hessian probe with structure groups (jackknife of λ_max, Gauss-Newton
trace) against the same probe without them (Hutchinson and Hutch++), side by side on the quickstart's splits.

    python bench/bench_sampling.py [--repeats 3] [--split id]

Both variants run on the same model, the same 128 structures and the same probe settings as the quickstart
(``audits/quickstart.yaml``), interleaved ``--repeats`` times; the medians and the ratio grouped / plain are
printed, with the trace each gives and its error (the plain variant's Hutch++ and Hutchinson side by side).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--split", default="id", choices=["id", "ood"])
    args = ap.parse_args(argv)

    import torch

    from traits.audit import AuditContext, collate, hessian_groups, run_hessian, subsample
    from traits.seeds import stream
    from traits.spec import load_spec
    from traits.threads import configure_threads

    configure_threads()
    spec = load_spec(ROOT / "audits" / "quickstart.yaml")
    out = Path("/tmp/bench-sampling")
    out.mkdir(parents=True, exist_ok=True)
    ctx = AuditContext(spec=spec, out_dir=out, device=torch.device("cpu"),
                       dtype=torch.float32)
    from traits.audit import STAGES, run_stages

    run_stages(ctx, [STAGES[0]])  # the model and the split
    k = spec.probes.splits.index(args.split)
    sub = subsample(ctx.data.splits[args.split], spec.probes.hessian.max_samples, stream(spec, "hessian_subsample", k))
    batches = collate(sub, ctx.device, ctx.dtype)
    groups = hessian_groups(spec, len(sub), k)
    group_batches = [collate([sub[i] for i in g], ctx.device, ctx.dtype) for g in groups]
    times: dict[str, list[float]] = {"grouped": [], "plain": []}
    last = {}
    for _ in range(args.repeats):
        for name in ("plain", "grouped"):
            t = time.perf_counter()
            kw = {"group_batches": group_batches, "groups": groups} if name == "grouped" else {}
            last[name] = run_hessian(spec, ctx.model, batches, len(sub), stream(spec, "hessian", k), ctx.device,
                                     ctx.dtype, **kw)
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"Hessian probe on the quickstart's {args.split} split ({len(sub)} structures, {len(groups)} groups), "
          f"median of {args.repeats}, torch threads {torch.get_num_threads()}:")
    for name in ("plain", "grouped"):
        traces = ", ".join(f"{t.method} {t.estimate:.1f} ± {t.stderr:.2g}"
                           + (f" (sampling ± {t.sampling_stderr:.2g})" if t.sampling_stderr is not None else "")
                           for t in last[name].traces)
        jk = last[name].lambda_max_jackknife
        lam = f"λ_max {last[name].top_eigenvalues[0]:.1f}" + (f" ± {jk.stderr:.2g} (jackknife)" if jk else "")
        print(f"  {name:8s} {med[name]:7.2f} s   {lam}; {traces}")
    print(f"ratio grouped / plain: {med['grouped'] / med['plain']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
