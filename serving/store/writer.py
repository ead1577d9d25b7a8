"""Group commit: one writer thread batches pending events into one transaction.

Callers :meth:`~GroupCommitWriter.submit` an item and wait on the returned future, which
completes only after the transaction holding the item has committed — so an
acknowledged event is durable. While one transaction commits, new items queue up and go
into the next one: under load the fsync cost is shared by the whole batch, and an idle
service commits each item at once (no timer, no added latency).

A batch that fails with a database error is retried; if it keeps failing, its items
are committed one by one, so one bad item fails only its own request. A COMMIT that
raises has an unknown outcome (the database may have committed and lost the reply): the
writer asks the database whether the batch is there (``landed``) before anything is
written again — there, its results stand; absent, it is retried; the database silent, it
is an outage (journaled: the drain skips what the store holds), never a second copy.

With a ``spool`` (the local journal, :mod:`serving.store.journal`), a batch that fails
because the database is unreachable is appended to the journal instead and acknowledged
once fsynced there; the writer is then *degraded*: batches go straight to the journal
while a probe thread checks the database every ``probe_s`` seconds, and when it answers
the writer drains the journal (in order, before any new batch) and commits to the
database again.

A caller that stops waiting may withdraw its item with ``future.cancel()``: that
succeeds only while the item waits in the queue, and such an item is never written. Once
a batch has begun, its items are written whatever their callers do. :meth:`in_flight_s`
says how long the current batch has been going, so that a caller can tell a store that
stopped answering in the middle of a statement (a frozen server: no error ever comes)
and answer at once rather than queue behind it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from eventstore.engine import is_lock_wait, probe_write
from eventstore.leases import LOST as FENCED
from serving.settings import Settings

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


class FencedError(RuntimeError):
    """The process may no longer write the store (``GroupCommitWriter(fenced=...)``)."""


class Spool(Protocol):
    """Where batches go while the database is unreachable (see
    :class:`serving.store.journal.Journal`)."""

    def spool(self, items: Sequence[Any]) -> list[Any]:
        """Store ``items`` durably; per item its result or the exception refusing it."""
        ...

    def drain(self, engine: Engine, progress: Callable[[], None] | None = None) -> Any:
        """Copy everything spooled into the database (raises while it is unreachable),
        calling ``progress`` after each transaction."""
        ...

    def observe(self, items: Sequence[Any], results: Sequence[Any]) -> None:
        """Called after each database commit."""
        ...

    def on_outage(self) -> None:
        """Called when the database becomes unreachable."""
        ...

    @property
    def failure(self) -> str | None:
        """Why its last write of a batch failed (its disk full, or the batch past its
        byte cap), until one succeeds; None when it did not."""
        ...


class CommitOutcomeUnknownError(RuntimeError):
    """A batch's COMMIT raised and the database could not say whether it committed: the
    batch must not be written again as it is (a second copy), only through a path that
    skips what the store already holds (the journal's drain)."""


#: SQLSTATEs of a database that takes no writes for now, which the driver reports as
#: another kind of error: a read-only transaction (a failover that landed on a standby,
#: ``default_transaction_read_only``).
OUTAGE_SQLSTATES = frozenset({"25006"})


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached or written for now (as opposed
    to refusing an item: a constraint, a bad value)."""
    if isinstance(exc, CommitOutcomeUnknownError):
        return True
    if isinstance(exc, OperationalError | InterfaceError | DisconnectionError | PoolTimeoutError):
        return True
    if getattr(getattr(exc, "orig", None), "pgcode", None) in OUTAGE_SQLSTATES:
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


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
    spool : Spool, optional
        The local journal that takes batches while the database is unreachable.
    on_drained : callable ``(report)``, optional
        Called in the writer thread after the spool was drained into the database.
    on_degraded : callable ``(degraded)``, optional
        Called when the writer starts or stops spooling.
    probe_s : float
        Seconds between two checks of an unreachable database.
    landed : callable ``(connection, items, results) -> bool``, optional
        Whether a batch ``write`` wrote (with these results) is in the database: asked
        after a COMMIT that raised. Without it such a batch is retried as written.
    statement_timeout_s : float, optional
        PostgreSQL: the longest one statement on the writer's own connection may run
        (``statement_timeout``; that connection is taken out of the pool, so nothing else
        inherits the setting). A server frozen in the middle of a statement and thawed
        later then cancels the statement rather than commit it late. Ignored on SQLite.
    retry_budget_s : float, optional
        With a ``spool``: an outage's retries stop once a batch has tried this long, and
        the journal takes it (so its requests are answered within their deadline).
    fenced : callable, optional
        True once this process may no longer write the store (its lease was lost:
        :mod:`eventstore.leases`; ``write`` itself checks the lease in each transaction):
        from then on batches fail with :class:`FencedError` (503: not acknowledged) and
        the spool is not drained.
    """

    def __init__(
        self,
        engine: Engine,
        write: Callable[[Connection, Sequence[T]], list[R]],
        *,
        max_batch: int = Settings.model_fields["writer_max_batch"].default,
        on_committed: Callable[[Sequence[T], list[R]], None] | None = None,
        on_batch: Callable[[int, float], None] | None = None,
        name: str = "banditops-writer",
        spool: Spool | None = None,
        on_drained: Callable[[Any], None] | None = None,
        on_degraded: Callable[[bool], None] | None = None,
        probe_s: float = Settings.model_fields["store_probe_s"].default,
        landed: Callable[[Connection, Sequence[T], list[R]], bool] | None = None,
        statement_timeout_s: float | None = None,
        retry_budget_s: float | None = None,
        fenced: Callable[[], bool] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1; got {max_batch}.")
        if probe_s <= 0:
            raise ValueError(f"probe_s must be positive; got {probe_s}.")
        if statement_timeout_s is not None and not statement_timeout_s > 0:
            raise ValueError(f"statement_timeout_s must be positive; got {statement_timeout_s!r}.")
        self._statement_timeout_s = statement_timeout_s
        self._retry_budget_s = retry_budget_s
        self._fenced = fenced
        #: ``time.monotonic()`` when the batch being written began (None between batches).
        self._began: float | None = None
        self._spool = spool
        self._on_drained = on_drained
        self._on_degraded = on_degraded
        self.probe_s = probe_s
        self.degraded = False
        #: ``time.monotonic()`` when the last outage ended (its journal drained), or None.
        self.recovered_at: float | None = None
        #: Why the last journal write failed (a full disk), None when it did not: new
        #: events are refused (503) meanwhile.
        self.spool_failure: str | None = None
        self.outages = 0
        self._db_back = threading.Event()
        self.engine = engine
        self._write = write
        self._landed = landed
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
            if self.degraded and self._db_back.is_set():
                self._try_drain()
            try:
                first = self._queue.get(timeout=self.probe_s if self.degraded else None)
            except queue.Empty:
                continue
            if first is _STOP:
                self._last_drain()
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
            try:
                self._commit(batch)
            finally:
                self._began = None
        self._last_drain()

    def in_flight_s(self) -> float:
        """Seconds the batch being written (to the store or the journal), or the current
        transaction of a journal's drain, has taken so far (a long drain that makes
        progress is no stall); 0.0 between batches. Any thread."""
        began = self._began
        return 0.0 if began is None else max(0.0, time.monotonic() - began)

    def _progressed(self) -> None:
        """A drain's transaction committed: the next one's time starts now."""
        self._began = time.monotonic()

    def _commit(self, batch: list[tuple[T, Future[R]]]) -> None:
        # A future cancelled before now was withdrawn by its caller (it told its client
        # the event was not stored): its item is left out. Once running, a future can no
        # longer be cancelled, so every item of a batch that began is written.
        batch = [
            (item, future)
            for item, future in batch
            if future.running() or future.set_running_or_notify_cancel()
        ]
        if not batch:
            return
        items = [item for item, _ in batch]
        if self._refuse_fenced(batch):
            return
        if self.degraded and not self._try_drain():
            self._began = time.monotonic()
            self._spool_batch(batch)
            return
        self._began = time.monotonic()
        started = time.perf_counter()
        try:
            results = self._transaction(items, retry=True)
        except Exception as exc:
            if self._refuse_fenced(batch):  # the write found the lease gone: rolled back
                return
            if self._spool is not None and is_outage(exc):
                self._enter_degraded(exc)
                self._spool_batch(batch)
                return
            if len(batch) == 1 or is_outage(exc):  # one by one, each would wait again
                log.error("event store write failed: %s", exc)
                for _, future in batch:
                    _settle(future, exc=exc)
                return
            log.warning("batch of %d failed (%s); committing one by one", len(batch), exc)
            for pair in batch:
                self._commit([pair])
            return
        self.batches += 1
        self.items += len(items)
        if self._on_batch is not None:
            self._on_batch(len(items), time.perf_counter() - started)
        if self._spool is not None:
            self._spool.observe(items, results)
        self._committed(batch, results)

    def _refuse_fenced(self, batch: list[tuple[T, Future[R]]]) -> bool:
        """Once fenced: fail the batch (its requests are answered 503, not acknowledged:
        they go to another replica); True when it did."""
        if self._fenced is None or not self._fenced():
            return False
        for _, future in batch:
            _settle(future, exc=FencedError(FENCED))
        return True

    def _committed(self, batch: list[tuple[T, Future[R]]], results: list[Any]) -> None:
        """Run the hook on the durable items, then complete every future."""
        done = [(item, res) for (item, _), res in zip(batch, results, strict=True)]
        durable = [(item, res) for item, res in done if not isinstance(res, BaseException)]
        if self._on_committed is not None and durable:
            try:
                self._on_committed([i for i, _ in durable], [r for _, r in durable])
            except Exception:  # the rows are durable: never fail the requests for this
                log.exception("on_committed hook failed")
        for (_, future), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                _settle(future, exc=result)
            else:
                _settle(future, result)

    # ------------------------------------------------------------------ outage
    def _enter_degraded(self, exc: BaseException) -> None:
        log.error("event store unreachable (%s); events go to the local journal", exc)
        self.degraded = True
        self.outages += 1
        self._db_back.clear()
        if self._spool is not None:
            self._spool.on_outage()
        if self._on_degraded is not None:
            self._on_degraded(True)
        self._start_probe()

    def _spool_batch(self, batch: list[tuple[T, Future[R]]]) -> None:
        if self._spool is None:  # pragma: no cover - only called with a spool
            raise RuntimeError("no spool")
        items = [item for item, _ in batch]
        try:
            results = self._spool.spool(items)
        except Exception as exc:
            log.error("journal write failed: %s", exc)
            results = [exc] * len(items)
            self.spool_failure = f"the journal write failed: {exc}"
        else:
            # a journal refuses a batch it cannot write item by item, without raising:
            # /readyz said 200 "accepting" while a full disk refused every event
            # (resources pass, stop 50)
            self.spool_failure = self._spool.failure
        self._committed(batch, results)

    @property
    def spool_failing(self) -> bool:
        """Whether the last journal write failed (:attr:`spool_failure` says why)."""
        return self.spool_failure is not None

    def _start_probe(self) -> None:
        threading.Thread(target=self._probe, name="banditops-store-probe", daemon=True).start()

    def _probe(self) -> None:
        """Until the database takes writes again (or the writer closes): try every
        ``probe_s`` (:func:`eventstore.engine.probe_write`: a lock held elsewhere keeps
        the writer degraded, where a read would say the database is back)."""
        while not self._closed:
            time.sleep(self.probe_s)
            try:
                probe_write(self.engine)
            except Exception:
                continue
            self._db_back.set()
            return

    def _try_drain(self) -> bool:
        """Drain the spool when the probe saw the database; True when no longer degraded."""
        if not self.degraded:
            return True
        if self._fenced is not None and self._fenced():
            return False  # the journal is drained by the next start, which holds the lease
        if self._spool is None or not self._db_back.is_set():
            return False
        self._db_back.clear()
        if self._conn is not None:  # opened before the outage: not to be trusted
            self._conn.close()
            self._conn = None
        # a drain is a write in progress too: stalled when a transaction of it has taken
        # longer than the deadline (a store that stopped answering in the middle of one
        # never raises; every request waited its deadline, and /readyz said 200)
        self._began = time.monotonic()
        try:
            report = self._spool.drain(self.engine, self._progressed)
        except Exception as exc:
            log.warning("journal drain failed (%s); still degraded", exc)
            self._start_probe()
            return False
        self.degraded = False
        self.recovered_at = time.monotonic()
        self.spool_failure = None
        if self._on_drained is not None:
            try:
                self._on_drained(report)
            except Exception:
                log.exception("on_drained hook failed")
        if self._on_degraded is not None:
            self._on_degraded(False)
        return True

    def _last_drain(self) -> None:
        """At close: one direct attempt to drain; what stays is drained at the next start."""
        if self.degraded:
            self._db_back.set()
            self._try_drain()

    def _transaction(self, items: list[T], retry: bool) -> list[R]:
        attempts = len(_BACKOFF_S) + 1 if retry else 1
        began = time.monotonic()
        for attempt in range(attempts):
            try:
                conn = self._connection()
                transaction = conn.begin()
                try:
                    results = self._write(conn, items)
                except BaseException:
                    transaction.rollback()
                    raise
                try:
                    transaction.commit()
                except DBAPIError as exc:
                    if self._landed is not None and self._was_committed(items, results, exc):
                        return results
                    raise
                return results
            except DBAPIError as exc:
                if exc.connection_invalidated and self._conn is not None:
                    self._conn.close()
                    self._conn = None
                if attempt == attempts - 1 or is_lock_wait(exc):  # it waited its lock timeout
                    raise
                if self._out_of_retry_time(began, exc):
                    raise
                log.info("event store write retried after %s", type(exc.orig).__name__)
                time.sleep(_BACKOFF_S[attempt])
        raise AssertionError("unreachable")  # pragma: no cover

    def _out_of_retry_time(self, began: float, exc: DBAPIError) -> bool:
        """Whether an outage's retries have used ``retry_budget_s``: a journal then takes
        the batch at once. Four tries of a 5 s connect timeout kept requests 20 s, past
        their deadline, before the journal took them (diff review, stop 44)."""
        budget = self._retry_budget_s
        if budget is None or self._spool is None or not is_outage(exc):
            return False
        return time.monotonic() - began >= budget

    def _was_committed(self, items: list[T], results: list[R], exc: DBAPIError) -> bool:
        """After a COMMIT that raised ``exc``: True when the batch is in the database
        (the reply was lost), False when it is not (a retry writes it once); raises
        :class:`CommitOutcomeUnknownError` when the database cannot say."""
        assert self._landed is not None  # checked by the caller
        if self._conn is not None:  # the connection the COMMIT failed on: not to be trusted
            self._conn.invalidate()
            self._conn = None
        try:
            with self.engine.connect() as conn:
                landed = self._landed(conn, items, results)
        except Exception as check:
            raise CommitOutcomeUnknownError(
                f"the COMMIT of a batch of {len(items)} failed ({exc.orig!r}) and the store "
                f"could not say whether it holds the batch ({check})"
            ) from exc
        log.warning(
            "the COMMIT of a batch of %d failed (%s); the store %s it",
            len(items),
            type(exc.orig).__name__,
            "holds" if landed else "does not hold",
        )
        return landed

    def _connection(self) -> Connection:
        """The thread's connection, kept across batches (no pool checkout per commit)."""
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            conn = self.engine.connect()
            if self._statement_timeout_s is not None and conn.dialect.name == "postgresql":
                conn.detach()  # the session setting stays with this connection alone
                ms = max(1, round(self._statement_timeout_s * 1000))
                try:
                    conn.execute(
                        text("SELECT set_config('statement_timeout', :ms, false)"),
                        {"ms": f"{ms}ms"},
                    )
                    conn.commit()
                except BaseException:
                    conn.close()
                    raise
            self._conn = conn
        return self._conn
