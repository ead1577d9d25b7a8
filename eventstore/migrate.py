"""Create or upgrade an event-store database with the Alembic migrations shipped in
this package (no ``alembic.ini`` needed, so it works from an installed wheel)."""

from __future__ import annotations

import functools
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
    """Upgrade the database behind ``engine`` to ``revision``; returns the new revision.

    Raises :class:`StoreSchemaError` for a store at a revision this release does not ship
    (migrated by a newer banditops), where Alembic said only that it could not locate it,
    and for a ``revision`` older than the store's: an upgrade never downgrades, and it
    answered "is at revision <newer>" as if it had done what was asked.
    """
    _check_known(engine)
    have = current_revision(engine)
    order = revision_order()
    if have is not None and revision in order and order.index(revision) < order.index(have):
        raise StoreSchemaError(
            f"the event store is at revision {have!r}, after {revision!r}: an upgrade never "
            "goes back. To downgrade (for an older banditops), back the store up and run "
            f"Alembic's downgrade to {revision!r} (README: Upgrading)."
        )
    command.upgrade(alembic_config(engine), revision)
    return current_revision(engine)


#: ``Config.attributes`` key: a downgrade past 0008 may forget the catalog's horizon
#: (the older release then lists the catalog before it without the pruned versions).
FORGET_PRUNED_CATALOG = "forget_pruned_catalog"


def downgrade(engine: Engine, revision: str, *, forget_pruned_catalog: bool = False) -> str | None:
    """Take the database behind ``engine`` back to ``revision`` (a shipped revision before
    the store's), for an older banditops; returns the revision it is at.

    A revision's downgrade drops what the older code would misread (0004: the snapshots
    written in parts) or refuses what it would answer wrongly (0008: a catalog pruned by
    retention, unless ``forget_pruned_catalog``). Back the store up first.

    Raises
    ------
    StoreSchemaError
        An unknown revision, one not before the store's, or a downgrade that refused.
    """
    check_downgrade(engine, revision)
    config = alembic_config(engine)
    config.attributes[FORGET_PRUNED_CATALOG] = forget_pruned_catalog
    try:
        command.downgrade(config, revision)
    except DowngradeRefusedError as exc:
        raise StoreSchemaError(str(exc)) from None
    return current_revision(engine)


def check_downgrade(engine: Engine, revision: str) -> str:
    """The store's revision, when :func:`downgrade` to ``revision`` can begin (asked
    before a person is asked to confirm it).

    Raises
    ------
    StoreSchemaError
        ``revision`` is not shipped, or not before the store's, or serving processes
        still hold leases on the store.
    """
    _check_known(engine)
    have = current_revision(engine)
    order = revision_order()
    if revision not in order:
        raise StoreSchemaError(
            f"revision must be one of {', '.join(order)} (the shipped migrations); "
            f"got {revision[:40]!r}."
        )
    if have is None or order.index(revision) >= order.index(have):
        raise StoreSchemaError(
            f"the event store is at revision {have!r}, not after {revision!r}: a downgrade "
            "only goes back (`banditops db upgrade` goes forward)."
        )
    from eventstore.leases import live_holders

    running = live_holders(engine)
    if running:
        raise StoreSchemaError(
            f"{len(running)} serving process(es) hold a lease on this store (first: "
            f"{running[0].name[:80]!r} on host {running[0].host.split('/')[0][:80]}, pid "
            f"{running[0].pid}): stop them first; a downgrade takes away tables they write."
        )
    return have


class DowngradeRefusedError(RuntimeError):
    """A revision's downgrade found data the older code would answer wrongly."""


@functools.cache
def revision_order() -> tuple[str, ...]:
    """The shipped revisions, oldest first."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    walked = ScriptDirectory.from_config(config).walk_revisions()  # newest first
    return tuple(reversed([script.revision for script in walked]))


@functools.cache
def known_revisions() -> frozenset[str]:
    """Every revision shipped with this package (read once: they are files of it)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return frozenset(
        script.revision for script in ScriptDirectory.from_config(config).walk_revisions()
    )


def _check_known(engine: Engine) -> None:
    have = current_revision(engine)
    if have is not None and have not in known_revisions():
        where = engine.url.render_as_string(hide_password=True)
        raise StoreSchemaError(
            f"the event store at {where} is at revision {have!r}, which this banditops "
            f"does not ship (its newest is {head_revision()!r}): a newer banditops migrated "
            "it. Run that release, or a store of this one's."
        )


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
    _check_known(engine)
    have, want = current_revision(engine), head_revision()
    if have != want:
        where = engine.url.render_as_string(hide_password=True)
        state = "has no banditops tables" if have is None else f"is at revision {have!r}"
        raise StoreSchemaError(
            f"the event store at {where} {state}, this banditops needs revision {want!r}: "
            "run `banditops db upgrade` (`banditops serve` does it when it starts)."
        )
