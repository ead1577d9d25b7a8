"""The nightly retrain's step order, declared once, and the in-process run of it.

:data:`RETRAIN_STEPS` is the graph: each step names the steps whose outputs it takes (in
its call's order), the steps it only waits for, and the list it runs once per item of (the
map-reduce shards). The ``bandit_retrain`` DAG wires its tasks from this table, and
:func:`run_retrain` (``banditops train``, the tests) walks the same table in one process.
Both call every step through :func:`run_step`, which takes and returns the small JSON
values that travel through XCom and turns them into the typed references of
:mod:`training.refs` (and back) on the way, so the CLI exercises the DAG's path.

Cheap to import (the DAG file reads the table at parse time): the steps themselves
(torch, MLflow, pandas) are imported when a step runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from training.refs import (
    EvaluatedRef,
    RebuiltRef,
    RegisteredRef,
    ReplayRef,
    RunOutputs,
    TrainedRef,
    ValidatedRef,
)
from training.runspec import RunSpec, plan
from training.settings import PipelineSettings

__all__ = ["RETRAIN_STEPS", "RetrainOutcome", "Step", "run_retrain", "run_step", "step_order"]


@dataclass(frozen=True)
class Step:
    """One step of the retrain graph (an Airflow task of ``bandit_retrain``).

    Parameters
    ----------
    name : str
        The task id, and the key of :func:`run_step`.
    inputs : tuple of str
        The steps whose outputs the step takes, in its call's order.
    after : tuple of str
        Steps it waits for without taking their output.
    mapped : str or None
        The input (one of ``inputs``) it runs once per item of; its output is the list.
    stops_run : bool
        A false result skips every later step (the gate).
    """

    name: str
    inputs: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    mapped: str | None = None
    stops_run: bool = False


#: The retrain graph, in an order every step's inputs come before it (the DAG's
#: topological order; a test checks it).
RETRAIN_STEPS: tuple[Step, ...] = (
    Step("plan_run"),
    Step("extract_replay", ("plan_run",)),
    Step("validate_features", ("plan_run", "extract_replay")),
    Step("train_network", ("plan_run", "extract_replay"), after=("validate_features",)),
    Step("plan_rebuild_shards", ("plan_run", "extract_replay", "train_network")),
    Step("plan_evaluation_shards", ("plan_run", "extract_replay", "train_network")),
    Step(
        "shard_statistics", ("plan_rebuild_shards", "train_network"), mapped="plan_rebuild_shards"
    ),
    Step("rebuild_head", ("plan_run", "train_network", "extract_replay", "shard_statistics")),
    Step(
        "shard_evaluation",
        ("plan_evaluation_shards", "rebuild_head"),
        mapped="plan_evaluation_shards",
    ),
    Step("evaluate_offline", ("plan_run", "rebuild_head", "extract_replay", "shard_evaluation")),
    Step(
        "register_candidate",
        (
            "plan_run",
            "extract_replay",
            "validate_features",
            "train_network",
            "rebuild_head",
            "evaluate_offline",
        ),
    ),
    Step("gate", ("plan_run", "register_candidate", "evaluate_offline"), stops_run=True),
    Step("promote", ("plan_run", "register_candidate"), after=("gate",)),
)


def step_order() -> list[str]:
    """The step names in :data:`RETRAIN_STEPS` order."""
    return [s.name for s in RETRAIN_STEPS]


# ---------------------------------------------------------------------- the steps on XCom values
def _plan_run(
    params: Mapping[str, Any],
    run_key: str,
    interval_end: datetime,
    settings: PipelineSettings | None = None,
) -> dict[str, Any]:
    return plan(params, run_key=run_key, interval_end=interval_end, settings=settings).to_xcom()


def _extract_replay(spec: Mapping[str, Any]) -> dict[str, Any]:
    from training import steps  # lazy: pandas, MLflow (this module is read at DAG parse)

    return steps.extract(RunSpec.from_xcom(spec)).to_xcom()


def _validate_features(spec: Mapping[str, Any], replay: Mapping[str, Any]) -> dict[str, Any]:
    from training import steps

    return steps.validate(RunSpec.from_xcom(spec), ReplayRef.from_xcom(replay)).to_xcom()


def _train_network(spec: Mapping[str, Any], replay: Mapping[str, Any]) -> dict[str, Any]:
    from training import steps

    return steps.train_network(RunSpec.from_xcom(spec), ReplayRef.from_xcom(replay)).to_xcom()


def _plan_shards(part: str) -> Callable[..., list[dict[str, Any]]]:
    def planned(
        spec: Mapping[str, Any], replay: Mapping[str, Any], trained: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        from training import shards

        return shards.plan(
            RunSpec.from_xcom(spec).to_xcom(),
            ReplayRef.from_xcom(replay).to_xcom(),
            part,
            TrainedRef.from_xcom(trained).to_xcom(),
        )

    return planned


def _shard_statistics(shard: Mapping[str, Any], trained: Mapping[str, Any]) -> dict[str, Any]:
    from training import shards

    return shards.shard_statistics(shard, TrainedRef.from_xcom(trained).state_path)


def _rebuild_head(
    spec: Mapping[str, Any],
    trained: Mapping[str, Any],
    replay: Mapping[str, Any],
    parts: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    from training import steps

    return steps.rebuild(
        RunSpec.from_xcom(spec),
        TrainedRef.from_xcom(trained),
        ReplayRef.from_xcom(replay),
        list(parts),
    ).to_xcom()


def _shard_evaluation(shard: Mapping[str, Any], rebuilt: Mapping[str, Any]) -> dict[str, Any]:
    from training import shards

    ref = RebuiltRef.from_xcom(rebuilt)
    if ref.reward_model is None:
        raise ValueError("rebuilt has no reward_model: the sharded rebuild did not run.")
    return shards.shard_evaluation(shard, ref.state_path, ref.reward_model)


def _evaluate_offline(
    spec: Mapping[str, Any],
    rebuilt: Mapping[str, Any],
    replay: Mapping[str, Any],
    parts: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    from training import steps

    return steps.evaluate_offline(
        RunSpec.from_xcom(spec),
        RebuiltRef.from_xcom(rebuilt),
        ReplayRef.from_xcom(replay),
        list(parts),
    ).to_xcom()


def _register_candidate(
    spec: Mapping[str, Any],
    replay: Mapping[str, Any],
    validated: Mapping[str, Any],
    trained: Mapping[str, Any],
    rebuilt: Mapping[str, Any],
    evaluated: Mapping[str, Any],
) -> dict[str, Any]:
    from training import steps

    outputs = RunOutputs(
        replay=ReplayRef.from_xcom(replay),
        validated=ValidatedRef.from_xcom(validated),
        trained=TrainedRef.from_xcom(trained),
        rebuilt=RebuiltRef.from_xcom(rebuilt),
        evaluated=EvaluatedRef.from_xcom(evaluated),
    )
    return steps.register_candidate(RunSpec.from_xcom(spec), outputs).to_xcom()


def _gate(
    spec: Mapping[str, Any], registered: Mapping[str, Any], evaluated: Mapping[str, Any]
) -> bool:
    from training import steps

    return steps.gate(
        RunSpec.from_xcom(spec),
        RegisteredRef.from_xcom(registered),
        EvaluatedRef.from_xcom(evaluated),
    )


def _promote(spec: Mapping[str, Any], registered: Mapping[str, Any]) -> dict[str, Any]:
    from training import steps

    return steps.promote(RunSpec.from_xcom(spec), RegisteredRef.from_xcom(registered)).to_xcom()


_CALLS: dict[str, Callable[..., Any]] = {
    "plan_run": _plan_run,
    "extract_replay": _extract_replay,
    "validate_features": _validate_features,
    "train_network": _train_network,
    "plan_rebuild_shards": _plan_shards("train"),
    "plan_evaluation_shards": _plan_shards("holdout"),
    "shard_statistics": _shard_statistics,
    "rebuild_head": _rebuild_head,
    "shard_evaluation": _shard_evaluation,
    "evaluate_offline": _evaluate_offline,
    "register_candidate": _register_candidate,
    "gate": _gate,
    "promote": _promote,
}


def run_step(name: str, *args: Any, **kwargs: Any) -> Any:
    """Run step ``name`` of :data:`RETRAIN_STEPS` on XCom values; its XCom value."""
    if name not in _CALLS:
        raise ValueError(f"name must be one of {', '.join(step_order())}; got {name!r}.")
    return _CALLS[name](*args, **kwargs)


# ---------------------------------------------------------------------- one process
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


def run_retrain(
    params: Mapping[str, Any],
    *,
    run_key: str,
    interval_end: datetime,
    settings: PipelineSettings | None = None,
) -> RetrainOutcome:
    """The retrain of :data:`RETRAIN_STEPS` in this process, from the retrain form's values
    (:func:`training.runspec.plan`, as the DAG's ``plan_run``); mapped steps run their items
    one after the other, and a failed gate skips the rest, as in Airflow."""
    out: dict[str, Any] = {}
    for step in RETRAIN_STEPS:
        if step.name == "plan_run":
            out[step.name] = run_step(
                step.name, params, run_key=run_key, interval_end=interval_end, settings=settings
            )
            continue
        args = [out[name] for name in step.inputs]
        if step.mapped is None:
            out[step.name] = run_step(step.name, *args)
        else:
            at = step.inputs.index(step.mapped)
            out[step.name] = [
                run_step(step.name, *args[:at], item, *args[at + 1 :]) for item in args[at]
            ]
        if step.stops_run and not out[step.name]:
            break
    registered = RegisteredRef.from_xcom(out["register_candidate"])
    evaluated = EvaluatedRef.from_xcom(out["evaluate_offline"])
    promoted = out.get("promote", {}).get("promoted", False)
    outcome = RetrainOutcome(
        run_key=run_key,
        version=registered.version,
        gate_passed=bool(out["gate"]),
        promoted=bool(promoted),
        reasons=list(evaluated.reasons),
        metrics=json.loads(Path(registered.metrics).read_text()),
        manifest=json.loads(Path(ReplayRef.from_xcom(out["extract_replay"]).manifest).read_text()),
    )
    (RunSpec.from_xcom(out["plan_run"]).folder / "outcome.json").write_text(outcome.to_json())
    return outcome
