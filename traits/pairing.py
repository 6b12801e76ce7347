"""Paired changes between two audits of the same compounds (``traits compare``).

Two audits that share their compounds (two checkpoints on one split, or one checkpoint re-audited) are
compared compound by compound, not as two independent samples: the compounds' own spread, common to both,
cancels in the change, so a real change clears its noise with a far narrower interval.

What is paired, and when (:func:`pairing`):

* **accuracy** of a split (MAE, RMSE and their OOD/ID ratios): when both audits hold the same compound ids in
  the same order; the change is bootstrapped with *one* draw of compounds for A and B (paired resamples).
* **Hessian** numbers of a split (λ_max, the trace and their ratios): when both Hessians were computed on the
  same structures (``HessianResult.sample_ids``) in the same jackknife groups (``groups``). The change's
  standard error is the jackknife over groups of the *differences* d_{−g} = t^B_{−g} − t^A_{−g}
  (:func:`traits.probes.sampling.jackknife_stderr`). A trace's Monte-Carlo part is paired too when both used
  the same probes (the same probe seed and parameter count: common random numbers): sd(u^B − u^A)/√n. An OOD/ID
  ratio R = q_OOD / q_ID is paired split by split, holding the other split at its value:
  d^OOD_{−g} = q^B_{OOD,−g}/q^B_ID − q^A_{OOD,−g}/q^A_ID, likewise for ID; the two are independent and add
  in quadrature. The interval is Δ ± t_{df}·se with df the smallest number of groups − 1.
* **embedding distance** ratio: when both audits measured distances on the same split (manifest), with the
  same probe seed and the same number of compounds, the per-compound distances are paired by position.

Solver bounds (a Lanczos residual) are added to a Hessian change's half-width unless A and B are the *same
inputs* (:func:`same_inputs`: the same checkpoint, split, probe seed and probe settings, and the same CPU kernels
where both results record them), where every number is computed identically and every change is exactly zero with
a zero-width interval. Other kernels (:mod:`traits.kernels`) round differently and, in crystals whose neighbours
tie in distance, may build other graphs, so two runs on them are paired, not identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from traits import catalogue as _catalogue
from traits.results import AuditResult

#: Bootstrap resamples of a paired change.
DRAWS = 2000
SEED = 20240611


@dataclass(frozen=True)
class Change:
    """B − A with its interval and how the interval was made (``kind``)."""

    delta: float
    low: float | None
    high: float | None
    kind: str  # "paired bootstrap over compounds" | "paired jackknife over structures" | "identical inputs"


def _probe_settings(r: AuditResult) -> dict:
    probes = dict((r.spec or {}).get("probes") or {})
    return probes


def kernel_key(r: AuditResult) -> tuple | None:
    """What of ``provenance.kernels`` decides the numbers (each BLAS library's kind, version and kernel
    architecture, NumPy's SIMD targets, PyTorch's CPU capability); None for a result that does not record them."""
    k = r.provenance.kernels
    if not k:
        return None
    blas = tuple((b.get("internal_api"), b.get("version"), b.get("architecture")) for b in k.get("blas") or [])
    return blas, tuple(k.get("numpy_simd") or ()), k.get("torch_cpu")


def different_kernels(a: AuditResult, b: AuditResult) -> bool:
    """Both results record their CPU kernels and these differ (a result that does not record them is taken to
    agree)."""
    ka, kb = kernel_key(a), kernel_key(b)
    return ka is not None and kb is not None and ka != kb


def same_inputs(a: AuditResult, b: AuditResult) -> bool:
    """The same checkpoint (SHA-256), data split (manifest), probe seed and probe settings, on the same CPU kernels
    (:func:`different_kernels`): every probe ran on identical inputs, so every number is the same computation."""
    pa, pb = a.provenance, b.provenance
    return bool(not different_kernels(a, b) and pa.checkpoint_sha256 and pa.checkpoint_sha256 == pb.checkpoint_sha256
                and pa.manifest_hash and pa.manifest_hash == pb.manifest_hash
                and (pa.probe_seed if pa.probe_seed is not None else pa.seed)
                == (pb.probe_seed if pb.probe_seed is not None else pb.seed)
                and _probe_settings(a) == _probe_settings(b) and a.loss == b.loss and a.mode == b.mode)


def pairing(a: AuditResult, b: AuditResult) -> dict[str, bool]:
    """Which parts of A and B can be paired (module docstring): ``accuracy_id``, ``accuracy_ood``,
    ``hessian_id``, ``hessian_ood``, ``probes`` (the same trace probes) and ``shift``."""
    out = {}
    for s in ("id", "ood"):
        x, y = a.accuracy.get(s), b.accuracy.get(s)
        out[f"accuracy_{s}"] = bool(x is not None and y is not None and x.ids and x.ids == y.ids)
        hx, hy = a.hessian.get(s), b.hessian.get(s)
        out[f"hessian_{s}"] = bool(hx is not None and hy is not None and hx.sample_ids
                                  and hx.sample_ids == hy.sample_ids and hx.groups and hx.groups == hy.groups)
    pa, pb = a.provenance, b.provenance
    seed_a = pa.probe_seed if pa.probe_seed is not None else pa.seed
    seed_b = pb.probe_seed if pb.probe_seed is not None else pb.seed
    out["probes"] = seed_a == seed_b
    out["shift"] = bool(a.shift is not None and b.shift is not None and pa.manifest_hash
                        and pa.manifest_hash == pb.manifest_hash and seed_a == seed_b)
    return out


# ------------------------------------------------------------------------------------------ accuracy
def _errors(r: AuditResult, split: str) -> np.ndarray | None:
    acc = r.accuracy.get(split)
    if acc is None or not acc.targets or len(acc.targets) != len(acc.predictions):
        return None
    e = np.array([abs(p - t) if p is not None else np.nan for p, t in zip(acc.predictions, acc.targets)])
    return e


def _stat(e: np.ndarray, what: str) -> np.ndarray:
    """MAE or RMSE of each row of resampled errors (NaN errors ignored)."""
    if what == "mae":
        return np.nanmean(e, axis=-1)
    return np.sqrt(np.nanmean(e * e, axis=-1))


def percentile_interval(draws: np.ndarray) -> tuple[float | None, float | None]:
    """The 2.5-97.5 % percentile interval of the finite draws; (None, None) from fewer than 10."""
    draws = draws[np.isfinite(draws)]
    if draws.size < 10:
        return None, None
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return float(lo), float(hi)


def _ratio_of(key: str, where: str) -> str:
    """The per-split quantity a catalogue ratio divides when it is read from ``where`` ("accuracy" or
    "metrics"): 'mae' for mae_ratio; '' for any other key."""
    m = next((m for m in _catalogue.catalogue() if m.name == key), None)
    return m.split_key if m is not None and (m.source or "").startswith(where + ".") and m.unit == "ratio" else ""


def accuracy_change(a: AuditResult, b: AuditResult, key: str) -> Change | None:
    """Paired bootstrap of the change of ``id_mae``, ``ood_rmse``, ``mae_ratio``, ``rmse_ratio``, ... when
    the compounds are the same; None otherwise."""
    pair = pairing(a, b)
    if _ratio_of(key, "accuracy") in ("mae", "rmse"):
        what, splits = _ratio_of(key, "accuracy"), ("ood", "id")
    elif key.split("_", 1)[0] in ("id", "ood") and key.split("_", 1)[1] in ("mae", "rmse"):
        split, what = key.split("_", 1)
        splits = (split,)
    else:
        return None
    if not all(pair[f"accuracy_{s}"] for s in splits):
        return None
    rng = np.random.default_rng(SEED)
    values = {}
    for s in splits:
        ea, eb = _errors(a, s), _errors(b, s)
        if ea is None or eb is None or ea.size < 2:
            return None
        index = rng.integers(0, ea.size, size=(DRAWS, ea.size))  # one draw of compounds for A and B
        values[s] = (_stat(ea, what), _stat(eb, what), _stat(ea[index], what), _stat(eb[index], what))
    with np.errstate(divide="ignore", invalid="ignore"):
        if len(splits) == 2:
            (oa, ob, oda, odb), (ia, ib, ida, idb) = values["ood"], values["id"]
            delta = float(ob / ib - oa / ia)
            draws = odb / idb - oda / ida
        else:
            xa, xb, da, db = values[splits[0]]
            delta = float(xb - xa)
            draws = db - da
    if not math.isfinite(delta):
        return None
    if same_inputs(a, b) or np.all(draws == 0):
        kind = "identical inputs" if same_inputs(a, b) else "paired bootstrap over compounds"
        return Change(delta, delta, delta, kind)
    lo, hi = percentile_interval(draws)
    return Change(delta, lo, hi, "paired bootstrap over compounds")


# ------------------------------------------------------------------------------------------ Hessian
def _jackknife(h, what: str) -> tuple[float | None, list[float], float, list[float], float]:
    """(value, leave-out values, solver half-width, Monte-Carlo samples, Monte-Carlo stderr) of λ_max or the
    Gauss-Newton trace of one split."""
    if what == "lambda_max":
        jk = h.lambda_max_jackknife
        if jk is None or not h.top_eigenvalues or not h.lambda_max_certified:
            return None, [], 0.0, [], 0.0
        rho = h.top.abs_residuals[0] if h.top is not None and h.top.abs_residuals else 0.0
        return h.top_eigenvalues[0], [v for v in jk.leave_out], float(rho or 0.0), [], 0.0
    t = next((t for t in h.traces if t.method == "gauss-newton+hutchinson"), None)
    if t is None or not t.leave_out:
        return None, [], 0.0, [], 0.0
    return t.estimate, list(t.leave_out), 0.0, list(t.residual_samples), float(t.stderr or 0.0)


def _mc_paired(sa: list[float], sb: list[float], sea: float, seb: float, same_probes: bool) -> float:
    if same_probes and sa and len(sa) == len(sb):
        d = np.asarray(sb, dtype=float) - np.asarray(sa, dtype=float)
        return float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else 0.0
    return math.hypot(sea, seb)


def hessian_change(a: AuditResult, b: AuditResult, key: str) -> Change | None:
    """Paired jackknife of the change of ``id_lambda_max``, ``ood_trace``, ``lambda_ratio`` or ``trace_ratio``
    (module docstring); None when the Hessians are not paired or lack their jackknife."""
    from traits.intervals import t_quantile
    from traits.probes.sampling import jackknife_stderr

    pair = pairing(a, b)
    identical = same_inputs(a, b)
    if _ratio_of(key, "metrics") in ("lambda_max", "trace"):  # the ratios of the quantities jackknifed above
        what = _ratio_of(key, "metrics")
        splits = ("ood", "id")
    else:
        split, _, what = key.partition("_")
        if split not in ("id", "ood") or what not in ("lambda_max", "trace"):
            return None
        splits = (split,)
    if not all(pair[f"hessian_{s}"] for s in splits):
        return None
    parts = {s: (_jackknife(a.hessian[s], what), _jackknife(b.hessian[s], what)) for s in splits}
    if any(x[0] is None or y[0] is None or len(x[1]) != len(y[1]) or len(x[1]) < 2 for x, y in parts.values()):
        return None
    df = min(len(x[1]) for x, _ in parts.values()) - 1
    if len(splits) == 1:
        (va, la, ra, sa, ea), (vb, lb, rb, sb, eb) = parts[splits[0]]
        delta = vb - va
        se_j = jackknife_stderr(np.subtract(lb, la))
        se_mc = _mc_paired(sa, sb, ea, eb, pair["probes"]) if what == "trace" else 0.0
        se, bound = math.hypot(se_j, se_mc), (0.0 if identical else ra + rb)
    else:
        (oa, loa, roa, soa, eoa), (ob, lob, rob, sob, eob) = parts["ood"]
        (ia, lia, ria, sia, eia), (ib, lib, rib, sib, eib) = parts["id"]
        if not (ia > 0 and ib > 0):
            return None
        delta = ob / ib - oa / ia
        d_ood = np.asarray(lob) / ib - np.asarray(loa) / ia
        d_id = ob / np.asarray(lib) - oa / np.asarray(lia)
        se = math.hypot(jackknife_stderr(d_ood), jackknife_stderr(d_id))
        if what == "trace":  # Monte-Carlo parts, through the first-order sensitivities of the ratio
            se = math.hypot(se, _mc_paired(soa, sob, eoa, eob, pair["probes"]) / ib,
                            (ob / ib) * _mc_paired(sia, sib, eia, eib, pair["probes"]) / ib)
        bound = 0.0 if identical else (roa + rob) / min(ia, ib) + max(oa, ob) * (ria + rib) / min(ia, ib) ** 2
    if not (math.isfinite(delta) and math.isfinite(se)):
        return None
    if identical:
        return Change(delta, delta - t_quantile(df) * se, delta + t_quantile(df) * se, "identical inputs")
    half = t_quantile(df) * se + bound
    return Change(delta, delta - half, delta + half, "paired jackknife over structures")


# ------------------------------------------------------------------------------------------ distances
def shift_change(a: AuditResult, b: AuditResult, key: str) -> Change | None:
    """Paired bootstrap of the change of ``embedding_knn_ratio`` (medians of per-compound distances)."""
    if key != "embedding_knn_ratio" or not pairing(a, b)["shift"]:
        return None
    space = "embedding"
    arrays = {}
    for label, r in (("a", a), ("b", b)):
        for s in ("id", "ood"):
            sample = r.shift.samples.get(s)
            if sample is None or space not in sample.distances:
                return None
            arrays[label, s] = np.asarray(sample.distances[space], dtype=float)
    if any(arrays["a", s].size != arrays["b", s].size or arrays["a", s].size < 2 for s in ("id", "ood")):
        return None
    for s in ("id", "ood"):  # samples that store their compounds' ids are paired by id, never by position alone
        order = _same_compounds(a.shift.samples[s].ids.get(space), b.shift.samples[s].ids.get(space))
        if order is False:
            return None
        if order is not None:
            arrays["b", s] = arrays["b", s][order]
    va, vb = a.ratios.get(key), b.ratios.get(key)
    if va is None or vb is None:
        return None
    delta = vb - va
    if same_inputs(a, b):
        return Change(delta, delta, delta, "identical inputs")
    rng = np.random.default_rng(SEED + 1)
    draws = []
    for _ in range(DRAWS):
        idx = {s: rng.integers(0, arrays["a", s].size, size=arrays["a", s].size) for s in ("id", "ood")}
        ra = np.median(arrays["a", "ood"][idx["ood"]]) / np.median(arrays["a", "id"][idx["id"]])
        rb = np.median(arrays["b", "ood"][idx["ood"]]) / np.median(arrays["b", "id"][idx["id"]])
        draws.append(rb - ra)
    lo, hi = percentile_interval(np.asarray(draws))
    return Change(delta, lo, hi, "paired bootstrap over compounds")


def _same_compounds(ids_a, ids_b) -> list[int] | None | bool:
    """How to put B's sample in A's compound order: the positions in B of A's ids; None when either sample stores
    no ids (results before schema 1.8: their samples, drawn alike from the same compounds, pair by position);
    False when the ids are not the same compounds, once each (then the samples cannot be paired)."""
    if not ids_a or not ids_b:
        return None
    if len(ids_a) != len(ids_b) or len(set(ids_a)) != len(ids_a) or set(ids_a) != set(ids_b):
        return False
    at = {cid: i for i, cid in enumerate(ids_b)}
    return [at[cid] for cid in ids_a]


def paired_change(a: AuditResult, b: AuditResult, key: str) -> Change | None:
    """The paired change of one comparison metric, or None where A and B cannot be paired for it. Any metric
    whose value is the same in A and B while both audits ran on identical inputs changes by exactly 0."""
    for fn in (accuracy_change, hessian_change, shift_change):
        found = fn(a, b, key)
        if found is not None:
            return found
    return None


def unpaired_parts(a: AuditResult, b: AuditResult) -> list[str]:
    """The parts both audits measured but that cannot be paired (for a note in the comparison)."""
    pair = pairing(a, b)
    out = []
    for s, who in (("id", "ID test"), ("ood", "OOD")):
        if a.accuracy.get(s) is not None and b.accuracy.get(s) is not None and not pair[f"accuracy_{s}"]:
            out.append(f"{who} compounds")
        if a.hessian.get(s) is not None and b.hessian.get(s) is not None and not pair[f"hessian_{s}"]:
            out.append(f"{who} Hessian structures")
    return out
