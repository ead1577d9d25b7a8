"""The local journal (serving.store.journal) on its own and behind the group-commit
writer: records survive byte for byte, a torn tail is dropped, a drain is idempotent
(twice, or after a commit whose acknowledgement was lost, writes nothing twice), reward
verdicts while degraded are exact or refused, and a writer whose PostgreSQL link is cut
keeps acknowledging events and drains them when the link is back."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from benchmarks.faults import TcpProxy
from eventstore import records
from eventstore.engine import make_engine
from eventstore.migrate import upgrade
from eventstore.records import JudgedReward, RewardOutcome, SnapshotRow
from eventstore.schema import rewards
from eventstore.scratch import scratch_postgres_database
from serving.store import GroupCommitWriter
from serving.store.journal import (
    Journal,
    JournalError,
    drain_records,
    encode_record,
    read_records,
)
from serving.store.repository import EventStore, RefusedReward, batch_landed, write_events
from tests.serving_helpers import decision_row, reward_row

pytest_plugins = ["tests.serving_fixtures"]


def _slate_row(rng: np.random.Generator) -> records.DecisionRow:
    row = decision_row(rng, n=5)
    return dataclasses.replace(
        row,
        ranking=(2, 0, 4),
        slate_propensities=(0.5, 0.25, 1.0 / 3.0),
        position_propensities=(0.5, 0.3, 0.2),
        retrieval={"k": 5, "index": "exact", "scores": [0.1, float("nan")]},
        candidate_versions=(1, 1, 2, 1, 3),
        count_impressions=True,
    )


def _same(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, float) and np.isnan(a):
        return isinstance(b, float) and np.isnan(b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))  # type: ignore[arg-type]
    return a == b and type(a) is type(b)


def test_records_round_trip_exactly_and_a_torn_tail_is_dropped(
    rng: np.random.Generator,
) -> None:
    decision = _slate_row(rng)
    judged = JudgedReward(reward_row(decision.event_id, 0.25, position=2), 0, True, records.APPLIED)
    data = encode_record(decision) + encode_record(judged)
    got, valid = read_records(data)
    assert valid == len(data) and len(got) == 2
    back = got[0]
    assert isinstance(back, records.DecisionRow)
    for f in dataclasses.fields(records.DecisionRow):
        assert _same(getattr(decision, f.name), getattr(back, f.name)), f.name
    assert got[1] == judged  # ``learn`` is not compared (nor journaled)

    third = encode_record(decision_row(rng))
    for cut in (3, 9, len(third) - 1):  # inside the header, the payload, the last byte
        found, valid = read_records(data + third[:cut])
        assert len(found) == 2 and valid == len(data)
    flipped = bytearray(data + third)
    flipped[len(data) + 20] ^= 0xFF  # a payload byte: the checksum no longer holds
    assert len(read_records(bytes(flipped))[0]) == 2


def test_drain_is_idempotent_even_after_an_unacknowledged_commit(
    engine: sa.Engine, rng: np.random.Generator
) -> None:
    rows = [decision_row(rng) for _ in range(6)]
    judged = [
        JudgedReward(reward_row(rows[0].event_id, 1.0), 0, True, records.APPLIED),
        JudgedReward(
            reward_row(rows[0].event_id, 0.0, repeat_status=records.DUPLICATE),
            1,
            False,
            records.DUPLICATE,
        ),
        JudgedReward(reward_row(rows[3].event_id, 0.5), 0, True, records.APPLIED),
    ]
    journal = [*rows[:4], judged[0], judged[1], *rows[4:], judged[2]]
    with engine.begin() as conn:  # the first two were committed, but the ack was lost
        write_events(conn, rows[:2])
    first = drain_records(engine, journal)
    assert (first.decisions, first.rewards, first.skipped) == (4, 3, 2)
    again = drain_records(engine, journal)
    assert (again.decisions, again.rewards, again.skipped) == (0, 0, len(journal))
    assert [rid for _, rid, _ in again.reward_ids] == [rid for _, rid, _ in first.reward_ids]
    store = EventStore(engine)
    assert store.count_rows() == {"decisions": 6, "rewards": 3, "head_snapshots": 0}
    stored = {
        (r.event_id, r.ordinal, r.applied) for r in engine.connect().execute(sa.select(rewards))
    }
    assert stored == {(j.row.event_id, j.ordinal, j.applied) for j in judged}


def test_degraded_verdicts_are_exact_or_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    journal = Journal(tmp_path / "journal", exclusive=True, ledger_size=100).open()
    old, committed = decision_row(rng), decision_row(rng)
    # the database took ``committed`` and one reward of it before the outage
    journal.observe([committed], [None])
    journal.observe([reward_row(committed.event_id, 1.0)], [RewardOutcome(7, 0, True, "applied")])
    fresh = decision_row(rng)
    out = journal.spool(
        [
            fresh,
            reward_row(fresh.event_id, 1.0),
            reward_row(fresh.event_id, 0.0),
            reward_row(committed.event_id, 1.0),
            reward_row(committed.event_id, 1.0, position=1),
            reward_row(old.event_id, 1.0),  # decided before this process: count unknown
            SnapshotRow("v1", fresh.created_at, 0, 0, "p", b"x"),
        ]
    )
    assert out[0] is None
    assert [(o.ordinal, o.applied, o.status, o.journaled) for o in out[1:5]] == [
        (0, True, records.APPLIED, True),
        (1, False, records.DUPLICATE, True),
        (1, False, records.DUPLICATE, True),
        (2, True, records.APPLIED, True),  # another position of a slate
    ]
    assert all(isinstance(o, JournalError) for o in out[5:])
    assert journal.events == 5 and journal.find(fresh.event_id) is not None
    found, _ = read_records(journal.path.read_bytes())  # type: ignore[union-attr]
    assert [type(r).__name__ for r in found] == ["DecisionRow"] + ["JudgedReward"] * 4

    shared = Journal(tmp_path / "shared", exclusive=False).open()
    shared.observe([committed], [None])
    shared.on_outage()  # another worker may have rewarded it: no verdict
    assert isinstance(shared.spool([reward_row(committed.event_id, 1.0)])[0], JournalError)
    journal.close()
    shared.close()


def test_recover_drains_dead_segments_and_leaves_live_ones(
    engine: sa.Engine, tmp_path: Path, rng: np.random.Generator
) -> None:
    folder = tmp_path / "journal"
    dead = Journal(folder).open()
    rows = [decision_row(rng) for _ in range(3)]
    dead.spool(rows)
    dead_path = dead.path
    assert dead_path is not None
    with dead_path.open("ab") as fh:  # a record torn by the crash
        fh.write(encode_record(decision_row(rng))[:40])
    dead.close()  # its lock goes, as when the process dies
    live = Journal(folder).open()
    live_rows = [decision_row(rng)]
    live.spool(live_rows)
    report = Journal(folder).recover(engine)
    assert report.decisions == 3 and not dead_path.exists()
    assert live.path is not None and live.path.exists()  # held by a live process
    store = EventStore(engine)
    assert store.existing_event_ids([r.event_id for r in rows + live_rows]) == {
        r.event_id for r in rows
    }
    live.close()


def test_a_grouped_request_is_journaled_in_one_append_and_written_in_one_batch(
    engine: sa.Engine, tmp_path: Path, rng: np.random.Generator
) -> None:
    """A grouped request's decisions are one writer item (``DecisionGroup``): journaled
    together (a full journal refuses all of them), found for their rewards, drained,
    and written to the store in one transaction, its first row saying whether it landed."""
    group = records.DecisionGroup(tuple(decision_row(rng) for _ in range(3)))
    ids = [row.event_id for row in group.rows]
    journal = Journal(tmp_path / "journal", exclusive=True).open()
    assert journal.spool([decision_row(rng), group]) == [None, None]
    assert all(journal.find(i) is not None for i in ids)
    assert all(i in journal.ledger for i in ids)
    journal.close()
    assert Journal(tmp_path / "journal").recover(engine).decisions == 4
    store = EventStore(engine)
    assert store.existing_event_ids(ids) == set(ids)
    other = records.DecisionGroup(tuple(decision_row(rng) for _ in range(2)))
    room = len(encode_record(other.rows[0])) + 8  # for one of its two records
    full = Journal(tmp_path / "full", max_bytes=room).open()
    (refused,) = full.spool([other])
    assert isinstance(refused, JournalError) and "full" in str(refused)
    assert all(full.find(r.event_id) is None for r in other.rows)
    full.close()
    fresh = records.DecisionGroup(tuple(decision_row(rng) for _ in range(2)))
    with engine.begin() as conn:
        assert write_events(conn, [fresh]) == [None]
    with engine.connect() as conn:
        assert batch_landed(conn, [fresh], [None])
        assert not batch_landed(conn, [other], [None])


def test_a_batch_of_refusals_alone_is_written_again_after_an_unknown_commit(
    engine: sa.Engine, rng: np.random.Generator
) -> None:
    """A batch holding only heads' refusals (an UPDATE of a stored reward) counted as
    landed when its COMMIT's outcome was unknown, so a refusal that had not landed was
    lost; written again, it sets what it set. With a row found by key, that row tells."""
    decision = decision_row(rng)
    with engine.begin() as conn:
        (_, outcome) = write_events(conn, [decision, reward_row(decision.event_id, 1.0)])
    refusal = RefusedReward(decision.event_id, outcome.ordinal)
    with engine.connect() as conn:
        assert not batch_landed(conn, [refusal], [None])
        assert batch_landed(conn, [refusal, decision], [None, None])


@contextlib.contextmanager
def _store_behind_a_proxy(postgres_url: str) -> Iterator[tuple[sa.Engine, TcpProxy, str]]:
    """A scratch PostgreSQL store at the current revision: an engine on it, a TCP proxy
    to it and the store's URL through the proxy."""
    with scratch_postgres_database(postgres_url, prefix="banditops_journal") as url:
        direct = make_engine(url)
        upgrade(direct)
        target = sa.make_url(url)
        with TcpProxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
            proxied = target.set(host="127.0.0.1", port=proxy.port)
            yield direct, proxy, proxied.render_as_string(hide_password=False)
        direct.dispose()


@pytest.mark.postgres
def test_writer_behind_a_cut_link_journals_then_drains(
    postgres_url: str, tmp_path: Path, rng: np.random.Generator
) -> None:
    with _store_behind_a_proxy(postgres_url) as (direct, proxy, url):
        proxied = make_engine(url, connect_timeout_s=2)
        journal = Journal(tmp_path / "journal").open()
        states: list[bool] = []
        drained: list[object] = []
        writer = GroupCommitWriter(
            proxied,
            write_events,
            spool=journal,
            on_degraded=states.append,
            on_drained=drained.append,
            probe_s=0.1,
        ).start()
        before = [decision_row(rng) for _ in range(5)]
        for row in before:
            writer.submit(row).result(timeout=30)
        proxy.cut()
        during = [decision_row(rng) for _ in range(20)]
        got = [writer.submit(row) for row in during]
        assert [f.result(timeout=30) for f in got] == [None] * 20  # acknowledged
        reward = writer.submit(reward_row(before[0].event_id, 1.0)).result(timeout=30)
        assert (reward.journaled, reward.applied, reward.ordinal) == (True, True, 0)
        assert writer.degraded and journal.events == 21 and states == [True]
        assert EventStore(direct).count_rows()["decisions"] == 5  # nothing reached it
        proxy.restore()
        deadline = time.monotonic() + 30
        while writer.degraded and time.monotonic() < deadline:
            writer.submit(decision_row(rng)).result(timeout=30)
            time.sleep(0.05)
        writer.close()
        assert states == [True, False] and len(drained) == 1 and journal.events == 0
        journal.close()
        proxied.dispose()
        store = EventStore(direct)
        ids = [r.event_id for r in before + during]
        assert store.existing_event_ids(ids) == set(ids)
        assert store.count_rows()["rewards"] == 1


@pytest.mark.parametrize(
    ("overrides", "sole"), [({}, True), ({"replica_sync_s": 5.0}, False), ({"workers": 2}, False)]
)
def test_only_the_store_s_sole_writer_trusts_its_ledger_through_an_outage(
    tmp_path: Path, overrides: dict[str, float], sole: bool
) -> None:
    """A replica (one worker, ``replica_sync_s`` > 0) counted as the store's only writer:
    a reward another replica had stored for one of its decisions was unknown to its
    ledger, so during an outage a second reward was judged ordinal 0 and applied, then
    skipped at the drain as a duplicate of the stored one (acknowledged, never stored,
    and the head no longer its rebuild). Its ledger is now cleared at an outage, as
    with several workers (the journal's own test: ``shared``)."""
    from serving.app import create_app
    from tests.serving_helpers import make_client, service_settings

    settings = service_settings(tmp_path, journal=True, **overrides)
    assert settings.sole_writer is sole
    upgrade(make_engine(settings.database_url))
    with make_client(create_app(settings)) as client:
        service = client.app.state.service
        assert service.journal.exclusive is sole
        assert service.snapshots.enabled is sole


@pytest.mark.parametrize("how", ["drain", "recover"])
def test_a_record_the_store_refuses_for_good_is_set_aside_not_drained_forever(
    engine: sa.Engine, tmp_path: Path, rng: np.random.Generator, how: str
) -> None:
    """A journaled reward whose decision retention deleted meanwhile breaks the foreign
    key. Before, every drain failed on it: the service stayed degraded (everything after
    it only in the journal) and a restart failed in its recovery. Now it is set aside in
    ``rejected.records`` and the rest is stored."""
    from serving.store.journal import REJECTED_FILE

    folder = tmp_path / "journal"
    journal = Journal(folder).open()
    pruned = decision_row(rng)  # committed before the outage, deleted since
    journal.observe([pruned], [None])
    rows = [decision_row(rng) for _ in range(3)]
    orphan, kept = reward_row(pruned.event_id, 1.0), reward_row(rows[0].event_id, 0.5)
    results = journal.spool([rows[0], orphan, rows[1], kept, rows[2]])
    assert not any(isinstance(r, Exception) for r in results), results
    if how == "drain":
        report = journal.drain(engine)
    else:
        journal.close()  # as when the process dies with its segment full
        report = Journal(folder).recover(engine)
    assert (report.decisions, report.rewards, report.rejected) == (3, 1, 1)
    store = EventStore(engine)
    assert store.count_rows() == {"decisions": 3, "rewards": 1, "head_snapshots": 0}
    (aside,), valid = read_records((folder / REJECTED_FILE).read_bytes())
    assert valid > 0 and isinstance(aside, JudgedReward)
    assert aside.row.event_id == pruned.event_id
    assert not list(folder.glob("*.journal")) or journal.events == 0


def test_a_reward_for_a_decision_another_worker_journaled_is_retried_not_404(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """With several workers one can journal alone (its transaction waited out its lock
    timeout while the store is fine for the others): a reward for one of its decisions,
    reaching another worker, is a 503 to retry while any other journal holds events, and
    a 404 once none does. It was a 404 at once (the client dropped the reward), since
    only this worker's own outage counted."""
    from tests.serving_helpers import policy_file, running_client, service_settings

    settings = service_settings(
        tmp_path, model_path=policy_file(tmp_path / "p.npz", seed=0), workers=2
    )
    journaled = decision_row(rng)
    segment = settings.journal_path / "segment-1-99999-feedbeef.journal"  # the other's
    with running_client(settings) as client:
        segment.write_bytes(encode_record(journaled))
        body = {"event_id": journaled.event_id, "reward": 1.0}
        got = client.post("/v1/rewards", json=body)
        assert got.status_code == 503, got.text
        assert "retry later" in got.json()["detail"]
        segment.write_bytes(b"")  # drained into the store: the event is not there
        got = client.post("/v1/rewards", json=body)
        assert got.status_code == 404, got.text


@pytest.mark.postgres
def test_a_drain_the_store_stops_answering_in_the_middle_of_is_a_stall(
    postgres_url: str, tmp_path: Path, rng: np.random.Generator
) -> None:
    """A store that stops answering in the middle of a drain's INSERT never raises: the
    drain counted as no write in progress, so every request waited its full deadline and
    /readyz said 200 (stalled-store helper, stop 49). Now the drain's current transaction
    is the write in progress, and a drain that makes progress is none."""
    with _store_behind_a_proxy(postgres_url) as (direct, proxy, url):
        proxied = make_engine(url, connect_timeout_s=2)
        journal = Journal(tmp_path / "journal").open()
        drained: list[object] = []
        writer = GroupCommitWriter(
            proxied, write_events, spool=journal, on_drained=drained.append, probe_s=0.1
        ).start()
        proxy.cut()
        during = [decision_row(rng) for _ in range(20)]
        assert [writer.submit(row).result(timeout=30) for row in during] == [None] * 20
        assert writer.degraded and journal.events == 20
        proxy.freeze_on(b"INSERT INTO decisions")
        proxy.restore()
        deadline = time.monotonic() + 30
        late = []
        while proxy.frozen == 0 and time.monotonic() < deadline:
            # a batch drains the journal first, once the probe saw the store back
            late.append(writer.submit(decision_row(rng)))
            time.sleep(0.2)
        assert proxy.frozen == 1  # the drain's INSERT, held
        behind = writer.submit(decision_row(rng))  # queued behind the drain
        late.append(behind)
        time.sleep(1.5)
        assert writer.in_flight_s() > 1.0  # before: 0.0 while a drain ran
        assert not behind.done()
        proxy.thaw()
        assert [f.result(timeout=30) for f in late] == [None] * len(late)
        assert writer.in_flight_s() < 1.0 and len(drained) == 1 and journal.events == 0
        writer.close()
        journal.close()
        proxied.dispose()
        ids = [r.event_id for r in during]
        assert EventStore(direct).existing_event_ids(ids) == set(ids)


@pytest.mark.postgres
def test_a_start_whose_journal_drain_the_store_stops_answering_fails_in_its_deadline(
    postgres_url: str, tmp_path: Path, rng: np.random.Generator
) -> None:
    """A restart drains the journal its previous run left before it serves; a store that
    stopped answering in the middle of that drain's INSERT kept the start waiting for
    ever (the port never opened, SIGTERM went unanswered: stalled-store helper, stop 49).
    Now the start fails once a transaction of it has taken ``store_deadline_s``, the
    journal kept; the next start, with the store answering, drains it."""
    from serving.metrics import ServiceMetrics
    from serving.service import DecisionService, StoreUnavailableError
    from tests.serving_helpers import service_settings

    with _store_behind_a_proxy(postgres_url) as (direct, proxy, url):
        settings = service_settings(
            tmp_path,
            store_url=url,
            store_deadline_s=1.5,
            store_lock_timeout_s=1.0,
            lease_s=5.0,
        )
        left = Journal(settings.journal_path).open()  # a run that ended degraded
        rows = [decision_row(rng) for _ in range(30)]
        assert left.spool(rows) == [None] * 30
        left.close()
        proxy.freeze_on(b"INSERT INTO decisions")

        async def start() -> float:
            service = DecisionService.from_settings(settings, ServiceMetrics())
            began = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="could not be drained"):
                await service.start()
            return time.monotonic() - began

        assert asyncio.run(start()) < 15.0  # before: no end
        assert proxy.frozen == 1
        proxy.thaw()
        assert EventStore(direct).count_rows()["decisions"] in (0, 30)  # one transaction
        time.sleep(6.0)  # the failed start's lease lapses (it could not release it)

        async def restart() -> None:
            service = DecisionService.from_settings(settings, ServiceMetrics())
            await service.start()
            await service.stop()

        asyncio.run(restart())
        ids = [r.event_id for r in rows]
        assert EventStore(direct).existing_event_ids(ids) == set(ids)


def test_a_journal_drains_only_into_the_store_its_events_belong_to(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """A restart on the same workspace with another ``BANDITOPS_DATABASE_URL`` drained
    805 events journaled for a PostgreSQL store into SQLite (stalled-store helper, stop
    49). Each segment now names its store; a start with another refuses, naming both."""
    from eventstore.engine import store_identity
    from serving.store.journal import JournalError

    stores = []
    for name in ("a", "b"):
        engine = make_engine(f"sqlite:///{tmp_path / f'{name}.db'}")
        upgrade(engine)
        stores.append(engine)
    a, b = stores
    assert store_identity(a) == f"sqlite:{tmp_path / 'a.db'}"
    left = Journal(tmp_path / "journal", store=store_identity(a)).open()
    rows = [decision_row(rng) for _ in range(5)]
    assert left.spool(rows) == [None] * 5
    left.close()
    other = Journal(tmp_path / "journal", store=store_identity(b))
    with pytest.raises(JournalError, match=r"holds events of the store sqlite:.*a\.db, not of"):
        other.recover(b)
    assert EventStore(b).count_rows()["decisions"] == 0
    report = Journal(tmp_path / "journal", store=store_identity(a)).recover(a)
    assert report.decisions == 5 and not list((tmp_path / "journal").iterdir())
    # a segment an older release wrote (no store named) drains where it is started
    old = Journal(tmp_path / "journal").open()
    assert old.spool([decision_row(rng)]) == [None]
    old.close()
    assert Journal(tmp_path / "journal", store=store_identity(b)).recover(b).decisions == 1
    for engine in stores:
        engine.dispose()


def test_a_start_counts_the_journal_it_drains_in_the_metrics(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """A restart drained the 20 events its previous run journaled into the store, and
    ``banditops_journal_drained_total`` (events copied from the journal into the store,
    docs/reliability.md) still said 0: only the drain after an outage was counted."""
    from tests.serving_helpers import running_client, service_settings

    settings = service_settings(tmp_path)
    left = Journal(settings.journal_path).open()  # a run that ended degraded
    rows = [decision_row(rng) for _ in range(20)]
    assert left.spool(rows) == [None] * 20
    left.close()
    with running_client(settings) as client:
        text = client.get("/metrics").text
        engine = client.app.state.service.engine
        assert EventStore(engine).count_rows()["decisions"] == 20
    assert "banditops_journal_drained_total 20.0" in text, text
    assert "banditops_journal_events 0.0" in text, text
