"""The fallback policy: serves when no model is ready or the model errors.

``uniform`` picks every candidate with probability 1/K; ``epsilon_greedy`` keeps the
caller's order as the default (the first candidate is the greedy choice) and explores
uniformly with probability ε. Both report exact propensities.
"""

from __future__ import annotations

from typing import get_args

import numpy as np
from numpy.typing import ArrayLike

from bandit_core import Candidates, Decision, DecisionBatch
from bandit_core.exploration import greedy_choice_one, greedy_probabilities, sample_categorical
from serving.settings import Settings

_KIND, _EPSILON = (Settings.model_fields[n] for n in ("fallback_policy", "fallback_epsilon"))
#: The fallback kinds (``BANDITOPS_FALLBACK_POLICY``'s choices).
KINDS: tuple[str, ...] = get_args(_KIND.annotation)


class FallbackPolicy:
    """ε-greedy around the caller's order; ``kind="uniform"`` is the ε = 1 case."""

    def __init__(self, kind: str = _KIND.default, epsilon: float = _EPSILON.default) -> None:
        if kind not in KINDS:
            raise ValueError(f"fallback kind must be one of {', '.join(KINDS)}; got {kind!r}.")
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"fallback epsilon must be in [0, 1]; got {epsilon}.")
        self.kind = kind
        self.epsilon = 1.0 if kind == "uniform" else float(epsilon)
        self.name = f"fallback:{kind}"
        self.model_version: str | None = None

    def select(self, context: object, candidates: Candidates, rng: np.random.Generator) -> Decision:
        """Choose among ``candidates`` (the context is not used)."""
        k = len(candidates)
        scores = -np.arange(k, dtype=np.float64)
        arm, probs = greedy_choice_one(scores, self.epsilon, rng)
        return Decision(
            arm=arm,
            arm_id=candidates.ids[arm],
            propensity=float(probs[arm]),
            probabilities=probs,
            scores=scores,
            policy=self.name,
            explored=self.kind == "epsilon_greedy" and arm != 0,
            model_version=None,
        )

    def select_batch(
        self, contexts: ArrayLike, candidates: Candidates, rng: np.random.Generator
    ) -> DecisionBatch:
        """The same law for every row of ``contexts`` (n, ·) (slate marginals, replay)."""
        n = int(np.shape(contexts)[0])
        scores = np.broadcast_to(
            -np.arange(len(candidates), dtype=np.float64), (n, len(candidates))
        )
        probs = greedy_probabilities(np.ascontiguousarray(scores), self.epsilon)
        arms = sample_categorical(probs, rng)
        return DecisionBatch(arms, probs[np.arange(n), arms], probs, scores.copy(), self.name)
