"""The staged rollout controller: one step decides whether the candidate advances, holds,
is rolled back, promoted or expires.

A rollout starts when a version holds the staging alias (``candidate_alias``, moved there
by the retrain's gate, :func:`training.steps.gate`) that has never been rolled out and is
not production: the next controller step (``bandit_rollout``, every
``rollout_schedule``) starts it at the first of ``rollout_stages``; ``banditops rollout
start`` starts one by hand. The state lives in the event store
(:mod:`eventstore.rollouts`), where every service replica reads the share at its poll.

Each step of a running rollout reads the online outcome per traffic arm of each stage
since the start (:func:`eventstore.rollouts.stage_outcomes`: each decision whose reward
window has closed, with its reward under the reward rules, ``default_reward`` for none —
what the retrain learns and the monitor shows) and runs the always-valid sequential test
on the stages' differences (:func:`bandit_core.sequential.clustered_test`: within a
stage the share is constant; pooled over stages of different shares, a reward rate that
moves over time would make a worse candidate look better; and its variance is by user,
the unit the routing randomises, not by decision) — looking at every step does not
inflate its error rate:

* **rollback** as soon as the candidate is worse than production by more than
  ``rollout_margin`` with confidence ``1 − rollout_alpha`` (both arms having at least
  ``rollout_min_samples`` outcomes): the staging alias leaves the version;
* **advance** to the next stage when the candidate is better with that confidence and the
  stage has run ``rollout_min_stage_s`` with ``rollout_min_samples`` candidate outcomes; on
  the last stage (100 %) that is **promote**: the production alias moves to the candidate
  (:meth:`modelregistry.registry.ModelRegistry.promote`);
* **expire** when neither happened within ``rollout_max_duration_s``: the staging alias
  leaves the version, production stays, and the verdict says the test could not tell.
  The end is fixed when the rollout starts (``ends_by`` in the store): past it every
  service replica serves production alone, even while no step runs (a paused
  ``bandit_rollout``), and the next step can only roll back or expire;
* **hold** otherwise.

A rollout also ends when the registry changed under it: ``stop`` when the staging alias
left the version, ``promote`` when a person moved production to it (``bandit_promote``).
Every decision is a row of ``rollout_steps`` and the ``rollout_*`` tags of the version.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from bandit_core.sequential import ArmCounts, ArmUnits, SequentialResult, clustered_test
from eventstore.contract import (
    CANDIDATE,
    PRODUCTION,
    ROLLOUT_DAG,
    ROLLOUT_REASON_TAG,
    ROLLOUT_STATUS_TAG,
    gate_verdict,
)
from eventstore.engine import make_engine
from eventstore.migrate import require_current
from eventstore.outcomes import OnlineMean, RewardRules
from eventstore.rollouts import (
    ENDS,
    Action,
    Readout,
    Rollout,
    RolloutStateError,
    current_rollout,
    list_rollouts,
    record_step,
    rollout_history,
    stage_outcomes,
    start_rollout,
)
from training.settings import PipelineSettings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from modelregistry.registry import ModelRegistry

log = logging.getLogger(__name__)

#: Who the controller's alias moves are recorded as.
CONTROLLER = ROLLOUT_DAG


@dataclass(frozen=True)
class StepResult:
    """What one controller step did: ``action`` (one of the rollout actions, or ``idle``
    when no rollout runs and none starts), the rollout after it, its numbers and why."""

    action: str
    reason: str
    rollout: Rollout | None = None
    readout: Readout | None = None

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary (the DAG's return value)."""
        r = self.rollout
        out: dict[str, Any] = {"action": self.action, "reason": self.reason}
        if r is not None:
            out.update(
                rollout_id=r.id,
                version=r.version,
                status=r.status,
                stage_index=r.stage_index,
                share=r.share,
            )
        if self.readout is not None:
            out.update(vars(self.readout))
        return out


def _open(settings: PipelineSettings) -> tuple[Engine, ModelRegistry]:
    # lazy: the DAG file imports this module at parse time, which must not load MLflow
    from modelregistry.registry import ModelRegistry

    engine = make_engine(settings.store_url, settings.sqlite_synchronous)
    require_current(engine)
    return engine, ModelRegistry.from_settings(settings)


def _duration(seconds: float) -> str:
    """``42 s``, ``1.5 h`` or ``2.0 d``."""
    if seconds < 3600:
        return f"{seconds:.0f} s"
    if seconds < 2 * 86_400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} d"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def readout_of(result: SequentialResult) -> Readout:
    """The audit numbers of a test result."""
    return Readout(
        n_production=result.n_production,
        n_candidate=result.n_candidate,
        mean_production=result.mean_production,
        mean_candidate=result.mean_candidate,
        diff=result.diff,
        ci_low=result.ci_low,
        ci_high=result.ci_high,
    )


def _numbers(result: SequentialResult) -> str:
    level = round(100 * (1 - result.alpha), 6)
    return (
        f"candidate {_fmt(result.mean_candidate)} (n={result.n_candidate}) vs production "
        f"{_fmt(result.mean_production)} (n={result.n_production}): Δ = {_fmt(result.diff)}, "
        f"{level:g} % confidence sequence [{result.ci_low:.4f}, {result.ci_high:.4f}]"
    )


def _tag(
    registry: ModelRegistry, rollout: Rollout, action: str, reason: str, readout: Readout | None
) -> None:
    """The step as ``rollout_*`` tags of the version (the step is recorded in the store
    already: a version deleted meanwhile is logged, not an error)."""
    numbers = vars(readout) if readout is not None else {}
    tags = {
        "rollout_id": rollout.id,
        "rollout_action": action,
        ROLLOUT_STATUS_TAG: rollout.status,
        "rollout_stage": rollout.stage_index,
        "rollout_share": rollout.share,
        "rollout_at": rollout.updated_at.isoformat(),
        ROLLOUT_REASON_TAG: reason[:5000],
        **{f"rollout_{k}": v for k, v in numbers.items()},
    }
    try:
        registry.tag_version(rollout.version, tags)
    except Exception as exc:  # the store holds the step; the tags only mirror it
        log.warning("rollout %d: version %s not tagged: %s", rollout.id, rollout.version, exc)


def _record(
    engine: Engine,
    registry: ModelRegistry,
    rollout: Rollout,
    action: Action,
    reason: str,
    readout: Readout | None,
    at: datetime,
    **stage: Any,
) -> StepResult:
    after = record_step(engine, rollout.id, action, reason=reason, readout=readout, at=at, **stage)
    _tag(registry, after, action, reason, readout)
    log.info("rollout %d of %s: %s — %s", after.id, after.label, action, reason)
    return StepResult(action, reason, after, readout)


def _end(
    engine: Engine,
    registry: ModelRegistry,
    settings: PipelineSettings,
    rollout: Rollout,
    action: Action,
    why: str,
    readout: Readout,
    now: datetime,
) -> StepResult:
    """Record a rollout's rollback or expiry, then take ``@staging`` off its candidate (a
    later step must not start rolling it out again)."""
    out = _record(engine, registry, rollout, action, why, readout, now)
    registry.remove_alias(
        settings.candidate_alias, by=CONTROLLER, reason=why, version=rollout.version
    )
    return out


def start(
    version: str | int,
    settings: PipelineSettings | None = None,
    *,
    reason: str = "started by hand",
    now: datetime | None = None,
) -> StepResult:
    """Start a rollout of ``version`` at the first stage (``banditops rollout start``): the
    version ``@staging`` holds (the controller stops a rollout of any other at its next
    step), against the one ``@production`` holds.

    Raises
    ------
    eventstore.rollouts.RolloutStateError
        A rollout of the model is running.
    modelregistry.registry.RegistryError
        An unknown version.
    ValueError
        The version is not ``@staging``, or is ``@production``, or there is no production.
    """
    settings = PipelineSettings() if settings is None else settings
    engine, registry = _open(settings)
    try:
        info = registry.get(version)
        staging = registry.by_alias(settings.candidate_alias)
        production = registry.by_alias(settings.production_alias)
        if production is None:
            raise ValueError(
                f"{settings.model_name!r} has no @{settings.production_alias} version to roll "
                f"version {info.version} out against."
            )
        if production.version == info.version:
            raise ValueError(
                f"version {info.version} is @{settings.production_alias} already: there is "
                "nothing to roll it out against."
            )
        if staging is None or staging.version != info.version:
            held = "no version" if staging is None else f"version {staging.version}"
            raise ValueError(
                f"version {info.version} is not @{settings.candidate_alias} ({held} is): a "
                f"rollout serves the @{settings.candidate_alias} version, and the next step "
                f"would stop this one. Move the alias first: banditops promote "
                f"{info.version} --to {settings.candidate_alias}."
            )
        reason = (
            f"{reason}: version {info.version} at {settings.rollout_stages[0]:.0%} of the "
            f"users against production {production.version}"
        )
        return _start(engine, registry, settings, info.version, production.version, reason, now)
    finally:
        engine.dispose()


def _start(
    engine: Engine,
    registry: ModelRegistry,
    settings: PipelineSettings,
    version: str,
    production: str,
    reason: str,
    now: datetime | None,
) -> StepResult:
    rollout = start_rollout(
        engine,
        settings.model_name,
        version,
        settings.rollout_stages[0],
        reason=reason,
        at=now,
        production_version=production,
        max_duration_s=settings.rollout_max_duration_s,
    )
    _tag(registry, rollout, "start", reason, None)
    log.info("rollout %d of %s started: %s", rollout.id, rollout.label, reason)
    return StepResult("start", reason, rollout)


def stop(
    settings: PipelineSettings | None = None,
    *,
    by: str,
    reason: str,
    now: datetime | None = None,
    version: str | None = None,
) -> StepResult:
    """Stop the running rollout (a person's decision): its candidate gets no more
    traffic; the staging alias stays, so the version can still be promoted by hand.
    With ``version``, only a rollout of that version is stopped.

    Raises
    ------
    LookupError
        No rollout of the model is running, or none of ``version``.
    """
    settings = PipelineSettings() if settings is None else settings
    engine, registry = _open(settings)
    try:
        rollout = current_rollout(engine, settings.model_name)
        if rollout is None:
            raise LookupError(f"no rollout of {settings.model_name!r} is running; nothing to stop.")
        if version is not None and rollout.version != version:
            raise LookupError(
                f"the running rollout of {settings.model_name!r} is of version "
                f"{rollout.version}, not {version}; nothing stopped."
            )
        why = f"stopped by {by}: {reason}"
        return _record(engine, registry, rollout, "stop", why, None, now or datetime.now(UTC))
    finally:
        engine.dispose()


def promoted_by_hand(
    version: str, settings: PipelineSettings, *, by: str, now: datetime | None = None
) -> StepResult | None:
    """Record ``promote`` on the running rollout of ``version`` after a person moved the
    production alias to it (``bandit_promote`` skipping the rollout); None when no
    rollout of that version runs."""
    engine, registry = _open(settings)
    try:
        rollout = current_rollout(engine, settings.model_name)
        if rollout is None or rollout.version != str(version):
            return None
        why = f"promoted by {by} through bandit_promote: the rollout was skipped"
        return _record(engine, registry, rollout, "promote", why, None, now or datetime.now(UTC))
    finally:
        engine.dispose()


#: Attempts of one controller step: a step that finds the rollout changed under it (a
#: person stopped or promoted it, or another step ran, while this one read the evidence)
#: writes nothing and steps again from the new state, rather than failing its task.
STEP_ATTEMPTS = 3


def rollout_step(
    settings: PipelineSettings | None = None, now: datetime | None = None
) -> StepResult:
    """One controller step (see the module's docstring): start, advance, hold, roll back,
    promote or expire the model's rollout, recorded in ``rollout_steps`` and as tags."""
    settings = PipelineSettings() if settings is None else settings
    now = datetime.now(UTC) if now is None else now
    engine, registry = _open(settings)
    try:
        attempt = 1
        while True:
            try:
                return _step(engine, registry, settings, now)
            except RolloutStateError as exc:  # nothing of this attempt was written
                if attempt == STEP_ATTEMPTS:
                    raise
                attempt += 1
                log.info("the rollout changed while this step read it (%s); stepping again", exc)
    finally:
        engine.dispose()


def _step(
    engine: Engine, registry: ModelRegistry, settings: PipelineSettings, now: datetime
) -> StepResult:
    name = settings.model_name
    staging = registry.by_alias(settings.candidate_alias)
    production = registry.by_alias(settings.production_alias)
    rollout = current_rollout(engine, name)
    if rollout is None:
        if staging is None:
            return StepResult("idle", f"no rollout of {name!r} is running.")
        ended = list_rollouts(engine, name, version=staging.version, limit=1)
        if ended:  # an unfinished end is finished whether or not rollouts start here
            return _after_its_end(registry, settings, ended[0])
        if not settings.rollout_auto_start:
            return StepResult("idle", f"no rollout of {name!r} is running.")
        if production is None:
            return StepResult(
                "idle", f"@{settings.candidate_alias} is set but {name!r} has no production."
            )
        if production.version == staging.version:
            return StepResult("idle", f"version {staging.version} is already production.")
        unrecorded = _unrecorded_override(registry, settings, staging)
        if unrecorded is not None:
            return StepResult("idle", unrecorded)
        reason = (
            f"@{settings.candidate_alias} → version {staging.version} (production "
            f"{production.version}): staged rollout {settings.rollout_stages}"
        )
        return _start(engine, registry, settings, staging.version, production.version, reason, now)

    # the registry changed under the rollout
    if production is not None and production.version == rollout.version:
        return _record(
            engine,
            registry,
            rollout,
            "promote",
            _promoted_why(registry, settings, rollout),
            None,
            now,
        )
    if staging is None or staging.version != rollout.version:
        where = "removed" if staging is None else f"moved to version {staging.version}"
        why = f"@{settings.candidate_alias} was {where}: the rollout of {rollout.version} stops"
        return _record(engine, registry, rollout, "stop", why, None, now)
    held = None if production is None else production.version
    # a rollout started before revision 0006 recorded no production: the recorded move
    # before its start says which (a move by MLflow's own client went unseen: upgrade
    # helper, stop 45)
    expected = rollout.production_version or _production_at(registry, settings, rollout)
    if expected is not None and held != expected:
        # the alias moved by any means: a promotion or rollback, MLflow's UI or client
        now_held = "removed" if held is None else f"on version {held}"
        why = (
            f"@{settings.production_alias} is {now_held}, not on version "
            f"{expected} as when the rollout started: the production "
            f"arm's outcomes mix versions; the rollout of {rollout.version} stops (start it "
            "again to compare with the new production)"
        )
        return _record(engine, registry, rollout, "stop", why, None, now)
    moved = _production_moves(registry, settings, rollout)
    if rollout.production_version is not None:
        # moves away from the recorded production (it came back since: A → B → A); the
        # moves that put it there are stamped by the registry host's clock, which may
        # run ahead of this one's: they stopped a healthy rollout (audit, stop 54)
        recorded = rollout.production_version
        moved = [
            m
            for m in moved
            if str(m.get("previous")) == recorded and str(m.get("version")) != recorded
        ]
    if moved:
        last = moved[-1]
        why = (
            f"@{settings.production_alias} moved from {last.get('previous')} to "
            f"{last.get('version')} at {last.get('at')} (by {last.get('by')}) while the rollout "
            f"ran: the production arm's outcomes mix versions; the rollout of "
            f"{rollout.version} stops (start it again to compare with the new production)"
        )
        return _record(engine, registry, rollout, "stop", why, None, now)

    rules = RewardRules.of(settings)
    # per stage: pooled over stages of different shares, a reward rate that moves over
    # time would make a worse candidate look better (bandit_core.sequential.stratified_test)
    stages_seen = stage_outcomes(engine, name, rollout, rules, now=now)
    cand, prod = OnlineMean(), OnlineMean()
    for arms in stages_seen:
        cand, prod = cand + arms[CANDIDATE], prod + arms[PRODUCTION]
    # by user: one user's outcomes are not independent draws (clustered_test); a sum of
    # several rewards may pass the per-reward range, which then widens to hold it
    result = clustered_test(
        [(_units(arms[CANDIDATE]), _units(arms[PRODUCTION])) for arms in stages_seen],
        alpha=settings.rollout_alpha,
        margin=settings.rollout_margin,
        reward_range=(
            min(settings.reward_min, cand.lowest, prod.lowest),
            max(settings.reward_max, cand.highest, prod.highest),
        ),
        design_n=settings.rollout_design_n,
    )
    readout = readout_of(result)
    numbers = _numbers(result)
    set_aside = cand.set_aside + prod.set_aside
    if set_aside:
        numbers += (
            f"; {set_aside} decision(s) set aside for a stored reward outside "
            f"[{settings.reward_min:g}, {settings.reward_max:g}]"
        )
    min_n = settings.rollout_min_samples
    stages = settings.rollout_stages
    stage = f"stage {rollout.stage_index + 1}/{len(stages)} ({rollout.share:.0%})"
    enough = cand.counted >= min_n and prod.counted >= min_n

    if enough and result.decision == "rollback":
        why = (
            f"rolled back at {stage}: worse than production by more than the margin "
            f"{settings.rollout_margin:g}; {numbers}"
        )
        return _end(engine, registry, settings, rollout, "rollback", why, readout, now)

    if rollout.past_its_end(now, settings.rollout_max_duration_s):
        # the replicas stopped serving the candidate at its end: nothing else can follow
        ran = (now - rollout.started_at).total_seconds()
        verdict = (
            "better than production, but the stages did not run to promotion in time"
            if result.decision == "advance"
            else "no evidence either way — not better, not worse by more than the margin "
            f"{settings.rollout_margin:g}"
        )
        why = (
            f"expired after {_duration(ran)} at {stage}: {verdict}; {numbers}. "
            f"@{settings.production_alias} stays "
            f"{production.version if production else 'unset'}; "
            f"@{settings.candidate_alias} removed from {rollout.version}"
        )
        return _end(engine, registry, settings, rollout, "expire", why, readout, now)

    on_stage = stages_seen[-1][CANDIDATE]
    waited = now - rollout.stage_started_at
    stage_ready = (
        waited >= timedelta(seconds=settings.rollout_min_stage_s) and on_stage.counted >= min_n
    )
    if enough and result.decision == "advance" and stage_ready:
        if rollout.stage_index + 1 < len(stages):
            nxt = rollout.stage_index + 1
            why = f"advance from {stage} to {stages[nxt]:.0%}: better than production; {numbers}"
            return _record(
                engine, registry, rollout, "advance", why, readout, now,
                stage_index=nxt, share=stages[nxt],
            )  # fmt: skip
        why = f"promoted at {stage}: better than production; {numbers}"
        # a version whose offline gate failed is staged only by a person's approved
        # override (the gate stages passing versions alone): the online test decides it
        from modelregistry.registry import RegistryError  # lazy, as in _open

        overridden = gate_verdict(registry.get(rollout.version).tags) is False
        if overridden:
            why += "; its offline gate had failed (staged by a person's override)"
        try:
            registry.promote(rollout.version, by=CONTROLLER, reason=why, force=overridden)
        except RegistryError as exc:  # never leave the users split on a refused promotion
            why = (
                f"stopped at {stage}: better than production, but the registry refused the "
                f"promotion ({exc}); @{settings.production_alias} stays; {numbers}"
            )
            return _record(engine, registry, rollout, "stop", why, readout, now)
        return _record(engine, registry, rollout, "promote", why, readout, now)

    waiting = []
    if not enough:
        waiting.append(
            f"{min_n} outcomes per arm (candidate {cand.counted}, production {prod.counted})"
        )
    elif result.decision == "hold":
        waiting.append("a confident difference")
    if waited < timedelta(seconds=settings.rollout_min_stage_s):
        waiting.append(
            f"{settings.rollout_min_stage_s:g} s on the stage ({waited.total_seconds():.0f} s)"
        )
    if on_stage.counted < min_n:
        waiting.append(f"{min_n} candidate outcomes on the stage ({on_stage.counted})")
    why = f"hold at {stage}: waiting for {'; '.join(waiting) or 'the next step'}; {numbers}"
    return _record(engine, registry, rollout, "hold", why, readout, now)


def _units(outcome: OnlineMean) -> ArmUnits:
    units = outcome.units
    if units is None:
        raise ValueError("the rollout's outcomes must come by unit (stage_outcomes does).")
    singles = ArmCounts(units.singles, units.singles_total, units.singles_sq)
    return ArmUnits(units.counts, units.sums, singles)


def _unrecorded_override(
    registry: ModelRegistry, settings: PipelineSettings, staging: Any
) -> str | None:
    """Why no rollout starts for ``staging``, a version whose offline gate did not pass:
    the last recorded move of ``@staging`` did not put it there, so no approved override
    did (MLflow's UI or client set the alias, past ``bandit_promote``'s approval); None
    when it may start. Before, such a version was rolled out to 100 % and promoted as
    "staged by a person's override" with no override on record (operator helper, stop 44).
    """
    alias = settings.candidate_alias
    verdict = gate_verdict(staging.tags)
    if verdict is True:
        return None
    last = registry.last_move(alias)
    if last is not None and str(last.get("version")) == str(staging.version):
        return None
    return (
        f"@{alias} is on version {staging.version}, whose offline gate "
        f"{'was not decided' if verdict is None else 'failed'}, and no "
        f"recorded move put it there (set outside banditops, e.g. in MLflow's UI): no "
        "rollout starts; stage it through bandit_promote, whose approval is recorded."
    )


#: How a rollout ends that takes its version off ``@staging`` (the controller removes the
#: alias right after recording it).
UNSTAGING_ENDS = (ENDS["rollback"], ENDS["expire"])


def _after_its_end(
    registry: ModelRegistry, settings: PipelineSettings, ended: Rollout
) -> StepResult:
    """No rollout runs and ``@staging`` holds a version whose latest rollout ended. When
    that end takes the version off ``@staging`` and nobody staged it again since, the
    removal never happened (the step was killed, or the registry failed, between its
    record and the alias): it is finished now. Before, ``@staging`` stayed on the
    rolled-back version for good, the Bandits page offered to promote it and a fixed
    ``candidate_share`` served it again (operator helper, stop 44)."""
    alias = settings.candidate_alias
    if ended.status not in UNSTAGING_ENDS or _staged_since(registry, alias, ended):
        return StepResult("idle", f"version {ended.version} was rolled out before.")
    why = (
        f"rollout {ended.id} of version {ended.version} ended {ended.status} and left "
        f"@{alias} on it; removed now ({ended.reason})"
    )
    registry.remove_alias(alias, by=CONTROLLER, reason=why, version=ended.version)
    log.info("rollout %d of %s: %s", ended.id, ended.label, why)
    return StepResult("idle", why)


def _staged_since(registry: ModelRegistry, alias: str, ended: Rollout) -> bool:
    """Whether ``alias`` was moved to the rollout's version after the rollout ended (a
    person staged it again on purpose)."""
    moves = _moves_after(registry, alias, ended.updated_at)
    return any(str(move.get("version")) == ended.version for move in moves)


def _promoted_why(registry: ModelRegistry, settings: PipelineSettings, rollout: Rollout) -> str:
    """Why the rollout's version holds the production alias, as the step records it: the
    recorded move's own reason when it moved there since the rollout started (a
    controller step that died between its promotion and its record, or a promotion
    through ``bandit_promote`` whose record failed: their numbers and approver are kept),
    else a move outside banditops."""
    moves = _production_moves(registry, settings, rollout)
    last = moves[-1] if moves else None
    if last is not None and last.get("version") == rollout.version:
        by = str(last.get("by"))
        reason = str(last.get("reason", ""))
        if by == CONTROLLER:  # the controller's own promotion: its reason has the numbers
            return f"{reason} (recorded by a later step)"
        return f"promoted by {by} at {last.get('at')}: {reason} (recorded by a later step)"
    return (
        f"version {rollout.version} was moved to @{settings.production_alias} outside the rollout"
    )


def _production_at(
    registry: ModelRegistry, settings: PipelineSettings, rollout: Rollout
) -> str | None:
    """The version the production alias held when ``rollout`` started, by the last move
    recorded before (None when none is)."""
    alias = settings.production_alias
    held = None
    for move in registry.alias_history():  # oldest first
        try:
            at = datetime.fromisoformat(str(move.get("at")))
        except ValueError:
            continue
        if move.get("alias") == alias and at.tzinfo is not None and at <= rollout.started_at:
            held = move.get("version")
    return None if held is None else str(held)


def _production_moves(
    registry: ModelRegistry, settings: PipelineSettings, rollout: Rollout
) -> list[dict[str, Any]]:
    """The moves of the production alias recorded after ``rollout`` started."""
    return _moves_after(registry, settings.production_alias, rollout.started_at)


def _moves_after(registry: ModelRegistry, alias: str, since: datetime) -> list[dict[str, Any]]:
    """The recorded moves of ``alias`` stamped after ``since``, oldest first."""
    out = []
    for move in registry.alias_history():
        if move.get("alias") != alias:
            continue
        try:
            at = datetime.fromisoformat(str(move.get("at")))
        except ValueError:
            continue
        if at.tzinfo is not None and at > since:
            out.append(move)
    return out


def status(settings: PipelineSettings | None = None, limit: int = 20) -> dict[str, Any]:
    """The running (or latest) rollout of the model and its latest steps, newest first."""
    settings = PipelineSettings() if settings is None else settings
    engine = make_engine(settings.store_url, settings.sqlite_synchronous)
    try:
        require_current(engine)
        running = current_rollout(engine, settings.model_name)
        latest = running or next(iter(list_rollouts(engine, settings.model_name, limit=1)), None)
        steps = (
            []
            if latest is None
            else rollout_history(engine, settings.model_name, limit=limit, rollout_id=latest.id)
        )
    finally:
        engine.dispose()
    return {"running": running is not None, "rollout": latest, "steps": steps}
