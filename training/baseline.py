"""The run's registry and baseline: the version a candidate is compared with, downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from eventstore.admission import Admission
from eventstore.contract import (
    BASELINE_TAG,
    LEGACY_BASELINE_TAG,
    POLICY_STATE_PATH,
    STATE_DIGEST_TAG,
)
from modelregistry.registry import Aliases, ModelRegistry
from training.runspec import RunSpec


class Baseline(NamedTuple):
    """The version a run's candidate is compared with.

    Attributes
    ----------
    version : str or None
        The baseline version (None: the uniform fallback before the first production).
    state : Path or None
        Its policy state, downloaded into the run's folder.
    digest : str or None
        The SHA-256 its registration recorded (:data:`~eventstore.contract.STATE_DIGEST_TAG`;
        None: registered before digests were), which the state is loaded against
        (:func:`training.evaluate.production_policy`): a registry artifact changed after
        registration is refused, not evaluated.
    """

    version: str | None
    state: Path | None
    digest: str | None = None


def run_admission(s: RunSpec) -> Admission:
    """The admission limits the run spec fixed (what the registry admits, and what the
    run loads production's state under)."""
    return Admission(max_bytes=s.model_max_bytes, max_dim=s.model_max_dim)


def open_registry(s: RunSpec) -> ModelRegistry:
    """The registry, model and alias names and the admission limits the run spec fixed."""
    return ModelRegistry(
        s.url("tracking_uri"),
        s.model_name,
        registry_uri=s.url("registry_uri"),
        aliases=Aliases(s.registered_alias, s.staging_alias, s.production_alias),
        admission=run_admission(s),
    )


def baseline_state(s: RunSpec) -> Baseline:
    """The run's baseline (:class:`Baseline`): the current production version, its state
    downloaded (``Baseline(None, None)``: the uniform fallback before the first). When
    this run already registered its version, the baseline recorded then, so a re-run
    reaches the same decision. Nothing here reads the state: it is loaded under the
    run's admission limits and against ``digest`` where it is evaluated."""
    registry = open_registry(s)
    existing = registry.find_by_run_key(s.run_key)
    if existing is not None:
        tags = existing.tags
        baseline = tags.get(BASELINE_TAG, tags.get(LEGACY_BASELINE_TAG)) or None
    else:
        current = registry.by_alias(s.production_alias)
        baseline = current.version if current else None
    if baseline is None:
        return Baseline(None, None)
    state, info = production_state(registry, s.folder / "production", version=baseline)
    digest = info.tags.get(STATE_DIGEST_TAG) or None if info is not None else None
    return Baseline(baseline, state, digest)


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
