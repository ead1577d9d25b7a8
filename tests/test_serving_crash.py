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

from bandit_core import load_policy
from eventstore.engine import make_engine
from serving.models.recovery import rebuild_from_store
from serving.models.state_io import policy_from_bytes
from serving.store.repository import EventStore
from tests.serving_helpers import ServiceProcess, decision_body, head_difference, policy_file

pytest_plugins = ["tests.serving_fixtures"]

TOKEN = "crash-test"
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
        "BANDITOPS_USER_SALT": "crash",
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
