"""Simulated users: ``run_simulation(users=...)`` and ``banditops simulate --users/--set``
decide each step for its user, so floors per hashed user group hold per group there as
they do in the service."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bandit_core import make_policy
from bandit_core.envs import LogisticClickEnvironment
from bandit_core.option_text import parse_overrides
from bandit_core.simulate import run_simulation
from bandit_core.user_groups import simulated_users, user_group_key
from ops.cli import app

FLOORS = {"group_0": 0.05, "group_2": 0.03}


def _env() -> LogisticClickEnvironment:
    return LogisticClickEnvironment.make(
        np.random.default_rng(4), n_items=20, dim_user=4, dim_arm=3, n_candidates=8
    )


def _policy() -> object:
    return make_policy(
        "shared_linucb",
        dim_user=4,
        dim_arm=3,
        interactions=True,
        floor=0.002,
        segment_user_groups=3,
        segment_floors=FLOORS,
    )


def test_each_step_decides_for_its_users_group() -> None:
    steps = 1500
    users = simulated_users(60, steps, np.random.default_rng(0))
    assert len(set(users)) > 50
    result = run_simulation(
        _env(), _policy(), steps, np.random.default_rng(1), np.random.default_rng(2), users=users
    )
    groups = np.array([user_group_key(u, 3) for u in users])
    for key in ("group_0", "group_1", "group_2"):
        floor = FLOORS.get(key, 0.002)
        props = result.propensities[groups == key]
        assert props.size > 300
        assert props.min() >= floor - 1e-15
        assert props.min() <= floor + 1e-12  # the floor binds: UCB alone is greedy
    # without users every step gets the global floor only
    alone = run_simulation(
        _env(), _policy(), steps, np.random.default_rng(1), np.random.default_rng(2)
    )
    assert alone.propensities.min() == pytest.approx(0.002)
    with pytest.raises(ValueError, match=r"users must give one user per step \(10\); got 3"):
        run_simulation(
            _env(), _policy(), 10, np.random.default_rng(1), np.random.default_rng(2), users[:3]
        )


def test_simulate_command_takes_options_and_users(tmp_path: Path) -> None:
    out = tmp_path / "sim.json"
    floors = json.dumps(FLOORS)
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "--env",
            "logistic",
            "--policies",
            "shared_linucb,uniform",
            "--steps",
            "1200",
            "--users",
            "300",
            "--set",
            "shared_linucb.floor=0.002",
            "--set",
            "shared_linucb.segment_user_groups=3",
            "--set",
            f"shared_linucb.segment_floors={floors}",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = {r["policy"]: r for r in json.loads(out.read_text())["results"]}
    by_group = rows["shared_linucb"]["min_propensity_by_group"]
    assert by_group["group_0"] == pytest.approx(0.05)
    assert by_group["group_1"] == pytest.approx(0.002)
    assert by_group["group_2"] == pytest.approx(0.03)
    assert rows["uniform"]["min_propensity_by_group"] == {}
    assert "group_0 0.0500" in result.output

    bad = [
        (["--set", "shared_linucb.floor=2"], "floor"),
        (["--set", "floor=0.1"], "policy.option=value"),
        (["--set", "shared_linucb.segment_floors={bad"], "not valid JSON"),
        (["--set", "lints.v=0.5"], "which --policies does not run"),
        (["--users", "1" + "0" * 24], "--users"),  # a population too large to draw from
        (["--seed", "-5"], "--seed"),
        (["--policies", " , "], "name at least one policy"),  # it printed an empty table
    ]
    for extra, message in bad:
        failed = CliRunner().invoke(
            app, ["simulate", "--policies", "shared_linucb", "--steps", "5", *extra]
        )
        assert failed.exit_code == 2, (extra, failed.output)
        assert message in failed.output, (extra, failed.output)


def test_set_values_may_be_json() -> None:
    parsed = parse_overrides(
        ['a.segment_floors={"group_0": 0.1}', "a.hidden=[20, 10]", "a.floor=0.01"]
    )
    assert parsed == {"a": {"segment_floors": {"group_0": 0.1}, "hidden": (20, 10), "floor": 0.01}}


def test_the_regret_harness_decides_each_step_for_its_user() -> None:
    """``benchmarks.regret --users``: our agents decide each step for its user (floors per
    group hold per group); peers are never given one."""
    from benchmarks import regret
    from benchmarks.environments import make_environment

    env = make_environment("linear", seed=0)
    steps = 1200
    stream = env.stream(steps, np.random.default_rng(1))
    users = simulated_users(50, steps, np.random.default_rng(2))
    options = {
        **regret.policy_options("shared_linucb", env),
        "floor": 0.002,
        "segment_user_groups": 3,
        "segment_floors": FLOORS,
    }

    class Recording(regret.PolicyAgent):
        seen: list[tuple[str | None, float]]

        def choose(self, context, candidates, rng):  # type: ignore[no-untyped-def]
            arm, prop = super().choose(context, candidates, rng)
            self.seen.append((self.user, prop))
            return arm, prop

    agent = Recording("shared_linucb", make_policy("shared_linucb", **options))
    agent.seen = []
    regret.run_agent(agent, env, stream, np.random.default_rng(3), 0, users=users)
    assert [u for u, _ in agent.seen] == users
    props = np.array([p for _, p in agent.seen])
    groups = np.array([user_group_key(u, 3) for u in users])
    for key in ("group_0", "group_1", "group_2"):
        assert props[groups == key].min() >= FLOORS.get(key, 0.002) - 1e-15
    assert props[groups == "group_0"].min() == pytest.approx(0.05)
    args = regret.build_parser().parse_args(["--env", "linear", "--users", "20"])
    assert args.users == 20
