"""A snapshot copies a head's state in a worker thread behind the head gate
(:class:`serving.snapshots.HeadGate`): the loop keeps deciding meanwhile, rewards that
arrive are learnt after the copy, in order, and the snapshot covers exactly the rewards up
to its ``last_reward_id``. A large state is written in parts, and events never wait
behind a whole snapshot."""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from eventstore.engine import make_engine
from eventstore.scratch import scratch_postgres_database
from tests.serving_helpers import (
    DIM_USER,
    head_difference,
    policy_file,
    running_client,
    served_policy,
    service_settings,
)

pytest_plugins = ["tests.serving_fixtures"]


def _decide_and_reward(client: Any, rng: np.random.Generator, reward: float) -> Any:
    body = {
        "context": rng.standard_normal(DIM_USER).tolist(),
        "candidates": [{"id": f"item-{i}"} for i in range(4)],
    }
    event = client.post("/v1/decisions", json=body).json()["event_id"]
    return client.post("/v1/rewards", json={"event_id": event, "reward": reward})


def test_the_loop_decides_while_a_snapshot_copies_and_rewards_wait_for_it(
    tmp_path: Path,
) -> None:
    model = policy_file(tmp_path / "linucb.npz", name="linucb")
    settings = service_settings(tmp_path, model_path=model, snapshot_every_rewards=1)
    rng = np.random.default_rng(5)
    copying, release = threading.Event(), threading.Event()
    with running_client(settings) as client:
        policy = served_policy(client)
        own_to_state = policy.to_state

        def held_to_state() -> Any:  # the snapshot's copy, held open by the test
            copying.set()
            assert release.wait(30)
            return own_to_state()

        policy.to_state = held_to_state
        first = _decide_and_reward(client, rng, 1.0)  # its snapshot starts copying
        assert first.json()["applied"] is True
        assert copying.wait(30)
        count = float(policy.head.count_.sum())
        # the loop answers decisions while the copy runs
        body = {"context": [0.1] * DIM_USER, "candidates": [{"id": "item-1"}, {"id": "x"}]}
        assert client.post("/v1/decisions", json=body).status_code == 200
        answers: list[Any] = []
        late = threading.Thread(target=lambda: answers.append(_decide_and_reward(client, rng, 0.5)))
        late.start()
        late.join(1.0)
        # the reward is stored but waits: the head is as the copy sees it
        assert late.is_alive() and not answers
        assert float(policy.head.count_.sum()) == count
        release.set()
        late.join(30)
        assert answers[0].status_code == 200 and answers[0].json()["applied"] is True
        assert float(policy.head.count_.sum()) == count + 1
        assert client.post("/v1/admin/snapshot").status_code == 200
        del policy.to_state
        live = copy.deepcopy(policy)
    engine = make_engine(settings.store_url)
    try:
        with engine.begin() as conn:
            covered = {
                r[0] for r in conn.execute(sa.text("SELECT last_reward_id FROM head_snapshots"))
            }
            rewards = [r[0] for r in conn.execute(sa.text("SELECT id FROM rewards ORDER BY id"))]
            # the first snapshot covers the first reward only; drop the newer ones so the
            # restart recovers from it and replays the reward learnt after the copy
            conn.execute(
                sa.text("DELETE FROM head_snapshots WHERE last_reward_id > :r"), {"r": rewards[0]}
            )
    finally:
        engine.dispose()
    # (snapshots commit in the order their serialisation ends, not their copies')
    assert rewards[0] in covered and len(rewards) == 2
    with running_client(settings) as client:
        assert head_difference(live, served_policy(client)) <= 1e-9


def test_a_large_snapshot_is_written_in_parts_and_recovered_whole(
    tmp_path: Path, store_url: str
) -> None:
    model = policy_file(tmp_path / "linucb.npz", name="linucb")
    settings = service_settings(tmp_path, store_url, model_path=model, snapshot_part_bytes=1024)
    rng = np.random.default_rng(11)
    with running_client(settings) as client:
        for reward in (1.0, 0.0, 0.5, 1.0):
            assert _decide_and_reward(client, rng, reward).json()["applied"] is True
        [snapshot_id] = client.post("/v1/admin/snapshot").json()["snapshot_ids"]
        live = copy.deepcopy(served_policy(client))
    engine = make_engine(settings.store_url)
    try:
        with engine.connect() as conn:
            key, last, tail = conn.execute(
                sa.text(
                    "SELECT parts_key, last_reward_id, length(state) FROM head_snapshots "
                    "WHERE id = :i"
                ),
                {"i": snapshot_id},
            ).one()
            sizes = (
                conn.execute(
                    sa.text("SELECT length(data) FROM head_snapshot_parts WHERE parts_key = :k"),
                    {"k": key},
                )
                .scalars()
                .all()
            )
    finally:
        engine.dispose()
    assert key is not None and len(sizes) >= 2
    assert set(sizes) == {1024} and 0 < tail <= 1024
    with running_client(settings) as client:
        served = client.app.state.service.loader.current.production
        # started from the snapshot (a snapshot that cannot be read starts from 0)
        assert served.replayed_after == last and len(served.replayed_ids) == 0
        assert head_difference(live, served.policy) == 0.0


@pytest.mark.postgres
def test_on_postgresql_decisions_and_rewards_never_wait_behind_a_snapshot(
    tmp_path: Path, postgres_url: str
) -> None:
    """A snapshot commits on a writer of its own: held up in the database (here by a lock
    on its table), it holds up no decision or reward. It probes an unreachable database
    as often as the events' writer (``store_probe_s``; it was always 1 s)."""
    model = policy_file(tmp_path / "linucb.npz", name="linucb")
    rng = np.random.default_rng(12)
    with scratch_postgres_database(postgres_url, prefix="banditops_snap") as url:
        settings = service_settings(tmp_path, url, model_path=model, store_probe_s=0.25)
        blocker = make_engine(url)
        try:
            with running_client(settings) as client:
                service = client.app.state.service
                assert service._snapshot_writer.probe_s == service.writer.probe_s == 0.25
                assert _decide_and_reward(client, rng, 1.0).status_code == 200
                with blocker.connect() as conn, conn.begin():
                    conn.execute(sa.text("LOCK TABLE head_snapshots IN ACCESS EXCLUSIVE MODE"))
                    snapshots: list[Any] = []
                    held = threading.Thread(
                        target=lambda: snapshots.append(client.post("/v1/admin/snapshot"))
                    )
                    held.start()
                    answers: list[Any] = []
                    traffic = threading.Thread(
                        target=lambda: answers.extend(
                            _decide_and_reward(client, rng, 0.5) for _ in range(3)
                        )
                    )
                    traffic.start()
                    traffic.join(20)
                    assert not traffic.is_alive(), "a request waited behind the snapshot"
                    assert [a.json()["applied"] for a in answers] == [True] * 3
                    assert held.is_alive() and not snapshots  # the snapshot still waits
                held.join(30)
                assert snapshots[0].status_code == 200
                assert len(snapshots[0].json()["snapshot_ids"]) == 1
        finally:
            blocker.dispose()


def test_a_version_keeps_its_newest_snapshots_and_none_of_the_parts_of_the_others(
    tmp_path: Path, store_url: str
) -> None:
    model = policy_file(tmp_path / "linucb.npz", name="linucb")
    settings = service_settings(
        tmp_path, store_url, model_path=model, snapshot_part_bytes=1024, snapshot_keep=2
    )
    rng = np.random.default_rng(13)
    with running_client(settings) as client:
        written = []
        for reward in (1.0, 0.0, 0.5, 1.0, 0.25):
            assert _decide_and_reward(client, rng, reward).json()["applied"] is True
            written += client.post("/v1/admin/snapshot").json()["snapshot_ids"]
        live = copy.deepcopy(served_policy(client))
    engine = make_engine(settings.store_url)
    try:
        with engine.connect() as conn:
            kept = conn.execute(
                sa.text("SELECT id, parts_key FROM head_snapshots ORDER BY id")
            ).all()
            part_keys = conn.execute(sa.text("SELECT parts_key FROM head_snapshot_parts")).all()
    finally:
        engine.dispose()
    assert len(written) == 5 and [row.id for row in kept] == written[-2:]
    # the parts left are those of the two kept snapshots, all of them
    assert {k for (k,) in part_keys} == {row.parts_key for row in kept}
    assert len(part_keys) % 2 == 0 and len(part_keys) >= 4
    with running_client(settings) as client:
        served = client.app.state.service.loader.current.production
        assert len(served.replayed_ids) == 0
        assert head_difference(live, served.policy) == 0.0


def _refuse_snapshot_rows(url: str) -> None:
    """A trigger that fails every INSERT into ``head_snapshots`` (the store refusing a
    snapshot's row after its parts were written: a full disk, a constraint)."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "sqlite":
                conn.execute(
                    sa.text(
                        "CREATE TRIGGER refuse_snapshots BEFORE INSERT ON head_snapshots "
                        "BEGIN SELECT RAISE(ABORT, 'no room for a snapshot'); END"
                    )
                )
                return
            conn.execute(
                sa.text(
                    "CREATE FUNCTION refuse_snapshots() RETURNS trigger AS $$ BEGIN "
                    "RAISE EXCEPTION 'no room for a snapshot'; END $$ LANGUAGE plpgsql"
                )
            )
            conn.execute(
                sa.text(
                    "CREATE TRIGGER refuse_snapshots BEFORE INSERT ON head_snapshots "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_snapshots()"
                )
            )
    finally:
        engine.dispose()


def test_a_snapshot_whose_row_the_store_refuses_leaves_none_of_its_parts(
    tmp_path: Path, store_url: str
) -> None:
    """The parts of a snapshot are committed before its row; when the row fails, the
    parts are deleted. Before, each failed attempt left its parts (of a whole head) in
    the store until retention's horizon, on a disk that was often full already."""
    model = policy_file(tmp_path / "linucb.npz", name="linucb")
    settings = service_settings(tmp_path, store_url, model_path=model, snapshot_part_bytes=1024)
    rng = np.random.default_rng(17)
    with running_client(settings) as client:
        _refuse_snapshot_rows(settings.store_url)
        for attempt in range(3):
            assert _decide_and_reward(client, rng, 1.0).json()["applied"] is True
            refused = client.post("/v1/admin/snapshot")
            assert refused.status_code == 503, (attempt, refused.text)
            assert "refused" in refused.json()["detail"]
        assert _decide_and_reward(client, rng, 0.0).status_code == 200  # events still go in
    engine = make_engine(settings.store_url)
    try:
        with engine.connect() as conn:
            parts = conn.execute(sa.text("SELECT count(*) FROM head_snapshot_parts")).scalar()
            snapshots = conn.execute(sa.text("SELECT count(*) FROM head_snapshots")).scalar()
    finally:
        engine.dispose()
    assert (parts, snapshots) == (0, 0)
