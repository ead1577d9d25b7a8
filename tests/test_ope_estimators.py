"""Estimators against hand-computed values, their identities, and their properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from validation.ope import check_feedback, effective_sample_size, estimate, round_terms

# Four logged rounds, two actions, one slot. Worked by hand:
#   π_e(a_i | x_i) = [0.2, 0.4, 0.7, 0.9],  w = π_e / pscore = [0.4, 0.8, 2.8, 1.125]
#   r w = [0.4, 0, 2.8, 0]                         → IPS = 3.2 / 4 = 0.8
#   Σ w = 5.125                                    → SNIPS = 3.2 / 5.125
#   q̂(x_i, π_e) = [0.18, 0.24, 0.54, 0.11] (Σ 1.07) → DM = 0.2675
#   r − q̂(x_i, a_i) = [0.5, −0.3, 0.4, −0.1];  w (r − q̂) = [0.2, −0.24, 1.12, −0.1125] (Σ 0.9675)
#                                                  → DR = (1.07 + 0.9675) / 4 = 0.509375
#                                                  → SNDR = 0.2675 + 0.9675 / 5.125
#   switch λ = 1 keeps w ≤ 1: Σ = 0.2 − 0.24 = −0.04 → (1.07 − 0.04) / 4 = 0.2575
#   DRos λ = 1: ŵ = w / (w² + 1)                   → 30825799 / 105107600 (exact fraction)
#   IPS clipped at 1: r min(w, 1) = [0.4, 0, 1, 0] → 0.35
REWARD = np.array([1.0, 0.0, 1.0, 0.0])
ACTION = np.array([0, 1, 1, 0])
PSCORE = np.array([0.5, 0.5, 0.25, 0.8])
PI = np.array([[0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.9, 0.1]])
Q = np.array([[0.5, 0.1], [0.2, 0.3], [0.4, 0.6], [0.1, 0.2]])

EXPECTED = {
    ("ips", None): 0.8,
    ("snips", None): 3.2 / 5.125,
    ("dm", None): 0.2675,
    ("dr", None): 0.509375,
    ("sndr", None): 0.2675 + 0.9675 / 5.125,
    ("switch_dr", 1.0): 0.2575,
    ("dros", 1.0): 30825799 / 105107600,
}


def feedback(q: np.ndarray | None = Q) -> object:
    return check_feedback(
        REWARD,
        ACTION,
        PSCORE,
        PI[:, :, None],
        estimated_rewards=None if q is None else q[:, :, None],
    )


@pytest.mark.parametrize(("name", "lam"), list(EXPECTED))
def test_hand_computed_values(name: str, lam: float | None) -> None:
    options = {} if lam is None else {"lambda_": lam}
    value = round_terms(name, feedback(), **options).value()
    assert value == pytest.approx(EXPECTED[(name, lam)], rel=1e-14)


def test_clipped_ips_hand_computed() -> None:
    assert round_terms("ips", feedback(None), clip=1.0).value() == pytest.approx(0.35, rel=1e-14)


def test_replay_hand_computed() -> None:
    # uniform log over 2 actions; deterministic evaluation policy picks [0, 1, 1, 0];
    # logged actions [0, 0, 1, 1] match on rounds 0 and 2, whose rewards are 1 and 1.
    fb = check_feedback(
        [1.0, 0.0, 1.0, 1.0], [0, 0, 1, 1], [0.5] * 4, np.eye(2)[[0, 1, 1, 0]][:, :, None]
    )
    terms = round_terms("replay", fb, np.random.default_rng(0))
    assert terms.value() == 1.0
    assert terms.params["n_matched"] == 2.0


def test_replay_rejects_non_uniform_logs() -> None:
    with pytest.raises(
        ValueError, match=r"replay needs a uniformly random log: .* got 0\.25 at index 2"
    ):
        round_terms("replay", feedback(None), np.random.default_rng(0))


def test_ess_hand_computed() -> None:
    # (Σ w)² / Σ w² = 5.125² / (0.16 + 0.64 + 7.84 + 1.265625)
    est = estimate("ips", feedback(None), np.random.default_rng(0), n_resamples=50)
    assert est.ess == pytest.approx(5.125**2 / 9.905625, rel=1e-14)
    assert est.max_weight == pytest.approx(2.8)
    assert effective_sample_size(np.zeros(3)) == 0.0


def test_ess_of_weights_whose_squares_overflow() -> None:
    """Weights of a logged propensity of 10⁻³⁰⁰: Σ w² overflowed, the ESS was NaN and the
    gate's reason said "effective sample size nan" (and its JSON was not JSON)."""
    weights = np.array([1e300] * 10 + [1.0] * 90)
    assert effective_sample_size(weights) == pytest.approx(10.0, rel=1e-12)
    assert effective_sample_size(weights / 1e300) == pytest.approx(10.0, rel=1e-12)


def test_dr_equals_ips_when_the_model_is_zero() -> None:
    fb = feedback(np.zeros_like(Q))
    assert round_terms("dr", fb).value() == pytest.approx(round_terms("ips", fb).value(), rel=1e-15)
    assert round_terms("sndr", fb).value() == pytest.approx(
        round_terms("snips", fb).value(), rel=1e-15
    )


def test_dr_equals_dm_when_the_model_predicts_every_logged_reward() -> None:
    q = Q.copy()
    q[np.arange(4), ACTION] = REWARD  # exact on the logged actions, arbitrary elsewhere
    fb = feedback(q)
    assert round_terms("dr", fb).value() == pytest.approx(round_terms("dm", fb).value(), rel=1e-15)


@pytest.mark.parametrize("name", ["switch_dr", "dros"])
def test_lambda_limits_are_dr_and_dm(name: str) -> None:
    fb = feedback()
    assert round_terms(name, fb, lambda_=np.inf).value() == pytest.approx(EXPECTED[("dr", None)])
    assert round_terms(name, fb, lambda_=0.0).value() == pytest.approx(EXPECTED[("dm", None)])


def test_unknown_estimator_and_option_are_rejected() -> None:
    with pytest.raises(ValueError, match="Unknown estimator 'ipw'"):
        round_terms("ipw", feedback())
    with pytest.raises(ValueError, match=r"Unknown option.*'clip'.*for dr"):
        round_terms("dr", feedback(), clip=3.0)
    with pytest.raises(
        ValueError, match=r"'clip' parameter of ips must be None or a float in \(0, inf\]"
    ):
        round_terms("ips", feedback(), clip=0.0)
    with pytest.raises(
        ValueError, match=r"'lambda_' parameter of dros must be a float in \[0, inf\]"
    ):
        round_terms("dros", feedback(), lambda_=-1.0)


@st.composite
def logs(draw: st.DrawFn) -> tuple[np.ndarray, ...]:
    n = draw(st.integers(1, 30))
    k = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    reward = rng.uniform(-3.0, 5.0, n) * draw(st.sampled_from([1.0, 1e-3, 1e3]))
    action = rng.integers(0, k, n)
    pscore = rng.uniform(1e-4, 1.0, n)
    pi = rng.dirichlet(np.full(k, draw(st.sampled_from([0.05, 1.0, 10.0]))), n)
    return reward, action, pscore, pi


@settings(max_examples=200, deadline=None)
@given(logs())
def test_snips_stays_inside_the_observed_reward_range(log: tuple[np.ndarray, ...]) -> None:
    reward, action, pscore, pi = log
    value = round_terms("snips", check_feedback(reward, action, pscore, pi)).value()
    if np.all(pi[np.arange(len(action)), action] == 0):
        assert value == 0.0  # no evidence at all
    else:
        span = 1e-9 * max(1.0, np.abs(reward).max())
        assert reward.min() - span <= value <= reward.max() + span


@settings(max_examples=100, deadline=None)
@given(logs())
def test_dr_identities_hold_on_random_logs(log: tuple[np.ndarray, ...]) -> None:
    reward, action, pscore, pi = log
    n, k = pi.shape
    q = np.random.default_rng(n * 31 + k).normal(size=(n, k))
    zero = check_feedback(reward, action, pscore, pi, estimated_rewards=np.zeros((n, k)))
    scale = max(1.0, np.abs(reward).max() / pscore.min())
    assert round_terms("dr", zero).value() == pytest.approx(
        round_terms("ips", zero).value(), abs=1e-12 * scale
    )
    q[np.arange(n), action] = reward
    exact = check_feedback(reward, action, pscore, pi, estimated_rewards=q)
    assert round_terms("dr", exact).value() == pytest.approx(
        round_terms("dm", exact).value(), abs=1e-12 * scale
    )
