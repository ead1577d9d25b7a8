"""Load test of the decision service over loopback: open-loop mixed decisions and rewards.

    python -m benchmarks.serving_load [--rps 200[,500,1000]] [--seconds 30]
        [--store sqlite|postgresql|both] [--systems banditops,floor_parse,floor_commit]
        [--postgres-url URL] [--reward-share 0.5] [--json PATH]

The service runs as ``banditops serve`` in a subprocess on a fresh event store (a SQLite
file, or a PostgreSQL database created for the run and dropped after it) with a
``shared_linucb`` policy on K = 50 candidates, 16 user + 16 arm features (head dimension
d = 32), warmed on 2,000 rows of a simulated click environment. A load generator in a
second process sends requests on a fixed schedule (``--rps`` requests per second in
total, open loop: a slow answer does not delay the next request, and latency is measured
from the scheduled send time, so queueing counts). A ``--reward-share`` of them are
rewards for decisions already answered (clicks drawn from the environment's click
probabilities), the rest decisions. Afterwards the service is stopped and every
acknowledged event is looked up in the store.

At each rate the same load also goes, with the same uvicorn settings, to the two floors
of :mod:`benchmarks.serving_floor`: ``floor_parse`` (FastAPI parses the same
``DecisionRequest`` and answers a fixed decision) and ``floor_commit`` (the same plus the
service's durable group-commit write of the event), one server at a time.

Prints, per system and rate: the server process's CPU milliseconds per answered request
(user + system time from ``/proc``), achieved rps, p50/p95/p99 latency of decisions (and
of rewards), errors, and rows in the store against acknowledged requests; then the ratios
ours / floor. ``--json PATH`` writes ``{"benchmark": "serving_load", "rows": [...],
"ratios": [...]}`` (one row per system, store and rate; a single-store, single-rate run
also keeps its ``banditops`` row's fields at the top level).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from bandit_core import make_policy, save_policy
from bandit_core.envs import LogisticClickEnvironment
from eventstore.scratch import LOCAL_POSTGRES_URL, postgres_test_url

K = 50
DIM_USER = 16
DIM_ARM = 16
N_ITEMS = 500
WARM_ROWS = 2000
CONNECTIONS = 32
DEFAULT_POSTGRES = LOCAL_POSTGRES_URL

console = Console(width=None if sys.stdout.isatty() else 150)


# ---------------------------------------------------------------------- workload
def make_workload(seed: int, n: int) -> tuple[LogisticClickEnvironment, list[dict[str, Any]]]:
    """The environment and ``n`` pre-built decision requests with their click rates."""
    rng = np.random.default_rng(seed)
    env = LogisticClickEnvironment.make(
        rng, n_items=N_ITEMS, dim_user=DIM_USER, dim_arm=DIM_ARM, n_candidates=K
    )
    requests = []
    for i in range(n):
        context, cands = env.sample(rng)
        body = {
            "context": context.round(6).tolist(),
            "candidates": [
                {"id": arm, "features": feats.round(6).tolist()}
                for arm, feats in zip(cands.ids, cands.features, strict=True)
            ],
            "user_id": f"user-{i % 5000}",
        }
        means = env.expected_rewards(context, cands)
        requests.append(
            {"body": json.dumps(body).encode(), "means": dict(zip(cands.ids, means, strict=True))}
        )
    return env, requests


def warm_policy(env: LogisticClickEnvironment, seed: int, path: Path) -> Path:
    """``shared_linucb`` trained on uniformly logged clicks."""
    rng = np.random.default_rng(seed + 1)
    policy = make_policy("shared_linucb", dim_user=DIM_USER, dim_arm=DIM_ARM, alpha=1.0)
    contexts, ids, rewards, feats = [], [], [], []
    for _ in range(WARM_ROWS):
        context, cands = env.sample(rng)
        arm = int(rng.integers(len(cands)))
        means = env.expected_rewards(context, cands)
        contexts.append(context)
        ids.append(cands.ids[arm])
        rewards.append(float(rng.random() < means[arm]))
        feats.append(cands.features[arm])
    policy.update_batch(np.array(contexts), ids, np.array(rewards), np.array(feats))
    save_policy(policy, path)
    return path


# ---------------------------------------------------------------------- HTTP client
class Connection:
    """One keep-alive HTTP/1.1 connection (a minimal client: fixed headers, JSON bodies)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def post(self, path: str, body: bytes, token: str) -> tuple[int, bytes]:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("connection closed")
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)


async def open_loop(
    one: Any,
    requests: list[Any],
    answered: list[Any],
    rps: float,
    seconds: float,
    reward_share: float,
    rng: np.random.Generator,
    start: float,
) -> int:
    """Send ``rps × seconds`` requests on a fixed schedule from ``start`` (open loop: a slow
    answer never delays the next send). Each is the reward of an answered decision with
    probability ``reward_share`` (``one("reward", scheduled, answered.pop(0))``), else the
    next decision body (``one("decision", scheduled, body)``). Returns the number sent."""
    tasks = []
    total = int(rps * seconds)
    next_request = 0
    for i in range(total):
        scheduled = start + i / rps
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if answered and rng.random() < reward_share:
            tasks.append(asyncio.create_task(one("reward", scheduled, answered.pop(0))))
        else:
            body = requests[next_request % len(requests)]
            tasks.append(asyncio.create_task(one("decision", scheduled, body)))
            next_request += 1
    await asyncio.gather(*tasks)
    return total


async def _generate(
    port: int, token: str, rps: float, seconds: float, reward_share: float, seed: int
) -> dict[str, Any]:
    _env, requests = make_workload(seed, int(rps * seconds) + 10)
    rng = np.random.default_rng(seed + 2)
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(CONNECTIONS):
        pool.put_nowait(await Connection.open(port))
    answered: list[tuple[str, dict[str, float], str]] = []  # decisions awaiting a reward
    out: dict[str, Any] = {
        "decision_ms": [],
        "reward_ms": [],
        "errors": 0,
        "error_samples": [],
        "acked_decisions": [],
        "acked_rewards": [],
    }

    async def one(kind: str, scheduled: float, payload: Any) -> None:
        conn = await pool.get()
        try:
            if kind == "decision":
                status, body = await conn.post("/v1/decisions", payload["body"], token)
            else:
                event, _means, _arm = payload
                reward = float(rng.random() < _means[_arm])
                data = json.dumps({"event_id": event, "reward": reward}).encode()
                status, body = await conn.post("/v1/rewards", data, token)
        except Exception as exc:
            out["errors"] += 1
            out["error_samples"].append(repr(exc)[:200])
            pool.put_nowait(await Connection.open(port))
            return
        pool.put_nowait(conn)
        elapsed = (time.perf_counter() - scheduled) * 1000.0
        if status != 200:
            out["errors"] += 1
            out["error_samples"].append(f"{status}: {body[:200]!r}")
            return
        if kind == "decision":
            answer = json.loads(body)
            out["decision_ms"].append(elapsed)
            out["acked_decisions"].append(answer["event_id"])
            answered.append((answer["event_id"], payload["means"], answer["arm_id"]))
        else:
            out["reward_ms"].append(elapsed)
            out["acked_rewards"].append(payload[0])

    start = time.perf_counter() + 0.2
    total = await open_loop(one, requests, answered, rps, seconds, reward_share, rng, start)
    out["wall_s"] = time.perf_counter() - start
    out["sent"] = total
    while not pool.empty():
        pool.get_nowait().writer.close()
    return out


def _generator_process(args: tuple[Any, ...], results: Any) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    results.put(asyncio.run(_generate(*args)))


# ---------------------------------------------------------------------- service
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the service exited during start-up")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError("the service did not become ready")


#: The systems a run can load: the service, and the two floors of
#: :mod:`benchmarks.serving_floor` (parse only; parse and durable group commit).
SYSTEMS = ("banditops", "floor_parse", "floor_commit")


def _command(system: str, port: int) -> list[str]:
    """The server command of ``system``: the same uvicorn settings for all three."""
    if system == "banditops":
        head = [sys.executable, "-m", "ops", "serve"]
    elif system in ("floor_parse", "floor_commit"):
        mode = system.removeprefix("floor_")
        head = [sys.executable, "-m", "benchmarks.serving_floor", "--mode", mode]
    else:
        raise ValueError(f"system must be one of {', '.join(SYSTEMS)}; got {system!r}.")
    return [*head, "--port", str(port), "--log-level", "warning"]


@contextlib.contextmanager
def serving_process(
    env: dict[str, str], log_path: Path, ready_timeout: float = 120.0, system: str = "banditops"
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """``python -m ops serve`` (or a floor of :data:`SYSTEMS`) on a free loopback port,
    with ``env`` added to this process's environment and its output in ``log_path``;
    yields ``(port, process)`` once ``/readyz`` answers 200, and stops it with SIGTERM
    (then SIGKILL after 60 s)."""
    port = _free_port()
    cmd = _command(system, port)
    with log_path.open("wb") as log:
        full = {**os.environ, **env}
        if "BANDITOPS_API_TOKEN" not in full:  # a benchmark on loopback: open, explicitly
            full["BANDITOPS_AUTH_DISABLED"] = "true"
        proc = subprocess.Popen(cmd, env=full, stdout=log, stderr=log)
        try:
            _wait_ready(port, proc, ready_timeout)
            yield port, proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def spawned(target: Any, args: tuple[Any, ...], timeout: float) -> Any:
    """``target(args, queue)`` in a fresh (spawned) process; what it puts on the queue.
    The load generator runs there, away from this process's interpreter lock."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=target, args=(args, results))
    proc.start()
    out = results.get(timeout=timeout)
    proc.join(60)
    return out


@contextlib.contextmanager
def _database(store: str, workdir: Path, postgres_url: str) -> Iterator[str]:
    if store == "sqlite":
        yield f"sqlite:///{workdir / 'events.db'}"
        return
    from eventstore.scratch import scratch_postgres_database

    with scratch_postgres_database(postgres_url, prefix="banditops_bench") as url:
        yield url


def fsync_latency(directory: Path, n: int = 100) -> dict[str, float]:
    """p50/p99 of fsync of a 4 KiB append in ``directory`` (the floor of a durable commit
    on this disk, measured in the same run for context)."""
    path = directory / "fsync-probe"
    times = np.empty(n)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for i in range(n):
            os.write(fd, b"\0" * 4096)
            start = time.perf_counter()
            os.fsync(fd)
            times[i] = time.perf_counter() - start
    finally:
        os.close(fd)
        path.unlink()
    p50, p99 = np.percentile(times * 1000.0, [50, 99])
    return {"fsync_p50_ms": float(p50), "fsync_p99_ms": float(p99)}


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux ``/proc``), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99)}


def run(
    store: str,
    rps: float,
    seconds: float,
    reward_share: float = 0.5,
    seed: int = 0,
    postgres_url: str = DEFAULT_POSTGRES,
    sqlite_synchronous: str = "FULL",
    system: str = "banditops",
) -> dict[str, Any]:
    """One load run of ``system`` (:data:`SYSTEMS`); returns the result row (see the
    module docstring). ``floor_parse`` stores nothing: its ``stored`` and ``lost`` are
    None."""
    from eventstore.engine import make_engine
    from serving.store.repository import EventStore

    token = "bench-token-0123456789"
    with tempfile.TemporaryDirectory(prefix="banditops-load-") as tmp:
        workdir = Path(tmp)
        disk = fsync_latency(workdir)
        env_model, _ = make_workload(seed, 0)
        model = warm_policy(env_model, seed, workdir / "policy.npz")
        with _database(store, workdir, postgres_url) as url:
            env = {
                "BANDITOPS_DATABASE_URL": url,
                "BANDITOPS_MODEL_PATH": str(model),
                "BANDITOPS_WORKSPACE": str(workdir / "ws"),
                "BANDITOPS_API_TOKEN": token,
                "BANDITOPS_SEED": str(seed),
                "BANDITOPS_SQLITE_SYNCHRONOUS": sqlite_synchronous,
            }
            with serving_process(env, workdir / "service.log", system=system) as (port, proc):
                cpu_before = _cpu_seconds(proc.pid)
                out = spawned(
                    _generator_process,
                    (port, token, rps, seconds, reward_share, seed),
                    timeout=seconds + 300,
                )
                cpu_after = _cpu_seconds(proc.pid)
            rows = {"decisions": 0, "rewards": 0, "head_snapshots": 0}
            found = None
            if system != "floor_parse":
                engine = make_engine(url)
                try:
                    events = EventStore(engine)
                    rows = events.count_rows()
                    found = len(events.existing_event_ids(out["acked_decisions"])) + len(
                        events.existing_event_ids(out["acked_rewards"], table="rewards")
                    )
                finally:
                    engine.dispose()
    acknowledged = len(out["acked_decisions"]) + len(out["acked_rewards"])
    lost = None if found is None else acknowledged - found
    cpu_ms = (
        None
        if cpu_before is None or cpu_after is None or not completed(out)
        else 1000.0 * (cpu_after - cpu_before) / completed(out)
    )
    result: dict[str, Any] = {
        "benchmark": "serving_load",
        "system": system,
        "store": store,
        "rps_target": rps,
        "rps_achieved": completed(out) / out["wall_s"],
        "cpu_ms_per_request": cpu_ms,
        **_percentiles(out["decision_ms"]),
        "errors": out["errors"],
        "acknowledged": acknowledged,
        "stored": None if found is None else rows["decisions"] + rows["rewards"],
        "lost": lost,
        "seconds": seconds,
        "decisions": len(out["decision_ms"]),
        "rewards": len(out["reward_ms"]),
        "reward_latency": _percentiles(out["reward_ms"]),
        "head_snapshots": rows["head_snapshots"],
        "service_cpu_ms_per_request": cpu_ms,
        "sqlite_synchronous": sqlite_synchronous if store == "sqlite" else None,
        "load_average_1m": os.getloadavg()[0],
        **disk,
        "k": K,
        "dim": DIM_USER + DIM_ARM,
        "policy": "shared_linucb",
        "error_samples": out["error_samples"][:5],
    }
    return result


def completed(out: dict[str, Any]) -> int:
    """Requests answered 200 in a generator's result."""
    return len(out["decision_ms"]) + len(out["reward_ms"])


def _trio(p: dict[str, Any]) -> str:
    if p["p50_ms"] is None:
        return "-"
    return f"{p['p50_ms']:.2f} / {p['p95_ms']:.2f} / {p['p99_ms']:.2f}"


def _opt(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def _store_label(r: dict[str, Any]) -> str:
    sync = r["sqlite_synchronous"]
    return r["store"] if sync is None else f"{r['store']} ({sync})"


def _print(rows: list[dict[str, Any]]) -> None:
    table = Table(title="serving load (latency from the scheduled send time)")
    for col in (
        "system",
        "store",
        "rps target",
        "rps achieved",
        "CPU ms / req",
        "decision p50/p95/p99 ms",
        "reward p50/p95/p99 ms",
        "errors",
        "acknowledged",
        "stored",
        "lost",
    ):
        table.add_column(col, justify="left" if col in ("system", "store") else "right")
    for r in rows:
        table.add_row(
            r["system"],
            _store_label(r),
            f"{r['rps_target']:g}",
            f"{r['rps_achieved']:.1f}",
            _opt(r["cpu_ms_per_request"], "{:.3f}"),
            _trio(r),
            _trio(r["reward_latency"]),
            str(r["errors"]),
            str(r["acknowledged"]),
            _opt(r["stored"]),
            _opt(r["lost"]),
        )
    console.print(table)
    ratios = floor_ratios(rows)
    if not ratios:
        return
    floor = Table(title="banditops / floor, measured in the same run (same uvicorn settings)")
    for col in (
        "store",
        "rps",
        "CPU ms/req ours",
        "floor_parse",
        "floor_commit",
        "CPU ours/parse",
        "CPU ours/commit",
        "p99 ms ours",
        "p99 floor_parse",
        "p99 floor_commit",
        "p99 ours/commit",
    ):
        floor.add_column(col, justify="left" if col == "store" else "right")
    for r in ratios:
        floor.add_row(
            r["store"],
            f"{r['rps_target']:g}",
            _opt(r["cpu_ours"], "{:.3f}"),
            _opt(r["cpu_floor_parse"], "{:.3f}"),
            _opt(r["cpu_floor_commit"], "{:.3f}"),
            _opt(r["cpu_ours_over_parse"], "{:.2f}×"),
            _opt(r["cpu_ours_over_commit"], "{:.2f}×"),
            _opt(r["p99_ours"], "{:.2f}"),
            _opt(r["p99_floor_parse"], "{:.2f}"),
            _opt(r["p99_floor_commit"], "{:.2f}"),
            _opt(r["p99_ours_over_commit"], "{:.2f}×"),
        )
    console.print(floor)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def floor_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (store, rate) with a ``banditops`` row: its CPU per request and decision p99,
    the floors', and ours / floor."""
    by = {(r["store"], r["rps_target"], r["system"]): r for r in rows}
    out = []
    for r in rows:
        if r["system"] != "banditops":
            continue
        key = (r["store"], r["rps_target"])
        parse = by.get((*key, "floor_parse"))
        commit = by.get((*key, "floor_commit"))
        if parse is None and commit is None:
            continue

        def get(row: dict[str, Any] | None, field: str) -> Any:
            return None if row is None else row[field]

        out.append(
            {
                "store": _store_label(r),
                "rps_target": r["rps_target"],
                "cpu_ours": r["cpu_ms_per_request"],
                "cpu_floor_parse": get(parse, "cpu_ms_per_request"),
                "cpu_floor_commit": get(commit, "cpu_ms_per_request"),
                "cpu_ours_over_parse": _ratio(
                    r["cpu_ms_per_request"], get(parse, "cpu_ms_per_request")
                ),
                "cpu_ours_over_commit": _ratio(
                    r["cpu_ms_per_request"], get(commit, "cpu_ms_per_request")
                ),
                "p99_ours": r["p99_ms"],
                "p99_floor_parse": get(parse, "p99_ms"),
                "p99_floor_commit": get(commit, "p99_ms"),
                "p99_ours_over_commit": _ratio(r["p99_ms"], get(commit, "p99_ms")),
            }
        )
    return out


#: Fields of each row of ``--json``'s ``rows``.
ROW_FIELDS = (
    "system",
    "store",
    "rps_target",
    "rps_achieved",
    "cpu_ms_per_request",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "errors",
    "acknowledged",
    "lost",
)


def to_json(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"benchmark": "serving_load", "rows": [...], "ratios": [...]}``; a run of one
    store at one rate keeps its ``banditops`` row's fields at the top level too."""
    out: dict[str, Any] = {}
    ours = [r for r in rows if r["system"] == "banditops"]
    if len(ours) == 1 and len({(r["store"], r["rps_target"]) for r in rows}) == 1:
        out.update(ours[0])
    out["benchmark"] = "serving_load"
    out["rows"] = [{k: r[k] for k in ROW_FIELDS} for r in rows]
    out["ratios"] = floor_ratios(rows)
    return out


def _rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--rps takes numbers separated by commas; got {text!r}"
        ) from None
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError(f"--rps rates must be positive; got {text!r}")
    return rates


def _systems(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in SYSTEMS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"--systems takes names from {', '.join(SYSTEMS)}; got {text!r}"
        )
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rps",
        type=_rates,
        default=[200.0],
        help="Requests per second, total; several rates separated by commas (200,500,1000).",
    )
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--store", choices=["sqlite", "postgresql", "both"], default="sqlite")
    parser.add_argument(
        "--systems",
        type=_systems,
        default=list(SYSTEMS),
        help="What to load, in this order at each rate: banditops, floor_parse, floor_commit.",
    )
    parser.add_argument("--postgres-url", default=postgres_test_url())
    parser.add_argument(
        "--reward-share", type=float, default=0.5, help="Share of requests that are rewards."
    )
    parser.add_argument(
        "--sqlite-synchronous",
        choices=["FULL", "NORMAL"],
        default="FULL",
        help="SQLite durability: FULL fsyncs every group commit (survives power loss); "
        "NORMAL survives process crashes only.",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="Write the results here.")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or not 0.0 <= args.reward_share < 1.0:
        parser.error("--seconds must be positive and --reward-share in [0, 1).")
    stores = ["sqlite", "postgresql"] if args.store == "both" else [args.store]
    rows = [
        run(
            store,
            rps,
            args.seconds,
            args.reward_share,
            args.seed,
            args.postgres_url,
            args.sqlite_synchronous,
            system=system,
        )
        for store in stores
        for rps in args.rps
        for system in args.systems
    ]
    _print(rows)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(to_json(rows), indent=2))


if __name__ == "__main__":
    main()
