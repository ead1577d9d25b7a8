"""Engines for the event store: SQLite in WAL mode, or PostgreSQL."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url

SQLITE_BUSY_TIMEOUT_MS = 10_000


def make_engine(
    url: str,
    sqlite_synchronous: str = "FULL",
    pool_size: int = 5,
    connect_timeout_s: float | None = None,
    sqlite_autocheckpoint: bool = True,
) -> Engine:
    """An engine for ``url``.

    SQLite files get ``journal_mode=WAL`` (readers never block the writer),
    ``synchronous`` = ``sqlite_synchronous`` (``FULL``: every commit is fsynced),
    ``foreign_keys=ON`` and a busy timeout for the case of several writer processes; the
    parent directory is created. PostgreSQL connections are checked before use.

    Parameters
    ----------
    url : str
        SQLAlchemy URL.
    sqlite_synchronous : {"FULL", "NORMAL"}
        Durability of SQLite commits.
    pool_size : int
        Connections kept open (PostgreSQL).
    connect_timeout_s : float, optional
        PostgreSQL (psycopg2): give up connecting after this long, and detect a dead peer
        of an open connection by TCP keepalives within about 10 s, so an unreachable
        server is noticed quickly (options given in the URL win).
    sqlite_autocheckpoint : bool
        SQLite: let the commit that takes the write-ahead log past 1,000 pages copy it
        into the database (SQLite's default). False leaves that to a
        :class:`~eventstore.checkpoint.WalCheckpointer` (the decision service), so that no
        commit waits for a checkpoint.
    """
    parsed = make_url(url)
    options: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if sqlite_synchronous not in ("FULL", "NORMAL"):
            raise ValueError(
                f"sqlite_synchronous must be 'FULL' or 'NORMAL'; got {sqlite_synchronous!r}."
            )
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, **options)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={sqlite_synchronous}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            if not sqlite_autocheckpoint:
                cursor.execute("PRAGMA wal_autocheckpoint=0")
            cursor.close()

        return engine
    options.update(pool_pre_ping=True, pool_size=pool_size, max_overflow=pool_size)
    if connect_timeout_s is not None and parsed.get_driver_name() == "psycopg2":
        libpq = {
            "connect_timeout": max(2, math.ceil(connect_timeout_s)),
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
        }
        options["connect_args"] = {k: v for k, v in libpq.items() if k not in parsed.query}
    return create_engine(parsed, **options)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"
