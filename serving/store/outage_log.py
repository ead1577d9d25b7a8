"""How a task that reads the store (or the model registry) on a timer logs an outage:
once when it begins, once when it ends.

The replica sync and the catalog's change feed read the store every second or so, in
every worker; the model poll reads the registry and the store, and the SQLite
checkpointer the store, every poll or tick. They logged each failure with its
traceback (or a WARNING line), so a store outage (an expected condition, which the
writer's journal rides out) filled the log with a 60-line traceback per poll per worker
and buried whatever else happened. An outage —
what :func:`serving.store.writer.is_outage` calls one, or a connection error or a
timeout — is now one WARNING line with the error's first line when it begins, DEBUG
lines while it lasts and one INFO line when a read succeeds again. Any other exception
is a fault of the service and keeps its traceback, every time.
"""

from __future__ import annotations

import logging
import socket
import time

from serving.store.writer import is_outage

#: Exceptions that wrap the error they handle without naming it as their cause (``raise
#: X(...)`` in an ``except`` block): the model poll's MLflow client raises an
#: ``MlflowException`` while handling the ``requests`` error, which ``requests`` raises
#: while handling urllib3's. Only these pass an outage on through ``__context__``: any
#: other exception raised while handling an outage (a ``KeyError`` in an ``except
#: ConnectionError`` block) is a fault of its own. Named by module and class, so that
#: this module imports neither.
CONTEXT_WRAPPERS = frozenset(
    {"mlflow.exceptions.MlflowException", "requests.exceptions.RequestException"}
)


def _wraps_its_context(exc: BaseException) -> bool:
    return any(f"{c.__module__}.{c.__qualname__}" in CONTEXT_WRAPPERS for c in type(exc).__mro__)


def is_expected_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the store or the model registry cannot be reached for now
    (retrying mends it), not that the service is wrong: a database outage, or a refused,
    reset or timed-out connection or a name that does not resolve, on its own, as the
    cause of what was raised (``raise ... from``), or as what one of the
    :data:`CONTEXT_WRAPPERS` was raised while handling."""
    seen: set[int] = set()
    found: BaseException | None = exc
    while found is not None and id(found) not in seen:
        if is_outage(found) or isinstance(found, ConnectionError | TimeoutError | socket.gaierror):
            return True
        seen.add(id(found))
        if found.__cause__ is not None:
            found = found.__cause__
        elif _wraps_its_context(found) and not found.__suppress_context__:
            found = found.__context__
        else:
            found = None
    return False


def first_line(exc: BaseException) -> str:
    """``ClassName: first line of the message`` (a psycopg2 error spans several lines,
    the SQL and a link to SQLAlchemy's error page among them)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


class OutageLog:
    """The log of one recurring read (``what``, e.g. "replica sync") of one service
    (``source``, the store unless said).

    Call :meth:`failed` (or :meth:`outage`) with each exception and :meth:`succeeded`
    after each read that worked; use from one task (not thread-safe).

    Parameters
    ----------
    logger : logging.Logger
        The logger of the module that reads (so ``--log-level`` and filters by name hold).
    what : str
        The read, as the log lines name it.
    source : str
        What it reads, as the log lines name it.
    """

    def __init__(self, logger: logging.Logger, what: str, source: str = "the store") -> None:
        self.logger = logger
        self.what = what
        self.source = source
        #: ``time.monotonic()`` when the current outage began; None while the store answers.
        self.since: float | None = None
        #: Failed reads of the current outage.
        self.failures = 0

    def failed(self, exc: BaseException) -> None:
        """Log a failed read: an outage's first at WARNING and its repeats at DEBUG, one
        line each; anything else at ERROR with its traceback."""
        if not self.outage(exc):
            self.logger.error("%s failed; the next one retries", self.what, exc_info=exc)

    def outage(self, exc: BaseException) -> bool:
        """Log ``exc`` as :meth:`failed` does when it is an outage, and say whether it was;
        log nothing otherwise (the caller logs its own fault)."""
        if not is_expected_outage(exc):
            return False
        self.failures += 1
        if self.since is None:
            self.since = time.monotonic()
            self.logger.warning(
                "%s failed: %s is out of reach (%s); retrying, logged again when it answers",
                self.what,
                self.source,
                first_line(exc),
            )
        else:
            self.logger.debug(
                "%s failed again (%d in a row): %s", self.what, self.failures, first_line(exc)
            )
        return True

    def succeeded(self) -> None:
        """Log the end of an outage, if one was under way."""
        if self.since is None:
            return
        self.logger.info(
            "%s: %s answers again after %.1f s (%d failed reads)",
            self.what,
            self.source,
            time.monotonic() - self.since,
            self.failures,
        )
        self.since, self.failures = None, 0
