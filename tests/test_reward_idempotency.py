"""A reward's idempotency key: a reward sent again with its key (its first answer was
lost) is answered as the first was and stored once — through the service, in one
group-commit batch, on SQLite and PostgreSQL, and in the journal while the store is out.
Without a key, a reward sent again is another reward (under the sum rule it counts)."""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from eventstore import records
from eventstore.records import RewardOutcome
from eventstore.replay import read_replay
from eventstore.schema import rewards
from serving.store import journal as journal_module
from serving.store.journal import REJECTED_FILE, Journal, drain_records, read_records
from serving.store.repository import write_events
from tests.serving_helpers import (
    decision_body,
    decision_row,
    policy_file,
    reward_row,
    run_together,
    running_client,
    service_settings,
)

pytest_plugins = ["tests.serving_fixtures"]


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    return policy_file(tmp_path / "policy.npz", seed=0)


def _stored(engine: sa.Engine) -> list[tuple[str, float, int, str | None]]:
    r = rewards.c
    with engine.connect() as conn:
        query = sa.select(r.event_id, r.value, r.ordinal, r.idempotency_key).order_by(r.id)
        return [(e, v, o, k) for e, v, o, k in conn.execute(query)]


def _replayed(engine: sa.Engine) -> list[float]:
    frame = read_replay(
        engine,
        datetime(2000, 1, 1, tzinfo=UTC),
        datetime.now(UTC) + timedelta(days=1),
        reward_window=timedelta(hours=1),
        duplicate_rule="sum",
        as_of=datetime.now(UTC) + timedelta(days=2),
    )
    return [float(v) for v in frame["reward"]]


def test_a_reward_sent_again_with_its_key_is_answered_as_the_first_and_counted_once(
    store_url: str, model_path: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    settings = service_settings(tmp_path, store_url, model_path=model_path, duplicate_rule="sum")
    with running_client(settings) as client:
        head = client.app.state.service
        event = client.post("/v1/decisions", json=decision_body(rng)).json()["event_id"]
        keyed = {"event_id": event, "reward": 1.0, "idempotency_key": "click-1"}
        first = client.post("/v1/rewards", json=keyed).json()
        again = client.post("/v1/rewards", json=keyed).json()
        assert first == again and first["status"] == "applied" and first["applied"] is True
        learnt = client.get("/v1/model").json()["production"]["applied_rewards"]
        assert learnt == 1  # the head learnt it once

        other = client.post(
            "/v1/rewards", json={**keyed, "reward": 0.75, "idempotency_key": "purchase-1"}
        ).json()
        unkeyed = client.post("/v1/rewards", json={"event_id": event, "reward": 0.5}).json()
        assert (other["status"], unkeyed["status"]) == ("summed", "summed")

        clash = client.post("/v1/rewards", json={**keyed, "reward": 0.0})
        assert clash.status_code == 422
        error = clash.json()["detail"][0]
        assert error["loc"] == ["body", "idempotency_key"]
        assert "first sent with reward 1.0 at position 0" in error["msg"]

        assert _stored(head.engine) == [
            (event, 1.0, 0, "click-1"),
            (event, 0.75, 1, "purchase-1"),
            (event, 0.5, 2, None),
        ]
        assert _replayed(head.engine) == [2.25]


def test_a_repeat_of_a_reward_its_head_refused_is_answered_unlearnt_after_a_restart_too(
    store_url: str, model_path: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    """The head refuses a reward whose context is far out of scale: it is stored
    ``applied`` and answered ``applied: false``. Its repeats were answered ``applied:
    true`` once the first had answered (the refusal was kept only until then), and after
    a restart; the stored row now says the head refused it."""
    settings = service_settings(tmp_path, store_url, model_path=model_path)
    body = decision_body(rng)
    body["context"] = [1e6] + [0.0] * (len(body["context"]) - 1)
    with running_client(settings) as client:
        event = client.post("/v1/decisions", json=body).json()["event_id"]
        keyed = {"event_id": event, "reward": 1.0, "idempotency_key": "click-1"}
        first = client.post("/v1/rewards", json=keyed).json()
        assert (first["status"], first["applied"]) == ("applied", False)
        assert client.post("/v1/rewards", json=keyed).json() == first
        assert client.get("/v1/model").json()["production"]["applied_rewards"] == 0
        assert _stored(client.app.state.service.engine) == [(event, 1.0, 0, "click-1")]
    with running_client(settings) as client:  # the answer is the store's, not memory's
        assert client.post("/v1/rewards", json=keyed).json() == first


def test_a_key_sent_twice_at_once_is_stored_once(
    model_path: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    """Retries race their first (a client timeout shorter than the commit): both land in
    the writer, where the second finds the first in its batch or in the store."""
    settings = service_settings(tmp_path, model_path=model_path, duplicate_rule="sum")
    with running_client(settings) as client:
        event = client.post("/v1/decisions", json=decision_body(rng)).json()["event_id"]
        body = {"event_id": event, "reward": 1.0, "idempotency_key": "k"}
        answers: list[dict[str, object]] = []
        run_together(*[lambda: answers.append(client.post("/v1/rewards", json=body).json())] * 6)
        assert len(answers) == 6 and all(a == answers[0] for a in answers)
        assert answers[0]["status"] == "applied"
        assert _stored(client.app.state.service.engine) == [(event, 1.0, 0, "k")]
        assert client.get("/v1/model").json()["production"]["applied_rewards"] == 1


def test_the_writer_answers_a_repeated_key_in_one_batch_and_across_batches(
    engine: sa.Engine, rng: np.random.Generator
) -> None:
    decision = decision_row(rng)
    with engine.begin() as conn:
        write_events(conn, [decision])
    sent = [
        reward_row(decision.event_id, 1.0, idempotency_key="a", repeat_status=records.SUMMED),
        reward_row(decision.event_id, 1.0, idempotency_key="a", repeat_status=records.SUMMED),
        reward_row(decision.event_id, 0.5, idempotency_key="b", repeat_status=records.SUMMED),
    ]
    with engine.begin() as conn:
        out = write_events(conn, sent)
    assert [(o.ordinal, o.applied, o.status) for o in out] == [
        (0, True, records.APPLIED),
        (0, False, records.APPLIED),  # nothing written, no head learns it
        (1, False, records.SUMMED),
    ]
    assert out[1].repeat_of is not None and out[1].repeat_of.outcome == out[0]
    with engine.begin() as conn:  # the next batch finds both keys in the store
        later = write_events(conn, sent[1:])
    assert [o.repeat_of.outcome for o in later] == out[::2]  # type: ignore[union-attr]
    assert [(v, o, k) for _, v, o, k in _stored(engine)] == [(1.0, 0, "a"), (0.5, 1, "b")]


def test_the_journal_answers_a_repeated_key_while_the_store_is_out(
    engine: sa.Engine, tmp_path: Path, rng: np.random.Generator
) -> None:
    """The ledger keeps each key's first reward: one stored before the outage, or
    journaled during it, answers its repeats; the drain writes each key once."""
    journal = Journal(tmp_path / "journal", exclusive=True, ledger_size=100).open()
    before, during = decision_row(rng), decision_row(rng)
    with engine.begin() as conn:
        stored = write_events(
            conn, [before, reward_row(before.event_id, 1.0, idempotency_key="k")]
        )[1]
    journal.observe([before], [None])
    journal.observe([reward_row(before.event_id, 1.0, idempotency_key="k")], [stored])
    journal.observe([during], [None])
    out = journal.spool(
        [
            reward_row(before.event_id, 1.0, idempotency_key="k"),
            reward_row(during.event_id, 0.5, idempotency_key="k"),
            reward_row(during.event_id, 0.5, idempotency_key="k"),
        ]
    )
    assert isinstance(out[0], RewardOutcome) and out[0].repeat_of is not None
    assert out[0].repeat_of.outcome == stored and not out[0].applied
    assert (out[1].ordinal, out[1].applied, out[1].journaled) == (0, True, True)
    assert out[2].repeat_of is not None and out[2].repeat_of.outcome == out[1]
    found, _ = read_records(journal.path.read_bytes())  # type: ignore[union-attr]
    assert len(found) == 1  # only the first reward of ``during`` was journaled
    again = journal.spool([reward_row(during.event_id, 0.5, idempotency_key="k")])
    assert again[0].repeat_of.outcome == out[1]  # the ledger counts what it journaled
    with engine.begin() as conn:
        write_events(conn, [during])
    drain_records(engine, found)
    assert sorted((e == before.event_id, v, k) for e, v, _, k in _stored(engine)) == [
        (False, 0.5, "k"),
        (True, 1.0, "k"),
    ]
    journal.close()


@pytest.mark.parametrize("retried_with", [1.0, 0.25])
def test_a_journaled_key_another_replica_stored_meanwhile_is_a_repeat_when_drained(
    engine: sa.Engine,
    tmp_path: Path,
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    retried_with: float,
) -> None:
    """Replica A, cut off from the store alone, journals a decision and two rewards of
    it, the second keyed. Its drain's first transaction stores the decision; the client,
    whose answer to the keyed reward was lost, sends it again through replica B, which
    stores it at once. A's drain then met the unique index on (event_id,
    idempotency_key) and set the reward aside as refused for good. Now the same reward
    is a repeat already stored: dropped, counted, its id B's (A's head learnt it: A's
    replica sync must not learn B's row again); another value under the key is set
    aside naming idempotency_key."""
    monkeypatch.setattr(journal_module, "DRAIN_CHUNK", 1)
    replica_a = Journal(tmp_path / "journal", exclusive=False).open()
    decision = dataclasses.replace(decision_row(rng), ranking=(0, 1))  # a slate of two
    keyed = reward_row(decision.event_id, 1.0, idempotency_key="k")
    other = reward_row(decision.event_id, 0.5, position=1)
    spooled = replica_a.spool([decision, other, keyed])
    assert [(o.ordinal, o.applied) for o in spooled[1:]] == [(0, True), (1, True)]
    by_b: list[RewardOutcome] = []

    def retried_through_b() -> None:  # after each drain transaction; the first: the decision
        if not by_b:
            again = reward_row(decision.event_id, retried_with, idempotency_key="k")
            with engine.begin() as conn:
                by_b.extend(write_events(conn, [again]))

    with caplog.at_level(logging.INFO, logger=journal_module.__name__):
        report = replica_a.drain(engine, progress=retried_through_b)
    # B's keyed reward took ordinal 0, which A had journaled ``other`` under: ``other``
    # was skipped as already stored, and lost
    assert [(v, o, k) for _, v, o, k in _stored(engine)] == [
        (retried_with, 0, "k"),  # B's, stored once
        (0.5, 1, None),  # A's ``other``, under the next ordinal
    ]
    assert report.reward_ids[0] == ("v1", _stored_id(engine, 0.5), True)
    aside = tmp_path / "journal" / REJECTED_FILE
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    if retried_with == keyed.value:
        assert (report.repeats, report.rejected) == (1, 0) and not aside.exists()
        assert report.reward_ids[-1] == ("v1", by_b[0].id, True)
        assert not errors
        (told,) = [r for r in caplog.records if "dropped as repeats" in r.getMessage()]
        assert told.levelno == logging.INFO
    else:
        assert (report.repeats, report.rejected) == (0, 1)
        (set_aside,), _ = read_records(aside.read_bytes())
        assert set_aside.row == keyed  # type: ignore[union-attr]
        (error,) = errors
        assert "idempotency_key 'k' is stored for reward 0.25" in error
    replica_a.close()


def _stored_id(engine: sa.Engine, value: float) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(sa.select(rewards.c.id).where(rewards.c.value == value)).scalar_one()
        )


@pytest.mark.parametrize(
    ("rule", "repeat"), [("first", records.DUPLICATE), ("sum", records.SUMMED)]
)
def test_a_journaled_reward_whose_ordinal_another_replica_took_is_stored_once(
    engine: sa.Engine,
    tmp_path: Path,
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    rule: str,
    repeat: str,
) -> None:
    """Replica A journals a decision and two rewards of it (ordinals 0 and 1, positions
    0 and 1, both answered applied). Its drain's first transaction stores the decision;
    replica B then stores a reward of the event at position 0 under ordinal 0 (applied:
    the first there). A's drain took (event_id, ordinal) being stored for "this reward is
    stored already" and dropped A's first reward; then it stored it under the next
    ordinal still applied: two applied rewards at one position, learnt twice by every
    head through the sync. Each reward is stored once: A's under the next free ordinals,
    its first as the repeat at position 0 that the writer would make of it, also when
    the drain is cut off after it and run again (found by what it is and the verdict it
    was stored with). A reports B's row for it (A's head learnt one reward there) and
    its own row for the second, so every applied row is learnt by each head once."""
    monkeypatch.setattr(journal_module, "DRAIN_CHUNK", 1)
    replica_a = Journal(tmp_path / "journal", exclusive=False).open()
    decision = dataclasses.replace(decision_row(rng), ranking=(0, 1))
    status = records.repeat_status(rule, late=False)
    first, second = (
        reward_row(decision.event_id, 1.0, repeat_status=status),
        reward_row(decision.event_id, 0.5, position=1, repeat_status=status),
    )
    spooled = replica_a.spool([decision, first, second])
    assert [(o.ordinal, o.applied) for o in spooled[1:]] == [(0, True), (1, True)]
    by_b: list[RewardOutcome] = []
    transactions = 0

    def b_then_outage() -> None:  # after each drain transaction
        nonlocal transactions
        transactions += 1
        if transactions == 1:  # the decision is stored: B rewards the event
            with engine.begin() as conn:
                b_reward = reward_row(decision.event_id, 0.25, repeat_status=status)
                by_b.extend(write_events(conn, [b_reward]))
        elif transactions == 2:  # A's first reward is stored: the store goes away
            raise sa.exc.OperationalError("drain", {}, ConnectionError("store lost"))

    with pytest.raises(sa.exc.OperationalError):
        replica_a.drain(engine, progress=b_then_outage)
    report = replica_a.drain(engine)  # the store is back: the drain runs again
    r = rewards.c
    with engine.connect() as conn:
        rows = conn.execute(sa.select(r.value, r.ordinal, r.applied, r.status).order_by(r.id)).all()
        applied = set(conn.execute(sa.select(r.model_version, r.id).where(r.applied)))
    assert [tuple(row) for row in rows] == [
        (0.25, 0, True, records.APPLIED),
        (1.0, 1, False, repeat),
        (0.5, 2, True, records.APPLIED),
    ]
    assert (report.rewards, report.skipped, report.renumbered, report.rejected) == (1, 2, 1, 0)
    mine = [(version, rid) for version, rid, learnt in report.reward_ids if learnt]
    assert mine == [("v1", by_b[0].id), ("v1", _stored_id(engine, 0.5))]
    claims_b = [("v1", by_b[0].id)]
    for learnt_here in (mine, claims_b):  # each head: its own rewards, then the sync's
        synced = applied - set(learnt_here)
        assert len(learnt_here) + len(synced) == len(applied) and set(learnt_here) <= applied
    replica_a.close()


def test_a_reward_the_journal_could_not_write_is_not_counted_by_its_ledger(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """A reward refused by a full journal was counted all the same: the event's next
    reward, the client's retry, was judged a repeat and never learnt."""
    journal = Journal(tmp_path / "journal", exclusive=True, ledger_size=100, max_bytes=1).open()
    decision = decision_row(rng)
    journal.observe([decision], [None])
    refused = journal.spool([reward_row(decision.event_id, 1.0)])
    assert not isinstance(refused[0], RewardOutcome)
    journal.max_bytes = 1 << 20
    retried = journal.spool([reward_row(decision.event_id, 1.0)])[0]
    assert (retried.ordinal, retried.status, retried.applied) == (0, records.APPLIED, True)
    journal.close()
