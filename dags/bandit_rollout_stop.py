"""
### bandit_rollout_stop — stop the running staged rollout now

Trigger it (the Bandits page's *Stop the rollout*, Airflow's UI or its REST API), with
the `version` whose rollout you saw running (empty: whichever runs) and a `reason`: `stop`
records the stop in the rollout's audit, signed by the user who triggered the run, and
every service replica stops routing users to the candidate at its next model poll.
`@staging` stays on the version, so a person may still promote it with `bandit_promote`.

No approval is waited for: a stop only sends the candidate's users back to production.
Who may stop is who may trigger this DAG (Airflow's permissions on it). The DAG is its
own queue, so a stop never waits behind a promotion's pending approval.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param, dag, task

from eventstore.contract import STOP_DAG
from training.promotion import TASK_TIMEOUT, version_param
from training.settings import DAG_START, dag_settings

# what this file reads of the settings as it is parsed (a bad one: its import error)
SETTINGS = dag_settings(STOP_DAG, "owner")


@task(execution_timeout=TASK_TIMEOUT)
def stop(*, params: Any = None, dag_run: Any = None) -> dict[str, Any]:
    from modelregistry.registry import client_defaults
    from training import promotion

    client_defaults()  # seconds, not MLflow's minutes, for a registry that is down
    return promotion.stop_rollout(
        params["version"],
        params["reason"],
        triggered_by=getattr(dag_run, "triggering_user_name", None),
    )


@dag(
    dag_id=STOP_DAG,
    schedule=None,
    start_date=DAG_START,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=3 * TASK_TIMEOUT,  # the task and as much again for the scheduler
    tags=["banditops", "registry", "rollout"],
    doc_md=__doc__,
    default_args={"owner": SETTINGS.owner, "retries": 0},
    params={
        "version": Param(
            "", **version_param("The version whose rollout to stop (empty: the running one).")
        ),
        "reason": Param("", type="string", description="Why (kept in the rollout's audit)."),
    },
)
def bandit_rollout_stop() -> None:
    stop()


bandit_rollout_stop()
