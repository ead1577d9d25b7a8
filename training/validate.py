"""The data-validation step: the Great Expectations replay suite on an extracted window."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd

from training.replay import ReplayManifest
from validation.expectations import (
    STORE_COLUMNS,
    ReplaySuiteConfig,
    ReplayValidation,
    validate_replay,
)


def validate_features(
    manifest: ReplayManifest,
    docs_dir: str | Path,
    *,
    min_rows: int = 100,
    reward_min: float = 0.0,
    reward_max: float = 1.0,
    reference_path: str | Path | None = None,
    drift_threshold: float = 0.25,
) -> ReplayValidation:
    """Validate the replay file of ``manifest``; raise ``DataValidationError`` on failure.

    The data docs (HTML) go to ``docs_dir``. ``reference_path`` (an earlier replay file)
    enables the drift expectations (PSI against it below ``drift_threshold``).
    """
    frame = pd.read_parquet(manifest.path)
    config = ReplaySuiteConfig(
        dim_context=manifest.dim_user,
        dim_arm=manifest.dim_arm,
        window_start=datetime.fromisoformat(manifest.start),
        window_end=datetime.fromisoformat(manifest.end),
        reward_min=reward_min,
        reward_max=reward_max,
        min_rows=min_rows,
        columns=STORE_COLUMNS,
    )
    reference = pd.read_parquet(reference_path) if reference_path is not None else None
    return validate_replay(
        frame, config, reference=reference, drift_threshold=drift_threshold, docs_dir=docs_dir
    )
