"""``banditops serve`` with two workers (``BANDITOPS_WORKERS=2``): both serve from one
store, a reward reaches the head of whichever worker receives it (the decision is read
from the store when another worker made it), and ``/metrics`` aggregates every worker
(Prometheus multiprocess)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import numpy as np

from eventstore.engine import make_engine
from serving.store.repository import EventStore
from tests.serving_helpers import AUTH, ServiceProcess, decision_body, policy_file


def _serving_pids(url: str) -> set[str]:
    """Workers whose ``banditops_model_info`` marks a served model (value 1)."""
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    return set(re.findall(r'^banditops_model_info\{pid="(\d+)"[^}]*\} 1\.0$', metrics, flags=re.M))


def test_two_workers_share_the_store_and_the_metrics(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    env = {
        "BANDITOPS_DATABASE_URL": url,
        "BANDITOPS_MODEL_PATH": str(policy_file(tmp_path / "policy.npz")),
        "BANDITOPS_WORKSPACE": str(tmp_path / "ws"),
        # the setting, not the option: `serve` takes BANDITOPS_WORKERS (or banditops.toml)
        # unless --workers is given (it used to overwrite it with its default of 1)
        "BANDITOPS_WORKERS": "2",
    }
    rng = np.random.default_rng(0)
    service = ServiceProcess(env, tmp_path / "service.log").start()
    try:
        # start() returns once one worker answers ready; wait until both serve the model
        # (each marks its model in the shared metrics once loaded)
        deadline = time.monotonic() + 60
        while len(_serving_pids(service.url)) < 2:
            assert time.monotonic() < deadline, "the second worker never loaded the model"
            time.sleep(0.2)
        statuses = []
        for _ in range(20):  # a new connection per request: the kernel spreads them
            event = httpx.post(
                f"{service.url}/v1/decisions", json=decision_body(rng), timeout=10
            ).json()["event_id"]
            reward = httpx.post(
                f"{service.url}/v1/rewards",
                json={"event_id": event, "reward": 1.0},
                timeout=10,
                headers=AUTH,
            )
            statuses.append(reward.json().get("status", reward.text))
        metrics = httpx.get(f"{service.url}/metrics", timeout=10).text
    finally:
        service.stop()
    assert statuses == ["applied"] * 20
    pids = set(re.findall(r'banditops_model_info\{pid="(\d+)"', metrics))
    assert len(pids) == 2, metrics
    total = sum(
        float(v)
        for v in re.findall(r"^banditops_decisions_total\{.*\} (\S+)$", metrics, flags=re.M)
    )
    assert total == 20.0
    engine = make_engine(url)
    try:
        assert EventStore(engine).count_rows()["rewards"] == 20
    finally:
        engine.dispose()
