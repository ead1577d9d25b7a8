"""banditops core: contextual-bandit algorithms and their math (numpy/scipy/torch only).

No I/O lives here: no MLflow, SQL, web framework, Airflow, pandas or plotting imports.
"""

from bandit_core.coldstart import ColdStartFloor
from bandit_core.features import FeatureMap
from bandit_core.grouped import Group, GroupedDecision, select_grouped
from bandit_core.head import BayesianLinearHead, HeadConfig
from bandit_core.policies import (
    POLICIES,
    BootstrappedEnsemble,
    EpsilonGreedy,
    ExplorationFloor,
    ExposureCap,
    LinTS,
    LinUCB,
    MCDropout,
    NeuralLinear,
    Policy,
    PositionBias,
    SharedLinTS,
    SharedLinUCB,
    UniformRandom,
    make_policy,
    policy_from_state,
    policy_names,
    revise_reward,
)
from bandit_core.slates import Slate, select_slate, slate_action_dist, slate_marginals
from bandit_core.state import load_policy, load_state, save_policy, save_state
from bandit_core.types import Candidates, Decision, DecisionBatch, PolicyState

__all__ = [
    "POLICIES",
    "BayesianLinearHead",
    "BootstrappedEnsemble",
    "Candidates",
    "ColdStartFloor",
    "Decision",
    "DecisionBatch",
    "EpsilonGreedy",
    "ExplorationFloor",
    "ExposureCap",
    "FeatureMap",
    "Group",
    "GroupedDecision",
    "HeadConfig",
    "LinTS",
    "LinUCB",
    "MCDropout",
    "NeuralLinear",
    "Policy",
    "PolicyState",
    "PositionBias",
    "SharedLinTS",
    "SharedLinUCB",
    "Slate",
    "UniformRandom",
    "load_policy",
    "load_state",
    "make_policy",
    "policy_from_state",
    "policy_names",
    "revise_reward",
    "save_policy",
    "save_state",
    "select_grouped",
    "select_slate",
    "slate_action_dist",
    "slate_marginals",
]
