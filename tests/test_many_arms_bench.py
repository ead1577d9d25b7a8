"""The many-arm benchmark environments and the hybrid policies in the regret harness."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import regret, regret_merge
from benchmarks.environments import make_environment


def test_many_arms_is_a_seeded_classification_bandit_with_many_arms() -> None:
    env = make_environment("many_arms", seed=3)
    assert env.dim_arm >= 25 and env.dim_user >= 16 and env.binary_rewards
    stream = env.stream(500, np.random.default_rng(0))
    means = np.stack(stream.means)
    np.testing.assert_array_equal(means.sum(axis=1), 1.0)  # one true class per row
    assert len(np.unique(means.argmax(axis=1))) == env.dim_arm  # every class occurs
    again = make_environment("many_arms", seed=3).stream(500, np.random.default_rng(0))
    np.testing.assert_array_equal(np.stack(again.contexts), np.stack(stream.contexts))
    other = make_environment("many_arms", seed=4).stream(500, np.random.default_rng(0))
    assert not np.allclose(np.stack(other.contexts), np.stack(stream.contexts))


def test_many_arms_options_are_checked() -> None:
    with pytest.raises(ValueError, match="n_arms >= 2"):
        make_environment("many_arms", seed=0, n_arms=1)


def test_digits_needs_no_csv() -> None:
    env = make_environment("digits", seed=0)
    assert (env.dim_user, env.dim_arm) == (64, 10)
    assert env.n_rows == 1797  # type: ignore[attr-defined]


def test_hybrid_shared_features_follow_one_rule() -> None:
    """``x ⊗ a`` is in the hybrid's shared block unless the arm features are the arm's
    one-hot (then it would repeat the per-arm blocks)."""
    one_hot = make_environment("many_arms", seed=0)
    with_features = make_environment("cold_start", seed=0)
    assert regret.policy_options("hybrid_lints", one_hot)["interactions"] is False
    assert regret.policy_options("hybrid_linucb", with_features)["interactions"] is True


def test_cli_runs_the_hybrid_policies_on_the_many_arm_env(tmp_path: Path) -> None:
    out = tmp_path / "many.json"
    regret.main(
        [
            "--env",
            "many_arms",
            "--policies",
            "uniform,hybrid_linucb,hybrid_lints",
            "--steps",
            "1500",
            "--seeds",
            "0",
            "--quiet",
            "--json",
            str(out),
        ]
    )
    rows = {r["policy"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {"uniform", "hybrid_linucb", "hybrid_lints"}
    # both learn: fewer mistakes than picking uniformly at random
    assert rows["hybrid_linucb"]["normalized_regret"] < rows["uniform"]["normalized_regret"]
    assert rows["hybrid_lints"]["normalized_regret"] < rows["uniform"]["normalized_regret"]


def test_reports_of_single_seeds_merge_into_one_table(tmp_path: Path) -> None:
    paths = []
    for seed in (0, 1):
        path = tmp_path / f"s{seed}.json"
        args = ["--env", "many_arms", "--policies", "uniform,linucb", "--steps", "50"]
        regret.main([*args, "--seeds", str(seed), "--quiet", "--json", str(path)])
        paths.append(str(path))
    merged = regret_merge.main([str(tmp_path / "all.json"), *paths])
    assert merged.seeds == [0, 1] and len(merged.results) == 4
    with pytest.raises(ValueError, match=r"a \(policy, seed\) pair occurs in several reports"):
        regret_merge.main([str(tmp_path / "twice.json"), paths[0], paths[0]])
