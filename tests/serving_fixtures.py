"""Fixtures of the serving and store tests; test modules load them with
``pytest_plugins = ["tests.serving_fixtures"]``.

* ``store_url``: an empty event-store database, once on SQLite (a file in ``tmp_path``)
  and once on PostgreSQL (a fresh database created for the test and dropped after it;
  skipped without a server, failing in CI — see ``tests/conftest.py``).
* ``engine``: ``store_url`` migrated to the current schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from eventstore.engine import make_engine
from eventstore.migrate import upgrade
from eventstore.scratch import scratch_postgres_database


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty event-store database: SQLite, then PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'events.db'}"
        return
    server = request.getfixturevalue("postgres_url")
    with scratch_postgres_database(server, prefix="banditops_test") as url:
        yield url


@pytest.fixture
def engine(store_url: str) -> Iterator[sa.Engine]:
    """``store_url`` upgraded to the current schema."""
    eng = make_engine(store_url)
    upgrade(eng)
    yield eng
    eng.dispose()
