"""How often the OPE intervals cover the truth when rewards are rare, and what the gate errs.

    python -m benchmarks.interval_coverage [--windows 300] [--resamples 300] [--json PATH]

Seeded windows of 2,000 and of 10,000 rows are logged uniformly over 12 arms whose
click rates run from 0.2 % to 1 % (about 12 clicks in 2,000 rows). Two policies of known
value are estimated on every window with IPS, SNIPS and DR (a constant reward model, as
in ``benchmarks.gate_level``): *one arm* (arm 0 always, 1 %) and *top four* (arms 0–3
uniformly, 0.9 %). Each 95 % interval is computed both ways on the same resampled rounds
(:mod:`validation.ope.bootstrap`): the *percentile* interval (the Open Bandit Pipeline's,
and this library's before the event adjustment) and the *event-adjusted* one (the
default). A row is the share of windows whose interval holds the policy's true value,
with its binomial standard error.

The paired rows gate *one arm* against production playing arm 1 (as good: a true gain
of 0) and against production playing arm 10 (0.2 %: a gain of +0.008), with the DR
difference paired on the same rounds (:func:`validation.ope.evaluate.paired_difference`)
and the default rule (:func:`validation.gate.decide`): the share promoted is the gate's
error (nominal 2.5 %) for the first and its power for the second. For reference, the
*count test* column is, in closed form, the rejection rate of the exact one-sided 2.5 %
test of the two arms' matched clicks (conditional binomial: given their sum, the
candidate's count is Binomial(sum, ½) when the arms are as good) — an oracle that knows
both policies play one arm each under the same weight, which the gate does not.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy import stats

from validation.gate import GateRule, decide, reward_range
from validation.ope import OPEReport, RoundTerms, check_feedback, round_terms
from validation.ope.bootstrap import bootstrap_means, resampled_interval
from validation.ope.estimate import Estimate, effective_sample_size
from validation.ope.evaluate import PairedDifference

#: Click rate of each of the 12 arms: mean 0.58 %, about 12 clicks in 2,000 rows.
RATES = (0.01, 0.01, 0.008, 0.008, 0.006, 0.006, 0.005, 0.005, 0.004, 0.004, 0.002, 0.002)
#: The evaluated policies' probabilities over the arms.
POLICIES = {
    "one arm": tuple(float(a == 0) for a in range(12)),
    "top four": tuple(0.25 * (a < 4) for a in range(12)),
}
#: Production for the paired rows: as good as *one arm*, and worse by 0.008.
PRODUCTIONS = {"equal": 1, "+0.008": 10}
ESTIMATORS = ("ips", "snips", "dr")
SIZES = (2000, 10000)
METHODS = ("percentile", "event_adjusted")
LEVEL = 0.95


def value_of(policy: tuple[float, ...]) -> float:
    return float(np.asarray(policy) @ np.asarray(RATES))


@dataclass(frozen=True)
class Row:
    """Share of ``windows`` windows of ``rows`` rows: covered by the interval (``what`` an
    estimator of a policy), or promoted by the gate (``what`` a paired comparison)."""

    what: str
    rows: int
    windows: int
    percentile: float
    event_adjusted: float
    clicks: float


def _interval(
    terms: list[RoundTerms], means: list[np.ndarray], extra: np.ndarray, signs: tuple[float, ...]
) -> dict[str, tuple[float, float]]:
    return {
        "percentile": resampled_interval(terms, means, None, LEVEL, signs),
        "event_adjusted": resampled_interval(terms, means, extra, LEVEL, signs),
    }


def run_size(rows: int, windows: int, resamples: int, seed: int) -> list[Row]:
    """Every row of the tables for windows of ``rows`` rows."""
    k = len(RATES)
    rates = np.asarray(RATES)
    dists = {
        name: np.tile(np.asarray(p)[None, :, None], (rows, 1, 1)) for name, p in POLICIES.items()
    }
    for name, arm in PRODUCTIONS.items():
        dists[f"production {name}"] = np.tile(np.eye(k)[arm][None, :, None], (rows, 1, 1))
    covered: dict[str, np.ndarray] = {}
    promoted: dict[str, np.ndarray] = {}
    clicks = np.zeros(windows)
    for w in range(windows):
        rng = np.random.default_rng([seed, rows, w])
        actions = rng.integers(0, k, rows)
        rewards = (rng.random(rows) < rates[actions]).astype(np.float64)
        clicks[w] = rewards.sum()
        q_hat = np.full((rows, k, 1), rewards.mean())  # a constant reward model
        pscore = np.full(rows, 1.0 / k)
        fbs = {
            n: check_feedback(rewards, actions, pscore, d, None, q_hat) for n, d in dists.items()
        }
        # the DR terms of every policy resample the same rounds (one seed): the pairs
        # reuse them, and each policy's own coverage is unchanged by the sharing
        dr_seed = int(rng.integers(0, 2**63 - 1))
        extra = rng.poisson(1.0, resamples)
        terms = {name: round_terms("dr", fb) for name, fb in fbs.items()}
        means = {
            name: bootstrap_means(t, np.random.default_rng(dr_seed), resamples)
            for name, t in terms.items()
        }
        for policy in POLICIES:
            truth = value_of(POLICIES[policy])
            for est in ESTIMATORS:
                if est == "dr":
                    one, its = terms[policy], means[policy]
                else:
                    one = round_terms(est, fbs[policy])
                    its = bootstrap_means(one, rng, resamples)
                for method, (low, high) in _interval([one], [its], extra, (1.0,)).items():
                    key = f"{policy}|{est}|{method}"
                    covered.setdefault(key, np.zeros(windows, dtype=bool))[w] = low <= truth <= high
        span = reward_range(rewards)
        for name, arm in PRODUCTIONS.items():
            pair = [terms["one arm"], terms[f"production {name}"]]
            both = [means["one arm"], means[f"production {name}"]]
            bounds = _interval(pair, both, extra, (1.0, -1.0))
            # the reports: each policy's own event-adjusted interval on the same resamples
            reports = [
                OPEReport(label, rows, "w", {"dr": _estimate(t, m, extra, rows)})
                for label, t, m in zip(("c", "p"), pair, both, strict=True)
            ]
            diff_value = pair[0].value() - pair[1].value()
            truth = value_of(POLICIES["one arm"]) - float(rates[arm])
            for method, (low, high) in bounds.items():
                diff = PairedDifference("dr", diff_value, low, high, LEVEL, resamples)
                decision = decide(reports[0], reports[1], GateRule(), None, span, diff)
                key = f"gate, {name}|{method}"
                promoted.setdefault(key, np.zeros(windows, dtype=bool))[w] = decision.promote
                key = f"paired difference, {name}|dr|{method}"
                covered.setdefault(key, np.zeros(windows, dtype=bool))[w] = low <= truth <= high
    out = []
    for table in (covered, promoted):
        names = list(dict.fromkeys(key.rsplit("|", 1)[0] for key in table))
        for name in names:
            share = {m: float(table[f"{name}|{m}"].mean()) for m in METHODS}
            out.append(
                Row(
                    name.replace("|", ", "),
                    rows,
                    windows,
                    share["percentile"],
                    share["event_adjusted"],
                    float(clicks.mean()),
                )
            )
    return out


def count_test(rows: int, production: str, alpha: float = 0.025) -> float:
    """Rejection rate of the exact conditional test of the candidate's matched clicks
    against production's (see the module's docstring), Poisson counts of means
    ``rows / 12 · rate``."""
    lam_c = rows / len(RATES) * RATES[0]
    lam_p = rows / len(RATES) * RATES[PRODUCTIONS[production]]
    total = 0.0
    for n in range(int(stats.poisson.ppf(1.0 - 1e-12, lam_c + lam_p)) + 1):
        xs = np.arange(n + 1)
        significant = xs[stats.binom.sf(xs - 1, n, 0.5) <= alpha]
        if significant.size:
            power = stats.binom.sf(significant[0] - 1, n, lam_c / (lam_c + lam_p))
            total += float(stats.poisson.pmf(n, lam_c + lam_p) * power)
    return total


def _estimate(terms: RoundTerms, means: np.ndarray, extra: np.ndarray, rows: int) -> Estimate:
    low, high = resampled_interval([terms], [means], extra, LEVEL)
    return Estimate(
        "dr",
        terms.value(),
        low,
        high,
        LEVEL,
        means.shape[0],
        effective_sample_size(terms.weights),
        float(terms.weights.max()),
        rows,
    )


def _share(p: float, windows: int) -> str:
    return f"{p:.3f} ± {math.sqrt(max(p * (1.0 - p), 1e-12) / windows):.3f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=300)
    parser.add_argument("--resamples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = [r for n in SIZES for r in run_size(n, args.windows, args.resamples, args.seed)]
    for kind in ("coverage", "promoted"):
        table = Table(
            title=f"95 % intervals, {kind} over {args.windows} seeded windows "
            f"({args.resamples} resamples)"
        )
        columns = ["what", "rows", "clicks", "percentile", "event-adjusted"]
        if kind == "promoted":
            columns.append("count test")
        for column in columns:
            table.add_column(column, justify="left" if column == "what" else "right")
        for r in rows:
            if r.what.startswith("gate") != (kind == "promoted"):
                continue
            cells = [
                r.what,
                f"{r.rows:,}",
                f"{r.clicks:.1f}",
                _share(r.percentile, r.windows),
                _share(r.event_adjusted, r.windows),
            ]
            if kind == "promoted":
                cells.append(f"{count_test(r.rows, r.what.removeprefix('gate, ')):.3f}")
            table.add_row(*cells)
        Console().print(table)
    out = {
        "benchmark": "interval_coverage",
        "seconds": round(time.perf_counter() - started, 1),
        "rows": [asdict(r) for r in rows],
    }
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
