"""Scale-out figures: the sharded head rebuild and serving replicas on this machine.

    python -m benchmarks.scale --rows 5000000 [--shards 1,2,4] [--replicas 1,2]
        [--ope-rows 10000] [--seconds 20] [--clients 16] [--json PATH]

**Rebuild.** A synthetic replay window of ``rows`` logged decisions (written straight to
Parquet, in the replay file's columns) is rebuilt by the map-reduce of
:mod:`training.shards` with 1, 2 and 4 shards: every shard runs in its own process
(the way a Celery worker runs a mapped task: read its rows of the Parquet file, encode
them with the frozen network of a neural-linear policy, write its statistics) and the
reduce sums them into the head. Reported per shard count: the wall time of the map
(all shards at once), of the reduce, the rows per second overall and per worker (its
rows over its own wall time). Each worker is held to one thread; on a machine with fewer
free cores than shards the workers share cores, and the per-worker rate falls below what
one core does.

**OPE.** One held-out shard of ``--ope-rows`` rounds evaluated by one worker (candidate
neural-linear with Monte-Carlo propensities, uniform baseline, five estimators).

**Serving.** One and then two replicas of the decision service (``banditops serve``
processes on loopback, each with its own port, sharing a PostgreSQL event store when
``--postgres-url`` is given, else SQLite) take decision + reward traffic from
``--clients`` concurrent HTTP connections for ``--seconds`` (each: a decision over 50
candidates, then its reward); reported: requests per second (decisions and rewards),
p50/p99 latency and the replicas' CPU time per request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from eventstore.scratch import LOCAL_POSTGRES_URL, postgres_test_url

ROW_GROUP = 262_144
DEFAULT_POSTGRES = LOCAL_POSTGRES_URL
#: The bearer token and user-id salt of the benchmark's replicas (at least 16 characters).
BENCH_SECRET = "bench-secret-0123456789"
console = Console(width=None if sys.stdout.isatty() else 150)


# ---------------------------------------------------------------------- synthetic replay
def synthetic_replay(
    path: str | Path,
    rows: int,
    seed: int = 0,
    *,
    n_items: int = 24,
    n_candidates: int = 6,
    dim_user: int = 4,
    dim_arm: int = 3,
    row_group: int = ROW_GROUP,
    rare: float | None = None,
) -> Path:
    """Write ``rows`` uniformly logged decisions with clicks to a replay Parquet file
    (with ``rare``: a logging policy that plays each offered item but the first with
    that propensity, the first with the rest — logs that barely support the others).

    Each row offers ``n_candidates`` of ``n_items`` items (features fixed per item), picks
    one uniformly (propensity ``1 / n_candidates``) and clicks with probability
    ``σ(−1 + xᵀ W y)``. Rows are generated and written ``row_group`` at a time, so memory
    stays bounded for any ``rows``. Columns: those of ``eventstore.replay.COLUMNS``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    items = rng.normal(size=(n_items, dim_arm))
    weights = rng.normal(scale=1.5, size=(dim_user, dim_arm))
    ids = np.array([f"item-{i:03d}" for i in range(n_items)])
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    start_ts = np.datetime64("2026-01-01T00:00:00", "us")
    try:
        for lo in range(0, rows, row_group):
            n = min(row_group, rows - lo)
            x = rng.normal(size=(n, dim_user))
            offered = np.argsort(rng.random((n, n_items)), axis=1)[:, :n_candidates]
            probs = np.full((n, n_candidates), 1.0 / n_candidates)
            if rare is None:
                chosen = rng.integers(0, n_candidates, size=n)
            else:
                probs[:, 1:] = rare
                probs[:, 0] = 1.0 - rare * (n_candidates - 1)
                drawn = (rng.random((n, 1)) > np.cumsum(probs, axis=1)).sum(axis=1)
                chosen = np.minimum(drawn, n_candidates - 1)
            arm = offered[np.arange(n), chosen]
            logits = -1.0 + np.einsum("nu,ua,na->n", x, weights, items[arm])
            reward = (rng.random(n) < 1.0 / (1.0 + np.exp(-logits))).astype(np.float64)
            table = _replay_table(pa, lo, x, offered, chosen, reward, items, ids, probs, start_ts)
            if writer is None:
                writer = pq.ParquetWriter(out, table.schema)
            writer.write_table(table, row_group_size=row_group)
    finally:
        if writer is not None:
            writer.close()
    return out


def _lists(pa: Any, values: Any, n: int, width: int) -> Any:
    """``n`` lists of ``width`` items each from a flat array (or Arrow array)."""
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * width)
    return pa.ListArray.from_arrays(
        offsets, values if isinstance(values, pa.Array) else pa.array(values)
    )


def _replay_table(
    pa: Any,
    first: int,
    x: np.ndarray,
    offered: np.ndarray,
    chosen: np.ndarray,
    reward: np.ndarray,
    items: np.ndarray,
    ids: np.ndarray,
    probabilities: np.ndarray,
    start_ts: np.datetime64,
) -> Any:
    n, dim_user = x.shape
    k = probabilities.shape[1]
    dim_arm = items.shape[1]
    feats = items[offered]  # (n, k, dim_arm)
    cand_feats = _lists(pa, _lists(pa, feats.reshape(-1), n * k, dim_arm), n, k)
    cand_ids = _lists(pa, ids[offered].reshape(-1), n, k)
    probs = _lists(pa, probabilities.reshape(-1), n, k)
    seconds = np.arange(first, first + n).astype("timedelta64[s]").astype("timedelta64[us]")
    return pa.table(
        {
            "event_id": pa.array([f"e{i:012d}" for i in range(first, first + n)]),
            "created_at": pa.array(start_ts + seconds, type=pa.timestamp("us", tz="UTC")),
            "user_hash": pa.array([None] * n, type=pa.string()),
            "context": _lists(pa, x.reshape(-1), n, dim_user),
            "candidate_ids": cand_ids,
            "candidate_features": cand_feats,
            "chosen": pa.array(chosen.astype(np.int64)),
            "arm_id": pa.array(ids[offered[np.arange(n), chosen]]),
            "propensity": pa.array(probabilities[np.arange(n), chosen]),
            "probabilities": probs,
            "policy": pa.array(["uniform"] * n),
            "model_version": pa.array([None] * n, type=pa.string()),
            "traffic": pa.array(["production"] * n),
            "fallback": pa.array(np.ones(n, dtype=bool)),
            "explored": pa.array(np.ones(n, dtype=bool)),
            "reward": pa.array(reward),
            "reward_observed": pa.array(np.ones(n, dtype=bool)),
            "n_rewards": pa.array(np.ones(n, dtype=np.int64)),
        }
    )


# ---------------------------------------------------------------------- rebuild
TRAIN_ROWS = 20_000
HIDDEN = [64, 64]


def _shard_worker(shard: dict[str, Any], state: str, start: Any, results: Any) -> None:
    """One worker process: one core (torch and BLAS, as a Celery worker slot), the
    rebuild's modules imported, then — once every worker is ready — its shard, timed."""
    import torch
    from threadpoolctl import threadpool_limits

    from training.shards import shard_statistics

    torch.set_num_threads(1)
    with threadpool_limits(1):
        start.wait()
        started = time.perf_counter()
        out = shard_statistics(shard, state)
        results.put({**out, "busy_s": time.perf_counter() - started, "pid": os.getpid()})


def rebuild_benchmark(
    rows: int, shard_counts: list[int], workdir: Path, seed: int = 0
) -> list[dict[str, Any]]:
    """Map (one process per shard) + reduce of the neural-linear head rebuild."""
    from training.shards import reduce_head, shard_ranges, split_point
    from training.train import TrainConfig, train

    replay = synthetic_replay(workdir / "replay.parquet", rows, seed)
    small = synthetic_replay(workdir / "train.parquet", TRAIN_ROWS, seed)
    config = TrainConfig(
        algorithm="neural_linear",
        options={"hidden": HIDDEN, "epochs": 3},
        min_rows=100,
        seed=seed,
    )
    state = train(small, config, workdir / "train").state_path
    cut = split_point(rows, config.holdout_fraction)
    results = []
    ctx = mp.get_context("spawn")
    for k in shard_counts:
        shards = [
            {
                "replay": str(replay),
                "out_dir": str(workdir / f"shards-{k}"),
                "index": i,
                "start": lo,
                "stop": hi,
            }
            for i, (lo, hi) in enumerate(shard_ranges(0, cut, k))
        ]
        start, queue = ctx.Barrier(k + 1), ctx.Queue()
        procs = [ctx.Process(target=_shard_worker, args=(sh, state, start, queue)) for sh in shards]
        for proc in procs:
            proc.start()
        start.wait(timeout=300)  # every worker has started and imported torch
        started = time.perf_counter()
        parts = [queue.get(timeout=3600) for _ in procs]
        map_s = time.perf_counter() - started
        for proc in procs:
            proc.join(60)
        pids = {p["pid"] for p in parts}
        started = time.perf_counter()
        reduce_head(state, parts, workdir / f"rebuilt-{k}.npz")
        reduce_s = time.perf_counter() - started
        per_worker = [p["rows"] / p["busy_s"] for p in parts]
        results.append(
            {
                "shards": k,
                "workers": len(pids),
                "rows": cut,
                "map_s": map_s,
                "reduce_s": reduce_s,
                "rows_per_s": cut / (map_s + reduce_s),
                "rows_per_s_per_worker": float(np.mean(per_worker)),
            }
        )
        console.print(f"rebuild with {k} shard(s): map {map_s:.1f} s, reduce {reduce_s:.2f} s")
    return results


def ope_benchmark(rows: int, workdir: Path, seed: int = 0) -> dict[str, Any]:
    """One held-out shard of ``rows`` rounds evaluated by one worker (one core):
    neural-linear candidate (Monte-Carlo propensities over ``n_sim`` = 100 draws) and
    the uniform baseline, five estimators."""
    import torch
    from threadpoolctl import threadpool_limits

    from training.shards import (
        holdout_shards,
        reduce_head,
        shard_evaluation,
        shard_statistics,
        split_point,
    )
    from training.train import TrainConfig, train
    from validation.gate import GateRule

    total = int(rows / 0.2)
    replay = synthetic_replay(workdir / "ope.parquet", total, seed)
    config = TrainConfig(
        algorithm="neural_linear", options={"hidden": HIDDEN, "epochs": 2}, min_rows=100
    )
    state = train(replay, config, workdir / "ope-train").state_path
    cut = split_point(total, config.holdout_fraction)
    common = {"replay": str(replay), "out_dir": str(workdir / "ope-shards"), "index": 0}
    part = shard_statistics({**common, "start": 0, "stop": cut}, state)
    rebuilt, model = reduce_head(state, [part], workdir / "ope-candidate.npz")
    (blocks,) = holdout_shards(replay, cut, total, 1)
    shard = {
        **common,
        **blocks,
        "seed": seed,
        "support_threshold": GateRule().support_threshold,
        "baseline_state": None,
    }
    torch.set_num_threads(1)
    with threadpool_limits(1):
        started = time.perf_counter()
        out = shard_evaluation(shard, rebuilt, model)
        busy = time.perf_counter() - started
    result = {"rows": out["rows"], "seconds": busy, "rows_per_s_per_worker": out["rows"] / busy}
    console.print(f"OPE: {out['rows']} held-out rounds in {busy:.1f} s on one worker")
    return result


# ---------------------------------------------------------------------- serving
async def _closed_loop(
    ports: list[int], token: str, seconds: float, clients: int, seed: int
) -> dict[str, Any]:
    """``clients`` connections (spread over the replicas' ports), each sending a decision
    then a reward for it, back to back, for ``seconds``."""
    from benchmarks.serving_load import Connection, make_workload

    _env, requests = make_workload(seed, 512)
    rng = np.random.default_rng(seed)
    latencies: dict[str, list[float]] = {"decision": [], "reward": []}
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client(i: int) -> None:
        nonlocal errors
        conn = await Connection.open(ports[i % len(ports)])
        j = i
        try:
            while time.perf_counter() < deadline:
                req = requests[j % len(requests)]
                j += clients
                t0 = time.perf_counter()
                status, body = await conn.post("/v1/decisions", req["body"], token)
                t1 = time.perf_counter()
                if status != 200:
                    errors += 1
                    continue
                answer = json.loads(body)
                reward = float(rng.random() < req["means"][answer["arm_id"]])
                data = json.dumps({"event_id": answer["event_id"], "reward": reward}).encode()
                status, _ = await conn.post("/v1/rewards", data, token)
                t2 = time.perf_counter()
                if status != 200:
                    errors += 1
                    continue
                latencies["decision"].append(t1 - t0)
                latencies["reward"].append(t2 - t1)
        finally:
            conn.writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    wall = time.perf_counter() - started
    done = len(latencies["decision"]) + len(latencies["reward"])
    out: dict[str, Any] = {"requests": done, "wall_s": wall, "rps": done / wall, "errors": errors}
    for kind, values in latencies.items():
        if values:
            p50, p99 = np.percentile(np.array(values) * 1000.0, [50, 99])
            out[f"{kind}_p50_ms"], out[f"{kind}_p99_ms"] = float(p50), float(p99)
    return out


def _load_process(args: tuple[Any, ...], results: Any) -> None:
    results.put(asyncio.run(_closed_loop(*args)))


def serving_benchmark(
    replica_counts: list[int],
    workdir: Path,
    *,
    seconds: float,
    clients: int,
    postgres_url: str | None,
    sync_s: float = 1.0,
) -> list[dict[str, Any]]:
    """Closed-loop decision + reward traffic against 1, 2, … replicas of the service."""
    from benchmarks.serving_load import (
        _cpu_seconds,
        make_workload,
        serving_process,
        spawned,
        warm_policy,
    )
    from eventstore.engine import make_engine
    from eventstore.migrate import upgrade

    env_model, _ = make_workload(0, 1)
    policy = warm_policy(env_model, 0, workdir / "policy.npz")
    results = []
    for n in replica_counts:
        with contextlib.ExitStack() as stack:
            if postgres_url:
                from eventstore.scratch import scratch_postgres_database

                url = stack.enter_context(
                    scratch_postgres_database(postgres_url, prefix="banditops_scale")
                )
            else:
                url = f"sqlite:///{workdir / f'events-{n}.db'}"
            engine = make_engine(url)
            upgrade(engine)
            engine.dispose()
            ports, procs = [], []
            for i in range(n):
                env = {
                    "BANDITOPS_DATABASE_URL": url,
                    "BANDITOPS_MODEL_PATH": str(policy),
                    "BANDITOPS_WORKSPACE": str(workdir / f"replica-{n}-{i}"),
                    "BANDITOPS_API_TOKEN": BENCH_SECRET,
                    "BANDITOPS_USER_SALT": BENCH_SECRET,
                    "BANDITOPS_REPLICA_ID": f"r{i}",
                    "BANDITOPS_REPLICA_SYNC_S": str(sync_s if n > 1 else 0.0),
                    "BANDITOPS_SQLITE_SYNCHRONOUS": "NORMAL",
                }
                port, proc = stack.enter_context(
                    serving_process(env, workdir / f"replica-{n}-{i}.log")
                )
                ports.append(port)
                procs.append(proc)
            cpu_before = [_cpu_seconds(p.pid) or 0.0 for p in procs]
            out = spawned(_load_process, (ports, BENCH_SECRET, seconds, clients, 1), seconds + 300)
            cpu = sum(
                (_cpu_seconds(p.pid) or 0.0) - b for p, b in zip(procs, cpu_before, strict=True)
            )
            out["replica_cpu_ms_per_request"] = 1000.0 * cpu / max(out["requests"], 1)
        results.append(
            {
                "replicas": n,
                "clients": clients,
                "store": "postgresql" if postgres_url else "sqlite",
                **out,
            }
        )
        console.print(f"serving with {n} replica(s): {out['rps']:.0f} requests/s")
    return results


# ---------------------------------------------------------------------- report
def _table(title: str, rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> Table:
    table = Table(title=title)
    for _, header, _fmt in columns:
        table.add_column(header, justify="right")
    for row in rows:
        table.add_row(*(format(row.get(key, float("nan")), fmt) for key, _h, fmt in columns))
    return table


REBUILD_COLUMNS = [
    ("shards", "shards", "d"),
    ("workers", "worker processes", "d"),
    ("rows", "training rows", ",d"),
    ("map_s", "map (s)", ".1f"),
    ("reduce_s", "reduce (s)", ".2f"),
    ("rows_per_s", "rows/s overall", ",.0f"),
    ("rows_per_s_per_worker", "rows/s per worker", ",.0f"),
]
OPE_COLUMNS = [
    ("rows", "held-out rounds", ",d"),
    ("seconds", "seconds", ".1f"),
    ("rows_per_s_per_worker", "rounds/s per worker", ",.0f"),
]
SERVING_COLUMNS = [
    ("replicas", "replicas", "d"),
    ("clients", "clients", "d"),
    ("rps", "requests/s", ",.0f"),
    ("decision_p50_ms", "decision p50 (ms)", ".1f"),
    ("decision_p99_ms", "decision p99 (ms)", ".1f"),
    ("reward_p50_ms", "reward p50 (ms)", ".1f"),
    ("reward_p99_ms", "reward p99 (ms)", ".1f"),
    ("replica_cpu_ms_per_request", "replica CPU ms / request", ".2f"),
    ("errors", "errors", "d"),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="Replay rows (default 1,000,000)."
    )
    parser.add_argument("--shards", default="1,2,4", help="Shard counts (default 1,2,4).")
    parser.add_argument("--replicas", default="1,2", help="Replica counts (default 1,2).")
    parser.add_argument("--seconds", type=float, default=20.0, help="Load per replica count.")
    parser.add_argument("--clients", type=int, default=16, help="Concurrent HTTP connections.")
    parser.add_argument(
        "--postgres-url",
        default=postgres_test_url(),
        help="Server for the replicas' event store ('' for SQLite).",
    )
    parser.add_argument(
        "--ope-rows", type=int, default=10_000, help="Held-out rounds of the OPE shard."
    )
    parser.add_argument("--skip-rebuild", action="store_true")
    parser.add_argument("--skip-ope", action="store_true")
    parser.add_argument("--skip-serving", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="Write the results here.")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {
        "rows": args.rows,
        "cpus": os.cpu_count(),
        "load_avg": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory(prefix="banditops-scale-") as tmp:
        work = Path(tmp)
        if not args.skip_rebuild:
            counts = [int(k) for k in args.shards.split(",")]
            report["rebuild"] = rebuild_benchmark(args.rows, counts, work)
            console.print(
                _table(
                    "sharded head rebuild (neural-linear, hidden 64-64)",
                    report["rebuild"],
                    REBUILD_COLUMNS,
                )
            )
        if not args.skip_ope:
            report["ope"] = ope_benchmark(args.ope_rows, work)
            console.print(_table("sharded OPE map, one worker", [report["ope"]], OPE_COLUMNS))
        if not args.skip_serving:
            counts = [int(k) for k in args.replicas.split(",")]
            report["serving"] = serving_benchmark(
                counts,
                work,
                seconds=args.seconds,
                clients=args.clients,
                postgres_url=args.postgres_url or None,
            )
            console.print(
                _table(
                    "serving replicas (decision + reward, closed loop)",
                    report["serving"],
                    SERVING_COLUMNS,
                )
            )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
