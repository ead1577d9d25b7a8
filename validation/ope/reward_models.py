"""Cross-fitted reward models q̂(x, a, k) for the model-based estimators (DM, DR, ...).

A round's prediction never comes from a model that saw that round: the rounds are split
into K folds and fold j is predicted by a model fitted on the other folds
(cross-fitting; Chernozhukov et al. 2018, Narita, Yasui & Yata 2021). The model is
pluggable: anything with ``fit(X, y)`` and ``predict(X)`` — a scikit-learn regressor, a
scikit-learn classifier (its ``predict_proba[:, 1]`` is used), or a torch model wrapped
in that interface. Features of round i for action a are ``[x_i ; action_features[a]]``;
pass an identity block in ``action_features`` to give the model an arm one-hot.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from bandit_core._validation import (
    FloatArray,
    Interval,
    IsBool,
    as_float_matrix,
    as_float_vector,
    check_generator,
    validate_params,
)

IntArray = NDArray[np.intp]


@runtime_checkable
class RewardRegressor(Protocol):
    """What a reward model must offer (scikit-learn's estimator interface)."""

    def fit(self, X: Any, y: Any) -> Any: ...

    def predict(self, X: Any) -> Any: ...


class ConstantModel:
    """Predicts one value: the fallback when a training subset holds one reward value
    (a classifier cannot be fitted) or no rows at all."""

    def __init__(self, value: float) -> None:
        self.value = float(value)

    def fit(self, X: Any, y: Any) -> ConstantModel:
        return self

    def predict(self, X: Any) -> FloatArray:
        return np.full(np.asarray(X).shape[0], self.value)


class RidgeModel:
    """Ridge regression in closed form, ``β = (XᵀX + αI)⁻¹ Xᵀy`` with an unpenalised
    intercept: the default reward model (numpy only, deterministic).

    Parameters
    ----------
    alpha : float
        L2 penalty, ≥ 0.
    """

    def __init__(self, alpha: float = 1.0) -> None:
        validate_params("RidgeModel", {"alpha": alpha}, {"alpha": Interval(float, 0.0, None)})
        self.alpha = float(alpha)

    def fit(self, X: Any, y: Any) -> RidgeModel:
        x = as_float_matrix("X", X)
        t = as_float_vector("y", y, x.shape[0], bound=None)  # a target's scale is harmless
        mean_x, mean_y = x.mean(axis=0), float(t.mean())
        xc = x - mean_x
        gram = xc.T @ xc + self.alpha * np.eye(x.shape[1])
        self.coef_ = np.linalg.lstsq(gram, xc.T @ (t - mean_y), rcond=None)[0]
        self.intercept_ = mean_y - float(mean_x @ self.coef_)
        return self

    def fit_moments(self, mean: FloatArray, m2: FloatArray) -> RidgeModel:
        """The same fit from the moments of ``[X, y]`` — ``mean`` (d + 1,) and the centred
        cross-products ``m2`` (d + 1, d + 1) — which merge over shards
        (:class:`validation.ope.moments.Moments`): ``β = (M2_XX + αI)⁻¹ M2_Xy``."""
        d = mean.shape[0] - 1
        gram = m2[:d, :d] + self.alpha * np.eye(d)
        self.coef_ = np.linalg.lstsq(gram, m2[:d, d], rcond=None)[0]
        self.intercept_ = float(mean[d] - mean[:d] @ self.coef_)
        return self

    def predict(self, X: Any) -> FloatArray:
        out: FloatArray = np.asarray(X, dtype=np.float64) @ self.coef_ + self.intercept_
        return out


def predict_reward(model: Any, X: FloatArray) -> FloatArray:
    """Expected reward: ``predict_proba[:, 1]`` for fitted binary classifiers (they have
    ``classes_``), ``predict`` otherwise."""
    proba = getattr(model, "predict_proba", None)
    if proba is not None and hasattr(model, "classes_"):
        out = np.asarray(proba(X), dtype=np.float64)
        classes = [c.item() if hasattr(c, "item") else c for c in model.classes_]
        if out.ndim != 2 or out.shape[1] != 2 or 1 not in classes:
            raise ValueError(
                "a classifier reward model must be binary with classes {0, 1}; "
                f"got classes {classes}."
            )
        return out[:, classes.index(1)]
    return np.asarray(model.predict(X), dtype=np.float64).reshape(-1)


def fold_ids(n_rounds: int, n_folds: int, rng: np.random.Generator) -> IntArray:
    """A random balanced assignment of ``n_rounds`` rounds to ``n_folds`` folds, shape (n,)."""
    validate_params(
        "fold_ids",
        {"n_rounds": n_rounds, "n_folds": n_folds},
        {"n_rounds": Interval(int, 1, None), "n_folds": Interval(int, 2, None)},
    )
    folds = np.empty(n_rounds, dtype=np.intp)
    folds[check_generator(rng).permutation(n_rounds)] = np.arange(n_rounds) % n_folds
    return folds


def design_rows(contexts: FloatArray, action_features: FloatArray, actions: IntArray) -> FloatArray:
    """Features ``[x_i ; action_features[a_i]]`` of paired rows, shape (n, du + da)."""
    return np.hstack([contexts, action_features[actions]])


def design_all_actions(contexts: FloatArray, action_features: FloatArray) -> FloatArray:
    """Features of every (round, action) pair, shape (n · K, du + da), action fastest."""
    n, k = contexts.shape[0], action_features.shape[0]
    left = np.repeat(contexts, k, axis=0)
    right = np.tile(action_features, (n, 1))
    return np.hstack([left, right])


@dataclass(frozen=True)
class CrossFitRewardModel:
    """K-fold cross-fitted reward model.

    Parameters
    ----------
    make_model : callable returning a fresh model
        Called once per (fold, slot) pair; the model needs ``fit`` and ``predict`` (or a
        binary classifier's ``predict_proba``).
    n_folds : int
        Number of folds K ≥ 2.
    per_position : bool
        Fit one model per slot (the Open Bandit Pipeline's choice), or one model for all
        slots whose prediction is shared by every slot.
    """

    make_model: Callable[[], Any]
    n_folds: int = 3
    per_position: bool = True

    def __post_init__(self) -> None:
        if not callable(self.make_model):
            raise TypeError(
                "make_model must be a callable returning a fresh model; "
                f"got {type(self.make_model).__name__}."
            )
        validate_params(
            "CrossFitRewardModel",
            {"n_folds": self.n_folds, "per_position": self.per_position},
            {"n_folds": Interval(int, 2, None), "per_position": IsBool()},
        )

    def _fit_one(self, X: FloatArray, y: FloatArray, fallback: float) -> Any:
        if y.shape[0] == 0:
            return ConstantModel(fallback)
        if np.all(y == y[0]):
            return ConstantModel(float(y[0]))
        model = self.make_model()
        if not isinstance(model, RewardRegressor):
            raise TypeError(
                "make_model() must return an object with fit and predict; "
                f"got {type(model).__name__}."
            )
        model.fit(X, y)
        return model

    def fit_predict(
        self,
        contexts: Any,
        actions: Any,
        rewards: Any,
        action_features: Any,
        positions: Any = None,
        len_list: int = 1,
        *,
        folds: Any = None,
        rng: np.random.Generator | None = None,
    ) -> FloatArray:
        """Cross-fitted predictions for every round, action and slot.

        Parameters
        ----------
        contexts : array-like (n_rounds, dim_context)
        actions : array-like of int (n_rounds,)
            Logged action indices into ``action_features``.
        rewards : array-like (n_rounds,)
        action_features : array-like (n_actions, dim_action)
        positions : array-like of int (n_rounds,), optional
            Slot of each round, in ``[0, len_list)``; ``None`` means slot 0.
        len_list : int
            Number of slots.
        folds : array-like of int (n_rounds,), optional
            Fold of each round, in ``[0, n_folds)``; drawn with ``rng`` when absent.
        rng : numpy.random.Generator, optional
            Needed when ``folds`` is absent.

        Returns
        -------
        ndarray of shape (n_rounds, n_actions, len_list)
        """
        x = as_float_matrix("contexts", contexts)
        n = x.shape[0]
        feats = as_float_matrix("action_features", action_features)
        k = feats.shape[0]
        r = as_float_vector("rewards", rewards, n, bound=None)  # as in LoggedBatch
        a = _indices("actions", actions, n, k)
        validate_params("fit_predict", {"len_list": len_list}, {"len_list": Interval(int, 1, None)})
        pos = (
            np.zeros(n, dtype=np.intp)
            if positions is None
            else _indices("positions", positions, n, len_list)
        )
        if folds is None:
            if rng is None:
                raise ValueError(
                    "fit_predict needs folds or rng (a numpy.random.Generator) to draw them."
                )
            fold = fold_ids(n, self.n_folds, rng)
        else:
            fold = _indices("folds", folds, n, self.n_folds)

        models = self.fit_folds(design_rows(x, feats, a), r, pos, fold, len_list)
        return predict_all_actions(models, x, feats, fold, len_list)

    def fit_folds(
        self,
        X: FloatArray,
        rewards: FloatArray,
        positions: IntArray,
        folds: IntArray,
        len_list: int,
    ) -> list[dict[int | None, FoldModel]]:
        """The cross-fitted models: per fold j, fitted on the other folds' rows of ``X``
        (one per slot, or one for all under key None) — what :meth:`fit_predict`
        predicts fold j's rounds with; a caller may predict them in pieces."""
        slots = range(len_list) if self.per_position else (None,)
        out: list[dict[int | None, FoldModel]] = []
        for j in range(self.n_folds):
            train = folds != j
            fallback = float(rewards[train].mean()) if train.any() else float(rewards.mean())
            fitted: dict[int | None, FoldModel] = {}
            if (folds == j).any():
                for slot in slots:
                    rows = train if slot is None else train & (positions == slot)
                    model = self._fit_one(X[rows], rewards[rows], fallback)
                    seen = rewards[rows]
                    bounds = (float(seen.min()), float(seen.max())) if seen.size else None
                    fitted[slot] = FoldModel(model, bounds)
            out.append(fitted)
        return out


def predict_all_actions(
    models: Sequence[Mapping[int | None, FoldModel]],
    contexts: FloatArray,
    action_features: FloatArray,
    folds: IntArray,
    len_list: int,
) -> FloatArray:
    """Every (round, action, slot) predicted by the models of the round's fold
    (:meth:`CrossFitRewardModel.fit_folds`), shape (n_rounds, n_actions, len_list)."""
    n, k = contexts.shape[0], action_features.shape[0]
    out = np.empty((n, k, len_list))
    for j, fitted in enumerate(models):
        test = np.flatnonzero(folds == j)
        if test.size == 0:
            continue
        grid = design_all_actions(contexts[test], action_features)
        for slot, model in fitted.items():
            pred = model.predict(grid).reshape(test.size, k)
            if slot is None:
                out[test] = pred[:, :, None]
            else:
                out[test, :, slot] = pred
    return out


@dataclass(frozen=True)
class FoldModel:
    """One fitted model of a fold and the range of the rewards it was fitted on: a mean
    reward lies within the rewards it is a mean of, so its predictions are clipped to it
    (a model that extrapolates — one context of 1e6 made ridge predict −25 for 0/1
    clicks — stays within the rewards)."""

    model: Any
    bounds: tuple[float, float] | None

    def predict(self, X: FloatArray) -> FloatArray:
        pred = predict_reward(self.model, X)
        if self.bounds is not None:
            np.clip(pred, *self.bounds, out=pred)
        return pred


def _indices(name: str, value: Any, n: int, upper: int) -> IntArray:
    arr = np.asarray(value)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must be a 1-D array of length {n}; got shape {arr.shape}.")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer indices; got dtype {arr.dtype}.")
    bad = (arr < 0) | (arr >= upper)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} must be in [0, {upper}); got {arr[i]} at index {i}.")
    return arr.astype(np.intp)
