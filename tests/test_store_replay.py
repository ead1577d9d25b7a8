"""The training replay: each decision with its reward joined under the configured
rules, as a DataFrame and as Parquet; and retention (``banditops store prune``)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from eventstore import records
from eventstore.records import SnapshotRow
from eventstore.replay import COLUMNS, read_replay, write_replay_parquet
from ops.cli import app as cli
from serving.store.repository import EventStore, write_events
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


def _snapshot(version: str, created_at: datetime) -> SnapshotRow:
    return SnapshotRow(version, created_at, 0, 0, "uniform", b"npz")


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
    expected = {"rewards": 1, "decisions": 1, "head_snapshots": 1}
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
    assert "deleted 0 rewards, 1 decisions, 0 head_snapshots" in result.output
    assert EventStore(engine).count_rows()["decisions"] == 1
    bad = runner.invoke(cli, ["store", "prune", "--older-than", "ninety", "--url", store_url])
    assert bad.exit_code == 2
    assert "--older-than" in bad.output


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
