"""Per-arm linear models on per-arm features (the general form of Listing 16.1).

Arm ``a`` has its own posterior θ_a on ``z_a = [x_user ; x_arm,a]`` (Li et al. 2010's
disjoint model with the article features appended to the user features): the score of a
candidate is ``θ_aᵀ z_a``, so every arm learns how its own reward depends on both the user
and its (possibly changing) features. ``select(X)`` takes one feature row per candidate.
Unseen arms start at the prior (head 0). Arms stay independent, so LinTS on this model has
exact propensities (:mod:`bandit_core.policies.exact_thompson`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bandit_core._validation import FloatArray, Interval, validate_params
from bandit_core.head import BayesianLinearHead
from bandit_core.linalg import gathered_product
from bandit_core.policies.base import arm_width
from bandit_core.policies.linear import (
    IntArray,
    LinearConfig,
    LinearPolicy,
    LinTS,
    LinTSConfig,
    LinUCB,
    LinUCBConfig,
    PerArmModel,
    SharedModel,
)
from bandit_core.types import Candidates


@dataclass(frozen=True, kw_only=True)
class ArmFeaturesConfig(LinearConfig):
    """``dim_arm``: width of every candidate's feature row (at least 1)."""

    dim_arm: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_params(
            type(self).__name__, {"dim_arm": self.dim_arm}, {"dim_arm": Interval(int, 1, None)}
        )


@dataclass(frozen=True, kw_only=True)
class LinUCBArmFeaturesConfig(ArmFeaturesConfig, LinUCBConfig):
    pass


@dataclass(frozen=True, kw_only=True)
class LinTSArmFeaturesConfig(ArmFeaturesConfig, LinTSConfig):
    pass


class PerArmFeaturesModel(PerArmModel):
    """One head per arm on ``z_a = [x ; x_arm,a]`` (dimension ``dim_user + dim_arm``)."""

    def __init__(self, config: ArmFeaturesConfig) -> None:
        super().__init__(config)
        self.dim_arm = config.dim_arm
        d = config.dim_user + config.dim_arm
        self.head = BayesianLinearHead(config.head_config(d), n_heads=1)

    def _inputs(self, contexts: FloatArray, arm_features: FloatArray) -> FloatArray:
        """``z`` (n, K, du + da) from contexts (n, du) and candidate features (K, da)."""
        n, k = contexts.shape[0], arm_features.shape[0]
        return np.concatenate(
            [
                np.broadcast_to(contexts[:, None, :], (n, k, contexts.shape[1])),
                np.broadcast_to(arm_features[None], (n, k, arm_features.shape[1])),
            ],
            axis=2,
        )

    def terms(
        self, contexts: FloatArray, candidates: Candidates
    ) -> tuple[FloatArray, FloatArray, IntArray]:
        heads, rows = self._candidate_heads(candidates.ids)
        z = self._inputs(contexts, candidates.features)
        mean = np.einsum("nkd,kd->nk", z, self.head.theta_[rows])
        proj = gathered_product(
            self.head.inv_chol_,
            rows,
            lambda u, at: np.einsum("kij,nkj->nki", u, z[:, at]),
            axis=1,
        )
        return mean, proj, heads

    def terms_one(
        self, context: FloatArray, candidates: Candidates
    ) -> tuple[FloatArray, FloatArray, IntArray]:
        mean, proj, heads = self.terms(context[None], candidates)
        return mean[0], proj[0], heads

    def learn_one(self, context: FloatArray, arm_id: str, feats: FloatArray, reward: float) -> None:
        super().learn_one(np.concatenate([context, feats]), arm_id, feats, reward)

    def revise_one(
        self, context: FloatArray, arm_id: str, feats: FloatArray, old: float, new: float
    ) -> None:
        super().revise_one(np.concatenate([context, feats]), arm_id, feats, old, new)

    def learn(
        self, contexts: FloatArray, ids: list[str], feats: FloatArray, rewards: FloatArray
    ) -> None:
        super().learn(np.concatenate([contexts, feats], axis=1), ids, feats, rewards)

    def rebuild(
        self, contexts: FloatArray, ids: list[str], feats: FloatArray, rewards: FloatArray
    ) -> None:
        super().rebuild(np.concatenate([contexts, feats], axis=1), ids, feats, rewards)


class _ArmFeatures(LinearPolicy):
    config: ArmFeaturesConfig

    def _make_model(self) -> PerArmModel | SharedModel:
        return PerArmFeaturesModel(self.config)


class LinUCBArmFeatures(LinUCB, _ArmFeatures):
    """Per-arm LinUCB with each arm's θ_a on ``[x_user ; x_arm,a]``."""

    name = "linucb_arm_features"
    config_class = LinUCBArmFeaturesConfig


class LinTSArmFeatures(LinTS, _ArmFeatures):
    """Per-arm linear Thompson sampling on ``[x_user ; x_arm,a]``, exact propensities."""

    name = "lints_arm_features"
    config_class = LinTSArmFeaturesConfig


def ignores_arm_features(policy: object) -> bool:
    """True for a policy (through wrappers) whose model reads no candidate features — a
    per-arm model on the user context, a shared, neural or logistic one with ``dim_arm``
    0 — which refuses candidates that carry features (only per-arm linear models were
    told apart: a neural-linear model with ``dim_arm`` 0 raised on every request whose
    candidates had features, and the fallback decided, serving helper, stop 53)."""
    return arm_width(policy) == 0


def candidates_for(policy: object, candidates: Candidates) -> Candidates:
    """``candidates`` as ``policy`` takes them: without features when it does not use any
    (the log keeps the full candidate set; only the model's input changes)."""
    if candidates.dim > 0 and ignores_arm_features(policy):
        return Candidates(candidates.ids, np.zeros((len(candidates), 0)))
    return candidates
