"""The service's event-store engine and its SQLite checkpointer, from the settings (the one
place both the service and the benchmark's commit floor build them)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from eventstore.checkpoint import WalCheckpointer
from eventstore.engine import is_sqlite, make_engine


def store_engine(settings: Any) -> Engine:
    """An engine for ``settings.store_url`` with the service's durability, connect and
    lock timeouts and (SQLite) checkpoint policy: no checkpoint inside commits when
    ``sqlite_checkpoint_s`` hands them to :func:`checkpointer`."""
    return make_engine(
        settings.store_url,
        settings.sqlite_synchronous,
        connect_timeout_s=settings.store_connect_timeout_s,
        sqlite_autocheckpoint=settings.sqlite_checkpoint_s == 0.0,
        lock_timeout_s=settings.store_lock_timeout_s,
    )


def checkpointer(engine: Engine, settings: Any) -> WalCheckpointer | None:
    """The thread that checkpoints a SQLite store every ``sqlite_checkpoint_s`` (None for
    PostgreSQL, or with the setting at 0); started and stopped by its owner."""
    if is_sqlite(engine) and settings.sqlite_checkpoint_s > 0.0:
        return WalCheckpointer(engine, settings.sqlite_checkpoint_s)
    return None
