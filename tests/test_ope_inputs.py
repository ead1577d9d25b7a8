"""The estimator input contract: every bad input gets its own clear error."""

from __future__ import annotations

import numpy as np
import pytest

from validation.ope import check_feedback
from validation.ope.inputs import PSCORE_MIN


def good() -> dict[str, np.ndarray]:
    return {
        "reward": np.array([1.0, 0.0, 1.0]),
        "action": np.array([0, 1, 1]),
        "pscore": np.array([0.5, 0.5, 0.25]),
        "action_dist": np.array([[0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])[:, :, None],
    }


def test_valid_inputs_are_normalised() -> None:
    fb = check_feedback(**good())
    assert (fb.n_rounds, fb.n_actions, fb.len_list) == (3, 2, 1)
    assert fb.position.tolist() == [0, 0, 0]
    np.testing.assert_allclose(fb.importance_weights(), [0.4, 0.8, 2.8])


def test_two_dimensional_action_dist_is_one_slot() -> None:
    args = good()
    args["action_dist"] = args["action_dist"][:, :, 0]
    assert check_feedback(**args).action_dist.shape == (3, 2, 1)


@pytest.mark.parametrize("bad", [0.0, 1e-310, 1.5])
def test_pscore_outside_what_a_weight_can_divide_by_is_rejected(bad: float) -> None:
    """A subnormal propensity (1e-310) is in (0, 1], but its weight is infinite: every
    estimate, interval, MLflow metric and report of the window was inf or NaN (OPE
    helper, stop 55)."""
    args = good()
    args["pscore"] = np.array([0.5, bad, 0.25])
    with pytest.raises(
        ValueError, match=rf"pscore must be in \[2\.225e-308, 1\] .*; got {bad!r} at index 1"
    ):
        check_feedback(**args)
    args["pscore"] = np.array([0.5, PSCORE_MIN, 0.25])
    assert np.isfinite(1.0 / check_feedback(**args).pscore).all()


def test_action_dist_not_summing_to_one_is_rejected() -> None:
    args = good()
    args["action_dist"] = np.array([[0.2, 0.8], [0.6, 0.3], [0.3, 0.7]])[:, :, None]
    with pytest.raises(
        ValueError, match=r"action_dist must sum to 1 .* round 1, slot 0 sums to 0\.9"
    ):
        check_feedback(**args)


def test_a_round_may_hold_nothing_at_slots_it_cannot_fill() -> None:
    """A single decision of one candidate in a window of slates of two has no item at
    slot 1: only its logged slot must sum to 1 (every estimator reads that one). The
    check over every slot failed each retrain of such a window (audit, stop 54)."""
    args = good()
    dist = np.zeros((3, 2, 2))
    dist[:, :, 0] = args["action_dist"][:, :, 0]
    dist[1, :, 1] = [0.5, 0.5]  # round 1 was logged at slot 1; the others fill slot 0
    args["action_dist"] = dist
    fb = check_feedback(**args, position=np.array([0, 1, 0]))
    assert fb.len_list == 2
    dist[1, :, 1] = [0.5, 0.0]
    with pytest.raises(ValueError, match=r"round 1, slot 1 sums to 0\.5"):
        check_feedback(**args, position=np.array([0, 1, 0]))


def test_negative_action_dist_is_rejected() -> None:
    args = good()
    args["action_dist"] = np.array([[1.2, -0.2], [0.6, 0.4], [0.3, 0.7]])[:, :, None]
    with pytest.raises(ValueError, match=r"action_dist must be non-negative; got -0\.2"):
        check_feedback(**args)


def test_shape_mismatch_is_rejected() -> None:
    args = good()
    args["action"] = np.array([0, 1])
    with pytest.raises(ValueError, match=r"action must have length n_rounds = 3 .* got length 2"):
        check_feedback(**args)


def test_action_dist_rows_mismatch_is_rejected() -> None:
    args = good()
    args["action_dist"] = args["action_dist"][:2]
    with pytest.raises(
        ValueError, match=r"action_dist must have shape \(n_rounds, n_actions, len_list\)"
    ):
        check_feedback(**args)


def test_nan_reward_is_rejected() -> None:
    args = good()
    args["reward"] = np.array([1.0, np.nan, 1.0])
    with pytest.raises(
        ValueError, match=r"reward must be finite; got (np\.float64\()?nan\)? at index 1"
    ):
        check_feedback(**args)


def test_nan_in_estimated_rewards_is_rejected() -> None:
    args = good()
    q = np.zeros((3, 2, 1))
    q[2, 1, 0] = np.inf
    with pytest.raises(
        ValueError, match=r"estimated_rewards must be finite; .* at index \[2, 1, 0\]"
    ):
        check_feedback(**args, estimated_rewards=q)


def test_action_out_of_range_is_rejected() -> None:
    args = good()
    args["action"] = np.array([0, 2, 1])
    with pytest.raises(
        ValueError, match=r"action must be in \[0, 2\) \(n_actions = 2\); got 2 at index 1"
    ):
        check_feedback(**args)


def test_fractional_action_is_rejected() -> None:
    args = good()
    args["action"] = np.array([0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match=r"action must hold integer indices; got 0\.5 at index 1"):
        check_feedback(**args)


def test_position_out_of_range_is_rejected() -> None:
    with pytest.raises(
        ValueError, match=r"position must be in \[0, 1\) \(len_list = 1\); got 1 at index 2"
    ):
        check_feedback(**good(), position=np.array([0, 0, 1]))


def test_estimated_rewards_shape_must_match() -> None:
    with pytest.raises(
        ValueError, match=r"estimated_rewards must have the shape of action_dist \(3, 2, 1\)"
    ):
        check_feedback(**good(), estimated_rewards=np.zeros((3, 3, 1)))


def test_model_based_estimator_without_model_is_rejected() -> None:
    fb = check_feedback(**good())
    with pytest.raises(ValueError, match="dr needs estimated_rewards"):
        fb.direct_method_term("dr")


def test_inputs_are_not_mutated() -> None:
    args = good()
    before = {k: v.copy() for k, v in args.items()}
    check_feedback(**args)
    for k, v in args.items():
        np.testing.assert_array_equal(v, before[k])
