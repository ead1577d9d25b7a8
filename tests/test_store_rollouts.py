"""The rollout state in the event store: one running rollout per model, every step
audited in the same transaction, an ended rollout takes no step, and the per-arm outcome
counts each decision's first in-window reward once."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from eventstore import records
from eventstore.rollouts import (
    ArmOutcome,
    Readout,
    RolloutStateError,
    current_rollout,
    latest_rollout,
    record_step,
    rollout_history,
    start_rollout,
    traffic_outcomes,
)
from serving.store.repository import write_events
from tests.serving_helpers import decision_row, reward_row

pytest_plugins = ["tests.serving_fixtures"]

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_rollout_lifecycle_is_audited(engine: sa.Engine) -> None:
    assert current_rollout(engine, "m") is None
    started = start_rollout(engine, "m", 3, 0.05, reason="gate passed", at=T0)
    assert (started.version, started.stage_index, started.share, started.status) == (
        "3",
        0,
        0.05,
        "running",
    )
    assert started.label == "m/3"
    with pytest.raises(RolloutStateError, match="already has a running rollout"):
        start_rollout(engine, "m", 4, 0.05, reason="second")
    assert start_rollout(engine, "other", 1, 0.5, reason="another model").running

    numbers = Readout(100, 10, 0.5, 0.6, 0.1, -0.2, 0.4)
    held = record_step(
        engine, started.id, "hold", reason="not enough", readout=numbers, at=T0 + timedelta(1)
    )
    assert (held.stage_index, held.share, held.updated_at) == (0, 0.05, T0 + timedelta(1))
    with pytest.raises(ValueError, match="advance needs"):
        record_step(engine, started.id, "advance", reason="x")
    with pytest.raises(ValueError, match="share must be in"):
        record_step(engine, started.id, "advance", reason="x", stage_index=1, share=1.5)
    moved = record_step(
        engine, started.id, "advance", reason="ok", stage_index=1, share=0.2, at=T0 + timedelta(2)
    )
    assert (moved.stage_index, moved.share, moved.stage_started_at) == (1, 0.2, T0 + timedelta(2))
    assert current_rollout(engine, "m") == moved

    ended = record_step(engine, started.id, "rollback", reason="worse", readout=numbers)
    assert ended.status == "rolled_back" and ended.reason == "worse"
    assert current_rollout(engine, "m") is None
    assert latest_rollout(engine, "m") == ended
    with pytest.raises(RolloutStateError, match="rolled_back, not running"):
        record_step(engine, started.id, "stop", reason="too late")

    steps = rollout_history(engine, "m")
    assert [s.action for s in steps] == ["rollback", "advance", "hold", "start"]
    assert steps[2].readout == numbers
    assert (steps[1].stage_index, steps[1].share) == (1, 0.2)
    assert dataclasses.is_dataclass(steps[0])
    with pytest.raises(dataclasses.FrozenInstanceError):
        steps[0].action = "x"  # type: ignore[misc]
    assert [s.action for s in rollout_history(engine, "m", limit=1)] == ["rollback"]
    assert rollout_history(engine, "m", rollout_id=-1) == []
    # a new rollout may start once the old one ended
    assert start_rollout(engine, "m", 4, 0.05, reason="next").version == "4"


def test_traffic_outcomes_count_first_in_window_reward(
    engine: sa.Engine, rng: np.random.Generator
) -> None:
    since = datetime.now(UTC) - timedelta(minutes=1)
    rows = []
    expected = {"production": [], "candidate": []}  # type: dict[str, list[float]]
    for i in range(40):
        traffic = "candidate" if i % 4 == 0 else "production"
        version = "m/7" if traffic == "candidate" else "m/6"
        d = dataclasses.replace(decision_row(rng, model_version=version), traffic=traffic)
        rows.append(d)
        if i % 5 == 4:
            continue  # no reward
        value = float(rng.random())
        rows.append(reward_row(d.event_id, value, model_version=version))
        expected[traffic].append(value)
        rows.append(reward_row(d.event_id, 1.0, model_version=version))  # a duplicate
    # not counted: an older decision, another candidate version, a late first reward
    old = dataclasses.replace(
        decision_row(rng, model_version="m/7", created_at=since - timedelta(hours=1)),
        traffic="candidate",
    )
    other = dataclasses.replace(decision_row(rng, model_version="m/5"), traffic="candidate")
    late = dataclasses.replace(decision_row(rng, model_version="m/7"), traffic="candidate")
    rows += [old, reward_row(old.event_id, 1.0), other, reward_row(other.event_id, 1.0), late]
    rows.append(reward_row(late.event_id, 1.0, eligible=False, ineligible_status=records.LATE))
    with engine.begin() as conn:
        write_events(conn, rows)

    got = traffic_outcomes(engine, "m", "7", since)
    for arm, values in expected.items():
        n_decisions = sum(1 for r in rows if getattr(r, "traffic", None) == arm)
        if arm == "candidate":
            n_decisions -= 2  # the old one and the other version's
        want = ArmOutcome(n_decisions, len(values), sum(values), sum(v * v for v in values))
        assert got[arm].decisions == want.decisions
        assert got[arm].rewarded == want.rewarded
        assert got[arm].reward_sum == pytest.approx(want.reward_sum)
        assert got[arm].reward_sq_sum == pytest.approx(want.reward_sq_sum)
    assert traffic_outcomes(engine, "m", "7", since, until=since) == {
        "production": ArmOutcome(),
        "candidate": ArmOutcome(),
    }


def test_the_outcome_of_a_decision_is_its_replay_reward(
    engine: sa.Engine, rng: np.random.Generator
) -> None:
    """The reward the retrain's replay gives the decision: slate position 0's (a click at
    another position first is not the decision's), the first one under first-wins
    (``duplicate`` repeats left out), every one under the sum rule (``summed``), whether
    or not a head learnt it."""
    since = datetime.now(UTC) - timedelta(minutes=1)

    def decided(version: str) -> Any:
        return dataclasses.replace(decision_row(rng, model_version=version), traffic="candidate")

    slate, summed, repeated, rejected = (decided("m/7") for _ in range(4))
    rows: list[Any] = [slate, summed, repeated, rejected]
    rows += [reward_row(slate.event_id, 1.0, position=2), reward_row(slate.event_id, 0.25)]
    rows += [
        reward_row(summed.event_id, 0.5),
        reward_row(summed.event_id, 0.25, repeat_status=records.SUMMED),
    ]
    rows += [
        reward_row(repeated.event_id, 0.5),
        reward_row(repeated.event_id, 1.0, repeat_status=records.DUPLICATE),
    ]
    # no head learnt it (its inputs were past the bound), but it is the decision's outcome
    rows.append(
        reward_row(rejected.event_id, 1.0, eligible=False, ineligible_status=records.REJECTED)
    )
    with engine.begin() as conn:
        write_events(conn, rows)
    got = traffic_outcomes(engine, "m", "7", since)["candidate"]
    values = [0.25, 0.75, 0.5, 1.0]
    assert (got.decisions, got.rewarded) == (4, 4)
    assert got.reward_sum == pytest.approx(sum(values))
    assert got.reward_sq_sum == pytest.approx(sum(v * v for v in values))
