"""Pure exploration rules: turn scores into exact choice probabilities, and sample.

Every rule returns the full probability vector over the candidates, so the propensity
logged with a decision is the probability the rule actually used to draw it.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from bandit_core._validation import FloatArray

IntArray = NDArray[np.intp]

#: Relative tolerance under which two scores count as tied.
TIE_TOLERANCE = 1e-12


def tied_with_max(scores: FloatArray) -> NDArray[np.bool_]:
    """Mask (n, K) of the candidates whose score equals the row maximum (within tolerance)."""
    top = scores.max(axis=-1, keepdims=True)
    mask: NDArray[np.bool_] = scores >= top - TIE_TOLERANCE * np.maximum(1.0, np.abs(top))
    return mask


def greedy_probabilities(scores: FloatArray, epsilon: float = 0.0) -> FloatArray:
    """ε-greedy probabilities with ties broken uniformly (exact).

    ``p_a = (1 − ε) · 1[a ∈ T] / |T| + ε / K`` where T is the set of arms with the
    maximal score. ``scores`` has shape (n, K).
    """
    ties = tied_with_max(scores).astype(np.float64)
    greedy: FloatArray = ties / ties.sum(axis=-1, keepdims=True)
    if epsilon == 0.0:
        return greedy
    k = scores.shape[-1]
    out: FloatArray = (1.0 - epsilon) * greedy + epsilon / k
    return out


def first_of_ties(scores: FloatArray) -> tuple[IntArray, FloatArray]:
    """Deterministic argmax: the first of the tied candidates of each row (n, K), with
    its exact probabilities (one-hot)."""
    choice: IntArray = np.argmax(tied_with_max(scores), axis=-1).astype(np.intp)
    probs: FloatArray = np.zeros(scores.shape)
    probs[np.arange(scores.shape[0]), choice] = 1.0
    return choice, probs


def sample_categorical(probabilities: FloatArray, rng: np.random.Generator) -> IntArray:
    """One draw per row of ``probabilities`` (n, K) by inverse CDF (one uniform per row)."""
    cdf = np.cumsum(probabilities, axis=-1)
    u = rng.random((probabilities.shape[0], 1)) * cdf[:, -1:]
    choice = (cdf <= u).sum(axis=-1)
    out: IntArray = np.minimum(choice, probabilities.shape[-1] - 1).astype(np.intp)
    # never land on a zero-probability arm through round-off at the top of the CDF
    bad = probabilities[np.arange(choice.shape[0]), out] <= 0.0
    if bad.any():
        out[bad] = np.argmax(probabilities[bad] > 0.0, axis=-1)
    return out


def thompson_choice(
    sampled_scores: FloatArray, rng: np.random.Generator | None = None
) -> tuple[IntArray, FloatArray]:
    """Decision and Monte-Carlo choice probabilities from posterior draws.

    ``sampled_scores`` has shape (n, S, K): S independent posterior draws of every
    candidate's score. Draw 0 makes the decision (it *is* a Thompson sample); the
    probability of each arm is its argmax frequency over all S draws, which is an unbiased
    estimate of the true Thompson probability, sums to 1 and is at least 1/S for the arm
    actually chosen. A draw whose maximum is shared exactly by several arms (identical
    candidates, a degenerate posterior) counts ``1/|ties|`` for each of them, and with
    ``rng`` draw 0's decision is uniform over its ties (without, the first of them).
    """
    n, s, k = sampled_scores.shape
    winners = sampled_scores.argmax(axis=-1)  # (n, S)
    tied = sampled_scores == sampled_scores.max(axis=-1, keepdims=True)  # (n, S, K)
    n_tied = tied.sum(axis=-1)  # (n, S)
    if bool(np.all(n_tied == 1)):
        offsets = (np.arange(n) * k)[:, None]
        counts = np.bincount((winners + offsets).ravel(), minlength=n * k).reshape(n, k)
        return winners[:, 0].astype(np.intp), counts / float(s)
    probs: FloatArray = (tied / n_tied[..., None]).mean(axis=1)
    choice = winners[:, 0].astype(np.intp)
    if rng is not None:
        for row in np.flatnonzero(n_tied[:, 0] > 1):
            options = np.flatnonzero(tied[row, 0])
            choice[row] = options[rng.integers(options.size)]
    return choice, probs


def choice_standard_error(sampled_scores: FloatArray, choice: IntArray) -> FloatArray:
    """Standard error (n,) of :func:`thompson_choice`'s probability of the chosen arm:
    the spread of its per-draw win share (``1/|ties|`` in a tied draw) over the S draws,
    ``s / √S``."""
    n, s, _ = sampled_scores.shape
    tied = sampled_scores == sampled_scores.max(axis=-1, keepdims=True)  # (n, S, K)
    share = tied[np.arange(n), :, choice] / tied.sum(axis=-1)  # (n, S)
    if s < 2:
        return np.zeros(n)
    out: FloatArray = share.std(axis=1, ddof=1) / np.sqrt(s)
    return out


def mix_uniform(probabilities: FloatArray, weight: float, floor: float | None = None) -> FloatArray:
    """``(1 − w) p + w / K``: the exact law of "with probability w pick uniformly".

    With ``floor`` (``w = min(1, K · floor)``), the uniform part is ``floor`` itself where
    ``w < 1``: ``(K · floor) / K`` rounds one unit in the last place below ``floor`` for
    many ``K``, and 28 % of a floored policy's decisions were logged below its floor,
    each one an alert of the monitor (audit, stop 55)."""
    k = probabilities.shape[-1]
    share = floor if floor is not None and weight < 1.0 else weight / k
    out: FloatArray = (1.0 - weight) * probabilities + share
    return out


def greedy_choice_one(
    scores: FloatArray, epsilon: float, rng: np.random.Generator
) -> tuple[int, FloatArray]:
    """Single-decision form of :func:`greedy_probabilities` + sampling (request path).

    Returns the chosen index and the exact probabilities (K,). Uses ``rng`` exactly as
    row 0 of the batch form (one uniform of :func:`sample_categorical`), so ``select``
    and ``select_batch`` decide alike under the same seed; without ties and ε = 0 the
    uniform is drawn and the argmax kept (the inverse CDF would land on it).
    """
    best = int(scores.argmax())
    top = float(scores[best])
    ties = scores >= top - TIE_TOLERANCE * max(1.0, abs(top))
    count = int(np.count_nonzero(ties))
    if epsilon == 0.0:
        if count == 1:
            rng.random()  # the uniform sample_categorical would draw
            return best, ties.astype(np.float64)
        probs: FloatArray = ties / count
        return int(sample_categorical(probs[None, :], rng)[0]), probs
    probs = ties * ((1.0 - epsilon) / count) + epsilon / scores.shape[0]
    return int(sample_categorical(probs[None, :], rng)[0]), probs
