"""Pipeline faults, smaller runs of the reliability benchmark's case: a process killed
(SIGKILL) while it rewrites a policy state never leaves a half-written file (states are
written to a temporary file and renamed), and the training step killed mid-run and run
again leaves exactly what a clean run leaves. (A retried or re-run DAG registering no
second version, and corrupted replay data stopped by Great Expectations before training,
are in tests/test_dags_retrain.py and tests/test_registry.py.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from bandit_core import load_policy
from bandit_core.envs import LogisticClickEnvironment
from benchmarks.reliability_checks import kill_while_writing, train_killed_and_retried
from serving.traffic import simulate_traffic
from tests.serving_helpers import running_client, service_settings
from training.replay import extract_replay


def test_a_killed_writer_never_leaves_a_half_written_state(tmp_path: Path) -> None:
    got = kill_while_writing(tmp_path / "state.npz", kills=6, seed=1)
    assert got["torn"] == 0
    load_policy(tmp_path / "state.npz")


def test_a_training_step_killed_and_retried_equals_a_clean_run(tmp_path: Path) -> None:
    settings = service_settings(tmp_path)  # no model: the uniform fallback logs
    env = LogisticClickEnvironment.make(
        np.random.default_rng(3), n_items=20, dim_user=4, dim_arm=3, n_candidates=6
    )
    with running_client(settings) as client:
        stats = simulate_traffic(client, env, 300, np.random.default_rng(4))
    assert stats.errors == 0
    now = datetime.now(UTC)
    manifest = extract_replay(
        settings.store_url,
        now - timedelta(hours=1),
        now + timedelta(minutes=1),
        tmp_path / "r",
        as_of=now + timedelta(days=2),  # every reward window closed
    )
    got = train_killed_and_retried(Path(manifest.path), tmp_path / "train", kills=2, seed=2)
    assert got == {"kills": 2, "same_state": True, "same_metrics": True}
