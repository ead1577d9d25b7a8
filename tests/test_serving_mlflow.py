"""The MLflow registry source against a real registry (SQLite tracking store in a temp
dir): the test logs versions with the layout of ``eventstore.contract`` and moves the
``production`` alias; the service follows, falls back without one, and keeps serving when
a version cannot be loaded."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from eventstore.contract import POLICY_STATE_ARTIFACT, POLICY_STATE_FILE, version_label
from tests.serving_helpers import decision_body, policy_file, running_client, service_settings

pytest_plugins = ["tests.serving_fixtures"]

# Raised inside MLflow (its store on SQLAlchemy 2.1; its own type-hint inference while
# logging a model); nothing of ours.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:The ``noload`` loader strategy is deprecated:sqlalchemy.exc.SADeprecationWarning"
    ),
    pytest.mark.filterwarnings("ignore:.*Any type hint is inferred as AnyType:UserWarning"),
]

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

        v1 = registry.log_version(policy_file(tmp_path / "v1.npz", seed=1), seed=1)
        info = client.post("/v1/admin/poll").json()
        assert info["fallback_active"] is True  # registered, but no alias yet
        registry.client.set_registered_model_alias(NAME, "production", v1)
        info = client.post("/v1/admin/poll").json()
        assert info["production"]["version"] == version_label(NAME, v1)
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

        # alias removed: no production model, the fallback serves again
        registry.client.delete_registered_model_alias(NAME, "production")
        assert client.post("/v1/admin/poll").json()["fallback_active"] is True
        assert client.post("/v1/decisions", json=decision_body(rng)).json()["fallback"] is True


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
    from bandit_core import load_policy

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
    import hashlib
    from datetime import UTC, datetime, timedelta

    from bandit_core import load_policy
    from eventstore.engine import make_engine
    from serving.models.recovery import rebuild_from_store
    from serving.store.repository import EventStore

    (tmp_path / "mlflow").mkdir()
    registry = Registry(tmp_path / "mlflow")
    settings = service_settings(tmp_path, mlflow_tracking_uri=registry.uri, model_name=NAME)
    label = version_label(NAME, "1")
    first = policy_file(tmp_path / "first.npz", seed=1)
    second = policy_file(tmp_path / "second.npz", seed=2)

    def register(path: Path, seed: int, stop: datetime) -> str:
        version = registry.log_version(path, seed=seed)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        registry.client.set_model_version_tag(NAME, version, "state_sha256", digest)
        registry.client.set_model_version_tag(NAME, version, "window_stop", stop.isoformat())
        registry.client.set_registered_model_alias(NAME, "production", version)
        return digest

    def arrays(policy: Any) -> dict[str, np.ndarray]:  # what the head has learnt
        state = policy.to_state().arrays
        return {n: state[f"head.{n}"] for n in ("precision", "xty", "yty", "count", "theta")}

    def reward(client: Any, event_id: str) -> dict[str, Any]:
        got: dict[str, Any] = client.post(
            "/v1/rewards", json={"event_id": event_id, "reward": 1.0}
        ).json()
        return got

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
    engine = make_engine(settings.store_url)
    try:
        store = EventStore(engine)
        reference = arrays(rebuild_from_store(store, label, load_policy(second), window_stop=stop))
        # both snapshots stay (retention prunes by age), each tagged with its artifact
        assert len(list(store.snapshots(label))) >= 2
        assert len(list(store.snapshots(label, digest))) >= 1
    finally:
        engine.dispose()
    for name, value in reference.items():
        np.testing.assert_allclose(live[name], value, rtol=0, atol=1e-9, err_msg=name)
        np.testing.assert_allclose(restarted[name], value, rtol=0, atol=1e-9, err_msg=name)
    assert any(not np.array_equal(learnt_first[n], restarted[n]) for n in reference)
