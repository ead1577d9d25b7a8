"""The nightly retrain end to end on a seeded simulated event store.

Real components: the decision service (in-process, real SQLite/PostgreSQL event store),
the GX suite, training, OPE, and an MLflow registry with a SQLite (or PostgreSQL) backend
in a temp dir; then the service picks up the promoted version from the registry. Once
more with renamed aliases (``BANDITOPS_PRODUCTION_ALIAS=champion``…) and a model registry
apart from the tracking store (``BANDITOPS_MLFLOW_REGISTRY_URI``): retrain → promote → the
service loads it, all through the settings.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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
from training import promotion
from training.baseline import production_state
from training.pipeline import run_retrain
from training.settings import PipelineSettings

pytestmark = [
    pytest.mark.filterwarnings(
        "ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning"
    ),
]

#: The gate's least effective sample size, in the form and the settings alike.
MIN_ESS = 30.0


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


#: Where the registry is and what its aliases are called (the settings both sides read).
Naming = dict[str, str]


def _settings(tmp_path: Path, store_url: str, naming: Naming, **extra: object) -> Settings:
    return Settings(
        workspace=tmp_path / "ws",
        database_url=store_url,
        poll_interval_s=0.2,
        seed=11,
        **naming,
        api_token=TEST_TOKEN,  # make_client sends it
        **extra,
    )  # type: ignore[arg-type]


def _pipeline(tmp_path: Path, store_url: str, naming: Naming) -> PipelineSettings:
    return PipelineSettings(
        workspace=tmp_path / "ws",
        database_url=store_url,
        runs_dir=tmp_path / "runs",
        reward_window_s=1.0,
        retrain_min_ess=MIN_ESS,  # the form's: auto_promote needs the configured gate
        retrain_auto_promote=True,  # and the settings' leave (a form cannot turn it on)
        **naming,
    )  # type: ignore[arg-type]


@pytest.fixture(
    params=["sqlite", "sqlite-renamed", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def backends(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Naming]]:
    """(event store URL, registry settings) on SQLite — with the default alias names, or
    with renamed aliases and a registry apart from the tracking store — or on PostgreSQL."""
    if request.param == "sqlite":
        yield (
            f"sqlite:///{tmp_path}/events.db",
            {"mlflow_tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
        )
        return
    if request.param == "sqlite-renamed":
        yield (
            f"sqlite:///{tmp_path}/events.db",
            {
                "mlflow_tracking_uri": f"sqlite:///{tmp_path}/tracking.db",
                "mlflow_registry_uri": f"sqlite:///{tmp_path}/registry.db",
                "production_alias": "champion",
                "candidate_alias": "challenger",
                "registered_alias": "fresh",
            },
        )
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
        yield urls[0], {"mlflow_tracking_uri": urls[1]}
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


#: The most a night's GX data docs may take, in its run folder and logged with its run (a
#: site with a copy of GX's static assets took 4.25 MB).
GX_DOCS_MAX_BYTES = 500_000


def _artifact_bytes(registry: ModelRegistry, run_id: str, folder: str) -> dict[str, int]:
    """The size of every artifact under ``folder`` of run ``run_id``, by path."""
    sizes: dict[str, int] = {}
    for item in registry.client.list_artifacts(run_id, folder):
        if item.is_dir:
            sizes.update(_artifact_bytes(registry, run_id, item.path))
        else:
            sizes[item.path] = int(item.file_size or 0)
    return sizes


def _retrain(settings: PipelineSettings, run_key: str, now: datetime, **form: object) -> Any:
    """The retrain of the last hour (up to 2 s past ``now``, so every reward window has
    closed), as ``banditops train`` runs it."""
    end = now + timedelta(seconds=2)
    wait = (end - datetime.now(UTC)).total_seconds()
    if wait > 0:  # a retrain reads the store no later than now: let the interval end
        time.sleep(wait)
    params = {
        "window_days": (end - (now - timedelta(hours=1))).total_seconds() / 86_400,
        "algorithm": "shared_linucb",
        "policy_options": {"alpha": 0.5, "interactions": True},
        "min_rows": 500,
        "n_resamples": 200,
        "min_ess": MIN_ESS,
        "auto_promote": True,
        **form,
    }
    return run_retrain(params, run_key=run_key, interval_end=end, settings=settings)


def test_retrain_registers_gates_promotes_and_serving_follows(
    tmp_path: Path, backends: tuple[str, Naming]
) -> None:
    store_url, naming = backends
    pipeline = _pipeline(tmp_path, store_url, naming)
    production, staging = pipeline.production_alias, pipeline.candidate_alias
    _traffic(_settings(tmp_path, store_url, naming), 1500, seed=1)
    now = datetime.now(UTC)
    outcome = _retrain(pipeline, "nightly-1", now)
    registry = ModelRegistry.from_settings(pipeline)
    assert outcome.gate_passed and outcome.promoted, outcome.reasons
    v1 = registry.get(outcome.version)
    assert set(v1.aliases) == {pipeline.registered_alias, staging, production}
    assert v1.tags["gate.decision"] == "promote" and v1.tags["rows"] == str(
        outcome.manifest["rows"]
    )
    assert v1.metrics["ope.candidate.dr.value"] > v1.metrics["ope.production.dr.value"]
    # the night's GX data docs, not another copy of GX's 4.1 MB of static assets
    (docs,) = (tmp_path / "runs").rglob("gx_docs")
    assert (docs / "index.html").is_file()
    assert sum(p.stat().st_size for p in docs.rglob("*") if p.is_file()) < GX_DOCS_MAX_BYTES
    logged = _artifact_bytes(registry, v1.run_id, "gx_docs")
    assert "gx_docs/index.html" in logged and sum(logged.values()) < GX_DOCS_MAX_BYTES
    if "mlflow_registry_uri" in naming:  # the versions live in the registry store only
        tracking_only = ModelRegistry(naming["mlflow_tracking_uri"], pipeline.model_name)
        assert tracking_only.versions() == []
    # re-running the same run key registers nothing new
    again = _retrain(pipeline, "nightly-1", now)
    assert again.version == outcome.version and len(registry.versions()) == 1

    # the service loads the production alias by itself and decides as the trained policy
    state, _ = production_state(registry, tmp_path / "check")
    trained = load_policy(state)
    app = create_app(_settings(tmp_path, store_url, naming))
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
    _traffic(_settings(tmp_path, store_url, naming), 1, seed=3)
    bad = _retrain(
        pipeline,
        "nightly-2",
        now,
        policy_options={"alpha": 0.5, "interactions": True, "lambda_prior": 1e6},
    )
    assert not bad.gate_passed and not bad.promoted
    v2 = registry.get(bad.version)
    assert staging not in v2.aliases and v2.tags["gate_passed"] == "false"
    assert "lower bound" in v2.tags["gate_reasons"]
    assert registry.by_alias(production).version == outcome.version

    # promoted by hand through bandit_promote's steps, the service follows; a rollback
    # restores version 1
    # one version, however written: "0001" is version 1, already @production (before,
    # it was promoted "again" and overwrote the rollback history with 1 → 1)
    with pytest.raises(ValueError, match=f"version {outcome.version} is already @"):
        promotion.plan_promotion(f"000{outcome.version}", settings=pipeline)
    with pytest.raises(ValueError, match="registered version number"):
        promotion.plan_promotion("\u0661", settings=pipeline)  # an Arabic-Indic one
    planned = promotion.plan_promotion(f"0{bad.version}", settings=pipeline)
    assert planned["version"] == bad.version
    assert planned["alias"] == production and planned["current"] == outcome.version
    approval = {"chosen_options": ["Approve"], "responded_by_user": {"name": "tester"}}
    assert promotion.apply_promotion(planned, approval, settings=pipeline)["version"] == bad.version
    with make_client(create_app(_settings(tmp_path, store_url, naming))) as client:
        served = client.post("/v1/admin/poll").json()["production"]
        assert served is not None and served["version"].endswith(f"/{bad.version}")
    assert registry.rollback(by="tester", reason="worse online").version == outcome.version
