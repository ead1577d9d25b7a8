"""Policy state on disk: one ``.npz`` with the arrays and a JSON header; no pickle."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bandit_core.policies.base import Policy
from bandit_core.policies.registry import policy_from_state
from bandit_core.types import PolicyState

_HEADER = "__state__.json"


def save_state(state: PolicyState, path: str | Path) -> Path:
    """Write ``state`` to ``path`` (``.npz``) atomically; returns the path written."""
    path = Path(path)
    for key in state.arrays:
        if key == _HEADER:
            raise ValueError(f"array name {_HEADER!r} is reserved.")
        if state.arrays[key].dtype == object:
            raise ValueError(f"state array {key!r} has dtype object, which would need pickle.")
    header = {
        "policy": state.policy,
        "schema_version": state.schema_version,
        "config": state.config,
    }
    payload: dict[str, Any] = {_HEADER: np.array(json.dumps(header, sort_keys=True))}
    payload.update(state.arrays)
    # write a temporary file beside it, make it durable, then rename it over ``path``: a
    # process killed at any moment leaves the previous file or the new one, never half
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("wb") as fh:
            np.savez(fh, **payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_state(path: str | Path) -> PolicyState:
    """Read a state written by :func:`save_state` (``allow_pickle=False``)."""
    with np.load(Path(path), allow_pickle=False) as data:
        if _HEADER not in data.files:
            raise ValueError(f"{path} is not a banditops policy state (no {_HEADER} entry).")
        header = json.loads(str(data[_HEADER]))
        arrays = {k: data[k] for k in data.files if k != _HEADER}
    return PolicyState(header["policy"], header["config"], arrays, int(header["schema_version"]))


def save_policy(policy: Policy, path: str | Path) -> Path:
    return save_state(policy.to_state(), path)


def load_policy(path: str | Path) -> Policy:
    return policy_from_state(load_state(path))
