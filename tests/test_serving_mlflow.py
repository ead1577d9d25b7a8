"""The MLflow registry source against a real registry (SQLite tracking store in a temp
dir): the test logs versions with the layout of ``eventstore.contract`` and moves the
``production`` alias; the service follows, falls back without one, and keeps serving when
a version cannot be loaded."""

from __future__ import annotations

import hashlib
import shutil
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from bandit_core import load_policy
from eventstore.contract import POLICY_STATE_ARTIFACT, POLICY_STATE_FILE, version_label
from eventstore.engine import make_engine
from eventstore.schema import head_snapshots
from serving.models.recovery import rebuild_from_store
from serving.store.repository import EventStore
from tests.serving_helpers import decision_body, policy_file, running_client, service_settings

pytest_plugins = ["tests.serving_fixtures"]

NAME = "banditops-policy"

MODEL_CODE = '''
import mlflow


class PolicyStateModel(mlflow.pyfunc.PythonModel):
    """Carries the policy state as an artifact; serving reads only that file."""

    def predict(self, context, model_input: list[str], params=None) -> list[str]:
        return model_input


mlflow.models.set_model(PolicyStateModel())
'''


class Registry:
    """A throwaway MLflow tracking + registry store."""

    def __init__(self, root: Path) -> None:
        import mlflow
        from mlflow import MlflowClient

        self.root = root
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment = self.client.create_experiment(
            "banditops-test", artifact_location=(root / "artifacts").as_uri()
        )
        self.code = root / "model_code.py"
        self.code.write_text(textwrap.dedent(MODEL_CODE))
        self._mlflow = mlflow

    def log_version(self, state: Path | None, seed: int) -> str:
        """Log and register a version whose artifacts hold ``state`` (or nothing)."""
        from modelregistry.registry import fluent_uris

        mlflow = self._mlflow
        staged = self.root / f"stage-{seed}"
        staged.mkdir()
        artifacts = {}
        if state is not None:
            artifacts[POLICY_STATE_ARTIFACT] = str(shutil.copy(state, staged / POLICY_STATE_FILE))
        else:
            (staged / "readme.txt").write_text("no policy state")
            artifacts["other"] = str(staged / "readme.txt")
        # MLflow's fluent URIs are process-global (and exported to the environment):
        # scoped, so that later tests do not inherit this registry
        with fluent_uris(self.uri), mlflow.start_run(experiment_id=self.experiment):
            info = mlflow.pyfunc.log_model(
                name="policy",
                python_model=str(self.code),
                artifacts=artifacts,
                pip_requirements=[],
                registered_model_name=NAME,
            )
        return str(info.registered_model_version)

    @classmethod
    def fresh(cls, tmp_path: Path) -> Registry:
        """A registry of the test's own (one whose model the test may delete)."""
        (tmp_path / "mlflow").mkdir()
        return cls(tmp_path / "mlflow")

    def tagged(self, state: Path, seed: int, stop: datetime | None, alias: str) -> tuple[str, str]:
        """Log a version as the retrain registers one — its state's SHA-256 and, unless
        None, where its window stops — and point ``alias`` at it; (version, digest)."""
        version = self.log_version(state, seed)
        digest = hashlib.sha256(state.read_bytes()).hexdigest()
        self.client.set_model_version_tag(NAME, version, "state_sha256", digest)
        if stop is not None:
            self.client.set_model_version_tag(NAME, version, "window_stop", stop.isoformat())
        self.client.set_registered_model_alias(NAME, alias, version)
        return version, digest


def arrays(policy: Any) -> dict[str, np.ndarray]:
    """What a head has learnt (without its bookkeeping)."""
    state = policy.to_state().arrays
    return {n: state[f"head.{n}"] for n in ("precision", "xty", "yty", "count", "theta")}


def assert_heads_equal(have: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    for name, value in want.items():
        np.testing.assert_allclose(have[name], value, rtol=0, atol=1e-9, err_msg=name)


def learnt(head: dict[str, np.ndarray], base: Path) -> float:
    """How many rewards ``head`` has learnt beyond its base state's."""
    return float(head["count"].sum() - arrays(load_policy(base))["count"].sum())


def rebuilt(settings: Any, label: str, base: Path, stop: datetime | None) -> dict[str, Any]:
    """The head the store says ``label`` has learnt (the reference)."""
    engine = make_engine(settings.store_url)
    try:
        return arrays(rebuild_from_store(EventStore(engine), label, load_policy(base), stop))
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        yield Registry(tmp_path_factory.mktemp("mlflow"))
    finally:
        mp.undo()


def test_service_follows_the_production_alias(
    registry: Registry, tmp_path: Path, rng: np.random.Generator
) -> None:
    settings = service_settings(tmp_path, mlflow_tracking_uri=registry.uri, model_name=NAME)
    with running_client(settings) as client:
        # no registered model yet: the fallback serves
        assert client.get("/readyz").json() == {"status": "ready", "fallback_active": True}
        got = client.post("/v1/decisions", json=decision_body(rng)).json()
        assert got["fallback"] is True

        # and it says where it looked (a mistyped registry URI gave an empty registry,
        # a fallback for good and nothing else: README helper, stop 46)
        missing = client.get("/v1/model").json()["no_production"]
        assert f"has no version of {NAME!r} @production" in missing
        assert registry.uri.rpartition("/")[2] in missing

        v1 = registry.log_version(policy_file(tmp_path / "v1.npz", seed=1), seed=1)
        info = client.post("/v1/admin/poll").json()
        assert info["fallback_active"] is True  # registered, but no alias yet
        assert info["no_production"] == missing
        registry.client.set_registered_model_alias(NAME, "production", v1)
        info = client.post("/v1/admin/poll").json()
        assert info["production"]["version"] == version_label(NAME, v1)
        assert info["no_production"] is None
        assert info["production"]["source"] == "mlflow"
        got = client.post("/v1/decisions", json=decision_body(rng)).json()
        assert (got["fallback"], got["model_version"]) == (False, version_label(NAME, v1))
        assert client.post("/v1/rewards", json={"event_id": got["event_id"], "reward": 1.0}).json()[
            "applied"
        ]

        v2 = registry.log_version(policy_file(tmp_path / "v2.npz", seed=2), seed=2)
        registry.client.set_registered_model_alias(NAME, "production", v2)
        assert client.post("/v1/admin/poll").json()["production"]["version"] == version_label(
            NAME, v2
        )

        # a version without the policy state: logged, and v2 keeps serving
        broken = registry.log_version(None, seed=3)
        registry.client.set_registered_model_alias(NAME, "production", broken)
        loader = client.app.state.service.loader
        failures = loader.failures
        info = client.post("/v1/admin/poll").json()
        assert info["production"]["version"] == version_label(NAME, v2)
        assert loader.failures == failures + 1
        got = client.post("/v1/decisions", json=decision_body(rng)).json()
        assert got["model_version"] == version_label(NAME, v2)

        # a version whose window_stop tag is not a time: refused once, as the version's
        # fault (it was counted as "registry unreachable" at every poll, twice)
        odd = registry.log_version(policy_file(tmp_path / "v4.npz", seed=4), seed=4)
        registry.client.set_model_version_tag(NAME, odd, "window_stop", "garbage")
        registry.client.set_registered_model_alias(NAME, "production", odd)
        for _ in range(3):
            info = client.post("/v1/admin/poll").json()
        assert info["production"]["version"] == version_label(NAME, v2)
        assert "window_stop='garbage' is not an ISO 8601 time" in info["last_load_error"]
        metrics = client.get("/metrics").text
        assert 'banditops_model_load_failures_total{reason="admission"} 1.0' in metrics
        assert 'reason="unreachable"' not in metrics

        # a window that ends after the version was registered: every reward of the
        # version's own decisions was "not served" (before the window's end), none learnt
        late = registry.log_version(policy_file(tmp_path / "v6.npz", seed=6), seed=6)
        registry.client.set_model_version_tag(NAME, late, "window_stop", "9999-12-31T00:00:00")
        registry.client.set_registered_model_alias(NAME, "production", late)
        info = client.post("/v1/admin/poll").json()
        assert info["production"]["version"] == version_label(NAME, v2)
        assert (
            "window_stop='9999-12-31T00:00:00' is after the version was registered"
            in (info["last_load_error"])
        )

        # alias removed: no production model, the fallback serves again
        registry.client.delete_registered_model_alias(NAME, "production")
        info = client.post("/v1/admin/poll").json()
        assert info["fallback_active"] is True and info["no_production"] == missing
        assert client.post("/v1/decisions", json=decision_body(rng)).json()["fallback"] is True


def test_a_state_over_the_size_limit_is_refused_before_it_is_downloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The artifact store's listing says the state's size: a file over
    ``model_max_bytes`` is refused without downloading it (the loader thread, which
    serves alias moves and rollbacks, waited for all of it before)."""
    from modelregistry.registry import AliasReader

    registry = Registry.fresh(tmp_path)
    state = policy_file(tmp_path / "big.npz", seed=7)
    version = registry.log_version(state, seed=7)
    registry.client.set_registered_model_alias(NAME, "production", version)
    downloads: list[str] = []
    real = AliasReader.download_state
    monkeypatch.setattr(
        AliasReader,
        "download_state",
        lambda self, v, dst: downloads.append(v) or real(self, v, dst),
    )
    limit = state.stat().st_size - 1
    settings = service_settings(
        tmp_path, mlflow_tracking_uri=registry.uri, model_name=NAME, model_max_bytes=limit
    )
    with running_client(settings) as client:
        info = client.post("/v1/admin/poll").json()
        assert info["fallback_active"] is True
        size = state.stat().st_size
        assert f"the state file has {size} bytes; the limit is {limit}" in info["last_load_error"]
    assert downloads == []


def test_version_loads_without_pickle(registry: Registry, tmp_path: Path) -> None:
    """The source reads only the ``.npz`` (``allow_pickle=False``), not the pyfunc."""
    from serving.models.mlflow_source import MlflowModelSource

    path = policy_file(tmp_path / "p.npz", seed=5)
    version = registry.log_version(path, seed=5)
    registry.client.set_registered_model_alias(NAME, "staging", version)
    source = MlflowModelSource(registry.uri, NAME, {"production": None, "candidate": "staging"})
    ref = source.resolve("candidate")
    assert ref is not None and ref.version == version_label(NAME, version)
    assert source.resolve("production") is None
    policy: Any = source.load(ref)
    assert policy.model_version == ref.version
    np.testing.assert_array_equal(policy.head.theta_, load_policy(path).head.theta_)


def test_a_recreated_registered_model_is_another_version(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """A registered model deleted and created again numbers its versions from 1 again:
    the second ``name/1`` is another artifact. The service swaps to it although it
    serves that label, never starts it from the first one's snapshots (nor at a
    restart), and a late reward of the first one's decisions is not the second one's.
    (Before: the label alone named a version — the service kept the first one's head
    until a restart, and a restart recovered the first one's snapshot.)"""
    registry = Registry.fresh(tmp_path)
    settings = service_settings(tmp_path, mlflow_tracking_uri=registry.uri, model_name=NAME)
    label = version_label(NAME, "1")
    first = policy_file(tmp_path / "first.npz", seed=1)
    second = policy_file(tmp_path / "second.npz", seed=2)

    def register(path: Path, seed: int, stop: datetime) -> str:
        return registry.tagged(path, seed, stop, "production")[1]

    with running_client(settings) as client:
        service = client.app.state.service
        register(first, 1, datetime.now(UTC) - timedelta(hours=1))
        assert client.post("/v1/admin/poll").json()["production"]["version"] == label
        events = [client.post("/v1/decisions", json=decision_body(rng)).json()["event_id"]]
        for _ in range(12):
            event_id = client.post("/v1/decisions", json=decision_body(rng)).json()["event_id"]
            assert reward(client, event_id)["applied"] is True
        assert client.post("/v1/admin/snapshot").json()["snapshot_ids"]
        learnt_first = arrays(service.loader.current.production.policy)

        registry.client.delete_registered_model(NAME)
        stop = datetime.now(UTC)  # its window holds the first one's decisions
        digest = register(second, 2, stop)
        assert client.post("/v1/admin/poll").json()["production"]["version"] == label
        served = service.loader.current.production
        assert served.incarnation == digest
        base = arrays(load_policy(second))
        for name, value in arrays(served.policy).items():
            np.testing.assert_array_equal(value, base[name], err_msg=name)
        # the first one's decision, rewarded late: not the second one's to learn
        late = reward(client, events[0])
        assert (late["status"], late["applied"]) == ("not_served", False)
        for name, value in arrays(served.policy).items():
            np.testing.assert_array_equal(value, base[name], err_msg=name)
        event_id = client.post("/v1/decisions", json=decision_body(rng)).json()["event_id"]
        assert reward(client, event_id)["applied"] is True
        assert client.post("/v1/admin/snapshot").json()["snapshot_ids"]
        live = arrays(served.policy)

    with running_client(settings) as client:  # a restart: from its own snapshot
        assert client.post("/v1/admin/poll").json()["production"]["version"] == label
        restarted = arrays(client.app.state.service.loader.current.production.policy)
    reference = rebuilt(settings, label, second, stop)
    assert_heads_equal(live, reference)
    assert_heads_equal(restarted, reference)
    assert any(not np.array_equal(learnt_first[n], restarted[n]) for n in reference)
    engine = make_engine(settings.store_url)
    try:  # both snapshots stay (retention prunes by age), each tagged with its artifact
        store = EventStore(engine)
        assert len(list(store.snapshots(label))) >= 2
        assert len(list(store.snapshots(label, digest))) >= 1
    finally:
        engine.dispose()


def test_a_recreated_version_never_starts_from_a_snapshot_older_than_its_incarnations(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """Snapshots written before revision 0005 record no incarnation, and any artifact of
    the label started from them: after an upgrade, a registered model deleted and
    created again served its new version 1 with the deleted one's head (upgrade helper,
    stop 45). Such a snapshot is used only when written after the version's
    registration (less the clock skew allowed)."""
    registry = Registry.fresh(tmp_path)
    settings = service_settings(tmp_path, mlflow_tracking_uri=registry.uri, model_name=NAME)
    label = version_label(NAME, "1")
    first = policy_file(tmp_path / "first.npz", seed=1)
    second = policy_file(tmp_path / "second.npz", seed=2)
    with running_client(settings) as client:
        registry.tagged(first, 1, datetime.now(UTC) - timedelta(hours=1), "production")
        assert client.post("/v1/admin/poll").json()["production"]["version"] == label
        for _ in range(12):
            event_id = client.post("/v1/decisions", json=decision_body(rng)).json()["event_id"]
            assert reward(client, event_id)["applied"] is True
        assert client.post("/v1/admin/snapshot").json()["snapshot_ids"]
    engine = make_engine(settings.store_url)
    try:  # as an older release wrote them: no incarnation, two hours ago
        with engine.begin() as conn:
            conn.execute(
                sa.update(head_snapshots).values(
                    incarnation=None, created_at=datetime.now(UTC) - timedelta(hours=2)
                )
            )
    finally:
        engine.dispose()
    registry.client.delete_registered_model(NAME)
    registry.tagged(second, 2, datetime.now(UTC), "production")
    with running_client(settings) as client:
        assert client.post("/v1/admin/poll").json()["production"]["version"] == label
        served = client.app.state.service.loader.current.production
        assert served.applied_rewards == 0
        base = arrays(load_policy(second))
        for name, value in arrays(served.policy).items():
            np.testing.assert_array_equal(value, base[name], err_msg=name)


def reward(client: Any, event_id: str, value: float = 1.0) -> dict[str, Any]:
    got = client.post("/v1/rewards", json={"event_id": event_id, "reward": value})
    assert got.status_code == 200, got.text
    answer: dict[str, Any] = got.json()
    return answer


def test_a_version_loaded_while_rewards_commit_learns_every_one(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A candidate recovered from the store, then probed, then served: the rewards
    committed between its recovery and the swap (production's decisions, after the
    candidate's window) reach its head once — from the store at the swap — and the rest
    online. Before, the candidate never learnt them (0 of 20), nor after a restart: its
    next snapshot recorded a later reward id."""
    import serving.models.loader as loader_module

    registry = Registry.fresh(tmp_path)
    settings = service_settings(
        tmp_path, mlflow_tracking_uri=registry.uri, model_name=NAME, candidate_share=0.5
    )
    stop = datetime.now(UTC) - timedelta(minutes=5)
    first, second = policy_file(tmp_path / "a.npz", seed=1), policy_file(tmp_path / "b.npz", seed=2)
    v1, _ = registry.tagged(first, 1, stop, "production")
    pending: list[str] = []
    probe = loader_module.smoke_test

    def rewarded_meanwhile(*args: Any, **kwargs: Any) -> None:
        while pending:  # the loader thread, between the recovery and the swap
            assert reward(client, pending.pop())["applied"] is True
        probe(*args, **kwargs)

    monkeypatch.setattr(loader_module, "smoke_test", rewarded_meanwhile)
    with running_client(settings) as client:
        client.post("/v1/admin/poll")
        pending.extend(
            client.post("/v1/decisions", json=decision_body(rng)).json()["event_id"]
            for _ in range(20)
        )
        v2, _ = registry.tagged(second, 2, stop, "staging")
        info = client.post("/v1/admin/poll").json()
        assert not pending
        assert info["candidate"]["version"] == version_label(NAME, v2)
        candidate = client.app.state.service.loader.current.candidate
        assert_heads_equal(
            arrays(candidate.policy), rebuilt(settings, info["candidate"]["version"], second, stop)
        )
        assert learnt(arrays(candidate.policy), second) == 20
        for _ in range(10):  # and online after, each once
            event_id = client.post("/v1/decisions", json=decision_body(rng)).json()["event_id"]
            reward(client, event_id)
        live = {
            v: arrays(m.policy)
            for v, m in ((v1, client.app.state.service.loader.current.production), (v2, candidate))
        }
    with running_client(settings) as client:
        served = client.app.state.service.loader.current
        restarted = {v1: arrays(served.production.policy), v2: arrays(served.candidate.policy)}
    for version, base in ((v1, first), (v2, second)):
        reference = rebuilt(settings, version_label(NAME, version), base, stop)
        assert learnt(reference, base) == 30
        assert_heads_equal(live[version], reference)
        assert_heads_equal(restarted[version], reference)


def test_a_reward_committed_across_a_swap_reaches_the_version_swapped_in(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reward of production's decision judged before a swap and committed after it:
    the version swapped in (its window stops before the decision) learns it, as the
    store says it does. Before, the swapped-out version's reward was skipped by every
    head, answered ``applied``, and missing from the new head for good."""
    import serving.service as service_module
    from eventstore.records import RewardRow

    registry = Registry.fresh(tmp_path)
    settings = service_settings(tmp_path, mlflow_tracking_uri=registry.uri, model_name=NAME)
    stop = datetime.now(UTC) - timedelta(minutes=5)
    first, second = policy_file(tmp_path / "a.npz", seed=1), policy_file(tmp_path / "b.npz", seed=2)
    registry.tagged(first, 1, stop, "production")
    write = service_module.write_events
    swap_first: list[str] = []

    def swapping_write(conn: Any, items: list[Any]) -> Any:
        if swap_first and any(isinstance(i, RewardRow) for i in items):
            swap_first.clear()  # the writer thread, before the reward's commit
            registry.tagged(second, 2, stop, "production")
            service.loader.poll()
        return write(conn, items)

    monkeypatch.setattr(service_module, "write_events", swapping_write)
    with running_client(settings) as client:
        service = client.app.state.service
        client.post("/v1/admin/poll")
        event_id = client.post("/v1/decisions", json=decision_body(rng)).json()["event_id"]
        swap_first.append(event_id)
        answer = reward(client, event_id)
        assert answer["status"] == "applied" and not swap_first
        production = service.loader.current.production
        assert production.version == version_label(NAME, "2")
        live = arrays(production.policy)
    reference = rebuilt(settings, version_label(NAME, "2"), second, stop)
    assert learnt(reference, second) == 1
    assert_heads_equal(live, reference)


def test_one_version_in_both_roles_is_one_head(tmp_path: Path, rng: np.random.Generator) -> None:
    """Both aliases on one version at a start (a promotion leaves ``staging`` where it
    was): one model serves both roles, and every reward of either reaches its head.
    Before, the candidate role got a second copy that learnt none of them (a version
    without a window learns only its own decisions' rewards, and they all named the
    production copy)."""
    registry = Registry.fresh(tmp_path)
    settings = service_settings(
        tmp_path, mlflow_tracking_uri=registry.uri, model_name=NAME, candidate_share=0.5
    )
    base = policy_file(tmp_path / "a.npz", seed=1)
    version, _ = registry.tagged(base, 1, None, "production")
    registry.client.set_registered_model_alias(NAME, "staging", version)
    with running_client(settings) as client:  # ready: its first poll is done
        served = client.app.state.service.loader.current
        assert served.candidate is served.production and served.candidate_share == 0.5
        traffic = set()
        for _ in range(30):
            got = client.post("/v1/decisions", json=decision_body(rng)).json()
            traffic.add(got["traffic"])
            reward(client, got["event_id"])
        assert traffic == {"production", "candidate"}
        live = arrays(served.production.policy)
    reference = rebuilt(settings, version_label(NAME, version), base, None)
    assert learnt(reference, base) == 30
    assert_heads_equal(live, reference)


def test_no_version_is_swapped_in_while_events_are_journaled(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """While the store takes no writes (a lock held elsewhere: reads still work) events
    go to the journal without store ids; a version loaded then could not learn those
    rewards from the store, and would never get them once the drain gave them ids. So
    it is served only after the drain, with every reward. Before, it was swapped in at
    once and missed the journaled reward for good."""
    import sqlite3
    import time

    registry = Registry.fresh(tmp_path)
    settings = service_settings(
        tmp_path,
        mlflow_tracking_uri=registry.uri,
        model_name=NAME,
        store_lock_timeout_s=0.3,
        store_probe_s=0.1,
    )
    stop = datetime.now(UTC) - timedelta(minutes=5)
    first, second = policy_file(tmp_path / "a.npz", seed=1), policy_file(tmp_path / "b.npz", seed=2)
    registry.tagged(first, 1, stop, "production")
    with running_client(settings) as client:
        client.post("/v1/admin/poll")
        lock = sqlite3.connect(settings.store_url.removeprefix("sqlite:///"), isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            event_id = client.post("/v1/decisions", json=decision_body(rng)).json()["event_id"]
            assert reward(client, event_id)["applied"] is True
            assert client.get("/readyz").json()["status"] == "degraded"
            v2, _ = registry.tagged(second, 2, stop, "production")
            info = client.post("/v1/admin/poll").json()
            assert info["production"]["version"] == version_label(NAME, "1")
            assert "journaled" in info["last_load_error"]
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        deadline = time.monotonic() + 30
        while client.get("/readyz").json()["status"] != "ready":
            assert time.monotonic() < deadline, "the journal was never drained"
            time.sleep(0.1)
        info = client.post("/v1/admin/poll").json()
        assert info["production"]["version"] == version_label(NAME, v2)
        live = arrays(client.app.state.service.loader.current.production.policy)
    reference = rebuilt(settings, version_label(NAME, v2), second, stop)
    assert learnt(reference, second) == 1
    assert_heads_equal(live, reference)


def test_production_rewards_outstanding_at_a_promotion_reach_its_successor(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """A rollout ends with its candidate promoted while production's decisions still wait
    for their rewards: the promoted version learns them (its window stops before them),
    as it would have during the rollout. Before, each was stored ``not_served`` and lost
    to online learning."""
    registry = Registry.fresh(tmp_path)
    settings = service_settings(
        tmp_path, mlflow_tracking_uri=registry.uri, model_name=NAME, candidate_share=0.5
    )
    stop = datetime.now(UTC) - timedelta(minutes=5)
    first, second = policy_file(tmp_path / "a.npz", seed=1), policy_file(tmp_path / "b.npz", seed=2)
    registry.tagged(first, 1, stop, "production")
    v2, _ = registry.tagged(second, 2, stop, "staging")
    with running_client(settings) as client:
        client.post("/v1/admin/poll")
        decided = [client.post("/v1/decisions", json=decision_body(rng)).json() for _ in range(24)]
        assert {d["traffic"] for d in decided} == {"production", "candidate"}
        registry.client.set_registered_model_alias(NAME, "production", v2)
        registry.client.delete_registered_model_alias(NAME, "staging")
        assert client.post("/v1/admin/poll").json()["production"]["version"].endswith("/2")
        statuses = {reward(client, d["event_id"])["status"] for d in decided}
        live = arrays(client.app.state.service.loader.current.production.policy)
    assert statuses == {"applied"}
    reference = rebuilt(settings, version_label(NAME, v2), second, stop)
    assert learnt(reference, second) == 24
    assert_heads_equal(live, reference)


def test_a_window_stop_without_an_offset_is_utc_wherever_it_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tag's one reading, for the service (where it replays from) and the retrain's
    gate (which window is fresher): the service read a time without an offset in its own
    zone (an hour early in Berlin), and the gate skipped it."""
    import time

    from eventstore.contract import window_stop_time

    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        utc = datetime(2026, 12, 1, tzinfo=UTC)
        assert window_stop_time("2026-12-01T00:00:00") == utc
        assert window_stop_time("2026-12-01") == utc
        assert window_stop_time("2026-12-01T01:00:00+01:00") == utc
        with pytest.raises(ValueError, match="window_stop must be an ISO 8601 time"):
            window_stop_time("yesterday")
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_retention_reads_a_served_label_s_window_as_the_service_does(registry: Registry) -> None:
    """What ``bandit_retention`` keeps of a served head depends on where its window stops
    (the rewards it learns): read from the registry by the label the store holds."""
    from eventstore.contract import version_label
    from modelregistry.registry import AliasReader

    reader = AliasReader(registry.uri, NAME)
    stop = datetime(2026, 11, 30, 6, tzinfo=UTC)
    tagged = registry.log_version(None, 9001)
    registry.client.set_model_version_tag(NAME, tagged, "window_stop", "2026-11-30T06:00:00")
    untagged = registry.log_version(None, 9002)
    odd = registry.log_version(None, 9003)
    registry.client.set_model_version_tag(NAME, odd, "window_stop", "garbage")
    assert reader.window_stop(version_label(NAME, tagged)) == stop
    # the service learns only its own rewards for these, or does not serve them
    assert reader.window_stop(version_label(NAME, untagged)) is None
    assert reader.window_stop(version_label(NAME, odd)) is None
    assert reader.window_stop(version_label(NAME, 99999)) is None  # not registered
    assert reader.window_stop(version_label("another-model", tagged)) is None
    assert reader.window_stop("file-0123abcd") is None
    assert reader.window_stop(f"{NAME}/²") is None


def test_retention_keeps_the_last_snapshot_of_the_versions_the_aliases_name(
    registry: Registry,
) -> None:
    from eventstore.contract import version_label
    from modelregistry.registry import AliasReader

    before, version = registry.log_version(None, 9010), registry.log_version(None, 9011)
    registry.client.set_registered_model_alias(NAME, "retention-test", version)
    # a rollback brings back the version its tag names (diff reviewer: its snapshot went)
    registry.client.set_model_version_tag(NAME, version, "previous_retention-test", before)
    reader = AliasReader(registry.uri, NAME)
    assert reader.served_labels(["retention-test", "no-such-alias"]) == {
        version_label(NAME, version),
        version_label(NAME, before),
    }
