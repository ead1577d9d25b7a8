"""``bandit_retrain`` with PostgreSQL as Airflow's metadata database (the production
setup), through the real CLI in a fresh process: ``airflow db migrate``, ``airflow dags
reserialize`` and ``airflow dags test`` (which runs ``dag.test()``). Skipped with the
reason on a laptop without a server; mandatory in CI (``BANDITOPS_REQUIRE_SERVICES=1``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from training.pipeline import RETRAIN_STEPS

pytest_plugins = ["tests.airflow_support"]
pytestmark = pytest.mark.postgres


def test_nightly_run_with_postgresql_metadata(
    postgres_url: str, airflow_home: Any, event_store: str, dagtools: Any, tmp_path: Path
) -> None:
    if importlib.util.find_spec("asyncpg") is None:
        reason = (
            "Airflow's async engine on a PostgreSQL metadata DB needs the asyncpg driver "
            "(pip install 'asyncpg>=0.30')"
        )
        if os.environ.get("BANDITOPS_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    from eventstore.scratch import scratch_postgres_database
    from modelregistry.registry import ModelRegistry

    airflow = Path(sys.executable).with_name("airflow")
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with scratch_postgres_database(postgres_url, prefix="banditops_airflow") as url:
        env = {
            **os.environ,
            **airflow_home.env,
            "AIRFLOW_HOME": str(tmp_path / "home"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url,
            "BANDITOPS_DATABASE_URL": event_store,
            "BANDITOPS_MLFLOW_TRACKING_URI": tracking_uri,
            "BANDITOPS_RUNS_DIR": str(tmp_path / "runs"),
        }
        conf = json.dumps({**dagtools.GOOD_RUN, "n_resamples": 50})
        for args in (
            ["db", "migrate"],
            ["dags", "reserialize"],
            ["dags", "test", "bandit_retrain", "--conf", conf],
        ):
            out = subprocess.run(
                [str(airflow), *args], env=env, capture_output=True, text=True, timeout=400
            )
            assert out.returncode == 0, f"airflow {args}:\n{(out.stdout + out.stderr)[-4000:]}"
        from tests.airflow_support import RETRAIN_RUNS, metadata_rows  # a plugin: load it first

        runs, tasks = metadata_rows(
            url,
            RETRAIN_RUNS,
            "SELECT task_id, state FROM task_instance WHERE dag_id = 'bandit_retrain'",
        )
    assert [state for _, state in runs] == ["success"]
    states = dict(tasks)  # shards = 1: the mapped shard tasks expand to nothing
    assert {states.pop("shard_statistics"), states.pop("shard_evaluation")} == {"skipped"}
    # every unmapped step of the pipeline ran (the mapped shard steps expand to nothing)
    unmapped = [step for step in RETRAIN_STEPS if step.mapped is None]
    assert set(states.values()) == {"success"} and len(states) == len(unmapped)
    version = ModelRegistry(tracking_uri).find_by_run_key(runs[0][0])
    assert version is not None and {"staging", "production"} <= set(version.aliases)
