"""
### bandit_retrain — the nightly retrain

`plan_run` → `extract_replay` → `validate_features` (Great Expectations; a failure stops
the run and nothing is registered) → `train_network` → `rebuild_head` → `evaluate_offline`
(IPS / SNIPS / DR with intervals, candidate vs production) → `register_candidate`
(MLflow version aliased `candidate`, at most one per run) → `gate` (moves `staging` when
the candidate passes; otherwise the rest of the run is skipped) → `promote` (moves
`production` only with `auto_promote`; otherwise the version waits for `bandit_promote`).

With `shards` > 1 (default `BANDITOPS_RETRAIN_SHARDS`) the head rebuild and the offline
evaluation are map-reduce rounds (`training.shards`): `plan_rebuild_shards` and
`plan_evaluation_shards` cut the replay window; `shard_statistics` (one mapped task per
training shard) encodes its rows with the frozen network and writes the additive head
statistics, `rebuild_head` sums them; `shard_evaluation` (one per held-out shard) writes
the mergeable OPE sums of candidate and production, `evaluate_offline` merges them
(normal-approximation intervals) and gates. With `shards` = 1 the mapped tasks expand to
nothing (skipped) and `rebuild_head` / `evaluate_offline` run the single-node steps.

`plan_run` fixes the run spec (`training.runspec`); every other task is one call of
`training.steps` or `training.shards`; they pass the run spec, paths and versions
through XCom. Outputs live in `<runs dir>/<run id>/`; a retried task overwrites its own.
Bad data or bad input (`ValueError`, the GX `DataValidationError`) fails at once without
retries. Settings come from `BANDITOPS_*` (`training.settings.PipelineSettings`).
"""

from __future__ import annotations

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

from training.settings import ALGORITHMS, PipelineSettings

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
D = SETTINGS.retrain_defaults()  # the workspace's form defaults (banditops.toml, env)


@task
def plan_run(
    *, params: Any = None, run_id: Any = None, data_interval_end: Any = None, dag_run: Any = None
) -> dict[str, Any]:
    from training import runspec

    end = data_interval_end or dag_run.run_after
    return runspec.plan(dict(params), run_key=run_id, interval_end=end)


@task(outlets=[REPLAY])
def extract_replay(spec: dict[str, Any], *, outlet_events: Any = None) -> dict[str, Any]:
    from training import steps

    replay = steps.extract(spec)
    outlet_events[REPLAY].extra = {"run_key": spec["run_key"], **replay}
    return replay


@task
def validate_features(spec: dict[str, Any], replay: dict[str, Any]) -> dict[str, Any]:
    from training import steps

    return steps.validate(spec, replay)


@task
def train_network(spec: dict[str, Any], replay: dict[str, Any]) -> dict[str, Any]:
    from training import steps

    return steps.train_network(spec, replay)


@task
def plan_rebuild_shards(
    spec: dict[str, Any], replay: dict[str, Any], trained: dict[str, Any]
) -> list[dict[str, Any]]:
    from training import shards

    return shards.plan(spec, replay, "train", trained)


@task
def plan_evaluation_shards(
    spec: dict[str, Any], replay: dict[str, Any], trained: dict[str, Any]
) -> list[dict[str, Any]]:
    from training import shards

    return shards.plan(spec, replay, "holdout", trained)


@task
def shard_statistics(shard: dict[str, Any], trained: dict[str, Any]) -> dict[str, Any]:
    from training import shards

    return shards.shard_statistics(shard, trained["state_path"])


@task
def shard_evaluation(shard: dict[str, Any], rebuilt: dict[str, Any]) -> dict[str, Any]:
    from training import shards

    return shards.shard_evaluation(shard, rebuilt["state_path"], rebuilt["reward_model"])


def _listed(parts: Any) -> list[dict[str, Any]]:
    """The mapped outputs as a list (by index: iterating probes past the end)."""
    return [parts[i] for i in range(len(parts))]


@task(trigger_rule="none_failed")  # runs when the mapped shards expanded to nothing
def rebuild_head(
    spec: dict[str, Any], trained: dict[str, Any], replay: dict[str, Any], parts: Any
) -> dict[str, Any]:
    from training import steps

    return steps.rebuild(spec, trained, replay, _listed(parts))


@task(trigger_rule="none_failed")
def evaluate_offline(
    spec: dict[str, Any], rebuilt: dict[str, Any], replay: dict[str, Any], parts: Any
) -> dict[str, Any]:
    from training import steps

    return steps.evaluate_offline(spec, rebuilt, replay, _listed(parts))


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
    from training import steps

    registered = steps.register_candidate(spec, replay, validated, trained, rebuilt, evaluated)
    outlet_events[MODEL].extra = registered
    return registered


@task.short_circuit
def gate(spec: dict[str, Any], registered: dict[str, Any], evaluated: dict[str, Any]) -> bool:
    from training import steps

    return steps.gate(spec, registered, evaluated)


@task.run_if(
    lambda context: bool(context["params"]["auto_promote"]),
    skip_message="auto_promote is off: the version waits for bandit_promote.",
)
@task
def promote(spec: dict[str, Any], registered: dict[str, Any]) -> dict[str, Any]:
    from training import steps

    return steps.promote(spec, registered)


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
    params={
        "window_days": Param(
            D["window_days"],
            type="number",
            exclusiveMinimum=0,
            description="Replay window: this many days back from the run's data interval end.",
        ),
        "window_start": Param(
            D["window_start"],
            type=["null", "string"],
            format="date",
            description="Explicit window start (UTC date, inclusive); needs window_end.",
        ),
        "window_end": Param(
            D["window_end"],
            type=["null", "string"],
            format="date",
            description="Explicit window end (UTC date, exclusive); needs window_start.",
        ),
        "min_rows": Param(
            D["min_rows"],
            type="integer",
            minimum=1,
            description="Fewest replay rows the data validation accepts.",
        ),
        "algorithm": Param(
            D["algorithm"], type="string", enum=list(ALGORITHMS), description="Policy to train."
        ),
        "policy_options": Param(
            D["policy_options"], type="object", description='Policy options, e.g. {"alpha": 0.5}.'
        ),
        "epochs": Param(
            D["epochs"],
            type="integer",
            minimum=1,
            description="Training epochs of neural policies.",
        ),
        "seed": Param(
            D["seed"],
            type="integer",
            minimum=0,
            description="Seed of training and of the bootstrap.",
        ),
        "tolerance": Param(
            D["tolerance"],
            type="number",
            minimum=0,
            exclusiveMaximum=1,
            description="Allowed relative shortfall of the candidate's DR "
            "lower bound below production.",
        ),
        "min_ess": Param(
            D["min_ess"],
            type="number",
            minimum=0,
            description="Smallest effective sample size the gate accepts.",
        ),
        "n_resamples": Param(
            D["n_resamples"],
            type="integer",
            minimum=50,
            description="Bootstrap resamples of the offline evaluation.",
        ),
        "auto_promote": Param(
            D["auto_promote"],
            type="boolean",
            description="Move production to the version when its gate passes.",
        ),
        "shards": Param(
            SETTINGS.retrain_shards,
            type="integer",
            minimum=1,
            description="Shards of the map-reduce head rebuild and offline evaluation "
            "(1: single node).",
        ),
    },
)
def bandit_retrain() -> None:
    spec = plan_run()
    replay = extract_replay(spec)
    validated = validate_features(spec, replay)
    trained = train_network(spec, replay)
    validated >> trained
    rebuild_shards = plan_rebuild_shards(spec, replay, trained)
    evaluation_shards = plan_evaluation_shards(spec, replay, trained)
    statistics = shard_statistics.partial(trained=trained).expand(shard=rebuild_shards)
    rebuilt = rebuild_head(spec, trained, replay, statistics)
    sums = shard_evaluation.partial(rebuilt=rebuilt).expand(shard=evaluation_shards)
    evaluated = evaluate_offline(spec, rebuilt, replay, sums)
    registered = register_candidate(spec, replay, validated, trained, rebuilt, evaluated)
    gate(spec, registered, evaluated) >> promote(spec, registered)


bandit_retrain()
