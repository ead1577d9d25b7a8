"""The retrain's production baseline, loaded as the service loads it: against the SHA-256
its registration recorded and under the run's admission limits (a real MLflow registry
with a SQLite backend in a temp dir, the real offline-evaluation step)."""

from __future__ import annotations

import hashlib
import json
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pytest

from bandit_core import make_policy, save_policy
from benchmarks.reliability_hostile import bomb_version
from eventstore.contract import POLICY_STATE_PATH, STATE_DIGEST_TAG
from modelregistry.registry import ModelRegistry
from training import runspec, steps
from training.refs import RebuiltRef, ReplayRef
from training.replay import ReplayManifest
from training.settings import PipelineSettings

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning"
)

#: The run's admission limit on a state's arrays (the setting ``model_max_bytes``).
LIMIT = 1 << 20
#: What the bomb's zeros declare: 64 times the limit, 64 KiB deflated.
DECLARED = 64 << 20


def _replay(folder: Path) -> ReplayRef:
    """600 uniform decisions over 3 arms (dim_user 2, dim_arm 1), arm 2 rewarded."""
    rng = np.random.default_rng(2)
    rows = [
        {
            "event_id": f"e{t}",
            "context": [1.0, float(rng.standard_normal())],
            "candidate_ids": ["a", "b", "c"],
            "candidate_features": [[0.0]] * 3,
            "chosen": (arm := int(rng.integers(3))),
            "reward": float(arm == 2),
            "propensity": 1 / 3,
            "probabilities": [1 / 3] * 3,
            "model_version": "1",
        }
        for t in range(600)
    ]
    path = folder / "replay.parquet"
    pd.DataFrame(rows).to_parquet(path)
    manifest = ReplayManifest(str(path), "", "", 600, 600, "", dim_user=2, dim_arm=1)
    (folder / "manifest.json").write_text(manifest.to_json())
    return ReplayRef(str(folder / "manifest.json"), str(path), 600, 600, "", "", "")


def _production_note(s: runspec.RunSpec, candidate: Path, replay: ReplayRef) -> str | None:
    """What the run's offline evaluation says of production (None: it evaluated it)."""
    steps.evaluate_offline(s, RebuiltRef(state_path=str(candidate)), replay)
    report = json.loads((s.folder / "evaluation" / "evaluation.json").read_text())
    notes = [n for n in report["production"]["notes"] if "production version" in n]
    return notes[0] if notes else None


def test_the_retrain_refuses_a_changed_or_inflating_production_state(tmp_path: Path) -> None:
    """The retrain read production's state with plain ``load_policy``: no digest, no size
    check. A 64 KiB file declaring 64 MiB of zeros (1 GiB in the audit) was allocated in
    full where the service refuses it in milliseconds (security audit). It is now loaded
    as the service loads it: a file that is not the registered one, or that declares more
    than ``model_max_bytes``, does not load, and the gate compares with the uniform
    policy and says why — before anything as large is allocated."""
    settings = PipelineSettings(
        workspace=tmp_path / "ws",
        database_url=f"sqlite:///{tmp_path / 'events.db'}",
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        model_name="test-policy",
        model_max_bytes=LIMIT,
        retrain_n_resamples=50,
    )
    registry = ModelRegistry.from_settings(settings)
    production = save_policy(make_policy("linucb", dim_user=2), tmp_path / "production.npz")
    info = registry.register_candidate(state_path=production, run_key="first")
    registry.promote(info.version, by="test", reason="the first production")
    s = runspec.plan({}, run_key="night", interval_end=datetime.now(UTC), settings=settings)
    candidate = save_policy(make_policy("linucb", dim_user=2, floor=0.05), tmp_path / "c.npz")
    replay = _replay(tmp_path)
    uri = registry.client.get_model_version_download_uri(registry.model_name, info.version)
    stored = Path(urlparse(uri).path) / POLICY_STATE_PATH

    assert _production_note(s, candidate, replay) is None  # the registered file is production

    # another valid state put in its place: not the file registered
    other = save_policy(make_policy("linucb", dim_user=2, alpha=3.0), tmp_path / "other.npz")
    stored.write_bytes(other.read_bytes())
    note = _production_note(s, candidate, replay)
    assert note is not None and "the artifact changed" in note and STATE_DIGEST_TAG in note
    assert "compared with the uniform policy" in note

    # a decompression bomb, its digest tag rewritten to match (whoever can write the
    # artifact store can often write tags too): refused by its declared size
    bomb = bomb_version(production, tmp_path / "bomb.npz", inflated=DECLARED)
    assert bomb.stat().st_size < LIMIT
    stored.write_bytes(bomb.read_bytes())
    digest = hashlib.sha256(bomb.read_bytes()).hexdigest()
    registry.client.set_model_version_tag(
        registry.model_name, info.version, STATE_DIGEST_TAG, digest
    )
    tracemalloc.start()
    started = time.perf_counter()
    try:
        note = _production_note(s, candidate, replay)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert note is not None and f"more than {LIMIT} bytes" in note
    assert peak < DECLARED // 4, peak  # nothing near the declared size was allocated
    assert time.perf_counter() - started < 20.0
