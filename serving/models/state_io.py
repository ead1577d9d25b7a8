"""Policy state as bytes (a ``bandit_core.save_state`` ``.npz``; never pickle)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from bandit_core import Policy, PolicyState, load_policy, save_state


def state_to_bytes(state: PolicyState) -> bytes:
    """The ``.npz`` bytes of a policy state."""
    with tempfile.TemporaryDirectory(prefix="banditops-state-") as tmp:
        path = Path(tmp) / "state.npz"
        save_state(state, path)
        return path.read_bytes()


def policy_to_bytes(policy: Policy) -> bytes:
    """The ``.npz`` bytes of ``policy``'s state."""
    return state_to_bytes(policy.to_state())


def policy_from_bytes(data: bytes) -> Policy:
    """Restore a policy from :func:`policy_to_bytes` output (``allow_pickle=False``)."""
    with tempfile.TemporaryDirectory(prefix="banditops-state-") as tmp:
        path = Path(tmp) / "state.npz"
        path.write_bytes(data)
        return load_policy(path)
