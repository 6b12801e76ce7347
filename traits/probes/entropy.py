"""Loss entropy: the landscape statistic of Vita & Schwalbe-Koda (2023).

Source
------
J. A. Vita and D. Schwalbe-Koda, "Data efficiency and extrapolation trends in neural network
interatomic potentials", Mach. Learn.: Sci. Technol. 4, 035031 (2023), arXiv 2302.05823. The paper
treats the sampled loss landscape like an energy landscape and reports a "loss entropy" computed on the
training set that tracks out-of-distribution error and MD stability of NequIP and MACE models. The paper
text with the equation was not among the stored material; the definition below is the one in the
authors' released analysis notebooks (github.com/jvita/data_efficiency_in_IAPS,
``02_LossLandscapes_NequIP.ipynb``, function ``get_entropy``), which is what their figures were made with:

    S = k ln Q,    Q = sum_i exp(-L_i / (k T))                               (definition="paper")

over the losses L_i sampled on the landscape, with k = 1. There the L_i are the training-set RMSE of
energies and of forces at 81 points alpha in [-0.25, 0.25] of a filter-normalised line through theta
(one array of 81 values per model), T_E = 4e-3 for the energy loss and T_F = 4e-2 for the force loss, and
the two entropies are combined as S = 0.2 S_E + 0.8 S_F. The losses are *not* shifted (a shift by the
minimum is present but commented out in their code). Q is the partition function of a Boltzmann
distribution p_i = exp(-L_i / kT) / Q over the sampled perturbed weights; a wide, flat basin keeps many
terms near exp(-L0/kT) and gives a large S, a sharp one leaves only the terms near theta.

What this module implements, and where it differs
-------------------------------------------------
* ``definition="paper"`` (default) is the formula above, computed with a log-sum-exp so that it does
  not underflow: their ``np.log(np.sum(np.exp(-beta * y)))`` returns -inf once every L_i / T exceeds
  about 745, where ours stays finite. Otherwise identical.
* ``relative=True`` replaces L_i by L_i - L(theta): S_rel = S + L(theta) / T. The paper's S mixes the
  level of the loss (-L0 / T) with the shape of the landscape; on a test split whose loss at theta is
  high (OOD) the level dominates, so to compare the *shape* across splits use the relative form. For a
  landscape constant at L0, S_rel = k ln N.
* ``definition="gibbs"``: the Gibbs/Shannon entropy of the same distribution, H = -k sum_i p_i ln p_i =
  k ln Q + <L> / T (with <L> = sum_i p_i L_i). It is shift-invariant (``relative`` does not change it),
  lies in [0, k ln N], is k ln N for a constant landscape and -> 0 when one point dominates. It is
  offered as the textbook entropy of that distribution; it is *not* the quantity the paper reported
  (theirs is the log partition function, i.e. -F / T in thermodynamic terms).
* One loss per model: the paper's energy/force weighting does not apply to the single-target property
  losses of this project. A caller with several loss terms combines the entropies itself.
* Sampling: any array of sampled losses (one curve, several curves, a 2-D grid) is flattened and every
  point is one term of the sum. Q grows with the number of points (S contains k ln N), so entropies are
  comparable only on the same grid (same alphas, same number of directions and points); curves pooled
  through theta repeat the point theta once per curve. ``max_entropy`` = k ln N is reported for scale.
* Temperature: absolute, in the units of the loss (the paper's T_E, T_F were in eV/atom and eV/A RMSE,
  their loss units). It has no default: pick one per audit and keep it fixed across the splits and
  models being compared.

Non-finite losses (NaN, +-inf) mean the model diverged at that point: they get Boltzmann weight 0
(infinitely high loss), but still count in N (``n_points``) and are reported in ``n_nonfinite``. If
every point is non-finite, Q = 0: the paper entropy is -inf (None in ``to_dict``) and the Gibbs entropy
is NaN (None).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.special import logsumexp

from traits.errors import ProbeError
from traits.results import json_float

ArrayLike = torch.Tensor | np.ndarray | Sequence[float] | Sequence[Sequence[float]]
Definition = Literal["paper", "gibbs"]

SOURCE = (
    "Vita & Schwalbe-Koda, Mach. Learn.: Sci. Technol. 4, 035031 (2023); S = k ln sum_i exp(-L_i/(kT)) "
    "as in the authors' notebook get_entropy (github.com/jvita/data_efficiency_in_IAPS)"
)


def _flat(losses: ArrayLike) -> np.ndarray:
    if isinstance(losses, torch.Tensor):
        losses = losses.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(losses, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ProbeError("the loss entropy needs at least one sampled loss")
    return arr


def _check(temperature: float, k: float) -> None:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ProbeError(f"temperature must be a positive finite number, got {temperature!r}")
    if not (math.isfinite(k) and k > 0):
        raise ProbeError(f"k must be a positive finite number, got {k!r}")


def _log_q(values: np.ndarray, kt: float) -> float:
    """ln sum exp(-L / kT) over the finite values (-inf if there are none)."""
    if values.size == 0:
        return -math.inf
    return float(logsumexp(-values / kt))


def loss_entropy(
    losses: ArrayLike,
    loss0: float | None,
    temperature: float,
    *,
    k: float = 1.0,
    definition: Definition = "paper",
    relative: bool = False,
) -> float:
    """The loss entropy of sampled losses (any shape; flattened), see the module docstring.

    ``definition="paper"``: k ln sum_i exp(-(L_i - ref) / kT) with ref = ``loss0`` when ``relative`` else
    0 (the paper's form); ``definition="gibbs"``: -k sum_i p_i ln p_i. ``temperature`` has no default (no
    value is meaningful for every loss); ``loss0`` (L(theta), may be None) is used only with
    ``relative=True``. Non-finite losses get
    weight 0; all non-finite gives -inf (paper) or NaN (gibbs)."""
    _check(temperature, k)
    if definition not in ("paper", "gibbs"):
        raise ProbeError(f"unknown definition {definition!r}; use 'paper' or 'gibbs'")
    values = _flat(losses)
    finite = values[np.isfinite(values)]
    kt = k * float(temperature)
    if definition == "gibbs":
        if finite.size == 0:
            return math.nan
        shifted = finite - finite.min()  # shift-invariant; this keeps the weights in range
        log_q = _log_q(shifted, kt)
        p = np.exp(-shifted / kt - log_q)
        return float(k * log_q + float(np.sum(p * shifted)) / float(temperature))
    ref = 0.0
    if relative:
        if loss0 is None or not math.isfinite(float(loss0)):
            raise ProbeError("relative=True needs a finite loss0 (the loss at theta)")
        ref = float(loss0)
    return k * _log_q(finite - ref, kt)


@dataclass
class LossEntropy:
    """All three readings of one set of sampled losses. ``entropy``: the paper's k ln Q on the raw
    losses; ``entropy_relative``: the same with L - L(theta) (None without a finite loss0); ``gibbs``:
    -k sum p ln p; ``max_entropy``: k ln N; ``n_points`` N (non-finite included); ``n_nonfinite``."""

    entropy: float
    entropy_relative: float | None
    gibbs: float
    max_entropy: float
    n_points: int
    n_nonfinite: int
    temperature: float
    k: float
    loss0: float | None

    def to_dict(self) -> dict:
        return {
            "entropy": json_float(self.entropy),
            "entropy_relative": json_float(self.entropy_relative),
            "gibbs": json_float(self.gibbs),
            "max_entropy": json_float(self.max_entropy),
            "n_points": int(self.n_points),
            "n_nonfinite": int(self.n_nonfinite),
            "temperature": float(self.temperature),
            "k": float(self.k),
            "loss0": json_float(self.loss0),
            "definition": "S = k ln sum_i exp(-L_i/(kT)); relative: L_i - L(theta); gibbs: -k sum p_i ln p_i",
            "source": SOURCE,
        }


def entropy_summary(losses: ArrayLike, loss0: float | None, temperature: float, k: float = 1.0) -> LossEntropy:
    """:class:`LossEntropy` of sampled losses: the paper's entropy, its relative form and the Gibbs
    entropy, with the counts that say how comparable it is (same N, same temperature)."""
    values = _flat(losses)
    _check(temperature, k)
    relative = None
    if loss0 is not None and math.isfinite(float(loss0)):
        relative = loss_entropy(values, loss0, temperature, k=k, relative=True)
    return LossEntropy(
        entropy=loss_entropy(values, loss0, temperature, k=k),
        entropy_relative=relative,
        gibbs=loss_entropy(values, loss0, temperature, k=k, definition="gibbs"),
        max_entropy=k * math.log(values.size),
        n_points=int(values.size),
        n_nonfinite=int((~np.isfinite(values)).sum()),
        temperature=float(temperature),
        k=float(k),
        loss0=None if loss0 is None else float(loss0),
    )
