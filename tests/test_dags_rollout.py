"""``bandit_rollout`` run for real by Airflow (``dag.test()``): its first run starts the
rollout of the gate's ``@staging`` version, the decision service (real HTTP) serves it to
5 % of the users at its next poll, and a later run rolls the worse candidate back once
the evidence is there. ``bandit_rollout_stop`` stops the next rollout at once, with no
approval to wait for (recorded ``stop`` with who triggered it and why)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from eventstore.engine import make_engine
from eventstore.migrate import upgrade
from eventstore.rollouts import current_rollout, latest_rollout, rollout_history
from tests.rollout_support import MODEL, live_service, register

pytest_plugins = ["tests.airflow_support"]
WINDOW_S = 0.5
# Airflow's in-process execution API imports starlette's TestClient, which warns that
# httpx2 is preferred (the other DAG tests import it earlier, under the same filter)
pytestmark = pytest.mark.filterwarnings(
    "ignore:Using `httpx` with:starlette.exceptions.StarletteDeprecationWarning"
)


@pytest.fixture
def rollout_env(airflow_home: Any, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The session's Airflow home, with this test's own event store and registry and
    tiny stage minimums."""
    env = {
        "BANDITOPS_DATABASE_URL": f"sqlite:///{tmp_path / 'events.db'}",
        "BANDITOPS_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "BANDITOPS_ROLLOUT_MIN_STAGE_S": "0",
        "BANDITOPS_ROLLOUT_MIN_SAMPLES": "30",
        "BANDITOPS_ROLLOUT_DESIGN_N": "100",
        "BANDITOPS_ROLLOUT_MARGIN": "0.02",
        # a step counts the decisions whose reward window has closed
        "BANDITOPS_REWARD_WINDOW_S": str(WINDOW_S),
    }
    airflow_home.ready()
    engine = make_engine(env["BANDITOPS_DATABASE_URL"])
    upgrade(engine)
    engine.dispose()
    with airflow_home.applied(**env):
        yield env


def test_rollout_dag_starts_then_rolls_back_a_worse_candidate(
    rollout_env: dict[str, str], dagtools: Any, tmp_path: Path
) -> None:
    from modelregistry.registry import ModelRegistry
    from training.settings import PipelineSettings

    settings = PipelineSettings()
    registry = ModelRegistry.from_settings(settings)
    production = register(registry, "uniform", tmp_path, "production")
    registry.promote(production, by="test", reason="the first production")
    worse = register(registry, "worse", tmp_path, "worse")
    registry.record_gate(worse, True, ["offline gate passed (test)"])  # → @staging
    engine = make_engine(settings.store_url)
    when = datetime.now(UTC)

    first = dagtools.run_dag("bandit_rollout", when=when)
    assert first.state == "success" and first.tasks == {"step": "success"}, first
    started = current_rollout(engine, MODEL)
    assert started is not None and (started.version, started.share) == (worse, 0.05)

    rng = np.random.default_rng(11)
    runs = 1
    with live_service(tmp_path / "service", settings.store_url, settings.tracking_uri) as svc:
        assert svc.poll()["candidate_share"] == 0.05  # the replica follows at its poll
        while current_rollout(engine, MODEL) is not None and runs < 6:
            svc.traffic(300, rng)
            time.sleep(WINDOW_S)  # the batch's reward windows close
            run = dagtools.run_dag("bandit_rollout", when=when + timedelta(minutes=10 * runs))
            assert run.state == "success", run
            runs += 1
        assert svc.poll()["candidate"] is None
    ended = latest_rollout(engine, MODEL)
    assert ended is not None and ended.status == "rolled_back" and ended.stage_index == 0
    steps = rollout_history(engine, MODEL, rollout_id=ended.id)
    assert steps[0].action == "rollback" and steps[-1].action == "start"
    assert steps[0].ci_high is not None and steps[0].ci_high < -0.02
    assert {s.action for s in steps[1:-1]} <= {"hold"}
    assert registry.by_alias("staging") is None
    assert registry.get(worse).tags["rollout_status"] == "rolled_back"

    # the human path: a new rollout, stopped at once through bandit_rollout_stop
    equal = register(registry, "equal", tmp_path, "equal")
    registry.record_gate(equal, True, ["offline gate passed (test)"])
    assert dagtools.run_dag("bandit_rollout", when=when + timedelta(hours=2)).state == "success"
    assert current_rollout(engine, MODEL) is not None
    stop_at = datetime.now(UTC)
    # a stop asked for another rollout than the one running stops nothing
    conf = {"version": str(int(equal) + 1), "reason": "the wrong one"}
    run = dagtools.run_dag("bandit_rollout_stop", conf, when=stop_at)
    assert run.state == "failed" and current_rollout(engine, MODEL) is not None
    conf = {"version": equal, "reason": "stop it"}
    run = dagtools.run_dag("bandit_rollout_stop", conf, when=stop_at + timedelta(seconds=1))
    assert run.state == "success", run.tasks
    stopped = latest_rollout(engine, MODEL)
    assert stopped is not None and stopped.status == "stopped"
    assert stopped.reason.startswith("stopped by ") and stopped.reason.endswith(": stop it")
    assert registry.get(equal).tags["rollout_action"] == "stop"
    staging = registry.by_alias("staging")
    assert staging is not None and staging.version == equal  # a person may still promote it
    engine.dispose()
