"""The event-store schema: the packaged Alembic migrations create exactly the models, on
SQLite and PostgreSQL, through the library call and through ``banditops db upgrade``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from typer.testing import CliRunner

from eventstore.engine import make_engine
from eventstore.migrate import MIGRATIONS, current_revision, head_revision, require_current, upgrade
from eventstore.schema import metadata
from ops.cli import app as cli

pytest_plugins = ["tests.serving_fixtures"]


def test_migrations_create_exactly_the_models(store_url: str) -> None:
    engine = make_engine(store_url)
    try:
        assert current_revision(engine) is None
        with pytest.raises(RuntimeError, match="banditops db upgrade"):
            require_current(engine)
        assert upgrade(engine) == head_revision()
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
        assert diff == []
        require_current(engine)
    finally:
        engine.dispose()


def test_db_upgrade_command_creates_then_is_idempotent(store_url: str) -> None:
    runner = CliRunner()
    for _ in range(2):
        result = runner.invoke(cli, ["db", "upgrade", "--url", store_url])
        assert result.exit_code == 0, result.output
        assert f"revision {head_revision()}" in result.output
    engine = make_engine(store_url)
    try:
        tables = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"decisions", "rewards", "head_snapshots", "alembic_version"} <= tables


def test_db_upgrade_uses_the_settings_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BANDITOPS_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.delenv("BANDITOPS_DATABASE_URL", raising=False)
    result = CliRunner().invoke(cli, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ws" / "banditops.db").exists()


def test_db_downgrade_goes_back_and_refuses_to_forget_a_pruned_catalog(store_url: str) -> None:
    """``banditops db downgrade REVISION`` (the README sent operators to Alembic, which
    refused to run the migrations without the engine banditops passes): it asks first,
    names a revision it does not ship or that is not behind, and past a prune refuses to
    drop the catalog's horizon unless told (the older release would list the catalog
    before it without the pruned versions, silently)."""
    runner = CliRunner()
    engine = make_engine(store_url)
    try:
        upgrade(engine)
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE catalog_horizon SET seq = 44"))

        def run(*args: str, stdin: str | None = None) -> tuple[int, str]:
            result = runner.invoke(cli, ["db", "downgrade", *args, "--url", store_url], input=stdin)
            return result.exit_code, " ".join(result.output.split())

        code, out = run("0007", stdin="n\n")
        assert code == 1 and "back the store up first" in out
        assert current_revision(engine) == head_revision()
        code, out = run("0007", "--yes")
        # refused at 0008, after 0009 went back: every step is one transaction, so the
        # store stays at the head (SQLite committed each step before)
        assert code == 1 and current_revision(engine) == head_revision()
        assert "service_leases" in sa.inspect(engine).get_table_names()
        assert "superseded before seq 44" in out and "--forget-pruned-catalog" in out, out
        code, out = run(f"{int(head_revision()) + 1:04d}", "--yes")  # one not shipped
        assert code == 1 and "revision must be one of 0001, 0002" in out, out
        code, out = run("9" * 5000)  # named, cut short, before anything is asked
        assert code == 1 and f"got '{'9' * 40}'." in out and "[y/N]" not in out, out
        code, out = run("0007", "--yes", "--forget-pruned-catalog")
        assert code == 0 and "is at revision 0007" in out, out
        assert "catalog_horizon" not in sa.inspect(engine).get_table_names()
        code, out = run("0007")  # refused before a person is asked to confirm it
        assert code == 1 and "not after '0007': a downgrade only goes back" in out, out
        assert "[y/N]" not in out
        assert upgrade(engine) == head_revision()  # and forward again: the horizon at 0
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT seq FROM catalog_horizon")).scalar() == 0
    finally:
        engine.dispose()


def test_migrations_ship_as_package_modules() -> None:
    """Everything ``upgrade`` needs is a module of an importable package (so it is in
    the wheel); no ``alembic.ini`` is involved."""
    assert (MIGRATIONS / "__init__.py").exists()
    assert (MIGRATIONS / "env.py").exists()
    versions = MIGRATIONS / "versions"
    assert (versions / "__init__.py").exists()
    assert sorted(p.name for p in versions.glob("0*.py")) == [
        "0001_initial_schema.py",
        "0002_catalog_slates.py",
        "0003_rollouts.py",
        "0004_snapshot_parts.py",
        "0005_snapshot_incarnation.py",
        "0006_propensity_se_rollout_production.py",
        "0007_rollout_ends_by.py",
        "0008_catalog_horizon.py",
        "0009_service_leases.py",
        "0010_reward_idempotency_key.py",
        "0011_reward_refused.py",
    ]


def test_snapshots_written_before_parts_existed_are_still_read(store_url: str) -> None:
    """0004 adds snapshot parts: a snapshot stored before it reads as it was written;
    going back to 0003 drops the snapshots in parts (0003's code would read only their
    last part) and keeps the others."""
    from datetime import UTC, datetime

    from alembic import command

    from eventstore.migrate import alembic_config
    from eventstore.records import SnapshotPart, SnapshotRow
    from serving.store.repository import EventStore, write_events

    engine = make_engine(store_url)
    try:
        upgrade(engine, "0003")
        now = datetime.now(UTC)
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO head_snapshots (model_version, created_at, last_reward_id, "
                    "applied_rewards, policy, state) VALUES ('v1', :t, 3, 3, 'uniform', :s)"
                ),
                {"t": now.isoformat(), "s": b"old state"},
            )
        upgrade(engine)
        old = EventStore(engine).latest_snapshot("v1")
        assert old is not None and (old.last_reward_id, old.state) == (3, b"old state")
        with engine.begin() as conn:
            write_events(
                conn,
                [
                    SnapshotPart("k" * 32, 0, now, b"new "),
                    SnapshotRow("v1", now, 5, 5, "uniform", b"state", "k" * 32),
                ],
            )
        new = EventStore(engine).latest_snapshot("v1")
        assert new is not None and (new.last_reward_id, new.state) == (5, b"new state")
        command.downgrade(alembic_config(engine), "0003")
        with engine.connect() as conn:
            left = conn.execute(sa.text("SELECT last_reward_id FROM head_snapshots")).all()
        assert [r[0] for r in left] == [3]
    finally:
        engine.dispose()


UPGRADE_AT = """
import sys, time
from eventstore.engine import make_engine
from eventstore.migrate import upgrade
url, at = sys.argv[1], float(sys.argv[2])
engine = make_engine(url)
time.sleep(max(at - time.time(), 0))
print(upgrade(engine))
"""


@pytest.mark.postgres
def test_replicas_upgrading_one_store_at_once_all_succeed(postgres_url: str) -> None:
    """Replicas started together each run ``db upgrade`` on start. Before, one of two
    failed (``UniqueViolation``: both created the tables) in each of three runs; now one
    upgrades while the others wait on an advisory lock, then find the store at head."""
    import subprocess
    import sys
    import time

    from eventstore.migrate import head_revision
    from eventstore.scratch import scratch_postgres_database

    with scratch_postgres_database(postgres_url, prefix="banditops_migrate") as url:
        at = time.time() + 3.0  # the interpreters and imports start well before
        racers = [
            subprocess.Popen(
                [sys.executable, "-c", UPGRADE_AT, url, str(at)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        done = [(p.wait(timeout=120), *p.communicate()) for p in racers]
    for code, out, err in done:
        assert code == 0, err[-2000:]
        assert out.strip() == head_revision()


def test_a_new_sqlite_store_is_its_owner_s_only(tmp_path: Path) -> None:
    """It holds users' contexts and hashes: it was created world-readable (0644, the
    security helper), and so were its -wal and -shm files."""
    path = tmp_path / "private" / "events.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        upgrade(engine)
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE IF NOT EXISTS t (x int)"))
            conn.execute(sa.text("INSERT INTO t VALUES (1)"))
            modes = {p.name: p.stat().st_mode & 0o777 for p in path.parent.iterdir() if p.is_file()}
    finally:
        engine.dispose()
    assert modes == {"events.db": 0o600, "events.db-wal": 0o600, "events.db-shm": 0o600}, modes


def test_a_store_of_another_release_is_named_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store a newer banditops migrated: ``db upgrade`` said only "Can't locate revision
    identified by '0099'", and ``serve --no-migrate`` on a store behind printed a 28-line
    traceback and exited 3 (PostgreSQL helper). Both now say what is wrong in one line."""
    import subprocess
    import sys

    from tests.serving_helpers import ROOT, TEST_TOKEN

    url = f"sqlite:///{tmp_path / 'events.db'}"
    engine = make_engine(url)
    upgrade(engine)
    # an upgrade to an older revision than the store's never goes back, and says so (it
    # printed "is at revision <head>" and exited 0: upgrade helper, stop 45)
    back = CliRunner().invoke(cli, ["db", "upgrade", "--url", url, "--revision", "0003"])
    assert back.exit_code == 1
    assert f"is at revision '{head_revision()}', after '0003': an upgrade never goes back" in (
        " ".join(back.output.split())
    )
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    newer = CliRunner().invoke(cli, ["db", "upgrade", "--url", url])
    assert newer.exit_code == 1
    text = " ".join(newer.output.split())
    assert (
        f"is at revision '0099', which this banditops does not ship (its newest is '{head_revision()}')"
        in text
    )
    behind = f"sqlite:///{tmp_path / 'empty.db'}"
    env = {
        **os.environ,
        "BANDITOPS_WORKSPACE": str(tmp_path / "ws"),
        "BANDITOPS_API_TOKEN": TEST_TOKEN,
    }
    for store, expected in ((behind, "has no banditops tables"), (url, "revision '0099'")):
        done = subprocess.run(
            [sys.executable, "-m", "ops", "serve", "--no-migrate", "--port", "0"],
            cwd=ROOT,
            env={**env, "BANDITOPS_DATABASE_URL": store},
            capture_output=True,
            text=True,
            timeout=120,
        )
        out = " ".join((done.stdout + done.stderr).split())
        assert done.returncode == 2 and "Traceback" not in out, out[-2000:]
        assert "error: the event store at" in out and expected in out, out[-2000:]
