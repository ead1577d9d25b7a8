"""Reference tests for BayesianLinearHead against closed forms and independent libraries."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from scipy import stats
from sklearn.linear_model import Ridge

from bandit_core import BayesianLinearHead, HeadConfig
from bandit_core.linalg import inverse_cholesky


def _data(rng: np.random.Generator, n: int = 300, d: int = 6) -> tuple[np.ndarray, np.ndarray]:
    phi = rng.standard_normal((n, d))
    theta = rng.standard_normal(d)
    return phi, phi @ theta + 0.3 * rng.standard_normal(n)


def _sequential(config: HeadConfig, phi: np.ndarray, r: np.ndarray) -> BayesianLinearHead:
    head = BayesianLinearHead(config)
    for x, y in zip(phi, r, strict=True):
        head.update(x, y)
    return head


def test_posterior_mean_equals_solve_and_sklearn_ridge(rng: np.random.Generator) -> None:
    phi, r = _data(rng)
    lam = 2.5
    head = _sequential(HeadConfig(dim=6, lambda_prior=lam), phi, r)
    expected = np.linalg.solve(lam * np.eye(6) + phi.T @ phi, phi.T @ r)
    np.testing.assert_allclose(head.theta_[0], expected, rtol=1e-10, atol=1e-12)
    ridge = Ridge(alpha=lam, fit_intercept=False, solver="cholesky").fit(phi, r)
    np.testing.assert_allclose(head.theta_[0], ridge.coef_, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(head.mean(phi[:5]), phi[:5] @ expected, rtol=1e-10)


def test_covariance_and_width_match_the_inverse_precision(rng: np.random.Generator) -> None:
    phi, r = _data(rng, n=50, d=5)
    head = _sequential(HeadConfig(dim=5, lambda_prior=0.7), phi, r)
    inv = np.linalg.inv(0.7 * np.eye(5) + phi.T @ phi)
    np.testing.assert_allclose(head.covariance(), inv, rtol=1e-10, atol=1e-13)
    probe = rng.standard_normal((4, 5))
    np.testing.assert_allclose(
        head.width(probe), np.sqrt(np.einsum("ij,jk,ik->i", probe, inv, probe)), rtol=1e-10
    )


def test_noise_posterior_matches_normal_inverse_gamma_closed_form(rng: np.random.Generator) -> None:
    phi, r = _data(rng, n=80, d=4)
    cfg = HeadConfig(dim=4, lambda_prior=1.5, a0=3.0, b0=2.0)
    head = _sequential(cfg, phi, r)
    prec = 1.5 * np.eye(4) + phi.T @ phi
    mu = np.linalg.solve(prec, phi.T @ r)
    a, b = head.noise_posterior()
    assert a[0] == pytest.approx(3.0 + 80 / 2)
    assert b[0] == pytest.approx(2.0 + 0.5 * (r @ r - mu @ prec @ mu), rel=1e-10)


def test_rank_one_updates_equal_a_batch_rebuild(rng: np.random.Generator) -> None:
    phi, r = _data(rng, n=500, d=7)
    cfg = HeadConfig(dim=7, lambda_prior=1.0, refactor_every=10_000)
    seq = _sequential(cfg, phi, r)
    batch = BayesianLinearHead(cfg)
    batch.rebuild(phi, r, chunk_size=64)
    for name in ("precision_", "xty_", "theta_", "yty_", "count_", "inv_chol_"):
        np.testing.assert_allclose(
            getattr(seq, name), getattr(batch, name), rtol=1e-9, atol=1e-11, err_msg=name
        )
    upd = BayesianLinearHead(cfg)
    upd.update_batch(phi, r)
    np.testing.assert_allclose(upd.theta_, batch.theta_, rtol=1e-10)


def test_rebuild_forgets_previous_statistics(rng: np.random.Generator) -> None:
    phi, r = _data(rng, n=100, d=3)
    head = _sequential(HeadConfig(dim=3), phi, r)
    head.rebuild(phi[:10], r[:10])
    fresh = BayesianLinearHead(HeadConfig(dim=3))
    fresh.rebuild(phi[:10], r[:10])
    np.testing.assert_array_equal(head.precision_, fresh.precision_)
    assert head.count_[0] == 10


def test_discount_matches_its_closed_form(rng: np.random.Generator) -> None:
    phi, r = _data(rng, n=120, d=4)
    g, lam = 0.97, 2.0
    head = _sequential(HeadConfig(dim=4, lambda_prior=lam, gamma=g), phi, r)
    w = g ** np.arange(119, -1, -1)
    prec = lam * np.eye(4) + (phi * w[:, None]).T @ phi
    xty = phi.T @ (w * r)
    np.testing.assert_allclose(head.precision_[0], prec, rtol=1e-10)
    np.testing.assert_allclose(head.xty_[0], xty, rtol=1e-10)
    np.testing.assert_allclose(head.theta_[0], np.linalg.solve(prec, xty), rtol=1e-9)
    assert head.count_[0] == pytest.approx(w.sum())
    rebuilt = BayesianLinearHead(HeadConfig(dim=4, lambda_prior=lam, gamma=g))
    rebuilt.rebuild(phi, r)
    np.testing.assert_allclose(rebuilt.theta_, head.theta_, rtol=1e-9)


def test_sliding_window_keeps_exactly_the_last_observations(rng: np.random.Generator) -> None:
    phi, r = _data(rng, n=200, d=5)
    cfg = HeadConfig(dim=5, window=30)
    head = _sequential(cfg, phi, r)
    last = BayesianLinearHead(HeadConfig(dim=5))
    last.rebuild(phi[-30:], r[-30:])
    np.testing.assert_allclose(head.precision_, last.precision_, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(head.theta_, last.theta_, rtol=1e-8, atol=1e-10)
    assert head.count_[0] == pytest.approx(30)
    windowed_rebuild = BayesianLinearHead(cfg)
    windowed_rebuild.rebuild(phi, r)
    np.testing.assert_allclose(windowed_rebuild.theta_, head.theta_, rtol=1e-8, atol=1e-10)
    # a window rebuilt from data keeps sliding exactly like the sequential one
    extra = rng.standard_normal((40, 5))
    for x in extra:
        head.update(x, 1.0)
        windowed_rebuild.update(x, 1.0)
    np.testing.assert_allclose(windowed_rebuild.theta_, head.theta_, rtol=1e-8, atol=1e-10)


@pytest.mark.slow
def test_factor_drift_stays_below_1e_8_after_100k_updates() -> None:
    rng = np.random.default_rng(7)
    d = 8
    head = BayesianLinearHead(HeadConfig(dim=d, lambda_prior=1.0))
    phi = rng.standard_normal((100_000, d))
    r = rng.standard_normal(100_000)
    for x, y in zip(phi, r, strict=True):
        head._update(x, float(y), 0)
    exact_inv = np.linalg.inv(head.precision_[0])
    drift = np.abs(head.covariance() - exact_inv).max() / np.abs(exact_inv).max()
    assert drift < 1e-8
    exact_theta = np.linalg.solve(head.precision_[0], head.xty_[0])
    assert np.abs(head.theta_[0] - exact_theta).max() / np.abs(exact_theta).max() < 1e-8
    # and the stored precision is the exact sum (no drift there by construction)
    np.testing.assert_allclose(head.precision_[0], np.eye(d) + phi.T @ phi, rtol=1e-9)


def test_without_refactorisation_the_update_alone_is_accurate() -> None:
    rng = np.random.default_rng(3)
    head = BayesianLinearHead(HeadConfig(dim=6, refactor_every=10**9))
    for x in rng.standard_normal((20_000, 6)):
        head._update(x, 0.5, 0)
    exact = inverse_cholesky(head.precision_[0])
    assert np.abs(head.inv_chol_[0] - exact).max() / np.abs(exact).max() < 1e-8


def test_posterior_draws_have_the_posterior_moments(rng: np.random.Generator) -> None:
    phi, r = _data(rng, n=40, d=3)
    head = _sequential(HeadConfig(dim=3, a0=5.0, b0=4.0), phi, r)
    draws = head.sample_theta(200_000, np.random.default_rng(1), sample_noise=False)
    np.testing.assert_allclose(
        draws.mean(0),
        head.theta_[0],
        atol=5 * np.sqrt(head.covariance().diagonal().max() / 200_000),
    )
    np.testing.assert_allclose(np.cov(draws.T), head.covariance(), rtol=0.02, atol=1e-4)
    # with the NIG noise prior θ is multivariate-t: its covariance is E[σ²] A⁻¹ = b/(a−1) A⁻¹
    nig = head.sample_theta(400_000, np.random.default_rng(2), sample_noise=True)
    a, b = head.noise_posterior()
    np.testing.assert_allclose(
        np.cov(nig.T), b[0] / (a[0] - 1) * head.covariance(), rtol=0.03, atol=1e-4
    )
    sigma2 = head.sample_noise_variance(np.random.default_rng(3), (100_000, 1), np.array([0]))
    assert stats.kstest(sigma2.ravel(), stats.invgamma(a[0], scale=b[0]).cdf).pvalue > 1e-3


def test_heads_in_a_bank_are_independent(rng: np.random.Generator) -> None:
    phi, r = _data(rng, n=90, d=4)
    heads = np.arange(90) % 3
    bank = BayesianLinearHead(HeadConfig(dim=4), n_heads=3)
    for x, y, h in zip(phi, r, heads, strict=True):
        bank.update(x, y, int(h))
    for h in range(3):
        single = BayesianLinearHead(HeadConfig(dim=4))
        single.rebuild(phi[heads == h], r[heads == h])
        np.testing.assert_allclose(bank.theta_[h], single.theta_[0], rtol=1e-9)
    np.testing.assert_allclose(
        bank.mean(phi[:6], heads[:6]), np.einsum("nd,nd->n", phi[:6], bank.theta_[heads[:6]])
    )


def test_statistics_of_shards_add_up_to_the_whole(rng: np.random.Generator) -> None:
    phi, r = _data(rng, n=400, d=5)
    whole = BayesianLinearHead(HeadConfig(dim=5))
    whole.rebuild(phi, r)
    from bandit_core.linalg import sufficient_statistics

    parts = [sufficient_statistics(phi[i::4], r[i::4]) for i in range(4)]
    summed = BayesianLinearHead(HeadConfig(dim=5))
    summed.load_statistics(
        sum(p[0] for p in parts),
        sum(p[1] for p in parts),
        sum(p[2] for p in parts),
        sum(p[3] for p in parts),
    )
    np.testing.assert_allclose(summed.theta_, whole.theta_, rtol=1e-10)


def test_state_round_trip_is_exact(rng: np.random.Generator) -> None:
    phi, r = _data(rng, n=60, d=4)
    head = _sequential(HeadConfig(dim=4, window=20), phi, r)
    copy = BayesianLinearHead.from_arrays(head.config, head.to_arrays())
    for name in BayesianLinearHead._array_names():
        np.testing.assert_array_equal(getattr(copy, name), getattr(head, name))
    head.update(phi[0], 1.0)
    copy.update(phi[0], 1.0)
    np.testing.assert_array_equal(copy.theta_, head.theta_)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"dim": 0},
            "'dim' parameter of BayesianLinearHead must be an int in the range [1, inf). Got 0.",
        ),
        (
            {"dim": 3, "lambda_prior": 0.0},
            "'lambda_prior' parameter of BayesianLinearHead must be a float in the range [1e-08, 1e+08]. Got 0.0.",
        ),
        ({"dim": 3, "gamma": 1.5}, "'gamma' parameter"),
        (
            {"dim": 3, "gamma": 0.9, "window": 10},
            "either a discount (gamma < 1) or a sliding window",
        ),
        ({"dim": 3, "a0": float("nan")}, "'a0' parameter"),
    ],
)
def test_bad_hyperparameters_are_named(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as err:
        HeadConfig(**kwargs)  # type: ignore[arg-type]
    assert message in str(err.value)


def test_bad_observations_are_named() -> None:
    head = BayesianLinearHead(HeadConfig(dim=3))
    with pytest.raises(ValueError, match=r"phi must have length 3; got length 2"):
        head.update([1.0, 2.0], 1.0)
    with pytest.raises(ValueError, match=r"phi must be finite; got nan at index 1"):
        head.update([1.0, np.nan, 0.0], 1.0)
    with pytest.raises(ValueError, match=r"reward must be a finite number; got inf"):
        head.update([1.0, 0.0, 0.0], np.inf)
    with pytest.raises(ValueError, match=r"head must be an index in \[0, 1\); got 4"):
        head.update([1.0, 0.0, 0.0], 1.0, head=4)
    with pytest.raises(ValueError, match=r"features must have 3 columns"):
        head.rebuild(np.zeros((4, 2)), np.zeros(4))
    assert head.count_[0] == 0  # nothing half-applied


def test_a_refused_downdate_changes_nothing(rng: np.random.Generator) -> None:
    head = BayesianLinearHead(HeadConfig(dim=3))
    head.update_batch(rng.normal(size=(5, 3)), rng.normal(size=5))
    before = {k: v.copy() for k, v in head.to_arrays().items()}
    with pytest.raises(ValueError, match="indefinite"):
        head._rank1(0, np.array([10.0, -7.0, 3.0]), 1.0, -1.0)  # never observed
    for key, value in head.to_arrays().items():
        np.testing.assert_array_equal(value, before[key])


def _head_arrays(head: BayesianLinearHead) -> dict[str, np.ndarray]:
    return {k: np.array(v, copy=True) for k, v in vars(head).items() if isinstance(v, np.ndarray)}


def test_a_numerically_singular_precision_changes_nothing(rng: np.random.Generator) -> None:
    """Rows of 1e12 along one direction hide the prior's λ = 1 beside Gram entries near
    1e26: the precision is singular in float64. Every path that must factor it raises and
    leaves the head as it was; row-by-row rank-one updates never form it and learn them,
    keeping the factor they built where the periodic refactorisation cannot succeed, and
    a batch learns them so too (it raised, and recovery refused rows the online head had
    learnt)."""
    phi, r = _data(rng, 50, 4)
    big = np.tile(1e12 * np.array([1.0, 1.0, 0.0, 0.0]), (100, 1))
    # out of scale beside the rows before (outlier_ratio): the check is off, the numerics
    # being what is tested
    for config in (
        HeadConfig(dim=4, outlier_ratio=None),
        HeadConfig(dim=4, outlier_ratio=None, gamma=0.999),
    ):
        head = _sequential(config, phi, r)
        before = _head_arrays(head)
        if config.gamma == 1.0:  # the batch learns them one at a time, as online
            head.update_batch(big, np.ones(100))
            online = _sequential(config, np.vstack([phi, big]), np.concatenate([r, np.ones(100)]))
            for key, value in _head_arrays(online).items():
                np.testing.assert_array_equal(getattr(head, key), value, err_msg=key)
            continue
        # the discounted update, whose formed matrix cannot be factored here either,
        # learns them from its factor by rank-one steps (it refused them: stop 54)
        for x in big:
            head.update(x, 1.0)
        assert head.count_[0] > before["count_"][0]
        assert np.isfinite(head.inv_chol_[0]).all() and np.isfinite(head.theta_[0]).all()
    head = _sequential(HeadConfig(dim=4, outlier_ratio=None), phi, r)
    stats_before = _head_arrays(head)
    gram = big.T @ big
    with pytest.raises(ValueError, match="symmetric positive definite"):
        head.load_statistics(gram, big.T @ np.ones(100), 100.0, 100.0)
    for key, value in stats_before.items():
        np.testing.assert_array_equal(getattr(head, key), value, err_msg=key)
    with pytest.raises(ValueError, match="symmetric positive definite"):
        head.rebuild(np.vstack([phi, big]), np.concatenate([r, np.ones(100)]))
    for key, value in stats_before.items():
        np.testing.assert_array_equal(getattr(head, key), value, err_msg=key)
    rows = _sequential(HeadConfig(dim=4, outlier_ratio=None, refactor_every=10), phi, r)
    for x in big:
        rows.update(x, 1.0)
    assert np.isfinite(rows.theta_).all() and np.isfinite(rows.inv_chol_).all()
    assert rows.count_[0] == 150


# numpy warns while it overflows (production: a warning, not an error); the head refuses
OVERFLOW_WARNINGS = pytest.mark.filterwarnings(
    "ignore:overflow encountered:RuntimeWarning",
    "ignore:invalid value encountered:RuntimeWarning",
)


@OVERFLOW_WARNINGS
@pytest.mark.parametrize("config", [HeadConfig(dim=3), HeadConfig(dim=3, window=4)])
def test_an_update_that_would_overflow_changes_nothing(
    rng: np.random.Generator, config: HeadConfig
) -> None:
    """A finite state whose factor is not its precision's (a model version's artifact
    edited: ``inv_chol`` × 1e160) passes every finiteness check, but the next rank-one
    update overflows. The update is refused whole (ValueError) and the head keeps every
    array bit for bit: nothing non-finite ever reaches it (before, θ became NaN)."""
    head = BayesianLinearHead(config)
    for x, r in zip(rng.normal(size=(6, 3)), rng.normal(size=6), strict=True):
        head.update(x, r)
    head.inv_chol_[0] *= 1e160
    before = _head_arrays(head)
    for change in (
        lambda: head.update(np.array([1.0, 2.0, 3.0]), 1.0),
        lambda: head._update(np.array([1.0, 2.0, 3.0]), 1.0, 0),  # the policies' path
    ):
        with pytest.raises(ValueError, match="non-finite"):
            change()
        for key, value in before.items():
            np.testing.assert_array_equal(getattr(head, key), value, err_msg=key)
    if config.window is None:
        with pytest.raises(ValueError, match="non-finite"):
            head.revise(np.array([1.0, 2.0, 3.0]), 0.0, 1e6)
        for key, value in before.items():
            np.testing.assert_array_equal(getattr(head, key), value, err_msg=key)


@OVERFLOW_WARNINGS
def test_a_policy_refuses_the_overflowing_update_whole(rng: np.random.Generator) -> None:
    from bandit_core import make_policy

    policy = make_policy("shared_lints", dim_user=3, dim_arm=2)
    policy.update(np.ones(3), "a", 1.0, np.ones(2))
    policy.head.inv_chol_[0] *= 1e160
    before = {k: v.copy() for k, v in policy.to_state().arrays.items()}
    with pytest.raises(ValueError, match="non-finite"):
        policy.update(np.ones(3), "a", 1.0, np.ones(2))
    after = policy.to_state().arrays
    assert before.keys() == after.keys()
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)


@pytest.mark.parametrize(
    ("array", "tamper", "message"),
    [
        ("precision", lambda a: -a, "positive diagonal"),
        ("precision", lambda a: a + np.triu(np.ones_like(a[0]), 1), "symmetric"),
        ("count", lambda a: a - 1e6, "must not be negative"),
        ("window_next", lambda a: a + 99, "window_next"),
        ("window_size", lambda a: a * 0 + 6, "window_size"),
        ("theta", lambda a: a + 0.5, "the mean its factor and statistics give"),
        ("theta", lambda a: a * (1 + 1e-6), "the mean its factor and statistics give"),
        ("inv_chol", lambda a: a + np.triu(np.full_like(a[0], 0.1), 1), "lower triangular"),
        ("inv_chol", lambda a: -a, "positive diagonal"),
    ],
)
def test_a_restored_head_that_no_learning_could_give_is_refused(
    array: str, tamper: object, message: str
) -> None:
    """Before, a precision of −I restored (online updates used the factor and were
    applied; a rebuild from the precision refused them all: the live and the recovered
    heads differed), and a window slot of 99 restored and failed every later update
    with an IndexError."""
    rng = np.random.default_rng(5)
    head = BayesianLinearHead(HeadConfig(dim=3, window=5), n_heads=2)
    for _ in range(3):
        head.update_batch(rng.standard_normal((2, 3)), rng.random(2), np.array([0, 1]))
    arrays = head.to_arrays()
    BayesianLinearHead.from_arrays(head.config, arrays)  # as saved: restores
    arrays[f"head.{array}"] = tamper(arrays[f"head.{array}"])  # type: ignore[operator]
    with pytest.raises(ValueError, match=message):
        BayesianLinearHead.from_arrays(head.config, arrays)


def test_a_long_learnt_head_restores_with_its_mean_within_round_off() -> None:
    """The mean check's bound is round-off's: heads after thousands of rank-one updates,
    periodic refactorisations, discounting and a sliding window, on features of very
    different scales, restore."""
    rng = np.random.default_rng(11)
    for config in (
        HeadConfig(dim=6),
        HeadConfig(dim=6, gamma=0.99),
        HeadConfig(dim=6, window=50),
        HeadConfig(dim=6, lambda_prior=1e-3),
    ):
        head = BayesianLinearHead(config, n_heads=3)
        scales = np.array([1e-4, 1e-2, 1.0, 1e2, 1e4, 1.0])
        for _ in range(1500):
            x = rng.standard_normal(6) * scales
            head.update(x, float(rng.random() * 100), int(rng.integers(3)))
        BayesianLinearHead.from_arrays(config, head.to_arrays())


def test_a_window_that_rounds_its_sum_of_squares_below_zero_restores() -> None:
    """A large reward leaving a window of zero rewards leaves Σr² a rounding error below
    0 (about −7e-6 here): the head decides and learns on, and its state must load back
    (a check of Σr² ≥ −1e-6 refused it, and with it every snapshot of the head)."""
    from bandit_core import load_state, make_policy, policy_from_state
    from bandit_core.state import state_to_bytes

    rng = np.random.default_rng(0)
    policy = make_policy("linucb", dim_user=3, window=20)
    rewards = [123456.7, *rng.random(19), *np.zeros(20)]
    for r in rewards:
        policy.update(rng.standard_normal(3), "a", float(r))
    assert policy.head.yty_[1] < 0.0
    policy_from_state(load_state(state_to_bytes(policy.to_state())))


def _collinear(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows ``[1e6, 1e6]`` (valid: at the input bound) with 0/1 rewards."""
    return np.tile([1e6, 1e6], (n, 1)), (np.arange(n) % 3 == 0).astype(float)


#: the direction such rows never observe: its posterior width stays 1/√λ = 1 for ever
UNOBSERVED = np.array([1.0, -1.0]) / np.sqrt(2.0)


def test_collinear_rows_at_the_bound_keep_the_unobserved_width() -> None:
    """10⁴ collinear rows at 1e6 sum to Gram entries near 2e16 beside λ = 1: the periodic
    refactorisation from them put a factor of relative error ~1 in place of the rank-one
    one (width 1.41, then 0.71 and 0.25 at 10⁵ rows, where the exact width is 1). The
    rank-one factor is kept where the formed precision cannot be factored accurately
    (scaled condition number past ``SCALED_CONDITION_LIMIT``); a batch of the same rows
    (recovery, replica sync) learns them as the online head did (it refused 23 % of
    them, or built a width of 0.5)."""
    phi, r = _collinear(12_000)
    online = _sequential(HeadConfig(dim=2), phi, r)
    assert np.linalg.norm(online.inv_chol_[0] @ UNOBSERVED) == pytest.approx(1.0, rel=1e-6)
    batch = BayesianLinearHead(HeadConfig(dim=2))
    for start in range(0, phi.shape[0], 1000):
        batch.update_batch(phi[start : start + 1000], r[start : start + 1000])
    assert batch.count_[0] == 12_000
    assert np.linalg.norm(batch.inv_chol_[0] @ UNOBSERVED) == pytest.approx(1.0, rel=1e-6)
    # the mean along the observed direction is the closed form's
    exact = r.sum() / (1.0 + 12_000 * 2e12) * np.array([1e6, 1e6])
    for head in (online, batch):
        assert phi[0] @ head.theta_[0] == pytest.approx(phi[0] @ exact, rel=1e-9)


def test_well_conditioned_heads_still_refactor(rng: np.random.Generator) -> None:
    """The periodic refactorisation still replaces the rank-one factor where the formed
    precision is well conditioned once its features are scaled (columns from 1e-4 to
    1e5: the plain condition number is ~1e18, the scaled one ~1)."""
    from bandit_core.linalg import factor_is_accurate, scaled_condition

    phi = rng.standard_normal((3000, 6)) * 10.0 ** np.arange(-4, 2)[None, :] * 1e3
    head = _sequential(HeadConfig(dim=6, refactor_every=1000), phi, rng.standard_normal(3000))
    assert head.pending_[0] == 0
    np.testing.assert_allclose(
        head.inv_chol_[0], inverse_cholesky(head.precision_[0]), rtol=0, atol=1e-12
    )
    assert scaled_condition(head.precision_[0], head.inv_chol_[0]) < 10.0
    phi, _ = _collinear(1000)
    precision = np.eye(2) + phi.T @ phi
    assert not factor_is_accurate(precision, inverse_cholesky(precision))


def test_a_window_whose_leaving_row_cannot_be_downdated_is_learnt_anew(
    rng: np.random.Generator,
) -> None:
    """One context at the input bound in features that are otherwise 0: once it had to
    leave the window its downdate was refused (xᵀA⁻¹x within 1e-12 of 1), the row stayed,
    and every later update of the head tried to remove it again — the head learnt nothing
    more, ever (its snapshot and a rebuild too). The head is learnt anew from the rows
    left in its window instead, and equals a rebuild from them."""
    window = 50
    config = HeadConfig(dim=6, window=window, outlier_ratio=None)  # its numerics, not its scale
    rows = rng.standard_normal((300, 6))
    rows[:, :2] = 0.0
    rows[60, :2] = 1e6  # the one extreme context
    rewards = rng.standard_normal(300)
    head = _sequential(config, rows, rewards)
    assert head.count_[0] == window
    rebuilt = BayesianLinearHead(config)
    rebuilt.rebuild(rows[-window:], rewards[-window:])
    np.testing.assert_allclose(head.theta_[0], rebuilt.theta_[0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(head.inv_chol_[0], rebuilt.inv_chol_[0], rtol=1e-9, atol=1e-12)
    assert head.yty_[0] == pytest.approx(rebuilt.yty_[0], rel=1e-12)


@pytest.mark.parametrize(
    ("config", "big"),
    [(HeadConfig(dim=4, gamma=0.999), 1e200), (HeadConfig(dim=4, window=8), 1e200)],
)
def test_a_batch_of_a_discounted_or_windowed_head_is_learnt_whole_or_not_at_all(
    rng: np.random.Generator, config: HeadConfig, big: float
) -> None:
    """Rows are applied one at a time there: a row refused half-way left the rows before
    it learnt, and recovery's halving (``update_batch_skipping``) learnt them twice."""
    head = _sequential(config, *_data(rng, 20, 4))
    before = _head_arrays(head)
    phi, r = _data(rng, 10, 4)
    phi[6] = big  # its factor overflows
    with pytest.raises(ValueError), np.errstate(all="ignore"):
        head.update_batch(phi, r)
    for key, value in before.items():
        np.testing.assert_array_equal(getattr(head, key), value, err_msg=key)


@pytest.mark.parametrize(
    "config",
    [HeadConfig(dim=5), HeadConfig(dim=5, gamma=0.99), HeadConfig(dim=5, window=60)],
    ids=["plain", "discounted", "windowed"],
)
def test_a_row_out_of_scale_beside_the_rows_held_is_refused_whole(
    rng: np.random.Generator, config: HeadConfig
) -> None:
    """A feature more than ``outlier_ratio`` (100) times its RMS over the rows the head
    holds is a leverage point: one row at 1e6 along an axis sets the fit in that direction
    by itself. It is refused (``ValueError`` naming the feature, nothing learnt), by
    ``update`` and by ``update_batch`` alike (the batch whole, as the row would be one at
    a time); rows within the ratio, and any row before the head holds
    ``OUTLIER_MIN_ROWS`` rows, are learnt. Before, every such row was learnt."""
    from bandit_core.head import OUTLIER_MIN_ROWS

    phi, r = _data(rng, 100, 5)
    head = _sequential(config, phi, r)
    before = _head_arrays(head)
    poison = np.zeros(5)
    poison[3] = 1e6
    with pytest.raises(ValueError, match=r"phi\[3\] = 1e\+06 .* outlier_ratio=100"):
        head.update(poison, 0.0)
    batch = np.vstack([phi[:10], poison[None], phi[10:20]])
    with pytest.raises(ValueError, match=r"phi\[3\] = 1e\+06"):
        head.update_batch(batch, np.zeros(21))
    for key, value in before.items():
        np.testing.assert_array_equal(getattr(head, key), value, err_msg=key)
    head.update(20.0 * phi[0] / np.abs(phi[0]).max(), 0.0)  # 20× the RMS: learnt
    assert not np.array_equal(head.precision_, before["precision_"])
    young = _sequential(config, phi[: OUTLIER_MIN_ROWS - 1], r[: OUTLIER_MIN_ROWS - 1])
    young.update(poison, 0.0)  # too few rows to judge its scale by
    off = _sequential(HeadConfig(dim=5, outlier_ratio=None), phi, r)
    off.update(poison, 0.0)
    assert abs(off.theta_[0, 3]) < 1e-5  # what the row did: the fit along it pinned to 0


def test_the_batch_and_the_rebuild_refuse_the_rows_one_at_a_time_would(
    rng: np.random.Generator,
) -> None:
    """The first out-of-scale row of a batch is judged against the head and the batch's
    rows before it, as if learnt in order: after learning the rows around it, the head
    equals one that learnt them one at a time and refused it. A rebuild refuses a window
    holding such a row whole (the retrain then learns it in order, skipping the row:
    ``training.train.rebuild_rows``)."""
    phi, r = _data(rng, 200, 5)
    phi[120, 1] = 5e4
    online = BayesianLinearHead(HeadConfig(dim=5))
    refused = []
    for i in range(200):
        try:
            online.update(phi[i], r[i])
        except ValueError:
            refused.append(i)
    assert refused == [120]
    batch = BayesianLinearHead(HeadConfig(dim=5))
    with pytest.raises(ValueError, match=r"phi\[1\] = 50000"):
        batch.update_batch(phi, r)
    assert batch.count_[0] == 0
    batch.update_batch(phi[:120], r[:120])
    batch.update_batch(phi[121:], r[121:])
    np.testing.assert_allclose(batch.theta_, online.theta_, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match=r"phi\[1\] = 50000"):
        BayesianLinearHead(HeadConfig(dim=5)).rebuild(phi, r)
    # the same value early, among the first rows, is nothing the head can judge yet
    early = BayesianLinearHead(HeadConfig(dim=5))
    early.rebuild(np.vstack([phi[120:121], phi[:120]]), np.concatenate([r[120:121], r[:120]]))
    assert early.count_[0] == 121


def test_the_cheap_pass_of_a_reward_agrees_with_the_full_check(
    rng: np.random.Generator,
) -> None:
    """One row is passed by its squared norm (two numpy calls) where that suffices, else
    judged feature by feature: rows at every scale get the full check's verdict."""
    from bandit_core.head import first_outlier

    phi, r = _data(rng, 100, 6)
    head = _sequential(HeadConfig(dim=6), phi, r)
    sums = np.diagonal(head.precision_[0]) - head.config.lambda_prior
    verdicts = set()
    for _ in range(400):
        x = rng.standard_normal(6) * 10.0 ** rng.uniform(-1, 3, 6)
        expected = first_outlier(x[None], sums, float(head.count_[0]), 100.0) is not None
        try:
            copy.deepcopy(head).update(x, 0.0)
            refused = False
        except ValueError:
            refused = True
        assert refused == expected, x
        verdicts.add(refused)
    assert verdicts == {True, False}


@pytest.mark.parametrize("gamma", [1.0, 0.99])
def test_the_rows_left_out_of_statistics_are_those_a_head_refuses_one_at_a_time(
    rng: np.random.Generator, gamma: float
) -> None:
    """A rebuild from sums (shards, a re-encoded buffer) leaves out the rows that learning
    them in order refuses, judged by the rows learnt before them, refused ones uncounted:
    rows out of scale among the first 30, in a run, and after earlier refusals."""
    from bandit_core.head import outlier_rows, surely_without_outliers
    from bandit_core.head_statistics import HeadStatistics

    config = HeadConfig(dim=5, gamma=gamma)
    phi, r = _data(rng, 400, 5)
    for i, j, scale in [(10, 0, 1e2), (50, 1, 1e4), (51, 1, 1e4), (52, 2, 30.0), (300, 4, 1e5)]:
        phi[i, j] *= scale
    online, refused = BayesianLinearHead(config), []
    for i in range(phi.shape[0]):
        try:
            online.update(phi[i], float(r[i]))
        except ValueError:
            refused.append(i)
    assert refused == [50, 51, 300]  # row 10 is among the first 30, row 52 in scale
    found = outlier_rows(phi, np.zeros(5), 0.0, 100.0, gamma)
    assert found.tolist() == refused
    # split in two: the second part judged after the first part's statistics
    first, left_first = HeadStatistics.learnt(phi[:200], r[:200], None, config)
    second, left_second = HeadStatistics.learnt(phi[200:], r[200:], None, config, first)
    assert left_first.tolist() == [50, 51] and (200 + left_second).tolist() == [300]
    merged = first.merge(second, gamma)
    rebuilt = BayesianLinearHead(config)
    rebuilt.load_statistics(merged.gram[0], merged.xty[0], merged.yty[0], merged.count[0])
    for name in ("precision_", "xty_", "count_", "theta_"):
        np.testing.assert_allclose(getattr(rebuilt, name), getattr(online, name), rtol=1e-9)
    # the test without the rows: never "none" where a row is left out
    sums, count = np.diagonal(first.gram[0]), float(first.count[0])
    later = phi[200:]
    peak = (later * later).max(axis=0)
    assert not surely_without_outliers(peak, sums, count, 200, 100.0, gamma)
    clean = np.delete(later, 100, axis=0)
    assert surely_without_outliers((clean * clean).max(axis=0), sums, count, 199, 100.0, gamma)
    assert outlier_rows(clean, sums, count, 100.0, gamma).size == 0
    verdicts = set()
    for _ in range(300):  # rows with spikes of 3 to 3,000 times the others' scale
        rows = phi[:120].copy()
        spikes = rng.random(120) < 0.03
        rows[spikes] *= 10.0 ** rng.uniform(0.5, 3.5, (int(spikes.sum()), 1))
        low = int(rng.integers(0, 60))
        sums = np.einsum("nd,nd->d", rows[:low], rows[:low])
        peak = (rows[low:] ** 2).max(axis=0)
        surely = surely_without_outliers(peak, sums, float(low), 120 - low, 100.0)
        left_out = outlier_rows(rows[low:], sums, float(low), 100.0).size > 0
        assert not (surely and left_out)
        verdicts.add((surely, left_out))
    assert verdicts == {(True, False), (False, True), (False, False)}


@pytest.mark.parametrize("ratio", [1.5, 3.0, 100.0])
def test_the_first_outlier_is_the_one_a_row_by_row_check_finds(
    rng: np.random.Generator, ratio: float
) -> None:
    """:func:`first_outlier` passes rows by their norms and judges the rest feature by
    feature, one at a time when few, together when many (a small ratio makes most rows
    suspects): the same row and feature as judging every row in turn."""
    from bandit_core.head import OUTLIER_MIN_ROWS, first_outlier

    def row_by_row(phi: np.ndarray, sums: np.ndarray, count: float) -> tuple[int, int] | None:
        sums = sums.copy()
        for i, row in enumerate(phi):
            if count + i >= OUTLIER_MIN_ROWS:
                mean = sums / (count + i)
                outside = np.flatnonzero(row * row > ratio * ratio * np.maximum(mean, mean.mean()))
                if outside.size:
                    return i, int(outside[0])
            sums += row * row
        return None

    verdicts = set()
    for trial in range(60):
        n, d = int(rng.integers(40, 300)), int(rng.integers(1, 12))
        phi = rng.standard_normal((n, d)) * 10.0 ** rng.uniform(-1, 1, d)
        phi[rng.random((n, d)) < 0.3] = 0.0  # sparse features: uneven scales
        spikes = rng.random(n) < 0.02
        phi[spikes] *= 10.0 ** rng.uniform(0, 3, (int(spikes.sum()), 1))
        count = float(rng.integers(0, 50))
        sums = count * rng.uniform(0.5, 2.0, d)
        found = first_outlier(phi, sums, count, ratio)
        expected = row_by_row(phi, sums, count)
        assert (None if found is None else found[:2]) == expected, trial
        verdicts.add(expected is None)
    assert False in verdicts and (ratio < 100.0 or True in verdicts)


@pytest.mark.parametrize(("gamma", "scale"), [(0.999, 1e6), (0.9999, 1e5)])
def test_a_discounted_head_keeps_the_prior_where_no_row_reaches(gamma: float, scale: float) -> None:
    """Rows ``[u, u, c]`` never reach ``v = (1, −1, 0)/√2``: there the discounted
    precision stays the prior's λ exactly (``γⁿλ + (1 − γ)λ Σ γᵏ = λ``), so the width
    ``vᵀA⁻¹v`` is ``1/λ``. Re-forming ``γA + (1 − γ)λI + xxᵀ`` lost λ beside a diagonal of
    ``x²/(1 − γ)``: the factorisation failed (valid rewards refused, "check
    lambda_prior > 0") or the width came out 6× too wide (audit, stop 54)."""
    rng = np.random.default_rng(0)
    head = BayesianLinearHead(HeadConfig(dim=3, gamma=gamma), n_heads=1)
    for _ in range(3000):
        u = float(np.clip(rng.standard_normal() * scale, -1e6, 1e6))
        head.update(np.array([u, u, scale]), 1.0 + u / scale, 0)  # never refused
    v = np.array([1.0, -1.0, 0.0]) / np.sqrt(2.0)
    factor = head.inv_chol_[0]
    assert float(np.sum((factor @ v) ** 2)) == pytest.approx(1.0, rel=1e-6)
