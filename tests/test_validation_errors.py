"""Bad input raises ValueError/TypeError naming the field, the expectation and the value."""

from __future__ import annotations

import numpy as np
import pytest

from bandit_core import Candidates, ExplorationFloor, make_policy

CANDS = Candidates.from_any(["a", "b"], [[0.0, 1.0], [1.0, 0.0]])


@pytest.fixture(
    params=["linucb", "lints", "shared_linucb", "shared_lints", "epsilon_greedy", "uniform"]
)
def policy(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    opts: dict[str, object] = {"dim_user": 3}
    if request.param.startswith("shared") or request.param == "epsilon_greedy":
        opts["dim_arm"] = 2
    return make_policy(request.param, **opts)


def test_wrong_context_dimension(policy) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=r"context must have length 3; got length 4"):
        policy.select(np.zeros(4), CANDS, np.random.default_rng(0))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_context(policy, bad: float) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=rf"context must be finite; got {bad!r} at index 1"):
        policy.select(np.array([0.0, bad, 0.0]), CANDS, np.random.default_rng(0))


def test_non_finite_reward_is_refused_and_nothing_is_learned(policy) -> None:  # type: ignore[no-untyped-def]
    before = policy.to_state().arrays
    with pytest.raises(ValueError, match=r"reward must be a finite number; got nan"):
        policy.update(np.zeros(3), "a", np.nan, [0.0, 1.0])
    after = policy.to_state().arrays
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])


def test_empty_candidate_set() -> None:
    with pytest.raises(
        ValueError, match=r"candidates must hold at least one arm; got an empty candidate set"
    ):
        Candidates.from_any([], np.zeros((0, 2)))


def test_duplicate_arm_ids() -> None:
    with pytest.raises(
        ValueError, match=r"candidates.ids must be distinct; arm id 'a' appears twice"
    ):
        Candidates.from_any(["a", "b", "a"], np.zeros((3, 2)))


def test_candidate_features_with_wrong_width_or_rows() -> None:
    with pytest.raises(
        ValueError, match=r"candidates.features must have 2 rows; got an array of shape \(3, 2\)"
    ):
        Candidates.from_any(["a", "b"], np.zeros((3, 2)))
    policy = make_policy("shared_linucb", dim_user=3, dim_arm=2)
    with pytest.raises(
        ValueError, match=r"candidates.features must have 2 columns \(dim_arm\); got 5"
    ):
        policy.select(
            np.zeros(3), Candidates.from_any(["a"], np.zeros((1, 5))), np.random.default_rng(0)
        )
    with pytest.raises(
        ValueError, match=r"candidates.features must be finite; got nan at \[0, 1\]"
    ):
        Candidates.from_any(["a"], [[0.0, np.nan]])


def test_candidates_built_directly_need_a_row_per_id() -> None:
    # the constructor trusts its ids and values (Candidates.from_any checks them), but not
    # its shape: two ids over three rows made a policy report an id of another row
    for features in (np.zeros((3, 0)), np.zeros(2), np.zeros((1, 2, 0))):
        with pytest.raises(
            ValueError, match=r"candidates.features must have one row per id, shape \(2, dim_arm\)"
        ):
            Candidates(("a", "b"), features)
    assert len(Candidates(("a", "b"), np.zeros((2, 0)))) == 2


def test_unknown_policy_and_unknown_option() -> None:
    with pytest.raises(ValueError, match=r"Unknown policy 'linucbb'; expected one of: .*linucb"):
        make_policy("linucbb", dim_user=3)
    with pytest.raises(
        ValueError, match=r"Unknown option\(s\) 'alpah' for linucb; expected some of: .*alpha"
    ):
        make_policy("linucb", dim_user=3, alpah=1.0)
    with pytest.raises(ValueError, match=r"linucb needs the option 'dim_user'"):
        make_policy("linucb", alpha=1.0)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        (
            "linucb",
            {"alpha": -1.0},
            r"The 'alpha' parameter of LinUCBConfig must be a float in the range \[0, 1e\+12\]. "
            r"Got -1.0.",
        ),
        (
            "linucb",
            {"ties": "last"},
            r"The 'ties' parameter of LinUCBConfig must be one of 'random', 'first'. Got 'last'.",
        ),
        (
            "shared_lints",
            {"n_sim": 0},
            r"The 'n_sim' parameter of SharedLinTSConfig must be an int in the range \[1, 1000000\]. Got 0.",
        ),
        (
            "epsilon_greedy",
            {"epsilon": 1.5},
            r"The 'epsilon' parameter of EpsilonGreedyConfig must be a float in the range \[0, 1\]. Got 1.5.",
        ),
        (
            "shared_lints",
            {"interactions": "yes"},
            r"The 'interactions' parameter of FeatureMap must be a bool. Got 'yes'.",
        ),
        (
            "linucb",
            {"lambda_prior": 0},
            r"'lambda_prior' parameter of BayesianLinearHead must be a float in the range \[1e-08, 1e\+08\]. Got 0.",
        ),
        (
            "linucb",
            {"dim_user": 0},
            r"a per-arm model needs user features: 'dim_user' must be at least 1; got 0",
        ),
    ],
)
def test_bad_option_values(name: str, options: dict[str, object], message: str) -> None:
    full: dict[str, object] = {"dim_user": 3, **options}
    with pytest.raises(ValueError, match=message):
        make_policy(name, **full)


def test_missing_arm_features_for_a_shared_update() -> None:
    policy = make_policy("shared_linucb", dim_user=3, dim_arm=2)
    with pytest.raises(
        ValueError, match=r"arm_features is required: the policy uses 2 arm features"
    ):
        policy.update(np.zeros(3), "a", 1.0)


def test_rng_must_be_a_generator() -> None:
    policy = make_policy("linucb", dim_user=3)
    with pytest.raises(TypeError, match=r"rng must be a numpy.random.Generator"):
        policy.select(np.zeros(3), Candidates.from_any(["a", "b"]), 42)


def test_wrapper_options_are_checked() -> None:
    with pytest.raises(
        ValueError,
        match=r"The 'p_min' parameter of ExplorationFloor must be a float in the range \(0, 1\]. Got 0.0.",
    ):
        ExplorationFloor(make_policy("linucb", dim_user=3), p_min=0.0)
