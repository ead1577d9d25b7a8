"""The nightly retrain end to end on a seeded simulated event store.

Real components: the decision service (in-process, real SQLite/PostgreSQL event store),
the GX suite, training, OPE, and an MLflow registry with a SQLite (or PostgreSQL) backend
in a temp dir; then the service picks up the promoted version from the registry.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from bandit_core import Candidates, load_policy
from bandit_core.envs import LogisticClickEnvironment
from modelregistry.registry import ModelRegistry
from serving.app import create_app
from serving.settings import Settings
from serving.traffic import simulate_traffic
from tests.serving_helpers import TEST_TOKEN, make_client
from training.pipeline import RetrainSettings, production_state, run_retrain
from training.train import TrainConfig

pytestmark = [
    pytest.mark.filterwarnings(
        "ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning"
    ),
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
]


def _env() -> LogisticClickEnvironment:
    # strong user × item interactions: a learnt policy beats the uniform logger by far
    return LogisticClickEnvironment.make(
        np.random.default_rng(7),
        n_items=12,
        dim_user=4,
        dim_arm=3,
        n_candidates=6,
        bias=-1.5,
        interaction_scale=2.5,
    )


def _settings(tmp_path: Path, store_url: str, tracking_uri: str, **extra: object) -> Settings:
    return Settings(
        workspace=tmp_path / "ws",
        database_url=store_url,
        mlflow_tracking_uri=tracking_uri,
        poll_interval_s=0.2,
        seed=11,
        api_token=TEST_TOKEN,  # make_client sends it
        **extra,
    )  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backends(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(event store URL, MLflow tracking URI) on SQLite, or both on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/events.db", f"sqlite:///{tmp_path}/mlflow.db"
        return
    server = request.getfixturevalue("postgres_url")
    names = [f"banditops_t_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for n in names:
            conn.execute(sa.text(f'CREATE DATABASE "{n}"'))
    base = sa.make_url(server)
    urls = [base.set(database=n).render_as_string(hide_password=False) for n in names]
    try:
        yield urls[0], urls[1]
    finally:
        with admin.connect() as conn:
            for n in names:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)'))
        admin.dispose()


def _traffic(settings: Settings, n: int, seed: int) -> None:
    from eventstore.engine import make_engine
    from eventstore.migrate import upgrade

    engine = make_engine(settings.database_url or "")
    upgrade(engine)  # `banditops db upgrade`
    engine.dispose()
    app = create_app(settings)
    with make_client(app) as client:
        stats = simulate_traffic(client, _env(), n, np.random.default_rng(seed), n_users=200)
    assert stats.errors == 0, stats.error_samples


def test_retrain_registers_gates_promotes_and_serving_follows(
    tmp_path: Path, backends: tuple[str, str]
) -> None:
    store_url, tracking_uri = backends
    _traffic(_settings(tmp_path, store_url, tracking_uri), 1500, seed=1)
    now = datetime.now(UTC)
    window = (now - timedelta(hours=1), now + timedelta(seconds=1))
    retrain = RetrainSettings(
        store_url=store_url,
        tracking_uri=tracking_uri,
        runs_dir=str(tmp_path / "runs"),
        train=TrainConfig(algorithm="shared_linucb", options={"alpha": 0.5, "interactions": True}),
        reward_window=timedelta(seconds=1),
        min_rows=500,
        n_resamples=200,
        min_ess=30.0,
    )
    outcome = run_retrain(retrain, *window, run_key="nightly-1", as_of=now + timedelta(seconds=2))
    registry = ModelRegistry(tracking_uri)
    assert outcome.gate_passed and outcome.promoted, outcome.reasons
    v1 = registry.get(outcome.version)
    assert set(v1.aliases) == {"candidate", "staging", "production"}
    assert v1.tags["gate.decision"] == "promote" and v1.tags["rows"] == str(
        outcome.manifest["rows"]
    )
    assert v1.metrics["ope.candidate.dr.value"] > v1.metrics["ope.production.dr.value"]
    # re-running the same run key registers nothing new
    again = run_retrain(retrain, *window, run_key="nightly-1", as_of=now + timedelta(seconds=2))
    assert again.version == outcome.version and len(registry.versions()) == 1

    # the service loads @production by itself and decides exactly as the trained policy
    state, _ = production_state(registry, tmp_path / "check")
    trained = load_policy(state)
    app = create_app(_settings(tmp_path, store_url, tracking_uri))
    with make_client(app) as client:
        deadline = time.monotonic() + 30
        while client.get("/v1/model").json()["production"] is None and time.monotonic() < deadline:
            time.sleep(0.2)
        served = client.get("/v1/model").json()["production"]
        assert served is not None and served["version"].endswith(f"/{outcome.version}")
        env, rng = _env(), np.random.default_rng(5)
        for _ in range(20):
            context, cands = env.sample(rng)
            body = {
                "context": context.tolist(),
                "candidates": [
                    {"id": a, "features": cands.features[i].tolist()}
                    for i, a in enumerate(cands.ids)
                ],
            }
            out = client.post("/v1/decisions", json=body).json()
            expected = trained.select(
                context, Candidates(cands.ids, cands.features), np.random.default_rng(0)
            )
            assert out["fallback"] is False
            assert out["arm_id"] == expected.arm_id and out["propensity"] == pytest.approx(
                expected.propensity
            )

    # a candidate made worse on purpose is registered but not staged, with the reason
    worse = RetrainSettings(
        **{
            **retrain.__dict__,
            "train": TrainConfig(
                algorithm="shared_linucb",
                options={"alpha": 0.5, "interactions": True, "lambda_prior": 1e6},
            ),
        }
    )
    _traffic(_settings(tmp_path, store_url, tracking_uri), 1, seed=3)
    bad = run_retrain(worse, *window, run_key="nightly-2", as_of=now + timedelta(seconds=2))
    assert not bad.gate_passed and not bad.promoted
    v2 = registry.get(bad.version)
    assert "staging" not in v2.aliases and v2.tags["gate_passed"] == "false"
    assert "lower bound" in v2.tags["gate_reasons"]
    assert registry.by_alias("production").version == outcome.version

    # manual promotion of the bad one, then rollback restores version 1
    registry.promote(bad.version, by="tester", reason="experiment", force=True)
    assert registry.rollback(by="tester", reason="worse online").version == outcome.version
