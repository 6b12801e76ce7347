"""Does the uncertainty of a model track its errors on omitted chemistry, before the labels exist?

For every trained task under ``--runs`` (``seed-*/<task>/model/model.safetensors`` with the task's
``split_manifest.json``), and optionally the bundled quickstart model on the bundled sample, this script
computes per compound: Hessian-WAG, low-rank linearised Laplace (certified Lanczos pairs of the training
loss), last-layer Laplace, the latent kNN distance to training and, where other seeds of the same task
have finished, a deep ensemble; and scores each (``traits.probes.uncertainty.score_method``): Spearman rho
of uncertainty against absolute error on OOD and ID, calibration after recalibrating on validation, and
the OOD/ID ratio of the mean uncertainty against the OOD/ID MAE ratio, with bootstrap intervals.

    python scripts/eval_uncertainty.py --runs ../runs/reference-cpu-planes --out docs/uncertainty --quickstart

Writes ``results.json`` (every number), ``table.md`` and figures into ``--out``. Nothing is trained.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "mp_mtcgcnn" / "mp_36738.jsonl.gz"
METHODS = ("hessian_wag", "laplace", "last_layer", "knn", "ensemble")
LABELS = {"hessian_wag": "Hessian-WAG", "laplace": "linearised Laplace (low rank)", "last_layer": "last-layer Laplace",
          "knn": "latent kNN distance", "ensemble": "deep ensemble"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _sub(items: list, limit: int | None, seed: int) -> list:
    if limit is None or len(items) <= limit:
        return list(items)
    idx = np.sort(np.random.default_rng(seed).choice(len(items), limit, replace=False))
    return [items[i] for i in idx]


_ENTRIES: dict[str, dict] = {}


def graphs_for(ids: dict[str, list[str]], target: str, settings) -> dict[str, list]:
    from traits.data.graphs import build_graphs
    from traits.data.sources import read_mp

    if target not in _ENTRIES:
        _ENTRIES[target] = {e.id: e for e in read_mp(DATA, target).entries}
    pool = _ENTRIES[target]
    out = {}
    for split, members in ids.items():
        built = build_graphs([pool[i] for i in members if i in pool], settings)
        out[split] = built.graphs
    return out


def find_tasks(runs: Path) -> list[dict]:
    tasks = []
    for ck in sorted(runs.glob("seed-*/*/model/model.safetensors")):
        task_dir = ck.parent.parent
        manifest = task_dir / "split_manifest.json"
        if not manifest.is_file() or not ck.with_suffix(".json").is_file():
            continue
        tasks.append({"task": task_dir.name, "seed": int(task_dir.parent.name.split("-")[1]), "checkpoint": ck,
                      "manifest": manifest})
    return tasks


def evaluate(model, splits: dict[str, list], *, seed: int, max_eval: int, tolerance: float, span: float,
             members: list | None = None, train_samples: int = 128, points: int = 7, halvings: int = 2,
             top_k: int = 8) -> dict:
    """Every method on one task; ``members``: other models of the same task for the ensemble."""
    from traits.audit import collate
    from traits.models.inference import embed
    from traits.models.inference import predict as predict_graphs
    from traits.probes import uncertainty as unc
    from traits.probes.directions import random_direction
    from traits.probes.hessian import top_eigenvalues
    from traits.probes.objective import SplitObjective
    from traits.probes.planes import hessian_plane

    device, dtype = torch.device("cpu"), torch.float32
    model = model.to(device=device, dtype=dtype).eval()
    q_graphs = {s: _sub(splits[s], max_eval, seed + k) for k, s in enumerate(("val", "id", "ood"))}
    queries = {s: collate(g, device, dtype) for s, g in q_graphs.items()}
    targets = {s: np.array([float(g.y) for g in gs]) for s, gs in q_graphs.items()}
    train_sub = _sub(splits["train"], train_samples, seed + 7)
    obj = SplitObjective(model, collate(train_sub, device, dtype), loss="mse")
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed + 101)
    eig = top_eigenvalues(obj.hvp, obj.dim, k=top_k, max_steps=40, tol=1e-3, generator=gen, device=device, dtype=dtype)
    t_eig = time.perf_counter() - t0
    skip = set(model.normalization_parameter_names())
    g = torch.Generator().manual_seed(seed)
    dirs = [random_direction(obj.params, g, skip=skip) for _ in range(4)]
    plane = hessian_plane(obj, max_steps=40, tol=1e-3, generator=torch.Generator().manual_seed(seed + 29),
                          device=device, dtype=dtype, skip=skip)
    planes = [("random-1", dirs[0], dirs[1]), ("random-2", dirs[2], dirs[3]), ("hessian", plane.d_max, plane.d_min)]
    axis = torch.linspace(-span, span, points, dtype=torch.float64)
    t0 = time.perf_counter()
    preds, info = unc.landscape_uncertainty(
        model, obj, queries, eig=eig, planes=planes, axis=axis, tolerance=tolerance, n_train=len(splits["train"]),
        train_batches=collate(splits["train"], device, dtype), val_targets=targets["val"], max_halvings=halvings)
    t_methods = time.perf_counter() - t0
    info["timing"] = {"lanczos_s": t_eig, "methods_s": t_methods, "n_query": sum(len(v) for v in targets.values())}
    info["plane"] = {"lambda_max": plane.lambda_max, "lambda_min": plane.lambda_min,
                     "certified": bool(plane.curvature.converged_max and plane.curvature.converged_min)}
    residuals = {s: targets[s] - preds["last_layer"][s].mean for s in targets}
    us = {m: {s: p.std for s, p in by.items()} for m, by in preds.items()}
    # latent kNN distance to (all) training compounds
    train_emb = embed(model, splits["train"], device)
    us["knn"] = {s: unc.knn_distance(train_emb, embed(model, q_graphs[s], device), k=5) for s in q_graphs}
    if members:
        ens = {}
        for s, gs in q_graphs.items():
            own = predict_graphs(model, gs, device)[1]
            ens[s] = unc.ensemble([own] + [predict_graphs(m.to(device, dtype).eval(), gs, device)[1] for m in members])
        us["ensemble"] = {s: e.std for s, e in ens.items()}
        info["ensemble"] = {"members": 1 + len(members)}
    scores = {m: unc.score_method(u, residuals, seed=seed) for m, u in us.items()}
    mae = {s: float(np.mean(np.abs(r))) for s, r in residuals.items()}
    return {"scores": scores, "info": info, "mae": mae, "n": {s: len(v) for s, v in targets.items()},
            "n_full": {s: len(v) for s, v in splits.items()}}


def _fmt(x, d=2) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{d}f}"


def _iv(r: dict) -> str:
    if r.get("value") is None:
        return "—"
    return f"{r['value']:.2f} [{r['low']:.2f}, {r['high']:.2f}]"


def table(results: list[dict]) -> str:
    lines = []
    for res in results:
        sc = res["scores"]
        lines.append(f"### {res['name']}\n")
        lines.append(f"n (val / ID / OOD) = {res['n']['val']} / {res['n']['id']} / {res['n']['ood']}; "
                     f"MAE ID {res['mae']['id']:.3f}, OOD {res['mae']['ood']:.3f}; "
                     f"OOD/ID MAE ratio {_iv(next(iter(sc.values()))['error_ratio'])}\n")
        lines.append("| method | ρ(u, \\|err\\|) OOD | ρ ID | miscal. area OOD | z std OOD | cov. 68% OOD | "
                     "cov. 95% OOD | miscal. area ID | u ratio OOD/ID [95% CI] |")
        lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for m in METHODS:
            if m not in sc:
                continue
            s = sc[m]
            co, ci = s["ood"]["calibration"], s["id"]["calibration"]
            lines.append(f"| {LABELS[m]} | {_fmt(s['ood']['spearman'])} | {_fmt(s['id']['spearman'])} | "
                         f"{_fmt(co['miscalibration_area'], 3)} | {_fmt(co['z_std'])} | {_fmt(co['coverage_68'])} | "
                         f"{_fmt(co['coverage_95'])} | {_fmt(ci['miscalibration_area'], 3)} | {_iv(s['u_ratio'])} |")
        lines.append("")
    return "\n".join(lines)


def headline(results: list[dict]) -> dict:
    """Per task the method with the largest OOD Spearman rho and the smallest OOD miscalibration area;
    over tasks, the Spearman correlation of each method's OOD/ID uncertainty ratio with the error ratio."""
    from scipy.stats import spearmanr

    wins_rho, wins_cal = {}, {}
    for res in results:
        sc = res["scores"]
        rho = {m: s["ood"]["spearman"] for m, s in sc.items() if s["ood"]["spearman"] is not None}
        cal = {m: s["ood"]["calibration"]["miscalibration_area"] for m, s in sc.items()
               if s["ood"]["calibration"]["miscalibration_area"] is not None}
        if rho:
            best = max(rho, key=rho.get)
            wins_rho[best] = wins_rho.get(best, 0) + 1
        if cal:
            best = min(cal, key=cal.get)
            wins_cal[best] = wins_cal.get(best, 0) + 1
    ranking = {}
    if len(results) >= 3:
        err = [r["scores"]["last_layer"]["error_ratio"]["value"] for r in results]
        for m in METHODS:
            u = [r["scores"].get(m, {}).get("u_ratio", {}).get("value") for r in results]
            if all(x is not None for x in u) and all(x is not None for x in err):
                ranking[m] = float(spearmanr(u, err).statistic)
    mean_rho = {m: float(np.mean([r["scores"][m]["ood"]["spearman"] for r in results
                                  if m in r["scores"] and r["scores"][m]["ood"]["spearman"] is not None]))
                for m in METHODS if any(m in r["scores"] for r in results)}
    return {"wins_ood_spearman": wins_rho, "wins_ood_calibration": wins_cal, "task_ranking_spearman": ranking,
            "mean_ood_spearman": mean_rho, "n_tasks": len(results)}


def figures(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.ticker
    from matplotlib import pyplot as plt

    for res in results:
        sc = res["scores"]
        methods = [m for m in METHODS if m in sc]
        fig, axes = plt.subplots(2, len(methods), figsize=(3 * len(methods), 5.6), squeeze=False)
        for j, m in enumerate(methods):
            ax = axes[0][j]
            for split, colour in (("id", "#4c72b0"), ("ood", "#dd8452")):
                pts = sc[m][split]["points"]
                ax.scatter(pts["u"], pts["abs_err"], s=5, alpha=0.5, color=colour, label=split.upper())
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_title(f"{LABELS[m]}\nρ OOD {_fmt(sc[m]['ood']['spearman'])}", fontsize=8)
            ax.set_xlabel("uncertainty u", fontsize=8)
            if j == 0:
                ax.set_ylabel("|error|", fontsize=8)
                ax.legend(fontsize=7)
            ax = axes[1][j]
            for split, colour in (("id", "#4c72b0"), ("ood", "#dd8452")):
                cal = sc[m][split]["calibration"]
                ax.plot(cal["expected"], cal["observed"], color=colour, label=split.upper())
            ax.plot([0, 1], [0, 1], color="#888", lw=0.8, ls="--")
            ax.set_xlabel("expected share in interval", fontsize=8)
            if j == 0:
                ax.set_ylabel("observed share", fontsize=8)
        fig.suptitle(res["name"], fontsize=9)
        fig.tight_layout()
        slug = "".join(c if c.isalnum() else "-" for c in res["name"]).strip("-")
        while "--" in slug:
            slug = slug.replace("--", "-")
        fig.savefig(out / f"{slug}.png", dpi=110)
        plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "uncertainty")
    ap.add_argument("--quickstart", action="store_true", help="also the bundled quickstart model on the sample")
    ap.add_argument("--max-eval", type=int, default=400, help="compounds per val / ID / OOD set (seeded)")
    ap.add_argument("--tolerance", type=float, default=0.1, help="τ of the low-loss region (the specs' 0.1)")
    ap.add_argument("--span", type=float, default=0.125,
                    help="WAG grid span in filter-normalised units (halved while a plane keeps < 8 points)")
    ap.add_argument("--points", type=int, default=7, help="WAG grid points per axis")
    ap.add_argument("--train-samples", type=int, default=128, help="training structures of the curvature and WAG")
    ap.add_argument("--skip", nargs="*", default=[], help="task names (e.g. 'bandgap-omit-Fe (seed 0)') to skip")
    ap.add_argument("--merge", type=Path, nargs="*", default=None,
                    help="combine the tasks of these results.json files into --out (nothing is recomputed)")
    args = ap.parse_args()
    if args.merge:
        args.out.mkdir(parents=True, exist_ok=True)
        merged = [t for f in args.merge for t in json.loads(f.read_text())["tasks"]]
        write_outputs(merged, args.out)
        return
    torch.set_num_threads(1)
    from traits.models.checkpoint import load_checkpoint
    from traits.spec import GraphSpec

    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    if args.quickstart:
        import traits
        from traits.data.prepare import prepare_data

        spec = traits.load_spec(ROOT / "audits" / "quickstart.yaml")
        data = prepare_data(spec)
        model, _ = load_checkpoint(ROOT / "traits/data/quickstart/model.safetensors", device=torch.device("cpu"))
        log("quickstart: evaluating")
        res = evaluate(model, data.splits, seed=0, max_eval=args.max_eval, tolerance=args.tolerance, span=args.span,
                       points=args.points, train_samples=args.train_samples)
        res["name"] = "quickstart (sample, enthalpy omit Fe)"
        results.append(res)
    tasks = find_tasks(args.runs) if args.runs else []
    for t in tasks:
        if f"{t['task']} (seed {t['seed']})" in args.skip:
            continue
        log(f"seed {t['seed']} {t['task']}: loading")
        model, meta = load_checkpoint(t["checkpoint"], device=torch.device("cpu"))
        ids = json.loads(t["manifest"].read_text())["ids"]
        settings = GraphSpec(**meta["graph"])
        others = [o for o in tasks if o["task"] == t["task"] and o["seed"] != t["seed"]]
        members = []
        # an ensemble member must not have trained on the compounds it is scored on
        leak = set()
        for o in others:
            m, _ = load_checkpoint(o["checkpoint"], device=torch.device("cpu"))
            members.append(m)
            leak |= set(json.loads(o["manifest"].read_text())["ids"]["train"])
        if members:
            ids = {s: (v if s == "train" else [i for i in v if i not in leak]) for s, v in ids.items()}
        splits = graphs_for(ids, meta["target"], settings)
        log(f"seed {t['seed']} {t['task']}: evaluating ({ {k: len(v) for k, v in splits.items()} })")
        res = evaluate(model, splits, seed=t["seed"], max_eval=args.max_eval, tolerance=args.tolerance,
                       span=args.span, members=members or None, points=args.points,
                       train_samples=args.train_samples)
        res["name"] = f"{t['task']} (seed {t['seed']})"
        results.append(res)
        (args.out / "results.json").write_text(json.dumps({"tasks": results, "headline": headline(results)}))
    write_outputs(results, args.out)


def write_outputs(results: list[dict], out: Path) -> None:
    head = headline(results)
    (out / "results.json").write_text(json.dumps({"tasks": results, "headline": head}, indent=1))
    (out / "table.md").write_text(table(results))
    figures(results, out)
    print(table(results))
    print(json.dumps(head, indent=1))


if __name__ == "__main__":
    main()
