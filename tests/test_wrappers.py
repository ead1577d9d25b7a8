"""Exploration floor and exposure cap keep propensities exact and do their job."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from bandit_core import Candidates, ExplorationFloor, ExposureCap, make_policy


def _greedy_linucb() -> object:
    policy = make_policy("linucb", dim_user=2, alpha=0.0)
    for _ in range(30):
        policy.update([1.0, 0.0], "best", 1.0)
        policy.update([1.0, 0.0], "worst", -1.0)
    return policy


def test_floor_gives_every_candidate_at_least_p_min() -> None:
    wrapped = ExplorationFloor(_greedy_linucb(), p_min=0.05)  # type: ignore[arg-type]
    cands = Candidates.from_any(["best", "worst", "other"])
    d = wrapped.select([1.0, 0.0], cands, np.random.default_rng(0))
    np.testing.assert_allclose(d.probabilities, [0.05 + 0.85, 0.05, 0.05])
    assert d.policy == "linucb+floor"


def test_floor_larger_than_uniform_means_uniform() -> None:
    wrapped = ExplorationFloor(_greedy_linucb(), p_min=0.5)  # type: ignore[arg-type]
    d = wrapped.select(
        [1.0, 0.0], Candidates.from_any(["best", "worst", "other"]), np.random.default_rng(0)
    )
    np.testing.assert_allclose(d.probabilities, [1 / 3] * 3)


def test_exposure_cap_removes_an_arm_over_its_share() -> None:
    capped = ExposureCap(_greedy_linucb(), max_share=0.5, window=20, min_decisions=4)  # type: ignore[arg-type]
    cands = Candidates.from_any(["best", "worst"])
    rng = np.random.default_rng(0)
    picks = [capped.select([1.0, 0.0], cands, rng) for _ in range(40)]
    shares = np.mean([d.arm_id == "best" for d in picks[4:]])
    assert shares == pytest.approx(0.5, abs=0.05)
    capped_ones = [d for d in picks if d.arm_id == "worst"]
    assert capped_ones and all(
        d.probabilities[0] == 0.0 and d.propensity == 1.0 for d in capped_ones
    )


def test_exposure_cap_never_empties_the_candidate_set() -> None:
    capped = ExposureCap(make_policy("uniform"), max_share=0.1, window=10, min_decisions=1)
    rng = np.random.default_rng(1)
    for _ in range(30):
        d = capped.select([0.0], Candidates.from_any(["only"]), rng)
        assert d.arm_id == "only" and d.propensity == 1.0


def test_exposure_cap_counts_only_the_arms_of_its_window() -> None:
    """Counts of arms that left the window are dropped: memory is bounded by the window,
    not by every arm ever shown; the counts equal a recount of the window."""
    capped = ExposureCap(make_policy("uniform"), max_share=1.0, window=10, min_decisions=1)
    rng = np.random.default_rng(2)
    for t in range(200):
        capped.select([0.0], Candidates.from_any([f"item-{t}", f"item-{t + 1}"]), rng)
    assert len(capped._counts) <= 10
    assert capped._counts == Counter(capped._recent)


def test_an_exposure_cap_state_whose_ring_does_not_fit_its_window_is_refused() -> None:
    """A restored cap whose next slot lies outside its window (or is not 0 before the
    window is full) raised IndexError on a later decision; it is refused when restored."""
    from dataclasses import replace

    from bandit_core import policy_from_state

    capped = ExposureCap(_greedy_linucb(), max_share=0.5, window=10, min_decisions=4)  # type: ignore[arg-type]
    rng = np.random.default_rng(2)
    for _ in range(4):
        capped.select([1.0, 0.0], Candidates.from_any(["best", "worst"]), rng)
    state = capped.to_state()
    policy_from_state(state)  # as saved: restores
    for bad in (10**6, -1, 3):
        with pytest.raises(ValueError, match="exposure_cap state"):
            policy_from_state(replace(state, config={**state.config, "next": bad}))
    too_many = {**state.arrays, "recent": np.array(["best"] * 11)}
    with pytest.raises(ValueError, match="exposure_cap state"):
        policy_from_state(replace(state, arrays=too_many))


@pytest.mark.parametrize("floor", [None, 0.05])
def test_an_exposure_cap_counts_the_arm_served_whichever_layer_chose_it(
    floor: float | None,
) -> None:
    """Serving puts a cold-start floor around the model: the cap inside counted the arm
    its inner policy chose, not the new item the floor served instead (audit, stop 55:
    served a0 60, a1 34, new 106; counted a0 85, a1 60, new 55)."""
    from bandit_core import ColdStartFloor

    rng = np.random.default_rng(0)
    options = {} if floor is None else {"floor": floor}
    policy = make_policy(
        "linucb",
        dim_user=3,
        alpha=0.0,
        exposure_cap=0.9,
        exposure_window=200,
        exposure_min_decisions=10,
        **options,
    )
    for _ in range(30):  # a0 is clearly best
        policy.update(rng.standard_normal(3), "a0", 1.0)
        policy.update(rng.standard_normal(3), "a1", 0.0)
    cands = Candidates.from_any(["a0", "a1", "new"])
    served: Counter[str] = Counter()
    for _ in range(200):
        served_by = ColdStartFloor(policy, p_min=0.4, new_ids={"new"}, max_share=0.4)
        served[served_by.select(rng.standard_normal(3) * 0.01, cands, rng).arm_id] += 1
    cap = policy
    while not isinstance(cap, ExposureCap):
        cap = cap.__dict__["inner"]
    assert served["new"] > 50 and cap._counts == served, (served, cap._counts)


def test_every_exposure_cap_of_a_chain_counts_the_arm_served() -> None:
    """With decisions made by the innermost layers and recorded by the outermost, a cap
    inside another cap counted nothing (review, stop 55)."""
    inner = ExposureCap(make_policy("uniform", dim_user=2), max_share=0.9, min_decisions=0)
    outer = ExposureCap(inner, max_share=0.9, min_decisions=0)
    rng = np.random.default_rng(0)
    served = Counter(
        outer.select(np.zeros(2), Candidates.from_any(["a", "b"]), rng).arm_id for _ in range(20)
    )
    assert inner._counts == served == outer._counts
