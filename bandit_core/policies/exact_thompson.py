"""Per-arm linear Thompson sampling with exact propensities.

With one posterior per arm the sampled scores of the candidates are independent: arm
``a``'s score is ``θ̂_aᵀx + v ‖U_a x‖ σ_a ε``, Normal with scale ``v ‖U_a x‖`` (σ = 1)
or, when σ_a² is drawn from its inverse-gamma posterior IG(a_a, b_a), Student-t with
``ν = 2 a_a`` degrees of freedom and scale ``v ‖U_a x‖ √(b_a / a_a)`` (Agrawal & Goyal
2013; Riquelme et al. 2018). The decision is one such draw per candidate; the propensity
of every candidate is the quadrature of :mod:`bandit_core.argmax_quadrature`, exact to
1e-8, with no Monte-Carlo draws.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from bandit_core._validation import FloatArray
from bandit_core.argmax_quadrature import argmax_probabilities
from bandit_core.exploration import sample_categorical, tied_with_max

IntArray = NDArray[np.intp]


def per_arm_thompson(
    mean: FloatArray,
    width: FloatArray,
    a: FloatArray,
    b: FloatArray,
    v: float,
    sample_noise: bool,
    rng: np.random.Generator,
) -> tuple[IntArray, FloatArray, FloatArray]:
    """One Thompson decision per row with exact choice probabilities.

    Parameters
    ----------
    mean, width : ndarray of shape (n, K)
        Posterior mean score ``θ̂_aᵀx`` and ``‖U_a x‖ = √(xᵀA_a⁻¹x)`` of every candidate.
    a, b : ndarray of shape (K,)
        Inverse-gamma posterior of each candidate's noise variance.
    v : float
        Scale of the posterior draws.
    sample_noise : bool
        Draw σ² from IG(a, b) (Student-t scores) instead of σ = 1 (Normal scores).
    rng : numpy.random.Generator
        Source of the draws: ``n·K`` standard normals, then (with ``sample_noise``)
        ``n·K`` gamma variates, then one uniform per row that has tied maxima.

    Returns
    -------
    choice : ndarray of shape (n,)
    probabilities : ndarray of shape (n, K)
        P(candidate = argmax of the sampled scores), rows summing to 1.
    scores : ndarray of shape (n, K)
        The sampled scores that made the decision.
    """
    n, k = mean.shape
    scale = width * v
    noise = rng.standard_normal((n, k)) * scale
    if sample_noise:
        noise *= np.sqrt(b / rng.standard_gamma(a, size=(n, k)))
        scale = scale * np.sqrt(b / a)
        df: FloatArray | None = np.tile(2.0 * a, (n, 1))
    else:
        df = None
    scores = mean + noise
    choice = scores.argmax(axis=1).astype(np.intp)
    # a win split uniformly only among point masses (scale 0: a zero context) whose means
    # are tied, as the quadrature splits it; draws of scale > 0 tie with probability 0.
    # Before, any draws within 1e-12 of the maximum were split: every decision of a
    # context of norm ≲ 1e-12 was uniform while its logged propensities were the
    # quadrature's (up to 0.58 apart; numerics pass, stop 50)
    point = scale == 0.0
    if point.any():  # else nothing can tie (and no draw is taken either way)
        ties = point & tied_with_max(np.where(point, scores, -np.inf))
        ties &= point[np.arange(choice.shape[0]), choice][:, None]  # a point mass won
        several = ties.sum(axis=1) > 1
        if several.any():
            split = ties[several] / ties[several].sum(axis=1, keepdims=True)
            choice[several] = sample_categorical(split, rng)
    return choice, argmax_probabilities(mean, scale, df), scores
