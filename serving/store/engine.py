"""The service's event-store engine and its SQLite checkpointer, from the settings (the one
place both the service and the benchmark's commit floor build them)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from eventstore import checkpoint
from eventstore.checkpoint import WalCheckpointer
from eventstore.engine import is_sqlite, make_engine
from serving.store.outage_log import OutageLog

#: A service transaction may wait for its client's next statement a quarter of
#: ``replica_sync_horizon_s`` (at least a second): ids are claimed when a row is inserted
#: and the replica sync takes an id it has not seen within the horizon for never coming,
#: so a transaction stalled mid-way must fail (its events journaled and written again,
#: with new ids) rather than commit after the horizon, which lost a reward for good on
#: another replica (PostgreSQL helper, stop 43: a 71 s stall against a 60 s horizon).
#: The writers' statements get the same bound (``statement_timeout``): a server frozen in
#: the middle of one and thawed later cancels it instead of committing late.
IDLE_SHARE_OF_HORIZON = 0.25


def transaction_bound_s(settings: Any) -> float:
    """How long a service transaction may wait for its client's next statement, and how
    long the writers' statements may run (:data:`IDLE_SHARE_OF_HORIZON`)."""
    return max(1.0, float(settings.replica_sync_horizon_s) * IDLE_SHARE_OF_HORIZON)


def store_engine(settings: Any) -> Engine:
    """An engine for ``settings.store_url`` with the service's durability, connect, lock
    and idle-in-transaction timeouts and (SQLite) checkpoint policy: no checkpoint inside
    commits when ``sqlite_checkpoint_s`` hands them to :func:`checkpointer`."""
    return make_engine(
        settings.store_url,
        settings.sqlite_synchronous,
        connect_timeout_s=settings.store_connect_timeout_s,
        sqlite_autocheckpoint=settings.sqlite_checkpoint_s == 0.0,
        lock_timeout_s=settings.store_lock_timeout_s,
        idle_in_transaction_s=transaction_bound_s(settings),
    )


def checkpointer(engine: Engine, settings: Any) -> WalCheckpointer | None:
    """The thread that checkpoints a SQLite store every ``sqlite_checkpoint_s`` (None for
    PostgreSQL, or with the setting at 0); started and stopped by its owner. A store
    outage is logged once as it begins and once as it ends (:mod:`serving.store.outage_log`;
    each failed tick logged a traceback)."""
    if is_sqlite(engine) and settings.sqlite_checkpoint_s > 0.0:
        failure_log = OutageLog(checkpoint.log, "checkpointing the SQLite log")
        return WalCheckpointer(engine, settings.sqlite_checkpoint_s, failure_log)
    return None
