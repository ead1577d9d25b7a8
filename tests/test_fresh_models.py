"""Fresh models (issue 19): the registered version has learnt its whole window, and a swap
loses nothing production learnt online since the extraction.

End to end with real components: the decision service (in-process, SQLite event store),
two nightly retrains through :func:`training.pipeline.run_retrain`, an MLflow registry in
a temp dir, and the service's own loader swapping the promoted version in. The reference
head is rebuilt independently: a fresh policy rebuilt from the window's replay rows, then
the rewards the store holds past the extraction, in id order.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bandit_core import load_policy
from bandit_core.envs import LogisticClickEnvironment
from bandit_core.head_statistics import LinearHeadPolicy
from bandit_core.policies.position import update_batch_at
from eventstore.contract import POLICY_STATE_PATH, WINDOW_STOP_TAG, version_label
from eventstore.engine import make_engine
from eventstore.migrate import upgrade
from modelregistry.registry import ModelRegistry
from serving.app import create_app
from serving.settings import Settings
from serving.traffic import simulate_traffic
from tests.serving_helpers import TEST_TOKEN, make_client
from training.pipeline import run_retrain
from training.replay import load_replay
from training.settings import PipelineSettings

pytestmark = [
    pytest.mark.filterwarnings(
        "ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning"
    ),
]

ALGORITHM = "shared_linucb"
OPTIONS = {"alpha": 0.5, "interactions": True}


def _env() -> LogisticClickEnvironment:
    return LogisticClickEnvironment.make(
        np.random.default_rng(7), n_items=12, dim_user=4, dim_arm=3, n_candidates=6
    )


def _head(policy: Any) -> Any:
    while not isinstance(policy, LinearHeadPolicy):
        policy = policy.inner
    return policy.head


def _retrain(settings: PipelineSettings, run_key: str, end: datetime) -> Any:
    params = {
        "window_days": 1.0 / 24.0,
        "algorithm": ALGORITHM,
        "policy_options": OPTIONS,
        "min_rows": 200,
        "n_resamples": 50,
        "min_ess": 10.0,
        "auto_promote": False,
    }
    return run_retrain(params, run_key=run_key, interval_end=end, settings=settings)


def _settle(service: Any, label: str) -> None:
    """Wait until the served head of ``label`` (loaded from its base) has learnt every
    reward the store says it learns (the writer commits, then the loop applies)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        served = service.loader.current.for_version(label)
        if served is not None and served.applied_rewards == len(
            service.store.applied_rewards(label, since=served.window_stop)
        ):
            return
        time.sleep(0.05)
    raise TimeoutError(f"the head of {label} did not catch up with the store")


def test_registered_head_learns_the_window_and_a_swap_replays_the_rest(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path}/events.db"
    common = {"workspace": tmp_path / "ws", "database_url": store_url}
    tracking = {"mlflow_tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}
    serving = Settings(**common, **tracking, poll_interval_s=3600.0, seed=11, api_token=TEST_TOKEN)  # type: ignore[arg-type]
    pipeline = PipelineSettings(
        **common, **tracking, runs_dir=tmp_path / "runs", reward_window_s=1.0
    )  # type: ignore[arg-type]
    engine = make_engine(store_url)
    upgrade(engine)
    engine.dispose()
    registry = ModelRegistry.from_settings(pipeline)
    env, rng = _env(), np.random.default_rng(1)
    users = np.stack([env.sample(rng)[0] for _ in range(100)])

    with make_client(create_app(serving)) as client:
        service = client.app.state.service
        # day 1: the fallback logs; the first retrain's version is promoted and swapped in
        assert simulate_traffic(client, env, 400, rng, user_features=users).errors == 0
        time.sleep(1.2)  # every reward window closed
        first = _retrain(pipeline, "nightly-1", datetime.now(UTC))
        registry.promote(first.version, by="test", reason="day 1", force=True)
        client.post("/v1/admin/poll")
        v1 = version_label(pipeline.model_name, first.version)
        assert service.loader.current.production.version == v1

        # day 2: version 1 learns online; the second retrain extracts its window
        assert simulate_traffic(client, env, 300, rng, user_features=users).errors == 0
        _settle(service, v1)
        time.sleep(1.2)
        second = _retrain(pipeline, "nightly-2", datetime.now(UTC))
        extracted_up_to = max(service.store.applied_reward_ids(v1)[0])

        # after the extraction version 1 keeps learning online; then version 2 is swapped in
        assert simulate_traffic(client, env, 150, rng, user_features=users).errors == 0
        _settle(service, v1)
        registry.promote(second.version, by="test", reason="day 2", force=True)
        client.post("/v1/admin/poll")
        v2 = version_label(pipeline.model_name, second.version)
        served = service.loader.current.production
        assert served.version == v2
        online = service.store.applied_rewards(v1, after_id=int(extracted_up_to))

    # the registered head learnt every row of its window; the report says which rows
    # trained what
    info = registry.get(second.version)
    window = load_replay(second.manifest["path"])
    n = window.n_rows
    assert (
        info.tags["window_rows"] == info.tags["head_rows"] == str(n) == str(second.manifest["rows"])
    )
    eval_rows = int(info.tags["eval_rows"])
    assert int(info.tags["train_rows"]) + eval_rows == n and 0 < eval_rows < n // 2
    assert info.metrics["head_rows"] == info.metrics["window_rows"] == n
    assert second.metrics["head_rows"] == n  # the run's report (outcome.json)
    assert info.tags[WINDOW_STOP_TAG] == second.manifest["stop"]
    registered = load_policy(
        registry.download_version(second.version, tmp_path / "v2") / POLICY_STATE_PATH
    )
    assert float(_head(registered).count_.sum()) == n

    # the swapped-in head = a rebuild from the window + the rewards learnt online after
    # the extraction, each exactly once
    assert len(online) == 150
    # the registered policy as trained (its options, the retrain's default floors
    # included), its head rebuilt from scratch on the window
    reference: Any = load_policy(
        registry.download_version(second.version, tmp_path / "v2-reference") / POLICY_STATE_PATH
    )
    reference.rebuild(window.contexts, window.arm_ids, window.rewards, window.arm_features)
    update_batch_at(
        reference,
        online.contexts,
        online.arm_ids,
        online.values,
        online.arm_features,
        online.positions,
    )
    got, want = _head(served.policy), _head(reference)
    assert float(got.count_.sum()) == n + len(online)
    assert served.applied_rewards == len(online)
    for name in ("count_", "xty_", "theta_", "yty_"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-9, atol=1e-9)
    ours = served.policy.to_state().arrays
    for key, value in reference.to_state().arrays.items():
        if value.dtype.kind in "fc":
            np.testing.assert_allclose(ours[key], value, rtol=1e-9, atol=1e-9, err_msg=key)
        else:
            np.testing.assert_array_equal(ours[key], value, err_msg=key)


def test_window_rule_recovery_and_replica_sync_learn_each_later_reward_once(
    tmp_path: Path,
) -> None:
    """Store level: a version whose window stops at ``stop`` recovers every applied reward
    of a decision made from ``stop`` on (by any version or the fallback), none before; the
    replica sync then brings it a later one once, and nothing the second time."""
    from serving.models.recovery import rebuild_from_store, recover
    from serving.replica_sync import ReplicaSync
    from serving.store.repository import EventStore, write_events
    from tests.serving_helpers import decision_row, head_difference, policy_file, reward_row

    engine = make_engine(f"sqlite:///{tmp_path}/events.db")
    upgrade(engine)
    store = EventStore(engine)
    rng = np.random.default_rng(3)
    stop = datetime.now(UTC) - timedelta(minutes=10)

    def log(created_at: datetime, version: str | None, value: float) -> None:
        decision = decision_row(rng, created_at=created_at, model_version=version)
        with engine.begin() as conn:
            write_events(conn, [decision, reward_row(decision.event_id, value, None, version)])

    for i in range(5):  # in the window: learnt by the retrain, never replayed
        log(stop - timedelta(seconds=5 - i), "old/1", 1.0)
    for i in range(6):  # after it: production and the fallback learn online
        log(stop + timedelta(seconds=i), "old/1" if i % 3 else None, float(i % 2))
    base_path = policy_file(tmp_path / "base.npz", warm=20)
    model = recover(store, "new/2", load_policy(base_path), "test", window_stop=stop)
    assert model.applied_rewards == 6 and model.window_stop == stop
    assert len(store.applied_rewards("new/2", since=stop)) == 6
    assert len(store.applied_rewards("new/2")) == 0  # its own decisions: none yet

    log(datetime.now(UTC), "old/1", 1.0)  # production learns one more after the load
    sync = ReplicaSync(store, "r1", interval_s=1.0, horizon_s=60.0)
    assert asyncio.run(sync.sync([model])).applied == {"new/2": 1}
    assert asyncio.run(sync.sync([model])).applied == {"new/2": 0}
    reference = rebuild_from_store(store, "new/2", load_policy(base_path), window_stop=stop)
    assert head_difference(model.policy, reference) < 1e-9
    assert (
        float(_head(model.policy).count_.sum())
        == float(_head(load_policy(base_path)).count_.sum()) + 7
    )
    engine.dispose()


def test_a_rollout_candidate_promoted_has_learnt_productions_rollout_rewards(
    tmp_path: Path,
) -> None:
    """A staged rollout on one replica (no replica sync): production and the candidate
    both serve, and each head learns every reward of a decision after its own window,
    whichever version decided, exactly once: the live heads equal the store's rebuild.
    The candidate promoted at the end of the rollout has lost none of production's
    rollout rewards, and a recovery from its snapshot gives the same head."""
    from eventstore.rollouts import record_step, start_rollout
    from serving.models.recovery import rebuild_from_store, recover
    from tests.serving_helpers import head_difference

    store_url = f"sqlite:///{tmp_path}/events.db"
    common = {"workspace": tmp_path / "ws", "database_url": store_url}
    tracking = {"mlflow_tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}
    serving = Settings(  # type: ignore[arg-type]
        **common,
        **tracking,
        poll_interval_s=3600.0,
        seed=12,
        api_token=TEST_TOKEN,
        snapshot_every_rewards=40,
    )
    pipeline = PipelineSettings(  # type: ignore[arg-type]
        **common, **tracking, runs_dir=tmp_path / "runs", reward_window_s=1.0
    )
    engine = make_engine(store_url)
    upgrade(engine)
    registry = ModelRegistry.from_settings(pipeline)
    env, rng = _env(), np.random.default_rng(2)
    users = np.stack([env.sample(rng)[0] for _ in range(100)])
    downloads = iter(range(100))

    def base_of(number: str) -> Any:
        target = tmp_path / f"base-{next(downloads)}"
        return load_policy(registry.download_version(number, target) / POLICY_STATE_PATH)

    def rebuilt(label: str, number: str) -> Any:
        stop = datetime.fromisoformat(registry.get(number).tags[WINDOW_STOP_TAG])
        return rebuild_from_store(service.store, label, base_of(number), window_stop=stop)

    with make_client(create_app(serving)) as client:
        service = client.app.state.service
        assert simulate_traffic(client, env, 400, rng, user_features=users).errors == 0
        time.sleep(1.2)
        first = _retrain(pipeline, "nightly-1", datetime.now(UTC))
        registry.promote(first.version, by="test", reason="day 1", force=True)
        client.post("/v1/admin/poll")
        v1 = version_label(pipeline.model_name, first.version)
        assert simulate_traffic(client, env, 300, rng, user_features=users).errors == 0
        _settle(service, v1)
        time.sleep(1.2)
        second = _retrain(pipeline, "nightly-2", datetime.now(UTC))
        v2 = version_label(pipeline.model_name, second.version)
        registry.set_alias(pipeline.candidate_alias, second.version, by="test", reason="stage")
        rollout = start_rollout(
            engine, pipeline.model_name, second.version, 0.5, reason="test rollout"
        )
        client.post("/v1/admin/poll")
        served = service.loader.current
        assert served.production.version == v1 and served.candidate.version == v2

        # the rollout: each version decides for about half of the users
        assert simulate_traffic(client, env, 300, rng, user_features=users).errors == 0
        _settle(service, v1)
        _settle(service, v2)
        by_version = {label: len(service.store.applied_rewards(label)) for label in (v1, v2)}
        assert min(by_version.values()) > 50, by_version  # both arms were rewarded
        for label, number in ((v1, first.version), (v2, second.version)):
            live = service.loader.current.for_version(label)
            assert head_difference(live.policy, rebuilt(label, number)) < 1e-9, label
        candidate = service.loader.current.candidate
        rollout_rewards_of_v1 = [
            i for i in service.store.applied_rewards(v1).ids if i > candidate.replayed_after
        ]
        assert rollout_rewards_of_v1  # ... which the candidate learnt too

        # promotion at the end of the rollout: the candidate's head carries over
        registry.promote(second.version, by="test", reason="rollout passed", force=True)
        record_step(engine, rollout.id, "promote", reason="test")
        client.post("/v1/admin/poll")
        promoted = service.loader.current.production
        assert promoted is candidate and promoted.version == v2
        assert simulate_traffic(client, env, 100, rng, user_features=users).errors == 0
        _settle(service, v2)
        assert head_difference(promoted.policy, rebuilt(v2, second.version)) < 1e-9
        time.sleep(0.5)  # the last snapshot's write
        snapshot = service.store.latest_snapshot(v2)
        # a restart: the newest snapshot (taken every 40 rewards) + the rewards after it
        assert snapshot is not None and snapshot.last_reward_id > candidate.replayed_after
        restarted = recover(
            service.store, v2, base_of(second.version), "test", window_stop=promoted.window_stop
        )
        assert head_difference(restarted.policy, promoted.policy) < 1e-9
    engine.dispose()


@pytest.mark.parametrize("auto_promote", [True, False])
def test_a_run_for_an_earlier_interval_never_replaces_a_fresher_production(
    tmp_path: Path, auto_promote: bool
) -> None:
    """A backfill (a run triggered with an old logical date) after tonight's run: its
    model, trained on a window that stops earlier, passed the gate against the fresher
    production, moved @staging and was auto-promoted over it (without auto_promote,
    tonight's version waits on @staging for its rollout, and the backfill took the alias
    from it). The gate now compares where the windows stop, and says why it refuses."""
    from serving.store.repository import write_events
    from tests.serving_helpers import decision_row, reward_row

    store_url = f"sqlite:///{tmp_path}/events.db"
    settings = PipelineSettings(
        workspace=tmp_path / "ws",
        database_url=store_url,
        mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        runs_dir=tmp_path / "runs",
        reward_window_s=60.0,
        # a gate any model passes, configured (auto_promote needs the configured gate)
        retrain_min_ess=0.0,
        retrain_tolerance=0.9,
        retrain_auto_promote=True,  # the form turns it off in one case (never on)
    )  # type: ignore[arg-type]
    engine = make_engine(store_url)
    upgrade(engine)
    end = datetime(2026, 12, 6, 2, 0, tzinfo=UTC)
    rng = np.random.default_rng(3)
    rows = [
        decision_row(rng, created_at=end - timedelta(hours=4) + timedelta(seconds=9 * i))
        for i in range(1500)
    ]
    with engine.begin() as conn:
        write_events(conn, rows)
        write_events(
            conn,
            [reward_row(r.event_id, float(rng.random() < 0.3), ts=r.created_at) for r in rows],
        )
    engine.dispose()
    params = {
        "window_days": 4.0 / 24.0,
        "algorithm": "shared_linucb",
        "min_rows": 100,
        "n_resamples": 50,
        "auto_promote": auto_promote,
    }
    tonight = run_retrain(params, run_key="nightly", interval_end=end, settings=settings)
    registry = ModelRegistry.from_settings(settings)
    production = registry.by_alias("production")
    assert tonight.gate_passed and tonight.promoted == auto_promote
    assert (production is not None and production.version == tonight.version) == auto_promote
    backfill = run_retrain(
        {**params, "window_days": 2.0 / 24.0},
        run_key="backfill",
        interval_end=end - timedelta(hours=2),
        settings=settings,
    )
    assert not backfill.gate_passed and not backfill.promoted
    stale = [r for r in backfill.reasons if "(a backfill) never replaces" in r]
    assert len(stale) == 1 and f"before version {tonight.version}'s" in stale[0]
    now = registry.by_alias("production")
    assert (now and now.version) == (production and production.version)
    staging = registry.by_alias(settings.candidate_alias)
    assert staging is not None and staging.version == tonight.version
    assert registry.get(backfill.version).tags["gate_passed"] == "false"
    if not auto_promote:
        return
    # the same window again (a re-run of tonight's interval) is not stale
    again = run_retrain(params, run_key="nightly-again", interval_end=end, settings=settings)
    assert not any("never replaces" in r for r in again.reasons)
    assert any(
        r.startswith("the candidate's window stops at") and "not before version" in r
        for r in again.reasons
    )
    # its run re-run after a rollback: it said "promoted" although production had moved on
    assert again.promoted and registry.by_alias("production").version == again.version
    registry.rollback(by="ann", reason="CTR dropped")
    rerun = run_retrain(params, run_key="nightly-again", interval_end=end, settings=settings)
    assert rerun.version == again.version and not rerun.promoted
    assert registry.by_alias("production").version == tonight.version
