"""Throw-away PostgreSQL databases, for tests and benchmarks that need a real, empty
event store and must leave the server as they found it."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

from sqlalchemy import create_engine, make_url, text

#: The local PostgreSQL server the tests and benchmarks use (this machine's, CI's),
#: unless ``BANDITOPS_TEST_POSTGRES_URL`` names another.
LOCAL_POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
#: The local Redis database the Celery tests use, unless ``BANDITOPS_TEST_REDIS_URL``.
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/15"


def postgres_test_url() -> str:
    """The PostgreSQL server for tests and benchmarks (``BANDITOPS_TEST_POSTGRES_URL``)."""
    return os.environ.get("BANDITOPS_TEST_POSTGRES_URL", LOCAL_POSTGRES_URL)


def redis_test_url() -> str:
    """The Redis database for the Celery tests (``BANDITOPS_TEST_REDIS_URL``)."""
    return os.environ.get("BANDITOPS_TEST_REDIS_URL", LOCAL_REDIS_URL)


@contextlib.contextmanager
def scratch_postgres_database(server_url: str, prefix: str = "banditops_scratch") -> Iterator[str]:
    """Create an empty database on the server of ``server_url``; yield its URL; drop it
    (``WITH (FORCE)``: connections left open by a killed process do not block it)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
