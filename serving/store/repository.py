"""Reads and writes of the event store used by the service (training reads live in
:mod:`eventstore.replay`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)

from eventstore import records
from eventstore.leases import holds
from eventstore.records import (
    DecisionGroup,
    DecisionRow,
    JudgedReward,
    RewardOutcome,
    RewardRow,
    SnapshotPart,
    SnapshotRow,
    decision_rows,
)
from eventstore.retention import latest_snapshot_first, learnt_by, prune_events
from eventstore.schema import decisions, head_snapshot_parts, head_snapshots, items, rewards
from eventstore.types import decode_floats


@dataclass(frozen=True)
class SupersededSnapshots:
    """Write item: delete the snapshots of ``model_version`` but the ``keep`` that
    recovery tries first (their rows), among those a head of ``incarnation`` may start
    from (:func:`of_incarnation`; another incarnation's are left to retention); the
    result is the ``parts_key`` of each deleted snapshot written in parts, whose parts
    :class:`DropParts` then deletes."""

    model_version: str
    keep: int
    incarnation: str | None = None


@dataclass(frozen=True)
class DropParts:
    """Write item: delete at most ``limit`` parts of ``parts_key`` (a deleted snapshot's);
    the result is how many were deleted."""

    parts_key: str
    limit: int


@dataclass(frozen=True)
class RefusedReward:
    """Write item: the deciding head refused the update of the reward ``ordinal`` of
    ``event_id`` (stored): ``rewards.refused``, read by the repeats of its idempotency
    key. The result is None."""

    event_id: str
    ordinal: int


Item = (
    DecisionRow
    | DecisionGroup
    | RewardRow
    | RefusedReward
    | SnapshotRow
    | SnapshotPart
    | SupersededSnapshots
    | DropParts
)

# Statements of the write path, built once (SQLAlchemy caches their compiled form).
#: Rewards read (and learnt) per query when a head learns a store's worth of them.
RECOVERY_CHUNK = 10_000

_INSERT_DECISIONS = insert(decisions)
_COUNT_REWARDS = (
    select(rewards.c.event_id, func.coalesce(rewards.c.position, 0), func.count())
    .where(rewards.c.event_id.in_(bindparam("event_ids", expanding=True)))
    .group_by(rewards.c.event_id, func.coalesce(rewards.c.position, 0))
)
_KEYED_REWARDS = select(
    rewards.c.event_id,
    rewards.c.idempotency_key,
    rewards.c.value,
    rewards.c.position,
    rewards.c.id,
    rewards.c.ordinal,
    rewards.c.applied,
    rewards.c.status,
    rewards.c.refused,
).where(
    rewards.c.event_id.in_(bindparam("event_ids", expanding=True)),
    rewards.c.idempotency_key.is_not(None),
)
_REFUSE = (
    update(rewards)
    .where(
        rewards.c.event_id == bindparam("refused_event"),
        rewards.c.ordinal == bindparam("refused_ordinal"),
    )
    .values(refused=True)
)
_ADD_IMPRESSIONS = (
    update(items)
    .where(items.c.item_id == bindparam("shown_id"))
    .values(impressions=items.c.impressions + bindparam("shown_count"))
)
_INSERT_REWARDS = insert(rewards).returning(rewards.c.id, sort_by_parameter_order=True)
_INSERT_SNAPSHOT = insert(head_snapshots).returning(head_snapshots.c.id)
_INSERT_PART = insert(head_snapshot_parts)


#: The bytes of a :class:`StoredDecision` besides its arrays and ids (the objects,
#: the array headers, the dict entry of a cache): about what CPython takes.
STORED_DECISION_OVERHEAD = 600


@dataclass(frozen=True)
class StoredDecision:
    """What a reward needs to know about its decision.

    ``slate_ids`` / ``slate_features`` (k, dim_arm) are the shown slate, best first, when
    the decision was a slate (position 0 is ``arm_id``).
    """

    event_id: str
    created_at: datetime
    context: NDArray[np.float64]
    arm_id: str
    arm_features: NDArray[np.float64]
    model_version: str | None
    fallback: bool
    slate_ids: tuple[str, ...] | None = None
    slate_features: NDArray[np.float64] | None = None

    @property
    def slate_length(self) -> int:
        return 1 if self.slate_ids is None else len(self.slate_ids)

    @property
    def nbytes(self) -> int:
        """About the memory it holds: its arrays, its ids and a fixed part for the rest."""
        arrays = self.context.nbytes + self.arm_features.nbytes
        if self.slate_features is not None:
            arrays += self.slate_features.nbytes
        ids = len(self.event_id) + len(self.arm_id) + sum(map(len, self.slate_ids or ()))
        return arrays + ids + STORED_DECISION_OVERHEAD

    def shown_at(self, position: int | None) -> tuple[str, NDArray[np.float64]]:
        """Arm id and features of the item shown at ``position`` (None: the decision's
        arm); the caller checks ``position < slate_length``."""
        if not position or self.slate_ids is None or self.slate_features is None:
            return self.arm_id, self.arm_features
        return self.slate_ids[position], self.slate_features[position]


@dataclass(frozen=True)
class StoredSnapshot:
    id: int
    model_version: str
    created_at: datetime
    last_reward_id: int
    applied_rewards: int
    state: bytes


@dataclass(frozen=True)
class AppliedRewards:
    """Applied rewards of one model version in id order, with the features to learn from.

    ``contexts`` (n, dim_user), ``arm_features`` (n, dim_arm), ``values`` (n,), ``ids`` (n,);
    ``arm_ids`` / ``arm_features`` are those of the item at the rewarded slate
    ``positions`` (n,) (0 for single decisions and rewards that name no position).
    """

    ids: NDArray[np.int64]
    contexts: NDArray[np.float64]
    arm_ids: list[str]
    arm_features: NDArray[np.float64]
    values: NDArray[np.float64]
    positions: NDArray[np.intp] | None = None

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def take(self, rows: list[int]) -> AppliedRewards:
        """These rows only, in this order."""
        return AppliedRewards(
            ids=self.ids[rows],
            contexts=self.contexts[rows],
            arm_ids=[self.arm_ids[j] for j in rows],
            arm_features=self.arm_features[rows],
            values=self.values[rows],
            positions=None if self.positions is None else self.positions[rows],
        )


def _write_snapshot(conn: Connection, row: SnapshotRow) -> int | None:
    """The new snapshot's id, or None when it was taken under a lease that no longer
    holds (:func:`eventstore.leases.holds`): then nothing is kept."""
    snapshot_id: int = conn.execute(_INSERT_SNAPSHOT, row.params()).scalar_one()
    if row.lease is not None and not holds(conn, row.lease):
        conn.execute(delete(head_snapshots).where(head_snapshots.c.id == snapshot_id))
        return None
    return snapshot_id


def write_events(conn: Connection, items: Sequence[Item]) -> list[Any]:
    """Write a batch inside the caller's transaction; one result per item.

    Decisions, refusals and snapshot parts return ``None``, snapshots their id, rewards a
    :class:`RewardOutcome`.
    A reward's ordinal counts the event's rewards already stored plus those earlier in
    the batch; only ordinal 0 of an eligible reward is applied. ``UNIQUE(event_id,
    ordinal)`` turns a race between two writer processes into an error the writer
    retries, never into a reward applied twice.
    """
    out: list[Any] = [None] * len(items)
    new_decisions = [d.params() for d in decision_rows(items)]
    if new_decisions:
        conn.execute(_INSERT_DECISIONS, new_decisions)
    refusals = [
        {"refused_event": item.event_id, "refused_ordinal": item.ordinal}
        for item in items
        if isinstance(item, RefusedReward)
    ]
    if refusals:  # before the rewards: a repeat of the key later in the batch reads it
        conn.execute(_REFUSE, refusals)
    reward_slots = [i for i, item in enumerate(items) if isinstance(item, RewardRow)]
    if reward_slots:
        rows: list[RewardRow] = [items[i] for i in reward_slots]  # type: ignore[misc]
        for i, outcome in zip(reward_slots, _write_rewards(conn, rows), strict=True):
            out[i] = outcome
    shown = Counter(arm for d in decision_rows(items) if d.count_impressions for arm in d.shown_ids)
    if shown:
        conn.execute(
            _ADD_IMPRESSIONS,
            [{"shown_id": arm, "shown_count": n} for arm, n in sorted(shown.items())],
        )
    for i, item in enumerate(items):
        if isinstance(item, SnapshotPart):
            conn.execute(_INSERT_PART, item.params())
        elif isinstance(item, SnapshotRow):
            out[i] = _write_snapshot(conn, item)
        elif isinstance(item, SupersededSnapshots):
            out[i] = _delete_superseded(conn, item)
        elif isinstance(item, DropParts):
            out[i] = _drop_parts(conn, item)
    return out


def batch_landed(conn: Connection, items: Sequence[Item], results: Sequence[Any]) -> bool:
    """Whether the batch :func:`write_events` wrote (returning ``results``) is in the
    store, asked after its COMMIT raised. A transaction is whole or absent, so its first
    row that can be found by key tells: a decision (a group's first) by ``event_id``, a
    reward by its id with its event and ordinal, a snapshot by id, a part by
    ``(parts_key, seq)``. A batch of deletions alone counts as there (written again, it
    deletes nothing more); one with a head's refusal (:class:`RefusedReward`, which no
    key tells from a refusal written before) as absent: written again, its UPDATE sets
    what it set (counted there, it was lost when the COMMIT had not landed)."""
    for item, result in zip(items, results, strict=True):
        first = next(decision_rows([item]), None)  # a group is whole or absent too
        if first is not None:
            found = select(decisions.c.event_id).where(decisions.c.event_id == first.event_id)
        elif (
            isinstance(item, RewardRow)
            and isinstance(result, RewardOutcome)
            and result.repeat_of is None  # a repeat wrote nothing: its first is older
        ):
            r = rewards.c
            found = select(r.id).where(
                r.id == result.id, r.event_id == item.event_id, r.ordinal == result.ordinal
            )
        elif isinstance(item, SnapshotRow) and result is not None:  # None: not kept
            found = select(head_snapshots.c.id).where(head_snapshots.c.id == result)
        elif isinstance(item, SnapshotPart):
            p = head_snapshot_parts.c
            found = select(p.seq).where(p.parts_key == item.parts_key, p.seq == item.seq)
        else:
            continue
        return conn.execute(found).first() is not None
    return not any(isinstance(item, RefusedReward) for item in items)


def of_incarnation(
    model_version: str, incarnation: str | None, not_before: datetime | None = None
) -> ColumnElement[bool]:
    """The snapshots a head of ``model_version`` may start from: with an
    ``incarnation``, those of it and those written before snapshots recorded one (the
    snapshots of a deleted model's namesake never) — of those, with ``not_before`` (the
    version's registration, less the clock skew allowed), only the ones written since:
    an older one is of a namesake the registry deleted before the upgrade to revision
    0005 (upgrade helper, stop 45: a re-created version 2 was served with the deleted
    version 2's head). Without an incarnation, every one of the label."""
    s = head_snapshots.c
    label: ColumnElement[bool] = s.model_version == model_version
    if incarnation is None:
        return label
    unmarked: ColumnElement[bool] = s.incarnation.is_(None)
    if not_before is not None:
        unmarked = unmarked & (s.created_at >= not_before)
    mine: ColumnElement[bool] = label & or_(s.incarnation == incarnation, unmarked)
    return mine


def _delete_superseded(conn: Connection, item: SupersededSnapshots) -> list[str]:
    s = head_snapshots.c
    gone = conn.execute(
        select(s.id, s.parts_key)
        .where(of_incarnation(item.model_version, item.incarnation))
        .order_by(*latest_snapshot_first())
        .offset(item.keep)
    ).all()
    if gone:
        conn.execute(delete(head_snapshots).where(s.id.in_([row.id for row in gone])))
    return [row.parts_key for row in gone if row.parts_key is not None]


def _drop_parts(conn: Connection, item: DropParts) -> int:
    p = head_snapshot_parts.c
    seqs = (
        conn.execute(
            select(p.seq).where(p.parts_key == item.parts_key).order_by(p.seq).limit(item.limit)
        )
        .scalars()
        .all()
    )
    if seqs:
        conn.execute(
            delete(head_snapshot_parts).where(p.parts_key == item.parts_key, p.seq.in_(seqs))
        )
    return len(seqs)


def _write_rewards(conn: Connection, rows: list[RewardRow]) -> list[RewardOutcome]:
    """Ordinals count an event's rewards already stored, and a reward repeating an
    idempotency key its event already used is answered as the first (see
    :func:`~eventstore.records.judge_rewards`)."""
    event_ids = sorted({r.event_id for r in rows})
    seen: Counter[str] = Counter()
    at_position: Counter[tuple[str, int]] = Counter()
    for event_id, position, count in conn.execute(_COUNT_REWARDS, {"event_ids": event_ids}):
        seen[event_id] += int(count)
        at_position[(event_id, int(position))] += int(count)
    keyed: records.Keyed = dict(stored_keys(conn, rows))
    judged = records.judge_rewards(rows, seen, at_position, keyed)
    return records.outcomes(judged, insert_rewards(conn, records.written(judged)))


def stored_keys(
    conn: Connection, rows: Sequence[RewardRow]
) -> dict[tuple[str, str], records.KeyedFirst]:
    """The stored first reward of each (event id, idempotency key) of the events of
    ``rows`` that were sent with a key, answered as it was (``applied`` false where its
    head refused it)."""
    event_ids = sorted({r.event_id for r in rows if r.idempotency_key is not None})
    if not event_ids:
        return {}
    keyed = {}
    for r in conn.execute(_KEYED_REWARDS, {"event_ids": event_ids}):
        learnt = r.applied and not r.refused  # what the first was answered
        outcome = RewardOutcome(int(r.id), int(r.ordinal), learnt, r.status)
        keyed[(r.event_id, r.idempotency_key)] = records.KeyedFirst(r.value, r.position, outcome)
    return keyed


def insert_rewards(conn: Connection, judged: Sequence[JudgedReward]) -> list[RewardOutcome]:
    """Insert rewards whose verdict is decided; their outcomes, with the new ids in order."""
    if not judged:
        return []
    ids = conn.execute(_INSERT_REWARDS, [j.params() for j in judged]).scalars()
    return [
        RewardOutcome(int(rid), j.ordinal, j.applied, j.status)
        for rid, j in zip(ids, judged, strict=True)
    ]


class EventStore:
    """Queries of the service over one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def find_decision(self, event_id: str) -> StoredDecision | None:
        """The decision ``event_id`` or ``None``."""
        d = decisions.c
        query = select(
            d.event_id,
            d.created_at,
            d.dim_user,
            d.context,
            d.n_candidates,
            d.dim_arm,
            d.candidate_features,
            d.chosen,
            d.arm_id,
            d.model_version,
            d.fallback,
            d.candidate_ids,
            d.ranking,
        ).where(d.event_id == event_id)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        feats = decode_floats(row.candidate_features, (row.n_candidates, row.dim_arm))
        ranking = row.ranking
        return StoredDecision(
            event_id=row.event_id,
            created_at=row.created_at,
            context=decode_floats(row.context, (row.dim_user,)),
            arm_id=row.arm_id,
            arm_features=feats[row.chosen].copy(),
            model_version=row.model_version,
            fallback=bool(row.fallback),
            slate_ids=None if ranking is None else tuple(row.candidate_ids[i] for i in ranking),
            slate_features=None if ranking is None else feats[list(ranking)],
        )

    def snapshots(
        self,
        model_version: str,
        incarnation: str | None = None,
        not_before: datetime | None = None,
    ) -> Iterator[StoredSnapshot]:
        """The snapshots of ``model_version`` (of its ``incarnation``, ``not_before``:
        :func:`of_incarnation`) in the order recovery tries them: the one covering the
        most rewards first (the newest of those; snapshots commit in the order their
        serialisation ends, which need not be the order of their copies). Each state is
        read when its snapshot is reached."""
        s = head_snapshots.c
        query = (
            select(s.id, s.model_version, s.created_at, s.last_reward_id, s.applied_rewards)
            .where(of_incarnation(model_version, incarnation, not_before))
            .order_by(*latest_snapshot_first())
        )
        with self.engine.connect() as conn:
            found = conn.execute(query).all()
        for row in found:
            state = self._snapshot_state(int(row.id))
            if state is None:  # deleted meanwhile (a newer snapshot superseded it)
                continue
            yield StoredSnapshot(
                int(row.id),
                row.model_version,
                row.created_at,
                int(row.last_reward_id),
                int(row.applied_rewards),
                state,
            )

    def latest_snapshot(
        self, model_version: str, incarnation: str | None = None
    ) -> StoredSnapshot | None:
        """The snapshot recovery tries first (:meth:`snapshots`)."""
        return next(self.snapshots(model_version, incarnation), None)

    def _snapshot_state(self, snapshot_id: int) -> bytes | None:
        s, p = head_snapshots.c, head_snapshot_parts.c
        with self.engine.connect() as conn:
            row = conn.execute(select(s.state, s.parts_key).where(s.id == snapshot_id)).first()
            if row is None:
                return None
            last = bytes(row.state)
            if row.parts_key is None:
                return last
            parts = conn.execute(
                select(p.data).where(p.parts_key == row.parts_key).order_by(p.seq)
            ).scalars()
            return b"".join([*(bytes(part) for part in parts), last])

    def applied_reward_ids(
        self, model_version: str, after_id: int = 0, since: datetime | None = None
    ) -> tuple[NDArray[np.int64], list[datetime]]:
        """Ids (in order) and ``received_at`` of the rewards a head of ``model_version``
        learns (:func:`~eventstore.retention.learnt_by`) with id > ``after_id``: what a
        replica compares with the rewards its head has."""
        r = rewards.c
        query = select(r.id, r.received_at)
        if since is not None:  # the rule reads the decision's time
            query = query.join(decisions, decisions.c.event_id == r.event_id)
        query = query.where(
            learnt_by(model_version, since), r.applied.is_(True), r.id > after_id
        ).order_by(r.id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return np.array([row.id for row in rows], dtype=np.int64), [row.received_at for row in rows]

    def applied_reward_chunks(
        self,
        model_version: str,
        after_id: int = 0,
        since: datetime | None = None,
        chunk_size: int | None = None,
    ) -> Iterator[AppliedRewards]:
        """:meth:`applied_rewards` in id order, ``chunk_size`` (default
        :data:`RECOVERY_CHUNK`) at a time, one query each after the last id seen: memory
        stays bounded however many a head has to learn."""
        chunk_size = chunk_size or RECOVERY_CHUNK
        while True:
            chunk = self.applied_rewards(model_version, after_id, since=since, limit=chunk_size)
            if not len(chunk):
                return
            yield chunk
            if len(chunk) < chunk_size:
                return
            after_id = int(chunk.ids[-1])

    def applied_rewards(
        self,
        model_version: str,
        after_id: int = 0,
        only: Sequence[int] | None = None,
        since: datetime | None = None,
        limit: int | None = None,
    ) -> AppliedRewards:
        """Rewards a head of ``model_version`` learns
        (:func:`~eventstore.retention.learnt_by`: those applied to it, or with ``since``
        those of every decision created at or after it) with id > ``after_id`` (and among
        the ids ``only`` when given), in id order; the first ``limit`` of them when
        given."""
        r, d = rewards.c, decisions.c
        query = (
            select(
                r.id,
                r.value,
                d.dim_user,
                d.context,
                d.n_candidates,
                d.dim_arm,
                d.candidate_features,
                d.chosen,
                d.arm_id,
                d.candidate_ids,
                d.ranking,
                r.position,
            )
            .join(decisions, d.event_id == r.event_id)
            .where(learnt_by(model_version, since), r.applied.is_(True), r.id > after_id)
            .order_by(r.id)
        )
        if only is not None:
            query = query.where(r.id.in_([int(i) for i in only]))
        if limit is not None:
            query = query.limit(limit)
        ids, values, contexts, arm_ids, feats, positions = [], [], [], [], [], []
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                ids.append(int(row.id))
                values.append(float(row.value))
                contexts.append(decode_floats(row.context, (row.dim_user,)))
                cand = decode_floats(row.candidate_features, (row.n_candidates, row.dim_arm))
                position = int(row.position or 0)
                shown = row.chosen if position == 0 else int(row.ranking[position])
                arm_ids.append(row.arm_id if position == 0 else row.candidate_ids[shown])
                feats.append(cand[shown].copy())  # a view would hold all K rows
                positions.append(position)
        if not ids:
            return AppliedRewards(
                np.zeros(0, np.int64), np.zeros((0, 0)), [], np.zeros((0, 0)), np.zeros(0)
            )
        return AppliedRewards(
            np.array(ids, dtype=np.int64),
            np.vstack(contexts),
            arm_ids,
            np.vstack(feats),
            np.array(values),
            np.array(positions, dtype=np.intp),
        )

    def count_rows(self) -> dict[str, int]:
        """Rows per table."""
        with self.engine.connect() as conn:
            return {
                table.name: int(conn.execute(select(func.count()).select_from(table)).scalar_one())
                for table in (decisions, rewards, head_snapshots)
            }

    def existing_event_ids(self, event_ids: Sequence[str], table: str = "decisions") -> set[str]:
        """Which of ``event_ids`` have a row in ``decisions`` (or ``rewards``)."""
        tbl = decisions if table == "decisions" else rewards
        found: set[str] = set()
        ids = list(event_ids)
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                found.update(
                    conn.execute(
                        select(tbl.c.event_id).where(tbl.c.event_id.in_(chunk)).distinct()
                    ).scalars()
                )
        return found

    def prune(self, older_than: datetime, dry_run: bool = False) -> dict[str, int]:
        """:func:`eventstore.retention.prune_events` on this store: decisions created before
        ``older_than`` with their rewards, and superseded head snapshots older than it."""
        return prune_events(self.engine, older_than, dry_run=dry_run)
