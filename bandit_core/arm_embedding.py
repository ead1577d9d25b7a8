"""Hashed arm embeddings: a small fixed vector per arm id, with no vocabulary.

The interaction ``x_user ⊗ one-hot(arm)`` gives a shared model ``dim_user · K`` features
and a network input as wide; ``x_user ⊗ e(arm)`` with an ``m``-dimensional embedding
``e`` gives ``dim_user · m`` whatever the number of arms (the feature-hashing trick of
Weinberger et al., ICML 2009, with Gaussian instead of ±1 entries). ``e(a)`` is drawn from
``N(0, I/m)`` by a generator seeded with a BLAKE2b digest of the arm id, so every process,
replica and restart maps an id to the same vector and new arms need no vocabulary update.
With ``m ≥ K`` the embeddings of K arms are linearly independent almost surely and the
block spans the per-arm model; with ``m < K`` it is a rank-``m`` bilinear interaction
``xᵀ W e(a)`` shared by all arms.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from bandit_core._validation import FloatArray

#: embeddings remembered per (arm id, dimension); cleared when it grows past this
_CACHE_SIZE = 100_000
_cache: dict[tuple[str, int], FloatArray] = {}


def _seed(arm_id: str) -> int:
    digest = hashlib.blake2b(arm_id.encode("utf-8"), digest_size=8, person=b"armembed").digest()
    return int.from_bytes(digest, "little")


def arm_embedding(arm_id: str, dim: int) -> FloatArray:
    """``e(arm_id)``, shape (dim,), read-only: ``N(0, I/dim)`` seeded by the id's hash."""
    key = (arm_id, dim)
    out = _cache.get(key)
    if out is None:
        if len(_cache) >= _CACHE_SIZE:
            _cache.clear()
        out = np.random.default_rng(_seed(arm_id)).standard_normal(dim) / np.sqrt(dim)
        out.setflags(write=False)
        _cache[key] = out
    return out


def arm_embeddings(arm_ids: Sequence[str], dim: int) -> FloatArray:
    """Embeddings of several arms, shape (len(arm_ids), dim)."""
    if not arm_ids:
        return np.zeros((0, dim))
    return np.stack([arm_embedding(a, dim) for a in arm_ids])
