"""The library behind the DAGs, without Airflow: the run spec and its form values, the
pipeline settings, and the monitor's numbers against independent computations."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from monitoring import monitor
from monitoring.settings import MonitorSettings
from training import promotion, runspec
from training.settings import PipelineSettings

END = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)
RUN_KEY = "scheduled__2026-11-29T02:00:00+00:00"


@pytest.fixture
def settings(tmp_path: Path) -> PipelineSettings:
    return PipelineSettings(
        workspace=tmp_path / "ws",
        database_url=f"sqlite:///{tmp_path / 'events.db'}",
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        reward_window_s=60.0,
    )


# ---------------------------------------------------------------------- plan and spec
def test_plan_fixes_the_run_from_the_form_values(settings: PipelineSettings) -> None:
    spec = runspec.plan(
        {"algorithm": "neural_linear"}, run_key=RUN_KEY, interval_end=END, settings=settings
    ).to_xcom()
    assert spec["window_start"] == (END - timedelta(days=7)).isoformat()
    assert spec["window_end"] == spec["as_of"] == END.isoformat()
    assert spec["train"] == {
        "algorithm": "neural_linear",
        "options": {"epochs": 20, "cold_start_floor": 0.02},
        "seed": 0,
    }
    # the nightly default starts simple: linear Thompson sampling (a neural challenger joins
    # large windows where the linear-failure diagnostic recommends it)
    auto = runspec.plan({}, run_key="nightly-1", interval_end=END, settings=settings).to_xcom()
    assert auto["train"] == {"algorithm": "lints", "options": {"cold_start_floor": 0.02}, "seed": 0}
    assert auto["challengers"]["neural"] == "neural_linear"
    assert (auto["challengers"]["epochs"], auto["challengers"]["neural_min_rows"]) == (20, 10_000)
    assert spec["store_url"] == settings.store_url and spec["reward_window_s"] == 60.0
    assert spec["auto_promote"] is False and spec["min_rows"] == 100
    folder = Path(spec["run_dir"])
    assert folder.parent == settings.runs_path and ":" not in folder.name
    assert json.loads((folder / runspec.SPEC_FILE).read_text()) == spec
    assert runspec.RunSpec.from_dict(spec).to_dict() == spec

    explicit = runspec.plan(
        {
            "window_start": "2026-11-01",
            "window_end": "2026-11-08",
            "algorithm": "shared_linucb",
            "policy_options": {"alpha": 0.5},
            "auto_promote": True,
        },
        run_key="manual-1",
        interval_end=END,
        settings=settings.model_copy(update={"retrain_auto_promote": True}),
    ).to_xcom()
    assert (explicit["window_start"], explicit["window_end"]) == (
        "2026-11-01T00:00:00+00:00",
        "2026-11-08T00:00:00+00:00",
    )
    # epochs only for neural policies; a deterministic policy gets the default floor and
    # every policy the cold-start floor for arms it has not seen
    assert explicit["train"]["options"] == {
        "alpha": 0.5,
        "floor": 0.02,
        "cold_start_floor": 0.02,
    }
    assert explicit["challengers"] == {}  # one named algorithm: no comparison
    auto = runspec.plan({}, run_key="nightly-1", interval_end=END, settings=settings).to_xcom()
    assert (
        auto["train"]["algorithm"] == "lints" and auto["challengers"]["neural_min_rows"] == 10_000
    )


def test_the_form_s_min_rows_is_the_trainer_s_floor_on_the_window(
    settings: PipelineSettings, tmp_path: Path
) -> None:
    """One number: the rows the data validation asks of the window are what the trainer
    asks (of the window's decisions, not of its training part)."""
    from benchmarks.scale import synthetic_replay
    from training.train import train

    spec = runspec.plan({"min_rows": 60}, run_key="manual-2", interval_end=END, settings=settings)
    assert spec.train_config().min_rows == 60
    replay = synthetic_replay(tmp_path / "replay.parquet", 60, seed=1)
    trained = train(replay, spec.train_config(), tmp_path / "ok")  # 48 training rows
    assert (trained.n_train, trained.n_holdout) == (48, 12)
    strict = runspec.plan({"min_rows": 61}, run_key="manual-3", interval_end=END, settings=settings)
    with pytest.raises(ValueError, match="the replay window has 60 decisions; min_rows is 61"):
        train(replay, strict.train_config(), tmp_path / "short")
    with pytest.raises(ValueError, match="unknown fields \\['min_rows'\\]"):
        runspec.RunSpec.from_dict(
            {**spec.to_dict(), "train": {**spec.train, "min_rows": 5}}
        ).train_config()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"window_start": "2026-11-01"}, "window_end must be given together with window_start"),
        ({"window_start": "2026-11-08", "window_end": "2026-11-01"}, "window_start must be before"),
        ({"window_start": "yesterday", "window_end": "2026-11-01"}, "window_start must be a date"),
        ({"window_days": 0}, "window_days must be a finite number > 0"),
        ({"algorithm": "random_forest"}, "algorithm must be one of"),
        ({"policy_options": [1, 2]}, "policy_options must be an object"),
        ({"min_rows": 0}, "min_rows must be an integer ≥ 1"),
        ({"epochs": 0, "algorithm": "neural_linear"}, "epochs must be an integer ≥ 1"),
        ({"auto_promote": "yes"}, "auto_promote must be true or false"),
        ({"tolerance": 1.0}, "tolerance must be a finite number ≥ 0 and < 1"),
        ({"n_resamples": 2.5}, "n_resamples must be an integer ≥ 50"),
        ({"n_resamples": 10}, "n_resamples must be an integer ≥ 50"),
        ({"colour": "red"}, "params has unknown fields ['colour']"),
        ({"algorithm": "shared_linucb", "policy_options": {"dim_user": 3}}, "dim_user"),
    ],
)
def test_plan_rejects_bad_form_values_naming_the_field(
    settings: PipelineSettings, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        runspec.plan(params, run_key=RUN_KEY, interval_end=END, settings=settings)


def test_plan_needs_a_timezone_aware_interval_end(settings: PipelineSettings) -> None:
    with pytest.raises(ValueError, match="interval_end must be a timezone-aware datetime"):
        runspec.plan({}, run_key=RUN_KEY, interval_end=datetime(2026, 11, 29), settings=settings)


def test_spec_rejects_unknown_or_inconsistent_fields(settings: PipelineSettings) -> None:
    spec = runspec.plan(
        {"algorithm": "linucb"}, run_key="r", interval_end=END, settings=settings
    ).to_xcom()
    with pytest.raises(ValueError, match=r"spec has unknown fields \['extra'\]"):
        runspec.RunSpec.from_dict({**spec, "extra": 1})
    with pytest.raises(ValueError, match=r"train has unknown fields \['layers'\]"):
        runspec.RunSpec.from_dict({**spec, "train": {**spec["train"], "layers": 3}})
    with pytest.raises(ValueError, match="window_start must be before window_end"):
        runspec.RunSpec.from_dict({**spec, "window_start": spec["window_end"]})
    with pytest.raises(ValueError, match="run_key must be a non-empty string"):
        runspec.RunSpec.from_dict({**spec, "run_key": " "})
    missing = {k: v for k, v in spec.items() if k != "duplicate_rule"}
    with pytest.raises(ValueError, match=r"spec has missing fields \['duplicate_rule'\]"):
        runspec.RunSpec.from_xcom(missing)


def test_run_folders_are_file_safe_and_never_shared(tmp_path: Path) -> None:
    plain = runspec.run_folder(tmp_path, "nightly-1")
    assert plain == tmp_path.resolve() / "nightly-1"
    a = runspec.run_folder(tmp_path, "manual__2026-11-29T04:21:26+00:00")
    b = runspec.run_folder(tmp_path, "manual__2026-11-29T04_21_26_00_00")
    assert a != b and not set(a.name) & set(":+/ ")
    # a run named like the monitor's folder gets a folder of its own (it wrote into the
    # monitor's, and its refit report read as the latest monitor report)
    monitor = runspec.run_folder(tmp_path, "monitor")
    assert monitor.parent == tmp_path.resolve() and monitor.name.startswith("monitor-")


def test_promotion_input_is_checked_before_the_registry(settings: PipelineSettings) -> None:
    with pytest.raises(ValueError, match="target must be one of production, staging"):
        promotion.plan_promotion("1", target="candidate", settings=settings)
    with pytest.raises(
        ValueError, match="version must be a registered version number; a model version is a"
    ):
        promotion.plan_promotion("v1", settings=settings)
    with pytest.raises(ValueError, match="version must be given unless rollback is true"):
        promotion.plan_promotion("", settings=settings)
    with pytest.raises(ValueError, match="rollback must be true or false"):
        promotion.plan_promotion("1", rollback="no", settings=settings)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"approval must have chosen \['Approve'\]"):
        promotion.apply_promotion({}, {"chosen_options": ["Reject"]}, settings=settings)


def test_an_approved_move_run_again_finds_its_own_move(
    settings: PipelineSettings, tmp_path: Path
) -> None:
    """``move_alias`` cleared and run again after it moved @production: it failed saying
    the alias "moved while waiting for approval" (its own move), and the run ended failed
    while the promotion stood. Another move in between still refuses, and so does a huge
    version number (SQLite's overflow error before)."""
    from bandit_core import make_policy, save_policy
    from modelregistry.registry import ModelRegistry, RegistryError

    registry = ModelRegistry.from_settings(settings)
    for seed in (1, 2, 3):
        state = save_policy(make_policy("linucb", dim_user=2), tmp_path / f"{seed}.npz")
        registry.register_candidate(state_path=state, run_key=f"run-{seed}")
    registry.promote("1", by="test", reason="first")
    plan = promotion.plan_promotion("2", settings=settings)
    approval = {"chosen_options": ["Approve"], "responded_by_user": {"name": "ann"}}
    first = promotion.apply_promotion(plan, approval, settings=settings)
    history = registry.alias_history()
    again = promotion.apply_promotion(plan, approval, settings=settings)
    assert again == first and registry.by_alias("production").version == "2"
    assert registry.alias_history() == history  # nothing moved twice
    # the approval task marked success by hand leaves no answer (an AttributeError before)
    with pytest.raises(ValueError, match="no approval was recorded"):
        promotion.apply_promotion(plan, None, settings=settings)  # type: ignore[arg-type]
    registry.promote("3", by="bob", reason="by hand")
    with pytest.raises(RegistryError, match="moved from 1 to 3 while waiting for approval"):
        promotion.apply_promotion(plan, approval, settings=settings)
    # a rollback records its reason after "rollback from 3: ": run again, it too finds
    # its own move
    back = promotion.plan_promotion(None, rollback=True, settings=settings)
    done = promotion.apply_promotion(back, approval, settings=settings)
    assert done["version"] == "2" and registry.by_alias("production").version == "2"
    history = registry.alias_history()
    assert promotion.apply_promotion(back, approval, settings=settings) == done
    assert registry.alias_history() == history
    with pytest.raises(
        ValueError,
        match="version must be a registered version number; a model version is at most 9223372036854775807",
    ):
        promotion.plan_promotion("99999999999999999999", settings=settings)


def test_pipeline_settings_validate_schedules_and_derive_paths(tmp_path: Path) -> None:
    s = PipelineSettings(workspace=tmp_path, mlflow_tracking_uri=None, runs_dir=None)
    assert s.retrain_schedule == "0 2 * * *" and s.monitor_schedule == "0 * * * *"
    assert s.tracking_uri == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    assert s.runs_path == (tmp_path / "runs").resolve()
    assert PipelineSettings(monitor_schedule="@hourly").monitor_schedule == "@hourly"
    with pytest.raises(ValueError, match="retrain_schedule"):
        PipelineSettings(retrain_schedule="every night")
    with pytest.raises(ValueError, match="alert_webhook_url"):
        MonitorSettings(alert_webhook_url="ftp://alerts")


# ---------------------------------------------------------------------- monitor numbers
def test_reward_stats_and_relative_change() -> None:
    rewards = np.random.default_rng(3).random(501)
    out = monitor.reward_stats(rewards)
    assert out == {
        "n": 501.0,
        "mean": pytest.approx(rewards.mean()),
        "p5": pytest.approx(np.sort(rewards)[25]),  # 0.05 · 500 = 25: an exact order statistic
        "p95": pytest.approx(np.sort(rewards)[475]),
    }
    assert monitor.reward_stats(np.array([])) is None
    assert monitor.relative_change(0.12, 0.30, 1.0) == pytest.approx(0.6)
    assert monitor.relative_change(0.1, 0.0, 2.0) == pytest.approx(0.05)  # range when 0
    with pytest.raises(ValueError, match="scale must be > 0"):
        monitor.relative_change(1.0, 1.0, 0.0)


def test_selection_entropy_against_scipy() -> None:
    rng = np.random.default_rng(5)
    arms = [f"a{i}" for i in rng.integers(0, 4, 300)]
    offered = [("a0", "a1", "a2", "a3", "a4")] * 300  # a4 offered, never chosen
    entropy, maximum = monitor.selection_entropy(arms, offered)
    counts = np.unique(arms, return_counts=True)[1]
    assert entropy == pytest.approx(stats.entropy(counts))
    assert maximum == pytest.approx(np.log(5))
    assert monitor.selection_entropy([], []) == (0.0, 0.0)
    # one request offering 1,000 fresh ids barely moves the reference (before: ln 1,005,
    # which made the ratio 35 % and raised an alert; found by an attack pass)
    flooded = [*offered, tuple(f"fresh-{i}" for i in range(1000))]
    _, with_flood = monitor.selection_entropy([*arms, "fresh-0"], flooded)
    assert np.log(5) < with_flood < np.log(5) + 0.05


def test_arm_coverage_counts_the_uniform_share() -> None:
    rows = monitor.arm_coverage(["a", "a"], [("a", "b"), ("a", "b", "c")])
    assert rows == [
        {"arm": "a", "chosen": 2, "uniform_share": pytest.approx(1 / 2 + 1 / 3)},
        {"arm": "b", "chosen": 0, "uniform_share": pytest.approx(1 / 2 + 1 / 3)},
        {"arm": "c", "chosen": 0, "uniform_share": pytest.approx(1 / 3)},
    ]


def test_correlations_against_scipy() -> None:
    rng = np.random.default_rng(9)
    x = rng.standard_normal((200, 3))
    r = 0.8 * x[:, 0] + rng.standard_normal(200)
    x[:, 2] = 1.0
    out = monitor.correlations(x, r)
    assert out[0] == pytest.approx(stats.pearsonr(x[:, 0], r).statistic)
    assert out[1] == pytest.approx(stats.pearsonr(x[:, 1], r).statistic)
    assert out[2] is None  # a constant feature has no correlation


def _report(tmp_path: Path, status: str) -> Path:
    checks = {name: {"status": "ok", "message": "fine"} for name in monitor.CHECKS}
    checks["fallback_rate"] = {"status": status, "message": "9 of 10 decisions (90.0%) …"}
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"checks": checks, "window": {"end": END.isoformat()}}))
    return path


def test_check_raises_the_alert_with_its_message(tmp_path: Path) -> None:
    path = _report(tmp_path, "alert")
    with pytest.raises(monitor.MonitorAlert, match=r"fallback_rate: 9 of 10 decisions \(90.0%\)"):
        monitor.check(path, "fallback_rate")
    assert monitor.check(path, "reward_drift") == {"status": "ok", "message": "fine"}
    with pytest.raises(ValueError, match="name must be one of reward_drift"):
        monitor.check(path, "latency")


def test_notify_sends_only_alerts_and_reports_an_unreachable_webhook(
    tmp_path: Path, settings: PipelineSettings
) -> None:
    settings = MonitorSettings(workspace=tmp_path / "ws", reward_window_s=60.0)
    assert monitor.notify(_report(tmp_path, "alert"), settings) == {
        "sent": False,
        "alerts": {"fallback_rate": "9 of 10 decisions (90.0%) …"},
    }  # no webhook configured
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    secret = "services/T000/B000/XXXXsecretXXXX"  # a Slack-style webhook's key is its path
    url = f"http://127.0.0.1:{port}/{secret}"
    hooked = settings.model_copy(update={"alert_webhook_url": url})
    assert monitor.notify(_report(tmp_path, "ok"), hooked)["sent"] is False  # nothing to send
    with pytest.raises(RuntimeError, match=r"alert webhook http://127.0.0.1/… could not") as err:
        monitor.notify(_report(tmp_path, "alert"), hooked, timeout_s=2.0)
    assert "secret" not in str(err.value)  # the task log names the host only


def test_a_monitor_report_ends_inside_the_times_events_may_take(tmp_path: Path) -> None:
    """An end in year 1 overflowed the lookback's arithmetic (OverflowError); 9999 would
    overflow the reward window after it. Both are named, before the store is read."""
    settings = MonitorSettings(workspace=tmp_path / "ws", database_url="sqlite:///unused.db")
    for end in (datetime(1, 1, 10, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC)):
        with pytest.raises(ValueError, match=r"end must lie between 1970-01-01.* and 2200-01-01"):
            monitor.build_report(end, run_key="r", settings=settings)


def test_the_run_spec_keeps_no_password(
    settings: PipelineSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spec is the plan step's XCom, which every Airflow viewer reads (the security
    helper read the event store's password from it as a Viewer), and spec.json was
    world-readable. Now its URLs carry ``***``, the steps take the password from their
    own settings, and the file is the owner's."""
    store = "postgresql+psycopg2://banditops:S3cret/pw@db.internal:5432/events"
    tracking = "http://mlflow-user:Tr4ck%21ng@mlflow.internal:5000"
    for name, value in (
        ("BANDITOPS_DATABASE_URL", store),
        ("BANDITOPS_MLFLOW_TRACKING_URI", tracking),
    ):
        monkeypatch.setenv(name, value)
    configured = PipelineSettings(workspace=settings.workspace, runs_dir=settings.runs_path)
    spec = runspec.plan({}, run_key="nightly-9", interval_end=END, settings=configured)
    text = json.dumps(spec.to_xcom())
    assert "S3cret" not in text and "Tr4ck" not in text, text
    assert spec.store_url == "postgresql+psycopg2://banditops:***@db.internal:5432/events"
    assert spec.url("store_url") == store
    assert spec.url("tracking_uri") == spec.url("registry_uri") == tracking
    written = Path(spec.run_dir) / runspec.SPEC_FILE
    assert "S3cret" not in written.read_text() and written.stat().st_mode & 0o777 == 0o600
    # a step whose settings name another store refuses, naming both (never the password)
    monkeypatch.setenv("BANDITOPS_DATABASE_URL", store.replace("db.internal", "db.other"))
    with pytest.raises(ValueError, match=r"store_url .*db\.internal.* is not the configured"):
        spec.url("store_url")


def test_with_four_eyes_the_one_who_triggered_a_promotion_cannot_approve_it(
    settings: PipelineSettings, tmp_path: Path
) -> None:
    """A user who may trigger bandit_promote could approve their own run (the security
    helper's "user" promoted a version its gate had refused). With promote_four_eyes the
    approver must be someone else, and a run whose triggering user is unknown needs the
    setting off."""
    from bandit_core import make_policy, save_policy
    from modelregistry.registry import ModelRegistry

    registry = ModelRegistry.from_settings(settings)
    for seed in (1, 2):
        state = save_policy(make_policy("linucb", dim_user=2), tmp_path / f"{seed}.npz")
        registry.register_candidate(state_path=state, run_key=f"run-{seed}")
    registry.promote("1", by="test", reason="first")
    strict = settings.model_copy(update={"promote_four_eyes": True})
    plan = promotion.plan_promotion("2", settings=strict)
    mine = {"chosen_options": ["Approve"], "responded_by_user": {"id": "ann", "name": "ann"}}
    for who in ("ann", None):
        with pytest.raises(ValueError, match="another person must approve it; nothing moved"):
            promotion.apply_promotion(plan, mine, settings=strict, triggered_by=who)
    assert registry.by_alias("production").version == "1"
    done = promotion.apply_promotion(plan, mine, settings=strict, triggered_by="bob")
    assert done["version"] == "2" and registry.by_alias("production").version == "2"


def test_with_four_eyes_a_run_without_a_known_trigger_fails_before_it_asks(
    settings: PipelineSettings,
) -> None:
    """It failed only after the wait for its approval, whoever approved (diff reviewer)."""
    strict = settings.model_copy(update={"promote_four_eyes": True})
    with pytest.raises(ValueError, match="needs a known triggering user"):
        promotion.check_approvable(None, strict)
    promotion.check_approvable("ann", strict)
    promotion.check_approvable(None, settings)  # four eyes off: anyone's run
