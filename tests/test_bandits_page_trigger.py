"""The page's trigger over real HTTP when Airflow answers late: one run, never two, never an
error for a run that was started."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ops.bandits_page.airflow_api import AirflowAPI, AirflowCallError


class _SlowAirflow(ThreadingHTTPServer):
    """``POST /api/v2/dags/<id>/dagRuns`` as Airflow answers it (201 with the run, 409 for
    a run id it has, or for every run when ``taken``), after ``delays`` seconds for the first
    calls."""

    def __init__(self, delays: list[float], taken: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.delays = delays
        self.taken = taken
        self.runs: dict[str, dict[str, Any]] = {}
        self.calls = 0
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: _SlowAirflow

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            delay = self.server.delays.pop(0) if self.server.delays else 0.0
            self.server.calls += 1
            run_id = body["dag_run_id"]
            known = self.server.taken or run_id in self.server.runs
            if not known:  # the run is made at once; only the answer is late
                self.server.runs[run_id] = body
        time.sleep(delay)
        status, answer = (409, {"detail": "exists"}) if known else (200, {"dag_run_id": run_id})
        data = json.dumps(answer).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up
            pass


@pytest.fixture
def airflow_with(request: pytest.FixtureRequest) -> Iterator[_SlowAirflow]:
    delays, taken = request.param
    server = _SlowAirflow(list(delays), taken)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _api(server: _SlowAirflow, attempts: int = 3) -> AirflowAPI:
    host, port = server.server_address[:2]
    return AirflowAPI(f"http://{host!s}:{port}", "t", timeout_s=0.5, trigger_attempts=attempts)


@pytest.mark.parametrize("airflow_with", [([2.0], False)], indirect=True)
def test_a_trigger_answered_late_is_asked_again_and_starts_one_run(
    airflow_with: _SlowAirflow,
) -> None:
    run_id = _api(airflow_with).trigger("bandit_monitor", {"k": 1})
    assert list(airflow_with.runs) == [run_id] and airflow_with.calls == 2
    assert airflow_with.runs[run_id]["conf"] == {"k": 1}
    assert run_id.startswith("bandits_page__")


@pytest.mark.parametrize("airflow_with", [([2.0, 2.0, 2.0], False)], indirect=True)
def test_a_trigger_never_answered_in_time_says_so_after_its_attempts(
    airflow_with: _SlowAirflow,
) -> None:
    with pytest.raises(AirflowCallError, match="unreachable") as raised:
        _api(airflow_with).trigger("bandit_monitor", {})
    assert raised.value.status == 0 and airflow_with.calls == 3
    assert len(airflow_with.runs) == 1  # the same run id each time


@pytest.mark.parametrize("airflow_with", [([], False)], indirect=True)
def test_each_trigger_names_a_new_run(airflow_with: _SlowAirflow) -> None:
    api = _api(airflow_with)
    first, second = api.trigger("bandit_retrain", {}), api.trigger("bandit_retrain", {})
    assert first != second and sorted(airflow_with.runs) == sorted([first, second])


@pytest.mark.parametrize("airflow_with", [([], True)], indirect=True)
def test_a_409_to_the_first_attempt_is_somebody_elses_run_and_an_error(
    airflow_with: _SlowAirflow,
) -> None:
    with pytest.raises(AirflowCallError, match="409") as raised:
        _api(airflow_with).trigger("bandit_retrain", {})
    assert raised.value.status == 409 and airflow_with.calls == 1


class _Vouching(ThreadingHTTPServer):
    """An Airflow API that answers every ``GET`` with ``status`` (200: an empty DAG list)
    and records the bearer tokens it was shown."""

    def __init__(self, status: int) -> None:
        super().__init__(("127.0.0.1", 0), _VouchingHandler)
        self.status = status
        self.tokens: list[str] = []

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


class _VouchingHandler(BaseHTTPRequestHandler):
    server: _Vouching

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.tokens.append(self.headers.get("Authorization", ""))
        data = json.dumps({"dags": [], "detail": "refused", "dag_run_id": "r"}).encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_POST = do_GET


def test_the_host_header_cannot_choose_who_checks_the_token(tmp_path: Any) -> None:
    """The page asks the configured API server whether a token is valid, never the one
    the request's ``Host`` names: a made-up token with ``Host: <a server that says yes>``
    is refused, and that server never sees the token (the old code took both from the
    request: 200 and the whole overview)."""
    from monitoring.settings import MonitorSettings
    from ops.bandits_page.app import create_app
    from tests.serving_helpers import make_client

    airflow, attacker = _Vouching(403), _Vouching(200)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (airflow, attacker)]
    for t in threads:
        t.start()
    try:
        settings = MonitorSettings(workspace=tmp_path / "ws")
        app = create_app(lambda: settings, airflow=True, api_url=lambda: airflow.url)
        host = attacker.url.removeprefix("http://")
        client = make_client(app, token="made-up")
        headers = {"Host": host}
        assert client.get("/api/overview", headers=headers).status_code == 403
        assert client.get("/", headers=headers).status_code == 401
        assert client.post("/actions/retrain", headers=headers).status_code == 401
    finally:
        for s in (airflow, attacker):
            s.shutdown()
            s.server_close()
    assert attacker.tokens == []
    assert airflow.tokens and set(airflow.tokens) == {"Bearer made-up"}


def test_the_own_api_url_is_the_configured_server_on_the_loopback() -> None:
    from ops.bandits_page.airflow_api import own_api_url

    assert own_api_url({"port": "8080"}) == "http://127.0.0.1:8080"
    assert own_api_url({"port": "9090", "ssl_cert": "/c.pem"}) == "https://127.0.0.1:9090"
    mounted = {"port": "8080", "base_url": "https://airflow.example.com/ops/af/"}
    assert own_api_url(mounted) == "http://127.0.0.1:8080/ops/af"
    assert own_api_url({}) == "http://127.0.0.1:8080"


def test_a_cross_site_post_triggers_nothing(tmp_path: Any) -> None:
    """A form on another site (or another port of this one: cookies are same-site) posts
    to an action with the user's cookie: refused before Airflow is asked (before: 303
    and a run triggered in the user's name)."""
    from monitoring.settings import MonitorSettings
    from ops.bandits_page.app import create_app
    from tests.serving_helpers import make_client

    airflow = _Vouching(200)
    thread = threading.Thread(target=airflow.serve_forever, daemon=True)
    thread.start()
    try:
        settings = MonitorSettings(workspace=tmp_path / "ws")
        app = create_app(lambda: settings, airflow=True, api_url=lambda: airflow.url)
        client = make_client(app, token="a-real-session")
        for headers in (
            {"Origin": "http://evil.example"},
            {"Origin": "http://testserver:8081"},
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site", "Origin": "http://testserver"},
        ):
            for action in ("retrain", "monitor", "stop-rollout"):
                got = client.post(f"/actions/{action}", headers=headers)
                assert got.status_code == 403, (action, headers, got.text)
                assert "same-origin posts only" in got.json()["detail"]
        assert airflow.tokens == []
        # the page's own form: same origin (the browser says so) goes on to Airflow
        same = {"Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"}
        client.post("/actions/monitor", headers=same, follow_redirects=False)
        assert airflow.tokens == ["Bearer a-real-session"]
    finally:
        airflow.shutdown()
        airflow.server_close()
