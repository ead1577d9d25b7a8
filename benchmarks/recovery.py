"""Recovering a served head from the event store: time and memory, chunked vs whole.

    python -m benchmarks.recovery --rewards 20000 --candidates 200 [--json PATH]

A SQLite store holds ``rewards`` applied rewards of one version, each of a decision
among ``candidates`` items with ``dim`` features (and a ``dim`` context). We time
``serving.models.recovery.recover`` from the version's base — it reads and learns the
rewards :data:`serving.store.repository.RECOVERY_CHUNK` at a time, as after a crash with
no usable snapshot, or when a version trained on a window loads and catches up on what
production learnt after it — against the whole tail read in one query and learnt in one
batch, in the same run, and trace each one's peak Python/numpy allocation
(``tracemalloc``). The heads are compared: chunking must not change what is learnt.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from bandit_core import Policy, make_policy
from eventstore.engine import make_engine
from eventstore.migrate import upgrade
from eventstore.records import DecisionRow, RewardRow
from serving.models.recovery import learn_rewards, recover
from serving.store import repository
from serving.store.repository import EventStore, write_events

VERSION = "bench/1"


def _fill(store_url: str, rewards: int, candidates: int, dim: int, seed: int) -> None:
    """``rewards`` decisions of ``VERSION``, each rewarded once (applied)."""
    rng = np.random.default_rng(seed)
    engine = make_engine(store_url)
    upgrade(engine)
    ids = tuple(f"item-{i}" for i in range(candidates))
    probabilities = np.full(candidates, 1.0 / candidates)
    try:
        for start in range(0, rewards, 1000):
            items: list[Any] = []
            for _ in range(start, min(rewards, start + 1000)):
                now = datetime.now(UTC)
                chosen = int(rng.integers(candidates))
                decision = DecisionRow(
                    event_id=uuid.uuid4().hex,
                    created_at=now,
                    user_hash=None,
                    context=rng.standard_normal(dim),
                    candidate_ids=ids,
                    candidate_features=rng.standard_normal((candidates, dim)),
                    chosen=chosen,
                    propensity=float(probabilities[chosen]),
                    probabilities=probabilities,
                    scores=np.zeros(candidates),
                    policy="shared_linucb",
                    model_version=VERSION,
                    traffic="production",
                    fallback=False,
                    explored=False,
                )
                reward = RewardRow(
                    decision.event_id, float(rng.random() < 0.3), now, now, VERSION, True
                )
                items += [decision, reward]
            with engine.begin() as conn:
                write_events(conn, items)
    finally:
        engine.dispose()


def _traced(call: Callable[[], Policy]) -> tuple[Policy, float, float]:
    """``call()``'s result, its seconds and its peak traced allocation in MB."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        result = call()
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    return result, seconds, peak


def run(rewards: int, candidates: int, dim: int, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="banditops-recovery-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'events.db'}"
        _fill(url, rewards, candidates, dim, seed)
        engine = make_engine(url)
        store = EventStore(engine)

        def base() -> Policy:
            return make_policy("shared_linucb", dim_user=dim, dim_arm=dim)

        def whole() -> Policy:
            policy = base()
            learn_rewards(policy, store.applied_rewards(VERSION), VERSION)
            return policy

        try:
            chunked, seconds, peak = _traced(lambda: recover(store, VERSION, base(), "b").policy)
            reference, whole_seconds, whole_peak = _traced(whole)
        finally:
            engine.dispose()
    arrays = chunked.to_state().arrays
    diff = max(
        float(np.max(np.abs(arrays[k] - v), initial=0.0))
        for k, v in reference.to_state().arrays.items()
        if np.issubdtype(v.dtype, np.floating)
    )
    decision_mb = rewards * candidates * dim * 8 / 2**20
    return {
        "benchmark": "recovery",
        "rewards": rewards,
        "candidates": candidates,
        "dim": dim,
        "chunk": repository.RECOVERY_CHUNK,
        "seconds": seconds,
        "peak_mb": peak,
        "whole_seconds": whole_seconds,
        "whole_peak_mb": whole_peak,
        "candidate_blocks_mb": decision_mb,
        "max_abs_diff": diff,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Head recovery from the store: chunked vs whole.")
    parser.add_argument("--rewards", type=int, default=20_000)
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run(args.rewards, args.candidates, args.dim, args.seed)
    table = Table(
        title=(
            f"head recovery from the store: {args.rewards:,} rewards, {args.candidates} "
            f"candidates × {args.dim} features per decision"
        )
    )
    for col in ("what", "seconds", "peak traced MB"):
        table.add_column(col, justify="right")
    table.add_row(
        f"recover(), {result['chunk']:,} rewards a chunk (ours)",
        f"{result['seconds']:.2f}",
        f"{result['peak_mb']:.1f}",
    )
    table.add_row(
        "one read of every reward, one batch",
        f"{result['whole_seconds']:.2f}",
        f"{result['whole_peak_mb']:.1f}",
    )
    table.add_row(
        "ratio (ours / one read)",
        f"{result['seconds'] / result['whole_seconds']:.2f}",
        f"{result['peak_mb'] / result['whole_peak_mb']:.2f}",
    )
    Console(width=120).print(table)
    print(
        f"the decisions' candidate blocks: {result['candidate_blocks_mb']:.0f} MB (what a read "
        f"that kept each decision's block alive would hold); largest head difference "
        f"chunked vs whole: {result['max_abs_diff']:.1e}"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
