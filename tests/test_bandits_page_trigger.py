"""The page's trigger over real HTTP when Airflow answers late: one run, never two, never an
error for a run that was started, and a page that answers by its deadline whatever Airflow
does."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ops.bandits_page.airflow_api import AirflowAPI, AirflowCallError, Triggered
from ops.bandits_page.app import SHOWN_DAGS


class _SlowAirflow(ThreadingHTTPServer):
    """``POST /api/v2/dags/<id>/dagRuns`` as Airflow answers it (201 with the run, 409 for
    a run id it has, or for every run when ``taken``), after ``delays`` seconds for the first
    calls."""

    def __init__(self, delays: list[float], taken: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.delays = delays
        self.taken = taken
        self.runs: dict[str, dict[str, Any]] = {}
        self.listed = list(SHOWN_DAGS)  # the DAGs the user's role reads
        self.calls = 0
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: _SlowAirflow

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # the DAG list and runs, as late as the next delay says
        with self.server.lock:
            delay = self.server.delays.pop(0) if self.server.delays else 0.0
        time.sleep(delay)
        self._answer(200, {"dags": [{"dag_id": d} for d in self.server.listed], "dag_runs": []})

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
        self._answer(status, answer)

    def _answer(self, status: int, answer: dict[str, Any]) -> None:
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


def _url(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}"


def _api(server: _SlowAirflow, deadline_s: float = 3.0) -> AirflowAPI:
    return AirflowAPI(_url(server), "t", timeout_s=0.5, deadline_s=deadline_s)


@pytest.mark.parametrize("airflow_with", [([2.0], False)], indirect=True)
def test_a_trigger_answered_late_is_asked_again_and_starts_one_run(
    airflow_with: _SlowAirflow,
) -> None:
    run = _api(airflow_with).trigger("bandit_monitor", {"k": 1})
    assert run.confirmed and run.dag_id == "bandit_monitor"
    assert list(airflow_with.runs) == [run.run_id] and airflow_with.calls == 2
    assert airflow_with.runs[run.run_id]["conf"] == {"k": 1}
    assert run.run_id.startswith("bandits_page__")


@pytest.mark.parametrize("airflow_with", [([5.0] * 5, False)], indirect=True)
def test_a_trigger_never_answered_by_the_deadline_is_unconfirmed_and_one_run(
    airflow_with: _SlowAirflow,
) -> None:
    """Every ask went out and none was answered: Airflow may still make the run, so it is no
    error; the page says it is unconfirmed, by its deadline (0.5 + 0.5 + 0.2 s)."""
    start = time.monotonic()
    run = _api(airflow_with, deadline_s=1.2).trigger("bandit_monitor", {})
    assert time.monotonic() - start < 1.2 + 0.5
    assert not run.confirmed and 1.1 < run.waited_s < 1.7
    assert airflow_with.calls == 3 and list(airflow_with.runs) == [run.run_id]


def test_a_trigger_to_an_airflow_that_is_not_there_is_an_error() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    url = _url(server)
    server.server_close()  # nothing listens there now
    with pytest.raises(AirflowCallError, match="unreachable") as raised:
        AirflowAPI(url, "t", timeout_s=0.5, deadline_s=1.0).trigger("bandit_monitor", {})
    assert raised.value.status == 0


@pytest.mark.parametrize("airflow_with", [([], False)], indirect=True)
def test_each_trigger_names_a_new_run(airflow_with: _SlowAirflow) -> None:
    api = _api(airflow_with)
    first, second = api.trigger("bandit_retrain", {}), api.trigger("bandit_retrain", {})
    assert first.run_id != second.run_id
    assert sorted(airflow_with.runs) == sorted([first.run_id, second.run_id])


@pytest.mark.parametrize("airflow_with", [([30.0] * 20, False)], indirect=True)
def test_the_page_answers_by_its_deadline_when_airflow_does_not(
    airflow_with: _SlowAirflow, tmp_path: Any
) -> None:
    """An Airflow that takes 30 s for every call (its metadata database held by the
    scheduler on a loaded machine): the button answers after its deadline with the run it
    asked for, and the page it leads to says so, and that the sign-in could not be checked
    (so none of the page's data is shown). CI's browser gave up after 120 s on the old page
    (three asks of 30 s, then five more calls)."""
    from monitoring.settings import MonitorSettings
    from ops.bandits_page.app import create_app
    from tests.serving_helpers import make_client

    settings = MonitorSettings(workspace=tmp_path / "ws")
    app = create_app(
        lambda: settings, airflow=True, api_url=lambda: _url(airflow_with), deadline_s=1.0
    )
    client = make_client(app, token="t")
    start = time.monotonic()
    answer = client.post("/actions/monitor", follow_redirects=False)
    assert time.monotonic() - start < 1.0 + 1.0
    assert answer.status_code == 303
    page = client.get(answer.headers["location"])
    assert time.monotonic() - start < 2 * (1.0 + 1.0)
    assert page.status_code == 503
    [run_id] = airflow_with.runs
    assert f"asked Airflow for bandit_monitor run {run_id}; it did not confirm" in page.text
    assert "sign-in could not be checked" in page.text and "did not answer" in page.text
    assert 'id="service"' not in page.text


def test_without_airflow_to_check_the_token_the_page_shows_nothing(tmp_path: Any) -> None:
    """Airflow down: a made-up token gets a 503 and none of the page (it got the whole page,
    with the error as a message, while only the JSON twin was closed)."""
    from monitoring.settings import MonitorSettings
    from ops.bandits_page.app import create_app
    from tests.serving_helpers import make_client

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    url = _url(server)
    server.server_close()  # nothing listens there now
    settings = MonitorSettings(workspace=tmp_path / "ws")
    client = make_client(create_app(lambda: settings, airflow=True, api_url=lambda: url), token="x")
    page = client.get("/")
    assert page.status_code == 503 and "is unreachable" in page.text
    assert 'id="service"' not in page.text and "event store" not in page.text
    assert client.get("/api/overview").status_code == 502


def test_the_message_names_the_run_either_way() -> None:
    from ops.bandits_page.app import trigger_message

    done = trigger_message("monitor", Triggered("bandit_monitor", "r1", True, 0.2))
    late = trigger_message("monitor", Triggered("bandit_monitor", "r1", False, 40.1))
    assert done == "monitor: triggered bandit_monitor run r1."
    assert late.startswith("monitor: asked Airflow for bandit_monitor run r1;")
    assert "within 40 s" in late


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
                got = client.post(f"/actions/{action}", headers=headers, data={"version": "2"})
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


@pytest.mark.parametrize("airflow_with", [([], False)], indirect=True)
def test_a_role_that_reads_no_banditops_dag_sees_nothing_of_the_page(
    airflow_with: _SlowAirflow, tmp_path: Any
) -> None:
    """The page checked only that the user may list DAGs: with per-DAG roles (FAB,
    multi-team) a user who reads none of the banditops DAGs saw all of their data (the
    security helper's stub Airflow answering an empty list got the whole page)."""
    from monitoring.settings import MonitorSettings
    from ops.bandits_page.app import NO_ACCESS, create_app
    from tests.serving_helpers import make_client

    settings = MonitorSettings(workspace=tmp_path / "ws")
    app = create_app(lambda: settings, airflow=True, api_url=lambda: _url(airflow_with))
    client = make_client(app, token="a-real-session")
    assert client.get("/").status_code == 200  # listed: the page
    airflow_with.listed = ["someone_elses_dag"]
    page = client.get("/")
    assert page.status_code == 403 and "none of the banditops DAGs" in page.text
    assert 'id="versions"' not in page.text and "event store" not in page.text
    overview = client.get("/api/overview")
    assert overview.status_code == 403 and overview.json() == {"detail": NO_ACCESS}


def test_an_answer_sent_a_byte_at_a_time_ends_at_the_deadline() -> None:
    """httpx's timeout bounds each read, not a call: an Airflow (or a proxy) sending its
    answer a byte every 0.1 s held the page far past its deadline (stall helper, stop 44:
    still waiting at 90 s)."""
    import socket

    stop = threading.Event()

    def drip(server: socket.socket) -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" * 20:
                if stop.is_set():
                    return
                conn.sendall(bytes([byte]))
                time.sleep(0.1)

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        thread = threading.Thread(target=drip, args=(server,), daemon=True)
        thread.start()
        api = AirflowAPI(f"http://127.0.0.1:{server.getsockname()[1]}", "t", deadline_s=1.0)
        started = time.monotonic()
        with pytest.raises(AirflowCallError, match="did not answer"):
            api.dags()
        stop.set()
    assert time.monotonic() - started < 3.0


def test_the_page_s_data_read_past_the_deadline_is_a_503(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store or registry that accepts and keeps silent held ``/api/overview`` and the
    page for good (stall helper, stop 44)."""
    from monitoring.settings import MonitorSettings
    from ops.bandits_page import app as page_app
    from tests.serving_helpers import make_client

    release = threading.Event()
    monkeypatch.setattr(page_app, "collect", lambda _settings: release.wait(60))
    settings = MonitorSettings(workspace=tmp_path / "ws")
    client = make_client(
        page_app.create_app(lambda: settings, airflow=False, deadline_s=0.5), token=None
    )
    try:
        for path in ("/api/overview", "/"):
            started = time.monotonic()
            answer = client.get(path)
            assert time.monotonic() - started < 2.5
            assert answer.status_code == 503 and "not read in time" in answer.text
    finally:
        release.set()
