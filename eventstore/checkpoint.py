"""Checkpoints of a SQLite write-ahead log in a thread of their own.

In WAL mode a commit appends to the log, and by default the commit that takes the log
past 1,000 pages also copies the log into the database file and syncs it: that commit,
and every request waiting for it, takes the checkpoint's time. With decisions of 100
retrieved candidates (about 30 kB a row) at 100 per second that is every 1.3 s, and it
added about 10 ms to one decision in a hundred, which is what set the catalog
benchmark's p99 (``benchmarks.catalog``).

:class:`WalCheckpointer` runs ``PRAGMA wal_checkpoint(PASSIVE)`` every ``interval_s`` on a
connection of its own while the engine's connections have ``wal_autocheckpoint=0``
(:func:`eventstore.engine.make_engine`). A passive checkpoint never blocks a writer or a
reader: commits keep appending to the log while it copies, and the writer starts the
log over once everything in it is copied. Durability does not change: a commit is
durable once its log frames are synced (``synchronous``), whether or not they have been
checkpointed.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from sqlalchemy import Engine

log = logging.getLogger(__name__)


class FailureLog(Protocol):
    """How the checkpoints' failures are logged (the service's:
    :class:`serving.store.outage_log.OutageLog`, which tells a store outage from a fault)."""

    def failed(self, exc: BaseException) -> None: ...

    def succeeded(self) -> None: ...


class WalCheckpointer:
    """A thread that checkpoints ``engine``'s SQLite log every ``interval_s``.

    Attributes
    ----------
    checkpoints : int
        Checkpoints run so far; ``pages`` the log pages they copied.
    longest_s : float
        The longest one (the time a commit would have waited for it).

    Parameters
    ----------
    failure_log : FailureLog, optional
        Logs each failed checkpoint and each one that worked; without it, each failure
        is a WARNING with its traceback.
    """

    def __init__(
        self, engine: Engine, interval_s: float, failure_log: FailureLog | None = None
    ) -> None:
        if interval_s <= 0.0:
            raise ValueError(f"interval_s must be positive; got {interval_s!r}.")
        self.engine = engine
        self.interval_s = interval_s
        self.failure_log = failure_log
        self.checkpoints = 0
        self.pages = 0
        self.longest_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="banditops-checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop after one last checkpoint (everything committed so far is copied)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def checkpoint(self) -> int:
        """One passive checkpoint now; the log pages it copied."""
        started = time.perf_counter()
        raw = self.engine.raw_connection()
        try:
            row = raw.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            raw.close()
        self.longest_s = max(self.longest_s, time.perf_counter() - started)
        self.checkpoints += 1
        copied = int(row[2]) if row is not None and row[2] is not None else 0
        self.pages += max(copied, 0)
        return copied

    def _run(self) -> None:
        while True:
            stopping = self._stop.wait(self.interval_s)
            try:
                self.checkpoint()
            except Exception as exc:  # the store may be down: the next tick tries again
                if self.failure_log is None:
                    log.warning("checkpointing the SQLite log failed; retrying", exc_info=True)
                else:
                    self.failure_log.failed(exc)
            else:
                if self.failure_log is not None:
                    self.failure_log.succeeded()
            if stopping:
                return
