"""`banditops demo` end to end, small, then ``banditops airflow standalone`` on its workspace.

One demo run and one ``airflow standalone`` (module fixtures: the slowest things the suite
starts) are shared by this module's three tests, which run in this order in one process
(one ``xdist_group``), each on the workspace as the one before it left it:

1. the demo: service → day 1 → Airflow retrain → day 2 → retrain → day 3 → day 4, a
   deliberately worse candidate's staged rollout, rolled back at 5 %; checked against
   its summary (``demo.json``), event store and registry before Airflow ever runs on the
   workspace;
2. the Bandits page in a real browser: Debian's Chromium, headless, driven by Selenium
   through the system ``chromedriver`` (nothing downloaded), against the page served by
   ``banditops airflow standalone`` on the demo's workspace (details in the test);
3. a ``bandit_retrain`` run triggered from Airflow's REST API with an empty ``conf``, as
   the UI's trigger button does: it runs under the scheduler (LocalExecutor), reading the
   demo's reward window and retrain form from the workspace file, until a new version is
   in the workspace's registry. It changes the registry the page shows, so it comes last.

``airflow standalone`` starts in a clean environment (no ``BANDITOPS_*``, no
``AIRFLOW*``) with nothing but ``--workspace`` (and a port), on an Airflow home left as
older demos left it (example DAGs on, a missing ``dags_folder``; the demo's secrets and
metadata kept), which it must re-initialise.

Without Chromium the browser test is skipped with the reason (``apt-get install chromium
chromium-driver``); with ``BANDITOPS_REQUIRE_SERVICES=1`` (CI) it fails instead.
``BANDITOPS_TEST_DEMO_WORKSPACE`` may name a finished demo workspace to copy instead of
running the demo again (a development shortcut; CI runs the demo).
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ops.airflow_cli import DAG_IDS, DAGS, PASSWORD_FILE, AirflowHome
from ops.bandits_page.airflow_api import DEADLINE_S
from ops.demo import MODEL_NAME, Workspace, demo_settings
from tests.conftest import service_unavailable
from tests.demo_support import BANDITOPS, clean_env, run_demo_cli
from tests.serving_helpers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group(name="demo_workspace")]

#: the demo's warnings (its commands run in subprocesses; the tests import its packages)
DEMO_WARNINGS = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning"
)
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT = ROOT / "docs" / "bandits-page.png"
MODEL = "banditops-policy"
SEED = 3


@dataclass
class Demo:
    """The module's demo workspace, its summary (``demo.json``), and what has run on it
    since: each test checks that it sees the workspace in the state it expects."""

    workspace: Path
    summary: dict[str, Any]
    airflow_started: bool = False
    retrain_triggered: bool = False


@dataclass(frozen=True)
class Standalone:
    """``banditops airflow standalone`` serving: its base URL, an admin token (from the
    password it printed) and its output."""

    base: str
    token: str
    log: Path

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """A workspace after ``banditops demo`` (small: 200 users, 1500 requests a day)."""
    workspace = tmp_path_factory.mktemp("demo").resolve() / "ws"
    reuse = os.environ.get("BANDITOPS_TEST_DEMO_WORKSPACE")
    if reuse:
        shutil.copytree(reuse, workspace, ignore=shutil.ignore_patterns("logs", "*.log"))
    else:
        run_demo_cli(workspace, users=200, requests=1500, seed=SEED)
    return Demo(workspace, json.loads((workspace / "demo.json").read_text()))


def _stale_home(workspace: Path) -> None:
    """The demo's Airflow home as an older demo left it: examples on, no dags folder (its
    generated secrets kept)."""
    home = AirflowHome(workspace)
    config = configparser.ConfigParser(interpolation=None)
    config.read(home.config_file)
    config["core"]["load_examples"] = "True"
    config["core"]["dags_folder"] = "/nonexistent/dags"
    with home.config_file.open("w") as fh:
        config.write(fh)


@pytest.fixture(scope="module")
def standalone(demo: Demo) -> Iterator[Standalone]:
    """``banditops airflow standalone --workspace <demo>`` in a clean environment, on the
    demo's Airflow home made stale first; signed in as admin with the password it printed."""
    workspace = demo.workspace
    _stale_home(workspace)
    demo.airflow_started = True
    port = free_port()
    log_path = workspace / "standalone-test.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                str(BANDITOPS),
                "airflow",
                "standalone",
                "--workspace",
                str(workspace),
                "--port",
                str(port),
                "--timeout",
                "400",
            ],
            env=clean_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    airflow_pid: int | None = None
    started = time.monotonic()
    try:
        deadline = started + 600
        text = ""
        while time.monotonic() < deadline and process.poll() is None:
            text = log_path.read_text()
            if "press Ctrl-C to stop" in text:
                break
            time.sleep(1)
        assert "press Ctrl-C to stop" in text, log_path.read_text()[-3000:]
        pid = re.search(r"^airflow standalone \(pid (\d+)\)", text, re.MULTILINE)
        printed = re.search(r"^login: admin / password: (\S+)", text, re.MULTILINE)
        assert pid and printed, text[-3000:]
        airflow_pid, password = int(pid.group(1)), printed.group(1)
        assert (
            password
            == json.loads((AirflowHome(workspace).path / PASSWORD_FILE).read_text())["admin"]
        )
        print(f"standalone ready after {time.monotonic() - started:.0f} s")
        answer = httpx.post(
            f"{base}/auth/token", json={"username": "admin", "password": password}, timeout=30
        )
        assert answer.status_code == 201, answer.text
        yield Standalone(base, answer.json()["access_token"], log_path)
    finally:
        _stop(process, airflow_pid)
        # shown with a failure: which of Airflow's requests were slow, and when
        for line in _slow_requests(workspace / "airflow" / "standalone.log", 5.0):
            print(line)


def _stop(process: subprocess.Popen[bytes], airflow_pid: int | None) -> None:
    """Ctrl-C to ``banditops airflow standalone`` (it stops Airflow's process group); kill
    both groups if anything outlives that."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        with suppress(subprocess.TimeoutExpired):
            process.wait(120)
    for group in (process.pid, airflow_pid):
        if group is not None:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        process.wait(30)


def _slow_requests(log: Path, over_s: float) -> list[str]:
    """The API server's access-log lines (``standalone.log``) of requests that took more
    than ``over_s`` seconds: when, how long, what."""
    if not log.exists():
        return []
    pattern = re.compile(r"(\S+Z) .*duration_us=(\d+) .*method=(\S+) path=(\S+)")
    return [
        f"{m.group(1)} {int(m.group(2)) / 1e6:.1f} s {m.group(3)} {m.group(4)}"
        for m in map(pattern.search, log.read_text(errors="replace").splitlines())
        if m and int(m.group(2)) > over_s * 1e6
    ]


# ---------------------------------------------------------------------- 1. the demo
@DEMO_WARNINGS
def test_demo_runs_the_whole_loop(demo: Demo) -> None:
    from modelregistry.registry import ModelRegistry

    # the workspace as the demo left it: checked before Airflow runs on it
    assert not demo.airflow_started, "the demo's checks run before the tests that start Airflow"
    result, ws = demo.summary, demo.workspace
    days, versions = result["days"], result["versions"]
    assert [d["day"] for d in days] == [1, 2, 3]
    assert days[0]["fallback_share"] == 1.0 and days[0]["model_version"] is None
    assert days[1]["fallback_share"] == 0.0 and days[1]["model_version"].endswith("/1")
    assert days[2]["fallback_share"] == 0.0 and days[2]["model_version"].endswith("/2")
    # every day was served over HTTP: each request answered and logged by the service
    assert all(d["errors"] == 0 and d["decisions"] == 1500 for d in days)
    store = sqlite3.connect(ws / "banditops.db")
    try:
        logged = dict(
            store.execute(
                "SELECT COALESCE(model_version, 'fallback'), COUNT(*) FROM decisions "
                "GROUP BY COALESCE(model_version, 'fallback')"
            ).fetchall()
        )
    finally:
        store.close()
    rollout = result["rollout"]
    worse = f"{MODEL_NAME}/{rollout['candidate_version']}"
    day4 = {days[2]["model_version"]: logged.pop(days[2]["model_version"]) - 1500}
    if worse in logged:
        day4[worse] = logged.pop(worse)
    assert logged == {"fallback": 1500, days[1]["model_version"]: 1500}
    assert sum(day4.values()) == rollout["decisions"] > 0 and rollout["errors"] == 0
    # the bandit learnt: CTR after the first nightly run beats the uniform fallback of day 1
    assert days[1]["ctr"] > days[0]["ctr"] + 0.1
    assert days[2]["ctr"] > days[0]["ctr"] + 0.1
    # two nightly runs registered two versions, and each was promoted to @production
    # (and day 4 registered a third, which never became production)
    assert [v["version"] for v in versions] == ["1", "2", "3"]
    assert "production" in versions[1]["aliases"]
    assert not {"production", "staging"} & set(versions[2]["aliases"])
    history = ModelRegistry(f"sqlite:///{ws / 'mlflow.db'}", MODEL_NAME)
    production = [m["version"] for m in history.alias_history() if m["alias"] == "production"]
    assert production == ["1", "2"]
    for v in versions[:2]:
        assert v["realized_ctr"] is not None
        # each registered head learnt every row of its window (the refit), of which the
        # evaluation held out the last part
        assert v["head_rows"] == v["window_rows"] > v["eval_rows"] > 0
        assert v["algorithm"] == "shared_lints" and "candidates" in v and "floor" in v
        lo, hi = v["ope_ci"]
        assert lo <= v["ope_estimate"] <= hi
    assert (ws / "demo.png").stat().st_size > 0
    _check_day4(rollout, history, versions[2], ws / "banditops.db")


def _check_day4(rollout: Any, registry: Any, worse: dict[str, Any], store: Path) -> None:
    from eventstore.engine import make_engine
    from eventstore.rollouts import rollout_history

    """Day 4: the worse candidate started at 5 %, held while evidence came in, and was
    rolled back at that first stage; production never moved, staging left it, and about
    the first stage's share of users ever saw it."""
    assert rollout["candidate_version"] == "3" and rollout["production_version"] == "2"
    steps = rollout["steps"]
    actions = [s["action"] for s in steps]
    assert actions[0] == "start" and actions[-1] == "rollback", actions
    assert set(actions[1:-1]) <= {"hold"}, actions
    assert all(s["stage"] == 1 and s["share"] == 0.05 for s in steps)
    last = steps[-1]
    assert last["status"] == "rolled_back" and "worse than production" in last["reason"]
    assert last["n_candidate"] >= 30 and last["n_production"] >= 30
    assert last["mean_candidate"] < last["mean_production"]
    assert last["ci_low"] <= last["diff"] <= last["ci_high"] < -0.02
    # the registry: production unchanged, staging removed, the rollback tagged
    assert rollout["outcome"] == "rollback"
    assert rollout["production_after"] == "2" == registry.by_alias("production").version
    assert rollout["staging_after"] is None and registry.by_alias("staging") is None
    assert registry.get("3").tags["rollout_status"] == "rolled_back"
    # most users never saw it: the candidate's users are about the first stage's 5 %
    users = rollout["users"]
    assert users["candidate"] + users["production"] == users["all"] > 150
    assert 0.01 <= rollout["candidate_user_share"] <= 0.10
    assert rollout["candidate_user_share"] == users["candidate"] / users["all"]
    # demo.json holds the same steps as the audit in the event store
    engine = make_engine(f"sqlite:///{store}")
    try:
        audit = rollout_history(engine, MODEL_NAME, rollout_id=rollout["rollout_id"])
    finally:
        engine.dispose()
    assert [(h.action, h.ci_high, h.reason) for h in reversed(audit)] == [
        (s["action"], s["ci_high"], s["reason"]) for s in steps
    ]
    # the registry's summary of the worse version agrees: its realised CTR online is below
    # production's (the demo's traffic is seeded but served over real HTTP, so the exact
    # figure moves a little from run to run)
    assert worse["realized_ctr"] is not None and worse["realized_ctr"] < last["mean_production"]


# ---------------------------------------------------------------------- 2. the Bandits page
@pytest.fixture(scope="module")
def browser_paths() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        service_unavailable(
            f"no system Chromium ({', '.join(missing)} missing): "
            "`apt-get install -y chromium chromium-driver`"
        )


@pytest.fixture
def driver(browser_paths: None) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    # a button's navigation: its trigger, then the page it leads to, each bounded by the
    # page's deadline for Airflow, plus the page's own reading of the workspace
    browser.set_page_load_timeout(2 * DEADLINE_S + 120)
    try:
        yield browser
    finally:
        browser.quit()


def _online_from_store(workspace: Path) -> dict[str, tuple[int, float, int]]:
    """Per version label: decisions, their mean reward (missing rewards count 0; the
    demo's reward window is 2 s) and the rewards received after it (a loaded machine
    delays some), computed with plain SQL, independently of the page."""
    store = sqlite3.connect(workspace / "banditops.db")
    late = "(julianday(r.received_at) - julianday(d.created_at)) * 86400 > 2.0"
    try:
        rows = store.execute(
            "SELECT COALESCE(d.model_version, 'fallback'), COUNT(*), "
            "SUM(COALESCE((SELECT r.value FROM rewards r WHERE r.event_id = d.event_id "
            f"AND COALESCE(r.position, 0) = 0 AND NOT {late} "
            "ORDER BY r.ordinal LIMIT 1), 0)), "
            "SUM((SELECT COUNT(*) FROM rewards r WHERE r.event_id = d.event_id "
            f"AND {late})) "
            "FROM decisions d GROUP BY 1"
        ).fetchall()
    finally:
        store.close()
    return {
        str(label): (int(n), float(total) / int(n), int(n_late)) for label, n, total, n_late in rows
    }


def _wait_run(
    base: str,
    token: str,
    dag_id: str,
    run_id: str,
    timeout_s: float,
    until: Callable[[str], bool] = lambda state: state in ("success", "failed"),
) -> str:
    """The run's first state that ``until`` accepts (by default a final one), or its last one
    seen after ``timeout_s`` ("unknown": Airflow never showed it; a trigger the page could
    not confirm appears late)."""
    deadline = time.monotonic() + timeout_s
    state = "unknown"
    while time.monotonic() < deadline:
        answer = httpx.get(
            f"{base}/api/v2/dags/{dag_id}/dagRuns/{run_id}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        if answer.status_code != 404:
            state = str(answer.json()["state"])
            if until(state):
                return state
        time.sleep(2)
    return state


def _run_named(message: str, dag_id: str) -> str:
    """The run id a button's message names, whether Airflow confirmed it in time or not."""
    found = re.search(rf"(?:triggered|asked Airflow for) {dag_id} run (\S+?)[.;]", message)
    assert found, message
    return found.group(1)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::ResourceWarning")
def test_the_bandits_page_in_chromium_after_the_demo(
    browser_paths: None,
    demo: Demo,
    standalone: Standalone,
    driver: Any,
    tmp_path: Path,
) -> None:
    """The browser signs in (a token from Airflow's ``/auth/token`` set as the UI's session
    cookie), finds the "Bandits" entry in the Airflow UI's navigation, opens the page and
    checks the versions table, the rollout panel and every chart against the demo's own
    summary (``demo.json``) and the event store; it presses "Run the monitor", waits for the
    ``bandit_monitor`` run Airflow started and finds the monitor's checks on the reloaded
    page; it presses the retrain button and finds the run in Airflow (the demo's day 4 ends
    with its worse candidate rolled back and @staging removed, so the page offers no
    promotion, and says so). The rollout panel shows that rolled-back rollout: its status,
    stage and share, every controller step with the numbers ``demo.json`` recorded, and
    both arms' online outcome the last step decided on. A full screenshot of the page is
    taken; with ``BANDITOPS_UPDATE_DOCS=1`` it replaces ``docs/bandits-page.png`` (the
    README shows it), so that a test run leaves the checkout as it found it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    # the versions the demo registered, none since (the UI-triggered retrain comes after)
    assert not demo.retrain_triggered, "the page's checks run before the UI-triggered retrain"
    workspace, summary = demo.workspace, demo.summary
    base, token = standalone.base, standalone.token

    # not signed in: the page refuses (plugin apps are not behind Airflow's login)
    assert httpx.get(f"{base}/bandits/", timeout=60).status_code == 401

    # sign in as the UI does (its session cookie), then find the entry in the navigation
    driver.get(f"{base}/api/v2/monitor/health")
    driver.add_cookie({"name": "_token", "value": token, "path": "/"})
    driver.get(f"{base}/")
    WebDriverWait(driver, 120).until(
        expected_conditions.presence_of_element_located(
            (By.XPATH, "//*[self::a or self::button][contains(., 'Bandits')]")
        )
    )
    driver.get(f"{base}/plugin/bandits")
    frame = WebDriverWait(driver, 120).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "iframe"))
    )
    assert "bandits/" in str(frame.get_attribute("src"))

    def open_page() -> None:
        """The page; reloaded, as it says, while Airflow is too busy to check the sign-in
        within the page's deadline (a loaded machine), for up to 10 minutes."""
        deadline = time.monotonic() + 600
        while True:
            driver.get(f"{base}/bandits/")
            if driver.find_elements(By.ID, "service"):
                return
            source = driver.page_source
            assert "sign-in could not be checked" in source, source[:2000]
            assert time.monotonic() < deadline, source[:2000]
            time.sleep(5)

    open_page()
    assert driver.find_element(By.TAG_NAME, "h1").text == f"Bandits: {MODEL}"

    # the versions table: the demo's versions, aliases, OPE estimates and online reward
    online = _online_from_store(workspace)
    table = driver.find_element(By.CSS_SELECTOR, "table.versions")
    rows = table.find_elements(By.CSS_SELECTOR, "tr")[1:]
    shown = {r.find_element(By.CSS_SELECTOR, ".version").text: r for r in rows}
    assert sorted(shown) == sorted(v["version"] for v in summary["versions"])
    for version in summary["versions"]:
        row = shown[version["version"]]
        for alias in version["aliases"]:
            assert f"@{alias}" in row.text
        if version["ope_estimate"] is not None:  # day 4's worse version skipped the gate
            assert f"dr {version['ope_estimate']:.4g}" in row.text
        n, mean, n_late = online[f"{MODEL}/{version['version']}"]
        assert row.find_element(By.CSS_SELECTOR, ".online-mean").text == f"{mean:.4g}"
        # the page's online reward is the demo's realised click rate of that version, but
        # for the rewards its window did not count (none on an idle machine)
        assert abs(mean - version["realized_ctr"]) * n <= n_late + 1e-6
        assert str(n) in row.text

    # each chart, with the demo's numbers on it
    charts = {
        c.get_attribute("data-chart"): c for c in driver.find_elements(By.CSS_SELECTOR, "svg.chart")
    }
    assert set(charts) == {
        "ope-vs-online",
        "rollout-arms",
        "rollout-sequential",
        "latency",
        "fallback",
    }
    points = charts["ope-vs-online"].find_elements(By.CSS_SELECTOR, "circle.point")
    values = {(p.get_attribute("data-series"), p.get_attribute("data-label")): p for p in points}
    for version in (v for v in summary["versions"] if v["ope_estimate"] is not None):
        ope = values[("OPE DR (95% interval)", f"v{version['version']}")]
        assert float(str(ope.get_attribute("data-value"))) == pytest.approx(
            version["ope_estimate"], rel=1e-5
        )
        real = values[("online reward (95% interval)", f"v{version['version']}")]
        assert float(str(real.get_attribute("data-value"))) == pytest.approx(
            online[f"{MODEL}/{version['version']}"][1], rel=1e-5
        )
    bars = charts["fallback"].find_elements(By.CSS_SELECTOR, "rect.bar")
    fallback_total = online["fallback"][0]
    served = sum(n for n, _, _ in online.values())
    assert bars and float(str(bars[-1].get_attribute("data-value"))) == pytest.approx(
        fallback_total / served, rel=1e-5
    )

    # the rollout panel: day 4's rollout, rolled back at its first stage, with every step
    # and the numbers demo.json recorded
    day4 = summary["rollout"]
    rollout = driver.find_element(By.ID, "rollout")
    state = rollout.find_element(By.CSS_SELECTOR, ".rollout-state")
    assert f"v{day4['candidate_version']}" in state.text
    assert state.find_element(By.CSS_SELECTOR, ".rollout-status").text == "rolled_back"
    assert state.find_element(By.CSS_SELECTOR, ".rollout-stage").text == "1"
    assert state.find_element(By.CSS_SELECTOR, ".rollout-share").text == "5%"
    step_rows = rollout.find_elements(By.CSS_SELECTOR, "table.rollout-steps tr")[1:]
    assert len(step_rows) == len(day4["steps"])
    for row, step in zip(step_rows, reversed(day4["steps"]), strict=True):  # newest first
        cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
        assert cells[1] == step["action"] and cells[2] == f"{step['stage']} ({step['share']:.0%})"
        if step["ci_low"] is not None:
            assert cells[3] == f"{step['n_production']} / {step['n_candidate']}"
            # no difference before both arms have an outcome (the windows still open)
            assert cells[5] == ("–" if step["diff"] is None else f"{step['diff']:.4g}")
            assert cells[6] == f"[{step['ci_low']:.4g}, {step['ci_high']:.4g}]"
        assert cells[7] == step["reason"]
    diffs = charts["rollout-sequential"].find_elements(By.CSS_SELECTOR, "circle.point")
    shown_diffs = [float(str(p.get_attribute("data-value"))) for p in diffs]
    expected = [s["diff"] for s in day4["steps"] if s["diff"] is not None]
    assert shown_diffs == pytest.approx(expected, rel=1e-5)
    # both arms' online outcome since the start: what the rollback decided on
    last = day4["steps"][-1]
    arms = {
        r.find_elements(By.TAG_NAME, "td")[0].text: [
            c.text for c in r.find_elements(By.TAG_NAME, "td")
        ]
        for r in rollout.find_elements(By.CSS_SELECTOR, "table.rollout-outcomes tr")[1:]
    }
    assert arms["candidate"][1] == f"{last['mean_candidate']:.4g}"
    assert arms["candidate"][3] == str(last["n_candidate"])
    assert arms["production"][3] == str(last["n_production"])
    # all traffic by arm and version (the demo's four days): the worse version only ever
    # served the candidate arm
    week = rollout.find_element(By.CSS_SELECTOR, "table.traffic-week").text
    worse = f"{MODEL}/{day4['candidate_version']}"
    for label, (n, _, _) in online.items():
        arm = "candidate" if label == worse else "production"
        assert re.search(rf"{arm} {re.escape(label)} \S+ \S+ \S+ {n}\b", week), week

    # "Run the monitor": a bandit_monitor run starts in Airflow; its checks show up
    driver.find_element(By.ID, "action-monitor").click()
    message = WebDriverWait(driver, 120).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "p.message"))
    )
    run_id = _run_named(message.text, "bandit_monitor")
    assert _wait_run(base, token, "bandit_monitor", run_id, 600) in ("success", "failed")
    open_page()
    checks = driver.find_element(By.CSS_SELECTOR, "table.monitor-checks")
    for name in ("reward_drift", "feature_drift", "fallback_rate", "served_latency"):
        assert name in checks.text

    # the rollback removed @staging: no promotion is offered
    assert not [v for v in summary["versions"] if "staging" in v["aliases"]]
    assert not driver.find_elements(By.ID, "action-promote")
    assert "nothing to promote" in driver.find_element(By.ID, "actions").text

    # retrain: a bandit_retrain run in Airflow
    for action, dag_id in (("retrain", "bandit_retrain"),):
        driver.find_element(By.ID, f"action-{action}").click()
        message = WebDriverWait(driver, 120).until(
            expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "p.message"))
        )
        # the run is in Airflow (at once when the page confirmed it; an unconfirmed trigger's
        # run appears when Airflow gets to it)
        run_id = _run_named(message.text, dag_id)
        assert _wait_run(base, token, dag_id, run_id, 300, until=lambda _: True) != "unknown"
        # not waited for: marked failed, so that the next test's run of the DAG does not
        # queue behind it (one active run at a time); at worst that run waits for this one
        httpx.patch(
            f"{base}/api/v2/dags/{dag_id}/dagRuns/{run_id}",
            json={"state": "failed"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )

    # the JSON twin of the page
    data = httpx.get(
        f"{base}/bandits/api/overview", headers={"Authorization": f"Bearer {token}"}, timeout=60
    ).json()
    assert [r["version"] for r in data["versions"]["rows"]] == ["3", "2", "1"]
    assert [s["action"] for s in reversed(data["rollout"]["steps"])] == [
        s["action"] for s in day4["steps"]
    ]

    open_page()
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1400, int(height) + 40)
    shot = tmp_path / SCREENSHOT.name
    assert driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 20_000
    if os.environ.get("BANDITOPS_UPDATE_DOCS") == "1":
        shutil.copyfile(shot, SCREENSHOT)


# ---------------------------------------------------------------------- 3. a UI-triggered retrain
@DEMO_WARNINGS
def test_standalone_on_a_demo_workspace_runs_a_ui_triggered_retrain(
    demo: Demo, standalone: Standalone
) -> None:
    from modelregistry.registry import ModelRegistry

    ws = Workspace(demo.workspace)
    demo.retrain_triggered = True
    auth = {"Authorization": f"Bearer {standalone.token}"}
    with httpx.Client(base_url=standalone.base, headers=auth, timeout=30) as http:
        dags = http.get("/api/v2/dags", params={"limit": 1000}).json()
        assert sorted(d["dag_id"] for d in dags["dags"]) == DAG_IDS, dags
        assert dags["total_entries"] == len(DAG_IDS)
        assert all(d["fileloc"].startswith(str(DAGS)) for d in dags["dags"])

        # what the UI's trigger button does: unpause, then a run with an empty form
        unpaused = http.patch("/api/v2/dags/bandit_retrain", json={"is_paused": False})
        assert unpaused.status_code == 200, unpaused.text
        run = http.post(
            "/api/v2/dags/bandit_retrain/dagRuns", json={"logical_date": None, "conf": {}}
        )
        assert run.status_code == 200, run.text
        run_id = run.json()["dag_run_id"]
        triggered = time.monotonic()
        state = "queued"
        while time.monotonic() - triggered < 900 and state not in ("success", "failed"):
            time.sleep(3)
            state = http.get(f"/api/v2/dags/bandit_retrain/dagRuns/{run_id}").json()["state"]
        tasks = http.get(f"/api/v2/dags/bandit_retrain/dagRuns/{run_id}/taskInstances").json()[
            "task_instances"
        ]
        states = {t["task_id"]: t["state"] for t in tasks}
    assert state == "success", (state, states, standalone.tail())
    run_s = time.monotonic() - triggered

    # the task processes read the demo's settings from the workspace file
    specs = [json.loads(p.read_text()) for p in (ws.root / "runs").glob("*/spec.json")]
    spec = next(s for s in specs if s["run_key"] == run_id)
    wanted = demo_settings(ws.root, "shared_lints", SEED)
    assert spec["reward_window_s"] == wanted["reward_window_s"]
    assert spec["train"]["algorithm"] == wanted["retrain_algorithm"]
    # the policy's own options plus the default cold-start floor (shared_lints randomizes:
    # no deterministic floor)
    assert spec["train"]["options"] == {
        **wanted["retrain_policy_options"],
        "cold_start_floor": 0.02,
    }
    assert (spec["min_rows"], spec["min_ess"]) == (
        wanted["retrain_min_rows"],
        wanted["retrain_min_ess"],
    )
    assert spec["store_url"] == ws.settings.store_url
    # and registered a new version in the workspace's registry
    version = ModelRegistry(ws.tracking_uri, MODEL_NAME).find_by_run_key(run_id)
    assert version is not None
    # the home was re-initialised: examples off, our dags folder
    text = AirflowHome(ws.root).config_file.read_text()
    assert "load_examples = False" in text and f"dags_folder = {DAGS}" in text
    print(f"the triggered retrain took {run_s:.0f} s")
