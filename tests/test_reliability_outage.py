"""Faults under load, smaller versions of the reliability benchmark's cases: the service
(``banditops serve`` in a subprocess) driven from another process while PostgreSQL is
cut by a TCP proxy (with and without a ``kill -9`` during the cut), or while the service
itself is killed (the plain ``kill -9`` case is tests/test_serving_crash.py). Nothing acknowledged may be lost or stored twice, and the live head must
equal the one rebuilt from the store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from benchmarks.reliability import case_db_outage

pytestmark = pytest.mark.postgres


def test_database_outage_keeps_serving_and_drains_the_journal(postgres_url: str) -> None:
    row = case_db_outage(rps=40, seconds=12, outage_s=4, postgres_url=postgres_url)
    during = row.extra["during_outage"]
    assert (during["readyz_status"], during["readyz"]) == (200, "degraded")
    assert during["store_degraded_metric"] == 1.0 and during["journal_events"] > 0
    assert row.extra["rewards_learnt_during_outage"] > 0  # heads kept learning
    assert row.extra["proxy_refused"] > 0  # the service did try the database meanwhile
    assert row.errors == 0, row.extra
    assert (row.lost, row.duplicated) == (0, 0)
    assert row.extra["head_gap"] <= 1e-9
    assert row.recovery_seconds is not None and row.recovery_seconds < 30


def test_kill_during_outage_then_restart_drains_first(postgres_url: str) -> None:
    row = case_db_outage(rps=40, seconds=14, outage_s=4, postgres_url=postgres_url, kill=True)
    journaled = row.extra["end_of_outage"]["journal_events"]
    assert journaled > row.extra["during_outage"]["journal_events"] > 0
    # every acknowledged event, the journaled ones included, is in the store exactly once
    assert (row.lost, row.duplicated) == (0, 0)
    assert row.extra["restart_ready_s"] is not None
    assert row.extra["head_gap"] <= 1e-9


def test_a_read_only_store_is_an_outage(postgres_url: str, tmp_path: Path) -> None:
    """A failover that lands on a standby makes every write a read-only-transaction error
    (an ``InternalError`` to psycopg2). Before, the service did not count it as an
    outage: every decision got 503 while ``/readyz`` said ready. Now the events go to the
    journal and are drained once the store takes writes again."""
    import numpy as np
    import sqlalchemy as sa

    from eventstore.scratch import scratch_postgres_database
    from tests.serving_helpers import decision_body, running_client, service_settings

    rng = np.random.default_rng(3)
    with scratch_postgres_database(postgres_url, prefix="banditops_readonly") as url:
        name = sa.make_url(url).database
        admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")

        def read_only(on: bool) -> None:
            with admin.connect() as conn:
                setting = "on" if on else "off"
                conn.execute(
                    sa.text(
                        f'ALTER DATABASE "{name}" SET default_transaction_read_only = {setting}'
                    )
                )
                conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                )

        settings = service_settings(tmp_path, store_url=url)
        try:
            with running_client(settings) as client:
                read_only(True)
                replies = [client.post("/v1/decisions", json=decision_body(rng)) for _ in range(5)]
                assert [r.status_code for r in replies] == [200] * 5, replies[-1].text
                ready = client.get("/readyz").json()
                assert ready["status"] == "degraded" and ready["journal_events"] == 5, ready
                read_only(False)
                deadline = time.monotonic() + 30
                while client.get("/readyz").json()["status"] != "ready":
                    assert time.monotonic() < deadline, client.get("/readyz").json()
                    time.sleep(0.2)
            engine = sa.create_engine(url)
            with engine.connect() as conn:
                stored = set(conn.execute(sa.text("SELECT event_id FROM decisions")).scalars())
            engine.dispose()
        finally:
            read_only(False)
            admin.dispose()
    assert stored == {r.json()["event_id"] for r in replies}
