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
from scipy import stats

from validation.ope import UNBIASED, check_feedback, estimate
from validation.ope.evaluate import paired_difference

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


#: Rare clicks: 12 uniformly logged arms of click rates 0.2–1 % (about 12 clicks in 2,000
#: rows), as in ``benchmarks.interval_coverage``.
RARE_RATES = np.array(
    [0.01, 0.01, 0.008, 0.008, 0.006, 0.006, 0.005, 0.005, 0.004, 0.004, 0.002, 0.002]
)


def rare_window(rng: np.random.Generator, rows: int, arms: tuple[int, ...]) -> list:
    """One window's feedback for policies each playing one arm of ``arms`` always (DR's
    reward model a constant, the window's mean)."""
    k = RARE_RATES.shape[0]
    actions = rng.integers(0, k, rows)
    rewards = (rng.random(rows) < RARE_RATES[actions]).astype(np.float64)
    q_hat = np.full((rows, k, 1), rewards.mean())
    return [
        check_feedback(
            rewards,
            actions,
            np.full(rows, 1.0 / k),
            np.tile(np.eye(k)[a][None, :, None], (rows, 1, 1)),
            None,
            q_hat,
        )
        for a in arms
    ]


@pytest.mark.parametrize("name", ["ips", "snips", "dr"])
def test_intervals_cover_when_rewards_are_rare(name: str) -> None:
    # a policy of value 0.01 on 2,000 rows sees about 1.7 matched clicks: the percentile
    # interval covered 0.80 of 300 windows (``[0, 0]`` without a matched click); the
    # event-adjusted one must cover at least 0.93 (0.95 − 2.5 binomial s.e. at 200) and
    # stay informative (a mean width under 5 % of the reward range, which is [0, 1])
    rng = np.random.default_rng(31)
    covered, widths = [], []
    for _ in range(200):
        (fb,) = rare_window(rng, 2000, (0,))
        est = estimate(name, fb, rng, n_resamples=N_RESAMPLES, interval="event_adjusted")
        covered.append(est.ci_low <= 0.01 <= est.ci_high)
        widths.append(est.ci_high - est.ci_low)
    assert np.mean(covered) >= 0.93, np.mean(covered)
    assert np.mean(widths) < 0.05, np.mean(widths)


def clicked_window(cand: int, prod: int, rows: int = 10000) -> list:
    """Feedback of the policies playing arm 0 and arm 1 always, on a uniform log of 12
    arms where ``cand`` of arm 0's rounds, ``prod`` of arm 1's and 5 others are clicked."""
    rng = np.random.default_rng(0)
    k = 12
    actions = rng.integers(0, k, rows)
    rewards = np.zeros(rows)
    for arm, clicks in ((0, cand), (1, prod), (5, 5)):
        rewards[rng.choice(np.flatnonzero(actions == arm), clicks, replace=False)] = 1.0
    q_hat = np.full((rows, k, 1), rewards.mean())
    return [
        check_feedback(
            rewards,
            actions,
            np.full(rows, 1.0 / k),
            np.tile(np.eye(k)[a][None, :, None], (rows, 1, 1)),
            None,
            q_hat,
        )
        for a in (0, 1)
    ]


@pytest.mark.parametrize(("cand", "prod"), [(4, 0), (5, 0), (7, 1), (12, 1), (20, 5)])
def test_the_paired_bound_agrees_with_the_exact_test_of_few_clicks(cand: int, prod: int) -> None:
    # reference: two policies of one arm each under the same weight differ by their
    # matched clicks; given their sum the candidate's are Binomial(sum, 1/2) when the two
    # are as good (the exact conditional test). The percentile bound of the DR
    # difference passed 4 vs 0 (one-sided p = 1/16), 5 vs 0 (1/32) and 7 vs 1 (9/256):
    # the gate erred 6.3 % at a nominal 2.5 % (benchmarks.interval_coverage). The
    # event-adjusted bound must refuse what the exact test does not reject at 2.5 % and
    # pass what it rejects at 0.5 % (between, at p ≈ 0.02, it is conservative).
    p_value = float(stats.binom.sf(cand - 1, cand + prod, 0.5))
    diff = paired_difference(
        *clicked_window(cand, prod),
        "dr",
        np.random.default_rng(1),
        n_resamples=2000,
        interval="event_adjusted",
    )
    if p_value > 0.025:
        assert diff.ci_low < 0.0, (p_value, diff)
    else:
        assert p_value < 0.005 and diff.ci_low > 0.0, (p_value, diff)
