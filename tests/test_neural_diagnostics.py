"""Diagnosing linear failure: the linear head and a network on one split."""

from __future__ import annotations

import numpy as np
import pytest

from bandit_core.diagnostics import diagnose_linear_failure

FAST = {"hidden": (32,), "epochs": 200, "max_train_steps": 600, "device": "cpu"}


def test_a_ring_shaped_reward_is_flagged_as_a_linear_failure() -> None:
    """Seeded: reward 5·1[‖x‖ ≥ 0.7] on the square has no linear signal; the network's
    validation MSE is far more than 20% lower (measured: about 6.0 → 1.8)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.0, 1.0, (1500, 2))
    r = 5.0 * (np.linalg.norm(x, axis=1) >= 0.7) + 0.01 * rng.standard_normal(1500)
    report = diagnose_linear_failure(x, r, np.random.default_rng(1), **FAST)
    assert report.neural_is_better and report.relative_improvement > 0.5
    assert report.n_train == 1200 and report.n_validation == 300
    assert "neural model recommended" in report.summary()
    assert report.as_metrics()["neural_is_better"] == 1.0


def test_a_linear_reward_is_not_flagged() -> None:
    """Seeded: for r = xᵀβ + N(0, 0.1²) both models reach the noise floor (0.01); the
    network cannot be 20% better than the exact model class."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1000, 4))
    r = x @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.1 * rng.standard_normal(1000)
    report = diagnose_linear_failure(x, r, np.random.default_rng(3), **FAST)
    assert not report.neural_is_better
    assert report.linear_val_loss == pytest.approx(0.01, rel=0.3)
    assert "linear model suffices" in report.summary()


def test_the_linear_model_can_use_its_own_features() -> None:
    """With x² among its features the linear model fits a quadratic exactly: no failure."""
    rng = np.random.default_rng(4)
    x = rng.uniform(-1.0, 1.0, (600, 1))
    r = 3.0 * x[:, 0] ** 2 + 0.05 * rng.standard_normal(600)
    plain = diagnose_linear_failure(x, r, np.random.default_rng(5), **FAST)
    rich = diagnose_linear_failure(
        x, r, np.random.default_rng(5), linear_inputs=np.hstack([x, x**2]), **FAST
    )
    assert plain.neural_is_better and not rich.neural_is_better


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"validation_fraction": 1.0},
            "'validation_fraction' parameter of diagnose_linear_failure",
        ),
        ({"margin": -0.1}, "'margin' parameter"),
        ({"loss": "l1"}, "'loss' parameter"),
    ],
)
def test_bad_options_raise(kwargs: dict[str, object], message: str) -> None:
    x = np.zeros((50, 2))
    with pytest.raises(ValueError, match=message):
        diagnose_linear_failure(x, np.zeros(50), np.random.default_rng(0), **kwargs)  # type: ignore[arg-type]


def test_bad_data_raises() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="rewards must have length 10; got length 9"):
        diagnose_linear_failure(np.zeros((10, 2)), np.zeros(9), rng)
    with pytest.raises(ValueError, match="at least 5 rows on each side of the split; got 12 rows"):
        diagnose_linear_failure(np.zeros((12, 2)), np.zeros(12), rng)
    with pytest.raises(ValueError, match="inputs must be finite"):
        diagnose_linear_failure(np.full((50, 2), np.nan), np.zeros(50), rng)
    with pytest.raises(TypeError, match=r"rng must be a numpy\.random\.Generator"):
        diagnose_linear_failure(np.zeros((50, 2)), np.zeros(50), 0)  # type: ignore[arg-type]
