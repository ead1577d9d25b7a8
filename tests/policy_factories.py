"""Small configurations of every catalog policy, for the contract suite.

Every name in ``bandit_core.catalog.CATALOG`` gets a factory: the entries written below,
else :func:`default_factory` (small options derived from the catalog entry), so a new
policy is covered by the contract suite the moment it is registered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from bandit_core import ExplorationFloor, ExposureCap, Policy, PositionBias, make_policy
from bandit_core.catalog import CATALOG

DIM_USER = 3
DIM_ARM = 2

NEURAL_SMALL: dict[str, Any] = {
    "dim_user": DIM_USER,
    "dim_arm": DIM_ARM,
    "hidden": (8,),
    "retrain_every": 10,
    "epochs": 2,
    "max_train_steps": 5,
    "batch_size": 16,
    "device": "cpu",
}


def default_options(name: str) -> dict[str, Any]:
    """Small options of ``name`` from its catalog entry: the contract suite's sizes, the
    tiny neural settings for a policy that trains a network, 200 Monte-Carlo draws."""
    spec = CATALOG[name]
    names = set(spec.option_names())
    options: dict[str, Any] = {"dim_user": DIM_USER}
    if spec.trains_network:
        options.update(NEURAL_SMALL)
    if spec.arm_features:
        options["dim_arm"] = DIM_ARM
    if "n_sim" in names:
        options["n_sim"] = 200
    return {k: v for k, v in options.items() if k in names or k == "dim_user"}


def default_factory(name: str) -> Callable[[], Any]:
    return lambda: make_policy(name, **default_options(name))


_WRITTEN: dict[str, Callable[[], Any]] = {
    "uniform": lambda: make_policy("uniform", dim_user=DIM_USER),
    "linucb": lambda: make_policy("linucb", dim_user=DIM_USER, alpha=0.5),
    "lints": lambda: make_policy("lints", dim_user=DIM_USER),
    "shared_linucb": lambda: make_policy(
        "shared_linucb", dim_user=DIM_USER, dim_arm=DIM_ARM, interactions=True, alpha=0.5
    ),
    "shared_lints": lambda: make_policy(
        "shared_lints", dim_user=DIM_USER, dim_arm=DIM_ARM, arm_vocabulary=("a", "b"), n_sim=200
    ),
    "epsilon_greedy": lambda: make_policy(
        "epsilon_greedy", dim_user=DIM_USER, dim_arm=DIM_ARM, epsilon=0.2
    ),
    "linucb_arm_features": lambda: make_policy(
        "linucb_arm_features", dim_user=DIM_USER, dim_arm=DIM_ARM, alpha=0.5
    ),
    "lints_arm_features": lambda: make_policy(
        "lints_arm_features", dim_user=DIM_USER, dim_arm=DIM_ARM
    ),
    "logistic_ts": lambda: make_policy(
        "logistic_ts", dim_user=DIM_USER, dim_arm=DIM_ARM, interactions=True, n_sim=200
    ),
    # neural policies: tiny networks, a retraining every 10 observations, few steps
    "neural_linear": lambda: make_policy("neural_linear", **NEURAL_SMALL, n_sim=100),
    "ensemble": lambda: make_policy("ensemble", **NEURAL_SMALL, n_members=3, mode="ts"),
    "dropout": lambda: make_policy("dropout", **NEURAL_SMALL, dropout=0.3, mode="ts", n_sim=50),
    "hybrid_linucb": lambda: make_policy(
        "hybrid_linucb", dim_user=DIM_USER, dim_arm=DIM_ARM, interactions=True, alpha=0.5
    ),
    "hybrid_lints": lambda: make_policy(
        "hybrid_lints", dim_user=DIM_USER, dim_arm=DIM_ARM, arm_embedding=2, n_sim=200
    ),
}

FACTORIES: dict[str, Callable[[], Any]] = {
    name: _WRITTEN.get(name) or default_factory(name) for name in CATALOG
}

#: Other exploration modes (the neural policies' UCB, LinUCB's deterministic tie rule) are
#: covered by the same suite.
VARIANTS: dict[str, Callable[[], Any]] = {
    "neural_linear+ucb": lambda: make_policy("neural_linear", **NEURAL_SMALL, mode="ucb"),
    "ensemble+ucb": lambda: make_policy("ensemble", **NEURAL_SMALL, n_members=3, mode="ucb"),
    "dropout+ucb": lambda: make_policy("dropout", **NEURAL_SMALL, dropout=0.3, mode="ucb"),
    "logistic_ts+adaptive": lambda: make_policy(
        "logistic_ts",
        dim_user=DIM_USER,
        dim_arm=DIM_ARM,
        n_sim=100,
        target_rel_error=0.05,
        max_sim=4000,
    ),
    "shared_lints+adaptive": lambda: make_policy(
        "shared_lints",
        dim_user=DIM_USER,
        dim_arm=DIM_ARM,
        n_sim=100,
        target_rel_error=0.05,
        max_sim=4000,
    ),
    "linucb+first": lambda: make_policy("linucb", dim_user=DIM_USER, alpha=0.5, ties="first"),
    "shared_linucb+first": lambda: make_policy(
        "shared_linucb", dim_user=DIM_USER, dim_arm=DIM_ARM, interactions=True, ties="first"
    ),
    "hybrid_linucb+first": lambda: make_policy(
        "hybrid_linucb", dim_user=DIM_USER, dim_arm=DIM_ARM, refactor_every=7, ties="first"
    ),
    # the hashed arm-embedding interaction as the input of a shared and of a neural model
    "shared_lints+embedding": lambda: make_policy(
        "shared_lints", dim_user=DIM_USER, dim_arm=DIM_ARM, arm_embedding=3, n_sim=200
    ),
    "neural_linear+embedding": lambda: make_policy(
        "neural_linear", **NEURAL_SMALL, arm_embedding=3, n_sim=100
    ),
}

#: Policies that learn rewards in [0, 1] only (a Bernoulli likelihood).
UNIT_REWARDS = frozenset({"logistic_ts", "logistic_ts+adaptive"})

#: Wrapped policies are covered by the same suite.
WRAPPED: dict[str, Callable[[], Policy]] = {
    "linucb+floor": lambda: ExplorationFloor(FACTORIES["linucb"](), p_min=0.05),
    "lints+cap": lambda: ExposureCap(
        FACTORIES["lints"](), max_share=0.4, window=50, min_decisions=10
    ),
    # overlap options of a trained policy (make_policy wraps): global, per-segment and
    # cold-start floors around a deterministic policy; a floor over an exposure cap
    "shared_linucb+overlap": lambda: make_policy(
        "shared_linucb",
        dim_user=DIM_USER,
        dim_arm=DIM_ARM,
        floor=0.02,
        segment_feature=0,
        segment_floors={"1": 0.1},
        cold_start_floor=0.05,
    ),
    # floors by hashed user group: the suite decides without a user (the global floor);
    # tests/test_overlap.py decides for users (for_users)
    "shared_linucb+user_groups": lambda: make_policy(
        "shared_linucb",
        dim_user=DIM_USER,
        dim_arm=DIM_ARM,
        floor=0.02,
        segment_user_groups=4,
        segment_floors={"group_1": 0.1},
    ),
    "lints+cap+overlap": lambda: make_policy(
        "lints",
        dim_user=DIM_USER,
        floor=0.05,
        exposure_cap=0.4,
        exposure_window=50,
        exposure_min_decisions=10,
    ),
    # a head on [x_arm ; one-hot of 3 positions], fed item features only
    "shared_lints+position": lambda: PositionBias(
        make_policy("shared_lints", dim_user=DIM_USER, dim_arm=DIM_ARM + 3, n_sim=200), 3
    ),
}


def state_arrays(policy: Any) -> dict[str, np.ndarray]:
    """Copies of a policy's state arrays (to compare a policy before and after a call)."""
    return {k: np.array(v, copy=True) for k, v in policy.to_state().arrays.items()}
