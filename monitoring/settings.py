"""Settings of the monitor, from ``BANDITOPS_*``: the core settings plus the checks' thresholds.

Cheap to import (pydantic only): the monitor DAG reads them at parse time.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator

from eventstore.settings import CoreSettings

#: The monitor's checks, in report order (one DAG task each).
CHECKS = (
    "reward_drift",
    "feature_drift",
    "selection_entropy",
    "arm_coverage",
    "propensity_floor",
    "fallback_rate",
    "served_latency",
)


class MonitorSettings(CoreSettings):
    """The core settings plus what the monitor needs.

    Attributes
    ----------
    alert_webhook_url : str or None
        The monitor posts its alerts (JSON) here when set.
    monitor_lookback_days : float
        Length of the monitored week (the previous one is compared with it).
    reward_drift_max : float
        Alert when the reward mean, p5 or p95 moves by more than this share week over week.
    feature_drift_metric : {"psi", "kl"}
        Feature drift measure: population stability index or Kullback-Leibler divergence.
    feature_drift_max : float
        Alert when a feature's drift against the production model's training window
        exceeds this (PSI 0.25 marks a major shift).
    entropy_min_ratio : float in (0, 1]
        Alert when the selection entropy falls below this share of its maximum.
    coverage_min_ratio : float in (0, 1]
        Alert when an arm gets fewer choices than this share of its uniform share.
    propensity_floor : float in (0, 1)
        Logged propensities below this are floor violations.
    propensity_violation_max : float in [0, 1]
        Alert when the share of violations exceeds this.
    fallback_rate_max : float in [0, 1]
        Alert when the share of decisions served by the fallback exceeds this.
    service_url : str or None
        Base URL of the decision service (``http://host:port``); the monitor reads served
        latency from its ``/metrics`` (the event store does not record latency). Unset:
        the latency check is skipped.
    latency_p99_max_s : float
        Alert when the p99 latency of the decision endpoints exceeds this (seconds).
    """

    section: ClassVar[str] = "monitor"

    alert_webhook_url: str | None = None
    monitor_lookback_days: float = Field(7.0, gt=0.0)
    reward_drift_max: float = Field(0.2, gt=0.0)
    feature_drift_metric: str = Field("psi", pattern="^(psi|kl)$")
    feature_drift_max: float = Field(0.25, gt=0.0)
    entropy_min_ratio: float = Field(0.5, gt=0.0, le=1.0)
    coverage_min_ratio: float = Field(0.01, gt=0.0, le=1.0)
    propensity_floor: float = Field(0.01, gt=0.0, lt=1.0)
    propensity_violation_max: float = Field(0.01, ge=0.0, le=1.0)
    fallback_rate_max: float = Field(0.05, ge=0.0, le=1.0)
    service_url: str | None = None
    latency_p99_max_s: float = Field(0.1, gt=0.0)

    @field_validator("alert_webhook_url", "service_url")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL; got {value!r}.")
        return value
