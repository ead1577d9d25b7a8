"""The uniform-random policy: the logging policy of randomised experiments and the
fallback of the service (propensity exactly 1/K)."""

from __future__ import annotations

from typing import Any

import numpy as np

from bandit_core._validation import (
    Interval,
    OptionalOf,
    arm_id_text,
    as_finite_float,
    check_known_options,
    validate_params,
)
from bandit_core.exploration import sample_categorical
from bandit_core.policies.base import (
    check_candidates,
    check_context,
    check_contexts,
    check_rng,
    check_updates,
    to_decision,
)
from bandit_core.types import SCHEMA_VERSION, Candidates, Decision, DecisionBatch, PolicyState


class UniformRandom:
    """Picks every candidate with probability 1/K; learns nothing."""

    name = "uniform"

    def __init__(self, dim_user: int | None = None, **options: Any) -> None:
        check_known_options(self.name, options, ["dim_user"])
        validate_params(
            "uniform", {"dim_user": dim_user}, {"dim_user": OptionalOf(Interval(int, 0, None))}
        )
        self.dim_user = dim_user
        self.model_version: str | None = None

    def _decide(self, n: int, candidates: Candidates, rng: np.random.Generator) -> DecisionBatch:
        k = len(candidates)
        probs = np.full((n, k), 1.0 / k)
        arms = sample_categorical(probs, rng)
        return DecisionBatch(arms, probs[:, 0].copy(), probs, np.zeros((n, k)), self.name)

    def select(self, context: Any, candidates: Any, rng: np.random.Generator) -> Decision:
        check_context(context, self.dim_user)
        cands = check_candidates(candidates, None)
        return to_decision(self._decide(1, cands, check_rng(rng)), cands, False, self.model_version)

    def select_batch(
        self, contexts: Any, candidates: Any, rng: np.random.Generator
    ) -> DecisionBatch:
        x = check_contexts(contexts, self.dim_user)
        return self._decide(x.shape[0], check_candidates(candidates, None), check_rng(rng))

    def update(self, context: Any, arm_id: Any, reward: Any, arm_features: Any = None) -> None:
        """Validates the feedback (so a caller learns of bad input) and learns nothing."""
        check_context(context, self.dim_user)
        arm_id_text(arm_id)
        as_finite_float("reward", reward)

    def revise_reward(
        self,
        context: Any,
        arm_id: Any,
        old_reward: Any,
        new_reward: Any,
        arm_features: Any = None,
    ) -> None:
        """Validates the revision and learns nothing (the policy has nothing to revise)."""
        check_context(context, self.dim_user)
        as_finite_float("old_reward", old_reward)
        as_finite_float("new_reward", new_reward)

    def update_batch(
        self, contexts: Any, arm_ids: Any, rewards: Any, arm_features: Any = None
    ) -> None:
        check_updates(contexts, arm_ids, rewards, None, self.dim_user, 0)

    def to_state(self) -> PolicyState:
        return PolicyState(
            self.name,
            {"dim_user": self.dim_user, "__meta__": {"model_version": self.model_version}},
            {},
            SCHEMA_VERSION,
        )

    @classmethod
    def from_state(cls, state: PolicyState) -> UniformRandom:
        options = dict(state.config)
        meta = options.pop("__meta__", {})
        policy = cls(**options)
        policy.model_version = meta.get("model_version")
        return policy
