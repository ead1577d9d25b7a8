"""Alembic environment: runs the migrations on the engine passed in
``config.attributes["engine"]`` (see :func:`eventstore.migrate.alembic_config`)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from eventstore.schema import metadata

#: The PostgreSQL advisory lock that one upgrade at a time holds (any 64-bit key that no
#: other tool of the database uses): replicas started together each run ``db upgrade``.
MIGRATION_LOCK = 0x62616E6469746F70  # "banditop"


def run_migrations_online() -> None:
    engine = context.config.attributes.get("engine")
    if engine is None:
        raise RuntimeError(
            "run the banditops migrations with `banditops db upgrade` or `banditops db "
            "downgrade REVISION` (eventstore.migrate.upgrade / downgrade), which pass the "
            "engine to Alembic."
        )
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            # one transaction for every step on SQLite too (Alembic commits each one
            # there): a downgrade refused half-way leaves the store where it was
            transactional_ddl=True,
        )
        with context.begin_transaction():
            if connection.dialect.name == "sqlite":
                # pysqlite begins before DML only: DDL first would run outside
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            if connection.dialect.name == "postgresql":
                # the others wait here, then find the store at the revision this one
                # reached (before, one of two replicas starting at once failed); a
                # migration waits as long as it takes, for the other's and for its tables
                connection.execute(text("SELECT set_config('lock_timeout', '0', true)"))
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK}
                )
            context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported by banditops.")
run_migrations_online()
