"""Online outcomes read from the event store: what each version and each traffic arm
achieved with real users (:mod:`eventstore.outcomes`, the rules the rollout controller
decides by too), and the fallback share per day.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select

from eventstore.outcomes import FALLBACK, Z95, OnlineMean, RewardRules, online_outcomes
from eventstore.schema import decisions, rewards

__all__ = [
    "FALLBACK",
    "Z95",
    "LifetimeOutcomes",
    "OnlineMean",
    "RewardRules",
    "fallback_by_day",
    "online_outcomes",
]

#: Reward windows after which a decision's outcome is settled: its own window, and one
#: more for events written late (a journal draining after a store outage).
SETTLED_WINDOWS = 2

Groups = dict[tuple[str, ...], OnlineMean]


def merged(a: Groups, b: Groups) -> Groups:
    """The outcomes of both sets of decisions, group by group."""
    return {key: a.get(key, OnlineMean()) + b.get(key, OnlineMean()) for key in a.keys() | b.keys()}


class LifetimeOutcomes:
    """The online outcome of every decision so far, per group, for a page drawn on every
    view (the Bandits page's versions): the decisions settled :data:`SETTLED_WINDOWS`
    reward windows ago cannot change, so their sums are read once and kept, and each
    view adds those settled since and reads the newer ones afresh. A view reads a few
    reward windows of decisions, not the whole store (before: 13.7 s and 350 MB a view at
    a million decisions). Events written later into the settled range (a journal drained
    after a longer outage: its rows have older times but newer ids) are noticed by their
    ids, and the sums are read again. Kept sums go on counting decisions retention prunes
    later; a new process counts those still stored."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # key → (settled mark, sums, highest decision id and reward id when they were read)
        self._kept: dict[tuple[Any, ...], tuple[datetime | None, Groups, int, int]] = {}

    def read(
        self,
        engine: Engine,
        rules: RewardRules,
        *,
        now: datetime | None = None,
        by: tuple[str, ...] = ("model_version",),
    ) -> Groups:
        """:func:`online_outcomes` of every decision as of ``now``, grouped by ``by``."""
        now = datetime.now(UTC) if now is None else now
        settled = now - SETTLED_WINDOWS * rules.reward_window
        key = (engine.url.render_as_string(hide_password=False), rules, by)
        with self._lock:
            mark, kept, top_decision, top_reward = self._kept.get(key, (None, {}, 0, 0))
            if mark is not None and _written_late(engine, mark, top_decision, top_reward):
                mark, kept = None, {}
            if mark is None or settled > mark:
                tops = _top_ids(engine)  # before the read: what lands meanwhile is checked
                more = online_outcomes(engine, rules, since=mark, until=settled, now=now, by=by)
                mark, kept = settled, merged(kept, more)
                self._kept[key] = (mark, kept, *tops)
        return merged(kept, online_outcomes(engine, rules, since=mark, now=now, by=by))


def _top_ids(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        top_decision = conn.execute(select(func.max(decisions.c.id))).scalar()
        top_reward = conn.execute(select(func.max(rewards.c.id))).scalar()
    return int(top_decision or 0), int(top_reward or 0)


def _written_late(engine: Engine, mark: datetime, top_decision: int, top_reward: int) -> bool:
    """Whether a decision created before ``mark``, or a reward of one, was written after
    the ids ``top_decision`` / ``top_reward`` (after the settled sums were read)."""
    d, r = decisions.c, rewards.c
    with engine.connect() as conn:
        late = conn.execute(
            select(d.id).where(d.id > top_decision, d.created_at < mark).limit(1)
        ).first()
        if late is None:
            late = conn.execute(
                select(r.id)
                .join(decisions, d.event_id == r.event_id)
                .where(r.id > top_reward, d.created_at < mark)
                .limit(1)
            ).first()
    return late is not None


def fallback_by_day(engine: Engine, days: int, now: datetime | None = None) -> list[dict[str, Any]]:
    """Per UTC day of the last ``days`` (oldest first, today last): decisions served and
    the share served by the fallback policy (None on a day without decisions)."""
    if days < 1:
        raise ValueError(f"days must be >= 1; got {days!r}.")
    now = datetime.now(UTC) if now is None else now
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    d = decisions.c
    out = []
    with engine.connect() as conn:
        for back in range(days - 1, -1, -1):
            start = today - timedelta(days=back)
            end = start + timedelta(days=1)
            query = (
                select(d.fallback, func.count())
                .where(d.created_at >= start, d.created_at < end)
                .group_by(d.fallback)
            )
            counts = {bool(flag): int(n) for flag, n in conn.execute(query)}
            total = sum(counts.values())
            out.append(
                {
                    "day": start.date().isoformat(),
                    "served": total,
                    "fallback": counts.get(True, 0),
                    "share": counts.get(True, 0) / total if total else None,
                }
            )
    return out
