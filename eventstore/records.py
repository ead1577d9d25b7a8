"""What the request path hands to the writer, and what the writer hands back."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from eventstore.types import encode_floats

#: Reward ``status`` values.
APPLIED = "applied"
DUPLICATE = "duplicate"  # a later reward of the event under the first-wins rule
SUMMED = "summed"  # a later reward under the sum rule: counted in the replay, not online
LATE = "late"  # after the reward window
NOT_SERVED = "not_served"  # the deciding model version is not loaded here any more
FALLBACK = "fallback"  # the decision came from the fallback policy (nothing to learn)
REJECTED = "rejected"  # learning it could make the head non-finite: stored, never applied


@dataclass(frozen=True)
class DecisionRow:
    """One decision, as logged (arrays are float64).

    Slates add ``position_propensities`` (marginal probability of each shown item at its
    slot); grouped requests share a ``request_id`` and name their ``group_id``; retrieval
    adds the ``catalog_seq`` it saw, every candidate's item version and a ``retrieval``
    summary. ``count_impressions`` asks the writer to add one impression to every shown
    catalog item in the same transaction.
    """

    event_id: str
    created_at: datetime
    user_hash: str | None
    context: NDArray[np.float64]
    candidate_ids: tuple[str, ...]
    candidate_features: NDArray[np.float64]
    chosen: int
    propensity: float
    probabilities: NDArray[np.float64]
    scores: NDArray[np.float64]
    policy: str
    model_version: str | None
    traffic: str
    fallback: bool
    explored: bool
    ranking: tuple[int, ...] | None = None
    slate_propensities: tuple[float, ...] | None = None
    position_propensities: tuple[float, ...] | None = None
    request_id: str | None = None
    group_id: str | None = None
    catalog_seq: int | None = None
    candidate_versions: tuple[int, ...] | None = None
    retrieval: dict[str, Any] | None = None
    count_impressions: bool = False

    @property
    def arm_id(self) -> str:
        return self.candidate_ids[self.chosen]

    @property
    def shown_ids(self) -> tuple[str, ...]:
        """The arms shown to the user: the slate, or the chosen arm."""
        if self.ranking is None:
            return (self.arm_id,)
        return tuple(self.candidate_ids[i] for i in self.ranking)

    def params(self) -> dict[str, Any]:
        """Column values for an INSERT."""
        return {
            "event_id": self.event_id,
            "created_at": self.created_at,
            "user_hash": self.user_hash,
            "dim_user": int(self.context.shape[0]),
            "context": encode_floats(self.context),
            "n_candidates": len(self.candidate_ids),
            "dim_arm": int(self.candidate_features.shape[1]),
            "candidate_ids": list(self.candidate_ids),
            "candidate_features": encode_floats(self.candidate_features),
            "chosen": self.chosen,
            "arm_id": self.arm_id,
            "propensity": self.propensity,
            "probabilities": encode_floats(self.probabilities),
            "scores": encode_floats(self.scores),
            "ranking": None if self.ranking is None else list(self.ranking),
            "slate_propensities": (
                None if self.slate_propensities is None else list(self.slate_propensities)
            ),
            "policy": self.policy,
            "model_version": self.model_version,
            "traffic": self.traffic,
            "fallback": self.fallback,
            "explored": self.explored,
            "position_propensities": _list(self.position_propensities),
            "request_id": self.request_id,
            "group_id": self.group_id,
            "catalog_seq": self.catalog_seq,
            "candidate_versions": _list(self.candidate_versions),
            "retrieval": self.retrieval,
        }


def _list(values: tuple[Any, ...] | None) -> list[Any] | None:
    return None if values is None else list(values)


@dataclass(frozen=True)
class RewardRow:
    """One reward as received.

    ``eligible`` is the request path's verdict (in the window, from a model version that
    is served here); ``ineligible_status`` says why not. The writer adds the duplicate
    check, which needs the store; a repeated reward gets ``repeat_status``
    (``DUPLICATE`` under the first-wins rule, ``SUMMED`` under the sum rule). ``position``
    names the slate position rewarded (None: the decision's arm, position 0); "repeated"
    means another reward for the same event *and position*. ``learn`` travels with the
    row to whoever applies committed rewards to a head; it is not stored.
    """

    event_id: str
    value: float
    ts: datetime
    received_at: datetime
    model_version: str | None
    eligible: bool
    ineligible_status: str | None = None
    repeat_status: str = DUPLICATE
    position: int | None = None
    learn: Any = field(default=None, compare=False)


@dataclass(frozen=True)
class RewardOutcome:
    """The stored reward: its id (arrival order), ordinal within the event, and whether
    the online head learns from it.

    ``journaled``: the reward is durable in the local journal, not yet in the database
    (``id`` is 0 until the journal is drained, see :mod:`serving.store.journal`).
    """

    id: int
    ordinal: int
    applied: bool
    status: str
    journaled: bool = False


@dataclass(frozen=True)
class JudgedReward:
    """A reward with its verdict: ``ordinal`` among its event's rewards, whether a head
    learns from it and its ``status``."""

    row: RewardRow
    ordinal: int
    applied: bool
    status: str

    def params(self) -> dict[str, Any]:
        """Column values for an INSERT into ``rewards``."""
        row = self.row
        return {
            "event_id": row.event_id,
            "ordinal": self.ordinal,
            "value": row.value,
            "ts": row.ts,
            "received_at": row.received_at,
            "applied": self.applied,
            "status": self.status,
            "model_version": row.model_version,
            "position": row.position,
        }


def judge_rewards(
    rows: Sequence[RewardRow], seen: Counter[str], at_position: Counter[tuple[str, int]]
) -> list[JudgedReward]:
    """The verdict of each reward, in order, given how many rewards each event already has
    (``seen``) and has per position (``at_position``; None counts as position 0). Both
    counters are updated. A reward repeats when its event already has one at the same
    position; only a first, eligible reward is applied."""
    out = []
    for row in rows:
        ordinal = seen[row.event_id]
        seen[row.event_id] += 1
        key = (row.event_id, row.position or 0)
        repeat = at_position[key] > 0
        at_position[key] += 1
        if repeat:
            status = row.repeat_status
        elif row.eligible:
            status = APPLIED
        else:
            status = row.ineligible_status or NOT_SERVED
        out.append(JudgedReward(row, ordinal, status == APPLIED, status))
    return out


@dataclass(frozen=True)
class SnapshotRow:
    """A head snapshot: ``state`` is a ``bandit_core.save_policy`` ``.npz`` as bytes."""

    model_version: str
    created_at: datetime
    last_reward_id: int
    applied_rewards: int
    policy: str
    state: bytes

    def params(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "created_at": self.created_at,
            "last_reward_id": self.last_reward_id,
            "applied_rewards": self.applied_rewards,
            "policy": self.policy,
            "state": self.state,
        }
