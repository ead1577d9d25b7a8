"""Retention of the event store: prune by age, never below what running work still reads.

``bandit_retention`` (nightly) deletes decisions (with their rewards) and superseded head
snapshots (with their parts) older than ``retention_days`` (:func:`prune_events`, which
``banditops store prune`` calls too). The cutoff is floored (:func:`prune_cutoff`) at the
earliest start of anything still running that reads the store:

* a ``bandit_retrain`` run that is running or queued reads its replay window from its
  ``window_start`` (the DAG finds them: :func:`training.runspec.active_windows`);
* a running rollout (:func:`eventstore.rollouts.current_rollout`) reads the decisions of
  both traffic arms since its ``started_at``.

So a row a running retrain or rollout needs is kept, and the next night prunes it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, func, select

from eventstore.engine import make_engine
from eventstore.rollouts import current_rollout
from eventstore.schema import decisions, head_snapshot_parts, head_snapshots, rewards
from eventstore.workspace import as_utc

log = logging.getLogger(__name__)


def latest_snapshot_first() -> tuple[Any, ...]:
    """The order of a version's snapshots, the one recovery starts from first: the one
    covering the most rewards, the newest of those (snapshots commit in the order their
    serialisation ends, which need not be the order of their copies)."""
    s = head_snapshots.c
    return s.last_reward_id.desc(), s.id.desc()


def prune_events(engine: Engine, older_than: datetime, dry_run: bool = False) -> dict[str, int]:
    """Delete decisions created before ``older_than`` with their rewards, head snapshots
    older than it except the one each version (each incarnation of a label) recovers
    from, and the parts of large snapshots no remaining snapshot reads (those of the
    deleted ones, and those of a snapshot whose writing never finished).

    Returns the number of rows deleted (or that would be, with ``dry_run``) per table.
    """
    d, r, s, p = decisions.c, rewards.c, head_snapshots.c, head_snapshot_parts.c
    old_events = select(d.event_id).where(d.created_at < older_than)
    rank = (
        func.row_number()
        .over(partition_by=(s.model_version, s.incarnation), order_by=latest_snapshot_first())
        .label("rank")
    )
    ranked = select(s.id, rank).subquery()
    recovered_from = select(ranked.c.id).where(ranked.c.rank == 1)
    old_snapshots = (s.created_at < older_than) & s.id.not_in(recovered_from)
    still_read = select(s.parts_key).where(s.parts_key.is_not(None), ~old_snapshots)
    old_parts = (p.created_at < older_than) & p.parts_key.not_in(still_read)
    with engine.begin() as conn:
        counts = {
            "rewards": conn.execute(
                select(func.count()).where(r.event_id.in_(old_events))
            ).scalar_one(),
            "decisions": conn.execute(
                select(func.count()).where(d.created_at < older_than)
            ).scalar_one(),
            "head_snapshots": conn.execute(
                select(func.count()).select_from(head_snapshots).where(old_snapshots)
            ).scalar_one(),
            "head_snapshot_parts": conn.execute(
                select(func.count()).select_from(head_snapshot_parts).where(old_parts)
            ).scalar_one(),
        }
        if not dry_run:
            conn.execute(delete(rewards).where(r.event_id.in_(old_events)))
            conn.execute(delete(decisions).where(d.created_at < older_than))
            # the parts first: which ones go is judged by the snapshots still there
            conn.execute(delete(head_snapshot_parts).where(old_parts))
            conn.execute(delete(head_snapshots).where(old_snapshots))
    return {k: int(v) for k, v in counts.items()}


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
    now: datetime | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Prune the event store (a URL, or an engine the caller disposes) at
    :func:`prune_cutoff`, protecting ``protected`` and the running rollout of
    ``model_name``: the one prune of the retention DAG and of ``banditops store prune``.

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
        cutoff, floor = prune_cutoff(now, retention_days, starts)
        deleted = prune_events(engine, cutoff, dry_run=dry_run)
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
