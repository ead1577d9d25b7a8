"""Vectorised, seeded nonparametric bootstrap of an estimator's round terms.

Each resample draws ``n_rounds`` row indices with replacement (Efron 1979) and recomputes
the estimate from the resampled column means, so ratio estimators (SNIPS, SNDR, replay)
resample numerator and denominator together. Resamples are processed in blocks of at
most ``max_elements`` gathered values, which bounds memory (about 12 bytes per element
and worker) whatever ``n_rounds`` and ``n_resamples`` are. Block ``k`` draws its indices
from its own generator, seeded by the ``k``-th of a list of seeds drawn from the caller's
generator, so the result depends on the seed but not on how many threads ran the blocks
(numpy releases the GIL while drawing and gathering). The interval is the percentile
interval (Efron & Tibshirani 1993, §13.3).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from bandit_core._validation import (
    FloatArray,
    Interval,
    OptionalOf,
    check_generator,
    validate_params,
)
from validation.ope.estimators import RoundTerms

#: Gathered values per block (rows × resamples × columns): ~50 MB with the indices.
MAX_ELEMENTS = 4_000_000
#: Default number of threads.
MAX_WORKERS = min(4, os.cpu_count() or 1)

#: The library's default number of bootstrap resamples and interval level, for every
#: estimate, report and evaluation (the nightly retrain passes its own, a setting).
N_RESAMPLES = 1000
LEVEL = 0.95

#: Constraints of the resampling arguments, shared by every caller.
BOOTSTRAP_PARAMS = {
    "n_resamples": Interval(int, 1, None),
    "level": Interval(float, 0.0, 1.0, closed="neither"),
}


def bootstrap_estimates(
    terms: RoundTerms,
    rng: np.random.Generator,
    n_resamples: int = N_RESAMPLES,
    *,
    n_jobs: int | None = None,
    max_elements: int = MAX_ELEMENTS,
) -> FloatArray:
    """The estimate recomputed on ``n_resamples`` bootstrap resamples of the rounds.

    Parameters
    ----------
    terms : RoundTerms
        Round terms of one estimator on ``n_rounds`` rounds.
    rng : numpy.random.Generator
        Source of the per-block seeds (the only randomness).
    n_resamples : int
        Number of resamples B.
    n_jobs : int, optional
        Threads (default :data:`MAX_WORKERS`); does not change the result.
    max_elements : int
        Upper bound on the values gathered by one block.

    Returns
    -------
    ndarray of shape (n_resamples,)
    """
    validate_params("bootstrap_estimates", {"n_resamples": n_resamples}, BOOTSTRAP_PARAMS)
    validate_params(
        "bootstrap_estimates",
        {"n_jobs": n_jobs, "max_elements": max_elements},
        {"n_jobs": OptionalOf(Interval(int, 1, None)), "max_elements": Interval(int, 1, None)},
    )
    rng = check_generator(rng)
    cols = terms.columns()
    n, c = cols.shape
    single = cols[:, 0] if c == 1 else None
    index_dtype = np.int32 if n < 2**31 else np.int64
    block = max(1, min(n_resamples, max_elements // (n * c)))
    starts = list(range(0, n_resamples, block))
    seeds = rng.integers(0, 2**63 - 1, size=len(starts), dtype=np.int64)
    out = np.empty(n_resamples)

    def run_block(k: int) -> None:
        start = starts[k]
        m = min(block, n_resamples - start)
        idx = np.random.default_rng(int(seeds[k])).integers(0, n, size=(m, n), dtype=index_dtype)
        # (m, c) column means of the resampled rows
        means = single[idx].mean(axis=1)[:, None] if single is not None else cols[idx].mean(axis=1)
        out[start : start + m] = terms.combine(means)

    workers = min(n_jobs or MAX_WORKERS, len(starts))
    if workers == 1:
        for k in range(len(starts)):
            run_block(k)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(run_block, range(len(starts))))
    return out


def percentile_interval(samples: FloatArray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` interval of ``samples`` (linear interpolation of quantiles)."""
    validate_params("percentile_interval", {"level": level}, BOOTSTRAP_PARAMS)
    alpha = 1.0 - level
    low, high = np.quantile(samples, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def bootstrap_interval(
    terms: RoundTerms,
    rng: np.random.Generator,
    n_resamples: int = N_RESAMPLES,
    level: float = LEVEL,
    *,
    n_jobs: int | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval ``(low, high)`` of the estimate at ``level``."""
    validate_params(
        "bootstrap_interval", {"n_resamples": n_resamples, "level": level}, BOOTSTRAP_PARAMS
    )
    return percentile_interval(bootstrap_estimates(terms, rng, n_resamples, n_jobs=n_jobs), level)
