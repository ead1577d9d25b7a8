"""Head rebuild after a retrain: our chunked rebuild against the physical limit.

    python -m benchmarks.rebuild --rows 1000000 --dim 64 [--json PATH]

A neural-linear policy holds ``rows`` observations with ``dim`` input features. We time
``NeuralLinear.rebuild_head()`` (re-encode every row with the frozen network, chunk by
chunk, and accumulate ΦᵀΦ, Φᵀr, Σr², n) against the same work as two raw torch calls on
the whole array at once (one forward pass, one ``ΦᵀΦ``) in the same run: the ratio is
what the chunking and bookkeeping cost. Peak extra memory is the growth of the process's
peak resident set during each phase (the rebuild runs first).
"""

from __future__ import annotations

import argparse
import json
import resource
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from bandit_core import make_policy


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


class PeakRss:
    """Samples the resident set every millisecond; ``extra_mb`` = peak − RSS at entry."""

    def __enter__(self) -> PeakRss:
        self.base = self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())

    @property
    def extra_mb(self) -> float:
        return max(0.0, self.peak - self.base)


def run(rows: int, dim: int, hidden: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    policy: Any = make_policy(
        "neural_linear",
        dim_user=dim,
        hidden=(hidden,),
        retrain_every=2**31 - 1,
        seed=seed,
        device="cpu",
    )
    x = rng.standard_normal((rows, dim))
    r = (x[:, 0] > 0).astype(np.float64)
    # fill the replay buffer directly: the fast path is not what is measured here
    policy.buffer_.add(policy.features.build_rows(x, np.zeros((rows, 0)), ["a"] * rows), r)
    del x
    with PeakRss() as ours:
        start = time.perf_counter()
        policy.rebuild_head()
        seconds = time.perf_counter() - start

    inputs = torch.as_tensor(policy.buffer_.inputs)
    net = policy.net_
    with PeakRss() as theirs, torch.inference_mode():
        start = time.perf_counter()
        phi = net.features(inputs[None])[0]
        gram = phi.T @ phi
        baseline = time.perf_counter() - start
    head_gram = policy.head.precision_[0][:hidden, :hidden] - policy.config.lambda_prior * np.eye(
        hidden
    )
    rel = float(np.abs(head_gram - gram.numpy()).max() / np.abs(gram.numpy()).max())
    return {
        "benchmark": "rebuild",
        "rows": rows,
        "dim": dim,
        "seconds": seconds,
        "baseline_seconds": baseline,
        "ratio": seconds / baseline,
        "peak_extra_mb": ours.extra_mb,
        "baseline_peak_extra_mb": theirs.extra_mb,
        "max_rel_diff_gram": rel,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Head rebuild vs two raw torch calls.")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    result = run(args.rows, args.dim, args.hidden, args.seed)
    table = Table(
        title=f"head rebuild: {args.rows:,} rows, input dim {args.dim}, φ dim {args.hidden}+1"
    )
    for col in ("what", "seconds", "peak extra MB"):
        table.add_column(col, justify="right")
    table.add_row(
        "chunked rebuild (ours)", f"{result['seconds']:.2f}", f"{result['peak_extra_mb']:.0f}"
    )
    table.add_row(
        "two torch calls, whole array",
        f"{result['baseline_seconds']:.2f}",
        f"{result['baseline_peak_extra_mb']:.0f}",
    )
    table.add_row("ratio (target ≤ 1.5)", f"{result['ratio']:.2f}", "target ≤ 300")
    Console(width=120).print(table)
    print(f"max relative difference of ΦᵀΦ between the two: {result['max_rel_diff_gram']:.2e}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
