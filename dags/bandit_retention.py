"""
### bandit_retention — nightly pruning of the event store and the runs folder

`prune` deletes decisions (with their rewards) and superseded head snapshots older than
`BANDITOPS_RETENTION_DAYS` (the function behind `banditops store prune`), at
`BANDITOPS_RETENTION_SCHEDULE` (nightly). The cutoff never passes the start of what still
reads the store: the replay window of each `bandit_retrain` run that is running or queued
(from its run spec, asked of Airflow by run id; a queued run not planned yet holds the
whole store back until it is), the running rollout's start and, for each version
that still serves, the rewards its head learnt after its newest snapshot
(`eventstore.retention`); ended rollouts go too, except the latest and those of a version
an alias holds, and the catalog's item versions superseded before its horizon. Then it
deletes the folders of retrain runs and the monitor's reports under the runs folder last
written more than `BANDITOPS_RUNS_RETENTION_DAYS` ago, never a running or queued
retrain's (`training.run_folders`). Its return value (XCom) names the
cutoff, what held it back, the rows deleted per table and the folders deleted.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import dag, task

from eventstore.contract import RETENTION_DAG, RETRAIN_DAG
from eventstore.workspace import refuse_run_conf
from training.dag_retry import NO_RETRY_ON_BAD_INPUT
from training.settings import DAG_START, dag_settings, run_timeout

# what this file reads of the settings as it is parsed (a bad one: its import error)
SETTINGS = dag_settings(
    RETENTION_DAG,
    "owner",
    "retention_days",
    "retention_schedule",
    "runs_path",
    "runs_retention_days",
    "store_url",
    "tracking_uri",
    "registry_uri",
)
RETRAIN = RETRAIN_DAG
ACTIVE = ["running", "queued"]
#: Protects every row: a queued retrain whose window is not fixed yet.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@task
def prune(*, ti: Any = None, dag_run: Any = None) -> dict[str, Any]:
    from eventstore.retention import apply_retention
    from modelregistry.registry import AliasReader
    from training.run_folders import prune_run_folders
    from training.runspec import active_windows

    refuse_run_conf(RETENTION_DAG, dag_run.conf)

    total = ti.get_dr_count(dag_id=RETRAIN, states=ACTIVE)
    protected: dict[str, datetime] = {}
    found: dict[str, datetime] = {}
    if total:
        found = active_windows(
            SETTINGS.runs_path,
            lambda key: ti.get_dr_count(dag_id=RETRAIN, run_ids=[key], states=ACTIVE) > 0,
            expected=total,
        )
        protected = {f"{RETRAIN} run {key}": start for key, start in found.items()}
        if len(found) < total:
            protected[f"{total - len(found)} {RETRAIN} runs queued, window not planned yet"] = EPOCH
    registry = AliasReader(
        SETTINGS.tracking_uri, SETTINGS.model_name, registry_uri=SETTINGS.registry_uri
    )
    result = apply_retention(
        SETTINGS.store_url,
        SETTINGS.model_name,
        SETTINGS.retention_days,
        protected,
        window_stop=registry.window_stop,
        served=registry.served_labels((SETTINGS.production_alias, SETTINGS.candidate_alias)),
        now=dag_run.run_after,
    )
    result["runs_folder"] = prune_run_folders(
        SETTINGS.runs_path,
        dag_run.run_after - timedelta(days=SETTINGS.runs_retention_days),
        active=found,
    )
    return result


@dag(
    dag_id=RETENTION_DAG,
    schedule=SETTINGS.retention_schedule,
    start_date=DAG_START,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=run_timeout(SETTINGS.retention_schedule, longest=timedelta(hours=2)),
    tags=["banditops", "maintenance"],
    doc_md=__doc__,
    default_args={
        "owner": SETTINGS.owner,
        "retries": 1,
        "retry_delay": timedelta(minutes=5),
        "retry_policy": NO_RETRY_ON_BAD_INPUT,
    },
)
def bandit_retention() -> None:
    prune()


bandit_retention()
