"""Serving processes' leases on the event store (:mod:`eventstore.leases`): a process
that takes itself for the store's only writer (one worker, no replica sync) never writes
beside another serving process, so its head snapshots never cover rewards it did not
learn.

Before, two such replicas on one store both wrote snapshots: each covered the other's
rewards up to its ``last_reward_id``, and a restart from it lost them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from eventstore.engine import make_engine
from eventstore.leases import (
    SHARED,
    SOLE,
    Lease,
    LeaseConflictError,
    LeaseLostError,
    here,
    store_clock,
)
from eventstore.migrate import upgrade
from eventstore.schema import service_leases
from serving.metrics import ServiceMetrics
from serving.service import DecisionService
from serving.store.journal import Journal
from serving.store.writer import FencedError
from tests.demo_support import BANDITOPS
from tests.serving_helpers import (
    DIM_USER,
    decision_row,
    free_port,
    policy_file,
    running_client,
    service_settings,
)

pytest_plugins = ["tests.serving_fixtures"]


def _foreign(engine: sa.Engine, mode: str, lasts_s: float, **row: Any) -> None:
    """A lease row of a process elsewhere (another host: never taken for gone)."""
    with engine.begin() as conn:
        now = store_clock(conn)
        conn.execute(
            sa.insert(service_leases).values(
                token=row.get("token", "f" * 32),
                name=row.get("name", "replica-elsewhere"),
                host=row.get("host", "elsewhere/pid:[1]"),
                pid=row.get("pid", 1),
                mode=mode,
                acquired_at=datetime.now(UTC),
                expires_at=now + lasts_s,
            )
        )


def _start(settings: Any) -> None:
    """Start a service that is expected to refuse (a loop of its own, ended at once)."""
    service = DecisionService.from_settings(settings, ServiceMetrics())
    try:
        asyncio.run(service.start())
    finally:
        service.engine.dispose()
    raise AssertionError("started")


def _reward(client: Any, rng: np.random.Generator) -> None:
    body = {
        "context": rng.standard_normal(DIM_USER).tolist(),
        "candidates": [{"id": f"item-{i}"} for i in range(4)],
    }
    event = client.post("/v1/decisions", json=body).json()["event_id"]
    assert client.post("/v1/rewards", json={"event_id": event, "reward": 1.0}).status_code == 200


def test_a_sole_writer_never_starts_beside_another_serving_process(
    store_url: str, tmp_path: Path
) -> None:
    """A second one-worker process without replica sync refuses to start beside the
    first (naming it), and so does a replica with sync on; replicas with sync on start
    beside each other; once the first stopped, the second starts."""
    model = policy_file(tmp_path / "linucb.npz", name="linucb")

    def settings(name: str, **over: Any) -> Any:
        return service_settings(
            tmp_path / name, store_url, model_path=model, replica_id=name, lease_s=1.5, **over
        )

    first = settings("first")
    with running_client(first):
        for name, over in (("second", {}), ("synced", {"replica_sync_s": 1.0})):
            began = time.monotonic()
            with pytest.raises(LeaseConflictError) as refused:
                _start(settings(name, **over))
            message = str(refused.value)
            assert "'first'" in message and "only writer" in message, message
            assert "BANDITOPS_REPLICA_SYNC_S" in message, message
            # it waited for the lease to lapse (the holder might have been killed)
            assert time.monotonic() - began >= 1.4
    # the first released its lease when it stopped
    with running_client(settings("second")), pytest.raises(LeaseConflictError, match="'second'"):
        _start(settings("late", workers=2))
    with (
        running_client(settings("a", replica_sync_s=1.0)),
        running_client(settings("b", replica_sync_s=1.0)),
    ):
        time.sleep(2.5)  # longer than the lease: renewed, not lapsed
        engine = make_engine(store_url)
        c = service_leases.c
        with engine.connect() as conn:
            rows = conn.execute(sa.select(c.name, c.mode).where(c.expires_at > store_clock(conn)))
            assert sorted(rows) == [("a", SHARED), ("b", SHARED)]
        engine.dispose()


def test_a_lease_from_elsewhere_is_waited_for_and_a_dead_process_s_at_once(
    store_url: str, tmp_path: Path
) -> None:
    """A lease of another host holds until it lapses (its process may still run); one on
    this host whose PID no longer runs, or that names this process's PID under a token it
    does not hold (a container restarted), is gone at once."""
    engine = make_engine(store_url)
    upgrade(engine)
    try:
        _foreign(engine, SOLE, 1.0)
        began = time.monotonic()
        lease = Lease(engine, "mine", SOLE, 30.0)
        lease.acquire()
        assert time.monotonic() - began >= 0.9  # waited for the other host's to lapse
        lease.release()

        ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                               capture_output=True, text=True, check=True)  # fmt: skip
        _foreign(engine, SOLE, 600.0, host=here(), pid=int(ended.stdout), token="d" * 32)
        _foreign(engine, SOLE, 600.0, host=here(), pid=os.getpid(), token="e" * 32)
        began = time.monotonic()
        lease = Lease(engine, "mine", SOLE, 30.0)
        lease.acquire(wait_s=0.0)  # both gone: no wait
        assert time.monotonic() - began < 5
        with engine.connect() as conn:
            tokens = conn.execute(sa.select(service_leases.c.token)).scalars().all()
        assert tokens == [lease.token]
        # a process of this host that still runs holds its lease
        with pytest.raises(LeaseConflictError, match="'mine'"):
            Lease(engine, "other", SHARED, 30.0).acquire(wait_s=0.2)
        lease.release()
        # a replica id from an environment of other bytes (a lone surrogate), and a long one
        odd = Lease(engine, "\udcff" + "x" * 5000, SHARED, 30.0)
        odd.acquire(wait_s=0.0)
        with engine.connect() as conn:
            (name,) = conn.execute(sa.select(service_leases.c.name)).scalars().all()
        assert name == "?" + "x" * 255
        odd.release()
    finally:
        engine.dispose()


def test_a_holder_whose_lease_was_taken_over_writes_nothing_more(
    store_url: str, tmp_path: Path
) -> None:
    """A holder whose lease lapsed while another process took over (its store out of
    its reach, or the process stopped, for longer than the lease) has not renewed since:
    its next write finds the lease gone inside its own transaction and rolls back (503,
    not acknowledged), the lease is lost at once, ``/readyz`` and ``/healthz`` say 503
    ``lease_lost`` (the liveness probe restarts it), and nothing more reaches the store. Before (attack passes), such a holder wrote the
    rewards queued while it was stopped, and drained its journal (at its stop too)
    beside the new sole writer, whose snapshots then covered them: a restart lost
    them."""
    model = policy_file(tmp_path / "linucb.npz", name="linucb")
    settings = service_settings(tmp_path, store_url, model_path=model, lease_s=600.0)
    rng = np.random.default_rng(3)
    with running_client(settings) as client:
        service = client.app.state.service
        _reward(client, rng)
        assert len(client.post("/v1/admin/snapshot").json()["snapshot_ids"]) == 1
        engine = service.engine

        def stored() -> tuple[int, int, int]:
            with engine.connect() as conn:
                return tuple(  # type: ignore[return-value]
                    conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar()
                    for table in ("decisions", "rewards", "head_snapshots")
                )

        before = stored()
        # the takeover: this lease gone (lapsed, deleted by the other's look), another
        # process the sole writer; this one has not renewed since
        with engine.begin() as conn:
            conn.execute(sa.delete(service_leases))
        _foreign(engine, SOLE, 600.0)
        assert service.lease.held  # no renewal has told it
        body = {"context": [0.1] * DIM_USER, "candidates": [{"id": "a"}, {"id": "b"}]}
        refused = client.post("/v1/decisions", json=body)
        assert refused.status_code == 503, refused.text
        assert service.lease.lost and not service.lease.held
        assert client.get("/readyz").json() == {"status": "lease_lost"}
        assert client.get("/readyz").status_code == 503
        # lost for good: the liveness probe fails too, so that the container is restarted
        # (before, /healthz said 200 and the process stayed out of service for ever)
        health = client.get("/healthz")
        assert health.status_code == 503, health.text
        assert health.json()["status"] == "lease_lost"
        assert "lost its lease" in health.json()["reason"]
        assert "\n" not in health.json()["reason"]
        again = client.post("/v1/decisions", json=body)
        assert again.status_code == 503 and "lost its lease" in again.text, again.text
        # an event already in the writer's hands is refused too, not journaled
        failed = service.writer.submit(decision_row(rng, "after-the-loss")).exception(30)
        assert isinstance(failed, FencedError)
        assert service.journal is not None and service.journal.events == 0
        assert client.post("/v1/admin/snapshot").json()["snapshot_ids"] == []
        assert stored() == before
        # the other process's lease is left alone
        with engine.connect() as conn:
            names = conn.execute(sa.select(service_leases.c.name)).scalars().all()
        assert names == ["replica-elsewhere"]


def test_a_lease_past_its_end_that_nobody_looked_past_still_holds(
    store_url: str, tmp_path: Path
) -> None:
    """A holder's row past its end that no process has looked past: nobody can have
    written beside it. A wall clock stepped forward past the lease (SQLite's clock is
    the host's: a VM resumed, NTP's first correction) or a holder stopped for longer than
    the lease used to lose it for good at its next write, with no other process
    anywhere: every request a 503 ``lease_lost`` until a restart (time pass). Now its
    writes and snapshots go on and its renewal extends it; a look past it (a starting
    process, ``db downgrade``'s check) deletes it, and then its next write finds it lost."""
    model = policy_file(tmp_path / "linucb.npz", name="linucb")
    settings = service_settings(tmp_path, store_url, model_path=model, lease_s=600.0)
    rng = np.random.default_rng(5)
    with running_client(settings) as client:
        service = client.app.state.service
        engine = service.engine

        def lapse() -> None:  # as a clock stepped forward by twice the lease
            with engine.begin() as conn:
                ended = store_clock(conn) - 1200.0
                conn.execute(sa.update(service_leases).values(expires_at=ended))

        lapse()
        _reward(client, rng)
        assert service.lease.held and client.get("/readyz").status_code == 200
        assert client.get("/healthz").status_code == 200  # not lost: no restart
        assert len(client.post("/v1/admin/snapshot").json()["snapshot_ids"]) == 1
        service.lease.renew()
        with engine.connect() as conn:
            ends = conn.execute(sa.select(service_leases.c.expires_at)).scalar_one()
            assert ends > store_clock(conn) + 500.0
        # looked past (here by the downgrade's check): the holder's next write is refused
        lapse()
        from eventstore.leases import live_holders

        assert live_holders(engine) == []
        body = {"context": [0.1] * DIM_USER, "candidates": [{"id": "a"}, {"id": "b"}]}
        assert client.post("/v1/decisions", json=body).status_code == 503
        assert service.lease.lost
        assert client.get("/readyz").json() == {"status": "lease_lost"}


def test_a_journal_is_drained_only_under_a_lease_that_holds(store_url: str, tmp_path: Path) -> None:
    """What a holder journaled during an outage is drained only under its lease: a
    drain (the writer's, its last one at the stop, or the next start's recovery) whose
    lease was taken over meanwhile writes nothing and keeps the journal; the start that
    holds the lease again drains it."""
    engine = make_engine(store_url)
    upgrade(engine)
    rng = np.random.default_rng(4)
    try:
        lease = Lease(engine, "journaling", SOLE, 30.0)
        lease.acquire(wait_s=0.0)
        journal = Journal(tmp_path / "journal").open()
        journal.guard = lease.writing
        journal.spool([decision_row(rng, f"journaled-{i}") for i in range(3)])
        with engine.begin() as conn:  # taken over while the store was out of its reach
            conn.execute(sa.delete(service_leases))
        _foreign(engine, SOLE, 600.0)
        with pytest.raises(LeaseLostError):
            journal.drain(engine)
        assert lease.lost and journal.events == 3
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM decisions")).scalar() == 0
        journal.close()
        with engine.begin() as conn:  # the other process stopped
            conn.execute(sa.delete(service_leases))
        restarted = Lease(engine, "journaling", SOLE, 30.0)
        restarted.acquire(wait_s=0.0)
        again = Journal(tmp_path / "journal")
        again.guard = restarted.writing
        assert again.recover(engine).decisions == 3
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM decisions")).scalar() == 3
        restarted.release()
    finally:
        engine.dispose()


def test_a_sole_writer_whose_lease_lapsed_and_was_looked_past_never_takes_it_back(
    store_url: str, tmp_path: Path
) -> None:
    """A sole writer's row deleted by another process's look (it had lapsed): that
    process may have written rewards and stopped since. Before (attack pass), the
    holder took its lease back ("taken again") and its next snapshot covered the other
    process's rewards, lost at the restart; now the lease is lost. A shared holder
    (no snapshots) takes its lapsed lease back."""
    engine = make_engine(store_url)
    upgrade(engine)
    try:
        sole = Lease(engine, "sole", SOLE, 30.0)
        sole.acquire(wait_s=0.0)
        with engine.begin() as conn:  # lapsed; another process came, wrote, and went
            conn.execute(sa.delete(service_leases))
        sole.renew()
        assert sole.lost
        with engine.connect() as conn:
            assert conn.execute(sa.select(service_leases.c.token)).all() == []
        shared = Lease(engine, "shared", SHARED, 30.0)
        shared.acquire(wait_s=0.0)
        with engine.begin() as conn:
            conn.execute(sa.delete(service_leases))
        shared.renew()
        assert shared.held
        with engine.connect() as conn:
            assert conn.execute(sa.select(service_leases.c.name)).scalars().all() == ["shared"]
        shared.release()
    finally:
        engine.dispose()


def test_two_serves_started_at_once_leave_one_serving_and_one_line_from_the_other(
    store_url: str, tmp_path: Path
) -> None:
    """Two `banditops serve` of one worker waiting for the same lease to lapse: one
    takes it and serves; the other says so in one line, exit 2. Before (attack pass),
    both passed the check before starting and the second failed its start with a
    traceback, exit 3: `serve` now takes the lease itself and hands it to the app."""
    model = policy_file(tmp_path / "linucb.npz", name="linucb")
    engine = make_engine(store_url)
    upgrade(engine)
    _foreign(engine, SOLE, 2.0)  # lapses while both wait
    engine.dispose()
    procs = []
    for name in ("one", "two"):
        env = {
            **os.environ,
            "BANDITOPS_WORKSPACE": str(tmp_path / name),
            "BANDITOPS_DATABASE_URL": store_url,
            "BANDITOPS_MODEL_PATH": str(model),
            "BANDITOPS_AUTH_DISABLED": "true",
            "BANDITOPS_LEASE_S": "4",
            "BANDITOPS_REPLICA_ID": name,
        }
        cmd = [str(BANDITOPS), "serve", "--port", str(free_port()), "--no-migrate"]
        with (tmp_path / f"{name}.log").open("wb") as log:
            procs.append(subprocess.Popen(cmd, env=env, stderr=log, stdout=subprocess.DEVNULL))
    try:
        ended = None
        deadline = time.monotonic() + 60
        while ended is None and time.monotonic() < deadline:
            ended = next((p for p in procs if p.poll() is not None), None)
            time.sleep(0.2)
        assert ended is not None, "neither refused"
        name = "one" if ended is procs[0] else "two"
        stderr = (tmp_path / f"{name}.log").read_text()
        assert ended.returncode == 2, stderr
        lines = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "only writer" in lines[0], stderr
        assert "Traceback" not in stderr
        (serving,) = [p for p in procs if p is not ended]
        assert serving.poll() is None
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(30)


def test_serve_beside_a_sole_writer_exits_with_one_line_naming_it(
    store_url: str, tmp_path: Path
) -> None:
    """`banditops serve` (another process, this host) refuses in one line, exit 2."""
    model = policy_file(tmp_path / "linucb.npz", name="linucb")
    settings = service_settings(tmp_path, store_url, model_path=model, replica_id="holder")
    with running_client(settings):
        env = {
            **os.environ,
            "BANDITOPS_WORKSPACE": str(tmp_path / "other"),
            "BANDITOPS_DATABASE_URL": store_url,
            "BANDITOPS_MODEL_PATH": str(model),
            "BANDITOPS_AUTH_DISABLED": "true",
            "BANDITOPS_LEASE_S": "1",
        }
        done = subprocess.run(
            [str(BANDITOPS), "serve", "--port", str(free_port()), "--no-migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "'holder'" in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_db_downgrade_refuses_while_a_service_holds_a_lease(store_url: str, tmp_path: Path) -> None:
    """A downgrade takes away tables a running service writes (the attack pass saw the
    service turn to its journal, then refuse snapshots with a 503): refused, naming it."""
    from typer.testing import CliRunner

    from eventstore.migrate import current_revision, head_revision
    from ops.cli import app as cli

    model = policy_file(tmp_path / "linucb.npz", name="linucb")
    settings = service_settings(tmp_path, store_url, model_path=model, replica_id="running")
    with running_client(settings) as client:
        out = CliRunner().invoke(cli, ["db", "downgrade", "0008", "--yes", "--url", store_url])
        assert out.exit_code == 1 and "'running'" in out.output and "stop them" in out.output
        engine = client.app.state.service.engine
        assert current_revision(engine) == head_revision()


def test_a_lease_shorter_than_a_second_is_refused(tmp_path: Path) -> None:
    """0.01 s was accepted: a renewal (a write transaction) every 3 ms, 21 % of a core
    idle, and snapshots refused for a lapse between two renewals (attack pass)."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="lease_s"):
        service_settings(tmp_path, lease_s=0.5)


def test_a_replica_answers_503_not_404_for_an_event_made_lately_that_it_cannot_find(
    tmp_path: Path,
) -> None:
    """A replica that lost the store alone (its network, its pooler) journals its
    decisions where the others cannot see them: their rewards were answered 404 by the
    others, a final answer, and dropped (PostgreSQL helper, stop 55). An event id dates
    its decision: made within the sync horizon, an event not found yet is a 503 (retry);
    an older one, or an id of another form, is a 404."""
    from datetime import timedelta

    from serving.decide import event_time, new_event_id
    from tests.serving_helpers import AUTH

    store_url = f"sqlite:///{tmp_path}/events.db"
    settings = service_settings(
        tmp_path / "a",
        store_url,
        model_path=policy_file(tmp_path / "m.npz"),
        replica_id="a",
        replica_sync_s=1.0,
        replica_sync_horizon_s=30.0,
    )
    now = datetime.now(UTC)
    with running_client(settings) as client:
        decided = client.post(
            "/v1/decisions",
            json={
                "context": [0.0] * DIM_USER,
                "candidates": [{"id": "x", "features": [0.0, 0.0, 0.0]}],
            },
        ).json()
        made = event_time(decided["event_id"])
        assert made is not None and abs((made - datetime.now(UTC)).total_seconds()) < 5
        for event, status in (
            (new_event_id(now), 503),
            (new_event_id(now - timedelta(minutes=5)), 404),
            ("0" * 32, 404),
            ("f" * 32, 404),
        ):
            got = client.post("/v1/rewards", json={"event_id": event, "reward": 1.0}, headers=AUTH)
            assert got.status_code == status, (event, got.text)
