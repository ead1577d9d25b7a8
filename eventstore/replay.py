"""The replay window for training: decisions with their reward joined, as a DataFrame or
Parquet file.

Rules (mirroring the service):

* a reward counts when it was received within ``reward_window`` of its decision (its
  ``received_at``, as the service judges it: the client's ``ts`` is stored, not trusted);
  a late reward is stored but neither applied online nor counted here;
* several rewards of one event: ``"first_wins"`` keeps the first (lowest ordinal),
  ``"sum"`` adds them up;
* a decision without a reward in its window gets ``default_reward``
  (``missing_reward="default"``) or is left out (``"drop"``);
* decisions whose window is still open at ``as_of`` are left out (their reward is not
  known yet);
* a reward that names a slate position other than 0 belongs to the item shown there, not
  to the decision's arm, and is not counted in the decision's reward: a slate's row also
  carries every shown position's reward (``position_rewards``, the same rules per
  position; a position without one gets ``default_reward``, or NaN under ``"drop"``),
  whether it was observed, its ``ranking`` and the marginal ``position_propensities``
  logged with it (:func:`training.replay.replay_from_frame` turns them into one training
  row per shown item). Under ``"drop"`` a slate is kept when any position was rewarded;
* ``outcome`` is the decision's online outcome (:mod:`eventstore.outcomes`, what the
  rollout controller and the Bandits page count): its reward, or for a slate the mean of
  its shown positions' rewards (a position without one: ``default_reward``, or left out
  under ``"drop"``).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Boolean, Column, ColumnElement, Engine, Row, func, select

from eventstore.migrate import require_current
from eventstore.schema import SHAPE, decisions, replay_columns, rewards
from eventstore.settings import CORE_DEFAULTS, DuplicateRule, MissingReward, check_rules
from eventstore.types import decode_floats


@dataclass(frozen=True)
class Outcome:
    """What the reward join found for one decision: its reward under the rules
    (``value``, None when none came in its window), how many came (``count``), each
    slate position's ``(reward, count)`` or None (``slate``; None for a single decision),
    and the rules' ``missing`` (a position without a reward) and ``default`` rewards."""

    value: float | None
    count: int
    slate: list[tuple[float, int] | None] | None
    missing: float
    default: float


def _position_rewards(o: Outcome) -> list[float] | None:
    return None if o.slate is None else [o.missing if v is None else v[0] for v in o.slate]


def _position_observed(o: Outcome) -> list[bool] | None:
    return None if o.slate is None else [v is not None for v in o.slate]


def decision_outcome(positions: Sequence[float | None], missing: float) -> float:
    """A decision's outcome from each shown position's reward under the rules (None: none
    in the window): their mean, a missing position counting ``missing`` (the default
    reward, or NaN under ``"drop"``: left out); NaN when nothing counts."""
    values = [missing if v is None else v for v in positions]
    counted = [v for v in values if not math.isnan(v)]
    return float(sum(counted) / len(counted)) if counted else math.nan


def _outcome(o: Outcome) -> float:
    if o.slate is None:
        return decision_outcome([o.value], o.missing)
    return decision_outcome([None if v is None else v[0] for v in o.slate], o.missing)


#: Name of the replay's reward column.
REWARD = "reward"
#: Name of the column counting the rewards received in the window (the sum rule adds
#: them up in ``reward``).
REWARD_COUNT = "n_rewards"
#: The replay's computed columns and their derivation; every other column is stored
#: (:func:`eventstore.schema.replay_columns`).
COMPUTED: dict[str, Callable[[Outcome], Any]] = {
    REWARD: lambda o: o.default if o.value is None else o.value,
    "reward_observed": lambda o: o.value is not None,
    REWARD_COUNT: lambda o: o.count,
    "position_rewards": _position_rewards,
    "position_observed": _position_observed,
    "outcome": _outcome,
}
#: The stored columns of ``decisions`` that the replay carries, in table order.
STORED = replay_columns(decisions)
#: The replay frame's columns: the stored ones, then the computed ones.
COLUMNS = STORED + tuple(COMPUTED)


def _reader(column: Column[Any]) -> Callable[[Row[Any]], Any]:
    """How the replay reads a stored column from a ``decisions`` row: a float array
    decoded with its shape columns into (nested) lists, a boolean as ``bool``."""
    name = column.name
    shape = column.info.get(SHAPE)
    if shape is not None:
        return lambda row: decode_floats(
            getattr(row, name), tuple(getattr(row, n) for n in shape)
        ).tolist()
    if isinstance(column.type, Boolean):
        return lambda row: bool(getattr(row, name))
    return lambda row: getattr(row, name)


_READERS = tuple((name, _reader(decisions.c[name])) for name in STORED)

#: Rows a streaming read takes from the driver at a time (its memory stays bounded).
YIELD_PER = 2000


def _width(value: Any) -> int:
    return len(value) if value is not None else -1


def dimensions(frame: pd.DataFrame) -> tuple[int, int]:
    """The most common context width and candidate-feature width of a replay frame —
    not the first row's, which may be one of a few of another width (decisions logged
    while no model fixed the width)."""
    if not len(frame):
        return 0, 0
    users = Counter(_width(c) for c in frame["context"])
    arms = Counter(_width(row[0]) if len(row) else 0 for row in frame["candidate_features"])
    return users.most_common(1)[0][0], arms.most_common(1)[0][0]


def of_dimensions(frame: pd.DataFrame, dim_user: int, dim_arm: int) -> pd.DataFrame:
    """The rows of ``frame`` whose context and every candidate's features have these
    widths."""
    fits = [
        _width(context) == dim_user and all(_width(f) == dim_arm for f in features)
        for context, features in zip(frame["context"], frame["candidate_features"], strict=True)
    ]
    return frame[fits]


def window_stop(end: datetime, reward_window: timedelta, as_of: datetime | None = None) -> datetime:
    """Where a replay window ``[start, end)`` read at ``as_of`` really stops: decisions
    created before it are in the window, those created at or after it are not (their
    reward window was still open at ``as_of``, default now). A version trained on the
    window learns the rewards of the decisions after it online (the service replays them
    when it loads the version)."""
    return min(end, (as_of or datetime.now(UTC)) - reward_window)


def read_replay(
    engine: Engine,
    start: datetime,
    end: datetime,
    *,
    reward_window: timedelta,
    duplicate_rule: DuplicateRule = CORE_DEFAULTS["duplicate_rule"],
    missing_reward: MissingReward = CORE_DEFAULTS["missing_reward"],
    default_reward: float = CORE_DEFAULTS["default_reward"],
    as_of: datetime | None = None,
    keep_unrewarded: bool = False,
) -> pd.DataFrame:
    """Decisions created in ``[start, end)`` with their reward.

    Parameters
    ----------
    engine : Engine
        The event store.
    start, end : datetime (timezone-aware)
        The replay window.
    reward_window : timedelta
        How long after a decision its reward may arrive.
    duplicate_rule, missing_reward, default_reward
        See the module docstring.
    as_of : datetime, optional
        "Now" for deciding which windows are closed (default: the current time).
    keep_unrewarded : bool
        Under ``"drop"``, keep the decisions it leaves out, their ``reward`` and
        ``outcome`` NaN (the monitor counts every decision; training never does).

    Returns
    -------
    DataFrame with the columns of :data:`COLUMNS`, one row per decision in time order;
    ``context`` is a list of ``dim_user`` floats, ``candidate_features`` a list of K lists
    of ``dim_arm`` floats, ``probabilities`` a list of K floats.

    Raises
    ------
    ValueError
        A bad rule or naive moment, naming it.
    eventstore.migrate.StoreSchemaError
        The store is not at this release's schema (or has no tables at all).
    """
    for name, moment in (("start", start), ("end", end), ("as_of", as_of)):
        if moment is not None and moment.tzinfo is None:
            raise ValueError(f"{name} must be timezone-aware; got {moment!r}.")
    check_rules(duplicate_rule, missing_reward)
    require_current(engine)
    stop = window_stop(end, reward_window, as_of)
    d = decisions.c
    in_window = (d.created_at >= start) & (d.created_at < stop)
    observed = _rewards(engine, in_window, reward_window, duplicate_rule)
    missing = float("nan") if missing_reward == "drop" else default_reward
    rows = []
    # time order (a decision drained late from a journal, or logged by another replica,
    # has a later id than newer ones: in id order it landed in the held-out newest part)
    query = select(decisions).where(in_window).order_by(d.created_at, d.id)
    with engine.connect() as conn:
        for row in conn.execution_options(yield_per=YIELD_PER).execute(query):
            value, count = observed.get((row.event_id, 0), (None, 0))
            slate = None
            if row.ranking is not None:
                slate = [observed.get((row.event_id, j)) for j in range(len(row.ranking))]
            default = default_reward
            if missing_reward == "drop" and value is None and not any(slate or ()):
                if not keep_unrewarded:
                    continue
                default = missing  # NaN: no reward under the rules
            outcome = Outcome(value, count, slate, missing, default)
            record = {name: read(row) for name, read in _READERS}
            record.update((name, derive(outcome)) for name, derive in COMPUTED.items())
            rows.append(record)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def in_reward_window(received_at: datetime, decided_at: datetime, reward_window: timedelta) -> bool:
    """Whether a reward counts for its decision: received within the reward window (the
    service's rule for ``late``)."""
    return received_at - decided_at <= reward_window


def combined_reward(values: Sequence[float], duplicate_rule: str) -> float:
    """A decision's (or a slate position's) reward from its rewards in the window, in the
    order they came: the first under ``"first_wins"``, their sum under ``"sum"``."""
    return float(sum(values)) if duplicate_rule == "sum" else float(values[0])


def _rewards(
    engine: Engine, in_window: ColumnElement[bool], reward_window: timedelta, rule: str
) -> dict[tuple[str, int], tuple[float, int]]:
    """Per (event, slate position): the reward under ``rule`` and how many rewards were
    in the window (a reward that names no position is position 0's)."""
    d, r = decisions.c, rewards.c
    position = func.coalesce(r.position, 0).label("at")
    query = (
        select(r.event_id, position, r.ordinal, r.value, r.received_at, d.created_at)
        .join(decisions, d.event_id == r.event_id)
        .where(in_window)
        .order_by(r.event_id, r.ordinal)
    )
    values: dict[tuple[str, int], list[float]] = defaultdict(list)
    with engine.connect() as conn:
        for row in conn.execution_options(yield_per=YIELD_PER).execute(query):
            if in_reward_window(row.received_at, row.created_at, reward_window):
                values[(row.event_id, int(row.at))].append(float(row.value))
    return {e: (combined_reward(v, rule), len(v)) for e, v in values.items()}


def write_replay_parquet(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a :func:`read_replay` frame to Parquet (pyarrow); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, engine="pyarrow", index=False)
    return path
