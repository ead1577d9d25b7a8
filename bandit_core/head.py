"""Bayesian linear regression head with a Normal-inverse-gamma noise prior.

Model (Riquelme, Tucker & Snoek, ICLR 2018, §3 "Linear methods")::

    σ² ~ InvGamma(a0, b0),   θ | σ² ~ N(0, σ² (λ I)⁻¹),   r = θᵀφ + ε,  ε ~ N(0, σ²)

Posterior after observations (Φ, r):

    A = λ I + Σ φ φᵀ            (precision, up to σ²)
    μ = A⁻¹ Σ r φ              (posterior mean)
    a = a0 + n / 2
    b = b0 + ½ (Σ r² − μᵀ A μ)

A head may hold several independent posteriors of the same dimension (a *bank*: one per
arm for disjoint models); every array then has a leading ``n_heads`` axis and all
operations are vectorised across it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bandit_core._growth import append_rows
from bandit_core._validation import (
    NOISE_SHAPE,
    PRIOR_PRECISION,
    Constraint,
    FloatArray,
    Interval,
    OptionalOf,
    as_finite_float,
    as_float_matrix,
    as_float_vector,
    check_generator,
    validate_params,
)
from bandit_core.linalg import (
    GATHER_BYTES,
    factor_is_accurate,
    inv_chol_rank1_update,
    inverse_cholesky,
    sufficient_statistics,
)

IntArray = NDArray[np.intp]

HEAD_PARAMS: dict[str, Constraint] = {
    "dim": Interval(int, 1, None),
    "lambda_prior": PRIOR_PRECISION,
    "a0": NOISE_SHAPE,
    "b0": Interval(float, 0.0, None, closed="neither"),
    "gamma": Interval(float, 0.0, 1.0, closed="right"),
    "window": OptionalOf(Interval(int, 1, None)),
    "refactor_every": Interval(int, 1, None),
    "outlier_ratio": OptionalOf(Interval(float, 1.0, None)),
}

#: Rows a head learns before :attr:`HeadConfig.outlier_ratio` applies: before them its
#: mean squares are too few to say what is out of scale.
OUTLIER_MIN_ROWS = 30

#: Rows that :func:`first_outlier` judges one at a time when their norms do not pass them
#: at once; more are judged together (cumulative sums of every feature).
_SUSPECTS_ONE_BY_ONE = 32


def first_outlier(
    phi: FloatArray, sums: FloatArray, count: float, ratio: float, gamma: float = 1.0
) -> tuple[int, int, float] | None:
    """The first row of ``phi`` (n, d), learnt in order after rows whose (discounted) sums
    of squares per feature are ``sums`` (d,) over ``count`` rows, with a feature more than
    ``ratio`` times the RMS of the rows before it (that feature's, or all features' where
    larger): ``(row, feature, that RMS)``, or None. The check applies once the rows
    before number :data:`OUTLIER_MIN_ROWS`; a row refused is not counted. Each row's
    squares are added as a head adds them (``A += φφᵀ``, discounted by ``gamma``)."""
    if gamma < 1.0:  # discounted recurrences: a row at a time
        squares = phi * phi
        sums = sums.copy()
        for i in range(phi.shape[0]):
            found = _out_of_scale(squares[i], sums, count, ratio)
            if found is not None:
                return i, *found
            sums *= gamma
            sums += squares[i]
            count = gamma * count + 1.0
        return None
    n = phi.shape[0]
    counts = count + np.arange(n, dtype=np.float64)
    applies = counts >= OUTLIER_MIN_ROWS
    if not applies.any():
        return None
    # a row passes by its squared norm (which bounds each of its squares) within ratio²
    # times the mean square of all features before it, a lower bound of every feature's
    # bound there: the rest, usually none, are judged feature by feature
    norms = np.einsum("nd,nd->n", phi, phi)
    totals = float(np.sum(sums)) + np.concatenate(([0.0], np.cumsum(norms[:-1])))
    lowest = (ratio * ratio) * np.maximum(totals, 0.0) / (phi.shape[1] * np.maximum(counts, 1.0))
    suspects = np.flatnonzero(applies & (norms > lowest))
    if suspects.size == 0:
        return None
    if suspects.size <= _SUSPECTS_ONE_BY_ONE:
        prefix, done = np.asarray(sums, dtype=np.float64).copy(), 0
        for i in suspects.tolist():
            prefix += np.einsum("nd,nd->d", phi[done:i], phi[done:i])
            done = i
            found = _out_of_scale(phi[i] * phi[i], prefix, float(counts[i]), ratio)
            if found is not None:
                return i, *found
        return None
    squares = phi * phi
    before = np.cumsum(np.concatenate((sums[None], squares[:-1])), axis=0)
    mean = np.maximum(before[applies], 0.0) / counts[applies, None]
    bound = np.maximum(mean, mean.mean(axis=1, keepdims=True))
    outside = squares[applies] > (ratio * ratio) * bound
    hits = np.flatnonzero(outside.any(axis=1))
    if hits.size == 0:
        return None
    k = int(hits[0])
    j = int(np.flatnonzero(outside[k])[0])
    return int(np.flatnonzero(applies)[k]), j, float(np.sqrt(bound[k, j]))


def outlier_rows(
    phi: FloatArray, sums: FloatArray, count: float, ratio: float, gamma: float = 1.0
) -> IntArray:
    """The rows of ``phi`` (n, d) a head holding ``sums`` (d,) over ``count`` rows refuses
    when it learns them in order, skipping each one it refuses (:func:`first_outlier`
    row by row: a refused row adds nothing to the sums the later rows are judged by).
    What a rebuild from statistics leaves out, so that it learns what learning the rows
    one at a time learns."""
    refused: list[int] = []
    sums = np.asarray(sums, dtype=np.float64).copy()
    start, n = 0, phi.shape[0]
    while start < n:
        found = first_outlier(phi[start:], sums, count, ratio, gamma)
        stop = n if found is None else start + found[0]
        kept = phi[start:stop]
        if gamma < 1.0:
            weights = gamma ** np.arange(kept.shape[0] - 1, -1, -1, dtype=np.float64)
            sums = gamma ** kept.shape[0] * sums + weights @ (kept * kept)
            count = gamma ** kept.shape[0] * count + float(weights.sum())
        else:
            sums = sums + np.einsum("nd,nd->d", kept, kept)
            count += kept.shape[0]
        if found is None:
            break
        refused.append(stop)
        start = stop + 1
    return np.asarray(refused, dtype=np.intp)


def surely_without_outliers(
    peak: FloatArray, sums: FloatArray, count: float, rows: int, ratio: float, gamma: float = 1.0
) -> bool:
    """A test, without the rows, that :func:`outlier_rows` refuses none of ``rows`` rows
    whose largest square per feature is ``peak`` (d,), learnt after rows whose sums of
    squares are ``sums`` over ``count`` rows. Before row ``m`` of them the sums are at least
    ``γ^m sums`` over at most ``count + m`` rows, so every feature's bound there is at least
    ``γ^(rows−1) sums / (count + rows − 1)``. False: the rows themselves decide (a map-reduce
    rebuild reads them again with the sums before them)."""
    if rows == 0 or count + rows - 1 < OUTLIER_MIN_ROWS:
        return True  # no row among them is judged
    low = gamma ** (rows - 1) * np.maximum(sums, 0.0) / (count + rows - 1)
    bound = np.maximum(low, low.mean())
    return bool(np.all(peak <= (ratio * ratio) * bound))


def surely_in_scale(row: FloatArray, sums_total: float, count: float, ratio: float) -> bool:
    """A cheap test that :func:`first_outlier` finds nothing in the one row ``row`` after
    rows whose sums of squares total at least ``sums_total`` over ``count`` rows: its
    squared norm, which bounds every feature's square, within ``ratio²`` times the mean
    square of all features (a lower bound of each feature's bound there). False: the full
    check decides. The full check on every reward cost 35-40 µs (twelve numpy calls)."""
    if count < OUTLIER_MIN_ROWS:
        return True
    bound = ratio * ratio * max(sums_total, 0.0) / (row.shape[0] * count)
    return bool(float(row.dot(row)) <= bound)


def _out_of_scale(
    squares: FloatArray, sums: FloatArray, count: float, ratio: float
) -> tuple[int, float] | None:
    if count < OUTLIER_MIN_ROWS:
        return None
    mean = np.maximum(sums, 0.0) / count
    bound = np.maximum(mean, mean.mean())
    outside = np.flatnonzero(squares > (ratio * ratio) * bound)
    if outside.size == 0:
        return None
    j = int(outside[0])
    return j, float(np.sqrt(bound[j]))


@dataclass(frozen=True)
class HeadConfig:
    """Hyperparameters of a :class:`BayesianLinearHead`.

    Parameters
    ----------
    dim : int
        Feature dimension d.
    lambda_prior : float
        Prior precision λ (ridge strength); the prior on θ is N(0, σ²/λ I).
    a0, b0 : float
        Inverse-gamma prior on the noise variance σ².
    gamma : float in (0, 1]
        Discount for non-stationarity: before each update ``A ← γA + (1−γ)λI``,
        ``b ← γb`` (so ``A_n = λI + Σ γ^{n−i} φ_i φ_iᵀ``). 1 disables discounting.
        A discounted update refactorises the head (O(d³)) because ``(1−γ)λI`` is not a
        low-rank change.
    window : int or None
        Keep only the last ``window`` observations (per head): each update also removes
        the oldest one with a rank-one downdate. Exclusive with ``gamma < 1``.
    refactor_every : int
        Rebuild the factor from the precision after this many rank-one updates, bounding
        the accumulated round-off.
    outlier_ratio : float or None
        A row with a feature ``|φ_j|`` more than this many times the root-mean-square of
        that feature over the rows the head holds (or, where larger, the RMS of all its
        features) is refused (``ValueError``, nothing learnt), once the head holds
        :data:`OUTLIER_MIN_ROWS` rows (discounted, or in its window). One such row is a
        leverage point: it sets the fit in its direction by itself (30 contexts at 1e6
        along the axes took a shared LinUCB trained on 1,500 rows from a mean reward of
        0.98 to 0.03: ``tests/test_leverage.py``). ``None``: no such check.
    """

    dim: int
    lambda_prior: float = 1.0
    a0: float = 6.0
    b0: float = 6.0
    gamma: float = 1.0
    window: int | None = None
    refactor_every: int = 1000
    outlier_ratio: float | None = 100.0

    def __post_init__(self) -> None:
        validate_params("BayesianLinearHead", asdict(self), HEAD_PARAMS)
        if self.window is not None and self.gamma < 1.0:
            raise ValueError(
                "BayesianLinearHead takes either a discount (gamma < 1) or a sliding "
                f"window, not both; got gamma={self.gamma} and window={self.window}."
            )


class BayesianLinearHead:
    """One or more Bayesian linear regression posteriors with O(d²) updates.

    Learned state (trailing underscore) is a set of arrays with a leading ``n_heads``
    axis: ``precision_`` (m, d, d), ``inv_chol_`` (m, d, d) = L⁻¹ with A = L Lᵀ,
    ``xty_`` (m, d) = Σ r φ, ``theta_`` (m, d) = μ, ``yty_`` (m,) = Σ r², ``count_`` (m,).
    """

    def __init__(self, config: HeadConfig, n_heads: int = 1) -> None:
        if not isinstance(config, HeadConfig):
            raise TypeError(f"config must be a HeadConfig; got {type(config).__name__}.")
        validate_params(
            "BayesianLinearHead", {"n_heads": n_heads}, {"n_heads": Interval(int, 1, None)}
        )
        self.config = config
        d = config.dim
        self._prior_inv_chol = np.eye(d) / np.sqrt(config.lambda_prior)
        self.precision_: FloatArray = np.zeros((0, d, d))
        self.inv_chol_: FloatArray = np.zeros((0, d, d))
        self.xty_: FloatArray = np.zeros((0, d))
        self.theta_: FloatArray = np.zeros((0, d))
        self.yty_: FloatArray = np.zeros(0)
        self.count_: FloatArray = np.zeros(0)
        self.pending_: IntArray = np.zeros(0, dtype=np.intp)
        w = config.window or 0
        self.window_features_: FloatArray = np.zeros((0, w, d))
        self.window_rewards_: FloatArray = np.zeros((0, w))
        self.window_size_: IntArray = np.zeros(0, dtype=np.intp)
        self.window_next_: IntArray = np.zeros(0, dtype=np.intp)
        self.add_heads(n_heads)

    # ------------------------------------------------------------------ structure
    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def n_heads(self) -> int:
        return int(self.precision_.shape[0])

    def add_heads(self, k: int, copy_from: int | None = None) -> int:
        """Append ``k`` heads at the prior (or copies of head ``copy_from``), in amortised
        O(k d²) (:func:`bandit_core._growth.append_rows`).

        Returns the index of the first new head.
        """
        first = self.n_heads
        d = self.dim
        if copy_from is None:
            blocks: dict[str, Any] = {
                "precision_": np.broadcast_to(self.config.lambda_prior * np.eye(d), (k, d, d)),
                "inv_chol_": np.broadcast_to(self._prior_inv_chol, (k, d, d)),
                "xty_": np.zeros((k, d)),
                "theta_": np.zeros((k, d)),
                "yty_": np.zeros(k),
                "count_": np.zeros(k),
                "pending_": np.zeros(k, dtype=np.intp),
                "window_features_": np.zeros((k, *self.window_features_.shape[1:])),
                "window_rewards_": np.zeros((k, self.window_rewards_.shape[1])),
                "window_size_": np.zeros(k, dtype=np.intp),
                "window_next_": np.zeros(k, dtype=np.intp),
            }
        else:
            blocks = {
                name: np.repeat(getattr(self, name)[copy_from : copy_from + 1], k, axis=0)
                for name in self._array_names()
            }
        append_rows(self, blocks)
        return first

    def truncate(self, n_heads: int) -> None:
        """Drop the heads from ``n_heads`` on (those :meth:`add_heads` appended for a call
        that then failed); the buffers keep their spare rows."""
        for name in self._array_names():
            setattr(self, name, getattr(self, name)[:n_heads])

    def subset(self, heads: IntArray) -> BayesianLinearHead:
        """A new head holding copies of the given heads, in that order: O(len(heads)·d²),
        whatever the number of heads here (a decision copy:
        :func:`bandit_core.policies.decision_copy.decision_copy`)."""
        out = copy.copy(self)
        for name in self._array_names():
            setattr(out, name, getattr(self, name)[heads])
        return out

    @property
    def bytes_per_head(self) -> int:
        """Bytes of one head's arrays: what one more head adds."""
        return sum(int(getattr(self, name)[:1].nbytes) for name in self._array_names())

    @staticmethod
    def _array_names() -> tuple[str, ...]:
        return (
            "precision_",
            "inv_chol_",
            "xty_",
            "theta_",
            "yty_",
            "count_",
            "pending_",
            "window_features_",
            "window_rewards_",
            "window_size_",
            "window_next_",
        )

    def reset(self, heads: IntArray | None = None) -> None:
        """Return the given heads (all when ``None``) to the prior."""
        idx = np.arange(self.n_heads) if heads is None else np.asarray(heads, dtype=np.intp)
        d = self.dim
        self.precision_[idx] = self.config.lambda_prior * np.eye(d)
        self.inv_chol_[idx] = self._prior_inv_chol
        for name in (
            "xty_",
            "theta_",
            "yty_",
            "count_",
            "pending_",
            "window_size_",
            "window_next_",
        ):
            getattr(self, name)[idx] = 0
        self.window_features_[idx] = 0.0
        self.window_rewards_[idx] = 0.0

    # ------------------------------------------------------------------ learning
    def update(self, phi: Any, reward: Any, head: int = 0) -> None:
        """Add one observation ``(φ, r)`` to head ``head`` in O(d²).

        Raises ``ValueError`` for a wrong dimension, a non-finite value or a head index
        out of range. ``φ`` is a feature map's output (a network's last layer, products of
        user and arm features): finite, but its scale is the map's, so only the reward is
        held to ``MAX_ABS_INPUT`` here; the map's inputs are held to it where they enter.
        """
        x = as_float_vector("phi", phi, self.dim, bound=None)
        r = as_finite_float("reward", reward)
        self._check_head(head)
        self._update(x, r, head)

    def revise(self, phi: Any, old_reward: Any, new_reward: Any, head: int = 0) -> None:
        """Change the reward of an observation ``(φ, old)`` already learnt to ``new``.

        The precision does not change (the same φ was observed once); ``b`` moves by
        ``(new − old) φ`` and ``Σr²`` by ``new² − old²``, so the head equals one that
        learnt ``(φ, new)`` in the first place. This is how a summed duplicate reward is
        applied online. Exact only without discount or window (where the observation's
        weight has changed or it may have left the window): those raise ``ValueError``.
        """
        cfg = self.config
        if cfg.gamma < 1.0 or cfg.window is not None:
            raise ValueError(
                "revise needs a head without discount or window (gamma = 1, window = None); "
                f"got gamma={cfg.gamma}, window={cfg.window}."
            )
        x = as_float_vector("phi", phi, self.dim, bound=None)
        old = as_finite_float("old_reward", old_reward)
        new = as_finite_float("new_reward", new_reward)
        self._check_head(head)

        xty = self.xty_[head] + (new - old) * x
        yty = self.yty_[head] + (new * new - old * old)
        u = self.inv_chol_[head]
        theta = u.T.dot(u.dot(xty))
        self._require_finite(head, theta, yty)
        self.xty_[head] = xty
        self.yty_[head] = yty
        self.theta_[head] = theta

    def _kept_finite(self, head: int, change: Callable[[], None]) -> None:
        """Run ``change`` of head ``head`` whole or not at all: when it raises, or leaves
        the head's mean or Σr² non-finite (finite inputs can still overflow, e.g. against a
        factor that is not the precision's; θ = UᵀU b is not finite when the factor is
        not), the head's arrays are put back as they were and ``ValueError`` is raised."""
        names = self._array_names()
        kept = [getattr(self, name)[head].copy() for name in names]
        try:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # checked below
                change()
        except BaseException:
            self._put_back(head, names, kept)
            raise
        try:
            self._require_finite(head, self.theta_[head], float(self.yty_[head]))
        except ValueError:
            self._put_back(head, names, kept)
            raise

    def _put_back(self, head: int, names: tuple[str, ...], kept: list[Any]) -> None:
        for name, value in zip(names, kept, strict=True):
            getattr(self, name)[head] = value

    def _check_head(self, head: int) -> None:
        if not (0 <= int(head) < self.n_heads):
            raise ValueError(f"head must be an index in [0, {self.n_heads}); got {head}.")

    def _update(self, x: FloatArray, r: float, head: int) -> None:
        """Learn ``(x, r)`` (checked by the caller) in head ``head``, whole or not at all:
        the new factor, ``b``, ``Σr²`` and mean are computed first and written only when
        finite (:meth:`_require_finite`); a windowed head, whose update is several steps,
        keeps a copy of its rows instead (:meth:`_kept_finite`)."""
        cfg = self.config
        self._refuse_outliers(x[None], head)
        if cfg.window is not None:
            self._kept_finite(head, lambda: self._learn_windowed(x, r, head))
            return
        # an overflow is found below (numpy may warn): nothing is written before
        if cfg.gamma < 1.0:
            g = cfg.gamma
            a = g * self.precision_[head]
            a[np.diag_indices_from(a)] += (1.0 - g) * cfg.lambda_prior
            a += np.outer(x, x)
            u = self._discounted_factor(head, a, x)  # raises before any change
            xty = g * self.xty_[head] + r * x
            yty = g * self.yty_[head] + r * r
        else:
            u = inv_chol_rank1_update(self.inv_chol_[head], x, 1.0)
            xty = self.xty_[head] + r * x
            yty = self.yty_[head] + r * r
        theta = u.T.dot(u.dot(xty))
        self._require_finite(head, theta, yty)
        self.inv_chol_[head] = u
        self.xty_[head] = xty
        self.yty_[head] = yty
        if cfg.gamma < 1.0:
            self.precision_[head] = a
            self.count_[head] = cfg.gamma * self.count_[head] + 1.0
            self.pending_[head] = 0
        else:
            precision = self.precision_[head]  # in place through the view
            precision += x[:, None] * x
            self.count_[head] += 1.0
            self.pending_[head] += 1
            if self.pending_[head] >= cfg.refactor_every:
                self._refactor_one(head)
                u = self.inv_chol_[head]
                theta = u.T.dot(u.dot(self.xty_[head]))
        self.theta_[head] = theta

    def _discounted_factor(self, head: int, a: FloatArray, x: FloatArray) -> FloatArray:
        """The factor of ``a = γA + (1 − γ)λI + xxᵀ``: from the formed matrix where that is
        accurate (:func:`bandit_core.linalg.factor_is_accurate`), else from the head's
        factor by rank-one steps that never form it (``U/√γ``, then ``√((1 − γ)λ) e_i``
        for each ``i``, then ``x``: O(d³), as the factorisation). A's diagonal grows to
        about ``x²/(1 − γ)``: with collinear rows of 1e5–1e6 the prior's λ was lost in it,
        12,155 of 20,000 valid rewards were refused ("the Cholesky factorisation failed")
        and the width in the direction no row covers came out 6× too wide (audit, stop
        54)."""
        try:
            u = inverse_cholesky(a)
            if bool(factor_is_accurate(a, u)):
                return u
        except ValueError:
            pass
        cfg = self.config
        u = self.inv_chol_[head] / math.sqrt(cfg.gamma)
        step = np.zeros(self.dim)
        root = math.sqrt((1.0 - cfg.gamma) * cfg.lambda_prior)
        for i in range(self.dim):
            step[i] = root
            u = inv_chol_rank1_update(u, step, 1.0)
            step[i] = 0.0
        return inv_chol_rank1_update(u, x, 1.0)

    @staticmethod
    def _require_finite(head: int, theta: FloatArray, yty: float) -> None:
        """Raise ``ValueError`` unless a head's new mean and ``Σr²`` are finite (θ = UᵀU b
        is not finite when the factor or ``b`` is not): finite inputs can still overflow,
        e.g. against a factor that is not the precision's."""
        if not (np.isfinite(theta).all() and math.isfinite(yty)):
            raise ValueError(
                f"the update would make head {head} non-finite (its factor, statistics or "
                "mean overflow float64); the head is unchanged."
            )

    def _learn_windowed(self, x: FloatArray, r: float, head: int) -> None:
        u = self._rank1(head, x, r, +1.0)
        self._push_window(head, x, r)
        u = self.inv_chol_[head]
        if self.pending_[head] >= self.config.refactor_every:
            self._refactor_one(head)
            u = self.inv_chol_[head]
        self.theta_[head] = u.T.dot(u.dot(self.xty_[head]))

    def _rank1(self, head: int, x: FloatArray, r: float, sign: float) -> FloatArray:
        """Add (sign = +1) or remove (−1) ``(x, r)``; returns the new factor of the head."""
        u = inv_chol_rank1_update(self.inv_chol_[head], x, sign)
        self.inv_chol_[head] = u
        # in place through views: ``a[head] += v`` would also write the row back
        precision, xty = self.precision_[head], self.xty_[head]
        if sign > 0:
            precision += x[:, None] * x
            xty += r * x
            self.yty_[head] += r * r
        else:
            precision -= x[:, None] * x
            xty -= r * x
            self.yty_[head] -= r * r
        self.count_[head] += sign
        self.pending_[head] += 1
        return u

    def _push_window(self, head: int, x: FloatArray, r: float) -> None:
        w = self.config.window
        assert w is not None  # guarded by the caller; not input validation
        slot = int(self.window_next_[head])
        full = self.window_size_[head] == w
        leaving = (
            self.window_features_[head, slot].copy(),
            float(self.window_rewards_[head, slot]),
        )
        self.window_features_[head, slot] = x
        self.window_rewards_[head, slot] = r
        self.window_next_[head] = (slot + 1) % w
        if not full:
            self.window_size_[head] += 1
            return
        try:
            self._rank1(head, *leaving, -1.0)  # raises before any change
        except ValueError:
            # the row leaving weighed so much beside the rest (xᵀA⁻¹x near 1/ε: one
            # context at the input bound among small ones) that taking it out loses the
            # precision in float64. Before, the downdate was refused, the row stayed and
            # every later update of the head tried to remove it again: the head learnt
            # nothing more, ever (numerics pass, stop 50). The head is learnt anew from the
            # rows left in its window instead.
            self._refill_window(head)

    def _refill_window(self, head: int) -> None:
        """Head ``head`` learnt anew from the prior and the rows of its window, in time
        order, by rank-one updates (which never form the precision matrix)."""
        w, cfg = self.window_size_[head], self.config
        order = (int(self.window_next_[head]) + np.arange(w)) % self.config.window
        rows, rewards = self.window_features_[head, order], self.window_rewards_[head, order]
        u = self._prior_inv_chol
        for row in rows:
            u = inv_chol_rank1_update(u, row, 1.0)
        self.inv_chol_[head] = u
        self.precision_[head] = cfg.lambda_prior * np.eye(self.dim) + rows.T @ rows
        self.xty_[head] = rows.T @ rewards
        self.yty_[head] = float(rewards @ rewards)
        self.count_[head] = float(w)
        self.pending_[head] = 0

    def _refactor_one(self, head: int) -> None:
        """The periodic refactorisation that bounds the rank-one updates' round-off. Where
        the precision matrix is numerically singular or ill-conditioned in float64
        (:func:`bandit_core.linalg.factor_is_accurate`: collinear features so large that
        the prior's λ is lost beside their sums) the rank-one factor, which never formed
        it, is the better one: it is kept. Before, a factor of relative error ~1 replaced
        it (10⁴ collinear rows at 1e6: the width in the unobserved direction 4× too
        small), or the failed factorisation was tried again at every update (O(d³)
        each)."""
        self.pending_[head] = 0
        try:
            refactored = inverse_cholesky(self.precision_[head])
        except ValueError:
            return
        if factor_is_accurate(self.precision_[head], refactored):
            self.inv_chol_[head] = refactored

    def refactor(self, heads: IntArray | None = None) -> None:
        """Recompute the factor (and mean) from the precision matrix."""
        idx = np.arange(self.n_heads) if heads is None else np.asarray(heads, dtype=np.intp)
        if idx.size == 0:
            return
        self._set_factor(idx, inverse_cholesky(self.precision_[idx]))

    def _set_factor(self, idx: IntArray, inv_chol: FloatArray) -> None:
        """Install the heads' factors ``inv_chol`` and recompute their means."""
        self.inv_chol_[idx] = inv_chol
        self.pending_[idx] = 0
        u = self.inv_chol_[idx]
        self.theta_[idx] = np.einsum("kji,kj->ki", u, np.einsum("kij,kj->ki", u, self.xty_[idx]))

    def update_batch(self, features: Any, rewards: Any, heads: Any = None) -> None:
        """Add ``n`` observations in order; equal to ``n`` calls of :meth:`update`, whole
        or not at all (a row refused raises ``ValueError`` with the head unchanged).

        Without discount or window the statistics are summed per head and the touched
        heads refactorised once (O(n d² + m d³)) unless that factor would not be accurate
        (:func:`bandit_core.linalg.factor_is_accurate`); otherwise rows are applied in
        order.
        """
        phi, r, hd = self._check_batch(features, rewards, heads)
        if self.config.gamma < 1.0 or self.config.window is not None:
            # whole or not at all: a row refused half-way left the rows before it learnt,
            # and recovery's halving (update_batch_skipping) learnt them again
            self._update_in_order(phi, r, hd)
            return
        touched = np.unique(hd)
        rows = [hd == h for h in touched]
        for h, mine in zip(touched, rows, strict=True):  # before anything changes
            self._refuse_outliers(phi[mine], int(h))
        stats = [sufficient_statistics(phi[mine], r[mine]) for mine in rows]
        precision = self.precision_[touched] + np.stack([gram for gram, *_ in stats])
        # factor first: a precision that is numerically singular raises before any change
        try:
            inv_chol = inverse_cholesky(precision)
            accurate = factor_is_accurate(precision, inv_chol)
        except ValueError:
            inv_chol, accurate = None, np.zeros(touched.size, dtype=bool)
        if not accurate.all():
            # the summed precision of some heads cannot be factored accurately in float64
            # (collinear rows so large that λ is lost beside them): they learn their rows
            # one at a time, as online, and so do all the others (whole or not at all).
            # Before, recovery refused rewards the online head had learnt (23 % of 30,000
            # collinear rows at 1e6) or built a factor unlike the online one.
            self._update_in_order(phi, r, hd)
            return
        assert inv_chol is not None
        self.precision_[touched] = precision
        for h, (_, xty, yty, count) in zip(touched, stats, strict=True):
            self.xty_[h] += xty
            self.yty_[h] += yty
            self.count_[h] += count
        self._set_factor(touched, inv_chol)

    def _refuse_outliers(self, phi: FloatArray, head: int) -> None:
        """Raise ``ValueError`` when a row of ``phi`` (head ``head``'s next rows, in order)
        is out of scale (:attr:`HeadConfig.outlier_ratio`) beside the rows before it: what
        the head holds and the batch's earlier rows. Nothing changes."""
        ratio = self.config.outlier_ratio
        if ratio is None or phi.shape[0] == 0:
            return
        precision, count = self.precision_[head], float(self.count_[head])
        lam = self.config.lambda_prior
        if phi.shape[0] == 1 and surely_in_scale(
            phi[0], float(precision.trace()) - self.dim * lam, count, ratio
        ):
            return  # the usual case of a reward: two numpy calls
        found = first_outlier(phi, np.diagonal(precision) - lam, count, ratio, self.config.gamma)
        if found is None:
            return
        i, j, scale = found
        raise ValueError(
            f"phi[{j}] = {phi[i, j]:g} is more than outlier_ratio={ratio:g} times the "
            f"root-mean-square {scale:.3g} of the rows head {head} holds (a leverage point: "
            "one such row sets the fit in its direction by itself); nothing was learnt."
        )

    def _update_in_order(self, phi: FloatArray, r: FloatArray, hd: IntArray) -> None:
        """``n`` calls of :meth:`_update`, whole or not at all: the first row refused puts
        the heads it touched back as they were and raises its ``ValueError`` (only those
        heads' rows are kept aside: a bank of many arms is not copied per reward)."""
        touched = np.unique(hd)
        names = self._array_names()
        kept = [getattr(self, name)[touched].copy() for name in names]
        try:
            for i in range(phi.shape[0]):
                self._update(phi[i], float(r[i]), int(hd[i]))
        except ValueError:
            for name, value in zip(names, kept, strict=True):
                getattr(self, name)[touched] = value
            raise

    def _check_batch(
        self, features: Any, rewards: Any, heads: Any
    ) -> tuple[FloatArray, FloatArray, IntArray]:
        phi = as_float_matrix("features", features, n_cols=self.dim, bound=None)  # as in update
        r = as_float_vector("rewards", rewards, phi.shape[0])
        if heads is None:
            hd = np.zeros(phi.shape[0], dtype=np.intp)
        else:
            hd = np.asarray(heads)
            if hd.shape != (phi.shape[0],) or not np.issubdtype(hd.dtype, np.integer):
                raise ValueError(
                    f"heads must be an integer array of shape ({phi.shape[0]},); got "
                    f"dtype {hd.dtype} and shape {hd.shape}."
                )
            hd = hd.astype(np.intp)
            if hd.size and (hd.min() < 0 or hd.max() >= self.n_heads):
                raise ValueError(
                    f"heads must be indices in [0, {self.n_heads}); got {hd.min()}..{hd.max()}."
                )
        return phi, r, hd

    def rebuild(
        self, features: Any, rewards: Any, heads: Any = None, chunk_size: int = 8192
    ) -> None:
        """Reset every head and rebuild it from scratch from ``(Φ, r)`` (rows in time order).

        The statistics are accumulated in chunks of ``chunk_size`` rows (O(d²) memory on
        top of the inputs). With a discount the row ``i`` of ``n`` gets weight
        ``γ^{n−1−i}``; with a window only each head's last ``window`` rows are kept.
        """
        phi, r, hd = self._check_batch(features, rewards, heads)
        validate_params(
            "rebuild", {"chunk_size": chunk_size}, {"chunk_size": Interval(int, 1, None)}
        )
        saved = {k: v.copy() for k, v in vars(self).items() if isinstance(v, np.ndarray)}
        try:
            self._rebuild(phi, r, hd, chunk_size)
        except ValueError:  # a precision numerically singular: the head is as it was
            vars(self).update(saved)
            raise

    def _rebuild(self, phi: FloatArray, r: FloatArray, hd: IntArray, chunk_size: int) -> None:
        cfg = self.config
        self.reset()
        lam_eye = cfg.lambda_prior * np.eye(self.dim)
        for h in np.unique(hd):
            rows = np.flatnonzero(hd == h)
            weights = None
            if cfg.window is not None:
                rows = rows[-cfg.window :]
            # the rows the head learns, as if learnt one at a time from the prior
            self._refuse_outliers(phi[rows], int(h))
            if cfg.window is not None:
                k = rows.size
                self.window_features_[h, :k] = phi[rows]
                self.window_rewards_[h, :k] = r[rows]
                self.window_size_[h] = k
                self.window_next_[h] = k % cfg.window
            elif cfg.gamma < 1.0:
                weights = cfg.gamma ** np.arange(rows.size - 1, -1, -1, dtype=np.float64)
            gram, xty, yty, count = sufficient_statistics(phi[rows], r[rows], weights, chunk_size)
            self.precision_[h] = lam_eye + gram
            self.xty_[h] = xty
            self.yty_[h] = yty
            self.count_[h] = count
        self.refactor()

    def load_statistics(self, gram: Any, xty: Any, yty: float, count: float, head: int = 0) -> None:
        """Set head ``head`` from additive statistics ``(Σφφᵀ, Σrφ, Σr², n)``.

        The statistics of shards or replicas add up, so a head can be rebuilt by summing
        them and loading the total here.
        """
        self._check_head(head)
        # sums over many rows: finite, but not bounded by one input's MAX_ABS_INPUT
        g = as_float_matrix("gram", gram, n_cols=self.dim, n_rows=self.dim, bound=None)
        b = as_float_vector("xty", xty, self.dim, bound=None)
        sq = as_finite_float("yty", yty, bound=None)
        n = as_finite_float("count", count, bound=None)
        precision = self.config.lambda_prior * np.eye(self.dim) + g
        inv_chol = inverse_cholesky(precision[None])  # raises before any change
        self.precision_[head] = precision
        self.xty_[head], self.yty_[head], self.count_[head] = b, sq, n
        self._set_factor(np.array([head]), inv_chol)

    # ------------------------------------------------------------------ inference
    def mean(self, features: FloatArray, heads: IntArray | None = None) -> FloatArray:
        """Posterior mean score ``μᵀφ`` per row; ``heads`` (n,) picks each row's head."""
        if heads is None:
            out: FloatArray = features @ self.theta_[0]
            return out
        out = np.einsum("nd,nd->n", features, self.theta_[heads])
        return out

    def project(self, features: FloatArray, heads: IntArray | None = None) -> FloatArray:
        """``U φ`` per row (n, d): ``‖Uφ‖² = φᵀA⁻¹φ`` and ``(Uφ)·z`` is a posterior draw."""
        if heads is None:
            out: FloatArray = features @ self.inv_chol_[0].T
            return out
        out = np.einsum("nij,nj->ni", self.inv_chol_[heads], features)
        return out

    def width(self, features: FloatArray, heads: IntArray | None = None) -> FloatArray:
        """``√(φᵀ A⁻¹ φ)`` per row: the LinUCB confidence width before scaling by α."""
        z = self.project(features, heads)
        out: FloatArray = np.sqrt(np.einsum("ij,ij->i", z, z))
        return out

    def noise_posterior(self, heads: IntArray | None = None) -> tuple[FloatArray, FloatArray]:
        """Inverse-gamma posterior ``(a, b)`` of σ² for each requested head."""
        idx = slice(None) if heads is None else heads
        cfg = self.config
        a = cfg.a0 + 0.5 * self.count_[idx]
        fit = self.yty_[idx] - np.einsum("...d,...d->...", self.theta_[idx], self.xty_[idx])
        b = cfg.b0 + 0.5 * np.maximum(fit, 0.0)
        return a, b

    def sample_noise_variance(
        self, rng: np.random.Generator, size: tuple[int, ...], heads: IntArray | None = None
    ) -> FloatArray:
        """Draws of σ² ~ InvGamma(a, b); ``size`` ends with the number of requested heads
        (all heads when ``heads`` is None)."""
        a, b = self.noise_posterior(heads)
        out: FloatArray = b / rng.gamma(a, 1.0, size=size)
        return out

    def sample_theta(
        self, n: int, rng: np.random.Generator, head: int = 0, sample_noise: bool = True
    ) -> FloatArray:
        """``n`` posterior draws of θ for one head, shape (n, d).

        ``θ = μ + σ Uᵀ z``; with ``sample_noise`` σ² is drawn from its inverse-gamma
        posterior for every draw (Riquelme et al. 2018), else σ = 1.
        """
        check_generator(rng)
        self._check_head(head)
        z = rng.standard_normal((n, self.dim))
        step = z @ self.inv_chol_[head]
        if sample_noise:
            step = step * np.sqrt(self.sample_noise_variance(rng, (n, 1), np.array([head])))
        out: FloatArray = self.theta_[head] + step
        return out

    def covariance(self, head: int = 0) -> FloatArray:
        """Posterior covariance of θ up to σ²: ``A⁻¹ = Uᵀ U`` (d, d)."""
        self._check_head(head)
        u = self.inv_chol_[head]
        out: FloatArray = u.T @ u
        return out

    # ------------------------------------------------------------------ state
    def to_arrays(self, prefix: str = "head.") -> dict[str, NDArray[Any]]:
        return {
            prefix + name.rstrip("_"): getattr(self, name).copy() for name in self._array_names()
        }

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)

    @classmethod
    def from_arrays(
        cls, config: HeadConfig, arrays: dict[str, NDArray[Any]], prefix: str = "head."
    ) -> BayesianLinearHead:
        n_heads = int(arrays[prefix + "precision"].shape[0])
        head = cls(config, n_heads=max(n_heads, 1))
        for name in cls._array_names():
            value = np.asarray(arrays[prefix + name.rstrip("_")])
            expected = getattr(head, name).shape
            if n_heads == 0:
                expected = (0, *expected[1:])
            if value.shape != expected:
                raise ValueError(
                    f"state array {prefix + name.rstrip('_')!r} must have shape {expected}; "
                    f"got {value.shape}."
                )
            setattr(head, name, value.astype(getattr(head, name).dtype, copy=True))
        head._check_restored(prefix)
        return head

    def _check_restored(self, prefix: str) -> None:
        """What every head this class builds satisfies, checked on a restored state (a
        tampered one otherwise decided, learnt online and failed at the next restart or
        rebuild, which refactors from the precision): a symmetric precision with a
        positive diagonal, a lower-triangular factor with a positive diagonal, the mean that
        factor and ``xty`` give, counts not negative, the sliding window's bookkeeping within
        the window (size ≤ w, the next slot < w, and equal to the size until full). Σr²
        is not checked: a window's adds and removes of large rewards leave it a rounding
        error below 0 (the noise posterior clamps it). The precision is read in blocks of
        heads, so the check holds no copy of the whole stack."""

        def refuse(array: str, why: str) -> None:
            raise ValueError(f"state array {prefix + array!r} {why}.")

        p = self.precision_
        step = max(1, GATHER_BYTES // max(p[:1].nbytes, 1))
        for start in range(0, p.shape[0], step):
            block = p[start : start + step]
            if not (np.diagonal(block, axis1=1, axis2=2) > 0.0).all():
                refuse("precision", "must have a positive diagonal (a precision matrix)")
            scale = 1.0 + np.abs(block).max(axis=(1, 2))
            asymmetry = np.abs(block - block.transpose(0, 2, 1)).max(axis=(1, 2))
            if not (asymmetry <= 1e-8 * scale).all():
                refuse("precision", "must be symmetric (a precision matrix)")
        u, xty, theta = self.inv_chol_, self.xty_, self.theta_
        step = max(1, GATHER_BYTES // max(u[:1].nbytes, 1))
        for start in range(0, u.shape[0], step):
            block = u[start : start + step]
            size = np.abs(block).max(axis=(1, 2))  # a batched solve leaves ~ε above it
            if (np.abs(np.triu(block, 1)).max(axis=(1, 2)) > 1e-9 * size).any() or not (
                np.diagonal(block, axis1=1, axis2=2) > 0.0
            ).all():
                refuse("inv_chol", "must be lower triangular with a positive diagonal")
            # θ = UᵀU b is what every update computes; a θ that is not this decided with a
            # mean that no learning gave (and the next update silently replaced it). The
            # bound is round-off's, |U|²|b|·d·ε, with a wide margin.
            t = theta[start : start + step]
            b = xty[start : start + step]
            with np.errstate(over="ignore", invalid="ignore"):  # finite, near the limit
                mean = np.einsum("kji,kj->ki", block, np.einsum("kij,kj->ki", block, b))
                scale = (block * block).sum(axis=(1, 2)) * np.abs(b).max(axis=1, initial=0.0)
                gap = np.abs(t - mean).max(axis=1, initial=0.0)
            # gap 0 holds whatever the scale (a factor near the limit times xty = 0: NaN)
            if not ((gap == 0.0) | (gap <= 1e-9 * (scale + 1e-300))).all():
                refuse("theta", "must be the mean its factor and statistics give (UᵀU·xty)")
        for name in ("count", "pending"):
            if (getattr(self, name + "_") < -1e-6).any():
                refuse(name, "must not be negative")
        w = self.config.window or 0
        size, nxt = self.window_size_, self.window_next_
        if (size < 0).any() or (size > w).any():
            refuse("window_size", f"must lie in [0, {w}] (the window)")
        if (nxt < 0).any() or (nxt >= max(w, 1)).any() or ((size < w) & (nxt != size)).any():
            refuse("window_next", f"must lie in [0, {w}) and equal window_size until it is full")
