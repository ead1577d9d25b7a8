"""Bootstrapped neural ensemble (Osband, Blundell, Pritzel & Van Roy, NeurIPS 2016; the
"BootstrappedNN" of Riquelme, Tucker & Snoek, ICLR 2018).

``M`` networks, each trained on its own online bootstrap of the replay buffer: every
stored row carries a weight ``w_m ~ Poisson(1)`` per member, drawn once when the row is
stored (Oza & Russell, AISTATS 2001), so a member keeps its resample across retrainings.
All members score all candidates in one batched forward pass.

* ``mode="ucb"`` — score ``mean_m + β · std_m`` across members; argmax with ties split
  uniformly, so the propensities are exact;
* ``mode="ts"`` — draw one member uniformly per decision and take its argmax; the exact
  choice probability is ``p(a) = (1/M) Σ_m 1[a ∈ argmax_m] / |argmax_m|``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from bandit_core._validation import BONUS_SCALE, Constraint, FloatArray, Interval, OneOf
from bandit_core.exploration import greedy_probabilities, sample_categorical
from bandit_core.nets import to_numpy
from bandit_core.policies.neural.base import IntArray, NeuralConfig, NeuralPolicy


@dataclass(frozen=True, kw_only=True)
class EnsembleConfig(NeuralConfig):
    """:class:`NeuralConfig` plus ``n_members`` (M), ``mode`` ("ucb" or "ts") and the UCB
    width ``beta``."""

    n_members: int = 5
    mode: str = "ucb"
    beta: float = 1.0

    extra_params: ClassVar[dict[str, Constraint]] = {
        "n_members": Interval(int, 1, None),
        "mode": OneOf(("ucb", "ts")),
        "beta": BONUS_SCALE,
    }


class BootstrappedEnsemble(NeuralPolicy):
    """M bootstrapped networks; UCB or Thompson exploration across members."""

    name = "ensemble"
    config_class = EnsembleConfig
    config: EnsembleConfig

    def _members(self) -> int:
        return self.config.n_members

    def _n_weights(self) -> int:
        return self.config.n_members

    def _row_weights(self, m: int) -> FloatArray:
        """Poisson(1) weights (m, M), one row at a time so a batch update draws the same
        numbers as row-by-row updates."""
        rates = torch.ones(1, self.config.n_members)
        rows = [torch.poisson(rates, generator=self.generator_) for _ in range(m)]
        return to_numpy(torch.cat(rows)) if rows else np.zeros((0, self.config.n_members))

    def member_scores(self, inputs: FloatArray) -> FloatArray:
        """Predicted mean reward of every member for inputs ``(n, K, D)`` → ``(M, n, K)``."""
        n, k, dim = inputs.shape
        with torch.inference_mode():
            out = self._loss_link(self.net_(self._tensor(inputs.reshape(1, n * k, dim))))
        return to_numpy(out).reshape(self.config.n_members, n, k)

    def _choose(
        self, inputs: FloatArray, rng: np.random.Generator
    ) -> tuple[IntArray, FloatArray, FloatArray, FloatArray]:
        scores = self.member_scores(inputs)  # (M, n, K)
        mean = scores.mean(axis=0)
        if self.config.mode == "ucb":
            ucb = mean + self.config.beta * scores.std(axis=0)
            probs = greedy_probabilities(ucb)
            return sample_categorical(probs, rng), probs, ucb, mean
        per_member = greedy_probabilities(scores)  # (M, n, K): ties split within a member
        probs = per_member.mean(axis=0)
        n = scores.shape[1]
        member = rng.integers(0, self.config.n_members, size=n)
        rows = np.arange(n)
        choice = sample_categorical(per_member[member, rows], rng)
        return choice, probs, scores[member, rows], mean
