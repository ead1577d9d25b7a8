"""Neural-linear Thompson sampling (Riquelme, Tucker & Snoek, ICLR 2018, §3 "NeuralLinear";
Snoek et al., ICML 2015 for the Bayesian last layer), and its UCB twin (Xu, Wen, Zhao &
Gu, "Neural contextual bandits with deep representation and shallow exploration", 2022).

An MLP encoder ``φ = f_θ(z(x, a))`` feeds a :class:`~bandit_core.head.BayesianLinearHead`
with a Normal-inverse-gamma prior. With ``mode="ts"`` decisions are Thompson samples from
the head's posterior on ``φ`` of every candidate, exactly as shared linear TS does on
hand-built features; with ``mode="ucb"`` the score is ``μᵀφ + α √(φᵀA⁻¹φ)`` (LinUCB on the
learned features), argmax with ties split uniformly, so the propensities are exact.

Two speeds:

* fast — each reward updates the head at once with ``φ`` from the frozen encoder (rank-one,
  O(d²));
* slow — every ``retrain_every`` observations the encoder and a linear output layer are
  trained jointly on the replay buffer, then the head is **rebuilt from scratch** from every
  stored observation re-encoded with the new network:
  ``A = λI + Σ φφᵀ``, ``b = Σ rφ``, ``a = a0 + n/2``, ``b = b0 + ½(Σr² − μᵀAμ)``.
  The rebuild encodes and accumulates in chunks (O(d² + chunk·d) memory, no per-row loop).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, ClassVar, cast

import numpy as np
import torch
from numpy.typing import NDArray

from bandit_core._validation import (
    BONUS_SCALE,
    DRAW_SCALE,
    Constraint,
    FloatArray,
    IsBool,
    OneOf,
    delegate,
)
from bandit_core.head import HEAD_PARAMS, BayesianLinearHead, HeadConfig
from bandit_core.head_statistics import HeadStatistics, HeadStatisticsMethods
from bandit_core.linalg import factor_is_accurate
from bandit_core.montecarlo import MONTE_CARLO_PARAMS
from bandit_core.nets import to_numpy
from bandit_core.policies.linear import _ThompsonRule, _UCBRule
from bandit_core.policies.neural.base import IntArray, NeuralConfig, NeuralPolicy
from bandit_core.work import linear_work

#: rows encoded per forward pass during a rebuild
REBUILD_CHUNK = 8192


@dataclass(frozen=True, kw_only=True)
class NeuralLinearConfig(NeuralConfig):
    """:class:`NeuralConfig` plus the head prior and the exploration rule.

    Parameters
    ----------
    mode : {"ts", "ucb"}
        Thompson sampling from the head's posterior, or the UCB score on φ.
    alpha : float
        Width of the UCB bonus (``mode="ucb"``): ``μᵀφ + α √(φᵀA⁻¹φ)``.
    lambda_prior, a0, b0 : float
        Normal-inverse-gamma prior of the head (Riquelme et al.: λ = 0.25, a0 = b0 = 6).
    v : float
        Scale of the posterior draws (1 is plain Thompson sampling).
    n_sim : int
        Extra posterior draws per decision for the Monte-Carlo propensities.
    target_rel_error, max_sim : float or None, int
        Draw more (up to ``max_sim``), as many as the propensity of the arm a pilot draw
        chooses needs for this relative standard error: a decision that chooses a less
        likely arm gets fewer than its own propensity would need, and logs the larger
        standard error it has (:func:`bandit_core.montecarlo.thompson_draws`).
    sample_noise : bool
        Draw σ² from its inverse-gamma posterior for every draw (else σ = 1).
    head_bias : bool
        Append a constant 1 to φ so the head has an intercept.
    head_inputs : bool
        Append the encoder input z itself to φ (a linear "wide" part next to the learned
        features, as in wide & deep models): the head then contains the shared linear
        model on z, so the policy starts where shared linear TS is and the network only
        has to add what is not linear.
    outlier_ratio : float or None
        The head refuses a row out of scale beside those it holds
        (:attr:`bandit_core.head.HeadConfig.outlier_ratio`).
    """

    mode: str = "ts"
    alpha: float = 1.0
    lambda_prior: float = 0.25
    a0: float = 6.0
    b0: float = 6.0
    v: float = 1.0
    n_sim: int = 100
    target_rel_error: float | None = None
    max_sim: int = 20_000
    sample_noise: bool = True
    head_bias: bool = True
    head_inputs: bool = False
    outlier_ratio: float | None = 100.0

    extra_params: ClassVar[dict[str, Constraint]] = {
        "mode": OneOf(("ts", "ucb")),
        "alpha": BONUS_SCALE,
        "v": DRAW_SCALE,
        **MONTE_CARLO_PARAMS,
        "sample_noise": IsBool(),
        "head_bias": IsBool(),
        "head_inputs": IsBool(),
        **delegate(
            "BayesianLinearHead", HEAD_PARAMS, ("lambda_prior", "a0", "b0", "outlier_ratio")
        ),
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        self.head_config(1)  # the head validates λ, a0, b0

    def head_config(self, dim: int) -> HeadConfig:
        return HeadConfig(
            dim=dim,
            lambda_prior=self.lambda_prior,
            a0=self.a0,
            b0=self.b0,
            outlier_ratio=self.outlier_ratio,
        )


class _HeadThompson(_ThompsonRule):
    """The joint-model Thompson rule of the linear policies, applied to a neural-linear
    head (one θ draw per simulation, shared by all candidates)."""

    def __init__(self, config: NeuralLinearConfig, head: BayesianLinearHead) -> None:
        self.config = config
        self.model = cast(Any, SimpleNamespace(head=head))


class _HeadUCB(_UCBRule):
    """The LinUCB rule of the linear policies on a neural-linear head's φ."""

    def __init__(self, config: NeuralLinearConfig) -> None:
        self.config = config

    def _first_of_ties(self) -> bool:
        return False  # neural-linear UCB always splits ties uniformly


class NeuralLinear(NeuralPolicy, HeadStatisticsMethods):
    """Neural-linear Thompson sampling (or UCB) with two-speed learning.

    Learned state, besides :class:`NeuralPolicy`'s: ``head`` (a one-head
    :class:`BayesianLinearHead` on φ of dimension ``hidden[-1] (+1)``).
    """

    name = "neural_linear"
    config_class = NeuralLinearConfig
    config: NeuralLinearConfig

    def __init__(self, config: NeuralLinearConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        self._set_head(BayesianLinearHead(self.config.head_config(self.dim_phi)))

    def _set_head(self, head: BayesianLinearHead) -> None:
        self.head = head
        self._rule: _HeadThompson | _HeadUCB
        if self.config.mode == "ucb":
            self._rule = _HeadUCB(self.config)
        else:
            self._rule = _HeadThompson(self.config, head)

    @property
    def dim_phi(self) -> int:
        """Dimension d of φ: last hidden width, + 1 with ``head_bias``, + D with ``head_inputs``."""
        extra = self.features.dim if self.config.head_inputs else 0
        return self.net_.dim_features + int(self.config.head_bias) + extra

    def encode(self, inputs: FloatArray) -> FloatArray:
        """φ for encoder inputs ``(..., D)`` → ``(..., d)`` (float64, inference mode):
        ``[f(z) ; 1 (head_bias) ; z (head_inputs)]``."""
        lead = inputs.shape[:-1]
        flat = inputs.reshape(-1, inputs.shape[-1])
        with torch.inference_mode():
            parts = [to_numpy(self.net_.features(self._tensor(flat[None]))[0])]
        if self.config.head_bias:
            parts.append(np.ones((flat.shape[0], 1)))
        if self.config.head_inputs:
            parts.append(flat)
        phi = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        return phi.reshape(*lead, self.dim_phi)

    def _head_work(self, n: int) -> int:
        d = self.dim_phi
        return linear_work(n, d) + self._rule._exploration_work(n, d)

    # -- decisions ---------------------------------------------------------------
    def _choose(
        self, inputs: FloatArray, rng: np.random.Generator
    ) -> tuple[IntArray, FloatArray, FloatArray, FloatArray]:
        phi = self.encode(inputs)  # (n, K, d): one forward pass for every candidate
        mean = phi @ self.head.theta_[0]
        proj = phi @ self.head.inv_chol_[0].T
        choice, probs, scores = self._rule._explore(mean, proj, None, rng)
        return choice, probs, scores, mean

    def _choose_se(
        self, inputs: FloatArray, rng: np.random.Generator
    ) -> tuple[IntArray, FloatArray, FloatArray, FloatArray, FloatArray | None]:
        if not isinstance(self._rule, _HeadThompson):  # UCB: exact propensities
            return (*self._choose(inputs, rng), None)
        phi = self.encode(inputs)
        mean = phi @ self.head.theta_[0]
        proj = phi @ self.head.inv_chol_[0].T
        choice, probs, scores, se = self._rule._explore_se(mean, proj, None, rng)
        return choice, probs, scores, mean, se

    # -- learning ----------------------------------------------------------------
    def _learn_fast(self, inputs: FloatArray, rewards: FloatArray) -> None:
        phi = self.encode(inputs)
        if phi.shape[0] == 1:
            self.head.update(phi[0], float(rewards[0]))
        else:
            self.head.update_batch(phi, rewards)

    def _revise_fast(self, inputs: FloatArray, old: float, new: float) -> None:
        self.head.revise(self.encode(inputs[None])[0], old, new)

    def _after_retrain(self) -> None:
        self.rebuild_head()

    def rebuild_head(self, chunk_size: int = REBUILD_CHUNK) -> IntArray:
        """Forget the head and rebuild it from every stored observation, re-encoded; the
        indices of the buffered rows it left out.

        Statistics ``(Σφφᵀ, Σrφ, Σr², n)`` are accumulated chunk by chunk and loaded once
        (one O(d³) factorisation); memory is O(d² + chunk_size · d). A row whose new
        features are out of scale beside the rows before it
        (:attr:`bandit_core.HeadConfig.outlier_ratio`) is left out of the head, as
        learning the rows one at a time leaves it out, and stays in the buffer; before,
        the sums took it in (and the in-order fallback raised halfway, the head reset).
        """
        config = self.head.config
        inputs, rewards = self.buffer_.inputs, self.buffer_.rewards
        stats: HeadStatistics | None = None
        refused: list[IntArray] = []
        for start in range(0, inputs.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            phi = self.encode(inputs[rows])
            part, left_out = HeadStatistics.learnt(phi, rewards[rows], None, config, stats)
            refused.append(start + left_out)
            stats = part if stats is None else stats.merge(part, config.gamma)
        out = np.concatenate(refused) if refused else np.zeros(0, dtype=np.intp)
        self.head.reset()
        if stats is None:
            return out
        try:
            self.head.load_statistics(stats.gram[0], stats.xty[0], stats.yty[0], stats.count[0])
            accurate = bool(factor_is_accurate(self.head.precision_[0], self.head.inv_chol_[0]))
        except ValueError:  # the summed precision is singular in float64
            accurate = False
        if not accurate:
            # features so large or collinear that the sums lose the prior's λ: the rows
            # are learnt again one at a time (the head's rank-one updates never form the
            # sums), as online. Before, this rebuild failed at every retraining and the
            # policy refused every later reward for good (numerics pass, stop 50).
            self.head.reset()
            kept = np.ones(inputs.shape[0], dtype=bool)
            kept[out] = False
            for start in range(0, inputs.shape[0], chunk_size):
                mine = np.flatnonzero(kept[start : start + chunk_size]) + start
                self.head.update_batch(self.encode(inputs[mine]), rewards[mine])
        return out

    # -- head statistics (LinearHeadPolicy) ------------------------------------------
    def head_features(
        self, contexts: FloatArray, arm_ids: Sequence[str], arm_features: FloatArray
    ) -> tuple[FloatArray, list[str] | None]:
        """φ = [f(z); 1; z] of logged rows under the frozen network (one shared head),
        encoded :data:`REBUILD_CHUNK` rows at a time."""
        inputs = self.features.build_rows(contexts, arm_features, list(arm_ids))
        parts = [
            self.encode(inputs[i : i + REBUILD_CHUNK])
            for i in range(0, inputs.shape[0], REBUILD_CHUNK)
        ]
        return np.concatenate(parts, axis=0), None

    # -- state -------------------------------------------------------------------
    def _extra_arrays(self) -> dict[str, NDArray[Any]]:
        return self.head.to_arrays("head.")

    def _load_extra(self, arrays: dict[str, NDArray[Any]]) -> None:
        self._set_head(
            BayesianLinearHead.from_arrays(self.config.head_config(self.dim_phi), arrays, "head.")
        )
