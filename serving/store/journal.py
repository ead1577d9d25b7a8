"""A durable local journal for events the database cannot take right now.

When the event store is unreachable the group-commit writer
(:mod:`serving.store.writer`) hands each batch to :meth:`Journal.spool` instead of
failing it: the batch's records are appended to a local segment file and fsynced, and
only then are the requests acknowledged. When the database answers again the writer
calls :meth:`Journal.drain`, which copies the records into the store in journal order and
empties the segment; new events wait behind the drain, so the store sees events in the
order they were acknowledged.

Format
    One segment file per process (``<dir>/segment-<ns>-<pid>-<hex>.journal``), held under
    an exclusive ``flock`` while the process lives. A record is ``<u32 length><u32
    crc32><JSON payload>``: a decision (every field of its
    :class:`~eventstore.records.DecisionRow`, arrays as base64 of their bytes — never
    pickle) or a reward with its verdict (ordinal, applied, status). A record whose
    length or checksum does not hold is the torn tail of a write that was never
    acknowledged; reading stops there.

Idempotent replay
    A decision is skipped when its ``event_id`` is already stored; a reward when its
    event has a stored reward that is this one (value, position, key, model version,
    client and receive times, verdict: :data:`RECEIVED_IDENTITY`), so a drain
    interrupted by a crash, or a batch that the database committed although its
    acknowledgement was lost, is never written twice. Its ``(event_id, ordinal)``
    (``UNIQUE``) does not tell: once the drain has stored a journaled event's decision,
    another process may store a reward of it under the ordinal the journal gave one of
    its own, which the drain then skipped as stored, and lost. A journaled reward whose
    ordinal another reward holds is stored under its event's next free ordinal
    (``renumbered``); answered applied, it is judged again as the writer judges, against
    the rewards its event's position holds in the store: where the other process stored
    one first it is a repeat (``duplicate``, ``summed`` under the sum rule; ``demoted``),
    stored unapplied, and reported with the id of the reward applied there, which the
    head here then has (it learnt this one when it answered). A reward sent with an
    ``idempotency_key`` that its event already has in the store (the client sent it again
    through another process, which stored it) is a repeat already stored: dropped,
    counted (``repeats``); sent there with another value or position, it is set aside.

Rewards while degraded
    The verdict of a reward (its ordinal, whether a head learns from it) needs the number
    of rewards its event already has. The journal knows it for the decisions it holds,
    and a bounded ledger counts the rewards of recent decisions committed by this process
    (``exclusive``: the only writer of the store; with several workers the ledger is
    reset when an outage starts, since another worker may have rewarded them). A reward
    whose count is unknown is refused (503, to be retried): its verdict cannot be exact.

Restart
    :meth:`Journal.recover` drains the segments that no live process holds (the previous
    run of this process, killed or stopped while the database was away) before the
    service recovers its heads from the store.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import struct
import threading
import time
import uuid
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import DataError, IntegrityError

from eventstore.engine import store_identity
from eventstore.records import (
    DecisionGroup,
    DecisionRow,
    JudgedReward,
    Keyed,
    KeyedFirst,
    RewardOutcome,
    RewardRow,
    decision_rows,
    judge_rewards,
    outcomes,
    written,
)
from eventstore.schema import decisions, rewards
from serving.settings import Settings
from serving.store.repository import StoredDecision, insert_rewards, stored_keys, write_events

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")
_SUFFIX = ".journal"
#: Where a drain puts the records the store refuses for good (in the journal's own
#: framing, :func:`read_records` reads them), kept for an operator to look at.
REJECTED_FILE = "rejected.records"
#: Records written to the store per transaction while draining.
DRAIN_CHUNK = 500
_REWARD_FIELDS = tuple(f.name for f in dataclasses.fields(RewardRow) if f.name != "learn")
#: What tells a stored reward for a journaled one: the fields it was received with, and
#: its verdict's; the ordinal is not one of them (see the module docstring).
#: ``received_at`` is the receiving process's clock: two rewards received apart, by one
#: process or two, differ there.
RECEIVED_IDENTITY = ("value", "position", "idempotency_key", "model_version", "ts", "received_at")
VERDICT_IDENTITY = ("applied", "status")


class JournalError(RuntimeError):
    """The journal cannot take an event (full, refused or failed to write): the event is
    not acknowledged."""


# ---------------------------------------------------------------------- codec
def _encode(value: Any) -> Any:
    """JSON-safe, tagged form of a record field (arrays as raw bytes, never pickle)."""
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError("object arrays cannot be journaled.")
        data = base64.b64encode(np.ascontiguousarray(value).tobytes()).decode()
        return {"$nd": data, "dtype": value.dtype.str, "shape": list(value.shape)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, bytes):
        return {"$by": base64.b64encode(value).decode()}
    if isinstance(value, tuple):
        return {"$tu": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {"$di": {str(k): _encode(v) for k, v in value.items()}}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "$nd" in value:
        raw = base64.b64decode(value["$nd"])
        return np.frombuffer(raw, dtype=np.dtype(value["dtype"])).reshape(value["shape"]).copy()
    if "$dt" in value:
        return datetime.fromisoformat(value["$dt"])
    if "$by" in value:
        return base64.b64decode(value["$by"])
    if "$tu" in value:
        return tuple(_decode(v) for v in value["$tu"])
    return {k: _decode(v) for k, v in value["$di"].items()}


def encode_record(item: DecisionRow | JudgedReward) -> bytes:
    """One framed record: length, CRC-32 and the JSON payload."""
    if isinstance(item, DecisionRow):
        fields = {f.name: getattr(item, f.name) for f in dataclasses.fields(DecisionRow)}
        payload: dict[str, Any] = {"kind": "decision", "fields": _encode(fields)}
    else:
        fields = {name: getattr(item.row, name) for name in _REWARD_FIELDS}
        payload = {
            "kind": "reward",
            "fields": _encode(fields),
            "ordinal": item.ordinal,
            "applied": item.applied,
            "status": item.status,
        }
    body = json.dumps(payload, separators=(",", ":")).encode()
    return _HEADER.pack(len(body), zlib.crc32(body)) + body


def _decode_payload(body: bytes) -> DecisionRow | JudgedReward:
    payload = json.loads(body)
    fields = _decode(payload["fields"])
    if payload["kind"] == "decision":
        return DecisionRow(**fields)
    row = RewardRow(**fields)
    return JudgedReward(row, int(payload["ordinal"]), bool(payload["applied"]), payload["status"])


def read_records(data: bytes) -> tuple[list[DecisionRow | JudgedReward], int]:
    """The records of a segment's bytes, and the length of its valid prefix (a torn or
    corrupt tail is left out)."""
    out: list[DecisionRow | JudgedReward] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        body = data[start : start + length]
        if len(body) < length or zlib.crc32(body) != crc:
            break
        out.append(_decode_payload(body))
        offset = start + length
    return out, offset


def stored_decision(row: DecisionRow) -> StoredDecision:
    """What a reward needs of a logged decision (not the (K, d) candidate block)."""
    return StoredDecision(
        event_id=row.event_id,
        created_at=row.created_at,
        context=row.context,
        arm_id=row.arm_id,
        arm_features=row.candidate_features[row.chosen].copy(),
        model_version=row.model_version,
        fallback=row.fallback,
        slate_ids=None if row.ranking is None else row.shown_ids,
        slate_features=None if row.ranking is None else row.candidate_features[list(row.ranking)],
    )


# ---------------------------------------------------------------------- drain
@dataclass
class DrainReport:
    """What a drain wrote: counts, and ``(model_version, reward id, applied)`` of every
    journaled reward, in journal order (``rewards``; a repeat of a stored key has its
    first's id). ``repeats``: rewards whose idempotency key was already stored;
    ``renumbered``: rewards stored under another ordinal than the journal's, which
    another reward of their event held; ``demoted``: of those, answered applied, the ones
    stored as repeats (another process stored a reward at their position first), each
    reported with the id of the reward applied there."""

    records: int = 0
    decisions: int = 0
    rewards: int = 0
    skipped: int = 0
    rejected: int = 0
    repeats: int = 0
    renumbered: int = 0
    demoted: int = 0
    seconds: float = 0.0
    reward_ids: list[tuple[str | None, int, bool]] = field(default_factory=list)

    def add(self, other: DrainReport) -> None:
        self.records += other.records
        self.decisions += other.decisions
        self.rewards += other.rewards
        self.skipped += other.skipped
        self.rejected += other.rejected
        self.repeats += other.repeats
        self.renumbered += other.renumbered
        self.demoted += other.demoted
        self.seconds += other.seconds
        self.reward_ids += other.reward_ids


#: A journaled reward the store cannot take, and why.
SetAside = tuple[JudgedReward, str]


def _drain_chunk(
    conn: Connection, chunk: Sequence[DecisionRow | JudgedReward]
) -> tuple[DrainReport, list[SetAside]]:
    """Write the records of ``chunk`` that the store does not hold yet (one transaction);
    the rewards whose idempotency key the store holds for another reward are left out,
    returned with the reason."""
    report = DrainReport(records=len(chunk))
    conflicts: list[SetAside] = []
    rows = [r for r in chunk if isinstance(r, DecisionRow)]
    judged = [r for r in chunk if isinstance(r, JudgedReward)]
    if rows:
        ids = [r.event_id for r in rows]
        present = set(
            conn.execute(select(decisions.c.event_id).where(decisions.c.event_id.in_(ids)))
            .scalars()
            .all()
        )
        new = [r for r in rows if r.event_id not in present]
        write_events(conn, new)
        report.decisions, report.skipped = len(new), len(rows) - len(new)
    if judged:
        _drain_rewards(conn, judged, report, conflicts)
    return report, conflicts


def _identity(judged: JudgedReward) -> tuple[Any, ...]:
    """What tells ``judged`` from its event's other rewards (:data:`RECEIVED_IDENTITY`,
    then :data:`VERDICT_IDENTITY`)."""
    received = (getattr(judged.row, name) for name in RECEIVED_IDENTITY)
    return (*received, *(getattr(judged, name) for name in VERDICT_IDENTITY))


class _StoredRewards:
    """The stored rewards of some events: which ordinals each holds, how many rewards
    each position holds (with those this drain places), the id of the applied reward at
    each, and the id and ordinal of each reward by event and :func:`_identity`, until a
    journaled reward claims it (each stored row stands for one journaled reward)."""

    def __init__(self, conn: Connection, event_ids: Sequence[str]) -> None:
        r = rewards.c
        identity = [r[name] for name in RECEIVED_IDENTITY + VERDICT_IDENTITY]
        self.ordinals: dict[str, set[int]] = {}
        self.at_position: Counter[tuple[str, int]] = Counter()
        self._applied_at: dict[tuple[str, int], int] = {}
        self._unclaimed: dict[tuple[str, tuple[Any, ...]], list[tuple[int, int]]] = {}
        query = select(r.id, r.event_id, r.ordinal, *identity).where(r.event_id.in_(event_ids))
        for rid, event_id, ordinal, *of_row in conn.execute(query):
            row = dict(zip(RECEIVED_IDENTITY + VERDICT_IDENTITY, of_row, strict=True))
            at = (event_id, int(row["position"] or 0))
            self.ordinals.setdefault(event_id, set()).add(int(ordinal))
            self.at_position[at] += 1
            if row["applied"]:
                self._applied_at[at] = int(rid)
            found = self._unclaimed.setdefault((event_id, tuple(of_row)), [])
            found.append((int(ordinal), int(rid)))

    def claim(self, judged: JudgedReward) -> tuple[JudgedReward, int] | None:
        """The stored reward that is ``judged`` (under its journal ordinal first), now
        claimed: its verdict and id. Stored with the journal's verdict or, answered
        applied, as a repeat (:meth:`place` stores it so); None when none is."""
        verdicts = (judged, _as_repeat(judged)) if judged.applied else (judged,)
        for verdict in verdicts:
            found = self._unclaimed.get((judged.row.event_id, _identity(verdict)))
            if found:
                at = next((i for i, (o, _) in enumerate(found) if o == judged.ordinal), 0)
                return verdict, found.pop(at)[1]
        return None

    def place(self, judged: JudgedReward) -> JudgedReward:
        """``judged`` under its journal ordinal, or under its event's next one when
        another reward holds that; the ordinal is taken. A reward moved so, answered
        applied, is judged again as the writer judges (:func:`judge_rewards`) against
        what its event's position holds: the reward there another process stored first
        makes it a repeat (``duplicate``, or ``summed`` under the sum rule)."""
        event_id = judged.row.event_id
        held = self.ordinals.setdefault(event_id, set())
        if judged.ordinal not in held:
            held.add(judged.ordinal)
            self.at_position[(event_id, judged.row.position or 0)] += 1
            return judged
        ordinal = max(held) + 1
        held.add(ordinal)
        (again,) = judge_rewards([judged.row], Counter(), self.at_position)
        assert isinstance(again, JudgedReward)  # no keys given: no key repeats
        verdict = again if judged.applied else judged  # never learnt where it was not
        return dataclasses.replace(
            judged, ordinal=ordinal, applied=verdict.applied, status=verdict.status
        )

    def learnt_as(self, judged: JudgedReward, stored: JudgedReward, rid: int) -> int:
        """The id the head that learnt ``judged`` learnt, stored as ``stored`` under id
        ``rid``: its own, or, where the drain stored it as a repeat, that of the reward
        applied at its position (another process's, which the head here then has)."""
        if judged.applied and not stored.applied:
            return self._applied_at.get((judged.row.event_id, judged.row.position or 0), rid)
        return rid


def _as_repeat(judged: JudgedReward) -> JudgedReward:
    """``judged`` with the verdict of a repeat at its position."""
    return dataclasses.replace(judged, applied=False, status=judged.row.repeat_status)


def _drain_rewards(
    conn: Connection,
    judged: Sequence[JudgedReward],
    report: DrainReport,
    conflicts: list[SetAside],
) -> None:
    """Write the journaled rewards ``judged`` the store does not hold yet (see the module
    docstring), counting them in ``report``; those whose idempotency key the store holds
    for another reward are appended to ``conflicts``."""
    stored = _StoredRewards(conn, sorted({j.row.event_id for j in judged}))
    keyed = stored_keys(conn, [j.row for j in judged])
    new_rewards: list[JudgedReward] = []
    ids: dict[int, int] = {}  # id(record) -> the id of the stored row it is, or repeats
    for j in judged:
        found = stored.claim(j)
        key = j.row.idempotency_key
        first = None if key is None or found is not None else keyed.get((j.row.event_id, key))
        if found is not None:
            ids[id(j)] = stored.learnt_as(j, *found)
            report.skipped += 1
        elif first is None:
            placed = stored.place(j)
            report.renumbered += placed.ordinal != j.ordinal
            report.demoted += placed.applied != j.applied
            new_rewards.append(placed)
        elif first.same(j.row.value, j.row.position):
            ids[id(j)] = first.outcome.id  # the head here learnt it: the stored first is claimed
            report.repeats += 1
        else:
            conflicts.append((j, _key_conflict(j.row, first)))
    set_aside = {id(j) for j, _ in conflicts}
    inserted = iter(zip(new_rewards, insert_rewards(conn, new_rewards), strict=True))
    for j in judged:
        if id(j) in set_aside:
            continue
        if id(j) in ids:
            rid = ids[id(j)]
        else:
            placed, outcome = next(inserted)
            rid = stored.learnt_as(j, placed, outcome.id)
        report.reward_ids.append((j.row.model_version, rid, j.applied))
    report.rewards += len(new_rewards)


def _key_conflict(row: RewardRow, first: KeyedFirst) -> str:
    return (
        f"its idempotency_key {row.idempotency_key!r} is stored for reward {first.value!r} "
        f"at position {first.position or 0}; this one is {row.value!r} at position "
        f"{row.position or 0}"
    )


#: Around the writes of one drain transaction (the lease's check: ``Lease.writing``).
Guard = Callable[[Connection], AbstractContextManager[None]]


def _no_guard(_conn: Connection) -> AbstractContextManager[None]:
    return contextlib.nullcontext()


def drain_records(
    engine: Engine,
    records: Sequence[DecisionRow | JudgedReward],
    rejected: Path | None = None,
    guard: Guard | None = None,
    progress: Callable[[], None] | None = None,
) -> DrainReport:
    """Copy ``records`` into the store in order, skipping those already there.

    A chunk the store refuses for good (an integrity or data error: a reward whose
    decision retention deleted meanwhile) is written a record at a time, and each record
    it still refuses is appended to ``rejected`` (logged, counted in the report) instead
    of failing the drain: before, one such record failed every drain, kept the service
    degraded and its restart from starting. An outage still raises (the drain is
    retried). ``guard`` wraps the writes of each transaction (a lease that no longer
    holds raises there: the transaction rolls back, the drain stops); ``progress`` is
    called after each (the writer's stall watch: a store that stops answering in the
    middle of a chunk never raises)."""
    guard = guard or _no_guard
    started = time.perf_counter()
    report = DrainReport()
    for start in range(0, len(records), DRAIN_CHUNK):
        chunk = records[start : start + DRAIN_CHUNK]
        try:
            report.add(_write_chunk(engine, chunk, rejected, guard))
        except (IntegrityError, DataError):
            for record in chunk:
                report.add(_drain_or_reject(engine, record, rejected, guard))
                if progress is not None:
                    progress()
        if progress is not None:
            progress()
    report.seconds = time.perf_counter() - started
    if report.repeats:
        log.info(
            "journal: %d journaled rewards were already stored under their idempotency_key "
            "(sent again through another process): dropped as repeats",
            report.repeats,
        )
    if report.renumbered:
        log.info(
            "journal: %d journaled rewards were stored under a later ordinal than the "
            "journal's (another process stored a reward of their event meanwhile)",
            report.renumbered,
        )
    if report.demoted:
        log.info(
            "journal: %d journaled rewards answered applied were stored as repeats "
            "(another process stored a reward at their event's position first)",
            report.demoted,
        )
    return report


def _write_chunk(
    engine: Engine,
    chunk: Sequence[DecisionRow | JudgedReward],
    rejected: Path | None,
    guard: Guard,
) -> DrainReport:
    """One transaction of a drain; then the rewards it left out for their key set aside."""
    with engine.begin() as conn, guard(conn):
        report, conflicts = _drain_chunk(conn, chunk)
    for record, reason in conflicts:
        _set_aside(record, reason, rejected)
    report.rejected += len(conflicts)
    return report


def _drain_or_reject(
    engine: Engine, record: DecisionRow | JudgedReward, rejected: Path | None, guard: Guard
) -> DrainReport:
    try:
        return _write_chunk(engine, [record], rejected, guard)
    except (IntegrityError, DataError) as exc:
        _set_aside(record, (str(exc.orig).strip().splitlines() or [""])[0], rejected)
        return DrainReport(records=1, rejected=1)


def _set_aside(record: DecisionRow | JudgedReward, reason: str, rejected: Path | None) -> None:
    """Log ``record``, which the store refuses for good, and append it to ``rejected``."""
    row = record.row if isinstance(record, JudgedReward) else record
    kind = "reward" if isinstance(record, JudgedReward) else "decision"
    log.error(
        "journal: the event store refuses the %s of event %s for good (%s): kept in %s",
        kind,
        row.event_id,
        reason,
        rejected,
    )
    if rejected is not None:
        fd = os.open(rejected, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, encode_record(record))
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------- ledger
@dataclass
class _EventRewards:
    """The rewards of one event the ledger has seen: how many per position, and the
    first of each idempotency key."""

    at_position: Counter[int] = field(default_factory=Counter)
    keys: dict[str, KeyedFirst] = field(default_factory=dict)


class RewardLedger:
    """Rewards per position, and the first reward of each idempotency key, of recent
    events whose every reward this process has seen (bounded, least recently used
    first out)."""

    def __init__(self, size: int) -> None:
        self.size = size
        # None: no reward yet (most events; their rewards' record only once there is one)
        self._events: OrderedDict[str, _EventRewards | None] = OrderedDict()

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._events

    def add_decision(self, event_id: str) -> None:
        self._events[event_id] = None
        while len(self._events) > self.size:
            self._events.popitem(last=False)

    def add_reward(self, row: RewardRow, outcome: RewardOutcome) -> None:
        """A reward written (to the store or the journal) with its ``outcome``; a repeat
        of a key (nothing written) changes nothing."""
        if row.event_id not in self._events or outcome.repeat_of is not None:
            return
        seen = self._events[row.event_id] or _EventRewards()
        seen.at_position[row.position or 0] += 1
        if row.idempotency_key is not None:
            seen.keys[row.idempotency_key] = KeyedFirst(row.value, row.position, outcome)
        self._events[row.event_id] = seen
        self._events.move_to_end(row.event_id)

    def counters(self, event_ids: set[str]) -> tuple[Counter[str], Counter[tuple[str, int]], Keyed]:
        """``seen``, ``at_position`` and ``keyed`` for :func:`judge_rewards`."""
        seen: Counter[str] = Counter()
        at_position: Counter[tuple[str, int]] = Counter()
        keyed: Keyed = {}
        for event_id in event_ids:
            rewards_seen = self._events[event_id] or _EventRewards()
            for position, n in rewards_seen.at_position.items():
                seen[event_id] += n
                at_position[(event_id, position)] += n
            for key, first in rewards_seen.keys.items():
                keyed[(event_id, key)] = first
        return seen, at_position, keyed

    def clear(self) -> None:
        self._events.clear()


# ---------------------------------------------------------------------- journal
class JournalObserver(Protocol):
    def on_journal_append(self, n: int, seconds: float, events: int, size: int) -> None: ...

    def on_journal_drain(self, n: int, events: int, size: int) -> None: ...


@contextlib.contextmanager
def _locked_segment(path: Path) -> Iterator[int | None]:
    """An fd of ``path`` under an exclusive lock, or None when a live process holds it
    or another one drained and deleted it meanwhile."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        yield None if os.fstat(fd).st_nlink == 0 else fd
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _store_file(segment: Path) -> Path:
    """Where a segment's store is named (:class:`Journal`'s ``store``)."""
    return segment.with_name(segment.name + ".store")


def _write_durably(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """The local journal of one service process.

    Parameters
    ----------
    directory : Path
        Where segments live (local disk; created).
    max_bytes : int
        Largest segment: beyond it events are refused (503) until the database is back.
    exclusive : bool
        This process is the store's only writer (one worker): the ledger's counts are
        exact for every decision it committed.
    ledger_size : int
        Recent events whose reward counts are kept.
    observer : JournalObserver, optional
        Metrics.
    store : str, optional
        The store the events belong to (:func:`eventstore.engine.store_identity`),
        written beside each segment (``<segment>.store``): a start drains a segment only
        into its own store (before, a restart with another ``BANDITOPS_DATABASE_URL`` on
        the same workspace drained a PostgreSQL store's events into SQLite). A segment
        without one (an older release's) drains anywhere.
    """

    def __init__(
        self,
        directory: Path,
        max_bytes: int = Settings.model_fields["journal_max_bytes"].default,
        exclusive: bool = True,
        ledger_size: int = Settings.model_fields["decision_cache_size"].default,
        observer: JournalObserver | None = None,
        store: str | None = None,
    ) -> None:
        self.store = store
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.exclusive = exclusive
        self.ledger = RewardLedger(max(ledger_size, 1))
        self.observer = observer
        self.path: Path | None = None
        self._fd: int | None = None
        self._size = 0
        self._failure: str | None = None
        self._events = 0
        self._index: dict[str, StoredDecision] = {}
        self._lock = threading.Lock()
        self.appended = 0
        self.drained = 0
        #: around the writes of each drain transaction (the service sets its lease's)
        self.guard: Guard | None = None

    # ------------------------------------------------------------------ lifecycle
    def recover(self, engine: Engine, progress: Callable[[], None] | None = None) -> DrainReport:
        """Drain and delete every segment no live process holds (call before
        :meth:`open`, with the database reachable; ``progress`` called after each
        transaction: :func:`drain_records`). Each segment drained is counted by the
        observer as :meth:`drain` counts: before, a restart that drained a previous
        run's journal left ``banditops_journal_drained_total`` at 0."""
        self.directory.mkdir(parents=True, exist_ok=True)
        report = DrainReport()
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            with _locked_segment(path) as fd:
                if fd is None:
                    continue  # another worker's live segment
                self._check_store(path, store_identity(engine))
                data = path.read_bytes()
                found, valid = read_records(data)
                if valid < len(data):
                    log.warning(
                        "journal %s: %d bytes of a torn record at its end (never "
                        "acknowledged) are dropped",
                        path.name,
                        len(data) - valid,
                    )
                rejected = self.directory / REJECTED_FILE
                drained = drain_records(engine, found, rejected, self.guard, progress)
                report.add(drained)
                path.unlink(missing_ok=True)
                _store_file(path).unlink(missing_ok=True)
                self.drained += drained.records
                if self.observer is not None:  # counted as the drains of an outage are
                    self.observer.on_journal_drain(drained.records, 0, 0)
        _fsync_dir(self.directory)
        if report.records:
            log.warning(
                "journal: drained %d events left by a previous run (%d already stored, %d "
                "refused for good) in %.2f s",
                report.records,
                report.skipped,
                report.rejected,
                report.seconds,
            )
        return report

    def open(self) -> Journal:
        """Create this process's segment (empty, locked, its directory entry fsynced)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"segment-{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{_SUFFIX}"
        self.path = self.directory / name
        if self.store is not None:  # first: a segment is never without its store's name
            _write_durably(_store_file(self.path), self.store.encode())
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd
        _fsync_dir(self.directory)
        return self

    def _check_store(self, path: Path, store: str) -> None:
        """Raise :class:`JournalError` when segment ``path`` holds events of another
        store than ``store`` (its ``.store`` file)."""
        with contextlib.suppress(FileNotFoundError):
            own = _store_file(path).read_text(errors="replace").strip()
            if own and own != store and path.stat().st_size > 0:
                raise JournalError(
                    f"the journal segment {path.name} holds events of the store {own[:200]}, "
                    f"not of this service's {store[:200]}: start the service with that "
                    f"store to drain them, or delete {_store_file(path).name} to drain "
                    "them into this one"
                )

    def close(self) -> None:
        """Release the segment; an empty one is deleted, a non-empty one waits for the
        next :meth:`recover`."""
        if self._fd is None or self.path is None:
            return
        if self._size == 0:
            self.path.unlink(missing_ok=True)
            _store_file(self.path).unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    # ------------------------------------------------------------------ state
    @property
    def events(self) -> int:
        """Events in the journal, not yet in the store."""
        return self._events

    @property
    def size(self) -> int:
        return self._size

    @property
    def failure(self) -> str | None:
        """Why its last write of a batch failed (its disk full, or the batch past
        ``max_bytes``), until one succeeds; None when it did not."""
        return self._failure

    @property
    def full(self) -> bool:
        return self._size >= self.max_bytes

    def others_hold_events(self) -> bool:
        """Whether another segment of the directory holds events not yet in the store
        (another worker's journal, or a stopped process's, drained at the next start)."""
        for path in self.directory.glob(f"*{_SUFFIX}"):
            if path != self.path:
                with contextlib.suppress(FileNotFoundError):  # drained meanwhile
                    if path.stat().st_size > 0:
                        return True
        return False

    def find(self, event_id: str) -> StoredDecision | None:
        """A journaled decision (not yet in the store), for its rewards."""
        with self._lock:
            return self._index.get(event_id)

    # ------------------------------------------------------------------ writer thread
    def observe(self, items: Sequence[Any], results: Sequence[Any]) -> None:
        """After a database commit: count the decisions and rewards in the ledger."""
        for row in decision_rows(items):
            self.ledger.add_decision(row.event_id)
        for item, result in zip(items, results, strict=True):
            if isinstance(item, RewardRow) and isinstance(result, RewardOutcome):
                self.ledger.add_reward(item, result)

    def on_outage(self) -> None:
        """The database just became unreachable."""
        if not self.exclusive:
            self.ledger.clear()  # another worker may reward the decisions counted here

    def spool(self, items: Sequence[Any]) -> list[Any]:
        """Append ``items`` durably (one fsync); per item its result (None for a decision,
        a journaled :class:`~eventstore.records.RewardOutcome` for a reward) or the
        exception that refuses it."""
        if self._fd is None:
            raise JournalError("the journal is not open.")
        out: list[Any] = [None] * len(items)
        accepted: list[tuple[int, DecisionRow | JudgedReward]] = []
        reward_slots = []
        for i, item in enumerate(items):
            if isinstance(item, DecisionRow | DecisionGroup):  # a group's rows: one append
                for row in decision_rows([item]):
                    accepted.append((i, row))
                    self.ledger.add_decision(row.event_id)  # no reward yet: nothing to undo
            elif isinstance(item, RewardRow):
                if item.event_id in self.ledger:
                    reward_slots.append(i)
                else:
                    out[i] = JournalError(
                        f"the event store is unreachable and the reward count of event "
                        f"{item.event_id} is not known here; retry when it is back."
                    )
            else:
                out[i] = JournalError(
                    f"the event store is unreachable; a {type(item).__name__} is not journaled."
                )
        rows: list[RewardRow] = [items[i] for i in reward_slots]
        judged = judge_rewards(rows, *self.ledger.counters({r.event_id for r in rows}))
        accepted += [
            (i, j) for i, j in zip(reward_slots, judged, strict=True) if isinstance(j, JudgedReward)
        ]
        accepted.sort(key=lambda pair: pair[0])
        if accepted:
            error = self._append([item for _, item in accepted])
            if error is not None:
                for i in [i for i, _ in accepted] + reward_slots:
                    out[i] = error
                return out
        # the ledger counts the rewards that are durable only: one counted but never
        # written made the event's next reward (its retry) a repeat, and no head learnt it
        with self._lock:
            for _, item in accepted:
                if isinstance(item, DecisionRow):
                    self._index[item.event_id] = stored_decision(item)
        journaled = [
            RewardOutcome(0, j.ordinal, j.applied, j.status, True) for j in written(judged)
        ]
        for i, sent, outcome in zip(reward_slots, rows, outcomes(judged, journaled), strict=True):
            out[i] = outcome
            self.ledger.add_reward(sent, outcome)
        return out

    def _append(self, records: Sequence[DecisionRow | JudgedReward]) -> JournalError | None:
        """Append ``records`` durably; the error that refused them, if one did."""
        data = b"".join(encode_record(item) for item in records)
        if self._size + len(data) > self.max_bytes:
            error = JournalError(
                f"the journal is full ({self._size} of {self.max_bytes} bytes) and the "
                "event store is unreachable."
            )
            self._failure = str(error)
            return error
        started = time.perf_counter()
        try:
            self._write(data)
        except OSError as exc:
            log.error("journal: cannot write %s: %s", self.path, exc)
            error = JournalError(f"the journal write failed ({exc.strerror or exc})")
            self._failure = f"{error} on {self.path}"
            return error
        self._failure = None
        seconds = time.perf_counter() - started
        self._events += len(records)
        self.appended += len(records)
        if self.observer is not None:
            self.observer.on_journal_append(len(records), seconds, self._events, self._size)
        return None

    def _write(self, data: bytes) -> None:
        """Append and fsync; on failure the segment is cut back to what it was."""
        fd = self._fd
        if fd is None:
            raise JournalError("the journal is not open.")
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fdatasync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._size)
                os.fsync(fd)
            raise
        self._size += len(data)

    def drain(self, engine: Engine, progress: Callable[[], None] | None = None) -> DrainReport:
        """Copy this process's journaled events into the store, then empty the segment
        (``progress`` called after each transaction: :func:`drain_records`).

        Raises whatever the database raises (the segment is kept, and the next drain
        skips what this one wrote)."""
        if self._fd is None or self._events == 0:
            return DrainReport()
        os.lseek(self._fd, 0, os.SEEK_SET)
        data = b""
        while chunk := os.read(self._fd, 1 << 20):
            data += chunk
        found, _ = read_records(data)
        rejected = self.directory / REJECTED_FILE
        report = drain_records(engine, found, rejected, self.guard, progress)
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)
        with self._lock:
            self._index.clear()
        self._size = 0
        self._events = 0
        self.drained += report.records
        if self.observer is not None:
            self.observer.on_journal_drain(report.records, 0, 0)
        log.warning(
            "event store back: drained %d journaled events (%d already stored, %d refused "
            "for good) in %.2f s",
            report.records,
            report.skipped,
            report.rejected,
            report.seconds,
        )
        return report
