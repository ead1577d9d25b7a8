"""A store that stops answering in the middle of a statement raises no error: nothing
turns to the journal. Before ``store_deadline_s`` every decision and reward waited
for as long as it lasted (a PostgreSQL backend frozen with SIGSTOP held them for good)
while ``/readyz`` said ready. Now a request is answered 503 within the deadline, an
event still queued is withdrawn (never written), new events are refused at once while
the write under way is older than the deadline, and ``/readyz`` says ``stalled``."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from tests.serving_helpers import (
    HeldWrite,
    decision_body,
    policy_file,
    running_client,
    service_settings,
)

DEADLINE_S = 1.0


def _decisions(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM decisions")).scalar_one())
    finally:
        engine.dispose()


def _wait_ready(client: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (ready := client.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, ready.json()
        time.sleep(0.1)


def test_a_stalled_write_answers_within_the_deadline_and_withdraws_what_waits(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(11)
    settings = service_settings(tmp_path, store_lock_timeout_s=0.5, store_deadline_s=DEADLINE_S)
    held = HeldWrite()
    with running_client(settings) as client, ThreadPoolExecutor(2) as pool:
        writer = client.app.state.service.writer
        writer._write = held  # the fault: the next statement never returns
        held.armed = True
        started = time.monotonic()
        in_flight = pool.submit(client.post, "/v1/decisions", json=decision_body(rng))
        assert held.entered.wait(30)
        queued = pool.submit(client.post, "/v1/decisions", json=decision_body(rng))
        first, second = in_flight.result(30), queued.result(30)
        assert time.monotonic() - started < DEADLINE_S + 3.0
        assert first.status_code == 503 and "may still be stored" in first.json()["detail"]
        assert second.status_code == 503 and "it was not stored" in second.json()["detail"]

        time.sleep(max(0.0, DEADLINE_S - writer.in_flight_s()) + 0.1)
        asked = time.monotonic()
        refused = client.post("/v1/decisions", json=decision_body(rng))
        assert time.monotonic() - asked < 0.5  # not queued behind the stalled write
        assert refused.status_code == 503
        assert "has not finished a write" in refused.json()["detail"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "stalled", ready.json()
        metrics = client.get("/metrics").text
        assert "banditops_store_commit_timeouts_total 3.0" in metrics

        held.armed = False
        held.release.set()
        _wait_ready(client)
        assert client.post("/v1/decisions", json=decision_body(rng)).status_code == 200
    # the write under way landed after its 503; the withdrawn and the refused never did
    assert _decisions(settings.store_url) == 2


def test_a_grouped_request_is_stored_whole_or_not_at_all(tmp_path: Path) -> None:
    """A grouped request's decisions are one item of the event writer (one transaction).
    Each committed on its own before: under a stalled write its 503 came while one of its
    two groups' decisions was in flight (it landed) and the other was withdrawn (it never
    did), so half a request was stored, without an answer."""
    settings = service_settings(
        tmp_path, store_lock_timeout_s=0.5, store_deadline_s=DEADLINE_S, writer_max_batch=1
    )
    held = HeldWrite()
    groups = [
        {"id": f"g{g}", "variants": [{"id": f"g{g}-v{v}", "features": [0.1, v]} for v in range(3)]}
        for g in range(2)
    ]
    with running_client(settings) as client:
        client.app.state.service.writer._write = held
        held.armed = True  # the request's write never returns
        got = client.post("/v1/decisions/grouped", json={"context": [1.0, 0.5], "groups": groups})
        held.armed = False
        held.release.set()
        assert got.status_code == 503, got.text
        assert "may still be stored" in got.json()["detail"]
        _wait_ready(client)
        whole = client.post("/v1/decisions/grouped", json={"context": [1.0, 0.5], "groups": groups})
        assert whole.status_code == 200, whole.text
    assert _decisions(settings.store_url) == 4  # the request in flight landed whole


def test_a_grouped_request_has_one_deadline_and_says_which_groups_the_fallback_chose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Each group waited its own ``decision_deadline_s``: 100 groups, 100 deadlines (25 s
    at the defaults; serving helper, stop 53). Now the request's deadline is shared: the
    groups not chosen by then go to the fallback, and each group says who chose it (the
    response said ``fallback`` with the first group's policy and no version)."""
    import serving.service

    slow_s, deadline_s, n_groups = 0.15, 0.5, 12
    real_choose = serving.service.choose

    def slow_choose(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name.startswith("banditops-decide"):
            time.sleep(slow_s)  # the model's costly choice, in the decision thread
        return real_choose(*args, **kwargs)

    monkeypatch.setattr(serving.service, "choose", slow_choose)
    settings = service_settings(
        tmp_path,
        model_path=policy_file(tmp_path / "policy.npz"),
        inline_work_units=0,  # every choice by the model goes to the decision thread
        decision_deadline_s=deadline_s,
    )
    rng = np.random.default_rng(4)
    groups = [
        {"id": f"g{g}", "variants": decision_body(rng, n=3)["candidates"]} for g in range(n_groups)
    ]
    with running_client(settings) as client:
        started = time.monotonic()
        got = client.post("/v1/decisions/grouped", json={"context": [0.1] * 4, "groups": groups})
        took = time.monotonic() - started
        assert got.status_code == 200, got.text
        body = got.json()
        assert took < deadline_s + 3 * slow_s + 0.5, took  # n_groups × slow_s = 1.8 s before
        by = [g["fallback"] for g in body["groups"]]
        assert by[0] is False and by[-1] is True and by == sorted(by), by
        for g in body["groups"]:
            assert g["policy"] == ("fallback:uniform" if g["fallback"] else "shared_linucb")
        assert body["fallback"] is True and body["policy"] == "shared_linucb"
        assert body["model_version"] is not None
        # every group past the deadline is counted; the log says it once per request
        missed = sum(g["fallback"] for g in body["groups"])
        assert f"banditops_deadline_fallbacks_total {float(missed)}" in client.get("/metrics").text
        lines = [r for r in caplog.records if "missed the" in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in lines]
    engine = sa.create_engine(settings.store_url)
    with engine.connect() as conn:
        stored = dict(conn.execute(sa.text("SELECT group_id, fallback FROM decisions")).all())
    engine.dispose()
    assert stored == {g["group_id"]: g["fallback"] for g in body["groups"]}


@contextmanager
def _frozen(admin: sa.Engine, database: str) -> Iterator[list[int]]:
    """Every server process of ``database`` stopped (SIGSTOP) for the block: the kernel
    still acknowledges its packets, so its clients see no error, only silence."""
    with admin.connect() as conn:
        pids = list(
            conn.execute(
                sa.text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = :name "
                    "AND pid <> pg_backend_pid()"
                ),
                {"name": database},
            ).scalars()
        )
    assert pids
    try:
        for pid in pids:
            os.kill(pid, 0)
    except (ProcessLookupError, PermissionError) as exc:
        pytest.skip(f"PostgreSQL's processes cannot be signalled from here ({exc})")
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield pids
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


@pytest.mark.postgres
def test_a_frozen_postgresql_server_is_answered_503_then_served_again(
    postgres_url: str, tmp_path: Path
) -> None:
    """The real fault: every backend of the service's database stopped with SIGSTOP."""
    from eventstore.scratch import scratch_postgres_database

    rng = np.random.default_rng(12)
    with scratch_postgres_database(postgres_url, prefix="banditops_frozen") as url:
        settings = service_settings(tmp_path, store_url=url, store_deadline_s=3.0)
        admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
        try:
            with running_client(settings) as client:
                assert client.post("/v1/decisions", json=decision_body(rng)).status_code == 200
                with _frozen(admin, sa.make_url(url).database or ""):
                    started = time.monotonic()
                    first = client.post("/v1/decisions", json=decision_body(rng))
                    assert time.monotonic() - started < 3.0 + 3.0
                    assert first.status_code == 503, first.text
                    asked = time.monotonic()
                    second = client.post("/v1/decisions", json=decision_body(rng))
                    assert time.monotonic() - asked < 1.0
                    assert second.status_code == 503, second.text
                    assert client.get("/readyz").json()["status"] == "stalled"
                _wait_ready(client)
                assert client.post("/v1/decisions", json=decision_body(rng)).status_code == 200
            stored = _decisions(url)
        finally:
            admin.dispose()
    assert stored == 3  # before, the one in flight (after its thaw), after; not the refused


def test_a_read_that_does_not_answer_is_503_within_the_deadline(tmp_path: Path) -> None:
    """The reads on a request's path (a reward's decision not in memory, a catalog item)
    waited in their thread for as long as the store kept silent (stall helper, stop 44:
    still waiting after 90 s); a database error on them was a 500."""
    settings = service_settings(
        tmp_path, store_lock_timeout_s=0.5, store_deadline_s=DEADLINE_S, decision_cache_size=0
    )
    release = threading.Event()

    def silent(*_args: object) -> None:
        assert release.wait(60)

    def failing(*_args: object) -> None:
        raise sa.exc.OperationalError("SELECT …", {"secret": "other client's"}, Exception("gone"))

    rng = np.random.default_rng(13)
    with running_client(settings) as client:
        decided = client.post("/v1/decisions", json=decision_body(rng))
        assert decided.status_code == 200
        service = client.app.state.service
        service.store.find_decision = silent
        service.catalog.store.current = silent
        try:
            for path, body in (
                ("/v1/rewards", {"event_id": decided.json()["event_id"], "reward": 1.0}),
                ("/v1/items/x", None),
            ):
                started = time.monotonic()
                answer = client.post(path, json=body) if body is not None else client.get(path)
                assert time.monotonic() - started < DEADLINE_S + 3.0
                assert answer.status_code == 503, answer.text
                assert "did not answer within" in answer.json()["detail"]
        finally:
            release.set()
        service.catalog.store.current = failing
        failed = client.get("/v1/items/x")
        assert failed.status_code == 503, failed.text
        assert failed.json()["detail"] == "the event store failed (OperationalError): retry later"

        def broken(*_args: object) -> None:  # not an outage: a retry would not mend it
            raise sa.exc.ProgrammingError("SELECT …", {}, Exception("no such column"))

        service.catalog.store.current = broken
        bug = client.get("/v1/items/x")
        assert bug.status_code == 500 and bug.json() == {
            "detail": "internal error (ProgrammingError)"
        }


def test_a_swap_whose_last_read_does_not_answer_leaves_the_loop_free(tmp_path: Path) -> None:
    """A version swap read the last rewards to catch up on the event loop: a store that
    stopped answering then held every request, ``/healthz`` included (stall helper, stop
    44: 60 s). The read now runs in a thread under the deadline; past it the swap is given
    up (the served version stays, the next poll tries again)."""
    import asyncio

    from tests.serving_helpers import policy_file

    path = policy_file(tmp_path / "policy.npz", seed=0)
    settings = service_settings(
        tmp_path, model_path=path, store_lock_timeout_s=0.5, store_deadline_s=DEADLINE_S
    )
    release, entered = threading.Event(), threading.Event()
    with running_client(settings) as client, ThreadPoolExecutor(1) as pool:
        service = client.app.state.service
        before = client.get("/v1/model").json()["production"]["version"]
        real = service.store.applied_reward_chunks

        def last_read(*args: Any, **kwargs: Any) -> Any:
            with contextlib.suppress(RuntimeError):  # not on a loop: the first catch-up
                asyncio.get_running_loop()
                entered.set()  # on the event loop (before)
                assert release.wait(60)
            if threading.current_thread().name == "banditops-catch-up":
                entered.set()
                assert release.wait(60)
            return real(*args, **kwargs)

        service.store.applied_reward_chunks = last_read
        policy_file(path, seed=1)  # a new version to swap in
        polled = pool.submit(client.post, "/v1/admin/poll")
        assert entered.wait(30)
        started = time.monotonic()
        assert client.get("/healthz").status_code == 200
        assert time.monotonic() - started < 0.5  # the loop is free
        info = polled.result(30).json()
        assert info["production"]["version"] == before, info  # given up: what served stays
        assert "did not answer within" in (info["last_load_error"] or ""), info
        release.set()
        service.store.applied_reward_chunks = real
        after = client.post("/v1/admin/poll").json()
        assert after["production"]["version"] != before, after


def test_a_registry_that_holds_its_answer_does_not_hold_the_poll(tmp_path: Path) -> None:
    """MLflow's timeout bounds each read, not a call: a registry sending a byte a second
    held a poll for minutes (and with it a rollback's share of 0). A lookup past the
    loader's deadline counts as unreachable and the poll goes on with what serves."""
    from tests.serving_helpers import policy_file

    path = policy_file(tmp_path / "policy.npz", seed=0)
    settings = service_settings(tmp_path, model_path=path)
    release = threading.Event()
    with running_client(settings) as client:
        loader = client.app.state.service.loader
        before = client.get("/v1/model").json()["production"]["version"]
        real = loader.source.resolve
        loader.lookup_deadline_s = 0.5
        loader.source.resolve = lambda role: release.wait(60) and real(role)
        try:
            started = time.monotonic()
            info = client.post("/v1/admin/poll").json()
            assert time.monotonic() - started < 5.0
        finally:
            release.set()
        assert info["production"]["version"] == before, info
        assert "no answer within 0.5 s" in (info["last_load_error"] or ""), info
        assert info["load_failures"] >= 1
