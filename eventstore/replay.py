"""The replay window for training: decisions with their reward joined, as a DataFrame or
Parquet file.

Rules (mirroring the service):

* a reward counts when its timestamp is within ``reward_window`` of its decision; a late
  reward is stored but neither applied online nor counted here;
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
  row per shown item). Under ``"drop"`` a slate is kept when any position was rewarded.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import pandas as pd
from sqlalchemy import ColumnElement, Engine, func, select

from eventstore.schema import decisions, rewards
from eventstore.types import decode_floats

COLUMNS = (
    "event_id",
    "created_at",
    "user_hash",
    "context",
    "candidate_ids",
    "candidate_features",
    "chosen",
    "arm_id",
    "propensity",
    "probabilities",
    "policy",
    "model_version",
    "traffic",
    "fallback",
    "explored",
    "reward",
    "reward_observed",
    "n_rewards",
    "ranking",
    "position_propensities",
    "position_rewards",
    "position_observed",
)

_YIELD_PER = 2000


def read_replay(
    engine: Engine,
    start: datetime,
    end: datetime,
    *,
    reward_window: timedelta,
    duplicate_rule: Literal["first_wins", "sum"] = "first_wins",
    missing_reward: Literal["default", "drop"] = "default",
    default_reward: float = 0.0,
    as_of: datetime | None = None,
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

    Returns
    -------
    DataFrame with the columns of :data:`COLUMNS`, one row per decision in time order;
    ``context`` is a list of ``dim_user`` floats, ``candidate_features`` a list of K lists
    of ``dim_arm`` floats, ``probabilities`` a list of K floats.
    """
    for name, moment in (("start", start), ("end", end), ("as_of", as_of)):
        if moment is not None and moment.tzinfo is None:
            raise ValueError(f"{name} must be timezone-aware; got {moment!r}.")
    if duplicate_rule not in ("first_wins", "sum"):
        raise ValueError(f"duplicate_rule must be 'first_wins' or 'sum'; got {duplicate_rule!r}.")
    if missing_reward not in ("default", "drop"):
        raise ValueError(f"missing_reward must be 'default' or 'drop'; got {missing_reward!r}.")
    closed_before = (as_of or datetime.now(UTC)) - reward_window
    stop = min(end, closed_before)
    d = decisions.c
    in_window = (d.created_at >= start) & (d.created_at < stop)
    observed = _rewards(engine, in_window, reward_window, duplicate_rule)
    missing = float("nan") if missing_reward == "drop" else default_reward
    rows = []
    query = select(decisions).where(in_window).order_by(d.id)
    with engine.connect() as conn:
        for row in conn.execution_options(yield_per=_YIELD_PER).execute(query):
            value, count = observed.get((row.event_id, 0), (None, 0))
            slate = None
            if row.ranking is not None:
                slate = [observed.get((row.event_id, j)) for j in range(len(row.ranking))]
            if missing_reward == "drop" and value is None and not any(slate or ()):
                continue
            k, da = row.n_candidates, row.dim_arm
            rows.append(
                {
                    "event_id": row.event_id,
                    "created_at": row.created_at,
                    "user_hash": row.user_hash,
                    "context": decode_floats(row.context, (row.dim_user,)).tolist(),
                    "candidate_ids": list(row.candidate_ids),
                    "candidate_features": decode_floats(row.candidate_features, (k, da)).tolist(),
                    "chosen": row.chosen,
                    "arm_id": row.arm_id,
                    "propensity": row.propensity,
                    "probabilities": decode_floats(row.probabilities, (k,)).tolist(),
                    "policy": row.policy,
                    "model_version": row.model_version,
                    "traffic": row.traffic,
                    "fallback": bool(row.fallback),
                    "explored": bool(row.explored),
                    "reward": default_reward if value is None else value,
                    "reward_observed": value is not None,
                    "n_rewards": count,
                    "ranking": None if row.ranking is None else list(row.ranking),
                    "position_propensities": (None if slate is None else row.position_propensities),
                    "position_rewards": (
                        None if slate is None else [missing if v is None else v[0] for v in slate]
                    ),
                    "position_observed": (
                        None if slate is None else [v is not None for v in slate]
                    ),
                }
            )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _rewards(
    engine: Engine, in_window: ColumnElement[bool], reward_window: timedelta, rule: str
) -> dict[tuple[str, int], tuple[float, int]]:
    """Per (event, slate position): the reward under ``rule`` and how many rewards were
    in the window (a reward that names no position is position 0's)."""
    d, r = decisions.c, rewards.c
    position = func.coalesce(r.position, 0).label("at")
    query = (
        select(r.event_id, position, r.ordinal, r.value, r.ts, d.created_at)
        .join(decisions, d.event_id == r.event_id)
        .where(in_window)
        .order_by(r.event_id, r.ordinal)
    )
    values: dict[tuple[str, int], list[float]] = defaultdict(list)
    with engine.connect() as conn:
        for row in conn.execution_options(yield_per=_YIELD_PER).execute(query):
            if row.ts - row.created_at <= reward_window:
                values[(row.event_id, int(row.at))].append(float(row.value))
    if rule == "sum":
        return {e: (float(sum(v)), len(v)) for e, v in values.items()}
    return {e: (v[0], len(v)) for e, v in values.items()}


def write_replay_parquet(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a :func:`read_replay` frame to Parquet (pyarrow); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, engine="pyarrow", index=False)
    return path
