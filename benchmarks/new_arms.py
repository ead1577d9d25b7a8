"""The first reward of a new arm, as the catalog of a per-arm model grows.

    python -m benchmarks.new_arms --arms 16000 [--json PATH]

A per-arm model (``linucb``: one head per arm; ``hybrid_linucb``: per-arm blocks beside
the shared ones) learns ``arms`` arms one at a time, as a served head does when new items
get their first reward. Each update is timed; per window of arm counts (up to 1,000,
2,000, 4,000, …) the table gives the p50 and p99 of a new arm's first update and, in the
same run, of an update of an arm already known (the baseline). A stack that is copied for
every new arm makes the ratio grow with the number of arms (O(K) per arm, O(K²) in all);
amortised growth keeps it flat.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from bandit_core import make_policy

POLICIES: dict[str, dict[str, Any]] = {
    "linucb": {"dim_user": 16},
    "hybrid_linucb": {"dim_user": 16, "dim_arm": 4},
}


def run(arms: int, seed: int = 0) -> list[dict[str, Any]]:
    rows = []
    for name, options in POLICIES.items():
        policy = make_policy(name, **options)
        rng = np.random.default_rng(seed)
        dim_arm = int(options.get("dim_arm", 0))
        new, known = np.zeros(arms), np.zeros(arms)
        for k in range(arms):
            x, f = rng.standard_normal(16), rng.standard_normal(dim_arm)
            start = time.perf_counter()
            policy.update(x, f"arm-{k}", 1.0, f if dim_arm else None)
            new[k] = time.perf_counter() - start
            start = time.perf_counter()
            policy.update(x, f"arm-{k // 2}", 0.0, f if dim_arm else None)
            known[k] = time.perf_counter() - start
        low = 0
        high = min(1000, arms)
        while low < arms:
            window = slice(low, high)
            rows.append(
                {
                    "policy": name,
                    "arms_from": low,
                    "arms_to": high,
                    "new_p50_us": float(np.percentile(new[window], 50) * 1e6),
                    "new_p99_us": float(np.percentile(new[window], 99) * 1e6),
                    "known_p50_us": float(np.percentile(known[window], 50) * 1e6),
                    "known_p99_us": float(np.percentile(known[window], 99) * 1e6),
                }
            )
            low, high = high, min(2 * high, arms)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A new arm's first update as arms grow.")
    parser.add_argument("--arms", type=int, default=16_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = run(args.arms, args.seed)
    table = Table(title=f"first update of a new arm, {args.arms:,} arms learnt one at a time")
    for col in ("policy", "arms", "new p50 µs", "new p99 µs", "known p50 µs", "p50 ratio"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["policy"],
            f"{r['arms_from']:,}–{r['arms_to']:,}",
            f"{r['new_p50_us']:.0f}",
            f"{r['new_p99_us']:.0f}",
            f"{r['known_p50_us']:.0f}",
            f"{r['new_p50_us'] / r['known_p50_us']:.1f}",
        )
    Console(width=120).print(table)
    if args.json is not None:
        args.json.write_text(json.dumps({"benchmark": "new_arms", "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
