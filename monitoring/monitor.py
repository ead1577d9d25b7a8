"""Health of the decision loop over the event store: the numbers behind ``bandit_monitor``.

One report covers the week before ``end`` (``monitor_lookback_days``) and compares it with
the week before that:

* **reward drift** — mean, p5 and p95 of the decisions' outcome (the replay's ``outcome``:
  the reward, a slate's mean over its shown positions — what the rollout controller
  counts), this week against last week; the change is relative to last week's value
  (relative to the reward range when that value is 0). Reward weeks end
  ``reward_window_s`` before ``end``: only decisions whose reward window has closed
  count, so a re-run of the same hour gives the same numbers; under
  ``missing_reward="drop"`` only the rewarded ones, while every other check counts every
  decision;
* **feature drift** — PSI (or KL) of every context component and of every component of
  the chosen arm's features against the histograms of the production model's training
  window (logged with its registered version by ``training.steps.validate``), via
  :func:`validation.expectations.drift_score`;
* **selection entropy** — entropy of the chosen arms' frequencies divided by that of a
  uniform choice among each decision's candidates (the arm coverage's uniform shares);
* **arm coverage** — per arm, choices against its uniform share ``Σ_t 1[a ∈ C_t] / |C_t|``
  (the choices a uniform policy would have made); arms whose uniform share is below
  ``1 / coverage_min_ratio`` decisions are listed but not judged (too few to tell);
* **propensity floor** — share of decisions logged with a propensity below the floor (the
  inverse-propensity weights off-policy evaluation needs explode there);
* **fallback rate** — share of decisions served by the fallback policy;
* **explored share** — share of the model's decisions (fallback aside, and decisions
  among fewer than two candidates, which cannot explore) that explored: the
  chosen arm is not the one with the highest posterior mean (the ``explored`` flag every
  decision is logged with); the share logged with a propensity below 1 is reported too;
* **model errors** — fallbacks by cause, from the service's ``/metrics`` counters over the
  requests since the previous scrape (the decision row records *that* the fallback
  decided, the service counts *why*): the model raised or returned non-finite scores
  (``banditops_model_errors``), it missed the decision deadline
  (``banditops_deadline_fallbacks``), or no model was served (the rest of the fallback
  decisions); judged on the share of decisions the model failed (error or deadline);
* **segment coverage** — decisions per segment (hashed user groups, or the values of a
  categorical context feature ``segment_feature``) with the explored and fallback share
  and the arms chosen in each; a segment below ``segment_min_decisions`` is in alert;
* **feature–reward correlation** — Pearson correlation of each feature with the outcome,
  both weeks (reported, not judged).

* **served latency** — p50 and p99 of the decision endpoints' request latency, read from
  the service's Prometheus ``/metrics`` (``BANDITOPS_SERVICE_URL``; the event store holds
  no latency), over the requests served since the previous monitor run's scrape
  (:mod:`monitoring.served_latency`); skipped, with the reason, when no URL is set. One
  slow request among a few is too few to tell: the requests slower than the limit must
  be more than a p99 at the limit leaves (1 %) beyond chance.

Each judged quantity is a *check* (:data:`CHECKS`) with a status ``ok``, ``alert`` or
``skipped`` (not enough data, or no production model yet) and a message. A figure beyond
its limit is an alert only when chance alone would rarely put it there with the week's
number of decisions (``monitor_alpha``, :mod:`monitoring.evidence`): one decision that did
not explore, or three rows far from the reference histogram, are too few to tell, and the
check says so (skipped, with the figures). The DAG fails
one task per check in alert (:func:`check` raises :class:`MonitorAlert`) and posts the
alerts to a webhook (:func:`notify`). The pure computations take arrays.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bandit_core.user_groups import group_key, user_group_key
from eventstore.contract import DECISION_ENDPOINTS, DECISIONS, MONITOR_DAG
from eventstore.engine import make_engine
from eventstore.replay import dimensions, of_dimensions, read_replay
from eventstore.text import redact_credentials, webhook_shown
from eventstore.workspace import (
    MONITOR_FOLDER,
    MONITOR_REPORT_FILE,
    as_utc,
    run_folder,
    within_range,
)
from modelregistry.registry import FeatureReferenceError, ModelRegistry
from monitoring import evidence
from monitoring import served_latency as sl
from monitoring.plots import plot_monitor_report
from monitoring.settings import CHECKS, MAX_SEGMENTS, MonitorSettings
from validation.expectations import STORE_COLUMNS, ReplaySuiteConfig, drift_score, feature_frame

log = logging.getLogger(__name__)

REPORT_FILE = MONITOR_REPORT_FILE
FIGURE_FILE = "report.png"
#: The last ``/metrics`` scrape, kept under ``<runs dir>/monitor/``: the next run's baseline.
LATENCY_STATE_FILE = "latency_scrape.json"
#: The last scrape of the fallback counters, kept beside it.
FAULTS_STATE_FILE = "faults_scrape.json"
#: When the monitor last updated the drift asset (``retrain_drift_cooldown_h``).
DRIFT_STATE_FILE = "drift_trigger.json"


class MonitorAlert(RuntimeError):
    """A monitoring check in alert; the message says which quantity, its value and limit."""


# ---------------------------------------------------------------------- pure numbers
def reward_stats(rewards: NDArray[np.float64]) -> dict[str, float] | None:
    """``n``, ``mean``, ``p5``, ``p95`` of ``rewards`` (n,); None when empty."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.size == 0:
        return None
    p5, p95 = np.quantile(r, [0.05, 0.95])
    return {"n": float(r.size), "mean": float(r.mean()), "p5": float(p5), "p95": float(p95)}


def relative_change(current: float, previous: float, scale: float) -> float:
    """``|current − previous| / |previous|``, or ``/ scale`` when ``previous`` is 0."""
    if not scale > 0:
        raise ValueError(f"scale must be > 0; got {scale!r}.")
    base = abs(previous) if abs(previous) > 1e-12 * scale else scale
    return abs(current - previous) / base


def selection_entropy(
    arm_ids: Sequence[str], candidate_ids: Sequence[Sequence[str]]
) -> tuple[float, float]:
    """``(H, H_max)``: entropy (nats) of the chosen arms' frequencies, and that of a
    uniform choice among each decision's candidates (``u(a) = mean_t 1[a ∈ C_t] / |C_t|``,
    the arm coverage's uniform share): what a policy that explores everything offered
    reaches on the same offers. (``ln`` of the number of arms ever offered, the bound
    before, let one request with 1,000 fresh ids halve the ratio, and requests of one
    candidate lift it.)"""
    if len(arm_ids) == 0:
        return 0.0, 0.0
    counts = np.array(list(Counter(arm_ids).values()), dtype=np.float64)
    p = counts / counts.sum()
    u = np.array(list(uniform_shares(candidate_ids).values()), dtype=np.float64)
    u = u[u > 0] / u.sum() if u.size else u
    # + 0.0: one arm chosen throughout is −0.0, which the alert printed as "-0.000 nats"
    return float(-(p * np.log(p)).sum()) + 0.0, float(-(u * np.log(u)).sum()) + 0.0


def uniform_shares(candidate_ids: Sequence[Sequence[str]]) -> defaultdict[str, float]:
    """Per arm offered, the choices a uniform policy would have made: ``Σ_t 1[a ∈ C_t] /
    |C_t|``."""
    share: defaultdict[str, float] = defaultdict(float)
    for ids in candidate_ids:
        for arm in ids:
            share[arm] += 1.0 / len(ids)
    return share


def arm_coverage(
    arm_ids: Sequence[str], candidate_ids: Sequence[Sequence[str]]
) -> list[dict[str, Any]]:
    """Per arm offered: ``chosen`` (count) and ``uniform_share`` (``Σ_t 1[a ∈ C_t]/|C_t|``),
    sorted by arm id."""
    share = uniform_shares(candidate_ids)
    chosen = Counter(arm_ids)
    return [
        {"arm": arm, "chosen": int(chosen.get(arm, 0)), "uniform_share": float(share[arm])}
        for arm in sorted(share)
    ]


def correlations(features: NDArray[np.float64], rewards: NDArray[np.float64]) -> list[float | None]:
    """Pearson correlation of each column of ``features`` (n, d) with ``rewards`` (n,);
    None where either side is constant or fewer than 3 rows."""
    x = np.asarray(features, dtype=np.float64)
    r = np.asarray(rewards, dtype=np.float64)
    out: list[float | None] = []
    for j in range(x.shape[1]):
        col = x[:, j]
        keep = np.isfinite(col)
        if keep.sum() < 3 or np.std(col[keep]) == 0 or np.std(r[keep]) == 0:
            out.append(None)
        else:
            out.append(float(np.corrcoef(col[keep], r[keep])[0, 1]))
    return out


# ---------------------------------------------------------------------- the report
def build_report(
    end: datetime, run_key: str, settings: MonitorSettings | None = None
) -> dict[str, Any]:
    """Compute the report of the week before ``end``; write ``report.json`` and
    ``report.png`` under ``<runs dir>/monitor/<run key>/``.

    Returns
    -------
    dict
        ``report`` and ``figure`` (paths) and ``alerts`` (names of the checks in alert).
    """
    settings = MonitorSettings() if settings is None else settings
    end = within_range("end", end)  # (year 1 overflowed the lookback's arithmetic)
    frame = _read_events(settings, end)
    try:
        reference, production = production_reference(settings)
        unusable = None
    except FeatureReferenceError as exc:  # drift not computed, as without a reference
        reference, production, unusable = None, exc.version, str(exc)
    state = settings.runs_path / MONITOR_FOLDER
    latency = served_latency(settings, state / LATENCY_STATE_FILE)
    faults = served_faults(settings, state / FAULTS_STATE_FILE)
    report = summarize(
        frame, end, settings, reference, production, latency, faults, reference_problem=unusable
    )
    folder = run_folder(settings.runs_path / MONITOR_FOLDER, run_key)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / REPORT_FILE
    path.write_text(json.dumps(report, indent=2))
    figure = plot_monitor_report(report, folder / FIGURE_FILE)
    alerts = [name for name in CHECKS if report["checks"][name]["status"] == "alert"]
    for name in CHECKS:
        log.info("%s: %s", name, report["checks"][name]["message"])
    return {"report": str(path), "figure": str(figure), "alerts": alerts}


def _read_events(settings: MonitorSettings, end: datetime) -> Any:
    window = timedelta(seconds=settings.reward_window_s)
    lookback = timedelta(days=settings.monitor_lookback_days)
    engine = make_engine(settings.store_url)
    try:
        return read_replay(
            engine,
            end - window - 2 * lookback,
            end,
            reward_window=window,
            duplicate_rule=settings.duplicate_rule,
            missing_reward=settings.missing_reward,
            default_reward=settings.default_reward,
            as_of=end + window,  # every decision before `end`, its reward as far as known
            keep_unrewarded=True,  # the decision checks count them; the reward ones don't
        )
    finally:
        engine.dispose()


def production_reference(
    settings: MonitorSettings,
) -> tuple[dict[str, Any] | None, str | None]:
    """The feature reference logged with the production version (the production alias's),
    and that version (``(None, None)`` before the first promotion; ``(None, version)`` when
    it has none)."""
    return ModelRegistry.from_settings(settings).feature_reference(settings.production_alias)


def summarize(
    frame: Any,
    end: datetime,
    settings: MonitorSettings,
    reference: Mapping[str, Any] | None,
    production: str | None,
    latency: Mapping[str, Any] | None = None,
    faults: Mapping[str, Any] | None = None,
    reference_problem: str | None = None,
) -> dict[str, Any]:
    """The report dict from the events of :func:`read_replay` over both weeks.

    ``frame`` needs the columns ``created_at``, ``context``, ``candidate_ids``,
    ``candidate_features``, ``arm_id``, ``propensity``, ``fallback``, ``explored``,
    ``user_hash``, ``outcome`` (NaN: no reward under the rules). ``latency`` and
    ``faults`` are the sections of :func:`served_latency` and :func:`served_faults`
    (default: not measured). ``reference_problem``: why production's feature reference
    could not be used (:class:`~modelregistry.registry.FeatureReferenceError`), said where
    the drift check is skipped.
    """
    lookback = timedelta(days=settings.monitor_lookback_days)
    shift = timedelta(seconds=settings.reward_window_s)
    created = frame["created_at"]
    now = frame[(created >= end - lookback) & (created < end)]
    before = frame[(created >= end - 2 * lookback) & (created < end - lookback)]
    rewarded = frame[frame["outcome"].notna()]
    created_r = rewarded["created_at"]
    reward_now = rewarded[(created_r >= end - shift - lookback) & (created_r < end - shift)]
    reward_before = rewarded[
        (created_r >= end - shift - 2 * lookback) & (created_r < end - shift - lookback)
    ]
    arms = [str(a) for a in now["arm_id"]]
    candidates = [list(c) for c in now["candidate_ids"]]
    report: dict[str, Any] = {
        "window": {
            "start": (end - lookback).isoformat(),
            "end": end.isoformat(),
            "reward_start": (end - shift - lookback).isoformat(),
            "reward_end": (end - shift).isoformat(),
        },
        "rows": {
            "current": len(now),
            "reward_current": len(reward_now),
            "reward_previous": len(reward_before),
        },
        "production_version": production,
    }
    report["reward"] = _reward_section(reward_now, reward_before, settings)
    report["feature_drift"] = _drift_section(
        now, end, settings, reference, production, reference_problem
    )
    report["selection_entropy"] = _entropy_section(arms, candidates, settings)
    report["arm_coverage"] = _coverage_section(arms, candidates, settings)
    report["propensity"] = _propensity_section(now, settings)
    report["fallback"] = _fallback_section(now, settings)
    report["explored"] = _explored_section(now, settings)
    report["segments"] = _segment_section(now, before, settings)
    report["fallback_causes"] = (
        dict(faults)
        if faults is not None
        else {"check": _check("skipped", "fallback causes were not read for this report.")}
    )
    report["correlation"] = {
        "current": _correlations(reward_now, end),
        "previous": _correlations(reward_before, end),
    }
    report["checks"] = {
        "reward_drift": report["reward"]["check"],
        "feature_drift": report["feature_drift"]["check"],
        "selection_entropy": report["selection_entropy"]["check"],
        "arm_coverage": report["arm_coverage"]["check"],
        "propensity_floor": report["propensity"]["check"],
        "fallback_rate": report["fallback"]["check"],
        "explored_share": report["explored"]["check"],
        "model_errors": report["fallback_causes"]["check"],
        "segment_coverage": report["segments"]["check"],
    }
    report["served_latency"] = (
        dict(latency)
        if latency is not None
        else {"check": _check("skipped", "served latency was not measured for this report.")}
    )
    report["checks"]["served_latency"] = report["served_latency"]["check"]
    return report


def _check(status: str, message: str) -> dict[str, str]:
    return {"status": status, "message": message}


def _beyond(text: str, p_value: float, settings: MonitorSettings) -> dict[str, str]:
    """The check of a figure beyond its limit (``text`` says so): an alert when chance
    alone gives it with probability ``p_value`` below ``monitor_alpha``; else skipped, too
    few decisions to tell."""
    alpha = settings.monitor_alpha
    if p_value < alpha:
        return _check("alert", text)
    return _check(
        "skipped",
        f"{text} Too few decisions to tell: a figure at the limit shows this with "
        f"probability {p_value:.2g} (an alert needs less than {alpha:g}).",
    )


def _reward_section(now: Any, before: Any, settings: MonitorSettings) -> dict[str, Any]:
    current = reward_stats(now["outcome"].to_numpy(dtype=np.float64))
    previous = reward_stats(before["outcome"].to_numpy(dtype=np.float64))
    limit = settings.reward_drift_max
    section: dict[str, Any] = {"current": current, "previous": previous, "limit": limit}
    if current is None or previous is None:
        section["change"] = None
        section["check"] = _check(
            "skipped",
            f"reward drift needs rewarded decisions in both weeks; got {len(now)} this week "
            f"and {len(before)} the week before.",
        )
        return section
    scale = settings.reward_max - settings.reward_min
    change = {k: relative_change(current[k], previous[k], scale) for k in ("mean", "p5", "p95")}
    section["change"] = change
    over = {k: v for k, v in change.items() if v > limit}
    a = now["outcome"].to_numpy(dtype=np.float64)
    b = before["outcome"].to_numpy(dtype=np.float64)
    alpha = settings.monitor_alpha
    differ = {
        "mean": evidence.mean_p_value(a, b) < alpha,
        "p5": evidence.quantiles_differ(a, b, 0.05, alpha),
        "p95": evidence.quantiles_differ(a, b, 0.95, alpha),
    }
    section["significant"] = differ
    if over:
        parts = ", ".join(
            f"{k} {previous[k]:.4g} → {current[k]:.4g} ({v:.0%})" for k, v in over.items()
        )
        text = f"reward drifted week over week by more than {limit:.0%}: {parts}."
        section["check"] = (
            _check("alert", text)
            if any(differ[k] for k in over)
            else _check(
                "skipped",
                f"{text} Too few rewarded decisions to tell ({len(now)} and {len(before)}): "
                f"the weeks' {' / '.join(over)} do not differ at level {alpha:g} (mean: "
                "two-sample z test; p5 / p95: order-statistic intervals).",
            )
        )
    else:
        worst = max(change, key=lambda k: change[k])
        section["check"] = _check(
            "ok", f"reward change within {limit:.0%} (largest: {worst} {change[worst]:.1%})."
        )
    return section


def _features(frame: Any, end: datetime, dim_user: int, dim_arm: int) -> Any:
    """The rows of ``frame`` of these widths with the numeric columns ``context_j`` and
    ``arm_feature_j``."""
    frame = of_dimensions(frame, dim_user, dim_arm)
    config = ReplaySuiteConfig(
        dim_context=dim_user,
        dim_arm=dim_arm,
        window_start=end - timedelta(days=3650),
        window_end=end + timedelta(days=1),
        columns=STORE_COLUMNS,
    )
    return feature_frame(frame, config), config.feature_columns()


def _drift_section(
    now: Any,
    end: datetime,
    settings: MonitorSettings,
    reference: Mapping[str, Any] | None,
    production: str | None,
    reference_problem: str | None = None,
) -> dict[str, Any]:
    metric, limit = settings.feature_drift_metric, settings.feature_drift_max
    section: dict[str, Any] = {"metric": metric, "threshold": limit, "scores": {}}
    if reference is None:
        why = (
            "no production model yet"
            if production is None
            else reference_problem or f"production version {production} has no feature reference"
        )
        section["check"] = _check("skipped", f"feature drift not computed: {why}.")
        return section
    if len(now) == 0:
        section["check"] = _check("skipped", "feature drift not computed: no decisions this week.")
        return section
    dims = dimensions(now)  # the week's most common widths (a few odd rows left out)
    expected = (int(reference["dim_user"]), int(reference["dim_arm"]))
    if dims != expected:
        section["check"] = _check(
            "alert",
            f"feature dimensions changed: (dim_user, dim_arm) {dims} this week, {expected} in "
            f"the training window of production version {production}.",
        )
        return section
    features, names = _features(now, end, *dims)
    scores: dict[str, float] = {}
    chance: dict[str, float] = {}
    reference_rows = reference.get("rows")
    for name in names:
        if name not in reference["features"]:
            continue
        values = features[name].to_numpy(dtype=np.float64)
        ref = reference["features"][name]
        scores[name] = drift_score(values, ref["edges"], ref["proportions"], metric)
        chance[name] = evidence.drift_chance_quantile(
            ref["proportions"],
            int(np.isfinite(values).sum()),
            None if reference_rows is None else int(reference_rows),
            metric,
            settings.monitor_alpha,
        )
    section["scores"] = scores
    section["chance"] = chance  # what this many rows score without drift (1 − alpha)
    over = {k: v for k, v in scores.items() if v > limit}
    drifted = {k: v for k, v in over.items() if v > chance[k]}
    if over:
        parts = ", ".join(f"{k} {v:.3f}" for k, v in sorted(over.items(), key=lambda kv: -kv[1]))
        text = (
            f"features drifted from the training window of production version {production} "
            f"({metric} > {limit:g}): {parts}."
        )
        section["check"] = (
            _check("alert", text)
            if drifted
            else _check(
                "skipped",
                f"{text} Too few decisions to tell ({len(now)}): without any drift this "
                f"many rows score that much with probability {settings.monitor_alpha:g} or "
                f"more (chance level {max(chance[k] for k in over):.3f}).",
            )
        )
    else:
        worst = max(scores, key=lambda k: scores[k])
        section["check"] = _check(
            "ok", f"feature drift {metric} ≤ {limit:g} (largest: {worst} {scores[worst]:.3f})."
        )
    return section


def _entropy_section(
    arms: list[str], candidates: list[list[str]], settings: MonitorSettings
) -> dict[str, Any]:
    entropy, maximum = selection_entropy(arms, candidates)
    # a week of n choices is compared with what n uniform choices reach on its offers (the
    # plug-in entropy is biased low by about (arms − 1) / 2n; one choice has none at all)
    expected = evidence.expected_entropy(list(uniform_shares(candidates).values()), len(arms))
    limit = settings.entropy_min_ratio
    ratio = entropy / expected if expected > 0 else None
    section: dict[str, Any] = {
        "entropy": entropy,
        "max": maximum,
        "expected_uniform": expected,
        "ratio": ratio,
        "limit": limit,
    }
    if ratio is None:
        section["check"] = _check(
            "skipped", "selection entropy needs two or more decisions among at least two arms."
        )
    elif ratio < limit:
        text = (
            f"selection entropy {entropy:.3f} nats is {ratio:.0%} of {expected:.3f} (a "
            f"uniform choice among the candidates offered, over the same {len(arms)} "
            f"decisions), below {limit:.0%}."
        )
        # two uniform choices between two arms agree half the time (entropy 0): it
        # alerted on 48 % of such weeks (audit, stop 54)
        shares = list(uniform_shares(candidates).values())
        chance = evidence.entropy_chance_quantile(shares, len(arms), settings.monitor_alpha)
        section["chance_quantile"] = chance
        if entropy < chance:
            section["check"] = _check("alert", text)
        else:
            section["check"] = _check(
                "skipped",
                f"{text} Too few decisions to tell: uniform choice over this many gives "
                f"{chance:.3f} nats or less with probability {settings.monitor_alpha:g}.",
            )
    else:
        section["check"] = _check(
            "ok",
            f"selection entropy at {ratio:.0%} of a uniform choice's (limit {limit:.0%}).",
        )
    return section


def _coverage_section(
    arms: list[str], candidates: list[list[str]], settings: MonitorSettings
) -> dict[str, Any]:
    rows = arm_coverage(arms, candidates)
    ratio = settings.coverage_min_ratio
    judged = [r for r in rows if r["uniform_share"] * ratio >= 1.0]
    starved = [r for r in judged if r["chosen"] < ratio * r["uniform_share"]]
    section: dict[str, Any] = {
        "arms": rows,
        "limit": ratio,
        "judged": len(judged),
        "starved": [r["arm"] for r in starved],
    }
    if not judged:
        section["check"] = _check(
            "skipped",
            f"arm coverage needs an arm with a uniform share of at least {1 / ratio:.0f} "
            "decisions.",
        )
    elif starved:
        parts = ", ".join(
            f"{r['arm']} chosen {r['chosen']} times vs uniform share {r['uniform_share']:.1f}"
            for r in starved
        )
        section["check"] = _check(
            "alert",
            f"{len(starved)} arms get less than {ratio:.0%} of their uniform share: {parts}.",
        )
    else:
        section["check"] = _check(
            "ok", f"all {len(judged)} judged arms get at least {ratio:.0%} of their uniform share."
        )
    return section


def _propensity_section(now: Any, settings: MonitorSettings) -> dict[str, Any]:
    floor, limit = settings.propensity_floor, settings.propensity_violation_max
    p = now["propensity"].to_numpy(dtype=np.float64)
    # below the floor by more than round-off (a floored propensity is exact to a few ulp)
    violations = int((p < floor * (1.0 - 1e-9)).sum())
    share = violations / p.size if p.size else None
    section: dict[str, Any] = {
        "floor": floor,
        "violations": violations,
        "violation_share": share,
        "min": float(p.min()) if p.size else None,
        "limit": limit,
    }
    if share is None:
        section["check"] = _check("skipped", "no decisions this week.")
    elif share > limit:
        section["check"] = _beyond(
            f"{violations} of {p.size} decisions ({share:.1%}) were logged with a propensity "
            f"below the floor {floor:g} (smallest {p.min():.3g}); at most {limit:.1%} allowed.",
            evidence.share_p_value(violations, p.size, limit, above=True),
            settings,
        )
    else:
        section["check"] = _check(
            "ok", f"{share:.1%} of decisions below the propensity floor {floor:g}."
        )
    return section


def _fallback_section(now: Any, settings: MonitorSettings) -> dict[str, Any]:
    limit = settings.fallback_rate_max
    flags = now["fallback"].to_numpy(dtype=bool)
    rate = float(flags.mean()) if flags.size else None
    section: dict[str, Any] = {
        "served": int(flags.size),
        "fallback": int(flags.sum()),
        "rate": rate,
        "limit": limit,
    }
    if rate is None:
        section["check"] = _check("skipped", "no decisions this week.")
    elif rate > limit:
        section["check"] = _beyond(
            f"{int(flags.sum())} of {flags.size} decisions ({rate:.1%}) were served by the "
            f"fallback policy; at most {limit:.1%} allowed.",
            evidence.share_p_value(int(flags.sum()), flags.size, limit, above=True),
            settings,
        )
    else:
        section["check"] = _check("ok", f"fallback served {rate:.1%} of decisions.")
    return section


def explored_share(
    explored: NDArray[np.bool_], propensity: NDArray[np.float64]
) -> tuple[float, float] | None:
    """``(explored share, share with propensity < 1)`` of decisions (None when empty)."""
    flags = np.asarray(explored, dtype=bool)
    p = np.asarray(propensity, dtype=np.float64)
    if flags.size == 0:
        return None
    return float(flags.mean()), float((p < 1.0).mean())


def _explored_section(now: Any, settings: MonitorSettings) -> dict[str, Any]:
    limit = settings.explored_share_min
    # a decision between fewer than two candidates cannot explore: not counted
    choice = np.array([len(ids) > 1 for ids in now["candidate_ids"]], dtype=bool)
    model = now[~now["fallback"].to_numpy(dtype=bool) & choice]
    shares = explored_share(
        model["explored"].to_numpy(dtype=bool), model["propensity"].to_numpy(dtype=np.float64)
    )
    section: dict[str, Any] = {"decisions": len(model), "limit": limit}
    if shares is None:
        section.update(share=None, stochastic_share=None)
        section["check"] = _check("skipped", "no decisions by a model this week.")
        return section
    share, stochastic = shares
    section.update(share=share, stochastic_share=stochastic)
    text = (
        f"{share:.1%} of {len(model)} model decisions among two or more candidates explored "
        f"(chose an arm other than the highest posterior mean); {stochastic:.1%} were logged "
        "with a propensity below 1"
    )
    if share < limit:
        explored = int(model["explored"].to_numpy(dtype=bool).sum())
        section["check"] = _beyond(
            f"{text}; at least {limit:.1%} must explore (the policy stopped learning).",
            evidence.share_p_value(explored, len(model), limit, above=False),
            settings,
        )
    else:
        section["check"] = _check("ok", f"{text} (minimum {limit:.1%}).")
    return section


def segment_keys(frame: Any, settings: MonitorSettings) -> list[str | None]:
    """The segment of each decision: ``group_<g>`` of its hashed user (None without a
    user), or ``context_<j>=<value>`` of the configured ``segment_feature``."""
    if settings.segment_feature is None:
        groups = settings.segment_user_groups
        return [user_group_key(h, groups) for h in frame["user_hash"]]
    j = int(settings.segment_feature.removeprefix("context_"))
    out: list[str | None] = []
    for ctx in frame["context"]:
        out.append(f"context_{j}={float(ctx[j]):g}" if j < len(ctx) else None)
    return out


def _segment_section(now: Any, before: Any, settings: MonitorSettings) -> dict[str, Any]:
    minimum = settings.segment_min_decisions
    by = settings.segment_feature or f"user_group mod {settings.segment_user_groups}"
    keys = segment_keys(now, settings)
    section: dict[str, Any] = {"by": by, "limit": minimum, "segments": []}
    if settings.segment_feature is None:
        expected = {group_key(g) for g in range(settings.segment_user_groups)}
    else:
        expected = {k for k in keys + segment_keys(before, settings) if k is not None}
    section["unsegmented"] = sum(k is None for k in keys)
    if not keys:  # as every other check of an empty week: nothing served, nothing to judge
        section["check"] = _check("skipped", "no decisions this week.")
        return section
    if settings.segment_feature is None and section["unsegmented"] == len(keys):
        # every group at 0 is no sign of a group left out (audit, stop 54)
        section["check"] = _check(
            "skipped", f"no decision carries a user id this week: no user group ({by})."
        )
        return section
    if not expected:
        section["check"] = _check(
            "skipped", f"no decision carries a segment ({by}) this week or the week before."
        )
        return section
    if len(expected) > MAX_SEGMENTS:
        section["check"] = _check(
            "skipped",
            f"{settings.segment_feature} takes {len(expected)} values (more than "
            f"{MAX_SEGMENTS}): not a categorical feature to segment by.",
        )
        return section
    rows: dict[str, dict[str, Any]] = {
        k: {"segment": k, "decisions": 0, "explored": 0, "fallback": 0, "arms": set()}
        for k in sorted(expected)
    }
    columns = zip(keys, now["explored"], now["fallback"], now["arm_id"], strict=True)
    for key, explored, fallback, arm in columns:
        if key is None:
            continue
        row = rows[key]
        row["decisions"] += 1
        row["explored"] += bool(explored)
        row["fallback"] += bool(fallback)
        row["arms"].add(str(arm))
    table = [
        {
            "segment": r["segment"],
            "decisions": r["decisions"],
            "explored_share": r["explored"] / r["decisions"] if r["decisions"] else None,
            "fallback_share": r["fallback"] / r["decisions"] if r["decisions"] else None,
            "arms_chosen": len(r["arms"]),
        }
        for r in rows.values()
    ]
    section["segments"] = table
    fewest = min(table, key=lambda r: r["decisions"])
    section["min_decisions"] = fewest["decisions"]
    short = [r for r in table if r["decisions"] < minimum]
    if short:
        parts = ", ".join(f"{r['segment']} {r['decisions']}" for r in short)
        text = (
            f"{len(short)} of {len(table)} segments ({by}) got fewer than {minimum} decisions "
            f"this week: {parts}."
        )
        # chance: a segment's decisions are Binomial(n, its share): 1 / groups, or a
        # value's share of last week (a one-decision week left every other one short)
        n = len(keys) - section["unsegmented"]
        shares = _segment_shares(before, settings, [r["segment"] for r in short])
        p_value = min(
            evidence.share_p_value(r["decisions"], n, share, above=False)
            for r, share in zip(short, shares, strict=True)
        )
        section["check"] = _beyond(text, p_value, settings)
    else:
        section["check"] = _check(
            "ok",
            f"every one of {len(table)} segments ({by}) got at least {minimum} decisions "
            f"(fewest: {fewest['segment']} {fewest['decisions']}).",
        )
    return section


def _segment_shares(before: Any, settings: MonitorSettings, segments: list[str]) -> list[float]:
    """Each segment's expected share of a week's segmented decisions: ``1 / groups`` for
    hashed user groups; for a feature's values, the week before's (0 where it had none:
    its shortfall is no evidence)."""
    if settings.segment_feature is None:
        return [1.0 / settings.segment_user_groups] * len(segments)
    keys = [k for k in segment_keys(before, settings) if k is not None]
    counts = {k: keys.count(k) for k in set(keys)}
    return [counts.get(s, 0) / len(keys) if keys else 0.0 for s in segments]


def _correlations(frame: Any, end: datetime) -> dict[str, float | None]:
    if len(frame) < 3:
        return {}
    features, names = _features(frame, end, *dimensions(frame))
    values = correlations(
        features[list(names)].to_numpy(dtype=np.float64),
        features["outcome"].to_numpy(np.float64),
    )
    return dict(zip(names, values, strict=True))


#: The served-latency check's quantile.
_P99 = 0.99


def served_latency(
    settings: MonitorSettings, state_path: Path, timeout_s: float = 10.0
) -> dict[str, Any]:
    """The served-latency section: p50/p99 of the decision endpoints from the service's
    ``/metrics``, over the requests since the scrape kept in ``state_path`` (then
    replaced by this one), or since the service started when there is none or the
    service restarted in between.

    Skipped when ``service_url`` is unset or no decision was served in the interval; in
    alert when the p99 exceeds ``latency_p99_max_s`` and the requests slower than it
    (:meth:`~monitoring.served_latency.LatencyHistogram.slower_than`) are more than a p99
    at the limit leaves (1 % of them) beyond chance (the exact binomial test at
    ``monitor_alpha``), or when ``/metrics`` cannot be read.
    """

    limit = settings.latency_p99_max_s
    url = settings.service_url
    section: dict[str, Any] = {"service_url": url, "limit_p99_s": limit}
    if url is None:
        section["check"] = _check(
            "skipped",
            "served latency not read: BANDITOPS_SERVICE_URL is not set (the event store does "
            "not record latency; the service exports it on /metrics).",
        )
        return section
    scraped_at = datetime.now(UTC)
    try:
        histograms = sl.scrape(url, timeout_s)
    except sl.ScrapeError as exc:
        section["check"] = _check("alert", f"served latency unknown: {exc}")
        return section
    section["scraped_at"] = scraped_at.isoformat()
    previous = _previous_scrape(state_path, url, scraped_at)
    state_path.parent.mkdir(parents=True, exist_ok=True)
    state_path.write_text(
        json.dumps(
            {
                "service_url": url,
                "scraped_at": scraped_at.isoformat(),
                "histograms": {k: h.to_dict() for k, h in histograms.items()},
            }
        )
    )
    current = {e: histograms[e] for e in DECISION_ENDPOINTS if e in histograms}
    interval, since, restarted = current, None, False
    if previous is not None:
        # an endpoint missing from the previous scrape had served nothing yet: all new
        deltas = {e: h.since(previous[1][e]) if e in previous[1] else h for e, h in current.items()}
        restarted = any(d is None for d in deltas.values())
        if not restarted:
            interval = {e: d for e, d in deltas.items() if d is not None}
            since = previous[0]
    basis = (
        f"since the previous scrape at {since}"
        if since is not None
        else ("since the service restarted" if restarted else "since the service started")
    )
    section.update(basis=basis, since=since)
    section["per_endpoint"] = {
        e: {"count": h.count, "p50_s": h.quantile(0.5), "p99_s": h.quantile(_P99)}
        for e, h in interval.items()
    }
    merged = sl.merge(interval.values())
    p50 = None if merged is None else merged.quantile(0.5)
    p99 = None if merged is None else merged.quantile(_P99)
    if merged is None or p50 is None or p99 is None:
        section["count"] = 0
        section["check"] = _check(
            "skipped", f"no decision requests were served {basis} ({url}/metrics)."
        )
        return section
    beyond = merged.cumulative[-2] < _P99 * merged.count  # rank in the +Inf bucket
    section.update(
        count=merged.count,
        mean_s=merged.total / merged.count,
        p50_s=p50,
        p99_s=p99,
        p99_beyond_buckets=beyond,
    )
    text = (
        f"p99 {p99 * 1e3:.1f} ms{' or more' if beyond else ''}, p50 {p50 * 1e3:.1f} ms over "
        f"{merged.count:.0f} decision requests {basis}"
    )
    slower = merged.slower_than(limit)
    section["slower_than_limit"] = slower
    if p99 > limit or beyond:
        # a p99 at the limit leaves 1 % of requests slower: one slow request among a few
        # is an alert only when that many are more than chance gives at 1 %
        section["check"] = _beyond(
            f"served latency {text}; the p99 limit is {limit * 1e3:g} ms "
            f"(about {slower:.0f} of {merged.count:.0f} requests slower).",
            evidence.share_p_value(slower, merged.count, 1.0 - _P99, above=True),
            settings,
        )
    else:
        section["check"] = _check("ok", f"served latency {text} (p99 limit {limit * 1e3:g} ms).")
    return section


def fallback_causes(
    current: Mapping[str, float], previous: Mapping[str, float] | None
) -> tuple[dict[str, float], bool]:
    """The counts of :func:`~monitoring.served_latency.parse_fallback_counters` between
    two scrapes (all of ``current`` without a previous one), and whether a counter went
    down (the service restarted: ``current`` alone counts). ``no_model`` is the fallback
    decisions neither an error nor a missed deadline explains."""
    restarted = previous is not None and any(current[k] < previous[k] for k in current)
    base = previous if previous is not None and not restarted else dict.fromkeys(current, 0.0)
    diff = {k: current[k] - base[k] for k in current}
    failed = diff["model_errors"] + diff["deadline_fallbacks"]
    return {
        "decisions": diff["decisions"],
        "fallback_decisions": diff["fallback_decisions"],
        "model_error": diff["model_errors"],
        "deadline": diff["deadline_fallbacks"],
        "no_model": max(diff["fallback_decisions"] - failed, 0.0),
        "rewards_applied": diff["rewards_applied"],
        "head_refusals": diff["head_update_failures"],
    }, restarted


def served_faults(
    settings: MonitorSettings, state_path: Path, timeout_s: float = 10.0
) -> dict[str, Any]:
    """The model-errors section: fallback decisions by cause from the service's
    ``/metrics`` counters, over the decisions since the scrape kept in ``state_path``
    (then replaced by this one), or since the service started.

    Skipped when ``service_url`` is unset or no decision was served in the interval; in
    alert when the share of decisions the model failed (raised, non-finite scores, or
    past the deadline), or the share of applied rewards whose head update the model
    refused (its head learnt nothing from them), exceeds ``model_error_share_max``, or
    ``/metrics`` cannot be read.
    """
    limit = settings.model_error_share_max
    url = settings.service_url
    section: dict[str, Any] = {"service_url": url, "limit": limit}
    if url is None:
        section["check"] = _check(
            "skipped",
            "model errors not read: BANDITOPS_SERVICE_URL is not set (the event store records "
            "that the fallback decided; the service counts why, on /metrics).",
        )
        return section
    scraped_at = datetime.now(UTC)
    try:
        counters = sl.parse_fallback_counters(sl.read_metrics(url, timeout_s))
    except sl.ScrapeError as exc:
        section["check"] = _check("alert", f"model errors unknown: {exc}")
        return section
    if counters is None:
        section["check"] = _check("alert", f"{url}/metrics exports no {DECISIONS} counter.")
        return section
    previous: tuple[str, dict[str, float]] | None = None
    try:
        state = json.loads(state_path.read_text()) if state_path.exists() else None
        if state is not None and state["service_url"] == url:
            previous = state["scraped_at"], {k: float(state["counters"][k]) for k in counters}
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring the unreadable fallback-counter baseline %s: %s", state_path, exc)
    state_path.parent.mkdir(parents=True, exist_ok=True)
    state_path.write_text(
        json.dumps({"service_url": url, "scraped_at": scraped_at.isoformat(), "counters": counters})
    )
    causes, restarted = fallback_causes(counters, None if previous is None else previous[1])
    since = previous[0] if previous is not None and not restarted else None
    basis = (
        f"since the previous scrape at {since}"
        if since is not None
        else ("since the service restarted" if restarted else "since the service started")
    )
    section.update(scraped_at=scraped_at.isoformat(), basis=basis, since=since, causes=causes)
    n = causes["decisions"]
    if n <= 0:
        section["share"] = None
        section["check"] = _check("skipped", f"no decisions were served {basis} ({url}/metrics).")
        return section
    failed = causes["model_error"] + causes["deadline"]
    share = failed / n
    section["share"] = share
    text = (
        f"the model failed {failed:.0f} of {n:.0f} decisions {basis} ({share:.2%}: "
        f"{causes['model_error']:.0f} errors or non-finite scores, {causes['deadline']:.0f} "
        f"past the deadline); {causes['no_model']:.0f} more fell back with no model served"
    )
    # rewards stored as applied whose head update the model refused: the head learnt
    # nothing from them (before, only a counter no check read said so)
    applied, refused = causes["rewards_applied"], causes["head_refusals"]
    refused_share = refused / applied if applied > 0 else 0.0
    section["head_refused_share"] = refused_share if applied > 0 else None
    text += f"; the heads refused {refused:.0f} of {applied:.0f} applied rewards"
    beyond: list[tuple[str, float]] = []
    if share > limit:
        p_value = evidence.share_p_value(failed, n, limit, above=True)
        beyond.append((f"{share:.2%} of decisions failed", p_value))
    if applied > 0 and refused_share > limit:
        p_value = evidence.share_p_value(refused, applied, limit, above=True)
        beyond.append((f"{refused_share:.2%} of applied rewards refused", p_value))
    if beyond:
        worst = min(beyond, key=lambda b: b[1])
        section["check"] = _beyond(
            f"{text}; {worst[0]}, at most {limit:.2%} allowed.", worst[1], settings
        )
    else:
        section["check"] = _check("ok", f"{text} (limit {limit:.2%}).")
    return section


def _previous_scrape(path: Path, url: str, before: datetime) -> tuple[str, dict[str, Any]] | None:
    """``(scraped_at, histograms by endpoint)`` of the kept scrape of ``url``, when it is
    older than ``before``."""

    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
        at = datetime.fromisoformat(state["scraped_at"])
        if state["service_url"] != url or not at < before:
            return None
        return state["scraped_at"], {
            k: sl.LatencyHistogram.from_dict(v) for k, v in state["histograms"].items()
        }
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring the unreadable latency baseline %s: %s", path, exc)
        return None


# ---------------------------------------------------------------------- retrain trigger
def drifted_features(report: Mapping[str, Any], threshold: float) -> dict[str, float]:
    """The features of a report whose drift score reaches ``threshold`` and what chance
    alone reaches at the week's number of rows (the report's ``chance``), worst first."""
    section = report["feature_drift"]
    scores = section.get("scores") or {}
    chance = section.get("chance") or {}  # a score chance alone reaches is no drift
    over = {
        k: float(v)
        for k, v in scores.items()
        if float(v) >= threshold and float(v) > float(chance.get(k, -np.inf))
    }
    return dict(sorted(over.items(), key=lambda kv: -kv[1]))


def drift_trigger(
    report_path: str | Path,
    settings: MonitorSettings | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Whether this report should trigger a retrain through the drift asset.

    ``emit`` is true when some feature's drift reaches ``retrain_drift_min`` and no drift
    event was emitted in the last ``retrain_drift_cooldown_h`` hours (the time kept in
    ``<runs dir>/monitor/drift_trigger.json``, updated here when ``emit``). The dict is the
    event's ``extra``: the features and scores, the threshold, the production version and
    the window, and ``reason`` in words.
    """
    settings = MonitorSettings() if settings is None else settings
    now = datetime.now(UTC) if now is None else as_utc("now", now)
    report = json.loads(Path(report_path).read_text())
    threshold = settings.retrain_drift_min
    drifted = drifted_features(report, threshold)
    out: dict[str, Any] = {
        "emit": False,
        "model_name": settings.model_name,
        "metric": report["feature_drift"].get("metric"),
        "threshold": threshold,
        "features": drifted,
        "production_version": report.get("production_version"),
        "window_end": report["window"]["end"],
        "report": str(report_path),
    }
    if not drifted:
        out["reason"] = f"no feature drifted to {threshold:g} or more."
        return out
    state = settings.runs_path / MONITOR_FOLDER / DRIFT_STATE_FILE
    cooldown = timedelta(hours=settings.retrain_drift_cooldown_h)
    last = _last_drift_event(state)
    if last is not None and now - last < cooldown:
        out["reason"] = (
            f"{len(drifted)} features drifted, but a drift event was emitted at "
            f"{last.isoformat()}, less than {settings.retrain_drift_cooldown_h:g} h ago."
        )
        return out
    worst = ", ".join(f"{k} {v:.3f}" for k, v in drifted.items())
    out["emit"] = True
    out["reason"] = (
        f"features drifted from the training window of production version "
        f"{report.get('production_version')} ({out['metric']} ≥ {threshold:g}): {worst}."
    )
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"emitted_at": now.isoformat(), **out}))
    return out


def _last_drift_event(path: Path) -> datetime | None:
    if not path.exists():
        return None
    try:
        return as_utc(
            "emitted_at", datetime.fromisoformat(json.loads(path.read_text())["emitted_at"])
        )
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring the unreadable drift-trigger state %s: %s", path, exc)
        return None


# ---------------------------------------------------------------------- alerts
def check(report_path: str | Path, name: str) -> dict[str, str]:
    """The check ``name`` of a report; raises :class:`MonitorAlert` when it is in alert."""
    if name not in CHECKS:
        raise ValueError(f"name must be one of {', '.join(CHECKS)}; got {name!r}.")
    report = json.loads(Path(report_path).read_text())
    result: dict[str, str] = report["checks"][name]
    if result["status"] == "alert":
        raise MonitorAlert(f"{name}: {result['message']}")
    log.info("%s %s: %s", name, result["status"], result["message"])
    return result


def notify(
    report_path: str | Path, settings: MonitorSettings | None = None, timeout_s: float = 10.0
) -> dict[str, Any]:
    """Post the report's alerts (JSON) to ``alert_webhook_url`` when it is set and there
    are alerts; returns ``sent`` and the ``alerts`` (check name → message).

    Raises
    ------
    RuntimeError
        When the webhook cannot be reached or does not answer 2xx.
    """
    settings = MonitorSettings() if settings is None else settings
    report = json.loads(Path(report_path).read_text())
    alerts = {
        name: report["checks"][name]["message"]
        for name in CHECKS
        if report["checks"][name]["status"] == "alert"
    }
    url = settings.alert_webhook_url
    if not alerts or url is None:
        return {"sent": False, "alerts": alerts}
    body = json.dumps(
        {
            "source": MONITOR_DAG,
            "model_name": settings.model_name,
            "window_end": report["window"]["end"],
            "alerts": alerts,
            "report": str(report_path),
        }
    ).encode()
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    shown = webhook_shown(url)  # the task log names the host only
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status = response.status
    except (urllib.error.URLError, OSError) as exc:
        reason = redact_credentials(str(getattr(exc, "reason", exc))).replace(url, shown)
        raise RuntimeError(f"alert webhook {shown} could not be reached: {reason}") from None
    if not 200 <= status < 300:
        raise RuntimeError(f"alert webhook {shown} answered {status}.")
    return {"sent": True, "alerts": alerts}
