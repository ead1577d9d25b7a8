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
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
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
    #: The range every received reward lies in (the service's 422 rule); a decision with
    #: a stored reward outside it, or not finite (another tool's row, a range narrowed
    #: since), is set aside, as the replay's quarantine sets its row aside.
    reward_min: float = CORE_DEFAULTS["reward_min"]
    reward_max: float = CORE_DEFAULTS["reward_max"]

    @classmethod
    def of(cls, settings: CoreSettings) -> RewardRules:
        """The rules ``settings`` set (the ones the replay and the service read)."""
        return cls(
            reward_window=timedelta(seconds=settings.reward_window_s),
            duplicate_rule=settings.duplicate_rule,
            missing_reward=settings.missing_reward,
            default_reward=settings.default_reward,
            reward_min=settings.reward_min,
            reward_max=settings.reward_max,
        )

    def allows(self, value: float) -> bool:
        """Whether ``value`` is a reward the service could have accepted."""
        return self.reward_min <= value <= self.reward_max  # False for NaN


@dataclass
class UnitSums:
    """A group's counted outcomes by unit of randomisation (see
    :class:`bandit_core.sequential.ArmUnits`): per bucket of hashed user ids, the
    outcomes and their sum; the decisions without a user id, each its own unit, as
    count, sum and sum of squares."""

    counts: NDArray[np.float64]
    sums: NDArray[np.float64]
    singles: int = 0
    singles_total: float = 0.0
    singles_sq: float = 0.0

    @classmethod
    def empty(cls, buckets: int) -> UnitSums:
        return cls(np.zeros(buckets), np.zeros(buckets))

    def __add__(self, other: UnitSums) -> UnitSums:
        return UnitSums(
            self.counts + other.counts,
            self.sums + other.sums,
            self.singles + other.singles,
            self.singles_total + other.singles_total,
            self.singles_sq + other.singles_sq,
        )


def unit_bucket(user_hash: str, buckets: int) -> int:
    """The bucket of a user (any text; the same in every process)."""
    return zlib.crc32(user_hash.encode("utf-8", "surrogatepass")) % buckets


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
    #: Closed decisions left out for a stored reward outside the reward range.
    set_aside: int = 0
    #: The smallest and largest counted outcome (±inf: none).
    lowest: float = math.inf
    highest: float = -math.inf
    #: By unit of randomisation, where asked for (``online_outcomes(units=…)``).
    units: UnitSums | None = None

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
        units = (
            other.units
            if self.units is None
            else self.units
            if other.units is None
            else self.units + other.units
        )
        return OnlineMean(
            self.served + other.served,
            self.counted + other.counted,
            self.rewarded + other.rewarded,
            self.total + other.total,
            self.total_sq + other.total_sq,
            self.set_aside + other.set_aside,
            min(self.lowest, other.lowest),
            max(self.highest, other.highest),
            units,
        )

    def to_dict(self) -> dict[str, Any]:
        ci = self.interval
        return {
            "served": self.served,
            "counted": self.counted,
            "rewarded": self.rewarded,
            "set_aside": self.set_aside,
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
    bucket: int = 0
    at: dict[int, list[float]] = field(default_factory=dict)
    #: A reward outside the range: the decision is set aside.
    refused: bool = False

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
    units: int = 0,
) -> dict[tuple[str, ...], OnlineMean]:
    """Online reward of the decisions created since ``since`` (default: all) and before
    ``until`` (default: any time), as of ``now``, grouped by the ``decisions`` columns
    ``by`` (``model_version`` → :func:`version_label`, other columns as stored, e.g.
    ``traffic``; booleans as ``"true"`` / ``"false"``). A decision with a stored reward
    outside the rules' range is counted in ``set_aside`` only. With ``units`` > 0 each
    group also has its outcomes by unit of randomisation (:class:`UnitSums`, users in
    ``units`` buckets).

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
    per_user = [d.user_hash] if units else []
    where = [] if since is None else [d.created_at >= since]
    if until is not None:
        where.append(d.created_at < until)
    groups: dict[tuple[str, ...], OnlineMean] = defaultdict(OnlineMean)
    # per group, where units are asked for: closed decisions and rewarded ones per bucket
    # (index ``units``: the decisions without a user), and the rewarded outcomes' sums
    closed_units: dict[tuple[str, ...], NDArray[np.float64]] = {}
    rewarded_units: dict[tuple[str, ...], NDArray[np.float64]] = {}
    sum_units: dict[tuple[str, ...], NDArray[np.float64]] = {}
    single_sq: dict[tuple[str, ...], float] = defaultdict(float)

    def key_of(row: Any) -> tuple[str, ...]:
        return tuple(_key_part(n, v) for n, v in zip(by, row[: len(by)], strict=True))

    def bucket_of(user_hash: str | None) -> int:
        return units if user_hash is None else unit_bucket(user_hash, units)

    def unit_array(table: dict[tuple[str, ...], NDArray[np.float64]], key: tuple[str, ...]) -> Any:
        if key not in table:
            table[key] = np.zeros(units + 1)
        return table[key]

    served = select(*keys, func.count()).where(*where).group_by(*keys)
    closed = (
        select(*keys, *per_user, func.count())
        .where(*where, d.created_at < closed_before)
        .group_by(*keys, *per_user)
    )
    rewarded = (
        select(
            *keys,
            d.event_id,
            d.created_at,
            d.ranking,
            d.user_hash,
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
        group = groups[event.key]
        if event.refused:
            group.set_aside += 1
            if units:
                unit_array(closed_units, event.key)[event.bucket] -= 1
            return
        value = event.outcome(rules)
        group.rewarded += 1
        group.total += value
        group.total_sq += value * value
        group.lowest, group.highest = min(group.lowest, value), max(group.highest, value)
        if units:
            unit_array(rewarded_units, event.key)[event.bucket] += 1
            unit_array(sum_units, event.key)[event.bucket] += value
            if event.bucket == units:
                single_sq[event.key] += value * value

    # the rewards come in event order: one decision is held at a time, so memory stays
    # one entry per group (and bucket) however many decisions are read
    current: _Rewarded | None = None
    current_id: str | None = None
    closed_counts: dict[tuple[str, ...], int] = defaultdict(int)
    with engine.connect() as conn:
        for row in conn.execute(served):
            groups[key_of(row)].served = int(row[-1])
        for row in conn.execute(closed):
            closed_counts[key_of(row)] += int(row[-1])
            if units:
                unit_array(closed_units, key_of(row))[bucket_of(row[-2])] += int(row[-1])
        for row in conn.execution_options(yield_per=YIELD_PER).execute(rewarded):
            shown = 1 if row.ranking is None else len(row.ranking)
            if int(row.at) >= shown:  # not a position this decision showed
                continue
            if in_reward_window(row.received_at, row.created_at, rules.reward_window):
                if current is None or row.event_id != current_id:
                    add(current)
                    bucket = bucket_of(row.user_hash) if units else 0
                    current, current_id = _Rewarded(key_of(row), shown, bucket), row.event_id
                value = float(row.value)
                current.refused = current.refused or not rules.allows(value)
                current.at.setdefault(int(row.at), []).append(value)
    add(current)
    default = rules.default_reward
    for key, n_closed in closed_counts.items():
        group = groups[key]
        n_closed -= group.set_aside
        if rules.missing_reward == "default":
            missing = n_closed - group.rewarded
            group.counted = n_closed
            group.total += missing * default
            group.total_sq += missing * default**2
            if missing:
                group.lowest = min(group.lowest, default)
                group.highest = max(group.highest, default)
        else:
            group.counted = group.rewarded
        if units:
            closed_u = unit_array(closed_units, key)
            rewarded_u = unit_array(rewarded_units, key)
            sums = unit_array(sum_units, key)
            if rules.missing_reward == "default":
                sums = sums + default * (closed_u - rewarded_u)
                counts = closed_u
                missing_single = closed_u[units] - rewarded_u[units]
                sq = single_sq[key] + missing_single * default**2
            else:
                counts, sq = rewarded_u, single_sq[key]
            group.units = UnitSums(
                counts[:units].copy(),
                sums[:units].copy(),
                int(counts[units]),
                float(sums[units]),
                sq,
            )
    if units:
        for group in groups.values():
            if group.units is None:  # served only: nothing closed yet
                group.units = UnitSums.empty(units)
    return dict(groups)
