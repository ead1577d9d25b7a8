"""``banditops serve`` with two workers (``BANDITOPS_WORKERS=2``): both serve from one
store, a reward reaches the head of whichever worker receives it (the decision is read
from the store when another worker made it), and ``/metrics`` aggregates every worker
(Prometheus multiprocess)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from eventstore.engine import make_engine
from serving.store.repository import EventStore
from tests.serving_helpers import AUTH, ROOT, ServiceProcess, decision_body, policy_file


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
                f"{service.url}/v1/decisions", json=decision_body(rng), headers=AUTH, timeout=10
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


#: A process that sets, in the multiprocess folder of its environment, the live gauges a
#: worker sets, then waits for its stdin to close (``sys.argv[1]``: the degraded flag).
_GAUGE_WRITER = """
import sys
from serving.metrics import ServiceMetrics
metrics = ServiceMetrics()
metrics.set_degraded(sys.argv[1] == "1")
metrics.journal_events.set(7)
metrics.set_models([("production", "ghost", "shared_linucb")], fallback=False)
print("set", flush=True)
sys.stdin.read()
"""


def _gauge_writer(env: dict[str, str], degraded: bool) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _GAUGE_WRITER, "1" if degraded else "0"],
        cwd=ROOT,
        env={**os.environ, **env},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "set\n"
    return proc


def test_the_live_gauges_of_a_dead_worker_leave_the_metrics(tmp_path: Path) -> None:
    """A worker killed (SIGKILL, OOM) left its live gauges' files in the multiprocess
    folder for good: ``banditops_store_degraded`` stayed 1 once the store was back,
    ``banditops_journal_events`` counted events long stored, ``banditops_model_info``
    kept a series for its pid. A scrape now removes the files of pids that are gone and
    keeps a live process's, a sibling worker's or not."""
    folder = tmp_path / "prometheus"
    folder.mkdir()
    env = {
        "BANDITOPS_DATABASE_URL": f"sqlite:///{tmp_path / 'events.db'}",
        "BANDITOPS_MODEL_PATH": str(policy_file(tmp_path / "policy.npz")),
        "BANDITOPS_WORKSPACE": str(tmp_path / "ws"),
        "BANDITOPS_WORKERS": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(folder),
    }
    live = _gauge_writer(env, degraded=False)  # alive, not a worker of this service
    service = ServiceProcess(env, tmp_path / "service.log")
    try:
        dead = _gauge_writer(env, degraded=True)  # a worker killed during an outage
        dead.kill()
        dead.communicate(timeout=30)  # reaped, its pipes closed: its pid is gone
        service.start()
        deadline = time.monotonic() + 60
        while len(workers := _serving_pids(service.url) - {str(live.pid)}) < 2:
            assert time.monotonic() < deadline, "the second worker never loaded the model"
            time.sleep(0.2)
        metrics = httpx.get(f"{service.url}/metrics", timeout=10).text
        assert f'pid="{dead.pid}"' not in metrics, metrics
        assert f'pid="{live.pid}"' in metrics, metrics  # alive: its series stay
        assert "banditops_store_degraded 0.0" in metrics, metrics
        assert "banditops_journal_events 7.0" in metrics, metrics  # the live writer's
        assert not list(folder.glob(f"gauge_live*_{dead.pid}.db"))
        assert list(folder.glob(f"counter_{dead.pid}.db"))  # its counts still add up
        killed = int(min(workers))
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while str(killed) in (now := _serving_pids(service.url)) or len(now) < 3:
            assert time.monotonic() < deadline, f"the killed worker stays: {now}"
            time.sleep(0.2)
        metrics = httpx.get(f"{service.url}/metrics", timeout=10).text
        assert f'pid="{killed}"' not in metrics, metrics
    finally:
        service.stop()
        live.kill()
        live.communicate(timeout=30)
