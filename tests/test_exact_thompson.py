"""Exact per-arm Thompson propensities: quadrature against independent references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import integrate, special, stats

from bandit_core import Candidates, argmax_quadrature, make_policy
from bandit_core.argmax_quadrature import _grid, _quantiles, _smallest_df, argmax_probabilities


def _quad_reference(mean: np.ndarray, scale: np.ndarray, df: np.ndarray | None) -> np.ndarray:
    """(1) by adaptive ``scipy.integrate.quad`` at tight tolerance, arm by arm."""
    k = mean.size
    dists = [
        stats.norm(mean[b], scale[b]) if df is None else stats.t(df[b], mean[b], scale[b])
        for b in range(k)
    ]
    out = np.empty(k)
    breaks = sorted(set(np.concatenate([mean - 3 * scale, mean, mean + 3 * scale])))
    for a in range(k):

        def integrand(s: float, a: int = a) -> float:
            rest = [dists[b].cdf(s) for b in range(k) if b != a]
            return float(dists[a].pdf(s) * np.prod(rest))

        lo, hi = float(np.min(mean - 10 * scale)), float(np.max(mean + 10 * scale))
        body = integrate.quad(
            integrand, lo, hi, points=breaks, epsabs=1e-13, epsrel=1e-12, limit=4000
        )[0]
        tails = sum(
            integrate.quad(integrand, a_, b_, epsabs=1e-13, epsrel=1e-12, limit=4000)[0]
            for a_, b_ in ((-np.inf, lo), (hi, np.inf))
        )
        out[a] = body + tails
    return out


def _multiscale_reference(mean: np.ndarray, scale: np.ndarray, df: np.ndarray | None) -> np.ndarray:
    """(1) by ``scipy.integrate.quad`` on every stretch between break points at each arm's
    mean ± 0 … 40 of its scales: each stretch is smooth at its own scale, however far apart
    the arms' scales are (one adaptive call over the whole range can step over a narrow
    arm)."""
    k = mean.size
    steps = np.array([0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 40.0])
    z = np.concatenate([-steps[::-1], [0.0], steps])
    breaks = np.unique(np.concatenate([mean[b] + z * scale[b] for b in range(k)]))
    stretches = [(-np.inf, breaks[0]), *itertools.pairwise(breaks), (breaks[-1], np.inf)]
    if df is None:
        cdf = lambda s: special.ndtr((s - mean) / scale)  # noqa: E731
        pdf = lambda s: np.exp(-0.5 * ((s - mean) / scale) ** 2) / (scale * np.sqrt(2 * np.pi))  # noqa: E731
    else:
        log_c = special.gammaln((df + 1) / 2) - special.gammaln(df / 2) - 0.5 * np.log(df * np.pi)
        cdf = lambda s: special.stdtr(df, (s - mean) / scale)  # noqa: E731
        pdf = lambda s: (  # noqa: E731
            np.exp(log_c - 0.5 * (df + 1) * np.log1p(((s - mean) / scale) ** 2 / df)) / scale
        )
    out = np.empty(k)
    for a in range(k):

        def integrand(s: float, a: int = a) -> float:
            below = cdf(s)
            below[a] = 1.0
            return float(pdf(s)[a] * np.prod(below))

        out[a] = sum(
            integrate.quad(integrand, x0, x1, epsabs=1e-15, epsrel=1e-12, limit=400)[0]
            for x0, x1 in stretches
        )
    return out


def _takes_fitted_panels(mean: np.ndarray, scale: np.ndarray, df: np.ndarray | None) -> bool:
    panels = int(_grid(mean[None], scale[None], None if df is None else df[None])[2][0])
    return (
        panels > argmax_quadrature.FITTED_ABOVE
        and (mean.size + 2) * panels > argmax_quadrature.FITTED_WORK
    )


@pytest.mark.parametrize("student", [False, True])
def test_fitted_panels_keep_1e_8_with_arms_of_very_different_scales(student: bool) -> None:
    # one or two arms 10 to 100,000 times narrower than the others (an arm trained on many
    # rewards among new ones): equal panels would be as narrow as the narrowest arm over
    # the whole range; fitted ones are narrow only around it
    rng = np.random.default_rng(21 + student)
    checked = 0
    while checked < 12:
        k = int(rng.integers(2, 6))
        mean = rng.normal(0.0, 1.0, k)
        scale = np.exp(rng.normal(0.0, 0.5, k))
        narrow = rng.choice(k, size=int(rng.integers(1, 3)), replace=False)
        scale[narrow] *= 10.0 ** -rng.uniform(1.0, 5.0, narrow.size)
        df = None
        if student:  # new arms: heavy tails; trained ones: nearly Normal
            df = rng.uniform(1.5, 10.0, k)
            df[narrow] = 10.0 ** rng.uniform(2.0, 6.0, narrow.size)
        if not _takes_fitted_panels(mean, scale, df):
            continue  # the narrow arms lie below the range: equal panels are few
        got = argmax_probabilities(mean[None], scale[None], None if df is None else df[None])[0]
        np.testing.assert_allclose(got, _multiscale_reference(mean, scale, df), rtol=0, atol=1e-8)
        checked += 1


def test_one_trained_arm_among_new_ones_costs_few_panels() -> None:
    """The hostile pass's case: one arm trained on 200,000 rewards among 999 new ones made
    the equal panels reach their cap (2,048 per row: 1.15 s per select at K = 1,000)."""
    policy: object = make_policy("lints", dim_user=3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200_000, 3))
    y = x @ np.array([0.5, -0.2, 0.1]) + 0.3 * rng.standard_normal(200_000)
    policy.update_batch(x, ["hot"] * len(x), y)  # type: ignore[attr-defined]
    head = policy.head  # type: ignore[attr-defined]
    context = np.array([1.0, 0.0, 0.0])
    for k in (6, 1000):
        cands = Candidates.from_any(["hot"] + [f"new-{i}" for i in range(k - 1)])
        heads = policy.model.heads_for(cands.ids, create=True)  # type: ignore[attr-defined]
        a, b = head.noise_posterior(heads)
        mean = head.theta_[heads] @ context
        width = np.sqrt(np.sum((head.inv_chol_[heads] @ context) ** 2, axis=1))
        scale, df = width * np.sqrt(b / a), 2.0 * a
        lo, hi, equal = _grid(mean[None], scale[None], df[None])
        assert equal[0] == argmax_quadrature.MAX_PANELS and _takes_fitted_panels(mean, scale, df)
        fitted = argmax_quadrature._fitted_panels(mean, scale, df[None], lo[0], hi[0])[0]
        assert fitted.shape[1] <= 64
        d = policy.select(context, cands, np.random.default_rng(1))  # type: ignore[attr-defined]
        assert np.isclose(d.probabilities.sum(), 1.0)
        if k == 6:
            ref = _multiscale_reference(mean, scale, df)
            np.testing.assert_allclose(d.probabilities, ref, rtol=0, atol=1e-8)


@pytest.mark.parametrize("student", [False, True])
def test_quadrature_equals_adaptive_reference_to_1e_8(student: bool) -> None:
    rng = np.random.default_rng(7 + student)
    for _ in range(12):
        k = int(rng.integers(2, 6))
        mean = rng.normal(0.0, 1.0, k)
        scale = np.exp(rng.normal(-0.5, 1.2, k))  # scale ratios up to ~100
        df = rng.uniform(4.0, 60.0, k) if student else None
        got = argmax_probabilities(mean[None], scale[None], None if df is None else df[None])[0]
        np.testing.assert_allclose(got, _quad_reference(mean, scale, df), rtol=0, atol=1e-8)


@pytest.mark.parametrize("student", [False, True])
def test_many_arms_keep_1e_8_with_the_raised_lower_end(student: bool) -> None:
    # 14 arms of similar scores: the range starts where twelve arms lie below their
    # δ^(1/6) quantile, far above the second arm's 1 − δ lower end
    rng = np.random.default_rng(3)
    k = 14
    mean = rng.normal(0.0, 0.05, k)
    scale = np.exp(rng.normal(-0.7, 0.3, k))
    df = rng.uniform(8.0, 60.0, k) if student else None
    sub_df = None if df is None else df[None]
    lo = _grid(mean[None], scale[None], sub_df)[0][0]
    big_l = _quantiles(_smallest_df(sub_df))[0]
    assert lo > np.sort(mean - big_l * scale)[-2] + 0.8  # the j-rule is what set it
    got = argmax_probabilities(mean[None], scale[None], sub_df)[0]
    np.testing.assert_allclose(got, _quad_reference(mean, scale, df), rtol=0, atol=1e-8)


def test_two_normal_arms_match_the_closed_form() -> None:
    # P(S_0 > S_1) = Φ((m_0 − m_1) / √(c_0² + c_1²))
    mean = np.array([[0.3, -0.1], [0.0, 0.0], [2.0, -3.0]])
    scale = np.array([[1.0, 0.2], [0.5, 0.5], [0.01, 1.5]])
    got = argmax_probabilities(mean, scale)
    exact = special.ndtr((mean[:, 0] - mean[:, 1]) / np.hypot(scale[:, 0], scale[:, 1]))
    np.testing.assert_allclose(got[:, 0], exact, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=0, atol=1e-14)


def test_point_masses_are_exact() -> None:
    # all arms degenerate: uniform over the tied maxima
    got = argmax_probabilities(np.array([[1.0, 2.0, 2.0]]), np.zeros((1, 3)))
    np.testing.assert_array_equal(got, [[0.0, 0.5, 0.5]])
    # two tied point masses at 0 and one Normal arm: they share P(N(0.5, 1) < 0)
    got = argmax_probabilities(np.array([[0.0, 0.0, 0.5]]), np.array([[0.0, 0.0, 1.0]]))
    below = special.ndtr(-0.5)
    np.testing.assert_allclose(got[0], [below / 2, below / 2, 1 - below], atol=1e-14)
    # a point mass below two continuous arms: conditional quadrature above it
    mean, scale = np.array([0.2, 0.0, -0.3]), np.array([0.0, 1.0, 0.7])
    got = argmax_probabilities(mean[None], scale[None])[0]
    both_below = special.ndtr(0.2 / 1.0) * special.ndtr(0.5 / 0.7)

    def wins(s: float, a: int, b: int) -> float:
        return float(stats.norm.pdf(s, mean[a], scale[a]) * stats.norm.cdf(s, mean[b], scale[b]))

    ref1 = integrate.quad(wins, 0.2, 20, args=(1, 2), epsabs=1e-14)[0]
    ref2 = integrate.quad(wins, 0.2, 20, args=(2, 1), epsabs=1e-14)[0]
    np.testing.assert_allclose(got, [both_below, ref1, ref2], atol=1e-9)


@pytest.mark.parametrize("student", [False, True])
def test_point_masses_above_every_continuous_arm(student: bool) -> None:
    # the range starts at the point mass, above every continuous arm's upper end: no
    # zero-width panel (a log of 0 under the suite's warnings-as-errors), no 0/0 split
    scale = np.array([[0.0, 0.1, 0.2, 0.0]])
    df = np.full((1, 4), 10.0) if student else None
    tied = argmax_probabilities(np.array([[50.0, 0.0, 0.1, 50.0]]), scale, df)
    np.testing.assert_array_equal(tied, [[0.5, 0.0, 0.0, 0.5]])
    mean = np.array([[5.0, 0.0, 0.1, 0.2]])
    scale = np.array([[0.0, 0.1, 0.2, 0.1]])
    got = argmax_probabilities(mean, scale, df)[0]
    below = (
        special.ndtr((5.0 - mean[0, 1:]) / scale[0, 1:])
        if df is None
        else special.stdtr(10.0, (5.0 - mean[0, 1:]) / scale[0, 1:])
    )
    np.testing.assert_allclose(got[0], np.prod(below), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.sum(), 1.0, rtol=0, atol=1e-12)
    assert (got >= 0.0).all()


def test_zero_context_gives_exact_uniform_split() -> None:
    policy = make_policy("lints", dim_user=3)
    d = policy.select(np.zeros(3), Candidates.from_any(["a", "b"]), np.random.default_rng(0))
    assert d.probabilities.tolist() == [0.5, 0.5]


def _trained_lints(sample_noise: bool, **options: object) -> object:
    policy = make_policy("lints", dim_user=3, sample_noise=sample_noise, **options)
    rng = np.random.default_rng(3)
    ids = ("a", "b", "c", "d")
    for _ in range(60):
        x = rng.standard_normal(3)
        arm = int(rng.integers(3))  # "d" stays at the prior
        policy.update(x, ids[arm], float(x[0] * (arm - 1) + 0.3 * rng.standard_normal()))
    return policy


@pytest.mark.parametrize("sample_noise", [True, False])
def test_quadrature_equals_choice_frequencies_of_200000_draws(sample_noise: bool) -> None:
    policy: object = _trained_lints(sample_noise)
    cands = Candidates.from_any(["a", "b", "c", "d"])
    x = np.array([0.4, -0.2, 0.9])
    n = 200_000
    batch = policy.select_batch(np.tile(x, (n, 1)), cands, np.random.default_rng(11))  # type: ignore[attr-defined]
    exact = batch.probabilities[0]
    np.testing.assert_allclose(batch.probabilities, np.tile(exact, (n, 1)), rtol=0, atol=1e-12)
    freq = np.bincount(batch.arms, minlength=4) / n
    se = np.sqrt(exact * (1 - exact) / n)
    assert (np.abs(freq - exact) <= 4 * se + 1e-12).all(), (freq, exact, se)
    # the reported propensity is the chosen arm's exact probability
    np.testing.assert_array_equal(batch.propensities, exact[batch.arms])


@pytest.mark.parametrize("scale", [1e-12, 1e-14, 1e-150])
def test_a_context_of_tiny_norm_is_chosen_as_its_propensities_say(scale: float) -> None:
    """Every draw of a context of norm ≲ 1e-12 lay within the tie tolerance of the
    maximum, so the choice was uniform while the logged propensities were the
    quadrature's (0.10 … 0.47 here: up to 0.58 apart with other arms). Only point masses
    (scale 0) tie now, as in the quadrature."""
    policy: object = _trained_lints(True)
    cands = Candidates.from_any(["a", "b", "c", "d"])
    x = scale * np.array([0.4, -0.2, 0.9])
    n = 40_000
    batch = policy.select_batch(np.tile(x, (n, 1)), cands, np.random.default_rng(12))  # type: ignore[attr-defined]
    exact = batch.probabilities[0]
    assert exact.max() - exact.min() > 0.2  # the premise: far from uniform
    freq = np.bincount(batch.arms, minlength=4) / n
    se = np.sqrt(exact * (1 - exact) / n)
    assert (np.abs(freq - exact) <= 4 * se + 1e-12).all(), (freq, exact, se)


@pytest.mark.parametrize(
    "options", [{}, {"gamma": 0.97}, {"window": 15}], ids=["plain", "discounted", "windowed"]
)
def test_propensities_match_the_reference_for_a_trained_policy(
    options: dict[str, object],
) -> None:
    policy: object = _trained_lints(True, **options)
    head = policy.head  # type: ignore[attr-defined]
    cands = Candidates.from_any(["a", "b", "c", "d"])
    x = np.array([0.4, -0.2, 0.9])
    d = policy.select(x, cands, np.random.default_rng(0))  # type: ignore[attr-defined]
    heads = policy.model.heads_for(cands.ids, create=False)  # type: ignore[attr-defined]
    a, b = head.noise_posterior(heads)
    mean = head.theta_[heads] @ x
    width = np.sqrt(np.einsum("kd,kd->k", head.inv_chol_[heads] @ x, head.inv_chol_[heads] @ x))
    ref = _quad_reference(mean, width * np.sqrt(b / a), 2 * a)
    np.testing.assert_allclose(d.probabilities, ref, rtol=0, atol=1e-8)


def test_old_states_with_n_sim_still_load() -> None:
    from bandit_core import policy_from_state

    policy: object = _trained_lints(True)
    state = policy.to_state()  # type: ignore[attr-defined]
    state.config["n_sim"] = 1000
    restored = policy_from_state(state)
    cands = Candidates.from_any(["a", "b"])
    one = policy.select(np.ones(3), cands, np.random.default_rng(1))  # type: ignore[attr-defined]
    two = restored.select(np.ones(3), cands, np.random.default_rng(1))
    assert (one.arm, one.propensity) == (two.arm, two.propensity)


def test_the_heaviest_noise_prior_allowed_keeps_unseen_arms_exact() -> None:
    """a0 is at least 1/2. At 1e-3 a Gamma(a0) draw underflowed to 0 in 47 % of
    decisions: σ² infinite, every unseen arm's score +inf, and the first of them always
    won while the quadrature said they split evenly (b, c: 0.50 / 0.24 against 0.375
    each, core helper, stop 53)."""
    with pytest.raises(ValueError, match=r"'a0' parameter .* \[0\.5, inf\)"):
        make_policy("lints", dim_user=2, a0=1e-3)
    policy = make_policy("lints", dim_user=2, a0=0.5, b0=1.0)
    policy.update(np.array([1.0, 0.0]), "a", 1.0)
    n, x = 6000, np.array([1.0, 0.5])
    batch = policy.select_batch(np.tile(x, (n, 1)), ["a", "b", "c"], np.random.default_rng(1))
    assert batch.probabilities[0, 1] == pytest.approx(batch.probabilities[0, 2], abs=1e-12)
    freq = np.bincount(batch.arms, minlength=3) / n
    se = np.sqrt(freq * (1.0 - freq) / n)
    assert np.all(np.abs(batch.probabilities[0] - freq) < 4.0 * se), (freq, batch.probabilities[0])


@pytest.mark.parametrize(
    ("name", "option", "value"),
    [("linucb", "alpha", 1e308), ("lints", "v", 1e308), ("shared_lints", "v", 1e13)],
)
def test_an_exploration_scale_past_float_range_is_refused_naming_it(
    name: str, option: str, value: float
) -> None:
    """``alpha`` 1e308 made every score infinite (NaN propensities); LinTS's ``v`` raised
    numpy's "cannot convert float NaN to integer" (offline helper, stop 53)."""
    with pytest.raises(ValueError, match=rf"'{option}' parameter .* 1e\+12\]"):
        make_policy(name, dim_user=2, **{option: value})
