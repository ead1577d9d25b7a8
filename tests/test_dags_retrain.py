"""``bandit_retrain`` run for real by Airflow (``dag.test()``) on a seeded event store.

Real components: the decision service filled the SQLite event store; Airflow runs every
task in process against a migrated SQLite metadata DB; the tasks extract, validate (GX),
train, evaluate (OPE) and register into a SQLite MLflow registry in the session's temp
folder.
"""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from bandit_core import load_policy
from eventstore.contract import BASELINE_TAG, POLICY_STATE_PATH
from training.pipeline import step_order

pytest_plugins = ["tests.airflow_support"]

RETRAIN_TASKS = tuple(step_order())
#: With ``shards`` = 1 (the default) the mapped shard tasks expand to nothing.
SINGLE_NODE = {
    **dict.fromkeys(RETRAIN_TASKS, "success"),
    "shard_statistics": "skipped",
    "shard_evaluation": "skipped",
}


def _spec(run_id: str) -> dict[str, Any]:
    from training.runspec import run_folder

    folder = run_folder(os.environ["BANDITOPS_RUNS_DIR"], run_id)
    spec: dict[str, Any] = json.loads((folder / "spec.json").read_text())
    return spec


def _asset_extras(name: str, run_id: str) -> list[dict[str, Any]]:
    """The ``extra`` of every event of asset ``name`` produced by run ``run_id``."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = (
            select(AssetEvent.extra)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.name == name, AssetEvent.source_run_id == run_id)
            .order_by(AssetEvent.id)
        )
        return [dict(extra) for extra in session.scalars(query)]


def test_nightly_run_registers_stages_and_promotes(
    first_retrain: Any, dagtools: Any, pipeline_env: Any
) -> None:
    run = first_retrain
    assert run.state == "success", run.tasks
    assert run.tasks == SINGLE_NODE
    version = dagtools.version_of(run.run_id)
    assert version is not None
    # the run moved candidate → staging → production to its version, in that order (later
    # runs of the session may have moved candidate on since)
    moves = [(m["alias"], m["version"], m["by"]) for m in dagtools.registry().alias_history()]
    assert moves[:3] == [
        ("candidate", version.version, "training"),
        ("staging", version.version, "gate"),
        ("production", version.version, "bandit_retrain"),
    ]
    assert "staging" in version.aliases
    assert version.tags["gate.decision"] == "promote" and version.tags["gate_passed"] == "true"
    assert version.metrics["ope.candidate.dr.value"] > version.metrics["ope.production.dr.value"]
    assert version.tags[BASELINE_TAG] == ""  # the baseline was the uniform fallback

    spec = _spec(run.run_id)
    end = run.logical_date
    assert spec["window_end"] == end.isoformat() and spec["as_of"] == end.isoformat()
    assert spec["window_start"] == (end - timedelta(days=7)).isoformat()
    assert spec["train"]["algorithm"] == "shared_linucb" and spec["auto_promote"] is True
    folder = Path(spec["run_dir"])
    manifest = json.loads((folder / "replay" / "replay.json").read_text())
    assert version.tags["rows"] == str(manifest["rows"]) and manifest["rows"] >= 1400
    # evaluated on the held-out part, then refit: the registered head learnt every row
    rows = {k: int(version.tags[k]) for k in ("window_rows", "train_rows", "eval_rows")}
    assert rows["window_rows"] == manifest["rows"] == rows["train_rows"] + rows["eval_rows"]
    assert version.tags["head_rows"] == str(manifest["rows"]) and rows["eval_rows"] > 0
    assert version.tags["window_stop"] == manifest["stop"]
    registered = load_policy(
        dagtools.registry().download_version(version.version, folder / "check") / POLICY_STATE_PATH
    )
    assert float(registered.head.count_.sum()) == manifest["rows"]
    for produced in (
        "gx_docs/index.html",
        "plots/arm_coverage.png",
        "evaluation/evaluation.json",
        "reference/feature_reference.json",
        "metrics.json",
        "refit/report.json",
    ):
        assert (folder / produced).is_file(), produced

    # the tasks produced both assets, with their metadata
    replay = _asset_extras("banditops_replay", run.run_id)
    model = _asset_extras("banditops_registered_model", run.run_id)
    assert len(replay) == 1 and len(model) == 1
    assert replay[0]["rows"] == manifest["rows"] and replay[0]["sha256"] == manifest["sha256"]
    assert model[0]["version"] == version.version and model[0]["created"] is True


def test_rerun_of_the_same_run_registers_and_moves_nothing(
    first_retrain: Any, dagtools: Any, pipeline_env: Any
) -> None:
    registry = dagtools.registry()
    before = {v.version: v.aliases for v in registry.versions()}
    history = registry.alias_history()
    again = dagtools.run_dag("bandit_retrain", dagtools.GOOD_RUN, when=first_retrain.logical_date)
    assert again.run_id == first_retrain.run_id
    assert again.state == "success", again.tasks
    assert {v.version: v.aliases for v in registry.versions()} == before
    assert registry.alias_history() == history  # no gate re-decided, no alias moved again
    assert dagtools.version_of(again.run_id).version == (
        dagtools.version_of(first_retrain.run_id).version
    )
    model = _asset_extras("banditops_registered_model", again.run_id)
    assert model[-1]["created"] is False


def test_corrupted_replay_fails_validation_and_registers_nothing(
    event_store: str,
    dagtools: Any,
    pipeline_env: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = dagtools.copy_store(event_store, tmp_path / "corrupted.db")
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        conn.execute("UPDATE rewards SET value = 5.0 WHERE id % 40 = 0")
        conn.execute("UPDATE decisions SET propensity = 0.0 WHERE id % 97 = 0")
    monkeypatch.setenv("BANDITOPS_DATABASE_URL", url)
    versions = [v.version for v in dagtools.registry().versions()]
    run = dagtools.run_dag("bandit_retrain", dagtools.GOOD_RUN)
    assert run.state == "failed"
    assert run.tasks["extract_replay"] == "success"
    assert run.tasks["validate_features"] == "failed"
    assert run.tries["validate_features"] == 1  # bad data is not retried
    downstream = RETRAIN_TASKS[RETRAIN_TASKS.index("train_network") :]
    assert {run.tasks[t] for t in downstream} == {"upstream_failed"}
    assert [v.version for v in dagtools.registry().versions()] == versions
    assert dagtools.version_of(run.run_id) is None
    docs = Path(_spec(run.run_id)["run_dir"]) / "gx_docs" / "index.html"
    assert docs.is_file()  # the data docs of the failed validation are kept


def test_worse_candidate_is_registered_but_stops_at_the_gate(
    first_retrain: Any, second_retrain: Any, dagtools: Any, pipeline_env: Any
) -> None:
    run = second_retrain
    assert run.state == "success", run.tasks
    assert run.tasks["gate"] == "success" and run.tasks["promote"] == "skipped"
    version = dagtools.version_of(run.run_id)
    assert version.aliases == ("candidate",)
    assert version.tags["gate_passed"] == "false" and version.tags["gate.decision"] == "reject"
    assert "lower bound" in version.tags["gate_reasons"]
    first = dagtools.version_of(first_retrain.run_id).version
    assert version.tags[BASELINE_TAG] == first  # evaluated against production
    # neither the gate nor the run moved an alias to it (a person may, with bandit_promote)
    automatic = [
        (m["alias"], m["by"])
        for m in dagtools.registry().alias_history()
        if m["version"] == version.version and m["by"] != dagtools.REVIEWER
    ]
    assert automatic == [("candidate", "training")]


def test_without_auto_promote_the_version_waits_in_staging(
    first_retrain: Any, dagtools: Any, pipeline_env: Any
) -> None:
    registry = dagtools.registry()
    production = registry.by_alias("production").version
    # the same data and model as production: it passes only with a tolerance
    conf = {**dagtools.GOOD_RUN, "auto_promote": False, "tolerance": 0.5}
    run = dagtools.run_dag("bandit_retrain", conf)
    assert run.state == "success", run.tasks
    assert run.tasks["gate"] == "success" and run.tasks["promote"] == "skipped"
    version = dagtools.version_of(run.run_id)
    assert set(version.aliases) >= {"candidate", "staging"}
    assert version.tags["gate_passed"] == "true"
    assert registry.by_alias("production").version == production  # waits for bandit_promote


def test_sharded_run_maps_the_shard_tasks(
    first_retrain: Any, dagtools: Any, pipeline_env: Any
) -> None:
    """``shards`` = 2: the tasks made from the ``mapped`` rows expand once per shard and
    the reducing tasks take their lists (the tasks come from ``RETRAIN_STEPS`` alone)."""
    conf = {**dagtools.GOOD_RUN, "shards": 2, "auto_promote": False, "tolerance": 0.5}
    run = dagtools.run_dag("bandit_retrain", conf)
    assert run.state == "success", run.tasks
    assert run.tasks["shard_statistics"] == "success", run.tasks
    assert run.tasks["shard_evaluation"] == "success", run.tasks
    folder = Path(_spec(run.run_id)["run_dir"])
    # one statistics file per training shard, one OPE file per held-out shard, and the
    # reward model only the sharded rebuild writes
    assert sorted(p.name for p in (folder / "shards").iterdir()) == [
        "holdout-0000.npz",
        "holdout-0001.npz",
        "train-0000.npz",
        "train-0001.npz",
    ]
    assert (folder / "rebuild" / "reward_model.npz").is_file()
    assert dagtools.version_of(run.run_id) is not None


def test_nightly_shared_linucb_run_registers_a_floored_policy(
    first_retrain: Any, dagtools: Any, pipeline_env: Any, tmp_path: Path
) -> None:
    """``shared_linucb`` is deterministic: the retrain gives it the default floor (and the
    cold-start floor); every propensity of the registered policy on the window's contexts
    is at least the floor, exactly; the version's ``floor`` tag says so."""
    import numpy as np

    from bandit_core import load_policy
    from bandit_core.policies.overlap import Overlap
    from eventstore.contract import POLICY_STATE_PATH
    from training.evaluate import logged_batch
    from training.replay import load_replay

    version = dagtools.version_of(first_retrain.run_id)
    floor = json.loads(version.tags["floor"])
    assert floor == {"floor": 0.02, "cold_start_floor": 0.02}
    assert float(version.tags["gate.unsupported_mass"]) <= 0.2  # uniform logs support it
    local = dagtools.registry().download_version(version.version, tmp_path)
    policy = load_policy(local / POLICY_STATE_PATH)
    assert isinstance(policy, Overlap) and policy.config.floor == 0.02
    batch = logged_batch(
        load_replay(Path(_spec(first_retrain.run_id)["run_dir"]) / "replay" / "replay.parquet")
    )
    probs = policy.select_batch(batch.contexts, batch.candidates, np.random.default_rng(0))
    assert probs.probabilities.min() >= 0.02 - 1e-15
    # not one-hot any more: the floor's exact mixture (1 − K·0.02) · 1[UCB's arm] + 0.02
    k = probs.probabilities.shape[1]
    np.testing.assert_allclose(probs.probabilities.max(axis=1), 1 - (k - 1) * 0.02, atol=1e-12)
    np.testing.assert_allclose(
        probs.propensities, probs.probabilities[np.arange(len(probs.arms)), probs.arms]
    )
