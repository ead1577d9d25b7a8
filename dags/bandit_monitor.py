"""
### bandit_monitor — hourly health checks of the decision loop

`build_report` reads the last week of the event store (and the week before) and writes
`report.json` and `report.png` under `<runs dir>/monitor/<run id>/`: reward mean / p5 /
p95 week over week, feature drift (PSI or KL) against the production model's training
window, selection entropy, arm coverage, propensity-floor violations, fallback rate,
feature–reward correlations, and the served latency (p50/p99 of the decision endpoints,
read from the service's Prometheus `/metrics` at `BANDITOPS_SERVICE_URL`, over the
requests since the previous run; skipped when no URL is set) (`monitoring.monitor`).

One `check_<name>` task per check fails, with the numbers in its message, when that check
is in alert; `notify` posts the alerts to `BANDITOPS_ALERT_WEBHOOK_URL` when it is set.
Thresholds come from `BANDITOPS_*` (`training.settings.PipelineSettings`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import dag, task

from monitoring.settings import CHECKS
from training.settings import PipelineSettings

SETTINGS = PipelineSettings()


@task
def build_report(
    *, run_id: Any = None, data_interval_end: Any = None, dag_run: Any = None
) -> dict[str, Any]:
    from monitoring import monitor

    return monitor.build_report(data_interval_end or dag_run.run_after, run_key=run_id)


@task
def notify(report: dict[str, Any]) -> dict[str, Any]:
    from monitoring import monitor

    return monitor.notify(report["report"])


@task
def check(report: dict[str, Any], name: str) -> dict[str, str]:
    from monitoring import monitor

    return monitor.check(report["report"], name)


@dag(
    dag_id="bandit_monitor",
    schedule=SETTINGS.monitor_schedule,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=50),
    tags=["banditops", "monitoring"],
    doc_md=__doc__,
    default_args={"owner": SETTINGS.owner, "retries": 0},
)
def bandit_monitor() -> None:
    report = build_report()
    notify(report)
    for name in CHECKS:
        check.override(task_id=f"check_{name}")(report, name)


bandit_monitor()
