"""Policies by name: build one from options, or restore one from its state."""

from __future__ import annotations

from typing import Any

from bandit_core.policies.base import Policy
from bandit_core.policies.hybrid import HybridLinTS, HybridLinUCB
from bandit_core.policies.linear import (
    EpsilonGreedy,
    LinearPolicy,
    LinTS,
    LinUCB,
    SharedLinTS,
    SharedLinUCB,
)
from bandit_core.policies.neural import BootstrappedEnsemble, MCDropout, NeuralLinear, NeuralPolicy
from bandit_core.policies.position import PositionBias
from bandit_core.policies.uniform import UniformRandom
from bandit_core.policies.wrappers import ExplorationFloor, ExposureCap
from bandit_core.types import SCHEMA_VERSION, PolicyState

#: Names as used by the CLI, the service settings and the benchmarks.
POLICIES: dict[str, type[LinearPolicy] | type[UniformRandom] | type[NeuralPolicy]] = {
    cls.name: cls
    for cls in (
        LinUCB,
        LinTS,
        SharedLinUCB,
        SharedLinTS,
        EpsilonGreedy,
        UniformRandom,
        NeuralLinear,
        BootstrappedEnsemble,
        MCDropout,
        HybridLinUCB,
        HybridLinTS,
    )
}

WRAPPERS = {
    "exploration_floor": ExplorationFloor,
    "exposure_cap": ExposureCap,
    "position_bias": PositionBias,
}


def policy_names() -> list[str]:
    return sorted(POLICIES)


def make_policy(name: str, **options: Any) -> Policy:
    """Build the policy ``name`` from keyword options.

    Raises ``ValueError`` naming the unknown policy or option.
    """
    cls = POLICIES.get(name)
    if cls is None:
        raise ValueError(f"Unknown policy {name!r}; expected one of: {', '.join(policy_names())}.")
    policy: Policy = cls(**options)
    return policy


def policy_from_state(state: PolicyState) -> Policy:
    """Restore any policy (wrapped or not) from :meth:`Policy.to_state` output."""
    if not isinstance(state, PolicyState):
        raise TypeError(f"state must be a PolicyState; got {type(state).__name__}.")
    if state.schema_version > SCHEMA_VERSION:
        raise ValueError(
            f"state schema_version {state.schema_version} is newer than this library "
            f"supports ({SCHEMA_VERSION}); upgrade banditops."
        )
    cls: Any = POLICIES.get(state.policy) or WRAPPERS.get(state.policy)
    if cls is None:
        raise ValueError(f"state names an unknown policy {state.policy!r}.")
    restored: Policy = cls.from_state(state)
    return restored
