"""
### bandit_rollout — one step of the staged rollout controller

Every `BANDITOPS_ROLLOUT_SCHEDULE` `step` runs `training.rollout.rollout_step`: a new
`@staging` version (the retrain's gate) starts a rollout at the first of
`BANDITOPS_ROLLOUT_STAGES` (shares of the users, sticky by hashed user); a running one
reads the online reward per traffic arm from the event store and runs the always-valid
sequential test, then advances (the candidate is better and the stage ran its minimum
time and sample), holds, rolls back (worse than production
by more than `BANDITOPS_ROLLOUT_MARGIN`: `@staging` removed), promotes (at 100 %:
`@production` moves to the candidate) or expires (undecided after
`BANDITOPS_ROLLOUT_MAX_DURATION_S`). Every service replica reads the new share at its
next model poll. Each decision is a row of the event store's `rollout_steps` and the
version's `rollout_*` tags; the task returns it.

A person skips a rollout by promoting its version with `bandit_promote`, or stops it with
`bandit_rollout_stop` (or `banditops rollout stop`).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import dag, task

from eventstore.contract import ROLLOUT_DAG
from eventstore.workspace import refuse_run_conf
from training.settings import DAG_START, dag_settings, run_timeout

# what this file reads of the settings as it is parsed (a bad one: its import error)
SETTINGS = dag_settings(ROLLOUT_DAG, "owner", "rollout_schedule")


@task
def step(*, dag_run: Any = None) -> dict[str, Any]:
    from training.rollout import rollout_step

    refuse_run_conf(ROLLOUT_DAG, dag_run.conf)
    return rollout_step().summary()


@dag(
    dag_id=ROLLOUT_DAG,
    schedule=SETTINGS.rollout_schedule,
    start_date=DAG_START,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=run_timeout(SETTINGS.rollout_schedule),
    tags=["banditops", "registry", "rollout"],
    doc_md=__doc__,
    default_args={"owner": SETTINGS.owner, "retries": 0},
)
def bandit_rollout() -> None:
    step()


bandit_rollout()
