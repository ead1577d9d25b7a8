"""Staged rollouts in the event store: the shared state every service replica reads, the
audit of every decision, and the online outcome per traffic arm.

The tables are :class:`eventstore.schema.RolloutRow` (``rollouts``) and
:class:`eventstore.schema.RolloutStepRow` (``rollout_steps``). The rules:

* at most one rollout per model is ``running`` (:func:`start_rollout` refuses a second);
  the service routes ``share`` of its users (sticky by hashed user) to the rollout's
  ``version`` while it runs (:func:`current_rollout`, read at each model poll);
* a rollout leaves ``running`` once, by :func:`record_step` with ``rollback``
  (→ ``rolled_back``), ``promote`` (→ ``promoted``), ``stop`` (→ ``stopped``) or
  ``expire`` (→ ``expired``); ``advance`` moves it to another stage and share, ``hold``
  changes nothing but ``updated_at``. Every call appends one ``rollout_steps`` row in the
  same transaction, and only a running rollout takes steps (a second controller that
  lost the race gets :class:`RolloutStateError`, and nothing is written);
* :func:`traffic_outcomes` is what the controller decides on: per traffic arm, the
  decisions since the rollout started whose reward window has closed, each with its
  reward as the replay reads it for training and the monitor for its online means
  (:mod:`eventstore.outcomes`): the reward received in the window — the first under the
  first-wins rule, the sum under the sum rule — or, without one, ``default_reward``
  (left out under ``missing_reward="drop"``); a slate's, the mean over its shown
  positions of each position's so read. A reward no head learnt
  (``rejected``, ``arm_limit``, ``not_served``…) is still the decision's outcome; a
  decision whose window is still open is not counted yet.

``version`` is the registry's version number (``"3"``); the decisions name a version by
:func:`eventstore.contract.version_label` (``"<model>/3"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, get_args

from sqlalchemy import Engine, and_, func, insert, or_, select, update

from eventstore.contract import CANDIDATE, PRODUCTION, version_label
from eventstore.engine import take_turn, turn_key
from eventstore.outcomes import OnlineMean, RewardRules, UnitSums, online_outcomes
from eventstore.schema import decisions, rollout_steps, rollouts
from eventstore.text import check_text

#: Buckets of users for the rollout's cluster-robust variance: enough that the variance
#: estimate has thousands of independent terms, few enough that a stage's arrays are
#: small however many users it has.
UNIT_BUCKETS = 4096

Status = Literal["running", "promoted", "rolled_back", "stopped", "expired"]
Action = Literal["start", "advance", "hold", "rollback", "promote", "stop", "expire"]
STATUSES: Final[tuple[str, ...]] = get_args(Status)
ACTIONS: Final[tuple[str, ...]] = get_args(Action)
RUNNING: Final = "running"
#: The turn every rollout write takes (:func:`eventstore.engine.take_turn`): two starts
#: at once left two running rollouts of one model on PostgreSQL, and a step that waited
#: for another to end the rollout said it was still running.
ROLLOUT_WRITES: Final = turn_key("banditops.rollouts")
#: The status a rollout ends in after each ending action.
ENDS: Final[dict[str, str]] = {
    "rollback": "rolled_back",
    "promote": "promoted",
    "stop": "stopped",
    "expire": "expired",
}
#: The statuses of a rollout that ended against its candidate: the online test (or a
#: person stopping it) decided it should not replace production.
ENDED_AGAINST: Final[frozenset[str]] = frozenset(
    status for action, status in ENDS.items() if action != "promote"
)


class RolloutStateError(RuntimeError):
    """A rollout step that the rollout's state does not allow (not running, or a second
    running rollout of the same model)."""


@dataclass(frozen=True)
class Rollout:
    """A row of ``rollouts``."""

    id: int
    model_name: str
    version: str
    started_at: datetime
    stage_index: int
    share: float
    stage_started_at: datetime
    status: str
    updated_at: datetime
    reason: str
    production_version: str | None = None
    ends_by: datetime | None = None

    @property
    def running(self) -> bool:
        return self.status == RUNNING

    def past_its_end(self, now: datetime, max_duration_s: float | None = None) -> bool:
        """Whether the rollout has run out of time at ``now``: past ``ends_by`` (fixed at
        its start; None before revision 0007), or ``max_duration_s`` after its start when
        given (the controller's setting now, which can shorten a rollout, never lengthen
        it: the replicas end it at ``ends_by`` anyway)."""
        if self.ends_by is not None and now >= self.ends_by:
            return True
        if max_duration_s is None:
            return False
        return now - self.started_at >= timedelta(seconds=max_duration_s)

    @property
    def label(self) -> str:
        """The version as the decisions name it (``<model>/<version>``)."""
        return version_label(self.model_name, self.version)


@dataclass(frozen=True)
class Readout:
    """The numbers a decision was taken on (``None`` where an arm has no reward yet)."""

    n_production: int = 0
    n_candidate: int = 0
    mean_production: float | None = None
    mean_candidate: float | None = None
    diff: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None


@dataclass(frozen=True)
class RolloutStep:
    """A row of ``rollout_steps``."""

    id: int
    rollout_id: int
    at: datetime
    stage_index: int
    share: float
    action: str
    n_production: int
    n_candidate: int
    mean_production: float | None
    mean_candidate: float | None
    diff: float | None
    ci_low: float | None
    ci_high: float | None
    reason: str

    @property
    def readout(self) -> Readout:
        return Readout(
            self.n_production,
            self.n_candidate,
            self.mean_production,
            self.mean_candidate,
            self.diff,
            self.ci_low,
            self.ci_high,
        )


# ---------------------------------------------------------------------- readers
def _rollout(row: Any) -> Rollout:
    return Rollout(**{f: row._mapping[f] for f in Rollout.__dataclass_fields__})


def _step(row: Any) -> RolloutStep:
    return RolloutStep(**{f: row._mapping[f] for f in RolloutStep.__dataclass_fields__})


def current_rollout(engine: Engine, model_name: str) -> Rollout | None:
    """The running rollout of ``model_name``, or None."""
    query = select(rollouts).where(
        rollouts.c.model_name == model_name, rollouts.c.status == RUNNING
    )
    with engine.connect() as conn:
        row = conn.execute(query.order_by(rollouts.c.id.desc()).limit(1)).first()
    return None if row is None else _rollout(row)


def latest_rollout(engine: Engine, model_name: str) -> Rollout | None:
    """The most recently started rollout of ``model_name`` (running or not), or None."""
    query = select(rollouts).where(rollouts.c.model_name == model_name)
    with engine.connect() as conn:
        row = conn.execute(query.order_by(rollouts.c.id.desc()).limit(1)).first()
    return None if row is None else _rollout(row)


def get_rollout(engine: Engine, rollout_id: int) -> Rollout:
    """The rollout ``rollout_id``.

    Raises
    ------
    LookupError
        No such rollout.
    """
    with engine.connect() as conn:
        row = conn.execute(select(rollouts).where(rollouts.c.id == rollout_id)).first()
    if row is None:
        raise LookupError(f"no rollout with id {rollout_id}.")
    return _rollout(row)


def list_rollouts(
    engine: Engine, model_name: str, version: str | None = None, limit: int = 50
) -> list[Rollout]:
    """The rollouts of ``model_name`` (of one ``version`` if given), newest first."""
    query = select(rollouts).where(rollouts.c.model_name == model_name)
    if version is not None:
        query = query.where(rollouts.c.version == str(version))
    with engine.connect() as conn:
        rows = conn.execute(query.order_by(rollouts.c.id.desc()).limit(limit)).all()
    return [_rollout(r) for r in rows]


def rollout_history(
    engine: Engine, model_name: str, limit: int = 50, rollout_id: int | None = None
) -> list[RolloutStep]:
    """The latest ``limit`` steps of the rollouts of ``model_name`` (of one rollout if
    ``rollout_id`` is given), newest first."""
    query = (
        select(rollout_steps)
        .join(rollouts, rollouts.c.id == rollout_steps.c.rollout_id)
        .where(rollouts.c.model_name == model_name)
    )
    if rollout_id is not None:
        query = query.where(rollout_steps.c.rollout_id == rollout_id)
    with engine.connect() as conn:
        rows = conn.execute(query.order_by(rollout_steps.c.id.desc()).limit(limit)).all()
    return [_step(r) for r in rows]


def traffic_outcomes(
    engine: Engine,
    model_name: str,
    version: str,
    since: datetime,
    rules: RewardRules,
    until: datetime | None = None,
    now: datetime | None = None,
    units: int = 0,
) -> dict[str, OnlineMean]:
    """The online outcome per traffic arm of the decisions since ``since`` (and before
    ``until``), as of ``now``, under ``rules`` (:func:`eventstore.outcomes.online_outcomes`:
    the replay's and the monitor's reading of a decision's reward).

    ``"candidate"``: decisions on the candidate arm served by ``version`` of
    ``model_name`` (or by the fallback while it was the candidate's); ``"production"``:
    every decision on the production arm. Both keys are always present.
    """
    label = version_label(model_name, version)
    groups = online_outcomes(
        engine,
        rules,
        since=since,
        until=until,
        now=now,
        by=("traffic", "model_version", "fallback"),
        units=units,
    )
    empty = UnitSums.empty(units) if units else None
    out: dict[str, OnlineMean] = {
        PRODUCTION: OnlineMean(units=empty),
        CANDIDATE: OnlineMean(units=empty),
    }
    for (traffic, served_by, fallback), outcome in groups.items():
        if traffic == PRODUCTION:
            out[PRODUCTION] += outcome
        elif traffic == CANDIDATE and (served_by == label or fallback == "true"):
            out[CANDIDATE] += outcome
    return out


def stage_starts(engine: Engine, rollout: Rollout) -> list[datetime]:
    """When each stage of ``rollout`` so far started: its start, then each advance."""
    steps = rollout_steps.c
    query = (
        select(steps.at)
        .where(steps.rollout_id == rollout.id, steps.action == "advance")
        .order_by(steps.id)
    )
    with engine.connect() as conn:
        advances: list[datetime] = list(conn.execute(query).scalars())
    return [rollout.started_at, *advances]


def stage_outcomes(
    engine: Engine,
    model_name: str,
    rollout: Rollout,
    rules: RewardRules,
    now: datetime | None = None,
    units: int = UNIT_BUCKETS,
) -> list[dict[str, OnlineMean]]:
    """:func:`traffic_outcomes` of the decisions of each stage of ``rollout`` so far (the
    last one still running), in stage order, by unit of randomisation (users in
    ``units`` buckets): within a stage the traffic share is constant, so the arms can be
    compared there (see :func:`bandit_core.sequential.clustered_test`)."""
    starts = stage_starts(engine, rollout)
    ends: list[datetime | None] = [*starts[1:], None]
    return [
        traffic_outcomes(
            engine, model_name, rollout.version, since, rules, until=until, now=now, units=units
        )
        for since, until in zip(starts, ends, strict=True)
    ]


def traffic_users(engine: Engine, model_name: str, version: str, since: datetime) -> dict[str, int]:
    """Distinct users (salted user hashes) per traffic arm since ``since``: who saw the
    candidate ``version`` of ``model_name`` (the arms as :func:`traffic_outcomes` counts
    them), who production; ``"all"``: every user with a decision since then. Requests
    without a user id are not counted. Every key is always present."""
    label = version_label(model_name, version)
    candidate_arm = and_(
        decisions.c.traffic == CANDIDATE,
        or_(decisions.c.model_version == label, decisions.c.fallback.is_(True)),
    )
    known = [decisions.c.created_at >= since, decisions.c.user_hash.is_not(None)]
    users = func.count(func.distinct(decisions.c.user_hash))
    with engine.connect() as conn:
        everyone = conn.execute(select(users).where(*known)).scalar_one()
        cand = conn.execute(select(users).where(*known, candidate_arm)).scalar_one()
        prod = conn.execute(
            select(users).where(*known, decisions.c.traffic == PRODUCTION)
        ).scalar_one()
    return {CANDIDATE: int(cand), PRODUCTION: int(prod), "all": int(everyone)}


# ---------------------------------------------------------------------- writers
def _now(at: datetime | None) -> datetime:
    if at is None:
        return datetime.now(UTC)
    if at.tzinfo is None:
        raise ValueError(f"at must be timezone-aware; got naive {at!r}.")
    return at


def _end(at: datetime, max_duration_s: float) -> datetime:
    """``max_duration_s`` after ``at``, for a finite positive duration that ends before
    the calendar does."""
    if not 0.0 < max_duration_s < math.inf:
        raise ValueError(f"max_duration_s must be finite and > 0; got {max_duration_s!r}.")
    try:
        return at + timedelta(seconds=max_duration_s)
    except OverflowError:
        raise ValueError(
            f"max_duration_s must end before the year 10000; got {max_duration_s:g} s."
        ) from None


def _check_share(share: float) -> float:
    share = float(share)
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must be in (0, 1]; got {share}.")
    return share


def _step_values(
    rollout_id: int,
    at: datetime,
    stage_index: int,
    share: float,
    action: str,
    readout: Readout,
    reason: str,
) -> dict[str, Any]:
    return {
        "rollout_id": rollout_id,
        "at": at,
        "stage_index": stage_index,
        "share": share,
        "action": action,
        "n_production": int(readout.n_production),
        "n_candidate": int(readout.n_candidate),
        "mean_production": readout.mean_production,
        "mean_candidate": readout.mean_candidate,
        "diff": readout.diff,
        "ci_low": readout.ci_low,
        "ci_high": readout.ci_high,
        "reason": reason,
    }


def start_rollout(
    engine: Engine,
    model_name: str,
    version: str | int,
    share: float,
    *,
    reason: str,
    at: datetime | None = None,
    production_version: str | None = None,
    max_duration_s: float | None = None,
) -> Rollout:
    """Start a rollout of ``version`` at stage 0 with ``share`` of the users, against
    ``production_version`` (the version ``@production`` holds), ending by
    ``max_duration_s`` after its start (None: no end of its own, the controller's setting
    decides); records the ``start`` step.

    Raises
    ------
    RolloutStateError
        ``model_name`` already has a running rollout.
    ValueError
        ``share`` outside (0, 1], an empty version, a naive ``at``, a ``reason`` with a
        NUL character or a lone surrogate, a ``max_duration_s`` not finite and positive.
    """
    share = _check_share(share)
    check_text("reason", reason)
    version = check_text("version", str(version)).strip()
    if not version:
        raise ValueError("version must not be empty.")
    at = _now(at)
    ends_by = None if max_duration_s is None else _end(at, max_duration_s)
    with engine.begin() as conn:
        take_turn(conn, ROLLOUT_WRITES)
        running = conn.execute(
            select(rollouts.c.id, rollouts.c.version).where(
                rollouts.c.model_name == model_name, rollouts.c.status == RUNNING
            )
        ).first()
        if running is not None:
            raise RolloutStateError(
                f"{model_name!r} already has a running rollout (id {running.id}, version "
                f"{running.version}); stop it first."
            )
        key = conn.execute(
            insert(rollouts).values(
                model_name=model_name,
                version=version,
                started_at=at,
                stage_index=0,
                share=share,
                stage_started_at=at,
                status=RUNNING,
                updated_at=at,
                reason=reason,
                production_version=production_version,
                ends_by=ends_by,
            )
        ).inserted_primary_key
        if key is None:  # pragma: no cover - every dialect returns the new key
            raise RuntimeError("the database returned no id for the new rollout.")
        rollout_id = key[0]
        conn.execute(
            insert(rollout_steps).values(
                _step_values(int(rollout_id), at, 0, share, "start", Readout(), reason)
            )
        )
    return get_rollout(engine, int(rollout_id))


def record_step(
    engine: Engine,
    rollout_id: int,
    action: Action,
    *,
    reason: str,
    readout: Readout | None = None,
    stage_index: int | None = None,
    share: float | None = None,
    at: datetime | None = None,
) -> Rollout:
    """Record one decision on a running rollout and apply it to its state, atomically.

    ``advance`` needs the new ``stage_index`` and ``share``; ``rollback``, ``promote``,
    ``stop`` and ``expire`` end the rollout (:data:`ENDS`); ``hold`` only records.

    Raises
    ------
    RolloutStateError
        The rollout is not running (it ended, possibly by another controller or person).
    ValueError
        An unknown action, ``advance`` without a stage and a share in (0, 1], a
        ``reason`` with a NUL character or a lone surrogate.
    LookupError
        No such rollout.
    """
    check_text("reason", reason)
    if action not in ACTIONS or action == "start":
        allowed = ", ".join(a for a in ACTIONS if a != "start")
        raise ValueError(f"action must be one of {allowed}; got {action!r}.")
    at = _now(at)
    values: dict[str, Any] = {"updated_at": at}
    if action == "advance":
        if stage_index is None or share is None:
            raise ValueError("advance needs the new stage_index and share.")
        values.update(stage_index=int(stage_index), share=_check_share(share), stage_started_at=at)
    elif action in ENDS:
        values.update(status=ENDS[action], reason=reason)
    with engine.begin() as conn:
        take_turn(conn, ROLLOUT_WRITES)
        before = conn.execute(select(rollouts).where(rollouts.c.id == rollout_id)).first()
        if before is None:
            raise LookupError(f"no rollout with id {rollout_id}.")
        done = conn.execute(
            update(rollouts)
            .where(rollouts.c.id == rollout_id, rollouts.c.status == RUNNING)
            .values(values)
        ).rowcount
        if done != 1:
            raise RolloutStateError(
                f"rollout {rollout_id} of {before.model_name!r} is {before.status}, not running; "
                f"{action} not recorded."
            )
        conn.execute(
            insert(rollout_steps).values(
                _step_values(
                    rollout_id,
                    at,
                    int(values.get("stage_index", before.stage_index)),
                    float(values.get("share", before.share)),
                    action,
                    readout or Readout(),
                    reason,
                )
            )
        )
    return get_rollout(engine, rollout_id)
