"""The nightly retrain in one process: the steps of :mod:`training.steps`, chained.

The Airflow DAG ``bandit_retrain`` runs the same steps as separate tasks; this module
chains them for the CLI, the demo and the tests, from a :class:`RetrainSettings`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from eventstore.workspace import run_folder
from training import runspec, steps
from training.baseline import production_state
from training.train import TrainConfig

__all__ = [
    "RetrainOutcome",
    "RetrainSettings",
    "default_window",
    "production_state",
    "run_retrain",
    "spec_for",
]


@dataclass(frozen=True)
class RetrainSettings:
    """Everything one retrain needs besides the window."""

    store_url: str
    tracking_uri: str
    runs_dir: str
    model_name: str = "banditops-policy"
    train: TrainConfig = field(default_factory=TrainConfig)
    reward_window: timedelta = timedelta(hours=1)
    min_rows: int = 100
    tolerance: float = 0.0
    min_ess: float = 50.0
    n_resamples: int = 300
    auto_promote: bool = True
    promoted_by: str = "banditops-retrain"


@dataclass(frozen=True)
class RetrainOutcome:
    """What a retrain left: the version, the gate's decision and the run's numbers."""

    run_key: str
    version: str
    gate_passed: bool
    promoted: bool
    reasons: list[str]
    metrics: dict[str, float]
    manifest: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def spec_for(
    settings: RetrainSettings,
    start: datetime,
    end: datetime,
    run_key: str,
    *,
    as_of: datetime | None = None,
) -> runspec.RunSpec:
    """The run spec of a retrain of ``[start, end)`` (``as_of`` default: now)."""
    for name, value in (("start", start), ("end", end), ("as_of", as_of)):
        if value is not None and value.tzinfo is None:
            raise ValueError(f"{name} must be timezone-aware; got {value!r}.")
    spec = runspec.RunSpec(
        run_key=run_key,
        run_dir=str(run_folder(settings.runs_dir, run_key)),
        store_url=settings.store_url,
        tracking_uri=settings.tracking_uri,
        model_name=settings.model_name,
        window_start=start.astimezone(UTC).isoformat(),
        window_end=end.astimezone(UTC).isoformat(),
        as_of=(as_of or datetime.now(UTC)).astimezone(UTC).isoformat(),
        reward_window_s=settings.reward_window.total_seconds(),
        min_rows=settings.min_rows,
        train=asdict(settings.train),
        tolerance=settings.tolerance,
        min_ess=settings.min_ess,
        n_resamples=settings.n_resamples,
        auto_promote=settings.auto_promote,
        promoted_by=settings.promoted_by,
    )
    spec.write()
    return spec


def run_retrain(
    settings: RetrainSettings,
    start: datetime,
    end: datetime,
    run_key: str,
    *,
    as_of: datetime | None = None,
) -> RetrainOutcome:
    """extract → validate → train → rebuild → evaluate → register → gate → promote."""
    spec = spec_for(settings, start, end, run_key, as_of=as_of).to_dict()
    replay = steps.extract(spec)
    validated = steps.validate(spec, replay)
    trained = steps.train_network(spec, replay)
    rebuilt = steps.rebuild(spec, trained, replay)
    evaluated = steps.evaluate_offline(spec, rebuilt, replay)
    registered = steps.register_candidate(spec, replay, validated, trained, rebuilt, evaluated)
    passed = steps.gate(spec, registered, evaluated)
    promoted = steps.promote(spec, registered)["promoted"] if passed else False
    outcome = RetrainOutcome(
        run_key=run_key,
        version=registered["version"],
        gate_passed=passed,
        promoted=promoted,
        reasons=list(evaluated["reasons"]),
        metrics=json.loads(Path(registered["metrics"]).read_text()),
        manifest=json.loads(Path(replay["manifest"]).read_text()),
    )
    (runspec.RunSpec.from_dict(spec).folder / "outcome.json").write_text(outcome.to_json())
    return outcome


def default_window(days: float = 1.0, now: datetime | None = None) -> tuple[datetime, datetime]:
    """``[now − days, now)``."""
    end = now or datetime.now(UTC)
    return end - timedelta(days=days), end
