"""Bring a model version's online head back from the store.

The head of a served version is its base state (from the model source) plus every
reward applied to it, in reward-id order. Recovery starts from the newest snapshot (or
the base) and applies the applied rewards logged after it; :func:`rebuild_from_store`
applies all of them to the base — the reference the recovered head must equal. A reward
the head refuses (an update it cannot make in float64: ``banditops_head_update_failures``
counted it online) is skipped here as it was online, and the others are learnt.

A version that says where its training window stops (``window_stop``, a registry tag)
learns more when it is loaded from its base: every applied reward of a decision created
at or after that time, whichever version made it — the rewards production learnt online
between the extraction and the swap, which the window left out. Each is learnt once:
the window holds the decisions before ``window_stop``, the replay those after. Online the
service keeps to the same rule (``DecisionService._also_learning``): while another version
serves beside it (a rollout), each head also learns the other's rewards of decisions after
its own window, so a snapshot holds every reward the rule gives it up to its
``last_reward_id`` and recovery from it replays the rest by the same rule.
"""

from __future__ import annotations

import logging
from datetime import datetime

import numpy as np

from bandit_core import Policy
from bandit_core.policies.linear import arm_state
from bandit_core.policies.position import update_batch_skipping
from serving.models.served import ServedModel, Signature
from serving.models.state_io import policy_from_bytes
from serving.store.repository import AppliedRewards, EventStore, StoredSnapshot

log = logging.getLogger(__name__)


def learn_rewards(
    policy: Policy, tail: AppliedRewards, version: str, max_arms: int | None = None
) -> int:
    """Learn the rewards in order, each with the item (and, for a position-aware model,
    the position one-hot) it was learnt from online; the number learnt.

    A reward the head refuses (a ``ValueError``: an update it cannot make in float64, as
    online, where the same reward was refused and counted) is skipped and logged, never
    fatal: one such reward must not keep a version from loading, nor its other rewards
    out of its head. So is a reward of a new arm while the head already holds
    ``max_arms`` arms (:meth:`bandit_core.policies.linear.ArmLimit.reached`, the rule the
    service keeps online)."""
    arms = None if max_arms is None else arm_state(policy)
    if arms is None or max_arms is None:
        return _learn_refusing(policy, tail, version)
    learnt, start, n = 0, 0, len(tail)
    while start < n:
        # the rows up to the first new arm that the arms already learnt leave no room for
        room, stop = max_arms - arms.n_arms, n
        new: set[str] = set()
        for i in range(start, n):
            arm = tail.arm_ids[i]
            if arms.knows(arm) or arm in new:
                continue
            if len(new) >= room:
                stop = i
                break
            new.add(arm)
        learnt += _learn_refusing(policy, tail.take(list(range(start, stop))), version)
        if stop == n:
            break
        if arms.n_arms < max_arms:  # a refused first update left room: row stop fits
            start = stop
            continue
        known = [i for i in range(stop, n) if arms.knows(tail.arm_ids[i])]  # full for good
        log.warning(
            "the head of %s holds its limit of %d arms: %d stored rewards of new arms skipped",
            version,
            max_arms,
            n - stop - len(known),
        )
        learnt += _learn_refusing(policy, tail.take(known), version)
        break
    return learnt


def _learn_refusing(policy: Policy, tail: AppliedRewards, version: str) -> int:
    """:func:`learn_rewards` without an arm limit."""
    if not len(tail):
        return 0
    refused = update_batch_skipping(
        policy, tail.contexts, tail.arm_ids, tail.values, tail.arm_features, tail.positions
    )
    if refused:
        log.warning(
            "the head of %s refused %d stored rewards (ids %s); it learnt the other %d",
            version,
            len(refused),
            tail.ids[np.asarray(refused[:20])].tolist(),
            len(tail) - len(refused),
        )
    return len(tail) - len(refused)


def recover(
    store: EventStore,
    version: str,
    base: Policy,
    source: str,
    window_stop: datetime | None = None,
    max_arms: int | None = None,
    incarnation: str | None = None,
    not_before: datetime | None = None,
) -> ServedModel:
    """The served model of ``version``: newest snapshot (of its ``incarnation``, when
    the label can name several artifacts; see ``ModelRef.not_before``) or ``base`` + the
    later rewards its head learns (with ``window_stop``: every reward of a decision after
    the window; with ``max_arms``: none of a new arm past it, as online).

    A snapshot is a shortcut: one that cannot be used (unreadable, another kind of model,
    other dimensions, not finite) is logged and recovery tries the next one (the service
    keeps ``snapshot_keep``), then starts from ``base`` with every reward — the same head
    (:func:`rebuild_from_store`), only slower."""
    policy, last_id, applied = base, 0, 0
    # the one covering the most rewards first
    for snapshot in store.snapshots(version, incarnation, not_before):
        restored = _usable(snapshot, base, version)
        if restored is not None:
            policy = restored
            last_id, applied = snapshot.last_reward_id, snapshot.applied_rewards
            break
    replayed_after = last_id
    replayed = []
    for chunk in store.applied_reward_chunks(version, after_id=last_id, since=window_stop):
        applied += learn_rewards(policy, chunk, version, max_arms)
        last_id = int(chunk.ids[-1])
        replayed.append(chunk.ids)
    policy.model_version = version
    return ServedModel(
        version=version,
        policy=policy,
        source=source,
        signature=Signature.of(policy),
        last_reward_id=last_id,
        applied_rewards=applied,
        replayed_after=replayed_after,
        replayed_ids=np.concatenate(replayed) if replayed else np.zeros(0, np.int64),
        window_stop=window_stop,
        incarnation=incarnation,
    )


def catch_up(store: EventStore, model: ServedModel, max_arms: int | None = None) -> int:
    """Learn into ``model`` the rewards its head learns (by the rule :func:`recover`
    replays) committed after its recovery read them — those with ids above its
    ``last_reward_id`` — and move ``last_reward_id`` past them; the number learnt.

    A version is recovered before it is served, and a reward committed in between is
    learnt online only by the versions served then: the loader catches a new version up
    once off the event loop and once more on it, where the swap happens, so that every
    reward is in its head either from the store or online, once."""
    learnt = 0
    for chunk in store.applied_reward_chunks(
        model.version, after_id=model.last_reward_id, since=model.window_stop
    ):
        learnt += learn_rewards(model.policy, chunk, model.version, max_arms)
        model.last_reward_id = int(chunk.ids[-1])
    model.applied_rewards += learnt
    return learnt


def _usable(snapshot: StoredSnapshot, base: Policy, version: str) -> Policy | None:
    """The policy of ``snapshot`` when it is the same kind of model as ``base``, with
    its dimensions and a finite state (``policy_from_state`` refuses any other); None
    (logged) otherwise."""
    try:
        policy = policy_from_bytes(snapshot.state)
        have, want = Signature.of(policy), Signature.of(base)
        if type(policy) is not type(base) or have != want:
            raise ValueError(
                f"it holds a {type(policy).__name__} {have}, the version "
                f"a {type(base).__name__} {want}"
            )
    except Exception as exc:  # any reason: the base and the rewards give the same head
        log.error(
            "snapshot %d of %s cannot be used (%s); recovering from an older snapshot, or "
            "from the base with every applied reward, instead",
            snapshot.id,
            version,
            exc,
        )
        return None
    return policy


def rebuild_from_store(
    store: EventStore,
    version: str,
    base: Policy,
    window_stop: datetime | None = None,
    max_arms: int | None = None,
) -> Policy:
    """``base`` after every reward the store says ``version``'s head learns (with
    ``window_stop``: those of every decision after its window; with ``max_arms``: none of
    a new arm past it)."""
    for chunk in store.applied_reward_chunks(version, since=window_stop):
        learn_rewards(base, chunk, version, max_arms)
    base.model_version = version
    return base
