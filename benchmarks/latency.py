"""Request-path latency of select and update, against a numpy baseline from the same run.

    python -m benchmarks.latency [--iterations 3000] [--json PATH]

Each policy is first trained on 2,000 seeded observations (a realistic state, not a
prior), then every ``select`` (K candidates) and ``update`` is timed one call at a time
with ``perf_counter_ns``. The baseline is one numpy matmul of the shapes the policy works
on (K × d by d × d), timed the same way; the ratio to it is what to compare across
machines. BLAS runs single-threaded, as in the service.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from threadpoolctl import threadpool_limits

from bandit_core import Candidates, make_policy

K = 50
D_USER = 16
D_ARM = 16

#: (policy name, options, targets in µs for select / update p99)
CASES: list[tuple[str, dict[str, Any], float, float]] = [
    ("shared_linucb", {"dim_user": D_USER, "dim_arm": D_ARM, "alpha": 1.0}, 100.0, 50.0),
    ("shared_lints", {"dim_user": D_USER, "dim_arm": D_ARM, "n_sim": 1000}, 1000.0, 50.0),
    ("linucb", {"dim_user": D_USER, "alpha": 1.0}, 100.0, 50.0),
    ("lints", {"dim_user": D_USER, "n_sim": 1000}, 1000.0, 50.0),
    ("epsilon_greedy", {"dim_user": D_USER, "dim_arm": D_ARM, "epsilon": 0.05}, 100.0, 50.0),
]


def _time(fn: Callable[[int], object], iterations: int) -> np.ndarray:
    out = np.empty(iterations)
    for i in range(iterations):
        start = time.perf_counter_ns()
        fn(i)
        out[i] = time.perf_counter_ns() - start
    return out / 1000.0  # µs


def _warm(
    policy: Any, rng: np.random.Generator, ids: tuple[str, ...], feats: np.ndarray, n: int = 2000
) -> None:
    contexts = rng.standard_normal((n, D_USER))
    arms = rng.integers(0, len(ids), size=n)
    policy.update_batch(contexts, [ids[a] for a in arms], rng.random(n), feats[arms])


def _measure(
    policy: Any, candidates: Candidates, contexts: np.ndarray, rewards: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-call µs of the baseline matmul, of ``select`` and of ``update``."""
    iterations = contexts.shape[0]
    dim = policy.head.dim
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((K, dim))
    b = rng.standard_normal((dim, dim))
    baseline = _time(lambda _i: a @ b, iterations)
    policy_rng = np.random.default_rng(seed + 1)
    decisions: list[Any] = []
    feats = candidates.features
    select = _time(
        lambda i: decisions.append(policy.select(contexts[i], candidates, policy_rng)), iterations
    )
    update = _time(
        lambda i: policy.update(
            contexts[i], decisions[i].arm_id, rewards[i], feats[decisions[i].arm]
        ),
        iterations,
    )
    return baseline, select, update


def run(iterations: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    ids = tuple(f"item-{i}" for i in range(K))
    feats = rng.standard_normal((K, D_ARM))
    candidates = Candidates(ids, feats)
    contexts = rng.standard_normal((iterations, D_USER))
    rewards = rng.random(iterations)
    rows = []
    for name, options, _select_target, _update_target in CASES:
        policy: Any = make_policy(name, **options)
        _warm(policy, rng, ids, feats)
        baseline, select, update = _measure(policy, candidates, contexts, rewards, seed)
        for operation, samples in (("select", select), ("update", update)):
            rows.append(
                {
                    "policy": name,
                    "operation": operation,
                    "n_candidates": K,
                    "dim": int(policy.head.dim),
                    "p50_us": float(np.percentile(samples, 50)),
                    "p99_us": float(np.percentile(samples, 99)),
                    "baseline_p99_us": float(np.percentile(baseline, 99)),
                }
            )
    return rows


def _target(name: str, operation: str) -> float:
    case = next(c for c in CASES if c[0] == name)
    return case[2] if operation == "select" else case[3]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    # The request path runs single-threaded BLAS, as the service does: at these sizes
    # waking BLAS worker threads costs more than the arithmetic.
    with threadpool_limits(limits=1):
        rows = run(args.iterations, args.seed)
    shapes = f"K = {K}, d_user = {D_USER}, d_arm = {D_ARM}"
    table = Table(title=f"request-path latency ({shapes}; {args.iterations} calls each)")
    for col in (
        "policy",
        "op",
        "d",
        "p50 µs",
        "p99 µs",
        "baseline p99 µs",
        "p99 / baseline",
        "target p99 µs",
        "met",
    ):
        table.add_column(col, justify="left" if col in ("policy", "op") else "right")
    for r in rows:
        target = _target(r["policy"], r["operation"])
        table.add_row(
            r["policy"],
            r["operation"],
            str(r["dim"]),
            f"{r['p50_us']:.1f}",
            f"{r['p99_us']:.1f}",
            f"{r['baseline_p99_us']:.1f}",
            f"{r['p99_us'] / r['baseline_p99_us']:.1f}x",
            f"{target:.0f}",
            "yes" if r["p99_us"] <= target else "NO",
        )
    Console(width=140).print(table)
    if args.json is not None:
        args.json.write_text(json.dumps({"benchmark": "latency", "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
