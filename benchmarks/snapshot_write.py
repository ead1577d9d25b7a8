"""How long decisions wait behind a head snapshot's write, as the head grows.

    python -m benchmarks.snapshot_write --arms 4000,16000 --store both \
        [--postgres-url URL] [--json PATH]

A served head is snapshotted every ``snapshot_every_rewards`` rewards; its state (tens of
megabytes for a per-arm head of 16,000 arms) is written to the event store while
decisions keep committing there. Three runs per store and head size, each with the same
open-loop stream of decisions (one every ``--interval-ms``, each waiting for its durable
commit, as a request does):

* ``none``: no snapshot (the floor);
* ``one row``: snapshots as one row through the event writer (what the service did
  before: the decisions queued behind it waited for the whole write);
* ``ours``: :class:`serving.snapshots.Snapshotter` as the service runs it — parts of at
  most ``snapshot_part_bytes`` each in a transaction of its own, beside the events on
  SQLite and on a writer of their own on PostgreSQL (:func:`serving.snapshots.own_writer`),
  then the deletion of the snapshots beyond ``snapshot_keep`` (a few parts per
  transaction).

The table gives the decisions' commit p50/p99/max and a snapshot's write time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine

from bandit_core import make_policy
from bandit_core.state import state_to_bytes
from benchmarks.serving_load import DEFAULT_POSTGRES, _database
from eventstore.engine import make_engine
from eventstore.migrate import upgrade
from eventstore.records import DecisionRow
from serving.models.served import ServedModel, Signature
from serving.settings import Settings
from serving.snapshots import HeadGate, Snapshotter, own_writer
from serving.store.repository import write_events
from serving.store.writer import GroupCommitWriter

DIM = 16
MODES = ("none", "one row", "ours")
PART_BYTES: int = Settings.model_fields["snapshot_part_bytes"].default
KEEP: int = Settings.model_fields["snapshot_keep"].default
PROBE_S: float = Settings.model_fields["store_probe_s"].default


def _decision(rng: np.random.Generator) -> DecisionRow:
    probs = np.full(4, 0.25)
    return DecisionRow(
        event_id=uuid.uuid4().hex,
        created_at=datetime.now(UTC),
        user_hash=None,
        context=rng.standard_normal(DIM),
        candidate_ids=tuple(f"arm-{i}" for i in range(4)),
        candidate_features=np.zeros((4, 0)),
        chosen=0,
        propensity=0.25,
        probabilities=probs,
        scores=np.zeros(4),
        policy="linucb",
        model_version="v1",
        traffic="production",
        fallback=False,
        explored=False,
    )


def _served(arms: int, seed: int) -> ServedModel:
    rng = np.random.default_rng(seed)
    policy = make_policy("linucb", dim_user=DIM)
    ids = [f"arm-{k}" for k in range(arms)]
    policy.update_batch(rng.standard_normal((arms, DIM)), ids, rng.standard_normal(arms))
    return ServedModel("v1", policy, "bench", Signature.of(policy))


def _committer(writer: GroupCommitWriter[Any, Any]) -> Callable[[Any], Awaitable[Any]]:
    async def commit(item: Any) -> Any:
        return await asyncio.wrap_future(writer.submit(item))

    return commit


async def _measure(
    engine: Engine,
    model: ServedModel,
    mode: str,
    snapshots: int,
    interval_s: float,
    seed: int,
    part_bytes: int,
) -> dict[str, Any]:
    """Decisions' commit latencies while ``snapshots`` snapshots are written one after
    another (for ``none``: for as long as the ``one row`` run took, at least a second)."""
    rng = np.random.default_rng(seed)
    events = GroupCommitWriter(engine, write_events).start()
    own = own_writer(engine, PROBE_S) if mode == "ours" else None
    if own is not None:
        own.start()
    snapshotter = Snapshotter(
        _committer(own or events),
        10**9,
        1e9,
        True,
        gate=HeadGate(),
        part_bytes=part_bytes if mode == "ours" else 1 << 40,
        # ours deletes superseded snapshots as the service does; before, none were
        keep=KEEP if mode == "ours" else 10**9,
    )
    waits: list[float] = []
    pending: set[asyncio.Task[None]] = set()

    async def one() -> None:
        start = time.perf_counter()
        await asyncio.wrap_future(events.submit(_decision(rng)))
        waits.append(time.perf_counter() - start)

    running = True

    async def traffic() -> None:
        due = time.perf_counter()
        while running:
            task = asyncio.create_task(one())
            pending.add(task)
            task.add_done_callback(pending.discard)
            due += interval_s
            await asyncio.sleep(max(0.0, due - time.perf_counter()))

    try:
        stream = asyncio.create_task(traffic())
        await asyncio.sleep(0.2)
        waits.clear()
        writes = []
        started = time.perf_counter()
        for _ in range(snapshots if mode != "none" else 0):
            model.rewards_since_snapshot = 1
            begin = time.perf_counter()
            task = snapshotter.take(model)
            assert task is not None
            await task
            writes.append(time.perf_counter() - begin)
            await asyncio.sleep(0.05)
        await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - started)))
        running = False
        await stream
        await asyncio.gather(*pending)
    finally:
        await asyncio.to_thread(events.close)
        if own is not None:
            await asyncio.to_thread(own.close)
    ms = np.asarray(waits) * 1e3
    return {
        "decisions": len(waits),
        "commit_p50_ms": float(np.percentile(ms, 50)),
        "commit_p99_ms": float(np.percentile(ms, 99)),
        "commit_max_ms": float(ms.max()),
        "write_p50_ms": float(np.percentile(writes, 50) * 1e3) if writes else None,
    }


@contextlib.contextmanager
def _engine(store: str, postgres_url: str) -> Iterator[Engine]:
    with tempfile.TemporaryDirectory() as tmp, _database(store, Path(tmp), postgres_url) as url:
        engine = make_engine(url, sqlite_autocheckpoint=False)
        try:
            upgrade(engine)
            yield engine
        finally:
            engine.dispose()


def run(
    stores: list[str],
    arms: list[int],
    snapshots: int = 5,
    interval_ms: float = 2.0,
    postgres_url: str = DEFAULT_POSTGRES,
    seed: int = 0,
    part_bytes: int = PART_BYTES,
) -> list[dict[str, Any]]:
    rows = []
    for n_arms in arms:
        model = _served(n_arms, seed)
        for store in stores:
            for mode in MODES:
                with _engine(store, postgres_url) as engine:
                    result = asyncio.run(
                        _measure(
                            engine, model, mode, snapshots, interval_ms / 1e3, seed, part_bytes
                        )
                    )
                rows.append({"store": store, "arms": n_arms, "mode": mode, **result})
    return rows


def _state_mb(arms: int, seed: int) -> float:
    return len(state_to_bytes(_served(arms, seed).policy.to_state())) / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Decisions' wait behind a head snapshot.")
    parser.add_argument("--arms", default="4000,16000")
    parser.add_argument("--store", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--snapshots", type=int, default=5)
    parser.add_argument("--interval-ms", type=float, default=2.0)
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--part-bytes", type=int, default=PART_BYTES)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    stores = ["sqlite", "postgresql"] if args.store == "both" else [args.store]
    arms = [int(a) for a in args.arms.split(",")]
    rows = run(
        stores,
        arms,
        args.snapshots,
        args.interval_ms,
        args.postgres_url,
        args.seed,
        args.part_bytes,
    )
    sizes = {n: _state_mb(n, args.seed) for n in arms}
    table = Table(
        title=(
            f"decision commit while {args.snapshots} snapshots are written "
            f"(one decision every {args.interval_ms:g} ms; parts of {args.part_bytes:,} bytes)"
        )
    )
    for col in ("store", "arms", "state MB", "snapshots", "decisions", "commit p50 ms"):
        table.add_column(col, justify="right")
    for col in ("commit p99 ms", "commit max ms", "write p50 ms", "p99 / one row's"):
        table.add_column(col, justify="right")
    one = {(r["store"], r["arms"]): r["commit_p99_ms"] for r in rows if r["mode"] == "one row"}
    for r in rows:
        table.add_row(
            r["store"],
            f"{r['arms']:,}",
            f"{sizes[r['arms']]:.1f}",
            r["mode"],
            f"{r['decisions']:,}",
            f"{r['commit_p50_ms']:.2f}",
            f"{r['commit_p99_ms']:.2f}",
            f"{r['commit_max_ms']:.1f}",
            "" if r["write_p50_ms"] is None else f"{r['write_p50_ms']:.0f}",
            f"{r['commit_p99_ms'] / one[(r['store'], r['arms'])]:.3f}",
        )
    Console(width=140).print(table)
    if args.json is not None:
        for r in rows:
            r["state_mb"] = sizes[r["arms"]]
        out = {"benchmark": "snapshot_write", "part_bytes": args.part_bytes, "rows": rows}
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
