"""Mergeable moments of an estimator's round terms: OPE over shards.

Every estimator of :mod:`validation.ope.estimators` is a smooth function of the column
means of its round terms, ``V̂ = g(m̄)`` with ``m̄ = mean([num, den?, base?])``
(:meth:`RoundTerms.combine`). A shard of the logged rounds therefore only has to return

* ``n``, the column means ``m̄`` and the centred cross-products ``M2 = Σ (c − m̄)(c − m̄)ᵀ``
  of its terms — merged exactly by Chan, Golub & LeVeque's pairwise update (*Updating
  formulae and a pairwise algorithm for computing sample variances*, 1979, eq. 2.1),
  which stays accurate where the raw sums ``Σ c cᵀ − n m̄ m̄ᵀ`` would cancel;
* ``Σ w``, ``Σ w²`` and ``max w`` of the weights it applies (effective sample size and
  maximum weight).

The reduce gives the same point estimate, ESS and maximum weight as one pass over all
rounds, and the normal-approximation interval ``V̂ ± z·√(∇gᵀ Σ̂ ∇g / n)`` (delta method,
``Σ̂ = M2 / n``). A percentile bootstrap is *not* decomposable (each resample mixes every
shard), so sharded evaluations report this interval instead and say so
(``n_resamples = 0``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from bandit_core._validation import FloatArray, Interval, validate_params
from validation.ope.bootstrap import LEVEL
from validation.ope.estimate import Estimate
from validation.ope.estimators import RoundTerms


@dataclass(frozen=True)
class Moments:
    """Count, column means (k,) and centred cross-products (k, k) of per-round columns."""

    n: int
    mean: FloatArray
    m2: FloatArray

    @classmethod
    def of(cls, columns: FloatArray) -> Moments:
        """The moments of ``columns`` (n_rounds, k)."""
        cols = np.asarray(columns, dtype=np.float64)
        if cols.ndim != 2:
            raise ValueError(f"columns must be a 2-D array (n_rounds, k); got shape {cols.shape}.")
        n = cols.shape[0]
        if n == 0:
            k = cols.shape[1]
            return cls(0, np.zeros(k), np.zeros((k, k)))
        mean = cols.mean(axis=0)
        centred = cols - mean
        return cls(n, mean, centred.T @ centred)

    def merge(self, other: Moments) -> Moments:
        """The moments of both sets of rounds (Chan, Golub & LeVeque 1979, eq. 2.1)."""
        if self.mean.shape != other.mean.shape:
            raise ValueError(
                f"cannot merge moments of {self.mean.shape[0]} and {other.mean.shape[0]} columns."
            )
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.n * other.n / n)
        return Moments(n, mean, m2)

    def to_arrays(self, prefix: str) -> dict[str, Any]:
        return {f"{prefix}n": np.int64(self.n), f"{prefix}mean": self.mean, f"{prefix}m2": self.m2}

    @classmethod
    def from_arrays(cls, arrays: Any, prefix: str) -> Moments:
        return cls(
            int(arrays[f"{prefix}n"]),
            np.asarray(arrays[f"{prefix}mean"], dtype=np.float64),
            np.asarray(arrays[f"{prefix}m2"], dtype=np.float64),
        )


def merge_all(parts: Iterable[Moments]) -> Moments:
    """Merge moments in the given order (raises on an empty sequence)."""
    items = list(parts)
    if not items:
        raise ValueError("merge_all needs at least one Moments; got none.")
    total = items[0]
    for part in items[1:]:
        total = total.merge(part)
    return total


@dataclass(frozen=True)
class TermSums:
    """What one shard returns for one estimator: the layout of its round terms, their
    moments and the sums of the weights it applies, each weight over the largest
    (``sum_w = Σ w / max_w``, ``sum_w2 = Σ w² / max_w²``: ``Σ w²`` itself overflows for
    weights beyond 10¹⁵⁴)."""

    has_den: bool
    has_base: bool
    moments: Moments
    sum_w: float
    sum_w2: float
    max_w: float

    @classmethod
    def of(cls, terms: RoundTerms) -> TermSums:
        w = terms.weights
        top = float(w.max()) if w.size else 0.0  # weights are ≥ 0
        scaled = w / top if top > 0.0 else w
        return cls(
            has_den=terms.den is not None,
            has_base=terms.base is not None,
            moments=Moments.of(terms.columns()),
            sum_w=float(scaled.sum()),
            sum_w2=float(np.dot(scaled, scaled)),
            max_w=top,
        )

    def merge(self, other: TermSums) -> TermSums:
        if (self.has_den, self.has_base) != (other.has_den, other.has_base):
            raise ValueError("cannot merge the sums of estimators with different round terms.")
        top = max(self.max_w, other.max_w)
        a, b = ((s.max_w / top if top > 0.0 else 0.0) for s in (self, other))
        return TermSums(
            self.has_den,
            self.has_base,
            self.moments.merge(other.moments),
            a * self.sum_w + b * other.sum_w,
            a * a * self.sum_w2 + b * b * other.sum_w2,
            top,
        )

    def to_arrays(self, prefix: str) -> dict[str, Any]:
        return {
            **self.moments.to_arrays(prefix),
            f"{prefix}layout": np.array([self.has_den, self.has_base]),
            f"{prefix}weights": np.array([self.sum_w, self.sum_w2, self.max_w]),
        }

    @classmethod
    def from_arrays(cls, arrays: Any, prefix: str) -> TermSums:
        has_den, has_base = (bool(v) for v in arrays[f"{prefix}layout"])
        sum_w, sum_w2, max_w = (float(v) for v in arrays[f"{prefix}weights"])
        return cls(has_den, has_base, Moments.from_arrays(arrays, prefix), sum_w, sum_w2, max_w)

    # ------------------------------------------------------------------ reduce
    def value(self) -> float:
        """``g(m̄)``: the estimator's point estimate (:meth:`RoundTerms.combine`)."""
        means = self.moments.mean
        v = float(means[0])
        col = 1
        if self.has_den:
            d = float(means[col])
            v = v / d if d != 0.0 else 0.0
            col += 1
        if self.has_base:
            v += float(means[col])
        return v

    def gradient(self) -> FloatArray:
        """``∇g`` at the column means (k,)."""
        means = self.moments.mean
        grad = np.zeros(means.shape[0])
        if self.has_den:
            d = float(means[1])
            if d != 0.0:
                grad[0] = 1.0 / d
                grad[1] = -float(means[0]) / (d * d)
        else:
            grad[0] = 1.0
        if self.has_base:
            grad[-1] = 1.0
        return grad

    def standard_error(self) -> float:
        """Delta-method standard error ``√(∇gᵀ (M2 / n) ∇g / n)``."""
        n = self.moments.n
        if n == 0:
            return math.nan
        grad = self.gradient()
        var = float(grad @ (self.moments.m2 / n) @ grad) / n
        return math.sqrt(max(var, 0.0))

    def ess(self) -> float:
        """Kish's effective sample size ``(Σ w)² / Σ w²`` (of the scaled sums: the same)."""
        return 0.0 if self.sum_w2 == 0.0 else self.sum_w * self.sum_w / self.sum_w2

    def estimate(self, estimator: str, level: float = LEVEL) -> Estimate:
        """The :class:`Estimate` with a normal-approximation interval (``n_resamples=0``)."""
        validate_params(
            "TermSums.estimate",
            {"level": level},
            {"level": Interval(float, 0.0, 1.0, closed="neither")},
        )
        value = self.value()
        half = NormalDist().inv_cdf(0.5 + level / 2.0) * self.standard_error()
        return Estimate(
            estimator=estimator,
            value=value,
            ci_low=value - half,
            ci_high=value + half,
            level=float(level),
            n_resamples=0,
            ess=self.ess(),
            max_weight=self.max_w,
            n_rounds=self.moments.n,
        )
