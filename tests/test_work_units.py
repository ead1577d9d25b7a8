"""The work a decision is counted (:mod:`bandit_core.work`): what the request budget and
the event loop's share are measured in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bandit_core import make_policy
from bandit_core.catalog import POLICIES
from bandit_core.work import PER_CANDIDATE, decision_work, monte_carlo_draws
from serving.budget import work_units
from serving.settings import Settings
from tests.serving_helpers import DIM_ARM, DIM_USER


def _options(name: str, dim_user: int, dim_arm: int) -> dict[str, Any]:
    if name == "uniform":
        return {}
    if name in ("linucb", "lints"):
        return {"dim_user": dim_user}
    return {"dim_user": dim_user, "dim_arm": dim_arm}


@pytest.mark.parametrize("name", POLICIES)
def test_every_policy_counts_its_own_work_growing_with_candidates_and_width(name: str) -> None:
    """Each policy states its work (more than the bare per-candidate count, uniform
    aside), growing with the candidates (at most in proportion: a draw's own noise is
    shared by all of them), and more for a wider model."""
    narrow = make_policy(name, **_options(name, 4, 3))
    wide = make_policy(name, **_options(name, 64, 48))
    assert decision_work(narrow, 20) < decision_work(narrow, 200) <= 10 * decision_work(narrow, 20)
    assert decision_work(narrow, 0) == decision_work(narrow, 1) >= 1
    if name != "uniform":
        assert decision_work(wide, 20) > decision_work(narrow, 20) > 20 * PER_CANDIDATE


def test_a_wrapped_policy_costs_what_the_policy_inside_does() -> None:
    inner = make_policy("shared_lints", dim_user=5, dim_arm=3)
    floored = make_policy("shared_lints", dim_user=5, dim_arm=3, floor=0.05, exposure_cap=0.5)
    assert type(floored).__name__ != type(inner).__name__
    assert decision_work(floored, 37) == decision_work(inner, 37)


def test_a_per_arm_head_is_counted_by_the_square_of_its_width() -> None:
    """The carried bug: candidates × width counted a per-arm head of d = 2,048 at 122,880
    units for 60 candidates (inline, on the event loop) where its quadratic forms took
    ~800 ms; now the same decision is over ``inline_work_units`` by far and within
    ``max_work_units`` only for a few candidates."""
    settings = Settings()
    policy = make_policy("linucb", dim_user=2048)
    assert work_units(policy, 60, None, 0) > 100 * settings.inline_work_units
    assert work_units(policy, 60, None, 0) > settings.max_work_units
    small = make_policy("linucb", dim_user=16)
    assert work_units(small, 60, None, 0) < settings.inline_work_units
    # the same width costs four times as much for twice the dimension (d² dominates)
    ratio = decision_work(make_policy("linucb", dim_user=512), 10) / decision_work(
        make_policy("linucb", dim_user=256), 10
    )
    assert 3.5 < ratio <= 4.0


def test_monte_carlo_work_counts_the_most_draws_a_decision_can_make() -> None:
    """With ``target_rel_error`` a decision draws a pilot of ``n_sim`` and then up to
    ``max_sim``: counted so."""
    plain = make_policy("shared_lints", dim_user=4, dim_arm=3, n_sim=100)
    adaptive = make_policy(
        "shared_lints", dim_user=4, dim_arm=3, n_sim=100, target_rel_error=0.1, max_sim=5000
    )
    assert monte_carlo_draws(plain.config) == 102
    assert monte_carlo_draws(adaptive.config) == 102 + 5000
    assert decision_work(adaptive, 10) > 40 * decision_work(plain, 10) / 2


def test_the_hostile_tests_budgets_split_their_requests_as_they_say() -> None:
    """``tests/test_reliability_hostile.py``'s fixture budgets: its model's 1,000
    candidates over the inline share and within the budget, 100 groups of 75 over it,
    2 within, a k = 20 slate of 1,000 far over it."""
    from tests.test_reliability_hostile import FIXTURE_UNITS

    assert (DIM_USER, DIM_ARM) == (4, 3)
    settings = Settings()
    policy = make_policy("shared_lints", dim_user=DIM_USER, dim_arm=DIM_ARM)
    one = work_units(policy, 1000, None, 0)
    assert FIXTURE_UNITS["inline"] < one <= FIXTURE_UNITS["max"]
    assert 100 * work_units(policy, 75, None, 0) > FIXTURE_UNITS["max"]
    assert 2 * work_units(policy, 75, None, 0) <= FIXTURE_UNITS["max"]
    slate = work_units(policy, 1000, 20, settings.slate_marginal_draws)
    assert slate > settings.max_work_units


def test_a_per_arm_head_weighs_more_than_a_shared_head_of_its_width() -> None:
    """A per-arm head's quadratic forms are matrix-vector products (one arm's factor
    each), counted at ``PER_ARM`` times a shared head's matrix product of the same d."""
    shared = make_policy("shared_linucb", dim_user=32, dim_arm=32)
    per_arm = make_policy("linucb", dim_user=64)
    assert decision_work(per_arm, 100) > 8 * decision_work(shared, 100)


def test_the_benchmark_times_every_policy_and_writes_its_table(tmp_path: Path) -> None:
    """``benchmarks.work_units`` at a small size: a row per policy, width and count, with
    the old count beside the new, and its summary (no timing is asserted)."""
    from benchmarks import work_units as bench

    out = tmp_path / "work_units.json"
    assert bench.main(["--widths", "4", "--candidates", "5", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "work_units"
    assert [r["policy"] for r in doc["rows"]] == list(POLICIES)
    for row in doc["rows"]:
        assert row["units"] > 0 and row["old_units"] > 0 and row["ms"] > 0
        assert row["ns_per_unit"] == pytest.approx(row["ms"] * 1e6 / row["units"])
    assert doc["summary"]["max_work_units"] == Settings().max_work_units
