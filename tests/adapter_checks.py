"""Shared checks for the model-adapter tests: agreement with the package's own predictions, and the Hessian-vector
product of the adapter's objective against central finite differences of its gradient."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from traits.data.sources import read_mp, sample_path


def sample_entries(n: int = 12):
    """The first ``n`` Materials Project entries of the bundled sample."""
    return read_mp(sample_path(), "formation_energy_per_atom", kind="sample").entries[:n]


def small_entries(n: int = 3, max_atoms: int = 6):
    """``n`` sample entries with at most ``max_atoms`` atoms (fast second derivatives)."""
    out = []
    for e in read_mp(sample_path(), "formation_energy_per_atom", kind="sample").entries:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if len(e.structure()) <= max_atoms:
                out.append(e)
        if len(out) == n:
            break
    return out


def load_adapter(name: str, device=torch.device("cpu")):
    """(adapter, model): the registered adapter ``name`` and its default model, loaded with default options."""
    from traits.models.base import get_adapter

    adapter = get_adapter(name)
    return adapter, adapter.load(None, adapter.Options(), device)


def sample_predictions(adapter, model, n: int = 10, device=torch.device("cpu")):
    """(entries, ids, predictions) of the adapter on the first ``n`` sample entries; every entry must featurise."""
    entries = sample_entries(n)
    items, skipped = adapter.featurise_entries(entries, adapter.Options())
    assert len(items) == n and not skipped
    ids, preds, _ = adapter.predict(model, items, device)
    return entries, ids, preds


def relative_error(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def hvp_vs_finite_differences(adapter, model, entries, label_free: bool = True, eps: float = 1e-4,
                              seed: int = 0, options=None) -> tuple[float, float]:
    """(relative error of H v against (g(θ+εv) − g(θ−εv)) / 2ε, |Hv|) in float64 on ``entries``."""
    from traits.models.base import set_probe_parameters
    from traits.probes.objective import SplitObjective

    dev = torch.device("cpu")
    model = model.to(torch.float64)
    set_probe_parameters(model, adapter.probe_parameters(model))
    items, _ = adapter.featurise_entries(entries, options if options is not None else adapter.Options())
    batches = adapter.batches(items, dev, torch.float64)
    if label_free:
        with torch.no_grad():
            for b in batches:
                b.y = model(b).detach().reshape(-1) + 0.01  # a residual, so the full Hessian is exercised
    obj = SplitObjective(model, batches, loss="mse", hvp_method="recompute")
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(obj.dim, generator=g, dtype=torch.float64)
    v = v / v.norm()
    hv = obj.hvp(v)
    theta = obj.flatten(obj.params)

    def grad_at(x):
        sub = SplitObjective(model, batches, loss="mse", hvp_method="recompute")
        sub.params = {k: t.clone() for k, t in sub.unflatten(x.clone()).items()}
        return sub.gradient()

    fd = (grad_at(theta + eps * v) - grad_at(theta - eps * v)) / (2 * eps)
    return float((hv - fd).norm() / fd.norm()), float(hv.norm())


def audit_from_spec_file(tmp_path, architecture: str, checkpoint, target: str, omit: list[str], subsample: int,
                         max_samples: int):
    """The result of an audit run end to end from a YAML spec file naming ``checkpoint`` (small probe budgets, JSON
    only), so that the spec loader's path checks are part of the test."""
    import yaml

    from traits import run_audit
    from traits.spec import load_spec

    spec_path = tmp_path / f"{architecture}.yaml"
    spec_path.write_text(yaml.safe_dump({
        "name": f"{architecture}-e2e", "seed": 0, "device": "cpu",
        "data": {"source": "sample", "target": target, "subsample": subsample}, "omit": omit,
        "model": {"architecture": architecture, "checkpoint": str(checkpoint)},
        "probes": {"splits": ["id", "ood"], "hessian": {"top_k": 1, "max_steps": 6, "trace_hvps": 4,
                   "density_runs": 1, "density_steps": 4, "max_samples": max_samples},
                   "surface": {"points_1d": 5, "points_2d": 5, "directions_1d": 1, "max_samples": max_samples},
                   "shift": {"enabled": False}},
        "report": {"formats": ["json"]}}))
    return run_audit(load_spec(spec_path), tmp_path / "out", render=False)
