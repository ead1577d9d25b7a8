"""The rollout state in the event store: one running rollout per model, every step
audited in the same transaction, an ended rollout takes no step, and the per-arm outcome
reads each decision's reward by the reward rules, as the replay and the monitor do."""

from __future__ import annotations

import dataclasses
import functools
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from eventstore import records
from eventstore.outcomes import OnlineMean, RewardRules
from eventstore.replay import read_replay
from eventstore.rollouts import (
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
from tests.serving_helpers import decision_row, reward_row, run_together

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


RULES = RewardRules(reward_window=timedelta(seconds=10))


def _arm(got: OnlineMean) -> tuple[int, int, int, float, float]:
    return got.served, got.counted, got.rewarded, got.total, got.total_sq


def test_a_rollout_records_the_end_fixed_at_its_start(engine: sa.Engine) -> None:
    started = start_rollout(engine, "m", 3, 0.05, reason="r", at=T0, max_duration_s=3600.0)
    assert started.ends_by == T0 + timedelta(hours=1)
    assert current_rollout(engine, "m") == started  # read back from the store
    assert not started.past_its_end(T0 + timedelta(minutes=59))
    assert started.past_its_end(T0 + timedelta(hours=1))
    assert started.past_its_end(T0 + timedelta(minutes=30), max_duration_s=60.0)  # shorter
    assert not started.past_its_end(T0 + timedelta(minutes=30), max_duration_s=1e6)
    unbounded = start_rollout(engine, "n", 3, 0.05, reason="r", at=T0)  # before revision 0007
    assert unbounded.ends_by is None and not unbounded.past_its_end(T0 + timedelta(days=999))
    for bad, expected in [
        (float("nan"), "max_duration_s must be finite and > 0; got nan"),
        (0.0, "max_duration_s must be finite and > 0; got 0.0"),
        (float("inf"), "max_duration_s must be finite and > 0; got inf"),
        (1e300, "max_duration_s must end before the year 10000; got 1e\\+300 s"),
    ]:
        with pytest.raises(ValueError, match=expected):
            start_rollout(engine, "o", 3, 0.05, reason="r", at=T0, max_duration_s=bad)
    assert current_rollout(engine, "o") is None


def test_traffic_outcomes_count_each_closed_decision_with_its_reward_or_the_default(
    engine: sa.Engine, rng: np.random.Generator
) -> None:
    now = datetime.now(UTC)
    since = now - timedelta(minutes=1)
    rows = []
    expected = {"production": [], "candidate": []}  # type: dict[str, list[float]]
    for i in range(40):
        traffic = "candidate" if i % 4 == 0 else "production"
        version = "m/7" if traffic == "candidate" else "m/6"
        at = since + timedelta(milliseconds=100 * i)
        d = dataclasses.replace(
            decision_row(rng, model_version=version, created_at=at), traffic=traffic
        )
        rows.append(d)
        if i % 5 == 4:
            expected[traffic].append(0.0)  # no reward: the default reward
            continue
        value = float(rng.random())
        in_window = at + timedelta(seconds=1)
        rows.append(reward_row(d.event_id, value, ts=in_window, model_version=version))
        expected[traffic].append(value)
        rows.append(reward_row(d.event_id, 1.0, ts=in_window, model_version=version))  # repeat
    # not counted: an older decision, another candidate version; a decision whose only
    # reward came after its window counts with the default reward; one whose window is
    # still open is served but not counted yet
    old = dataclasses.replace(
        decision_row(rng, model_version="m/7", created_at=since - timedelta(hours=1)),
        traffic="candidate",
    )
    other = dataclasses.replace(
        decision_row(rng, model_version="m/5", created_at=since), traffic="candidate"
    )
    late = dataclasses.replace(
        decision_row(rng, model_version="m/7", created_at=since), traffic="candidate"
    )
    fresh = dataclasses.replace(decision_row(rng, model_version="m/7"), traffic="candidate")
    rows += [old, reward_row(old.event_id, 1.0), other, reward_row(other.event_id, 1.0)]
    rows += [late, reward_row(late.event_id, 1.0, ts=since + timedelta(seconds=30)), fresh]
    rows.append(reward_row(fresh.event_id, 1.0))
    expected["candidate"].append(0.0)  # the late one
    with engine.begin() as conn:
        write_events(conn, rows)

    got = traffic_outcomes(engine, "m", "7", since, RULES, now=now)
    for arm, values in expected.items():
        rewarded = sum(1 for v in values if v != 0.0)
        served = len(values) + (arm == "candidate")  # the fresh one
        want = (served, len(values), rewarded, sum(values), sum(v * v for v in values))
        assert _arm(got[arm])[:3] == want[:3], arm
        assert _arm(got[arm])[3:] == pytest.approx(want[3:]), arm
    # "drop": a decision without a reward in its window is left out
    drop = dataclasses.replace(RULES, missing_reward="drop")
    dropped = traffic_outcomes(engine, "m", "7", since, drop, now=now)["candidate"]
    assert dropped.counted == dropped.rewarded == sum(1 for v in expected["candidate"] if v)
    assert traffic_outcomes(engine, "m", "7", since, RULES, until=since, now=now) == {
        "production": OnlineMean(),
        "candidate": OnlineMean(),
    }


def test_clicks_alone_give_each_arm_its_click_rate(
    engine: sa.Engine, rng: np.random.Generator
) -> None:
    """A client that reports clicks only (reward 1, nothing for no click — a default
    reward of 0): each arm's outcome is its click rate, so a worse candidate shows as
    worse. Counting only the rewarded decisions gave both arms a mean of exactly 1."""
    now = datetime.now(UTC)
    since = now - timedelta(minutes=1)
    rows: list[Any] = []
    for traffic, version, clicks in (("candidate", "m/7", 20), ("production", "m/6", 60)):
        for i in range(200):
            d = dataclasses.replace(
                decision_row(rng, model_version=version, created_at=since), traffic=traffic
            )
            rows.append(d)
            if i < clicks:
                rows.append(reward_row(d.event_id, 1.0, ts=since + timedelta(seconds=2)))
    with engine.begin() as conn:
        write_events(conn, rows)
    got = traffic_outcomes(engine, "m", "7", since, RULES, now=now)
    assert (got["candidate"].counted, got["candidate"].mean) == (200, pytest.approx(0.1))
    assert (got["production"].counted, got["production"].mean) == (200, pytest.approx(0.3))


def test_the_outcome_of_a_decision_is_its_replay_reward(
    engine: sa.Engine, rng: np.random.Generator
) -> None:
    """The reward the retrain's replay gives the decision: slate position 0's (a click at
    another position first is not the decision's), the first one under first-wins, every
    one under the sum rule, whether or not a head learnt it."""
    now = datetime.now(UTC)
    since = now - timedelta(minutes=1)
    received = since + timedelta(seconds=1)

    def decided(version: str) -> Any:
        return dataclasses.replace(
            decision_row(rng, model_version=version, created_at=since), traffic="candidate"
        )

    slate, summed, repeated, rejected = (decided("m/7") for _ in range(4))
    rows: list[Any] = [slate, summed, repeated, rejected]
    rows += [
        reward_row(slate.event_id, 1.0, ts=received, position=2),
        reward_row(slate.event_id, 0.25, ts=received),
    ]
    rows += [
        reward_row(summed.event_id, 0.5, ts=received),
        reward_row(summed.event_id, 0.25, ts=received, repeat_status=records.SUMMED),
    ]
    rows += [
        reward_row(repeated.event_id, 0.5, ts=received),
        reward_row(repeated.event_id, 1.0, ts=received, repeat_status=records.DUPLICATE),
    ]
    # no head learnt it (its inputs were past the bound), but it is the decision's outcome
    rows.append(
        reward_row(
            rejected.event_id,
            1.0,
            ts=received,
            eligible=False,
            ineligible_status=records.REJECTED,
        )
    )
    with engine.begin() as conn:
        write_events(conn, rows)
    for rule, summed_value, repeated_value in (("first_wins", 0.5, 0.5), ("sum", 0.75, 1.5)):
        rules = dataclasses.replace(RULES, duplicate_rule=rule)  # type: ignore[arg-type]
        got = traffic_outcomes(engine, "m", "7", since, rules, now=now)["candidate"]
        values = [0.25, summed_value, repeated_value, 1.0]
        assert (got.served, got.counted, got.rewarded) == (4, 4, 4), rule
        assert got.total == pytest.approx(sum(values)), rule
        assert got.total_sq == pytest.approx(sum(v * v for v in values)), rule


def test_a_rollout_that_could_only_expire_is_refused_naming_the_settings(
    tmp_path: Any,
) -> None:
    """Each stage waits for its decisions' reward windows: a maximum duration shorter than
    a window per stage would expire every rollout, whatever the candidate."""
    from pydantic import ValidationError

    from training.settings import PipelineSettings

    with pytest.raises(ValidationError, match="rollout_max_duration_s must exceed 345600 s"):
        PipelineSettings(
            workspace=tmp_path, reward_window_s=86_400.0, rollout_max_duration_s=3 * 86_400.0
        )
    ok = PipelineSettings(
        workspace=tmp_path, reward_window_s=600.0, rollout_max_duration_s=3 * 86_400.0
    )
    assert ok.rollout_max_duration_s == 3 * 86_400.0


def test_a_slates_outcome_is_the_mean_of_its_positions_rewards(
    engine: sa.Engine, rng: np.random.Generator
) -> None:
    """Per shown item, what the offline evaluation estimates for slates: each position's
    reward by the rules, a position without one the default (left out under "drop")."""
    now = datetime.now(UTC)
    since = now - timedelta(minutes=1)
    received = since + timedelta(seconds=1)

    def slate() -> Any:
        d = decision_row(rng, model_version="m/7", created_at=since, n=5)
        return dataclasses.replace(
            d, traffic="candidate", ranking=(3, 0, 4), position_propensities=(0.4, 0.3, 0.2)
        )

    top_and_last, middle_only = slate(), slate()
    rows: list[Any] = [top_and_last, middle_only]
    rows += [
        reward_row(top_and_last.event_id, 0.25, ts=received),  # position 0
        reward_row(top_and_last.event_id, 1.0, ts=received, position=2),
        reward_row(top_and_last.event_id, 0.0, ts=received, position=2),  # a repeat
        reward_row(top_and_last.event_id, 1.0, ts=received, position=5),  # not shown
        reward_row(middle_only.event_id, 1.0, ts=received, position=1),
    ]
    with engine.begin() as conn:
        write_events(conn, rows)
    got = traffic_outcomes(engine, "m", "7", since, RULES, now=now)["candidate"]
    values = [(0.25 + 0.0 + 1.0) / 3, 1.0 / 3]
    assert (got.counted, got.rewarded) == (2, 2)
    assert (got.total, got.total_sq) == pytest.approx((sum(values), sum(v * v for v in values)))
    drop = dataclasses.replace(RULES, missing_reward="drop")
    dropped = traffic_outcomes(engine, "m", "7", since, drop, now=now)["candidate"]
    assert dropped.total == pytest.approx((0.25 + 1.0) / 2 + 1.0)
    # the replay's outcome column is the same reading, decision by decision (the
    # monitor's reward drift reads it); position 0's reward stays in `reward`
    window = {"reward_window": RULES.reward_window, "as_of": now}
    frame = read_replay(engine, since, now, **window, default_reward=0.0)
    assert list(frame["outcome"]) == pytest.approx(values)
    assert list(frame["reward"]) == [0.25, 0.0]
    dropped_frame = read_replay(engine, since, now, **window, missing_reward="drop")
    assert list(dropped_frame["outcome"]) == pytest.approx([(0.25 + 1.0) / 2, 1.0])


def test_lifetime_outcomes_read_settled_decisions_once(
    engine: sa.Engine, rng: np.random.Generator
) -> None:
    """The Bandits page's per-version outcome equals a full read of the store at every
    view, but reads settled decisions (two reward windows old) only once: before, every
    view streamed the whole store (13.7 s and 350 MB a view at a million decisions)."""
    from monitoring.online import LifetimeOutcomes, online_outcomes

    rules = dataclasses.replace(RULES, reward_window=timedelta(hours=1))
    now = datetime.now(UTC)

    def log(at: datetime, version: str, reward: float | None) -> Any:
        row = decision_row(rng, model_version=version, created_at=at)
        rows = [row] if reward is None else [row, reward_row(row.event_id, reward, ts=at)]
        with engine.begin() as conn:
            write_events(conn, rows)
        return row

    def as_tuples(groups: dict[tuple[str, ...], OnlineMean]) -> dict[Any, tuple[Any, ...]]:
        return {
            k: (g.served, g.counted, g.rewarded, round(g.total, 9), round(g.total_sq, 9))
            for k, g in groups.items()
        }

    old = [log(now - timedelta(days=3), "m/1", r) for r in (1.0, 0.0, None)]
    log(now - timedelta(hours=3), "m/2", 1.0)
    log(now - timedelta(minutes=10), "m/2", 0.5)  # its window is still open
    lifetime = LifetimeOutcomes()
    for later in (timedelta(0), timedelta(0), timedelta(hours=2), timedelta(days=1)):
        log(now + later - timedelta(minutes=90), "m/2", 0.25)
        assert as_tuples(lifetime.read(engine, rules, now=now + later)) == as_tuples(
            online_outcomes(engine, rules, now=now + later)
        )
    # a journal drained after a long outage writes old decisions and rewards late: read
    late = now + timedelta(days=1) - timedelta(hours=5)
    log(late, "m/2", 1.0)
    log(late, "m/3", None)
    assert as_tuples(lifetime.read(engine, rules, now=now + timedelta(days=1))) == as_tuples(
        online_outcomes(engine, rules, now=now + timedelta(days=1))
    )
    with engine.begin() as conn:  # what was read once is not read again
        conn.execute(sa.text("DELETE FROM rewards"))
        conn.execute(sa.text("DELETE FROM decisions"))
    kept = lifetime.read(engine, rules, now=now + timedelta(days=1))
    assert (kept[("m/1",)].served, kept[("m/1",)].total) == (len(old), 1.0)
    assert online_outcomes(engine, rules, now=now + timedelta(days=1)) == {}


def test_concurrent_starts_leave_one_rollout_running_and_a_late_step_names_the_end(
    engine: sa.Engine,
) -> None:
    """Six starts of one model at once (``banditops rollout start`` beside the controller's
    own start): one runs, the others are refused by name. On PostgreSQL two or more often
    ran, and the one ``current_rollout`` did not show came back once the other ended. Then
    four steps on it at once: one stop ends it, the others are refused naming the status
    it ended in (a step that waited for the stop said "is running, not running")."""
    start = threading.Barrier(6)
    outcomes: list[Any] = []

    def start_one(version: int) -> None:
        start.wait()
        try:
            outcomes.append(start_rollout(engine, "m", version, 0.05, reason="race"))
        except Exception as exc:  # reported below
            outcomes.append(exc)

    run_together(*(functools.partial(start_one, v) for v in range(1, 7)))
    started = [o for o in outcomes if not isinstance(o, Exception)]
    refused = [o for o in outcomes if isinstance(o, Exception)]
    assert len(started) == 1, outcomes
    assert all(isinstance(e, RolloutStateError) for e in refused), refused
    assert all("already has a running rollout" in str(e) for e in refused)
    with engine.connect() as conn:
        running = conn.execute(sa.text("SELECT count(*) FROM rollouts WHERE status = 'running'"))
        assert running.scalar() == 1
    (rollout,) = started

    steps = threading.Barrier(4)
    ended: list[Any] = []

    def stop_it(who: int) -> None:
        steps.wait()
        try:
            ended.append(record_step(engine, rollout.id, "stop", reason=f"stop {who}"))
        except Exception as exc:  # reported below
            ended.append(exc)

    run_together(*(functools.partial(stop_it, w) for w in range(4)))
    assert sum(not isinstance(e, Exception) for e in ended) == 1, ended
    for exc in (e for e in ended if isinstance(e, Exception)):
        assert isinstance(exc, RolloutStateError), exc
        assert "is stopped, not running; stop not recorded" in str(exc)
    assert len(rollout_history(engine, "m", rollout_id=rollout.id)) == 2  # start, one stop


@pytest.mark.parametrize("missing", ["default", "drop"])
def test_outcomes_by_unit_add_up_to_the_arm_and_a_reward_out_of_range_is_set_aside(
    engine: sa.Engine, rng: np.random.Generator, missing: str
) -> None:
    """The rollout's test reads each arm by user (a user's outcomes are not independent
    draws): per bucket of users the outcomes and their sum, the anonymous decisions each
    their own unit; they add up to the arm's count and total. A stored reward outside the
    reward range (another tool's row, or a range narrowed since) sets its decision aside,
    as the replay's quarantine does: one of 1000 held a rollout until it expired (inf)
    or made its interval the whole range (audit, stop 54)."""
    from eventstore.outcomes import unit_bucket

    now = datetime.now(UTC)
    since = now - timedelta(minutes=1)
    rules = dataclasses.replace(RULES, missing_reward=missing)
    rows: list[Any] = []
    per_user: dict[str, list[float]] = {}
    single: list[float] = []
    for i in range(60):
        user = None if i % 3 == 0 else f"{i % 7:064x}"  # 6 users, each back many times
        d = dataclasses.replace(
            decision_row(rng, model_version="m/7", created_at=since),
            traffic="candidate",
            user_hash=user,
        )
        rows.append(d)
        value = None if i % 4 == 0 else float(rng.random())
        if i == 5:
            value = 5.0  # outside [0, 1]
        if value is not None:
            rows.append(reward_row(d.event_id, value, ts=since + timedelta(seconds=1)))
        if i == 5:
            continue
        outcome = value if value is not None else (0.0 if missing == "default" else None)
        if outcome is None:
            continue
        (single if user is None else per_user.setdefault(user, [])).append(outcome)
    with engine.begin() as conn:
        write_events(conn, rows)
    got = traffic_outcomes(engine, "m", "7", since, rules, now=now, units=64)["candidate"]
    units = got.units
    assert units is not None and got.set_aside == 1
    assert got.counted == sum(len(v) for v in per_user.values()) + len(single)
    assert units.counts.sum() + units.singles == got.counted
    assert units.sums.sum() + units.singles_total == pytest.approx(got.total)
    assert units.singles == len(single)
    assert units.singles_sq == pytest.approx(sum(v * v for v in single))
    for user, values in per_user.items():
        b = unit_bucket(user, 64)
        together = [v for u, vs in per_user.items() if unit_bucket(u, 64) == b for v in vs]
        assert units.counts[b] == len(together) >= len(values)
        assert units.sums[b] == pytest.approx(sum(together))
    assert got.highest <= 1.0 and "set_aside" in got.to_dict()
