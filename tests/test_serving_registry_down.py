"""A registry that does not answer: the service serves the fallback after one poll
interval (it waited out MLflow's retries — about four minutes — answering 503), and the
registry's password never shows, in ``GET /v1/model`` or in the service's log."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np

from tests.serving_helpers import AUTH, ServiceProcess, decision_body, free_port

PASSWORD = "Hunter2Secret"


def test_an_unreachable_registry_neither_blocks_the_fallback_nor_leaks_its_password(
    tmp_path: Path,
) -> None:
    closed = free_port()  # nothing listens there
    env = {
        "BANDITOPS_DATABASE_URL": f"sqlite:///{tmp_path / 'events.db'}",
        "BANDITOPS_WORKSPACE": str(tmp_path / "ws"),
        "BANDITOPS_MLFLOW_TRACKING_URI": f"http://mlflowuser:{PASSWORD}@127.0.0.1:{closed}/",
        "BANDITOPS_POLL_INTERVAL_S": "2",
    }
    log = tmp_path / "service.log"
    started = time.monotonic()
    service = ServiceProcess(env, log).start()  # returns once /readyz answers ready
    try:
        ready_after = time.monotonic() - started
        out = httpx.post(
            f"{service.url}/v1/decisions",
            json=decision_body(np.random.default_rng(0)),
            headers=AUTH,
            timeout=10,
        )
        assert out.status_code == 200 and out.json()["fallback"] is True, out.text
        deadline = time.monotonic() + 60
        while (error := httpx.get(f"{service.url}/v1/model").json()["last_load_error"]) is None:
            assert time.monotonic() < deadline, "the failed poll was never reported"
            time.sleep(0.5)
    finally:
        service.stop()
    assert ready_after < 45, ready_after
    assert "unreachable" in error and PASSWORD not in error and "mlflowuser:***@" in error
    text = log.read_text()
    assert "unreachable" in text and PASSWORD not in text
