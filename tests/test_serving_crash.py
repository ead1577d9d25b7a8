"""Crash test: the service runs in a subprocess under concurrent load and is killed with
SIGKILL (no shutdown hook runs). After a restart every acknowledged decision and reward
is in the store, and the recovered head (last snapshot + replayed rewards) equals the head
rebuilt from the store to 1e-9."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from bandit_core import load_policy
from eventstore.engine import make_engine
from serving.models.recovery import rebuild_from_store
from serving.models.state_io import policy_from_bytes
from serving.store.repository import EventStore
from tests.serving_helpers import ServiceProcess, decision_body, head_difference, policy_file

pytest_plugins = ["tests.serving_fixtures"]

TOKEN = "crash-test-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _load(
    url: str, seed: int, stop: threading.Event, acked: dict[str, list[str]], lock: threading.Lock
) -> None:
    """Decision then reward, until the server dies; record what was acknowledged."""
    rng = np.random.default_rng(seed)
    with httpx.Client(base_url=url, timeout=10, headers=AUTH) as http:
        while not stop.is_set():
            try:
                got = http.post("/v1/decisions", json=decision_body(rng, user=f"u{seed}"))
                if got.status_code != 200:
                    continue
                event = got.json()["event_id"]
                with lock:
                    acked["decisions"].append(event)
                ack = http.post(
                    "/v1/rewards", json={"event_id": event, "reward": float(rng.random() < 0.3)}
                )
                if ack.status_code == 200 and ack.json()["applied"]:
                    with lock:
                        acked["rewards"].append(event)
            except httpx.HTTPError:
                return  # the server is gone: whatever was in flight is not acknowledged


def test_kill_9_loses_nothing_acknowledged_and_recovers_the_head(
    store_url: str, tmp_path: Path
) -> None:
    model = policy_file(tmp_path / "policy.npz", seed=0)
    env = {
        "BANDITOPS_DATABASE_URL": store_url,
        "BANDITOPS_MODEL_PATH": str(model),
        "BANDITOPS_WORKSPACE": str(tmp_path / "ws"),
        "BANDITOPS_API_TOKEN": TOKEN,
        "BANDITOPS_SNAPSHOT_EVERY_REWARDS": "40",
        "BANDITOPS_USER_SALT": "crash-salt-0123456789",
    }
    log = tmp_path / "service.log"
    acked: dict[str, list[str]] = {"decisions": [], "rewards": []}
    lock = threading.Lock()
    stop = threading.Event()
    service = ServiceProcess(env, log).start()
    try:
        clients = [
            threading.Thread(target=_load, args=(service.url, s, stop, acked, lock))
            for s in range(4)
        ]
        for c in clients:
            c.start()
        deadline = time.monotonic() + 60
        while len(acked["rewards"]) < 150 and time.monotonic() < deadline:
            time.sleep(0.05)
        service.kill()  # under load, mid-request
        stop.set()
        for c in clients:
            c.join(30)
    finally:
        service.kill()
    assert len(acked["rewards"]) >= 150, log.read_text()

    engine = make_engine(store_url)
    store = EventStore(engine)
    try:
        assert store.existing_event_ids(acked["decisions"]) == set(acked["decisions"])
        assert store.existing_event_ids(acked["rewards"], table="rewards") == set(acked["rewards"])
        assert store.count_rows()["head_snapshots"] >= 2  # recovery starts from a snapshot

        restarted = ServiceProcess(env, log).start()
        try:
            with httpx.Client(base_url=restarted.url, timeout=10, headers=AUTH) as http:
                info = http.get("/v1/model").json()["production"]
                raw = http.get("/v1/admin/state").content
        finally:
            restarted.stop()
        recovered = policy_from_bytes(raw)
        rebuilt = rebuild_from_store(store, info["version"], load_policy(model))
        applied = len(store.applied_rewards(info["version"]))
    finally:
        engine.dispose()
    assert info["applied_rewards"] == applied >= len(acked["rewards"])
    assert head_difference(recovered, rebuilt) <= 1e-9


def test_a_snapshot_that_cannot_be_used_is_skipped_and_the_head_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Recovery from a snapshot that is unreadable, of another kind of model, of other
    dimensions or not finite goes on to the next snapshot, and from the base with every
    applied reward when none is left: the version loads with the head a rebuild from the
    store gives (before, the version never loaded and the service kept its fallback)."""
    from dataclasses import replace
    from datetime import UTC, datetime

    import sqlalchemy as sa

    from bandit_core import make_policy
    from eventstore.migrate import upgrade
    from eventstore.records import SnapshotRow
    from serving.models.recovery import recover
    from serving.models.state_io import policy_to_bytes
    from serving.store.repository import write_events
    from tests.serving_helpers import DIM_ARM, DIM_USER, decision_row, reward_row

    engine = make_engine(f"sqlite:///{tmp_path}/events.db")
    upgrade(engine)
    store = EventStore(engine)
    rng = np.random.default_rng(2)
    model = policy_file(tmp_path / "base.npz", warm=20)
    for i in range(8):
        decision = decision_row(rng, model_version="v/1")
        with engine.begin() as conn:
            write_events(conn, [decision, reward_row(decision.event_id, float(i % 2), None, "v/1")])
    reference = rebuild_from_store(store, "v/1", load_policy(model))
    good = load_policy(model)
    tail = store.applied_rewards("v/1")
    good.update_batch(tail.contexts[:5], tail.arm_ids[:5], tail.values[:5], tail.arm_features[:5])
    broken = load_policy(model)
    broken.head.theta_[:] = np.nan
    other_kind = make_policy("shared_lints", dim_user=DIM_USER, dim_arm=DIM_ARM)
    other_dims = make_policy("shared_linucb", dim_user=DIM_USER + 1, dim_arm=DIM_ARM)
    states = {  # what the log says of each
        "not a banditops policy state (an .npz archive)": b"not an npz",
        "it holds a SharedLinTS": policy_to_bytes(other_kind),
        "dim_user=5": policy_to_bytes(other_dims),
        "state array 'head.theta' holds non-finite values": policy_to_bytes(broken),
    }
    row = SnapshotRow("v/1", datetime.now(UTC), 5, 5, "shared_linucb", policy_to_bytes(good))
    try:
        with engine.begin() as conn:
            write_events(conn, [row])
        used = recover(store, "v/1", load_policy(model), "test")
        assert used.replayed_after == 5 and used.applied_rewards == 8
        assert head_difference(used.policy, reference) <= 1e-9
        for why, state in states.items():
            # newer than the good one (it covers more rewards): tried first, then the good
            with engine.begin() as conn:
                write_events(conn, [replace(row, state=state, last_reward_id=7)])
            caplog.clear()
            model_ = recover(store, "v/1", load_policy(model), "test")
            assert why in caplog.text and "cannot be used" in caplog.text
            assert model_.replayed_after == 5 and model_.applied_rewards == 8, why
            assert head_difference(model_.policy, reference) <= 1e-9, why
        with engine.begin() as conn:  # none usable: the base and every reward
            conn.execute(sa.text("DELETE FROM head_snapshots WHERE last_reward_id = 5"))
        model_ = recover(store, "v/1", load_policy(model), "test")
        assert model_.replayed_after == 0 and model_.applied_rewards == 8
        assert head_difference(model_.policy, reference) <= 1e-9
    finally:
        engine.dispose()


def test_recovery_learns_the_rewards_chunk_by_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recovery reads and learns the store's rewards a chunk at a time (bounded memory):
    with chunks of 3 the head, the replayed ids and the counts equal those of one chunk
    (``benchmarks.recovery`` measures the memory)."""
    from eventstore.migrate import upgrade
    from serving.models.recovery import recover
    from serving.store import repository
    from serving.store.repository import write_events
    from tests.serving_helpers import decision_row, reward_row

    engine = make_engine(f"sqlite:///{tmp_path}/events.db")
    upgrade(engine)
    store = EventStore(engine)
    rng = np.random.default_rng(3)
    model = policy_file(tmp_path / "base.npz", warm=20)
    try:
        for i in range(8):
            decision = decision_row(rng, model_version="v/1", n=6)
            with engine.begin() as conn:
                write_events(
                    conn, [decision, reward_row(decision.event_id, float(i % 2), None, "v/1")]
                )
        whole = recover(store, "v/1", load_policy(model), "test")
        monkeypatch.setattr(repository, "RECOVERY_CHUNK", 3)
        sizes = [len(c) for c in store.applied_reward_chunks("v/1")]
        assert sizes == [3, 3, 2]
        chunked = recover(store, "v/1", load_policy(model), "test")
        assert chunked.replayed_ids.tolist() == whole.replayed_ids.tolist() == list(range(1, 9))
        assert chunked.applied_rewards == whole.applied_rewards == 8
        assert chunked.last_reward_id == 8
        assert head_difference(chunked.policy, whole.policy) <= 1e-9
    finally:
        engine.dispose()
