"""Where each policy's arithmetic breaks as inputs grow: the evidence for ``MAX_ABS_INPUT``.

    python -m benchmarks.magnitude [--scales 1e6,1e7,...] [--seeds 5] [--json PATH]

Every catalog policy (small configurations: 3 context and 2 arm features, tiny networks;
and, for each that can, with user × arm interaction features) learns 40 ordinary
rewards, then 25 whose context and arm features are all ``±scale`` (random signs,
rewards alternating 0 and 1), then chooses once with every input at ``+scale``; the
heads' outlier check (``outlier_ratio``), which would refuse those rows for their scale
alone, is off. A run
is *broken* when a call raises an arithmetic or linear-algebra error, or leaves a
non-finite number in the policy's state or the decision's probabilities; it is *refused
whole* when a call raises ``ValueError`` (a head whose precision is numerically singular,
a retraining that fails) and the state stays finite: nothing of that call was learnt.

The library refuses inputs past ``bandit_core.MAX_ABS_INPUT``; to see what lies beyond,
this benchmark lifts that bound for its own calls (the checks' default bound is replaced
for the run; finiteness is still checked). The table gives, per scale, the policies
broken or refused and in how many of the seeded runs. The bound should sit below the
first scale at which anything breaks, with a margin.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
from rich.console import Console
from rich.table import Table

from bandit_core import MAX_ABS_INPUT, Candidates, make_policy
from bandit_core import _validation as checks
from bandit_core.catalog import CATALOG

DIM_USER, DIM_ARM = 3, 2
ARMS = ("a", "b", "c", "d")
TINY_NETWORK = {
    "hidden": (8,),
    "retrain_every": 10,
    "epochs": 2,
    "max_train_steps": 5,
    "batch_size": 16,
    "device": "cpu",
}


def configurations() -> dict[str, tuple[str, dict[str, Any]]]:
    """Small options of every catalog policy, and of each that can multiply user and arm
    features (``+interactions``: inputs of ``scale²`` reach the model)."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for name in sorted(CATALOG):
        spec = CATALOG[name]
        known = set(spec.option_names())
        options: dict[str, Any] = {"dim_user": DIM_USER, "dim_arm": DIM_ARM}
        if spec.trains_network:
            options.update(TINY_NETWORK)
        if "n_sim" in known:
            options["n_sim"] = 200
        # the rows at scale follow ordinary ones: a head's outlier check would refuse them
        # for their scale, before any arithmetic, and the arithmetic is what is measured
        options["outlier_ratio"] = None
        options = {k: v for k, v in options.items() if k in known or k == "dim_user"}
        out[name] = (name, options)
        if "interactions" in known:
            out[f"{name}+interactions"] = (name, {**options, "interactions": True})
    return out


@contextmanager
def unbounded() -> Iterator[None]:
    """The library's input checks without their magnitude bound (finiteness only)."""
    with ExitStack() as stack:
        for check in (checks.as_float_vector, checks.as_float_matrix, checks.as_finite_float):
            defaults = tuple(
                None if d is MAX_ABS_INPUT or d == MAX_ABS_INPUT else d
                for d in (check.__defaults__ or ())
            )
            stack.enter_context(mock.patch.object(check, "__defaults__", defaults))
        yield


def _finite_state(policy: Any) -> bool:
    return all(
        np.isfinite(a).all()
        for a in policy.to_state().arrays.values()
        if np.issubdtype(a.dtype, np.number)
    )


def one_run(name: str, options: dict[str, Any], scale: float, seed: int) -> str:
    """How policy ``name`` fares at ``scale`` (seeded): ``"ok"``; ``"refused"`` (a
    ``ValueError`` and a finite state: what cannot be learnt is refused whole); or
    ``"broken"`` (an arithmetic error, or a non-finite state or decision)."""
    rng = np.random.default_rng(seed)
    policy = make_policy(name, **options)
    width = DIM_ARM if policy.to_state().config.get("dim_arm", 0) else 0
    features = rng.standard_normal((len(ARMS), width))
    try:
        for _ in range(40):
            arm = int(rng.integers(len(ARMS)))
            x = rng.standard_normal(DIM_USER)
            policy.update(x, ARMS[arm], float(x[0] > 0), features[arm] if width else None)
        for t in range(25):
            signs = rng.choice([-1.0, 1.0], DIM_USER + width)
            policy.update(
                scale * signs[:DIM_USER],
                ARMS[t % len(ARMS)],
                float(t % 2),
                scale * signs[DIM_USER:] if width else None,
            )
        huge = Candidates(ARMS, np.full((len(ARMS), width), scale))
        decision = policy.select(np.full(DIM_USER, scale), huge, rng)
    except ValueError:
        return "refused" if _finite_state(policy) else "broken"
    except (ArithmeticError, np.linalg.LinAlgError):
        return "broken"
    finite = bool(np.isfinite(decision.probabilities).all()) and _finite_state(policy)
    return "ok" if finite else "broken"


def run(scales: list[float], seeds: int) -> list[dict[str, Any]]:
    rows = []
    configs = configurations()
    with unbounded(), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow on the way to a failure
        for scale in scales:
            started = time.perf_counter()
            outcomes: dict[str, dict[str, int]] = {"refused": {}, "broken": {}}
            for label, (name, options) in configs.items():
                for seed in range(seeds):
                    outcome = one_run(name, options, scale, seed)
                    if outcome != "ok":
                        outcomes[outcome][label] = outcomes[outcome].get(label, 0) + 1
            rows.append(
                {
                    "scale": scale,
                    "configurations": len(configs),
                    "seeds": seeds,
                    **outcomes,
                    "seconds": time.perf_counter() - started,
                }
            )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    table = Table(title=f"Inputs at ±scale (MAX_ABS_INPUT = {MAX_ABS_INPUT:g})")
    for column in ("scale", "vs bound", "broken (runs / seeds)", "refused whole (runs / seeds)"):
        table.add_column(column)
    for row in rows:
        shown = [
            ", ".join(f"{n} {k}/{row['seeds']}" for n, k in row[kind].items()) or "none"
            for kind in ("broken", "refused")
        ]
        table.add_row(f"{row['scale']:g}", f"{row['scale'] / MAX_ABS_INPUT:g}×", *shown)
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scales",
        default="1e6,1e7,1e8,1e9,1e12,1e50,1e100",
        help="comma-separated magnitudes the inputs are scaled to",
    )
    parser.add_argument(
        "--seeds", type=int, default=5, help="runs per policy and scale (seeds 0..N-1; N >= 1)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.seeds < 1:  # zero runs printed "none broken" at every scale
        parser.error(f"--seeds is a number of runs, at least 1; got {args.seeds}.")
    scales = [float(s) for s in args.scales.split(",") if s.strip()]
    rows = run(scales, args.seeds)
    print_table(rows)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"benchmark": "magnitude", "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
