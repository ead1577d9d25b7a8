"""DAG integrity: the folder imports with no errors, each file parses in under 2 s with
no database or network access, every DAG has its owner, tags, docs and schedule, and the
retrain form rejects invalid values the way the Airflow UI does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from ops.airflow_cli import DAG_IDS

pytest_plugins = ["tests.airflow_support"]

#: Parses DAG folders in a fresh interpreter with every socket connection, SQLite
#: connection and SQLAlchemy connection refused once Airflow itself is imported.
PARSE_WITHOUT_IO = """
import json, socket, sqlite3, sys, time
import sqlalchemy.engine
from airflow.dag_processing.dagbag import DagBag

def refuse(*args, **kwargs):
    raise RuntimeError("database or network access while parsing a DAG file")

socket.socket.connect = socket.socket.connect_ex = socket.create_connection = refuse
sqlite3.connect = refuse
sqlalchemy.engine.Engine.connect = sqlalchemy.engine.Engine.raw_connection = refuse
out = []
for folder in sys.argv[1:]:
    bag = DagBag(dag_folder=folder)
    out.append({
        "errors": {k: str(v)[-1500:] for k, v in bag.import_errors.items()},
        "dags": sorted(bag.dag_ids),
        "seconds": {s.file: s.duration.total_seconds() for s in bag.dagbag_stats},
    })
print(json.dumps(out))
"""


def _parse(folders: list[Path], env: dict[str, str]) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-c", PARSE_WITHOUT_IO, *map(str, folders)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result: list[dict[str, Any]] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_dag_folder_parses_fast_without_database_or_network(
    airflow_home: Any, dagtools: Any, tmp_path: Path
) -> None:
    # the guard is real: a DAG file that opens a database at parse time is reported
    leaking = tmp_path / "leaking"
    leaking.mkdir()
    (leaking / "leaky.py").write_text(
        "import sqlite3\nsqlite3.connect(':memory:')\n"
        "from airflow.sdk import dag\n\n@dag(schedule=None)\ndef leaky():\n    pass\n\nleaky()\n"
    )
    # a bare DAG parsed first takes Airflow's own first-parse costs (its SDK's imports),
    # which fell on whichever of ours came first (2.7 s on a loaded machine)
    warm = tmp_path / "warm"
    warm.mkdir()
    (warm / "bare.py").write_text(
        "from airflow.sdk import dag\n\n@dag(schedule=None)\ndef bare():\n    pass\n\nbare()\n"
    )
    _, parsed, leaky = _parse([warm, dagtools.DAGS, leaking], airflow_home.env)
    assert parsed["errors"] == {}
    assert parsed["dags"] == DAG_IDS
    assert set(parsed["seconds"]) == {f"{d}.py" for d in DAG_IDS}
    assert max(parsed["seconds"].values()) < 2.0, parsed["seconds"]
    assert leaky["dags"] == []
    assert "database or network access" in next(iter(leaky["errors"].values()))


@pytest.fixture(scope="module")
def bag(airflow_home: Any, dagtools: Any) -> Any:
    airflow_home.ready()
    with airflow_home.applied():
        from airflow.dag_processing.dagbag import DagBag

        return DagBag(dag_folder=str(dagtools.DAGS))


def test_every_dag_is_owned_tagged_documented_and_scheduled(bag: Any) -> None:
    assert sorted(bag.dag_ids) == DAG_IDS and not bag.import_errors
    for dag_id in DAG_IDS:
        dag = bag.get_dag(dag_id)
        assert "banditops" in dag.tags and len(dag.tags) >= 2, dag_id
        assert dag.doc_md and dag.doc_md.strip().startswith(f"### {dag_id}"), dag_id
        assert dag.catchup is False and dag.max_active_runs == 1, dag_id
        assert {task.owner for task in dag.tasks} == {"banditops"}, dag_id
    retrain, monitor = bag.get_dag("bandit_retrain"), bag.get_dag("bandit_monitor")
    # BANDITOPS_RETRAIN_SCHEDULE (nightly) or the monitor's drift asset
    assert type(retrain.timetable).__name__ == "AssetOrTimeSchedule"
    assert retrain.timetable.timetable.expression == "0 2 * * *"
    (drift,) = retrain.timetable.asset_condition.objects
    assert (drift.name, drift.uri) == (
        "banditops_feature_drift",
        "x-banditops://drift/banditops-policy",
    )
    assert [a.name for a in monitor.get_task("signal_drift").outlets] == [drift.name]
    assert monitor.schedule == "0 * * * *"  # hourly
    assert bag.get_dag("bandit_retention").schedule == "30 3 * * *"  # nightly
    assert bag.get_dag("bandit_promote").schedule is None  # manual only
    assert bag.get_dag("bandit_rollout").schedule == "*/10 * * * *"  # BANDITOPS_ROLLOUT_SCHEDULE
    # a run that hangs ends before the next is due, whatever the schedule
    assert bag.get_dag("bandit_rollout").dagrun_timeout == timedelta(minutes=9)
    assert monitor.dagrun_timeout == timedelta(minutes=54)
    assert bag.get_dag("bandit_retention").dagrun_timeout == timedelta(hours=2)
    # a promotion whose registry keeps a call open held every later promotion, rollback
    # and stop behind it (max_active_runs 1) for good: its tasks and run are bounded
    promote = bag.get_dag("bandit_promote")
    assert promote.dagrun_timeout == timedelta(hours=72, minutes=30)
    assert promote.get_task("gate_report").execution_timeout == timedelta(minutes=10)
    assert promote.get_task("move_alias").execution_timeout == timedelta(minutes=10)
    # a stop is its own DAG: it never queues behind a promotion's pending approval, and
    # waits for no approval of its own
    stop = bag.get_dag("bandit_rollout_stop")
    assert stop.schedule is None and [t.task_id for t in stop.tasks] == ["stop"]
    assert stop.get_task("stop").execution_timeout == timedelta(minutes=10)
    assert stop.dagrun_timeout == timedelta(minutes=30)
    for task in retrain.tasks:
        assert task.retries == 1 and task.retry_delay == timedelta(seconds=1)  # from settings
        assert task.retry_policy is not None
    assert {
        task.task_id: [a.name for a in task.outlets] for task in retrain.tasks if task.outlets
    } == {
        "extract_replay": ["banditops_replay"],
        "register_candidate": ["banditops_registered_model"],
    }


def test_a_run_times_out_before_the_next_one_is_due() -> None:
    """The rollout and monitor DAGs' timeouts were written by hand (9 and 50 minutes) for
    the default schedules: a rollout every 2 minutes kept a hung step for 4 of its runs."""
    from training.settings import run_timeout

    assert run_timeout("*/2 * * * *") == timedelta(seconds=108)
    assert run_timeout("0 2 * * 1-5") == timedelta(hours=21.6)  # the shortest gap: a day
    assert run_timeout("@hourly", longest=timedelta(minutes=30)) == timedelta(minutes=30)
    assert run_timeout("@once") == timedelta(days=1)


def test_retrain_wiring_follows_the_issue(bag: Any) -> None:
    dag = bag.get_dag("bandit_retrain")
    upstream = {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks}
    assert upstream["validate_features"] == ["extract_replay", "plan_run"]
    assert "validate_features" in upstream["train_network"]  # GX gates the training
    assert "validate_features" in upstream["register_candidate"]
    assert upstream["gate"] == ["evaluate_offline", "plan_run", "register_candidate"]
    assert upstream["promote"] == ["gate", "plan_run", "register_candidate"]
    approve = bag.get_dag("bandit_promote").get_task("approve")
    assert type(approve).__name__ == "ApprovalOperator"
    assert approve.defaults == ["Reject"]  # no answer in time counts as a rejection
    monitor = bag.get_dag("bandit_monitor")
    from monitoring.monitor import CHECKS

    assert {f"check_{name}" for name in CHECKS} <= set(monitor.task_ids)
    # the documentation an operator reads in the UI names every task of the graph
    assert [t for t in dag.task_ids if f"`{t}`" not in (dag.doc_md or "")] == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("min_rows", 0),
        ("window_days", 0),
        ("window_start", "2026-13-01"),
        ("algorithm", "random_forest"),
        ("tolerance", 1.0),
        ("n_resamples", 10),
        ("auto_promote", "yes"),
        ("policy_options", "alpha=1"),
    ],
)
def test_retrain_form_rejects_invalid_values(bag: Any, field: str, value: Any) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    param = bag.get_dag("bandit_retrain").params.get_param(field)
    with pytest.raises(ParamValidationError):
        param.resolve(value)


def test_forms_accept_their_defaults_and_valid_values(bag: Any) -> None:
    retrain = bag.get_dag("bandit_retrain").params
    retrain.validate()
    assert retrain.get_param("window_start").resolve("2026-11-01") == "2026-11-01"
    assert retrain.get_param("algorithm").resolve("shared_lints") == "shared_lints"
    promote = bag.get_dag("bandit_promote").params
    promote.validate()
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        promote.get_param("version").resolve("v2")
    with pytest.raises(ParamValidationError):
        promote.get_param("target").resolve("candidate")
    assert "stop_rollout" not in promote  # a stop is bandit_rollout_stop's, at once
    stop = bag.get_dag("bandit_rollout_stop").params
    stop.validate()
    assert stop.get_param("version").resolve("12") == "12"
    with pytest.raises(ParamValidationError):
        stop.get_param("version").resolve("v2")


def test_algorithm_choices_are_the_policy_registry() -> None:
    """The form offers every policy of the catalog and the champion–challenger run."""
    from bandit_core import POLICIES
    from training.settings import ALGORITHMS, AUTO

    assert sorted(ALGORITHMS) == sorted([AUTO, *POLICIES])


APPROVERS_OF_THE_PROMOTION = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
print(json.dumps(bag.dags["bandit_promote"].get_task("approve").assigned_users))
"""


def test_the_approval_is_assigned_to_the_configured_approvers(
    airflow_home: Any, dagtools: Any
) -> None:
    """BANDITOPS_PROMOTE_APPROVERS becomes the approval task's assigned users, the only
    ones Airflow lets answer it (unset: Airflow's rule, anyone who may act on the runs;
    the security helper's "User" role approved its own promotion of a version its gate
    had refused)."""
    answers = []
    for approvers in (None, '["ann", "bob"]'):
        env = {**os.environ, **airflow_home.env}
        if approvers is not None:
            env["BANDITOPS_PROMOTE_APPROVERS"] = approvers
        out = subprocess.run(
            [sys.executable, "-c", APPROVERS_OF_THE_PROMOTION, str(dagtools.DAGS)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        answers.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert answers[0] in (None, [])
    assert answers[1] == [{"id": "ann", "name": "ann"}, {"id": "bob", "name": "bob"}]


@pytest.mark.parametrize(
    ("text", "setting", "failing"),
    [
        # read by one DAG as it is parsed: that DAG's import error; the others load
        (
            '[pipelines]\nretention_schedule = "61 * * * *"\n',
            "retention_schedule",
            ["bandit_retention"],
        ),
        # read only by tasks: every DAG loads (the tasks that read it fail naming it)
        ("[pipelines]\nrollout_stages = [1.0]\n", "rollout_stages", []),
        # a core setting, read by every component: every DAG's import error
        ("[core]\nmodel_max_dim = 0\n", "model_max_dim", DAG_IDS),
    ],
)
def test_a_bad_setting_is_the_import_error_of_the_dags_that_read_it_in_one_line(
    text: str, setting: str, failing: list[str], airflow_home: Any, dagtools: Any, tmp_path: Path
) -> None:
    """A DAG's import error for a bad ``banditops.toml`` value was pydantic's ten lines,
    naming neither the file nor its table; it is the CLI's line (audit, stop 54). And one
    bad value unloaded all six DAGs, the hourly monitor with them, whichever DAG read it:
    only the DAGs whose files read it are unloaded now."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "banditops.toml").write_text(text, encoding="utf-8")
    env = {**airflow_home.env, "BANDITOPS_WORKSPACE": str(workspace)}
    (parsed,) = _parse([dagtools.DAGS], env)
    unloaded = sorted(failing)
    assert parsed["dags"] == sorted(set(DAG_IDS) - set(unloaded)), parsed
    assert sorted(Path(f).stem for f in parsed["errors"]) == unloaded, parsed["errors"]
    for error in parsed["errors"].values():
        last = error.strip().splitlines()[-1]
        assert last.startswith("training.settings.SettingsError: banditops settings: "), last
        assert setting in last and "banditops.toml [" in last, last
        assert "errors.pydantic.dev" not in error


def test_a_dag_file_reads_only_the_settings_it_names() -> None:
    """The list a DAG file gives :func:`dag_settings` is what decides whether a bad value
    unloads it: reading another setting is an error naming it (the DAG import tests)."""
    from training.settings import dag_settings

    settings = dag_settings("bandit_x", "owner")
    assert settings.owner and settings.model_name  # named, and a core setting
    with pytest.raises(AttributeError, match="bandit_x reads the setting 'rollout_stages'"):
        _ = settings.rollout_stages
