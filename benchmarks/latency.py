"""Request-path latency of select and update, against a numpy baseline from the same run.

    python -m benchmarks.latency [--iterations 3000] [--json PATH]

Each policy is first trained on 2,000 seeded observations (a realistic state, not a
prior), then every ``select`` (K candidates) and ``update`` is timed one call at a time
with ``perf_counter_ns``. The baseline is one numpy matmul of the shapes the policy works
on (K × d by d × d), timed the same way; the ratio to it is what to compare across
machines. BLAS runs single-threaded, as in the service.

With the ``bench`` extra installed, the peers join the same run on the same stream:
Vowpal Wabbit ``--cb_explore_adf --squarecb -q sa`` (a decision is building the text
example and ``predict``; an update is ``learn``) and mabwiser LinUCB and LinTS (α = 1,
per-arm on the user context; ``predict_expectations`` and ``partial_fit``), through
:mod:`benchmarks.peers` — the agents of the regret harness. A missing peer is reported.
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
from bandit_core.policies.arm_features import candidates_for
from benchmarks.peers import MabwiserAgent, VWAgent, peer_unavailable

K = 50
D_USER = 16
D_ARM = 16

#: (policy name, options, targets in µs for select / update p99)
CASES: list[tuple[str, dict[str, Any], float, float]] = [
    ("shared_linucb", {"dim_user": D_USER, "dim_arm": D_ARM, "alpha": 1.0}, 100.0, 50.0),
    ("shared_lints", {"dim_user": D_USER, "dim_arm": D_ARM, "n_sim": 1000}, 1000.0, 50.0),
    ("linucb", {"dim_user": D_USER, "alpha": 1.0}, 100.0, 50.0),
    ("lints", {"dim_user": D_USER}, 1000.0, 50.0),
    ("epsilon_greedy", {"dim_user": D_USER, "dim_arm": D_ARM, "epsilon": 0.05}, 100.0, 50.0),
    # shared z = [x ; a] (k = 32) and a block per arm on x (d = 16)
    ("hybrid_linucb", {"dim_user": D_USER, "dim_arm": D_ARM, "alpha": 1.0}, 300.0, 100.0),
    ("hybrid_lints", {"dim_user": D_USER, "dim_arm": D_ARM, "n_sim": 1000}, 3000.0, 100.0),
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


def work_dim(policy: Any) -> int:
    """The dimension a decision works in: the head's d, or k + d_user for the hybrid
    model (its shared block and one arm's block; the dense equivalent is k + K·d_user)."""
    model: Any = getattr(policy, "model", None)
    if model is not None and hasattr(model, "dim_shared"):
        return int(model.dim_shared + policy.config.dim_user)
    return int(policy.head.dim)


def _measure(
    policy: Any, candidates: Candidates, contexts: np.ndarray, rewards: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-call µs of the baseline matmul, of ``select`` and of ``update``."""
    iterations = contexts.shape[0]
    dim = work_dim(policy)
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((K, dim))
    b = rng.standard_normal((dim, dim))
    baseline = _time(lambda _i: a @ b, iterations)
    policy_rng = np.random.default_rng(seed + 1)
    decisions: list[Any] = []
    feats = candidates.features
    candidates = candidates_for(policy, candidates)  # per-arm models take no arm features
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


#: Peers timed in the same run (no target: they are the yardstick).
PEER_CASES = ("vw_squarecb", "mabwiser_linucb", "mabwiser_lints")


def _measure_peer(
    name: str, candidates: Candidates, contexts: np.ndarray, rewards: np.ndarray, seed: int
) -> tuple[int, np.ndarray, np.ndarray]:
    """(feature dimension, per-call µs of select, of update) of a peer on the same stream."""
    agent: Any
    if name.startswith("vw_"):
        agent, dim = VWAgent.make(name, seed, quadratic_user=False), D_USER + D_ARM
    else:
        agent, dim = MabwiserAgent.make(name, seed, D_USER, candidates.ids), D_USER
    rng = np.random.default_rng(seed + 1)
    warm = np.random.default_rng(seed + 2)
    for _ in range(200):  # a trained state, as for ours (fewer rows: mabwiser is slow)
        ctx = warm.standard_normal(D_USER)
        arm, prob = agent.choose(ctx, candidates, rng)
        agent.learn(ctx, candidates, arm, float(warm.random()), prob)
    chosen: list[tuple[int, float]] = []
    select = _time(
        lambda i: chosen.append(agent.choose(contexts[i], candidates, rng)), len(contexts)
    )
    update = _time(
        lambda i: agent.learn(contexts[i], candidates, chosen[i][0], rewards[i], chosen[i][1]),
        len(contexts),
    )
    agent.close()
    return dim, select, update


def run(iterations: int, seed: int = 0, peers: bool = True) -> list[dict[str, Any]]:
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
                    "dim": work_dim(policy),
                    "p50_us": float(np.percentile(samples, 50)),
                    "p99_us": float(np.percentile(samples, 99)),
                    "baseline_p99_us": float(np.percentile(baseline, 99)),
                }
            )
    for name in PEER_CASES if peers else ():
        reason = peer_unavailable(name)
        if reason is not None:
            print(f"peer {name} skipped: {reason}")
            continue
        # the peers see a tenth of the calls: mabwiser's update takes milliseconds
        n = max(200, iterations // 10)
        dim, select, update = _measure_peer(name, candidates, contexts[:n], rewards[:n], seed)
        for operation, samples in (("select", select), ("update", update)):
            rows.append(
                {
                    "policy": name,
                    "operation": operation,
                    "n_candidates": K,
                    "dim": dim,
                    "p50_us": float(np.percentile(samples, 50)),
                    "p99_us": float(np.percentile(samples, 99)),
                    "baseline_p99_us": rows[0]["baseline_p99_us"],
                    "peer": True,
                }
            )
    return rows


def _target(name: str, operation: str) -> float | None:
    case = next((c for c in CASES if c[0] == name), None)
    if case is None:
        return None  # a peer
    return case[2] if operation == "select" else case[3]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-peers", action="store_true", help="Skip VW and mabwiser.")
    args = parser.parse_args(argv)
    # The request path runs single-threaded BLAS, as the service does: at these sizes
    # waking BLAS worker threads costs more than the arithmetic.
    with threadpool_limits(limits=1):
        rows = run(args.iterations, args.seed, peers=not args.no_peers)
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
            "peer" if target is None else f"{target:.0f}",
            "" if target is None else ("yes" if r["p99_us"] <= target else "NO"),
        )
    Console(width=140).print(table)
    if args.json is not None:
        args.json.write_text(json.dumps({"benchmark": "latency", "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
