"""Speed of the off-policy estimators and of the bootstrap, against ``numpy.mean``.

    python -m benchmarks.ope_speed [--rows 1000000] [--actions 10] [--resamples 1000] \\
        [--repeats 5] [--seed 0] [--json PATH]

A seeded synthetic log of ``rows`` rounds and ``actions`` actions (uniform logging, a
random evaluation distribution per round, a random reward model) is built once. Each
estimator call is timed from raw arrays: the input check (:func:`check_feedback`) plus
the estimate, best of ``repeats``. The baseline is one ``numpy.mean`` over the reward
array (same length), timed the same way; the ratio to it is what to compare across
machines. Targets (issue 4): IPS, SNIPS and DR under 1 s each on 1,000,000 rows; a
1,000-resample bootstrap interval (of IPS) under 20 s.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from validation.ope import bootstrap_interval, check_feedback, round_terms

ESTIMATORS = ("ips", "snips", "dr")
ESTIMATOR_TARGET_S = 1.0
BOOTSTRAP_TARGET_S = 20.0


def synthetic_log(rows: int, actions: int, seed: int) -> dict[str, np.ndarray]:
    """Arrays of a seeded synthetic uniform log with an evaluation policy and a model."""
    rng = np.random.default_rng(seed)
    action = rng.integers(0, actions, size=rows)
    logits = rng.standard_normal((rows, actions))
    dist = np.exp(logits - logits.max(axis=1, keepdims=True))
    dist /= dist.sum(axis=1, keepdims=True)
    q_hat = rng.random((rows, actions))
    reward = (rng.random(rows) < q_hat[np.arange(rows), action]).astype(np.float64)
    return {
        "reward": reward,
        "action": action,
        "pscore": np.full(rows, 1.0 / actions),
        "action_dist": dist[:, :, None],
        "estimated_rewards": q_hat[:, :, None],
    }


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` wall-clock timings of ``fn()`` in seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run(
    rows: int, actions: int = 10, resamples: int = 1000, repeats: int = 5, seed: int = 0
) -> dict[str, Any]:
    log = synthetic_log(rows, actions, seed)
    reward = log["reward"]
    baseline = best_of(lambda: np.mean(reward), max(repeats, 20))

    def call(name: str) -> float:
        fb = check_feedback(
            log["reward"],
            log["action"],
            log["pscore"],
            log["action_dist"],
            estimated_rewards=log["estimated_rewards"] if name == "dr" else None,
        )
        return round_terms(name, fb).value()

    out_rows = []
    for name in ESTIMATORS:
        seconds = best_of(partial(call, name), repeats)
        out_rows.append(
            {"estimator": name, "n": rows, "seconds": seconds, "baseline_seconds": baseline}
        )

    fb = check_feedback(log["reward"], log["action"], log["pscore"], log["action_dist"])
    terms = round_terms("ips", fb)
    rng = np.random.default_rng(seed + 1)
    start = time.perf_counter()
    bootstrap_interval(terms, rng, n_resamples=resamples)
    boot_seconds = time.perf_counter() - start
    return {
        "benchmark": "ope_speed",
        "rows": out_rows,
        "bootstrap": {
            "resamples": resamples,
            "n": rows,
            "seconds": boot_seconds,
            "estimator": "ips",
        },
        "actions": actions,
        "seed": seed,
    }


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="OPE speed (best of repeats; baseline: one numpy.mean over the rewards)")
    for col in ("what", "n", "seconds", "× numpy.mean", "target", "ok"):
        table.add_column(col, justify="right")
    for row in result["rows"]:
        ratio = row["seconds"] / row["baseline_seconds"]
        ok = row["seconds"] < ESTIMATOR_TARGET_S
        table.add_row(
            row["estimator"],
            f"{row['n']:,}",
            f"{row['seconds']:.4f}",
            f"{ratio:,.0f}",
            f"< {ESTIMATOR_TARGET_S:g} s",
            "yes" if ok else "NO",
        )
    boot = result["bootstrap"]
    ratio = boot["seconds"] / result["rows"][0]["baseline_seconds"]
    table.add_row(
        f"bootstrap {boot['resamples']} × {boot['estimator']}",
        f"{boot['n']:,}",
        f"{boot['seconds']:.2f}",
        f"{ratio:,.0f}",
        f"< {BOOTSTRAP_TARGET_S:g} s",
        "yes" if boot["seconds"] < BOOTSTRAP_TARGET_S else "NO",
    )
    Console().print(table)
    print(
        f"baseline numpy.mean over {result['rows'][0]['n']:,} values: "
        f"{result['rows'][0]['baseline_seconds'] * 1e3:.3f} ms"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--actions", type=int, default=10)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if min(args.rows, args.actions, args.resamples, args.repeats) < 1:
        parser.error("--rows, --actions, --resamples and --repeats must be positive")
    result = run(args.rows, args.actions, args.resamples, args.repeats, args.seed)
    print_table(result)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
