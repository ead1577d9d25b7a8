"""What the request path hands to the writer, and what the writer hands back."""

from __future__ import annotations

import dataclasses
import operator
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import JSON, Table

from eventstore.schema import (
    SHAPE,
    decisions,
    head_snapshot_parts,
    head_snapshots,
    record_columns,
    rewards,
    shape_columns,
)
from eventstore.types import encode_floats

#: Reward ``status`` values.
APPLIED = "applied"
DUPLICATE = "duplicate"  # a later reward of the event under the first-wins rule
SUMMED = "summed"  # a later reward under the sum rule: counted in the replay, not online
LATE = "late"  # after the reward window
NOT_SERVED = "not_served"  # no head served here learns it (its version is not loaded any more)
FALLBACK = "fallback"  # the decision came from the fallback policy (nothing to learn)
REJECTED = "rejected"  # learning it could make the head non-finite: stored, never applied
ARM_LIMIT = "arm_limit"  # a new arm for a head already at max_arms: stored, not applied
#: Every reward status, in the order the API documents them.
STATUSES = (APPLIED, DUPLICATE, SUMMED, LATE, NOT_SERVED, FALLBACK, REJECTED, ARM_LIMIT)


def repeat_status(duplicate_rule: str, late: bool) -> str:
    """The status of a reward repeating its event's reward at the same position: under the
    sum rule ``summed`` (it counts, in the replay and the rollout's outcome) unless it came
    after the reward window (``late``: it counts nowhere); ``duplicate`` under first-wins."""
    if duplicate_rule == "sum":
        return LATE if late else SUMMED
    return DUPLICATE


@dataclass(frozen=True)
class DecisionRow:
    """One decision, as logged (arrays are float64).

    ``propensity_se`` is the standard error of a Monte-Carlo propensity (None: exact).
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
    propensity_se: float | None = None
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
        """Column values for an INSERT into ``decisions`` (every column of the table,
        see :func:`decision_columns`)."""
        plan = _DECISION_COLUMNS
        out = dict(zip(plan.plain, _get_plain(self), strict=True))
        for name in plan.floats:
            out[name] = encode_floats(getattr(self, name))
        for name in plan.lists:
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, tuple) else value
        for name, array, axis in plan.extents:
            out[name] = int(getattr(self, array).shape[axis])
        return out


@dataclass(frozen=True)
class DecisionGroup:
    """The decisions of one grouped request, one item of the event writer: written in one
    transaction (or journaled in one append), all of them or none."""

    rows: tuple[DecisionRow, ...]


def decision_rows(items: Iterable[Any]) -> Iterator[DecisionRow]:
    """The decisions among writer items, a group's in its order."""
    for item in items:
        if isinstance(item, DecisionRow):
            yield item
        elif isinstance(item, DecisionGroup):
            yield from item.rows


#: Fields of :class:`DecisionRow` that are instructions to the writer, not columns.
NOT_STORED = frozenset({"count_impressions"})


@dataclass(frozen=True)
class DecisionColumns:
    """How a :class:`DecisionRow` fills the columns of ``decisions``, by kind: ``plain``
    columns take the attribute of the same name, ``floats`` the encoded array, ``lists``
    the tuple as a JSON list, and ``extents`` (column, array attribute, axis) a shape
    column from its array's shape."""

    plain: tuple[str, ...]
    floats: tuple[str, ...]
    lists: tuple[str, ...]
    extents: tuple[tuple[str, str, int], ...]


def decision_columns(table: Table) -> DecisionColumns:
    """How a :class:`DecisionRow` fills each column of ``table`` (``decisions``): a shape
    column from its array's shape (``info[SHAPE]``), a float array encoded, a JSON
    column as a list (from a tuple), anything else as the attribute of the same name.

    Raises
    ------
    ValueError
        When a column has no attribute of its name on :class:`DecisionRow`, or a field of
        it is neither a column nor in :data:`NOT_STORED`.
    """
    shapes = shape_columns(table)
    fields = {f.name for f in dataclasses.fields(DecisionRow)}
    attributes = fields | {n for n, v in vars(DecisionRow).items() if isinstance(v, property)}
    columns = record_columns(table)
    _check_covered(table.name, "DecisionRow", columns, attributes, set(shapes))
    extra = sorted(fields - set(columns) - NOT_STORED)
    if extra:
        raise ValueError(
            f"DecisionRow fields must be columns of {table.name} or in NOT_STORED; got {extra}."
        )
    stored = [n for n in columns if n not in shapes]
    floats = tuple(n for n in stored if SHAPE in table.columns[n].info)
    lists = tuple(n for n in stored if isinstance(table.columns[n].type, JSON))
    return DecisionColumns(
        plain=tuple(n for n in stored if n not in floats and n not in lists),
        floats=floats,
        lists=lists,
        extents=tuple((n, *shapes[n]) for n in columns if n in shapes),
    )


def _check_covered(
    table: str, record: str, columns: Sequence[str], attributes: set[str], derived: set[str]
) -> None:
    missing = [name for name in columns if name not in attributes | derived]
    if missing:
        raise ValueError(
            f"every column of {table} needs an attribute of the same name on {record}; "
            f"missing {missing}."
        )


@dataclass(frozen=True)
class RewardRow:
    """One reward as received.

    ``eligible`` is the request path's verdict (in the window, from a model version that
    is served here); ``ineligible_status`` says why not. The writer adds the duplicate
    check, which needs the store; a repeated reward gets ``repeat_status``
    (``DUPLICATE`` under the first-wins rule, ``SUMMED`` under the sum rule). ``position``
    names the slate position rewarded (None: the decision's arm, position 0); "repeated"
    means another reward for the same event *and position*. ``idempotency_key`` is the
    client's key (None: none): a reward whose event already has one with that key is not
    written again (:class:`KeyRepeat`). ``learn`` travels with the row to whoever applies
    committed rewards to a head; it is not stored.
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
    idempotency_key: str | None = None
    learn: Any = field(default=None, compare=False)


@dataclass(frozen=True)
class RewardOutcome:
    """The stored reward: its id (arrival order), ordinal within the event, and whether
    the online head learns from it.

    ``journaled``: the reward is durable in the local journal, not yet in the database
    (``id`` is 0 until the journal is drained, see :mod:`serving.store.journal`).
    ``repeat_of``: set when the reward repeated an idempotency key its event had already
    used: nothing was written and no head learns it (``applied`` is False); the first's
    outcome is what the client is answered.
    """

    id: int
    ordinal: int
    applied: bool
    status: str
    journaled: bool = False
    repeat_of: KeyedFirst | None = None


@dataclass(frozen=True)
class KeyedFirst:
    """The first reward of an event under an idempotency key: what it was sent with
    (``value``, ``position``) and its ``outcome``."""

    value: float
    position: int | None
    outcome: RewardOutcome

    def same(self, value: float, position: int | None) -> bool:
        """Whether a reward sent with ``value`` at ``position`` is this one again (a key
        names one reward; no position is position 0)."""
        return (value, position or 0) == (self.value, self.position or 0)

    def repeated(self) -> RewardOutcome:
        """The outcome of a reward that repeats this one's key."""
        first = self.outcome
        return RewardOutcome(
            first.id, first.ordinal, False, first.status, first.journaled, repeat_of=self
        )


@dataclass(frozen=True)
class KeyRepeat:
    """A reward whose idempotency key its event already used (``first``: stored, or
    judged earlier in the same batch): it is not written."""

    row: RewardRow
    first: KeyedFirst | JudgedReward


#: The first reward of each (event id, idempotency key) a writer knows of.
Keyed = dict[tuple[str, str], "KeyedFirst | JudgedReward"]


@dataclass(frozen=True)
class JudgedReward:
    """A reward with its verdict: ``ordinal`` among its event's rewards, whether a head
    learns from it and its ``status``. ``refused`` is False when it is written: the
    deciding head refuses an update after the commit, and the service then records it
    (``serving.store.repository.RefusedReward``)."""

    row: RewardRow
    ordinal: int
    applied: bool
    status: str
    refused: bool = False

    def params(self) -> dict[str, Any]:
        """Column values for an INSERT into ``rewards``: the verdict's fields, the rest
        from the reward as received (see :func:`reward_sources`)."""
        return dict(zip(_REWARD_COLUMNS, _get_reward(self), strict=True))


def reward_sources(table: Table) -> dict[str, str]:
    """Where a :class:`JudgedReward` takes each column of ``table`` (``rewards``): its
    own field of that name (the verdict), else its ``row``'s (``"row.<name>"``).

    Raises
    ------
    ValueError
        When a column is neither.
    """
    verdict = {f.name for f in dataclasses.fields(JudgedReward)} - {"row"}
    received = {f.name for f in dataclasses.fields(RewardRow)}
    columns = record_columns(table)
    _check_covered(table.name, "JudgedReward or RewardRow", columns, verdict | received, set())
    return {name: name if name in verdict else f"row.{name}" for name in columns}


def judge_rewards(
    rows: Sequence[RewardRow],
    seen: Counter[str],
    at_position: Counter[tuple[str, int]],
    keyed: Keyed | None = None,
) -> list[JudgedReward | KeyRepeat]:
    """The verdict of each reward, in order, given how many rewards each event already has
    (``seen``) and has per position (``at_position``; None counts as position 0), and the
    first reward of each idempotency key it already has (``keyed``). All three are
    updated. A reward repeats when its event already has one at the same position; only a
    first, eligible reward is applied. A reward whose key its event already used is a
    :class:`KeyRepeat`, and counts nowhere."""
    keyed = {} if keyed is None else keyed
    out: list[JudgedReward | KeyRepeat] = []
    for row in rows:
        by_key = None if row.idempotency_key is None else (row.event_id, row.idempotency_key)
        if by_key is not None and by_key in keyed:
            out.append(KeyRepeat(row, keyed[by_key]))
            continue
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
        judged = JudgedReward(row, ordinal, status == APPLIED, status)
        if by_key is not None:
            keyed[by_key] = judged
        out.append(judged)
    return out


def written(judged: Sequence[JudgedReward | KeyRepeat]) -> list[JudgedReward]:
    """The rewards of ``judged`` to write (the repeats of a key are not)."""
    return [j for j in judged if isinstance(j, JudgedReward)]


def outcomes(
    judged: Sequence[JudgedReward | KeyRepeat], results: Sequence[RewardOutcome]
) -> list[RewardOutcome]:
    """One outcome per reward of ``judged``: those written take theirs from ``results``
    (one per :func:`written` reward, in order), a repeat its first's
    (:meth:`KeyedFirst.repeated`)."""
    of_written = iter(results)
    firsts: dict[int, RewardOutcome] = {}
    out = []
    for j in judged:
        if isinstance(j, JudgedReward):
            outcome = next(of_written)
            firsts[id(j)] = outcome
        elif isinstance(j.first, KeyedFirst):
            outcome = j.first.repeated()
        else:
            first = j.first.row
            outcome = KeyedFirst(first.value, first.position, firsts[id(j.first)]).repeated()
        out.append(outcome)
    return out


@dataclass(frozen=True)
class SnapshotRow:
    """A head snapshot: ``state`` is a ``bandit_core.save_policy`` ``.npz`` as bytes —
    or, with ``parts_key``, its last part, after the :class:`SnapshotPart` rows of that
    key in ``seq`` order (written before this row). ``incarnation``: which artifact of
    the label the head grew from (``serving.models.sources.ModelRef.incarnation``)."""

    model_version: str
    created_at: datetime
    last_reward_id: int
    applied_rewards: int
    policy: str
    state: bytes
    parts_key: str | None = None
    incarnation: str | None = None
    #: the writer's lease token (:mod:`eventstore.leases`): the row is kept only while
    #: that lease holds (not a column)
    lease: str | None = None

    def params(self) -> dict[str, Any]:
        """Column values for an INSERT into ``head_snapshots``."""
        return {name: getattr(self, name) for name in _SNAPSHOT_COLUMNS}


@dataclass(frozen=True)
class SnapshotPart:
    """One leading part of a large snapshot's state (see :class:`SnapshotRow`)."""

    parts_key: str
    seq: int
    created_at: datetime
    data: bytes

    def params(self) -> dict[str, Any]:
        """Column values for an INSERT into ``head_snapshot_parts``."""
        return {name: getattr(self, name) for name in _PART_COLUMNS}


def _record_columns(table: Table, record: type) -> tuple[str, ...]:
    columns = record_columns(table)
    fields = {f.name for f in dataclasses.fields(record)}
    _check_covered(table.name, record.__name__, columns, fields, set())
    return columns


_DECISION_COLUMNS = decision_columns(decisions)
_get_plain = operator.attrgetter(*_DECISION_COLUMNS.plain)
_REWARD_SOURCES = reward_sources(rewards)
_REWARD_COLUMNS = tuple(_REWARD_SOURCES)
_get_reward = operator.attrgetter(*_REWARD_SOURCES.values())
_SNAPSHOT_COLUMNS = _record_columns(head_snapshots, SnapshotRow)
_PART_COLUMNS = _record_columns(head_snapshot_parts, SnapshotPart)
