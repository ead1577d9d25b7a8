"""Additive sufficient statistics of Bayesian linear heads, their merge, and the
``LinearHeadPolicy`` protocol of policies whose head is rebuilt from them.

For the rows of one head (in time order) the statistics are ``G = Σ w φφᵀ``,
``b = Σ w r φ``, ``Σ w r²`` and ``n = Σ w``; the posterior precision is ``A = λI + G``
(:meth:`bandit_core.head.BayesianLinearHead.load_statistics`). Without a discount every
weight is 1 and the statistics of disjoint row sets add up exactly. With a discount γ < 1
the row ``i`` of ``n`` gets ``w = γ^{n−1−i}``, and the statistics of rows ``a`` followed
by rows ``b`` are ``S = γ^{n_b} S_a + S_b`` (per head) — the single-pass weighting. A
sliding window keeps rows, not statistics, and does not merge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from bandit_core.head import BayesianLinearHead, outlier_rows
from bandit_core.linalg import sufficient_statistics
from bandit_core.types import PolicyState

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]


@dataclass(frozen=True)
class HeadStatistics:
    """Additive statistics per head key (``""``: the one shared head; else an arm id).

    ``gram`` (m, d, d) = Σ w φφᵀ, ``xty`` (m, d) = Σ w r φ, ``yty`` (m,) = Σ w r²,
    ``count`` (m,) = Σ w, ``rows`` (m,) the number of rows behind each; the weights are
    ``γ^{(rows after this one, same head)}`` (all 1 without discount).
    """

    keys: list[str]
    gram: FloatArray
    xty: FloatArray
    yty: FloatArray
    count: FloatArray
    rows: NDArray[np.int64]

    def __post_init__(self) -> None:
        """``ValueError`` naming the first array that does not fit ``keys`` (one entry per
        head), the others' dimension, or that is not finite, or a negative count: a shard
        file read back (:meth:`from_arrays`) is checked before it is merged."""
        m = len(self.keys)
        d = int(self.gram.shape[-1]) if self.gram.ndim == 3 else -1
        shapes = {
            "gram": (m, d, d),
            "xty": (m, d),
            "yty": (m,),
            "count": (m,),
            "rows": (m,),
        }
        for name, shape in shapes.items():
            value = np.asarray(getattr(self, name))
            if value.shape != shape or (name == "gram" and d < 0):
                raise ValueError(
                    f"head statistics {name!r} must have shape {shape} for {m} heads; "
                    f"got {value.shape}."
                )
            if value.dtype.kind not in "iuf" or not np.isfinite(value).all():
                raise ValueError(f"head statistics {name!r} must hold finite numbers.")
            if name in ("count", "rows") and (value < 0).any():
                raise ValueError(f"head statistics {name!r} must not be negative.")
        if len(set(self.keys)) != m:
            raise ValueError("head statistics keys must name each head once.")

    @classmethod
    def of(
        cls,
        phi: FloatArray,
        rewards: FloatArray,
        keys: Sequence[str] | None,
        gamma: float = 1.0,
    ) -> HeadStatistics:
        """Per-head statistics of rows ``phi`` (n, d), ``rewards`` (n,) in time order;
        ``keys`` (n,) names each row's head (None: one shared head). Heads are listed in
        order of first appearance."""
        groups = head_groups(keys, phi.shape[0])
        m, d = len(groups), phi.shape[1]
        gram, xty = np.zeros((m, d, d)), np.zeros((m, d))
        yty, count, rows = np.zeros(m), np.zeros(m), np.zeros(m, dtype=np.int64)
        for j, idx in enumerate(groups.values()):
            weights = None
            if gamma < 1.0:
                weights = gamma ** np.arange(idx.size - 1, -1, -1, dtype=np.float64)
            gram[j], xty[j], yty[j], count[j] = sufficient_statistics(
                phi[idx], rewards[idx], weights
            )
            rows[j] = idx.size
        return cls(list(groups), gram, xty, yty, count, rows)

    @classmethod
    def learnt(
        cls,
        phi: FloatArray,
        rewards: FloatArray,
        keys: Sequence[str] | None,
        config: Any,
        before: HeadStatistics | None = None,
    ) -> tuple[HeadStatistics, IntArray]:
        """:meth:`of` the rows a head with ``config`` (a :class:`HeadConfig`) learns after
        the rows of ``before`` when it learns these in order: each head leaves out the
        rows out of scale beside those before them (``config.outlier_ratio``,
        :func:`bandit_core.head.outlier_rows`), as learning them one at a time does.
        Returns ``(statistics of the rows learnt, indices of the rows left out)``."""
        ratio, gamma = config.outlier_ratio, config.gamma
        if ratio is None or phi.shape[0] == 0:
            return cls.of(phi, rewards, keys, gamma), np.zeros(0, dtype=np.intp)
        refused: list[IntArray] = []
        for key, idx in head_groups(keys, phi.shape[0]).items():
            sums, count = HeadStatistics.squares(before, key, phi.shape[1])
            rows = phi if keys is None else phi[idx]  # one shared head: no copy
            refused.append(idx[outlier_rows(rows, sums, count, ratio, gamma)])
        out = np.sort(np.concatenate(refused))
        if out.size == 0:
            return cls.of(phi, rewards, keys, gamma), out
        kept = np.ones(phi.shape[0], dtype=bool)
        kept[out] = False
        learnt = None if keys is None else [k for k, keep in zip(keys, kept, strict=True) if keep]
        return cls.of(phi[kept], rewards[kept], learnt, gamma), out

    @staticmethod
    def squares(stats: HeadStatistics | None, key: str, dim: int) -> tuple[FloatArray, float]:
        """``(Σ w φ² per feature, Σ w)`` of head ``key``'s rows in ``stats`` (zeros where
        it holds none): what the heads' outlier check judges the next rows by."""
        j = None if stats is None else stats.index.get(key)
        if stats is None or j is None:
            return np.zeros(dim), 0.0
        return np.diagonal(stats.gram[j]), float(stats.count[j])

    @cached_property
    def index(self) -> dict[str, int]:
        """Each key's position."""
        return {k: j for j, k in enumerate(self.keys)}

    def merge(self, later: HeadStatistics, gamma: float = 1.0) -> HeadStatistics:
        """The statistics of these rows followed by ``later``'s: per head
        ``S = γ^{n_later} S + S_later`` (plain sums when γ = 1)."""
        keys = list(self.keys)
        index = {k: i for i, k in enumerate(keys)}
        for key in later.keys:
            if key not in index:
                index[key] = len(keys)
                keys.append(key)
        m, d = len(keys), self.gram.shape[1] if self.keys else later.gram.shape[1]
        gram, xty = np.zeros((m, d, d)), np.zeros((m, d))
        yty, count, rows = np.zeros(m), np.zeros(m), np.zeros(m, dtype=np.int64)
        mine = np.array([index[k] for k in self.keys], dtype=np.intp)
        gram[mine], xty[mine], yty[mine] = self.gram, self.xty, self.yty
        count[mine], rows[mine] = self.count, self.rows
        theirs = np.array([index[k] for k in later.keys], dtype=np.intp)
        if gamma < 1.0:
            decay = gamma ** later.rows.astype(np.float64)
            gram[theirs] *= decay[:, None, None]
            xty[theirs] *= decay[:, None]
            yty[theirs] *= decay
            count[theirs] *= decay
        gram[theirs] += later.gram
        xty[theirs] += later.xty
        yty[theirs] += later.yty
        count[theirs] += later.count
        rows[theirs] += later.rows
        return HeadStatistics(keys, gram, xty, yty, count, rows)

    def to_arrays(self) -> dict[str, NDArray[Any]]:
        return {
            "head_keys": np.array(self.keys, dtype=np.str_),
            "gram": self.gram,
            "xty": self.xty,
            "yty": self.yty,
            "count": self.count,
            "rows": self.rows,
        }

    @classmethod
    def from_arrays(cls, arrays: Any) -> HeadStatistics:
        return cls(
            [str(k) for k in arrays["head_keys"]],
            np.asarray(arrays["gram"]),
            np.asarray(arrays["xty"]),
            np.asarray(arrays["yty"]),
            np.asarray(arrays["count"]),
            np.asarray(arrays["rows"], dtype=np.int64),
        )


def head_groups(keys: Sequence[str] | None, n: int) -> dict[str, IntArray]:
    """Each head key's rows, in order of first appearance (``""``: one shared head)."""
    if keys is None:
        return {"": np.arange(n, dtype=np.intp)}
    order: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        order.setdefault(key, []).append(i)
    return {k: np.asarray(v, dtype=np.intp) for k, v in order.items()}


@runtime_checkable
class LinearHeadPolicy(Protocol):
    """A policy whose learned head is a :class:`BayesianLinearHead` on features it can
    compute for logged rows, so the head can be rebuilt from additive statistics
    computed anywhere (shards, replicas, days) and merged.
    """

    @property
    def name(self) -> str: ...

    @property
    def head(self) -> BayesianLinearHead: ...

    def head_features(
        self, contexts: FloatArray, arm_ids: Sequence[str], arm_features: FloatArray
    ) -> tuple[FloatArray, list[str] | None]:
        """``(φ (n, d), head key of each row or None for one shared head)`` of logged rows:
        ``contexts`` (n, dim_user), ``arm_ids`` (n,), ``arm_features`` (n, dim_arm)."""
        ...

    def state_with_statistics(self, stats: HeadStatistics) -> PolicyState:
        """This policy's state with every head reset to the prior and the heads named in
        ``stats`` loaded with their totals (the rest of the state unchanged)."""
        ...


class _StateOwner(LinearHeadPolicy, Protocol):
    def to_state(self) -> PolicyState: ...


class HeadStatisticsMethods:
    """:meth:`LinearHeadPolicy.state_with_statistics` for a policy that has ``head`` and
    ``to_state`` (one implementation for the linear and the neural-linear policies)."""

    def state_with_statistics(self: _StateOwner, stats: HeadStatistics) -> PolicyState:
        return state_with_statistics(self.to_state(), self.head.config, stats)


def state_with_statistics(
    state: PolicyState, config: Any, stats: HeadStatistics, prefix: str = "head."
) -> PolicyState:
    """``state`` with its head arrays (``prefix``) rebuilt from ``stats``.

    Every head is reset to the prior and the heads with rows load their totals. Per-arm
    heads (the state holds ``arm_ids``; slot 0 is the prior of unseen arms) keep the
    state's arm order; arms it does not know yet are appended in the order they first
    appear (as :meth:`bandit_core.policies.linear.PerArmModel.heads_for` does).
    """
    arrays = dict(state.arrays)
    if "arm_ids" in arrays:
        arms = [str(a) for a in arrays["arm_ids"]]
        known = set(arms)
        arms += [k for k in stats.keys if k not in known]
        slots = {a: i + 1 for i, a in enumerate(arms)}
        head = BayesianLinearHead(config, n_heads=len(arms) + 1)
        arrays["arm_ids"] = np.array(arms, dtype=np.str_)
    else:
        slots = {"": 0}
        head = BayesianLinearHead(config, n_heads=1)
    for j, key in enumerate(stats.keys):
        head.load_statistics(
            stats.gram[j], stats.xty[j], float(stats.yty[j]), float(stats.count[j]), slots[key]
        )
    arrays.update(head.to_arrays(prefix))
    return PolicyState(state.policy, state.config, arrays, state.schema_version)
