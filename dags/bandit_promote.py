"""
### bandit_promote — move a registry alias after a human approves

Trigger it with `version` (and `target`, default the production alias,
`BANDITOPS_PRODUCTION_ALIAS`), or with `rollback` to move `target` back to the version it
held before the current one. Promoting the version of a running rollout to production
skips the rest of the rollout (recorded as its `promote`); `bandit_rollout_stop` stops
one, at once.

`gate_report` shows what would change and the version's gate report (decision, reasons,
OPE numbers) → `approve` waits for a person (Airflow's Human-in-the-loop
`ApprovalOperator`: Required Actions in the UI, or the HITL REST API; "Reject", or no
answer within the timeout, skips the move; only `BANDITOPS_PROMOTE_APPROVERS` may answer
when set, and with `BANDITOPS_PROMOTE_FOUR_EYES` never the user who triggered the run) →
`move_alias` moves the alias, recording the approver and their comment in the registry's
alias history. The alias must still be where it was when the report was made, else
nothing moves.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param, dag, task

from eventstore.contract import PROMOTE_DAG
from training.promotion import TASK_TIMEOUT, targets, version_param
from training.settings import DAG_START, dag_settings

# what this file reads of the settings as it is parsed (a bad one: its import error)
SETTINGS = dag_settings(PROMOTE_DAG, "approval_timeout_h", "owner", "promote_approvers")


@task(execution_timeout=TASK_TIMEOUT)
def gate_report(*, params: Any = None, dag_run: Any = None) -> dict[str, Any]:
    from modelregistry.registry import client_defaults
    from training import promotion

    client_defaults()  # seconds, not MLflow's minutes, for a registry that is down

    # before anyone is asked: a run no approval could carry out fails now
    from training.settings import PipelineSettings

    user = getattr(dag_run, "triggering_user_name", None)
    promotion.check_approvable(user, PipelineSettings())  # the settings as the run starts
    promotion.refuse_stop_conf(dag_run.conf)
    return promotion.plan_promotion(
        params["version"],
        params["target"],
        params["rollback"],
    )


@task(execution_timeout=TASK_TIMEOUT)
def move_alias(
    plan: dict[str, Any], approval: dict[str, Any], *, dag_run: Any = None
) -> dict[str, Any]:
    from modelregistry.registry import client_defaults
    from training import promotion

    client_defaults()

    return promotion.apply_promotion(
        plan, approval, triggered_by=getattr(dag_run, "triggering_user_name", None)
    )


@dag(
    dag_id=PROMOTE_DAG,
    schedule=None,
    start_date=DAG_START,
    catchup=False,
    max_active_runs=1,
    # the approval's wait, the two registry tasks and as much again for the scheduler's
    # delays: a run never holds the queue longer
    dagrun_timeout=timedelta(hours=SETTINGS.approval_timeout_h) + 3 * TASK_TIMEOUT,
    tags=["banditops", "registry"],
    doc_md=__doc__,
    default_args={"owner": SETTINGS.owner, "retries": 0},
    params={
        "version": Param(
            "", **version_param("Registered version to promote (empty with rollback).")
        ),
        "target": Param(
            SETTINGS.production_alias,
            type="string",
            enum=list(targets(SETTINGS)),
            description="Alias to move.",
        ),
        "rollback": Param(
            False,
            type="boolean",
            description="Move the alias back to the version it held before the current one.",
        ),
    },
)
def bandit_promote() -> None:
    plan = gate_report()
    approval = ApprovalOperator(
        task_id="approve",
        subject="{{ ti.xcom_pull(task_ids='gate_report')['subject'] }}",
        body="{{ ti.xcom_pull(task_ids='gate_report')['body'] }}",
        defaults="Reject",
        assigned_users=[{"id": u, "name": u} for u in SETTINGS.promote_approvers] or None,
        response_timeout=timedelta(hours=SETTINGS.approval_timeout_h),
        params={"comment": Param("", type="string", description="Why (kept in the registry).")},
    )
    plan >> approval
    move_alias(plan, approval.output)


bandit_promote()
