"""One decision, or a ranked slate, from a policy (or the fallback)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bandit_core import Candidates, Decision


@dataclass(frozen=True)
class Choice:
    """The first decision, plus the slate when ``k`` was asked for.

    ``ranking`` holds candidate indices, best first; ``slate_propensities[j]`` is the
    probability of position j given positions 0..j-1 (their product is the probability
    of the whole slate). Position 0's propensity is the decision's propensity.
    """

    decision: Decision
    ranking: tuple[int, ...] | None = None
    slate_propensities: tuple[float, ...] | None = None


def choose(
    policy: Any,
    context: NDArray[np.float64],
    candidates: Candidates,
    rng: np.random.Generator,
    k: int | None = None,
) -> Choice:
    """``policy.select`` once, or ``k`` times without replacement for a slate."""
    first = policy.select(context, candidates, rng)
    if k is None:
        return Choice(first)
    ranking = [first.arm]
    props = [first.propensity]
    remaining = np.delete(np.arange(len(candidates)), first.arm)
    while len(ranking) < k:
        nxt = policy.select(context, candidates.subset(remaining), rng)
        ranking.append(int(remaining[nxt.arm]))
        props.append(nxt.propensity)
        remaining = np.delete(remaining, nxt.arm)
    return Choice(first, tuple(ranking), tuple(props))
