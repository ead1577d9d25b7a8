"""Settings of the Airflow pipelines (retrain, promote; all three schedules), ``BANDITOPS_*``.

:class:`PipelineSettings` extends :class:`eventstore.settings.CoreSettings` (as the
service's settings do), so the event store (``BANDITOPS_DATABASE_URL`` /
``BANDITOPS_WORKSPACE``), the registry
(``BANDITOPS_MLFLOW_TRACKING_URI``, ``BANDITOPS_MODEL_NAME``), the reward window and the
reward range are configured once, under the same names, for the service and for the
pipelines that train what it serves. This module stays cheap to import (pydantic only):
the DAG files read their schedules from it at parse time.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from bandit_core.catalog import ALGORITHMS as ALGORITHMS  # the form's choices (torch-free)
from eventstore.settings import CoreSettings

#: Fewest bootstrap resamples the offline evaluation accepts (form, settings, run spec).
N_RESAMPLES_MIN = 50

_PRESETS = ("@once", "@continuous", "@hourly", "@daily", "@weekly", "@monthly", "@yearly")


class PipelineSettings(CoreSettings):
    """The core settings plus what the scheduled pipelines (retrain, promote) need.

    Attributes
    ----------
    retrain_schedule, monitor_schedule : str
        Cron expressions (five fields) or Airflow presets (``@hourly``…) of the nightly
        retrain (default ``0 2 * * *``) and of the monitor (default hourly).
    retrain_shards : int
        Default of the retrain form's ``shards``: shards of the map-reduce head rebuild and
        offline evaluation (``training.shards``); 1 keeps the single-node path.
    auto_promote : bool
        Default of the retrain form's ``auto_promote``: move the production alias to a
        version whose gate passed.
    min_ess : float
        Default of the retrain form's ``min_ess``: the smallest effective sample size the
        promotion gate accepts.
    n_resamples : int
        Default of the retrain form's ``n_resamples``, and of ``banditops evaluate``:
        bootstrap resamples of the offline evaluation.
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
    """

    retrain_schedule: str = "0 2 * * *"
    monitor_schedule: str = "0 * * * *"
    retrain_shards: int = Field(1, ge=1)
    auto_promote: bool = False
    min_ess: float = Field(50.0, ge=0.0)
    n_resamples: int = Field(300, ge=N_RESAMPLES_MIN)
    retrain_queue: str = Field("default", min_length=1)
    retries: int = Field(2, ge=0)
    retry_delay_s: float = Field(300.0, gt=0.0)
    owner: str = "banditops"
    approval_timeout_h: float = Field(72.0, gt=0.0)

    @field_validator("retrain_schedule", "monitor_schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        text = value.strip()
        if text in _PRESETS or len(text.split()) == 5:
            return text
        raise ValueError(
            f"must be a five-field cron expression or one of {', '.join(_PRESETS)}; got {value!r}."
        )
