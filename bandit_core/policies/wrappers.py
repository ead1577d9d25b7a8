"""Wrappers that change how a policy explores while keeping its propensities exact."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from bandit_core._validation import Interval, validate_params
from bandit_core.exploration import mix_uniform
from bandit_core.montecarlo import mixture_se
from bandit_core.policies.base import (
    Policy,
    batch_of,
    check_candidates,
    check_rng,
    to_decision,
)
from bandit_core.types import SCHEMA_VERSION, Candidates, Decision, DecisionBatch, PolicyState


def _inner_state(state: PolicyState) -> PolicyState:
    inner = state.config["inner"]
    arrays = {k[len("inner.") :]: v for k, v in state.arrays.items() if k.startswith("inner.")}
    return PolicyState(inner["policy"], inner["config"], arrays, state.schema_version)


def _nest(
    state: PolicyState, config: dict[str, Any], name: str, extra: dict[str, Any]
) -> PolicyState:
    arrays = {"inner." + k: v for k, v in state.arrays.items()}
    arrays.update(extra)
    inner = {"policy": state.policy, "config": state.config}
    return PolicyState(name, {**config, "inner": inner}, arrays, SCHEMA_VERSION)


def _restore_inner(state: PolicyState) -> Policy:
    from bandit_core.policies.registry import policy_from_state

    return policy_from_state(_inner_state(state))


class _Wrapper:
    kind: str

    def __init__(self, inner: Policy) -> None:
        if not isinstance(inner, Policy):
            raise TypeError(
                f"inner must implement the Policy protocol; got {type(inner).__name__}."
            )
        self.inner = inner

    @property
    def name(self) -> str:
        return f"{self.inner.name}+{self.kind}"

    def select(self, context: Any, candidates: Any, rng: np.random.Generator) -> Decision:
        """:meth:`decide`, then the arm it serves counted by the :class:`ExposureCap`
        inside, if any (the served arm, whichever layer chose it)."""
        decision = self.decide(context, candidates, rng)
        record_exposure(self.inner, decision.arm_id)
        return decision

    def decide(self, context: Any, candidates: Any, rng: np.random.Generator) -> Decision:
        """The decision, with nothing recorded (each wrapper's own)."""
        raise NotImplementedError

    @property
    def model_version(self) -> str | None:
        return self.inner.model_version

    @model_version.setter
    def model_version(self, value: str | None) -> None:
        self.inner.model_version = value

    def update(self, context: Any, arm_id: Any, reward: Any, arm_features: Any = None) -> None:
        self.inner.update(context, arm_id, reward, arm_features)

    def update_batch(
        self, contexts: Any, arm_ids: Any, rewards: Any, arm_features: Any = None
    ) -> None:
        self.inner.update_batch(contexts, arm_ids, rewards, arm_features)

    def revise_reward(
        self,
        context: Any,
        arm_id: Any,
        old_reward: Any,
        new_reward: Any,
        arm_features: Any = None,
    ) -> None:
        """Forwarded to the inner policy (see its ``revise_reward``)."""
        revise_reward(self.inner, context, arm_id, old_reward, new_reward, arm_features)


class ExplorationFloor(_Wrapper):
    """Every candidate gets probability at least ``p_min``.

    With ``w = min(1, K · p_min)`` the wrapper picks uniformly with probability ``w`` and
    follows the inner policy otherwise, so ``p(a) = w/K + (1 − w) p_inner(a) ≥ p_min``
    exactly (and uniform when ``p_min ≥ 1/K``). Unbiased off-policy evaluation of any
    other policy needs every logging propensity bounded away from 0: this is that bound.
    """

    kind = "floor"

    def __init__(self, inner: Policy, p_min: float = 0.01) -> None:
        super().__init__(inner)
        validate_params(
            "ExplorationFloor",
            {"p_min": p_min},
            {"p_min": Interval(float, 0.0, 1.0, closed="right")},
        )
        self.p_min = float(p_min)

    def _mix(
        self, batch: DecisionBatch, rng: np.random.Generator
    ) -> tuple[DecisionBatch, np.ndarray]:
        n, k = batch.probabilities.shape
        weight = min(1.0, k * self.p_min)
        uniform_branch = rng.random(n) < weight
        uniform_arm = rng.integers(0, k, size=n)
        arms = np.where(uniform_branch, uniform_arm, batch.arms).astype(np.intp)
        probs = mix_uniform(batch.probabilities, weight, self.p_min)
        rows = np.arange(n)
        se = mixture_se(batch, arms, 1.0 - weight)
        out = DecisionBatch(arms, probs[rows, arms], probs, batch.scores, self.name, se)
        return out, uniform_branch & (arms != batch.arms)

    def decide(self, context: Any, candidates: Any, rng: np.random.Generator) -> Decision:
        cands = check_candidates(candidates, None)
        inner = decide_only(self.inner, context, cands, rng)
        batch = batch_of(inner)
        mixed, switched = self._mix(batch, check_rng(rng))
        return to_decision(mixed, cands, inner.explored or bool(switched[0]), self.model_version)

    def select_batch(
        self, contexts: Any, candidates: Any, rng: np.random.Generator
    ) -> DecisionBatch:
        return self._mix(self.inner.select_batch(contexts, candidates, rng), check_rng(rng))[0]

    def to_state(self) -> PolicyState:
        return _nest(self.inner.to_state(), {"p_min": self.p_min}, "exploration_floor", {})

    @classmethod
    def from_state(cls, state: PolicyState) -> ExplorationFloor:
        return cls(_restore_inner(state), p_min=state.config["p_min"])


class DelegatingWrapper(_Wrapper):
    """A wrapper that reads through to its inner model (head, features, rebuild…), so
    training and serving treat the wrapped model as the model it wraps."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def state_with_statistics(self, stats: Any) -> PolicyState:
        """This wrapper's state around the inner model's state rebuilt from ``stats``
        (:class:`bandit_core.head_statistics.LinearHeadPolicy`)."""
        mine = self.to_state()
        inner = self.inner.state_with_statistics(stats)  # type: ignore[attr-defined]
        extra = {k: v for k, v in mine.arrays.items() if not k.startswith("inner.")}
        config = {k: v for k, v in mine.config.items() if k != "inner"}
        return _nest(inner, config, mine.policy, extra)


class ExposureCap(DelegatingWrapper):
    """No arm may take more than ``max_share`` of the last ``window`` decisions.

    Arms at or over their share are removed from the candidate set before the inner
    policy decides (unless that would remove every candidate); they get probability 0 and
    the others keep the inner policy's exact probabilities. The cap is a function of the
    recorded history, which is part of the state, so propensities stay exact given it.
    ``select`` records the exposure; ``select_batch`` applies the current cap without
    recording (a what-if for replay and evaluation).
    """

    kind = "cap"

    def __init__(
        self, inner: Policy, max_share: float = 0.5, window: int = 1000, min_decisions: int = 100
    ) -> None:
        super().__init__(inner)
        validate_params(
            "ExposureCap",
            {"max_share": max_share, "window": window, "min_decisions": min_decisions},
            {
                "max_share": Interval(float, 0.0, 1.0, closed="right"),
                "window": Interval(int, 1, None),
                "min_decisions": Interval(int, 0, None),
            },
        )
        self.max_share = float(max_share)
        self.window = int(window)
        self.min_decisions = int(min_decisions)
        self._recent: list[str] = []
        self._next = 0
        self._counts: Counter[str] = Counter()

    def allowed(self, candidates: Candidates) -> np.ndarray:
        """Indices of the candidates currently under their cap."""
        total = len(self._recent)
        everyone = np.arange(len(candidates))
        if total < max(1, self.min_decisions):
            return everyone
        limit = self.max_share * total
        keep = np.fromiter(
            (self._counts[a] < limit for a in candidates.ids), dtype=bool, count=len(candidates)
        )
        return everyone if not keep.any() else everyone[keep]

    def record(self, arm_id: str) -> None:
        """Count ``arm_id`` as served (what :meth:`select` does after deciding; a wrapper
        that may serve another arm than this layer chose records that one instead)."""
        if len(self._recent) < self.window:
            self._recent.append(arm_id)
        else:
            oldest = self._recent[self._next]
            self._counts[oldest] -= 1
            if not self._counts[oldest]:  # only the window's arms: bounded by ``window``
                del self._counts[oldest]
            self._recent[self._next] = arm_id
            self._next = (self._next + 1) % self.window
        self._counts[arm_id] += 1

    def _expand(self, batch: DecisionBatch, keep: np.ndarray, k: int) -> DecisionBatch:
        n = batch.probabilities.shape[0]
        probs = np.zeros((n, k))
        probs[:, keep] = batch.probabilities
        scores = np.full((n, k), -np.inf)
        scores[:, keep] = batch.scores
        return DecisionBatch(
            keep[batch.arms], batch.propensities, probs, scores, self.name, batch.propensity_se
        )

    def select(self, context: Any, candidates: Any, rng: np.random.Generator) -> Decision:
        decision = self.decide(context, candidates, rng)
        record_exposure(self, decision.arm_id)  # this cap and any inside it
        return decision

    def decide(self, context: Any, candidates: Any, rng: np.random.Generator) -> Decision:
        """:meth:`select` without recording the exposure."""
        cands = check_candidates(candidates, None)
        keep = self.allowed(cands)
        inner = decide_only(self.inner, context, cands.subset(keep), rng)
        batch = self._expand(
            batch_of(inner),
            keep,
            len(cands),
        )
        return to_decision(batch, cands, inner.explored, self.model_version)

    def select_batch(
        self, contexts: Any, candidates: Any, rng: np.random.Generator
    ) -> DecisionBatch:
        cands = check_candidates(candidates, None)
        keep = self.allowed(cands)
        return self._expand(
            self.inner.select_batch(contexts, cands.subset(keep), rng), keep, len(cands)
        )

    def to_state(self) -> PolicyState:
        config = {
            "max_share": self.max_share,
            "window": self.window,
            "min_decisions": self.min_decisions,
            "next": self._next,
        }
        extra = {"recent": np.array(self._recent, dtype=np.str_)}
        return _nest(self.inner.to_state(), config, "exposure_cap", extra)

    @classmethod
    def from_state(cls, state: PolicyState) -> ExposureCap:
        cfg = state.config
        policy = cls(_restore_inner(state), cfg["max_share"], cfg["window"], cfg["min_decisions"])
        policy._recent = [str(a) for a in state.arrays["recent"]]
        policy._next = int(cfg["next"])
        full = len(policy._recent) == policy.window
        if len(policy._recent) > policy.window or not (
            0 <= policy._next < policy.window and (full or policy._next == 0)
        ):
            raise ValueError(
                f"exposure_cap state: 'recent' holds {len(policy._recent)} arms and 'next' "
                f"is {policy._next}; the window is {policy.window} (next in [0, window), "
                "0 until the window is full)."
            )
        policy._counts = Counter(policy._recent)
        return policy


def decide_only(policy: Any, context: Any, candidates: Any, rng: np.random.Generator) -> Decision:
    """``policy``'s decision with nothing recorded: its ``decide`` where it has one of its
    own (a wrapper: an :class:`ExposureCap` inside counts nothing yet), else its
    ``select``. A layer that may serve another arm than the one below it chose decides
    through this and records the arm served (:func:`record_exposure`): the cap counted the
    arm its inner policy chose, not the arm a floor above it served (audit, stop 55)."""
    if isinstance(policy, _Wrapper) or hasattr(type(policy), "decide"):
        decision: Decision = policy.decide(context, candidates, rng)
    else:
        decision = policy.select(context, candidates, rng)
    return decision


def record_exposure(policy: Any, arm_id: str) -> None:
    """Count ``arm_id`` as served by every :class:`ExposureCap` in ``policy``'s chain of
    wrappers (nothing when there is none)."""
    while policy is not None:
        if isinstance(policy, ExposureCap):
            policy.record(arm_id)
        policy = policy.__dict__.get("inner") if hasattr(policy, "__dict__") else None


def records_on_select(policy: Any) -> bool:
    """Whether ``select`` changes the policy's state (an :class:`ExposureCap`, through
    wrappers, records what it showed): such a policy is never copied for a decision nor
    read while it decides (its state is taken where it decides)."""
    while policy is not None:
        if isinstance(policy, ExposureCap):
            return True
        policy = getattr(policy, "inner", None)
    return False


def revise_reward(
    policy: Any,
    context: Any,
    arm_id: Any,
    old_reward: Any,
    new_reward: Any,
    arm_features: Any = None,
    **extra: Any,
) -> None:
    """Change the reward of an update ``policy`` already made (a summed duplicate reward).

    Raises ``ValueError`` when the policy cannot revise a reward exactly online.
    """
    method = getattr(policy, "revise_reward", None)
    if method is None:
        raise ValueError(f"policy {policy.name!r} cannot revise a learnt reward online.")
    method(context, arm_id, old_reward, new_reward, arm_features, **extra)
