"""Seeded statistical tests on a synthetic problem with a known policy value.

Contexts are drawn uniformly from a finite set of types, so the true value of the
evaluation policy, Σ_types Σ_a π_e(a|x) q(x, a) / n_types, is exact. Tolerances are
stated per test; the seeds are fixed, and the acceptance bands are wide enough to hold
for any seed with high probability (the coverage band [0.90, 0.98] is about ±2.2
binomial standard deviations around 0.95 at 200 seeds).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from validation.ope import UNBIASED, check_feedback, estimate

N_SEEDS = 200
N_ROUNDS = 1000
N_RESAMPLES = 300
K = 4
N_TYPES = 20


@dataclass(frozen=True)
class Problem:
    q: np.ndarray  # (N_TYPES, K) true mean reward
    pi_b: np.ndarray  # (N_TYPES, K) logging policy
    pi_e: np.ndarray  # (N_TYPES, K) evaluation policy
    q_hat: np.ndarray  # (N_TYPES, K) a fixed, misspecified reward model

    @property
    def truth(self) -> float:
        return float((self.pi_e * self.q).sum(axis=1).mean())


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def make_problem(seed: int = 12345) -> Problem:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N_TYPES, 3))
    theta = rng.standard_normal((3, K))
    q = 1.0 / (1.0 + np.exp(-(x @ theta)))
    pi_b = softmax(0.5 * rng.standard_normal((N_TYPES, K)))
    pi_e = softmax(2.0 * (x @ theta))  # prefers the better actions: far from logging
    q_hat = np.clip(q + rng.normal(0.0, 0.15, q.shape), 0.0, 1.0)
    return Problem(q, pi_b, pi_e, q_hat)


def draw_logs(p: Problem, seed: int) -> list[tuple[np.ndarray, ...]]:
    """N_SEEDS logs of N_ROUNDS rounds, drawn in one vectorised pass."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, N_TYPES, size=(N_SEEDS, N_ROUNDS))
    cdf = np.cumsum(p.pi_b[types], axis=2)
    actions = (rng.random((N_SEEDS, N_ROUNDS, 1)) > cdf).sum(axis=2).clip(max=K - 1)
    rewards = (rng.random((N_SEEDS, N_ROUNDS)) < p.q[types, actions]).astype(np.float64)
    pscore = p.pi_b[types, actions]
    return [(types[s], actions[s], rewards[s], pscore[s]) for s in range(N_SEEDS)]


def run(name: str, p: Problem, logs: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, np.ndarray]:
    values, covered = np.empty(N_SEEDS), np.empty(N_SEEDS, dtype=bool)
    rng = np.random.default_rng(2024)
    for s, (types, actions, rewards, pscore) in enumerate(logs):
        fb = check_feedback(
            rewards, actions, pscore, p.pi_e[types], estimated_rewards=p.q_hat[types]
        )
        est = estimate(name, fb, rng, n_resamples=N_RESAMPLES)
        values[s] = est.value
        covered[s] = est.ci_low <= p.truth <= est.ci_high
    return values, covered


@pytest.fixture(scope="module")
def problem() -> Problem:
    return make_problem()


@pytest.fixture(scope="module")
def logs(problem: Problem) -> list[tuple[np.ndarray, ...]]:
    return draw_logs(problem, seed=7)


@pytest.mark.parametrize("name", sorted(UNBIASED))
def test_unbiased_estimators_center_on_the_truth(name: str, problem: Problem, logs: list) -> None:
    values, covered = run(name, problem, logs)
    se = values.std(ddof=1) / np.sqrt(N_SEEDS)
    assert abs(values.mean() - problem.truth) <= 3.0 * se, (values.mean(), problem.truth, se)
    assert 0.90 <= covered.mean() <= 0.98, covered.mean()


def test_dm_with_a_misspecified_model_is_biased(problem: Problem, logs: list) -> None:
    # the control: the same check must fail for a biased estimator (the test can fail)
    values, _ = run("dm", problem, logs)
    se = values.std(ddof=1) / np.sqrt(N_SEEDS)
    assert abs(values.mean() - problem.truth) > 3.0 * se


def uniform_log(p: Problem, rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    types = rng.integers(0, N_TYPES, n)
    actions = rng.integers(0, K, n)
    rewards = (rng.random(n) < p.q[types, actions]).astype(np.float64)
    return types, actions, rewards, np.full(n, 1.0 / K)


def test_replay_agrees_with_ips_on_a_uniform_log() -> None:
    # Li et al.'s setting: a deterministic policy replayed on a uniformly random log.
    rng = np.random.default_rng(99)
    p = make_problem(5)
    greedy = np.eye(K)[p.pi_e.argmax(axis=1)]
    truth = float((greedy * p.q).sum(axis=1).mean())
    for _ in range(10):
        types, actions, rewards, pscore = uniform_log(p, rng, 4000)
        fb = check_feedback(rewards, actions, pscore, greedy[types])
        rep = estimate("replay", fb, rng, n_resamples=400)
        ips = estimate("ips", fb, rng, n_resamples=400)
        assert rep.ci_low <= ips.ci_high and ips.ci_low <= rep.ci_high, (rep, ips)
        assert abs(rep.value - ips.value) <= ips.ci_high - ips.ci_low, (rep, ips)
        assert rep.params["n_matched"] == pytest.approx(4000 / K, rel=0.1)
        assert rep.ci_low - 0.05 <= truth <= rep.ci_high + 0.05


def test_replay_intervals_overlap_ips_for_a_stochastic_policy() -> None:
    # replay samples the policy's action, so it is noisier; the intervals still agree
    rng = np.random.default_rng(98)
    p = make_problem(5)
    for _ in range(10):
        types, actions, rewards, pscore = uniform_log(p, rng, 4000)
        fb = check_feedback(rewards, actions, pscore, p.pi_e[types])
        rep = estimate("replay", fb, rng, n_resamples=400)
        ips = estimate("ips", fb, rng, n_resamples=400)
        assert rep.ci_low <= ips.ci_high and ips.ci_low <= rep.ci_high, (rep, ips)
