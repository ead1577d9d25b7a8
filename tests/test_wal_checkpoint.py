"""The SQLite log's checkpoints in a thread of their own (:mod:`eventstore.checkpoint`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from eventstore.checkpoint import WalCheckpointer
from eventstore.engine import make_engine

ROW = "x" * 8000  # two pages a row


def _engine(path: Path, autocheckpoint: bool) -> sa.Engine:
    engine = make_engine(f"sqlite:///{path}", sqlite_autocheckpoint=autocheckpoint)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
    return engine


def _write(engine: sa.Engine, commits: int, rows: int = 10) -> None:
    for _ in range(commits):
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO t (body) VALUES (?)", [(ROW,) for _ in range(rows)])


def _wal_mib(path: Path) -> float:
    return os.path.getsize(f"{path}-wal") / 2**20


def test_without_autocheckpoint_the_log_grows_until_a_checkpoint(tmp_path: Path) -> None:
    db = tmp_path / "off.db"
    engine = _engine(db, autocheckpoint=False)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    _write(engine, 60)  # 1,300 pages: past SQLite's 1,000-page checkpoint
    high = _wal_mib(db)
    assert high > 4.5
    checkpointer = WalCheckpointer(engine, 1.0)
    assert checkpointer.checkpoint() > 1000
    # the log is copied: the next commit starts it over, so the file grows no further
    _write(engine, 30)
    assert _wal_mib(db) == high
    with engine.connect() as conn:
        frames = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()[1]
    assert 600 < frames < 700  # the 30 commits only
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 900
    engine.dispose()


def test_the_thread_keeps_the_log_short_and_copies_everything_when_stopped(
    tmp_path: Path,
) -> None:
    db = tmp_path / "thread.db"
    engine = _engine(db, autocheckpoint=False)
    checkpointer = WalCheckpointer(engine, 0.01)
    checkpointer.start()
    _write(engine, 200, rows=2)  # about 3.1 MiB in all
    checkpointer.stop()
    assert checkpointer.checkpoints >= 2 and checkpointer.pages > 0
    with engine.connect() as conn:
        busy, frames, copied = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
        assert busy == 0 and frames == copied  # nothing left uncopied
        assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 400
    engine.dispose()


def test_the_interval_must_be_positive(tmp_path: Path) -> None:
    engine = _engine(tmp_path / "x.db", autocheckpoint=False)
    with pytest.raises(ValueError, match="interval_s"):
        WalCheckpointer(engine, 0.0)
    engine.dispose()
