"""The regret harness and its environments (small, seeded runs)."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bandit_core.envs import WheelEnvironment
from bandit_core.option_text import parse_overrides
from bandit_core.simulate import run_simulation
from bandit_core.types import Candidates
from benchmarks import peers, regret
from benchmarks.environments import (
    ClassificationEnvironment,
    ColdStartEnvironment,
    DriftEnvironment,
    Stationary,
    make_environment,
    sparse_linear,
)

TINY_NEURAL = [
    "--set",
    "neural_linear.hidden=8",
    "--set",
    "neural_linear.retrain_every=20",
    "--set",
    "neural_linear.max_train_steps=5",
    "--set",
    "neural_linear.device=cpu",
]


def _write_csv(path: Path, n: int = 60, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["f1", "species", "f2", "constant"])
        for i in range(n):
            label = ("cat", "dog", "eel")[i % 3]
            writer.writerow([f"{rng.normal(i % 3, 0.3):.4f}", label, f"{rng.normal():.4f}", "7"])
    return path


# --------------------------------------------------------------------------- environments
def test_wheel_stream_is_the_bandit_core_environment() -> None:
    env = make_environment("wheel", seed=0, delta=0.9)
    stream = env.stream(500, np.random.default_rng(1))
    wheel = WheelEnvironment(0.9)
    rng = np.random.default_rng(1)
    for t in range(500):  # same draw order as bandit_core.simulate: context, then u
        x, cands = wheel.sample(rng)
        assert rng.random() == stream.uniforms[t]
        np.testing.assert_array_equal(x, stream.contexts[t])
        np.testing.assert_array_equal(wheel.expected_rewards(x, cands), stream.means[t])


def test_uniform_normaliser_matches_the_wheel_closed_form() -> None:
    """Seeded: 20,000 contexts; the per-step uniform regret has s.d. ≈ 17 at δ = 0.5, so the
    mean is within ±0.5 (4 s.e. ≈ 0.48) of the closed form of NOTES.md."""
    env = make_environment("wheel", seed=0, delta=0.5)
    stream = env.stream(20_000, np.random.default_rng(2))
    assert stream.uniform_regret() / 20_000 == pytest.approx(
        WheelEnvironment(0.5).uniform_regret_per_step(), abs=0.5
    )


def test_classification_from_any_csv(tmp_path: Path) -> None:
    env = ClassificationEnvironment.from_csv(_write_csv(tmp_path / "animals.csv"), "species")
    assert env.classes == ("cat", "dog", "eel") and env.dim_user == 3 and env.dim_arm == 3
    np.testing.assert_allclose(env.features[:, :2].mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(env.features[:, :2].std(axis=0), 1.0, atol=1e-12)
    np.testing.assert_array_equal(env.features[:, 2], 0.0)  # a constant column z-scores to 0
    stream = env.stream(60, np.random.default_rng(0))
    labels = [int(np.argmax(m)) for m in stream.means]
    assert sorted(labels) == sorted(env.labels.tolist())  # one pass visits every row once
    assert stream.candidates[0].ids == env.classes
    assert env.reward(stream.means[0], labels[0], 0.5) == 1.0
    assert env.reward(stream.means[0], (labels[0] + 1) % 3, 0.5) == 0.0
    again = env.stream(60, np.random.default_rng(0))
    other = env.stream(60, np.random.default_rng(1))
    assert all(np.array_equal(a, b) for a, b in zip(stream.contexts, again.contexts, strict=True))
    assert not all(
        np.array_equal(a, b) for a, b in zip(stream.contexts, other.contexts, strict=True)
    )
    assert len(env.stream(150, np.random.default_rng(0))) == 150  # more steps: more passes


def test_classification_csv_errors_name_the_problem(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "a.csv")
    with pytest.raises(
        ValueError, match=r"--label-column 'kind' is not a column of .*columns are: f1, species"
    ):
        ClassificationEnvironment.from_csv(path, "kind")
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n1,a\nfoo,b\n")
    with pytest.raises(ValueError, match="line 3, column 'x': expected a number, got 'foo'"):
        ClassificationEnvironment.from_csv(bad, "y")
    with pytest.raises(ValueError, match="needs --data CSV and --label-column COL"):
        make_environment("classification", seed=0, data=path, label_column=None)


def test_sparse_linear_has_the_requested_support() -> None:
    env = sparse_linear(np.random.default_rng(0), n_arms=6, dim=12, nonzero=2)
    assert isinstance(env, Stationary)
    theta = env.env.theta  # type: ignore[attr-defined]
    assert np.all((theta != 0).sum(axis=1) == 2)


def test_drift_switches_the_weights_at_the_given_step() -> None:
    env = DriftEnvironment.make(np.random.default_rng(0), n_arms=3, dim=4, switch_at=10)
    stream = env.stream(20, np.random.default_rng(1))
    np.testing.assert_allclose(stream.means[9], env.theta @ stream.contexts[9])
    np.testing.assert_allclose(stream.means[10], env.theta_after @ stream.contexts[10])


def test_cold_start_adds_arms_with_features_during_the_run() -> None:
    env = ColdStartEnvironment.make(
        np.random.default_rng(0), n_items=6, initial_items=2, arrival_every=5
    )
    stream = env.stream(30, np.random.default_rng(1))
    sizes = [len(c) for c in stream.candidates]
    assert sizes[0] == 2 and sizes[5] == 3 and sizes[-1] == 6
    assert stream.candidates[-1].ids[-1] == "item-5"
    np.testing.assert_array_equal(stream.candidates[-1].features, env.items)


# --------------------------------------------------------------------------- harness
def test_every_policy_sees_the_same_stream() -> None:
    env = make_environment("wheel", seed=0, delta=0.7)
    stream = env.stream(50, np.random.default_rng(0))
    seen: list[list[np.ndarray]] = []

    class Recorder:
        name = "recorder"

        def __init__(self) -> None:
            self.contexts: list[np.ndarray] = []
            seen.append(self.contexts)

        def choose(
            self, context: np.ndarray, candidates: Candidates, rng: np.random.Generator
        ) -> tuple[int, float]:
            self.contexts.append(context)
            return int(rng.integers(len(candidates))), 1.0 / len(candidates)

        def learn(self, *args: Any) -> None:
            pass

        def close(self) -> None:
            pass

    for seed in (1, 2):
        regret.run_agent(Recorder(), env, stream, np.random.default_rng(seed), seed)
    assert all(np.array_equal(a, b) for a, b in zip(seen[0], seen[1], strict=True))


def test_learners_see_rewards_divided_by_the_reward_scale() -> None:
    env = make_environment("wheel", seed=0, delta=0.5)
    stream = env.stream(400, np.random.default_rng(3))
    assert stream.reward_scale() == 50.0  # the ring arm pays μ3 = 50
    taught: list[float] = []

    class Greedy:
        name = "greedy"

        def choose(
            self, context: np.ndarray, candidates: Candidates, rng: np.random.Generator
        ) -> tuple[int, float]:
            return 0, 1.0

        def learn(
            self, context: np.ndarray, candidates: Candidates, arm: int, reward: float, p: float
        ) -> None:
            taught.append(reward)

        def close(self) -> None:
            pass

    result = regret.run_agent(Greedy(), env, stream, np.random.default_rng(4), 0, reward_scale=50.0)
    assert result.cumulative_reward == pytest.approx(50.0 * sum(taught), rel=1e-12)
    assert max(taught) == pytest.approx(1.0, abs=1e-3)  # 50 + N(0, 0.01²), divided by 50


def test_harness_regret_equals_the_bandit_core_simulation() -> None:
    """The harness loop and bandit_core.simulate agree on the same stream and seeds."""
    env = make_environment("wheel", seed=0, delta=0.5)
    stream = env.stream(300, np.random.default_rng(5))
    agent = regret.make_agent("lints", env, 0, stream.candidates[0], {})
    result = regret.run_agent(agent, env, stream, np.random.default_rng(6), 0)
    reference = run_simulation(
        WheelEnvironment(0.5),
        regret.make_agent("lints", env, 0, stream.candidates[0], {}).policy,
        300,
        np.random.default_rng(5),
        np.random.default_rng(6),
    )
    assert result.cumulative_regret == pytest.approx(reference.cumulative_regret, rel=1e-12)
    assert result.cumulative_reward == pytest.approx(reference.cumulative_reward, rel=1e-12)


def test_cli_writes_the_json_and_the_plot(tmp_path: Path) -> None:
    out, png = tmp_path / "wheel.json", tmp_path / "wheel.png"
    reports = regret.main(
        [
            "--env", "wheel", "--delta", "0.5", "--policies", "uniform,linucb,neural_linear",
            "--steps", "120", "--seeds", "0,1", "--json", str(out), "--plot", str(png), "--quiet",
            *TINY_NEURAL,
        ]
    )  # fmt: skip
    payload = json.loads(out.read_text())
    assert payload["env"] == "wheel delta=0.5" and len(reports) == 1
    assert len(payload["results"]) == 6
    keys = {
        "policy",
        "seed",
        "steps",
        "cumulative_regret",
        "cumulative_reward",
        "normalized_regret",
        "seconds",
    }
    for row in payload["results"]:
        assert keys <= set(row)
        assert row["steps"] == 120 and row["seconds"] >= 0.0
        assert row["normalized_regret"] == pytest.approx(
            100 * row["cumulative_regret"] / _uniform(row["seed"], 120)
        )
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    summary = {s.policy: s for s in regret.summarise(reports[0])}
    # uniform over 120 steps: its expectation is exactly 100; seeded run, 2 seeds
    assert 60.0 < summary["uniform"].normalized_mean < 140.0
    (reloaded,) = regret.load_reports(out)
    assert regret.summarise(reloaded) == regret.summarise(reports[0])
    table = regret.markdown_table(reloaded)
    assert "| policy | cumulative regret |" in table and "| linucb |" in table


def _uniform(seed: int, steps: int) -> float:
    env = make_environment("wheel", seed=seed, delta=0.5)
    return env.stream(steps, np.random.default_rng([seed, 11])).uniform_regret()


def test_cli_runs_a_csv_classification_and_several_wheels(tmp_path: Path) -> None:
    data = _write_csv(tmp_path / "animals.csv", n=45)
    out = tmp_path / "c.json"
    regret.main(
        [
            "--env", "classification", "--data", str(data), "--label-column", "species",
            "--policies", "uniform,lints", "--seeds", "0", "--json", str(out), "--quiet",
        ]
    )  # fmt: skip
    payload = json.loads(out.read_text())
    assert payload["env"] == "classification:animals" and payload["results"][0]["steps"] == 45
    out2 = tmp_path / "w.json"
    regret.main(
        [
            "--env",
            "wheel",
            "--delta",
            "0.5,0.9",
            "--policies",
            "uniform",
            "--steps",
            "30",
            "--seeds",
            "0",
            "--json",
            str(out2),
            "--quiet",
        ]
    )
    assert [r["env"] for r in json.loads(out2.read_text())] == [
        "wheel delta=0.5",
        "wheel delta=0.9",
    ]


def test_a_missing_peer_is_reported_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        regret, "peer_unavailable", lambda name: "vowpalwabbit is not installed (test)"
    )
    out = tmp_path / "p.json"
    regret.main(
        [
            "--env",
            "linear",
            "--policies",
            "uniform,vw_squarecb",
            "--steps",
            "20",
            "--seeds",
            "0",
            "--json",
            str(out),
            "--quiet",
        ]
    )
    payload = json.loads(out.read_text())
    assert payload["missing"] == {"vw_squarecb": "vowpalwabbit is not installed (test)"}
    assert {r["policy"] for r in payload["results"]} == {"uniform"}
    assert "not run: vw_squarecb" in capsys.readouterr().out


def test_peer_unavailable_names_the_missing_module(monkeypatch: pytest.MonkeyPatch) -> None:
    real = peers.importlib.import_module

    def fake(name: str) -> Any:
        if name == "mabwiser.mab":
            raise ImportError("No module named 'mabwiser'")
        return real(name)

    monkeypatch.setattr(peers.importlib, "import_module", fake)
    assert "mabwiser.mab is not installed" in str(peers.peer_unavailable("mabwiser_linucb"))
    assert "unknown peer" in str(peers.peer_unavailable("nope"))


@pytest.mark.parametrize("name", peers.PEERS)
def test_installed_peers_run_in_the_same_loop(name: str) -> None:
    if peers.peer_unavailable(name) is not None:
        pytest.skip(
            f"{name}: optional 'bench' extra not installed ({peers.peer_unavailable(name)})"
        )
    for env_name, options in (("wheel", {"delta": 0.9}), ("cold_start", {"arrival_every": 20})):
        env = make_environment(env_name, seed=0, **options)
        stream = env.stream(80, np.random.default_rng(0))
        agent = regret.make_agent(name, env, 0, stream.candidates[0], {})
        with warnings.catch_warnings():
            # third-party peers may warn about their own deprecations; those are theirs
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            result = regret.run_agent(agent, env, stream, np.random.default_rng(1), 0)
        assert result.steps == 80 and np.isfinite(result.cumulative_regret)


def test_set_overrides_are_parsed() -> None:
    parsed = parse_overrides(
        ["neural_linear.hidden=100,100", "dropout.mode=ucb", "lints.v=0.5", "ensemble.hidden=20"]
    )
    assert parsed == {
        "neural_linear": {"hidden": (100, 100)},
        "dropout": {"mode": "ucb"},
        "lints": {"v": 0.5},
        "ensemble": {"hidden": (20,)},
    }
    with pytest.raises(ValueError, match=r"--set expects policy\.option=value; got 'hidden=3'"):
        parse_overrides(["hidden=3"])


def test_our_linucb_is_the_same_algorithm_as_mabwisers() -> None:
    """Fed the same data, our per-arm LinUCB (α = 1, λ = 1) and mabwiser's give the same
    UCB score to every arm at every step; the two differ only in how they break exact
    ties (ours uniformly, mabwiser's by arm order)."""
    reason = peers.peer_unavailable("mabwiser_linucb")
    if reason is not None:
        pytest.skip(f"mabwiser_linucb: optional 'bench' extra not installed ({reason})")
    env = make_environment("wheel", seed=3, delta=0.5)
    stream = env.stream(400, np.random.default_rng(3))
    scale = stream.reward_scale()
    ours = regret.make_agent("linucb", env, 3, stream.candidates[0], {})
    theirs = regret.make_agent("mabwiser_linucb", env, 3, stream.candidates[0], {})
    rng, logger = np.random.default_rng(4), np.random.default_rng(5)
    agreed = 0
    for t in range(len(stream)):
        x, cands = stream.contexts[t], stream.candidates[t]
        decision = ours.choose_decision(x, cands, rng)
        expected = theirs.mab.predict_expectations(x[None])
        np.testing.assert_allclose(
            decision.scores, [expected[a] for a in cands.ids], rtol=1e-9, atol=1e-12
        )
        if decision.propensity == 1.0:  # no tie: the same arm
            agreed += int(decision.arm == theirs.choose(x, cands, rng)[0])
        arm = int(logger.integers(len(cands.ids)))  # both learn the same logged data
        reward = env.reward(stream.means[t], arm, float(stream.uniforms[t])) / scale
        ours.learn(x, cands, arm, reward, 0.2)
        theirs.learn(x, cands, arm, reward, 0.2)
    assert agreed >= len(stream) - 5  # every decision without a tie (the first few tie)


def test_with_mabwisers_tie_rule_our_linucb_makes_its_decisions() -> None:
    """With ties broken by candidate order (``ties="first"``), our LinUCB run online on
    the wheel chooses exactly mabwiser's arm at every step, ties included, so their
    regrets are equal: the tie rule is the only difference between the two."""
    reason = peers.peer_unavailable("mabwiser_linucb")
    if reason is not None:
        pytest.skip(f"mabwiser_linucb: optional 'bench' extra not installed ({reason})")
    env = make_environment("wheel", seed=1, delta=0.5)
    stream = env.stream(1500, np.random.default_rng([1, 11]))

    def run(name: str, overrides: dict[str, dict[str, object]]) -> tuple[list[int], float]:
        chosen: list[int] = []
        agent = regret.make_agent(name, env, 1, stream.candidates[0], overrides)
        result = regret.run_agent(
            agent, env, stream, np.random.default_rng(2), 1, None, stream.reward_scale(), chosen
        )
        return chosen, result.cumulative_regret

    theirs = run("mabwiser_linucb", {})
    assert run("linucb", {"linucb": {"ties": "first"}}) == theirs
    # the default rule splits the first ties at random and takes another path
    assert run("linucb", {})[0] != theirs[0]


def test_regret_breakdown_splits_the_harness_run_exactly() -> None:
    from benchmarks.regret_breakdown import breakdown

    parts = breakdown("linucb", 0.5, seed=1, steps=600, overrides={})
    env = make_environment("wheel", 1, delta=0.5)
    stream = env.stream(600, np.random.default_rng([1, 11]))
    agent = regret.make_agent("linucb", env, 1, stream.candidates[0], {})
    whole = regret.run_agent(
        agent, env, stream, np.random.default_rng([1, 13]), 1, None, stream.reward_scale()
    )
    assert parts.total == pytest.approx(whole.normalized_regret, rel=1e-12)
    assert parts.inner + parts.ring == pytest.approx(parts.total, rel=1e-12)
    assert sum(parts.ring_by_phase) == pytest.approx(parts.ring, rel=1e-12)
    assert parts.inner > 0.0 and parts.ring > 0.0  # 600 steps: both kinds of mistakes
    # every wrong pick in the ring costs 48.8 (the 1.2 arm) or 49 (another quadrant's arm)
    ring_cost = 48.8 * parts.ring_wrong_safe + 49.0 * parts.ring_wrong_quadrant
    assert ring_cost * 100.0 / stream.uniform_regret() == pytest.approx(parts.ring, rel=1e-9)
