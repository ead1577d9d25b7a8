"""The one input contract of every off-policy estimator, checked once.

Arrays follow the Open Bandit Pipeline vocabulary (see ``bandit_core/types.py``):

``reward`` (n_rounds,)
    observed reward of the logged action.
``action`` (n_rounds,)
    index of the logged action, in ``[0, n_actions)``.
``position`` (n_rounds,)
    slot index of the logged action, in ``[0, len_list)`` (all 0 for single-slot logs).
``pscore`` (n_rounds,)
    propensity of the logged action under the logging policy, in ``(0, 1]``.
``action_dist`` (n_rounds, n_actions, len_list)
    the evaluation policy's probability of every action at the logged round's slot; it
    sums to 1 over actions for every round and slot.
``estimated_rewards`` (n_rounds, n_actions, len_list)
    a reward model's prediction for every action and slot (model-based estimators only).

:func:`check_feedback` validates all of it and returns a frozen :class:`BanditFeedback`;
the estimators trust that object and check nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bandit_core._validation import FloatArray, refuse_complex

IntArray = NDArray[np.intp]

#: Absolute tolerance on ``action_dist`` summing to 1 over actions. Monte-Carlo
#: distributions (counts / n_sim) sum to 1 up to round-off, far inside it.
SUM_TOLERANCE = 1e-6

#: The smallest logged propensity an importance weight can divide by (the smallest
#: positive normal float: below it ``1 / pscore`` overflows).
PSCORE_MIN = float(np.finfo(np.float64).tiny)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _float_array(name: str, value: Any, ndim: int, widen: bool = False) -> FloatArray:
    """A finite float64 array of ``ndim`` dimensions (``widen``: a 2-D one gains a last axis)."""
    refuse_complex(name, value)
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{name} must be a {ndim}-D array of numbers; got {_show(value)}."
        ) from exc
    if widen and arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array; got an array of shape {arr.shape}.")
    finite = np.isfinite(arr)
    if not finite.all():
        where = tuple(int(i[0]) for i in np.nonzero(~finite))
        at = where[0] if ndim == 1 else list(where)
        raise ValueError(f"{name} must be finite; got {arr[where].item()!r} at index {at}.")
    return arr


def _index_array(name: str, value: Any, n: int, upper: int, upper_name: str) -> IntArray:
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array; got an array of shape {arr.shape}.")
    if arr.shape[0] != n:
        raise ValueError(
            f"{name} must have length n_rounds = {n} (the length of reward); "
            f"got length {arr.shape[0]}."
        )
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{name} must hold integer indices; got {arr[i].item()!r} at index {i}."
            )
    elif arr.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integer indices; got dtype {arr.dtype}.")
    bad = (arr < 0) | (arr >= upper)  # before the cast, which would wrap huge values
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name} must be in [0, {upper}) ({upper_name} = {upper}); "
            f"got {arr[i].item()!r} at index {i}."
        )
    out: IntArray = arr.astype(np.intp)
    return out


@dataclass(frozen=True)
class BanditFeedback:
    """Validated logged feedback plus the evaluation policy's action distribution.

    Build it with :func:`check_feedback`; the attributes have the shapes documented in the
    module docstring.
    """

    reward: FloatArray
    action: IntArray
    position: IntArray
    pscore: FloatArray
    action_dist: FloatArray
    estimated_rewards: FloatArray | None = None

    @property
    def n_rounds(self) -> int:
        return int(self.reward.shape[0])

    @property
    def n_actions(self) -> int:
        return int(self.action_dist.shape[1])

    @property
    def len_list(self) -> int:
        return int(self.action_dist.shape[2])

    def target_probability(self) -> FloatArray:
        """π_e(a_i | x_i, pos_i) of the logged action, shape (n_rounds,)."""
        rows = np.arange(self.n_rounds)
        out: FloatArray = self.action_dist[rows, self.action, self.position]
        return out

    def importance_weights(self) -> FloatArray:
        """w_i = π_e(a_i | x_i, pos_i) / π_b(a_i | x_i), shape (n_rounds,)."""
        out: FloatArray = self.target_probability() / self.pscore
        return out

    def require_model(self, estimator: str) -> FloatArray:
        """The reward model's predictions, or a ValueError naming ``estimator``."""
        if self.estimated_rewards is None:
            raise ValueError(
                f"{estimator} needs estimated_rewards (n_rounds, n_actions, len_list) from a "
                "reward model; got None."
            )
        return self.estimated_rewards

    def model_at_position(self, estimator: str) -> tuple[FloatArray, FloatArray]:
        """``(q̂(x_i, ·, pos_i) (n, K), q̂(x_i, a_i, pos_i) (n,))`` for model-based estimators."""
        q = self.require_model(estimator)
        rows = np.arange(self.n_rounds)
        q_all = q[rows, :, self.position]
        return q_all, q_all[rows, self.action]

    def direct_method_term(self, estimator: str) -> FloatArray:
        """Σ_a π_e(a | x_i, pos_i) q̂(x_i, a, pos_i), shape (n_rounds,)."""
        q_all, _ = self.model_at_position(estimator)
        pi = self.action_dist[np.arange(self.n_rounds), :, self.position]
        out: FloatArray = np.einsum("nk,nk->n", pi, q_all)
        return out


def check_feedback(
    reward: Any,
    action: Any,
    pscore: Any,
    action_dist: Any,
    position: Any = None,
    estimated_rewards: Any = None,
) -> BanditFeedback:
    """Validate the estimator inputs once and return them as a :class:`BanditFeedback`.

    Parameters
    ----------
    reward : array-like of shape (n_rounds,)
    action : array-like of int, shape (n_rounds,)
    pscore : array-like of shape (n_rounds,), values in (0, 1]
    action_dist : array-like of shape (n_rounds, n_actions, len_list) or (n_rounds, n_actions)
        A 2-D array is read as ``len_list = 1``.
    position : array-like of int, shape (n_rounds,), optional
        Slot of each logged action; ``None`` means slot 0 everywhere.
    estimated_rewards : array-like of shape like ``action_dist``, optional

    Raises
    ------
    ValueError
        Naming the field, the expectation and the offending value: a shape mismatch, a
        non-finite value, a pscore outside (0, 1], an action or position out of range,
        or an ``action_dist`` row that does not sum to 1 at its logged slot.
    """
    r = _float_array("reward", reward, 1)
    n = r.shape[0]
    if n == 0:
        raise ValueError("reward must hold at least one round; got an empty array.")
    ps = _float_array("pscore", pscore, 1)
    if ps.shape[0] != n:
        raise ValueError(
            f"pscore must have length n_rounds = {n} (the length of reward); "
            f"got length {ps.shape[0]}."
        )
    # a subnormal propensity (1e-310) is in (0, 1] but its weight 1/pscore is infinite:
    # every estimate, interval and MLflow metric of the window came out inf or NaN
    bad = (ps < PSCORE_MIN) | (ps > 1.0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"pscore must be in [{PSCORE_MIN:.4g}, 1] (a positive normal float: its "
            f"importance weight must be finite); got {ps[i].item()!r} at index {i}."
        )

    dist = _float_array("action_dist", action_dist, 3, widen=True)
    if dist.shape[0] != n:
        raise ValueError(
            f"action_dist must have shape (n_rounds, n_actions, len_list) with n_rounds = {n}; "
            f"got shape {dist.shape}."
        )
    if dist.shape[1] < 1 or dist.shape[2] < 1:
        raise ValueError(
            f"action_dist must have at least one action and one slot; got shape {dist.shape}."
        )
    if (dist < 0.0).any():
        idx = tuple(int(i[0]) for i in np.nonzero(dist < 0.0))
        raise ValueError(
            f"action_dist must be non-negative; got {dist[idx].item()!r} at {list(idx)}."
        )
    n_actions, len_list = dist.shape[1], dist.shape[2]
    act = _index_array("action", action, n, n_actions, "n_actions")
    if position is None:
        pos = np.zeros(n, dtype=np.intp)
    else:
        pos = _index_array("position", position, n, len_list, "len_list")
    # every estimator reads a round's distribution at its logged slot only: a round with
    # fewer candidates than the window's longest slate has none at the slots it cannot
    # fill (a retrain of a window mixing slates of 3 with 2-candidate decisions failed
    # on every night; audit, stop 54)
    sums = dist[np.arange(n), :, pos].sum(axis=1)
    off = np.abs(sums - 1.0) > SUM_TOLERANCE
    if off.any():
        row = int(np.flatnonzero(off)[0])
        raise ValueError(
            "action_dist must sum to 1 over actions for every round at its logged slot; "
            f"round {row}, slot {int(pos[row])} sums to {sums[row]:.10g}."
        )

    q = None
    if estimated_rewards is not None:
        q = _float_array("estimated_rewards", estimated_rewards, 3, widen=True)
        if q.shape != dist.shape:
            raise ValueError(
                f"estimated_rewards must have the shape of action_dist {dist.shape}; "
                f"got shape {q.shape}."
            )
    return BanditFeedback(r, act, pos, ps, dist, q)
