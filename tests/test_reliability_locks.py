"""A lock another process holds on the event store: the service answers within its lock
timeout (journaling the events), says ``degraded``, and drains everything once the lock
is gone. Before, every request waited 40 s behind a SQLite write lock (busy timeout × 4
tries) and as long as the lock on PostgreSQL, with ``/readyz`` saying ``ready``."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from serving.store.repository import EventStore
from tests.serving_helpers import decision_body, running_client, service_settings

pytest_plugins = ["tests.serving_fixtures"]

LOCK_TIMEOUT_S = 0.3


@contextmanager
def _write_lock(store_url: str) -> Iterator[None]:
    """Another process's write lock on the store: SQLite's ``BEGIN EXCLUSIVE``, an
    ``ACCESS EXCLUSIVE`` lock on PostgreSQL's decisions table."""
    if store_url.startswith("sqlite"):
        conn = sqlite3.connect(store_url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn, conn.begin() as transaction:
            conn.exec_driver_sql("LOCK TABLE decisions IN ACCESS EXCLUSIVE MODE")
            yield
            transaction.rollback()
    finally:
        engine.dispose()


def test_a_lock_held_elsewhere_costs_a_request_its_lock_timeout_at_most(
    store_url: str, tmp_path: Path
) -> None:
    settings = service_settings(
        tmp_path, store_url, store_lock_timeout_s=LOCK_TIMEOUT_S, store_probe_s=0.1
    )
    rng = np.random.default_rng(2)
    acked: list[str] = []
    with running_client(settings) as client:

        def decide() -> float:
            started = time.perf_counter()
            got = client.post("/v1/decisions", json=decision_body(rng, n=3))
            assert got.status_code == 200, got.text
            acked.append(got.json()["event_id"])
            return time.perf_counter() - started

        decide()
        with _write_lock(store_url):
            waits = [decide() for _ in range(8)]
            ready: Any = client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["status"] == "degraded", ready.text
        # one request waited the lock timeout, the others went to the journal at once
        assert max(waits) < LOCK_TIMEOUT_S + 1.5, waits
        assert sorted(waits)[-2] < 0.5, waits
        deadline = time.monotonic() + 30
        while client.get("/readyz").json()["status"] != "ready":
            assert time.monotonic() < deadline, "the journal was never drained"
            time.sleep(0.1)
        decide()
        engine = client.app.state.service.store.engine
        assert EventStore(engine).existing_event_ids(acked) == set(acked)
        assert EventStore(engine).count_rows()["decisions"] == len(acked) == 10
