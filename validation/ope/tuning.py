"""Data-driven choice of λ for Switch-DR and DRos.

For a weight map ``ŵ_λ`` (switch: ``w·1[w ≤ λ]``; shrinkage: ``λw/(w² + λ)``) the
estimator's bias relative to unbiased DR is ``E[z]`` with ``z_i = (w_i − ŵ_λ,i)(r_i −
q̂_i)``, estimated by its sample mean (Su, Dimakopoulou, Krishnamurthy & Dudík, ICML
2020, §4.1, "direct bias estimation"). That estimate can be near 0 by chance, which would
favour small λ, so it is replaced by a high-probability upper bound: ``|mean(z)|`` plus
the two-sided empirical Bernstein width (Maurer & Pontil, COLT 2009, Thm. 4)

    B(λ) = |z̄| + sqrt(2 s²_z ln(4/δ) / n) + 7 range(z) ln(4/δ) / (3 (n − 1)),

which is 0 when ``ŵ_λ = w`` on every round. λ minimises the estimated mean squared error

    MSE(λ) = s²(round terms) / n + B(λ)²

over a grid (by default the Open Bandit Pipeline benchmark's grid, Saito et al. 2021).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bandit_core._validation import FloatArray, Interval, validate_params
from validation.ope.inputs import BanditFeedback
from validation.ope.spec import WEIGHT_MAPS, check_lambda

#: Candidate λ values (the grid of the Open Bandit Pipeline benchmark, Saito et al. 2021).
LAMBDA_GRID: tuple[float, ...] = (1.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0)


@dataclass(frozen=True)
class LambdaChoice:
    """The chosen λ and the estimated MSE of every candidate (same order as ``grid``)."""

    lambda_: float
    grid: tuple[float, ...]
    estimated_mse: tuple[float, ...]


def bias_upper_bound(z: FloatArray, delta: float = 0.05) -> float:
    """``|mean(z)|`` plus the empirical Bernstein width at confidence ``1 − delta``."""
    n = int(z.shape[0])
    if n < 2:
        return abs(float(z.mean())) if n else 0.0
    log_term = math.log(4.0 / delta)
    width = math.sqrt(2.0 * float(np.var(z, ddof=1)) * log_term / n)
    width += 7.0 * float(np.ptp(z)) * log_term / (3.0 * (n - 1))
    return abs(float(z.mean())) + width


def select_lambda(
    estimator: str,
    fb: BanditFeedback,
    grid: Sequence[float] = LAMBDA_GRID,
    delta: float = 0.05,
) -> LambdaChoice:
    """Choose λ for ``estimator`` ("switch_dr" or "dros") by estimated MSE.

    Parameters
    ----------
    estimator : {"switch_dr", "dros"}
    fb : BanditFeedback
        Validated feedback with ``estimated_rewards``.
    grid : sequence of float
        Candidate values, each in [0, ∞]; the first minimiser wins ties.
    delta : float
        1 − confidence of the bias bound, in (0, 1).

    Returns
    -------
    LambdaChoice
    """
    weight_map = WEIGHT_MAPS.get(estimator)
    if weight_map is None:
        raise ValueError(
            f"select_lambda tunes one of: {', '.join(WEIGHT_MAPS)}; got {estimator!r}."
        )
    validate_params(
        "select_lambda", {"delta": delta}, {"delta": Interval(float, 0.0, 1.0, closed="neither")}
    )
    values = tuple(check_lambda(estimator, g) for g in grid)
    if not values:
        raise ValueError("grid must hold at least one candidate λ; got an empty sequence.")
    w = fb.importance_weights()
    _, q_logged = fb.model_at_position(estimator)
    base = fb.direct_method_term(estimator)
    resid = fb.reward - q_logged
    n = fb.n_rounds
    mse = []
    for lam in values:
        wh = weight_map(w, lam)
        terms = base + wh * resid
        variance = float(np.var(terms, ddof=1)) / n if n > 1 else 0.0
        bias = bias_upper_bound((w - wh) * resid, delta)
        mse.append(variance + bias * bias)
    best = int(np.argmin(mse))
    return LambdaChoice(values[best], values, tuple(mse))
