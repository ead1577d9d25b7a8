"""How long a head snapshot stalls the event loop, as arms grow.

    python -m benchmarks.snapshot_copy --arms 4000,16000 [--json PATH]

A served head is snapshotted every ``snapshot_every_rewards`` rewards. Its state is
copied by :meth:`serving.snapshots.Snapshotter.copy_state` — in a worker thread while the
head gate holds the head's updates (ours) — and, in the same run, by ``policy.to_state()``
on the event loop (the baseline, what the service did before). While ``snapshots`` copies
are taken one after another, a ticker on the loop asks to wake every millisecond and
records how late it wakes: the loop's stall. The table gives the copy's p50 and the
ticker's p99 and largest lateness for both. A second table does the same for the
serialisation of the copied state in a worker thread: ours
(:func:`bandit_core.state.state_to_parts`, in parts of ``snapshot_part_bytes``) against
``np.savez`` into one in-memory buffer (what it was, less the temporary file and its
fsync).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from bandit_core import make_policy
from bandit_core.state import state_to_parts
from serving.settings import Settings
from serving.snapshots import HeadGate, Snapshotter

POLICIES: dict[str, dict[str, Any]] = {
    "linucb": {"dim_user": 16},
    "hybrid_linucb": {"dim_user": 16, "dim_arm": 4},
}
TICK_S = 0.001
PART_BYTES: int = Settings.model_fields["snapshot_part_bytes"].default


def _savez(state: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **state.arrays)
    return buffer.getvalue()


def _trained(name: str, arms: int, seed: int) -> Any:
    options = POLICIES[name]
    rng = np.random.default_rng(seed)
    policy = make_policy(name, **options)
    dim_arm = int(options.get("dim_arm", 0))
    feats = rng.standard_normal((arms, dim_arm)) if dim_arm else None
    ids = [f"arm-{k}" for k in range(arms)]
    policy.update_batch(rng.standard_normal((arms, 16)), ids, rng.standard_normal(arms), feats)
    return policy


async def _measure(copy: Callable[[], Awaitable[Any]], snapshots: int) -> dict[str, float]:
    """Copy times and the ticker's lateness while ``snapshots`` copies run."""
    late: list[float] = []
    running = True

    async def ticker() -> None:
        while running:
            start = time.perf_counter()
            await asyncio.sleep(TICK_S)
            late.append(time.perf_counter() - start - TICK_S)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    copies = []
    for _ in range(snapshots):
        start = time.perf_counter()
        await copy()
        copies.append(time.perf_counter() - start)
        await asyncio.sleep(0.005)
    running = False
    await task
    return {
        "copy_p50_ms": float(np.percentile(copies, 50) * 1e3),
        "loop_late_p99_ms": float(np.percentile(late, 99) * 1e3),
        "loop_late_max_ms": float(max(late) * 1e3),
    }


async def _run(arms: list[int], snapshots: int, seed: int) -> list[dict[str, Any]]:
    async def commit(_row: Any) -> int:
        return 0

    snapshotter = Snapshotter(
        commit, 10**9, 1e9, True, gate=HeadGate(), part_bytes=1 << 30, keep=10**9
    )
    rows = []
    for name in POLICIES:
        for n_arms in arms:
            policy = _trained(name, n_arms, seed)

            async def on_loop(policy: Any = policy) -> Any:
                return policy.to_state()

            async def gated(policy: Any = policy) -> Any:
                return await snapshotter.copy_state(policy)

            state = policy.to_state()

            async def in_parts(state: Any = state) -> Any:
                return await asyncio.to_thread(state_to_parts, state, PART_BYTES)

            async def savez(state: Any = state) -> Any:
                return await asyncio.to_thread(_savez, state)

            rows.append(
                {
                    "policy": name,
                    "arms": n_arms,
                    "ours": await _measure(gated, snapshots),
                    "on_loop": await _measure(on_loop, snapshots),
                    "serialise_ours": await _measure(in_parts, snapshots),
                    "serialise_savez": await _measure(savez, snapshots),
                }
            )
    return rows


def _table(
    title: str, rows: list[dict[str, Any]], ways: tuple[str, str], columns: tuple[str, ...]
) -> Table:
    """Per policy and arms: for each of the two ``ways`` the time, the p99 and the largest
    lateness, under ``columns`` (an empty name leaves that figure out)."""
    table = Table(title=title)
    shown = [c for c in columns if c]
    for col in ("policy", "arms", *shown):
        table.add_column(col, justify="right")
    for r in rows:
        figures = []
        for way in ways:
            got = r[way]
            figures += [
                f"{got['copy_p50_ms']:.1f}",
                f"{got['loop_late_p99_ms']:.2f}",
                f"{got['loop_late_max_ms']:.2f}",
            ]
        table.add_row(
            r["policy"], f"{r['arms']:,}", *(f for f, c in zip(figures, columns, strict=True) if c)
        )
    return table


def run(arms: list[int], snapshots: int = 20, seed: int = 0) -> list[dict[str, Any]]:
    return asyncio.run(_run(arms, snapshots, seed))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Event-loop stall of a head snapshot.")
    parser.add_argument("--arms", default="4000,16000")
    parser.add_argument("--snapshots", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = run([int(a) for a in args.arms.split(",")], args.snapshots, args.seed)
    copies = _table(
        f"loop lateness (1 ms ticker) during {args.snapshots} snapshots",
        rows,
        ("ours", "on_loop"),
        (
            "copy p50 ms",
            "ours late p99",
            "ours late max",
            "",
            "on-loop late p99",
            "on-loop late max",
        ),
    )
    serialised = _table(
        f"loop lateness (1 ms ticker) while {args.snapshots} states are serialised",
        rows,
        ("serialise_ours", "serialise_savez"),
        (
            "ours ms",
            "ours late p99",
            "ours late max",
            "savez ms",
            "savez late p99",
            "savez late max",
        ),
    )
    for table in (copies, serialised):
        Console(width=120).print(table)
    if args.json is not None:
        args.json.write_text(json.dumps({"benchmark": "snapshot_copy", "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
