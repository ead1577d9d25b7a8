"""A production version's feature reference read back from a real MLflow registry (SQLite
backend in a temp dir): bounded, and a clear refusal its readers go on without."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import pytest

from bandit_core import make_policy, save_policy
from eventstore.contract import REFERENCE_ARTIFACT, REFERENCE_FILE
from eventstore.engine import make_engine
from eventstore.migrate import upgrade
from modelregistry.registry import (
    REFERENCE_BYTES_PER_FEATURE,
    FeatureReferenceError,
    ModelRegistry,
)
from monitoring.monitor import build_report
from monitoring.settings import MonitorSettings

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning"
)

#: The settings' model_max_dim here: references of at most 2 × 8 features are read.
MAX_DIM = 8
REFERENCE = {
    "window_start": "2026-01-01T00:00:00+00:00",
    "window_end": "2026-01-08T00:00:00+00:00",
    "rows": 100,
    "dim_user": 2,
    "dim_arm": 1,
    "features": {
        name: {"edges": [-1.0, 0.0, 1.0], "proportions": [0.2, 0.3, 0.3, 0.2]}
        for name in ("context_0", "context_1", "arm_feature_0")
    },
}


def _production(tmp_path: Path) -> tuple[MonitorSettings, ModelRegistry, Path]:
    """Settings, registry, and the stored reference file of a promoted version."""
    store = f"sqlite:///{tmp_path / 'events.db'}"
    upgrade(make_engine(store))
    settings = MonitorSettings(workspace=tmp_path / "ws", database_url=store, model_max_dim=MAX_DIM)
    registry = ModelRegistry.from_settings(settings)
    folder = tmp_path / "reference"
    folder.mkdir()
    (folder / REFERENCE_FILE).write_text(json.dumps(REFERENCE, indent=2))
    info = registry.register_candidate(
        state_path=save_policy(make_policy("linucb", dim_user=2), tmp_path / "p.npz"),
        run_key="night",
        artifacts={"reference": folder},
    )
    registry.promote(info.version, by="test", reason="the first production")
    root = registry.client.get_run(info.run_id).info.artifact_uri
    return settings, registry, Path(urlparse(root).path) / REFERENCE_ARTIFACT


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ('{"dim_user": 2, "features": {', "is not JSON"),
        ("\ud800".encode("utf-8", "surrogatepass"), "is not JSON"),
        ("[1, 2, 3]", "malformed: a JSON object is expected; got list"),
        (json.dumps({**REFERENCE, "dim_user": "2"}), "malformed: dim_user must be"),
        (
            json.dumps({**REFERENCE, "features": {"context_0": {"edges": [0.0]}}}),
            "malformed: features['context_0'].proportions must be a list of numbers",
        ),
        (
            json.dumps({**REFERENCE, "features": {"x": {"edges": [0.0], "proportions": [1.0]}}}),
            "one proportion more than edges",
        ),
        (" " * (2 * MAX_DIM * REFERENCE_BYTES_PER_FEATURE + 1), "the limit is 32768"),
    ],
)
def test_a_malformed_or_oversized_reference_is_refused_and_the_monitor_says_why(
    tmp_path: Path, content: str | bytes, why: str
) -> None:
    """``feature_reference`` parsed the artifact whole, with no bound, outside its try: a
    file of any size was read into memory, and one that is not JSON (or not a reference)
    crashed the monitor and the retrain's validation (security audit). The file is now
    bounded by ``2 × model_max_dim`` features of :data:`REFERENCE_BYTES_PER_FEATURE`
    bytes, and any such file is a :class:`FeatureReferenceError`; the monitor's drift
    check is skipped, naming it, as for a version without a reference."""
    settings, registry, stored = _production(tmp_path)
    reference, version = registry.feature_reference("production")
    assert reference == REFERENCE and version == "1"

    if isinstance(content, bytes):
        stored.write_bytes(content)
    else:
        stored.write_text(content)
    with pytest.raises(FeatureReferenceError, match="feature reference of version 1") as caught:
        registry.feature_reference("production")
    assert why in str(caught.value) and caught.value.version == "1"

    built = build_report(datetime.now(UTC), "weekly", settings)
    report = json.loads(Path(built["report"]).read_text())
    check = report["feature_drift"]["check"]
    assert check["status"] == "skipped" and why in check["message"], check
    assert report["production_version"] == "1"
