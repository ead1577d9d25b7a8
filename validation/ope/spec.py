"""The estimator spec table: every OPE estimator's function, options and properties.

Everything that lists estimators reads this table: the estimator lookup and the option
checks of :func:`~validation.ope.estimate.round_terms`, the default report order of
:func:`~validation.ope.evaluate.evaluate_policy`, the model-based and unbiased sets, the
estimators the sharded evaluation merges (``training.shards``) and the weight maps whose
λ :func:`~validation.ope.tuning.select_lambda` tunes.

Adding an estimator is its function in :mod:`validation.ope.estimators` and one entry in
:data:`SPECS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bandit_core._validation import FloatArray
from validation.ope.estimators import (
    RoundTerms,
    dm,
    dr,
    dros,
    ips,
    replay,
    shrink_weights,
    sndr,
    snips,
    switch_dr,
    switch_weights,
)


# ---------------------------------------------------------------------- option checks
def check_clip(name: str, value: object) -> float | None:
    """``clip``: None (no clipping) or a maximum weight in (0, ∞]."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not value > 0
        or math.isnan(value)
    ):
        raise ValueError(
            f"The 'clip' parameter of {name} must be None or a float in (0, inf]; got {value!r}."
        )
    return float(value)


def check_lambda(name: str, value: object) -> float:
    """λ must be a number in [0, ∞] (∞ allowed: plain DR)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(
            f"The 'lambda_' parameter of {name} must be a float in [0, inf]; got {value!r}."
        )
    v = float(value)
    if math.isnan(v) or v < 0.0:
        raise ValueError(
            f"The 'lambda_' parameter of {name} must be a float in [0, inf]; got {v!r}."
        )
    return v


def check_optional_lambda(name: str, value: object) -> float | None:
    """``lambda_``: None (tuned by estimated MSE) or a value in [0, ∞]."""
    return None if value is None else check_lambda(name, value)


def check_lambda_grid(name: str, value: object) -> tuple[float, ...] | None:
    """``lambda_grid``: None (the default grid) or candidate λ values, each in [0, ∞]."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise ValueError(
            f"The 'lambda_grid' parameter of {name} must be None or a sequence of floats in "
            f"[0, inf]; got {value!r}."
        )
    return tuple(check_lambda(name, v) for v in value)


@dataclass(frozen=True)
class EstimatorOption:
    """One option of an estimator: what it means and its check (which returns the
    normalised value or raises ``ValueError`` naming the estimator and the option)."""

    description: str
    check: Callable[[str, object], Any]


# ---------------------------------------------------------------------- the table
@dataclass(frozen=True)
class EstimatorSpec:
    """One estimator of the table.

    Parameters
    ----------
    name : str
    function : callable
        ``function(feedback, [rng,] **options) -> RoundTerms``.
    options : mapping of str to EstimatorOption
        Options besides the feedback (and the generator).
    needs_reward_model : bool
        It reads ``estimated_rewards`` (q̂).
    unbiased : bool
        Its expectation is the policy value for any (fixed or cross-fitted) reward model,
        given the true logging propensities.
    decomposable : bool
        Its round terms merge exactly over shards of the rows (no random draws over all
        rounds, nothing tuned on all rounds): the sharded evaluation computes it.
    needs_rng : bool
        It draws random numbers itself (replay).
    tuned_weights : callable or None
        ``(w (n,), λ) -> ŵ (n,)``: the weight map whose λ is tuned by estimated MSE when
        ``lambda_`` is None; None for an estimator without a tuned λ.
    """

    name: str
    function: Callable[..., RoundTerms]
    options: Mapping[str, EstimatorOption] = field(default_factory=dict)
    needs_reward_model: bool = False
    unbiased: bool = False
    decomposable: bool = False
    needs_rng: bool = False
    tuned_weights: Callable[[FloatArray, float], FloatArray] | None = None


_CLIP = EstimatorOption("maximum importance weight (None: no clipping)", check_clip)
_LAMBDA = EstimatorOption(
    "λ of the weight map (None: tuned by estimated MSE)", check_optional_lambda
)
_GRID = EstimatorOption("candidate λ values of the tuning (None: LAMBDA_GRID)", check_lambda_grid)

#: name → spec, in report order.
SPECS: dict[str, EstimatorSpec] = {
    s.name: s
    for s in (
        EstimatorSpec("replay", replay, needs_rng=True),
        EstimatorSpec("ips", ips, {"clip": _CLIP}, unbiased=True, decomposable=True),
        EstimatorSpec("snips", snips, decomposable=True),
        EstimatorSpec("dm", dm, needs_reward_model=True, decomposable=True),
        EstimatorSpec("dr", dr, needs_reward_model=True, unbiased=True, decomposable=True),
        EstimatorSpec("sndr", sndr, needs_reward_model=True, decomposable=True),
        EstimatorSpec(
            "switch_dr",
            switch_dr,
            {"lambda_": _LAMBDA, "lambda_grid": _GRID},
            needs_reward_model=True,
            tuned_weights=switch_weights,
        ),
        EstimatorSpec(
            "dros",
            dros,
            {"lambda_": _LAMBDA, "lambda_grid": _GRID},
            needs_reward_model=True,
            tuned_weights=shrink_weights,
        ),
    )
}

#: Estimators by name (``replay`` needs a generator; the model-based ones need q̂).
ESTIMATORS: dict[str, Callable[..., RoundTerms]] = {n: s.function for n, s in SPECS.items()}
#: Estimators that need a reward model.
MODEL_BASED = frozenset(n for n, s in SPECS.items() if s.needs_reward_model)
#: Estimators whose expectation is the policy value for any reward model.
UNBIASED = frozenset(n for n, s in SPECS.items() if s.unbiased)
#: Estimators whose round terms merge exactly over shards, in report order.
DECOMPOSABLE: tuple[str, ...] = tuple(n for n, s in SPECS.items() if s.decomposable)
#: Weight maps of the estimators whose λ is tuned.
WEIGHT_MAPS: dict[str, Callable[[FloatArray, float], FloatArray]] = {
    n: s.tuned_weights for n, s in SPECS.items() if s.tuned_weights is not None
}
#: Options each estimator accepts (besides the feedback and the generator).
OPTIONS: dict[str, tuple[str, ...]] = {n: tuple(s.options) for n, s in SPECS.items()}


def check_estimator_name(name: Any) -> str:
    if not isinstance(name, str) or name not in SPECS:
        raise ValueError(f"Unknown estimator {name!r}; expected one of: {', '.join(SPECS)}.")
    return name
