#!/usr/bin/env bash
# The GPU check (issue 38), one script to run on a CUDA machine in under 10 minutes:
#   1. the CUDA tests (every test under tests/ whose name contains "cuda");
#   2. a 2D surface at 51x51 on 2,048 structures: the engine's default against the classic loop (per point,
#      the perturbed state dict is loaded and a DataLoader collates the split; timed on a 3x3 sub-grid of the
#      same points and scaled to the full grid, its values compared with the engine's at those points);
#   3. the batched Hessian-vector products (SplitObjective.hvp_many, the CUDA default) against one by one;
#   4. the quickstart audit (audits/quickstart.yaml) on CUDA.
# Figures go to <out>/gpu_check.txt ("key: value" lines), each step's output to <out>/log.txt.
#
#   bench/gpu_check.sh [--dry-run] [--out DIR]     (DIR defaults to $OUT when set, else out/gpu-check)
#
# --dry-run runs the same steps on the CPU at tiny sizes (3x3 grid, 16 structures, a few HVPs, a tiny
# quickstart) in under 2 minutes, so CI can check the script does not rot. Exit status: 0 when every step
# passed, 1 when one failed (named in gpu_check.txt), 2 on bad arguments or no CUDA device without --dry-run.
set -uo pipefail

DRY=0
DEST="${OUT:-out/gpu-check}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) [ $# -ge 2 ] || { echo "gpu_check.sh: --out needs a folder" >&2; exit 2; }; DEST="$2"; shift ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (use --dry-run, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
cd "$(dirname "$0")/.." || exit 2
mkdir -p "$DEST" || { echo "gpu_check.sh: cannot create $DEST" >&2; exit 2; }
DEST="$(cd "$DEST" && pwd)"
FIG="$DEST/gpu_check.txt"
LOG="$DEST/log.txt"
: > "$FIG"
: > "$LOG"
export GPU_CHECK_DRY="$DRY" GPU_CHECK_DEST="$DEST" GPU_CHECK_FIG="$FIG"
# the graphs are cached outside DEST, which holds only figures, the log and the quickstart's results
export TRAITS_CACHE="${TMPDIR:-/tmp}/traits-gpu-check-graphs" HF_HUB_OFFLINE=1
if [ "$DRY" = 1 ]; then
  export GPU_CHECK_DEVICE=cpu
  LIMITS=(100 60 60 90)   # seconds: tests, surface, HVPs, quickstart
else
  export GPU_CHECK_DEVICE=cuda
  LIMITS=(120 240 60 150)  # 570 s in all, with the start under 10 minutes
fi

read -r -d '' STAGES <<'PY'
import json, os, platform, sys, time
from pathlib import Path

import numpy as np
import torch

DRY = os.environ["GPU_CHECK_DRY"] == "1"
DEVICE = torch.device(os.environ["GPU_CHECK_DEVICE"])
if DRY:
    torch.set_num_threads(1)  # tiny tensors on a CI runner: threads only contend
DEST = Path(os.environ["GPU_CHECK_DEST"])
ROOT = Path.cwd()
MP_FILE = ROOT.parent / "shared" / "data" / "mp_mtcgcnn" / "mp_36738.jsonl.gz"
ORIGINAL = ROOT.parent / "shared" / "models" / "cgcnn" / "formation-energy-per-atom.pth.tar"
QUICKSTART_CKPT = ROOT / "traits" / "data" / "quickstart" / "model.safetensors"


def record(**figures):
    with open(os.environ["GPU_CHECK_FIG"], "a") as fh:
        for key, value in figures.items():
            fh.write(f"{key}: {value}\n")
            print(f"{key}: {value}", flush=True)


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t


def setup(n_structures):
    """(model, graphs, description): the original CGCNN and 12-neighbour padded graphs when ../shared has them,
    else the quickstart model and TRAITS' graphs; structures from the shared Materials Project file when present,
    else the bundled sample (repeated past its 2,000 structures: the timing is per structure)."""
    from traits.data.prepare import prepare_data
    from traits.models.cgcnn_original import load_cgcnn_original
    from traits.models.checkpoint import load_checkpoint
    from traits.spec import spec_from_mapping

    original = ORIGINAL.is_file() and not DRY
    data = {"source": "sample", "target": "formation_energy_per_atom"}
    if MP_FILE.is_file() and not DRY:
        data = {"source": "mp", "path": str(MP_FILE), "target": "formation_energy_per_atom",
                "subsample": n_structures + n_structures // 4}
    elif DRY:
        data["subsample"] = 40
    if original:
        data["graph"] = {"pad_neighbors": True}
    spec = spec_from_mapping({"name": "gpu-check", "data": data, "omit": ["Fe"], "model": {"train": {}}})
    prepared = prepare_data(spec)
    pool = [g for split in prepared.splits.values() for g in split]
    graphs = [pool[i % len(pool)] for i in range(n_structures)]
    if original:
        model, _ = load_cgcnn_original(ORIGINAL, DEVICE)
        name = "original CGCNN (formation energy)"
    else:
        model, _ = load_checkpoint(QUICKSTART_CKPT, "traits", device=DEVICE)
        name = "quickstart CGCNN"
    where = "shared MP file" if data["source"] == "mp" else f"bundled sample ({len(pool)} distinct)"
    return model.to(DEVICE).eval(), graphs, f"{name}, {len(graphs)} structures from the {where}"


def env():
    record(date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), dry_run=str(DRY).lower(), device=DEVICE.type,
           machine=f"{platform.machine()} {os.cpu_count()} CPUs, python {sys.version.split()[0]}",
           torch=torch.__version__, cuda_available=str(torch.cuda.is_available()).lower())
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        record(gpu=f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}")
    elif not DRY:
        record(error="no CUDA device: run with --dry-run on a CPU machine")
        sys.exit(2)


def surface():
    from torch_geometric.loader import DataLoader

    from traits.audit import collate
    from traits.probes.directions import random_direction
    from traits.probes.objective import SplitObjective
    from traits.probes.surface import surface_2d

    points, n = (3, 8) if DRY else (51, 2048)
    model, graphs, name = setup(n)
    batches = collate(graphs, DEVICE, torch.float32)
    obj = SplitObjective(model, batches, loss="mse")
    gen = torch.Generator().manual_seed(0)
    skip = model.normalization_parameter_names()
    d1 = random_direction(obj.params, gen, skip=skip)
    d2 = random_direction(obj.params, gen, skip=skip)
    axis = torch.linspace(-1, 1, points, dtype=torch.float64)
    surface_2d(obj, d1, d2, axis[:2], axis[:2])  # warm-up (allocator, kernels)
    grid, t_engine = timed(lambda: surface_2d(obj, d1, d2, axis, axis).cpu().numpy())
    sub = sorted({0, points // 2, points - 1})
    base = {k: v.clone() for k, v in model.state_dict().items()}

    def classic(i, j):
        state = dict(base)
        for k in d1:
            state[k] = base[k] + float(axis[i]) * d1[k] + float(axis[j]) * d2[k]
        model.load_state_dict(state)
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in DataLoader(graphs, batch_size=256, shuffle=False):
                batch = batch.to(DEVICE)
                total += float(((model(batch) - batch.y.view(-1)) ** 2).sum())
                count += batch.num_graphs
        return total / count

    classic(0, 0)  # warm-up
    values, t_sub = timed(lambda: {(i, j): classic(i, j) for i in sub for j in sub})
    model.load_state_dict(base)
    per_point = t_sub / len(values)
    diff = max(abs(v - grid[i, j]) / abs(v) for (i, j), v in values.items())
    record(surface_model=name, surface_grid=f"{points}x{points}", surface_vmap=str(obj.vmap_ok).lower(),
           surface_engine_s=f"{t_engine:.2f}", surface_engine_ms_per_point=f"{1e3 * t_engine / points**2:.2f}",
           surface_classic_ms_per_point=f"{1e3 * per_point:.2f} (timed on {len(values)} points)",
           surface_classic_s_full_grid=f"{per_point * points**2:.1f} (scaled)",
           surface_speedup_vs_classic=f"{per_point * points**2 / t_engine:.2f}x",
           surface_max_rel_diff_vs_classic=f"{diff:.1e}")
    if not diff < 1e-3:
        record(surface_error="the engine's grid differs from the classic loop's by more than 1e-3")
        sys.exit(1)


def hvps():
    from traits.audit import collate
    from traits.probes.objective import SplitObjective

    k, n = (2, 8) if DRY else (16, 256)
    model, graphs, name = setup(n)
    obj = SplitObjective(model, collate(graphs, DEVICE, torch.float32), loss="mse")
    vectors = torch.randn(k, obj.dim, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    obj.hvp_many(vectors[:2], batched=True)  # warm-up (retained graphs, kernels)
    obj.hvp_many(vectors[:2], batched=False)
    batched, t_batched = timed(lambda: obj.hvp_many(vectors, batched=True))
    single, t_single = timed(lambda: obj.hvp_many(vectors, batched=False))
    diff = float((batched - single).norm() / single.norm())
    record(hvp_model=name, hvp_vectors=k, hvp_default_batched=str(DEVICE.type == "cuda").lower(),
           hvp_batched_s=f"{t_batched:.3f}", hvp_one_by_one_s=f"{t_single:.3f}",
           hvp_speedup_batched=f"{t_single / t_batched:.2f}x", hvp_rel_diff=f"{diff:.1e}")
    if not diff < 1e-4:
        record(hvp_error="batched and one-by-one products differ by more than 1e-4")
        sys.exit(1)


def quickstart():
    from traits.audit import run_audit
    from traits.spec import load_spec

    overrides = {"device": DEVICE.type, "report.formats": ["json", "html"]}
    if DRY:
        overrides.update({"data.subsample": 120, "probes.hessian.max_samples": 4, "probes.hessian.top_k": 2,
                          "probes.hessian.max_steps": 4, "probes.hessian.trace_hvps": 3,
                          "probes.hessian.density_runs": 1, "probes.hessian.density_steps": 4,
                          "probes.surface.points_1d": 5, "probes.surface.points_2d": 5,
                          "probes.surface.max_samples": 4})
    spec = load_spec(ROOT / "audits" / "quickstart.yaml", overrides=overrides)
    result, seconds = timed(lambda: run_audit(spec, DEST / "quickstart", overwrite=True))
    raw = json.loads((DEST / "quickstart" / "results.json").read_text())
    provenance = raw.get("provenance") or {}
    record(quickstart_s=f"{seconds:.1f}", quickstart_status=raw.get("status"),
           quickstart_device=provenance.get("device"), quickstart_stage_seconds=json.dumps(
               {k: round(v, 1) for k, v in (provenance.get("wall_seconds") or {}).items()}),
           quickstart_results=DEST / "quickstart" / "results.json")
    if provenance.get("device") != DEVICE.type:
        record(quickstart_error=f"the audit ran on {provenance.get('device')}, not {DEVICE.type}")
        sys.exit(1)


{"env": env, "surface": surface, "hvps": hvps, "quickstart": quickstart}[sys.argv[1]]()
PY

FAILED=()
stage() {  # stage NAME LIMIT COMMAND...
  local name="$1" limit="$2"
  shift 2
  local start
  start=$(date +%s)
  echo "== $name (limit ${limit}s)" | tee -a "$LOG"
  timeout --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  echo "${name}_seconds: $(( $(date +%s) - start ))" >> "$FIG"
  echo "${name}_exit: $rc" >> "$FIG"
  if [ "$rc" -ne 0 ]; then
    FAILED+=("$name (exit $rc$([ "$rc" -eq 124 ] && echo ', ran past its limit'))")
    tail -n 20 "$LOG" >&2
  fi
  return 0
}

echo "gpu check: dry run=$DRY, figures in $FIG" >&2
python -c "$STAGES" env >> "$LOG" 2>&1
rc=$?
[ "$rc" -eq 2 ] && { cat "$FIG" >&2; exit 2; }
[ "$rc" -ne 0 ] && FAILED+=("env (exit $rc)")
mapfile -t CUDA_TESTS < <(grep -l "cuda" tests/test_*.py)
stage tests "${LIMITS[0]}" python -m pytest -q -p no:cacheprovider -k cuda "${CUDA_TESTS[@]}"
stage surface "${LIMITS[1]}" python -c "$STAGES" surface
stage hvps "${LIMITS[2]}" python -c "$STAGES" hvps
stage quickstart "${LIMITS[3]}" python -c "$STAGES" quickstart

if [ "${#FAILED[@]}" -gt 0 ]; then
  printf 'failed: %s\n' "${FAILED[@]}" | tee -a "$FIG" >&2
  exit 1
fi
echo "passed: every step" | tee -a "$FIG" >&2
cat "$FIG"
