"""Policy state as bytes (a ``bandit_core.save_state`` ``.npz``; never pickle), built and
read in memory."""

from __future__ import annotations

from bandit_core import Policy, load_policy
from bandit_core.state import state_to_bytes
from eventstore.admission import Admission


def policy_to_bytes(policy: Policy) -> bytes:
    """The ``.npz`` bytes of ``policy``'s state."""
    return state_to_bytes(policy.to_state())


def policy_from_bytes(data: bytes, admission: Admission | None = None) -> Policy:
    """Restore a policy from :func:`policy_to_bytes` output (``allow_pickle=False``);
    with ``admission``, only after its checks (:mod:`eventstore.admission`)."""
    if admission is not None:
        return admission.policy(data)
    return load_policy(data)
