"""Re-probe a study's kept checkpoints: new probes on the same models, without retraining.

Study v2 keeps every audit's trained checkpoint (``seed-S/TASK/model/model.safetensors`` and its sidecar,
committed beside ``results.json``). :func:`reprobe` turns each kept checkpoint back into an audit spec — the
campaign's spec for that task, the profile's overrides, the seed, and ``model.checkpoint`` pointing at the kept
file — writes those specs into one campaign folder per seed (``OUT/specs/seed-S/``) and runs them as ordinary
campaigns into ``OUT/seed-S/TASK``: resumable task by task, on any executor, with the campaign's exit contract.
Same spec and seed give the same split, so the re-probed audit sees the same compounds as the audit that trained
the model; the audit itself checks the checkpoint's sidecar against the split.

:func:`ensemble_predictions` is the cross-seed part of study v2 (signal B4): the three seeds' models of one task
predict the same compounds — the first seed's ID test and OOD compounds that none of the seeds trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from traits.errors import TraitsError

#: Where a finished audit keeps the checkpoint that made it.
CHECKPOINT = Path("model") / "model.safetensors"


def kept_checkpoints(runs: Path) -> dict[int, dict[str, Path]]:
    """``{seed: {task: checkpoint}}`` of every ``RUNS/seed-S/TASK`` holding results.json and a kept checkpoint."""
    out: dict[int, dict[str, Path]] = {}
    for seed_dir in sorted(Path(runs).glob("seed-*")):
        try:
            seed = int(seed_dir.name.split("-", 1)[1])
        except ValueError:
            continue
        for task_dir in sorted(p for p in seed_dir.iterdir() if p.is_dir()):
            ckpt = task_dir / CHECKPOINT
            if (task_dir / "results.json").is_file() and ckpt.is_file() and ckpt.with_suffix(".json").is_file():
                out.setdefault(seed, {})[task_dir.name] = ckpt.resolve()
    return out


def reprobe_spec(campaign: Path, task: str, seed: int, checkpoint: Path, profile: str | None) -> dict[str, Any]:
    """The spec that re-probes one kept checkpoint: the campaign's spec of ``task`` with the profile, the seed and
    ``model.checkpoint`` applied, every path absolute (it is written into another folder)."""
    from traits.spec import load_spec

    spec = load_spec(_spec_path(Path(campaign), task), overrides=_overrides(campaign, profile, seed, checkpoint))
    out = spec.model_dump(mode="json", exclude_defaults=True)
    out["name"] = spec.name
    out.setdefault("report", {}).pop("out_dir", None)  # the campaign decides where each task goes
    return out


def _overrides(campaign: Path, profile: str | None, seed: int, checkpoint: Path) -> dict[str, Any]:
    """The profile's overrides, the seed, and the kept checkpoint as the model (in TRAITS' own format)."""
    from traits.campaign import profile_overrides

    return {**profile_overrides(Path(campaign), profile), "seed": seed, "model.checkpoint": str(checkpoint),
            "model.format": "traits"}


def _spec_path(campaign: Path, task: str) -> Path:
    for suffix in (".yaml", ".yml", ".json"):
        if (campaign / f"{task}{suffix}").is_file():
            return campaign / f"{task}{suffix}"
    raise TraitsError(f"{campaign}: no spec for task {task!r} (a kept checkpoint names a task the campaign lacks)")


def write_reprobe_specs(runs: Path, campaign: Path, out: Path, *, profile: str | None,
                        seeds: Sequence[int] | None = None, only: Callable[[str], bool] | None = None
                        ) -> dict[int, Path]:
    """One campaign folder of re-probe specs per seed (``OUT/specs/seed-S``); returns ``{seed: folder}``."""
    from traits.files import ensure_dir, write_text_atomic

    kept = kept_checkpoints(runs)
    if not kept:
        raise TraitsError(f"{runs}: no finished audit with a kept checkpoint (seed-S/TASK/{CHECKPOINT})")
    folders: dict[int, Path] = {}
    for seed, tasks in sorted(kept.items()):
        if seeds is not None and seed not in seeds:
            continue
        folder = ensure_dir(Path(out) / "specs" / f"seed-{seed}")
        for task, ckpt in tasks.items():
            if only is not None and not only(task):
                continue
            spec = reprobe_spec(campaign, task, seed, ckpt, profile)
            write_text_atomic(folder / f"{task}.yaml", f"# Re-probes {ckpt} (traits study reprobe).\n"
                              + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
        folders[seed] = folder
    return folders


def reprobe(runs: Path, campaign: Path, out: Path, *, profile: str | None, seeds: Sequence[int] | None = None,
            only: list[str] | None = None, log: Callable[[str], None] = lambda _m: None, **campaign_kw) -> dict:
    """Write the re-probe specs and run them, seed by seed, as campaigns into ``OUT/seed-S/TASK``.

    Args:
        runs: the study's finished audits (``seed-S/TASK/results.json`` + ``model/``).
        campaign: the study's campaign folder (its specs and campaign.yaml).
        out: where the specs and the re-probed audits go.
        profile: the campaign.yaml profile applied to every spec (e.g. ``v2``).
        seeds: only these seeds (default: every seed with a kept checkpoint).
        only: shell patterns of task names to keep.
        log: receives a line per event.
        **campaign_kw: passed to :func:`traits.campaign.run_campaign` (executor, workers, threads, ...).

    Returns:
        ``{"seeds": {seed: campaign summary}}``."""
    from fnmatch import fnmatch

    from traits.campaign import run_campaign

    keep = (lambda t: any(fnmatch(t, p) for p in only)) if only else None
    folders = write_reprobe_specs(runs, campaign, out, profile=profile, seeds=seeds, only=keep)
    summaries = {}
    for seed, folder in folders.items():
        log(f"seed {seed}: re-probing {len(list(folder.glob('*.yaml')))} kept checkpoints")
        # each seed's campaign writes OUT/seed-S/TASK; the summary in OUT is the last seed's
        summaries[seed] = run_campaign(folder, Path(out), seeds=[seed], log=log, **campaign_kw)
    return {"seeds": summaries}


def ensemble_predictions(campaign: Path, task: str, checkpoints: dict[int, Path], *, profile: str | None,
                         device: str = "cpu") -> tuple[dict[int, dict[str, float]], list[str], list[str]]:
    """Every seed's model of one task predicting the same compounds (study v2's B4).

    The compounds are the first seed's ID test and OOD compounds that none of the seeds' training splits hold
    (each seed draws its own subsample, so another seed's model may have trained on the first seed's test
    compounds; those are left out). Each seed's splits are read from the audit that trained its model
    (``results.json`` beside ``model/``: ``accuracy.<split>.ids``), so only the chosen compounds' graphs are
    built. Returns ``(predictions {seed: {id: value}}, id_ids, ood_ids)`` for
    :func:`traits.study.v2.ensemble_disagreement`."""
    import torch

    from traits.audit import load_or_train
    from traits.models.inference import predict
    from traits.spec import load_spec

    path = _spec_path(Path(campaign), task)
    for c in checkpoints.values():
        if not Path(c).is_file():  # never train in place of a missing checkpoint
            raise TraitsError(f"{c}: no such checkpoint")
    specs = {s: load_spec(path, overrides=_overrides(campaign, profile, s, c)) for s, c in sorted(checkpoints.items())}
    splits = {s: _audit_splits(Path(c)) for s, c in checkpoints.items()}
    trained = {i for sp in splits.values() for i in sp["train"]}
    first = min(specs)
    chosen = {split: [i for i in dict.fromkeys(splits[first][split]) if i not in trained] for split in ("id", "ood")}
    graphs = _graphs_of(specs[first], chosen["id"] + chosen["ood"])
    preds: dict[int, dict[str, float]] = {}
    dev = torch.device(device)
    for s, spec in specs.items():
        loaded = load_or_train(spec, None, Path("."), dev)  # the checkpoint exists: nothing is trained
        ids, values, _ = predict(loaded.model.to(dev).eval(), graphs, dev)
        preds[s] = {str(i): float(v) for i, v in zip(ids, values)}
    return preds, chosen["id"], chosen["ood"]


def _audit_splits(checkpoint: Path) -> dict[str, list[str]]:
    """The train, ID and OOD compound ids of the audit that trained ``checkpoint`` (``TASK/model/x.safetensors``
    → ``TASK/results.json``)."""
    import json

    results = checkpoint.parent.parent / "results.json"
    try:
        acc = json.loads(results.read_text(encoding="utf-8")).get("accuracy") or {}
    except (OSError, ValueError) as exc:
        raise TraitsError(f"{results}: cannot read the audit that trained {checkpoint.name} ({exc})") from None
    out = {split: [str(i) for i in ((acc.get(split) or {}).get("ids") or [])] for split in ("train", "id", "ood")}
    missing = [split for split, ids in out.items() if not ids]
    if missing:
        raise TraitsError(f"{results}: no compound ids for the {', '.join(missing)} split(s) in 'accuracy' (an audit "
                          "with labels records them)")
    return out


def _graphs_of(spec, ids: list[str]) -> list:
    """The graphs of the compounds ``ids`` of the spec's data source, in that order (a TraitsError naming any that
    the source lacks or whose graph cannot be built)."""
    from traits.data.graphs import build_graphs
    from traits.data.sources import read_source

    by_id = {str(e.id): e for e in read_source(spec.data).entries}
    gone = [i for i in ids if i not in by_id]
    if gone:
        raise TraitsError(f"{spec.data.path or spec.data.source}: {len(gone)} compound(s) of the audits are not in "
                          f"the data (first: {gone[0]})")
    built = {str(g.material_id): g for g in build_graphs([by_id[i] for i in ids], spec.data.graph).graphs}
    lost = [i for i in ids if i not in built]
    if lost:
        raise TraitsError(f"{len(lost)} compound(s) of the audits have no graph now (first: {lost[0]})")
    return [built[i] for i in ids]
