"""The service over real HTTP (uvicorn on a free loopback port): the decision → reward
path, and a hot swap under concurrent requests with no failed request."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from eventstore.engine import make_engine
from eventstore.migrate import upgrade
from serving.app import create_app
from tests.serving_helpers import (
    AUTH,
    LiveServer,
    decision_body,
    policy_file,
    service_settings,
    wait_ready,
)

pytest_plugins = ["tests.serving_fixtures"]


def _server(settings: Any) -> LiveServer:
    engine = make_engine(settings.store_url)
    upgrade(engine)
    engine.dispose()
    return LiveServer(create_app(settings))


def test_decision_and_reward_over_http(
    store_url: str, tmp_path: Path, rng: np.random.Generator
) -> None:
    settings = service_settings(
        tmp_path, store_url, model_path=policy_file(tmp_path / "p.npz"), api_token="t"
    )
    token = {"Authorization": "Bearer t"}
    with (
        _server(settings) as server,
        httpx.Client(base_url=server.url, timeout=10, headers=token) as http,
    ):
        wait_ready(http.get)  # the first load may still run once uvicorn has started
        decision = http.post("/v1/decisions", json=decision_body(rng)).json()
        reward = http.post(
            "/v1/rewards",
            json={"event_id": decision["event_id"], "reward": 1.0},
            headers={"Authorization": "Bearer t"},
        )
        assert reward.json()["status"] == "applied"
        assert http.get("/v1/model").json()["production"]["applied_rewards"] == 1
        bad = http.post(
            "/v1/decisions",
            content=b'{"context": [NaN]}',
            headers={"content-type": "application/json"},
        )
        assert bad.status_code == 422


def test_hot_swap_under_concurrent_requests(tmp_path: Path) -> None:
    path = policy_file(tmp_path / "policy.npz", seed=0)
    settings = service_settings(tmp_path, model_path=path, poll_interval_s=0.05)
    results: list[tuple[int, str | None, int]] = []  # (request index, version, status)
    errors: list[str] = []
    lock = threading.Lock()
    swapped = threading.Event()
    with _server(settings) as server:
        wait_ready(lambda url: httpx.get(f"{server.url}{url}"))  # the first load may still run
        first = httpx.get(f"{server.url}/v1/model").json()["production"]["version"]

        def client(seed: int) -> None:
            local = np.random.default_rng(seed)
            with httpx.Client(base_url=server.url, timeout=10, headers=AUTH) as http:
                for i in range(60):
                    if i == 20 and seed == 0:
                        policy_file(tmp_path / "policy.npz", seed=1)  # atomic replace
                        swapped.set()
                    try:
                        got = http.post("/v1/decisions", json=decision_body(local))
                        version = got.json().get("model_version") if got.is_success else None
                        ack = http.post(
                            "/v1/rewards", json={"event_id": got.json()["event_id"], "reward": 1.0}
                        )
                        status = max(got.status_code, ack.status_code)
                    except Exception as exc:  # a failed request fails the test below
                        errors.append(repr(exc))
                        continue
                    with lock:
                        results.append((seed, version, status))

        threads = [threading.Thread(target=client, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        final = httpx.get(f"{server.url}/v1/model").json()["production"]["version"]
    assert swapped.is_set() and not errors
    assert {status for *_, status in results} == {200}
    assert len(results) == 240
    assert final != first
    for seed in range(4):  # each client sees the old version, then only the new one
        versions = [v for s, v, _ in results if s == seed]
        switch = versions.index(final) if final in versions else len(versions)
        assert set(versions[:switch]) <= {first}
        assert set(versions[switch:]) <= {final}
    assert {v for _, v, _ in results} == {first, final}


def _received(port: int, raw: bytes) -> bytes:
    """What the server answers to ``raw`` sent on a fresh connection, until it closes."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(raw)
        while chunk := sock.recv(65536):
            got += chunk
    return got


def test_the_body_limits_answers_are_counted_in_the_request_metrics(tmp_path: Path) -> None:
    """The body limit answered 413 and 408 outside the metrics layer, so neither was in
    ``banditops_requests_total`` (nor the latency histogram), which docs/reliability.md
    names as where they show. A client that leaves before its body ends is answered by
    nobody and still not counted; a 408 is timed from when the wait for its body ended,
    not over the wait (a slow client is not the service's latency)."""
    settings = service_settings(
        tmp_path,
        model_path=policy_file(tmp_path / "p.npz"),
        max_body_bytes=2048,
        http_body_timeout_s=1.0,
    )
    head = b"POST /v1/decisions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
    with _server(settings) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        wait_ready(http.get)
        declared = http.post("/v1/decisions", content=b"[" + b"0," * 2000 + b"0]")
        assert declared.status_code == 413, declared.text
        streamed = http.post("/v1/decisions", content=iter([b"[", b"0," * 2000, b"0]"]))
        assert streamed.status_code == 413, streamed.text
        trickled = _received(server.port, head + b"content-length: 100\r\n\r\n{")
        assert trickled.startswith(b"HTTP/1.1 408"), trickled
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(head + b"content-length: 100\r\n\r\n{")  # then leaves
        time.sleep(0.3)
        text = http.get("/metrics").text
    count = 'banditops_requests_total{endpoint="/v1/decisions",method="POST",status="%s"} %s'
    assert count % ("413", "2.0") in text, text
    assert count % ("408", "1.0") in text, text
    timed = 'banditops_request_latency_seconds_count{endpoint="/v1/decisions"} 3.0'
    assert timed in text, text
    within = 'banditops_request_latency_seconds_bucket{endpoint="/v1/decisions",le="0.5"} 3.0'
    assert within in text, text
