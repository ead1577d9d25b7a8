"""The training replay: each decision with its reward joined under the configured
rules, as a DataFrame and as Parquet; and retention (``banditops store prune``)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from eventstore import records
from eventstore.records import SnapshotPart, SnapshotRow
from eventstore.replay import COLUMNS, read_replay, write_replay_parquet
from eventstore.retention import prune_events
from eventstore.rollouts import record_step, start_rollout
from ops.cli import app as cli
from serving.store.repository import DropParts, EventStore, SupersededSnapshots, write_events
from tests.serving_helpers import decision_row, reward_row

pytest_plugins = ["tests.serving_fixtures"]

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def _log(engine: sa.Engine, rng: np.random.Generator) -> dict[str, str]:
    """Four decisions an hour apart with: one reward, two rewards, a late reward, none."""
    rows = {k: decision_row(rng, created_at=NOW - (4 - i) * HOUR) for i, k in enumerate("abcd")}
    ids = {k: r.event_id for k, r in rows.items()}
    with engine.begin() as conn:
        write_events(conn, list(rows.values()))
        write_events(
            conn,
            [
                reward_row(ids["a"], 1.0, ts=rows["a"].created_at + timedelta(minutes=5)),
                reward_row(ids["b"], 0.25, ts=rows["b"].created_at + timedelta(minutes=1)),
                reward_row(
                    ids["b"],
                    0.5,
                    ts=rows["b"].created_at + timedelta(minutes=2),
                    repeat_status=records.SUMMED,
                ),
                reward_row(
                    ids["c"],
                    1.0,
                    ts=rows["c"].created_at + 2 * HOUR,
                    eligible=False,
                    ineligible_status=records.LATE,
                ),
            ],
        )
    return ids


def _replay(engine: sa.Engine, **kw: object) -> pd.DataFrame:
    options: dict[str, object] = {"reward_window": timedelta(minutes=30), "as_of": NOW}
    options.update(kw)
    return read_replay(engine, NOW - 10 * HOUR, NOW, **options)  # type: ignore[arg-type]


def test_rewards_join_their_decisions(engine: sa.Engine, rng: np.random.Generator) -> None:
    ids = _log(engine, rng)
    frame = _replay(engine, default_reward=-1.0)
    assert list(frame.columns) == list(COLUMNS)
    by_event = frame.set_index("event_id")
    assert list(frame["event_id"]) == [ids[k] for k in "abcd"]  # time order
    assert by_event.loc[ids["a"], "reward"] == 1.0
    assert by_event.loc[ids["b"], "reward"] == 0.25  # first wins
    assert by_event.loc[ids["c"], "reward"] == -1.0  # late: default
    assert by_event.loc[ids["d"], "reward"] == -1.0  # none: default
    assert list(frame["reward_observed"]) == [True, True, False, False]
    assert list(frame["n_rewards"]) == [1, 2, 0, 0]
    first = frame.iloc[0]
    assert len(first["context"]) == 4 and len(first["candidate_features"]) == 4
    assert first["arm_id"] == first["candidate_ids"][first["chosen"]]
    assert np.isclose(sum(first["probabilities"]), 1.0)


def test_sum_rule_and_drop_rule(engine: sa.Engine, rng: np.random.Generator) -> None:
    ids = _log(engine, rng)
    summed = _replay(engine, duplicate_rule="sum").set_index("event_id")
    assert summed.loc[ids["b"], "reward"] == 0.75
    dropped = _replay(engine, missing_reward="drop")
    assert list(dropped["event_id"]) == [ids["a"], ids["b"]]


def test_a_reward_counts_by_when_it_was_received_not_by_its_timestamp(
    engine: sa.Engine, rng: np.random.Generator
) -> None:
    """As the service judges ``late``: a client's timestamp inside the window does not
    make a reward received after it count, nor one outside it make a reward received in
    time not count (the timestamp is stored, not trusted)."""
    forged, honest = (decision_row(rng, created_at=NOW - (3 - i) * HOUR) for i in range(2))
    with engine.begin() as conn:
        write_events(conn, [forged, honest])
        late = dataclasses.replace(
            reward_row(forged.event_id, 1.0, ts=forged.created_at + timedelta(minutes=1)),
            received_at=forged.created_at + 2 * HOUR,
            eligible=False,
            ineligible_status=records.LATE,
        )
        in_time = dataclasses.replace(
            reward_row(honest.event_id, 1.0, ts=honest.created_at + 5 * HOUR),
            received_at=honest.created_at + timedelta(minutes=1),
        )
        write_events(conn, [late, in_time])
    frame = _replay(engine, default_reward=-1.0).set_index("event_id")
    assert frame.loc[forged.event_id, "reward"] == -1.0
    assert frame.loc[honest.event_id, "reward"] == 1.0


def test_a_window_is_in_time_order_whatever_order_its_decisions_were_stored_in(
    engine: sa.Engine, rng: np.random.Generator
) -> None:
    """A decision drained late from a journal (or logged by another replica) is stored
    after newer ones: in id order it landed in the held-out newest part of the window,
    older than rows the model trained on. The window is in time order."""
    older, newer = (decision_row(rng, created_at=NOW - (3 - i) * HOUR) for i in range(2))
    with engine.begin() as conn:
        write_events(conn, [newer])
    with engine.begin() as conn:  # the journal drained later
        write_events(conn, [older])
    frame = _replay(engine)
    assert list(frame["event_id"]) == [older.event_id, newer.event_id]


def test_open_reward_windows_are_left_out(engine: sa.Engine, rng: np.random.Generator) -> None:
    ids = _log(engine, rng)
    frame = _replay(engine, as_of=NOW - 2.2 * HOUR)  # d (1 h ago) and c (2 h) still open
    assert list(frame["event_id"]) == [ids["a"], ids["b"]]


def test_replay_round_trips_through_parquet(
    engine: sa.Engine, rng: np.random.Generator, tmp_path: Path
) -> None:
    _log(engine, rng)
    frame = _replay(engine)
    path = write_replay_parquet(frame, tmp_path / "replay" / "window.parquet")
    back = pd.read_parquet(path)
    assert list(back["event_id"]) == list(frame["event_id"])
    assert np.allclose(np.vstack(back["context"].to_numpy()), np.vstack(frame["context"]))
    np.testing.assert_array_equal(back["reward"].to_numpy(), frame["reward"].to_numpy())


def test_naive_times_are_refused(engine: sa.Engine) -> None:
    with pytest.raises(ValueError, match="start must be timezone-aware"):
        read_replay(engine, datetime(2026, 1, 1), NOW, reward_window=HOUR)


def _snapshot(version: str, created_at: datetime, last_reward_id: int = 0) -> SnapshotRow:
    return SnapshotRow(version, created_at, last_reward_id, last_reward_id, "uniform", b"npz")


def _parted(
    version: str, created_at: datetime, state: bytes, key: str, last_reward_id: int = 0
) -> list[SnapshotPart | SnapshotRow]:
    """A snapshot of ``state`` in three parts, as the service writes a large one."""
    cut = (len(state) // 3, 2 * len(state) // 3)
    parts: list[SnapshotPart | SnapshotRow] = [
        SnapshotPart(key, 0, created_at, state[: cut[0]]),
        SnapshotPart(key, 1, created_at, state[cut[0] : cut[1]]),
    ]
    last = state[cut[1] :]
    row = SnapshotRow(version, created_at, last_reward_id, last_reward_id, "uniform", last, key)
    return [*parts, row]


def _count(engine: sa.Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_prune_deletes_old_events_keeps_newest_snapshots(
    engine: sa.Engine, rng: np.random.Generator
) -> None:
    old, new = decision_row(rng, created_at=NOW - 100 * 24 * HOUR), decision_row(rng)
    with engine.begin() as conn:
        write_events(
            conn,
            [
                old,
                new,
                reward_row(old.event_id, 1.0, ts=old.created_at),
                reward_row(new.event_id, 1.0),
                _snapshot("v1", NOW - 99 * 24 * HOUR),  # old, superseded: deleted
                _snapshot("v1", NOW - 98 * 24 * HOUR),  # old but newest of v1: kept
                _snapshot("v2", NOW),
            ],
        )
    store = EventStore(engine)
    cutoff = NOW - 90 * 24 * HOUR
    expected = {
        "rewards": 1,
        "decisions": 1,
        "head_snapshots": 1,
        "head_snapshot_parts": 0,
        "item_versions": 0,
    }
    assert store.prune(cutoff, dry_run=True) == expected
    assert store.count_rows() == {"decisions": 2, "rewards": 2, "head_snapshots": 3}
    assert store.prune(cutoff) == expected
    assert store.count_rows() == {"decisions": 1, "rewards": 1, "head_snapshots": 2}
    assert store.existing_event_ids([old.event_id, new.event_id]) == {new.event_id}


def test_prune_command(store_url: str, engine: sa.Engine, rng: np.random.Generator) -> None:
    old = decision_row(rng, created_at=datetime.now(UTC) - timedelta(days=91))
    with engine.begin() as conn:
        write_events(conn, [old, decision_row(rng)])
    runner = CliRunner()
    result = runner.invoke(cli, ["store", "prune", "--older-than", "90d", "--url", store_url])
    assert result.exit_code == 0, result.output
    assert "deleted 0 rewards, 1 decisions, 0 head_snapshots, 0 head_snapshot_parts" in (
        result.output
    )
    assert EventStore(engine).count_rows()["decisions"] == 1
    bad = runner.invoke(cli, ["store", "prune", "--older-than", "ninety", "--url", store_url])
    assert bad.exit_code == 2
    assert "--older-than" in bad.output


def test_prune_command_keeps_what_a_running_rollout_reads(
    store_url: str, engine: sa.Engine, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``banditops store prune`` is the retention DAG's prune: a rollout started 100
    days ago holds a 90-day cutoff back (before, the command deleted what it reads)."""
    from eventstore.rollouts import record_step, start_rollout

    monkeypatch.setenv("BANDITOPS_MODEL_NAME", "m")
    now = datetime.now(UTC)
    with engine.begin() as conn:
        write_events(conn, [decision_row(rng, created_at=now - timedelta(days=95))])
    rollout = start_rollout(engine, "m", 2, 0.05, reason="gate passed", at=now - timedelta(100))
    args = ["store", "prune", "--older-than", "90d", "--url", store_url]
    held = CliRunner().invoke(cli, args)
    assert held.exit_code == 0, held.output
    text = " ".join(held.output.split())
    assert "deleted 0 rewards, 0 decisions" in text
    assert f"held back from 90d by rollout {rollout.id} (version 2)" in text
    record_step(engine, rollout.id, "stop", reason="operator", at=now)
    freed = CliRunner().invoke(cli, args)
    assert "deleted 0 rewards, 1 decisions" in " ".join(freed.output.split()), freed.output


def test_the_latest_snapshot_is_the_one_covering_most_rewards(engine: sa.Engine) -> None:
    """Snapshots commit in the order their serialisation ends: one committed later may
    cover fewer rewards. Recovery starts from the one covering the most."""
    rows = [
        dataclasses.replace(_snapshot("v1", NOW), last_reward_id=last, applied_rewards=last)
        for last in (3, 9, 5)
    ]
    with engine.begin() as conn:
        write_events(conn, rows)
    latest = EventStore(engine).latest_snapshot("v1")
    assert latest is not None and (latest.last_reward_id, latest.applied_rewards) == (9, 9)


def test_prune_keeps_the_snapshot_recovery_starts_from_and_the_parts_it_reads(
    engine: sa.Engine,
) -> None:
    """Of a version's old snapshots the one kept is the one recovery reads (covering the
    most rewards, not the one committed last); the parts of the deleted ones go, and so
    do old parts of a snapshot never finished — not those of one being written now."""
    old = NOW - 99 * 24 * HOUR
    state = bytes(range(256)) * 8
    with engine.begin() as conn:
        write_events(
            conn,
            [
                *_parted("v1", old, state, "a" * 32, last_reward_id=9),  # kept: covers most
                *_parted("v1", old, state, "b" * 32, last_reward_id=5),  # committed later
                _snapshot("v1", old, last_reward_id=7),
                SnapshotPart("c" * 32, 0, old, b"never finished"),
                SnapshotPart("d" * 32, 0, NOW, b"being written"),
            ],
        )
    store = EventStore(engine)
    before = store.latest_snapshot("v1")
    assert before is not None and before.last_reward_id == 9 and before.state == state
    expected = {
        "rewards": 0,
        "decisions": 0,
        "head_snapshots": 2,
        "head_snapshot_parts": 3,
        "item_versions": 0,
    }
    assert store.prune(NOW - 90 * 24 * HOUR, dry_run=True) == expected
    assert _count(engine, "head_snapshot_parts") == 6
    assert store.prune(NOW - 90 * 24 * HOUR) == expected
    with engine.connect() as conn:
        keys = sorted(
            r[0] for r in conn.execute(sa.text("SELECT parts_key FROM head_snapshot_parts"))
        )
    assert keys == ["a" * 32, "a" * 32, "d" * 32]
    after = store.latest_snapshot("v1")
    assert after is not None and (after.id, after.state) == (before.id, state)


def test_a_snapshot_in_parts_is_read_whole_and_an_unfinished_one_not_at_all(
    engine: sa.Engine,
) -> None:
    state = np.random.default_rng(3).bytes(10_000)
    with engine.begin() as conn:
        write_events(conn, [_snapshot("v1", NOW, last_reward_id=4)])
        write_events(conn, _parted("v1", NOW, state, "e" * 32, last_reward_id=8))
    whole = EventStore(engine).latest_snapshot("v1")
    assert whole is not None and whole.last_reward_id == 8 and whole.state == state
    # a newer snapshot whose row was never written (the service stopped mid-way): its
    # parts are not a snapshot, recovery still starts from the last whole one
    with engine.begin() as conn:
        write_events(conn, _parted("v1", NOW, state[::-1], "f" * 32, last_reward_id=12)[:-1])
    again = EventStore(engine).latest_snapshot("v1")
    assert again is not None and (again.id, again.state) == (whole.id, state)


def test_superseded_snapshots_are_deleted_with_their_parts_a_few_at_a_time(
    engine: sa.Engine,
) -> None:
    """What the service does after each snapshot: the rows of the snapshots beyond the
    ``keep`` recovery tries first, then their parts, at most ``limit`` per transaction;
    another version's snapshots and a snapshot still being written are left alone."""
    state = bytes(range(256)) * 8
    with engine.begin() as conn:
        write_events(
            conn,
            [
                *_parted("v1", NOW, state, "a" * 32, last_reward_id=3),
                _snapshot("v1", NOW, last_reward_id=5),
                *_parted("v1", NOW, state, "b" * 32, last_reward_id=9),
                *_parted("v1", NOW, state, "c" * 32, last_reward_id=7),
                *_parted("v2", NOW, state, "d" * 32, last_reward_id=1),
                SnapshotPart("e" * 32, 0, NOW, b"being written"),
            ],
        )
    with engine.begin() as conn:
        [gone] = write_events(conn, [SupersededSnapshots("v1", keep=2)])
    assert sorted(gone) == ["a" * 32]  # 3 and 5 go; 5 was one row
    store = EventStore(engine)
    assert [s.last_reward_id for s in store.snapshots("v1")] == [9, 7]
    assert [s.state for s in store.snapshots("v1")] == [state, state]
    dropped = []
    while True:
        with engine.begin() as conn:
            [n] = write_events(conn, [DropParts("a" * 32, limit=1)])
        dropped.append(n)
        if n < 1:
            break
    assert dropped == [1, 1, 0]
    with engine.connect() as conn:
        keys = conn.execute(sa.text("SELECT parts_key FROM head_snapshot_parts")).scalars()
        assert sorted(set(keys)) == ["b" * 32, "c" * 32, "d" * 32, "e" * 32]
    assert [s.last_reward_id for s in store.snapshots("v2")] == [1]


def test_snapshots_of_a_label_keep_to_their_incarnation(engine: sa.Engine) -> None:
    """A label a re-created registered model reuses names two artifacts: a head starts
    only from its own incarnation's snapshots (or from those written before snapshots
    recorded one); superseding keeps ``keep`` of its own, and retention keeps the one
    each incarnation recovers from."""
    old = NOW - 99 * 24 * HOUR

    def row(last: int, incarnation: str | None) -> SnapshotRow:  # all old
        return SnapshotRow(
            "m/1",
            old,
            last,
            last,
            "uniform",
            f"{incarnation}:{last}".encode(),
            incarnation=incarnation,
        )

    with engine.begin() as conn:
        write_events(conn, [row(2, None), row(9, "first"), row(8, "first"), row(4, "second")])
    store = EventStore(engine)
    states = [s.state for s in store.snapshots("m/1", "second")]
    assert states == [b"second:4", b"None:2"]  # never "first"'s, though they cover more
    assert [s.state for s in store.snapshots("m/1", "first")][:2] == [b"first:9", b"first:8"]
    assert len(list(store.snapshots("m/1"))) == 4  # a source whose labels are never reused
    # a snapshot from before incarnations were recorded, older than the version's
    # registration, is a deleted namesake's (upgrade helper, stop 45): never used
    later = [s.state for s in store.snapshots("m/1", "second", not_before=old + HOUR)]
    assert later == [b"second:4"]
    assert [s.state for s in store.snapshots("m/1", "second", not_before=old)] == states

    with engine.begin() as conn:
        write_events(conn, [row(5, "second"), SupersededSnapshots("m/1", 1, "second")])
    assert [s.state for s in store.snapshots("m/1", "second")] == [b"second:5"]  # 4, legacy 2 go
    assert [s.state for s in store.snapshots("m/1", "first")] == [b"first:9", b"first:8"]

    prune_events(engine, NOW - HOUR)  # "first"'s newest stays although "second" covers less
    assert [s.state for s in store.snapshots("m/1", "first")] == [b"first:9"]
    assert [s.state for s in store.snapshots("m/1", "second")] == [b"second:5"]


def test_prune_deletes_in_batches_and_keeps_what_came_after(
    engine: sa.Engine, rng: np.random.Generator
) -> None:
    """Seven old decisions (five rewarded) go three to a transaction; the new ones stay,
    whatever their ids (one was written between the old ones)."""
    old = [decision_row(rng, created_at=NOW - (100 + i) * 24 * HOUR) for i in range(7)]
    new = [decision_row(rng, created_at=NOW), decision_row(rng, created_at=NOW)]
    rows = [*old[:3], new[0], *old[3:], new[1]]
    with engine.begin() as conn:
        write_events(conn, rows)
        write_events(conn, [reward_row(r.event_id, 1.0, ts=r.created_at) for r in old[:5]])
        write_events(conn, [reward_row(new[0].event_id, 0.0)])
    cutoff = NOW - 90 * 24 * HOUR
    counted = prune_events(engine, cutoff, dry_run=True, batch=3)
    assert prune_events(engine, cutoff, batch=3) == counted
    assert counted == {
        "rewards": 5,
        "decisions": 7,
        "head_snapshots": 0,
        "head_snapshot_parts": 0,
        "item_versions": 0,
    }
    store = EventStore(engine)
    assert store.count_rows() == {"decisions": 2, "rewards": 1, "head_snapshots": 0}
    assert store.existing_event_ids([r.event_id for r in rows]) == {r.event_id for r in new}
    with pytest.raises(ValueError, match="batch must be >= 1"):
        prune_events(engine, cutoff, batch=0)


def test_retention_keeps_what_a_served_head_learnt_after_its_newest_snapshot(
    engine: sa.Engine, rng: np.random.Generator
) -> None:
    """A version that still serves is rebuilt on a restart from its newest snapshot and
    the rewards it learnt after it. Before, retention deleted those older than the
    cutoff: without a snapshot (several writers) a restarted replica came back with a
    third of what it had learnt, and never caught up with the others."""
    from eventstore.retention import apply_retention

    day = 24 * HOUR
    served, retired, other = "m/2", "m/1", "m/3"
    learnt = [
        decision_row(rng, created_at=NOW - (100 - i) * day, model_version=served) for i in range(3)
    ]
    before_window = decision_row(rng, created_at=NOW - 120 * day, model_version=retired)
    after_window = decision_row(rng, created_at=NOW - 105 * day, model_version=retired)
    other_version = decision_row(rng, created_at=NOW - 95 * day, model_version=other)
    live = decision_row(rng, created_at=NOW - day, model_version=served)
    rows = [before_window, after_window, other_version, *learnt, live]
    with engine.begin() as conn:
        write_events(conn, rows)
        write_events(
            conn,
            [
                reward_row(r.event_id, 1.0, ts=r.created_at, model_version=r.model_version)
                for r in rows
            ],
        )

    def ids() -> set[str]:
        return EventStore(engine).existing_event_ids([r.event_id for r in rows])

    # its own rule (no window): its decisions are kept from the first one learnt
    first = apply_retention(engine, "m", 90, now=NOW, dry_run=True)
    assert first["floored_by"] == f"head of {served} (rewards learnt after its newest snapshot)"
    assert first["cutoff"] == learnt[0].created_at.isoformat()
    # with its window (stopping 110 days ago) it learnt every decision after it as well
    stops = {served: NOW - 110 * day}
    result = apply_retention(engine, "m", 90, window_stop=stops.get, now=NOW)
    assert result["cutoff"] == after_window.created_at.isoformat()
    assert result["deleted"]["decisions"] == 1  # the one before its window
    assert ids() == {r.event_id for r in rows} - {before_window.event_id}
    # a snapshot that holds every reward up to the newest old one frees them all
    reward_ids, _ = EventStore(engine).applied_reward_ids(served, since=stops[served])
    with engine.begin() as conn:
        write_events(conn, [_snapshot(served, NOW - 2 * day, last_reward_id=int(reward_ids[-2]))])
    result = apply_retention(engine, "m", 90, window_stop=stops.get, now=NOW)
    assert result["floored_by"] is None
    assert ids() == {live.event_id}


def test_a_replica_restarted_after_retention_has_all_it_learnt(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """End to end: a replica (replica sync on, so no snapshots) learns 40 rewards over
    HTTP; 30 of its decisions are aged past the retention and ``banditops store prune``
    runs; the replica restarted from the store has the head it had (before: it came back
    with the 10 rewards retention left, and the replica sync never adds the rest)."""
    from tests.serving_helpers import (
        decision_body,
        head_difference,
        policy_file,
        running_client,
        served_policy,
        service_settings,
    )

    settings = service_settings(
        tmp_path, model_path=policy_file(tmp_path / "policy.npz"), replica_sync_s=3600.0
    )
    assert not settings.sole_writer
    with running_client(settings) as client:
        for _ in range(40):
            event = client.post("/v1/decisions", json=decision_body(rng)).json()["event_id"]
            reply = client.post("/v1/rewards", json={"event_id": event, "reward": 1.0})
            assert reply.json()["status"] == "applied", reply.text
        learnt = served_policy(client)
    engine = sa.create_engine(settings.store_url)
    with engine.begin() as conn:
        first = sa.select(sa.text("id")).select_from(sa.text("decisions")).order_by(sa.text("id"))
        aged = [row.id for row in conn.execute(first.limit(30))]
        conn.execute(
            sa.text("UPDATE decisions SET created_at = :at WHERE id IN :ids").bindparams(
                sa.bindparam("ids", expanding=True)
            ),
            {"at": datetime.now(UTC) - timedelta(days=100), "ids": aged},
        )
    engine.dispose()
    env = {"BANDITOPS_WORKSPACE": str(settings.workspace)}
    args = ["store", "prune", "--older-than", "90d", "--url", settings.store_url]
    pruned = CliRunner().invoke(cli, args, env=env)
    assert pruned.exit_code == 0, pruned.output
    assert "deleted 0 rewards, 0 decisions" in " ".join(pruned.output.split()), pruned.output
    with running_client(settings) as client:
        assert head_difference(served_policy(client), learnt) <= 1e-9


def test_a_version_retired_past_the_retention_loses_its_last_snapshot(
    engine: sa.Engine, rng: np.random.Generator
) -> None:
    """Every version's newest snapshot was kept for good: a year of nightly versions left
    276 snapshots of versions retired long ago (soak helper). With the labels the
    registry still serves, the newest of a version that neither decided since the cutoff
    nor is served goes; without them (a caller who cannot ask the registry) all stay."""
    day = 24 * HOUR
    with engine.begin() as conn:
        write_events(
            conn,
            [
                decision_row(rng, created_at=NOW - day, model_version="m/3"),
                _snapshot("m/1", NOW - 200 * day),  # retired, not served: goes
                _snapshot("m/2", NOW - 150 * day),  # not deciding, but @production
                _snapshot("m/3", NOW - 120 * day),  # decided yesterday
            ],
        )
    cutoff = NOW - 90 * day
    assert prune_events(engine, cutoff, dry_run=True)["head_snapshots"] == 0
    counted = prune_events(engine, cutoff, dry_run=True, keep_newest_of={"m/2"})
    assert counted["head_snapshots"] == 1
    assert prune_events(engine, cutoff, keep_newest_of={"m/2"}) == counted
    with engine.connect() as conn:
        kept = set(conn.execute(sa.text("SELECT model_version FROM head_snapshots")).scalars())
    assert kept == {"m/2", "m/3"}


def test_ended_rollouts_go_except_the_latest_and_those_of_served_versions(
    engine: sa.Engine,
) -> None:
    """Nothing deleted rollouts or their steps (months helper, stop 46: up to a thousand
    steps a rollout, one rollout a night). Past the cutoff an ended rollout goes with its
    steps, except its model's latest (what the page and ``rollout status`` show) and the
    latest of a version the registry still serves (the controller reads it not to roll
    a version still ``@staging`` out again); a caller who cannot ask the registry keeps
    them all."""
    day = 24 * HOUR

    def ended(model: str, version: int, age: int, action: Any = "stop") -> int:
        rollout = start_rollout(engine, model, version, 0.05, reason="gate", at=NOW - age * day)
        for h in range(3):
            record_step(
                engine, rollout.id, "hold", reason="waiting", at=rollout.started_at + h * HOUR
            )
        record_step(engine, rollout.id, action, reason="done", at=NOW - (age - 1) * day)
        return rollout.id

    gone = {ended("m", 1, 200), ended("m", 5, 160, "rollback")}
    served = ended("m", 2, 180, "rollback")  # v2 still @staging
    recent = ended("m", 3, 20, "promote")  # ended after the cutoff
    other = ended("other", 1, 300)  # the other model's latest
    running = start_rollout(engine, "m", 6, 0.05, reason="gate", at=NOW - 150 * day).id
    cutoff = NOW - 90 * day
    assert prune_events(engine, cutoff, dry_run=True)["head_snapshots"] == 0
    assert "rollouts" not in prune_events(engine, cutoff, dry_run=True)  # no registry
    counted = prune_events(engine, cutoff, dry_run=True, keep_newest_of={"m/2", "m/3"})
    assert (counted["rollouts"], counted["rollout_steps"]) == (2, 10)  # start, 3 holds, end
    assert prune_events(engine, cutoff, keep_newest_of={"m/2", "m/3"}) == counted
    with engine.connect() as conn:
        kept = set(conn.execute(sa.text("SELECT id FROM rollouts")).scalars())
        steps = set(conn.execute(sa.text("SELECT rollout_id FROM rollout_steps")).scalars())
    assert kept == {served, recent, other, running} and not kept & gone
    assert steps == kept


def test_a_reward_for_a_decision_retention_deleted_is_a_404_even_where_it_was_remembered(
    store_url: str, tmp_path: Path, rng: np.random.Generator
) -> None:
    """The worker that made a decision remembers it (its decision cache, by count: weeks of
    a quiet service's decisions); retention deleted it from the store meanwhile. Its reward
    failed the store's foreign key and got a 503 "retry later" for ever, while the other
    workers answered 404; now a 404 that says why, and the decision is forgotten."""
    from eventstore.schema import decisions
    from tests.serving_helpers import decision_body, policy_file, running_client, service_settings

    settings = service_settings(
        tmp_path, store_url, model_path=policy_file(tmp_path / "p.npz", seed=0)
    )
    with running_client(settings) as client:
        got = client.post("/v1/decisions", json=decision_body(rng))
        assert got.status_code == 200, got.text
        event_id = got.json()["event_id"]
        engine = client.app.state.service.engine
        with engine.begin() as conn:
            conn.execute(
                sa.update(decisions)
                .where(decisions.c.event_id == event_id)
                .values(created_at=datetime.now(UTC) - timedelta(days=100))
            )
        assert prune_events(engine, datetime.now(UTC) - timedelta(days=30))["decisions"] == 1
        body = {"event_id": event_id, "reward": 1.0}
        remembered = client.post("/v1/rewards", json=body)
        assert remembered.status_code == 404, remembered.text
        assert "(retention deleted it)" in remembered.json()["detail"]
        forgotten = client.post("/v1/rewards", json=body)  # now read from the store
        assert forgotten.status_code == 404, forgotten.text
