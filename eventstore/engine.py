"""Engines for the event store: SQLite in WAL mode, or PostgreSQL."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import sqlite3
import threading
import weakref
from pathlib import Path
from typing import Any, get_args

from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import OperationalError

from eventstore import schema
from eventstore.settings import CORE_DEFAULTS, SqliteSynchronous

log = logging.getLogger(__name__)

#: Longest a statement waits for a lock another connection holds unless told otherwise:
#: SQLite's busy timeout and PostgreSQL's ``lock_timeout`` (:func:`make_engine`).
SQLITE_BUSY_TIMEOUT_MS = 10_000


class SqliteFileWatch:
    """The SQLite database file an engine opened, checked before every transaction.

    A database file deleted (or replaced by another) while connections have it open is
    not an error to SQLite: the open connections go on reading and committing into the
    unlinked file, and all of it is gone when the process ends. The watch records the
    file's identity (device and inode) at the first connection and raises an
    ``OperationalError`` — an outage to the service's writer, which journals what it
    acknowledges — from every transaction, connection and write probe once the path no
    longer names that file; logged once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._identity: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._logged = False

    def _found(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return None
        return stat.st_dev, stat.st_ino

    def opened(self) -> None:
        """A connection was opened: the first one fixes the file; later ones must open it."""
        with self._lock:
            if self._identity is None:
                self._identity = self._found()
                return
        self.check()

    def check(self) -> None:
        """Raise unless the path still names the file the engine first opened."""
        if self._identity is None or self._found() == self._identity:
            return
        message = (
            f"the SQLite database file {self.path} was deleted or replaced while open: "
            "nothing more is written to it (restore the file, or run `banditops db "
            "upgrade` on a new one, and restart)"
        )
        if not self._logged:
            self._logged = True
            log.error("%s", message)
        raise OperationalError("BEGIN", None, sqlite3.OperationalError(message))


#: The watch of each SQLite file engine (:func:`probe_write` checks it as well).
_WATCHES: weakref.WeakKeyDictionary[Engine, SqliteFileWatch] = weakref.WeakKeyDictionary()


#: PostgreSQL's connect timeout for a process that names none (the CLI, the pipelines, the
#: monitor, the Bandits page; the service passes ``store_connect_timeout_s``): a server
#: that accepts and never answers held ``store prune`` and ``rollout status`` for good
#: (stall helper, stop 44).
CONNECT_TIMEOUT_S = 10.0


def make_engine(
    url: str,
    sqlite_synchronous: str = CORE_DEFAULTS["sqlite_synchronous"],
    pool_size: int = 5,
    connect_timeout_s: float | None = CONNECT_TIMEOUT_S,
    sqlite_autocheckpoint: bool = True,
    lock_timeout_s: float | None = None,
    idle_in_transaction_s: float | None = None,
) -> Engine:
    """An engine for ``url``.

    SQLite files get ``journal_mode=WAL`` (readers never block the writer),
    ``synchronous`` = ``sqlite_synchronous`` (``FULL``: every commit is fsynced),
    ``foreign_keys=ON`` and a busy timeout for the case of several writer processes; the
    parent directory is created, and the file is watched (:class:`SqliteFileWatch`: a
    file deleted or replaced while open fails every transaction instead of taking writes
    that vanish). PostgreSQL connections are checked before use.

    Parameters
    ----------
    url : str
        SQLAlchemy URL.
    sqlite_synchronous : {"FULL", "NORMAL"}
        Durability of SQLite commits.
    pool_size : int
        Connections kept open (PostgreSQL).
    connect_timeout_s : float or None
        PostgreSQL (psycopg2): give up connecting after this long, and detect a dead peer
        of an open connection by TCP keepalives within about 10 s, so an unreachable
        server is noticed quickly (options given in the URL win); None: the system's.
    sqlite_autocheckpoint : bool
        SQLite: let the commit that takes the write-ahead log past 1,000 pages copy it
        into the database (SQLite's default). False leaves that to a
        :class:`~eventstore.checkpoint.WalCheckpointer` (the decision service), so that no
        commit waits for a checkpoint.
    lock_timeout_s : float, optional
        Longest a statement waits for a lock another connection holds: SQLite's busy
        timeout, PostgreSQL's ``lock_timeout`` (default for both
        :data:`SQLITE_BUSY_TIMEOUT_MS`: before, a PostgreSQL command waited for ever
        behind a table another session locked, and its server session kept waiting
        after its client was killed). Past it the statement fails (``OperationalError``).
        A wait meant to be longer says so in its transaction (:func:`take_turn`, the
        migrations' lock).
    idle_in_transaction_s : float, optional
        PostgreSQL: the server ends a session whose transaction waits this long for the
        client's next statement (``idle_in_transaction_session_timeout``), so a
        transaction stalled between its statements — a client paused, replies held on
        the way — never commits late: it fails, and its events are journaled and
        written again. With ``connect_timeout_s`` also the kernel's ``tcp_user_timeout``:
        data the server does not acknowledge for that long breaks the connection.
    """
    if lock_timeout_s is not None and not lock_timeout_s > 0:
        raise ValueError(f"lock_timeout_s must be positive; got {lock_timeout_s!r}.")
    lock_ms = None if lock_timeout_s is None else max(1, round(lock_timeout_s * 1000))
    parsed = make_url(url)
    options: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if sqlite_synchronous not in get_args(SqliteSynchronous):
            raise ValueError(
                f"sqlite_synchronous must be one of {get_args(SqliteSynchronous)}; got "
                f"{sqlite_synchronous!r}."
            )
        watch = None
        if parsed.database and parsed.database != ":memory:" and not parsed.query.get("uri"):
            path = Path(parsed.database).absolute()
            path.parent.mkdir(parents=True, exist_ok=True)
            # the owner's only (SQLite gives its -wal and -shm files the same mode): it
            # holds users' contexts and hashes, and was created world-readable
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            watch = SqliteFileWatch(path)
        engine = create_engine(parsed, **options)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={sqlite_synchronous}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={lock_ms or SQLITE_BUSY_TIMEOUT_MS}")
            if not sqlite_autocheckpoint:
                cursor.execute("PRAGMA wal_autocheckpoint=0")
            cursor.close()
            if watch is not None:
                watch.opened()

        if watch is not None:
            _WATCHES[engine] = watch
            event.listen(engine, "begin", lambda _conn: watch.check())
        return engine
    options.update(pool_pre_ping=True, pool_size=pool_size, max_overflow=pool_size)
    if parsed.get_driver_name() == "psycopg2":
        libpq: dict[str, Any] = {}
        if connect_timeout_s is not None:
            libpq.update(
                connect_timeout=max(2, math.ceil(connect_timeout_s)),
                keepalives=1,
                keepalives_idle=5,
                keepalives_interval=2,
                keepalives_count=3,
            )
        if connect_timeout_s is not None:
            libpq["tcp_user_timeout"] = max(1000, round(connect_timeout_s * 1000))
        server = [f"-c lock_timeout={lock_ms or SQLITE_BUSY_TIMEOUT_MS}"]
        if idle_in_transaction_s is not None:
            if not idle_in_transaction_s > 0:
                raise ValueError(
                    f"idle_in_transaction_s must be positive; got {idle_in_transaction_s!r}."
                )
            idle_ms = max(1, round(idle_in_transaction_s * 1000))
            server.append(f"-c idle_in_transaction_session_timeout={idle_ms}")
        given = parsed.query.get("options")
        if server and isinstance(given, str):
            server.append(given)  # the URL's own, after: an option it sets again wins
        if server:
            libpq["options"] = " ".join(server)
        options["connect_args"] = {
            k: v for k, v in libpq.items() if k not in parsed.query or k == "options"
        }
    return create_engine(parsed, **options)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def store_identity(engine: Engine) -> str:
    """Which store ``engine`` writes to, without credentials or options: the SQLite
    file's absolute path, or the PostgreSQL server and database (what a journal's events
    belong to: :class:`serving.store.journal.Journal`)."""
    url = engine.url
    if is_sqlite(engine):
        database = url.database or ":memory:"
        where = database if database == ":memory:" else str(Path(database).absolute())
        return f"sqlite:{where}"
    return f"{url.get_backend_name()}://{url.host or ''}:{url.port or ''}/{url.database or ''}"


def probe_write(engine: Engine) -> None:
    """Raise unless a write could take its locks now (nothing is written): SQLite takes
    the database's write lock (``BEGIN IMMEDIATE``, waiting at most the busy timeout),
    PostgreSQL the row-exclusive locks of the event tables (``NOWAIT``). A read such as
    ``SELECT 1`` succeeds while another process holds the write lock."""
    watch = _WATCHES.get(engine)
    if watch is not None:
        watch.check()
    with engine.connect() as conn:
        if is_sqlite(engine):
            raw = conn.connection.driver_connection
            assert raw is not None  # a live connection
            raw.execute("BEGIN IMMEDIATE")
            raw.execute("ROLLBACK")
            return
        transaction = conn.begin()
        try:
            tables = ", ".join(t.name for t in (schema.decisions, schema.rewards))
            conn.exec_driver_sql(f"LOCK TABLE {tables} IN ROW EXCLUSIVE MODE NOWAIT")
        finally:
            transaction.rollback()


def is_lock_wait(exc: BaseException) -> bool:
    """Whether a database error is a lock another connection holds, past the wait allowed
    (SQLite "database is locked", PostgreSQL ``lock_not_available``)."""
    orig = getattr(exc, "orig", exc)
    if getattr(orig, "pgcode", None) == "55P03":
        return True
    return "database is locked" in str(orig) or "database table is locked" in str(orig)


def turn_key(name: str) -> int:
    """The PostgreSQL advisory lock key of the writes named ``name`` (:func:`take_turn`):
    the first 8 bytes of its SHA-256, as a signed 64-bit integer."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def take_turn(conn: Connection, key: int, wait_s: float | None = None) -> None:
    """Make the transaction just begun on ``conn`` follow every other one that takes the
    turn ``key`` (:func:`turn_key`), so that what it reads before it writes cannot change
    before it commits. SQLite: the database's write lock, taken now (``BEGIN
    IMMEDIATE``) rather than at the first write, waited for up to ``wait_s`` (None: the
    connection's busy timeout), a bound for that BEGIN only. PostgreSQL: a
    transaction-scoped advisory lock (rows read under READ COMMITTED are not locked, and a
    row that does not exist yet cannot be), waited for up to ``wait_s`` (None: the
    connection's ``lock_timeout``), a bound that holds for the rest of this transaction
    only."""
    if conn.dialect.name == "sqlite":
        if wait_s is None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            return
        # the wait is the lock's: the connection's busy timeout, for this BEGIN only
        own = conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one()
        conn.exec_driver_sql(f"PRAGMA busy_timeout={max(1, round(wait_s * 1000))}")
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        finally:
            conn.exec_driver_sql(f"PRAGMA busy_timeout={int(own)}")
    elif conn.dialect.name == "postgresql":
        if wait_s is not None:
            conn.execute(
                text("SELECT set_config('lock_timeout', :ms, true)"),
                {"ms": f"{max(1, round(wait_s * 1000))}ms"},
            )
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
