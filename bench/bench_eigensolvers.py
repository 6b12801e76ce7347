"""Eigensolvers compared at equal accuracy: Hessian-vector products (HVPs) needed to reach a relative error
<= 1e-3 on each of the top-5 eigenvalues and on lambda_min, against a converged reference.

    python bench/bench_eigensolvers.py [--quick] [--n N] [--accuracy 1e-3] [--no-ref-cache] [--only traits,...]

Problem: the original CGCNN formation-energy checkpoint (../shared/models/cgcnn/, 96,641 parameters, graphs
padded to 12 neighbours) on the ID set of ``audits/published-cgcnn/`` (100 Materials Project crystals without
Fe or O), one batch, MSE in (eV/atom)^2; ``--quick``: the quickstart CGCNN (18,849 parameters) on the first 64
training crystals of the bundled sample (Fe omitted). Every solver applies the same Hessian: products come from
one counted operator (``SplitObjective.hvp``, float32).

Reference: scipy ``eigsh`` (ARPACK) on the HVP operator, tol 1e-9, k = 6 largest and k = 3 smallest
algebraic eigenvalues; its residuals ||Hv - lambda v|| are verified and printed. It is cached in
``$TRAITS_CACHE/bench`` (default ~/.cache/traits/bench) keyed by the problem.

Competitors, each swept over its own knob; the figure is the smallest HVP count whose *returned values*
meet the accuracy (what the best setting of that knob costs), plus the result at the tool's defaults:

* TRAITS Lanczos: ``traits.probes.hessian.top_eigenvalues`` / ``smallest_eigenvalue``; sweeps ``tol``
  (max_steps 300) and ``max_steps`` (tol 1e-12, so the run uses its whole budget); ``n_hvp`` as reported
  (it includes the verification products).
* PyHessian 0.1: ``pyhessian.hessian.eigenvalues`` (power iteration with deflation, eigenvalues of largest
  *magnitude*) on the counted operator; sweeps ``tol`` (maxIter per eigenvalue capped). It has no smallest-
  eigenvalue routine; lambda_min is tried by the same power iteration on the shifted operator H - sigma I with
  sigma = its own top eigenvalue (lambda_min - sigma then dominates), under an HVP cap.
* hessian-eigenthings 1.0.0a5: ``hessian_eigenthings.lanczos`` (which 'LA' / 'SA') on a ``LambdaOperator``
  around the counted operator; a fixed number of steps, so it sweeps ``max_iter`` (default reorthogonalisation:
  on for max_iter <= 50, off above).
* curvlinops 3.0.1: scipy ``eigsh`` (which 'LA' k=5 / 'SA' k=1, default ncv, at most 40 restarts), the solver
  curvlinops pairs with its ``HessianLinearOperator(...).to_scipy()``; sweeps ``tol``. The sweep runs eigsh on the
  counted operator; curvlinops' own operator is checked against it once (agreement and time per product),
  since its forward-over-reverse products cost more per product and would only change the wall time.

Sweeps share one product cache per operator (a repeated request for the same vector, e.g. a rerun with the same
start vector and a looser tolerance, is not recomputed), so a sweep costs about its longest run. Counts are the
products each run *requested*; wall time is that run's own solver time plus, for each product, the time it
took when first computed (so it is the time of an uncached run). Peak memory: the largest increase of resident
memory over the loaded problem while the run at the chosen setting ran again (products from the cache,
so it is the solver's own storage: Krylov bases, Ritz vectors), sampled every millisecond in this process.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_CKPT = ROOT.parent / "shared" / "models" / "cgcnn" / "formation-energy-per-atom.pth.tar"
PUBLISHED_SPEC = ROOT / "audits" / "published-cgcnn" / "formation-energy.yaml"
TOLS = [1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 3e-7, 1e-7]
STEPS = [6, 8, 10, 12, 14, 16, 18, 20, 24, 28, 32, 36, 40, 45, 50, 55, 60, 70, 80, 90, 100, 120, 140, 160, 200,
         250, 300]


# ------------------------------------------------------------------------------------ problem
def load_problem(quick: bool, n: int | None):
    """(model, one batch, model name, ids, data label). Default: the original CGCNN on the ID set of
    ``audits/published-cgcnn/`` (100 Materials Project crystals without Fe or O, drawn from
    ../shared/data/mp_mtcgcnn by that folder's pick_sets.py); quick: the quickstart CGCNN on the first 64
    training crystals of the bundled sample (Fe omitted)."""
    from traits.audit import collate
    from traits.data.prepare import prepare_data
    from traits.models.checkpoint import load_checkpoint
    from traits.spec import load_spec

    cpu = torch.device("cpu")
    if not quick:
        if not SHARED_CKPT.is_file():
            raise SystemExit(f"{SHARED_CKPT} not found; use --quick")
        spec = load_spec(PUBLISHED_SPEC)
        data = prepare_data(spec)
        graphs = data.splits["id"][: n or None]
        label = f"{len(graphs)} crystals of the ID set of audits/published-cgcnn (Materials Project, no Fe, no O)"
    else:
        spec = load_spec(ROOT / "audits" / "quickstart.yaml")
        data = prepare_data(spec)
        graphs = data.splits["train"][: n or 64]
        label = f"the first {len(graphs)} training crystals of the bundled sample (Fe omitted)"
    model, _ = load_checkpoint(spec.model.checkpoint, spec.model.format, architecture=spec.model.architecture,
                               target=spec.data.target, graph=spec.data.graph, device=cpu)
    name = "original CGCNN, formation energy (Xie & Grossman)" if not quick else "quickstart CGCNN"
    batches = collate(graphs, cpu, torch.float32, max(len(graphs), 1))
    ids = [str(getattr(g, "material_id", getattr(g, "id", i))) for i, g in enumerate(graphs)]
    return model.eval(), batches, name, ids, label


class CountedOperator:
    """A flat-vector HVP with a product cache, a request counter and the compute time of each product."""

    def __init__(self, fn, dim: int, dtype=torch.float32) -> None:
        self.fn, self.dim, self.dtype = fn, dim, dtype
        self.cache: dict[bytes, tuple[torch.Tensor, float]] = {}
        self.requests = 0
        self.charged = 0.0  # compute time of the requested products (cached ones at their first cost)
        self.computing = 0.0  # time actually spent computing products
        self.computed = 0

    def __call__(self, v) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v)
        t = t.detach().reshape(-1).to(self.dtype).contiguous()
        key = hashlib.blake2b(t.numpy().tobytes(), digest_size=16).digest()
        self.requests += 1
        hit = self.cache.get(key)
        if hit is None:
            start = time.perf_counter()
            out = self.fn(t).detach().to(self.dtype).reshape(-1)
            spent = time.perf_counter() - start
            self.computing += spent
            self.computed += 1
            hit = (out, spent)
            self.cache[key] = hit
        self.charged += hit[1]
        return hit[0].clone()

    def scipy(self):
        from scipy.sparse.linalg import LinearOperator

        return LinearOperator((self.dim, self.dim), matvec=lambda x: self(x).double().numpy(), dtype=np.float64)


class Run:
    """Measure one solver run on a CountedOperator: products requested, and wall time as if uncached."""

    def __init__(self, op: CountedOperator) -> None:
        self.op = op

    def __enter__(self):
        self.r0, self.c0, self.k0 = self.op.requests, self.op.charged, self.op.computing
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        elapsed = time.perf_counter() - self.t0
        self.hvp = self.op.requests - self.r0
        self.wall = elapsed - (self.op.computing - self.k0) + (self.op.charged - self.c0)
        return False


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_increase(fn) -> float:
    """fn() in this process while a thread samples the resident memory every millisecond; the largest
    increase over the resident memory at the start, in MB. (No fork: a forked child of a process whose
    OpenMP pool has run can hang.) Large tensors are mmap-ed and returned to the system when freed, so
    the resident memory follows what the run holds."""
    import threading

    base = current_rss_mb()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], current_rss_mb())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    peak[0] = max(peak[0], current_rss_mb())
    return max(peak[0] - base, 0.0)


def rel_errors(values, ref) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return np.abs(v - ref) / np.abs(ref)


def top_error(values, ref_top: np.ndarray) -> float:
    v = np.sort(np.asarray(values, dtype=float))[::-1]
    if v.size < ref_top.size or not np.all(np.isfinite(v[: ref_top.size])):
        return math.inf
    return float(np.max(rel_errors(v[: ref_top.size], ref_top)))


# ------------------------------------------------------------------------------------ reference
def reference(op: CountedOperator, key: str, use_cache: bool) -> dict:
    from scipy.sparse.linalg import eigsh

    cache_dir = Path(os.environ.get("TRAITS_CACHE", Path.home() / ".cache" / "traits")) / "bench"
    path = cache_dir / f"eigensolvers-ref-{key}.json"
    if use_cache and path.is_file():
        out = json.loads(path.read_text())
        out["cached"] = str(path)
        return out
    rng = np.random.default_rng(12345)
    lin = op.scipy()
    with Run(op) as r_top:
        top, top_vec = eigsh(lin, k=6, which="LA", tol=1e-9, ncv=40, v0=rng.standard_normal(op.dim), maxiter=5000)
    with Run(op) as r_low:
        low, low_vec = eigsh(lin, k=3, which="SA", tol=1e-9, ncv=60, v0=rng.standard_normal(op.dim), maxiter=5000)
    order = np.argsort(top)[::-1]
    top, top_vec = top[order], top_vec[:, order]
    order = np.argsort(low)
    low, low_vec = low[order], low_vec[:, order]

    def residual(lam, vec):
        v = torch.from_numpy(vec).float()
        v = v / v.norm()
        return float((op(v).double() - lam * v.double()).norm())

    out = {
        "top": top[:5].tolist(), "sixth": float(top[5]), "low": low.tolist(),
        "top_res": [residual(top[i], top_vec[:, i]) for i in range(5)],
        "low_res": [residual(low[0], low_vec[:, 0])],
        "hvp_top": r_top.hvp, "hvp_low": r_low.hvp, "wall": r_top.wall + r_low.wall,
    }
    cache_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    out["cached"] = None
    return out


# ------------------------------------------------------------------------------------ competitors
def _first_meeting(settings, run_one, err_of, accuracy):
    """Run ``run_one(s)`` over ``settings`` in order; return (rows, the first meeting the accuracy or None)."""
    rows = []
    for s in settings:
        row = run_one(s)
        row["err"] = err_of(row)
        rows.append(row)
        log(f"  {row['setting']}: {row['hvp']} HVPs, err {row['err']:.1e}")
        if row["err"] <= accuracy:
            return rows, row
    return rows, None


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def traits_solver(op, dim, which: str, ref, accuracy, seed=2):
    from traits.probes.hessian import smallest_eigenvalue, top_eigenvalues

    kw = {"device": torch.device("cpu"), "dtype": torch.float32}

    def call(tol, steps):
        gen = torch.Generator().manual_seed(seed)
        with Run(op) as r:
            if which == "top":
                res = top_eigenvalues(op, dim, k=5, max_steps=steps, tol=tol, generator=gen, **kw)
            else:
                res = smallest_eigenvalue(op, dim, max_steps=steps, tol=tol, generator=gen, **kw)
        values = [float(x) for x in res.values]
        return {"values": values, "hvp": r.hvp, "reported_hvp": int(res.n_hvp), "steps": int(res.n_steps),
                "wall": r.wall,
                "converged": bool(res.converged), "setting": f"tol={tol:g}, max_steps={steps}",
                "args": (tol, steps)}

    err = (lambda row: top_error(row["values"], ref["top"])) if which == "top" else \
        (lambda row: float(rel_errors(row["values"][:1], ref["low"][0])[0]))
    default = call(1e-3, 60)
    default["err"] = err(default)
    rows_tol, hit_tol = _first_meeting(TOLS, lambda t: call(t, 300), err, accuracy)
    rows_steps, hit_steps = _first_meeting([s for s in STEPS if s >= 5], lambda m: call(1e-12, m), err, accuracy)
    hits = [h for h in (hit_tol, hit_steps) if h is not None]
    best = min(hits, key=lambda h: h["hvp"]) if hits else None
    return {"default": default, "best": best, "sweeps": {"tol": rows_tol, "max_steps": rows_steps},
            "rerun": (lambda: call(*best["args"])) if best else None}


def pyhessian_solver(op, model, which: str, ref, accuracy, max_iter: int, cap: int, sigma=None, seed=3):
    from pyhessian import hessian as pyhessian_hessian

    params = [p for p in model.parameters() if p.requires_grad]
    sizes = [p.numel() for p in params]
    flags = [(m, m.training) for m in model.modules()]
    h = pyhessian_hessian(model, criterion=None, dataloader=[(None, None)], cuda=False)
    for m, t in flags:
        m.training = t

    def product(v_list, shift):
        flat = torch.cat([x.reshape(-1) for x in v_list])
        hv = op(flat)
        if shift is not None:
            hv = hv - shift * flat
        parts = [c.view_as(p) for c, p in zip(torch.split(hv, sizes), params)]
        return float((hv * flat).sum()), parts

    def call(tol, k, shift):
        iters = max_iter if shift is None else cap
        h.dataloader_hv_product = lambda v: product(v, shift)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with Run(op) as r:
                values, _ = h.eigenvalues(maxIter=iters, tol=tol, top_n=k)
        values = [float(x) + (shift or 0.0) for x in values]
        return {"values": values, "hvp": r.hvp, "wall": r.wall, "setting": f"tol={tol:g}, maxIter={iters}",
                "args": (tol, k, shift)}

    if which == "top":
        err = lambda row: top_error(row["values"], ref["top"])  # noqa: E731
        default = call(1e-3, 5, None)
        default["err"] = err(default)
        rows, hit = _first_meeting(TOLS, lambda t: call(t, 5, None), err, accuracy)
    else:  # shifted power iteration: the dominant eigenvalue of H - sigma I is lambda_min - sigma
        err = lambda row: float(rel_errors(row["values"][:1], ref["low"][0])[0])  # noqa: E731
        default = None
        rows = []
        hit = None
        for t in TOLS + [0.0]:  # tol 0: run the whole cap
            row = call(t, 1, sigma)
            row["err"] = err(row)
            rows.append(row)
            log(f"  {row['setting']}: {row['hvp']} HVPs, err {row['err']:.1e}")
            if row["err"] <= accuracy:
                hit = row
                break
            if row["hvp"] >= cap:
                break
    return {"default": default, "best": hit, "sweeps": {"tol": rows},
            "rerun": (lambda: call(*hit["args"])) if hit else None}


def eigenthings_solver(op, dim, which: str, ref, accuracy, seed=4):
    import hessian_eigenthings as he

    lop = he.LambdaOperator(op, dim, device="cpu", dtype=torch.float32)
    k = 5 if which == "top" else 1

    def call(m):
        with Run(op) as r:
            res = he.lanczos(lop, k=k, max_iter=m, which="LA" if which == "top" else "SA", seed=seed)
        return {"values": [float(x) for x in res.eigenvalues], "hvp": r.hvp, "wall": r.wall,
                "converged": bool(res.converged.all()), "setting": f"max_iter={m}", "args": (m,)}

    err = (lambda row: top_error(row["values"], ref["top"])) if which == "top" else \
        (lambda row: float(rel_errors(row["values"][:1], ref["low"][0])[0]))
    default = call(min(2 * k, dim - 1) if which == "top" else max(2 * k, 2))
    default["err"] = err(default)
    rows, hit = _first_meeting([m for m in STEPS if m >= k], call, err, accuracy)
    return {"default": default, "best": hit, "sweeps": {"max_iter": rows},
            "rerun": (lambda: call(*hit["args"])) if hit else None}


def curvlinops_operator(model, batches):
    """curvlinops' HessianLinearOperator on the same loss, as a flat torch function (for the check)."""
    from curvlinops import HessianLinearOperator

    class Flat(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, batch):
            return self.m(batch).reshape(-1)

    params = [p for p in model.parameters() if p.requires_grad]
    data = [(b, b.y.reshape(-1)) for b in batches]
    hop = HessianLinearOperator(Flat(model), torch.nn.MSELoss(reduction="mean"), params, data,
                                batch_size_fn=lambda X: X.num_graphs, check_deterministic=False).to_scipy(np.float32)
    return lambda v: torch.from_numpy(np.asarray(hop @ v.numpy(), dtype=np.float32))


def eigsh_solver(op, dim, which: str, ref, accuracy, seed=5, maxiter=40):
    """scipy eigsh (ARPACK, default ncv) as curvlinops uses it, on the counted operator."""
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    k = 5 if which == "top" else 1

    def call(tol):
        v0 = np.random.default_rng(seed).standard_normal(dim)
        with Run(op) as r:
            try:
                values = eigsh(op.scipy(), k=k, which="LA" if which == "top" else "SA", tol=tol, v0=v0,
                               maxiter=maxiter, return_eigenvectors=False)
                converged = True
            except ArpackNoConvergence as exc:
                values, converged = exc.eigenvalues, False
        values = sorted((float(x) for x in values), reverse=(which == "top"))
        return {"values": values, "hvp": r.hvp, "wall": r.wall, "converged": converged,
                "setting": f"tol={tol:g}", "args": (tol,)}

    err = (lambda row: top_error(row["values"], ref["top"])) if which == "top" else \
        (lambda row: float(rel_errors(row["values"][:1], ref["low"][0])[0]) if row["values"] else math.inf)
    rows, hit = _first_meeting(TOLS, call, err, accuracy)
    return {"default": None, "best": hit, "sweeps": {"tol": rows},
            "rerun": (lambda: call(*hit["args"])) if hit else None}


# ------------------------------------------------------------------------------------ main
def fmt_row(label, res, pyhessian_best=None):
    best, default = res["best"], res["default"]
    if best is None:
        sweep = max((r for rows in res["sweeps"].values() for r in rows), key=lambda r: r["hvp"])
        cell = f"not reached (best swept: {sweep['hvp']} HVPs, err {sweep['err']:.1e})"
        line = f"{label:34s} {cell}"
    else:
        line = (f"{label:34s} {best['hvp']:5d} HVPs  {best['wall']:7.1f} s  {res.get('mem', float('nan')):6.1f} MB  "
                f"err {best['err']:.1e}  [{best['setting']}]")
        if "steps" in best:
            line += f" ({best['steps']} Lanczos steps + {best['hvp'] - best['steps']} verification products)"
    if default is not None:
        conv = default.get("converged")
        line += (f"\n{'':34s} defaults: {default['hvp']} HVPs, err {default['err']:.1e} [{default['setting']}]"
                 + ("" if conv is None else f", reports converged={conv}"))
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="quickstart model on 64 crystals")
    parser.add_argument("--n", type=int, default=None, help="only the first N crystals (default: all 100; quick 64)")
    parser.add_argument("--accuracy", type=float, default=1e-3)
    parser.add_argument("--no-ref-cache", action="store_true", help="recompute the reference")
    parser.add_argument("--pyhessian-max-iter", type=int, default=None,
                        help="PyHessian maxIter per eigenvalue (default 300; quick 200)")
    parser.add_argument("--shift-cap", type=int, default=None,
                        help="most HVPs for PyHessian's shifted power iteration (default 400; quick 200)")
    parser.add_argument("--only", default="traits,pyhessian,eigenthings,curvlinops")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's; 1 on a machine shared with other jobs, where "
                             "OpenMP threads waiting on each other cost far more than they gain)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    only = set(args.only.split(","))
    torch.manual_seed(0)
    t_start = time.perf_counter()
    from traits.probes.objective import SplitObjective

    model, batches, name, ids, label = load_problem(args.quick, args.n)
    obj = SplitObjective(model, batches, loss="mse")
    op = CountedOperator(obj.hvp, obj.dim)
    key = hashlib.sha256(json.dumps([name, ids, obj.dim, float(obj.loss())]).encode()).hexdigest()[:16]
    print(f"# TRAITS eigensolver benchmark at equal accuracy (relative error <= {args.accuracy:g})")
    print(f"# {platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads), python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.1f}")
    print(f"# problem: {name}, {obj.dim} parameters, {label}, one batch, MSE loss "
          f"{float(obj.loss()):.4g}, HVP hvp_method={obj.hvp_method}")
    ref = reference(op, key, not args.no_ref_cache)
    ref_top, ref_low = np.array(ref["top"]), np.array(ref["low"])
    ref_np = {"top": ref_top, "low": ref_low}
    print(f"reference (eigsh tol 1e-9{', cached ' + ref['cached'] if ref.get('cached') else ''}; "
          f"{ref['hvp_top']} + {ref['hvp_low']} HVPs): top-5 " + ", ".join(f"{x:.6g}" for x in ref_top)
          + f" (6th {ref['sixth']:.6g}); smallest " + ", ".join(f"{x:.6g}" for x in ref_low))
    print("reference residuals ||Hv - lambda v||: top " + ", ".join(f"{x:.1e}" for x in ref["top_res"])
          + f"; lambda_min {ref['low_res'][0]:.1e}")
    t = time.perf_counter()
    for _ in range(3):
        obj.hvp(torch.randn(obj.dim))
    t_hvp = (time.perf_counter() - t) / 3
    print(f"one HVP: {t_hvp:.2f} s (mean of 3)")

    results = {}
    max_iter = args.pyhessian_max_iter or (200 if args.quick else 300)
    cap = args.shift_cap or (200 if args.quick else 400)
    for which in ("top", "low"):
        log(f"{which}: products computed so far {op.computed}")
        if "traits" in only:
            results[("TRAITS Lanczos", which)] = traits_solver(op, obj.dim, which, ref_np, args.accuracy)
        if "pyhessian" in only:
            sigma = None
            if which == "low":
                top = results.get(("PyHessian power iteration", "top"))
                src = (top["best"] or top["default"]) if top else None
                sigma = max(src["values"]) if src else float(ref_top[0])
            label = "PyHessian power iteration" if which == "top" else "PyHessian shifted power iteration"
            results[(label, which)] = pyhessian_solver(op, model, which, ref_np, args.accuracy, max_iter, cap, sigma)
        if "eigenthings" in only:
            results[("hessian-eigenthings lanczos", which)] = eigenthings_solver(op, obj.dim, which, ref_np,
                                                                                args.accuracy)
        if "curvlinops" in only:
            results[("curvlinops + scipy eigsh", which)] = eigsh_solver(op, obj.dim, which, ref_np, args.accuracy)
    for res in results.values():
        res["mem"] = peak_increase(res["rerun"]) if res["rerun"] else float("nan")

    for which, title in (("top", "top-5 eigenvalues"), ("low", "lambda_min")):
        print(f"\n## {title}: smallest HVP count meeting relative error <= {args.accuracy:g} on "
              f"{'each of the top 5' if which == 'top' else 'lambda_min'}")
        print(f"{'method':34s} HVPs / wall (uncached) / peak memory increase / max rel. error [setting]")
        for (label, w), res in results.items():
            if w == which:
                print(fmt_row(label, res))
        counts = {label: res["best"]["hvp"] for (label, w), res in results.items() if w == which and res["best"]}
        ours = counts.get("TRAITS Lanczos")
        if ours:
            others = {k: v for k, v in counts.items() if k != "TRAITS Lanczos"}
            ph = [v for k, v in others.items() if k.startswith("PyHessian")]
            print("HVP ratio PyHessian / TRAITS: " + (f"{ph[0] / ours:.2f}x (target >= 3x)" if ph else
                                                      "n/a (PyHessian did not reach the accuracy)"))
            if others:
                best_other = min(others.values())
                print(f"TRAITS / best of the others: {ours / best_other:.2f} (target <= 1)")
    if "curvlinops" in only:
        curv = curvlinops_operator(model, batches)
        v = torch.randn(obj.dim, generator=torch.Generator().manual_seed(9))
        curv(v)
        t = time.perf_counter()
        a = curv(v)
        t_curv = time.perf_counter() - t
        t = time.perf_counter()
        b = obj.hvp(v)
        t_ours = time.perf_counter() - t
        print(f"\ncurvlinops' own HessianLinearOperator vs SplitObjective.hvp: max |diff| / max |Hv| "
              f"{float((a - b).abs().max() / b.abs().max()):.1e}; {t_curv:.2f} s vs {t_ours:.2f} s per product "
              "(the eigsh wall times above use SplitObjective.hvp's)")
    print(f"\nproducts computed: {op.computed} (shared operator), total wall {time.perf_counter() - t_start:.0f} s, "
          f"peak RSS {peak_rss_mb():.0f} MB, load average at the end {os.getloadavg()[0]:.1f}")
    print("\n## sweeps (setting: HVPs, max rel. error)")
    for (label, which), res in results.items():
        for knob, rows in res["sweeps"].items():
            cells = "; ".join(f"{r['setting']}: {r['hvp']}, {r['err']:.1e}" for r in rows)
            print(f"{label} ({which}, {knob}): {cells}")


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
