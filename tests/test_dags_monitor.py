"""``bandit_monitor`` run for real by Airflow on a seeded two-week event store.

The store is written through the service's own writer (``write_events``) with decisions
spread over two weeks: this week's rewards fall (click rate 0.30 → 0.12), its first
context feature is shifted by +2, one arm is starved, 3% of decisions carry a propensity
below the floor, 2% come from the fallback, 10% explored, and 40 users spread over the
hashed user groups. Every number of the report is checked against an independent
computation on the generated arrays; the four checks in alert fail their tasks with the
numbers in the message, the others pass, and the alerts reach a webhook (a local HTTP
server). The served latency and the fallback causes come from a real decision service's
/metrics (uvicorn on a loopback port) that served 20 decisions.

The drift acts: the shifted feature makes ``signal_drift`` emit the drift asset event
(recorded in Airflow's metadata DB with the drifted features), Airflow queues
``bandit_retrain`` for it (its ``AssetDagRunQueue`` row), and the scheduler's own
asset-triggered run creation makes a queued ``bandit_retrain`` run that consumed the event.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from eventstore.engine import make_engine
from eventstore.migrate import upgrade
from monitoring.settings import CHECKS
from serving.app import create_app
from tests.serving_helpers import AUTH, LiveServer, decision_body, service_settings

pytest_plugins = ["tests.airflow_support"]

N_PER_WEEK = 1500
CLICK_RATE = {"previous": 0.30, "current": 0.12}
STARVED = "item-0"
LOW_PROPENSITY = 0.004


@dataclass
class Week:
    """Ground truth of one generated week."""

    contexts: np.ndarray
    arms: list[str]
    candidates: list[tuple[str, ...]]
    arm_features: np.ndarray
    propensities: np.ndarray
    fallback: np.ndarray
    rewards: np.ndarray
    explored: np.ndarray


def _seed(url: str, end: datetime, rng: np.random.Generator, dagtools: Any) -> dict[str, Week]:
    from eventstore.engine import make_engine
    from eventstore.migrate import upgrade
    from eventstore.records import DecisionRow, RewardRow
    from serving.store.repository import write_events

    env = dagtools.traffic_environment()
    engine = make_engine(url)
    upgrade(engine)
    weeks: dict[str, Week] = {}
    items: list[Any] = []
    for name, first in (
        ("previous", end - timedelta(days=14)),
        ("current", end - timedelta(days=7)),
    ):
        current = name == "current"
        times = first + timedelta(hours=1) + np.arange(N_PER_WEEK) * timedelta(minutes=6)
        week = Week(
            np.zeros((N_PER_WEEK, 4)),
            [],
            [],
            np.zeros((N_PER_WEEK, 3)),
            np.zeros(N_PER_WEEK),
            np.zeros(N_PER_WEEK, bool),
            np.zeros(N_PER_WEEK),
            np.zeros(N_PER_WEEK, bool),
        )
        for i, created in enumerate(times):
            context, cands = env.sample(rng)
            if current:
                context = context + np.array([2.0, 0.0, 0.0, 0.0])
            allowed = [j for j, a in enumerate(cands.ids) if not (current and a == STARVED)]
            chosen = int(rng.choice(allowed))
            propensity = 1.0 / len(allowed)
            if current and i % 100 < 3:
                propensity = LOW_PROPENSITY
            fallback = bool(current and i % 50 == 0)
            explored = i % 10 == 0
            user_hash = format(i % 40, "016x") + "0" * 48
            reward = float(rng.random() < CLICK_RATE[name])
            event_id = f"{name}-{i}"
            items.append(
                DecisionRow(
                    event_id=event_id,
                    created_at=created,
                    user_hash=user_hash,
                    context=context,
                    candidate_ids=cands.ids,
                    candidate_features=cands.features,
                    chosen=chosen,
                    propensity=propensity,
                    probabilities=np.full(len(cands.ids), 1.0 / len(cands.ids)),
                    scores=np.zeros(len(cands.ids)),
                    policy="uniform" if fallback else "shared_linucb",
                    model_version=None if fallback else "banditops-policy/1",
                    traffic="production",
                    fallback=fallback,
                    explored=explored,
                )
            )
            items.append(
                RewardRow(
                    event_id=event_id,
                    value=reward,
                    ts=created + timedelta(milliseconds=300),
                    received_at=created + timedelta(milliseconds=300),
                    model_version=None,
                    eligible=False,
                    ineligible_status="fallback",
                )
            )
            week.contexts[i] = context
            week.arms.append(cands.ids[chosen])
            week.candidates.append(cands.ids)
            week.arm_features[i] = cands.features[chosen]
            week.propensities[i] = propensity
            week.fallback[i] = fallback
            week.explored[i] = explored
            week.rewards[i] = reward
        weeks[name] = week
    with engine.begin() as conn:
        write_events(conn, items)
    engine.dispose()
    return weeks


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local HTTP endpoint that records the JSON bodies posted to it."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/alerts", received
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def _retrain_unpaused() -> Iterator[None]:
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import update

    with create_session() as session:
        session.execute(
            update(DagModel).where(DagModel.dag_id == "bandit_retrain").values(is_paused=False)
        )
    try:
        yield
    finally:
        with create_session() as session:
            session.execute(
                update(DagModel).where(DagModel.dag_id == "bandit_retrain").values(is_paused=True)
            )


def _the_drift_event_queues_a_retrain(monitor_run_id: str) -> None:
    """The drift asset event of the monitor run, its queue row for ``bandit_retrain``, and
    the asset-triggered run the scheduler creates from it (removed afterwards: nothing
    executes it here, and later tests count the retrain runs)."""
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.asset import AssetDagRunQueue, AssetEvent, AssetModel
    from airflow.models.dag import DagModel
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import delete, select

    with create_session() as session:
        asset = session.scalars(
            select(AssetModel).where(AssetModel.name == "banditops_feature_drift")
        ).one()
        assert asset.uri == "x-banditops://drift/banditops-policy"
        events = session.scalars(select(AssetEvent).where(AssetEvent.asset_id == asset.id)).all()
        assert [(e.source_dag_id, e.source_task_id, e.source_run_id) for e in events] == [
            ("bandit_monitor", "signal_drift", monitor_run_id)
        ]
        extra = events[0].extra
        assert extra["threshold"] == 0.25 and extra["metric"] == "psi"
        assert next(iter(extra["features"])) == "context_0" and extra["features"]["context_0"] > 1
        assert "context_0" in extra["reason"]
        queued = session.scalars(
            select(AssetDagRunQueue).where(AssetDagRunQueue.asset_id == asset.id)
        ).all()
        assert [q.target_dag_id for q in queued] == ["bandit_retrain"]

        _, triggered = DagModel.dags_needing_dagruns(session)
        assert "bandit_retrain" in triggered
        runner = SchedulerJobRunner(job=Job(), executors=[])
        retrain = session.get(DagModel, "bandit_retrain")
        runner._create_dag_runs_asset_triggered(dag_models=[retrain], session=session)
        session.flush()
        run = session.scalars(
            select(DagRun).where(
                DagRun.dag_id == "bandit_retrain", DagRun.run_type == "asset_triggered"
            )
        ).one()
        assert str(run.state) == "queued"
        assert [e.id for e in run.consumed_asset_events] == [events[0].id]
        assert session.scalars(select(AssetDagRunQueue)).all() == []  # consumed
        session.delete(run)
        session.execute(delete(AssetEvent).where(AssetEvent.id == events[0].id))


def _psi(values: np.ndarray, edges: list[float], reference: list[float]) -> float:
    """PSI written out: bins (-inf, e0], (e0, e1], …, (e_last, inf), proportions floored."""
    x = values[np.isfinite(values)]
    bins = np.digitize(x, np.asarray(edges), right=True)
    p = np.maximum(np.bincount(bins, minlength=len(reference)) / x.size, 1e-4)
    q = np.maximum(np.asarray(reference), 1e-4)
    return float(np.sum((p - q) * np.log(p / q)))


# Airflow 3's DagRun.serialized_dag relationship is declared uselist=False, but a DAG has
# one serialized row per version; after other DAG tests of the session reserialized
# bandit_retrain, its lazy load warns (the scheduler code under test is Airflow's own).
@pytest.mark.filterwarnings(
    "ignore:Multiple rows returned with uselist=False:sqlalchemy.exc.SAWarning"
)
def test_monitor_computes_its_numbers_and_fails_the_checks_in_alert(
    first_retrain: Any,
    dagtools: Any,
    pipeline_env: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    webhook: tuple[str, list[dict[str, Any]]],
    rng: np.random.Generator,
) -> None:
    end = datetime.now(UTC).replace(microsecond=0)
    url = f"sqlite:///{tmp_path / 'two-weeks.db'}"
    weeks = _seed(url, end, np.random.default_rng(11), dagtools)
    monkeypatch.setenv("BANDITOPS_DATABASE_URL", url)
    monkeypatch.setenv("BANDITOPS_ALERT_WEBHOOK_URL", webhook[0])

    # the fallback serves: no registry to poll
    service = service_settings(tmp_path / "service", mlflow_tracking_uri=None)
    engine = make_engine(service.store_url)
    upgrade(engine)
    engine.dispose()
    with LiveServer(create_app(service)) as server:
        with httpx.Client(base_url=server.url, timeout=10, headers=AUTH) as http:
            for _ in range(20):
                assert http.post("/v1/decisions", json=decision_body(rng)).status_code == 200
        monkeypatch.setenv("BANDITOPS_SERVICE_URL", server.url)
        monkeypatch.setenv("BANDITOPS_LATENCY_P99_MAX_S", "5")
        with _retrain_unpaused():  # Airflow queues asset events for unpaused consumers only
            run = dagtools.run_dag("bandit_monitor", when=end)
            _the_drift_event_queues_a_retrain(run.run_id)

    alerts = {"reward_drift", "feature_drift", "arm_coverage", "propensity_floor"}
    assert run.state == "failed"
    assert run.tasks["build_report"] == "success" and run.tasks["notify"] == "success"
    assert run.tasks["signal_drift"] == "success"
    assert alerts < set(CHECKS)
    for name in CHECKS:
        assert run.tasks[f"check_{name}"] == ("failed" if name in alerts else "success"), name

    from training.runspec import run_folder

    folder = run_folder(Path(os.environ["BANDITOPS_RUNS_DIR"]) / "monitor", run.run_id)
    report = json.loads((folder / "report.json").read_text())
    assert (folder / "report.png").stat().st_size > 10_000
    assert {k for k, v in report["checks"].items() if v["status"] == "alert"} == alerts
    latency = report["served_latency"]
    assert latency["service_url"] == server.url and latency["count"] == 20
    assert latency["basis"] == "since the service started"
    assert 0 < latency["p50_s"] <= latency["p99_s"] <= 5.0
    assert report["checks"]["served_latency"]["status"] == "ok"
    prev, cur = weeks["previous"], weeks["current"]
    assert report["rows"] == {
        "current": N_PER_WEEK,
        "reward_current": N_PER_WEEK,
        "reward_previous": N_PER_WEEK,
    }

    # reward drift, week over week
    for week, stats in ((prev, report["reward"]["previous"]), (cur, report["reward"]["current"])):
        assert stats["mean"] == pytest.approx(week.rewards.mean())
        assert (stats["p5"], stats["p95"]) == (0.0, 1.0)
    expected = abs(cur.rewards.mean() - prev.rewards.mean()) / prev.rewards.mean()
    assert report["reward"]["change"]["mean"] == pytest.approx(expected)
    assert f"({expected:.0%})" in report["checks"]["reward_drift"]["message"]

    # feature drift against the training window of the production version
    production = dagtools.registry().by_alias("production")
    reference = json.loads(
        (
            run_folder(os.environ["BANDITOPS_RUNS_DIR"], production.tags["run_key"])
            / "reference"
            / "feature_reference.json"
        ).read_text()
    )
    features = {f"context_{j}": cur.contexts[:, j] for j in range(4)}
    features |= {f"arm_feature_{j}": cur.arm_features[:, j] for j in range(3)}
    for name, values in features.items():
        ref = reference["features"][name]
        assert report["feature_drift"]["scores"][name] == pytest.approx(
            _psi(values, ref["edges"], ref["proportions"])
        ), name
    assert report["feature_drift"]["scores"]["context_0"] > 1.0
    assert max(report["feature_drift"]["scores"][f"context_{j}"] for j in (1, 2, 3)) < 0.25
    assert "context_0" in report["checks"]["feature_drift"]["message"]

    # selection entropy: near uniform over the 11 arms still chosen
    counts = np.unique(cur.arms, return_counts=True)[1] / N_PER_WEEK
    entropy = float(-(counts * np.log(counts)).sum())
    assert report["selection_entropy"]["entropy"] == pytest.approx(entropy)
    # against a uniform choice among each decision's candidates
    uniform: dict[str, float] = {}
    for offered in cur.candidates:
        for arm in offered:
            uniform[arm] = uniform.get(arm, 0.0) + 1.0 / len(offered)
    u = np.array(list(uniform.values())) / N_PER_WEEK
    maximum = float(-(u * np.log(u)).sum())
    assert report["selection_entropy"]["max"] == pytest.approx(maximum)
    # … over the same number of decisions: the plug-in entropy of 1,500 uniform choices
    # among each decision's own candidates (simulated) is below the limit's entropy
    sim = np.random.default_rng(7)
    simulated = []
    for _ in range(100):
        picks = [offered[sim.integers(len(offered))] for offered in cur.candidates]
        freq = np.unique(picks, return_counts=True)[1] / N_PER_WEEK
        simulated.append(float(-(freq * np.log(freq)).sum()))
    expected = report["selection_entropy"]["expected_uniform"]
    assert expected < maximum
    assert expected == pytest.approx(np.mean(simulated), abs=4 * np.std(simulated) / 10)
    assert report["selection_entropy"]["ratio"] == pytest.approx(entropy / expected)

    # arm coverage: the starved arm against its uniform share
    share = sum(1.0 / len(c) for c in cur.candidates if STARVED in c)
    starved = next(a for a in report["arm_coverage"]["arms"] if a["arm"] == STARVED)
    assert starved == {"arm": STARVED, "chosen": 0, "uniform_share": pytest.approx(share)}
    assert report["arm_coverage"]["starved"] == [STARVED]

    # propensity floor and fallback rate
    low = int((cur.propensities < 0.01).sum())
    assert report["propensity"]["violations"] == low == 45
    assert report["propensity"]["violation_share"] == pytest.approx(low / N_PER_WEEK)
    assert report["fallback"]["rate"] == pytest.approx(cur.fallback.mean())

    # explored share of the model's decisions (fallback aside), fallbacks by cause, segments
    model = ~cur.fallback
    assert report["explored"]["share"] == pytest.approx(cur.explored[model].mean())
    assert report["explored"]["decisions"] == int(model.sum())
    causes = report["fallback_causes"]["causes"]
    assert causes == {
        "decisions": 20.0,
        "fallback_decisions": 20.0,
        "model_error": 0.0,
        "deadline": 0.0,
        "no_model": 20.0,
        "rewards_applied": 0.0,
        "head_refusals": 0.0,
    }
    groups = {r["segment"]: r["decisions"] for r in report["segments"]["segments"]}
    users = np.arange(N_PER_WEEK) % 40
    assert groups == {
        f"group_{g}": int(sum(int(format(u, "016x"), 16) % 8 == g for u in users)) for g in range(8)
    }

    # feature–reward correlation, reported
    assert report["correlation"]["current"]["context_1"] == pytest.approx(
        np.corrcoef(cur.contexts[:, 1], cur.rewards)[0, 1]
    )

    # the alerts reached the webhook, once, with their messages
    assert len(webhook[1]) == 1
    posted = webhook[1][0]
    assert set(posted["alerts"]) == alerts and posted["source"] == "bandit_monitor"
    assert posted["alerts"]["propensity_floor"].startswith("45 of 1500 decisions")
