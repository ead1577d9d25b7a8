"""How far chance alone moves the monitor's figures at the number of decisions seen.

A week of few decisions gives noisy figures: one decision that did not explore is an
explored share of 0 %, three rows put a feature's histogram far from any reference, one
request's choice has no entropy. The monitor judges a figure beyond its limit as an alert
only when chance would rarely (probability below ``monitor_alert_alpha``) put it there
with this many decisions; otherwise the check is ``skipped`` as too few to tell, with the
figures. Each function states its chance model:

* a **share** (fallback, propensity violations, explored, model errors): the count is
  Binomial(n, limit) at the limit — the exact one-sided binomial test;
* **selection entropy**: the reference is the *expected* plug-in entropy of ``n`` uniform
  choices on the same offers (the plug-in estimate is biased low by about
  ``(arms − 1) / 2n``), so a small week is compared with what uniform choice reaches on
  a small week;
* **feature drift**: the score's ``1 − alpha`` quantile when this week's ``n`` rows and the
  reference window's rows are both drawn from the reference histogram (seeded
  simulation);
* **reward drift**: the mean by Welch's two-sample t test, p5 / p95 by distribution-free
  order-statistic intervals of each week, which must not overlap;
* **selection entropy**: the ``alpha`` quantile of the plug-in entropy of ``n`` uniform
  choices on the same offers (seeded simulation), below which chance rarely goes;
* **segment coverage**: a segment's decisions are Binomial(n, its share) — ``1 / groups``
  for hashed user groups, last week's share for a feature's value.

Pure functions of arrays (numpy / scipy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from validation.expectations import histogram_divergence

#: Simulated draws for a drift score's chance quantile: enough for ``alpha`` ≥ 0.001.
_NULL_DRAWS = 4000
#: Seed of that simulation: a report re-run on the same events gives the same verdicts.
_NULL_SEED = 20_261_205
#: Standard deviations either side of a binomial's mean summed exactly (the rest < 1e-30).
_TAIL_SDS = 12.0


def share_p_value(count: float, n: float, limit: float, *, above: bool) -> float:
    """Probability that a share at exactly ``limit`` shows ``count`` or more (``above``)
    or ``count`` or fewer (not ``above``) of ``n``: the exact binomial test's p-value."""
    k, total = round(count), round(n)
    if total <= 0:
        return 1.0
    if above:
        return float(stats.binom.sf(k - 1, total, limit))
    return float(stats.binom.cdf(k, total, limit))


def expected_entropy(shares: Sequence[float] | NDArray[np.float64], n: int) -> float:
    """``E[−Σ_a (X_a / n) ln(X_a / n)]`` (nats) for ``n`` choices with probabilities
    ``shares`` (normalised here): each ``X_a`` is Binomial(n, s_a), and the expectation of
    a sum is the sum of the marginals' expectations (exact up to the ±12 s.d. truncation)."""
    s = np.asarray(shares, dtype=np.float64)
    s = s[s > 0] / s.sum() if s.size and s.sum() > 0 else s[:0]
    if n <= 1 or s.size < 2:
        return 0.0
    total = 0.0
    for share in s:
        sd = math.sqrt(n * share * (1.0 - share))
        lo = max(1, math.floor(n * share - _TAIL_SDS * sd) - 1)
        hi = min(n, math.ceil(n * share + _TAIL_SDS * sd) + 1)
        x = np.arange(lo, hi + 1, dtype=np.float64)
        freq = x / n
        total += float(np.sum(stats.binom.pmf(x, n, share) * -(freq * np.log(freq))))
    return total


def drift_chance_quantile(
    proportions: Sequence[float],
    rows: int,
    reference_rows: int | None,
    metric: str,
    alpha: float,
) -> float:
    """The ``1 − alpha`` quantile of a drift score (:func:`histogram_divergence`) when
    ``rows`` current rows and ``reference_rows`` reference rows (None: the reference taken
    as exact) are all drawn from the histogram ``proportions``: what this many rows
    score without any drift."""
    q = np.maximum(np.asarray(proportions, dtype=np.float64), 0.0)
    if rows <= 0 or q.sum() <= 0:
        return 0.0
    q = q / q.sum()
    rng = np.random.default_rng(_NULL_SEED)
    current = rng.multinomial(rows, q, size=_NULL_DRAWS)
    if reference_rows is None or reference_rows <= 0:
        reference: NDArray[np.float64] = np.broadcast_to(q, current.shape)
    else:
        reference = rng.multinomial(reference_rows, q, size=_NULL_DRAWS) / reference_rows
    scores = histogram_divergence(current, reference, metric)
    return float(np.quantile(scores, 1.0 - alpha))


def entropy_chance_quantile(
    shares: Sequence[float] | NDArray[np.float64], n: int, alpha: float
) -> float:
    """The ``alpha`` quantile of the plug-in entropy (nats) of ``n`` choices with
    probabilities ``shares``: an entropy below it is rarely chance (seeded simulation, in
    batches so that many arms stay small in memory)."""
    s = np.asarray(shares, dtype=np.float64)
    s = s[s > 0] / s.sum() if s.size and s.sum() > 0 else s[:0]
    if n <= 1 or s.size < 2:
        return 0.0
    rng = np.random.default_rng(_NULL_SEED)
    batch = max(1, min(_NULL_DRAWS, (1 << 22) // s.size))
    found: list[NDArray[np.float64]] = []
    for start in range(0, _NULL_DRAWS, batch):
        counts = rng.multinomial(n, s, size=min(batch, _NULL_DRAWS - start)) / n
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(counts > 0, -counts * np.log(counts), 0.0)
        found.append(terms.sum(axis=1))
    return float(np.quantile(np.concatenate(found), alpha))


def mean_p_value(now: NDArray[np.float64], before: NDArray[np.float64]) -> float:
    """Two-sided p-value of equal means: Welch's t test (the z test at many rows; at a few
    the t distribution's tails, which the z test's understate), and where both weeks are
    constant, the t test with the variance of both weeks' values taken as one sample
    (their difference then is the only variance there is). 1 with fewer than two rows a
    week. The z test, and p = 0 for two constant
    weeks that differ, alerted on 12 % of equal weeks of two clicks each at
    ``monitor_alpha`` = 0.01 (audit, stop 54)."""
    a, b = np.asarray(now, dtype=np.float64), np.asarray(before, dtype=np.float64)
    if a.size < 2 or b.size < 2:
        return 1.0
    gap = abs(float(a.mean()) - float(b.mean()))
    if gap == 0.0:
        return 1.0
    va, vb = float(a.var(ddof=1)) / a.size, float(b.var(ddof=1)) / b.size
    if va + vb == 0.0:  # under equal means both weeks' values are one sample
        whole = float(np.concatenate([a, b]).var(ddof=1))
        se, df = math.sqrt(whole * (1.0 / a.size + 1.0 / b.size)), a.size + b.size - 2.0
    else:  # Welch-Satterthwaite degrees of freedom
        se = math.sqrt(va + vb)
        df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    return float(2.0 * stats.t.sf(gap / se, df))


def quantile_interval(values: NDArray[np.float64], q: float, alpha: float) -> tuple[float, float]:
    """Distribution-free ``1 − alpha`` interval of the ``q``-quantile from order statistics:
    ``[x_(j), x_(k)]`` with ``P(j ≤ B < k) ≥ 1 − alpha`` for B ~ Binomial(n, q); an end
    beyond the sample is infinite."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = x.size
    if n == 0:
        return -math.inf, math.inf
    j = int(stats.binom.ppf(alpha / 2.0, n, q))  # P(B < j) ≤ alpha / 2
    k = int(stats.binom.ppf(1.0 - alpha / 2.0, n, q)) + 1  # P(B ≥ k) ≤ alpha / 2
    low = float(x[j - 1]) if j >= 1 else -math.inf
    high = float(x[k - 1]) if k <= n else math.inf
    return low, high


def quantiles_differ(
    now: NDArray[np.float64], before: NDArray[np.float64], q: float, alpha: float
) -> bool:
    """Whether the two weeks' ``1 − alpha`` intervals of the ``q``-quantile are disjoint."""
    a_low, a_high = quantile_interval(now, q, alpha)
    b_low, b_high = quantile_interval(before, q, alpha)
    return a_high < b_low or b_high < a_low
