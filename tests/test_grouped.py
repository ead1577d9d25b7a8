"""Grouped selection (one variant per group) and the new-item exploration floor."""

from __future__ import annotations

import numpy as np
import pytest

from bandit_core import Candidates, make_policy
from bandit_core.coldstart import ColdStartFloor
from bandit_core.grouped import Group, select_grouped
from tests.policy_factories import DIM_ARM, DIM_USER

N_DRAWS = 20_000


def _groups(rng: np.random.Generator, sizes: tuple[int, ...] = (3, 5, 1, 10)) -> list[Group]:
    return [
        Group(
            f"title-{g}",
            Candidates(tuple(f"t{g}-art{v}" for v in range(n)), rng.standard_normal((n, DIM_ARM))),
        )
        for g, n in enumerate(sizes)
    ]


@pytest.mark.parametrize("name", ["uniform", "shared_lints", "epsilon_greedy", "linucb"])
def test_a_grouped_request_returns_exactly_one_variant_per_group(name: str) -> None:
    options = {"dim_user": DIM_USER}
    if name in ("shared_lints", "epsilon_greedy"):
        options["dim_arm"] = DIM_ARM
    policy = make_policy(name, **options)
    rng = np.random.default_rng(0)
    groups = _groups(rng)
    out = select_grouped(policy, rng.standard_normal(DIM_USER), groups, rng)
    assert len(out) == len(groups)
    assert out.group_ids == tuple(g.id for g in groups)
    for group, decision, variant in zip(groups, out.decisions, out.variant_ids, strict=True):
        assert variant in group.candidates.ids
        assert decision.arm_id == group.candidates.ids[decision.arm]
        assert decision.probabilities.shape == (len(group.candidates),)
        assert decision.probabilities.sum() == pytest.approx(1.0, abs=1e-12)
        assert decision.propensity == decision.probabilities[decision.arm]
    assert out.propensities[2] == 1.0  # a group with one variant


def test_group_propensities_match_empirical_frequencies() -> None:
    """Each group's logged propensity is its own law: 20,000 seeded grouped decisions,
    mean(1[v_g = v] − p_g(v)) within 4 standard errors of 0 for every group and variant."""
    policy = make_policy("epsilon_greedy", dim_user=DIM_USER, dim_arm=DIM_ARM, epsilon=0.3)
    rng = np.random.default_rng(1)
    for _ in range(30):
        policy.update(
            rng.standard_normal(DIM_USER), "x", rng.random(), rng.standard_normal(DIM_ARM)
        )
    groups = _groups(np.random.default_rng(2), sizes=(3, 4))
    context = rng.standard_normal(DIM_USER)
    diffs = [np.zeros((N_DRAWS, len(g.candidates))) for g in groups]
    for t in range(N_DRAWS):
        out = select_grouped(policy, context, groups, rng)
        for g, d in enumerate(out.decisions):
            diffs[g][t] = -d.probabilities
            diffs[g][t, d.arm] += 1.0
    for diff in diffs:
        se = diff.std(axis=0, ddof=1) / np.sqrt(N_DRAWS)
        assert np.all(np.abs(diff.mean(axis=0)) <= 4.0 * se + 1e-12)


def test_bad_groups_name_the_problem() -> None:
    policy = make_policy("uniform", dim_user=DIM_USER)
    rng = np.random.default_rng(0)
    x = np.zeros(DIM_USER)
    with pytest.raises(ValueError, match="at least one group"):
        select_grouped(policy, x, [], rng)
    twice = _groups(rng, (2,)) * 2
    with pytest.raises(ValueError, match="appears twice"):
        select_grouped(policy, x, twice, rng)
    with pytest.raises(TypeError, match=r"groups\[0\]"):
        select_grouped(policy, x, ["title"], rng)
    with pytest.raises(ValueError, match="at least one arm"):
        Candidates.from_any([])


# ---------------------------------------------------------------------- cold-start floor
def test_new_items_get_at_least_the_floor_and_the_law_stays_exact() -> None:
    policy = make_policy("linucb", dim_user=DIM_USER, alpha=0.0)
    rng = np.random.default_rng(3)
    for _ in range(50):
        policy.update(rng.standard_normal(DIM_USER), "old-0", 1.0)
        policy.update(rng.standard_normal(DIM_USER), "old-1", 0.0)
    cands = Candidates(("old-0", "old-1", "new-0", "new-1"), np.zeros((4, 0)))
    floored = ColdStartFloor(policy, p_min=0.05, new_ids={"new-0", "new-1"})
    context = rng.standard_normal(DIM_USER)
    inner = policy.select(context, cands, np.random.default_rng(0)).probabilities
    d = floored.select(context, cands, np.random.default_rng(0))
    expected = 0.9 * inner + np.array([0.0, 0.0, 0.05, 0.05])
    np.testing.assert_allclose(d.probabilities, expected, atol=1e-15)
    assert d.probabilities[2] >= 0.05 and d.probabilities[3] >= 0.05
    chosen = np.zeros(4)
    for _ in range(N_DRAWS):
        chosen[floored.select(context, cands, rng).arm] += 1.0
    freq = chosen / N_DRAWS
    se = np.sqrt(expected * (1.0 - expected) / N_DRAWS)
    assert np.all(np.abs(freq - expected) <= 4.0 * se + 1e-12), (freq, expected)
    batch = floored.select_batch(rng.standard_normal((5, DIM_USER)), cands, rng)
    np.testing.assert_allclose(batch.probabilities.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(batch.probabilities[:, 2:] >= 0.05)


def test_without_new_candidates_the_inner_policy_decides_alone() -> None:
    policy = make_policy("lints", dim_user=DIM_USER)
    cands = Candidates(("a", "b"), np.zeros((2, 0)))
    floored = ColdStartFloor(policy, p_min=0.2, new_ids={"z"})
    x = np.ones(DIM_USER)
    a = floored.select(x, cands, np.random.default_rng(5))
    b = policy.select(x, cands, np.random.default_rng(5))
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    assert a.arm == b.arm and a.policy == "lints"
    with pytest.raises(ValueError, match="p_min"):
        ColdStartFloor(policy, p_min=0.0, new_ids=())


def test_the_floor_moves_at_most_max_share_to_new_items() -> None:
    policy = make_policy("uniform", dim_user=DIM_USER)
    ids = (*(f"new-{i}" for i in range(8)), "old")
    cands = Candidates(ids, np.zeros((9, 0)))
    floored = ColdStartFloor(policy, p_min=0.1, new_ids=set(ids[:8]), max_share=0.4)
    d = floored.select(np.zeros(DIM_USER), cands, np.random.default_rng(0))
    expected = 0.6 * np.full(9, 1 / 9) + 0.4 * np.r_[np.full(8, 1 / 8), 0.0]
    np.testing.assert_allclose(d.probabilities, expected, atol=1e-15)
