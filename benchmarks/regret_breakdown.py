"""Where a policy's regret on the wheel bandit comes from.

    python -m benchmarks.regret_breakdown --delta 0.5 --policies linucb,mabwiser_linucb \\
        --seeds 0,1,2 [--steps 20000] [--set linucb.alpha=0.5] [--json OUT.json]

Each run replays the regret harness's own stream (same seeds, same reward scaling, same
decision generator) and splits its normalised regret (Uniform = 100, as in
:mod:`benchmarks.regret`) into the inner disc (‖x‖ < δ: the 1.2 arm is best, a wrong pick
costs 0.2) and the ring (the quadrant's arm pays 50, a wrong pick costs 48.8 or 49), the
ring's share by phase of the run, and the ring's wrong picks by kind: the 1.2 arm, or
another quadrant's arm.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from bandit_core.option_text import parse_overrides
from benchmarks.environments import make_environment
from benchmarks.regret import make_agent, run_agent

#: phase boundaries, as fractions of the run
PHASES = (0.0, 0.1, 0.25, 0.5, 1.0)


@dataclass
class Breakdown:
    policy: str
    seed: int
    total: float
    inner: float
    ring: float
    ring_by_phase: list[float]
    ring_wrong_safe: int
    ring_wrong_quadrant: int


def breakdown(
    policy: str, delta: float, seed: int, steps: int, overrides: dict[str, dict[str, object]]
) -> Breakdown:
    """One harness run of ``policy`` on the wheel, split as the module docstring says."""
    env = make_environment("wheel", seed, delta=delta)
    stream = env.stream(steps, np.random.default_rng([seed, 11]))
    agent = make_agent(policy, env, seed, stream.candidates[0], overrides)
    arms: list[int] = []
    run_agent(
        agent, env, stream, np.random.default_rng([seed, 13]), seed, None,
        stream.reward_scale(), chosen=arms,
    )  # fmt: skip
    means = np.array(stream.means)
    chosen = np.array(arms)
    rows = np.arange(steps)
    regret = means.max(axis=1) - means[rows, chosen]
    inner = np.linalg.norm(np.array(stream.contexts), axis=1) < delta
    scale = 100.0 / stream.uniform_regret()
    cuts = [round(f * steps) for f in PHASES]
    ring_regret = np.where(inner, 0.0, regret)
    wrong = (~inner) & (regret > 0)
    safe = means[rows, chosen] > means.min(axis=1)  # the 1.2 arm (the others pay 1.0)
    return Breakdown(
        policy=policy,
        seed=seed,
        total=scale * float(regret.sum()),
        inner=scale * float(regret[inner].sum()),
        ring=scale * float(ring_regret.sum()),
        ring_by_phase=[scale * float(ring_regret[a:b].sum()) for a, b in itertools.pairwise(cuts)],
        ring_wrong_safe=int((wrong & safe).sum()),
        ring_wrong_quadrant=int((wrong & ~safe).sum()),
    )


def main(argv: Sequence[str] | None = None) -> list[Breakdown]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.regret_breakdown")
    parser.add_argument("--delta", type=float, default=0.5)
    parser.add_argument("--policies", default="linucb")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--set", action="append", default=[], metavar="POLICY.OPTION=VALUE")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.set)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    results = [
        breakdown(p, args.delta, seed, args.steps, overrides)
        for p in args.policies.split(",")
        if p
        for seed in seeds
    ]
    pct = [f"{int(a * 100)}–{int(b * 100)}%" for a, b in itertools.pairwise(PHASES)]
    table = Table(title=f"wheel δ={args.delta}: normalised regret (Uniform = 100), split")
    for column in ("policy", "seed", "total", "inner disc", "ring", *(f"ring {p}" for p in pct)):
        table.add_column(column, justify="left" if column == "policy" else "right")
    table.add_column("ring wrong: 1.2 arm", justify="right")
    table.add_column("ring wrong: other quadrant", justify="right")
    for r in results:
        table.add_row(
            r.policy, str(r.seed), f"{r.total:.3f}", f"{r.inner:.3f}", f"{r.ring:.3f}",
            *(f"{v:.3f}" for v in r.ring_by_phase),
            str(r.ring_wrong_safe), str(r.ring_wrong_quadrant),
        )  # fmt: skip
    Console(width=200).print(table)
    if args.json is not None:
        rows = [asdict(r) for r in results]
        args.json.write_text(json.dumps({"delta": args.delta, "results": rows}, indent=1))
    return results


if __name__ == "__main__":
    main()
