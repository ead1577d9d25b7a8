"""Overlap options of a trained policy: floors (global, per segment), the cold-start
floor for arms the model has not seen, exposure caps; exact propensities."""

from __future__ import annotations

import numpy as np
import pytest

from bandit_core import Candidates, load_policy, make_policy, save_policy
from bandit_core.catalog import CATALOG
from bandit_core.policies.overlap import Overlap, floor_of_policy

DIM_USER, DIM_ARM = 3, 2
N_DRAWS = 20_000


def _candidates(ids: tuple[str, ...] = ("a", "b", "c", "d")) -> Candidates:
    return Candidates(ids, np.random.default_rng(1).standard_normal((len(ids), DIM_ARM)))


def _trained(**overlap: object) -> Overlap:
    policy = make_policy("shared_linucb", dim_user=DIM_USER, dim_arm=DIM_ARM, **overlap)
    assert isinstance(policy, Overlap)
    cands = _candidates(("a", "b", "c"))
    rng = np.random.default_rng(0)
    for _ in range(200):  # arm "a" pays: without the floor UCB plays it with probability 1
        x = rng.standard_normal(DIM_USER)
        arm = int(rng.integers(3))
        policy.update(x, cands.ids[arm], float(arm == 0), cands.features[arm])
    return policy


def test_make_policy_takes_the_overlap_options_and_refuses_bad_values() -> None:
    with pytest.raises(ValueError, match=r"The 'floor' parameter of Overlap must be a float"):
        make_policy("shared_linucb", dim_user=DIM_USER, dim_arm=DIM_ARM, floor=1.5)
    with pytest.raises(ValueError, match=r"segment_floors.* needs segment_feature"):
        make_policy("linucb", dim_user=DIM_USER, segment_floors={"1": 0.1})
    with pytest.raises(ValueError, match=r"segment_floors.*mapping of segment names"):
        make_policy("linucb", dim_user=DIM_USER, segment_feature=0, segment_floors={"1": 0})
    plain = make_policy("linucb", dim_user=DIM_USER)
    assert plain.name == "linucb"  # no overlap option: no wrapper


def test_every_propensity_is_at_least_the_floor_exactly() -> None:
    policy = _trained(floor=0.05)
    rng = np.random.default_rng(2)
    batch = policy.select_batch(rng.standard_normal((2000, DIM_USER)), _candidates(), rng)
    assert batch.probabilities.min() >= 0.05 - 1e-15
    inner = policy.inner.select_batch(
        rng.standard_normal((5, DIM_USER)), _candidates(), np.random.default_rng(3)
    )
    assert set(np.unique(inner.probabilities)) <= {0.0, 1.0}  # UCB alone: no overlap
    # exact: (1 − K p_min) p_inner + p_min
    again = policy.select_batch(np.ones((1, DIM_USER)), _candidates(), np.random.default_rng(4))
    raw = policy.inner.select_batch(np.ones((1, DIM_USER)), _candidates(), np.random.default_rng(4))
    np.testing.assert_allclose(again.probabilities, 0.8 * raw.probabilities + 0.05, atol=1e-15)


def test_segment_floors_hold_per_segment_over_seeded_decisions() -> None:
    """Segment "1" (context feature 0 equal to 1) gets 0.15, others the global 0.02;
    over 20,000 seeded decisions each arm's frequency in each segment is within 4 s.e. of
    the mean reported propensity, which is itself at least the segment's floor."""
    floors = {"1": 0.15, "0": 0.02}
    policy = _trained(floor=0.02, segment_feature=0, segment_floors={"1": 0.15})
    cands = _candidates(("a", "b", "c"))
    rng = np.random.default_rng(5)
    contexts = rng.standard_normal((N_DRAWS, DIM_USER))
    segment = rng.integers(0, 2, N_DRAWS)
    contexts[:, 0] = segment
    chosen = np.zeros((N_DRAWS, 3))
    reported = np.zeros((N_DRAWS, 3))
    for t in range(N_DRAWS):
        d = policy.select(contexts[t], cands, rng)
        chosen[t, d.arm] = 1.0
        reported[t] = d.probabilities
    for value, floor in ((1, floors["1"]), (0, floors["0"])):
        rows = segment == value
        assert reported[rows].min() >= floor - 1e-15
        diff = chosen[rows] - reported[rows]
        se = diff.std(axis=0, ddof=1) / np.sqrt(rows.sum())
        assert np.all(np.abs(diff.mean(axis=0)) <= 4 * se), (diff.mean(axis=0), se)
        freq = chosen[rows].mean(axis=0)
        se_freq = np.sqrt(freq * (1 - freq) / rows.sum())
        assert np.all(freq >= floor - 4 * se_freq), (value, freq)


def test_arms_the_model_has_not_seen_get_the_cold_start_floor_inline_too() -> None:
    policy = _trained(cold_start_floor=0.1, cold_start_max_share=0.3)
    cands = _candidates(("a", "b", "c", "inline-1", "inline-2"))
    d = policy.select(np.ones(DIM_USER), cands, np.random.default_rng(6))
    assert d.probabilities[3] >= 0.1 and d.probabilities[4] >= 0.1
    assert d.probabilities.sum() == pytest.approx(1.0)
    policy.update(np.ones(DIM_USER), "inline-1", 0.0, cands.features[3])  # now seen
    after = policy.select(np.ones(DIM_USER), cands, np.random.default_rng(6))
    assert after.probabilities[3] < 0.1 <= after.probabilities[4]


def test_the_floor_wins_over_an_exposure_cap_and_the_state_round_trips(tmp_path) -> None:  # type: ignore[no-untyped-def]
    policy = _trained(floor=0.05, exposure_cap=0.5, exposure_window=20, exposure_min_decisions=5)
    assert floor_of_policy(policy) == {
        "floor": 0.05,
        "exposure_cap": 0.5,
        "exposure_window": 20,
        "exposure_min_decisions": 5,
    }
    rng = np.random.default_rng(7)
    cands = _candidates(("a", "b", "c"))
    for _ in range(20):  # "a" takes its share and is capped
        policy.select(np.ones(DIM_USER), cands, rng)
    d = policy.select(np.ones(DIM_USER), cands, rng)
    assert d.probabilities.min() >= 0.05 - 1e-15
    restored = load_policy(save_policy(policy, tmp_path / "p.npz"))
    assert isinstance(restored, Overlap) and restored.seen == policy.seen
    x = np.ones((4, DIM_USER))
    np.testing.assert_array_equal(
        restored.select_batch(x, cands, np.random.default_rng(8)).probabilities,
        policy.select_batch(x, cands, np.random.default_rng(8)).probabilities,
    )


def test_a_floored_linear_model_keeps_its_head_for_training_and_serving() -> None:
    from bandit_core.head_statistics import LinearHeadPolicy

    policy = _trained(floor=0.01)
    assert isinstance(policy, LinearHeadPolicy)
    assert policy.head is policy.inner.head  # type: ignore[attr-defined]
    assert not CATALOG["shared_linucb"].randomizes({})
    assert CATALOG["neural_linear"].randomizes({}) and not CATALOG["neural_linear"].randomizes(
        {"mode": "ucb"}
    )
