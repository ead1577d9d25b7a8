"""The event loop's share of a decision chosen in the decision thread, as arms grow.

    python -m benchmarks.decision_copy --arms 1000,4000,16000 [--json PATH]

The service chooses a costly decision (over ``inline_work_units``) in its decision thread
on a copy of the policy taken on the event loop, so the loop pays for the copy. A per-arm
model (``linucb``, ``lints``: one head per arm; ``hybrid_linucb``: per-arm blocks beside
the shared ones) that has learnt ``arms`` arms is copied for a decision among 50 of them:
by :func:`bandit_core.policies.decision_copy.decision_copy` (the candidates' rows: ours)
and, in the same run, by ``copy.deepcopy`` of the whole policy (the baseline, what the
service did before). Each copy is timed one at a time; the table gives p50 and p99 and
the ratio of the p50s.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from bandit_core import make_policy
from bandit_core.policies.decision_copy import decision_copy

POLICIES: dict[str, dict[str, Any]] = {
    "linucb": {"dim_user": 16},
    "lints": {"dim_user": 16},
    "hybrid_linucb": {"dim_user": 16, "dim_arm": 4},
}
CANDIDATES = 50


def _timed(make: Callable[..., Any], args: tuple[Any, ...], repeats: int) -> tuple[float, float]:
    """p50 and p99 in ms of ``repeats`` calls of ``make(*args)``."""
    times = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        make(*args)
        times[i] = time.perf_counter() - start
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def run(arms: list[int], repeats: int = 200, seed: int = 0) -> list[dict[str, Any]]:
    rows = []
    for name, options in POLICIES.items():
        for n_arms in arms:
            rng = np.random.default_rng(seed)
            policy = make_policy(name, **options)
            dim_arm = int(options.get("dim_arm", 0))
            ids = [f"arm-{k}" for k in range(n_arms)]
            feats = rng.standard_normal((n_arms, dim_arm)) if dim_arm else None
            policy.update_batch(
                rng.standard_normal((n_arms, 16)), ids, rng.standard_normal(n_arms), feats
            )
            chosen = tuple(ids[i] for i in rng.choice(n_arms, min(CANDIDATES, n_arms), False))
            ours = _timed(decision_copy, (policy, chosen), repeats)
            whole = _timed(copy.deepcopy, (policy,), max(repeats // 4, 5))
            rows.append(
                {
                    "policy": name,
                    "arms": n_arms,
                    "candidates": len(chosen),
                    "decision_copy_p50_ms": ours[0],
                    "decision_copy_p99_ms": ours[1],
                    "deepcopy_p50_ms": whole[0],
                    "deepcopy_p99_ms": whole[1],
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Loop time of a copy for a costly decision.")
    parser.add_argument("--arms", default="1000,4000,16000")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = run([int(a) for a in args.arms.split(",")], args.repeats, args.seed)
    table = Table(title=f"copy of a policy for a decision among {CANDIDATES} candidates")
    columns = ("policy", "arms", "ours p50 ms", "ours p99 ms", "deepcopy p50 ms")
    for col in (*columns, "deepcopy p99 ms", "p50 ratio"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["policy"],
            f"{r['arms']:,}",
            f"{r['decision_copy_p50_ms']:.3f}",
            f"{r['decision_copy_p99_ms']:.3f}",
            f"{r['deepcopy_p50_ms']:.2f}",
            f"{r['deepcopy_p99_ms']:.2f}",
            f"{r['decision_copy_p50_ms'] / r['deepcopy_p50_ms']:.4f}",
        )
    Console(width=120).print(table)
    if args.json is not None:
        args.json.write_text(json.dumps({"benchmark": "decision_copy", "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
