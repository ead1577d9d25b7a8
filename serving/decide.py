"""One decision, or a ranked slate, from a policy (or the fallback).

Slates are filled position by position without replacement
(:func:`bandit_core.slates.select_slate`): the log carries each position's conditional
propensity (their product is the slate's probability) and, with
``marginal_draws > 0``, each shown item's marginal probability at its position (what
position-wise off-policy evaluation needs). New catalog items among the candidates get
the exploration floor of :class:`bandit_core.coldstart.ColdStartFloor`; with
``position_slots`` the candidates carry a position one-hot (the model's position bias).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bandit_core import Candidates, ColdStartFloor, Decision, select_slate
from bandit_core.slates import with_position


@dataclass(frozen=True)
class Choice:
    """The first decision, plus the slate when ``k`` was asked for.

    ``ranking`` holds candidate indices, best first; ``slate_propensities[j]`` is the
    probability of position j given positions 0..j-1 (their product is the probability
    of the whole slate). Position 0's propensity is the decision's propensity.
    ``position_propensities[j]`` is the probability that the item at position j is shown
    there (marginal over the positions before it), when computed.
    """

    decision: Decision
    ranking: tuple[int, ...] | None = None
    slate_propensities: tuple[float, ...] | None = None
    position_propensities: tuple[float, ...] | None = None


@dataclass(frozen=True)
class ChoiceOptions:
    """How a request is decided beyond the policy itself (from settings and catalog)."""

    position_slots: int = 0
    marginal_draws: int = 0
    max_states: int = 64
    new_ids: frozenset[str] = frozenset()
    new_p_min: float = 0.02
    new_max_share: float = 0.2


def choose(
    policy: Any,
    context: NDArray[np.float64],
    candidates: Candidates,
    rng: np.random.Generator,
    k: int | None = None,
    options: ChoiceOptions | None = None,
) -> Choice:
    """``policy.select`` once, or a slate of ``k`` without replacement."""
    opts = options or ChoiceOptions()
    selector = policy
    new_ids = opts.new_ids.intersection(candidates.ids)
    if new_ids:
        selector = ColdStartFloor(policy, opts.new_p_min, new_ids, opts.new_max_share)
    slots = opts.position_slots or None
    if k is None:
        if slots is not None:
            candidates = Candidates(candidates.ids, with_position(candidates.features, 0, slots))
        return Choice(selector.select(context, candidates, rng))
    slate = select_slate(
        selector,
        context,
        candidates,
        k,
        rng,
        position_slots=slots,
        marginal_draws=opts.marginal_draws,
        max_states=opts.max_states,
    )
    marginal = slate.position_propensities
    return Choice(
        slate.decisions[0],
        tuple(int(i) for i in slate.ranking),
        tuple(float(p) for p in slate.propensities),
        None if marginal is None else tuple(float(p) for p in marginal),
    )
