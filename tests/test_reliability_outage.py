"""Faults under load, smaller versions of the reliability benchmark's cases: the service
(``banditops serve`` in a subprocess) driven from another process while PostgreSQL is
cut by a TCP proxy (with and without a ``kill -9`` during the cut), or while the service
itself is killed (the plain ``kill -9`` case is tests/test_serving_crash.py). Nothing acknowledged may be lost or stored twice, and the live head must
equal the one rebuilt from the store."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
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


def test_a_service_transaction_stalled_between_statements_never_commits_late(
    postgres_url: str, tmp_path: Path
) -> None:
    """A writer's transaction held between its statements (the client paused, or its
    replies held on the way) committed 71 s late in the PostgreSQL helper's run, past the
    replica sync's 60 s horizon, and another replica never learnt its reward. The
    service's sessions now end a transaction idle for a quarter of the horizon: the late
    COMMIT fails as an outage (journaled, written again with new ids)."""
    import sqlalchemy as sa

    from eventstore.migrate import upgrade
    from eventstore.scratch import scratch_postgres_database
    from serving.store.engine import store_engine
    from serving.store.writer import is_outage
    from tests.serving_helpers import service_settings

    with scratch_postgres_database(postgres_url, prefix="banditops_idle") as url:
        settings = service_settings(tmp_path, store_url=url, replica_sync_horizon_s=4.0)
        engine = store_engine(settings)  # a second of idleness at this horizon
        upgrade(engine)
        try:
            conn = engine.connect()
            transaction = conn.begin()
            conn.execute(sa.text("CREATE TEMP TABLE held (x int)"))
            conn.execute(sa.text("INSERT INTO held VALUES (1)"))
            time.sleep(2.5)  # stalled past the bound
            with pytest.raises(sa.exc.DBAPIError) as late:
                conn.execute(sa.text("SELECT 1"))
                transaction.commit()
            assert is_outage(late.value), late.value
            conn.close()
            with engine.connect() as fresh:  # the pool recovers: the next one works
                assert fresh.execute(sa.text("SELECT 1")).scalar_one() == 1
        finally:
            engine.dispose()


def _against_a_silent_store(
    tmp_path: Path, args: list[str], extra: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """``banditops <args>`` (``python -m ops``) against a PostgreSQL URL whose server
    accepts the connection and never answers (a stalled proxy or server), with the
    ``extra`` environment; its outcome."""
    from tests.serving_helpers import ROOT

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # accepts, never answers
        port = silent.getsockname()[1]
        env = {
            **os.environ,
            "BANDITOPS_WORKSPACE": str(tmp_path / "ws"),
            "BANDITOPS_DATABASE_URL": f"postgresql+psycopg2://u@127.0.0.1:{port}/db",
            **extra,
        }
        return subprocess.run(
            [sys.executable, "-m", "ops", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def test_serve_fails_its_start_against_a_store_that_never_answers(tmp_path: Path) -> None:
    """A store that accepts the connection and says nothing (a stalled proxy or server):
    ``serve`` migrates first and hung there for good; now it fails within the connect
    timeout, so that its supervisor retries."""
    from tests.serving_helpers import TEST_TOKEN

    started = time.monotonic()
    done = _against_a_silent_store(
        tmp_path,
        ["serve", "--port", "0"],
        {"BANDITOPS_API_TOKEN": TEST_TOKEN, "BANDITOPS_STORE_CONNECT_TIMEOUT_S": "2"},
        timeout=60,
    )
    assert time.monotonic() - started < 30
    assert done.returncode != 0
    assert "could not be migrated" in done.stdout + done.stderr, done.stdout[-2000:]


def test_a_url_with_its_own_server_options_keeps_the_service_s_timeouts(
    postgres_url: str,
) -> None:
    """A store URL with ``?options=`` dropped the service's lock and idle-in-transaction
    timeouts silently (diff reviewer). Both now reach the server with the URL's own."""
    from urllib.parse import quote

    import sqlalchemy as sa

    from eventstore.engine import make_engine

    url = f"{postgres_url}?options={quote('-c statement_timeout=4321')}"
    engine = make_engine(url, lock_timeout_s=1.5, idle_in_transaction_s=7.0)
    try:
        with engine.connect() as conn:
            shown = {
                name: conn.execute(sa.text(f"SHOW {name}")).scalar_one()
                for name in (
                    "statement_timeout",
                    "lock_timeout",
                    "idle_in_transaction_session_timeout",
                )
            }
    finally:
        engine.dispose()
    assert shown == {
        "statement_timeout": "4321ms",
        "lock_timeout": "1500ms",
        "idle_in_transaction_session_timeout": "7s",
    }


def test_every_process_gives_up_on_a_store_that_never_answers(tmp_path: Path) -> None:
    """The CLI's engines had no connect timeout: ``store prune`` and ``rollout status``
    against a server that accepts and says nothing waited for good (stall helper, stop
    44). Every engine now gives up connecting (:data:`eventstore.engine.CONNECT_TIMEOUT_S`
    unless the caller names its own)."""
    from eventstore.engine import CONNECT_TIMEOUT_S

    started = time.monotonic()
    done = _against_a_silent_store(tmp_path, ["rollout", "status"], {}, timeout=120)
    assert time.monotonic() - started < CONNECT_TIMEOUT_S + 30
    assert done.returncode != 0 and "Traceback" not in done.stdout + done.stderr, (
        done.stdout[-2000:] + done.stderr[-2000:]
    )
