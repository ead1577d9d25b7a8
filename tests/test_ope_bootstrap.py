"""The vectorised bootstrap: determinism, thread-count invariance, and a reference check."""

from __future__ import annotations

import numpy as np
import pytest

from validation.ope import RoundTerms, bootstrap_estimates, bootstrap_interval, percentile_interval
from validation.ope.bootstrap import bootstrap_means, pseudo_rounds, resampled_interval


def terms(n: int = 500, seed: int = 0, ratio: bool = False) -> RoundTerms:
    rng = np.random.default_rng(seed)
    w = rng.exponential(1.0, n)
    r = rng.random(n)
    if ratio:
        return RoundTerms(num=w * r, den=w, base=0.1 * r, weights=w)
    return RoundTerms(num=w * r, weights=w)


def test_same_seed_same_resamples() -> None:
    a = bootstrap_estimates(terms(), np.random.default_rng(3), 200)
    b = bootstrap_estimates(terms(), np.random.default_rng(3), 200)
    c = bootstrap_estimates(terms(), np.random.default_rng(4), 200)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("ratio", [False, True])
def test_thread_count_does_not_change_the_result(ratio: bool) -> None:
    t = terms(ratio=ratio)
    # small blocks so that several threads really share the work
    one = bootstrap_estimates(t, np.random.default_rng(5), 97, n_jobs=1, max_elements=2000)
    three = bootstrap_estimates(t, np.random.default_rng(5), 97, n_jobs=3, max_elements=2000)
    np.testing.assert_array_equal(one, three)


def test_resamples_recompute_the_statistic_from_resampled_rows() -> None:
    # reference: with a single resample, redo it by hand with the same index stream
    t = terms(n=50, ratio=True)
    rng = np.random.default_rng(11)
    got = bootstrap_estimates(t, rng, 1)[0]
    seed = np.random.default_rng(11).integers(0, 2**63 - 1, size=1, dtype=np.int64)[0]
    idx = np.random.default_rng(int(seed)).integers(0, 50, size=(1, 50), dtype=np.int32)[0]
    expected = t.num[idx].mean() / t.den[idx].mean() + t.base[idx].mean()
    assert got == pytest.approx(expected, rel=1e-14)


def test_bootstrap_spread_of_a_mean_matches_the_standard_error() -> None:
    # seeded statistical check, tolerance 10%: sd of resampled means ≈ s / sqrt(n)
    t = terms(n=2000, seed=1)
    boot = bootstrap_estimates(t, np.random.default_rng(2), 2000)
    se = t.num.std(ddof=0) / np.sqrt(t.num.shape[0])
    assert boot.std() == pytest.approx(se, rel=0.10)
    # the resampled means centre on the sample mean, up to their own MC error se / sqrt(B)
    assert boot.mean() == pytest.approx(t.value(), abs=4 * se / np.sqrt(2000))


def test_percentile_interval_matches_numpy_quantiles() -> None:
    x = np.random.default_rng(0).normal(size=1001)
    low, high = percentile_interval(x, 0.9)
    assert low == pytest.approx(np.quantile(x, 0.05), rel=1e-12)
    assert high == pytest.approx(np.quantile(x, 0.95), rel=1e-12)


def test_interval_contains_the_estimate_and_narrows_with_level() -> None:
    t = terms()
    wide = bootstrap_interval(t, np.random.default_rng(1), 400, level=0.99)
    narrow = bootstrap_interval(t, np.random.default_rng(1), 400, level=0.5)
    assert wide[0] < narrow[0] < t.value() < narrow[1] < wide[1]


def test_zero_denominator_resamples_give_zero() -> None:
    t = RoundTerms(num=np.array([0.0, 0.0, 1.0]), den=np.array([0.0, 0.0, 1.0]), weights=np.ones(3))
    boot = bootstrap_estimates(t, np.random.default_rng(0), 300)
    assert set(np.unique(boot)) <= {0.0, 1.0}
    assert 0.0 in boot  # resamples that miss the one matched round carry no evidence


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"n_resamples": 0},
            r"'n_resamples' parameter of bootstrap_estimates must be an int in the range \[1, inf",
        ),
        ({"n_jobs": 0}, r"'n_jobs' parameter of bootstrap_estimates must be None or an int"),
    ],
)
def test_bad_parameters_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bootstrap_estimates(terms(), np.random.default_rng(0), **kwargs)


def test_level_must_be_inside_zero_one() -> None:
    with pytest.raises(
        ValueError,
        match=r"'level' parameter of percentile_interval must be a float in the range \(0, 1\)",
    ):
        percentile_interval(np.ones(3), 1.0)


def test_rng_must_be_a_generator() -> None:
    with pytest.raises(TypeError, match=r"rng must be a numpy\.random\.Generator"):
        bootstrap_estimates(terms(), 42, 10)  # type: ignore[arg-type]


def rare_ips(clicks: int, n: int = 2000, k: int = 12, seed: int = 0) -> RoundTerms:
    """IPS terms of a policy playing one of ``k`` uniformly logged arms: weight ``k`` on
    its ``n / k`` matched rounds, ``clicks`` of them rewarded; 5 other rounds rewarded."""
    rng = np.random.default_rng(seed)
    matched = np.zeros(n, dtype=bool)
    matched[rng.choice(n, n // k, replace=False)] = True
    reward = np.zeros(n)
    reward[rng.choice(np.flatnonzero(matched), clicks, replace=False)] = 1.0
    reward[rng.choice(np.flatnonzero(~matched), 5, replace=False)] = 1.0
    w = np.where(matched, float(k), 0.0)
    return RoundTerms(num=w * reward, weights=w, reward=reward, reward_slope=w)


def test_one_more_event_is_the_largest_weight_at_the_top_reward() -> None:
    t = rare_ips(clicks=2)
    high, low = pseudo_rounds([t], (1.0,))
    np.testing.assert_array_equal(high[0], [12.0])  # a matched round with a click
    np.testing.assert_array_equal(low[0], [0.0])  # a round without one
    # for a ratio the denominator goes with it: SNIPS's event is (w r_max, w)
    s = RoundTerms(
        num=t.num, den=t.weights, weights=t.weights, reward=t.reward, reward_slope=t.weights
    )
    high, low = pseudo_rounds([s], (1.0,))
    np.testing.assert_array_equal(high[0], [12.0, 12.0])
    np.testing.assert_array_equal(low[0], [0.0, 12.0])
    # no reward in the terms, all rewards equal, or none entering them: no event
    assert pseudo_rounds([RoundTerms(num=t.num, weights=t.weights)], (1.0,)) is None
    flat = RoundTerms(
        num=t.weights, weights=t.weights, reward=np.ones(2000), reward_slope=t.weights
    )
    assert pseudo_rounds([flat], (1.0,)) is None
    dm = RoundTerms(num=t.num, weights=t.weights, reward=t.reward, reward_slope=np.zeros(2000))
    assert pseudo_rounds([dm], (1.0,)) is None


@pytest.mark.parametrize("clicks", [0, 1, 4, 30])
def test_the_event_adjusted_interval_holds_the_percentile_one_and_one_more_click(
    clicks: int,
) -> None:
    # reference: a matched click is worth 12 / 2000 = 0.006 of the estimate; Garwood's
    # exact 97.5 % upper bounds of a Poisson count are 3.69, 5.57, 10.24 and 42.8 counts
    # for 0, 1, 4 and 30 seen: the percentile interval stops at about c + 2√c (none: 0)
    t = rare_ips(clicks)
    means = bootstrap_means(t, np.random.default_rng(1), 2000)
    extra = np.random.default_rng(2).poisson(1.0, 2000)
    plain = resampled_interval([t], [means], None)
    low, high = resampled_interval([t], [means], extra)
    assert low <= plain[0] and high >= plain[1]
    garwood = {0: 3.69, 1: 5.57, 4: 10.24, 30: 42.8}[clicks]
    assert garwood - 1.0 <= high / 0.006 <= garwood + 1.5, (plain, high / 0.006)
    if clicks == 0:
        assert plain == (0.0, 0.0)


def test_the_percentile_interval_is_the_open_bandit_pipeline_s() -> None:
    # interval="percentile" reproduces the percentile interval of the same resamples
    t = terms(ratio=True)
    got = bootstrap_interval(t, np.random.default_rng(6), 300, interval="percentile")
    want = percentile_interval(bootstrap_estimates(t, np.random.default_rng(6), 300))
    assert got == want
    with pytest.raises(
        ValueError, match=r"'interval' parameter of bootstrap_interval must be one of"
    ):
        bootstrap_interval(t, np.random.default_rng(6), 300, interval="bca")
