"""Fixtures and helpers of the DAG tests; test modules load them with
``pytest_plugins = ["tests.airflow_support"]``.

One Airflow home per test session (SQLite metadata, this repo's ``dags/``, examples off),
migrated and serialized once by the real CLI (``airflow db migrate``, ``airflow dags
reserialize``) before anything imports Airflow in this process; the ``BANDITOPS_*``
environment of the pipelines points at a seeded event store and a SQLite MLflow registry
in the same temp folder. ``dag.test()`` then runs every task for real, in process.

* ``airflow_home``: the home and the environment above (session, an
  :class:`AirflowSession`; the environment is applied per test, never left behind).
* ``event_store``: a SQLite event store filled by simulated traffic through the real
  decision service (session), seeded while the Airflow CLI migrates.
* ``pipeline_env``: a test that runs DAGs runs in that environment.
* ``first_retrain`` / ``second_retrain``: the nightly DAG run once with a good candidate
  (``auto_promote``) and once with a candidate made worse on purpose (session; they share
  the registry, in this order).
* ``dagtools``: this module, for the helpers below (test modules must not import it:
  a module loaded as a plugin after a plain import escapes pytest's assertion rewriting):
  :func:`run_dag`, :func:`approving` (a human answering an approval through Airflow's
  Human-in-the-loop REST API from another thread), :func:`copy_store`, :func:`registry`.

Tests that use these fixtures get :data:`THIRD_PARTY_WARNINGS` as ``filterwarnings`` marks
(:func:`pytest_collection_modifyitems`), which also cover the session fixtures they set up,
and one ``xdist_group`` (:data:`AIRFLOW_HOME_GROUP`): one pytest-xdist worker runs them all,
so the session fixtures are set up once per test run.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DAGS = ROOT / "dags"
REVIEWER = "reviewer"
#: What the first nightly run trains (fast, and better than the uniform logger).
GOOD_RUN = {
    "algorithm": "shared_linucb",
    "policy_options": {"alpha": 0.5, "interactions": True},
    "min_rows": 500,
    "n_resamples": 200,
    "min_ess": 30.0,
    "auto_promote": True,
}
#: The same with a prior so strong that the head learns nothing: the gate must reject it.
WORSE_RUN = {
    **GOOD_RUN,
    "policy_options": {"alpha": 0.5, "interactions": True, "lambda_prior": 1e6},
}

#: Third-party warnings raised while Airflow runs tasks in process (none comes from
#: banditops code).
THIRD_PARTY_WARNINGS = [
    # Great Expectations imports the regex internals Python 3.11 deprecated
    "ignore:module 'sre_constants' is deprecated:DeprecationWarning",
    "ignore:module 'sre_parse' is deprecated:DeprecationWarning",
    # MLflow compares an input example's columns with a range (pandas 3 deprecates it)
    "ignore:Operation with range is deprecated:DeprecationWarning",
    # Airflow's in-process execution API (dag.test) imports Starlette's TestClient, which
    # prefers httpx2 (the first DAG test of a session that served no request through one)
    "ignore:Using `httpx` with:starlette.exceptions.StarletteDeprecationWarning",
]


#: the retrain DAG's runs in the Airflow metadata database
RETRAIN_RUNS = "SELECT run_id, state FROM dag_run WHERE dag_id = 'bandit_retrain'"


def metadata_rows(url: str, *queries: str) -> list[list[Any]]:
    """The rows of each SQL query against the Airflow metadata database at ``url``."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [list(conn.execute(sa.text(query)).all()) for query in queries]
    finally:
        engine.dispose()


#: the ``xdist_group`` of the tests that use the Airflow home: one process runs them all,
#: so the session fixtures above (migrate, seed, the two nightly runs) run once for them,
#: not once per pytest-xdist worker
AIRFLOW_HOME_GROUP = "airflow_home"
#: modules left out of the group: the Celery test runs Airflow processes of its own for
#: minutes and is timing-sensitive on a loaded machine, so it keeps its place in the run
#: (among the suite's lighter tests) rather than run early, beside the demo's Airflow
UNGROUPED = ("tests/test_scale_celery.py",)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Filter :data:`THIRD_PARTY_WARNINGS` in the tests that use the Airflow home, and put
    them (but :data:`UNGROUPED`) in :data:`AIRFLOW_HOME_GROUP`."""
    for item in items:
        if "airflow_home" in getattr(item, "fixturenames", ()):
            for spec in THIRD_PARTY_WARNINGS:
                item.add_marker(pytest.mark.filterwarnings(spec))
            if item.nodeid.split("::")[0] not in UNGROUPED:
                item.add_marker(pytest.mark.xdist_group(name=AIRFLOW_HOME_GROUP))


@pytest.fixture(scope="session")
def dagtools() -> Any:
    """This module: the helpers of the DAG tests."""
    return sys.modules[__name__]


@dataclass(frozen=True)
class DagRunResult:
    """What a ``dag.test()`` run left: its id, state and each task's state and tries."""

    dag_id: str
    run_id: str
    logical_date: datetime
    state: str
    tasks: dict[str, str]
    tries: dict[str, int]


# ---------------------------------------------------------------------- Airflow home
@dataclass
class AirflowSession:
    """The session's Airflow home and the environment every DAG test runs in.

    The environment is applied per test (:meth:`applied`), never left in ``os.environ``
    for the rest of the test session. ``airflow db migrate`` and ``airflow dags
    reserialize`` run in the background while the event store is seeded; :meth:`ready`
    waits for them.
    """

    home: Path
    env: dict[str, str]
    setup: subprocess.Popen[bytes] | None = None

    @property
    def setup_log(self) -> Path:
        return self.home / "setup.log"

    def ready(self) -> None:
        """Wait for the migrated, serialized metadata DB (fail with the CLI's output)."""
        if self.setup is None:
            return
        code, self.setup = self.setup.wait(timeout=300), None
        if code != 0:
            output = self.setup_log.read_text()[-4000:]
            pytest.fail(f"airflow db migrate / dags reserialize failed:\n{output}")

    @contextmanager
    def applied(self, **extra: str) -> Iterator[None]:
        """The environment (plus ``extra``), with no other ``BANDITOPS_*`` setting."""
        values = {**self.env, **extra}
        with pytest.MonkeyPatch.context() as mp:
            for key in list(os.environ):
                if key.startswith("BANDITOPS_") and key not in values and key not in KEEP:
                    mp.delenv(key)
            for key, value in values.items():
                mp.setenv(key, value)
            yield


#: ``BANDITOPS_*`` variables of the test harness itself (``tests/conftest.py``).
KEEP = ("BANDITOPS_REQUIRE_SERVICES", "BANDITOPS_TEST_POSTGRES_URL", "BANDITOPS_TEST_REDIS_URL")


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowSession]:
    """An Airflow home (SQLite metadata) being migrated and serialized by the real CLI,
    and the pipelines' ``BANDITOPS_*`` environment (registry, runs folder, 1 s reward
    window, one retry after 1 s)."""
    if "airflow.settings" in sys.modules:
        pytest.fail(
            "Airflow was imported before the airflow_home fixture configured it; import "
            "airflow only inside tests or fixtures that use airflow_home."
        )
    root = tmp_path_factory.mktemp("airflow")
    home = root / "home"
    home.mkdir()
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{REVIEWER}:admin",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(64),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "BANDITOPS_WORKSPACE": str(root / "workspace"),
        "BANDITOPS_MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "BANDITOPS_DATABASE_URL": f"sqlite:///{root / 'events.db'}",
        "BANDITOPS_RUNS_DIR": str(root / "runs"),
        "BANDITOPS_REWARD_WINDOW_S": "1",
        "BANDITOPS_RETRIES": "1",
        "BANDITOPS_RETRY_DELAY_S": "1",
        "BANDITOPS_SQLITE_SYNCHRONOUS": "NORMAL",
        # the gate the test runs' form asks for: auto_promote needs the configured one,
        # and the settings' leave to promote (a form cannot turn it on)
        "BANDITOPS_RETRAIN_MIN_ESS": str(GOOD_RUN["min_ess"]),
        "BANDITOPS_RETRAIN_AUTO_PROMOTE": "true",
    }
    airflow = Path(sys.executable).with_name("airflow")
    session = AirflowSession(home, env)
    with session.applied(), session.setup_log.open("wb") as log:
        session.setup = subprocess.Popen(
            ["/bin/sh", "-c", f'"{airflow}" db migrate && "{airflow}" dags reserialize'],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
        )
    try:
        yield session
    finally:
        if session.setup is not None:  # no test needed the metadata DB after all
            session.setup.wait(timeout=300)


@pytest.fixture
def pipeline_env(airflow_home: AirflowSession, event_store: str) -> Iterator[AirflowSession]:
    """The test runs in the session's environment (reading the seeded event store)."""
    airflow_home.ready()
    with airflow_home.applied():
        yield airflow_home


# ---------------------------------------------------------------------- event store
def traffic_environment() -> Any:
    """The simulated catalogue and click model of the seeded store: 12 items, 6 offered
    per request, 4 user and 3 item features, user × item interactions strong enough that
    a policy trained on 1500 uniform decisions clearly beats uniform (CTR ≈ 0.30 uniform,
    ≈ 0.67 for the best item of each request)."""
    from bandit_core.envs import LogisticClickEnvironment

    return LogisticClickEnvironment.make(
        np.random.default_rng(7),
        n_items=12,
        dim_user=4,
        dim_arm=3,
        n_candidates=6,
        bias=-1.5,
        interaction_scale=3.0,
    )


@pytest.fixture(scope="session")
def event_store(airflow_home: AirflowSession) -> str:
    """``BANDITOPS_DATABASE_URL``: a SQLite event store with 1500 decisions and their
    clicks, served by the real decision service (uniform fallback, no model yet)."""
    from eventstore.engine import make_engine
    from eventstore.migrate import upgrade
    from serving.app import create_app
    from serving.settings import Settings
    from serving.traffic import simulate_traffic
    from tests.serving_helpers import TEST_TOKEN, make_client

    url = airflow_home.env["BANDITOPS_DATABASE_URL"]
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    settings = Settings(
        workspace=airflow_home.home.parent / "service",
        database_url=url,
        mlflow_tracking_uri=None,  # the fallback serves; no registry to poll
        sqlite_synchronous="NORMAL",
        poll_interval_s=0.2,
        seed=1,  # the logged decisions, hence every number the DAGs compute, are fixed
        api_token=TEST_TOKEN,  # make_client sends it
    )
    with make_client(create_app(settings)) as client:
        stats = simulate_traffic(
            client, traffic_environment(), 1500, np.random.default_rng(1), n_users=200
        )
    assert stats.errors == 0, stats.error_samples
    time.sleep(1.1)  # every reward window (1 s) closed before the first run
    return url


def copy_store(url: str, dest: Path) -> str:
    """A consistent copy of a SQLite event store (the backup API includes its WAL)."""
    source = sqlite3.connect(url.removeprefix("sqlite:///"))
    target = sqlite3.connect(dest)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    return f"sqlite:///{dest}"


# ---------------------------------------------------------------------- running DAGs
def load_dag(dag_id: str) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag(dag_id)


def run_dag(
    dag_id: str, conf: dict[str, Any] | None = None, when: datetime | None = None
) -> DagRunResult:
    """``dag.test()`` of one run at ``when`` (default now). The run id follows from
    ``when``: running again with the same ``when`` re-runs the same run."""
    when = when or datetime.now(UTC)
    dag = load_dag(dag_id)
    run = dag.test(logical_date=when, run_after=when, run_conf=conf or {})
    tis = run.get_task_instances()
    return DagRunResult(
        dag_id=dag_id,
        run_id=run.run_id,
        logical_date=when,
        state=str(run.state),
        tasks={ti.task_id: str(ti.state) for ti in tis},
        tries={ti.task_id: int(ti.try_number) for ti in tis},
    )


@contextmanager
def approving(
    dag_id: str, when: datetime, choice: str, comment: str, task_id: str = "approve"
) -> Iterator[dict[str, Any]]:
    """Answer the approval task of the run at ``when`` as :data:`REVIEWER`, through the
    HITL REST API of Airflow's core API (in process), from a thread — ``dag.test()`` keeps
    the run waiting in the main thread until the answer lands in the metadata DB.

    Yields a dict that receives the API's answers (``detail``: the GET, ``response``: the
    PATCH) or the ``error`` that kept the thread from answering; in that case the thread
    marks the run failed through the API, so ``dag.test()`` returns instead of waiting.
    """
    from airflow.api_fastapi.app import create_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    from tests.serving_helpers import make_client

    client = make_client(create_app(apps="core"))
    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=REVIEWER, role="admin"))
    client.headers["Authorization"] = f"Bearer {token}"
    run_url = f"/api/v2/dags/{dag_id}/dagRuns/manual__{when.isoformat()}"
    url = f"{run_url}/taskInstances/{task_id}/-1/hitlDetails"
    answers: dict[str, Any] = {}
    stop = threading.Event()

    def answer() -> None:
        deadline = time.monotonic() + 90
        last = None
        while not stop.is_set() and time.monotonic() < deadline:
            # answer only once the task is parked: a response recorded while the task is
            # still deferring is lost (its own move to awaiting_input, milliseconds later,
            # overwrites the state the answer set, and dag.test() then waits forever;
            # seen in CI)
            task = client.get(f"{run_url}/taskInstances/{task_id}")
            if task.status_code != 200 or task.json().get("state") != "awaiting_input":
                time.sleep(0.3)
                continue
            last = client.get(url)
            if last.status_code == 200:
                answers["detail"] = last.json()
                reply = client.patch(
                    url, json={"chosen_options": [choice], "params_input": {"comment": comment}}
                )
                answers["response"] = (reply.status_code, reply.json())
                return
            time.sleep(0.3)
        answers["error"] = f"no approval request to answer; last GET: {last and last.text}"

    def guarded() -> None:
        try:
            answer()
        except Exception as exc:  # reported to the test through `answers`
            answers["error"] = repr(exc)
        if "error" in answers or answers.get("response", (0,))[0] != 200:
            client.patch(run_url, json={"state": "failed"})

    thread = threading.Thread(target=guarded, name="approver", daemon=True)
    thread.start()
    try:
        yield answers
    finally:
        stop.set()
        thread.join(30)


def registry() -> Any:
    """The session's registry (``BANDITOPS_MLFLOW_TRACKING_URI``)."""
    from modelregistry.registry import ModelRegistry

    return ModelRegistry(os.environ["BANDITOPS_MLFLOW_TRACKING_URI"])


def version_of(run_id: str) -> Any:
    """The registered version of a run key (None when the run registered nothing)."""
    return registry().find_by_run_key(run_id)


# ---------------------------------------------------------------------- retrain runs
@pytest.fixture(scope="session")
def first_retrain(airflow_home: AirflowSession, event_store: str) -> DagRunResult:
    """The nightly DAG with a good candidate and ``auto_promote``: version 1 in production."""
    airflow_home.ready()
    with airflow_home.applied():
        return run_dag("bandit_retrain", GOOD_RUN, when=datetime.now(UTC))


@pytest.fixture(scope="session")
def second_retrain(airflow_home: AirflowSession, first_retrain: DagRunResult) -> DagRunResult:
    """A candidate made worse on purpose, one second later: registered, then rejected by
    the gate against version 1."""
    with airflow_home.applied():
        return run_dag(
            "bandit_retrain", WORSE_RUN, when=first_retrain.logical_date + timedelta(seconds=1)
        )
