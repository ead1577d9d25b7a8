"""Served latency of the decision service, read from its Prometheus ``/metrics``.

The event store does not record how long a decision took (``eventstore/schema.py`` has
no latency column); the service times every request in the histogram
``banditops_request_latency_seconds{endpoint=...}`` (:mod:`serving.metrics`). The monitor
scrapes it, keeps the scrape as the next run's baseline, and judges the p99 of the
decision endpoints over the requests served *between two scrapes* — the counters are
cumulative since the service started, so the difference of two scrapes is the last
interval's histogram (Prometheus' ``increase()``). When a counter went down between the
scrapes the service restarted, and the current scrape alone counts (since that start).

Quantiles follow Prometheus' ``histogram_quantile``: the bucket holding rank ``q·n`` is
found on the cumulative counts and the value is interpolated linearly inside it (between
the previous bucket's upper bound, 0 for the first, and its own); a rank in the ``+Inf``
bucket returns the largest finite bound, a lower bound of the true quantile.
"""

from __future__ import annotations

import bisect
import math
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from eventstore.contract import (
    DEADLINE_FALLBACKS,
    DECISIONS,
    FALLBACK_LABELS,
    HEAD_UPDATE_FAILURES,
    LATENCY,
    MODEL_ERRORS,
    REWARDS,
)
from eventstore.records import APPLIED

METRIC = LATENCY


class ScrapeError(RuntimeError):
    """``/metrics`` could not be read or holds no latency histogram."""


@dataclass(frozen=True)
class LatencyHistogram:
    """One Prometheus histogram: upper bounds (ascending, the last ``inf``) with their
    cumulative counts, and the sum of the observed values (seconds)."""

    bounds: tuple[float, ...]
    cumulative: tuple[float, ...]
    total: float

    def __post_init__(self) -> None:
        if len(self.bounds) != len(self.cumulative) or not self.bounds:
            raise ValueError(
                f"bounds and cumulative must be non-empty and of equal length; got "
                f"{len(self.bounds)} and {len(self.cumulative)}."
            )
        if self.bounds[-1] != math.inf or any(
            b >= c for b, c in zip(self.bounds, self.bounds[1:], strict=False)
        ):
            raise ValueError(f"bounds must increase strictly and end with +Inf; got {self.bounds}.")
        if any(b > c for b, c in zip(self.cumulative, self.cumulative[1:], strict=False)):
            raise ValueError(f"cumulative counts must not decrease; got {self.cumulative}.")

    @property
    def count(self) -> float:
        return self.cumulative[-1]

    def quantile(self, q: float) -> float | None:
        """:func:`histogram_quantile` of this histogram (None when it is empty)."""
        return histogram_quantile(q, self.bounds, self.cumulative)

    def slower_than(self, limit: float) -> float:
        """How many observations were above ``limit``: within the bucket that holds
        ``limit`` spread evenly, as :meth:`quantile` interpolates (so the p99 is above
        ``limit`` exactly when more than 1 % are); beyond the last finite bound every
        observation in the ``+Inf`` bucket, which cannot be told apart."""
        i = bisect.bisect_left(self.bounds, limit)  # bounds[i] >= limit
        if i == len(self.bounds) - 1:
            return self.count - self.cumulative[-2]
        lower, below = (0.0, 0.0) if i == 0 else (self.bounds[i - 1], self.cumulative[i - 1])
        inside = self.cumulative[i] - below
        return self.count - below - inside * (limit - lower) / (self.bounds[i] - lower)

    def since(self, earlier: LatencyHistogram) -> LatencyHistogram | None:
        """The observations made after ``earlier`` (a previous scrape of the same series);
        None when some counter went down (the service restarted in between) or the buckets
        differ."""
        if earlier.bounds != self.bounds:
            return None
        diff = [
            now - before for now, before in zip(self.cumulative, earlier.cumulative, strict=True)
        ]
        if any(d < 0 for d in diff) or self.total < earlier.total:
            return None
        try:
            return LatencyHistogram(self.bounds, tuple(diff), self.total - earlier.total)
        except ValueError:  # a bucket grew less than the one below it: not one series
            return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "bounds": [_bound_text(b) for b in self.bounds],
            "cumulative": list(self.cumulative),
            "sum": self.total,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyHistogram:
        return cls(
            tuple(float(b) for b in data["bounds"]),
            tuple(float(c) for c in data["cumulative"]),
            float(data["sum"]),
        )


def _bound_text(bound: float) -> str | float:
    return "+Inf" if bound == math.inf else bound


def histogram_quantile(
    q: float, bounds: Sequence[float], cumulative: Sequence[float]
) -> float | None:
    """The ``q``-quantile of a histogram, as Prometheus' ``histogram_quantile``.

    Parameters
    ----------
    q : float in [0, 1]
    bounds : sequence of float (n_buckets,)
        Upper bounds, ascending, the last ``inf``.
    cumulative : sequence of float (n_buckets,)
        Observations ``≤`` each bound.

    Returns
    -------
    float or None
        None when the histogram is empty.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1]; got {q!r}.")
    total = cumulative[-1]
    if total <= 0:
        return None
    rank = q * total
    for i, (bound, count) in enumerate(zip(bounds, cumulative, strict=True)):
        if count >= rank and count > 0:
            if bound == math.inf:
                return float(bounds[i - 1]) if i > 0 else None
            lower = 0.0 if i == 0 else float(bounds[i - 1])
            below = 0.0 if i == 0 else float(cumulative[i - 1])
            inside = count - below
            if inside <= 0:
                return float(bound)
            return lower + (float(bound) - lower) * (rank - below) / inside
    return None  # unreachable: cumulative[-1] == total ≥ rank


def parse_histograms(text: str, metric: str = METRIC) -> dict[str, LatencyHistogram] | None:
    """The histogram ``metric`` of a Prometheus exposition, one per ``endpoint`` label
    (empty before the first request); None when the exposition has no such metric."""
    buckets: dict[str, dict[float, float]] = {}
    sums: dict[str, float] = {}
    found = False
    for family in text_string_to_metric_families(text):
        if family.name != metric:
            continue
        found = True
        for sample in family.samples:
            endpoint = sample.labels.get("endpoint", "")
            if sample.name == f"{metric}_bucket":
                buckets.setdefault(endpoint, {})[float(sample.labels["le"])] = sample.value
            elif sample.name == f"{metric}_sum":
                sums[endpoint] = sample.value
    if not found:
        return None
    out = {}
    for endpoint, by_bound in buckets.items():
        bounds = tuple(sorted(by_bound))
        out[endpoint] = LatencyHistogram(
            bounds, tuple(by_bound[b] for b in bounds), sums.get(endpoint, 0.0)
        )
    return out


def merge(histograms: Iterable[LatencyHistogram]) -> LatencyHistogram | None:
    """The sum of histograms with the same buckets (None when there are none)."""
    items = list(histograms)
    if not items:
        return None
    bounds = items[0].bounds
    if any(h.bounds != bounds for h in items):
        raise ValueError("histograms with different buckets cannot be added.")
    cumulative = tuple(sum(h.cumulative[i] for h in items) for i in range(len(bounds)))
    return LatencyHistogram(bounds, cumulative, sum(h.total for h in items))


def read_metrics(service_url: str, timeout_s: float = 10.0) -> str:
    """``GET <service_url>/metrics``: the Prometheus exposition text.

    Raises
    ------
    ScrapeError
        When the service cannot be reached or does not answer 200.
    """
    url = service_url.rstrip("/") + "/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return str(response.read().decode("utf-8"))
    except (urllib.error.URLError, OSError) as exc:
        raise ScrapeError(f"could not read {url}: {exc}") from exc


def parse_fallback_counters(text: str) -> dict[str, float] | None:
    """``decisions``, ``fallback_decisions``, ``model_errors``, ``deadline_fallbacks``,
    ``rewards_applied`` and ``head_update_failures`` (cumulative since the service
    started) from a Prometheus exposition; None when it has no decision counter (not a
    banditops service)."""
    names = ("decisions", "fallback_decisions", "model_errors", "deadline_fallbacks")
    out = dict.fromkeys((*names, "rewards_applied", "head_update_failures"), 0.0)
    summed = {
        MODEL_ERRORS: "model_errors",
        DEADLINE_FALLBACKS: "deadline_fallbacks",
        HEAD_UPDATE_FAILURES: "head_update_failures",
    }
    found = False
    for family in text_string_to_metric_families(text):
        if family.name not in (*summed, DECISIONS, REWARDS):
            continue
        found = found or family.name == DECISIONS
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue  # the _created timestamps
            if family.name == DECISIONS:
                out["decisions"] += sample.value
                if sample.labels.get("fallback") == FALLBACK_LABELS[True]:
                    out["fallback_decisions"] += sample.value
            elif family.name == REWARDS:
                if sample.labels.get("status") == APPLIED:
                    out["rewards_applied"] += sample.value
            else:
                out[summed[family.name]] += sample.value
    return out if found else None


def scrape(service_url: str, timeout_s: float = 10.0) -> dict[str, LatencyHistogram]:
    """``GET <service_url>/metrics`` and its latency histograms by endpoint (empty when
    the service has served no request yet).

    Raises
    ------
    ScrapeError
        When the service cannot be reached, does not answer 200, or exports no latency.
    """
    url = service_url.rstrip("/") + "/metrics"
    text = read_metrics(service_url, timeout_s)
    histograms = parse_histograms(text)
    if histograms is None:
        raise ScrapeError(f"{url} exports no {METRIC} histogram.")
    return histograms
