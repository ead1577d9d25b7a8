"""λ selection for Switch-DR and DRos by estimated MSE."""

from __future__ import annotations

import numpy as np
import pytest

from validation.ope import LAMBDA_GRID, check_feedback, estimate, select_lambda
from validation.ope.tuning import bias_upper_bound


def feedback(n: int = 3000, seed: int = 0, noise: float = 0.0):
    rng = np.random.default_rng(seed)
    k = 5
    pscore_table = rng.dirichlet(np.full(k, 2.0), n)
    action = (rng.random((n, 1)) > np.cumsum(pscore_table, axis=1)).sum(axis=1).clip(max=k - 1)
    pi = rng.dirichlet(np.full(k, 0.3), n)
    q = rng.random((n, k))
    reward = (rng.random(n) < q[np.arange(n), action]).astype(float)
    q_hat = np.clip(q + noise * rng.standard_normal(q.shape), 0, 1)
    return check_feedback(
        reward, action, pscore_table[np.arange(n), action], pi, estimated_rewards=q_hat
    )


def test_bias_bound_is_zero_when_no_weight_changes() -> None:
    assert bias_upper_bound(np.zeros(100)) == 0.0
    z = np.random.default_rng(0).normal(size=400)
    assert bias_upper_bound(z) > abs(z.mean())


def test_switch_picks_a_lambda_that_leaves_all_weights_when_the_model_is_poor() -> None:
    # a badly wrong model makes every switched-off weight costly: λ ≥ max weight wins
    fb = feedback(noise=0.6)
    choice = select_lambda("switch_dr", fb)
    assert choice.lambda_ >= fb.importance_weights().max()
    assert choice.estimated_mse[LAMBDA_GRID.index(choice.lambda_)] == min(choice.estimated_mse)


def test_choice_is_the_first_minimiser_of_the_estimated_mse() -> None:
    fb = feedback(noise=0.05)
    for name in ("switch_dr", "dros"):
        choice = select_lambda(name, fb, grid=(0.0, 0.5, 2.0, 1e6))
        best = int(np.argmin(choice.estimated_mse))
        assert choice.lambda_ == choice.grid[best]
        assert len(choice.estimated_mse) == 4


def test_untuned_estimate_records_the_tuned_lambda() -> None:
    fb = feedback(noise=0.05)
    est = estimate("dros", fb, np.random.default_rng(0), n_resamples=50)
    assert est.params["tuned"] == 1.0
    assert est.params["lambda_"] == select_lambda("dros", fb).lambda_
    fixed = estimate("dros", fb, np.random.default_rng(0), n_resamples=50, lambda_=7.0)
    assert fixed.params == {"lambda_": 7.0}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("ips",), "select_lambda tunes one of: switch_dr, dros; got 'ips'"),
        (
            ("dros", (1.0, -2.0)),
            r"'lambda_' parameter of dros must be a float in \[0, inf\]; got -2\.0",
        ),
        (("dros", ()), "grid must hold at least one candidate"),
    ],
)
def test_bad_arguments_are_rejected(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        select_lambda(args[0], feedback(n=50), *args[1:])
