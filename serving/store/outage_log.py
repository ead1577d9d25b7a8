"""How a task that reads the store on a timer logs a store outage: once when it begins,
once when it ends.

The replica sync and the catalog's change feed read the store every second or so, in
every worker. They logged each failure with its traceback, so a store outage (an
expected condition, which the writer's journal rides out) filled the log with a
60-line traceback per poll per worker and buried whatever else happened. An outage —
what :func:`serving.store.writer.is_outage` calls one, or a connection error or a
timeout — is now one WARNING line with the error's first line when it begins, DEBUG
lines while it lasts and one INFO line when a read succeeds again. Any other exception
is a fault of the service and keeps its traceback, every time.
"""

from __future__ import annotations

import logging
import time

from serving.store.writer import is_outage


def is_expected_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the store cannot be reached for now (retrying mends it), not
    that the service is wrong."""
    return is_outage(exc) or isinstance(exc, ConnectionError | TimeoutError)


def first_line(exc: BaseException) -> str:
    """``ClassName: first line of the message`` (a psycopg2 error spans several lines,
    the SQL and a link to SQLAlchemy's error page among them)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


class OutageLog:
    """The log of one recurring store read (``what``, e.g. "replica sync").

    Call :meth:`failed` with each exception and :meth:`succeeded` after each read that
    worked; use from one task (not thread-safe).

    Parameters
    ----------
    logger : logging.Logger
        The logger of the module that reads (so ``--log-level`` and filters by name hold).
    what : str
        The read, as the log lines name it.
    """

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.logger = logger
        self.what = what
        #: ``time.monotonic()`` when the current outage began; None while the store answers.
        self.since: float | None = None
        #: Failed reads of the current outage.
        self.failures = 0

    def failed(self, exc: BaseException) -> None:
        """Log a failed read: an outage's first at WARNING and its repeats at DEBUG, one
        line each; anything else at ERROR with its traceback."""
        if not is_expected_outage(exc):
            self.logger.error("%s failed; the next one retries", self.what, exc_info=exc)
            return
        self.failures += 1
        if self.since is None:
            self.since = time.monotonic()
            self.logger.warning(
                "%s failed: the store is out of reach (%s); retrying, logged again when it answers",
                self.what,
                first_line(exc),
            )
        else:
            self.logger.debug(
                "%s failed again (%d in a row): %s", self.what, self.failures, first_line(exc)
            )

    def succeeded(self) -> None:
        """Log the end of an outage, if one was under way."""
        if self.since is None:
            return
        self.logger.info(
            "%s: the store answers again after %.1f s (%d failed reads)",
            self.what,
            time.monotonic() - self.since,
            self.failures,
        )
        self.since, self.failures = None, 0
