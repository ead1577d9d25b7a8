"""Alembic environment: runs the migrations on the engine passed in
``config.attributes["engine"]`` (see :func:`eventstore.migrate.alembic_config`)."""

from __future__ import annotations

from alembic import context

from eventstore.schema import metadata


def run_migrations_online() -> None:
    engine = context.config.attributes.get("engine")
    if engine is None:
        raise RuntimeError(
            "run the banditops migrations with `banditops db upgrade` (or "
            "eventstore.migrate.upgrade), which passes the engine to Alembic."
        )
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported by banditops.")
run_migrations_online()
