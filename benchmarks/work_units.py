"""What a work unit costs in time, for every policy at several widths and candidate counts.

    python -m benchmarks.work_units [--widths 8,64,256] [--candidates 20,500] [--json PATH]

The request budget (``BANDITOPS_MAX_WORK_UNITS``) and the loop's share
(``BANDITOPS_INLINE_WORK_UNITS``) are counts of :func:`bandit_core.work.decision_work`
units; they bound time only as far as a unit costs about the same whatever the policy,
its width and the request. Each case trains the policy on every candidate (a per-arm
model has a head for each), then times ``select`` (the fastest of 3 after a warm-up, one
BLAS thread as in the service) and divides by its units. The old count, ``candidates ×
request width × posterior draws``, is timed the same way: its spread is what the
budget missed. Cases whose state would pass 256 MiB are skipped.
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
from threadpoolctl import threadpool_limits

from bandit_core import Candidates, make_policy
from bandit_core.catalog import POLICIES
from bandit_core.policies.arm_features import candidates_for
from bandit_core.work import decision_work
from serving.settings import Settings

#: Per-arm policies: one head of the user context per arm, no arm features.
PER_ARM = ("linucb", "lints")
STATE_CAP = 256 << 20


def _options(name: str, width: int) -> dict[str, Any]:
    if name == "uniform":
        return {}
    if name in PER_ARM:
        return {"dim_user": width}
    return {"dim_user": width, "dim_arm": width}


def _state_bytes(name: str, width: int, n: int) -> int:
    d = width if name in PER_ARM else 2 * width
    heads = n if name in PER_ARM or "arm_features" in name or name.startswith("hybrid") else 1
    return 3 * heads * d * d * 8


def _old_units(policy: Any, n: int, width: int) -> int:
    """The count before ``decision_work``: candidates × request width × draws per choice."""
    inner, draws = policy, 1
    while inner is not None:
        n_sim = getattr(getattr(inner, "config", None), "n_sim", None)
        if isinstance(n_sim, int) and n_sim > 0:
            draws = n_sim
            break
        inner = getattr(inner, "inner", None)
    return n * max(width, 1) * draws


def measure(name: str, width: int, n: int, rng: np.random.Generator) -> dict[str, Any]:
    policy: Any = make_policy(name, **_options(name, width))
    ids = tuple(f"item-{i}" for i in range(n))
    features = rng.standard_normal((n, width))
    rows = max(2 * n, 200)
    arms = np.arange(rows) % n  # every candidate learnt at least once
    contexts = rng.standard_normal((rows, width))
    policy.update_batch(contexts, [ids[a] for a in arms], rng.random(rows), features[arms])
    candidates = candidates_for(policy, Candidates(ids, features))
    x = rng.standard_normal(width)
    policy.select(x, candidates, rng)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        policy.select(x, candidates, rng)
        times.append(time.perf_counter() - start)
    seconds = min(times)
    request_width = width + (candidates.features.shape[1] if candidates.features.ndim == 2 else 0)
    units = decision_work(policy, n)
    old = _old_units(policy, n, request_width)
    return {
        "policy": name,
        "width": width,
        "candidates": n,
        "ms": seconds * 1e3,
        "units": units,
        "ns_per_unit": seconds * 1e9 / units,
        "old_units": old,
        "old_ns_per_unit": seconds * 1e9 / old,
    }


def run(widths: list[int], counts: list[int], seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    rows = []
    for name in POLICIES:
        for width in widths:
            for n in counts:
                if _state_bytes(name, width, n) > STATE_CAP:
                    continue
                rows.append(measure(name, width, n, rng))
    return rows


#: Decisions shorter than this are mostly the fixed cost of a call, which no budget needs
#: to bound: the spread is taken over the longer ones.
SCALE_MS = 1.0


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    settings = Settings()
    big = [r for r in rows if r["ms"] >= SCALE_MS] or rows
    new = [r["ns_per_unit"] for r in big]
    old = [r["old_ns_per_unit"] for r in big]
    typical = float(np.median(new))
    return {
        "cases_at_scale": len(big),
        "ns_per_unit_median": typical,
        "ns_per_unit_min": min(new),
        "ns_per_unit_max": max(new),
        "spread": max(new) / min(new),
        "old_spread": max(old) / min(old),
        "max_work_units": settings.max_work_units,
        "inline_work_units": settings.inline_work_units,
        "budget_ms_typical": settings.max_work_units * typical / 1e6,
        "budget_ms_at_worst": settings.max_work_units * max(new) / 1e6,
        "inline_ms_typical": settings.inline_work_units * typical / 1e6,
        "old_budget_ms_at_worst": 50_000_000 * max(old) / 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--widths", default="8,64,256")
    parser.add_argument("--candidates", default="20,500")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    widths = [int(w) for w in args.widths.split(",")]
    counts = [int(n) for n in args.candidates.split(",")]
    with threadpool_limits(limits=1):
        rows = run(widths, counts, args.seed)
    table = Table(title="Work units: time per unit of every policy (select, one BLAS thread)")
    for col in ("policy", "width", "n", "ms", "units", "ns/unit", "old units", "old ns/unit"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for r in rows:
        table.add_row(
            r["policy"],
            str(r["width"]),
            str(r["candidates"]),
            f"{r['ms']:.2f}",
            f"{r['units']:,}",
            f"{r['ns_per_unit']:.3f}",
            f"{r['old_units']:,}",
            f"{r['old_ns_per_unit']:.3f}",
        )
    console = Console()
    console.print(table)
    s = summary(rows)
    console.print(
        f"Over the {s['cases_at_scale']} decisions of {SCALE_MS:g} ms or more: a unit costs "
        f"{s['ns_per_unit_median']:.3f} ns (median), {s['ns_per_unit_min']:.3f}–"
        f"{s['ns_per_unit_max']:.3f} (spread {s['spread']:.0f}×; the old count's "
        f"{s['old_spread']:.0f}×). The budget of {s['max_work_units']:,} units is "
        f"{s['budget_ms_typical']:.0f} ms at the median rate, {s['budget_ms_at_worst']:.0f} "
        f"ms at the slowest (the old count's 50,000,000 at its slowest: "
        f"{s['old_budget_ms_at_worst']:.0f} ms); the loop's {s['inline_work_units']:,} "
        f"units {s['inline_ms_typical']:.1f} ms at the median rate."
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {"benchmark": "work_units", "rows": rows, "summary": s}
        args.json.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
