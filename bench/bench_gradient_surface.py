"""Cost of a gradient-norm surface point against a loss-surface point, on the quickstart CGCNN.

    python bench/bench_gradient_surface.py [--graphs 256] [--points 5] [--device cpu|cuda]

Times ``surface_1d`` (one forward pass without autograd per point) and ``gradient_line`` (one forward pass with
autograd and one backward pass per batch per point) on the same direction and alphas, and the random-perturbation
probe (2K + 1 loss evaluations); prints seconds per point and the ratio, which is what an audit's extra cost scales
with (points x ratio x the loss-point time). Data: the bundled Materials Project sample, training split, Fe omitted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from bench_probes import collate, load_setup

    from traits.probes.directions import random_direction
    from traits.probes.gradient_surface import gradient_line
    from traits.probes.objective import SplitObjective
    from traits.probes.perturbation import random_perturbations
    from traits.probes.surface import surface_1d

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", type=int, default=256)
    parser.add_argument("--points", type=int, default=5)
    parser.add_argument("--directions", type=int, default=8, help="perturbation directions K")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    model, graphs, name = load_setup(device, args.graphs, quickstart=True)
    obj = SplitObjective(model, collate(graphs, device))
    d = random_direction(obj.params, torch.Generator().manual_seed(0))
    alphas = torch.linspace(-0.5, 0.5, args.points, dtype=torch.float64)
    obj.loss(), gradient_line(obj, d, alphas[:1])  # warm-up: fast-forward and fast-gradient checks
    t = time.perf_counter()
    surface_1d(obj, d, alphas)
    loss_s = (time.perf_counter() - t) / args.points
    t = time.perf_counter()
    gradient_line(obj, d, alphas)
    grad_s = (time.perf_counter() - t) / args.points
    t = time.perf_counter()
    random_perturbations(obj, 0.1, args.directions, torch.Generator().manual_seed(1))
    pert_s = time.perf_counter() - t
    print(f"{name}, {len(graphs)} structures, {obj.dim} parameters, device {device}, {torch.get_num_threads()} threads")
    print(f"loss point {loss_s:.3f} s, gradient point {grad_s:.3f} s: ratio {grad_s / loss_s:.2f}")
    print(f"perturbations, K = {args.directions}: {pert_s:.2f} s ({2 * args.directions + 1} loss evaluations)")


if __name__ == "__main__":
    main()
