"""Shared helpers of the serving and store tests (real components only; the fixtures
are in :mod:`tests.serving_fixtures`).

* :class:`LiveServer`: the app under uvicorn on a free loopback port, in a thread.
* :class:`ServiceProcess`: ``python -m ops serve`` in a subprocess (for ``kill -9``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn

from bandit_core import make_policy, save_policy

ROOT = Path(__file__).resolve().parents[1]
DIM_USER = 4
DIM_ARM = 3
#: Bearer token of the test services (the service fails closed without one).
TEST_TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}


# ---------------------------------------------------------------------- models
def policy_file(
    path: Path,
    name: str = "shared_linucb",
    seed: int = 0,
    warm: int = 50,
    **options: Any,
) -> Path:
    """A policy state file, trained on ``warm`` seeded rows so versions differ by seed."""
    opts: dict[str, Any] = {"dim_user": DIM_USER, **options}
    if name.startswith("shared") or name == "epsilon_greedy":
        opts.setdefault("dim_arm", DIM_ARM)
    policy = make_policy(name, **opts)
    rng = np.random.default_rng(seed)
    if warm:
        ids = [f"item-{i}" for i in rng.integers(0, 10, size=warm)]
        policy.update_batch(
            rng.standard_normal((warm, DIM_USER)),
            ids,
            rng.random(warm),
            rng.standard_normal((warm, DIM_ARM)),
        )
    tmp = path.with_suffix(".tmp.npz")
    save_policy(policy, tmp)
    os.replace(tmp, path)  # atomic: a poller never sees half a file
    return path


def decision_body(rng: np.random.Generator, n: int = 5, user: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "context": rng.standard_normal(DIM_USER).round(6).tolist(),
        "candidates": [
            {"id": f"item-{i}", "features": rng.standard_normal(DIM_ARM).round(6).tolist()}
            for i in range(n)
        ],
    }
    if user is not None:
        body["user_id"] = user
    return body


# ---------------------------------------------------------------------- clients
def make_client(app: Any, token: str | None = TEST_TOKEN) -> Any:
    """A Starlette TestClient sending ``token`` as its bearer token (its import warns
    that httpx2 is preferred; harmless)."""
    from starlette.exceptions import StarletteDeprecationWarning

    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Using `httpx` with", category=StarletteDeprecationWarning
        )
        from fastapi.testclient import TestClient
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return TestClient(app, headers=headers)


def wait_ready(get: Any, timeout: float = 60.0) -> None:
    """Poll ``GET /readyz`` until 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if get("/readyz").status_code == 200:
                return
        time.sleep(0.05)
    raise TimeoutError("the service did not become ready")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LiveServer:
    """The app under a real uvicorn server on a free loopback port, in a thread."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(30)


class ServiceProcess:
    """``python -m ops serve`` as a subprocess (killable with SIGKILL)."""

    def __init__(self, env: dict[str, str], log: Path, args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.args = args
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        if "BANDITOPS_API_TOKEN" not in env and "BANDITOPS_AUTH_DISABLED" not in env:
            self.env["BANDITOPS_API_TOKEN"] = TEST_TOKEN  # clients send AUTH
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServiceProcess:
        cmd = [
            sys.executable,
            "-m",
            "ops",
            "serve",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            *self.args,
        ]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=out, stderr=out)
        with httpx.Client(base_url=self.url, timeout=5.0) as client:
            try:
                wait_ready(client.get, timeout=90.0)
            except TimeoutError:
                self.kill()
                raise RuntimeError(f"service did not start:\n{self.log.read_text()}") from None
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs (no final snapshot, no flush)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


# ---------------------------------------------------------------------- store rows
def decision_row(
    rng: np.random.Generator,
    event_id: str | None = None,
    created_at: Any = None,
    model_version: str | None = "v1",
    n: int = 4,
) -> Any:
    """A logged decision with random context and candidates (for store tests)."""
    from datetime import UTC, datetime

    from eventstore.records import DecisionRow

    probs = np.full(n, 1.0 / n)
    chosen = int(rng.integers(n))
    return DecisionRow(
        event_id=event_id or uuid.uuid4().hex,
        created_at=created_at or datetime.now(UTC),
        user_hash=None,
        context=rng.standard_normal(DIM_USER),
        candidate_ids=tuple(f"item-{i}" for i in range(n)),
        candidate_features=rng.standard_normal((n, DIM_ARM)),
        chosen=chosen,
        propensity=float(probs[chosen]),
        probabilities=probs,
        scores=rng.standard_normal(n),
        policy="uniform",
        model_version=model_version,
        traffic="production",
        fallback=False,
        explored=False,
    )


def reward_row(
    event_id: str,
    value: float,
    ts: Any = None,
    model_version: str | None = "v1",
    eligible: bool = True,
    **extra: Any,
) -> Any:
    from datetime import UTC, datetime

    from eventstore.records import RewardRow

    now = datetime.now(UTC)
    return RewardRow(  # a reward of the past (``ts``) was received when it happened
        event_id=event_id,
        value=value,
        ts=ts or now,
        received_at=ts or now,
        model_version=model_version,
        eligible=eligible,
        **extra,
    )


# ---------------------------------------------------------------------- faults
class HeldWrite:
    """``write_events`` held at ``release`` once ``armed``: a store that stops answering
    in the middle of a statement (nothing raises, nothing returns)."""

    def __init__(self) -> None:
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, conn: Any, items: Any) -> list[Any]:
        from serving.store.repository import write_events

        if self.armed:
            self.entered.set()
            assert self.release.wait(60)
        return write_events(conn, items)


# ---------------------------------------------------------------------- in-process service
def service_settings(tmp_path: Path, store_url: str | None = None, **overrides: Any) -> Any:
    """Settings of a test service: workspace in ``tmp_path``, seeded, fast polling."""
    from serving.settings import Settings

    options: dict[str, Any] = {
        "workspace": tmp_path / "ws",
        "database_url": store_url or f"sqlite:///{tmp_path / 'events.db'}",
        "seed": 7,
        "poll_interval_s": 3600.0,  # tests poll through /v1/admin/poll
        "user_salt": "test-salt-0123456789",
        "api_token": TEST_TOKEN,  # make_client sends it
    }
    options.update(overrides)
    return Settings(**options)


@contextlib.contextmanager
def running_client(settings: Any) -> Iterator[Any]:
    """A TestClient on a fresh app for ``settings`` (database migrated first)."""
    from eventstore.engine import make_engine
    from eventstore.migrate import upgrade
    from serving.app import create_app

    engine = make_engine(settings.store_url)
    upgrade(engine)
    engine.dispose()
    with make_client(create_app(settings)) as client:
        wait_ready(client.get)
        yield client


def served_policy(client: Any, role: str = "production") -> Any:
    """The live policy object of a role (the app runs in this process)."""
    served = client.app.state.service.loader.current
    model = getattr(served, role)
    return None if model is None else model.policy


def head_difference(a: Any, b: Any) -> float:
    """Largest absolute difference between two policies' learned float arrays.

    Other arrays must be equal, except ``pending`` (rank-one updates since the last
    refactorisation: bookkeeping that a batch update resets, not part of the posterior).
    """
    sa_, sb = a.to_state().arrays, b.to_state().arrays
    assert sa_.keys() == sb.keys()
    worst = 0.0
    for key, left in sa_.items():
        if key.endswith("pending"):
            continue
        right = sb[key]
        assert left.shape == right.shape, key
        if np.issubdtype(left.dtype, np.floating):
            worst = max(worst, float(np.max(np.abs(left - right), initial=0.0)))
        else:
            np.testing.assert_array_equal(left, right)
    return worst


def run_together(*calls: Callable[[], object]) -> None:
    """Run each call in a thread of its own, all at once; return once every one ended
    (the calls record their own outcomes)."""
    threads = [threading.Thread(target=call) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def drop_snapshots(store_url: str) -> None:
    """A crash before the first snapshot: recovery replays every applied reward."""
    import sqlalchemy as sa

    from eventstore.engine import make_engine

    engine = make_engine(store_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM head_snapshots"))
    finally:
        engine.dispose()
