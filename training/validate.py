"""The data-validation step: the Great Expectations replay suite on an extracted window."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from training.replay import ReplayManifest
from validation.expectations import (
    STORE_COLUMNS,
    ReplaySuiteConfig,
    ReplayValidation,
    validate_replay,
)

log = logging.getLogger(__name__)


def validate_features(
    manifest: ReplayManifest,
    docs_dir: str | Path,
    *,
    min_rows: int,
    reward_min: float,
    reward_max: float,
    drift_threshold: float,
    reference_path: str | Path | None = None,
    reference: Mapping[str, Any] | None = None,
    drift_warning: float | None = None,
) -> ReplayValidation:
    """Validate the replay file of ``manifest``; raise ``DataValidationError`` on failure.

    ``min_rows``, the reward range and ``drift_threshold`` have no defaults here: a run
    takes them from its spec (the retrain settings), so no second copy can drift.

    The data docs (HTML) go to ``docs_dir``. ``reference_path`` (an earlier replay file)
    or ``reference`` (a feature reference as logged with a registered version: its
    ``features`` histograms) enables the drift expectations: PSI against it below
    ``drift_threshold`` (the failing level) and, with ``drift_warning``, a warning level
    whose failures are recorded (``warnings``) and logged, not raised.
    """
    frame = pd.read_parquet(manifest.path)
    if manifest.quarantine_path is not None:  # name the set-aside rows beside the docs
        folder = Path(docs_dir)
        folder.mkdir(parents=True, exist_ok=True)
        rows = pd.read_parquet(manifest.quarantine_path).to_dict(orient="records")
        (folder / "quarantine.json").write_text(
            json.dumps({"quarantined": manifest.quarantined, "rows": rows}, indent=2)
        )
        log.warning(
            "%d replay rows quarantined (schema broken): %s",
            manifest.quarantined,
            ", ".join(f"{r['event_id']} ({r['reason']})" for r in rows[:20]),
        )
    config = ReplaySuiteConfig(
        dim_context=manifest.dim_user,
        dim_arm=manifest.dim_arm,
        window_start=datetime.fromisoformat(manifest.start),
        window_end=datetime.fromisoformat(manifest.end),
        reward_min=reward_min,
        reward_max=reward_max,
        summed_rewards=manifest.duplicate_rule == "sum",
        min_rows=min_rows,
        columns=STORE_COLUMNS,
    )
    histograms = None
    if reference is not None:
        histograms = {
            name: (item["edges"], item["proportions"])
            for name, item in reference["features"].items()
        }
    result = validate_replay(
        frame,
        config,
        reference=pd.read_parquet(reference_path) if reference_path is not None else None,
        histograms=histograms,
        drift_threshold=drift_threshold,
        drift_warning=drift_warning,
        docs_dir=docs_dir,
    )
    for warning in result.warnings:
        log.warning("data validation warning (the run continues): %s", warning.describe())
    return result
