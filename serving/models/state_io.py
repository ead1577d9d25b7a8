"""Policy state as bytes (a ``bandit_core.save_state`` ``.npz``; never pickle)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from bandit_core import Policy, PolicyState, load_policy, save_state
from bandit_core.policies.registry import policy_from_state
from eventstore.admission import Admission


def state_to_bytes(state: PolicyState) -> bytes:
    """The ``.npz`` bytes of a policy state."""
    with tempfile.TemporaryDirectory(prefix="banditops-state-") as tmp:
        path = Path(tmp) / "state.npz"
        save_state(state, path)
        return path.read_bytes()


def policy_to_bytes(policy: Policy) -> bytes:
    """The ``.npz`` bytes of ``policy``'s state."""
    return state_to_bytes(policy.to_state())


def policy_from_bytes(data: bytes, admission: Admission | None = None) -> Policy:
    """Restore a policy from :func:`policy_to_bytes` output (``allow_pickle=False``);
    with ``admission``, only after its checks (:mod:`eventstore.admission`)."""
    if admission is not None:
        return policy_from_state(admission.admit(data))
    with tempfile.TemporaryDirectory(prefix="banditops-state-") as tmp:
        path = Path(tmp) / "state.npz"
        path.write_bytes(data)
        return load_policy(path)
