"""The store's timed readers (the replica sync, the catalog's change feed, the model
poll, the SQLite checkpointer) log a store (or registry) outage once as it begins (one
WARNING line, no traceback) and once as it ends (INFO), its repeats at DEBUG; any other
failure keeps its traceback.

Each failed poll logged a traceback (60 lines for a psycopg2 error), once a second per
worker for as long as the store was out of reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from mlflow.exceptions import MlflowException

from bandit_core import Policy, load_policy
from benchmarks.faults import TcpProxy
from eventstore.contract import PRODUCTION
from eventstore.engine import make_engine
from eventstore.migrate import upgrade
from eventstore.scratch import scratch_postgres_database
from serving.catalog.runtime import CatalogService
from serving.models.loader import ModelLoader
from serving.models.mlflow_source import MlflowModelSource
from serving.models.recovery import recover
from serving.models.sources import FileModelSource, ModelRef
from serving.replica_sync import ReplicaSync
from serving.settings import Settings
from serving.store.engine import checkpointer, store_engine
from serving.store.outage_log import is_expected_outage
from serving.store.repository import EventStore
from tests.serving_helpers import free_port, policy_file

POLL_S = 0.05


@contextlib.contextmanager
def _store_behind_a_proxy(postgres_url: str) -> Iterator[tuple[sa.Engine, TcpProxy]]:
    """A scratch PostgreSQL store at the current revision, an engine on it through a TCP
    proxy, and the proxy (cut it for an outage)."""
    with scratch_postgres_database(postgres_url, prefix="banditops_outage_log") as url:
        direct = make_engine(url)
        upgrade(direct)
        direct.dispose()
        target = sa.make_url(url)
        with TcpProxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
            proxied = target.set(host="127.0.0.1", port=proxy.port)
            engine = make_engine(proxied.render_as_string(hide_password=False), connect_timeout_s=2)
            try:
                yield engine, proxy
            finally:
                engine.dispose()


async def _through_an_outage(
    proxy: TcpProxy, caplog: pytest.LogCaptureFixture, logger: str, polls: int = 6
) -> None:
    """Cut the store for at least ``polls`` failed polls of ``logger`` (a record each),
    then restore it and wait up to 10 s for the recovery line."""
    await asyncio.sleep(5 * POLL_S)  # a few good polls first
    proxy.cut()
    deadline = time.monotonic() + 30
    while sum(r.name == logger for r in caplog.records) < polls:  # a record per failure
        assert time.monotonic() < deadline, caplog.text
        await asyncio.sleep(POLL_S)
    proxy.restore()
    recovered = time.monotonic() + 10  # the caller asserts the line
    while _count(caplog, logger, logging.INFO, "answers again") < 1:
        if time.monotonic() > recovered:
            return
        await asyncio.sleep(POLL_S)


def _count(caplog: pytest.LogCaptureFixture, logger: str, level: int, text: str = "") -> int:
    return sum(
        r.name == logger and r.levelno == level and text in r.getMessage() for r in caplog.records
    )


def _assert_logged_once(caplog: pytest.LogCaptureFixture, logger: str, what: str) -> None:
    mine = [r for r in caplog.records if r.name == logger]
    warnings = [r for r in mine if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    [warning] = warnings
    assert warning.levelno == logging.WARNING and warning.exc_info is None
    assert warning.getMessage().startswith(f"{what} failed: the store is out of reach (")
    assert "\n" not in warning.getMessage() and "OperationalError" in warning.getMessage()
    assert all(r.exc_info is None for r in mine)
    assert "Traceback" not in caplog.text
    [ended] = [r for r in mine if r.levelno == logging.INFO and "answers again" in r.getMessage()]
    assert ended.getMessage().startswith(f"{what}: the store answers again after ")
    assert ended.created > warning.created


def _run_beside(task: Callable[[], Awaitable[None]], body: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        running = asyncio.create_task(task())
        try:
            await body()
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running

    asyncio.run(main())


@pytest.mark.postgres
def test_replica_sync_logs_an_outage_once_and_its_end(
    postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="serving.replica_sync")
    base = load_policy(policy_file(tmp_path / "base.npz", warm=5))
    with _store_behind_a_proxy(postgres_url) as (engine, proxy):
        store = EventStore(engine)
        model = recover(store, "v/1", base, "test")
        sync = ReplicaSync(store, "b", interval_s=POLL_S, horizon_s=1.0)
        _run_beside(
            lambda: sync.run(lambda: [model]),
            lambda: _through_an_outage(proxy, caplog, "serving.replica_sync"),
        )
    _assert_logged_once(caplog, "serving.replica_sync", "replica sync")


@pytest.mark.postgres
def test_the_catalog_feed_logs_an_outage_once_and_its_end(
    postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="serving.catalog.runtime")
    with _store_behind_a_proxy(postgres_url) as (engine, proxy):
        catalog = CatalogService(engine, Settings(workspace=tmp_path / "ws", catalog_poll_s=POLL_S))

        async def body() -> None:
            await catalog.start()
            try:
                await _through_an_outage(proxy, caplog, "serving.catalog.runtime")
            finally:
                await catalog.stop()

        asyncio.run(body())
    _assert_logged_once(caplog, "serving.catalog.runtime", "reading the catalog change feed")


def test_an_unexpected_failure_keeps_its_traceback_every_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A fault of the service, not of the store: an ERROR with its traceback per poll."""
    engine = make_engine(f"sqlite:///{tmp_path / 'events.db'}")
    upgrade(engine)
    sync = ReplicaSync(EventStore(engine), "b", interval_s=POLL_S, horizon_s=1.0)

    def broken() -> list[object]:
        raise KeyError("no such model")

    async def wait_for_three() -> None:
        deadline = time.monotonic() + 10
        while _count(caplog, "serving.replica_sync", logging.ERROR) < 3:
            assert time.monotonic() < deadline, caplog.text
            await asyncio.sleep(POLL_S)

    _run_beside(lambda: sync.run(broken), wait_for_three)  # type: ignore[arg-type]
    engine.dispose()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) >= 3 and all(r.exc_info and r.exc_info[0] is KeyError for r in errors)


def _raised(make: Callable[[], BaseException], handling: BaseException) -> BaseException:
    """What ``make()`` raises while ``handling`` is handled (its ``__context__``)."""
    try:
        try:
            raise handling
        except BaseException:
            raise make()  # noqa: B904 - the implicit context is what is under test
    except BaseException as exc:
        return exc


def test_an_error_raised_while_handling_an_outage_is_a_fault_unless_it_wraps_it() -> None:
    """A bug (a KeyError) raised while handling a refused connection was classed as an
    outage (the implicit ``__context__`` was followed), logged as one WARNING line and
    its traceback lost. ``__cause__`` always counts; ``__context__`` only behind the
    MLflow and ``requests`` errors, which wrap what they handle so."""
    refused = ConnectionRefusedError("refused")
    assert not is_expected_outage(_raised(lambda: KeyError("model"), refused))
    assert is_expected_outage(_raised(lambda: MlflowException("API request failed"), refused))
    requests_error = _raised(lambda: requests.exceptions.ConnectionError("pool"), refused)
    assert is_expected_outage(_raised(lambda: MlflowException("failed"), requests_error))
    caused = KeyError("model")
    caused.__cause__ = refused
    assert is_expected_outage(caused)
    suppressed = _raised(lambda: MlflowException("failed"), refused)
    suppressed.__suppress_context__ = True
    assert not is_expected_outage(suppressed)


def _loader_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "serving.models.loader"]


def test_the_model_poll_logs_a_store_outage_once_and_its_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A new version's recovery reads the store at every poll until it works: during an
    outage (here the SQLite file moved away: every transaction fails) one WARNING line,
    DEBUG lines for the repeats and one INFO line when it loads. Each failed poll
    logged a traceback."""
    caplog.set_level(logging.DEBUG, logger="serving.models.loader")
    db = tmp_path / "events.db"
    engine = make_engine(f"sqlite:///{db}")
    upgrade(engine)
    source = FileModelSource({PRODUCTION: policy_file(tmp_path / "v.npz")})
    loader = ModelLoader(source, EventStore(engine), interval_s=60.0)
    db.rename(tmp_path / "away.db")
    for _ in range(4):
        loader.poll()
        assert loader.current is not None and loader.current.production is None  # fallback
    (tmp_path / "away.db").rename(db)
    assert loader.poll() is True and loader.current.production is not None
    engine.dispose()
    mine = _loader_records(caplog)
    [warning] = [r for r in mine if r.levelno >= logging.WARNING]
    message = warning.getMessage()
    assert warning.levelno == logging.WARNING and all(r.exc_info is None for r in mine)
    recovery = "model poll (recovery of production version "
    assert message.startswith(recovery) and ") failed: the event store is out of reach (" in message
    assert "OperationalError" in message and "\n" not in message
    assert sum(r.levelno == logging.DEBUG and "failed again" in r.getMessage() for r in mine) == 3
    [ended] = [r for r in mine if "answers again" in r.getMessage()]
    assert ended.levelno == logging.INFO
    assert ended.getMessage().startswith(recovery)
    assert "): the event store answers again after " in ended.getMessage()
    assert ended.getMessage().endswith("(4 failed reads)")


def test_the_model_poll_logs_a_registry_outage_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry that refuses connections (the MLflow client's error wraps the socket's):
    one WARNING line naming the source, the repeats at DEBUG. Each poll logged a
    WARNING."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    caplog.set_level(logging.DEBUG, logger="serving.models.loader")
    engine = make_engine(f"sqlite:///{tmp_path / 'events.db'}")
    upgrade(engine)
    source = MlflowModelSource(f"http://127.0.0.1:{free_port()}", "m", {PRODUCTION: "production"})
    loader = ModelLoader(source, EventStore(engine), interval_s=60.0)
    for _ in range(3):
        loader.poll()
    engine.dispose()
    mine = _loader_records(caplog)
    [warning] = [r for r in mine if r.levelno >= logging.WARNING]
    assert warning.getMessage().startswith(
        "model poll (production lookup) failed: the model source mlflow is out of reach "
        "(MlflowException: "
    )
    assert all(r.exc_info is None for r in mine)
    assert sum(r.levelno == logging.DEBUG and "failed again" in r.getMessage() for r in mine) == 2
    assert loader.failures == 3  # still counted each time (banditops_model_load_failures)


def test_the_sqlite_checkpointer_logs_an_outage_once_and_its_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The service's checkpointer (:func:`serving.store.engine.checkpointer`) while its
    SQLite file is moved away and its connections reopened (they fail): one WARNING line,
    DEBUG repeats, one INFO line once the file is back. Each tick logged a traceback."""
    caplog.set_level(logging.DEBUG, logger="eventstore.checkpoint")
    db = tmp_path / "events.db"
    settings = Settings(workspace=tmp_path / "ws", database_url=f"sqlite:///{db}",
                        sqlite_checkpoint_s=POLL_S)  # fmt: skip
    engine = store_engine(settings)
    upgrade(engine)
    walker = checkpointer(engine, settings)
    assert walker is not None

    def logged(level: int, text: str) -> int:
        return _count(caplog, "eventstore.checkpoint", level, text)

    def wait_for(level: int, text: str, n: int) -> None:
        deadline = time.monotonic() + 10
        while logged(level, text) < n:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(POLL_S)

    walker.start()
    try:
        db.rename(tmp_path / "away.db")
        engine.dispose()  # new connections: each checks the file (and fails)
        wait_for(logging.DEBUG, "failed again", 3)
        (tmp_path / "away.db").rename(db)
        wait_for(logging.INFO, "answers again", 1)
    finally:
        walker.stop()
        engine.dispose()
    mine = [r for r in caplog.records if r.name == "eventstore.checkpoint"]
    [warning] = [r for r in mine if r.levelno >= logging.WARNING]
    assert warning.levelno == logging.WARNING and all(r.exc_info is None for r in mine)
    assert warning.getMessage().startswith(
        "checkpointing the SQLite log failed: the store is out of reach (OperationalError: "
    )
    assert "Traceback" not in caplog.text


class _DownloadRefused(FileModelSource):
    """A registry whose lookups answer and whose artifact downloads are refused."""

    def load(self, ref: ModelRef) -> Policy:
        raise ConnectionRefusedError(f"artifact store refused the download of {ref.version}")


def test_a_download_outage_beside_a_working_lookup_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The lookup answers and the download keeps failing: one WARNING line naming the
    download and its version over every poll. The two reads shared one log, so each poll
    logged the lookup's "answers again" and the download's WARNING anew."""
    caplog.set_level(logging.DEBUG, logger="serving.models.loader")
    engine = make_engine(f"sqlite:///{tmp_path / 'events.db'}")
    upgrade(engine)
    source = _DownloadRefused({PRODUCTION: policy_file(tmp_path / "v.npz")})
    loader = ModelLoader(source, EventStore(engine), interval_s=60.0, retry_failed_s=0.0)
    for _ in range(4):
        loader.poll()
        assert loader.current is not None and loader.current.production is None
    engine.dispose()
    mine = _loader_records(caplog)
    [warning] = [r for r in mine if r.levelno >= logging.WARNING]
    version = source.resolve(PRODUCTION).version  # type: ignore[union-attr]
    assert warning.getMessage().startswith(
        f"model poll (download of production version {version}) failed: the model source "
    )
    assert not [r for r in mine if "answers again" in r.getMessage()]
    assert sum(r.levelno == logging.DEBUG and "failed again" in r.getMessage() for r in mine) == 3
