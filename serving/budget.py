"""What a request may cost and carry, checked before any work (every failure a 422).

* **Work units** bound the CPU of one decision. A choice among ``n`` candidates costs
  what its policy's own sizes make it (:func:`bandit_core.work.decision_work`: about one
  unit per multiply-add of the head's quadratic forms ``n·d²``, the ``S`` posterior
  draws ``S·n·d``, the network's passes); a slate of ``k`` makes ``k`` choices, and its
  marginal propensities (``D`` Monte-Carlo prefixes, or as many exact prefix sets)
  ``k · D`` more::

      units = decision_work(policy, n) · c,    c = 1 (one arm) or k · (1 + D) (a slate).

  Measured on the reference machine (one core, ``benchmarks.work_units``), a unit costs
  about 0.04 ns in the decisions that take a millisecond or more, whatever the policy
  and width: the default budget (2.5·10⁹) bounds a decision to about 100 milliseconds,
  which the decision thread and its deadline keep off the event loop, and the loop
  chooses only decisions within ``inline_work_units`` (2.5·10⁷, about a millisecond).
* **Magnitudes**: every feature ``|x| ≤ max_abs_feature``, so that sums of squares of
  bounded features over any realistic number of rewards stay finite (see
  ``docs/reliability.md``).
* **Widths**: contexts and candidate features at most ``max_context_features`` and
  ``max_arm_features`` wide, with or without a served model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bandit_core import Decision
from bandit_core.work import decision_work
from serving.inputs import InputError, Loc, check_count


def work_units(policy: Any, n_candidates: int, k: int | None, marginal: int) -> int:
    """Work units of one decision of ``policy`` (module docstring)."""
    choices = 1 if k is None else k * (1 + marginal)
    return decision_work(policy, n_candidates) * choices


def body_lengths(raw: Any) -> tuple[int, int | None] | None:
    """``(candidates, k)`` of a parsed, not yet validated decision body, or None when it
    does not have the shape the checks below need (the validated request has the same)."""
    if not isinstance(raw, dict):
        return None
    candidates, k = raw.get("candidates"), raw.get("k")
    if not isinstance(candidates, list) or not candidates:
        return None
    if k is not None and (type(k) is not int or k < 1):
        return None
    return len(candidates), k


@dataclass(frozen=True)
class Limits:
    """The count limits a decision body is held to before it is validated (the settings
    of the same names): a list or mapping over them is refused for its length alone,
    before pydantic makes an object, or an error, of each element (a 1 MiB context of
    100,000 bad named features made as many errors; audit, stop 55)."""

    max_candidates: int
    max_groups: int
    max_context_features: int


def check_lengths(raw: Any, limits: Limits, grouped: bool = False) -> None:
    """422 naming the field and its limit for a parsed, not yet validated decision body
    (grouped or not) with too many candidates, groups, variants or context features; a
    body of another shape is left to validation. A few lengths are read (one per group):
    an item's features are left to validation, which stops at a list's first bad
    element (a body limit's worth of good floats validates in milliseconds), and the
    request path stays as it was for every body within the limits."""
    if not isinstance(raw, dict):
        return
    context = limits.max_context_features, "max_context_features"
    _count(raw.get("context"), context, ("body", "context"), "context")
    retrieve = raw.get("retrieve")
    if isinstance(retrieve, dict):
        _count(retrieve.get("query"), context, ("body", "retrieve", "query"), "retrieve.query")
    lists: list[tuple[Loc, Any]] = [(("body", "candidates"), raw.get("candidates"))]
    if grouped:
        groups = raw.get("groups")
        if isinstance(groups, list):
            check_count(len(groups), limits.max_groups, ("body", "groups"), "groups")
        lists = [
            (("body", "groups", g, "variants"), group.get("variants"))
            for g, group in enumerate(groups if isinstance(groups, list) else [])
            if isinstance(group, dict)
        ]
    for where, candidates in lists:
        if isinstance(candidates, list):
            check_count(len(candidates), limits.max_candidates, where, "candidates")


def _count(value: Any, limit: tuple[int, str], where: Loc, what: str) -> None:
    """``check_width`` of a list or mapping ``value`` against ``(limit, setting)``."""
    if isinstance(value, list | dict):
        check_width(len(value), limit[0], where, what, limit[1])


def grouped_lengths(raw: Any) -> list[int] | None:
    """The candidates (``variants``) of each group of a parsed, not yet validated grouped
    decision body, or None when it does not have that shape."""
    if not isinstance(raw, dict) or not isinstance(raw.get("groups"), list):
        return None
    out: list[int] = []
    for group in raw["groups"]:
        if not isinstance(group, dict):
            return None
        lengths = body_lengths({"candidates": group.get("variants")})
        if lengths is None:
            return None
        out.append(lengths[0])
    return out


def check_budget(units: int, limit: int) -> None:
    """422 naming ``max_work_units`` when ``units`` exceeds it."""
    if units > limit:
        # a k of thousands of digits makes units Python cannot print (4,300-digit limit)
        bits = units.bit_length()
        shown = str(units) if bits < 256 else f"about 10^{int(bits * math.log10(2))}"
        raise InputError(
            ("body",),
            f"the request costs {shown} work units (the model's work per candidate × "
            f"candidates × slate choices); the limit max_work_units is {limit}. Ask for "
            "fewer candidates or a smaller k.",
        )


def check_width(width: int, limit: int, loc: Loc, what: str, setting: str) -> None:
    if width > limit:
        raise InputError(
            loc, f"{what} must have at most {limit} features ({setting}); got {width}."
        )


def check_magnitude(values: NDArray[np.float64], bound: float, loc: Loc) -> None:
    """422 when a value exceeds ``bound`` in magnitude (``max_abs_feature``)."""
    if values.size and not (np.abs(values) <= bound).all():
        worst = float(np.max(np.abs(values)))
        raise InputError(
            loc,
            f"features must be at most {bound:g} in magnitude (max_abs_feature); got {worst!r}.",
        )


class NonFiniteChoiceError(ArithmeticError):
    """A policy returned non-finite scores or propensities (counted as a model error)."""


def check_choice_finite(
    decision: Decision, slate: tuple[float, ...] | None, marginal: tuple[float, ...] | None
) -> None:
    """Scores, probabilities and propensities finite, the propensity in (0, 1]."""
    finite = (
        np.isfinite(np.asarray(decision.scores, dtype=np.float64)).all()
        and np.isfinite(np.asarray(decision.probabilities, dtype=np.float64)).all()
        and math.isfinite(decision.propensity)
        and all(math.isfinite(p) for p in slate or ())
        and all(math.isfinite(p) for p in marginal or ())
    )
    if not finite:
        raise NonFiniteChoiceError(f"policy {decision.policy} returned non-finite scores")
    if not 0.0 < decision.propensity <= 1.0:
        raise NonFiniteChoiceError(
            f"policy {decision.policy} returned propensity {decision.propensity!r}"
        )


def learnable(
    context: NDArray[np.float64], arm_features: NDArray[np.float64], reward: float, bound: float
) -> bool:
    """Whether a head may learn from this reward: every input finite and within ``bound``
    (a decision logged before the bound existed may carry anything)."""
    return math.isfinite(reward) and all(
        not part.size or _finite_within(part, bound) for part in (context, arm_features)
    )


def _finite_within(part: NDArray[np.float64], bound: float) -> bool:
    """Every value finite and ``|x| ≤ bound`` (for a finite bound one comparison checks
    both: it is False for NaN and ±inf)."""
    if math.isfinite(bound):
        return bool((np.abs(part) <= bound).all())
    return bool(np.isfinite(part).all())
