"""Create or upgrade an event-store database with the Alembic migrations shipped in
this package (no ``alembic.ini`` needed, so it works from an installed wheel)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(engine: Engine) -> Config:
    """An Alembic config that runs the packaged migrations on ``engine``.

    The engine travels in ``Config.attributes`` (read by ``migrations/env.py``), so URLs
    with ``%`` or passwords never go through the ini parser.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Upgrade the database behind ``engine`` to ``revision``; returns the new revision."""
    command.upgrade(alembic_config(engine), revision)
    return current_revision(engine)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (``None`` for an empty database)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    """The newest revision shipped with this package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


class StoreSchemaError(RuntimeError):
    """The event store's schema is not the one this release of banditops needs."""


def require_current(engine: Engine) -> None:
    """Raise :class:`StoreSchemaError` unless the database is at the shipped head
    revision (an empty database, such as a SQLite file that did not exist, has none)."""
    have, want = current_revision(engine), head_revision()
    if have != want:
        where = engine.url.render_as_string(hide_password=True)
        state = "has no banditops tables" if have is None else f"is at revision {have!r}"
        raise StoreSchemaError(
            f"the event store at {where} {state}, this banditops needs revision {want!r}: "
            "run `banditops db upgrade` (`banditops serve` does it when it starts)."
        )
