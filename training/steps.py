"""The nightly retrain as steps: one function per task of ``bandit_retrain``.

Every step takes the run's spec (:class:`training.runspec.RunSpec`) plus the typed
references of the steps before it (:mod:`training.refs`: paths, versions, flags), reads and
writes files only under the run folder, and overwrites its own outputs when retried. The
registry makes the run idempotent: a run key registers at most one version, and a re-run
neither re-decides its gate nor moves an alias a second time. The order they run in is
:data:`training.pipeline.RETRAIN_STEPS`, shared by the DAG and ``banditops train``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from bandit_core import load_policy
from bandit_core.policies.overlap import floor_of_policy
from eventstore.contract import (
    BASELINE_TAG,
    GATE_PASSED_TAG,
    REFERENCE_FILE,
    WINDOW_STOP_TAG,
    gate_verdict,
    window_stop_time,
)
from eventstore.engine import make_engine
from eventstore.rollouts import ENDED_AGAINST, Rollout, list_rollouts
from eventstore.workspace import aware
from modelregistry.pyfunc_model import example_table
from modelregistry.registry import FeatureReferenceError
from training.baseline import baseline_state, open_registry, run_admission
from training.challengers import (
    Challenger,
    candidate_configs,
    challenger_metrics,
    challengers_tag,
    compare,
    compared,
)
from training.evaluate import evaluate
from training.plots import plot_arm_coverage, plot_learning_curve
from training.refs import (
    EvaluatedRef,
    PromotedRef,
    RebuiltRef,
    RefitRef,
    RegisteredRef,
    ReplayRef,
    ShardPartRef,
    ShardRef,
    TrainedRef,
    ValidatedRef,
)
from training.replay import ReplayManifest, extract_replay, load_replay
from training.runspec import RunSpec
from training.shards import plan as plan_shards
from training.shards import reduce_evaluation, reduce_head
from training.shards import shard_evaluation as evaluation_of_shard
from training.shards import shard_statistics as statistics_of_shard
from training.train import RESULT_FILE, TrainResult, head_rows, rebuild_head, train
from training.validate import validate_features
from validation.expectations import STORE_COLUMNS, ReplaySuiteConfig, reference_histograms
from validation.gate import GateCheck, freshness_check

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
SUMMARY_FILE = "summary.json"
REFIT_REPORT_FILE = "report.json"


# ---------------------------------------------------------------------- retrain steps
def extract(s: RunSpec) -> ReplayRef:
    """Write the run's replay window (``replay/replay.parquet`` + ``replay.json``), with the
    spec's reward join rules (window, duplicate rule, missing-reward rule)."""
    start, end = s.window()
    manifest = extract_replay(
        s.url("store_url"),
        start,
        end,
        s.folder / "replay",
        reward_window=timedelta(seconds=s.reward_window_s),
        duplicate_rule=s.duplicate_rule,  # type: ignore[arg-type]
        missing_reward=s.missing_reward,  # type: ignore[arg-type]
        default_reward=s.default_reward,
        reward_min=s.reward_min,
        reward_max=s.reward_max,
        as_of=aware("as_of", s.as_of),
    )
    log.info(
        "run %s: %d replay rows (%d rewarded)", s.run_key, manifest.rows, manifest.rewarded_rows
    )
    return ReplayRef(
        manifest=str(Path(manifest.path).with_name("replay.json")),
        path=manifest.path,
        rows=manifest.rows,
        rewarded_rows=manifest.rewarded_rows,
        sha256=manifest.sha256,
        window_start=manifest.start,
        window_end=manifest.end,
    )


def validate(s: RunSpec, replay: ReplayRef) -> ValidatedRef:
    """Run the GX replay suite (data docs under ``gx_docs/``) and, when it passes, write the
    feature reference the monitor compares later weeks with.

    With a production version that logged a feature reference, the suite's drift
    expectations compare the window with that version's training window: beyond
    ``s.drift_warning`` a feature is a warning (logged, counted in ``gx.warnings``, the
    run continues), beyond ``s.drift_failing`` the validation fails.

    Raises
    ------
    validation.DataValidationError
        Listing every failing expectation; nothing downstream runs.
    """
    manifest = ReplayManifest.read(replay.manifest)
    try:
        production_reference, production = open_registry(s).feature_reference(s.production_alias)
    except FeatureReferenceError as exc:  # no drift expectations, as without a reference
        log.warning("run %s: no drift expectations: %s", s.run_key, exc)
        production_reference = None
    if production_reference is not None:
        log.info(
            "run %s: drift against production version %s's training window (warning > %g, "
            "failing > %g)",
            s.run_key,
            production,
            s.drift_warning,
            s.drift_failing,
        )
    result = validate_features(
        manifest,
        s.folder / "gx_docs",
        min_rows=s.min_rows,
        reward_min=s.reward_min,
        reward_max=s.reward_max,
        reference=production_reference,
        drift_threshold=s.drift_failing,
        drift_warning=s.drift_warning,
    )
    config = ReplaySuiteConfig(
        dim_context=manifest.dim_user,
        dim_arm=manifest.dim_arm,
        window_start=datetime.fromisoformat(manifest.start),
        window_end=datetime.fromisoformat(manifest.end),
        columns=STORE_COLUMNS,
    )
    histograms = reference_histograms(pd.read_parquet(manifest.path), config)
    reference = s.folder / "reference" / REFERENCE_FILE
    reference.parent.mkdir(parents=True, exist_ok=True)
    reference.write_text(
        json.dumps(
            {
                "window_start": manifest.start,
                "window_end": manifest.end,
                "rows": manifest.rows,
                "dim_user": manifest.dim_user,
                "dim_arm": manifest.dim_arm,
                "features": {
                    name: {"edges": edges, "proportions": props}
                    for name, (edges, props) in histograms.items()
                },
            },
            indent=2,
        )
    )
    if result.warnings:
        (s.folder / "gx_docs").mkdir(parents=True, exist_ok=True)
        (s.folder / "gx_docs" / "warnings.json").write_text(
            json.dumps([w.describe() for w in result.warnings], indent=2)
        )
    return ValidatedRef(
        success=result.success,
        evaluated=result.evaluated,
        docs_index=str(result.docs_index) if result.docs_index else None,
        metrics=result.to_metrics(),
        reference=str(reference),
    )


def train_network(s: RunSpec, replay: ReplayRef) -> TrainedRef:
    """Train the candidate on the window's first part (``train/``) and plot its curve.

    An ``auto`` run (``s.challengers``) trains and evaluates its candidates
    (:mod:`training.challengers`) and keeps the one with the best DR lower bound."""
    if s.challengers:
        linear, neural = candidate_configs(s)
        production = baseline_state(s)
        result, _ = compare(
            replay.path,
            linear,
            neural,
            window_rows=replay.rows,
            neural_min_rows=int(s.challengers["neural_min_rows"]),
            production_state=production.state,
            rule=s.gate_rule(),
            n_resamples=s.n_resamples,
            out_dir=s.folder,
            production_digest=production.digest,
            admission=run_admission(s),
        )
    else:
        result = train(replay.path, s.train_config(), s.folder / "train")
    plots = s.folder / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    plot_learning_curve(result, plots / "learning_curve.png")
    return TrainedRef(
        state_path=str(result.state_path),
        result=str(s.folder / "train" / RESULT_FILE),
        algorithm=result.algorithm,
        n_train=result.n_train,
        n_holdout=result.n_holdout,
    )


def plan_rebuild_shards(s: RunSpec, replay: ReplayRef, trained: TrainedRef) -> list[ShardRef]:
    """The training shards of the head rebuild (empty: the single-node rebuild)."""
    planned = plan_shards(s.to_xcom(), replay.to_xcom(), "train", trained.to_xcom())
    return [ShardRef(**shard) for shard in planned]


def plan_evaluation_shards(s: RunSpec, replay: ReplayRef, trained: TrainedRef) -> list[ShardRef]:
    """The held-out shards of the offline evaluation (empty: the single-node one)."""
    planned = plan_shards(s.to_xcom(), replay.to_xcom(), "holdout", trained.to_xcom())
    return [ShardRef(**shard) for shard in planned]


def shard_statistics(shard: ShardRef, trained: TrainedRef) -> ShardPartRef:
    """The additive head statistics of one training shard (a mapped task)."""
    left_out = TrainResult.read(trained.result).refused_rows
    return ShardPartRef(**statistics_of_shard(shard.to_xcom(), trained.state_path, left_out))


def shard_evaluation(shard: ShardRef, rebuilt: RebuiltRef) -> ShardPartRef:
    """The mergeable OPE sums of one held-out shard (a mapped task)."""
    if rebuilt.reward_model is None:
        raise ValueError("rebuilt has no reward_model: the sharded rebuild did not run.")
    part = evaluation_of_shard(shard.to_xcom(), rebuilt.state_path, rebuilt.reward_model)
    return ShardPartRef(**part)


def rebuild(
    s: RunSpec,
    trained: TrainedRef,
    replay: ReplayRef,
    parts: Sequence[ShardPartRef] = (),
) -> RebuiltRef:
    """Rebuild the Bayesian head on the final network (``rebuild/policy_state.npz``).

    With ``parts`` (the outputs of :func:`training.shards.shard_statistics`) this is the
    reduce of the sharded rebuild, which also fits the sharded OPE's reward model
    (``reward_model``); without, the single-node rebuild.
    """
    out = s.folder / "rebuild" / "policy_state.npz"
    if parts:
        state, model = reduce_head(trained.state_path, [p.to_xcom() for p in parts], out)
        return RebuiltRef(state_path=str(state), reward_model=str(model), shards=len(parts))
    state = rebuild_head(trained.state_path, replay.path, out, s.train_config().holdout_fraction)
    return RebuiltRef(state_path=str(state))


def evaluate_offline(
    s: RunSpec,
    rebuilt: RebuiltRef,
    replay: ReplayRef,
    parts: Sequence[ShardPartRef] = (),
) -> EvaluatedRef:
    """OPE (IPS, SNIPS, DR… with intervals) of the candidate and of production on the held-out
    window, and the gate's decision (``evaluation/``).

    The baseline is :func:`baseline_state`. With ``parts`` (the outputs of
    :func:`training.shards.shard_evaluation`, which evaluated against the baseline
    planned with the shards) this is the reduce of the sharded OPE: normal-approximation
    intervals instead of the bootstrap.

    ``summary.json`` holds the metrics, gate tags and reasons; ``baseline_version`` None is
    the uniform fallback.
    """
    out = s.folder / "evaluation"
    # the winner of a champion–challenger comparison is gated at a level shared by every
    # candidate compared on these rounds (the best of several equal ones passed more often)
    trained = s.folder / "train" / RESULT_FILE  # (a run folder of an earlier release: one)
    comparisons = compared(TrainResult.read(trained)) if trained.exists() else 1
    rule = dataclasses.replace(s.gate_rule(), comparisons=comparisons)
    if parts:
        result = reduce_evaluation([p.to_xcom() for p in parts], rule, out)
        baseline = parts[0].baseline_version
    else:
        baseline, state, digest = baseline_state(s)
        result = evaluate(
            rebuilt.state_path,
            state,
            replay.path,
            holdout_fraction=s.train_config().holdout_fraction,
            rule=rule,
            n_resamples=s.n_resamples,
            seed=int(s.train.get("seed", 0)),
            out_dir=out,
            production_digest=digest,
            admission=run_admission(s),
        )
    fresh = _freshness(s, replay, baseline)
    if fresh is not None:
        result = dataclasses.replace(result, gate=result.gate.with_check(fresh))
        result.write_report(out)
    reasons = [str(r) for r in result.gate.reasons]
    summary = {
        "passed": bool(result.gate.promote),
        "reasons": reasons,
        "tags": dict(result.gate.to_tags()),
        "metrics": result.metrics(),
        "baseline_version": baseline,
    }
    path = out / SUMMARY_FILE
    path.write_text(json.dumps(summary, indent=2))
    log.info(
        "run %s: gate %s — %s",
        s.run_key,
        "passes" if summary["passed"] else "rejects",
        " | ".join(reasons),
    )
    return EvaluatedRef(
        summary=str(path),
        passed=bool(summary["passed"]),
        reasons=reasons,
        baseline_version=baseline,
    )


def refit(s: RunSpec, replay: ReplayRef, trained: TrainedRef) -> RefitRef:
    """Refit the candidate on the whole window (``refit/``): the procedure the offline
    evaluation scored — the same training (network and all), then the head rebuilt on the
    final network — on every row, the held-out ones included, so the registered version
    has learnt the newest part of its window too.

    ``refit/report.json`` says which rows trained what (window, evaluated training,
    held-out evaluation, registered head) and where the window stops
    (:attr:`training.replay.ReplayManifest.stop`: the service replays into the version
    the rewards of decisions made from then on).
    """
    out = s.folder / "refit"
    # the algorithm the run keeps (an ``auto`` run's winner) with the options it trained
    evaluated = TrainResult.read(trained.result)
    config = dataclasses.replace(
        s.train_config(), algorithm=evaluated.algorithm, options=dict(evaluated.options)
    )
    result = train(replay.path, config, out / "train", whole_window=True)
    state = rebuild_head(result.state_path, replay.path, out / "policy_state.npz", None)
    manifest = ReplayManifest.read(replay.manifest)
    learnt = head_rows(state)
    report = {
        "window_rows": result.n_train,
        "train_rows": trained.n_train,
        "eval_rows": trained.n_holdout,
        "head_rows": learnt,
        "window_start": manifest.start,
        "window_end": manifest.end,
        WINDOW_STOP_TAG: manifest.stop,
        "last_decision_at": manifest.last_decision_at,
        "refit_train_loss": result.metrics.get("train_loss"),
    }
    if result.n_train != trained.n_train + trained.n_holdout:
        raise ValueError(
            f"the refit trained on {result.n_train} rows; the evaluated training split "
            f"{trained.n_train} + {trained.n_holdout}: the window changed under the run."
        )
    path = out / REFIT_REPORT_FILE
    path.write_text(json.dumps(report, indent=2))
    log.info(
        "run %s: refit on all %d rows of the window (head learnt %s); evaluated on %d",
        s.run_key,
        result.n_train,
        learnt,
        trained.n_holdout,
    )
    return RefitRef(
        state_path=str(state),
        report=str(path),
        window_rows=result.n_train,
        train_rows=trained.n_train,
        eval_rows=trained.n_holdout,
        head_rows=learnt,
    )


def refit_report(refitted: RefitRef) -> tuple[dict[str, float], dict[str, str]]:
    """The refit's row counts as MLflow metrics, and its report as version tags (what
    ``banditops models`` and the service read: ``window_stop`` is where the service
    starts replaying online rewards into the version)."""
    report = json.loads(Path(refitted.report).read_text())
    counts = ("window_rows", "train_rows", "eval_rows", "head_rows")
    metrics = {k: float(report[k]) for k in counts if report[k] is not None}
    if report.get("refit_train_loss") is not None:
        metrics["refit.train_loss"] = float(report["refit_train_loss"])
    tags = {k: str(v) for k, v in report.items() if v is not None and k != "refit_train_loss"}
    return metrics, tags


def register_candidate(
    s: RunSpec,
    replay: ReplayRef,
    validated: ValidatedRef,
    trained: TrainedRef,
    refitted: RefitRef,
    evaluated: EvaluatedRef,
) -> RegisteredRef:
    """Log the run to MLflow and register its whole-window refit as a version with the
    registered alias (the evaluation's scores, the refit's rows).

    At most one version per run key: a retried or re-run step returns the version
    registered before (``created`` False) and registers nothing.
    """
    manifest = ReplayManifest.read(replay.manifest)
    result = TrainResult.read(trained.result)
    summary = json.loads(Path(evaluated.summary).read_text())
    rows, window = refit_report(refitted)
    table = [Challenger(**c) for c in result.challengers]
    metrics = {
        **result.metrics,
        **summary["metrics"],
        **validated.metrics,
        **rows,
        **challenger_metrics(table),
    }
    metrics_path = s.folder / METRICS_FILE
    metrics_path.write_text(json.dumps(metrics, indent=2))
    plots = s.folder / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    plot_arm_coverage(manifest.path, plots / "arm_coverage.png")
    config = s.train_config()
    registry = open_registry(s)
    created = registry.find_by_run_key(s.run_key) is None
    head = load_replay(manifest.path).subset(slice(0, 2))  # the model's input example
    version = registry.register_candidate(
        state_path=refitted.state_path,
        run_key=s.run_key,
        input_example=example_table(head.contexts, head.candidate_ids, head.candidate_features),
        params={
            "algorithm": result.algorithm,
            **{f"option.{k}": v for k, v in (result.options or config.options).items()},
            "window_start": manifest.start,
            "window_end": manifest.end,
            "seed": config.seed,
            "holdout_fraction": config.holdout_fraction,
            "min_rows": s.min_rows,
            "n_resamples": s.n_resamples,
        },
        metrics=metrics,
        tags={
            "data_sha256": manifest.sha256,
            "algorithm": config.algorithm,
            "rows": str(manifest.rows),
            "diagnostics": result.diagnostics,
            BASELINE_TAG: summary["baseline_version"] or "",
            **window,
            "floor": json.dumps(floor_of_policy(load_policy(refitted.state_path)) or {}),
            **({"challengers": challengers_tag(table)} if table else {}),
            **summary["tags"],
        },
        artifacts={
            "gx_docs": s.folder / "gx_docs",
            "plots": plots,
            "evaluation": s.folder / "evaluation",
            "replay_manifest": replay.manifest,
            "reference": validated.reference,
            "refit": refitted.report,
        },
    )
    log.info(
        "run %s: %s version %s of %s",
        s.run_key,
        "registered" if created else "already registered",
        version.version,
        s.model_name,
    )
    return RegisteredRef(
        version=version.version,
        model_name=s.model_name,
        run_key=s.run_key,
        created=created,
        rows=manifest.rows,
        metrics=str(metrics_path),
    )


def gate(s: RunSpec, registered: RegisteredRef, evaluated: EvaluatedRef) -> bool:
    """Record the gate's decision on the version; move the staging alias to it when it
    passed.

    A decision is recorded once: a re-run returns the recorded one and moves nothing (a
    later run may own the staging alias by now).
    """
    registry = open_registry(s)
    version = registry.get(registered.version)
    recorded = version.tags.get(GATE_PASSED_TAG)
    verdict = gate_verdict(version.tags)
    if verdict is False or (
        verdict is True and registry.moved_to(s.staging_alias, version.version)
    ):
        log.info("version %s: gate already decided (%s)", version.version, recorded)
        return verdict
    passed, reasons = evaluated.passed, list(evaluated.reasons)
    stale = _stale_now(s, registry, version) if passed else None
    if stale is not None:  # a newer version took an alias after this run's evaluation
        passed = False
        reasons.append(f"{stale.reason} (checked again when the gate was recorded)")
    passed = registry.record_gate(version.version, passed, reasons)
    log.info(
        "version %s: gate %s",
        version.version,
        f"passed → {s.staging_alias}" if passed else "rejected",
    )
    return passed


def promote(s: RunSpec, registered: RegisteredRef) -> PromotedRef:
    """Move the production alias to a version whose gate passed, when the run has
    ``auto_promote``.

    Once only: a re-run never moves the production alias again (it may have been rolled
    back on purpose since). ``promoted``: whether the alias points at the version because
    of this run.
    """
    registry = open_registry(s)
    version = registry.get(registered.version)
    alias = s.production_alias
    if not s.auto_promote:
        reason = "auto_promote is off: the version waits for bandit_promote."
        return PromotedRef(version.version, promoted=False, reason=reason)
    if gate_verdict(version.tags) is not True:
        return PromotedRef(version.version, promoted=False, reason="the gate did not pass.")
    if registry.moved_to(alias, version.version):
        holder = registry.by_alias(alias)
        held = holder.version if holder is not None else None
        if held == version.version:
            return PromotedRef(version.version, True, f"moved to {alias} before; not again.")
        why = f"moved to {alias} before, since moved to {held or 'none'}; not again."
        return PromotedRef(version.version, promoted=False, reason=why)
    # a promote step re-run late (an operator cleared it) meets what happened since
    ended = _ended_rollout(s, version.version)
    if ended is not None:
        why = (
            f"its rollout {ended.id} ended {ended.status} ({ended.reason}): not promoted "
            "(bandit_promote can still promote it, with an approval)."
        )
        return PromotedRef(version.version, promoted=False, reason=why)
    stale = _stale_now(s, registry, version)
    if stale is not None:
        return PromotedRef(version.version, promoted=False, reason=f"{stale.reason} Not promoted.")
    reason = f"gate passed in run {s.run_key}"
    registry.promote(version.version, by=s.promoted_by, reason=reason)
    log.info("version %s promoted to %s", version.version, alias)
    return PromotedRef(version.version, promoted=True, reason=reason)


# ---------------------------------------------------------------------- helpers
def _freshness(s: RunSpec, replay: ReplayRef, baseline: str | None) -> GateCheck | None:
    """The gate's freshness check against the newest of the baseline (production) and the
    ``@staging`` version, by where their windows stop (None when neither has a window's
    stop: the uniform fallback, versions registered by hand). A version that passed this
    check takes ``@staging``, so it must not be older than the one there either (its
    rollout would stop for it)."""
    own = ReplayManifest.read(replay.manifest).stop
    if not own:
        return None
    registry = open_registry(s)
    holders = [registry.get(baseline)] if baseline is not None else []
    staging = registry.by_alias(s.staging_alias)
    if staging is not None and staging.tags.get("run_key") != s.run_key:
        holders.append(staging)
    return _fresh_against(window_stop_time(own), holders)


def _fresh_against(own: datetime, holders: Sequence[Any]) -> GateCheck | None:
    """:func:`validation.gate.freshness_check` of a window stopping at ``own`` against the
    newest window of ``holders`` (registry versions); None when none has a stop."""
    stops = []
    for info in holders:
        tag = info.tags.get(WINDOW_STOP_TAG)
        if not tag:
            continue
        try:
            stops.append((window_stop_time(tag), info.version))
        except ValueError:  # not a time: the service refuses to serve that version
            continue
    if not stops:
        return None
    newest, version = max(stops)
    return freshness_check(own, newest, version)


def _stale_now(s: RunSpec, registry: Any, version: Any) -> GateCheck | None:
    """The freshness check again when an alias is about to move, against what
    ``@staging`` and ``@production`` hold *now*: a failed check, else None. The check in
    :func:`evaluate_offline` saw the aliases of its time; a later run may have taken them
    since, and an operator who clears an earlier run's failed step brought the older
    version back over the newer one (operator helper, stop 44)."""
    own = version.tags.get(WINDOW_STOP_TAG)
    if not own:
        return None
    holders = [
        held
        for held in (registry.by_alias(s.staging_alias), registry.by_alias(s.production_alias))
        if held is not None
        and held.version != version.version
        and held.tags.get("run_key") != s.run_key
    ]
    try:
        check = _fresh_against(window_stop_time(own), holders)
    except ValueError:  # not a time: the service refuses to serve that version anyway
        return None
    return check if check is not None and not check.passed else None


def _ended_rollout(s: RunSpec, version: str) -> Rollout | None:
    """The latest rollout of ``version`` when it ended otherwise than promoted (rolled
    back, stopped, expired): the online test decided against it."""
    engine = make_engine(s.url("store_url"))
    try:
        latest = list_rollouts(engine, s.model_name, version=version, limit=1)
    finally:
        engine.dispose()
    if latest and latest[0].status in ENDED_AGAINST:
        return latest[0]
    return None
