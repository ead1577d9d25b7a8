"""Airflow settings for the scale-out path: the CeleryExecutor on Redis and PostgreSQL.

Airflow reads its configuration from ``AIRFLOW__<SECTION>__<KEY>`` variables; every
process of the deployment — scheduler (or ``airflow dags test --use-executor``), API
server, DAG processor, Celery workers — must see the same ones:

* ``[core] executor = CeleryExecutor``; tasks are queued in Redis (the broker) and run by
  ``airflow celery worker`` processes on any machine that reaches Redis and the API
  server;
* ``[database] sql_alchemy_conn``: PostgreSQL metadata (SQLite cannot be shared by
  processes on several machines);
* ``[celery] result_backend``: the task states Celery reports, in PostgreSQL
  (``db+postgresql://…``);
* ``[core] execution_api_server_url``: Airflow 3 workers talk to the API server's
  execution API, never to the metadata database;
* the queue: a task goes to the Celery queue named by its ``queue`` (workers listen with
  ``--queues``); ``bandit_retrain`` takes it from ``BANDITOPS_RETRAIN_QUEUE``, so one
  queue per deployment keeps deployments sharing a Redis apart. (``[operators]
  default_queue`` does not do it in Airflow 3.3: the serialized DAG drops a queue equal
  to that default and the scheduler reads the missing field back as ``"default"``.)

The runs folder (``BANDITOPS_RUNS_DIR``), the event store and the MLflow registry must be
reachable from every worker: the tasks pass file paths to each other.
"""

from __future__ import annotations


def result_backend_url(sqlalchemy_url: str) -> str:
    """``db+postgresql+<driver>://…`` (Celery's database result backend) from a SQLAlchemy
    URL of the same database; the driver stays explicit (SQLAlchemy 2.1's default
    PostgreSQL driver is psycopg 3, the project's is psycopg2)."""
    scheme = sqlalchemy_url.split("://", 1)[0]
    if scheme.split("+", 1)[0] not in ("postgresql", "postgres"):
        raise ValueError(f"the result backend must be PostgreSQL; got {sqlalchemy_url!r}.")
    if "+" not in scheme:
        sqlalchemy_url = "postgresql+psycopg2://" + sqlalchemy_url.split("://", 1)[1]
    return "db+" + sqlalchemy_url


def celery_environment(
    *,
    metadata_url: str,
    broker_url: str,
    api_url: str,
    result_backend: str | None = None,
    concurrency: int = 4,
) -> dict[str, str]:
    """The ``AIRFLOW__*`` variables of a CeleryExecutor deployment.

    Parameters
    ----------
    metadata_url : str
        SQLAlchemy URL of the PostgreSQL metadata database.
    broker_url : str
        Redis URL of the Celery broker (``redis://host:6379/0``).
    api_url : str
        Base URL of the Airflow API server (``http://host:8080``).
    result_backend : str, optional
        Celery result backend; default: the metadata database (:func:`result_backend_url`).
    concurrency : int
        Task processes per worker.
    """
    if not metadata_url.startswith(("postgresql", "postgres")):
        raise ValueError(f"metadata_url must be a PostgreSQL URL; got {metadata_url!r}.")
    if not broker_url.startswith(("redis://", "rediss://")):
        raise ValueError(f"broker_url must be a Redis URL; got {broker_url!r}.")
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1; got {concurrency}.")
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": result_backend or result_backend_url(metadata_url),
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(concurrency),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": api_url.rstrip("/") + "/execution/",
    }
