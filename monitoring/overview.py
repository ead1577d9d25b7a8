"""Everything the operator's "Bandits" page shows about one model, as one JSON-ready dict.

* **versions** — the newest registered versions and every older one that holds an alias
  (:data:`~modelregistry.registry.LISTED_VERSIONS`; and how many were left out), newest
  first, each with its aliases, its gate decision and reasons (version tags written by the
  gate), its off-policy estimates with their intervals (the
  ``ope.candidate.<estimator>.{value,ci_low,ci_high}`` metrics of its training run) and
  the reward it then achieved online (decisions logged with its ``model_version`` and
  their rewards, :func:`monitoring.online.online_outcomes`);
* **alias history** — the registry's recorded alias moves, newest first;
* **rollout** — the staged rollout's stage, share and status, both arms' online reward,
  its steps with the sequential test's interval (:func:`rollout_section`, from
  :mod:`eventstore.rollouts`);
* **monitor** — the latest ``bandit_monitor`` report: every check's status, message and
  headline value, and the alerts;
* **latency** — the served latency of the decision endpoints: p50/p99 of each kept monitor
  report (a history) and, when ``service_url`` is set, a live scrape of the service's
  ``/metrics`` (since the service started);
* **fallback** — the share of decisions served by the fallback policy per day.

Each section is read independently: a section whose source cannot be read (no registry
yet, the service down) says why in its ``error`` instead of failing the page.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from eventstore.contract import DECISION_ENDPOINTS, gate_reasons, gate_verdict
from eventstore.engine import make_engine
from eventstore.rollouts import (
    Rollout,
    RolloutStep,
    current_rollout,
    latest_rollout,
    rollout_history,
    traffic_outcomes,
)
from eventstore.settings import env_name
from eventstore.text import redact_credentials
from eventstore.workspace import MONITOR_FOLDER, MONITOR_REPORTS_SHOWN
from modelregistry.registry import LISTED_VERSIONS, ModelRegistry, VersionInfo
from monitoring import served_latency as sl
from monitoring.monitor import REPORT_FILE
from monitoring.online import (
    FALLBACK,
    LifetimeOutcomes,
    RewardRules,
    fallback_by_day,
    online_outcomes,
)
from monitoring.settings import MonitorSettings

#: Where ``bandit_monitor`` keeps its runs (``<runs dir>/monitor/<run>/report.json``).
#: Monitor reports read for the latency history.
LATENCY_HISTORY = MONITOR_REPORTS_SHOWN
#: Alias moves shown.
HISTORY_ROWS = 20
#: Days of the fallback-share chart.
FALLBACK_DAYS = 7
#: Every version's online outcome so far, kept between views of the page.
LIFETIME = LifetimeOutcomes()
_OPE_METRIC = re.compile(r"^ope\.candidate\.([a-z0-9_]+)\.(value|ci_low|ci_high)$")


def collect(settings: MonitorSettings, now: datetime | None = None) -> dict[str, Any]:
    """The page's data for ``settings.model_name`` (see the module docstring)."""
    now = datetime.now(UTC) if now is None else now
    engine = make_engine(settings.store_url)
    try:
        out: dict[str, Any] = {
            "model_name": settings.model_name,
            "generated_at": now.isoformat(),
            "store": engine.dialect.name,
            "aliases": {
                "registered": settings.registered_alias,
                "staging": settings.candidate_alias,
                "production": settings.production_alias,
            },
        }
        registry = ModelRegistry.from_settings(settings)
        out["versions"] = _guarded(lambda: versions_section(registry, engine, settings, now))
        out["alias_history"] = _guarded(lambda: {"moves": _alias_history(registry)})
        out["rollout"] = _guarded(lambda: rollout_section(engine, settings, now))
        out["monitor"] = _guarded(lambda: monitor_section(settings))
        out["latency"] = _guarded(lambda: latency_section(settings))
        out["fallback"] = _guarded(
            lambda: {"days": fallback_by_day(engine, FALLBACK_DAYS, now=now)}
        )
    finally:
        engine.dispose()
    return out


def _guarded(read: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``read()``, or ``{"error": why}`` when its source cannot be read."""
    try:
        return read()
    except Exception as exc:  # a section's source being down must not blank the page
        return {"error": redact_credentials(f"{type(exc).__name__}: {exc}")}


# ---------------------------------------------------------------------- versions
def ope_estimates(metrics: dict[str, float]) -> dict[str, dict[str, float | None]]:
    """``{estimator: {"value", "ci_low", "ci_high"}}`` from a training run's metrics (None
    for a number that is not finite: MLflow keeps a NaN metric, and one made the page's
    JSON a 500 for as long as its version was listed; audit, stop 54)."""
    out: dict[str, dict[str, float | None]] = {}
    for key, value in metrics.items():
        match = _OPE_METRIC.match(key)
        if match:
            number = float(value)
            out.setdefault(match.group(1), {})[match.group(2)] = (
                number if math.isfinite(number) else None
            )
    return {name: out[name] for name in sorted(out) if "value" in out[name]}


def version_row(info: VersionInfo, online: dict[str, Any] | None) -> dict[str, Any]:
    reasons = gate_reasons(info.tags)
    return {
        "version": info.version,
        "label": info.label,
        "aliases": list(info.aliases),
        "run_id": info.run_id,
        "gate": {
            "passed": gate_verdict(info.tags),
            "reasons": [str(r) for r in reasons],
        },
        "ope": ope_estimates(info.metrics),
        "online": online,
        "promoted_at": info.tags.get("promoted_at"),
        "rolled_back_at": info.tags.get("rolled_back_at"),
    }


def versions_section(
    registry: ModelRegistry, engine: Engine, settings: MonitorSettings, now: datetime
) -> dict[str, Any]:
    """The newest :data:`~modelregistry.registry.LISTED_VERSIONS` versions and every older
    one that holds an alias (``rows``, newest first), how many older ones were left out
    (``omitted``), and the fallback's online outcome. A page view read every version's
    run: 2.5 s at a year of nightly versions on SQLite, several times that through a
    tracking server, of the 40 s the page has."""
    try:
        outcomes = LIFETIME.read(engine, RewardRules.of(settings), now=now)
        error = None
    except SQLAlchemyError as exc:  # a store not migrated yet: the versions still show
        outcomes, error = {}, f"the event store could not be read: {type(exc).__name__}"
    listing = registry.listing(LISTED_VERSIONS)
    rows = [
        version_row(info, outcomes[(info.label,)].to_dict() if (info.label,) in outcomes else None)
        for info in listing.versions
    ]
    fallback = outcomes.get((FALLBACK,))
    out = {
        "rows": rows,
        "omitted": listing.omitted,
        "omitted_note": listing.note,
        "fallback_online": None if fallback is None else fallback.to_dict(),
    }
    return out if error is None else {**out, "error": error}


def _alias_history(registry: ModelRegistry) -> list[dict[str, Any]]:
    try:
        moves = registry.alias_history()
    except Exception:  # no registered model yet: no history
        return []
    return list(reversed(moves))[:HISTORY_ROWS]


# ---------------------------------------------------------------------- rollout
def _step_row(step: RolloutStep) -> dict[str, Any]:
    row = {k: getattr(step, k) for k in RolloutStep.__dataclass_fields__}
    row["at"] = step.at.isoformat()
    return row


def rollout_section(engine: Engine, settings: MonitorSettings, now: datetime) -> dict[str, Any]:
    """The running rollout (else the latest one): its stage, share and status, the online
    outcome of both traffic arms since it started, pooled over its stages
    (:func:`eventstore.rollouts.traffic_outcomes`, for context: the controller compares
    within each stage and by user, and its steps carry what it read; for an ended
    rollout, as its last step read it), its
    steps with the sequential test's interval on the candidate − production difference as
    the controller computed it at each step, and, for context, the online reward by
    traffic arm and version over the monitored week."""
    since = now - timedelta(days=settings.monitor_lookback_days)
    week = online_outcomes(
        engine, RewardRules.of(settings), since=since, now=now, by=("traffic", "model_version")
    )
    out: dict[str, Any] = {
        "since": since.isoformat(),
        "arms": [
            {"traffic": traffic, "version": version, **mean.to_dict()}
            for (traffic, version), mean in sorted(week.items())
        ],
        "rollout": None,
        "outcomes": None,
        "steps": [],
    }
    try:
        shown = current_rollout(engine, settings.model_name) or latest_rollout(
            engine, settings.model_name
        )
    except SQLAlchemyError as exc:  # a store from before the rollouts tables
        return {
            **out,
            "error": f"the rollouts could not be read ({type(exc).__name__}); an event store "
            "made before the rollout tables needs its migrations (the service runs them at "
            "start-up).",
        }
    if shown is None:
        return out
    rollout = {k: getattr(shown, k) for k in Rollout.__dataclass_fields__}
    for key in ("started_at", "stage_started_at", "updated_at", "ends_by"):
        at = getattr(shown, key)
        rollout[key] = None if at is None else at.isoformat()
    # an ended rollout's outcome as its last step read it; a running one's as of now
    until = None if shown.running else shown.updated_at
    outcomes = traffic_outcomes(
        engine,
        shown.model_name,
        shown.version,
        shown.started_at,
        RewardRules.of(settings),
        until=until,
        now=now if until is None else min(now, until),
    )
    steps = rollout_history(engine, settings.model_name, HISTORY_ROWS, rollout_id=shown.id)
    out.update(
        rollout=rollout,
        outcomes={arm: outcome.to_dict() for arm, outcome in outcomes.items()},
        steps=[_step_row(step) for step in steps],
    )
    return out


# ---------------------------------------------------------------------- monitor
def monitor_reports(settings: MonitorSettings, limit: int) -> list[Path]:
    """The newest ``limit`` monitor reports, newest first."""
    folder = settings.runs_path / MONITOR_FOLDER
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob(f"*/{REPORT_FILE}") if p.is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)[:limit]


def check_value(report: dict[str, Any], name: str) -> float | None:
    """The headline number of a check in a monitor report (None when it has none)."""
    pick: dict[str, Callable[[dict[str, Any]], Any]] = {
        "reward_drift": lambda r: (r["reward"].get("change") or {}).get("mean"),
        "feature_drift": lambda r: max(r["feature_drift"]["scores"].values(), default=None),
        "selection_entropy": lambda r: r["selection_entropy"]["ratio"],
        "arm_coverage": lambda r: len(r["arm_coverage"]["starved"]),
        "propensity_floor": lambda r: r["propensity"]["violation_share"],
        "fallback_rate": lambda r: r["fallback"]["rate"],
        "served_latency": lambda r: r["served_latency"].get("p99_s"),
    }
    if name not in pick:
        return None
    try:
        value = pick[name](report)
    except (KeyError, TypeError, AttributeError):
        return None
    return None if value is None else float(value)


def monitor_section(settings: MonitorSettings) -> dict[str, Any]:
    reports = monitor_reports(settings, 1)
    if not reports:
        return {"report": None, "checks": [], "alerts": []}
    report = json.loads(reports[0].read_text())
    checks = [
        {
            "name": name,
            "status": str(result.get("status")),
            "message": str(result.get("message")),
            "value": check_value(report, name),
        }
        for name, result in report.get("checks", {}).items()
    ]
    return {
        "report": str(reports[0]),
        "window_end": report.get("window", {}).get("end"),
        "production_version": report.get("production_version"),
        "checks": checks,
        "alerts": [c["name"] for c in checks if c["status"] == "alert"],
    }


# ---------------------------------------------------------------------- latency
def latency_section(settings: MonitorSettings) -> dict[str, Any]:
    history = []
    for path in reversed(monitor_reports(settings, LATENCY_HISTORY)):
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        served = report.get("served_latency", {})
        history.append(
            {
                "window_end": report.get("window", {}).get("end"),
                "p50_s": served.get("p50_s"),
                "p99_s": served.get("p99_s"),
                "count": served.get("count"),
                "status": served.get("check", {}).get("status"),
            }
        )
    return {
        "limit_p99_s": settings.latency_p99_max_s,
        "history": history,
        "live": live_latency(settings.service_url),
    }


def live_latency(url: str | None, timeout_s: float = 3.0) -> dict[str, Any]:
    """p50/p99 of the decision endpoints since the service started, from its ``/metrics``."""
    if url is None:
        return {"error": f"{env_name('service_url')} is not set: no live reading of the service."}
    try:
        histograms = sl.scrape(url, timeout_s)
    except sl.ScrapeError as exc:
        return {"error": str(exc)}
    merged = sl.merge(histograms[e] for e in DECISION_ENDPOINTS if e in histograms)
    if merged is None or merged.count == 0:
        return {"service_url": url, "count": 0, "p50_s": None, "p99_s": None}
    return {
        "service_url": url,
        "count": merged.count,
        "p50_s": merged.quantile(0.5),
        "p99_s": merged.quantile(0.99),
    }
