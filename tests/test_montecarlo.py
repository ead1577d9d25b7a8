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
