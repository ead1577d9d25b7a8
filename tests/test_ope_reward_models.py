"""Cross-fitted reward models: no round predicted by a model that saw it; pluggable models."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge

from validation.ope import ConstantModel, CrossFitRewardModel, RidgeModel, fold_ids


class Spy:
    """Records the rows it was fitted on; predicts the first feature."""

    fitted: ClassVar[list[np.ndarray]] = []

    def fit(self, X: np.ndarray, y: np.ndarray) -> Spy:
        Spy.fitted.append(X.copy())
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return X[:, 0]


class TorchLinear:
    """A minimal torch reward model in the fit/predict interface (least squares)."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> TorchLinear:
        x = torch.as_tensor(np.hstack([X, np.ones((X.shape[0], 1))]), dtype=torch.float64)
        t = torch.as_tensor(y, dtype=torch.float64)[:, None]
        # SVD driver with a cutoff: the one-hot arm block plus the intercept is rank
        # deficient, where the default pivoted-QR driver picks a basic solution that can
        # change from run to run; the minimum-norm one is unique
        self.beta = torch.linalg.lstsq(x, t, rcond=1e-10, driver="gelsd").solution
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.hstack([X, np.ones((X.shape[0], 1))]), dtype=torch.float64)
        return (x @ self.beta)[:, 0].numpy()


def data(n: int = 120, k: int = 3, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    # the first context column is a unique row id, so a fitted row can be recognised
    contexts = np.column_stack([np.arange(n, dtype=float), rng.standard_normal((n, 2))])
    actions = rng.integers(0, k, n)
    feats = np.hstack([rng.standard_normal((k, 2)), np.eye(k)])
    rewards = contexts[:, 1] + feats[actions, 0] + 0.1 * rng.standard_normal(n)
    return {"contexts": contexts, "actions": actions, "rewards": rewards, "action_features": feats}


def test_no_round_is_predicted_by_a_model_that_saw_it() -> None:
    Spy.fitted = []
    d = data()
    folds = fold_ids(120, 4, np.random.default_rng(1))
    CrossFitRewardModel(Spy, n_folds=4).fit_predict(**d, folds=folds)
    assert len(Spy.fitted) == 4
    for j, X in enumerate(Spy.fitted):
        seen = set(X[:, 0].astype(int))
        assert seen == set(np.flatnonzero(folds != j))


def test_one_model_per_slot_sees_only_its_slot() -> None:
    Spy.fitted = []
    d = data()
    positions = np.arange(120) % 2
    folds = np.arange(120) // 40  # 3 contiguous folds
    out = CrossFitRewardModel(Spy, n_folds=3, per_position=True).fit_predict(
        **d, positions=positions, len_list=2, folds=folds
    )
    assert out.shape == (120, 3, 2)
    assert len(Spy.fitted) == 6
    for X in Spy.fitted:
        rows = X[:, 0].astype(int)
        assert len(set(positions[rows])) == 1


def test_shared_model_predicts_every_slot_the_same() -> None:
    out = CrossFitRewardModel(RidgeModel, n_folds=3, per_position=False).fit_predict(
        **data(), positions=np.arange(120) % 3, len_list=3, rng=np.random.default_rng(0)
    )
    np.testing.assert_array_equal(out[:, :, 0], out[:, :, 2])


def test_predictions_cover_every_action() -> None:
    d = {**data(), "rewards": np.where(np.arange(120) % 2 == 0, -1000.0, 1000.0)}
    out = CrossFitRewardModel(Spy, n_folds=2).fit_predict(**d, rng=np.random.default_rng(0))
    # Spy predicts the first feature (the row id) for every action: one value per row
    np.testing.assert_array_equal(out[:, :, 0], np.repeat(np.arange(120.0)[:, None], 3, axis=1))


def test_predictions_stay_within_the_rewards_they_were_fitted_on() -> None:
    """A mean reward cannot leave the range of the rewards: a model that extrapolates
    (one context of 1e6 made ridge predict −25 for 0/1 clicks) is clipped to it."""
    d = data()
    out = CrossFitRewardModel(Spy, n_folds=2).fit_predict(**d, rng=np.random.default_rng(0))
    r = np.asarray(d["rewards"])
    assert out.min() >= r.min() and out.max() <= r.max()
    assert (out == r.max()).any()  # Spy's row ids above the range were clipped


def test_fold_assignment_is_balanced_and_seeded() -> None:
    a = fold_ids(103, 5, np.random.default_rng(9))
    b = fold_ids(103, 5, np.random.default_rng(9))
    np.testing.assert_array_equal(a, b)
    assert sorted(np.bincount(a)) == [20, 20, 21, 21, 21]


def test_single_class_training_subsets_fall_back_to_a_constant() -> None:
    d = data()
    d["rewards"] = np.zeros(120)
    d["rewards"][:3] = 1.0  # only fold-0 rows have clicks with these folds
    folds = np.repeat([0, 1, 2], 40)
    model = CrossFitRewardModel(lambda: LogisticRegression(max_iter=1000), n_folds=3)
    out = model.fit_predict(**d, folds=folds)
    # fold 0 is predicted by a model trained on folds 1-2, which hold no click
    np.testing.assert_array_equal(out[:40], 0.0)
    assert (out[40:] > 0.0).all() and (out[40:] < 1.0).all()


def test_classifiers_give_click_probabilities() -> None:
    d = data()
    d["rewards"] = (d["rewards"] > 0).astype(float)
    out = CrossFitRewardModel(lambda: LogisticRegression(max_iter=1000)).fit_predict(
        **d, rng=np.random.default_rng(0)
    )
    assert ((out > 0) & (out < 1)).all()


def test_ridge_model_matches_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((200, 5)), rng.standard_normal(200)
    ours = RidgeModel(alpha=2.5).fit(X, y)
    ref = Ridge(alpha=2.5).fit(X, y)
    np.testing.assert_allclose(ours.coef_, ref.coef_, rtol=1e-10)
    assert ours.intercept_ == pytest.approx(ref.intercept_, rel=1e-10)
    np.testing.assert_allclose(ours.predict(X), ref.predict(X), rtol=1e-10)


def test_a_torch_model_plugs_in() -> None:
    d = data(n=300)
    torch_out = CrossFitRewardModel(TorchLinear).fit_predict(**d, rng=np.random.default_rng(0))
    ridge_out = CrossFitRewardModel(lambda: RidgeModel(alpha=0.0)).fit_predict(
        **d, rng=np.random.default_rng(0)
    )
    np.testing.assert_allclose(torch_out, ridge_out, rtol=1e-8, atol=1e-8)


def test_constant_model() -> None:
    assert (
        ConstantModel(0.25).fit(np.zeros((2, 1)), [0, 0]).predict(np.zeros((3, 4))).tolist()
        == [0.25] * 3
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"make_model": 3}, TypeError, "make_model must be a callable"),
        (
            {"make_model": RidgeModel, "n_folds": 1},
            ValueError,
            r"'n_folds' parameter of CrossFitRewardModel",
        ),
    ],
)
def test_bad_configuration_is_rejected(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        CrossFitRewardModel(**kwargs)


def test_bad_inputs_are_rejected() -> None:
    model = CrossFitRewardModel(RidgeModel)
    d = data()
    with pytest.raises(ValueError, match="fit_predict needs folds or rng"):
        model.fit_predict(**d)
    with pytest.raises(ValueError, match=r"actions must be in \[0, 3\); got 3"):
        model.fit_predict(**{**d, "actions": np.full(120, 3)}, rng=np.random.default_rng(0))
    with pytest.raises(
        TypeError, match="make_model\\(\\) must return an object with fit and predict"
    ):
        CrossFitRewardModel(lambda: object()).fit_predict(**d, rng=np.random.default_rng(0))
