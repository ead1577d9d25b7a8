"""Position bias: a model that knows where on a slate it is scoring.

Whether a shown item is clicked depends on where it was shown as well as on the item (the
position-based click model: P(click) = P(examine position j) · P(attracted by a); Craswell
et al., WSDM 2008; Chuklin, Markov & de Rijke, *Click Models for Web Search*, 2015, §3.3).
A shared linear model learns one bias coefficient per position when every candidate's
features carry a one-hot of the position being filled,

    φ(x, a, j) = φ_inner(x, [x_a ; e_j]),    e_j ∈ {0, 1}^L,

(and, with interactions, one user term per position). :class:`PositionBias` wraps such an
inner policy — its ``dim_arm`` is the item width plus ``L = position_slots`` — and keeps
item features and position apart in its interface: it decides at position 0 unless told
otherwise (a single decision is the top of a one-item slate) and learns each reward with
the one-hot of the position the item was shown at. The number of slots is part of the
wrapper's state, so a model carries its own position bias: serving reads it from the
model and training sets it from the logs (the longest slate in the window).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bandit_core._validation import FloatArray, Interval, validate_params
from bandit_core.policies.base import Policy, arm_width, check_candidates
from bandit_core.policies.wrappers import (
    _nest,
    _restore_inner,
    _Wrapper,
    decide_only,
    revise_reward,
)
from bandit_core.types import Candidates, Decision, DecisionBatch, PolicyState


def with_position(features: Any, position: int, position_slots: int) -> FloatArray:
    """``[x_arm ; e_position]``: candidate features with a position one-hot appended.

    Parameters
    ----------
    features : array-like of shape (K, dim_arm) or (dim_arm,)
    position : int in [0, position_slots)
    position_slots : int
        Width of the one-hot block (the longest slate the model knows).

    Returns
    -------
    ndarray of shape (K, dim_arm + position_slots) (or (dim_arm + position_slots,))
    """
    validate_params(
        "with_position",
        {"position_slots": position_slots},
        {"position_slots": Interval(int, 1, None)},
    )
    validate_params(
        "with_position",
        {"position": position},
        {"position": Interval(int, 0, position_slots - 1)},
    )
    arr = np.asarray(features, dtype=np.float64)
    if arr.ndim not in (1, 2):
        raise ValueError(
            f"features must be a (K, dim_arm) matrix or a (dim_arm,) vector; got shape {arr.shape}."
        )
    block = np.zeros((*arr.shape[:-1], position_slots))
    block[..., position] = 1.0
    out: FloatArray = np.concatenate([arr, block], axis=-1)
    return out


def with_positions(features: Any, positions: Any, position_slots: int) -> FloatArray:
    """Row i of ``features`` (n, dim_arm) with the one-hot of ``positions[i]`` appended.

    Returns
    -------
    ndarray of shape (n, dim_arm + position_slots)
    """
    validate_params(
        "with_positions",
        {"position_slots": position_slots},
        {"position_slots": Interval(int, 1, None)},
    )
    arr = np.asarray(features, dtype=np.float64)
    pos = np.asarray(positions)
    if arr.ndim != 2:
        raise ValueError(f"features must be a (n, dim_arm) matrix; got shape {arr.shape}.")
    if pos.shape != (arr.shape[0],) or (pos.size and pos.dtype.kind not in "iu"):
        raise ValueError(
            f"positions must be {arr.shape[0]} integers (one per row); got shape {pos.shape}, "
            f"dtype {pos.dtype}."
        )
    bad = (pos < 0) | (pos >= position_slots)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"positions must be in [0, position_slots = {position_slots}); got {pos[i]} at "
            f"index {i}."
        )
    block = np.zeros((arr.shape[0], position_slots))
    block[np.arange(arr.shape[0]), pos.astype(np.intp)] = 1.0
    out: FloatArray = np.hstack([arr, block])
    return out


class PositionBias(_Wrapper):
    """An inner shared policy scored on ``[x_arm ; e_position]``.

    Parameters
    ----------
    inner : Policy
        A shared model (linear or neural) with ``dim_arm = item width + position_slots``.
    position_slots : int
        Positions the model distinguishes (the longest slate it serves).

    Attributes
    ----------
    dim_item : int
        Width of the item features it accepts (``inner dim_arm - position_slots``).

    Notes
    -----
    ``select``/``select_batch`` take a keyword ``position`` (default 0), ``update`` a
    ``position`` and ``update_batch`` ``positions`` (default all 0); every one of them
    takes the item's own ``dim_item`` features. :func:`bandit_core.slates.select_slate`
    fills position j with ``position = j``.
    """

    kind = "position"

    def __init__(self, inner: Policy, position_slots: int) -> None:
        super().__init__(inner)
        validate_params(
            "PositionBias",
            {"position_slots": position_slots},
            {"position_slots": Interval(int, 1, None)},
        )
        width = arm_width(inner)
        if width <= position_slots:
            raise ValueError(
                f"PositionBias needs a shared inner policy whose dim_arm is the item width plus "
                f"position_slots = {position_slots}; {inner.name} has dim_arm = {width}."
            )
        self.position_slots = int(position_slots)
        self.dim_item = width - self.position_slots

    def at(self, candidates: Any, position: int) -> Candidates:
        """The candidates as the inner model sees them at ``position``."""
        cands = check_candidates(candidates, self.dim_item)
        return Candidates(cands.ids, with_position(cands.features, position, self.position_slots))

    def select(
        self, context: Any, candidates: Any, rng: np.random.Generator, *, position: int = 0
    ) -> Decision:
        return self.inner.select(context, self.at(candidates, position), rng)

    def decide(
        self, context: Any, candidates: Any, rng: np.random.Generator, *, position: int = 0
    ) -> Decision:
        return decide_only(self.inner, context, self.at(candidates, position), rng)

    def select_batch(
        self, contexts: Any, candidates: Any, rng: np.random.Generator, *, position: int = 0
    ) -> DecisionBatch:
        return self.inner.select_batch(contexts, self.at(candidates, position), rng)

    def _features(self, arm_features: Any, n: int) -> FloatArray:
        if arm_features is None:
            raise ValueError(
                f"arm_features is required: the policy uses {self.dim_item} item features "
                "(plus the position)."
            )
        feats = np.asarray(arm_features, dtype=np.float64)
        if feats.ndim == 1:
            feats = feats[None, :]
        if feats.ndim != 2 or feats.shape[0] != n:
            raise ValueError(
                f"arm_features must hold {n} row(s) of item features; got shape "
                f"{np.shape(arm_features)}."
            )
        if feats.shape[1] != self.dim_item:
            raise ValueError(
                f"arm_features must have {self.dim_item} columns (the item features, without "
                f"the position one-hot); got {feats.shape[1]}."
            )
        return feats

    def update(
        self,
        context: Any,
        arm_id: Any,
        reward: Any,
        arm_features: Any = None,
        *,
        position: int = 0,
    ) -> None:
        """Learn one reward of the item shown at ``position``."""
        feats = with_position(self._features(arm_features, 1)[0], position, self.position_slots)
        self.inner.update(context, arm_id, reward, feats)

    def revise_reward(
        self,
        context: Any,
        arm_id: Any,
        old_reward: Any,
        new_reward: Any,
        arm_features: Any = None,
        *,
        position: int = 0,
    ) -> None:
        """Revise the reward learnt for the item shown at ``position``."""
        feats = with_position(self._features(arm_features, 1)[0], position, self.position_slots)
        revise_reward(self.inner, context, arm_id, old_reward, new_reward, feats)

    def update_batch(
        self,
        contexts: Any,
        arm_ids: Any,
        rewards: Any,
        arm_features: Any = None,
        *,
        positions: Any = None,
    ) -> None:
        """Learn ``n`` rewards in order, row i at ``positions[i]`` (default 0)."""
        n = len(arm_ids)
        pos = np.zeros(n, dtype=np.intp) if positions is None else np.asarray(positions)
        feats = with_positions(self._features(arm_features, n), pos, self.position_slots)
        self.inner.update_batch(contexts, arm_ids, rewards, feats)

    def to_state(self) -> PolicyState:
        config = {"position_slots": self.position_slots}
        return _nest(self.inner.to_state(), config, "position_bias", {})

    @classmethod
    def from_state(cls, state: PolicyState) -> PositionBias:
        return cls(_restore_inner(state), position_slots=state.config["position_slots"])


def split_position(policy: Any) -> tuple[Any, int | None]:
    """``(inner, position_slots)`` of a :class:`PositionBias`, ``(policy, None)`` otherwise."""
    if isinstance(policy, PositionBias):
        return policy.inner, policy.position_slots
    return policy, None


def update_at(
    policy: Any,
    context: Any,
    arm_id: Any,
    reward: Any,
    arm_features: Any,
    position: int | None,
) -> None:
    """Learn one reward of the item shown at ``position`` (None: position 0): with its
    position one-hot when the policy models position bias, from the item alone when not."""
    if isinstance(policy, PositionBias):
        policy.update(context, arm_id, reward, arm_features, position=position or 0)
    else:
        policy.update(context, arm_id, reward, arm_features)


def update_batch_at(
    policy: Any,
    contexts: Any,
    arm_ids: Any,
    rewards: Any,
    arm_features: Any,
    positions: Any,
) -> None:
    """:func:`update_at` for ``n`` rows in order (``positions`` (n,) or None)."""
    if isinstance(policy, PositionBias):
        policy.update_batch(contexts, arm_ids, rewards, arm_features, positions=positions)
    else:
        policy.update_batch(contexts, arm_ids, rewards, arm_features)


def update_batch_skipping(
    policy: Any,
    contexts: Any,
    arm_ids: Any,
    rewards: Any,
    arm_features: Any,
    positions: Any,
) -> list[int]:
    """:func:`update_batch_at`, except that rows the policy refuses are skipped: the
    indices of those rows, in order.

    A policy refuses an update whole (a ``ValueError``, nothing learnt), so a refused
    batch is split in two halves learnt in order, down to single rows — the refused
    ones are found with O(r log n) batch updates and every other row is learnt, in its
    order. For replaying stored rewards into a head (recovery, replica sync), where one
    row the head cannot learn must not cost it all the others.
    """
    contexts, rewards = np.asarray(contexts), np.asarray(rewards)
    features = np.asarray(arm_features)
    at = None if positions is None else np.asarray(positions)
    refused: list[int] = []

    def learn(lo: int, hi: int) -> None:
        try:
            update_batch_at(
                policy,
                contexts[lo:hi],
                list(arm_ids[lo:hi]),
                rewards[lo:hi],
                features[lo:hi],
                None if at is None else at[lo:hi],
            )
        except ValueError:
            if hi - lo == 1:
                refused.append(lo)
                return
            mid = (lo + hi) // 2
            learn(lo, mid)
            learn(mid, hi)

    if len(arm_ids):
        learn(0, len(arm_ids))
    return refused
