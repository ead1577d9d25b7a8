"""Reliability benchmark: load held, faults survived, bad input refused, nothing lost.

    python -m benchmarks.reliability [--seconds 60] [--rps 200] [--cases load,step,...]
        [--postgres-url URL] [--json PATH] [--markdown PATH]

Every case runs the real service (``banditops serve`` in a subprocess, or in process where
noted) on a fresh event store, drives it over loopback from a separate process with an
open-loop load (``--rps`` requests per second, half decisions, half rewards of answered
decisions; latency counted from the scheduled send time), injects its fault, and then
checks the store against what was acknowledged:

``load``       fixed rps for ``--seconds`` on SQLite and PostgreSQL
               (:func:`benchmarks.serving_load.run`): errors, p50/p99, rows vs acks;
``step``       the rps doubled every ``--step-seconds`` until the service saturates
               (achieved < 95 % of the target, errors, or p99 over 1 s);
``crash``      ``kill -9`` of the service under load, restart on the same port: acked
               events lost, recovered head vs head rebuilt from the store, time to ready;
``db_outage``  PostgreSQL cut mid-load by a TCP proxy (:class:`benchmarks.faults.TcpProxy`)
               for ``--outage-seconds``: the service answers from memory and journals
               events; recovery = restore → journal drained;
``db_outage_restart``  the same, plus ``kill -9`` during the outage and a restart after
               the link is back: the journal is drained before the service is ready;
``registry``, ``bad_input``, ``pipeline``, ``security``: see
               :mod:`benchmarks.reliability_checks`.

Columns: requests sent, errors (non-2xx answers and failed connections; for ``crash``
these are the requests sent while the service was down), lost (acknowledged but not in
the store), duplicated (rows beyond what was sent), recovery seconds. ``--json PATH``
writes ``{"benchmark": "reliability", "rows": [...]}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import queue
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from benchmarks import serving_load
from benchmarks.faults import TcpProxy
from eventstore.scratch import postgres_test_url

TOKEN = "reliability-token"
DEFAULT_POSTGRES = serving_load.DEFAULT_POSTGRES
SERVICE_CASES = ("load", "step", "crash", "db_outage", "db_outage_restart", "hostile")
CHECK_CASES = ("registry", "bad_input", "pipeline", "security")
console = Console(width=None if sys.stdout.isatty() else 160)


@dataclass
class Row:
    """One line of the table (``extra`` goes to the JSON only)."""

    case: str
    load: str
    faults: str
    requests: int
    errors: int
    lost: int
    duplicated: int
    recovery_seconds: float | None
    extra: dict[str, Any] = field(default_factory=dict)
    poisoned: int = 0
    server_errors: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "load": self.load,
            "faults": self.faults,
            "requests": self.requests,
            "errors": self.errors,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "poisoned": self.poisoned,
            "server_errors": self.server_errors,
            "recovery_seconds": self.recovery_seconds,
            **self.extra,
        }


# ---------------------------------------------------------------------- load generator
async def _drive(
    port: int, rps: float, seconds: float, reward_share: float, seed: int
) -> dict[str, Any]:
    """Open-loop load that survives the service going away: a failed request counts as
    an error and its connection is replaced by the next request that needs one."""
    # at most 3,000 distinct bodies, reused in turn (every decision gets its own event id)
    _env, requests = serving_load.make_workload(seed, min(int(rps * seconds) + 10, 3000))
    rng = np.random.default_rng(seed + 2)
    # first in, first out, so every kept-alive connection is used often (an idle one is
    # closed by the server after its keep-alive timeout)
    idle: deque[serving_load.Connection] = deque()
    slots = asyncio.Semaphore(serving_load.CONNECTIONS)
    answered: list[tuple[str, dict[str, float], str]] = []
    out: dict[str, Any] = {
        "decision_ms": [],
        "reward_ms": [],
        "errors": Counter(),
        "error_samples": [],
        "acked_decisions": [],
        "acked_rewards": [],
        "sent_rewards": [],
        "error_times": [],
    }
    start = time.perf_counter() + 0.2

    def failed(kind: str, what: str) -> None:
        out["errors"][kind] += 1
        out["error_times"].append(round(time.perf_counter() - start, 3))
        if len(out["error_samples"]) < 8:
            out["error_samples"].append(f"{kind}: {what[:160]}")

    async def one(kind: str, scheduled: float, payload: Any) -> None:
        async with slots:
            try:
                while idle and idle[0].reader.at_eof():  # closed by the server meanwhile
                    idle.popleft().writer.close()
                conn = idle.popleft() if idle else await serving_load.Connection.open(port)
            except OSError as exc:
                failed(kind, repr(exc))
                return
            try:
                if kind == "decision":
                    request = conn.post("/v1/decisions", payload["body"], TOKEN)
                else:
                    event, means, arm = payload
                    out["sent_rewards"].append(event)
                    body = {"event_id": event, "reward": float(rng.random() < means[arm])}
                    request = conn.post("/v1/rewards", json.dumps(body).encode(), TOKEN)
                status, answer = await asyncio.wait_for(request, 30)
            except Exception as exc:  # refused, reset, timed out, torn answer: an error
                conn.writer.close()
                failed(kind, repr(exc))
                return
            idle.append(conn)
        if status != 200:
            failed(kind, f"{status} {answer[:120]!r}")
            return
        out[f"{kind}_ms"].append((time.perf_counter() - scheduled) * 1000.0)
        if kind == "reward":
            out["acked_rewards"].append(payload[0])
            return
        event, arm = (json.loads(answer)[k] for k in ("event_id", "arm_id"))
        out["acked_decisions"].append(event)
        answered.append((event, payload["means"], arm))

    total = await serving_load.open_loop(
        one, requests, answered, rps, seconds, reward_share, rng, start
    )
    out["wall_s"] = time.perf_counter() - start
    out["sent"] = total
    out["errors"] = dict(out["errors"])
    for conn in idle:
        conn.writer.close()
    return out


def _drive_process(args: tuple[Any, ...], results: Any) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    results.put(asyncio.run(_drive(*args)))


class Load:
    """:func:`_drive` in a separate (spawned) process; :meth:`result` waits for it."""

    def __init__(
        self, port: int, rps: float, seconds: float, seed: int = 0, reward_share: float = 0.5
    ) -> None:
        ctx = mp.get_context("spawn")
        self.seconds = seconds
        self._results = ctx.Queue()
        self._proc = ctx.Process(
            target=_drive_process, args=((port, rps, seconds, reward_share, seed), self._results)
        )

    def __enter__(self) -> Load:
        self._proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc.is_alive():
            self._proc.kill()
        self._proc.join(30)

    @property
    def alive(self) -> bool:
        return self._proc.is_alive()

    def result(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.seconds + 300
        while True:
            try:
                out: dict[str, Any] = self._results.get(timeout=1.0)
            except queue.Empty:
                if not self._proc.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the load process ended without results (exit {self._proc.exitcode})"
                    ) from None
                continue
            self._proc.join(60)
            return out


# ---------------------------------------------------------------------- the service
class Service:
    """``banditops serve`` in a subprocess with ``env``, on ``port`` (kept over restarts)."""

    def __init__(self, env: dict[str, str], log: Path, port: int | None = None) -> None:
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.log = log
        self.port = port or serving_load._free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> float:
        """Start and wait until ready; the seconds it took."""
        started = time.perf_counter()
        cmd = [sys.executable, "-m", "ops", "serve", "--port", str(self.port)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*cmd, "--log-level", "warning"], env=self.env, stdout=out, stderr=out
            )
        try:
            serving_load._wait_ready(self.port, self.proc, timeout=180)
        except (RuntimeError, TimeoutError) as exc:
            self.kill()
            raise RuntimeError(f"{exc}:\n{self.log.read_text()[-3000:]}") from None
        return time.perf_counter() - started

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM: final snapshots, pending events committed (SIGKILL after 60 s)."""
        self._end(signal.SIGTERM)

    def _end(self, how: signal.Signals) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(how)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> tuple[Service, float]:
        """A new process with the same settings on the same port, and its time to ready."""
        again = Service({}, self.log, port=self.port)
        again.env = self.env
        return again, again.start()

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="banditops-reliability-") as tmp:
        yield Path(tmp)


def _service_env(url: str, model: Path | None, workdir: Path, **extra: str) -> dict[str, str]:
    """A service's environment; ``model``: its model file (None: a registry in ``extra``)."""
    env = {
        "BANDITOPS_DATABASE_URL": url,
        "BANDITOPS_WORKSPACE": str(workdir / "ws"),
        "BANDITOPS_API_TOKEN": TOKEN,
        "BANDITOPS_SEED": "0",
        "BANDITOPS_USER_SALT": "reliability-salt-0123",
        **extra,
    }
    if model is not None:
        env["BANDITOPS_MODEL_PATH"] = str(model)
    return env


def _model(workdir: Path, seed: int = 0) -> Path:
    env, _ = serving_load.make_workload(seed, 0)
    return serving_load.warm_policy(env, seed, workdir / "policy.npz")


def wait_for(
    check: Callable[[], bool], timeout: float, step: float = 0.1, log: Path | None = None
) -> float:
    """Poll ``check`` until true; the seconds it took (TimeoutError after ``timeout``,
    with the last error and the tail of ``log``)."""
    started = time.perf_counter()
    last = "the condition stayed false"
    while True:
        try:
            if check():
                return time.perf_counter() - started
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            last = repr(exc)
        if time.perf_counter() - started > timeout:
            tail = "" if log is None or not log.exists() else log.read_text()[-2000:]
            raise TimeoutError(f"not reached after {timeout:g} s ({last}); log:\n{tail}")
        time.sleep(step)


# ---------------------------------------------------------------------- store checks
def audit_store(url: str, out: dict[str, Any]) -> dict[str, int]:
    """Acknowledged events missing from the store, and reward rows beyond those sent."""
    from sqlalchemy import func, select

    from eventstore.engine import make_engine
    from eventstore.schema import decisions, rewards
    from serving.store.repository import EventStore

    engine = make_engine(url)
    try:
        store = EventStore(engine)
        found_d = store.existing_event_ids(out["acked_decisions"])
        found_r = store.existing_event_ids(out["acked_rewards"], table="rewards")
        sent = Counter(out["sent_rewards"])
        with engine.connect() as conn:
            per_event = conn.execute(
                select(rewards.c.event_id, func.count()).group_by(rewards.c.event_id)
            ).all()
            repeated = conn.execute(
                select(func.count()).select_from(
                    select(decisions.c.event_id)
                    .group_by(decisions.c.event_id)
                    .having(func.count() > 1)
                    .subquery()
                )
            ).scalar_one()
        rows = store.count_rows()
    finally:
        engine.dispose()
    extra_rewards = sum(max(0, int(n) - sent[event]) for event, n in per_event)
    return {
        "lost": len(out["acked_decisions"])
        - len(found_d)
        + len(out["acked_rewards"])
        - len(found_r),
        "duplicated": int(repeated) + extra_rewards,
        "stored_decisions": rows["decisions"],
        "stored_rewards": rows["rewards"],
        "head_snapshots": rows["head_snapshots"],
    }


def head_gap(service: Service, url: str, model: Path) -> float:
    """Largest difference between the live head and the head rebuilt from the store."""
    from bandit_core import load_policy
    from eventstore.engine import make_engine
    from serving.models.recovery import rebuild_from_store
    from serving.models.state_io import policy_from_bytes
    from serving.store.repository import EventStore

    version = service.get("/v1/model").json()["production"]["version"]
    live = policy_from_bytes(service.get("/v1/admin/state").content)
    engine = make_engine(url)
    try:
        rebuilt = rebuild_from_store(EventStore(engine), version, load_policy(model))
    finally:
        engine.dispose()
    a, b = live.to_state().arrays, rebuilt.to_state().arrays
    return max(
        float(np.max(np.abs(a[k] - b[k]), initial=0.0))
        for k in a
        if np.issubdtype(a[k].dtype, np.floating) and not k.endswith("pending")
    )


def _requests(out: dict[str, Any]) -> tuple[int, int]:
    return int(out["sent"]), int(sum(out["errors"].values()))


def _latency(out: dict[str, Any]) -> dict[str, Any]:
    """Decision latency, and what went wrong (error kinds, a few samples, their times)."""
    p = serving_load._percentiles(out["decision_ms"])
    times = out["error_times"]
    return {
        "decision_p50_ms": p["p50_ms"],
        "decision_p99_ms": p["p99_ms"],
        "errors_by_kind": out["errors"],
        "error_samples": out["error_samples"],
        "errors_between_s": [min(times), max(times)] if times else None,
    }


# ---------------------------------------------------------------------- cases
def case_load(store: str, rps: float, seconds: float, postgres_url: str) -> Row:
    """Fixed rps (``benchmarks.serving_load``): the store must hold every acked event."""
    r = serving_load.run(store, rps, seconds, postgres_url=postgres_url)
    return Row(
        case=f"load ({store})",
        load=f"{rps:g} rps × {seconds:g} s",
        faults="none",
        requests=r["decisions"] + r["rewards"] + r["errors"],
        errors=r["errors"],
        lost=r["lost"],
        duplicated=max(0, r["stored"] - r["acknowledged"]),
        recovery_seconds=None,
        extra={
            "store": store,
            "rps_achieved": r["rps_achieved"],
            "decision_p50_ms": r["p50_ms"],
            "decision_p99_ms": r["p99_ms"],
            "acknowledged": r["acknowledged"],
            "stored": r["stored"],
            "load_average_1m": r["load_average_1m"],
        },
    )


def case_step(
    store: str, start_rps: float, max_rps: float, step_seconds: float, postgres_url: str
) -> Row:
    """Double the rps each step on one service until it saturates."""
    steps: list[dict[str, Any]] = []
    sent = errors = 0
    saturation = None
    with _workdir() as workdir, serving_load._database(store, workdir, postgres_url) as url:
        model = _model(workdir)
        service = Service(_service_env(url, model, workdir), workdir / "service.log")
        service.start()
        try:
            rps = start_rps
            while rps <= max_rps:
                with Load(service.port, rps, step_seconds, seed=len(steps)) as load:
                    out = load.result()
                n, e = _requests(out)
                sent, errors = sent + n, errors + e
                done = len(out["decision_ms"]) + len(out["reward_ms"])
                achieved = done / out["wall_s"]
                step = {"rps": rps, "achieved": achieved, "errors": e, **_latency(out)}
                steps.append(step)
                p99 = step["decision_p99_ms"] or 0.0
                if achieved < 0.95 * rps or e > 0 or p99 > 1000.0:
                    break
                saturation = rps
                rps *= 2
        finally:
            service.stop()
    return Row(
        case=f"step ({store})",
        load=" → ".join(f"{s['rps']:g}" for s in steps) + " rps",
        faults="none",
        requests=sent,
        errors=errors,
        lost=0,
        duplicated=0,
        recovery_seconds=None,
        extra={"store": store, "saturation_rps": saturation, "steps": steps},
    )


def case_crash(store: str, rps: float, seconds: float, postgres_url: str) -> Row:
    """``kill -9`` half-way through the load, restart at once on the same port."""
    with _workdir() as workdir, serving_load._database(store, workdir, postgres_url) as url:
        model = _model(workdir)
        env = _service_env(url, model, workdir, BANDITOPS_SNAPSHOT_EVERY_REWARDS="100")
        service = Service(env, workdir / "service.log")
        service.start()
        restarted = service
        try:
            with Load(service.port, rps, seconds) as load:
                time.sleep(max(0.0, seconds / 2 - _traffic(service)))
                service.kill()
                killed = time.perf_counter()
                restarted, ready_s = service.restart()
                recovery = time.perf_counter() - killed
                out = load.result()
            gap = head_gap(restarted, url, model)
        finally:
            service.kill()
            restarted.stop()
        audit = audit_store(url, out)
    n, e = _requests(out)
    return Row(
        case=f"crash ({store})",
        load=f"{rps:g} rps × {seconds:g} s",
        faults="kill -9 at half time, restart",
        requests=n,
        errors=e,
        lost=audit["lost"],
        duplicated=audit["duplicated"],
        recovery_seconds=recovery,
        extra={"time_to_ready_s": ready_s, "head_gap": gap, **audit, **_latency(out)},
    )


def _traffic(service: Service) -> float:
    """Wait until the load reaches the service (a reward applied); the seconds since it
    began, roughly (the load process takes a while to start)."""
    waited = wait_for(
        lambda: service.get("/v1/model").json()["production"]["applied_rewards"] > 0, 120
    )
    return min(waited, 0.5)


def _degraded_sample(service: Service) -> dict[str, Any]:
    ready = service.get("/readyz")
    info = service.get("/v1/model").json()
    metrics = service.get("/metrics").text
    gauge = next(
        (
            line.split()[-1]
            for line in metrics.splitlines()
            if line.startswith("banditops_store_degraded ")
        ),
        None,
    )
    return {
        "readyz_status": ready.status_code,
        "readyz": ready.json().get("status"),
        "store_degraded_metric": None if gauge is None else float(gauge),
        "journal_events": info["journal_events"],
        "applied_rewards": info["production"]["applied_rewards"],
    }


def case_db_outage(
    rps: float, seconds: float, outage_s: float, postgres_url: str, kill: bool = False
) -> Row:
    """PostgreSQL cut by a TCP proxy for ``outage_s`` in the middle of the load (and, with
    ``kill``, the service killed during the outage and restarted after it)."""
    from sqlalchemy import make_url

    with _workdir() as workdir, serving_load._database("postgresql", workdir, postgres_url) as url:
        model = _model(workdir)
        target = make_url(url)
        with TcpProxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
            proxied = target.set(host="127.0.0.1", port=proxy.port)
            env = _service_env(
                proxied.render_as_string(hide_password=False),
                model,
                workdir,
                BANDITOPS_SNAPSHOT_EVERY_REWARDS="100",
                BANDITOPS_STORE_PROBE_S="0.25",
                BANDITOPS_STORE_CONNECT_TIMEOUT_S="2",
            )
            service = Service(env, workdir / "service.log")
            service.start()
            restarted = service
            try:
                with Load(service.port, rps, seconds) as load:
                    waited = _traffic(service)
                    time.sleep(max(0.0, (seconds - outage_s) / 2 - waited))
                    proxy.cut()
                    wait_for(
                        lambda: (
                            service.get("/readyz").json()["status"] == "degraded" or not load.alive
                        ),
                        60,
                        log=service.log,
                    )
                    if not load.alive:
                        load.result()  # raises: the load is gone, nothing meets the outage
                    time.sleep(outage_s / 2)
                    during = _degraded_sample(service)
                    time.sleep(outage_s / 2)
                    during_late = _degraded_sample(service)
                    if kill:
                        service.kill()
                    proxy.restore()
                    restored = time.perf_counter()
                    ready_s = None
                    if kill:
                        restarted, ready_s = service.restart()
                    wait_for(lambda: restarted.get("/readyz").json()["status"] == "ready", 120)
                    recovery = time.perf_counter() - restored
                    out = load.result()
                wait_for(lambda: restarted.get("/v1/model").json()["journal_events"] == 0, 60)
                gap = head_gap(restarted, url, model)
            finally:
                service.kill()
                restarted.stop()
        audit = audit_store(url, out)
    n, e = _requests(out)
    learning = during_late["applied_rewards"] - during["applied_rewards"]
    return Row(
        case="db outage + kill -9" if kill else "db outage",
        load=f"{rps:g} rps × {seconds:g} s",
        faults=f"PostgreSQL cut {outage_s:g} s" + (", kill -9 in it, restart" if kill else ""),
        requests=n,
        errors=e,
        lost=audit["lost"],
        duplicated=audit["duplicated"],
        recovery_seconds=recovery,
        extra={
            "head_gap": gap,
            "during_outage": during,
            "end_of_outage": during_late,
            "restart_ready_s": ready_s,
            "rewards_learnt_during_outage": learning,
            "proxy_refused": proxy.refused,
            **audit,
            **_latency(out),
        },
    )


# ---------------------------------------------------------------------- report
COLUMNS = (
    "case",
    "load",
    "faults injected",
    "requests",
    "errors",
    "lost",
    "duplicated",
    "poisoned",
    "5xx",
    "recovery s",
)


def _cells(r: Row) -> list[str]:
    rec = "-" if r.recovery_seconds is None else f"{r.recovery_seconds:.2f}"
    return [
        r.case,
        r.load,
        r.faults,
        str(r.requests),
        str(r.errors),
        str(r.lost),
        str(r.duplicated),
        str(r.poisoned),
        str(r.server_errors),
        rec,
    ]


def print_table(rows: list[Row]) -> None:
    table = Table(title="reliability")
    for col in COLUMNS:
        table.add_column(
            col, justify="left" if col in ("case", "load", "faults injected") else "right"
        )
    for r in rows:
        table.add_row(*_cells(r))
    console.print(table)


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def run_cases(args: argparse.Namespace) -> list[Row]:
    from benchmarks import reliability_checks as checks
    from benchmarks import reliability_hostile as hostile

    rows: list[Row] = []
    pg = args.postgres_url
    wanted = args.cases
    stores = args.stores
    plan: list[tuple[str, Callable[[], Row]]] = []
    for store in stores:
        plan.append(("load", partial(case_load, store, args.rps, args.seconds, pg)))
    for store in stores:
        plan.append(
            ("step", partial(case_step, store, args.rps / 2, args.max_rps, args.step_seconds, pg))
        )
    for store in stores:
        plan.append(("crash", partial(case_crash, store, args.rps, args.fault_seconds, pg)))
    plan.append(
        ("db_outage", lambda: case_db_outage(args.rps, args.fault_seconds, args.outage_seconds, pg))
    )
    plan.append(
        (
            "db_outage_restart",
            lambda: case_db_outage(
                args.rps, args.fault_seconds, args.outage_seconds, pg, kill=True
            ),
        )
    )
    for store in stores:
        plan.append(
            (
                "hostile",
                partial(hostile.case_hostile, store, pg, args.hostile_seconds, args.sabotage),
            )
        )
    plan.append(("registry", lambda: checks.case_registry(args.rps / 4, args.fault_seconds)))
    plan.append(("bad_input", lambda: checks.case_bad_input(args.examples)))
    plan.append(("pipeline", lambda: checks.case_pipeline(args.kills)))
    plan.append(("security", lambda: checks.case_security()))
    for name, make in plan:
        if name not in wanted:
            continue
        console.print(f"[bold]{name}[/bold] …")
        row = make()
        rows.append(row)
        console.print(markdown_table([row]).splitlines()[-1])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rps", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=60.0, help="Length of the load case.")
    parser.add_argument("--fault-seconds", type=float, default=30.0, help="Length of fault cases.")
    parser.add_argument("--outage-seconds", type=float, default=10.0)
    parser.add_argument("--step-seconds", type=float, default=10.0)
    parser.add_argument("--max-rps", type=float, default=3200.0)
    parser.add_argument("--examples", type=int, default=100, help="Fuzz examples per operation.")
    parser.add_argument("--kills", type=int, default=5, help="Kills of the training step.")
    parser.add_argument(
        "--cases",
        default=",".join(SERVICE_CASES + CHECK_CASES),
        help="Comma-separated: " + ", ".join(SERVICE_CASES + CHECK_CASES),
    )
    parser.add_argument("--postgres-url", default=postgres_test_url())
    parser.add_argument(
        "--stores", default="sqlite,postgresql", help="Stores of the per-store cases."
    )
    parser.add_argument(
        "--hostile-seconds", type=float, default=10.0, help="Length of the hostile slates."
    )
    parser.add_argument(
        "--sabotage",
        action="store_true",
        help="Break the hostile case on purpose (one acknowledged reward rewritten in the "
        "store): the verdict fails.",
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None, help="Write the table here.")
    args = parser.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    args.stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    unknown = sorted(set(args.cases) - set(SERVICE_CASES + CHECK_CASES))
    if unknown:
        parser.error(f"unknown case(s): {', '.join(unknown)}")
    started = time.perf_counter()
    rows = run_cases(args)
    print_table(rows)
    conditions = {
        "cpus": os.cpu_count(),
        "load_average_1m_at_end": os.getloadavg()[0],
        "wall_seconds": time.perf_counter() - started,
    }
    console.print(conditions)
    if args.markdown is not None:
        args.markdown.write_text(markdown_table(rows))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "benchmark": "reliability",
            "conditions": conditions,
            "rows": [r.to_dict() for r in rows],
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    failures = verdict(rows)
    for failure in failures:
        console.print(f"[red]FAIL[/red] {failure}")
    if failures:
        sys.exit(1)


def verdict(rows: list[Row]) -> list[str]:
    """What broke: every row with anything lost, duplicated, poisoned or answered 5xx."""
    out = []
    for r in rows:
        bad = {
            "lost": r.lost,
            "duplicated": r.duplicated,
            "poisoned": r.poisoned,
            "5xx": r.server_errors,
        }
        broken = ", ".join(f"{n} {what}" for what, n in bad.items() if n)
        if broken:
            out.append(f"{r.case} ({r.load}): {broken}")
    return out


if __name__ == "__main__":
    main()
