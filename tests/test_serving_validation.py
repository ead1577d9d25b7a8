"""Bad input is a 422 naming the field (never a 500), oversized bodies a 413; nothing
invalid reaches the store."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bandit_core import MAX_ABS_INPUT
from bandit_core.policies.linear import ArmLimit
from tests.serving_helpers import (
    DIM_ARM,
    DIM_USER,
    decision_body,
    drop_snapshots,
    head_difference,
    policy_file,
    running_client,
    served_policy,
    service_settings,
)

pytest_plugins = ["tests.serving_fixtures"]

BODY = decision_body(np.random.default_rng(3), n=5)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("validation")
    settings = service_settings(
        tmp,
        model_path=policy_file(tmp / "policy.npz"),
        max_candidates=8,
        max_body_bytes=4096,
        reward_min=0.0,
        reward_max=1.0,
    )
    with running_client(settings) as c:
        yield c


def _with(**changes: Any) -> dict[str, Any]:
    return {**json.loads(json.dumps(BODY)), **changes}


def _candidates(**changes: Any) -> list[dict[str, Any]]:
    cands = json.loads(json.dumps(BODY["candidates"]))
    cands[1].update(changes)
    return cands


RAW_NAN = json.dumps(BODY).replace(str(BODY["context"][0]), "NaN", 1)
RAW_INF = json.dumps(BODY).replace(str(BODY["candidates"][2]["features"][1]), "-Infinity", 1)

DECISION_CASES: list[tuple[str, Any, tuple[Any, ...]]] = [
    ("context NaN", RAW_NAN, ("body", "context", "vector", 0)),
    ("feature -Infinity", RAW_INF, ("body", "candidates", 2, "features", 1)),
    ("context too short", _with(context=[0.1, 0.2]), ("body", "context")),
    ("context as text", _with(context=["1", 2, 3, 4]), ("body", "context", "vector", 0)),
    ("context missing", {"candidates": BODY["candidates"]}, ("body", "context")),
    ("named context without names", _with(context={"age": 1.0}), ("body", "context")),
    ("unknown field", _with(extra=1), ("body", "extra")),
    ("no candidates", _with(candidates=[]), ("body", "candidates")),
    (
        "too many candidates",
        _with(candidates=[{"id": f"c{i}", "features": [0.0] * 3} for i in range(9)]),
        ("body", "candidates"),
    ),
    (
        "unknown candidate field",
        _with(candidates=_candidates(price=3)),
        ("body", "candidates", 1, "price"),
    ),
    ("candidate id empty", _with(candidates=_candidates(id="")), ("body", "candidates", 1, "id")),
    (
        "duplicate candidate id",
        _with(candidates=_candidates(id="item-0")),
        ("body", "candidates", 1, "id"),
    ),
    (
        "ragged features",
        _with(candidates=_candidates(features=[1.0])),
        ("body", "candidates", 1, "features"),
    ),
    (
        "features of the wrong width",
        _with(candidates=[{"id": f"c{i}", "features": [0.0] * 5} for i in range(3)]),
        ("body", "candidates", 0, "features"),
    ),
    ("k zero", _with(k=0), ("body", "k")),
    ("k above K", _with(k=6), ("body", "k")),
    ("k as text", _with(k="2"), ("body", "k")),
    ("user id empty", _with(user_id=""), ("body", "user_id")),
    ("body not JSON", "{context: [1, 2", ("body",)),
]


@pytest.mark.parametrize(
    ("case", "body", "loc"), DECISION_CASES, ids=[c[0] for c in DECISION_CASES]
)
def test_bad_decision_fields_are_422(
    client: Any, case: str, body: Any, loc: tuple[Any, ...]
) -> None:
    before = client.app.state.service.store.count_rows()["decisions"]
    if isinstance(body, str):
        got = client.post(
            "/v1/decisions", content=body, headers={"content-type": "application/json"}
        )
    else:
        got = client.post("/v1/decisions", json=body)
    assert got.status_code == 422, got.text
    detail = got.json()["detail"]
    assert tuple(detail[0]["loc"][: len(loc)]) == loc, detail
    assert client.app.state.service.store.count_rows()["decisions"] == before


@pytest.fixture(scope="module")
def event_id(client: Any) -> str:
    event: str = client.post("/v1/decisions", json=BODY).json()["event_id"]
    return event


REWARD_CASES: list[tuple[str, Any, tuple[Any, ...]]] = [
    ("reward NaN", '{"event_id": "EVENT", "reward": NaN}', ("body", "reward")),
    ("reward Infinity", '{"event_id": "EVENT", "reward": Infinity}', ("body", "reward")),
    ("reward above range", {"reward": 1.5}, ("body", "reward")),
    ("reward below range", {"reward": -0.1}, ("body", "reward")),
    ("reward as text", {"reward": "1"}, ("body", "reward")),
    ("reward missing", {"reward": None}, ("body", "reward")),
    ("event id missing", {"event_id": None}, ("body", "event_id")),
    ("event id too long", {"event_id": "e" * 65}, ("body", "event_id")),
    ("naive timestamp", {"timestamp": "2026-11-01T12:00:00"}, ("body", "timestamp")),
    ("unknown field", {"weight": 2}, ("body", "weight")),
]


@pytest.mark.parametrize(("case", "change", "loc"), REWARD_CASES, ids=[c[0] for c in REWARD_CASES])
def test_bad_reward_fields_are_422(
    client: Any, event_id: str, case: str, change: Any, loc: tuple[Any, ...]
) -> None:
    if isinstance(change, str):
        got = client.post(
            "/v1/rewards",
            content=change.replace("EVENT", event_id),
            headers={"content-type": "application/json"},
        )
    else:
        body = {"event_id": event_id, "reward": 1.0, **change}
        got = client.post("/v1/rewards", json={k: v for k, v in body.items() if v is not None})
    assert got.status_code == 422, got.text
    assert tuple(got.json()["detail"][0]["loc"][: len(loc)]) == loc
    assert client.app.state.service.store.count_rows()["rewards"] == 0


def test_a_reward_s_timestamp_judges_nothing(client: Any) -> None:
    """A client's clock minutes off (a phone behind by 6 minutes) stamped its rewards
    before their decisions, and each was a 422 (never retried: lost). The timestamp is
    stored as sent and judges nothing; the reward is applied by when it was received."""
    import sqlalchemy as sa

    from eventstore.schema import rewards

    service = client.app.state.service
    event_id = client.post("/v1/decisions", json=BODY).json()["event_id"]
    behind = "2001-02-03T04:05:06+00:00"
    got = client.post(
        "/v1/rewards", json={"event_id": event_id, "reward": 1.0, "timestamp": behind}
    )
    assert got.status_code == 200 and got.json()["applied"], got.text
    with service.engine.connect() as conn:
        stored = conn.execute(
            sa.select(rewards.c.ts, rewards.c.status).where(rewards.c.event_id == event_id)
        ).one()
    assert stored.ts.isoformat() == behind and stored.status == "applied"


def test_oversized_bodies_are_413(client: Any) -> None:
    big = _with(candidates=[{"id": f"c{i}", "features": [0.123456789] * 3} for i in range(200)])
    assert client.post("/v1/decisions", json=big).status_code == 413

    def chunks() -> Iterator[bytes]:  # no content-length: the limit applies while reading
        payload = json.dumps(big).encode()
        for start in range(0, len(payload), 1000):
            yield payload[start : start + 1000]

    got = client.post(
        "/v1/decisions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert got.status_code == 413
    small = client.post(
        "/v1/decisions",
        content=iter([json.dumps(BODY).encode()]),
        headers={"content-type": "application/json"},
    )
    assert small.status_code == 200


def _assert_recovered_after_a_crash(settings: Any, live: Any) -> None:
    """After a crash before the first snapshot a restart recovers the ``live`` head."""
    drop_snapshots(settings.store_url)
    with running_client(settings) as client:
        assert head_difference(live, served_policy(client)) <= 1e-9


def _same_head(live: Any, other: Any) -> None:
    """The same learned arrays to round-off: relative to each array's largest entry,
    since sums of features at the bound are ~1e13, where one unit in the last place is
    0.004, and their cancelling entries keep that error (the hybrid sums the rows it
    learns in order in other groups than a batch does)."""
    left, right = live.to_state().arrays, other.to_state().arrays
    assert left.keys() == right.keys()
    for key, value in left.items():
        if key.endswith("pending"):
            continue
        if np.issubdtype(value.dtype, np.floating):
            atol = 1e-9 + 1e-14 * float(np.abs(value).max(initial=0.0))
            np.testing.assert_allclose(right[key], value, rtol=1e-12, atol=atol, err_msg=key)
        else:
            np.testing.assert_array_equal(right[key], value, err_msg=key)


def test_a_head_update_the_model_refuses_is_counted_skipped_and_recovered(
    tmp_path: Path,
) -> None:
    """A hybrid model with a very weak prior (lambda_prior = 1e-6) meets features at the
    bound: some of its updates are refused whole by the model. Every request still
    answers 200; a refused reward is stored as applied but answered ``applied: false``
    and counted in /metrics; the served head stays finite and keeps deciding. After a
    crash before any snapshot, recovery skips the same rewards: the version loads (no
    fallback) with a head equal to the live one, and so does a rebuild from the store."""

    from bandit_core import load_policy
    from eventstore.engine import make_engine
    from serving.models.recovery import rebuild_from_store
    from serving.store.repository import EventStore

    model = policy_file(
        tmp_path / "hybrid.npz", name="hybrid_linucb", dim_arm=DIM_ARM, lambda_prior=1e-6
    )
    settings = service_settings(tmp_path, model_path=model)
    rng = np.random.default_rng(5)
    n = 30
    learnt = []
    with running_client(settings) as client:
        for t in range(n):
            signs = rng.choice([-1.0, 1.0], DIM_USER + DIM_ARM)
            body = {
                "context": (MAX_ABS_INPUT * signs[:DIM_USER]).tolist(),
                "candidates": [
                    {"id": f"item-{t % 3}", "features": (MAX_ABS_INPUT * signs[DIM_USER:]).tolist()}
                ],
            }
            got = client.post("/v1/decisions", json=body)
            assert got.status_code == 200, got.text
            ack = client.post(
                "/v1/rewards", json={"event_id": got.json()["event_id"], "reward": t % 2}
            )
            assert ack.status_code == 200 and ack.json()["status"] == "applied", ack.text
            learnt.append(ack.json()["applied"])
        served = client.app.state.service.loader.current.production
        text = client.get("/metrics").text
        line = next(
            x for x in text.splitlines() if x.startswith("banditops_head_update_failures_total")
        )
        refused = n - sum(learnt)
        assert float(line.split()[-1]) == refused
        assert served.applied_rewards == sum(learnt)
        assert refused >= 3, "the premise broke: the weak prior refused no update"
        live = copy.deepcopy(served_policy(client))
        for key, value in live.to_state().arrays.items():
            assert not np.issubdtype(value.dtype, np.number) or np.isfinite(value).all(), key
        again = client.post("/v1/decisions", json=decision_body(rng, n=4))
        assert again.status_code == 200 and again.json()["fallback"] is False, again.text
        version = served.version
    engine = make_engine(settings.store_url)
    try:
        rebuilt = rebuild_from_store(EventStore(engine), version, load_policy(model))
        _same_head(live, rebuilt)
    finally:
        engine.dispose()
    drop_snapshots(settings.store_url)
    with running_client(settings) as client:
        restarted = client.app.state.service.loader.current.production
        assert restarted is not None and restarted.version == version
        assert restarted.applied_rewards == sum(learnt)
        _same_head(live, restarted.policy)
        got = client.post("/v1/decisions", json=decision_body(rng, n=4))
        assert got.status_code == 200 and got.json()["fallback"] is False, got.text


def test_recovery_and_the_replica_sync_skip_a_stored_reward_the_head_refuses(
    tmp_path: Path,
) -> None:
    """Store level: applied rewards whose decision's context is past the bound (logged
    before the bound existed) are skipped — by recovery, by the replica sync, which
    neither raises nor retries them, and by the rebuild — and every other reward is
    learnt once: the three heads agree."""
    import asyncio
    from dataclasses import replace

    from bandit_core import load_policy
    from eventstore.engine import make_engine
    from eventstore.migrate import upgrade
    from serving.models.recovery import rebuild_from_store, recover
    from serving.replica_sync import ReplicaSync
    from serving.store.repository import EventStore, write_events
    from tests.serving_helpers import decision_row, reward_row

    engine = make_engine(f"sqlite:///{tmp_path}/events.db")
    upgrade(engine)
    store = EventStore(engine)
    rng = np.random.default_rng(4)

    def log(value: float, huge: bool = False) -> None:
        decision = decision_row(rng, model_version="v/1")
        if huge:
            decision = replace(decision, context=decision.context * 0 + 2 * MAX_ABS_INPUT)
        with engine.begin() as conn:
            write_events(conn, [decision, reward_row(decision.event_id, value, None, "v/1")])

    for i in range(6):
        log(float(i % 2), huge=i == 3)
    base_path = policy_file(tmp_path / "base.npz", warm=20)
    model = recover(store, "v/1", load_policy(base_path), "test")
    assert model.applied_rewards == 5 and model.last_reward_id == 6
    log(1.0, huge=True)  # another replica stored these two after the load
    log(0.0)
    sync = ReplicaSync(store, "r1", interval_s=1.0, horizon_s=60.0)
    assert asyncio.run(sync.sync([model])).applied == {"v/1": 1}
    assert asyncio.run(sync.sync([model])).applied == {"v/1": 0}
    assert model.applied_rewards == 6 and model.last_reward_id == 8
    reference = rebuild_from_store(store, "v/1", load_policy(base_path))
    assert head_difference(model.policy, reference) < 1e-9
    engine.dispose()


@pytest.mark.parametrize("bound", ["max_arms", "model_max_bytes"])
def test_a_per_arm_head_learns_at_most_max_arms_arms_online(tmp_path: Path, bound: str) -> None:
    """A client sending a new arm id with every request cannot grow a per-arm head past
    ``max_arms``, nor past the ``model_max_bytes`` its state may take (here a windowed
    head of 2,760 bytes per arm, so 13 blocks with the prior's; before, only the count
    bounded it, and a per-arm head with d = 500 could grow by 4 MB a request): the reward
    of an arm beyond it is stored as ``arm_limit`` (not applied, not replayed) while
    known arms keep learning; recovery gives the same head."""

    from bandit_core.policies.linear import arm_state

    # knows item-0 … item-9
    model = policy_file(tmp_path / "linucb.npz", name="linucb", window=60)
    per_arm = 2760
    limits = {"max_arms": 12} if bound == "max_arms" else {"model_max_bytes": 13 * per_arm}
    settings = service_settings(tmp_path, model_path=model, **limits)
    rng = np.random.default_rng(9)
    statuses = []
    with running_client(settings) as client:
        arms = arm_state(served_policy(client))
        assert arms is not None and arms.n_arms == 10 and arms.bytes_per_arm == per_arm
        for arm in ("new-1", "new-2", "new-3", "item-4", "new-4"):
            body = {"context": rng.standard_normal(DIM_USER).tolist(), "candidates": [{"id": arm}]}
            got = client.post("/v1/decisions", json=body)
            assert got.status_code == 200, got.text
            ack = client.post("/v1/rewards", json={"event_id": got.json()["event_id"], "reward": 1})
            assert ack.status_code == 200, ack.text
            statuses.append((ack.json()["status"], ack.json()["applied"]))
        live = copy.deepcopy(served_policy(client))
        assert arm_state(live).n_arms == 12  # type: ignore[union-attr]
        assert not arm_state(live).knows("new-3")  # type: ignore[union-attr]
        metrics = client.get("/metrics").text
    assert statuses == [
        ("applied", True),
        ("applied", True),
        ("arm_limit", False),
        ("applied", True),
        ("arm_limit", False),
    ]
    assert 'banditops_rewards_total{status="arm_limit"} 2.0' in metrics
    _assert_recovered_after_a_crash(settings, live)


def test_a_head_that_is_not_finite_is_never_snapshotted(tmp_path: Path) -> None:
    """The check runs off the event loop, with the serialisation: a head whose state is
    not finite writes no snapshot (recovery would bring it back) and is counted."""
    from serving.models.served import find_head

    with running_client(
        service_settings(tmp_path, model_path=policy_file(tmp_path / "p.npz"))
    ) as client:
        rng = np.random.default_rng(12)
        got = client.post("/v1/decisions", json=decision_body(rng, n=4))
        client.post("/v1/rewards", json={"event_id": got.json()["event_id"], "reward": 1.0})
        healthy = client.post("/v1/admin/snapshot").json()["snapshot_ids"]
        assert len(healthy) == 1
        got = client.post("/v1/decisions", json=decision_body(rng, n=4))
        client.post("/v1/rewards", json={"event_id": got.json()["event_id"], "reward": 1.0})
        find_head(served_policy(client)).theta_[0, 0] = np.nan  # poisoned behind its back
        assert client.post("/v1/admin/snapshot").json()["snapshot_ids"] == []
        store = client.app.state.service.store
        assert store.count_rows()["head_snapshots"] == 1
        text = client.get("/metrics").text
        assert "banditops_unsafe_heads_total 1.0" in text


def test_recovery_the_rebuild_and_the_replica_sync_keep_a_head_within_max_arms(
    tmp_path: Path,
) -> None:
    """Every served head keeps to ``max_arms``, not only the deciding one: the rewards of
    another version's decisions (a rollout's, learnt by the window rule), or rewards in
    flight when the head filled up, are skipped for a new arm past the limit by recovery,
    the rebuild and the replica sync alike, as the service skips them online; known arms
    keep learning."""
    import asyncio
    import dataclasses
    from datetime import UTC, datetime, timedelta

    from bandit_core import load_policy
    from bandit_core.policies.linear import arm_state
    from eventstore.engine import make_engine
    from eventstore.migrate import upgrade
    from serving.models.recovery import rebuild_from_store, recover
    from serving.replica_sync import ReplicaSync
    from serving.store.repository import EventStore, write_events
    from tests.serving_helpers import decision_row, reward_row

    engine = make_engine(f"sqlite:///{tmp_path}/events.db")
    upgrade(engine)
    store = EventStore(engine)
    rng = np.random.default_rng(4)
    stop = datetime.now(UTC) - timedelta(minutes=10)

    def log(arm: str, at: datetime) -> None:
        decision = dataclasses.replace(
            decision_row(rng, created_at=at, model_version="old/1"),
            candidate_ids=(arm, "x", "y", "z"),
            candidate_features=np.zeros((4, 0)),
            chosen=0,
        )
        with engine.begin() as conn:
            write_events(conn, [decision, reward_row(decision.event_id, 1.0, None, "old/1")])

    for i, arm in enumerate(["new-a", "item-1", "new-b", "new-a", "new-c", "item-2"]):
        log(arm, stop + timedelta(seconds=i))
    base_path = policy_file(tmp_path / "base.npz", name="linucb")  # knows item-0 … item-9

    def rebuilt(max_arms: int | None) -> Any:
        base = load_policy(base_path)
        return rebuild_from_store(store, "new/2", base, window_stop=stop, max_arms=max_arms)

    model = recover(store, "new/2", load_policy(base_path), "test", stop, max_arms=11)
    arms = arm_state(model.policy)
    assert arms is not None and arms.n_arms == 11 and arms.knows("new-a")
    assert not arms.knows("new-b") and not arms.knows("new-c")
    assert model.applied_rewards == 4  # new-a twice, item-1, item-2

    log("new-d", datetime.now(UTC))
    log("item-3", datetime.now(UTC))
    sync = ReplicaSync(store, "r1", interval_s=1.0, horizon_s=60.0, arm_limit=ArmLimit(11))
    assert asyncio.run(sync.sync([model])).applied == {"new/2": 1}
    assert head_difference(model.policy, rebuilt(11)) <= 1e-9
    everything = arm_state(rebuilt(None))
    assert everything is not None and everything.n_arms == 14  # no limit: every new arm
    engine.dispose()


def test_a_reward_in_flight_when_the_head_fills_up_is_not_learnt(tmp_path: Path) -> None:
    """Two rewards of new arms pass the check on arrival when the head has room for one;
    held behind the head gate (as during a snapshot's copy), the first learnt fills the
    head and the second is not learnt (``applied: false``), and recovery skips it too."""
    import threading
    import time

    from bandit_core.policies.linear import arm_state

    model = policy_file(tmp_path / "linucb.npz", name="linucb")  # knows item-0 … item-9
    settings = service_settings(tmp_path, model_path=model, max_arms=11)
    rng = np.random.default_rng(10)
    with running_client(settings) as client:
        service = client.app.state.service
        events = []
        for arm in ("new-1", "new-2"):
            body = {"context": rng.standard_normal(DIM_USER).tolist(), "candidates": [{"id": arm}]}
            events.append(client.post("/v1/decisions", json=body).json()["event_id"])
        client.portal.call(service.gate.close)
        answers: list[Any] = []
        senders = [
            threading.Thread(
                target=lambda e=event: answers.append(
                    client.post("/v1/rewards", json={"event_id": e, "reward": 1.0}).json()
                )
            )
            for event in events
        ]
        for sender in senders:
            sender.start()
        deadline = time.monotonic() + 30
        while service.store.count_rows()["rewards"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not answers  # both stored, both waiting for their head update
        client.portal.call(service.gate.open)
        for sender in senders:
            sender.join(30)
        assert sorted((a["status"], a["applied"]) for a in answers) == [
            ("applied", False),
            ("applied", True),
        ]
        live = copy.deepcopy(served_policy(client))
        assert arm_state(live).n_arms == 11  # type: ignore[union-attr]
    _assert_recovered_after_a_crash(settings, live)


def test_a_version_whose_factor_overflows_learns_nothing_non_finite(tmp_path: Path) -> None:
    """A finite artifact passes admission and the probe, but its head's factor is not its
    precision's (``inv_chol`` × 1e160): its first reward's update would make θ NaN. The
    update is refused whole — the reward answered ``applied: false``, counted in
    /metrics — and the served head stays finite and keeps deciding (before: applied,
    then every decision fell back on a NaN head)."""
    from bandit_core import load_state, save_state

    model = policy_file(tmp_path / "lints.npz", name="shared_lints")
    state = load_state(model)
    state.arrays["head.inv_chol"] = state.arrays["head.inv_chol"] * 1e160
    # statistics of nothing learnt: θ = UᵀU·xty = 0 holds, as a restored head's must
    for name in ("head.xty", "head.theta"):
        state.arrays[name] = np.zeros_like(state.arrays[name])
    save_state(state, model)
    settings = service_settings(tmp_path, model_path=model)
    rng = np.random.default_rng(8)
    with running_client(settings) as client:
        got = client.post("/v1/decisions", json=decision_body(rng, n=3))
        assert got.status_code == 200 and got.json()["fallback"] is False, got.text
        ack = client.post("/v1/rewards", json={"event_id": got.json()["event_id"], "reward": 1})
        assert ack.status_code == 200, ack.text
        assert ack.json()["status"] == "applied" and ack.json()["applied"] is False
        text = client.get("/metrics").text
        assert "banditops_head_update_failures_total 1.0" in text
        for key, value in served_policy(client).to_state().arrays.items():
            assert not np.issubdtype(value.dtype, np.number) or np.isfinite(value).all(), key
        again = client.post("/v1/decisions", json=decision_body(rng, n=3))
        assert again.status_code == 200 and again.json()["fallback"] is False, again.text
