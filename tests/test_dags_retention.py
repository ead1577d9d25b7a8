"""``bandit_retention`` run for real by Airflow (``dag.test()``, SQLite) on an event store
with decisions 100, 60, 45 and 10 days old and 30 days of retention. The task asks
Airflow which ``bandit_retrain`` runs are running or queued (by run id, through the task
SDK) and never prunes below their replay windows (from their run specs) or the running
rollout's start; a queued run whose window is not planned yet holds everything back; the
served head (version ``v1``, which decided 10 days ago) keeps what it learnt after its
newest snapshot. Each night that a protection is released prunes the next rows."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from eventstore.engine import make_engine
from eventstore.migrate import upgrade
from eventstore.records import SnapshotRow
from eventstore.rollouts import record_step, start_rollout
from serving.store.repository import EventStore, write_events
from tests.serving_helpers import decision_row, reward_row
from training.runspec import SPEC_FILE

pytest_plugins = ["tests.airflow_support"]

AGES = {"d100": 100, "d60": 60, "d45": 45, "d10": 10}
DAY = timedelta(days=1)


@contextmanager
def _retrain_run(run_id: str, state: str) -> Iterator[Any]:
    """A ``bandit_retrain`` run in ``state`` in Airflow's metadata DB (removed after)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.types import DagRunType
    from sqlalchemy import delete

    now = datetime.now(UTC)
    with create_session() as session:
        session.add(
            DagRun(
                dag_id="bandit_retrain",
                run_id=run_id,
                run_type=DagRunType.MANUAL,
                state=state,
                run_after=now,
                start_date=now,
            )
        )
    try:
        yield
    finally:
        with create_session() as session:
            session.execute(delete(DagRun).where(DagRun.run_id == run_id))


def test_retention_dag_keeps_what_running_retrains_and_rollouts_read(
    airflow_home: Any, dagtools: Any, tmp_path: Path, rng: np.random.Generator
) -> None:
    airflow_home.ready()
    now = datetime.now(UTC).replace(microsecond=0)
    url = f"sqlite:///{tmp_path / 'events.db'}"
    engine = make_engine(url)
    upgrade(engine)
    rows: list[Any] = []
    for event, age in AGES.items():
        row = decision_row(rng, event_id=event, created_at=now - age * DAY)
        rows += [row, reward_row(event, 1.0, ts=row.created_at)]
    with engine.begin() as conn:
        write_events(conn, rows)
    store = EventStore(engine)
    runs = tmp_path / "runs"
    running = "manual__retention-test-running"
    (runs / "a-running-retrain").mkdir(parents=True)
    (runs / "a-running-retrain" / SPEC_FILE).write_text(
        json.dumps({"run_key": running, "window_start": (now - 50 * DAY).isoformat()})
    )
    env = {
        "BANDITOPS_DATABASE_URL": url,
        "BANDITOPS_RUNS_DIR": str(runs),
        "BANDITOPS_RETENTION_DAYS": "30",
    }

    def night(n: int) -> set[str]:
        run = dagtools.run_dag("bandit_retention", when=now + n * timedelta(minutes=1))
        assert run.state == "success" and run.tasks == {"prune": "success"}
        return store.existing_event_ids(list(AGES))

    try:
        with airflow_home.applied(**env):
            # a run configuration it would ignore is refused, and nothing is pruned
            refused = dagtools.run_dag("bandit_retention", conf={"retention_days": 0}, when=now)
            assert refused.tasks == {"prune": "failed"}, refused
            assert store.existing_event_ids(list(AGES)) == set(AGES)
            # v1 still serves, and no snapshot holds what it learnt: a restart rebuilds
            # its head from these rewards
            assert night(0) == set(AGES)
        reward_ids, _ = store.applied_reward_ids("v1")
        with engine.begin() as conn:  # a snapshot holding the rewards of all but d10
            write_events(conn, [SnapshotRow("v1", now, int(reward_ids[2]), 3, "uniform", b"npz")])
        # the runs folder: the running retrain's folder and a finished one's, 100 days
        # untouched (the running one was cleared and runs again)
        stale = runs / "an-old-retrain"
        stale.mkdir()
        (stale / SPEC_FILE).write_text(json.dumps({"run_key": "scheduled__old"}))
        for folder in (stale, runs / "a-running-retrain"):
            for path in (*folder.iterdir(), folder):
                os.utime(path, ((now - 100 * DAY).timestamp(),) * 2)
        with airflow_home.applied(**env), _retrain_run(running, "running"):
            rollout = start_rollout(
                engine, "banditops-policy", 4, 0.05, reason="gate", at=now - 70 * DAY
            )
            with _retrain_run("manual__retention-test-queued", "queued"):
                # a queued retrain has no window yet: nothing can be pruned safely
                assert night(1) == set(AGES)
            assert night(2) == {"d60", "d45", "d10"}  # the rollout reads from 70 days back
            assert not stale.exists() and (runs / "a-running-retrain").exists()
            record_step(engine, rollout.id, "stop", reason="operator")
            assert night(3) == {"d45", "d10"}  # the retrain's window starts 50 days back
        with airflow_home.applied(**env):
            assert night(4) == {"d10"}  # nothing runs: 30 days of retention
            assert not (runs / "a-running-retrain").exists()
        assert store.count_rows()["rewards"] == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize("value", ["0", "-1"])
def test_retention_days_must_be_positive(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from training.settings import PipelineSettings

    monkeypatch.setenv("BANDITOPS_RETENTION_DAYS", value)
    with pytest.raises(ValidationError, match="retention_days"):
        PipelineSettings()
