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

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Self

from pydantic import Field, ValidationError, field_validator, model_validator

from bandit_core.catalog import ALGORITHMS as POLICY_NAMES  # torch-free
from bandit_core.sequential import DESIGN_N
from bandit_core.support import MAX_UNSUPPORTED, MIN_ESS, SUPPORT_THRESHOLD, TOLERANCE
from eventstore.settings import CoreSettings, setting_problems

#: The rollout's default traffic shares of the candidate, stage by stage.
ROLLOUT_STAGES = (0.05, 0.2, 0.5, 1.0)

#: The retrain's ``algorithm`` that runs the champion–challenger comparison.
AUTO = "auto"
#: The retrain form's algorithm choices: ``auto`` and every policy of the catalog.
ALGORITHMS: tuple[str, ...] = (AUTO, *POLICY_NAMES)

#: Fewest bootstrap resamples the offline evaluation accepts (form, settings, run spec).
N_RESAMPLES_MIN = 50
#: Most bootstrap resamples: each one is a pass over the held-out rounds (about 0.1 ms per
#: thousand rounds here), so a form value without a bound could hold the nightly run, and
#: every run queued behind it, for hours.
N_RESAMPLES_MAX = 100_000
#: Largest seed: Airflow carries run parameters as 64-bit signed integers (a larger one
#: fails the task before it starts, with nothing in its log).
SEED_MAX = 2**63 - 1
#: Most shards of a map-reduce round: Airflow's default ``[core] max_map_length``, the
#: most mapped task instances one task may expand to.
SHARDS_MAX = 1024
#: Longest window, in days.
WINDOW_DAYS_MAX = 3660.0
#: Largest row count a form field may name.
ROWS_MAX = 10**12

_PRESETS = ("@once", "@continuous", "@hourly", "@daily", "@weekly", "@monthly", "@yearly")
#: The first data interval of every DAG (catchup is off: no run is made up for).
DAG_START = datetime(2026, 1, 1, tzinfo=UTC)


def _croniter() -> Any:
    """croniter, Airflow's schedule parser; None where Airflow is not installed."""
    try:
        from croniter import croniter  # type: ignore[import-untyped]
    except ImportError:
        return None
    return croniter


def run_timeout(schedule: str, share: float = 0.9, longest: timedelta | None = None) -> timedelta:
    """``share`` of the shortest time between two runs of ``schedule`` (a cron expression
    or preset; over its next 200 runs from :data:`DAG_START`), at most ``longest``: a run
    that hangs ends before the next is due, whatever schedule the operator set. A
    schedule without a period (``@once``, ``@continuous``) gets ``longest`` (or a day)."""
    cap = longest or timedelta(days=1)
    if schedule in ("@once", "@continuous"):
        return cap
    runs = _croniter()(schedule, DAG_START)  # present where DAGs are parsed
    times: list[datetime] = [runs.get_next(datetime) for _ in range(200)]
    gap: timedelta = min(b - a for a, b in itertools.pairwise(times))
    return min(gap * share, cap)


class PipelineSettings(CoreSettings):
    """The core settings plus what the scheduled pipelines (retrain, promote) need.

    Attributes
    ----------
    retrain_schedule, monitor_schedule : str
        Cron expressions (five fields) or Airflow presets (``@hourly``…) of the nightly
        retrain and of the monitor.
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
    retrain_floor : float
        Default of the form's ``floor``: every candidate's probability under the trained
        policy is at least this (0: none beyond ``retrain_deterministic_floor``).
    retrain_deterministic_floor : float
        Default of the form's ``deterministic_floor``: the floor a deterministic policy
        (UCB, an argmax) gets when ``floor`` is lower, so its logs keep overlap.
    retrain_segment_floors : dict
        Default of the form's ``segment_floors``: ``{"feature": i, "floors": {"1":
        0.05}}``, the floor of each segment named by context feature ``i``'s value, or
        ``{"user_groups": n, "floors": {"group_3": 0.1}}``, the floor of each hashed user
        group among ``n`` (``int(user_hash[:16], 16) mod n``, as the monitor's segments).
    retrain_cold_start_floor : float
        Default of the form's ``cold_start_floor``: extra probability of each candidate
        the trained model has not seen (inline arms too); 0 turns it off.
    retrain_exposure_cap : float
        Default of the form's ``exposure_cap``: most share of recent decisions one arm
        may take (0: no cap).
    retrain_support_threshold : float
        Default of the form's ``support_threshold``: a logging propensity below this
        counts as no support (or below half of 1 / K in a round of K candidates, where
        that is smaller).
    retrain_max_unsupported : float
        Default of the form's ``max_unsupported``: most probability mass the candidate
        may put on unsupported actions of the held-out window before the gate refuses.
    retrain_policy_options : dict
        Default of the form's ``policy_options`` (JSON in the environment, a table in the
        workspace file), e.g. ``{"alpha": 0.5}``.
    retrain_epochs : int
        Default of the form's ``epochs``: training epochs of neural policies.
    retrain_seed : int
        Default of the form's ``seed``: seed of training and of the bootstrap.
    retrain_tolerance : float
        Default of the form's ``tolerance``: allowed shortfall of the lower bound of the
        candidate's DR gain over production (paired on the same rounds), relative to
        production's estimate.
    retrain_min_ess : float
        Default of the form's ``min_ess``: smallest effective sample size the gate accepts.
    retrain_n_resamples : int
        Default of the form's ``n_resamples``: bootstrap resamples of the offline evaluation.
    retrain_auto_promote : bool
        Default of the form's ``auto_promote``: move production to a version whose gate
        passes. A run's form may turn it off, never on: that would skip
        ``bandit_promote``'s approval.
    retrain_shards : int
        Default of the retrain form's ``shards``: shards of the map-reduce head rebuild and
        offline evaluation (``training.shards``); 1 keeps the single-node path.
    retrain_queue : str
        Executor queue of the retrain tasks (``airflow celery worker --queues`` serves it).
    retries : int
        Retries of a failed retrain task (bad data and bad input fail at once).
    retry_delay_s : float
        Seconds between two tries.
    task_timeout_s : float
        Longest a retrain task may run before Airflow fails it (its ``execution_timeout``;
        then retried like any failure): no parameter or window can hold the nightly run,
        and the runs queued behind it, indefinitely.
    owner : str
        Owner shown on the DAGs.
    approval_timeout_h : float
        Hours a promotion waits for its approval before it counts as rejected.
    promote_approvers : list of str
        Airflow user ids that may answer ``bandit_promote``'s approval, as the auth
        manager gives them (the simple auth manager: the user name; FAB: the numeric id
        ``airflow users list`` shows); empty: every user whose role may act on the DAG's
        runs, Airflow's rule.
    promote_four_eyes : bool
        The user who triggered a ``bandit_promote`` run may not approve it, and a run
        with no known triggering user fails before it asks: a promotion then needs two
        people (off for a one-operator setup).
    rollout_schedule : str
        Cron expression or preset of the rollout controller (``bandit_rollout``): one
        step per run.
    rollout_stages : list of float
        Candidate traffic shares of the staged rollout, increasing, the last 1.0 and at
        least one below it (only there do both arms serve, so only there can the test
        compare them); at the last one, a passing test promotes.
    rollout_min_stage_s : float
        Shortest time on a stage before it may advance (a rollback needs no wait).
    rollout_min_samples : int
        Fewest candidate outcomes (decisions whose reward window has closed) on a stage
        before it may advance, and fewest per arm since the start before any decision.
    rollout_max_duration_s : float
        A rollout still undecided this long after its start expires: the candidate
        leaves the staging alias and production stays. The end is recorded when the
        rollout starts: past it the service replicas serve production alone even when
        no controller step runs (``bandit_rollout`` paused); a lower value later ends
        running rollouts sooner, a higher one does not extend them. It must exceed the
        number of stages × max(``reward_window_s``, ``rollout_min_stage_s``): a stage
        counts only the decisions whose reward window has closed.
    rollout_margin : float
        Roll back when the candidate is worse than production by more than this (reward
        units) with confidence ``1 − rollout_alpha``.
    rollout_alpha : float
        Error level of the always-valid sequential test (:mod:`bandit_core.sequential`).
    rollout_design_n : int
        Outcomes per arm at which the test's interval is tightest.
    rollout_auto_start : bool
        The controller starts a rollout of a new ``@staging`` version (the gate's) by
        itself; off: only ``banditops rollout start``.
    validation_drift_warning : float
        The retrain's data validation compares every feature of its window with the
        production version's training window (PSI, Great Expectations); beyond this a
        feature's drift is a warning, recorded with the run (``gx.warnings``), and the
        run continues.
    validation_drift_failing : float
        Beyond this (at least ``validation_drift_warning``) the validation fails and the
        run stops, naming each feature and its drift: the window no longer looks like
        the data the production model was trained on (check the feature pipeline first).
    retention_schedule : str
        Cron expression or preset of ``bandit_retention``.
    retention_days : float
        ``bandit_retention`` deletes decisions (with their rewards) and superseded head
        snapshots older than this, never a row a running retrain's window, a running
        rollout or a served head (what it learnt after its newest snapshot) still needs.
        Ended rollouts go too, except the latest and those of a version an alias holds.
    runs_retention_days : float
        ``bandit_retention`` deletes the folders of retrain runs under ``runs_dir`` (each
        with a copy of its replay window, its data docs and reports; what the loop needs
        of a run is in MLflow) and the monitor's hourly reports, once their newest file
        is older than this; never the folder of a retrain Airflow still runs or has
        queued, nor the newest monitor reports the Bandits page shows.
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
    retrain_window_days: float = Field(7.0, gt=0.0, le=WINDOW_DAYS_MAX)
    retrain_min_rows: int = Field(100, ge=1, le=ROWS_MAX)
    retrain_algorithm: str = AUTO
    retrain_policy_options: dict[str, Any] = Field(default_factory=dict)
    retrain_epochs: int = Field(20, ge=1, le=100_000)
    retrain_seed: int = Field(0, ge=0, le=SEED_MAX)
    retrain_tolerance: float = Field(TOLERANCE, ge=0.0, lt=1.0)
    retrain_min_ess: float = Field(MIN_ESS, ge=0.0)
    retrain_n_resamples: int = Field(300, ge=N_RESAMPLES_MIN, le=N_RESAMPLES_MAX)
    retrain_auto_promote: bool = False
    retrain_shards: int = Field(1, ge=1, le=SHARDS_MAX)
    retrain_neural_min_rows: int = Field(10_000, ge=1, le=ROWS_MAX)
    retrain_floor: float = Field(0.0, ge=0.0, lt=1.0)
    retrain_deterministic_floor: float = Field(0.02, ge=0.0, lt=1.0)
    retrain_segment_floors: dict[str, Any] = Field(default_factory=dict)
    retrain_cold_start_floor: float = Field(0.02, ge=0.0, lt=1.0)
    retrain_exposure_cap: float = Field(0.0, ge=0.0, lt=1.0)
    retrain_support_threshold: float = Field(SUPPORT_THRESHOLD, ge=0.0, lt=1.0)
    retrain_max_unsupported: float = Field(MAX_UNSUPPORTED, ge=0.0, le=1.0)
    retrain_queue: str = Field("default", min_length=1)
    retries: int = Field(2, ge=0)
    retry_delay_s: float = Field(300.0, gt=0.0)
    task_timeout_s: float = Field(6 * 3600.0, gt=0.0)
    owner: str = "banditops"
    approval_timeout_h: float = Field(72.0, gt=0.0)
    promote_approvers: list[str] = Field(default_factory=list)
    promote_four_eyes: bool = False
    rollout_schedule: str = "*/10 * * * *"
    rollout_stages: list[float] = Field(default_factory=lambda: list(ROLLOUT_STAGES))
    rollout_min_stage_s: float = Field(3600.0, ge=0.0)
    rollout_min_samples: int = Field(500, ge=1)
    rollout_max_duration_s: float = Field(7 * 86_400.0, gt=0.0)
    rollout_margin: float = Field(0.01, ge=0.0)
    rollout_alpha: float = Field(0.05, gt=0.0, lt=1.0)
    rollout_design_n: int = Field(DESIGN_N, ge=1)
    rollout_auto_start: bool = True
    validation_drift_warning: float = Field(0.1, gt=0.0)
    validation_drift_failing: float = Field(1.0, gt=0.0)
    retention_schedule: str = "30 3 * * *"
    retention_days: float = Field(90.0, gt=0.0)
    runs_retention_days: float = Field(30.0, gt=0.0)

    @field_validator("retrain_algorithm")
    @classmethod
    def _algorithm(cls, value: str) -> str:
        if value not in ALGORITHMS:
            raise ValueError(f"must be one of {', '.join(ALGORITHMS)}; got {value!r}.")
        return value

    def gate_rule(self) -> Any:
        """The retrain's gate rule under these settings (``banditops evaluate`` uses it;
        a retrain's run spec carries the form's values, which default to these)."""
        from validation.gate import GateRule  # lazy: the DAG files import this module

        return GateRule(
            tolerance=self.retrain_tolerance,
            min_ess=self.retrain_min_ess,
            support_threshold=self.retrain_support_threshold,
            max_unsupported=self.retrain_max_unsupported,
        )

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

    @field_validator("rollout_stages")
    @classmethod
    def _stages(cls, value: list[float]) -> list[float]:
        # at least one stage below 1.0: only there do both arms serve, so only there can
        # the test compare them; [1.0] alone sent everyone to the candidate and could
        # neither roll it back nor promote it, only expire (audit, stop 54)
        ok = (
            len(value) >= 2
            and all(0.0 < v <= 1.0 for v in value)
            and all(a < b for a, b in itertools.pairwise(value))
            and value[-1] == 1.0
        )
        if not ok:
            raise ValueError(
                "must be increasing shares in (0, 1), at least one, then 1.0 (e.g. "
                f"{list(ROLLOUT_STAGES)}); got {value!r}."
            )
        return [float(v) for v in value]

    @model_validator(mode="after")
    def _rollout_can_promote(self) -> Self:
        # a stage advances once its decisions' reward windows have closed (and it ran
        # rollout_min_stage_s): a rollout shorter than that for every stage only expires
        floor = len(self.rollout_stages) * max(self.reward_window_s, self.rollout_min_stage_s)
        if self.rollout_max_duration_s <= floor:
            raise ValueError(
                f"rollout_max_duration_s must exceed {floor:g} s, the least time a rollout "
                f"needs to pass its {len(self.rollout_stages)} stages (each waits for "
                "max(reward_window_s, rollout_min_stage_s): a stage counts the decisions "
                f"whose reward window has closed); got {self.rollout_max_duration_s:g}."
            )
        return self

    @model_validator(mode="after")
    def _drift_levels(self) -> Self:
        if self.validation_drift_warning > self.validation_drift_failing:
            raise ValueError(
                "validation_drift_warning must not exceed validation_drift_failing; got "
                f"{self.validation_drift_warning} and {self.validation_drift_failing}."
            )
        return self

    @field_validator(
        "retrain_schedule", "monitor_schedule", "rollout_schedule", "retention_schedule"
    )
    @classmethod
    def _cron(cls, value: str) -> str:
        text = value.strip()
        if text in _PRESETS:
            return text
        if len(text.split()) == 5:
            # Airflow's own parser, where Airflow is installed ("99 99 99 99 99" passed the
            # field count and the DAG was never scheduled)
            croniter = _croniter()
            if croniter is None:
                return text
            if croniter.is_valid(text):
                return text
        raise ValueError(
            f"must be a five-field cron expression or one of {', '.join(_PRESETS)}; got {value!r}."
        )


class SettingsError(ValueError):
    """Settings a process cannot start with, one ``field (where set): expectation`` line
    per problem."""


class DagSettings:
    """What one DAG file reads of :class:`PipelineSettings` as Airflow parses it: the
    fields it named to :func:`dag_settings`, and nothing else (reading another is an
    ``AttributeError`` naming it, so the list a DAG file gives stays its whole need)."""

    def __init__(self, dag: str, settings: PipelineSettings, names: frozenset[str]) -> None:
        self._dag, self._settings, self._names = dag, settings, names

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in self._names:
            raise AttributeError(
                f"{self._dag} reads the setting {name!r} as it is parsed but does not name "
                "it in dag_settings(...)."
            )
        return getattr(self._settings, name)


def dag_settings(dag: str, *names: str) -> DagSettings:
    """The settings the DAG ``dag`` reads when Airflow parses its file: ``names`` (fields
    or properties of :class:`PipelineSettings`) and the core settings every component
    reads (:class:`~eventstore.settings.CoreSettings`).

    A bad value of one of those is a :class:`SettingsError` naming the setting and where
    it was set (the workspace file and table, or the variable), as the CLI says it: the
    DAG's import error (it showed pydantic's ten lines, naming neither; audit, stop 54).
    A bad value only another DAG reads does not unload this one (one bad
    ``rollout_stages`` unloaded all six, the hourly monitor with them): that DAG's import
    error names it, and a task that reads it fails naming it when it runs.
    """
    try:
        settings = PipelineSettings()
    except ValidationError as exc:
        core = set(CoreSettings.model_fields)
        failing = {str(error["loc"][0]) if error["loc"] else "" for error in exc.errors()}
        ours = failing & (set(names) | core | {""})
        if ours or not failing <= set(PipelineSettings.model_fields):
            problems = "; ".join(setting_problems(exc))
            raise SettingsError(f"banditops settings: {problems}") from None
        # the others' values as declared, where nothing of this DAG reads them
        settings = PipelineSettings(
            **{
                name: PipelineSettings.model_fields[name].get_default(call_default_factory=True)
                for name in failing
            }
        )
    return DagSettings(dag, settings, frozenset(names) | frozenset(CoreSettings.model_fields))
