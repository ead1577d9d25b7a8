"""MC-dropout bandit (Gal & Ghahramani, ICML 2016; the "Dropout" policy of Riquelme,
Tucker & Snoek, ICLR 2018).

The network is trained with dropout on every hidden layer; at decision time stochastic
passes approximate posterior draws. All passes are one forward call: the masks carry a
leading pass axis that broadcasts through the layers. By default the drop rates are
learned with the network (concrete dropout, Gal, Hron & Kendall, NeurIPS 2017), starting
at ``dropout``: with a fixed rate the spread of the passes does not shrink as data grows
(Osband 2016, "Risk versus uncertainty in deep learning"), with learned rates it does;
``learn_dropout=False`` gives the fixed-rate variant.

* ``mode="ts"`` — ``n_sim + 1`` passes with fresh masks drawn from the decision ``rng``
  (one mask per pass and context, shared by the candidates: one sampled network scores the
  whole candidate set); pass 0 decides and the argmax frequencies over all passes are the
  Monte-Carlo propensities (:func:`~bandit_core.exploration.thompson_choice`).
* ``mode="ucb"`` — score ``mean + α · std`` over ``n_passes`` passes. The masks of these
  passes are drawn from the training generator after every retraining and then held fixed
  (common random numbers), so the score is a deterministic function of the input and the
  argmax propensities are exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from numpy.typing import NDArray

from bandit_core._validation import BONUS_SCALE, Constraint, FloatArray, Interval, IsBool, OneOf
from bandit_core.exploration import (
    choice_standard_error,
    greedy_probabilities,
    sample_categorical,
    thompson_choice,
)
from bandit_core.montecarlo import DRAWS
from bandit_core.nets import (
    DTYPE,
    ConcreteDropout,
    TrainSpec,
    dropout_masks,
    generator_from,
    load_module_arrays,
    module_arrays,
    to_numpy,
)
from bandit_core.policies.neural.base import IntArray, NeuralConfig, NeuralPolicy

#: Upper bound on the hidden activations of one block of TS passes (passes × rows × K × width).
_PASS_BLOCK = 4_000_000


@dataclass(frozen=True, kw_only=True)
class DropoutConfig(NeuralConfig):
    """:class:`NeuralConfig` plus the drop probability ``dropout`` (initial value when
    ``learn_dropout``), ``mode`` ("ts" or "ucb"), ``n_sim`` (TS: extra passes for the
    propensities), ``n_passes`` (UCB: fixed passes) and the UCB width ``alpha``."""

    dropout: float = 0.2
    learn_dropout: bool = True
    mode: str = "ts"
    n_sim: int = 100
    n_passes: int = 20
    alpha: float = 1.0

    extra_params: ClassVar[dict[str, Constraint]] = {
        "dropout": Interval(float, 0.0, 1.0, closed="left"),
        "learn_dropout": IsBool(),
        "mode": OneOf(("ucb", "ts")),
        "n_sim": DRAWS,
        "n_passes": Interval(int, 2, None),
        "alpha": BONUS_SCALE,
    }


class MCDropout(NeuralPolicy):
    """Dropout network with Thompson (one pass) or UCB (mean + α·std) exploration.

    Learned state, besides :class:`NeuralPolicy`'s: ``concrete_`` (the learned rates, or
    None) and ``ucb_masks_`` (one ``(n_passes, 1, 1, width)`` mask per hidden layer,
    redrawn after every retraining).
    """

    name = "dropout"
    config_class = DropoutConfig
    config: DropoutConfig

    def __init__(self, config: DropoutConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        cfg = self.config
        self.concrete_: ConcreteDropout | None = None
        if cfg.learn_dropout:
            if cfg.dropout <= 0.0:
                raise ValueError(
                    "The 'dropout' parameter of DropoutConfig must be in (0, 1) with "
                    f"learn_dropout=True (it is the initial rate); got {cfg.dropout}."
                )
            self.concrete_ = ConcreteDropout(len(cfg.hidden), cfg.dropout).to(self.device)
        self._draw_ucb_masks()

    def rates(self) -> list[float]:
        """Current drop probability of every hidden layer."""
        if self.concrete_ is not None:
            return self.concrete_.rates()
        return [self.config.dropout] * len(self.config.hidden)

    def _concrete(self) -> ConcreteDropout | None:
        return self.concrete_

    def _train_spec(self) -> TrainSpec:
        return self.config.train_spec(dropout=self.config.dropout)

    def _passes(self) -> int:
        cfg = self.config
        return cfg.n_passes if cfg.mode == "ucb" else cfg.n_sim + 1

    def _draw_ucb_masks(self) -> None:
        cfg = self.config
        shape = (cfg.n_passes, 1, 1)
        self.ucb_masks_ = dropout_masks(shape, cfg.hidden, self.rates(), self.generator_)

    def _after_retrain(self) -> None:
        self._draw_ucb_masks()

    def pass_scores(self, inputs: FloatArray, masks: list[torch.Tensor]) -> FloatArray:
        """Predicted mean reward per pass for inputs ``(n, K, D)`` and masks of shape
        ``(S, n or 1, 1, width)`` → ``(S, n, K)``."""
        with torch.inference_mode():
            on_device = [m.to(self.device) for m in masks]
            out = self._loss_link(self.net_(self._tensor(inputs[None]), on_device))
        return to_numpy(out)

    def _choose(
        self, inputs: FloatArray, rng: np.random.Generator
    ) -> tuple[IntArray, FloatArray, FloatArray, FloatArray]:
        return self._choose_se(inputs, rng)[:4]

    def _choose_se(
        self, inputs: FloatArray, rng: np.random.Generator
    ) -> tuple[IntArray, FloatArray, FloatArray, FloatArray, FloatArray | None]:
        """UCB's propensities are exact (fixed masks); Thompson's are the frequencies of
        ``n_sim + 1`` passes, with their standard error (it reported none: "exact")."""
        cfg = self.config
        n = inputs.shape[0]
        if cfg.mode == "ucb":
            scores = self.pass_scores(inputs, self.ucb_masks_)
            mean = scores.mean(axis=0)
            ucb = mean + cfg.alpha * scores.std(axis=0)
            probs = greedy_probabilities(ucb)
            return sample_categorical(probs, rng), probs, ucb, mean, None
        gen = generator_from(rng)
        draws = cfg.n_sim + 1
        step = max(1, _PASS_BLOCK // (draws * inputs.shape[1] * max(cfg.hidden)))
        parts = []
        for start in range(0, n, step):
            block = inputs[start : start + step]
            masks = dropout_masks((draws, block.shape[0], 1), cfg.hidden, self.rates(), gen)
            parts.append(self.pass_scores(block, masks).transpose(1, 0, 2))  # (m, S, K)
        sampled = np.concatenate(parts)
        choice, probs = thompson_choice(sampled, rng)
        se = choice_standard_error(sampled, choice)
        return choice, probs, sampled[:, 0, :], sampled.mean(axis=1), se

    def _extra_arrays(self) -> dict[str, NDArray[Any]]:
        out = {f"ucb_masks.{i}": m.numpy().copy() for i, m in enumerate(self.ucb_masks_)}
        if self.concrete_ is not None:
            out.update(module_arrays(self.concrete_, "concrete."))
        return out

    def _load_extra(self, arrays: dict[str, NDArray[Any]]) -> None:
        if self.concrete_ is not None:
            load_module_arrays(self.concrete_, arrays, "concrete.")
            keep = 1.0 - torch.sigmoid(self.concrete_.logit_p.detach()).cpu()
            if not bool((keep > 0).all()):
                # a rate of 1 (logit 40 is finite) dropped every unit: NaN propensities
                raise ValueError(
                    "state array 'concrete.logit_p' gives a dropout rate of 1 (every unit "
                    "dropped); a learnt rate is below 1."
                )
        masks = []
        for i, current in enumerate(self.ucb_masks_):
            value = np.asarray(arrays[f"ucb_masks.{i}"])
            if value.shape != tuple(current.shape):
                raise ValueError(
                    f"state array 'ucb_masks.{i}' must have shape {tuple(current.shape)}; "
                    f"got {value.shape}."
                )
            masks.append(torch.as_tensor(value, dtype=DTYPE))
        self.ucb_masks_ = masks
