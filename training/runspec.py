"""The run spec: everything one retrain run needs, fixed when the run starts.

:func:`plan` makes it from the ``bandit_retrain`` form values and the ``BANDITOPS_*``
settings (:func:`training.pipeline.spec_for` from a :class:`~training.pipeline.RetrainSettings`)
and writes it to ``<runs_dir>/<run key>/spec.json``; the steps of :mod:`training.steps`
take it as the dict it is in XCom. This module stays cheap to import (the DAG file reads
:data:`RETRAIN_DEFAULTS` at parse time).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from eventstore.workspace import as_utc, aware, run_folder
from training.settings import ALGORITHMS, PipelineSettings

log = logging.getLogger(__name__)

SPEC_FILE = "spec.json"
#: Policies trained by epochs (the form's ``epochs`` applies to them only).
NEURAL = ("neural_linear", "ensemble", "dropout")


@dataclass(frozen=True)
class RunSpec:
    """Everything one retrain run needs, fixed when the run starts.

    Parameters
    ----------
    run_key : str
        Identity of the run (the Airflow run id); at most one registered version per key.
    run_dir : str
        The run's folder; every output of the run lives under it.
    store_url, tracking_uri, model_name : str
        Event store, MLflow registry and registered model.
    window_start, window_end : str
        The replay window ``[start, end)``, ISO 8601 with a UTC offset.
    as_of : str
        "Now" for the reward join (default ``window_end``: a re-run sees the same rows).
    reward_window_s : float
        How long after a decision its reward counts.
    missing_reward, default_reward
        What the replay does with a decision whose reward never came.
    reward_min, reward_max : float
        Reward range the data validation accepts.
    min_rows : int
        Fewest replay rows the data validation accepts.
    train : dict
        Fields of :class:`training.train.TrainConfig`.
    tolerance, min_ess : float
        The promotion gate's rule (:class:`validation.gate.GateRule`, DR estimator).
    n_resamples : int
        Bootstrap resamples of the offline evaluation.
    auto_promote : bool
        Move ``production`` to the version when its gate passes.
    promoted_by : str
        Who an automatic promotion is recorded as.
    shards : int
        Shards of the map-reduce head rebuild and OPE (:mod:`training.shards`); 1 is the
        single-node path.
    """

    run_key: str
    run_dir: str
    store_url: str
    tracking_uri: str
    model_name: str
    window_start: str
    window_end: str
    as_of: str
    reward_window_s: float
    missing_reward: str = "default"
    default_reward: float = 0.0
    reward_min: float = 0.0
    reward_max: float = 1.0
    min_rows: int = 100
    train: dict[str, Any] = field(default_factory=dict)
    tolerance: float = 0.0
    min_ess: float = 50.0
    n_resamples: int = 300
    auto_promote: bool = False
    promoted_by: str = "banditops-retrain"
    shards: int = 1

    def __post_init__(self) -> None:
        if not self.run_key.strip():
            raise ValueError("run_key must be a non-empty string; got an empty value.")
        for name in ("store_url", "tracking_uri", "model_name", "run_dir"):
            if not getattr(self, name):
                raise ValueError(f"{name} must be set; got {getattr(self, name)!r}.")
        start, end = self.window()
        if start >= end:
            raise ValueError(
                f"window_start must be before window_end; got {self.window_start} ≥ "
                f"{self.window_end}."
            )
        aware("as_of", self.as_of)
        if not self.reward_window_s > 0:
            raise ValueError(f"reward_window_s must be > 0; got {self.reward_window_s!r}.")
        if self.missing_reward not in ("default", "drop"):
            raise ValueError(
                f"missing_reward must be 'default' or 'drop'; got {self.missing_reward!r}."
            )
        if not self.reward_min < self.reward_max:
            raise ValueError(
                f"reward_min must be below reward_max; got {self.reward_min} and {self.reward_max}."
            )
        check_int("min_rows", self.min_rows, 1)
        check_int("n_resamples", self.n_resamples, 1)
        check_int("shards", self.shards, 1)
        self.train_config()  # raises ValueError naming a bad training field
        self.gate_rule()  # raises ValueError naming a bad gate field
        if not isinstance(self.auto_promote, bool):
            raise ValueError(f"auto_promote must be a bool; got {self.auto_promote!r}.")

    # ------------------------------------------------------------------ views
    def window(self) -> tuple[datetime, datetime]:
        return aware("window_start", self.window_start), aware("window_end", self.window_end)

    def train_config(self) -> Any:
        # lazy: the DAG files import this module at parse time (no torch there)
        from training.train import TrainConfig

        known = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(self.train) - known)
        if unknown:
            raise ValueError(
                f"train has unknown fields {unknown}; expected some of {sorted(known)}."
            )
        return TrainConfig(**self.train)

    def gate_rule(self) -> Any:
        # lazy: parse-time module, as above
        from validation.gate import GateRule

        return GateRule(tolerance=float(self.tolerance), min_ess=float(self.min_ess))

    @property
    def folder(self) -> Path:
        return Path(self.run_dir)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | RunSpec) -> RunSpec:
        """The spec from its dict (as it travels through XCom); unknown keys are an error."""
        if isinstance(data, RunSpec):
            return data
        if not isinstance(data, Mapping):
            raise TypeError(f"spec must be a mapping; got {type(data).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"spec has unknown fields {unknown}.")
        return cls(**dict(data))

    def write(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / SPEC_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path


#: Defaults of the retrain form, declared once in :class:`PipelineSettings` (``retrain_*``);
#: the DAG's ``Param`` defaults are the workspace's values of those settings.
RETRAIN_DEFAULTS: dict[str, Any] = PipelineSettings.declared_retrain_defaults()


def plan(
    params: Mapping[str, Any],
    *,
    run_key: str,
    interval_end: datetime,
    settings: PipelineSettings | None = None,
) -> dict[str, Any]:
    """The spec of a retrain run from the DAG form's values; written to ``spec.json``.

    Parameters
    ----------
    params : mapping
        ``window_days`` (number > 0) or ``window_start`` and ``window_end`` (``YYYY-MM-DD``,
        UTC midnights, end exclusive); ``min_rows``; ``algorithm``; ``policy_options``
        (dict of policy options); ``epochs`` (neural policies); ``seed``; ``tolerance``;
        ``min_ess``; ``n_resamples``; ``auto_promote``; ``shards``. Missing keys take the
        settings' defaults (:meth:`PipelineSettings.retrain_defaults`).
    run_key : str
        The Airflow run id.
    interval_end : datetime
        End of the run's data interval (the window ends there unless dates are given).
    settings : PipelineSettings, optional
        Default: read from the ``BANDITOPS_*`` environment.

    Returns
    -------
    dict
        The :class:`RunSpec` as a dict.
    """
    settings = PipelineSettings() if settings is None else settings
    defaults = settings.retrain_defaults()
    values = {**defaults, **{k: v for k, v in params.items() if v is not None}}
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise ValueError(f"params has unknown fields {unknown}; expected {sorted(defaults)}.")
    start, end = resolve_window(values, as_utc("interval_end", interval_end))
    algorithm = values["algorithm"]
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}; got {algorithm!r}.")
    options = values["policy_options"]
    if not isinstance(options, Mapping):
        raise ValueError(f"policy_options must be an object of policy options; got {options!r}.")
    options = dict(options)
    if algorithm in NEURAL:
        options.setdefault("epochs", check_int("epochs", values["epochs"], 1))
    spec = RunSpec(
        run_key=run_key,
        run_dir=str(run_folder(settings.runs_path, run_key)),
        store_url=settings.store_url,
        tracking_uri=settings.tracking_uri,
        model_name=settings.model_name,
        window_start=start.isoformat(),
        window_end=end.isoformat(),
        as_of=end.isoformat(),
        reward_window_s=settings.reward_window_s,
        missing_reward=settings.missing_reward,
        default_reward=settings.default_reward,
        reward_min=settings.reward_min,
        reward_max=settings.reward_max,
        min_rows=check_int("min_rows", values["min_rows"], 1),
        train={
            "algorithm": algorithm,
            "options": options,
            "seed": check_int("seed", values["seed"], 0),
        },
        tolerance=check_float("tolerance", values["tolerance"]),
        min_ess=check_float("min_ess", values["min_ess"]),
        n_resamples=check_int("n_resamples", values["n_resamples"], 1),
        auto_promote=check_bool("auto_promote", values["auto_promote"]),
        promoted_by="bandit_retrain",
        shards=check_int("shards", values["shards"], 1),
    )
    spec.write()
    log.info("run %s: window %s → %s, folder %s", run_key, start, end, spec.run_dir)
    return spec.to_dict()


def resolve_window(values: Mapping[str, Any], interval_end: datetime) -> tuple[datetime, datetime]:
    """``[window_start, window_end)`` from explicit dates, else ``window_days`` back from
    ``interval_end``."""
    start_text, end_text = values.get("window_start"), values.get("window_end")
    if start_text or end_text:
        if not (start_text and end_text):
            missing = "window_end" if start_text else "window_start"
            raise ValueError(
                f"{missing} must be given together with "
                f"{'window_start' if start_text else 'window_end'} (YYYY-MM-DD)."
            )
        start = datetime.combine(parse_date("window_start", start_text), time(), UTC)
        end = datetime.combine(parse_date("window_end", end_text), time(), UTC)
        if start >= end:
            raise ValueError(
                f"window_start must be before window_end; got {start_text} and {end_text}."
            )
        return start, end
    days = check_float("window_days", values.get("window_days", 7.0))
    if days <= 0:
        raise ValueError(f"window_days must be > 0; got {days!r}.")
    return interval_end - timedelta(days=days), interval_end


# ---------------------------------------------------------------------- checks
def parse_date(name: str, text: Any) -> date:
    """The ``YYYY-MM-DD`` date ``text`` (field ``name``)."""
    try:
        return date.fromisoformat(str(text))
    except ValueError as exc:
        raise ValueError(f"{name} must be a date YYYY-MM-DD; got {text!r}.") from exc


def check_int(name: str, value: Any, low: int) -> int:
    """An integer ≥ ``low`` (an integral float is accepted, as JSON forms send them)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer ≥ {low}; got {value!r}.")
    return value


def check_float(name: str, value: Any) -> float:
    """A finite number (not a bool) as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value!r}.")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    """A real bool (``"yes"`` and 1 are refused)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false; got {value!r}.")
    return value
