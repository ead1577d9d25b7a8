"""Served latency in the hourly monitor: Prometheus histogram quantiles, and the check run
against a real decision service (uvicorn on a free loopback port) through its /metrics."""

from __future__ import annotations

import json
import math
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from eventstore.contract import DECISION_ENDPOINTS
from eventstore.engine import make_engine
from eventstore.migrate import upgrade
from monitoring import monitor
from monitoring.served_latency import (
    LatencyHistogram,
    histogram_quantile,
    merge,
    parse_histograms,
)
from monitoring.settings import MonitorSettings
from serving.app import create_app
from serving.metrics import ServiceMetrics
from tests.serving_helpers import AUTH, LiveServer, decision_body, service_settings

INF = math.inf


# ---------------------------------------------------------------------- pure numbers
def test_histogram_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    bounds = (1.0, 2.0, 4.0, INF)
    cumulative = (10.0, 30.0, 40.0, 40.0)
    # rank 20 lies in (1, 2], which holds ranks 10–30: 1 + (20 − 10) / 20 · (2 − 1)
    assert histogram_quantile(0.5, bounds, cumulative) == pytest.approx(1.5)
    # rank 4 in the first bucket, interpolated from 0
    assert histogram_quantile(0.1, bounds, cumulative) == pytest.approx(0.4)
    # rank 38 in (2, 4]: 2 + (38 − 30) / 10 · 2
    assert histogram_quantile(0.95, bounds, cumulative) == pytest.approx(3.6)
    # a rank in +Inf returns the largest finite bound (a lower bound of the quantile)
    assert histogram_quantile(0.99, (1.0, 2.0, INF), (5.0, 5.0, 10.0)) == 2.0
    assert histogram_quantile(0.5, bounds, (0.0, 0.0, 0.0, 0.0)) is None
    with pytest.raises(ValueError, match=r"q must be in \[0, 1\]; got 1.5"):
        histogram_quantile(1.5, bounds, cumulative)
    with pytest.raises(ValueError, match="bounds must increase strictly and end with"):
        LatencyHistogram((1.0, 2.0), (1.0, 2.0), 0.0)
    with pytest.raises(ValueError, match="cumulative counts must not decrease"):
        LatencyHistogram((1.0, INF), (3.0, 2.0), 0.0)


def test_quantiles_of_the_services_histogram_bracket_the_exact_quantiles() -> None:
    """Seeded latencies observed into the service's own histogram, rendered as the service
    renders /metrics and parsed back: counts and sum exact, each estimate in the bucket
    that holds the exact quantile."""
    rng = np.random.default_rng(20261129)
    values = rng.lognormal(mean=np.log(0.004), sigma=0.8, size=5000)
    metrics = ServiceMetrics()
    for v in values:
        metrics.latency.labels("/v1/decisions").observe(float(v))
    metrics.latency.labels("/healthz").observe(0.0001)
    parsed = parse_histograms(metrics.render()[0].decode())
    assert parsed is not None and set(parsed) == {"/v1/decisions", "/healthz"}
    hist = parsed["/v1/decisions"]
    assert hist.count == 5000 and hist.total == pytest.approx(values.sum())
    for q in (0.5, 0.9, 0.99):
        exact = float(np.quantile(values, q, method="inverted_cdf"))
        estimate = hist.quantile(q)
        i = int(np.searchsorted(hist.bounds, exact))  # first bound ≥ exact
        lower = 0.0 if i == 0 else hist.bounds[i - 1]
        assert lower < exact <= hist.bounds[i]
        assert estimate is not None and lower <= estimate <= hist.bounds[i], q
    assert parse_histograms("# nothing here\n") is None


def test_interval_histograms_subtract_scrapes_and_detect_a_restart() -> None:
    before = LatencyHistogram((0.01, 0.1, INF), (3.0, 5.0, 6.0), 0.4)
    after = LatencyHistogram((0.01, 0.1, INF), (10.0, 14.0, 15.0), 0.9)
    delta = after.since(before)
    assert delta == LatencyHistogram((0.01, 0.1, INF), (7.0, 9.0, 9.0), pytest.approx(0.5))
    assert before.since(after) is None  # counters went down: the service restarted
    assert after.since(LatencyHistogram((0.02, 0.1, INF), (1.0, 1.0, 1.0), 0.0)) is None
    assert merge([before, after]) == LatencyHistogram(
        (0.01, 0.1, INF), (13.0, 19.0, 21.0), pytest.approx(1.3)
    )
    assert merge([]) is None
    assert LatencyHistogram.from_dict(json.loads(json.dumps(after.to_dict()))) == after


def test_requests_slower_than_a_limit_are_interpolated_as_the_quantile_is() -> None:
    hist = LatencyHistogram((0.01, 0.1, 0.5, INF), (50.0, 90.0, 98.0, 100.0), 3.0)
    assert hist.slower_than(0.1) == pytest.approx(10.0)  # a bound: exact
    assert hist.slower_than(0.3) == pytest.approx(2.0 + 8.0 * 0.5)  # half of (0.1, 0.5]
    assert hist.slower_than(0.005) == pytest.approx(100.0 - 25.0)  # first bucket from 0
    assert hist.slower_than(2.0) == 2.0  # beyond the finite bounds: the +Inf bucket
    # consistent with the quantile: the p99 is above a limit exactly when > 1 % are slower
    rng = np.random.default_rng(5)
    for _ in range(200):
        cumulative = tuple(np.cumsum(rng.integers(0, 30, size=4)).astype(float))
        if cumulative[-1] == 0:
            continue
        h = LatencyHistogram((0.01, 0.1, 0.5, INF), cumulative, 1.0)
        limit = float(rng.uniform(0.0, 0.5))
        p99 = h.quantile(0.99)
        assert p99 is not None
        if abs(p99 - limit) > 1e-9:
            assert (p99 > limit) == (h.slower_than(limit) > 0.01 * h.count + 1e-9)


class _Metrics:
    """A service's ``/metrics`` (the service's own exposition) over real HTTP, serving what
    the test observes into its decision-latency histogram."""

    def __init__(self) -> None:
        from fastapi import FastAPI
        from fastapi.responses import Response

        self.metrics = ServiceMetrics()
        app = FastAPI()

        @app.get("/metrics")
        def metrics() -> Response:
            body, kind = self.metrics.render()
            return Response(body, media_type=kind)

        self.server = LiveServer(app)

    def observe(self, seconds: float, n: int) -> None:
        for _ in range(n):
            self.metrics.latency.labels("/v1/decisions").observe(seconds)


def test_one_slow_request_among_a_few_is_too_few_to_tell(tmp_path: Path) -> None:
    """Nineteen requests of 2 ms and one of 300 ms put the p99 past a 100 ms limit, as a
    p99 at the limit does one time in six at 20 requests (1 − 0.99²⁰): skipped, saying so
    (it was an alert). The same 5 % of 420 requests, or every one of 5, is an alert."""
    service = _Metrics()
    state = tmp_path / "state.json"
    with service.server as server:
        settings = _settings(tmp_path, server.url, latency_p99_max_s=0.1)
        service.observe(0.002, 19)
        service.observe(0.3, 1)
        few = monitor.served_latency(settings, state)
        assert few["p99_s"] > 0.1 and few["slower_than_limit"] == pytest.approx(1.0)
        assert few["check"]["status"] == "skipped", few["check"]
        assert "Too few decisions to tell" in few["check"]["message"]
        assert "probability 0.18" in few["check"]["message"]

        service.observe(0.002, 400)
        service.observe(0.3, 20)
        many = monitor.served_latency(settings, state)
        assert many["count"] == 420 and many["check"]["status"] == "alert", many["check"]
        assert "about 20 of 420 requests slower" in many["check"]["message"]

        service.observe(0.3, 5)
        all_slow = monitor.served_latency(settings, state)
        assert all_slow["count"] == 5 and all_slow["check"]["status"] == "alert"

        service.observe(0.002, 5)
        fast = monitor.served_latency(settings, state)
        assert fast["check"]["status"] == "ok"


# ---------------------------------------------------------------------- a real service
def _settings(tmp_path: Path, url: str | None, **extra: object) -> MonitorSettings:
    return MonitorSettings(
        workspace=tmp_path / "pipelines",
        database_url=f"sqlite:///{tmp_path / 'events.db'}",
        runs_dir=tmp_path / "runs",
        service_url=url,
        **extra,
    )


def _decide(http: httpx.Client, rng: np.random.Generator, n: int) -> float:
    """``n`` decisions over HTTP; the slowest round trip (seconds)."""
    slowest = 0.0
    for _ in range(n):
        started = time.perf_counter()
        response = http.post("/v1/decisions", json=decision_body(rng))
        slowest = max(slowest, time.perf_counter() - started)
        assert response.status_code == 200, response.text
    return slowest


def test_served_latency_is_read_from_a_running_services_metrics(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    service = service_settings(tmp_path)
    engine = make_engine(service.store_url)
    upgrade(engine)
    engine.dispose()
    state = tmp_path / "runs" / "monitor" / monitor.LATENCY_STATE_FILE
    with (
        LiveServer(create_app(service)) as server,
        httpx.Client(base_url=server.url, timeout=10, headers=AUTH) as http,
    ):
        settings = _settings(tmp_path, server.url, latency_p99_max_s=5.0)
        first = monitor.served_latency(settings, state)
        assert first["check"]["status"] == "skipped"
        assert (
            "no decision requests were served since the service started"
            in (first["check"]["message"])
        )
        assert json.loads(state.read_text())["service_url"] == server.url

        slowest = _decide(http, rng, 30)
        for _ in range(5):
            assert http.get("/healthz").status_code == 200  # not a decision endpoint
        second = monitor.served_latency(settings, state)
        assert second["check"]["status"] == "ok", second["check"]
        assert second["count"] == 30 and second["since"] == first["scraped_at"]
        assert second["per_endpoint"]["/v1/decisions"]["count"] == 30
        assert 0 < second["p50_s"] <= second["p99_s"]
        # the service times less than the client's round trip; interpolation stays inside
        # the bucket that holds the slowest request
        bounds = LatencyHistogram.from_dict(
            json.loads(state.read_text())["histograms"]["/v1/decisions"]
        ).bounds
        assert second["p99_s"] <= min(b for b in bounds if b >= slowest)
        assert second["check"]["message"].startswith("served latency p99 ")
        assert (
            "over 30 decision requests since the previous scrape at" in (second["check"]["message"])
        )

        _decide(http, rng, 12)
        strict = _settings(tmp_path, server.url, latency_p99_max_s=1e-6)
        third = monitor.served_latency(strict, state)
        assert third["count"] == 12 and third["since"] == second["scraped_at"]
        assert third["check"]["status"] == "alert"
        assert third["check"]["message"].endswith(
            "; the p99 limit is 0.001 ms (about 12 of 12 requests slower)."
        )

        # a baseline with more requests than the service has served: it restarted since
        saved = json.loads(state.read_text())
        saved["histograms"]["/v1/decisions"]["cumulative"] = [
            c + 1000 for c in saved["histograms"]["/v1/decisions"]["cumulative"]
        ]
        state.write_text(json.dumps(saved))
        restarted = monitor.served_latency(settings, state)
        assert restarted["count"] == 42 and restarted["since"] is None
        assert "since the service restarted" in restarted["check"]["message"]
    assert set(second["per_endpoint"]) <= set(DECISION_ENDPOINTS)


def test_served_latency_is_skipped_without_a_url_and_alerts_when_unreachable(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state.json"
    skipped = monitor.served_latency(_settings(tmp_path, None), state)
    assert skipped["check"]["status"] == "skipped"
    assert "BANDITOPS_SERVICE_URL is not set" in skipped["check"]["message"]
    assert not state.exists()
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = monitor.served_latency(_settings(tmp_path, f"http://127.0.0.1:{port}"), state, 2.0)
    assert down["check"]["status"] == "alert"
    assert down["check"]["message"].startswith(
        f"served latency unknown: could not read http://127.0.0.1:{port}/metrics"
    )
    with pytest.raises(ValueError, match="must be an http"):
        _settings(tmp_path, "127.0.0.1:8000")


def test_a_latency_alert_fails_its_check_task(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    checks = {name: {"status": "ok", "message": "fine"} for name in monitor.CHECKS}
    checks["served_latency"] = {"status": "alert", "message": "served latency p99 250.0 ms …"}
    report.write_text(json.dumps({"checks": checks}))
    with pytest.raises(monitor.MonitorAlert, match=r"^served_latency: served latency p99 250"):
        monitor.check(report, "served_latency")
