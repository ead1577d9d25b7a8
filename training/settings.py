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

from typing import Any, ClassVar

from pydantic import Field, field_validator

from bandit_core.catalog import ALGORITHMS as POLICY_NAMES  # torch-free
from eventstore.settings import CoreSettings

#: The retrain's ``algorithm`` that runs the champion–challenger comparison.
AUTO = "auto"
#: The retrain form's algorithm choices: ``auto`` and every policy of the catalog.
ALGORITHMS: tuple[str, ...] = (AUTO, *POLICY_NAMES)

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
    retrain_window_days : float
        Default of the retrain form's ``window_days``: the replay window, this many days
        back from the run's data interval end.
    retrain_min_rows : int
        Default of the form's ``min_rows``: fewest replay rows the data validation accepts.
    retrain_algorithm : str
        Default of the form's ``algorithm``: the policy the retrain trains, or ``auto``
        (the default): the champion–challenger run of :mod:`training.challengers` — a
        linear Thompson policy (``lints``), joined by a neural one (``neural_linear``)
        when the window has at least ``retrain_neural_min_rows`` rows and the
        linear-failure diagnostic recommends it; the one with the best DR lower bound
        is registered.
    retrain_neural_min_rows : int
        Default of the form's ``neural_min_rows``: fewest window rows before a neural
        challenger joins an ``auto`` run.
    retrain_floor : float in [0, 1]
        Default of the form's ``floor``: every candidate's probability under the trained
        policy is at least this (0: none beyond ``retrain_deterministic_floor``).
    retrain_deterministic_floor : float in [0, 1]
        Default of the form's ``deterministic_floor``: the floor a deterministic policy
        (UCB, an argmax) gets when ``floor`` is lower, so its logs keep overlap.
    retrain_segment_floors : dict
        Default of the form's ``segment_floors``: ``{"feature": i, "floors": {"1":
        0.05}}``, the floor of each segment named by context feature ``i``'s value.
    retrain_cold_start_floor : float in [0, 1]
        Default of the form's ``cold_start_floor``: extra probability of each candidate
        the trained model has not seen (inline arms too); 0 turns it off.
    retrain_exposure_cap : float in [0, 1]
        Default of the form's ``exposure_cap``: most share of recent decisions one arm
        may take (0: no cap).
    retrain_support_threshold : float in [0, 1]
        Default of the form's ``support_threshold``: a logging propensity below this
        counts as no support.
    retrain_max_unsupported : float in [0, 1]
        Default of the form's ``max_unsupported``: most probability mass the candidate
        may put on unsupported actions of the held-out window before the gate refuses.
    retrain_policy_options : dict
        Default of the form's ``policy_options`` (JSON in the environment, a table in the
        workspace file), e.g. ``{"alpha": 0.5}``.
    retrain_epochs : int
        Default of the form's ``epochs``: training epochs of neural policies.
    retrain_seed : int
        Default of the form's ``seed``: seed of training and of the bootstrap.
    retrain_tolerance : float in [0, 1)
        Default of the form's ``tolerance``: allowed relative shortfall of the candidate's
        DR lower bound below production's estimate.
    retrain_min_ess : float
        Default of the form's ``min_ess``: smallest effective sample size the gate accepts.
    retrain_n_resamples : int
        Default of the form's ``n_resamples``: bootstrap resamples of the offline evaluation.
    retrain_auto_promote : bool
        Default of the form's ``auto_promote``: move production to a version whose gate
        passes.
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
    """

    section: ClassVar[str] = "pipelines"
    #: The retrain form's fields whose defaults are settings: ``retrain_<name>``.
    RETRAIN_FORM: ClassVar[tuple[str, ...]] = (
        "window_days",
        "min_rows",
        "algorithm",
        "policy_options",
        "epochs",
        "seed",
        "tolerance",
        "min_ess",
        "n_resamples",
        "auto_promote",
        "shards",
        "neural_min_rows",
        "floor",
        "deterministic_floor",
        "segment_floors",
        "cold_start_floor",
        "exposure_cap",
        "support_threshold",
        "max_unsupported",
    )

    retrain_schedule: str = "0 2 * * *"
    monitor_schedule: str = "0 * * * *"
    retrain_window_days: float = Field(7.0, gt=0.0)
    retrain_min_rows: int = Field(100, ge=1)
    retrain_algorithm: str = AUTO
    retrain_policy_options: dict[str, Any] = Field(default_factory=dict)
    retrain_epochs: int = Field(20, ge=1)
    retrain_seed: int = Field(0, ge=0)
    retrain_tolerance: float = Field(0.0, ge=0.0, lt=1.0)
    retrain_min_ess: float = Field(50.0, ge=0.0)
    retrain_n_resamples: int = Field(300, ge=N_RESAMPLES_MIN)
    retrain_auto_promote: bool = False
    retrain_shards: int = Field(1, ge=1)
    retrain_neural_min_rows: int = Field(10_000, ge=1)
    retrain_floor: float = Field(0.0, ge=0.0, lt=1.0)
    retrain_deterministic_floor: float = Field(0.02, ge=0.0, lt=1.0)
    retrain_segment_floors: dict[str, Any] = Field(default_factory=dict)
    retrain_cold_start_floor: float = Field(0.02, ge=0.0, lt=1.0)
    retrain_exposure_cap: float = Field(0.0, ge=0.0, lt=1.0)
    retrain_support_threshold: float = Field(0.01, ge=0.0, lt=1.0)
    retrain_max_unsupported: float = Field(0.2, ge=0.0, lt=1.0)
    retrain_queue: str = Field("default", min_length=1)
    retries: int = Field(2, ge=0)
    retry_delay_s: float = Field(300.0, gt=0.0)
    owner: str = "banditops"
    approval_timeout_h: float = Field(72.0, gt=0.0)

    @field_validator("retrain_algorithm")
    @classmethod
    def _algorithm(cls, value: str) -> str:
        if value not in ALGORITHMS:
            raise ValueError(f"must be one of {', '.join(ALGORITHMS)}; got {value!r}.")
        return value

    def retrain_defaults(self) -> dict[str, Any]:
        """The retrain form's defaults, ``{form field: value}``, from these settings (the
        explicit window dates default to none)."""
        values: dict[str, Any] = {"window_start": None, "window_end": None}
        for name in self.RETRAIN_FORM:
            value = getattr(self, f"retrain_{name}")
            values[name] = dict(value) if isinstance(value, dict) else value
        return values

    @classmethod
    def declared_retrain_defaults(cls) -> dict[str, Any]:
        """:meth:`retrain_defaults` of the declared defaults (no environment, no file)."""
        return cls.model_construct().retrain_defaults()

    @field_validator("retrain_schedule", "monitor_schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        text = value.strip()
        if text in _PRESETS or len(text.split()) == 5:
            return text
        raise ValueError(
            f"must be a five-field cron expression or one of {', '.join(_PRESETS)}; got {value!r}."
        )


#: The one default number of bootstrap resamples of an offline evaluation: the retrain
#: form's, ``banditops evaluate``'s and :func:`training.evaluate.evaluate`'s.
