"""Bandit policies: the protocol, linear policies, uniform, wrappers, registry."""

from bandit_core.policies.base import Policy
from bandit_core.policies.linear import (
    EpsilonGreedy,
    EpsilonGreedyConfig,
    LinearPolicy,
    LinTS,
    LinTSConfig,
    LinUCB,
    LinUCBConfig,
    SharedLinTS,
    SharedLinTSConfig,
    SharedLinUCB,
    SharedLinUCBConfig,
)
from bandit_core.policies.neural import (
    BootstrappedEnsemble,
    DropoutConfig,
    EnsembleConfig,
    MCDropout,
    NeuralConfig,
    NeuralLinear,
    NeuralLinearConfig,
    NeuralPolicy,
)
from bandit_core.policies.position import PositionBias
from bandit_core.policies.registry import POLICIES, make_policy, policy_from_state, policy_names
from bandit_core.policies.uniform import UniformRandom
from bandit_core.policies.wrappers import ExplorationFloor, ExposureCap, revise_reward

__all__ = [
    "POLICIES",
    "BootstrappedEnsemble",
    "DropoutConfig",
    "EnsembleConfig",
    "EpsilonGreedy",
    "EpsilonGreedyConfig",
    "ExplorationFloor",
    "ExposureCap",
    "LinTS",
    "LinTSConfig",
    "LinUCB",
    "LinUCBConfig",
    "LinearPolicy",
    "MCDropout",
    "NeuralConfig",
    "NeuralLinear",
    "NeuralLinearConfig",
    "NeuralPolicy",
    "Policy",
    "PositionBias",
    "SharedLinTS",
    "SharedLinTSConfig",
    "SharedLinUCB",
    "SharedLinUCBConfig",
    "UniformRandom",
    "make_policy",
    "policy_from_state",
    "policy_names",
    "revise_reward",
]
