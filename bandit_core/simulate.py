"""The online loop: decide, observe, learn — with exact regret bookkeeping."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bandit_core._validation import FloatArray, Interval, validate_params
from bandit_core.envs import Environment
from bandit_core.policies.arm_features import candidates_for
from bandit_core.policies.base import Policy


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
) -> SimulationResult:
    """Run ``policy`` online for ``steps`` steps.

    Contexts and reward noise come from ``context_rng`` only (one context and one
    uniform per step), decisions from ``policy_rng``: policies run with equal
    ``context_rng`` seeds see the same contexts and the same noise.
    """
    validate_params("run_simulation", {"steps": steps}, {"steps": Interval(int, 1, None)})
    rewards = np.empty(steps)
    regrets = np.empty(steps)
    props = np.empty(steps)
    for t in range(steps):
        context, candidates = env.sample(context_rng)
        u = float(context_rng.random())
        means = env.expected_rewards(context, candidates)
        decision = policy.select(context, candidates_for(policy, candidates), policy_rng)
        reward = env.reward(means, decision.arm, u)
        policy.update(context, decision.arm_id, reward, candidates.features[decision.arm])
        rewards[t] = reward
        regrets[t] = means.max() - means[decision.arm]
        props[t] = decision.propensity
    return SimulationResult(policy.name, rewards, regrets, props)
