"""banditops core: contextual-bandit algorithms and their math (numpy/scipy/torch only).

No I/O lives here: no MLflow, SQL, web framework, Airflow, pandas or plotting imports.

The public names below are imported on first use (PEP 562), so that importing a light
submodule — :mod:`bandit_core.catalog` at DAG parse time — does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bandit_core._validation import MAX_ABS_INPUT
    from bandit_core.catalog import CATALOG, POLICIES, PolicySpec, policy_spec
    from bandit_core.coldstart import ColdStartFloor
    from bandit_core.features import FeatureMap
    from bandit_core.grouped import Group, GroupedDecision, select_grouped
    from bandit_core.head import BayesianLinearHead, HeadConfig
    from bandit_core.head_statistics import HeadStatistics, LinearHeadPolicy
    from bandit_core.policies import (
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
    from bandit_core.policies.overlap import Overlap, OverlapConfig, for_users
    from bandit_core.slates import Slate, select_slate, slate_action_dist, slate_marginals
    from bandit_core.state import load_policy, load_state, save_policy, save_state
    from bandit_core.types import Candidates, Decision, DecisionBatch, PolicyState

#: public name → the module that defines it (``__getattr__`` imports it on first use; a
#: test keeps this table, ``__all__`` and the ``TYPE_CHECKING`` imports equal)
_EXPORTS: dict[str, str] = {
    "MAX_ABS_INPUT": "bandit_core._validation",
    **dict.fromkeys(("CATALOG", "POLICIES", "PolicySpec", "policy_spec"), "bandit_core.catalog"),
    "ColdStartFloor": "bandit_core.coldstart",
    "FeatureMap": "bandit_core.features",
    **dict.fromkeys(("Group", "GroupedDecision", "select_grouped"), "bandit_core.grouped"),
    **dict.fromkeys(("BayesianLinearHead", "HeadConfig"), "bandit_core.head"),
    **dict.fromkeys(("HeadStatistics", "LinearHeadPolicy"), "bandit_core.head_statistics"),
    **dict.fromkeys(
        (
            "BootstrappedEnsemble",
            "EpsilonGreedy",
            "ExplorationFloor",
            "ExposureCap",
            "LinTS",
            "LinUCB",
            "MCDropout",
            "NeuralLinear",
            "Policy",
            "PositionBias",
            "SharedLinTS",
            "SharedLinUCB",
            "UniformRandom",
            "make_policy",
            "policy_from_state",
            "policy_names",
            "revise_reward",
        ),
        "bandit_core.policies",
    ),
    **dict.fromkeys(("Overlap", "OverlapConfig", "for_users"), "bandit_core.policies.overlap"),
    **dict.fromkeys(
        ("Slate", "select_slate", "slate_action_dist", "slate_marginals"), "bandit_core.slates"
    ),
    **dict.fromkeys(
        ("load_policy", "load_state", "save_policy", "save_state"), "bandit_core.state"
    ),
    **dict.fromkeys(
        ("Candidates", "Decision", "DecisionBatch", "PolicyState"), "bandit_core.types"
    ),
}

__all__ = [
    "CATALOG",
    "MAX_ABS_INPUT",
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
    "HeadStatistics",
    "LinTS",
    "LinUCB",
    "LinearHeadPolicy",
    "MCDropout",
    "NeuralLinear",
    "Overlap",
    "OverlapConfig",
    "Policy",
    "PolicySpec",
    "PolicyState",
    "PositionBias",
    "SharedLinTS",
    "SharedLinUCB",
    "Slate",
    "UniformRandom",
    "for_users",
    "load_policy",
    "load_state",
    "make_policy",
    "policy_from_state",
    "policy_names",
    "policy_spec",
    "revise_reward",
    "save_policy",
    "save_state",
    "select_grouped",
    "select_slate",
    "slate_action_dist",
    "slate_marginals",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bandit_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
