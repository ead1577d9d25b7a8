"""Monte-Carlo Thompson propensities (:mod:`bandit_core.montecarlo`): the one-row path of
the request is the general path's arithmetic, bit for bit."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from bandit_core.montecarlo import thompson_draws


@pytest.mark.parametrize("k", [2, 10, 50])
def test_one_row_equals_the_general_path_bit_for_bit(k: int) -> None:
    rng = np.random.default_rng(k)
    options = SimpleNamespace(n_sim=100, target_rel_error=None, max_sim=200)
    half = (options.n_sim + 2) // 2
    for _ in range(50):
        mean = rng.normal(0.0, 0.3, (2, k))
        noise = rng.standard_normal((2, half, k)) * rng.uniform(0.1, 2.0, (2, 1, k))

        def draw(rows: slice, j: int, noise: np.ndarray = noise) -> np.ndarray:
            assert j == half
            return noise[rows]

        one = thompson_draws(mean[:1], draw, options)  # the one-row path
        both = thompson_draws(mean, draw, options)  # two rows: the general path
        for got, ref in zip(one, both, strict=True):
            assert got.shape[0] == 1
            np.testing.assert_array_equal(got[0], ref[0])
        assert one[1].sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(("n_sim", "target"), [(10, None), (10, 0.1), (100, 0.05)])
def test_the_mean_reported_probability_is_the_choice_frequency(
    n_sim: int, target: float | None
) -> None:
    """Over seeded decisions every arm's mean reported probability is how often it is
    chosen (within 4 s.e.). With a target, draw 0 decided and the draws it won sized the
    rest: the rare arm's propensity came out 33 % low at n_sim = 10 (z = 5.9, core helper,
    stop 53). Independent N(μ, 1) scores; the rare arm wins about 1 % of draws."""
    rows = 60_000
    rng = np.random.default_rng(0)
    mean = np.tile([0.0, 0.0, -2.5], (rows, 1))
    options = SimpleNamespace(n_sim=n_sim, target_rel_error=target, max_sim=400)

    def draw(block: slice, j: int) -> np.ndarray:
        return rng.standard_normal((block.stop - block.start, j, 3))

    choice, probs, _, se = thompson_draws(mean, draw, options, rng)
    chosen = np.zeros_like(probs)
    chosen[np.arange(rows), choice] = 1.0
    gap = chosen - probs
    z = gap.mean(axis=0) / (gap.std(axis=0, ddof=1) / np.sqrt(rows))
    assert np.all(np.abs(z) < 4.0), z
    assert np.all(probs[np.arange(rows), choice] > 0.0) and np.all(np.isfinite(se))
