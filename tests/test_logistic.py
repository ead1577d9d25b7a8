"""The logistic model's Laplace update: each reward moves the MAP weights to the root of
the one-dimensional stationarity equation, whatever the curvature."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import expit

from bandit_core.linalg import inverse_cholesky
from bandit_core.policies.logistic import MAP_TOLERANCE, laplace_update, map_step


@pytest.mark.parametrize("q_range", [(0.01, 1.0), (1.0, 10.0), (10.0, 100.0), (100.0, 1e4)])
def test_each_update_lands_on_the_map_weights(q_range: tuple[float, float]) -> None:
    """After ``(φ, r)`` the mean ``w`` satisfies ``A (w − m) = (r − σ(φᵀw)) φ`` (the MAP of
    the Gaussian prior times one likelihood term). Before, five plain Newton steps from 0
    missed it by more than 1e-6 in 17 % of updates with ``φᵀA⁻¹φ`` in [10, 100], by up to
    0.98 of the step: Newton bounces between the two sides of the sigmoid's bend."""
    rng = np.random.default_rng(0)
    d = 6
    worst = 0.0
    for _ in range(400):
        root = rng.standard_normal((d, d))
        precision = root @ root.T + np.eye(d)
        u = inverse_cholesky(precision)
        mean = rng.standard_normal(d)
        phi = rng.standard_normal(d)
        q_now = float(phi @ np.linalg.solve(precision, phi))
        phi *= np.sqrt(10.0 ** rng.uniform(*np.log10(q_range)) / q_now)
        reward = float(rng.integers(2)) if rng.random() < 0.8 else float(rng.uniform())
        new_mean, new_u, curvature = laplace_update(mean, u, phi, reward, steps=50)
        lhs = precision @ (new_mean - mean)
        rhs = (reward - expit(phi @ new_mean)) * phi
        worst = max(worst, float(np.max(np.abs(lhs - rhs)) / np.max(np.abs(phi))))
        z = float(phi @ new_mean)  # σ(z) σ(−z): p (1 − p) loses digits where σ nears 1
        assert curvature == pytest.approx(expit(z) * expit(-z), rel=1e-9, abs=1e-300)
        expected = precision + curvature * np.outer(phi, phi)
        np.testing.assert_allclose(new_u.T @ new_u @ expected, np.eye(d), atol=1e-6)
    assert worst <= 1e-9


@pytest.mark.parametrize(
    ("eta0", "q", "reward", "logit"),
    [  # the roots from 600 bisections in 60-digit arithmetic (mpmath)
        (-50.0, 1e16, 1.0, 32.42941908695424),
        (-50.0, 1e15, 1.0, 30.154816425021463),
        (-1.24e8, 1.24e20, 1.0, 27.631020893096759),
        (6.85e6, 5.62e18, 0.0, -27.43310012273468),
        (-5.85, 4.44e19, 1.0, 41.384643546522987),
        (3.0, 1e7, 0.5, 1.199999520000336e-6),
    ],
)
def test_a_large_q_lands_the_row_s_logit_on_its_root(
    eta0: float, q: float, reward: float, logit: float
) -> None:
    """With ``q = φᵀA⁻¹φ`` past ~1e13 (features of 1e4 with interactions) the absolute
    test on ``f`` passed a ``t`` 100× too large, and 50 halvings of ``[r − 1, r]`` could
    not resolve ``t ≈ 1/q``: the row's logit landed at 9,045 for a root at 32.4 (at
    1.24e20: −99,110 for 27.6) and its curvature was exactly 0, so the precision did not
    learn the row (audit, stop 54). Solved for the logit, it lands within 1e-9."""
    t = map_step(eta0, q, reward, 50)
    assert reward - 1.0 <= t <= reward
    assert eta0 + t * q == pytest.approx(logit, rel=1e-9, abs=1e-9)
    phi = np.array([math.sqrt(q)])  # A = I: q = φᵀA⁻¹φ; the mean puts η₀ on the row
    _, _, curvature = laplace_update(np.array([eta0 / phi[0]]), np.eye(1), phi, reward, 50)
    assert curvature == pytest.approx(float(expit(logit)) * float(expit(-logit)), rel=1e-6)
    assert curvature > 0.0  # p (1 − p) was 0 once σ rounded to 1: the row not learnt


def test_the_scalar_equation_is_solved_in_its_bracket_where_newton_bounces() -> None:
    """``f(t) = t − r + σ(η₀ + t q)`` rises, so its root lies in ``[r − 1, r]``: the case
    where Newton from 0 bounced between 0.015 and 0.807 for good, and extremes."""
    for eta0, q, reward in [
        (-4.280429176864048, 13.525828604395572, 1.0),
        (40.0, 1e4, 0.0),
        (-40.0, 1e4, 1.0),
        (0.0, 0.0, 0.3),
        (3.0, 1e-3, 1.0),
    ]:
        t = map_step(eta0, q, reward, 50)
        assert reward - 1.0 <= t <= reward
        assert abs(t - reward + float(expit(eta0 + t * q))) <= MAP_TOLERANCE
