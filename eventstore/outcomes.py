"""A decision's online outcome under the reward rules, for the monitor and the rollout
controller alike.

The reward of a decision follows the replay's rules (:mod:`eventstore.replay`, what the
retrain learns from): a reward counts when it is received within ``reward_window`` of its
decision; of several rewards the first (lowest ordinal) wins or they are summed
(``duplicate_rule``); a decision whose window closed without a reward gets
``default_reward`` (``missing_reward="default"``) or is left out (``"drop"``); a decision
whose window is still open is not counted yet (counting only those rewarded so far would
favour the arm whose decisions are newer). A slate's outcome is the mean of its shown
positions' rewards, each position's read by the same rules (a position without one:
``default_reward``, or left out under ``"drop"``) — per shown item, the value the offline
evaluation estimates for slates (one logged row per shown item); a decision without a
slate has one position. Plain SQL aggregates plus one pass over the rewarded decisions;
the same queries run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, func, select

from eventstore.replay import YIELD_PER, combined_reward, decision_outcome, in_reward_window
from eventstore.schema import decisions, rewards
from eventstore.settings import CORE_DEFAULTS, DuplicateRule, MissingReward

if TYPE_CHECKING:
    from eventstore.settings import CoreSettings

#: Two-sided 95 % normal quantile of the intervals of online means.
Z95 = 1.959963984540054
#: The ``model_version`` label of decisions served by the fallback policy.
FALLBACK = "fallback"


@dataclass(frozen=True)
class RewardRules:
    """How a decision's reward is read (the core settings' reward rules)."""

    reward_window: timedelta
    duplicate_rule: DuplicateRule = CORE_DEFAULTS["duplicate_rule"]
    missing_reward: MissingReward = CORE_DEFAULTS["missing_reward"]
    default_reward: float = CORE_DEFAULTS["default_reward"]

    @classmethod
    def of(cls, settings: CoreSettings) -> RewardRules:
        """The rules ``settings`` set (the ones the replay and the service read)."""
        return cls(
            reward_window=timedelta(seconds=settings.reward_window_s),
            duplicate_rule=settings.duplicate_rule,
            missing_reward=settings.missing_reward,
            default_reward=settings.default_reward,
        )


@dataclass
class OnlineMean:
    """Running mean of the rewards of one group of decisions, with a normal 95 % interval.

    ``served`` counts every decision of the group, ``counted`` those whose reward counts
    (window closed; under ``"drop"`` only the rewarded ones), ``rewarded`` those that got
    a reward in their window.
    """

    served: int = 0
    counted: int = 0
    rewarded: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    @property
    def mean(self) -> float | None:
        return self.total / self.counted if self.counted else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """``mean ± 1.96 · s / √n`` (None below two counted decisions)."""
        mean = self.mean
        if mean is None or self.counted < 2:
            return None
        var = max(self.total_sq / self.counted - mean * mean, 0.0) * self.counted
        half = Z95 * math.sqrt(var / (self.counted - 1) / self.counted)
        return mean - half, mean + half

    def __add__(self, other: OnlineMean) -> OnlineMean:
        """The outcome of both groups together."""
        return OnlineMean(
            self.served + other.served,
            self.counted + other.counted,
            self.rewarded + other.rewarded,
            self.total + other.total,
            self.total_sq + other.total_sq,
        )

    def to_dict(self) -> dict[str, Any]:
        ci = self.interval
        return {
            "served": self.served,
            "counted": self.counted,
            "rewarded": self.rewarded,
            "mean": self.mean,
            "ci": None if ci is None else [ci[0], ci[1]],
        }


def version_label(model_version: str | None) -> str:
    """The group of a decision's ``model_version`` (``name/version``), or ``fallback``."""
    return FALLBACK if model_version is None else model_version


@dataclass
class _Rewarded:
    """A closed decision with a reward in its window: its group, how many positions it
    showed (1 without a slate), and each position's rewards in the window, in order."""

    key: tuple[str, ...]
    shown: int
    at: dict[int, list[float]] = field(default_factory=dict)

    def outcome(self, rules: RewardRules) -> float:
        """The mean of its positions' rewards: each the first or the sum of its own
        (``duplicate_rule``); a position without one counts ``default_reward``
        (``"drop"``: is left out)."""
        positions = [
            combined_reward(self.at[j], rules.duplicate_rule) if j in self.at else None
            for j in range(self.shown)
        ]
        missing = rules.default_reward if rules.missing_reward == "default" else math.nan
        return decision_outcome(positions, missing)


def _key_part(column: str, value: Any) -> str:
    if column == "model_version":
        return version_label(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def online_outcomes(
    engine: Engine,
    rules: RewardRules,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    now: datetime | None = None,
    by: tuple[str, ...] = ("model_version",),
) -> dict[tuple[str, ...], OnlineMean]:
    """Online reward of the decisions created since ``since`` (default: all) and before
    ``until`` (default: any time), as of ``now``, grouped by the ``decisions`` columns
    ``by`` (``model_version`` → :func:`version_label`, other columns as stored, e.g.
    ``traffic``; booleans as ``"true"`` / ``"false"``).

    Returns
    -------
    dict
        Group key (one string per column of ``by``) → :class:`OnlineMean`.
    """
    for name in by:
        if name not in decisions.c:
            raise ValueError(f"by must name decisions columns; got {name!r}.")
    now = datetime.now(UTC) if now is None else now
    if any(t is not None and t.tzinfo is None for t in (now, since, until)):
        raise ValueError("since, until and now must be timezone-aware datetimes.")
    closed_before = now - rules.reward_window
    d, r = decisions.c, rewards.c
    keys = [d[name] for name in by]
    where = [] if since is None else [d.created_at >= since]
    if until is not None:
        where.append(d.created_at < until)
    groups: dict[tuple[str, ...], OnlineMean] = defaultdict(OnlineMean)

    def key_of(row: Any) -> tuple[str, ...]:
        return tuple(_key_part(n, v) for n, v in zip(by, row[: len(by)], strict=True))

    served = select(*keys, func.count()).where(*where).group_by(*keys)
    closed = select(*keys, func.count()).where(*where, d.created_at < closed_before).group_by(*keys)
    rewarded = (
        select(
            *keys,
            d.event_id,
            d.created_at,
            d.ranking,
            func.coalesce(r.position, 0).label("at"),
            r.value,
            r.received_at,
        )
        .join(rewards, r.event_id == d.event_id)
        .where(*where, d.created_at < closed_before)
        .order_by(d.event_id, r.ordinal)
    )

    def add(event: _Rewarded | None) -> None:
        if event is None:
            return
        value = event.outcome(rules)
        group = groups[event.key]
        group.rewarded += 1
        group.total += value
        group.total_sq += value * value

    # the rewards come in event order: one decision is held at a time, so memory stays
    # one entry per group however many decisions are read
    current: _Rewarded | None = None
    current_id: str | None = None
    with engine.connect() as conn:
        for row in conn.execute(served):
            groups[key_of(row)].served = int(row[-1])
        closed_counts = {key_of(row): int(row[-1]) for row in conn.execute(closed)}
        for row in conn.execution_options(yield_per=YIELD_PER).execute(rewarded):
            shown = 1 if row.ranking is None else len(row.ranking)
            if int(row.at) >= shown:  # not a position this decision showed
                continue
            if in_reward_window(row.received_at, row.created_at, rules.reward_window):
                if current is None or row.event_id != current_id:
                    add(current)
                    current, current_id = _Rewarded(key_of(row), shown), row.event_id
                current.at.setdefault(int(row.at), []).append(float(row.value))
    add(current)
    for key, n_closed in closed_counts.items():
        group = groups[key]
        if rules.missing_reward == "default":
            missing = n_closed - group.rewarded
            group.counted = n_closed
            group.total += missing * rules.default_reward
            group.total_sq += missing * rules.default_reward**2
        else:
            group.counted = group.rewarded
    return dict(groups)
