"""Neural policies: neural-linear Thompson sampling, bootstrapped ensemble, MC dropout."""

from bandit_core.policies.neural.base import NeuralConfig, NeuralPolicy
from bandit_core.policies.neural.buffer import ReplayBuffer
from bandit_core.policies.neural.dropout import DropoutConfig, MCDropout
from bandit_core.policies.neural.ensemble import BootstrappedEnsemble, EnsembleConfig
from bandit_core.policies.neural.neural_linear import NeuralLinear, NeuralLinearConfig

__all__ = [
    "BootstrappedEnsemble",
    "DropoutConfig",
    "EnsembleConfig",
    "MCDropout",
    "NeuralConfig",
    "NeuralLinear",
    "NeuralLinearConfig",
    "NeuralPolicy",
    "ReplayBuffer",
]
