"""Two-stage selection benchmark: retrieve K = 100 of 100,000 items, then let the bandit
choose among them — in process, and through HTTP at a fixed request rate.

    python -m benchmarks.catalog [--items 100000] [--k 100] [--rps 100] [--seconds 20]
        [--json PATH]

Catalog (seeded): items with 8 features and a 16-value retrieval embedding (the user
context is the query); all but ``new`` of them have enough impressions to be established,
the ``new`` ones get the exploration floor. The policy is ``shared_linucb`` on
``[context (16) ; item features (8)]``, warmed on 2,000 simulated clicks.

* recall@K: HNSW (faiss, M = 32, efConstruction = 80, efSearch = 256) against exact inner
  product on 200 queries;
* in process: wall time of ``retrieve`` + ``choose`` (floor included) per request, over
  2,000 requests after 100 warm-up ones (one thread, as on the request path);
* HTTP: ``banditops serve`` on a SQLite event store holding the catalog; an open-loop
  generator (``benchmarks.serving_load``'s client) sends ``retrieve: {k}`` decisions at
  ``--rps`` for ``--seconds``; latency from the scheduled send time, every decision
  committed before it is answered.

``--json PATH`` writes ``{"benchmark": "catalog", "items", "k", "recall_at_k",
"select_p99_ms", "http_p99_ms", ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from rich.console import Console
from rich.table import Table
from sqlalchemy import update

from bandit_core import make_policy, save_policy
from benchmarks.serving_load import Connection, _percentiles, serving_process, spawned
from serving.catalog.index import CatalogIndex, IndexConfig
from serving.catalog.retrieval import ExactRetriever
from serving.catalog.store import CatalogStore, ItemInput, ItemRecord
from serving.decide import ChoiceOptions, choose

DIM_USER = 16
DIM_ARM = 8
NEW_AFTER = 100
console = Console(width=None if sys.stdout.isatty() else 150)


def make_catalog(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Item features (n, 8) and embeddings (n, 16)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, DIM_ARM)), rng.standard_normal((n, DIM_USER))


def warm_policy(seed: int, path: Path | None = None) -> Any:
    rng = np.random.default_rng(seed + 1)
    policy = make_policy("shared_linucb", dim_user=DIM_USER, dim_arm=DIM_ARM, alpha=1.0)
    x = rng.standard_normal((2000, DIM_USER))
    a = rng.standard_normal((2000, DIM_ARM))
    clicks = (rng.random(2000) < 1 / (1 + np.exp(-(x[:, :DIM_ARM] * a).sum(1)))).astype(float)
    policy.update_batch(x, [f"w{i}" for i in range(2000)], clicks, a)
    if path is not None:
        save_policy(policy, path)
    return policy


def index_config(method: str = "hnsw") -> IndexConfig:
    """The service's index settings (their defaults), with ``method`` and this run's
    ``new_after``."""
    return IndexConfig(method=method, new_after=NEW_AFTER)


def in_process(items: int, k: int, new: int, seed: int) -> dict[str, Any]:
    feats, emb = make_catalog(seed, items)
    impressions = [0 if i >= items - new else NEW_AFTER for i in range(items)]
    records = [
        ItemRecord(f"item-{i}", 1, i + 1, False, feats[i], emb[i], impressions[i])
        for i in range(items)
    ]
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    index = CatalogIndex(index_config(), DIM_ARM, DIM_USER, items)
    index.apply(records)
    build_s = time.perf_counter() - started
    faiss.omp_set_num_threads(1)
    exact = ExactRetriever(DIM_USER)
    exact.add(emb)
    rng = np.random.default_rng(seed + 2)
    queries = rng.standard_normal((200, DIM_USER))
    recall = np.mean(
        [
            len(set(index.retriever.search(q, k)[0].tolist()) & set(exact.search(q, k)[0].tolist()))
            / k
            for q in queries
        ]
    )
    policy = warm_policy(seed)
    times, retrieve_times = [], []
    floors = 0
    for i in range(2100):
        context = rng.standard_normal(DIM_USER)
        start = time.perf_counter()
        got = index.retrieve(context, k)
        mid = time.perf_counter()
        options = ChoiceOptions(new_ids=got.new_ids)  # the service's defaults otherwise
        choice = choose(policy, context, got.candidates, rng, None, options)
        end = time.perf_counter()
        if i >= 100:
            times.append((end - start) * 1000.0)
            retrieve_times.append((mid - start) * 1000.0)
            floors += choice.decision.policy.endswith("cold_floor")
    return {
        "build_s": build_s,
        "recall_at_k": float(recall),
        "select": _percentiles(times),
        "retrieve": _percentiles(retrieve_times),
        "floored_share": floors / len(times),
    }


def _load_store(url: str, items: int, new: int, seed: int) -> None:
    from eventstore.engine import make_engine
    from eventstore.migrate import upgrade
    from eventstore.schema import items as items_table

    feats, emb = make_catalog(seed, items)
    engine = make_engine(url, sqlite_synchronous="NORMAL")
    upgrade(engine)
    store = CatalogStore(engine)
    for start in range(0, items, 10_000):
        stop = min(items, start + 10_000)
        store.upsert([ItemInput(f"item-{i}", feats[i], emb[i]) for i in range(start, stop)])
    established = [f"item-{i}" for i in range(items - new)]
    with engine.begin() as conn:
        conn.execute(
            update(items_table)
            .where(items_table.c.item_id.in_(established))
            .values(impressions=NEW_AFTER)
        )
    engine.dispose()


async def _load(port: int, rps: float, seconds: float, k: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed + 3)
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(16):
        pool.put_nowait(await Connection.open(port))
    latencies: list[float] = []
    errors: list[str] = []
    sizes: Counter[int] = Counter()

    async def one(scheduled: float, body: bytes) -> None:
        conn = await pool.get()
        try:
            status, answer = await conn.post("/v1/decisions", body, "")
        except Exception as exc:  # a dropped connection counts as an error
            errors.append(repr(exc)[:200])
            pool.put_nowait(await Connection.open(port))
            return
        pool.put_nowait(conn)
        if status != 200:
            errors.append(f"{status}: {answer[:200]!r}")
            return
        latencies.append((time.perf_counter() - scheduled) * 1000.0)
        sizes[len(json.loads(answer)["candidates"])] += 1

    total = int(rps * seconds)
    bodies = [
        json.dumps(
            {"context": rng.standard_normal(DIM_USER).round(6).tolist(), "retrieve": {"k": k}}
        ).encode()
        for _ in range(total)
    ]
    start = time.perf_counter() + 0.2
    tasks = []
    for i in range(total):
        scheduled = start + i / rps
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled, bodies[i])))
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - start
    while not pool.empty():
        pool.get_nowait().writer.close()
    return {
        **_percentiles(latencies),
        "rps_achieved": len(latencies) / wall,
        "errors": len(errors),
        "error_samples": errors[:5],
        "candidate_counts": dict(sizes),
    }


def _load_process(args: tuple[Any, ...], results: Any) -> None:
    results.put(asyncio.run(_load(*args)))


def over_http(
    items: int, k: int, new: int, rps: float, seconds: float, seed: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="banditops-catalog-") as tmp:
        workdir = Path(tmp)
        url = f"sqlite:///{workdir / 'events.db'}"
        started = time.perf_counter()
        _load_store(url, items, new, seed)
        load_s = time.perf_counter() - started
        model = workdir / "policy.npz"
        warm_policy(seed, model)
        env = {
            "BANDITOPS_DATABASE_URL": url,
            "BANDITOPS_MODEL_PATH": str(model),
            "BANDITOPS_WORKSPACE": str(workdir / "ws"),
            "BANDITOPS_SEED": str(seed),
            "BANDITOPS_CATALOG_INDEX": "hnsw",
            "BANDITOPS_NEW_ITEM_IMPRESSIONS": str(NEW_AFTER),
        }
        started = time.perf_counter()
        with serving_process(env, workdir / "service.log", ready_timeout=600) as (port, _):
            ready_s = time.perf_counter() - started
            out = spawned(_load_process, (port, rps, seconds, k, seed), timeout=seconds + 300)
    return {**out, "store_load_s": load_s, "startup_s": ready_s}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--new", type=int, default=50, help="Items still new (floored).")
    parser.add_argument("--rps", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-http", action="store_true", help="In-process part only.")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not 1 <= args.k <= args.items:
        parser.error(f"--k must be in [1, --items]; got {args.k}")
    local = in_process(args.items, args.k, args.new, args.seed)
    http = (
        None
        if args.no_http
        else over_http(args.items, args.k, args.new, args.rps, args.seconds, args.seed)
    )
    result = {
        "benchmark": "catalog",
        "items": args.items,
        "k": args.k,
        "recall_at_k": local["recall_at_k"],
        "select_p99_ms": local["select"]["p99_ms"],
        "http_p99_ms": None if http is None else http["p99_ms"],
        "in_process": local,
        "http": http,
        "rps_target": args.rps,
        "seconds": args.seconds,
        "cpu_count": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
    }
    table = Table(title=f"retrieve K = {args.k} of {args.items:,} items, then shared_linucb")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("recall@K (HNSW vs exact)", f"{local['recall_at_k']:.4f}")
    table.add_row("HNSW build (s)", f"{local['build_s']:.1f}")
    for name in ("p50_ms", "p99_ms"):
        table.add_row(f"in-process retrieve {name}", f"{local['retrieve'][name]:.3f}")
        table.add_row(f"in-process retrieve+select {name}", f"{local['select'][name]:.3f}")
    if http is not None:
        table.add_row("HTTP rps achieved", f"{http['rps_achieved']:.1f}")
        table.add_row("HTTP p50 (ms)", f"{http['p50_ms']:.2f}")
        table.add_row("HTTP p99 (ms)", f"{http['p99_ms']:.2f}")
        table.add_row("HTTP errors", str(http["errors"]))
    console.print(table)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
