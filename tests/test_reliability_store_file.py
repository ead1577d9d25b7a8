"""A SQLite event store file deleted (or replaced) while the service has it open.

SQLite does not mind: the open connections go on committing into the unlinked file, and
every event acknowledged after the deletion vanishes with the process. The engine now
watches the file (``eventstore.engine.SqliteFileWatch``): each transaction fails once the
path names another file or none, so the writer journals what it acknowledges, ``/readyz``
says so, and a restart on a new (or restored) file drains the journal into it. Before,
``/readyz`` stayed ``ready`` and everything after the deletion was lost at the restart."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from eventstore.engine import make_engine, probe_write
from serving.store.repository import EventStore
from tests.serving_helpers import decision_body, running_client, service_settings

pytest_plugins = ["tests.serving_fixtures"]


def _remove(path: Path) -> None:
    """What ``rm events.db*`` does."""
    for name in (path.name, path.name + "-wal", path.name + "-shm"):
        (path.parent / name).unlink(missing_ok=True)


def test_a_deleted_or_replaced_file_fails_every_transaction(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    engine = make_engine(f"sqlite:///{path}")
    other = make_engine(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        with other.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        probe_write(engine)
        os.replace(tmp_path / "other.db", path)  # another file under the name
        replaced = pytest.raises(sa.exc.OperationalError, match="deleted or replaced while open")
        for attempt in (engine.begin, engine.connect):
            with replaced, attempt() as conn:
                conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        with pytest.raises(sa.exc.OperationalError, match="deleted or replaced"):
            probe_write(engine)
        _remove(path)  # and none
        with replaced, engine.begin() as conn:
            conn.exec_driver_sql("SELECT 1")
    finally:
        engine.dispose()
        other.dispose()


def test_events_acknowledged_after_the_file_went_reach_the_next_file(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    settings = service_settings(tmp_path, f"sqlite:///{path}", store_probe_s=0.1)
    rng = np.random.default_rng(3)
    after: list[str] = []
    with running_client(settings) as client:
        for _ in range(3):
            assert client.post("/v1/decisions", json=decision_body(rng)).status_code == 200
        _remove(path)
        for _ in range(5):
            got = client.post("/v1/decisions", json=decision_body(rng))
            assert got.status_code == 200, got.text
            after.append(got.json()["event_id"])
        ready = client.get("/readyz")
        assert ready.json()["status"] == "degraded", ready.text
    # the operator's fix: a new store (running_client migrates it), and a restart
    with running_client(settings) as client:
        engine = client.app.state.service.store.engine
        assert EventStore(engine).existing_event_ids(after) == set(after)
        assert client.get("/readyz").json()["status"] == "ready"


def test_readyz_names_why_no_event_is_accepted(tmp_path: Path) -> None:
    """The store gone and the journal's disk full (``/dev/full`` in its segment's place):
    ``/readyz`` answers 503 ``unavailable`` with a ``reason`` naming the failed journal
    write and its file, and ``ready`` again once the journal can write. Before, the body
    said ``unavailable`` and no more: an operator could not tell a full disk from a full
    journal or a missing one."""
    path = tmp_path / "events.db"
    settings = service_settings(tmp_path, f"sqlite:///{path}", store_probe_s=0.1)
    rng = np.random.default_rng(5)
    with running_client(settings) as client:
        assert client.get("/readyz").json()["status"] == "ready"
        journal = client.app.state.service.journal
        _remove(path)
        assert client.post("/v1/decisions", json=decision_body(rng)).status_code == 200
        segment, full = os.dup(journal._fd), os.open("/dev/full", os.O_WRONLY)
        try:
            os.dup2(full, journal._fd)
            refused = client.post("/v1/decisions", json=decision_body(rng))
            assert refused.status_code == 503, refused.text
            ready = client.get("/readyz")
            assert ready.status_code == 503
            body = ready.json()
            assert body["status"] == "unavailable" and body["degraded"] is True
            assert "No space left on device" in body["reason"], body
            assert str(journal.path) in body["reason"], body
        finally:
            os.dup2(segment, journal._fd)
            os.close(full)
            os.close(segment)
        assert client.post("/v1/decisions", json=decision_body(rng)).status_code == 200
        ready = client.get("/readyz")
        assert (ready.status_code, ready.json()["status"]) == (200, "degraded"), ready.text
        assert "reason" not in ready.json()
