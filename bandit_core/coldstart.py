"""An exploration floor for new items only, with exact propensities.

Items with fewer than N impressions are *new*. Among the K candidates of a decision let
``M`` be the new ones and ``w = min(max_share, |M| · p_min)``. The decision picks uniformly
among M with probability ``w`` and follows the inner policy otherwise, so

    p(a) = (1 − w) · p_inner(a) + w · 1[a ∈ M] / |M|  ≥  min(p_min, max_share / |M|)

for every a ∈ M: each new candidate gets ``p_min`` until the new ones together would take
more than ``max_share`` of the decision (after a bulk load most candidates are new, and
the policy must still decide most of the time); established items keep ``(1 − w)`` times
their inner probability. With no new
candidate the inner policy decides alone and no random number is drawn. Which items are
new is decided by the caller (the catalog counts impressions) and is fixed for the
decision, so the propensity is exact given it, as for :class:`ExplorationFloor`.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np

from bandit_core._validation import FloatArray, Interval, validate_params
from bandit_core.montecarlo import mixture_se
from bandit_core.policies.base import batch_of, check_candidates, check_rng
from bandit_core.policies.wrappers import decide_only, record_exposure
from bandit_core.slates import Selector
from bandit_core.types import Candidates, Decision, DecisionBatch


class ColdStartFloor:
    """Wrap a policy so that the candidates in ``new_ids`` get probability ≥ ``p_min``.

    Parameters
    ----------
    inner : Policy
    p_min : float in (0, 1]
    new_ids : collection of str
        Arm ids that count as new for the decisions made through this object.
    max_share : float in (0, 1]
        Most probability the floor may move to the new candidates together.
    """

    def __init__(
        self, inner: Selector, p_min: float, new_ids: Collection[str], max_share: float = 1.0
    ) -> None:
        validate_params(
            "ColdStartFloor",
            {"p_min": p_min, "max_share": max_share},
            {
                "p_min": Interval(float, 0.0, 1.0, closed="right"),
                "max_share": Interval(float, 0.0, 1.0, closed="right"),
            },
        )
        self.inner = inner
        self.p_min = float(p_min)
        self.max_share = float(max_share)
        self.new_ids = frozenset(str(a) for a in new_ids)

    @property
    def name(self) -> str:
        inner_name: str = getattr(self.inner, "name", type(self.inner).__name__)
        return f"{inner_name}+cold_floor"

    @property
    def model_version(self) -> str | None:
        version: str | None = getattr(self.inner, "model_version", None)
        return version

    def new_mask(self, candidates: Candidates) -> np.ndarray:
        """Boolean mask (K,) of the new candidates."""
        return np.fromiter(
            (a in self.new_ids for a in candidates.ids), dtype=bool, count=len(candidates)
        )

    def _mixture(self, probabilities: FloatArray, new: np.ndarray) -> tuple[float, FloatArray]:
        n_new = int(new.sum())
        weight = min(self.max_share, n_new * self.p_min)
        # p_min itself where it is not capped: (n · p_min) / n rounds below p_min
        share = self.p_min if weight == n_new * self.p_min else weight / n_new
        out: FloatArray = (1.0 - weight) * probabilities + share * new
        return weight, out

    def select(self, context: Any, candidates: Any, rng: np.random.Generator) -> Decision:
        """:meth:`decide`, then the served arm counted by an exposure cap inside: the cap
        counted the arm the inner policy chose, not the new item the floor served
        (audit, stop 55)."""
        decision = self.decide(context, candidates, rng)
        record_exposure(self.inner, decision.arm_id)
        return decision

    def decide(self, context: Any, candidates: Any, rng: np.random.Generator) -> Decision:
        """The decision, with nothing recorded."""
        cands = check_candidates(candidates, None)
        inner = decide_only(self.inner, context, cands, rng)
        new = self.new_mask(cands)
        if not new.any():
            return inner
        weight, probs = self._mixture(inner.probabilities[None, :], new)
        rng = check_rng(rng)
        arm = inner.arm
        switched = False
        if rng.random() < weight:
            arm = int(np.flatnonzero(new)[rng.integers(int(new.sum()))])
            switched = arm != inner.arm
        se = mixture_se(batch_of(inner), np.array([arm]), 1.0 - weight)
        return Decision(
            arm=arm,
            arm_id=cands.ids[arm],
            propensity=float(probs[0, arm]),
            probabilities=probs[0],
            scores=inner.scores,
            policy=self.name,
            explored=inner.explored or switched,
            model_version=inner.model_version,
            propensity_se=None if se is None else float(se[0]),
        )

    def select_batch(
        self, contexts: Any, candidates: Any, rng: np.random.Generator
    ) -> DecisionBatch:
        cands = check_candidates(candidates, None)
        inner = self.inner.select_batch(contexts, cands, rng)
        new = self.new_mask(cands)
        if not new.any():
            return inner
        weight, probs = self._mixture(inner.probabilities, new)
        rng = check_rng(rng)
        n = probs.shape[0]
        floor_branch = rng.random(n) < weight
        new_index = np.flatnonzero(new)
        floor_arm = new_index[rng.integers(0, new_index.shape[0], size=n)]
        arms = np.where(floor_branch, floor_arm, inner.arms).astype(np.intp)
        rows = np.arange(n)
        se = mixture_se(inner, arms, 1.0 - weight)
        return DecisionBatch(arms, probs[rows, arms], probs, inner.scores, self.name, se)
