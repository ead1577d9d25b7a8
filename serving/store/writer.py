"""Group commit: one writer thread batches pending events into one transaction.

Callers :meth:`~GroupCommitWriter.submit` an item and wait on the returned future, which
completes only after the transaction holding the item has committed — so an
acknowledged event is durable. While one transaction commits, new items queue up and go
into the next one: under load the fsync cost is shared by the whole batch, and an idle
service commits each item at once (no timer, no added latency).

A batch that fails with a database error is retried; if it keeps failing, its items
are committed one by one, so one bad item fails only its own request.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

_STOP = object()
_BACKOFF_S = (0.005, 0.05, 0.2)


def _settle(future: Future[R], result: R | None = None, exc: BaseException | None = None) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)  # type: ignore[arg-type]


class WriterClosedError(RuntimeError):
    """The writer no longer accepts items (the service is shutting down)."""


class GroupCommitWriter(Generic[T, R]):
    """Batches items from many threads into few transactions.

    Parameters
    ----------
    engine : Engine
        Where to write.
    write : callable ``(connection, items) -> results``
        Writes a batch inside an open transaction and returns one result per item.
    max_batch : int
        Most items in one transaction.
    on_committed : callable ``(items, results)``, optional
        Called in the writer thread after each commit, before the futures complete
        (the service uses it to apply committed rewards to the heads in commit order).
    on_batch : callable ``(n_items, seconds)``, optional
        Metrics hook, called after each commit.
    """

    def __init__(
        self,
        engine: Engine,
        write: Callable[[Connection, Sequence[T]], list[R]],
        *,
        max_batch: int = 512,
        on_committed: Callable[[Sequence[T], list[R]], None] | None = None,
        on_batch: Callable[[int, float], None] | None = None,
        name: str = "banditops-writer",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1; got {max_batch}.")
        self.engine = engine
        self._write = write
        self.max_batch = max_batch
        self._on_committed = on_committed
        self._on_batch = on_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._conn: Connection | None = None  # the writer thread's own connection
        self.batches = 0
        self.items = 0

    def start(self) -> GroupCommitWriter[T, R]:
        self._thread.start()
        return self

    def submit(self, item: T) -> Future[R]:
        """Queue ``item``; the future gives its result once it is committed."""
        future: Future[R] = Future()
        with self._lock:
            if self._closed:
                raise WriterClosedError("the event writer is closed.")
            self._queue.put((item, future))
        return future

    def close(self, timeout: float = 30.0) -> None:
        """Commit everything already submitted, then stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        try:
            self._loop()
        finally:
            if self._conn is not None:
                self._conn.close()

    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            self._commit(batch)

    def _commit(self, batch: list[tuple[T, Future[R]]]) -> None:
        # A future cancelled before now (its caller gave up) still gets its item written;
        # once running, it can no longer be cancelled under us.
        for _, future in batch:
            if not (future.running() or future.cancelled()):
                future.set_running_or_notify_cancel()
        items = [item for item, _ in batch]
        started = time.perf_counter()
        try:
            results = self._transaction(items, retry=True)
        except Exception as exc:
            if len(batch) == 1:
                log.error("event store write failed: %s", exc)
                _settle(batch[0][1], exc=exc)
                return
            log.warning("batch of %d failed (%s); committing one by one", len(batch), exc)
            for pair in batch:
                self._commit([pair])
            return
        self.batches += 1
        self.items += len(items)
        if self._on_batch is not None:
            self._on_batch(len(items), time.perf_counter() - started)
        if self._on_committed is not None:
            try:
                self._on_committed(items, results)
            except Exception:  # the rows are committed: never fail the requests for this
                log.exception("on_committed hook failed")
        for (_, future), result in zip(batch, results, strict=True):
            _settle(future, result)

    def _transaction(self, items: list[T], retry: bool) -> list[R]:
        attempts = len(_BACKOFF_S) + 1 if retry else 1
        for attempt in range(attempts):
            try:
                conn = self._connection()
                with conn.begin():
                    return self._write(conn, items)
            except DBAPIError as exc:
                if exc.connection_invalidated and self._conn is not None:
                    self._conn.close()
                    self._conn = None
                if attempt == attempts - 1:
                    raise
                log.info("event store write retried after %s", type(exc.orig).__name__)
                time.sleep(_BACKOFF_S[attempt])
        raise AssertionError("unreachable")  # pragma: no cover

    def _connection(self) -> Connection:
        """The thread's connection, kept across batches (no pool checkout per commit)."""
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._conn = self.engine.connect()
        return self._conn
