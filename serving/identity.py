"""Salted user hashes and the stable rollout split derived from them."""

from __future__ import annotations

import hashlib
import hmac

import numpy as np

from eventstore.contract import CANDIDATE, PRODUCTION

_BUCKET_SCALE = float(2**64)


def hash_user(user_id: str, salt: bytes) -> str:
    """HMAC-SHA256 of ``user_id`` keyed by ``salt`` (64 hex chars); the raw id is never
    stored."""
    return hmac.new(salt, user_id.encode(), hashlib.sha256).hexdigest()


def rollout_bucket(user_hash: str) -> float:
    """A number in [0, 1) that is uniform over users and fixed for each user."""
    return int(user_hash[:16], 16) / _BUCKET_SCALE


def route(user_hash: str | None, share: float, rng: np.random.Generator) -> str:
    """The traffic arm of one request: ``"candidate"`` for a ``share`` of users (stable per
    user), ``"production"`` otherwise. Anonymous requests are split at random with the
    same share."""
    if share <= 0.0:
        return PRODUCTION
    u = rng.random() if user_hash is None else rollout_bucket(user_hash)
    return CANDIDATE if u < share else PRODUCTION
