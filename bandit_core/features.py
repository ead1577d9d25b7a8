"""The one feature builder shared by serving, training and replay.

A shared (joint) linear model scores candidate ``a`` for user context ``x`` on

    φ(x, a) = [x_user ; x_arm ; vec(x_user ⊗ x_arm) (optional) ; one-hot(arm id) (optional)
               ; vec(x_user ⊗ e(arm id)) (optional)]

The one-hot block follows the *hybrid* model of Li et al. (WWW 2010, §3.2): arms in
``arm_vocabulary`` get their own coefficient; an arm outside it (a new item) gets a zero
block and is scored from its features alone until the vocabulary is extended at the next
rebuild.

The last block crosses the context with a hashed ``arm_embedding``-dimensional vector of
the arm id (:mod:`bandit_core.arm_embedding`): an interaction whose width does not grow
with the number of arms, and that needs no vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bandit_core._validation import (
    Constraint,
    FloatArray,
    Interval,
    IsBool,
    StrTuple,
    validate_params,
)
from bandit_core.arm_embedding import arm_embedding as _embedding
from bandit_core.arm_embedding import arm_embeddings

FEATURE_PARAMS: dict[str, Constraint] = {
    "dim_user": Interval(int, 0, None),
    "dim_arm": Interval(int, 0, None),
    "interactions": IsBool(),
    "arm_vocabulary": StrTuple(),
    "arm_embedding": Interval(int, 0, None),
}


@dataclass(frozen=True)
class FeatureMap:
    """Builds φ(x, a) for every (context, candidate) pair, vectorised."""

    dim_user: int
    dim_arm: int = 0
    interactions: bool = False
    arm_vocabulary: tuple[str, ...] = ()
    arm_embedding: int = 0
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        validate_params(
            "FeatureMap",
            {
                "dim_user": self.dim_user,
                "dim_arm": self.dim_arm,
                "interactions": self.interactions,
                "arm_vocabulary": self.arm_vocabulary,
                "arm_embedding": self.arm_embedding,
            },
            FEATURE_PARAMS,
        )
        object.__setattr__(self, "arm_vocabulary", tuple(self.arm_vocabulary))
        object.__setattr__(self, "_index", {a: i for i, a in enumerate(self.arm_vocabulary)})
        if self.dim == 0:
            raise ValueError(
                "FeatureMap must produce at least one feature; got dim_user = dim_arm = 0 "
                "and no vocabulary."
            )

    @property
    def dim(self) -> int:
        inter = self.dim_user * self.dim_arm if self.interactions else 0
        embedded = self.dim_user * self.arm_embedding
        return self.dim_user + self.dim_arm + inter + len(self.arm_vocabulary) + embedded

    def one_hot(self, arm_ids: Sequence[str]) -> FloatArray:
        """(len(arm_ids), len(vocabulary)) indicator block; unknown arms are all zero."""
        block = np.zeros((len(arm_ids), len(self.arm_vocabulary)))
        for row, arm in enumerate(arm_ids):
            col = self._index.get(arm)
            if col is not None:
                block[row, col] = 1.0
        return block

    def build(
        self, contexts: FloatArray, arm_features: FloatArray, arm_ids: Sequence[str]
    ) -> FloatArray:
        """φ for every context × candidate.

        Parameters
        ----------
        contexts : (n, dim_user)
        arm_features : (K, dim_arm)
        arm_ids : K ids

        Returns
        -------
        ndarray of shape (n, K, dim)
        """
        n, k = contexts.shape[0], arm_features.shape[0]
        parts = [
            np.broadcast_to(contexts[:, None, :], (n, k, self.dim_user)),
            np.broadcast_to(arm_features[None, :, :], (n, k, self.dim_arm)),
        ]
        if self.interactions:
            outer = contexts[:, None, :, None] * arm_features[None, :, None, :]
            parts.append(outer.reshape(n, k, self.dim_user * self.dim_arm))
        if self.arm_vocabulary:
            parts.append(
                np.broadcast_to(self.one_hot(arm_ids)[None], (n, k, len(self.arm_vocabulary)))
            )
        if self.arm_embedding:
            emb = arm_embeddings(arm_ids, self.arm_embedding)
            outer = contexts[:, None, :, None] * emb[None, :, None, :]
            parts.append(outer.reshape(n, k, self.dim_user * self.arm_embedding))
        return np.concatenate(parts, axis=-1)

    def apply(
        self,
        contexts: FloatArray,
        arm_features: FloatArray,
        arm_ids: Sequence[str],
        weights: FloatArray,
    ) -> FloatArray:
        """``φ(x, a) @ weights`` for every context × candidate, without building φ.

        ``weights`` has shape (dim, m); the result (n, K, m) equals
        ``build(contexts, arm_features, arm_ids) @ weights`` but costs
        O(n·du·m + K·da·m) (plus O(n·du·da·m) with interactions) instead of O(n·K·dim·m):
        each block of φ is contracted with its own rows of ``weights``.
        """
        du, da = self.dim_user, self.dim_arm
        out = (contexts @ weights[:du])[:, None, :] + (arm_features @ weights[du : du + da])[
            None, :, :
        ]
        offset = du + da
        if self.interactions:
            block = weights[offset : offset + du * da].reshape(du, da, -1)
            # Σ_ij x_i y_j W[(i,j)] = y · (Σ_i x_i W[i, :, :])
            out = out + arm_features @ np.tensordot(contexts, block, axes=(1, 0))
            offset += du * da
        if self.arm_vocabulary:
            vocab = len(self.arm_vocabulary)
            out = out + (self.one_hot(arm_ids) @ weights[offset : offset + vocab])[None, :, :]
            offset += vocab
        if self.arm_embedding:
            m = self.arm_embedding
            block = weights[offset : offset + du * m].reshape(du, m, -1)
            emb = arm_embeddings(arm_ids, m)
            out = out + emb @ np.tensordot(contexts, block, axes=(1, 0))
        return out

    def row(self, context: FloatArray, arm_features: FloatArray, arm_id: str) -> FloatArray:
        """φ(x, a) for one (context, arm) pair, shape (dim,)."""
        parts = [context, arm_features]
        if self.interactions:
            parts.append(np.multiply.outer(context, arm_features).ravel())
        if self.arm_vocabulary:
            block = np.zeros(len(self.arm_vocabulary))
            col = self._index.get(arm_id)
            if col is not None:
                block[col] = 1.0
            parts.append(block)
        if self.arm_embedding:
            parts.append(np.multiply.outer(context, _embedding(arm_id, self.arm_embedding)).ravel())
        return np.concatenate(parts)

    def build_rows(
        self, contexts: FloatArray, arm_features: FloatArray, arm_ids: Sequence[str]
    ) -> FloatArray:
        """φ for paired rows (the chosen arm of each logged decision), shape (n, dim)."""
        n = contexts.shape[0]
        parts = [contexts, arm_features]
        if self.interactions:
            cross = contexts[:, :, None] * arm_features[:, None, :]
            parts.append(cross.reshape(n, cross.shape[1] * cross.shape[2]))  # n may be 0
        if self.arm_vocabulary:
            parts.append(self.one_hot(arm_ids))
        if self.arm_embedding:
            emb = arm_embeddings(arm_ids, self.arm_embedding)
            cross = contexts[:, :, None] * emb[:, None, :]
            parts.append(cross.reshape(n, cross.shape[1] * cross.shape[2]))
        return np.concatenate(parts, axis=-1)
