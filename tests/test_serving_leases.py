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
from eventstore.leases import SHARED, SOLE, Lease, LeaseConflictError, here, store_clock
from eventstore.migrate import upgrade
from eventstore.schema import head_snapshots, service_leases
from serving.metrics import ServiceMetrics
from serving.service import DecisionService
from tests.demo_support import BANDITOPS
from tests.serving_helpers import (
    DIM_USER,
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


def test_a_lease_lost_to_another_process_ends_the_snapshots(store_url: str, tmp_path: Path) -> None:
    """A holder whose lease lapsed while another process took over (its store out of
    its reach for longer than the lease) keeps no snapshot it takes from then on: one
    that commits after the takeover is deleted in its own transaction, and once a
    renewal finds the other lease none is taken at all."""
    model = policy_file(tmp_path / "linucb.npz", name="linucb")
    settings = service_settings(tmp_path, store_url, model_path=model, lease_s=600.0)
    rng = np.random.default_rng(3)
    with running_client(settings) as client:
        service = client.app.state.service
        _reward(client, rng)
        assert len(client.post("/v1/admin/snapshot").json()["snapshot_ids"]) == 1
        engine = service.engine
        # the takeover: this lease gone (lapsed, deleted by the other's look), another
        # process the sole writer; this one has not renewed since
        with engine.begin() as conn:
            conn.execute(sa.delete(service_leases))
        _foreign(engine, SOLE, 600.0)
        _reward(client, rng)
        assert client.post("/v1/admin/snapshot").json()["snapshot_ids"] == []
        with engine.connect() as conn:
            assert (
                conn.execute(sa.select(sa.func.count()).select_from(head_snapshots)).scalar() == 1
            )
        assert service.lease.held  # nothing has told it yet
        service.lease.renew()
        assert service.lease.lost and not service.lease.held
        _reward(client, rng)
        assert client.post("/v1/admin/snapshot").json()["snapshot_ids"] == []
        # the other process's lease is left alone
        with engine.connect() as conn:
            names = conn.execute(sa.select(service_leases.c.name)).scalars().all()
        assert names == ["replica-elsewhere"]


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
