"""The sharded ``bandit_retrain`` run through Airflow's CeleryExecutor.

Real processes on loopback: a fresh PostgreSQL database for Airflow's metadata and the
Celery result backend, the machine's Redis as the broker (a queue of its own per run),
``airflow api-server`` (the execution API the workers report to), one
``airflow celery worker`` and ``airflow dags test --use-executor`` (the DAG run loop of
``dag.test()`` handing every task to the executor instead of running it in process).
The worker alone runs tasks; it reports a hostname of its own
(``AIRFLOW__CORE__HOSTNAME_CALLABLE``) so the task instances show where they ran, and
every task leaves a row in Celery's result backend. Skipped with the reason without the
servers; mandatory in CI (``BANDITOPS_REQUIRE_SERVICES=1``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from training.pipeline import RETRAIN_STEPS

pytest_plugins = ["tests.airflow_support"]
pytestmark = [pytest.mark.postgres, pytest.mark.redis]

AIRFLOW = Path(sys.executable).with_name("airflow")
#: The worker's hostname callable (the API server and ``dags test`` keep the default).
WORKER_HOSTNAME = ("airflow.utils.net.get_host_ip_address", "127.0.0.1")


def importlib_missing(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is None
    except ModuleNotFoundError:
        return True


def _forget_queue(redis_url: str, queue: str) -> None:
    """Remove the run's queue and kombu's bindings of it from the shared Redis."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    finally:
        client.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A background process (its own process group), terminated at exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
                    proc.wait(timeout=10)


def _wait_for(
    what: str, check: Any, proc: subprocess.Popen[bytes], log: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        if check():
            return
        time.sleep(0.5)
    pytest.fail(f"{what} not ready after {timeout:.0f} s:\n{log.read_text()[-4000:]}")


def _api_up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/execution/health", timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


def test_sharded_retrain_runs_on_a_celery_worker(
    postgres_url: str,
    redis_url: str,
    airflow_home: Any,
    event_store: str,
    dagtools: Any,
    tmp_path: Path,
) -> None:
    if importlib_missing("celery") or importlib_missing("airflow.providers.celery"):
        reason = (
            "the CeleryExecutor needs apache-airflow-providers-celery and celery[redis] "
            "(pip install 'apache-airflow-providers-celery>=3.10' 'celery[redis]>=5.4')"
        )
        if os.environ.get("BANDITOPS_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    from eventstore.scratch import scratch_postgres_database
    from modelregistry.registry import ModelRegistry
    from ops.celery_env import celery_environment

    started = time.monotonic()
    port = _free_port()
    api = f"http://127.0.0.1:{port}"
    queue = f"banditops-test-{secrets.token_hex(4)}"
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with scratch_postgres_database(postgres_url, prefix="banditops_celery") as url:
        env = {
            **os.environ,
            **airflow_home.env,
            **celery_environment(
                metadata_url=url, broker_url=redis_url, api_url=api, concurrency=2
            ),
            "PATH": f"{AIRFLOW.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "AIRFLOW_HOME": str(tmp_path / "home"),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "BANDITOPS_DATABASE_URL": event_store,
            "BANDITOPS_MLFLOW_TRACKING_URI": tracking_uri,
            "BANDITOPS_RUNS_DIR": str(tmp_path / "runs"),
            "BANDITOPS_RETRAIN_QUEUE": queue,  # this run's own queue on the shared Redis
        }
        for args in (["db", "migrate"], ["dags", "reserialize"]):
            out = subprocess.run(
                [str(AIRFLOW), *args], env=env, capture_output=True, text=True, timeout=300
            )
            assert out.returncode == 0, f"airflow {args}:\n{(out.stdout + out.stderr)[-4000:]}"
        worker_env = {**env, "AIRFLOW__CORE__HOSTNAME_CALLABLE": WORKER_HOSTNAME[0]}
        api_log, worker_log = tmp_path / "api.log", tmp_path / "worker.log"
        api_args = [
            str(AIRFLOW),
            "api-server",
            "--apps",
            "execution",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        worker_args = [
            str(AIRFLOW),
            "celery",
            "worker",
            "--queues",
            queue,
            "--concurrency",
            "2",
            "--skip-serve-logs",
            "--without-gossip",
            "--without-mingle",
            "--celery-hostname",
            f"{queue}@%h",
        ]
        with (
            _process(api_args, env, api_log) as server,
            _process(worker_args, worker_env, worker_log) as worker,
        ):
            _wait_for("airflow api-server", lambda: _api_up(api), server, api_log, 120)
            _wait_for(
                "celery worker", lambda: "ready." in worker_log.read_text(), worker, worker_log, 120
            )
            conf = json.dumps({**dagtools.GOOD_RUN, "shards": 3})
            run = subprocess.run(
                [str(AIRFLOW), "dags", "test", "bandit_retrain", "--use-executor", "--conf", conf],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
        output = run.stdout + run.stderr
        assert run.returncode == 0, (
            f"dags test:\n{output[-4000:]}\nworker:\n{worker_log.read_text()[-4000:]}"
        )
        _forget_queue(redis_url, queue)
        from tests.airflow_support import RETRAIN_RUNS, metadata_rows  # a plugin: load it first

        runs, tis, celery = metadata_rows(
            url,
            RETRAIN_RUNS,
            "SELECT task_id, map_index, state, hostname, queue FROM task_instance "
            "WHERE dag_id = 'bandit_retrain'",
            "SELECT status, count(*) FROM celery_taskmeta GROUP BY status",
        )
        # a worker stores a task's Celery result after it told Airflow the task ended
        deadline = time.monotonic() + 60
        while sum(n for _, n in celery) < len(tis) and time.monotonic() < deadline:
            time.sleep(0.5)
            (celery,) = metadata_rows(
                url, "SELECT status, count(*) FROM celery_taskmeta GROUP BY status"
            )
    elapsed = time.monotonic() - started
    assert [state for _, state in runs] == ["success"]
    ran = [ti for ti in tis if ti.state == "success"]
    mapped = {
        task: sorted(ti.map_index for ti in ran if ti.task_id == task)
        for task in ("shard_statistics", "shard_evaluation")
    }
    assert mapped == {"shard_statistics": [0, 1, 2], "shard_evaluation": [0, 1]}, tis
    unmapped = [step for step in RETRAIN_STEPS if step.mapped is None]
    assert {ti.state for ti in tis} == {"success"} and len(tis) == len(unmapped) + 3 + 2
    # every task ran in the Celery worker: its hostname, its queue, one Celery result each
    assert {ti.hostname for ti in tis} == {WORKER_HOSTNAME[1]}, tis
    assert {ti.queue for ti in tis} == {queue}
    assert dict(celery) == {"SUCCESS": len(tis)}
    worker_text = worker_log.read_text()
    for task in {ti.task_id for ti in tis}:
        assert f"task_id='{task}'" in worker_text, task
    # the reduce produced a sharded evaluation and the version went through the gate
    version = ModelRegistry(tracking_uri).find_by_run_key(runs[0][0])
    assert version is not None and {"staging", "production"} <= set(version.aliases)
    run_dir = Path(json.loads(next((tmp_path / "runs").glob("*/spec.json")).read_text())["run_dir"])
    report = json.loads((run_dir / "evaluation" / "evaluation.json").read_text())
    assert report["candidate"]["estimates"]["dr"]["n_resamples"] == 0  # normal approximation
    assert sorted(p.name for p in (run_dir / "shards").glob("*.npz")) == [
        "holdout-0000.npz",
        "holdout-0001.npz",
        "train-0000.npz",
        "train-0001.npz",
        "train-0002.npz",
    ]
    print(f"celery retrain test: {elapsed:.0f} s")
