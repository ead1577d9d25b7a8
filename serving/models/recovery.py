"""Bring a model version's online head back from the store.

The head of a served version is its base state (from the model source) plus every
reward applied to it, in reward-id order. Recovery starts from the newest snapshot (or
the base) and applies the applied rewards logged after it; :func:`rebuild_from_store`
applies all of them to the base — the reference the recovered head must equal.
"""

from __future__ import annotations

from bandit_core import Policy
from bandit_core.policies.position import update_batch_at
from serving.models.served import ServedModel, Signature
from serving.models.state_io import policy_from_bytes
from serving.store.repository import AppliedRewards, EventStore


def _learn(policy: Policy, tail: AppliedRewards) -> None:
    """The rewards in order, each with the item (and, for a position-aware model, the
    position one-hot) it was learnt from online."""
    if len(tail):
        update_batch_at(
            policy, tail.contexts, tail.arm_ids, tail.values, tail.arm_features, tail.positions
        )


def recover(store: EventStore, version: str, base: Policy, source: str) -> ServedModel:
    """The served model of ``version``: newest snapshot (or ``base``) + later rewards."""
    snapshot = store.latest_snapshot(version)
    if snapshot is None:
        policy, last_id, applied = base, 0, 0
    else:
        policy = policy_from_bytes(snapshot.state)
        last_id, applied = snapshot.last_reward_id, snapshot.applied_rewards
    tail = store.applied_rewards(version, after_id=last_id)
    _learn(policy, tail)
    replayed_after = last_id
    if len(tail):
        last_id, applied = int(tail.ids[-1]), applied + len(tail)
    policy.model_version = version
    return ServedModel(
        version=version,
        policy=policy,
        source=source,
        signature=Signature.of(policy),
        last_reward_id=last_id,
        applied_rewards=applied,
        replayed_after=replayed_after,
        replayed_ids=tail.ids,
    )


def rebuild_from_store(store: EventStore, version: str, base: Policy) -> Policy:
    """``base`` after every reward the store says was applied to ``version``."""
    _learn(base, store.applied_rewards(version))
    base.model_version = version
    return base
