"""A real MLflow tracking server behind a TCP proxy the test cuts: the service keeps its
version while the server is unreachable, never fails a decision, reports the outage, and
follows the production alias again when the server is back."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from benchmarks.faults import TcpProxy
from tests.serving_helpers import (
    decision_body,
    free_port,
    policy_file,
    running_client,
    service_settings,
)

MODEL = "server-outage"


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """``mlflow server`` on a free loopback port (SQLite store, artifacts it serves)."""
    port = free_port()
    root = tmp_path / "mlflow"
    root.mkdir()
    log = (root / "server.log").open("wb")
    env = {**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_REGISTRY_URI", None)
    process = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
        ],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, (root / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(process.pid, 15)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait(10)
        log.close()


def _register(url: str, state: Path, key: str) -> str:
    from modelregistry.registry import ModelRegistry

    registry = ModelRegistry(url, model_name=MODEL)
    version = registry.register_candidate(state_path=state, run_key=key).version
    registry.promote(version, by="test", reason=key)
    return str(version)


def _version(served: str | None) -> str:
    """The registry version number of a served version label (``<model>/<n>``)."""
    assert served is not None
    return served.rsplit("/", 1)[-1]


def test_an_unreachable_mlflow_server_never_fails_a_decision(
    mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the service's MLflow client gives up fast instead of retrying for minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    rng = np.random.default_rng(0)
    v1 = _register(mlflow_server, policy_file(tmp_path / "v1.npz", seed=1), "v1")
    target = mlflow_server.rsplit(":", 1)
    with TcpProxy("127.0.0.1", int(target[1])) as proxy:
        settings = service_settings(
            tmp_path,
            mlflow_tracking_uri=f"http://127.0.0.1:{proxy.port}",
            model_name=MODEL,
        )
        with running_client(settings) as client:
            assert _version(client.get("/v1/model").json()["production"]["version"]) == v1

            proxy.cut()
            # a new version is promoted on the server while the service cannot reach it
            v2 = _register(mlflow_server, policy_file(tmp_path / "v2.npz", seed=2), "v2")
            polled = client.post("/v1/admin/poll")
            assert polled.status_code == 200, polled.text
            info = client.get("/v1/model").json()
            assert _version(info["production"]["version"]) == v1  # kept
            assert "unreachable" in info["last_load_error"]
            for _ in range(20):
                answer = client.post("/v1/decisions", json=decision_body(rng))
                assert answer.status_code == 200, answer.text
                assert _version(answer.json()["model_version"]) == v1
                assert answer.json()["fallback"] is False
            metrics = client.get("/metrics").text
            assert 'banditops_model_load_failures_total{reason="unreachable"}' in metrics
            assert client.get("/readyz").status_code == 200

            proxy.restore()
            client.post("/v1/admin/poll")
            assert _version(client.get("/v1/model").json()["production"]["version"]) == v2
            answer = client.post("/v1/decisions", json=decision_body(rng))
            assert answer.status_code == 200
            assert _version(answer.json()["model_version"]) == v2
