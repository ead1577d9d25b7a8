"""
### bandit_retrain — the nightly retrain, and the retrain on drift

Scheduled on its cron (`BANDITOPS_RETRAIN_SCHEDULE`, nightly) **or** on the asset
`banditops_feature_drift` (`x-banditops://drift/<model>`), which `bandit_monitor` updates
when a feature drifts beyond `BANDITOPS_RETRAIN_DRIFT_MIN` (data-aware scheduling,
`AssetOrTimeSchedule`): a drift event queues a run with the form's defaults.

`plan_run` → `extract_replay` → `validate_features` (Great Expectations; a failure stops
the run and nothing is registered; feature drift against the production version's
training window is a recorded warning beyond `BANDITOPS_VALIDATION_DRIFT_WARNING` and a
failure beyond `BANDITOPS_VALIDATION_DRIFT_FAILING`) → `train_network` → `rebuild_head` →
`evaluate_offline` (IPS / SNIPS / DR with intervals, candidate vs production, on the
window's held-out last part) → `refit_window` (the same training on the whole window: the
registered version has learnt its newest rows too) → `register_candidate`
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
train`); the tasks, their wiring and their properties (outlet assets, trigger rules, the
gate's short-circuit, `promote`'s run-if) come from `training.pipeline.RETRAIN_STEPS`, and
each task is one `training.pipeline.run_step` call; they pass the run spec and typed
references (`training.refs`: paths, versions) through XCom. The trigger form is
`training.form.RETRAIN_FORM`. Outputs live in `<runs dir>/<run id>/`; a retried task
overwrites its own.
Bad data or bad input (`ValueError`, `TypeError`, `OverflowError`, the GX
`DataValidationError`) fails at once without retries; a task running longer than
`BANDITOPS_TASK_TIMEOUT_S` fails (and is retried). Settings come from `BANDITOPS_*`
(`training.settings.PipelineSettings`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from airflow.sdk import (
    Asset,
    AssetOrTimeSchedule,
    CronTriggerTimetable,
    Param,
    dag,
    task,
)

from eventstore.contract import RETRAIN_DAG
from monitoring.settings import DRIFT_ASSET_NAME, DRIFT_ASSET_URI
from training.dag_retry import NO_RETRY_ON_BAD_INPUT
from training.form import RETRAIN_FORM
from training.pipeline import RETRAIN_STEPS, Step, run_step
from training.settings import DAG_START, dag_settings

# what this file reads of the settings as it is parsed (a bad one: its import error)
SETTINGS = dag_settings(
    RETRAIN_DAG,
    "owner",
    "retrain_queue",
    "retrain_schedule",
    "retries",
    "retry_delay_s",
    "task_timeout_s",
    *(f.setting for f in RETRAIN_FORM if f.setting),
)
ASSETS = {
    s.name: Asset(uri=s.outlet.uri.format(model_name=SETTINGS.model_name), name=s.outlet.name)
    for s in RETRAIN_STEPS
    if s.outlet is not None
}
#: The monitor's drift asset: its events trigger a run, as does the nightly cron.
DRIFT_ASSET = Asset(
    uri=DRIFT_ASSET_URI.format(model_name=SETTINGS.model_name), name=DRIFT_ASSET_NAME
)
SCHEDULE = AssetOrTimeSchedule(
    timetable=CronTriggerTimetable(SETTINGS.retrain_schedule, timezone="UTC"),
    assets=[DRIFT_ASSET],
)
MAPPED = {s.name for s in RETRAIN_STEPS if s.mapped is not None}


def _listed(parts: Any) -> list[Any]:
    """The mapped outputs as a list (by index: iterating probes past the end)."""
    return [parts[i] for i in range(len(parts))]


def _callable(step: Step) -> Callable[..., Any]:
    """The task's function: ``run_step`` on the step's inputs (keyword arguments named by
    the steps they come from, merged into the task context)."""

    def call(**context: Any) -> Any:
        args = [_listed(context[name]) if name in MAPPED else context[name] for name in step.inputs]
        if not step.inputs:  # the root plans the run from the form and the run's id
            end = context.get("data_interval_end") or context["dag_run"].run_after
            params = dict(context["params"])
            return run_step(step.name, params, run_key=context["run_id"], interval_end=end)
        out = run_step(step.name, *args)
        if step.name in ASSETS:  # the run key is the run id (plan_run)
            context["outlet_events"][ASSETS[step.name]].extra = {
                "run_key": context["run_id"],
                **out,
            }
        return out

    call.__name__ = call.__qualname__ = step.name
    return call


def _task(step: Step) -> Any:
    """The Airflow task of ``step``, with the properties its row declares."""
    outlets = [ASSETS[step.name]] if step.name in ASSETS else []
    maker: Any = task.short_circuit if step.stops_run else task
    made = maker(
        _callable(step), task_id=step.name, outlets=outlets, trigger_rule=step.trigger_rule
    )
    if step.run_if is not None:
        field = step.run_if
        made = task.run_if(
            lambda context: bool(context["params"][field]), skip_message=step.skip_message
        )(made)
    return made


@dag(
    dag_id=RETRAIN_DAG,
    schedule=SCHEDULE,
    start_date=DAG_START,
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
        "execution_timeout": timedelta(seconds=SETTINGS.task_timeout_s),
    },
    params={f.name: Param(f.default_for(SETTINGS), **f.schema()) for f in RETRAIN_FORM},
)
def bandit_retrain() -> None:
    """One task per row of ``RETRAIN_STEPS``, called on the outputs of the steps it names."""
    out: dict[str, Any] = {}
    for step in RETRAIN_STEPS:
        made = _task(step)
        kwargs = {name: out[name] for name in step.inputs}
        if step.mapped is None:
            out[step.name] = made(**kwargs)
        else:
            fixed = {k: v for k, v in kwargs.items() if k != step.mapped}
            out[step.name] = made.partial(**fixed).expand(**{step.mapped: kwargs[step.mapped]})
        for name in step.after:
            out[name] >> out[step.name]


bandit_retrain()
