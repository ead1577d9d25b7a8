"""One retrain, declared once: the form (defaults, bounds, descriptions) behind the DAG's
``Param``\\ s, ``banditops train``'s options and the run spec; one default per knob; the
settings the run spec carries down to the steps (the duplicate rule into the replay); the
typed step references' XCom round trip."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from typer.main import get_command
from typer.testing import CliRunner

from bandit_core import make_policy
from bandit_core.policies.overlap import floor_of_policy
from eventstore import records
from ops.cli import app
from serving.store.repository import write_events
from tests.serving_helpers import decision_row, reward_row
from training import pipeline, refs
from training.form import FIELDS, RETRAIN_FORM, check_form
from training.runspec import RunSpec, plan
from training.settings import PipelineSettings

pytest_plugins = ["tests.serving_fixtures", "tests.airflow_support"]

END = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
HALF = 30 * MINUTE


def _settings(tmp_path: Path, **extra: Any) -> PipelineSettings:
    return PipelineSettings(
        workspace=tmp_path / "ws",
        database_url=f"sqlite:///{tmp_path / 'events.db'}",
        **extra,
    )


# ---------------------------------------------------------------------- the form
def test_train_options_are_the_form() -> None:
    """``banditops train`` has one option per form field, with its type, description and
    bounds in the help; nothing else but its own ``--run-key`` and ``--plan-only``."""
    command = get_command(app).commands["train"]  # type: ignore[attr-defined]
    options = {p.name: p for p in command.params}
    assert set(options) == set(FIELDS) | {"run_key", "plan_only"}
    for field in RETRAIN_FORM:
        option = options[field.name]
        assert option.default is None, field.name  # the form's default, filled by plan()
        assert field.description in option.help and field.expectation() in option.help
        assert "Undefined" not in option.help, option.help  # a factory's default shown
        flag = "--" + field.name.replace("_", "-")
        assert flag in option.opts
        if field.kind == "boolean":
            assert option.secondary_opts == ["--no-" + field.name.replace("_", "-")]


def test_one_default_per_knob_lives_in_the_pipeline_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``auto_promote``, ``min_ess``, ``n_resamples`` and ``shards``: the form's default is
    the setting, the run spec's value is the form's, and ``BANDITOPS_*`` moves all."""
    defaults = PipelineSettings.model_construct()
    assert (
        defaults.retrain_auto_promote,
        defaults.retrain_min_ess,
        defaults.retrain_n_resamples,
    ) == (False, 50.0, 300)
    spec = plan({}, run_key="r", interval_end=END, settings=_settings(tmp_path))
    assert (spec.auto_promote, spec.min_ess, spec.n_resamples, spec.shards) == (
        False,
        50.0,
        300,
        1,
    )
    for name, value in (
        ("RETRAIN_AUTO_PROMOTE", "true"),
        ("RETRAIN_MIN_ESS", "12.5"),
        ("RETRAIN_N_RESAMPLES", "77"),
        ("RETRAIN_SHARDS", "3"),
    ):
        monkeypatch.setenv(f"BANDITOPS_{name}", value)
    moved = plan({}, run_key="r2", interval_end=END, settings=_settings(tmp_path))
    assert (moved.auto_promote, moved.min_ess, moved.n_resamples, moved.shards) == (
        True,
        12.5,
        77,
        3,
    )
    # the same bound everywhere: the settings, the form and the spec refuse 49 resamples
    with pytest.raises(ValueError, match="n_resamples"):
        PipelineSettings(retrain_n_resamples=49)
    with pytest.raises(
        ValueError, match="n_resamples must be an integer ≥ 50 and ≤ 100000; got 49"
    ):
        check_form({"n_resamples": 49}, _settings(tmp_path))
    with pytest.raises(
        ValueError, match="n_resamples must be an integer ≥ 50 and ≤ 100000; got 49"
    ):
        RunSpec.from_xcom({**spec.to_xcom(), "n_resamples": 49})
    # a spec handed over by XCom holds its rewards to the bound the policies hold them to
    for name in ("reward_max", "default_reward"):
        with pytest.raises(ValueError, match=rf"{name} must be at most 1e\+06 in magnitude"):
            RunSpec.from_xcom({**spec.to_xcom(), name: 2e6})


def test_form_checks_name_the_field_and_the_bound(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    for params, message in (
        ({"tolerance": 1.0}, "tolerance must be a finite number ≥ 0 and < 1; got 1.0."),
        ({"window_days": -1}, "window_days must be a finite number > 0 and ≤ 3660; got -1."),
        ({"shards": 0}, "shards must be an integer ≥ 1 and ≤ 1024; got 0."),
        ({"seed": True}, "seed must be an integer ≥ 0 and ≤ 9223372036854775807; got True."),
        # values whose work multiplies, or that Airflow cannot carry: each has a maximum
        # (before, 10⁸ resamples held the nightly run for hours, 2⁷⁰ failed the task with
        # an empty log, 10⁹ shards failed after training, 10⁶ days overflowed the date)
        ({"n_resamples": 100_000_000}, "n_resamples must be an integer ≥ 50 and ≤ 100000"),
        ({"seed": 2**70}, "seed must be an integer ≥ 0 and ≤ 9223372036854775807"),
        ({"shards": 1e9}, "shards must be an integer ≥ 1 and ≤ 1024; got 1000000000.0"),
        ({"window_days": 1e6}, "window_days must be a finite number > 0 and ≤ 3660"),
        ({"window_end": "2026-02-30"}, "window_end must be a date YYYY-MM-DD"),
    ):
        with pytest.raises(ValueError) as info:
            check_form(params, settings)
        assert message in str(info.value)
    assert check_form({"epochs": 3.0}, settings)["epochs"] == 3  # JSON forms send floats


def test_policy_options_a_policy_does_not_take_fail_the_plan(tmp_path: Path) -> None:
    """Checked when the run is planned, naming the field (they failed ``train_network``,
    after the window was extracted and validated); under ``auto`` a non-mapping value
    under a challenger's name no longer leaks into the linear candidate's options."""
    from training.runspec import LINEAR_CHALLENGER, plan

    settings = _settings(tmp_path)
    end = datetime(2026, 1, 2, tzinfo=UTC)
    for params, message in (
        (
            {"algorithm": "shared_lints", "policy_options": {"bogus": 1}},
            "policy_options has options shared_lints does not take: ['bogus']",
        ),
        (
            {"algorithm": "auto", "policy_options": {"neural_linear": 5}},
            f"policy_options has options {LINEAR_CHALLENGER} does not take: ['neural_linear']",
        ),
        (
            {"algorithm": "auto", "policy_options": {"neural_linear": {"hiden": [8]}}},
            "policy_options.neural_linear has options neural_linear does not take: ['hiden']",
        ),
        # what the registry would refuse after training is refused before (a network of
        # 10¹² weights failed the training task asking torch for 8 TB)
        (
            {"algorithm": "neural_linear", "policy_options": {"hidden": [1_000_000, 8]}},
            "policy_options declares hidden = 1000000; the limit is 4096 (model_max_dim)",
        ),
        (
            {"algorithm": "auto", "policy_options": {"neural_linear": {"hidden": [5000]}}},
            "policy_options.neural_linear declares hidden = 5000; the limit is 4096",
        ),
        # explicit dates are bounded as window_days is (0001 to 9999 was accepted)
        (
            {"window_start": "0001-01-01", "window_end": "9999-12-31"},
            "window_start to window_end must span at most 3660 days",
        ),
        # a window that ends after the run: its version's window_stop was after its
        # registration, which the service refuses (trained, gated, promoted, never served)
        (
            {"window_start": "2025-12-01", "window_end": "2026-01-03"},
            "window_end must not be after the run's data interval end "
            "(2026-01-02T00:00:00+00:00); got 2026-01-03",
        ),
    ):
        with pytest.raises(ValueError) as info:
            plan(params, run_key="manual__x", interval_end=end, settings=settings)
        assert message in str(info.value)
    ok = {"algorithm": "auto", "policy_options": {"neural_linear": {"hidden": [8]}, "v": 0.5}}
    assert plan(ok, run_key="manual__y", interval_end=end, settings=settings).train["options"]


def test_segment_floors_take_a_hashed_user_group_or_a_context_feature(tmp_path: Path) -> None:
    """The form's segment_floors name a context feature or a number of hashed user
    groups; the run spec's trained policy gets them as overlap options, and the policy
    built from them has the floors; bad forms are refused naming the field."""
    settings = _settings(tmp_path)

    def spec_of(segments: Any) -> RunSpec:
        params = {"algorithm": "linucb", "segment_floors": segments}
        return plan(params, run_key="k", interval_end=END, settings=settings)

    by_group = spec_of({"user_groups": 8, "floors": {"group_3": 0.1}})
    options = by_group.train["options"]
    assert options["segment_user_groups"] == 8 and "segment_feature" not in options
    assert options["segment_floors"] == {"group_3": 0.1}
    policy = make_policy("linucb", dim_user=3, **options)
    assert floor_of_policy(policy) == {
        "floor": 0.02,  # the deterministic floor of UCB
        "segment_user_groups": 8,
        "segment_floors": {"group_3": 0.1},
        "cold_start_floor": 0.02,
    }
    by_feature = spec_of({"feature": 1, "floors": {"1": 0.1}}).train["options"]
    assert by_feature["segment_feature"] == 1 and "segment_user_groups" not in by_feature
    for segments, message in (
        ({"user_groups": 8, "feature": 1, "floors": {"group_1": 0.1}}, "segment_floors must be"),
        ({"user_groups": 8}, 'or {"user_groups": <number of groups>'),
        ({"groups": 8, "floors": {"group_1": 0.1}}, "segment_floors must be"),
        ({"user_groups": 0, "floors": {"group_0": 0.1}}, "segment_floors.user_groups must be"),
        ({"user_groups": True, "floors": {"group_0": 0.1}}, "segment_floors.user_groups must"),
        ({"user_groups": 8, "floors": [0.1]}, "segment_floors.floors must be an object"),
        ({"user_groups": 8, "floors": {"group_8": 0.1}}, "'group_0' to 'group_7'"),
        ({"user_groups": 8, "floors": {"group_1": 2.0}}, "The 'segment_floors' parameter"),
    ):
        with pytest.raises(ValueError) as info:
            spec_of(segments)
        assert message in str(info.value), (segments, str(info.value))


# ---------------------------------------------------------------------- CLI = DAG
NON_DEFAULT = {
    "BANDITOPS_REWARD_MIN": "-1",
    "BANDITOPS_REWARD_MAX": "5",
    "BANDITOPS_MISSING_REWARD": "drop",
    "BANDITOPS_DEFAULT_REWARD": "0.5",
    "BANDITOPS_DUPLICATE_RULE": "sum",
    "BANDITOPS_RETRAIN_SHARDS": "2",
    "BANDITOPS_REWARD_WINDOW_S": "120",
    "BANDITOPS_PRODUCTION_ALIAS": "champion",
    "BANDITOPS_CANDIDATE_ALIAS": "challenger",
    "BANDITOPS_REGISTERED_ALIAS": "fresh",
}


def test_cli_and_dag_plan_the_same_run_spec(
    airflow_home: Any, dagtools: Any, tmp_path: Path
) -> None:
    """The same settings and form values give the same run spec through ``banditops
    train`` and through the ``bandit_retrain`` DAG's form and ``plan_run`` (only the run key
    and its folder differ). On the old CLI the reward range, the missing-reward rule, the
    shard count and ``BANDITOPS_RUNS_DIR`` were lost."""
    runs = tmp_path / "elsewhere"
    extra = {
        **NON_DEFAULT,
        "BANDITOPS_RUNS_DIR": str(runs),
        "BANDITOPS_MLFLOW_REGISTRY_URI": f"sqlite:///{tmp_path / 'registry.db'}",
    }
    form = {"window_start": "2026-11-01", "window_end": "2026-11-08", "algorithm": "linucb"}
    airflow_home.ready()
    with airflow_home.applied(**extra):
        dag = dagtools.load_dag("bandit_retrain")
        params = copy.deepcopy(dag.params)
        params.update(form)  # as the trigger form resolves the submitted values
        submitted = params.validate()
        from_dag = pipeline.run_step("plan_run", submitted, run_key="dag-1", interval_end=END)
        out = CliRunner().invoke(
            app,
            [
                "train",
                "--plan-only",
                "--run-key",
                "cli-1",
                "--window-start",
                "2026-11-01",
                "--window-end",
                "2026-11-08",
                "--algorithm",
                "linucb",
            ],
        )
    assert out.exit_code == 0, out.output
    from_cli = json.loads((runs / "cli-1" / "spec.json").read_text())
    assert json.loads(out.output) == from_cli
    same = {k: v for k, v in from_cli.items() if k not in ("run_key", "run_dir")}
    assert same == {k: v for k, v in from_dag.items() if k not in ("run_key", "run_dir")}
    assert Path(from_cli["run_dir"]).parent == runs.resolve()
    assert (from_cli["reward_min"], from_cli["reward_max"], from_cli["shards"]) == (-1.0, 5.0, 2)
    assert (from_cli["missing_reward"], from_cli["duplicate_rule"]) == ("drop", "sum")
    assert (
        from_cli["registered_alias"],
        from_cli["staging_alias"],
        from_cli["production_alias"],
    ) == ("fresh", "challenger", "champion")
    assert from_cli["registry_uri"] == extra["BANDITOPS_MLFLOW_REGISTRY_URI"]


def test_the_dag_wires_its_tasks_in_the_shared_step_order(airflow_home: Any, dagtools: Any) -> None:
    """Every task of ``bandit_retrain`` is a step of ``RETRAIN_STEPS``, with exactly the
    upstream tasks the step names and the properties its row declares (trigger rule,
    outlet, short-circuit, mapping), and the table's order is a topological order of it."""
    airflow_home.ready()
    with airflow_home.applied():
        dag = dagtools.load_dag("bandit_retrain")
    order = pipeline.step_order()
    assert sorted(dag.task_ids) == sorted(order)
    for step in pipeline.RETRAIN_STEPS:
        task = dag.get_task(step.name)
        assert task.upstream_task_ids == set(step.inputs) | set(step.after)
        assert task.trigger_rule == step.trigger_rule, step.name
        assert [a.name for a in task.outlets] == ([step.outlet.name] if step.outlet else [])
        assert ("ShortCircuit" in type(task).__name__) == step.stops_run, step.name
        timeout = PipelineSettings.model_fields["task_timeout_s"].default
        assert task.execution_timeout.total_seconds() == timeout, step.name
        assert type(task).__name__.endswith("MappedOperator") == (step.mapped is not None)
    position = {name: i for i, name in enumerate(order)}
    for task in dag.tasks:
        assert all(position[up] < position[task.task_id] for up in task.upstream_task_ids)
    topological = [t.task_id for t in dag.topological_sort()]
    assert all(
        position[a] < position[b]
        for i, a in enumerate(topological)
        for b in topological[i + 1 :]
        if a in dag.get_task(b).get_flat_relative_ids(upstream=True)
    )


# ---------------------------------------------------------------------- settings reach steps
def test_the_sum_rule_reaches_the_training_replay(
    engine: sa.Engine, store_url: str, tmp_path: Path, rng: np.random.Generator
) -> None:
    """``BANDITOPS_DUPLICATE_RULE=sum``: a repeated reward is summed in the retrain's
    replay Parquet (on the old pipeline the run spec had no such field and the first
    reward won), and the data validation checks the sum per received reward: 1.25 from
    two rewards in [0, 1] passes (the plain range check stopped every such run)."""
    decided = END - timedelta(hours=3)
    row = decision_row(rng, created_at=decided)
    with engine.begin() as conn:
        write_events(conn, [row])
        write_events(
            conn,
            [
                reward_row(row.event_id, 0.75, ts=decided + timedelta(minutes=1)),
                reward_row(
                    row.event_id,
                    0.5,
                    ts=decided + timedelta(minutes=2),
                    repeat_status=records.SUMMED,
                ),
            ],
        )
    rewards = {}
    for rule in ("first_wins", "sum"):
        settings = PipelineSettings(
            workspace=tmp_path / "ws",
            database_url=store_url,
            reward_window_s=1800.0,
            duplicate_rule=rule,
            retrain_min_rows=1,
        )
        spec = pipeline.run_step(
            "plan_run", {}, run_key=f"run-{rule}", interval_end=END, settings=settings
        )
        assert spec["duplicate_rule"] == rule
        extracted = pipeline.run_step("extract_replay", spec)
        replay = refs.ReplayRef.from_xcom(extracted)
        frame = pd.read_parquet(replay.path).set_index("event_id")
        rewards[rule] = float(frame.loc[row.event_id, "reward"])
        pipeline.run_step("validate_features", spec, extracted)  # raises on a failure
    assert rewards == {"first_wins": 0.75, "sum": 1.25}


def test_a_step_given_another_release_s_spec_says_to_plan_the_run_again(
    engine: sa.Engine, store_url: str, tmp_path: Path, rng: np.random.Generator
) -> None:
    """A run planned before an upgrade (its spec lacks the fields added since) and
    resumed after it: the step names its input, what it lacks and what to do (it said
    only "spec has missing fields [...]"), and runs nothing."""
    with engine.begin() as conn:
        write_events(conn, [decision_row(rng, created_at=END - timedelta(days=2))])
    settings = PipelineSettings(
        workspace=tmp_path / "ws", database_url=store_url, retrain_min_rows=1
    )
    spec = pipeline.run_step("plan_run", {}, run_key="old", interval_end=END, settings=settings)
    older = {k: v for k, v in spec.items() if k not in ("model_max_bytes", "model_max_dim")}
    with pytest.raises(pipeline.StaleInputError) as caught:
        pipeline.run_step("extract_replay", older)
    message = str(caught.value)
    assert message.startswith("step 'extract_replay' cannot read the output of 'plan_run': ")
    assert "missing fields ['model_max_bytes', 'model_max_dim']" in message
    assert "Clear the whole run, from plan_run" in message
    assert not (Path(spec["run_dir"]) / "replay").exists()
    # a task marked success by hand left no output: said so, not "another release"
    # (audit, stop 54)
    with pytest.raises(pipeline.StaleInputError) as caught:
        pipeline.run_step("extract_replay", None)
    message = str(caught.value)
    assert "has no output of 'plan_run'" in message and "marked success" in message
    assert "another banditops release" not in message


def test_a_window_is_read_once_its_rewards_are_in_and_an_empty_one_is_refused(
    engine: sa.Engine, store_url: str, tmp_path: Path, rng: np.random.Generator
) -> None:
    """An explicit window ended a day before the run is read whole: its replay was read
    as of its end, so the last reward window of it was left out (a one-day window with
    the default one-day reward window was always empty). The nightly window still stops
    a reward window before the interval end, and a window holding no decision whose
    reward window had closed is refused when planned, naming why."""
    day = datetime(2026, 11, 27, tzinfo=UTC)  # END is 2026-11-29 02:00
    decided = [day + timedelta(hours=h) for h in (1, 12, 23)] + [END - timedelta(hours=2)]
    rows = [decision_row(rng, created_at=t) for t in decided]
    with engine.begin() as conn:
        write_events(conn, rows)
        write_events(conn, [reward_row(r.event_id, 1.0, ts=r.created_at) for r in rows])
    settings = PipelineSettings(
        workspace=tmp_path / "ws", database_url=store_url, retrain_min_rows=1
    )  # reward_window_s: the default day

    def replayed(params: dict[str, Any], key: str) -> set[str]:
        spec = pipeline.run_step(
            "plan_run", params, run_key=key, interval_end=END, settings=settings
        )
        replay = refs.ReplayRef.from_xcom(pipeline.run_step("extract_replay", spec))
        return set(pd.read_parquet(replay.path)["event_id"])

    past = {"window_start": "2026-11-27", "window_end": "2026-11-28"}
    assert replayed(past, "past") == {r.event_id for r in rows[:3]}
    # the nightly window: decided in the last day of the interval → not yet
    assert replayed({"window_days": 3}, "nightly") == {r.event_id for r in rows[:3]}
    for params in (
        {"window_days": 0.5},
        {"window_days": 1},
    ):
        with pytest.raises(
            ValueError,
            match=r"holds no decision whose reward window \(reward_window_s = 86400 s\) had closed",
        ):
            plan(params, run_key="empty", interval_end=END, settings=settings)


def test_a_run_whose_data_interval_ends_in_the_future_reads_no_open_reward_window(
    engine: sa.Engine, store_url: str, tmp_path: Path, rng: np.random.Generator
) -> None:
    """A trigger may name any logical date: a run whose interval ended 50 minutes from
    now read the store as of then, so a decision 30 minutes old (its hour-long reward
    window open, its click still to come) was trained as a miss, and its version never
    learnt the click (the service replays decisions after the window's stop only). The
    store is read no later than now."""
    now = datetime.now(UTC)
    old, fresh = (decision_row(rng, created_at=now - t) for t in (timedelta(hours=3), HALF))
    with engine.begin() as conn:
        write_events(conn, [old, fresh, reward_row(old.event_id, 1.0, ts=old.created_at)])
    settings = PipelineSettings(
        workspace=tmp_path / "ws",
        database_url=store_url,
        retrain_min_rows=1,
        reward_window_s=3600.0,
    )
    spec = pipeline.run_step(
        "plan_run",
        {"window_days": 1},
        run_key="ahead",
        interval_end=now + 50 * MINUTE,
        settings=settings,
    )
    assert datetime.fromisoformat(RunSpec.from_xcom(spec).as_of) <= datetime.now(UTC)
    replay = refs.ReplayRef.from_xcom(pipeline.run_step("extract_replay", spec))
    assert pd.read_parquet(replay.path)["event_id"].tolist() == [old.event_id]


# ---------------------------------------------------------------------- typed references
def test_step_references_round_trip_and_refuse_unknown_or_missing_keys() -> None:
    ref = refs.RegisteredRef(
        version="3", model_name="m", run_key="r", created=True, rows=10, metrics="/x.json"
    )
    data = ref.to_xcom()
    assert json.loads(json.dumps(data)) == data
    assert refs.RegisteredRef.from_xcom(data) == ref
    with pytest.raises(ValueError, match=r"RegisteredRef has unknown keys \['colour'\]"):
        refs.RegisteredRef.from_xcom({**data, "colour": "red"})
    with pytest.raises(ValueError, match=r"missing keys \['version'\]"):
        refs.RegisteredRef.from_xcom({k: v for k, v in data.items() if k != "version"})
    with pytest.raises(TypeError, match="RegisteredRef must be a mapping; got list"):
        refs.RegisteredRef.from_xcom([])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name must be one of plan_run"):
        pipeline.run_step("deploy")


def test_what_the_dag_files_import_stays_cheap() -> None:
    """The form, the step table, the run spec and the references load no torch, MLflow,
    pandas or SQLAlchemy: the DAG files read them at every parse."""
    import subprocess
    import sys

    heavy = ["torch", "mlflow", "pandas", "sqlalchemy", "great_expectations", "matplotlib"]
    code = (
        "import sys, json, training.form, training.pipeline, training.refs, "
        "training.runspec, training.promotion; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert json.loads(out.stdout) == []
