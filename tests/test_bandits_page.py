"""The Bandits page's data and HTML on a small real workspace, SQLite and PostgreSQL.

The workspace: an MLflow registry with two registered versions (v1 gated and promoted to
@production, v2 failed its gate) carrying OPE metrics as the retrain logs them; an event
store written through the service's own writer with seeded decisions of v1
(production arm), v2 (candidate arm) and the fallback, their rewards (some late, some
repeated, some for another slate position: none of those count); a monitor report made
by the real monitor. The page's numbers are checked against an independent computation
on the generated arrays.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monitoring.settings import CHECKS, MonitorSettings
from tests.serving_helpers import decision_row, make_client, policy_file, reward_row

pytest_plugins = ["tests.serving_fixtures"]
pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning"
)

MODEL = "banditops-policy"
#: (label, traffic, decisions, click rate, fallback)
GROUPS = (
    (f"{MODEL}/1", "production", 240, 0.30, False),
    (f"{MODEL}/2", "candidate", 60, 0.10, False),
    (None, "production", 40, 0.20, True),
)
OPE = {
    "1": {"dr": (0.31, 0.27, 0.35), "ips": (0.30, 0.24, 0.36)},
    "2": {"dr": (0.12, 0.08, 0.16), "ips": (0.11, 0.05, 0.17)},
}


def _expected(rewards: list[float]) -> tuple[float, float, float]:
    r = np.asarray(rewards, dtype=float)
    half = 1.959963984540054 * r.std(ddof=1) / math.sqrt(r.size)
    return float(r.mean()), float(r.mean() - half), float(r.mean() + half)


def build_workspace(tmp_path: Path, store_url: str) -> tuple[MonitorSettings, dict[str, Any]]:
    from eventstore.engine import make_engine
    from eventstore.migrate import upgrade
    from eventstore.rollouts import Readout, record_step, start_rollout
    from modelregistry.registry import ModelRegistry
    from monitoring.monitor import build_report
    from serving.store.repository import write_events

    settings = MonitorSettings(
        workspace=tmp_path / "ws", database_url=store_url, reward_window_s=60.0
    )
    registry = ModelRegistry.from_settings(settings)
    for version, seed in (("1", 1), ("2", 2)):
        metrics = {
            f"ope.candidate.{name}.{field}": value
            for name, triple in OPE[version].items()
            for field, value in zip(("value", "ci_low", "ci_high"), triple, strict=True)
        }
        info = registry.register_candidate(
            state_path=policy_file(tmp_path / f"state{seed}.npz", seed=seed),
            run_key=f"run-{version}",
            metrics=metrics,
        )
        assert info.version == version
    registry.record_gate("1", True, ["DR lower bound 0.27 above production"])
    registry.promote("1", by="test", reason="first model")
    registry.record_gate("2", False, ["DR 0.12 below production 0.31 by more than 0.05"])

    rng = np.random.default_rng(20)
    now = datetime.now(UTC)
    start = now - timedelta(hours=2)
    items: list[Any] = []
    counted: dict[str, list[float]] = {}
    by_arm: dict[str, list[float]] = {}  # the rollout's outcome per traffic arm
    for label, traffic, n, rate, fallback in GROUPS:
        key = label or "fallback"
        values = counted.setdefault(key, [])
        arm = by_arm.setdefault(traffic, [])
        for i in range(n):
            created = start + timedelta(seconds=10 * len(items) + i)
            row = decision_row(rng, f"{key}-{i}", created, model_version=label)
            items.append(dataclasses.replace(row, traffic=traffic, fallback=fallback))
            if i % 4 == 3:  # no reward: counts as the default reward 0
                values.append(0.0)
                arm.append(0.0)
                continue
            value = float(rng.random() < rate)
            items.append(reward_row(row.event_id, value, created + timedelta(seconds=5)))
            values.append(value)
            arm.append(value)
            if i % 10 == 0:  # a repeat (first wins), a late one, another position's
                items.append(reward_row(row.event_id, 1.0 - value, created + timedelta(seconds=6)))
                items.append(reward_row(row.event_id, 1.0, created + timedelta(seconds=120)))
                items.append(
                    reward_row(row.event_id, 1.0, created + timedelta(seconds=7), position=1)
                )
    # decisions whose reward window is still open: served, not counted
    for i in range(5):
        items.append(decision_row(rng, f"open-{i}", now - timedelta(seconds=5), f"{MODEL}/1"))
    engine = make_engine(store_url)
    upgrade(engine)
    with engine.begin() as conn:
        write_events(conn, items)
    # v2 in a staged rollout: started at 5 %, advanced once with the controller's readout
    rollout = start_rollout(
        engine, MODEL, "2", 0.05, reason="gate passed", at=start, max_duration_s=7 * 86_400.0
    )
    record_step(
        engine,
        rollout.id,
        "advance",
        reason="enough evidence, no harm",
        readout=Readout(200, 40, 0.3, 0.25, -0.05, -0.2, 0.1),
        stage_index=1,
        share=0.2,
        at=start + timedelta(minutes=30),
    )
    engine.dispose()
    build_report(now, run_key="manual__page_test", settings=settings)
    return settings, {**counted, "by_arm": by_arm}


@pytest.fixture
def workspace(tmp_path: Path, store_url: str) -> tuple[MonitorSettings, dict[str, Any]]:
    return build_workspace(tmp_path, store_url)


def test_the_page_shows_versions_rollout_monitor_and_service_with_the_store_numbers(
    workspace: tuple[MonitorSettings, dict[str, Any]],
) -> None:
    from ops.bandits_page.app import create_app

    settings, counted = workspace
    client = make_client(create_app(lambda: settings, airflow=False), token=None)
    data = client.get("/api/overview").json()
    assert data["store"] == make_dialect(settings.store_url)

    # versions: aliases, gate, OPE metrics and the online reward, newest first
    rows = data["versions"]["rows"]
    assert [r["version"] for r in rows] == ["2", "1"]
    assert "production" in rows[1]["aliases"] and "candidate" in rows[0]["aliases"]
    assert rows[1]["gate"] == {"passed": True, "reasons": ["DR lower bound 0.27 above production"]}
    assert rows[0]["gate"]["passed"] is False
    for row in rows:
        for name, (value, low, high) in OPE[row["version"]].items():
            assert row["ope"][name] == {"value": value, "ci_low": low, "ci_high": high}
        label = f"{MODEL}/{row['version']}"
        mean, low, high = _expected(counted[label])
        online = row["online"]
        assert online["counted"] == len(counted[label])
        assert online["served"] == len(counted[label]) + (5 if row["version"] == "1" else 0)
        assert online["mean"] == pytest.approx(mean, abs=1e-12)
        assert online["ci"] == pytest.approx([low, high], abs=1e-12)
    fallback = data["versions"]["fallback_online"]
    assert fallback["mean"] == pytest.approx(_expected(counted["fallback"])[0], abs=1e-12)

    # rollout: its stage and share, both arms since it started, its steps
    rollout = data["rollout"]
    assert rollout["rollout"]["version"] == "2" and rollout["rollout"]["status"] == "running"
    assert rollout["rollout"]["stage_index"] == 1 and rollout["rollout"]["share"] == 0.2
    assert [s["action"] for s in rollout["steps"]] == ["advance", "start"]
    assert rollout["steps"][0]["ci_low"] == -0.2 and rollout["steps"][0]["ci_high"] == 0.1
    for arm, values in counted["by_arm"].items():
        expected = _expected(values)  # as the monitor counts them: by the reward rules
        assert rollout["outcomes"][arm]["counted"] == len(values)
        assert rollout["outcomes"][arm]["mean"] == pytest.approx(expected[0], abs=1e-12)
        assert rollout["outcomes"][arm]["ci"] == pytest.approx(expected[1:], abs=1e-12)
    # and all traffic of the monitored week by arm and version
    arms = {(a["traffic"], a["version"]): a for a in data["rollout"]["arms"]}
    assert set(arms) == {
        ("production", f"{MODEL}/1"),
        ("candidate", f"{MODEL}/2"),
        ("production", "fallback"),
    }
    assert arms[("candidate", f"{MODEL}/2")]["mean"] == pytest.approx(
        _expected(counted[f"{MODEL}/2"])[0], abs=1e-12
    )

    # the monitor's latest report: every check with its status, and the alerts
    monitor = data["monitor"]
    assert [c["name"] for c in monitor["checks"]] == list(CHECKS)
    fallback_check = next(c for c in monitor["checks"] if c["name"] == "fallback_rate")
    assert fallback_check["value"] == pytest.approx(40 / 345)
    assert fallback_check["status"] == "alert" and "fallback_rate" in monitor["alerts"]

    # fallback share today; latency: no service URL, said so
    days = data["fallback"]["days"]
    assert len(days) == 7 and days[-1]["day"] == datetime.now(UTC).date().isoformat()
    assert sum(d["served"] for d in days) == 345 and sum(d["fallback"] for d in days) == 40
    assert "BANDITOPS_SERVICE_URL" in data["latency"]["live"]["error"]
    assert len(data["alias_history"]["moves"]) >= 3

    # with Airflow's DAG states (inside Airflow) the actions panel has its buttons: no
    # promotion (v2 failed its gate, nothing is @staging), a stop for the running rollout
    from ops.bandits_page.html import render_page

    inside = render_page(data, {"dags": {}})
    assert 'id="action-retrain"' in inside and 'id="action-monitor"' in inside
    assert 'id="action-promote"' not in inside and "nothing to promote" in inside
    assert 'action="actions/stop-rollout"' in inside and "Stop the rollout of v2" in inside
    # the stop names the rollout shown: one started since is never stopped by it
    assert '<input type="hidden" name="version" value="2">' in inside
    assert "(bandit_rollout_stop)" in inside

    html = client.get("/").text
    assert re.search(r'<table class="versions">', html)
    charts = re.findall(r'data-chart="([a-z-]+)"', html)
    assert charts == [
        "ope-vs-online",
        "rollout-arms",
        "rollout-sequential",
        "latency",
        "fallback",
    ]
    assert '<b class="rollout-share">20%</b>' in html and 'class="rollout-steps"' in html
    # the per-arm means are pooled over the stages: said so, as they can show the
    # opposite sign to the controller's per-stage estimate (audit, stop 54)
    assert "online reward (pooled)" in html and "within each stage" in html
    started = datetime.fromisoformat(data["rollout"]["rollout"]["started_at"])
    ends = (started + timedelta(days=7)).isoformat()
    assert data["rollout"]["rollout"]["ends_by"] == ends
    assert f'ends by <span class="rollout-ends">{ends[:19]}</span> UTC' in html
    ope_points = re.findall(
        r'data-series="OPE DR \(95% interval\)" data-label="(v\d)" data-value="([0-9.e-]+)"', html
    )
    assert ope_points == [("v1", "0.31"), ("v2", "0.12")]
    online_points = dict(
        re.findall(
            r'data-series="online reward \(95% interval\)" data-label="(v\d)" '
            r'data-value="([0-9.e-]+)"',
            html,
        )
    )
    assert float(online_points["v1"]) == pytest.approx(_expected(counted[f"{MODEL}/1"])[0], 1e-5)
    assert 'class="monitor-checks"' in html and '<span class="alert">alert</span>' in html
    assert "<script" not in html and "http://" not in html.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )


def make_dialect(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgresql"


def test_inside_airflow_every_route_needs_a_signed_in_user(tmp_path: Path) -> None:
    """Plugin apps are not behind Airflow's login: the page checks the token itself."""
    from ops.bandits_page.app import create_app

    settings = MonitorSettings(workspace=tmp_path / "ws")
    client = make_client(create_app(lambda: settings, airflow=True), token=None)
    page = client.get("/")
    assert page.status_code == 401 and "Sign in to Airflow" in page.text
    # only Airflow's own UI (same origin) may frame it: before, a page on another port of
    # the host framed it invisibly and one click on its bait triggered a run
    assert page.headers["x-frame-options"] == "SAMEORIGIN"
    assert page.headers["content-security-policy"] == "frame-ancestors 'self'"
    assert client.get("/api/overview").status_code == 401
    assert client.post("/actions/retrain").status_code == 401
    # a promotion names a registered version number, nothing else
    assert client.post("/actions/promote", data={"version": "1; drop"}).status_code == 422


def test_outside_airflow_the_page_is_read_only_and_says_so(tmp_path: Path) -> None:
    from ops.bandits_page.app import create_app

    settings = MonitorSettings(workspace=tmp_path / "ws")
    client = make_client(create_app(lambda: settings, airflow=False), token=None)
    answer = client.get("/")
    html = answer.text
    assert answer.headers["x-frame-options"] == "SAMEORIGIN"
    assert "Served outside Airflow" in html and "<form" not in html
    assert "no registered version yet" in html and "no monitor report yet" in html
    assert client.post("/actions/retrain").status_code == 404
    data = json.loads(client.get("/api/overview").text)
    assert data["versions"]["rows"] == [] and "could not be read" in data["versions"]["error"]
    assert client.post("/actions/stop-rollout", data={"version": "2"}).status_code == 404


#: Run in a fresh interpreter: importing Airflow's plugin manager configures Airflow,
#: which must not happen in the test process before the airflow_home fixture does it.
PLUGIN_FACTS = """
import json
from importlib.metadata import entry_points
from ops.airflow_plugin import URL_PREFIX, BanditsPlugin
(found,) = [e for e in entry_points(group="airflow.plugins") if e.name == "banditops"]
(app,) = BanditsPlugin.fastapi_apps
(view,) = BanditsPlugin.external_views
print(json.dumps({"loads": found.load() is BanditsPlugin, "url_prefix": app["url_prefix"],
                  "constant": URL_PREFIX, "name": view["name"], "href": view["href"]}))
"""


def test_the_plugin_mounts_the_app_and_adds_a_navigation_entry(tmp_path: Path) -> None:
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    done = subprocess.run(
        [sys.executable, "-c", PLUGIN_FACTS], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts == {
        "loads": True,
        "url_prefix": "/bandits",
        "constant": "/bandits",
        "name": "Bandits",
        "href": "bandits/",
    }


def test_the_page_lists_the_newest_and_every_aliased_version_and_says_what_it_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every view of the page read every version's run, one ``get_run`` each: 2.5 s at a
    year of nightly versions on SQLite, several times that through a tracking server, of
    the 40 s the page has. It shows the newest ``LISTED_VERSIONS`` and every older version
    that holds an alias, read in one run search, and says how many it left out."""
    from modelregistry.registry import LISTED_VERSIONS, ModelRegistry
    from ops.bandits_page.app import create_app
    from tests.registry_support import count_calls, many_versions

    settings = MonitorSettings(workspace=tmp_path / "ws")
    settings.workspace.mkdir()
    total = 2 * LISTED_VERSIONS
    many_versions(ModelRegistry.from_settings(settings), total, {"production": 1, "staging": 4})
    calls = count_calls(monkeypatch)
    client = make_client(create_app(lambda: settings, airflow=False), token=None)
    data = json.loads(client.get("/api/overview").text)["versions"]
    assert calls == {"get_run": 0, "search_runs": 1}
    newest = [str(n) for n in range(total, total - LISTED_VERSIONS, -1)]
    assert [r["version"] for r in data["rows"]] == [*newest, "4", "1"]
    assert data["rows"][-1]["aliases"] == ["production"]
    assert data["rows"][-1]["ope"]["dr"]["value"] == 0.001
    left_out = total - LISTED_VERSIONS - 2
    assert data["omitted"] == left_out
    html = client.get("/").text
    assert f"{left_out} older versions without an alias not listed" in html
    assert "--all" in html and '<span class="version">4</span>' in html


def test_a_metric_that_is_not_finite_is_shown_as_none_and_json_stays_json() -> None:
    """MLflow keeps a NaN metric: one made ``/bandits/api/overview`` a 500 ("Out of range
    float values are not JSON compliant") for as long as its version was listed (audit,
    stop 54)."""
    from monitoring.overview import ope_estimates

    got = ope_estimates(
        {
            "ope.candidate.dr.value": float("nan"),
            "ope.candidate.dr.ci_low": 0.1,
            "ope.candidate.dr.ci_high": float("inf"),
        }
    )
    assert got == {"dr": {"value": None, "ci_low": 0.1, "ci_high": None}}
    json.dumps(got, allow_nan=False)


def test_the_page_bounds_mlflow_s_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """With MLflow's own retries a registry that refuses connections held the whole page
    until its 40 s deadline, which blamed a slow store; the CLI, the service and the DAGs
    bound them, the page did not (audit, stop 54)."""
    from eventstore.contract import MLFLOW_CLIENT_ENV
    from ops.bandits_page.app import create_app

    for variable in MLFLOW_CLIENT_ENV:
        monkeypatch.delenv(variable, raising=False)
    create_app(airflow=False)
    for variable, value in MLFLOW_CLIENT_ENV.items():
        assert os.environ[variable] == value
