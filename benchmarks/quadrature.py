"""Exact per-arm Thompson propensities on catalogs whose arms differ widely in certainty.

    python -m benchmarks.quadrature [--repeats 5] [--json PATH]

A per-arm LinTS policy (``lints``, noise prior sampled: Student-t scores) is put in the
states a live catalog reaches, and one ``select`` is made for K candidates:

* **one trained arm among new ones**: one arm learnt 200,000 rewards, the others none (its
  score scale is about 700 times smaller than theirs);
* **new catalog**: every arm at the prior, with ``a0 = 1`` (ν = 2: heavy tails, a wide
  integration range);
* **mature catalog**: every arm learnt 2,000 rewards except a dozen new ones.

For each, the quadrature's inputs of that select are taken and integrated twice: with equal
panels only (``fit=False``, the method before fitted panels) and with fitted panels where
they pay (the default). The table gives the panels each used, the time of each, the ratio,
the largest difference between the two (both are exact to 1e-8 where equal panels are
not capped), and the time of the whole ``select``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
from rich.console import Console
from rich.table import Table
from threadpoolctl import threadpool_limits

from bandit_core import Candidates, make_policy
from bandit_core import argmax_quadrature as quadrature
from bandit_core.policies import exact_thompson

D = 8


def _policy(case: str, k: int, rng: np.random.Generator) -> Any:
    """A ``lints`` policy in the case's state, and the context of the select."""
    options: dict[str, Any] = {"dim_user": D, "sample_noise": True}
    if case == "new catalog":
        options["a0"] = 1.0
    policy: Any = make_policy("lints", **options)
    theta = rng.normal(0.0, 0.3, D)
    trained = {"one trained arm": (1, 200_000), "mature catalog": (k - 12, 2_000)}.get(case)
    if trained is not None:
        arms, rows = trained
        for arm in range(arms):
            x = rng.standard_normal((rows, D))
            y = x @ (theta + rng.normal(0.0, 0.1, D)) + 0.3 * rng.standard_normal(rows)
            policy.update_batch(x, [f"item-{arm}"] * rows, y)
    return policy


def _inputs(policy: Any, candidates: Candidates, x: np.ndarray) -> tuple[Any, ...]:
    """The quadrature's inputs of one ``select`` (read as the policy passes them)."""
    with mock.patch.object(
        exact_thompson, "argmax_probabilities", wraps=quadrature.argmax_probabilities
    ) as spy:
        policy.select(x, candidates, np.random.default_rng(0))
    return tuple(spy.call_args.args)


def _best_of(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` calls, in ms (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def _case(case: str, k: int, repeats: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    policy = _policy(case, k, rng)
    candidates = Candidates.from_any([f"item-{i}" for i in range(k)])
    x = rng.standard_normal(D)
    mean, scale, df = _inputs(policy, candidates, x)
    lo, hi, equal_panels = quadrature._grid(mean, scale, df)
    fitted_panels = quadrature._fitted_panels(mean[0], scale[0], df, lo[0], hi[0])[0]
    equal = quadrature.argmax_probabilities(mean, scale, df, fit=False)
    fitted = quadrature.argmax_probabilities(mean, scale, df)
    equal_ms = _best_of(
        lambda: quadrature.argmax_probabilities(mean, scale, df, fit=False), repeats
    )
    fitted_ms = _best_of(lambda: quadrature.argmax_probabilities(mean, scale, df), repeats)
    select_ms = _best_of(lambda: policy.select(x, candidates, np.random.default_rng(1)), repeats)
    return {
        "case": case,
        "n_candidates": k,
        "equal_panels": int(equal_panels[0]),
        "fitted_panels": int(fitted_panels.shape[1]),
        "equal_ms": equal_ms,
        "fitted_ms": fitted_ms,
        "ratio": fitted_ms / equal_ms,
        "max_abs_difference": float(np.max(np.abs(fitted - equal))),
        "select_ms": select_ms,
    }


def run(repeats: int, seed: int = 0) -> list[dict[str, Any]]:
    return [
        _case(case, k, repeats, seed)
        for case in ("one trained arm", "new catalog", "mature catalog")
        for k in (50, 1000)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    with threadpool_limits(limits=1):
        rows = run(args.repeats, args.seed)
    table = Table(title="Exact per-arm Thompson propensities: equal against fitted panels")
    for column in (
        "case",
        "K",
        "panels equal",
        "panels fitted",
        "equal ms",
        "fitted ms",
        "fitted / equal",
        "max |Δp|",
        "select ms",
    ):
        table.add_column(column, justify="left" if column == "case" else "right")
    for r in rows:
        table.add_row(
            r["case"],
            str(r["n_candidates"]),
            str(r["equal_panels"]),
            str(r["fitted_panels"]),
            f"{r['equal_ms']:.2f}",
            f"{r['fitted_ms']:.2f}",
            f"{r['ratio']:.3f}",
            f"{r['max_abs_difference']:.1e}",
            f"{r['select_ms']:.2f}",
        )
    Console(width=140).print(table)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"benchmark": "quadrature", "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
