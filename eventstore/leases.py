"""Which serving processes write the event store, and which of them may say it is the only
one.

A serving process of one worker without replica sync is the store's **sole writer**: its
head snapshots say "this head has learnt every applied reward up to ``last_reward_id``",
and its journal counts the rewards of its decisions alone. Beside a second process
writing rewards, both are false: a snapshot covers rewards the other process applied and
this head never learnt, and a restart from it loses them. Processes that know they share
the store (several workers, replica sync) write no snapshots and are safe together.

So every serving process holds a **lease**: a row of ``service_leases`` naming it, where
it runs, its mode (``sole`` or ``shared``) and until when it holds, by the store's clock
(every holder reads the same clock, whatever the skew between hosts). A holder renews it
every third of its length. The rules, checked by every process under one turn
(:func:`eventstore.engine.take_turn`) so that two starting at once cannot both pass:

* a ``sole`` lease excludes every other live lease; a ``shared`` one, every live ``sole``
  one;
* a lease past its end is lapsed: whoever looks next deletes it. Until then its holder
  still holds it (nobody can have written beside it) and its renewal extends it: a wall
  clock stepped forward past the lease costs nothing. So is one whose process
  is gone: on the same host and PID namespace, a PID that no longer runs, or this
  process's own PID under a token it does not hold (a container restarted with the same
  PID). A process killed on another host holds its lease until it lapses.

A starting process waits up to a lease's length for a conflicting one to lapse (the
holder may just have been killed), then gives up (:class:`LeaseConflictError`, naming the
holder). A running holder that finds a conflicting lease beside it, or a sole writer that finds
its lease gone (its store was out of its reach for longer than the lease, and another
process looked at the store meanwhile, and may have written), has **lost** it for good:
it takes no more events, writes nothing more to the store (its journal keeps what it
acknowledged, drained by its next start, which waits for the lease) and no snapshot,
until it restarts.

Every transaction of a holder that writes events or snapshots checks, before it commits
and in the leases' turn, that its lease still holds (:meth:`Lease.writing`, :func:`holds`),
so that no process can take the lease over between the check and the commit: a holder
that has not renewed for longer than its lease (stopped, its store out of reach) never
writes beside the process that took over, whatever its renewals have found yet.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnClause,
    Connection,
    Engine,
    delete,
    insert,
    inspect,
    literal_column,
    select,
    update,
)

from eventstore.engine import take_turn, turn_key
from eventstore.schema import service_leases

log = logging.getLogger(__name__)

SOLE = "sole"
SHARED = "shared"
MODES = (SOLE, SHARED)
#: The turn every lease change and every leased snapshot takes.
LEASES = turn_key("service_leases")
#: Seconds between two looks while a start waits for a conflicting lease to lapse.
_WAIT_STEP_S = 0.5

# tokens of the leases this process holds now (a row with this process's PID and another
# token was left by an earlier process that had the same PID)
_held: set[str] = set()
_held_lock = threading.Lock()


class LeaseConflictError(RuntimeError):
    """Another serving process holds a lease this one's cannot stand beside."""


LOST = "this process lost its lease on the event store: it writes nothing more there"


class LeaseLostError(RuntimeError):
    """A write of a process whose lease no longer holds (rolled back)."""


@dataclass(frozen=True)
class Holder:
    """A lease row as read."""

    token: str
    name: str
    host: str
    pid: int
    mode: str
    expires_at: float

    def describe(self, now: float) -> str:
        role = (
            "as the store's only writer (one worker, no replica sync)"
            if self.mode == SOLE
            else "beside other writers"
        )
        return (
            f"{self.name!r} (host {self.host.split('/')[0]}, pid {self.pid}) writes to this "
            f"store {role}; its lease ends in {max(0.0, self.expires_at - now):.0f} s "
            "unless it renews it"
        )


def here() -> str:
    """This process's host: the host name and the PID namespace its PID belongs to."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}/{namespace}"


#: The store's clock, in seconds since the epoch, per dialect.
_CLOCK_SQL = {
    "sqlite": "(julianday('now') - 2440587.5) * 86400.0",
    "postgresql": "extract(epoch FROM clock_timestamp())",
}
_CLOCK: dict[str, ColumnClause[Any]] = {d: literal_column(sql) for d, sql in _CLOCK_SQL.items()}


def store_clock(conn: Connection) -> float:
    """Seconds since the epoch by the store's clock."""
    return float(conn.execute(select(_CLOCK[conn.dialect.name])).scalar_one())


def _gone(row: Holder, host: str) -> bool:
    """Whether ``row``'s process is known to have ended (on this host only)."""
    if row.host != host:
        return False
    if row.pid == os.getpid():
        with _held_lock:
            return row.token not in _held
    try:
        os.kill(row.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process runs under that PID
        return False
    return False


def conflicts_with(mode: str, other: str) -> bool:
    """Whether a lease of ``mode`` cannot stand beside a live one of ``other``."""
    return SOLE in (mode, other)


def _read(conn: Connection) -> list[Holder]:
    c = service_leases.c
    rows = conn.execute(select(c.token, c.name, c.host, c.pid, c.mode, c.expires_at))
    return [Holder(*row) for row in rows]


def _live_others(conn: Connection, token: str, now: float) -> list[Holder]:
    """The live leases but ``token``'s, after deleting the lapsed and the gone ones."""
    host = here()
    rows = _read(conn)
    dead = [r.token for r in rows if r.token != token and (r.expires_at <= now or _gone(r, host))]
    if dead:
        conn.execute(delete(service_leases).where(service_leases.c.token.in_(dead)))
    return [r for r in rows if r.token != token and r.token not in dead]


class Lease:
    """This process's lease on the store (see the module's rules).

    Parameters
    ----------
    engine : Engine
        The store.
    name : str
        The process's name in the conflict messages (``replica_id``).
    mode : str
        ``sole`` or ``shared``.
    length_s : float
        How long the lease holds without renewal; :meth:`renew` is due every third.
    """

    def __init__(self, engine: Engine, name: str, mode: str, length_s: float) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}.")
        if not length_s > 0:
            raise ValueError(f"length_s must be positive; got {length_s!r}.")
        self.engine = engine
        self.name = name
        self.mode = mode
        self.length_s = float(length_s)
        self.token = uuid.uuid4().hex
        #: True once another process took over: no snapshot is written any more
        self.lost = False
        self._held = False
        self._lock = threading.Lock()
        self._lock_lost = threading.Lock()

    @property
    def held(self) -> bool:
        return self._held and not self.lost

    def acquire(self, wait_s: float | None = None, *, take: bool = True) -> None:
        """Take the lease, waiting up to ``wait_s`` (default: the lease's length) for
        conflicting ones to lapse; ``take`` False only waits (a check before starting
        the processes that will take it).

        Raises
        ------
        LeaseConflictError
            A conflicting lease is still live after the wait (names its holder).
        """
        wait_s = self.length_s if wait_s is None else wait_s
        deadline = time.monotonic() + wait_s
        logged = False
        while True:
            blocking, now = self._claim(write=take)
            if not blocking:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise LeaseConflictError(
                    "another serving process writes to this event store: "
                    + "; ".join(b.describe(now) for b in blocking)
                    + ". "
                    + _advice(self.mode)
                )
            if not logged:
                log.warning(
                    "%s: waiting up to %.0f s for it to lapse",
                    "; ".join(b.describe(now) for b in blocking),
                    left,
                )
                logged = True
            time.sleep(min(_WAIT_STEP_S, left))

    def renew(self) -> None:
        """Extend the lease (due every third of its length). It is lost for good (logged
        once) when a conflicting lease stands beside it, or — for a sole writer — when its
        row is gone: it lapsed, and a process that looked at the store meanwhile may have
        written rewards this one never learnt, even if it has stopped since."""
        if self.lost:
            return
        blocking, now = self._claim(write=True)
        if blocking:
            why = "; ".join(b.describe(now) for b in blocking)
        elif not self._held:
            why = (
                "its lease lapsed (the store was out of its reach for longer than the "
                f"lease, {self.length_s:g} s) and another serving process started on the "
                "store meanwhile"
            )
        else:
            return
        self._lose(why)

    @contextlib.contextmanager
    def writing(self, conn: Connection) -> Iterator[None]:
        """Around the writes of a transaction on ``conn``: raise :class:`LeaseLostError`
        (the transaction rolls back) unless the lease holds at its end (:func:`holds`,
        which takes the leases' turn then: no lease changes before the commit); a lease
        found not holding is lost for good."""
        yield
        if self.lost or not holds(conn, self.token):
            self._lose("its lease no longer held when it was about to commit a write")
            raise LeaseLostError(LOST)

    def _lose(self, why: str) -> None:
        with self._lock_lost:
            if self.lost:
                return
            self.lost = True
        log.error(
            "this process lost its lease on the event store and takes no more events: %s. "
            "Its journal keeps what it acknowledged; restart it once the other process is "
            "stopped. %s",
            why,
            _advice(self.mode),
        )

    def release(self) -> None:
        """Give the lease up (a stopping process)."""
        with _held_lock:
            _held.discard(self.token)
        self._held = False
        with self.engine.begin() as conn:
            take_turn(conn, LEASES)
            conn.execute(delete(service_leases).where(service_leases.c.token == self.token))

    def _claim(self, write: bool) -> tuple[list[Holder], float]:
        """One look under the leases' turn: the conflicting live leases (then nothing is
        written), else (``write``) this one's row written or extended."""
        with self._lock, self.engine.begin() as conn:
            take_turn(conn, LEASES)
            now = store_clock(conn)
            blocking = [
                r for r in _live_others(conn, self.token, now) if conflicts_with(self.mode, r.mode)
            ]
            if blocking or not write:
                return blocking, now
            with _held_lock:  # before the commit: no look of this process deletes it
                _held.add(self.token)
            ends = now + self.length_s
            extended = conn.execute(
                update(service_leases)
                .where(service_leases.c.token == self.token)
                .values(expires_at=ends)
            ).rowcount
            if not extended:
                if self._held and self.mode == SOLE:
                    # lapsed and deleted by another process's look: not taken again
                    self._held = False
                    return [], now
                if self._held:  # shared: no snapshot relied on it
                    log.warning("the lease on the event store had lapsed; taken again")
                conn.execute(insert(service_leases).values(self._row(ends)))
        self._held = True
        return [], now

    def _row(self, ends: float) -> dict[str, Any]:
        return {
            "token": self.token,
            "name": _text(self.name),
            "host": _text(here()),
            "pid": os.getpid(),
            "mode": self.mode,
            "acquired_at": datetime.now(UTC),
            "expires_at": ends,
        }


def _text(value: str) -> str:
    """``value`` as a column takes it: at most 256 characters of valid UTF-8 (a name read
    from an environment of other bytes holds lone surrogates)."""
    return value.encode("utf-8", "replace").decode("utf-8")[:256]


def _advice(mode: str) -> str:
    if mode == SOLE:
        return (
            "A process of one worker without replica sync takes itself for the store's only "
            "writer (its head snapshots would cover rewards the other one applied): run every "
            "replica with BANDITOPS_REPLICA_SYNC_S > 0 (README: Serving replicas), or stop "
            "the other process first"
        )
    return (
        "Beside it this process's rewards would be missing from its head snapshots: start "
        "every replica with BANDITOPS_REPLICA_SYNC_S > 0 (README: Serving replicas), or "
        "stop it first"
    )


def live_holders(engine: Engine) -> list[Holder]:
    """The leases that have not lapsed and whose process is not known to be gone (none
    before revision 0009). A look: the lapsed and the gone ones are deleted (in the
    leases' turn), so that their holders, if they still run, write nothing more."""
    with engine.begin() as conn:
        if not inspect(conn).has_table(service_leases.name):
            return []
        take_turn(conn, LEASES)
        return _live_others(conn, "", store_clock(conn))


def holds(conn: Connection, token: str) -> bool:
    """Inside a transaction that has written: whether ``token``'s lease still holds and
    no conflicting one stands beside it, checked in the leases' turn held to the commit,
    so that no process takes the lease over before this transaction commits (PostgreSQL:
    a shared advisory hold, so writers do not wait for each other and a lease change
    waits for them; SQLite: the write lock the transaction's first write took). One
    round trip: it runs in every batch of the event writer."""
    if conn.dialect.name == "postgresql":
        # the hold, then the read (its snapshot taken once the hold is granted): two
        # statements in one query
        rows = conn.exec_driver_sql(_HOLDS_POSTGRESQL, {"key": LEASES}).all()
    else:
        rows = conn.execute(_HOLDS[conn.dialect.name]).all()
    mine = [r for r in rows if r[0] == token]
    if not mine:
        return False
    # its own row past its end still holds while no process has looked past it (a look
    # deletes it, in the leases' turn this transaction holds): nobody has written beside
    # it, and its renewal extends it, as :meth:`Lease.renew` does. Before, a wall clock
    # stepped forward past the lease (SQLite's clock is the host's: a VM resumed, NTP's
    # first correction) lost a sole service its lease for good with no other process
    # anywhere: every request a 503 until a restart (time pass, stop 50).
    now, mode = mine[0][3], mine[0][1]
    return not any(r[0] != token and r[2] > now and conflicts_with(mode, r[1]) for r in rows)


#: :func:`holds`'s statement per dialect but PostgreSQL's (``_HOLDS_POSTGRESQL``): every
#: lease with the store's clock (built once: it runs in every batch of the event writer,
#: and a statement built anew costs more than running it).
_HOLDS = {
    dialect: select(
        service_leases.c.token, service_leases.c.mode, service_leases.c.expires_at, clock
    )
    for dialect, clock in _CLOCK.items()
    if dialect != "postgresql"
}
_HOLDS_POSTGRESQL = (
    "SELECT pg_advisory_xact_lock_shared(%(key)s); "
    "SELECT token, mode, expires_at, extract(epoch FROM clock_timestamp()) FROM service_leases"
)
if _CLOCK_SQL["postgresql"] not in _HOLDS_POSTGRESQL:  # pragma: no cover - the same clock
    raise AssertionError("_HOLDS_POSTGRESQL must read the clock of _CLOCK_SQL")
