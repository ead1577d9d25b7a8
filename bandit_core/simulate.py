"""The online loop: decide, observe, learn — with exact regret bookkeeping."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bandit_core._validation import FloatArray, Interval, validate_params
from bandit_core.envs import Environment
from bandit_core.policies.arm_features import candidates_for
from bandit_core.policies.base import Policy
from bandit_core.policies.overlap import for_users


@dataclass(frozen=True)
class SimulationResult:
    """Per-step arrays of one run (length ``steps``)."""

    policy: str
    rewards: FloatArray
    regrets: FloatArray
    propensities: FloatArray

    @property
    def cumulative_regret(self) -> float:
        return float(self.regrets.sum())

    @property
    def cumulative_reward(self) -> float:
        return float(self.rewards.sum())


def run_simulation(
    env: Environment,
    policy: Policy,
    steps: int,
    context_rng: np.random.Generator,
    policy_rng: np.random.Generator,
    users: Sequence[str | None] | None = None,
) -> SimulationResult:
    """Run ``policy`` online for ``steps`` steps.

    Contexts and reward noise come from ``context_rng`` only (one context and one
    uniform per step), decisions from ``policy_rng``: policies run with equal
    ``context_rng`` seeds see the same contexts and the same noise. ``users`` (at least
    ``steps`` user hashes, None for a step without a user) says whom each step decides
    for, as the service does: a policy with floors per hashed user group applies that
    user's group floor (:func:`~bandit_core.policies.overlap.for_users`); without it
    every step has no user (the global floor).
    """
    validate_params("run_simulation", {"steps": steps}, {"steps": Interval(int, 1, None)})
    if users is not None and len(users) < steps:
        raise ValueError(f"users must give one user per step ({steps}); got {len(users)}.")
    rewards = np.empty(steps)
    regrets = np.empty(steps)
    props = np.empty(steps)
    for t in range(steps):
        context, candidates = env.sample(context_rng)
        u = float(context_rng.random())
        means = env.expected_rewards(context, candidates)
        chooser = policy if users is None else for_users(policy, [users[t]])
        decision = chooser.select(context, candidates_for(policy, candidates), policy_rng)
        reward = env.reward(means, decision.arm, u)
        policy.update(context, decision.arm_id, reward, candidates.features[decision.arm])
        rewards[t] = reward
        regrets[t] = means.max() - means[decision.arm]
        props[t] = decision.propensity
    return SimulationResult(policy.name, rewards, regrets, props)
