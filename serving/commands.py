"""The service commands of the ``banditops`` CLI: ``serve``, ``db upgrade``,
``db downgrade``, ``store prune`` (registered on the app in :mod:`ops.cli`)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from eventstore.console import error
from eventstore.settings import env_name
from eventstore.text import redact_credentials

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from eventstore.leases import Lease
    from serving.settings import Settings

console = Console()

db_app = typer.Typer(help="Create, upgrade or downgrade the event store.", no_args_is_help=True)
store_app = typer.Typer(help="Event store maintenance.", no_args_is_help=True)

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="SQLAlchemy URL (default: BANDITOPS_DATABASE_URL, else the workspace SQLite file).",
    ),
]


def _url(url: str | None) -> str:
    from serving.settings import Settings

    return url or Settings().store_url


def _shown(url: str) -> str:
    from sqlalchemy import make_url

    return make_url(url).render_as_string(hide_password=True)


def check_port_free(host: str, port: int) -> None:
    """``ValueError`` naming ``--port`` when another process listens on ``host:port``
    (uvicorn's own answer was a log line and exit code 3, after the migration ran); it
    binds as uvicorn does (``SO_REUSEADDR``), so a port left in TIME_WAIT is free."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn binds
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ValueError(
                f"--port {port}: {host}:{port} cannot be bound: {exc.strerror or exc} "
                "(another process listens on it?)."
            ) from None


def check_schema(settings: Settings) -> None:
    """Exit 2 with one ``error:`` line unless the store is at this release's revision."""
    from sqlalchemy.exc import SQLAlchemyError

    from eventstore.engine import make_engine
    from eventstore.migrate import StoreSchemaError, require_current

    engine = make_engine(settings.store_url, connect_timeout_s=settings.store_connect_timeout_s)
    try:
        require_current(engine)
    except (StoreSchemaError, SQLAlchemyError) as exc:
        first = (str(exc).splitlines() or [""])[0]
        error(redact_credentials(first))
        raise typer.Exit(2) from None
    finally:
        engine.dispose()


def take_lease(settings: Settings, take: bool) -> Lease | None:
    """The serving process's lease on the store (:mod:`eventstore.leases`), taken here
    (``take``: one worker, which serves in this process and keeps it) or only waited
    for (several workers, each of which takes its own). Exit 2 with one ``error:`` line
    while another serving process holds a lease this one's cannot stand beside, after
    waiting up to ``lease_s`` for it to lapse: a worker's own refusal at start is a
    failed start's traceback."""
    from eventstore.engine import make_engine
    from eventstore.leases import SHARED, SOLE, Lease, LeaseConflictError
    from serving.replica_sync import replica_name

    engine = make_engine(settings.store_url, connect_timeout_s=settings.store_connect_timeout_s)
    mode = SOLE if settings.sole_writer else SHARED
    lease = Lease(engine, replica_name(settings.replica_id), mode, settings.lease_s)
    try:
        lease.acquire(take=take)
    except LeaseConflictError as exc:
        error(str(exc))
        raise typer.Exit(2) from None
    finally:
        engine.dispose()  # a lease taken moves to the service's engine
    return lease if take else None


def uvicorn_limits(settings: Settings) -> dict[str, Any]:
    """uvicorn's protocol, connection limits and timeouts from the settings (README: HTTP
    API); the head's limits are :mod:`serving.http_protocol`'s, which the app sets."""
    from serving.http_protocol import PROTOCOL

    return {
        "http": PROTOCOL,
        "timeout_keep_alive": settings.http_timeout_keep_alive_s,
        "limit_concurrency": settings.http_limit_concurrency,
        "backlog": settings.http_backlog,
        "h11_max_incomplete_event_size": settings.http_max_incomplete_event_bytes,
        "timeout_graceful_shutdown": 30,
    }


@db_app.command("upgrade")
def db_upgrade(url: UrlOption = None, revision: str = "head") -> None:
    """Create the event-store tables, or migrate them to the newest schema."""
    from eventstore.engine import make_engine
    from eventstore.migrate import upgrade
    from serving.settings import Settings

    target = _url(url)
    # a store that takes the connection and never answers fails the start, which its
    # supervisor retries (it hung there for good)
    engine = make_engine(target, connect_timeout_s=Settings().store_connect_timeout_s)
    with _migrating(target, engine):
        now = upgrade(engine, revision)
    console.print(f"event store {_shown(target)} is at revision {now}")


@contextmanager
def _migrating(target: str, engine: Engine) -> Iterator[None]:
    """A migration of ``engine`` (``target``'s): its errors named in one line (exit 1),
    not a traceback; the engine disposed."""
    from sqlalchemy.exc import SQLAlchemyError

    from eventstore.migrate import StoreSchemaError

    try:
        yield
    except SQLAlchemyError as exc:  # unreachable, refused: named, not a traceback
        first = str(exc).splitlines()[0] if str(exc) else ""
        error(
            f"the event store {_shown(target)} could not be migrated: "
            f"{exc.__class__.__name__}: {redact_credentials(first)}"
        )
        raise typer.Exit(1) from None
    except StoreSchemaError as exc:
        error(str(exc))
        raise typer.Exit(1) from None
    finally:
        engine.dispose()


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[
        str, typer.Argument(help="The revision to go back to: the older release's newest.")
    ],
    url: UrlOption = None,
    forget_pruned_catalog: Annotated[
        bool,
        typer.Option(
            "--forget-pruned-catalog",
            help="Past 0008 after a prune: the older release lists the catalog before the "
            "horizon without the pruned versions.",
        ),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Take the event store back to REVISION, for an older banditops: back it up first.

    Before it, move @production to a version the older release registered (a newer
    release's version may use what it cannot read: it serves its fallback)."""
    from eventstore.engine import make_engine
    from eventstore.migrate import check_downgrade, downgrade
    from serving.settings import Settings

    target = _url(url)
    engine = make_engine(target, connect_timeout_s=Settings().store_connect_timeout_s)
    with _migrating(target, engine):
        have = check_downgrade(engine, revision)
        if not yes and not typer.confirm(
            f"take the event store {_shown(target)} from revision {have} back to {revision}? "
            "A downgrade drops what the older release cannot read; back the store up first",
            err=True,
        ):
            raise typer.Exit(1)
        now = downgrade(engine, revision, forget_pruned_catalog=forget_pruned_catalog)
    console.print(f"event store {_shown(target)} is at revision {now}")


@store_app.command("prune")
def store_prune(
    older_than: Annotated[str, typer.Option("--older-than", help="Age to delete, e.g. 90d.")],
    url: UrlOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count, delete nothing.")] = False,
) -> None:
    """Delete decisions (with their rewards), old head snapshots and superseded catalog
    item versions past the retention, never those a running rollout reads or a served
    head would be rebuilt from (as the bandit_retention DAG, which also keeps the windows
    of running retrains: it asks Airflow for them)."""
    from eventstore.engine import make_engine
    from eventstore.migrate import StoreSchemaError, require_current
    from eventstore.retention import apply_retention
    from serving.durations import parse_duration
    from serving.settings import Settings

    try:
        age = parse_duration(older_than)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--older-than") from exc
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    try:
        datetime.now(UTC) - age
    except OverflowError:
        raise typer.BadParameter(
            f"{older_than!r} reaches before year 1.", param_hint="--older-than"
        ) from None
    target = _url(url)
    try:
        engine = make_engine(target)
    except (ArgumentError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--url") from None
    settings = Settings()
    window_stop, served = None, None
    if settings.uses_mlflow:  # registry versions learn by their window (file models do not)
        from modelregistry.registry import AliasReader, client_defaults

        client_defaults()
        reader = AliasReader(
            settings.tracking_uri, settings.model_name, registry_uri=settings.registry_uri
        )
        window_stop = reader.window_stop
        served = reader.served_labels((settings.production_alias, settings.candidate_alias))
    try:
        require_current(engine)  # a store of an older release: "run db upgrade", not SQL
        result = apply_retention(
            engine,
            settings.model_name,
            age / timedelta(days=1),
            window_stop=window_stop,
            served=served,
            dry_run=dry_run,
        )
    except SQLAlchemyError as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        error(f"the event store {_shown(target)} refused: {exc.__class__.__name__}: {first}")
        raise typer.Exit(1) from None
    except StoreSchemaError as exc:
        error(str(exc))
        raise typer.Exit(2) from None
    finally:
        engine.dispose()
    verb = "would delete" if dry_run else "deleted"
    parts = ", ".join(f"{n} {table}" for table, n in result["deleted"].items())
    console.print(f"{verb} {parts} older than {result['cutoff']}")
    if result["floored_by"] is not None:
        console.print(f"(held back from {older_than} by {result['floored_by']})")


def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port.")] = 8000,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Worker processes (default: BANDITOPS_WORKERS, else 1)."),
    ] = None,
    migrate: Annotated[
        bool, typer.Option(help="Run `db upgrade` before starting (off: fail if behind).")
    ] = True,
    access_log: Annotated[bool, typer.Option(help="uvicorn access log.")] = False,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Run the decision service with uvicorn (settings from BANDITOPS_* variables).

    With several workers each process keeps its own online heads and rebuilds them from
    the store when it starts (head snapshots are off), and Prometheus runs in
    multiprocess mode.
    """
    import logging.config

    import uvicorn
    from uvicorn.config import LOG_LEVELS

    from eventstore.settings import create_directories
    from serving.log_config import log_config
    from serving.settings import Settings

    if log_level not in LOG_LEVELS:
        raise typer.BadParameter(
            f"must be one of {', '.join(LOG_LEVELS)}; got {log_level!r}.", param_hint="--log-level"
        )
    # the project's loggers at --log-level, here for the start (migration, model load) and
    # in uvicorn's config, which applies it again in every worker process
    logging_config = log_config(LOG_LEVELS[log_level])
    logging.config.dictConfig(logging_config)
    if workers is not None:  # the option wins over the environment and banditops.toml
        os.environ[env_name("workers")] = str(workers)
    # a bad setting, an absent token or a folder that cannot be made: the root command
    # group (ops.cli) ends the command with one line naming it, never a traceback
    settings = Settings()
    workers = settings.workers
    os.environ[env_name("workers")] = str(workers)  # what each worker process reads
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # before prometheus_client is imported (it reads the folder then)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="banditops-metrics-")
    settings.check_auth()
    settings.check_secrets_strong()
    create_directories(settings)
    check_port_free(host, port)
    settings.resolve_salt()  # create a generated salt once, before workers start
    if migrate:
        db_upgrade(url=settings.store_url)
    else:  # one line naming the revisions, not the traceback of a failed start (exit 3)
        check_schema(settings)
    lease = take_lease(settings, take=workers == 1)
    options = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "log_config": logging_config,
        "access_log": access_log,
        **uvicorn_limits(settings),
    }
    try:
        if workers == 1:
            from serving.app import create_app

            uvicorn.run(create_app(settings, lease=lease), **options)
        else:
            uvicorn.run("serving.app:create_app", factory=True, workers=workers, **options)
    finally:
        if workers > 1 and os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").startswith(
            tempfile.gettempdir()
        ):
            shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
