"""One estimator, end to end: point estimate, bootstrap interval, ESS and max weight."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from bandit_core._validation import (
    FloatArray,
    check_generator,
    check_known_options,
    validate_params,
)
from validation.ope.bootstrap import (
    BOOTSTRAP_PARAMS,
    INTERVAL,
    LEVEL,
    N_RESAMPLES,
    bootstrap_means,
    extra_draws,
    resampled_interval,
)
from validation.ope.estimators import RoundTerms
from validation.ope.inputs import BanditFeedback
from validation.ope.spec import OPTIONS, SPECS, check_estimator_name
from validation.ope.tuning import LAMBDA_GRID, select_lambda


def effective_sample_size(weights: FloatArray) -> float:
    """Kish's effective sample size ``(Σ w)² / Σ w²`` (0 when every weight is 0), of the
    weights over their largest: the same number, without the overflow of ``Σ w²`` that
    made it NaN for weights beyond 10¹⁵⁴ (a logged propensity of 10⁻³⁰⁰)."""
    top = float(np.abs(weights).max()) if weights.size else 0.0
    if top == 0.0 or not np.isfinite(top):
        return 0.0 if top == 0.0 else math.nan
    scaled = weights / top
    total = float(scaled.sum())
    return total * total / float(np.dot(scaled, scaled))


@dataclass(frozen=True)
class Estimate:
    """An estimator's result on one logged batch.

    Attributes
    ----------
    estimator : str
        Name in :data:`~validation.ope.spec.SPECS`.
    value : float
        Point estimate of the evaluation policy's value.
    ci_low, ci_high : float
        Bootstrap interval at ``level`` over ``n_resamples`` resamples (percentile unless
        asked otherwise: :mod:`validation.ope.bootstrap`).
    ess : float
        Effective sample size of the weights the estimator applies.
    max_weight : float
        Largest of those weights.
    n_rounds : int
        Logged rounds used.
    params : dict of str to float
        Hyperparameters (``clip``, ``lambda_``) and counts (``n_matched`` for replay).
    """

    estimator: str
    value: float
    ci_low: float
    ci_high: float
    level: float
    n_resamples: int
    ess: float
    max_weight: float
    n_rounds: int
    params: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: a value that is not finite is ``None`` (strict JSON has no NaN or
        Infinity: a window whose weights overflowed wrote ``NaN`` and ``Infinity`` tokens
        that other readers refuse, and ``to_json`` raised; OPE helper, stop 55)."""
        out = {k: _finite_or_none(v) for k, v in asdict(self).items()}
        out["params"] = {k: _finite_or_none(v) for k, v in self.params.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Estimate:
        """:meth:`to_dict` read back (``None`` is NaN again)."""
        values: dict[str, Any] = {
            k: math.nan if v is None and k in _FLOAT_FIELDS else v for k, v in data.items()
        }
        values["params"] = {
            k: math.nan if v is None else float(v) for k, v in dict(data.get("params", {})).items()
        }
        return cls(**values)


#: The float fields of :class:`Estimate` (``None`` in JSON when not finite).
_FLOAT_FIELDS = frozenset({"value", "ci_low", "ci_high", "level", "ess", "max_weight"})


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def round_terms(
    estimator: str,
    feedback: BanditFeedback,
    rng: np.random.Generator | None = None,
    **options: Any,
) -> RoundTerms:
    """The round terms of ``estimator`` on ``feedback`` (λ tuned when not given).

    Parameters
    ----------
    estimator : str
    feedback : BanditFeedback
    rng : numpy.random.Generator, optional
        Needed by ``replay`` only.
    **options
        ``clip`` (ips: max weight, > 0), ``lambda_`` (switch_dr, dros: in [0, ∞];
        ``None`` tunes it by estimated MSE over ``lambda_grid``).
    """
    name = check_estimator_name(estimator)
    spec = SPECS[name]
    check_known_options(name, options, OPTIONS[name])
    given = {key: spec.options[key].check(name, value) for key, value in options.items()}
    if spec.needs_rng:
        if rng is None:
            raise ValueError(
                f"{name} draws the evaluation policy's actions: pass rng "
                "(a numpy.random.Generator)."
            )
        return spec.function(feedback, check_generator(rng), **given)
    if spec.tuned_weights is not None:
        lam = given.get("lambda_")
        if lam is None:
            choice = select_lambda(name, feedback, given.get("lambda_grid") or LAMBDA_GRID)
            terms = spec.function(feedback, choice.lambda_)
            return replace(terms, params={**terms.params, "tuned": 1.0})
        return spec.function(feedback, lam)
    return spec.function(feedback, **given)


def estimate(
    estimator: str,
    feedback: BanditFeedback,
    rng: np.random.Generator,
    *,
    n_resamples: int = N_RESAMPLES,
    level: float = LEVEL,
    interval: str = INTERVAL,
    **options: Any,
) -> Estimate:
    """Run ``estimator`` on ``feedback``: value, bootstrap interval, ESS, max weight.

    Parameters
    ----------
    estimator : str
        One of ``replay, ips, snips, dm, dr, sndr, switch_dr, dros``.
    feedback : BanditFeedback
        From :func:`~validation.ope.inputs.check_feedback`.
    rng : numpy.random.Generator
        Drives the bootstrap (and replay's policy draws).
    n_resamples : int
        Bootstrap resamples.
    level : float
        Interval coverage in (0, 1).
    interval : str
        ``"percentile"`` (default, the Open Bandit Pipeline's) or ``"event_adjusted"``:
        :data:`validation.ope.bootstrap.INTERVALS`.
    **options
        See :func:`round_terms`.

    Returns
    -------
    Estimate
    """
    rng = check_generator(rng)
    validate_params(
        "estimate",
        {"n_resamples": n_resamples, "level": level, "interval": interval},
        BOOTSTRAP_PARAMS,
    )
    terms = round_terms(estimator, feedback, rng, **options)
    means = bootstrap_means(terms, rng, n_resamples)
    low, high = resampled_interval([terms], [means], extra_draws(rng, n_resamples, interval), level)
    return Estimate(
        estimator=estimator,
        value=terms.value(),
        ci_low=low,
        ci_high=high,
        level=float(level),
        n_resamples=int(n_resamples),
        ess=effective_sample_size(terms.weights),
        max_weight=float(terms.weights.max()),
        n_rounds=feedback.n_rounds,
        params=dict(terms.params),
    )
