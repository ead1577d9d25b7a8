"""Gradual rollout: a stable share of users (by salted hash) goes to the candidate
version, every decision records who served it, and rewards update that version's head;
a running staged rollout's share reaches every replica at its next poll."""

from __future__ import annotations

import hashlib
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from bandit_core import load_policy
from eventstore.engine import make_engine
from eventstore.migrate import upgrade
from eventstore.rollouts import record_step, start_rollout
from serving.identity import CANDIDATE, PRODUCTION, hash_user, route
from tests.serving_helpers import (
    AUTH,
    decision_body,
    head_difference,
    policy_file,
    running_client,
    served_policy,
    service_settings,
)

pytest_plugins = ["tests.serving_fixtures"]


def test_split_is_within_one_point_over_20000_users() -> None:
    rng = np.random.default_rng(0)  # not used for identified users
    salt = b"rollout-test"
    for share in (0.05, 0.3):
        arms = [route(hash_user(f"user-{i}", salt), share, rng) for i in range(20_000)]
        observed = arms.count(CANDIDATE) / len(arms)
        assert abs(observed - share) < 0.01, (share, observed)
        again = [route(hash_user(f"user-{i}", salt), share, rng) for i in range(2_000)]
        assert again == arms[:2_000]  # stable per user


def test_split_depends_on_the_salt() -> None:
    rng = np.random.default_rng(0)
    a = [route(hash_user(f"user-{i}", b"salt-a"), 0.5, rng) for i in range(200)]
    b = [route(hash_user(f"user-{i}", b"salt-b"), 0.5, rng) for i in range(200)]
    assert a != b


def test_anonymous_requests_split_at_random_with_the_share() -> None:
    rng = np.random.default_rng(1)
    arms = [route(None, 0.2, rng) for _ in range(20_000)]
    assert abs(arms.count(CANDIDATE) / 20_000 - 0.2) < 0.01
    assert route(None, 0.0, rng) == PRODUCTION


def test_each_version_learns_from_its_own_decisions(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    prod = policy_file(tmp_path / "prod.npz", seed=0)
    cand = policy_file(tmp_path / "cand.npz", seed=1)
    settings = service_settings(
        tmp_path, model_path=prod, candidate_model_path=cand, candidate_share=0.5
    )
    expected = {PRODUCTION: load_policy(prod), CANDIDATE: load_policy(cand)}
    with running_client(settings) as client:
        info = client.get("/v1/model").json()
        versions = {
            PRODUCTION: info["production"]["version"],
            CANDIDATE: info["candidate"]["version"],
        }
        traffic_of: dict[str, str] = {}
        for i in range(40):
            user = f"user-{i % 10}"
            body = decision_body(rng, user=user)
            got = client.post("/v1/decisions", json=body).json()
            assert traffic_of.setdefault(user, got["traffic"]) == got["traffic"]  # stable
            assert got["model_version"] == versions[got["traffic"]]
            client.post("/v1/rewards", json={"event_id": got["event_id"], "reward": 1.0})
            arm = [c["id"] for c in body["candidates"]].index(got["arm_id"])
            expected[got["traffic"]].update(
                body["context"], got["arm_id"], 1.0, body["candidates"][arm]["features"]
            )
        assert set(traffic_of.values()) == {PRODUCTION, CANDIDATE}
        for role in (PRODUCTION, CANDIDATE):
            assert head_difference(served_policy(client, role), expected[role]) < 1e-12
        stored = client.app.state.service.store.find_decision(got["event_id"])
        assert stored.model_version == versions[got["traffic"]]

        # promote: the candidate's file becomes production; its online head carries over
        promoted = served_policy(client, CANDIDATE)
        shutil.copyfile(cand, prod)
        info = client.post("/v1/admin/poll").json()
        assert info["production"]["version"] == versions[CANDIDATE]
        assert served_policy(client, PRODUCTION) is promoted


def test_replicas_follow_the_rollout_stage_within_one_poll(tmp_path: Path) -> None:
    """Two service replicas on one event store: a rollout's start, stage change and
    rollback reach both at their next model poll, no restart; the split stays sticky by
    hashed user and is the same on both; the fixed share serves when no rollout runs."""
    prod = policy_file(tmp_path / "prod.npz", seed=0)
    cand = policy_file(tmp_path / "cand.npz", seed=1)
    store_url = f"sqlite:///{tmp_path / 'events.db'}"
    common = {
        "model_path": prod,
        "candidate_model_path": cand,
        "candidate_share": 0.0,
        "replica_sync_s": 1.0,  # replicas: without it the second would not start
    }
    replicas = [
        service_settings(tmp_path / name, store_url, workspace=tmp_path / name, **common)
        for name in ("a", "b")
    ]
    cand_version = "file-" + hashlib.sha256(cand.read_bytes()).hexdigest()[:12]
    users = [f"user-{i}" for i in range(200)]
    engine = make_engine(store_url)
    upgrade(engine)
    with running_client(replicas[0]) as a, running_client(replicas[1]) as b:

        def served() -> list[tuple[float, str | None]]:
            out = []
            for client in (a, b):
                info = client.post("/v1/admin/poll", headers=AUTH).json()
                out.append((info["candidate_share"], (info["candidate"] or {}).get("version")))
            return out

        def arms(client: Any) -> list[str]:
            rng = np.random.default_rng(0)
            return [
                client.post("/v1/decisions", json=decision_body(rng, user=u)).json()["traffic"]
                for u in users
            ]

        assert served() == [(0.0, None), (0.0, None)]
        rollout = start_rollout(engine, "banditops-policy", cand_version, 0.05, reason="test")
        assert served() == [(0.05, cand_version)] * 2
        first = arms(a)
        assert first == arms(b)  # the same users on the candidate on every replica
        record_step(engine, rollout.id, "advance", reason="test", stage_index=1, share=0.5)
        assert served() == [(0.5, cand_version)] * 2
        second = arms(b)
        assert second == arms(a)
        # sticky: a user on the candidate at 5 % stays there at 50 %
        assert all(s == CANDIDATE for f, s in zip(first, second, strict=True) if f == CANDIDATE)
        assert first.count(CANDIDATE) < second.count(CANDIDATE)
        record_step(engine, rollout.id, "rollback", reason="test")
        assert served() == [(0.0, None), (0.0, None)]
        assert set(arms(a)) == {PRODUCTION}
        # a rollout of a version the candidate role does not serve sends it nothing
        start_rollout(engine, "banditops-policy", "file-000000000000", 0.5, reason="test")
        assert served() == [(0.0, None), (0.0, None)]
    engine.dispose()


def test_background_poll_picks_up_the_share(tmp_path: Path) -> None:
    """The loader's own thread (no admin call) applies a stage change within a poll."""
    prod = policy_file(tmp_path / "prod.npz", seed=0)
    cand = policy_file(tmp_path / "cand.npz", seed=1)
    settings = service_settings(
        tmp_path, model_path=prod, candidate_model_path=cand, poll_interval_s=0.2
    )
    cand_version = "file-" + hashlib.sha256(cand.read_bytes()).hexdigest()[:12]
    with running_client(settings) as client:
        engine = make_engine(settings.store_url)
        start_rollout(engine, settings.model_name, cand_version, 0.2, reason="test")
        engine.dispose()
        deadline = time.monotonic() + 20.0
        while client.get("/v1/model").json()["candidate_share"] != 0.2:
            assert time.monotonic() < deadline, "the stage change never reached the replica"
            time.sleep(0.05)


def test_a_rollout_past_its_end_splits_no_users_without_a_controller_step(
    tmp_path: Path,
) -> None:
    """A paused controller (``bandit_rollout`` paused in Airflow's UI) recorded no expiry,
    and the replicas went on splitting the users for as long as it stayed paused: past
    the end fixed at the rollout's start, production serves everyone at the next poll."""
    prod = policy_file(tmp_path / "prod.npz", seed=0)
    cand = policy_file(tmp_path / "cand.npz", seed=1)
    settings = service_settings(tmp_path, model_path=prod, candidate_model_path=cand)
    cand_version = "file-" + hashlib.sha256(cand.read_bytes()).hexdigest()[:12]
    engine = make_engine(settings.store_url)
    upgrade(engine)
    now = datetime.now(UTC)
    with running_client(settings) as client:

        def share() -> float:
            return float(client.post("/v1/admin/poll", headers=AUTH).json()["candidate_share"])

        ended = start_rollout(
            engine, settings.model_name, cand_version, 0.5, reason="test",
            at=now - timedelta(days=8), max_duration_s=7 * 86_400.0,
        )  # fmt: skip
        assert ended.running and ended.ends_by == now - timedelta(days=1)
        assert share() == 0.0
        rng = np.random.default_rng(0)
        answers = [
            client.post("/v1/decisions", json=decision_body(rng, user=f"u{i}")) for i in range(40)
        ]
        assert {a.json()["traffic"] for a in answers} == {PRODUCTION}
        # the same rollout within its time splits the users
        record_step(engine, ended.id, "stop", reason="test")
        start_rollout(
            engine, settings.model_name, cand_version, 0.5, reason="test",
            at=now - timedelta(days=6), max_duration_s=7 * 86_400.0,
        )  # fmt: skip
        assert share() == 0.5
    engine.dispose()


def test_a_stopped_rollout_s_version_gets_nothing_from_the_fixed_share(tmp_path: Path) -> None:
    """With ``candidate_share`` > 0, stopping a rollout at 5 % sent 30 % of the users to
    the stopped version: the stop leaves ``@staging``, and with no rollout running the
    fixed share served it again (audit, stop 54). A version whose rollout ended
    unpromoted gets nothing from it; another version in the candidate role does."""
    prod = policy_file(tmp_path / "prod.npz", seed=0)
    cand = policy_file(tmp_path / "cand.npz", seed=1)
    settings = service_settings(
        tmp_path, model_path=prod, candidate_model_path=cand, candidate_share=0.3
    )
    cand_version = "file-" + hashlib.sha256(cand.read_bytes()).hexdigest()[:12]
    engine = make_engine(settings.store_url)
    upgrade(engine)
    with running_client(settings) as client:

        def served() -> tuple[float, str | None]:
            info = client.post("/v1/admin/poll", headers=AUTH).json()
            return info["candidate_share"], (info["candidate"] or {}).get("version")

        assert served() == (0.3, cand_version)  # no rollout ever ran: the fixed share
        other = start_rollout(engine, settings.model_name, "file-000000000000", 0.5, reason="t")
        record_step(engine, other.id, "stop", reason="another version's rollout")
        assert served() == (0.3, cand_version)
        for ending in ("stop", "rollback", "expire"):
            rollout = start_rollout(engine, settings.model_name, cand_version, 0.05, reason="t")
            assert served() == (0.05, cand_version)
            record_step(engine, rollout.id, ending, reason="test")
            assert served() == (0.0, None), ending
        rng = np.random.default_rng(0)
        answers = [
            client.post("/v1/decisions", json=decision_body(rng, user=f"u{i}")) for i in range(60)
        ]
        assert {a.json()["traffic"] for a in answers} == {PRODUCTION}
        promoted = start_rollout(engine, settings.model_name, cand_version, 0.05, reason="t")
        record_step(engine, promoted.id, "promote", reason="test")
        assert served() == (0.3, cand_version)
    engine.dispose()


def test_a_candidate_with_other_dimensions_than_production_takes_no_traffic(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """The candidate must take the requests production takes: one with other widths was
    loaded (it was compared only with the candidate it replaced) and answered 422 to
    about half the requests."""
    from tests.serving_helpers import DIM_ARM, DIM_USER

    prod = policy_file(tmp_path / "prod.npz", seed=0)
    cand = policy_file(tmp_path / "cand.npz", warm=0, dim_user=DIM_USER + 5, dim_arm=DIM_ARM)
    settings = service_settings(
        tmp_path, model_path=prod, candidate_model_path=cand, candidate_share=0.5
    )
    with running_client(settings) as client:
        info = client.get("/v1/model").json()
        assert info["candidate"] is None
        assert f"dim_user={DIM_USER + 5}" in info["last_load_error"]
        answers = [client.post("/v1/decisions", json=decision_body(rng)) for _ in range(20)]
        assert {a.status_code for a in answers} == {200}
        assert {a.json()["traffic"] for a in answers} == {PRODUCTION}
