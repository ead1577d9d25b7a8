"""Retention of the event store: prune by age, never below what running work still reads.

``bandit_retention`` (nightly) deletes decisions (with their rewards) and superseded head
snapshots (with their parts) older than ``retention_days`` (:func:`prune_events`, which
``banditops store prune`` calls too). The cutoff is floored (:func:`prune_cutoff`) at the
earliest start of anything still running that reads the store:

* a ``bandit_retrain`` run that is running or queued reads its replay window from its
  ``window_start`` (the DAG finds them: :func:`training.runspec.active_windows`);
* a running rollout (:func:`eventstore.rollouts.current_rollout`) reads the decisions of
  both traffic arms since its ``started_at``;
* a served head (:func:`held_heads`) is rebuilt from its newest snapshot and the rewards
  it learnt after it (:func:`learnt_by`): a version that made a decision since the cutoff
  keeps every decision whose reward its head learnt beyond that snapshot. With several
  writers (``--workers`` > 1, replica sync) no snapshot is written, so the rows of the
  served versions are kept from the start of their window (``window_stop``) for as long
  as they serve, and one restart later a replica still has everything it learnt.

So a row a running retrain, rollout or served head needs is kept, and a later night
prunes it. The deletes run in batches of :data:`PRUNE_BATCH` decisions, a transaction
each: the service's writes wait for one batch (on SQLite a fraction of a second), never
for the whole night's prune.

The catalog keeps each item's current version for good (retired or not: a version number
is never handed out twice) and loses the versions superseded before the catalog's
*horizon* (:func:`catalog_horizon_for`): a decision older than the cutoff is gone, and a
newer one logged versions its service's index held, which are at or after the horizon.
The catalog as it was before the horizon can no longer be listed (``seq`` below it: 410).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    delete,
    exists,
    func,
    select,
    tuple_,
    update,
)

from eventstore.engine import make_engine
from eventstore.rollouts import RUNNING, current_rollout
from eventstore.schema import (
    catalog_horizon,
    decisions,
    head_snapshot_parts,
    head_snapshots,
    item_versions,
    rewards,
    rollout_steps,
    rollouts,
)
from eventstore.workspace import as_utc

log = logging.getLogger(__name__)

#: Decisions deleted per transaction (with their rewards).
PRUNE_BATCH = 2_000
#: Head snapshots, or snapshot parts, deleted per transaction (each up to a whole head,
#: or a part of one).
BLOB_BATCH = 16
#: How long a superseded item version outlives the cutoff at least, after the version
#: that superseded it was written: a decision logs the versions its service's catalog
#: index held, which follows the store by its poll, and by up to ``FEED_OVERLAP`` for a
#: version whose transaction committed after a later one was read. A day covers both.
ITEM_VERSION_GRACE = timedelta(days=1)
#: A served version's label → where its training window stops (None: it learns only the
#: rewards of its own decisions), as the service reads the registry's ``window_stop``.
WindowStops = Callable[[str], datetime | None]


def learnt_by(model_version: str, since: datetime | None) -> ColumnElement[bool]:
    """Which applied rewards a head of ``model_version`` learns: those of its own
    decisions, or — for a version whose training window stops at ``since`` — those of
    every decision created at or after ``since``, whichever version made it (its own
    decisions all come later: the window was extracted before it was registered). The
    decisions before ``since`` are in the window it was trained on, so each reward is
    learnt exactly once, by the window or online. The one rule of recovery, replica sync
    and retention (a condition on ``rewards`` joined with ``decisions``)."""
    learnt: ColumnElement[bool] = (
        rewards.c.model_version == model_version
        if since is None
        else decisions.c.created_at >= since
    )
    return learnt


def latest_snapshot_first() -> tuple[Any, ...]:
    """The order of a version's snapshots, the one recovery starts from first: the one
    covering the most rewards, the newest of those (snapshots commit in the order their
    serialisation ends, which need not be the order of their copies)."""
    s = head_snapshots.c
    return s.last_reward_id.desc(), s.id.desc()


def prune_events(
    engine: Engine,
    older_than: datetime,
    dry_run: bool = False,
    batch: int = PRUNE_BATCH,
    keep_newest_of: Collection[str] | None = None,
) -> dict[str, int]:
    """Delete decisions created before ``older_than`` with their rewards, head snapshots
    older than it except the one each version (each incarnation of a label) recovers
    from, and the parts of large snapshots no remaining snapshot reads (those of the
    deleted ones, and those of a snapshot whose writing never finished).

    With ``keep_newest_of`` (the labels the registry still serves), the snapshot a version
    recovers from is kept only for those and for the versions that made a decision since
    ``older_than``: a version retired longer ago loses its last snapshot too (before,
    every version ever served kept one for good: 276 of 454 after a year of nightly
    versions, in the soak helper's run). None keeps every version's.

    The item versions superseded before the catalog's horizon (:func:`catalog_horizon_for`)
    go too, once the horizon has moved there (a listing at an older catalog version is
    refused from then on).

    With ``keep_newest_of`` too, the rollouts that ended before ``older_than`` go with
    their steps (up to a thousand a rollout: nothing deleted them), except each model's
    latest (the Bandits page and ``rollout status`` show it) and the latest of each
    version those labels name (the controller reads it not to roll a version still
    ``@staging`` out again).

    The decisions go ``batch`` at a time in id order, each batch with its rewards in one
    transaction, so no write of the service waits for more than one batch.

    Returns the number of rows deleted (or that would be, with ``dry_run``) per table.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1; got {batch!r}.")
    d, r, s, p = decisions.c, rewards.c, head_snapshots.c, head_snapshot_parts.c
    rank = (
        func.row_number()
        .over(partition_by=(s.model_version, s.incarnation), order_by=latest_snapshot_first())
        .label("rank")
    )
    ranked = select(s.id, s.model_version, rank).subquery()
    newest = ranked.c.rank == 1
    if keep_newest_of is not None:
        live = select(d.model_version).where(d.created_at >= older_than)
        newest = newest & (
            ranked.c.model_version.in_(live) | ranked.c.model_version.in_(sorted(keep_newest_of))
        )
    recovered_from = select(ranked.c.id).where(newest)
    old_snapshots = (s.created_at < older_than) & s.id.not_in(recovered_from)
    still_read = select(s.parts_key).where(s.parts_key.is_not(None), ~old_snapshots)
    old_parts = (p.created_at < older_than) & p.parts_key.not_in(still_read)
    if dry_run:
        old_events = select(d.event_id).where(d.created_at < older_than)
        with engine.connect() as conn:
            counts = {
                "rewards": conn.execute(
                    select(func.count()).where(r.event_id.in_(old_events))
                ).scalar_one(),
                "decisions": conn.execute(
                    select(func.count()).where(d.created_at < older_than)
                ).scalar_one(),
            }
    else:
        counts = _delete_events(engine, older_than, batch)
    ended = None if keep_newest_of is None else _ended_rollouts(older_than, keep_newest_of)
    with engine.connect() as conn:
        horizon = catalog_horizon_for(conn, older_than)
    superseded = _superseded_versions(horizon)
    if dry_run:
        with engine.connect() as conn:
            counts["head_snapshots"] = conn.execute(
                select(func.count()).select_from(head_snapshots).where(old_snapshots)
            ).scalar_one()
            counts["head_snapshot_parts"] = conn.execute(
                select(func.count()).select_from(head_snapshot_parts).where(old_parts)
            ).scalar_one()
            if ended is not None:
                ids = select(rollouts.c.id).where(ended)
                counts["rollout_steps"] = conn.execute(
                    select(func.count()).where(rollout_steps.c.rollout_id.in_(ids))
                ).scalar_one()
                counts["rollouts"] = conn.execute(
                    select(func.count()).select_from(rollouts).where(ended)
                ).scalar_one()
            counts["item_versions"] = conn.execute(
                select(func.count()).select_from(item_versions).where(superseded)
            ).scalar_one()
        return {k: int(v) for k, v in counts.items()}
    # a few rows to a transaction, as the decisions: a snapshot or a part holds up to a
    # whole head or SNAPSHOT_PART_BYTES. The snapshots first, then the parts no remaining
    # snapshot reads (recovery reads a snapshot whole or not at all).
    counts["head_snapshots"] = _delete_rows(engine, head_snapshots, old_snapshots, (s.id,))
    counts["head_snapshot_parts"] = _delete_rows(
        engine, head_snapshot_parts, old_parts, (p.parts_key, p.seq)
    )
    if ended is not None:  # the steps first: a rollout is never left with half of them
        ids = select(rollouts.c.id).where(ended)
        counts["rollout_steps"] = _delete_rows(
            engine,
            rollout_steps,
            rollout_steps.c.rollout_id.in_(ids),
            (rollout_steps.c.id,),
            PRUNE_BATCH,
        )
        counts["rollouts"] = _delete_rows(engine, rollouts, ended, (rollouts.c.id,), PRUNE_BATCH)
    # the horizon moves first, in a transaction of its own: a listing that read a pruned
    # catalog version then finds it refused when it reads the horizon after its rows
    with engine.begin() as conn:
        h = catalog_horizon.c
        conn.execute(
            update(catalog_horizon)
            .where(h.seq < horizon)
            .values(seq=horizon, updated_at=datetime.now(UTC))
        )
    counts["item_versions"] = _delete_rows(
        engine, item_versions, superseded, (item_versions.c.seq,), PRUNE_BATCH
    )
    return {k: int(v) for k, v in counts.items()}


def catalog_horizon_for(conn: Connection, older_than: datetime) -> int:
    """The catalog's horizon once the decisions before ``older_than`` are gone: the
    newest ``seq`` written ``ITEM_VERSION_GRACE`` before ``older_than``, or the oldest
    catalog version a decision at or after it retrieved from when that is older (a
    service that read its catalog feed late). Never below the horizon already reached
    (0: none)."""
    v, d = item_versions.c, decisions.c
    reached = catalog_horizon_reached(conn)
    written = conn.execute(
        select(func.max(v.seq)).where(v.created_at < older_than - ITEM_VERSION_GRACE)
    ).scalar_one()
    read = conn.execute(
        select(func.min(d.catalog_seq)).where(d.created_at >= older_than)
    ).scalar_one()
    if written is None:
        return reached
    return max(reached, int(written) if read is None else min(int(written), int(read)))


def catalog_horizon_reached(conn: Connection) -> int:
    """The ``seq`` before which retention has deleted superseded item versions (0:
    none): what a listing of an older catalog version is refused by."""
    return int(conn.execute(select(func.max(catalog_horizon.c.seq))).scalar_one() or 0)


def _superseded_versions(horizon: int) -> ColumnElement[bool]:
    """The item versions a later version of the same item with ``seq`` at most
    ``horizon`` superseded (never an item's current version)."""
    v = item_versions.c
    later = item_versions.alias("later")
    superseded: ColumnElement[bool] = (v.seq < horizon) & exists(
        select(later.c.seq).where(
            later.c.item_id == v.item_id,
            later.c.version > v.version,
            later.c.seq <= horizon,
        )
    )
    return superseded


def _ended_rollouts(older_than: datetime, served: Collection[str]) -> ColumnElement[bool]:
    """The rollouts :func:`prune_events` deletes: ended before ``older_than``, neither
    their model's latest nor the latest of a version ``served`` names."""
    r = rollouts.c
    where: ColumnElement[bool] = (r.status != RUNNING) & (r.updated_at < older_than)
    where &= r.id.not_in(select(func.max(r.id)).group_by(r.model_name))
    held = sorted({(name, version) for name, _, version in (x.rpartition("/") for x in served)})
    if held:
        latest_of_held = (
            select(func.max(r.id))
            .where(tuple_(r.model_name, r.version).in_(held))
            .group_by(r.model_name, r.version)
        )
        where &= r.id.not_in(latest_of_held)
    return where


def _delete_rows(
    engine: Engine,
    table: Any,
    where: ColumnElement[bool],
    key: tuple[Any, ...],
    batch: int = BLOB_BATCH,
) -> int:
    """Delete the rows of ``table`` that ``where`` picks, ``batch`` at a time (a
    transaction each, picked again each time); the rows deleted."""
    deleted = 0
    while True:
        with engine.begin() as conn:
            rows = conn.execute(select(*key).where(where).limit(batch)).all()
            if not rows:
                return deleted
            deleted += conn.execute(delete(table).where(tuple_(*key).in_(rows))).rowcount


def _delete_events(engine: Engine, older_than: datetime, batch: int) -> dict[str, int]:
    """The decisions created before ``older_than`` and their rewards, deleted ``batch``
    decisions (by id) to a transaction; the rows deleted per table."""
    d, r = decisions.c, rewards.c
    counts = {"rewards": 0, "decisions": 0}
    after = 0
    while True:
        with engine.begin() as conn:
            ids = (
                conn.execute(
                    select(d.id)
                    .where(d.created_at < older_than, d.id > after)
                    .order_by(d.id)
                    .limit(batch)
                )
                .scalars()
                .all()
            )
            if not ids:
                return counts
            lo, hi = int(ids[0]), int(ids[-1])
            these = (d.created_at < older_than) & d.id.between(lo, hi)
            events = select(d.event_id).where(these)
            gone = conn.execute(delete(rewards).where(r.event_id.in_(events)))
            counts["rewards"] += gone.rowcount
            counts["decisions"] += conn.execute(delete(decisions).where(these)).rowcount
        after = hi


def held_heads(
    conn: Connection, cutoff: datetime, window_stop: WindowStops | None = None
) -> dict[str, datetime]:
    """What the served heads still need of the rows before ``cutoff``: for each version
    that made a decision at or after it, the earliest decision before it whose applied
    reward its head learnt (:func:`learnt_by`, with ``window_stop`` of its label) after
    the newest snapshot of its incarnation that wrote last — what a restart rebuilds it
    from. ``"head of <label>"`` → that decision's time; a head whose snapshot holds every
    older reward needs nothing.
    """
    d, r, s = decisions.c, rewards.c, head_snapshots.c
    live = (
        conn.execute(
            select(d.model_version)
            .where(d.created_at >= cutoff, d.model_version.is_not(None))
            .distinct()
        )
        .scalars()
        .all()
    )
    held: dict[str, datetime] = {}
    for label in sorted(live):
        newest = conn.execute(
            select(s.incarnation).where(s.model_version == label).order_by(s.id.desc()).limit(1)
        ).first()
        covered = 0
        if newest is not None:
            same = (
                s.incarnation.is_(None)
                if newest.incarnation is None
                else ((s.incarnation == newest.incarnation) | s.incarnation.is_(None))
            )
            covered = int(
                conn.execute(
                    select(func.max(s.last_reward_id)).where(s.model_version == label, same)
                ).scalar_one()
                or 0
            )
        since = None if window_stop is None else window_stop(label)
        earliest = conn.execute(
            select(func.min(d.created_at))
            .select_from(rewards.join(decisions, d.event_id == r.event_id))
            .where(
                learnt_by(label, since),
                r.applied.is_(True),
                r.id > covered,
                d.created_at < cutoff,
            )
        ).scalar_one()
        if earliest is not None:
            held[f"head of {label} (rewards learnt after its newest snapshot)"] = as_utc(
                label, earliest
            )
    return held


def prune_cutoff(
    now: datetime, retention_days: float, protected: Mapping[str, datetime]
) -> tuple[datetime, str | None]:
    """The prune cutoff: ``now − retention_days``, or the earliest protected start when
    that is older; and the name of the protection that set it (None: the age did).

    Parameters
    ----------
    now : datetime
        Timezone-aware.
    retention_days : float
        The configured age (> 0).
    protected : mapping of str to datetime
        What still reads the store (``"retrain <run id>"``, ``"rollout <id>"``) → the
        earliest decision time it reads (timezone-aware).
    """
    if not retention_days > 0:
        raise ValueError(f"retention_days must be > 0; got {retention_days!r}.")
    cutoff = as_utc("now", now) - timedelta(days=retention_days)
    floor: str | None = None
    for name, start in sorted(protected.items(), key=lambda kv: as_utc(kv[0], kv[1])):
        at = as_utc(name, start)
        if at < cutoff:
            cutoff, floor = at, name
    return cutoff, floor


def apply_retention(
    store: str | Engine,
    model_name: str,
    retention_days: float,
    protected: Mapping[str, datetime] | None = None,
    *,
    window_stop: WindowStops | None = None,
    served: Collection[str] | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Prune the event store (a URL, or an engine the caller disposes) at
    :func:`prune_cutoff`, protecting ``protected``, the running rollout of ``model_name``
    and what the served heads learnt after their newest snapshots (:func:`held_heads`,
    reading each label's window with ``window_stop``): the one prune of the retention
    DAG and of ``banditops store prune``. ``served``: the labels the registry's aliases
    name, whose last snapshot is kept however long they have not decided (see
    :func:`prune_events`; None keeps every version's).

    Returns
    -------
    dict
        ``cutoff`` (ISO), ``floored_by`` (None, or what held the cutoff back),
        ``protected`` (name → ISO start), ``deleted`` (rows per table; with ``dry_run``
        the rows that would be).
    """
    now = datetime.now(UTC) if now is None else as_utc("now", now)
    starts = dict(protected or {})
    engine = make_engine(store) if isinstance(store, str) else store
    try:
        rollout = current_rollout(engine, model_name)
        if rollout is not None:
            starts[f"rollout {rollout.id} (version {rollout.version})"] = rollout.started_at
        aged, _ = prune_cutoff(now, retention_days, {})
        with engine.connect() as conn:
            starts.update(held_heads(conn, aged, window_stop))
        cutoff, floor = prune_cutoff(now, retention_days, starts)
        deleted = prune_events(engine, cutoff, dry_run=dry_run, keep_newest_of=served)
    finally:
        if engine is not store:
            engine.dispose()
    if floor is not None:
        log.info("retention held back to %s by %s", cutoff.isoformat(), floor)
    log.info(
        "%s %s older than %s",
        "would delete" if dry_run else "deleted",
        ", ".join(f"{n} {t}" for t, n in deleted.items()),
        cutoff.isoformat(),
    )
    return {
        "cutoff": cutoff.isoformat(),
        "floored_by": floor,
        "protected": {k: as_utc(k, v).isoformat() for k, v in starts.items()},
        "deleted": deleted,
    }
