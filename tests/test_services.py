"""The external services the production path uses, and the skip-or-fail switch for them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.postgres
def test_postgresql_round_trip(postgres_url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_url)
    table = f"banditops_probe_{uuid.uuid4().hex[:8]}"
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(f"CREATE TEMPORARY TABLE {table} (k text primary key, v double precision)")
            )
            conn.execute(
                sa.text(f"INSERT INTO {table} VALUES (:k, :v)"),
                [{"k": "a", "v": 0.25}, {"k": "b", "v": 0.75}],
            )
            total = conn.execute(sa.text(f"SELECT sum(v) FROM {table}")).scalar_one()
        assert total == pytest.approx(1.0)
    finally:
        engine.dispose()


@pytest.mark.redis
def test_redis_round_trip(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    key = f"banditops:probe:{uuid.uuid4().hex}"
    try:
        client.set(key, "1.5", ex=30)
        assert float(client.get(key) or 0) == 1.5
    finally:
        client.delete(key)
        client.close()


@pytest.mark.parametrize(
    ("require", "expected_rc", "outcome"), [("0", 0, "1 skipped"), ("1", 1, "1 error")]
)
def test_missing_service_skips_on_a_laptop_and_fails_in_ci(
    tmp_path: Path, require: str, expected_rc: int, outcome: str
) -> None:
    probe = tmp_path / "test_probe.py"
    probe.write_text(
        textwrap.dedent(
            """
            def test_needs_postgres(postgres_url):
                pass
            """
        )
    )
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    env = {
        **os.environ,
        "BANDITOPS_REQUIRE_SERVICES": require,
        "BANDITOPS_TEST_POSTGRES_URL": "postgresql+psycopg2://nobody@127.0.0.1:9/none",
    }
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(probe)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == expected_rc, out.stdout
    assert outcome in out.stdout
    assert (
        "PostgreSQL is not reachable at postgresql+psycopg2://nobody@127.0.0.1:9/none" in out.stdout
    )
