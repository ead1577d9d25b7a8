"""Monitoring that acts, below the DAGs: the drift trigger and its cooldown, the explored
share, fallbacks by cause (the service's real counters, and a live service's /metrics),
per-segment coverage, and the retention floor (SQLite and PostgreSQL) that never prunes
a row a running retrain or rollout still reads."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from bandit_core.user_groups import user_group
from eventstore import records
from eventstore.engine import make_engine
from eventstore.migrate import upgrade
from eventstore.records import SnapshotRow
from eventstore.retention import apply_retention, prune_cutoff
from eventstore.rollouts import record_step, start_rollout
from monitoring import monitor
from monitoring.served_latency import parse_fallback_counters
from monitoring.settings import MonitorSettings
from serving.app import create_app
from serving.metrics import ServiceMetrics
from serving.store.repository import EventStore, write_events
from tests.serving_helpers import (
    AUTH,
    LiveServer,
    decision_body,
    decision_row,
    reward_row,
    service_settings,
)
from training.runspec import SPEC_FILE, active_windows

pytest_plugins = ["tests.serving_fixtures"]

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def _settings(tmp_path: Path, **extra: Any) -> MonitorSettings:
    return MonitorSettings(
        workspace=tmp_path / "ws",
        database_url=f"sqlite:///{tmp_path / 'events.db'}",
        runs_dir=tmp_path / "runs",
        **extra,
    )


# ---------------------------------------------------------------------- drift trigger
def _report(tmp_path: Path, scores: dict[str, float], name: str = "report.json") -> Path:
    path = tmp_path / name
    path.write_text(
        json.dumps(
            {
                "window": {"end": NOW.isoformat()},
                "production_version": "3",
                "feature_drift": {"metric": "psi", "scores": scores},
            }
        )
    )
    return path


def test_drift_trigger_emits_beyond_the_threshold_once_per_cooldown(tmp_path: Path) -> None:
    settings = _settings(tmp_path, retrain_drift_min=0.25, retrain_drift_cooldown_h=24.0)
    calm = _report(tmp_path, {"context_0": 0.1, "context_1": 0.2499}, "calm.json")
    quiet = monitor.drift_trigger(calm, settings, now=NOW)
    assert quiet["emit"] is False and quiet["features"] == {}
    assert quiet["reason"] == "no feature drifted to 0.25 or more."

    drifted = _report(tmp_path, {"context_0": 1.7, "context_1": 0.25, "arm_feature_0": 0.01})
    first = monitor.drift_trigger(drifted, settings, now=NOW)
    assert first["emit"] is True
    assert first["features"] == {"context_0": 1.7, "context_1": 0.25}  # worst first
    assert list(first["features"]) == ["context_0", "context_1"]
    assert first["production_version"] == "3" and first["threshold"] == 0.25
    assert "context_0 1.700, context_1 0.250" in first["reason"]
    state = json.loads((tmp_path / "runs" / "monitor" / monitor.DRIFT_STATE_FILE).read_text())
    assert state["emitted_at"] == NOW.isoformat()

    # an hour later the drift persists (nothing retrained yet): no second event
    held = monitor.drift_trigger(drifted, settings, now=NOW + timedelta(hours=1))
    assert held["emit"] is False
    assert f"emitted at {NOW.isoformat()}, less than 24 h ago" in held["reason"]
    # once the cooldown has passed it fires again
    assert monitor.drift_trigger(drifted, settings, now=NOW + timedelta(hours=24))["emit"]


# ---------------------------------------------------------------------- report checks
def _frame(
    n: int, start: datetime, rng: np.random.Generator, users: list[str | None]
) -> pd.DataFrame:
    ids = ["a", "b", "c"]
    return pd.DataFrame(
        {
            "created_at": [start + timedelta(minutes=10 * i) for i in range(n)],
            "context": [[float(i % 3), float(rng.standard_normal())] for i in range(n)],
            "candidate_ids": [ids for _ in range(n)],
            "candidate_features": [[[0.0], [1.0], [2.0]] for _ in range(n)],
            "arm_id": rng.choice(ids, n),
            "propensity": np.where(np.arange(n) % 4 == 0, 0.8, 1.0),
            "fallback": np.arange(n) % 10 == 9,
            "explored": np.arange(n) % 20 == 0,
            "user_hash": [users[i % len(users)] for i in range(n)],
            "outcome": rng.integers(0, 2, n).astype(float),
        }
    )


def test_under_drop_only_the_reward_checks_leave_unrewarded_decisions_out(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """The monitor reads every decision (``keep_unrewarded``): under ``"drop"`` the
    fallback share counts the decisions nobody rewarded (before, it counted only the
    rewarded ones); the reward drift counts the rewarded ones, by their outcome."""
    import dataclasses

    from eventstore.engine import make_engine
    from eventstore.migrate import upgrade
    from serving.store.repository import write_events
    from tests.serving_helpers import decision_row, reward_row

    settings = _settings(tmp_path, missing_reward="drop", reward_window_s=60.0)
    end = datetime.now(UTC)
    engine = make_engine(settings.store_url)
    upgrade(engine)
    rows: list[Any] = []
    for week, rewarded_value in ((14, 1.0), (7, 0.5)):
        at = end - timedelta(days=week) + timedelta(hours=1)
        served = [decision_row(rng, created_at=at + timedelta(minutes=i)) for i in range(10)]
        served += [  # fallback decisions nobody rewards
            dataclasses.replace(decision_row(rng, created_at=at), fallback=True) for _ in range(10)
        ]
        rows += served
        rows += [reward_row(d.event_id, rewarded_value, ts=d.created_at) for d in served[:10]]
    with engine.begin() as conn:
        write_events(conn, rows)
    engine.dispose()
    frame = monitor._read_events(settings, end)
    assert len(frame) == 40 and int(frame["outcome"].isna().sum()) == 20
    report = monitor.summarize(frame, end, settings, None, None)
    assert (report["fallback"]["served"], report["fallback"]["fallback"]) == (20, 10)
    assert report["reward"]["current"]["n"] == 10 and report["reward"]["current"]["mean"] == 0.5
    assert report["reward"]["previous"]["mean"] == 1.0


def test_explored_share_and_segment_coverage_in_the_report(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    end = NOW
    # users in hashed groups 0, 0, 1, 2, 2, 1 (of 4) and an anonymous one: group 3 is empty
    hashes = [format(g, "016x") + "ab" * 24 for g in (0, 4, 1, 2, 6, 5)]
    frame = pd.concat(
        [
            _frame(300, end - 14 * DAY, rng, [*hashes, None]),
            _frame(700, end - 7 * DAY, rng, [*hashes, None]),
        ],
        ignore_index=True,
    )
    settings = _settings(tmp_path, segment_user_groups=4, segment_min_decisions=50)
    report = monitor.summarize(frame, end, settings, None, None)
    now = frame[frame["created_at"] >= end - 7 * DAY]
    model = now[~now["fallback"]]

    explored = report["explored"]
    assert explored["decisions"] == len(model)
    assert explored["share"] == pytest.approx(model["explored"].mean())
    assert explored["stochastic_share"] == pytest.approx((model["propensity"] < 1).mean())
    assert report["checks"]["explored_share"]["status"] == "ok"
    figure = monitor.plot_monitor_report(report, tmp_path / "report.png")  # the rates panel
    assert Path(figure).stat().st_size > 10_000
    strict = monitor.summarize(frame, end, _settings(tmp_path, explored_share_min=0.2), None, None)
    assert strict["checks"]["explored_share"]["status"] == "alert"
    assert "the policy stopped learning" in strict["checks"]["explored_share"]["message"]

    # hashed user groups: every group is expected, one no user lands in is in alert
    segments = report["segments"]
    assert [user_group(h, 4) for h in hashes] == [0, 0, 1, 2, 2, 1]
    expected = {"group_0": 200, "group_1": 200, "group_2": 200, "group_3": 0}
    assert {r["segment"]: r["decisions"] for r in segments["segments"]} == expected
    assert segments["unsegmented"] == 100 and segments["min_decisions"] == 0
    status = report["checks"]["segment_coverage"]
    assert status["status"] == "alert"
    assert "1 of 4 segments (user_group mod 4) got fewer than 50 decisions" in status["message"]
    assert "group_3 0" in status["message"]

    # a categorical context feature: its values in either week are the segments
    by_value = monitor.summarize(
        frame, end, _settings(tmp_path, segment_feature="context_0"), None, None
    )["segments"]
    counts = now["context"].map(lambda c: f"context_0={c[0]:g}").value_counts().to_dict()
    assert {r["segment"]: r["decisions"] for r in by_value["segments"]} == counts
    assert by_value["check"]["status"] == "ok"
    # a continuous feature is not a segment key
    skipped = monitor.summarize(
        frame, end, _settings(tmp_path, segment_feature="context_1"), None, None
    )["segments"]["check"]
    assert skipped["status"] == "skipped" and "not a categorical feature" in skipped["message"]
    with pytest.raises(ValueError, match="must be a context feature context_<j>"):
        _settings(tmp_path, segment_feature="age")
    # a week with no decisions is skipped, as by every other check (it alerted: "4 of 4
    # segments got fewer than 50 decisions: group_0 0, …" on a fresh workspace)
    quiet = monitor.summarize(
        frame[frame["created_at"] < end - 7 * DAY], end, settings, None, None
    )["checks"]["segment_coverage"]
    assert quiet == {"status": "skipped", "message": "no decisions this week."}


def test_fallback_counters_of_the_services_own_metrics() -> None:
    metrics = ServiceMetrics()
    for _ in range(95):
        metrics.decisions.labels("a", "production", "false").inc()
    for _ in range(5):
        metrics.decisions.labels("b", "production", "true").inc()
    metrics.model_errors.inc(2)
    metrics.deadline_fallbacks.inc()
    metrics.rewards.labels(records.APPLIED).inc(40)
    metrics.rewards.labels(records.LATE).inc(7)
    metrics.head_update_failures.inc(3)
    first = parse_fallback_counters(metrics.render()[0].decode())
    assert first == {
        "decisions": 100.0,
        "fallback_decisions": 5.0,
        "model_errors": 2.0,
        "deadline_fallbacks": 1.0,
        "rewards_applied": 40.0,
        "head_update_failures": 3.0,
    }
    causes, restarted = monitor.fallback_causes(first, None)
    assert not restarted
    assert causes == {
        "decisions": 100.0,
        "fallback_decisions": 5.0,
        "model_error": 2.0,
        "deadline": 1.0,
        "no_model": 2.0,
        "rewards_applied": 40.0,
        "head_refusals": 3.0,
    }
    for _ in range(50):
        metrics.decisions.labels("b", "production", "true").inc()
    metrics.model_errors.inc(50)
    second = parse_fallback_counters(metrics.render()[0].decode())
    assert second is not None
    delta, restarted = monitor.fallback_causes(second, first)
    assert not restarted and delta["decisions"] == 50 and delta["model_error"] == 50
    assert delta["no_model"] == 0
    # a counter that went down: the service restarted, the new scrape alone counts
    again, restarted = monitor.fallback_causes(first, second)
    assert restarted and again["decisions"] == 100
    assert parse_fallback_counters("# nothing here\n") is None


def test_model_errors_check_reads_a_running_services_metrics(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    service = service_settings(tmp_path, mlflow_tracking_uri=None)  # the fallback serves
    engine = make_engine(service.store_url)
    upgrade(engine)
    engine.dispose()
    state = tmp_path / "runs" / "monitor" / monitor.FAULTS_STATE_FILE
    assert monitor.served_faults(_settings(tmp_path), state)["check"]["status"] == "skipped"
    with (
        LiveServer(create_app(service)) as server,
        httpx.Client(base_url=server.url, timeout=10, headers=AUTH) as http,
    ):
        settings = _settings(tmp_path, service_url=server.url)
        for _ in range(12):
            assert http.post("/v1/decisions", json=decision_body(rng)).status_code == 200
        first = monitor.served_faults(settings, state)
        assert first["causes"]["decisions"] == 12 and first["causes"]["no_model"] == 12
        assert first["causes"]["model_error"] == 0 and first["share"] == 0.0
        assert first["check"]["status"] == "ok"
        assert "12 more fell back with no model served" in first["check"]["message"]
        for _ in range(5):
            assert http.post("/v1/decisions", json=decision_body(rng)).status_code == 200
        second = monitor.served_faults(settings, state)
        assert second["causes"]["decisions"] == 5 and second["since"] == first["scraped_at"]
        assert second["basis"].startswith("since the previous scrape at")
    down = monitor.served_faults(settings, state, timeout_s=2.0)
    assert down["check"]["status"] == "alert" and "model errors unknown" in down["check"]["message"]


def test_the_model_errors_check_alerts_on_rewards_the_heads_refused(tmp_path: Path) -> None:
    """A head that refuses its updates (a precision singular in float64) learns nothing
    from rewards stored as applied: only a counter no check read said so. The model
    errors check reads it over real HTTP: 30 of 200 applied rewards refused is an
    alert; 1 of 200 is not (limit 1 %, within chance)."""
    import http.server
    import threading

    metrics = ServiceMetrics()
    metrics.decisions.labels("a", "production", "false").inc(500)
    metrics.rewards.labels(records.APPLIED).inc(200)

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = metrics.render()[0]
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = _settings(tmp_path, service_url=f"http://127.0.0.1:{server.server_port}")
        metrics.head_update_failures.inc(1)
        state = tmp_path / "one" / monitor.FAULTS_STATE_FILE
        few = monitor.served_faults(settings, state)
        assert few["check"]["status"] == "ok" and few["head_refused_share"] == 0.005
        assert "the heads refused 1 of 200 applied rewards" in few["check"]["message"]
        metrics.head_update_failures.inc(29)
        many = monitor.served_faults(settings, tmp_path / "two" / monitor.FAULTS_STATE_FILE)
        assert many["check"]["status"] == "alert", many["check"]
        assert "15.00% of applied rewards refused" in many["check"]["message"]
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------- retention
def test_prune_cutoff_is_the_age_unless_something_older_still_runs() -> None:
    assert prune_cutoff(NOW, 30, {}) == (NOW - 30 * DAY, None)
    newer = {"retrain r1": NOW - 7 * DAY}
    assert prune_cutoff(NOW, 30, newer) == (NOW - 30 * DAY, None)
    older = {**newer, "retrain r2": NOW - 45 * DAY, "rollout 1": NOW - 40 * DAY}
    assert prune_cutoff(NOW, 30, older) == (NOW - 45 * DAY, "retrain r2")
    with pytest.raises(ValueError, match="retention_days must be > 0; got 0"):
        prune_cutoff(NOW, 0, {})
    with pytest.raises(ValueError, match="retrain r3 must be a timezone-aware datetime"):
        prune_cutoff(NOW, 30, {"retrain r3": datetime(2026, 1, 1)})


def test_retention_never_prunes_what_a_running_retrain_or_rollout_reads(
    store_url: str, engine: sa.Engine, rng: np.random.Generator
) -> None:
    """On SQLite and PostgreSQL: decisions 100, 60, 45 and 10 days old, 30 days of
    retention. The served head (``v1`` decided 10 days ago) holds every reward it learnt
    after its newest snapshot; a running rollout started 70 days ago and a retrain whose
    window starts 50 days ago hold the cutoff back; each released protection lets the
    next night prune."""
    ages = {"d100": 100, "d60": 60, "d45": 45, "d10": 10}
    rows: list[Any] = []
    for event, age in ages.items():
        row = decision_row(rng, event_id=event, created_at=NOW - age * DAY)
        rows += [row, reward_row(event, 1.0, ts=row.created_at)]
    with engine.begin() as conn:
        write_events(conn, rows)
    store = EventStore(engine)

    def kept() -> set[str]:
        return store.existing_event_ids(list(ages))

    night0 = apply_retention(store_url, "m", 30, now=NOW)
    assert night0["floored_by"] == "head of v1 (rewards learnt after its newest snapshot)"
    assert night0["cutoff"] == (NOW - 100 * DAY).isoformat() and kept() == set(ages)
    reward_ids, _ = store.applied_reward_ids("v1")
    with engine.begin() as conn:  # a snapshot holding the rewards of all but d10
        write_events(conn, [SnapshotRow("v1", NOW, int(reward_ids[2]), 3, "uniform", b"npz")])
    rollout = start_rollout(engine, "m", 2, 0.05, reason="gate passed", at=NOW - 70 * DAY)
    retrain = {"bandit_retrain run nightly-1": NOW - 50 * DAY}
    dry = apply_retention(store_url, "m", 30, retrain, now=NOW, dry_run=True)
    assert dry["deleted"] == {
        "rewards": 1,
        "decisions": 1,
        "head_snapshots": 0,
        "head_snapshot_parts": 0,
        "item_versions": 0,
    }
    assert kept() == set(ages)
    night1 = apply_retention(store_url, "m", 30, retrain, now=NOW)
    assert night1["cutoff"] == (NOW - 70 * DAY).isoformat()
    assert night1["floored_by"] == f"rollout {rollout.id} (version 2)"
    assert set(night1["protected"]) == {*retrain, night1["floored_by"]}
    assert kept() == {"d60", "d45", "d10"}

    record_step(engine, rollout.id, "stop", reason="operator", at=NOW)
    night2 = apply_retention(store_url, "m", 30, retrain, now=NOW)
    assert night2["floored_by"] == "bandit_retrain run nightly-1"
    assert night2["deleted"]["decisions"] == 1 and kept() == {"d45", "d10"}

    night3 = apply_retention(store_url, "m", 30, {}, now=NOW)
    assert night3["floored_by"] is None and night3["cutoff"] == (NOW - 30 * DAY).isoformat()
    assert kept() == {"d10"}
    assert store.count_rows()["rewards"] == 1


def test_active_windows_reads_the_run_specs_of_running_retrains(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    starts = {f"run-{i}": NOW - (i + 1) * DAY for i in range(4)}
    for i, (key, start) in enumerate(starts.items()):
        folder = runs / key
        folder.mkdir(parents=True)
        (folder / SPEC_FILE).write_text(
            json.dumps({"run_key": key, "window_start": start.isoformat()})
        )
        os.utime(folder / SPEC_FILE, (1_000_000 + i, 1_000_000 + i))  # run-3 newest
    (runs / "monitor").mkdir()  # the monitor's folder holds no spec
    (runs / "broken").mkdir()
    (runs / "broken" / SPEC_FILE).write_text("{")
    asked: list[str] = []

    def running(key: str) -> bool:
        asked.append(key)
        return key in {"run-1", "run-3"}

    assert active_windows(runs, running) == {"run-3": starts["run-3"], "run-1": starts["run-1"]}
    asked.clear()
    assert active_windows(runs, running, expected=1) == {"run-3": starts["run-3"]}
    assert asked == ["run-3"]  # newest first, stops once the expected runs are found


def test_feature_drift_reads_the_weeks_most_common_widths(tmp_path: Path) -> None:
    """A week whose first decision is of another width (sent while no model fixed it):
    the drift is computed on the rows of the week's most common widths, against the
    production version's reference. Before, the first row's widths made the check say
    "feature dimensions changed" and compute no score, hiding real drift all week."""
    from tests.test_monitor_evidence import reference_of

    rng = np.random.default_rng(4)

    def rows(n: int, dim_user: int, shift: float) -> pd.DataFrame:
        ids = [[f"a{j}", f"b{j}"] for j in range(n)]
        return pd.DataFrame(
            {
                "event_id": [f"e{dim_user}-{shift}-{j}" for j in range(n)],
                "context": list(rng.normal(shift, 1.0, size=(n, dim_user))),
                "candidate_ids": ids,
                "candidate_features": [list(rng.normal(size=(2, 2))) for _ in range(n)],
                "arm_id": [pair[0] for pair in ids],
            }
        )

    reference = reference_of(rows(400, 3, 0.0), 3, 2)
    week = pd.concat([rows(1, 5, 0.0), rows(300, 3, 2.0)], ignore_index=True)  # drifted
    settings = MonitorSettings(workspace=tmp_path / "ws")
    section = monitor._drift_section(week, datetime.now(UTC), settings, reference, "m/1")
    assert section["check"]["status"] == "alert", section["check"]
    assert "drifted" in section["check"]["message"]
    assert section["scores"]["context_0"] > settings.feature_drift_max


def test_decisions_without_a_choice_do_not_count_against_exploration(tmp_path: Path) -> None:
    """A decision among one candidate cannot explore: left out of the explored share.
    Before, a client sending such requests could make "the policy stopped learning"
    alert for a policy exploring half of its real choices."""
    n_choice, n_single = 20, 100
    week = pd.DataFrame(
        {
            "candidate_ids": [["a", "b"]] * n_choice + [["a"]] * n_single,
            "fallback": [False] * (n_choice + n_single),
            "explored": [i % 2 == 0 for i in range(n_choice)] + [False] * n_single,
            "propensity": [0.5] * n_choice + [1.0] * n_single,
        }
    )
    settings = MonitorSettings(workspace=tmp_path / "ws")
    section = monitor._explored_section(week, settings)
    assert (section["decisions"], section["share"]) == (n_choice, 0.5)
    assert section["check"]["status"] == "ok"
