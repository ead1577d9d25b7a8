"""
### bandit_monitor — hourly health checks of the decision loop, and the drift trigger

`build_report` reads the last week of the event store (and the week before) and writes
`report.json` and `report.png` under `<runs dir>/monitor/<run id>/`: reward mean / p5 /
p95 week over week, feature drift (PSI or KL) against the production model's training
window, selection entropy, arm coverage, propensity-floor violations, fallback rate, the
explored share of the model's decisions, model errors (fallbacks by cause, from the
service's `/metrics` counters), decisions per segment (hashed user groups or a categorical
context feature), feature–reward correlations, and the served latency (p50/p99 of the
decision endpoints, read from the service's Prometheus `/metrics` at
`BANDITOPS_SERVICE_URL`, over the requests since the previous run; skipped when no URL is
set) (`monitoring.monitor`).

`signal_drift` updates the asset `banditops_feature_drift` (`x-banditops://drift/<model>`)
when a feature's drift reaches `BANDITOPS_RETRAIN_DRIFT_MIN`, at most once per
`BANDITOPS_RETRAIN_DRIFT_COOLDOWN_H`; `bandit_retrain` is scheduled on that asset as well
as on its nightly cron, so the event queues a retrain. With no drift the task is skipped
and no event is emitted.

One `check_<name>` task per check fails, with the numbers in its message, when that check
is in alert; `notify` posts the alerts to `BANDITOPS_ALERT_WEBHOOK_URL` when it is set.
Thresholds come from `BANDITOPS_*` (`monitoring.settings.MonitorSettings`; the schedule
from `training.settings.PipelineSettings`).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, dag, task

from eventstore.contract import MONITOR_DAG
from eventstore.workspace import refuse_run_conf
from monitoring.settings import CHECKS, DRIFT_ASSET_NAME, DRIFT_ASSET_URI
from training.settings import DAG_START, dag_settings, run_timeout

# what this file reads of the settings as it is parsed (a bad one: its import error)
SETTINGS = dag_settings(MONITOR_DAG, "monitor_schedule", "owner")
DRIFT_ASSET = Asset(
    uri=DRIFT_ASSET_URI.format(model_name=SETTINGS.model_name), name=DRIFT_ASSET_NAME
)


@task
def build_report(
    *, run_id: Any = None, data_interval_end: Any = None, dag_run: Any = None
) -> dict[str, Any]:
    from monitoring import monitor

    refuse_run_conf(MONITOR_DAG, dag_run.conf)
    return monitor.build_report(data_interval_end or dag_run.run_after, run_key=run_id)


@task(outlets=[DRIFT_ASSET])
def signal_drift(report: dict[str, Any], *, outlet_events: Any = None) -> dict[str, Any]:
    """Emit the drift asset event (its ``extra``: the drifted features and scores), or skip
    (no event) when nothing drifted enough or the cooldown holds."""
    from airflow.sdk.exceptions import AirflowSkipException

    from monitoring import monitor

    decision = monitor.drift_trigger(report["report"])
    if not decision["emit"]:
        raise AirflowSkipException(decision["reason"])
    outlet_events[DRIFT_ASSET].extra = {k: v for k, v in decision.items() if k != "emit"}
    return decision


@task
def notify(report: dict[str, Any]) -> dict[str, Any]:
    from monitoring import monitor

    return monitor.notify(report["report"])


@task
def check(report: dict[str, Any], name: str) -> dict[str, str]:
    from monitoring import monitor

    return monitor.check(report["report"], name)


@dag(
    dag_id=MONITOR_DAG,
    schedule=SETTINGS.monitor_schedule,
    start_date=DAG_START,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=run_timeout(SETTINGS.monitor_schedule),
    tags=["banditops", "monitoring"],
    doc_md=__doc__,
    default_args={"owner": SETTINGS.owner, "retries": 0},
)
def bandit_monitor() -> None:
    report = build_report()
    signal_drift(report)
    notify(report)
    for name in CHECKS:
        check.override(task_id=f"check_{name}")(report, name)


bandit_monitor()
