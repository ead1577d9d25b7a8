"""Online outcomes read from the event store: what each version and each traffic arm
achieved with real users (:mod:`eventstore.outcomes`, the rules the rollout controller
decides by too), and the fallback share per day.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select

from eventstore.outcomes import FALLBACK, Z95, OnlineMean, RewardRules, online_outcomes
from eventstore.schema import decisions

__all__ = ["FALLBACK", "Z95", "OnlineMean", "RewardRules", "fallback_by_day", "online_outcomes"]


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
