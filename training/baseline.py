"""The run's registry and baseline: the version a candidate is compared with, downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eventstore.admission import Admission
from eventstore.contract import BASELINE_TAG, LEGACY_BASELINE_TAG, POLICY_STATE_PATH
from modelregistry.registry import Aliases, ModelRegistry
from training.runspec import RunSpec


def open_registry(s: RunSpec) -> ModelRegistry:
    """The registry, model and alias names and the admission limits the run spec fixed."""
    return ModelRegistry(
        s.url("tracking_uri"),
        s.model_name,
        registry_uri=s.url("registry_uri"),
        aliases=Aliases(s.registered_alias, s.staging_alias, s.production_alias),
        admission=Admission(max_bytes=s.model_max_bytes, max_dim=s.model_max_dim),
    )


def baseline_state(s: RunSpec) -> tuple[str | None, Path | None]:
    """``(version, downloaded state)`` of the run's baseline: the current production
    version (``(None, None)``: the uniform fallback before the first). When this run
    already registered its version, the baseline recorded then, so a re-run reaches the
    same decision."""
    registry = open_registry(s)
    existing = registry.find_by_run_key(s.run_key)
    if existing is not None:
        tags = existing.tags
        baseline = tags.get(BASELINE_TAG, tags.get(LEGACY_BASELINE_TAG)) or None
    else:
        current = registry.by_alias(s.production_alias)
        baseline = current.version if current else None
    if baseline is None:
        return None, None
    state, _ = production_state(registry, s.folder / "production", version=baseline)
    return baseline, state


def production_state(
    registry: ModelRegistry, dest: str | Path, version: str | None = None
) -> tuple[Path | None, Any]:
    """Download a version's policy state (default: the one the registry's production alias
    points at; None before the first) into ``dest``; returns ``(state path, VersionInfo)``."""
    info = (
        registry.get(version)
        if version is not None
        else registry.by_alias(registry.aliases.production)
    )
    if info is None:
        return None, None
    local = registry.download_version(info.version, dest)
    return local / POLICY_STATE_PATH, info
