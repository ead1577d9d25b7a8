"""The public training entry points of neural policies: staged retraining (the nightly
learning curve) and the point prediction, used by ``training.train`` instead of private
members."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bandit_core import make_policy
from bandit_core.head_statistics import LinearHeadPolicy
from tests.policy_factories import NEURAL_SMALL


def _filled(name: str, epochs: int = 6) -> object:
    options = {**NEURAL_SMALL, "retrain_every": 10_000, "epochs": epochs, "max_train_steps": 50}
    policy = make_policy(name, **options, loss="mse")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, NEURAL_SMALL["dim_user"]))
    feats = rng.standard_normal((60, NEURAL_SMALL["dim_arm"]))
    policy.update_batch(x, [f"a{i % 3}" for i in range(60)], rng.random(60), feats)
    return policy


@pytest.mark.parametrize("name", ["neural_linear", "ensemble", "dropout"])
def test_stages_report_progress_and_one_stage_is_the_plain_retrain(name: str) -> None:
    staged = _filled(name)
    seen: list[tuple[int, float]] = []
    loss = staged.retrain(stages=3, after_stage=lambda e, value: seen.append((e, value)))
    assert [e for e, _ in seen] == [2, 4, 6] and loss == seen[-1][1]
    assert staged.n_retrains_ == 1 and staged.since_retrain_ == 0
    # one stage of all the epochs is exactly the slow path's retrain
    once, twice = _filled(name), _filled(name)
    assert once.retrain(stages=1) == twice.retrain()
    for key, value in once.to_state().arrays.items():
        np.testing.assert_array_equal(value, twice.to_state().arrays[key], err_msg=key)


def test_retrain_refuses_zero_stages() -> None:
    with pytest.raises(ValueError, match="'stages' parameter of retrain"):
        _filled("neural_linear").retrain(stages=0)


def test_predict_reward_is_the_networks_mean_prediction() -> None:
    policy = _filled("ensemble")
    inputs = np.random.default_rng(1).standard_normal((7, policy.features.dim))
    pred = policy.predict_reward(inputs)
    assert pred.shape == (7,)
    # squared-error loss: the link is the identity, so the mean prediction is the
    # members' mean score
    members = policy.member_scores(inputs[None])  # (M, 1, 7)
    np.testing.assert_allclose(pred, members[:, 0, :].mean(axis=0), rtol=1e-6)


def test_neural_linear_is_a_linear_head_policy_and_the_others_are_not() -> None:
    assert isinstance(_filled("neural_linear"), LinearHeadPolicy)
    assert not isinstance(_filled("ensemble"), LinearHeadPolicy)


@pytest.mark.parametrize("name", ["ensemble", "dropout"])
def test_rebuild_head_step_keeps_a_headless_network_as_trained(name: str, tmp_path: Path) -> None:
    """The retrain's rebuild step on a policy without a linear head is the trained state
    itself (it used to call a ``rebuild`` these policies do not have)."""
    from bandit_core import load_state, save_policy
    from training.train import rebuild_head

    state = save_policy(_filled(name), tmp_path / "trained.npz")
    out = rebuild_head(state, tmp_path / "no-replay-needed.parquet", tmp_path / "rebuilt.npz")
    before, after = load_state(state), load_state(out)
    assert before.config == after.config and set(before.arrays) == set(after.arrays)
    for key, value in before.arrays.items():
        np.testing.assert_array_equal(value, after.arrays[key], err_msg=key)


def _arrays(policy: object) -> dict[str, np.ndarray]:
    return {k: np.array(v, copy=True) for k, v in policy.to_state().arrays.items()}  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["dropout", "ensemble", "neural_linear"])
def test_a_network_that_diverges_is_not_kept(name: str) -> None:
    """A learning rate the bounds allow but no network survives (1e300): the retraining an
    update triggers diverges, and the update is refused whole (``ValueError``), the policy
    as it was. Before, dropout and ensemble kept NaN weights and decided with NaN
    propensities."""
    policy = make_policy(name, **{**NEURAL_SMALL, "learning_rate": 1e300})
    rng = np.random.default_rng(0)
    refused = 0
    for _ in range(30):
        before = _arrays(policy)
        try:
            policy.update(rng.standard_normal(3) * 1e3, "a", float(rng.random()), np.ones(2))
        except ValueError as exc:
            assert "not finite" in str(exc) or "failed" in str(exc)
            refused += 1
            after = _arrays(policy)
            for key, value in before.items():
                np.testing.assert_array_equal(after[key], value, err_msg=key)
    assert refused > 0
    for key, value in _arrays(policy).items():
        if value.dtype.kind == "f":
            assert np.isfinite(value).all(), key


def test_a_retraining_whose_callback_raises_is_rolled_back() -> None:
    policy = make_policy("neural_linear", **NEURAL_SMALL)
    rng = np.random.default_rng(1)
    policy.update_batch(rng.standard_normal((9, 3)), ["a"] * 9, rng.random(9), np.ones((9, 2)))
    before = _arrays(policy)

    def stop(done: int, loss: float) -> None:
        raise RuntimeError("operator stopped it")

    with pytest.raises(RuntimeError, match="operator stopped it"):
        policy.retrain(after_stage=stop)
    with pytest.raises(ValueError, match="after_stage must be callable"):
        policy.retrain(after_stage=5)  # type: ignore[arg-type]
    after = _arrays(policy)
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)


def test_a_prior_precision_beyond_its_range_is_refused() -> None:
    for value in (5e-324, 10**20):
        for policy, dims in (
            ("linucb", {}),
            ("shared_linucb", {"dim_arm": 2}),
            ("logistic_ts", {}),
        ):
            with pytest.raises(ValueError, match=r"'lambda_prior' parameter .* \[1e-08, 1e\+08\]"):
                make_policy(policy, dim_user=3, lambda_prior=value, **dims)


@pytest.mark.parametrize("name", ["neural_linear", "ensemble", "dropout"])
def test_a_network_larger_than_the_machine_is_refused_by_name(name: str) -> None:
    # 10¹² float64 parameters are 7 TiB: no machine that runs this suite has them. Before
    # the check torch's allocator raised a bare RuntimeError.
    with pytest.raises(ValueError, match=r"hidden = \[1000000, 1000000\] on .* GiB of memory"):
        make_policy(name, **{**NEURAL_SMALL, "hidden": [10**6, 10**6]})
