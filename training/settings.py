"""Settings of the Airflow pipelines (retrain, promote, monitor), from ``BANDITOPS_*``.

:class:`PipelineSettings` extends the service's :class:`serving.settings.Settings`, so the
event store (``BANDITOPS_DATABASE_URL`` / ``BANDITOPS_WORKSPACE``), the registry
(``BANDITOPS_MLFLOW_TRACKING_URI``, ``BANDITOPS_MODEL_NAME``), the reward window and the
reward range are configured once, under the same names, for the service and for the
pipelines that train what it serves. This module stays cheap to import (pydantic only):
the DAG files read their schedules from it at parse time.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from serving.settings import Settings

#: Policy names the retrain form offers (``bandit_core.POLICIES``; a test keeps them equal).
#: Written out because importing ``bandit_core`` (torch) would slow every DAG parse.
ALGORITHMS = (
    "dropout",
    "ensemble",
    "epsilon_greedy",
    "hybrid_lints",
    "hybrid_linucb",
    "lints",
    "linucb",
    "neural_linear",
    "shared_lints",
    "shared_linucb",
    "uniform",
)

_PRESETS = ("@once", "@continuous", "@hourly", "@daily", "@weekly", "@monthly", "@yearly")


class PipelineSettings(Settings):
    """The service's settings plus what the scheduled pipelines need.

    Attributes
    ----------
    runs_dir : Path or None
        Where each retrain run keeps its folder ``<runs_dir>/<run key>/`` and the monitor
        its reports; default ``<workspace>/runs``.
    retrain_schedule, monitor_schedule : str
        Cron expressions (five fields) or Airflow presets (``@hourly``…) of the nightly
        retrain (default ``0 2 * * *``) and of the monitor (default hourly).
    retrain_shards : int
        Default of the retrain form's ``shards``: shards of the map-reduce head rebuild and
        offline evaluation (``training.shards``); 1 keeps the single-node path.
    retrain_queue : str
        Executor queue of the retrain tasks (``airflow celery worker --queues`` serves it).
    retries : int
        Retries of a failed retrain task (bad data and bad input fail at once).
    retry_delay_s : float
        Seconds between two tries.
    owner : str
        Owner shown on the DAGs.
    approval_timeout_h : float
        Hours a promotion waits for its approval before it counts as rejected.
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

    runs_dir: Path | None = None
    retrain_schedule: str = "0 2 * * *"
    monitor_schedule: str = "0 * * * *"
    retrain_shards: int = Field(1, ge=1)
    retrain_queue: str = Field("default", min_length=1)
    retries: int = Field(2, ge=0)
    retry_delay_s: float = Field(300.0, gt=0.0)
    owner: str = "banditops"
    approval_timeout_h: float = Field(72.0, gt=0.0)
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

    @field_validator("retrain_schedule", "monitor_schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        text = value.strip()
        if text in _PRESETS or len(text.split()) == 5:
            return text
        raise ValueError(
            f"must be a five-field cron expression or one of {', '.join(_PRESETS)}; got {value!r}."
        )

    @field_validator("alert_webhook_url", "service_url")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL; got {value!r}.")
        return value

    # ------------------------------------------------------------------ derived
    @property
    def tracking_uri(self) -> str:
        """The MLflow registry: the configured URI or ``<workspace>/mlflow.db``."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.workspace / 'mlflow.db').resolve()}"

    @property
    def runs_path(self) -> Path:
        """The runs folder (absolute)."""
        return (self.runs_dir or self.workspace / "runs").resolve()
