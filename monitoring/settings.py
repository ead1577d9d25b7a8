"""Settings of the monitor, from ``BANDITOPS_*``: the core settings plus the checks' thresholds.

Cheap to import (pydantic only): the monitor DAG reads them at parse time.
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator

from eventstore.settings import BLANK_IS_UNSET, SECRET_PATH, CoreSettings, DriftMetric
from eventstore.text import redact_credentials, webhook_shown

#: The monitor's checks, in report order (one DAG task each).
CHECKS = (
    "reward_drift",
    "feature_drift",
    "selection_entropy",
    "arm_coverage",
    "propensity_floor",
    "fallback_rate",
    "explored_share",
    "model_errors",
    "segment_coverage",
    "served_latency",
)

#: The asset the monitor updates when features drift beyond ``retrain_drift_min``; its
#: events trigger ``bandit_retrain`` (name, URI with ``{model_name}``).
DRIFT_ASSET_NAME = "banditops_feature_drift"
DRIFT_ASSET_URI = "x-banditops://drift/{model_name}"
#: Most distinct values of a ``segment_feature`` (more: it is not a segment key).
MAX_SEGMENTS = 100


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
    feature_drift_metric : str
        Feature drift measure: population stability index or Kullback-Leibler divergence.
    feature_drift_max : float
        Alert when a feature's drift against the production model's training window
        exceeds this (PSI 0.25 marks a major shift).
    entropy_min_ratio : float
        Alert when the selection entropy falls below this share of a uniform choice's
        among the candidates offered.
    coverage_min_ratio : float
        Alert when an arm gets fewer choices than this share of its uniform share.
    propensity_floor : float
        Logged propensities below this are floor violations.
    propensity_violation_max : float
        Alert when the share of violations exceeds this.
    fallback_rate_max : float
        Alert when the share of decisions served by the fallback exceeds this.
    service_url : str or None
        Base URL of the decision service (``http://host:port``); the monitor reads served
        latency from its ``/metrics`` (the event store does not record latency). Unset:
        the latency check is skipped.
    latency_p99_max_s : float
        Alert when the p99 latency of the decision endpoints exceeds this (seconds).
    retrain_drift_min : float
        When a feature's drift against the production model's training window reaches
        this, the monitor updates the drift asset, which triggers ``bandit_retrain``.
    retrain_drift_cooldown_h : float
        At most one drift-triggered retrain per this many hours (a drift persists until a
        retrained version is promoted; the monitor runs hourly).
    explored_share_min : float
        Alert when the share of the model's decisions (fallback aside) that explored (the
        chosen arm is not the one with the highest posterior mean) falls below this.
    model_error_share_max : float
        Alert when the share of decisions whose model raised, returned non-finite scores
        or missed the decision deadline (the fallback decided instead; read from the
        service's ``/metrics``) exceeds this, or the share of applied rewards whose head
        update the model refused (its head learnt nothing from them).
    segment_feature : str or None
        The segments of the per-segment coverage check: a categorical context feature,
        ``context_<j>`` (each distinct value a segment); unset: hashed user groups.
    segment_user_groups : int
        Number of hashed user groups (``int(user_hash[:16], 16) mod n``) when no
        ``segment_feature`` is set.
    segment_min_decisions : int
        Alert when a segment (a user group, or a feature value seen in either week) got
        fewer decisions than this in the monitored week.
    monitor_alpha : float
        A figure beyond its limit is an alert only when chance alone would put it there
        with probability below this at the week's number of decisions (a share at its
        limit, no feature drift, equal reward distributions, uniform choice's entropy, a
        segment's usual share of the decisions); otherwise the check is skipped as too
        few decisions to tell (:mod:`monitoring.evidence`).
    """

    section: ClassVar[str] = "monitor"

    alert_webhook_url: Annotated[str | None, BLANK_IS_UNSET, SECRET_PATH] = None
    monitor_lookback_days: float = Field(7.0, gt=0.0)
    reward_drift_max: float = Field(0.2, gt=0.0)
    feature_drift_metric: DriftMetric = "psi"
    feature_drift_max: float = Field(0.25, gt=0.0)
    entropy_min_ratio: float = Field(0.5, gt=0.0, le=1.0)
    coverage_min_ratio: float = Field(0.01, gt=0.0, le=1.0)
    propensity_floor: float = Field(0.01, gt=0.0, lt=1.0)
    propensity_violation_max: float = Field(0.01, ge=0.0, le=1.0)
    fallback_rate_max: float = Field(0.05, ge=0.0, le=1.0)
    service_url: Annotated[str | None, BLANK_IS_UNSET] = None
    latency_p99_max_s: float = Field(0.1, gt=0.0)
    retrain_drift_min: float = Field(0.25, gt=0.0)
    retrain_drift_cooldown_h: float = Field(24.0, ge=0.0)
    explored_share_min: float = Field(0.01, ge=0.0, le=1.0)
    model_error_share_max: float = Field(0.01, ge=0.0, le=1.0)
    segment_feature: Annotated[str | None, BLANK_IS_UNSET] = None
    segment_user_groups: int = Field(8, ge=1)
    segment_min_decisions: int = Field(20, ge=0)
    monitor_alpha: float = Field(0.01, ge=0.001, lt=0.5)

    @field_validator("segment_feature")
    @classmethod
    def _segment_feature(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if re.fullmatch(r"context_[0-9]+", value.strip()) is None:
            raise ValueError(f"must be a context feature context_<j>; got {value!r}.")
        return value.strip()

    @field_validator("alert_webhook_url", "service_url")
    @classmethod
    def _webhook(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or not value.strip():
            return None
        try:
            parts = urlsplit(value)
            scheme, host = parts.scheme, parts.hostname
        except ValueError:  # "http://[::1": an unclosed IPv6 literal
            scheme, host = "", None
        if scheme not in ("http", "https") or not host or any(c.isspace() for c in value):
            # "http://" and "http://a b" passed the prefix check; the monitor then failed
            # (an alert every hour, or a crashed report). The value is not echoed whole: a
            # webhook's path is its secret, a URL's userinfo a password
            name = info.field_name or ""
            secret_path = SECRET_PATH in cls.model_fields[name].metadata
            shown = (
                f"{webhook_shown(value)!r} (the rest not shown: a webhook's path is its secret)"
                if secret_path
                else repr(redact_credentials(value))
            )
            raise ValueError(f"must be an http(s) URL with a host; got {shown}.")
        return value
