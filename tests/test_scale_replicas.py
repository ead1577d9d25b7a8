"""Two serving replicas (``banditops serve`` processes on loopback) sharing a PostgreSQL
event store converge to the head one replica would have.

Each replica applies the rewards it receives at once and, every
``BANDITOPS_REPLICA_SYNC_S``, the rewards the other one applied (``serving.replica_sync``).
After a sync interval both heads equal each other and the single-replica reference —
the base policy after every applied reward in id order
(``serving.models.recovery.rebuild_from_store``) — to 1e-9. A replica restarted in the
middle recovers from the store and joins without applying any reward twice.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from bandit_core import load_policy
from eventstore.engine import make_engine
from eventstore.migrate import upgrade
from eventstore.scratch import scratch_postgres_database
from serving.models.recovery import rebuild_from_store
from serving.models.state_io import policy_from_bytes
from serving.store.repository import EventStore
from tests.serving_helpers import AUTH, ServiceProcess, decision_body, policy_file

pytestmark = pytest.mark.postgres

SYNC_S = 0.5
HEAD = ("precision", "xty", "yty", "count", "theta", "inv_chol")


def rel(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = float(np.linalg.norm(b))
    return float(np.linalg.norm(a - b)) / (scale if scale else 1.0)


def head_arrays(policy: Any) -> dict[str, np.ndarray]:
    arrays = policy.to_state().arrays
    return {name: arrays[f"head.{name}"] for name in HEAD}


def live_head(replica: ServiceProcess) -> dict[str, np.ndarray]:
    reply = httpx.get(
        f"{replica.url}/v1/admin/state", params={"role": "production"}, timeout=10, headers=AUTH
    )
    reply.raise_for_status()
    return head_arrays(policy_from_bytes(reply.content))


def applied(replica: ServiceProcess) -> int:
    info = httpx.get(f"{replica.url}/v1/model", timeout=10).json()
    return int(info["production"]["applied_rewards"])


def traffic(replicas: list[ServiceProcess], rng: np.random.Generator, n: int) -> list[int]:
    """``n`` decisions spread over the replicas; each reward goes to a random replica
    (often not the one that decided). Returns the rewards each replica applied."""
    count = [0] * len(replicas)
    for i in range(n):
        decider = replicas[i % len(replicas)]
        event = httpx.post(
            f"{decider.url}/v1/decisions", json=decision_body(rng), headers=AUTH, timeout=10
        )
        event.raise_for_status()
        which = int(rng.integers(len(replicas)))
        receiver = replicas[which]
        reward = httpx.post(
            f"{receiver.url}/v1/rewards",
            json={"event_id": event.json()["event_id"], "reward": float(rng.random())},
            timeout=10,
            headers=AUTH,
        )
        reward.raise_for_status()
        count[which] += reward.json()["status"] == "applied"
    return count


def converge(replicas: list[ServiceProcess], total: int, timeout: float = 15.0) -> float:
    """Seconds until every replica's head has learnt from ``total`` rewards."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if all(applied(r) == total for r in replicas):
            return time.monotonic() - started
        time.sleep(0.05)
    counts = [applied(r) for r in replicas]
    pytest.fail(f"replicas did not converge in {timeout} s: applied {counts}, expected {total}")


def test_two_replicas_converge_to_the_single_replica_head(
    postgres_url: str, tmp_path: Path
) -> None:
    rng = np.random.default_rng(20261129)
    base_path = policy_file(tmp_path / "policy.npz")
    with scratch_postgres_database(postgres_url, prefix="banditops_replicas") as url:
        engine = make_engine(url)
        upgrade(engine)

        def replica(name: str) -> ServiceProcess:
            env = {
                "BANDITOPS_DATABASE_URL": url,
                "BANDITOPS_MODEL_PATH": str(base_path),
                "BANDITOPS_WORKSPACE": str(tmp_path / name),
                "BANDITOPS_USER_SALT": "replicas-share-one-salt",
                "BANDITOPS_REPLICA_ID": name,
                "BANDITOPS_REPLICA_SYNC_S": str(SYNC_S),
                "BANDITOPS_REPLICA_SYNC_HORIZON_S": "4",  # re-reads late ids every 1 s
            }
            return ServiceProcess(env, tmp_path / f"{name}.log").start()

        a, b = replica("a"), replica("b")
        try:
            received = traffic([a, b], rng, 60)
            assert min(received) > 0  # each replica needs the other's rewards
            total = sum(received)
            waited = converge([a, b], total)
            assert waited <= 4 * SYNC_S + 2.0  # one sync interval, with room for a busy machine
            heads = [live_head(a), live_head(b)]
            # b restarts: it recovers from the store, then keeps syncing
            b.stop()
            total += sum(traffic([a], rng, 15))
            b = replica("b")
            total += sum(traffic([a, b], rng, 20))
            converge([a, b], total)
            heads += [live_head(a), live_head(b)]
        finally:
            a.stop()
            b.stop()
        store = EventStore(engine)
        version = load_version(store)
        reward_ids, _ = store.applied_reward_ids(version)
        reference = head_arrays(rebuild_from_store(store, version, load_policy(base_path)))
        engine.dispose()
    assert len(reward_ids) == total and len(set(reward_ids.tolist())) == total
    final_a, final_b = heads[2], heads[3]
    for name in HEAD:
        assert rel(final_a[name], reference[name]) <= 1e-9, name
        assert rel(final_b[name], reference[name]) <= 1e-9, name
    # after the first round the two replicas already agreed with each other
    for name in HEAD:
        assert rel(heads[0][name], heads[1][name]) <= 1e-9, name
    assert float(final_a["count"].sum()) == float(load_policy(base_path).head.count_.sum()) + total


def load_version(store: EventStore) -> str:
    """The one model version the replicas served (``file-<sha>``)."""
    from sqlalchemy import select

    from eventstore.schema import rewards

    with store.engine.connect() as conn:
        versions = set(conn.execute(select(rewards.c.model_version).distinct()).scalars())
    assert len(versions) == 1, versions
    return str(versions.pop())


def test_order_dependent_heads_are_recognised() -> None:
    from bandit_core import make_policy
    from serving.replica_sync import order_dependent

    assert not order_dependent(make_policy("shared_linucb", dim_user=4, dim_arm=3))
    assert order_dependent(make_policy("shared_lints", dim_user=4, dim_arm=3, gamma=0.99))
    assert order_dependent(make_policy("linucb", dim_user=4, window=100))
    assert order_dependent(make_policy("uniform", dim_user=4))


def test_a_journaled_reward_stored_late_does_not_settle_a_smaller_id_still_committing(
    postgres_url: str, tmp_path: Path
) -> None:
    """Replica A drains its journal after an outage: a reward received minutes ago is
    stored with a new id. Replica B took it as settled at once (by its ``received_at``)
    and moved its floor past the smaller id of replica C's reward, whose transaction had
    not committed yet: B's head never learnt C's reward (PostgreSQL helper, stop 55). An
    id settles a horizon after B first read it, on B's own clock."""
    import asyncio
    from collections import Counter
    from datetime import UTC, datetime, timedelta

    from eventstore.records import judge_rewards
    from serving.models.recovery import recover
    from serving.replica_sync import ReplicaSync
    from serving.store.journal import drain_records
    from serving.store.repository import write_events
    from tests.serving_helpers import decision_row, reward_row

    rng = np.random.default_rng(3)
    base = policy_file(tmp_path / "base.npz", warm=20)
    horizon = 0.8
    with scratch_postgres_database(postgres_url, prefix="banditops_settle") as url:
        engine = make_engine(url)
        upgrade(engine)
        store = EventStore(engine)
        late, journaled = (decision_row(rng, model_version="v/1") for _ in range(2))
        with engine.begin() as conn:
            write_events(conn, [late, journaled])
        model = recover(store, "v/1", load_policy(base), "test")
        sync = ReplicaSync(store, "b", interval_s=0.1, horizon_s=horizon)
        with engine.connect() as conn_c:
            committing = conn_c.begin()  # replica C: its reward has taken the first id
            [taken] = write_events(conn_c, [reward_row(late.event_id, 1.0, model_version="v/1")])
            old = datetime.now(UTC) - timedelta(minutes=5)
            judged = judge_rewards(
                [reward_row(journaled.event_id, 0.0, ts=old, model_version="v/1")],
                Counter(),
                Counter(),
            )
            drained = drain_records(engine, judged)  # replica A's journal: a larger id
            assert drained.reward_ids == [("v/1", taken.id + 1, True)], drained
            assert asyncio.run(sync.sync([model])).applied == {"v/1": 1}
            committing.commit()  # C's commit lands a moment later
        learnt = 0
        for _ in range(4):  # each a quarter horizon and more apart: re-reads above the floor
            time.sleep(horizon / 2)
            learnt += asyncio.run(sync.sync([model])).applied["v/1"]
        assert learnt == 1 and model.applied_rewards == 2, (learnt, model.applied_rewards)
        engine.dispose()
