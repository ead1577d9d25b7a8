"""
### bandit_retrain — the nightly retrain

`plan_run` → `extract_replay` → `validate_features` (Great Expectations; a failure stops
the run and nothing is registered) → `train_network` → `rebuild_head` → `evaluate_offline`
(IPS / SNIPS / DR with intervals, candidate vs production) → `register_candidate`
(MLflow version with the registered alias, `candidate` by default, at most one per run) →
`gate` (moves the staging alias, `BANDITOPS_CANDIDATE_ALIAS`, when the candidate passes;
otherwise the rest of the run is skipped) → `promote` (moves the production alias,
`BANDITOPS_PRODUCTION_ALIAS`, only with `auto_promote`; otherwise the version waits for
`bandit_promote`).

With `shards` > 1 (default `BANDITOPS_RETRAIN_SHARDS`) the head rebuild and the offline
evaluation are map-reduce rounds (`training.shards`): `plan_rebuild_shards` and
`plan_evaluation_shards` cut the replay window; `shard_statistics` (one mapped task per
training shard) encodes its rows with the frozen network and writes the additive head
statistics, `rebuild_head` sums them; `shard_evaluation` (one per held-out shard) writes
the mergeable OPE sums of candidate and production, `evaluate_offline` merges them
(normal-approximation intervals) and gates. With `shards` = 1 the mapped tasks expand to
nothing (skipped) and `rebuild_head` / `evaluate_offline` run the single-node steps.

`plan_run` fixes the run spec (`training.runspec.plan`, the same call as `banditops
train`); the tasks and their wiring come from `training.pipeline.RETRAIN_STEPS` and each
task is one `training.pipeline.run_step` call; they pass the run spec and typed references
(`training.refs`: paths, versions) through XCom. The trigger form is
`training.form.RETRAIN_FORM`. Outputs live in `<runs dir>/<run id>/`; a retried task
overwrites its own.
Bad data or bad input (`ValueError`, the GX `DataValidationError`) fails at once without
retries. Settings come from `BANDITOPS_*` (`training.settings.PipelineSettings`).
"""

from __future__ import annotations

import inspect
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import (
    Asset,
    ExceptionRetryPolicy,
    Param,
    RetryAction,
    RetryRule,
    dag,
    task,
)

from training.form import RETRAIN_FORM
from training.pipeline import RETRAIN_STEPS, run_step
from training.settings import PipelineSettings

SETTINGS = PipelineSettings()
REPLAY = Asset(uri=f"x-banditops://replay/{SETTINGS.model_name}", name="banditops_replay")
MODEL = Asset(
    uri=f"x-mlflow://registered-models/{SETTINGS.model_name}", name="banditops_registered_model"
)
NO_RETRY_ON_BAD_INPUT = ExceptionRetryPolicy(
    rules=[
        RetryRule(
            exception=[ValueError, TypeError],
            action=RetryAction.FAIL,
            reason="bad data or bad input: another try cannot succeed",
        )
    ]
)


def _listed(parts: Any) -> list[Any]:
    """The mapped outputs as a list (by index: iterating probes past the end)."""
    return [parts[i] for i in range(len(parts))]


@task
def plan_run(
    *, params: Any = None, run_id: Any = None, data_interval_end: Any = None, dag_run: Any = None
) -> dict[str, Any]:
    end = data_interval_end or dag_run.run_after
    return run_step("plan_run", dict(params), run_key=run_id, interval_end=end)  # type: ignore[no-any-return]


@task(outlets=[REPLAY])
def extract_replay(spec: dict[str, Any], *, outlet_events: Any = None) -> dict[str, Any]:
    replay: dict[str, Any] = run_step("extract_replay", spec)
    outlet_events[REPLAY].extra = {"run_key": spec["run_key"], **replay}
    return replay


@task
def validate_features(spec: dict[str, Any], replay: dict[str, Any]) -> dict[str, Any]:
    return run_step("validate_features", spec, replay)  # type: ignore[no-any-return]


@task
def train_network(spec: dict[str, Any], replay: dict[str, Any]) -> dict[str, Any]:
    return run_step("train_network", spec, replay)  # type: ignore[no-any-return]


@task
def plan_rebuild_shards(
    spec: dict[str, Any], replay: dict[str, Any], trained: dict[str, Any]
) -> list[dict[str, Any]]:
    return run_step("plan_rebuild_shards", spec, replay, trained)  # type: ignore[no-any-return]


@task
def plan_evaluation_shards(
    spec: dict[str, Any], replay: dict[str, Any], trained: dict[str, Any]
) -> list[dict[str, Any]]:
    return run_step("plan_evaluation_shards", spec, replay, trained)  # type: ignore[no-any-return]


@task
def shard_statistics(shard: dict[str, Any], trained: dict[str, Any]) -> dict[str, Any]:
    return run_step("shard_statistics", shard, trained)  # type: ignore[no-any-return]


@task
def shard_evaluation(shard: dict[str, Any], rebuilt: dict[str, Any]) -> dict[str, Any]:
    return run_step("shard_evaluation", shard, rebuilt)  # type: ignore[no-any-return]


@task(trigger_rule="none_failed")  # runs when the mapped shards expanded to nothing
def rebuild_head(
    spec: dict[str, Any], trained: dict[str, Any], replay: dict[str, Any], parts: Any
) -> dict[str, Any]:
    return run_step("rebuild_head", spec, trained, replay, _listed(parts))  # type: ignore[no-any-return]


@task(trigger_rule="none_failed")
def evaluate_offline(
    spec: dict[str, Any], rebuilt: dict[str, Any], replay: dict[str, Any], parts: Any
) -> dict[str, Any]:
    return run_step("evaluate_offline", spec, rebuilt, replay, _listed(parts))  # type: ignore[no-any-return]


@task(outlets=[MODEL])
def register_candidate(
    spec: dict[str, Any],
    replay: dict[str, Any],
    validated: dict[str, Any],
    trained: dict[str, Any],
    rebuilt: dict[str, Any],
    evaluated: dict[str, Any],
    *,
    outlet_events: Any = None,
) -> dict[str, Any]:
    registered: dict[str, Any] = run_step(
        "register_candidate", spec, replay, validated, trained, rebuilt, evaluated
    )
    outlet_events[MODEL].extra = registered
    return registered


@task.short_circuit
def gate(spec: dict[str, Any], registered: dict[str, Any], evaluated: dict[str, Any]) -> bool:
    return run_step("gate", spec, registered, evaluated)  # type: ignore[no-any-return]


@task.run_if(
    lambda context: bool(context["params"]["auto_promote"]),
    skip_message="auto_promote is off: the version waits for bandit_promote.",
)
@task
def promote(spec: dict[str, Any], registered: dict[str, Any]) -> dict[str, Any]:
    return run_step("promote", spec, registered)  # type: ignore[no-any-return]


TASKS: dict[str, Any] = {
    "plan_run": plan_run,
    "extract_replay": extract_replay,
    "validate_features": validate_features,
    "train_network": train_network,
    "plan_rebuild_shards": plan_rebuild_shards,
    "plan_evaluation_shards": plan_evaluation_shards,
    "shard_statistics": shard_statistics,
    "rebuild_head": rebuild_head,
    "shard_evaluation": shard_evaluation,
    "evaluate_offline": evaluate_offline,
    "register_candidate": register_candidate,
    "gate": gate,
    "promote": promote,
}


@dag(
    dag_id="bandit_retrain",
    schedule=SETTINGS.retrain_schedule,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["banditops", "training"],
    doc_md=__doc__,
    default_args={
        "owner": SETTINGS.owner,
        "queue": SETTINGS.retrain_queue,
        "retries": SETTINGS.retries,
        "retry_delay": timedelta(seconds=SETTINGS.retry_delay_s),
        "retry_policy": NO_RETRY_ON_BAD_INPUT,
    },
    params={f.name: Param(f.default_for(SETTINGS), **f.schema()) for f in RETRAIN_FORM},
)
def bandit_retrain() -> None:
    """The tasks of ``RETRAIN_STEPS``, each called on the outputs of the steps it names."""
    out: dict[str, Any] = {}
    for step in RETRAIN_STEPS:
        made = TASKS[step.name]
        names = [
            p.name
            for p in inspect.signature(made.function).parameters.values()
            if p.kind is p.POSITIONAL_OR_KEYWORD
        ]
        kwargs = dict(zip(names, (out[name] for name in step.inputs), strict=True))
        if step.mapped is None:
            out[step.name] = made(**kwargs)
        else:
            over = names[step.inputs.index(step.mapped)]
            fixed = {k: v for k, v in kwargs.items() if k != over}
            out[step.name] = made.partial(**fixed).expand(**{over: kwargs[over]})
        for name in step.after:
            out[name] >> out[step.name]


bandit_retrain()
