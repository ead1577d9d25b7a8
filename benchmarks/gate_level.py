"""How often the promotion gate promotes, by how much better the candidate truly is.

    python -m benchmarks.gate_level [--windows 200] [--rows 2000] [--json PATH]

Seeded held-out windows are logged by a uniform policy over K actions with Bernoulli
rewards; production and the candidate are fixed policies of known value, so each
setting's true difference is known. On every window both policies are estimated with DR
(a constant reward model, as in the Open Bandit Pipeline's examples) and the gate
(``validation.gate.decide``, default rule: tolerance 0, ``min_ess`` 50) decides twice:

* *unpaired*: the candidate's 95 % lower bound against production's point estimate
  (the rule before stop 55, still the one for a self-normalised gate estimator sharded);
* *paired*: the 95 % lower bound of the candidate's gain over production, one bootstrap
  drawing the same rounds for both (:func:`validation.ope.evaluate.paired_difference`).

For a candidate no better than production, the share promoted is the gate's error; for a
better one, its power. A one-sided test at the interval's level errs 2.5 % (with rare
rewards the percentile bootstrap, the default, erred more; the event-adjusted interval,
opt-in, is measured there by ``benchmarks.interval_coverage``: see docs/benchmarks.md).

A second table is the champion–challenger case: ``n`` candidates, each as good as
production (one arm each, all arms equal), are estimated on the same window, the one with
the best DR lower bound is chosen and then gated on that window, paired: at the plain 95 %
level (*plain*) and at the level the gate shares among the candidates compared
(*shared*: ``GateRule(comparisons=n)``, Bonferroni).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from validation.gate import GateRule, decide, reward_range
from validation.ope import OPEReport, check_feedback, estimate
from validation.ope.evaluate import paired_difference

N_RESAMPLES = 300


@dataclass(frozen=True)
class Setting:
    """Uniform logging over ``k`` actions with click rates ``rates``; production and the
    candidate play the action distributions ``production`` and ``candidate``."""

    name: str
    rates: tuple[float, ...]
    production: tuple[float, ...]
    candidate: tuple[float, ...]

    def values(self) -> tuple[float, float]:
        r = np.asarray(self.rates)
        return float(r @ np.asarray(self.candidate)), float(r @ np.asarray(self.production))


SETTINGS = (
    Setting("one arm each, equal", (0.05, 0.05, 0.1, 0.1, 0.1), (0, 1, 0, 0, 0), (1, 0, 0, 0, 0)),
    Setting("one arm each, -0.005", (0.045, 0.05, 0.1, 0.1, 0.1), (0, 1, 0, 0, 0), (1, 0, 0, 0, 0)),
    Setting("overlapping, equal", (0.3, 0.3), (0.5, 0.5), (0.6, 0.4)),
    Setting("overlapping, +0.005", (0.35, 0.30), (0.5, 0.5), (0.6, 0.4)),
    Setting("overlapping, +0.01", (0.40, 0.30), (0.5, 0.5), (0.6, 0.4)),
    Setting("overlapping, -0.005", (0.30, 0.35), (0.5, 0.5), (0.6, 0.4)),
)


#: How many candidates the champion–challenger table compares.
SELECTION_SIZES = (1, 2, 5)


@dataclass(frozen=True)
class Row:
    setting: str
    true_difference: float
    windows: int
    rows: int
    unpaired: float
    paired: float


def run_setting(setting: Setting, windows: int, rows: int, seed: int) -> Row:
    rng = np.random.default_rng(seed)
    rates = np.asarray(setting.rates)
    k = rates.shape[0]
    dists = [
        np.tile(np.asarray(p, dtype=np.float64)[None, :, None], (rows, 1, 1))
        for p in (setting.candidate, setting.production)
    ]
    promoted = np.zeros(2)
    for w in range(windows):
        actions = rng.integers(0, k, rows)
        rewards = (rng.random(rows) < rates[actions]).astype(np.float64)
        q_hat = np.full((rows, k, 1), rewards.mean())  # a constant reward model
        pscore = np.full(rows, 1.0 / k)
        fbs = [check_feedback(rewards, actions, pscore, d, None, q_hat) for d in dists]
        c, p = (estimate("dr", fb, np.random.default_rng(w), n_resamples=N_RESAMPLES) for fb in fbs)
        cand_report, prod_report = (
            OPEReport("c", rows, "w", {"dr": c}),
            OPEReport("p", rows, "w", {"dr": p}),
        )
        span = reward_range(rewards)
        promoted[0] += decide(cand_report, prod_report, GateRule(), None, span).promote
        diff = paired_difference(
            fbs[0], fbs[1], "dr", np.random.default_rng(w), n_resamples=N_RESAMPLES
        )
        promoted[1] += decide(cand_report, prod_report, GateRule(), None, span, diff).promote
    cand, prod = setting.values()
    return Row(setting.name, cand - prod, windows, rows, *(promoted / windows))


@dataclass(frozen=True)
class SelectionRow:
    candidates: int
    windows: int
    rows: int
    plain: float
    shared: float


def run_selection(n: int, windows: int, rows: int, seed: int, rate: float = 0.1) -> SelectionRow:
    """Promotions of the best of ``n`` candidates as good as production (see the module's
    docstring); logged uniformly over ``n + 1`` arms of click rate ``rate``."""
    rng = np.random.default_rng(seed)
    k = n + 1
    dists = [np.tile(np.eye(k)[a][None, :, None], (rows, 1, 1)) for a in range(k)]
    plain, shared = GateRule(), GateRule(comparisons=n)
    promoted = np.zeros(2)
    for w in range(windows):
        actions = rng.integers(0, k, rows)
        rewards = (rng.random(rows) < rate).astype(np.float64)
        q_hat = np.full((rows, k, 1), rewards.mean())
        fbs = [
            check_feedback(rewards, actions, np.full(rows, 1.0 / k), d, None, q_hat) for d in dists
        ]
        reports = [
            OPEReport(
                str(a),
                rows,
                "w",
                {"dr": estimate("dr", fb, np.random.default_rng(w), n_resamples=N_RESAMPLES)},
            )
            for a, fb in enumerate(fbs)
        ]
        best = 1 + max(range(n), key=lambda i: reports[1 + i]["dr"].ci_low)
        span = reward_range(rewards)
        for j, rule in enumerate((plain, shared)):
            diff = paired_difference(
                fbs[best],
                fbs[0],
                "dr",
                np.random.default_rng(w),
                n_resamples=N_RESAMPLES,
                level=rule.difference_level,
            )
            promoted[j] += decide(reports[best], reports[0], rule, None, span, diff).promote
    return SelectionRow(n, windows, rows, *(promoted / windows))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=200)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = [run_setting(s, args.windows, args.rows, args.seed + i) for i, s in enumerate(SETTINGS)]
    table = Table(title=f"gate promotions over {args.windows} seeded windows of {args.rows} rows")
    for column in ("setting", "true difference", "unpaired", "paired"):
        table.add_column(column, justify="left" if column == "setting" else "right")
    for r in rows:
        table.add_row(
            r.setting, f"{r.true_difference:+.3f}", f"{r.unpaired:.3f}", f"{r.paired:.3f}"
        )
    Console().print(table)
    chosen = [
        run_selection(n, args.windows, args.rows, args.seed + 100 + n) for n in SELECTION_SIZES
    ]
    table = Table(
        title=f"the best of n equal candidates, gated on its {args.windows} windows: promotions"
    )
    for column in ("candidates", "plain 95 %", "shared level"):
        table.add_column(column, justify="right")
    for c in chosen:
        table.add_row(str(c.candidates), f"{c.plain:.3f}", f"{c.shared:.3f}")
    Console().print(table)
    out = {
        "benchmark": "gate_level",
        "seconds": round(time.perf_counter() - started, 1),
        "rows": [asdict(r) for r in rows],
        "selection": [asdict(c) for c in chosen],
    }
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
