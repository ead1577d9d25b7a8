"""The models being served: one immutable set, swapped as a whole by the loader."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bandit_core import Policy
from bandit_core.head_statistics import LinearHeadPolicy
from bandit_core.policies.registry import input_widths


@dataclass(frozen=True)
class Signature:
    """Input shape a policy expects: ``dim_user`` (None = any) and ``dim_arm``, the width
    of a candidate's features in a request (0 = not used, any width accepted);
    ``position_slots`` > 0 when the model learns a position bias
    (:class:`bandit_core.PositionBias`: its head sees ``dim_arm + position_slots``)."""

    dim_user: int | None
    dim_arm: int
    position_slots: int = 0

    @classmethod
    def of(cls, policy: Policy) -> Signature:
        """Read the dimensions from the policy's state config (wrappers unwrapped)."""
        return cls(*input_widths(policy))


#: The members :class:`LinearHeadPolicy` asks for, and whether each is a method.
_HEAD_MEMBERS = tuple(
    (name, callable(member))
    for name, member in vars(LinearHeadPolicy).items()
    if not name.startswith("_")
)


def _is_head_policy(policy: Any) -> bool:
    """``isinstance(policy, LinearHeadPolicy)``, the same test (every member present, a
    method not None) without the protocol machinery, which lists the protocol's members
    on every call: too slow to run on each reward."""
    for name, method in _HEAD_MEMBERS:
        if not hasattr(policy, name) or (method and getattr(policy, name) is None):
            return False
    return True


def find_head(policy: Any) -> Any:
    """The Bayesian head of ``policy`` (through wrappers), or None."""
    while policy is not None:
        if _is_head_policy(policy):
            return policy.head
        policy = getattr(policy, "inner", None)
    return None


@dataclass(eq=False)
class ServedModel:
    """A loaded model version and its online-learning bookkeeping.

    ``policy`` is mutated only on the event-loop thread (decisions and reward
    application); ``last_reward_id`` is the id of the last reward its head learnt from.
    ``replayed_after`` / ``replayed_ids``: the recovery started from the state after
    reward ``replayed_after`` and replayed exactly these rewards (what the replica sync
    of :mod:`serving.replica_sync` starts from). ``window_stop``: where the version's
    training window stops; its head learns every applied reward of a decision created
    from then on (:mod:`serving.models.recovery`), None: those of its own decisions.
    ``incarnation``: which artifact of the label it grew from
    (:attr:`serving.models.sources.ModelRef.incarnation`; its snapshots record it).
    """

    version: str
    policy: Policy
    source: str
    signature: Signature
    last_reward_id: int = 0
    applied_rewards: int = 0
    rewards_since_snapshot: int = 0
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    last_snapshot_at: float = field(default_factory=time.monotonic)
    replayed_after: int = 0
    replayed_ids: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    window_stop: datetime | None = None
    incarnation: str | None = None

    def learns_own(self, decided_at: datetime) -> bool:
        """Whether a reward of a decision labelled with this version, made at
        ``decided_at``, is this head's to learn: not one made before its training window
        stopped — a decision of an earlier artifact under the same label (a re-created
        registered model), which its window already holds and recovery never replays."""
        return self.window_stop is None or decided_at >= self.window_stop

    def summary(self) -> dict[str, Any]:
        """Version, policy, source, bookkeeping and head statistics (for ``/v1/model``)."""
        return {
            "version": self.version,
            "policy": self.policy.name,
            "source": self.source,
            "loaded_at": self.loaded_at.isoformat(),
            "applied_rewards": self.applied_rewards,
            "last_reward_id": self.last_reward_id,
            "head": self.head_summary(),
        }

    def head_summary(self) -> dict[str, Any] | None:
        head = find_head(self.policy)
        if head is None:
            return None
        a, b = head.noise_posterior()
        return {
            "dim": int(head.dim),
            "n_heads": int(head.n_heads),
            "observations": float(head.count_.sum()),
            "theta_norm": float((head.theta_**2).sum() ** 0.5),
            "noise_variance_mean": float((b / (a - 1.0)).mean()) if (a > 1.0).all() else None,
        }


@dataclass(frozen=True)
class ServingSet:
    """What serves now: production (None = fallback), the rollout candidate and its share."""

    production: ServedModel | None
    candidate: ServedModel | None = None
    candidate_share: float = 0.0

    def models(self) -> list[ServedModel]:
        """The served models, each once (one version in both roles is one model)."""
        production, candidate = self.production, self.candidate
        if candidate is production:
            candidate = None
        return [m for m in (production, candidate) if m is not None]

    def for_version(self, version: str | None) -> ServedModel | None:
        if version is None:
            return None
        return next((m for m in self.models() if m.version == version), None)

    @property
    def fallback_active(self) -> bool:
        return self.production is None
