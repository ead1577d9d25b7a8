"""Group commit: many events share one transaction, every acknowledged event is stored,
one bad event fails alone, and a reward is applied at most once per event."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from eventstore import records
from eventstore.migrate import upgrade
from eventstore.records import RewardOutcome
from eventstore.schema import rewards
from serving.store import GroupCommitWriter, WriterClosedError
from serving.store.repository import EventStore, write_events
from tests.serving_helpers import HeldWrite, decision_row, reward_row

pytest_plugins = ["tests.serving_fixtures"]


def test_pending_events_commit_together(engine: sa.Engine, rng: np.random.Generator) -> None:
    batches: list[int] = []
    writer = GroupCommitWriter(
        engine, write_events, max_batch=64, on_batch=lambda n, _s: batches.append(n)
    )
    rows = [decision_row(rng) for _ in range(100)]
    futures = [writer.submit(row) for row in rows]  # queued before the thread starts
    writer.start()
    for f in futures:
        assert f.result(timeout=30) is None
    writer.close()
    assert batches == [64, 36]
    assert EventStore(engine).count_rows()["decisions"] == 100


def test_concurrent_submitters_all_committed(engine: sa.Engine) -> None:
    writer = GroupCommitWriter(engine, write_events).start()
    acked: list[str] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        local = np.random.default_rng(seed)
        for _ in range(25):
            row = decision_row(local)
            writer.submit(row).result(timeout=30)
            with lock:
                acked.append(row.event_id)

    threads = [threading.Thread(target=client, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    assert len(acked) == 200
    assert EventStore(engine).existing_event_ids(acked) == set(acked)
    assert writer.items == 200 and writer.batches <= 200


def test_a_bad_event_fails_alone(engine: sa.Engine, rng: np.random.Generator) -> None:
    first = decision_row(rng, event_id="dup")
    writer = GroupCommitWriter(engine, write_events)
    good = [decision_row(rng) for _ in range(5)]
    futures: list[Future[object]] = [writer.submit(first)]
    futures += [writer.submit(row) for row in good[:2]]
    futures.append(writer.submit(decision_row(rng, event_id="dup")))  # unique violation
    futures += [writer.submit(row) for row in good[2:]]
    writer.start()
    outcomes = [f.exception(timeout=30) for f in futures]
    writer.close()
    assert [o is None for o in outcomes] == [True, True, True, False, True, True, True]
    assert isinstance(outcomes[3], IntegrityError)
    stored = EventStore(engine).existing_event_ids(["dup"] + [r.event_id for r in good])
    assert stored == {"dup"} | {r.event_id for r in good}


def test_closed_writer_refuses_and_flushes(engine: sa.Engine, rng: np.random.Generator) -> None:
    writer = GroupCommitWriter(engine, write_events)
    pending = writer.submit(decision_row(rng))
    writer.start()
    writer.close()
    assert pending.result(timeout=1) is None
    with pytest.raises(WriterClosedError):
        writer.submit(decision_row(rng))


def test_a_withdrawn_event_is_never_written(engine: sa.Engine, rng: np.random.Generator) -> None:
    """An item whose future is cancelled while it waits in the queue (its caller told its
    client the event was not stored) is left out; the rest of its batch is written. It
    used to be written all the same: a 503'd decision could land after its client had
    decided without it."""
    writer = GroupCommitWriter(engine, write_events)
    rows = [decision_row(rng) for _ in range(3)]
    futures = [writer.submit(row) for row in rows]
    assert futures[1].cancel()  # withdrawn before the batch began
    writer.start()
    assert futures[0].result(timeout=30) is None and futures[2].result(timeout=30) is None
    writer.close()
    stored = EventStore(engine).existing_event_ids([row.event_id for row in rows])
    assert stored == {rows[0].event_id, rows[2].event_id}


def test_a_write_under_way_is_timed_and_its_items_cannot_be_withdrawn(
    engine: sa.Engine, rng: np.random.Generator
) -> None:
    held = HeldWrite()
    writer = GroupCommitWriter(engine, held).start()
    try:
        assert writer.in_flight_s() == 0.0
        held.armed = True
        in_flight = writer.submit(decision_row(rng))
        assert held.entered.wait(30)
        queued = writer.submit(decision_row(rng))
        time.sleep(0.2)
        assert writer.in_flight_s() >= 0.2
        assert not in_flight.cancel()  # its transaction began: it will be written
        assert queued.cancel()
        held.armed = False
        held.release.set()
        assert in_flight.result(timeout=30) is None
        writer.submit(decision_row(rng)).result(timeout=30)  # the writer goes on
        assert writer.in_flight_s() == 0.0
    finally:
        held.release.set()
        writer.close()
    assert EventStore(engine).count_rows()["decisions"] == 2


def test_a_waiter_that_leaves_does_not_withdraw_the_event(
    engine: sa.Engine, rng: np.random.Generator
) -> None:
    """The service's wait (:func:`serving.service._on_loop`) cancelled, as when a client
    disconnects: the event is written all the same (only an explicit withdrawal, past
    the commit deadline, leaves it out)."""
    import asyncio

    from serving.service import _on_loop

    held = HeldWrite()
    held.armed = True
    writer = GroupCommitWriter(engine, held).start()
    row = decision_row(rng)

    async def leave() -> None:
        future = writer.submit(row)
        waiting = asyncio.ensure_future(_on_loop(future))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        held.release.set()
        await asyncio.wrap_future(future)

    try:
        asyncio.run(leave())
    finally:
        held.release.set()
        writer.close()
    assert EventStore(engine).existing_event_ids([row.event_id]) == {row.event_id}


@pytest.mark.postgres
def test_a_writer_statement_past_its_bound_fails_as_an_outage(
    postgres_url: str, rng: np.random.Generator
) -> None:
    """``statement_timeout_s`` bounds the writer's own statements (PostgreSQL's
    ``statement_timeout`` on its connection, out of the pool): a statement that runs
    past it is cancelled, an outage (journaled in the service), never committed late.
    Other connections of the engine keep the server's default."""
    from eventstore.scratch import scratch_postgres_database
    from serving.store.writer import is_outage

    def slow(conn: sa.Connection, items: object) -> list[object]:
        conn.exec_driver_sql("SELECT pg_sleep(10)")
        return write_events(conn, items)  # type: ignore[arg-type]

    with scratch_postgres_database(postgres_url, prefix="banditops_stmt") as url:
        eng = sa.create_engine(url)
        upgrade(eng)
        writer = GroupCommitWriter(eng, slow, statement_timeout_s=0.5).start()
        try:
            started = time.monotonic()
            failed = writer.submit(decision_row(rng)).exception(timeout=60)
            took = time.monotonic() - started
        finally:
            writer.close()
        try:
            assert isinstance(failed, sa.exc.DBAPIError) and is_outage(failed), failed
            assert took < 8, took  # four tries cancelled at the bound, not one whole sleep
            assert EventStore(eng).count_rows()["decisions"] == 0
            with eng.connect() as conn:
                assert conn.exec_driver_sql("SHOW statement_timeout").scalar_one() == "0"
        finally:
            eng.dispose()


def test_reward_ordinals_first_applied_rest_by_rule(
    engine: sa.Engine, rng: np.random.Generator
) -> None:
    decision = decision_row(rng)
    writer = GroupCommitWriter(engine, write_events)
    writer.submit(decision)
    eid = decision.event_id
    batch = [
        reward_row(eid, 1.0),
        reward_row(eid, 0.5, repeat_status=records.SUMMED),
        reward_row(eid, 0.0),
    ]
    futures = [writer.submit(r) for r in batch]
    writer.start()
    got = [f.result(timeout=30) for f in futures]
    later = writer.submit(reward_row(eid, 1.0)).result(timeout=30)
    writer.close()
    assert [(o.ordinal, o.applied, o.status) for o in [*got, later]] == [
        (0, True, records.APPLIED),
        (1, False, records.SUMMED),
        (2, False, records.DUPLICATE),
        (3, False, records.DUPLICATE),
    ]
    assert all(isinstance(o, RewardOutcome) for o in got)
    assert [o.id for o in [*got, later]] == sorted(o.id for o in [*got, later])


def test_ineligible_first_reward_is_stored_not_applied(
    engine: sa.Engine, rng: np.random.Generator
) -> None:
    d1, d2 = decision_row(rng), decision_row(rng)
    writer = GroupCommitWriter(engine, write_events).start()
    writer.submit(d1).result(timeout=30)
    writer.submit(d2).result(timeout=30)
    late = writer.submit(
        reward_row(d1.event_id, 1.0, eligible=False, ineligible_status=records.LATE)
    ).result(timeout=30)
    unserved = writer.submit(reward_row(d2.event_id, 1.0, eligible=False)).result(timeout=30)
    writer.close()
    assert (late.applied, late.status) == (False, records.LATE)
    assert (unserved.applied, unserved.status) == (False, records.NOT_SERVED)


def test_one_event_never_gets_two_first_rewards(
    engine: sa.Engine, rng: np.random.Generator
) -> None:
    """The unique (event_id, ordinal) constraint, which makes a second writer process
    that races on the same event retry instead of applying twice."""
    decision = decision_row(rng)
    with engine.begin() as conn:
        write_events(conn, [decision, reward_row(decision.event_id, 1.0)])
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(
            sa.insert(rewards),
            {
                "event_id": decision.event_id,
                "ordinal": 0,
                "value": 1.0,
                "ts": decision.created_at,
                "received_at": decision.created_at,
                "applied": True,
                "status": records.APPLIED,
                "model_version": "v1",
            },
        )


def _lost_commit_replies(engine: sa.Engine, commits: bool, times: int = 1) -> list[int]:
    """Make the next ``times`` COMMITs raise the driver's "connection lost" error, after
    committing (``commits``: the reply was lost) or instead of it; the count of raises."""
    dialect = engine.dialect
    real = dialect.do_commit
    raised: list[int] = []

    def do_commit(dbapi_connection: object) -> None:
        if len(raised) >= times:
            real(dbapi_connection)
            return
        if commits:
            real(dbapi_connection)
        raised.append(1)
        if dialect.name == "sqlite":
            raise dialect.dbapi.ProgrammingError("Cannot operate on a closed database.")
        raise dialect.dbapi.OperationalError("server closed the connection unexpectedly")

    dialect.do_commit = do_commit  # type: ignore[method-assign]
    return raised


@pytest.mark.parametrize("committed", [True, False], ids=["reply-lost", "not-committed"])
def test_a_commit_whose_outcome_is_unknown_is_never_written_twice(
    engine: sa.Engine, rng: np.random.Generator, committed: bool
) -> None:
    """The COMMIT raises a disconnect: either the database committed and the reply was
    lost, or it did not. The writer asks the store: every event is stored once and
    answered as stored (before: the retry wrote each reward again, as a ``duplicate``
    answered to its only sender, and a decision of the batch failed its UNIQUE key: a
    503 for a stored decision)."""
    from serving.store.repository import batch_landed

    store = EventStore(engine)
    first = decision_row(rng)
    writer = GroupCommitWriter(engine, write_events, landed=batch_landed).start()
    try:
        writer.submit(first).result(timeout=30)
        raised = _lost_commit_replies(engine, commits=committed)
        batch = [decision_row(rng), reward_row(first.event_id, 1.0)]
        futures = [writer.submit(item) for item in batch]
        decision, reward = (f.result(timeout=30) for f in futures)
    finally:
        writer.close()
    assert raised == [1]
    assert decision is None
    assert isinstance(reward, RewardOutcome) and (reward.ordinal, reward.applied) == (0, True)
    assert store.count_rows()["decisions"] == 2
    with engine.connect() as conn:
        stored = conn.execute(sa.select(rewards.c.id, rewards.c.ordinal)).all()
    assert [tuple(r) for r in stored] == [(reward.id, 0)]


def test_a_commit_the_store_cannot_confirm_fails_without_a_retry(
    engine: sa.Engine, rng: np.random.Generator
) -> None:
    """When the store cannot say whether the batch is there (no spool to journal it),
    its requests fail rather than risk a second copy."""
    from serving.store.writer import CommitOutcomeUnknownError

    def unreachable(*_args: object) -> bool:
        raise sa.exc.OperationalError("select", {}, Exception("server gone"))

    writer = GroupCommitWriter(engine, write_events, landed=unreachable).start()
    try:
        raised = _lost_commit_replies(engine, commits=True, times=5)
        future = writer.submit(decision_row(rng))
        with pytest.raises(CommitOutcomeUnknownError, match="could not say"):
            future.result(timeout=30)
    finally:
        writer.close()
    assert raised == [1]
    assert EventStore(engine).count_rows()["decisions"] == 1


class _Journal:
    """A journal that takes every batch."""

    failure = None

    def __init__(self) -> None:
        self.batches: list[int] = []

    def spool(self, items: list[object]) -> list[object]:
        self.batches.append(len(items))
        return [None for _ in items]

    def drain(self, engine: object, progress: object = None) -> None:
        raise sa.exc.OperationalError("drain", {}, Exception("still down"))

    def observe(self, items: object, results: object) -> None:
        pass

    def on_outage(self) -> None:
        pass


def test_an_outage_s_retries_stop_at_their_budget_and_the_journal_takes_the_batch(
    engine: sa.Engine, rng: np.random.Generator
) -> None:
    """Each try of a store out of reach took its connect timeout (5 s): four tries kept a
    batch 20 s, past its requests' deadline, before the journal took it."""
    tries: list[float] = []

    def unreachable(conn: sa.Connection, items: object) -> list[object]:
        tries.append(time.monotonic())
        time.sleep(0.3)  # a connect timeout
        raise sa.exc.OperationalError("connect", {}, Exception("timed out"))

    journal = _Journal()
    writer = GroupCommitWriter(
        engine, unreachable, spool=journal, retry_budget_s=0.5, probe_s=60.0
    ).start()
    try:
        started = time.monotonic()
        assert writer.submit(decision_row(rng)).result(timeout=30) is None  # journaled
        took = time.monotonic() - started
    finally:
        writer.close(timeout=1)
    assert len(tries) == 2 and took < 1.2, (tries, took)
    assert journal.batches == [1] and writer.degraded


class _FullDisk(_Journal):
    """A journal on a full disk: its writes fail until ``space`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.space = False

    def spool(self, items: list[object]) -> list[object]:
        if not self.space:
            raise OSError(28, "No space left on device")
        return super().spool(items)


def test_a_journal_that_cannot_write_is_reported_until_it_can(
    engine: sa.Engine, rng: np.random.Generator
) -> None:
    """The store is down and the journal's disk full: the events fail (503) and the
    writer says so (``spool_failing``: the service's /readyz answers 503 ``unavailable``;
    before it said 200 and alternated with ``ready``) until a journal write succeeds."""

    def down(*_args: object) -> list[object]:
        raise sa.exc.OperationalError("insert", {}, Exception("server gone"))

    journal = _FullDisk()
    writer = GroupCommitWriter(engine, down, spool=journal, probe_s=60.0).start()
    try:
        with pytest.raises(OSError, match="No space left"):
            writer.submit(decision_row(rng)).result(timeout=30)
        assert writer.degraded and writer.spool_failing
        journal.space = True
        assert writer.submit(decision_row(rng)).result(timeout=30) is None
        assert writer.degraded and not writer.spool_failing
    finally:
        writer.close(timeout=1)


def test_a_real_journal_on_a_full_disk_is_reported_until_it_can_write(
    engine: sa.Engine, rng: np.random.Generator, tmp_path: Path
) -> None:
    """The journal refuses a batch it cannot write item by item, without raising: on a
    full disk (its segment's writes fail with ENOSPC: here ``/dev/full`` in its place)
    and past its byte cap, every event got a 503 while the writer said nothing was
    failing, and ``/readyz`` 200 ``accepting``. Now it is reported until a write
    succeeds."""
    import os

    from serving.store.journal import Journal, JournalError

    def down(*_args: object) -> list[object]:
        raise sa.exc.OperationalError("insert", {}, Exception("server gone"))

    journal = Journal(tmp_path / "journal").open()
    assert journal._fd is not None and journal.path is not None
    segment = os.dup(journal._fd)
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, journal._fd)  # the segment's disk is full
    writer = GroupCommitWriter(engine, down, spool=journal, probe_s=60.0).start()
    try:
        refused = writer.submit(decision_row(rng)).exception(timeout=30)
        assert isinstance(refused, JournalError) and "No space left" in str(refused)
        assert writer.degraded and writer.spool_failing and journal.events == 0
        os.dup2(segment, journal._fd)  # space again
        assert writer.submit(decision_row(rng)).result(timeout=30) is None
        assert not writer.spool_failing and journal.events == 1
        journal.max_bytes = journal.size + 10  # the byte cap reached
        assert isinstance(writer.submit(decision_row(rng)).exception(timeout=30), JournalError)
        assert writer.spool_failing
    finally:
        writer.close(timeout=1)
        os.close(full)
        os.close(segment)
        journal.close()
