"""Monte-Carlo Thompson propensities with a measured standard error and adaptive draws.

When the candidates' sampled scores are correlated (one θ draw shared by every candidate:
shared linear, logistic and neural-linear Thompson sampling) the probability that an arm
wins has no one-dimensional form, so it is estimated from ``S`` posterior draws in
antithetic pairs (``μ + ε`` and ``μ − ε``). Draw 0 decides. For the chosen arm ``c`` the
pair means ``y_j = (1[c wins draw j⁺] + 1[c wins draw j⁻]) / 2`` are independent, so the
estimate ``p̂ = ȳ`` has the standard error ``s_y / √J`` (J pairs), which every decision
reports. Every draw, draw 0 included, is one of the policy's choices, so the mean of the
reported probabilities over decisions is the policy's choice probability (the contract).

With ``target_rel_error`` a *pilot* of ``n_sim`` draws, used for nothing else, says how
many draws reach the target for the arm its own first draw chose (an arm drawn as the
decision is); the decision then draws that many — at least ``n_sim``, at most
``max_sim`` — and decides and estimates from them as above. Sized by the decision's own
draws (draw 0 decided, the draws it won sized the rest), the estimate was biased: a rare
arm's propensity came out 33 % low with ``n_sim = 10`` (core helper, stop 53), since the
draws that happened to favour it were outweighed by the extra ones they called for.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bandit_core._validation import Constraint, FloatArray, Interval, OptionalOf, validate_params
from bandit_core.types import DecisionBatch

IntArray = NDArray[np.intp]

#: Upper bound on the elements of one block of draws (rows × draws × K).
_BLOCK = 4_000_000

#: Most posterior draws (or stochastic passes) one decision may ask for: 50 times the
#: default cap ``max_sim``. A state declaring more is refused where it is built, so a
#: model version cannot make every decision cost millions of draws.
MAX_DRAWS = 1_000_000
#: The range of a draw count (``n_sim``).
DRAWS = Interval(int, 1, MAX_DRAWS)

MONTE_CARLO_PARAMS: dict[str, Constraint] = {
    "n_sim": DRAWS,
    "target_rel_error": OptionalOf(Interval(float, 0.0, 1.0, closed="neither")),
    "max_sim": Interval(int, 2, MAX_DRAWS),
}


@dataclass(frozen=True, kw_only=True)
class MonteCarloOptions:
    """Monte-Carlo propensity options.

    Parameters
    ----------
    n_sim : int
        Posterior draws per decision (rounded up to an even number of antithetic pairs).
    target_rel_error : float in (0, 1) or None
        Wanted relative standard error of the chosen arm's propensity; rows above it get
        more draws. None: always ``n_sim`` draws.
    max_sim : int
        Cap on the draws of one decision (at least ``n_sim``).
    """

    n_sim: int = 1000
    target_rel_error: float | None = None
    max_sim: int = 20_000

    def __post_init__(self) -> None:
        params = {k: getattr(self, k) for k in MONTE_CARLO_PARAMS}
        validate_params(type(self).__name__, params, MONTE_CARLO_PARAMS)
        if self.max_sim < self.n_sim:
            raise ValueError(
                f"The 'max_sim' parameter of {type(self).__name__} must be at least n_sim "
                f"({self.n_sim}). Got {self.max_sim}."
            )


def draw_pairs(n_sim: int) -> int:
    """J, the antithetic pairs of a decision asking for ``n_sim`` draws: ``S = 2J =
    2·⌈(n_sim + 1)/2⌉`` draws."""
    return (n_sim + 2) // 2


def _pair_stats(
    centre: FloatArray, noise: FloatArray, choice: IntArray, exact_ties: bool = False
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Win counts (m, K) over both signs, and Σy, Σy² (m,) of the chosen arm's pair means.

    With ``exact_ties`` (some arms share their centre: identical candidates, a degenerate
    posterior), a draw whose maximum is shared exactly by several arms counts ``1/|ties|``
    for each of them."""
    m, k = centre.shape[0], centre.shape[-1]
    half = noise.shape[1]
    if not exact_ties:
        winners = np.concatenate(
            [(centre + noise).argmax(axis=-1), (centre - noise).argmax(axis=-1)], axis=1
        )  # (m, 2J)
        counts = np.bincount((winners + (np.arange(m) * k)[:, None]).ravel(), minlength=m * k)
        hits = (winners == choice[:, None]).astype(np.float64)
        wins = counts.reshape(m, k).astype(np.float64)
    else:
        sampled = np.concatenate([centre + noise, centre - noise], axis=1)  # (m, 2J, K)
        tied = sampled == sampled.max(axis=-1, keepdims=True)
        weights = tied / tied.sum(axis=-1)[..., None]  # (m, 2J, K)
        wins = weights.sum(axis=1)
        hits = weights[np.arange(m), :, choice]  # (m, 2J)
    y = (hits[:, :half] + hits[:, half:]) / 2.0
    return wins, y.sum(axis=1), (y * y).sum(axis=1)


def _shared_centres(mean: FloatArray) -> bool:
    """Whether two arms of some row share their centre exactly (only then can sampled
    scores tie with positive probability)."""
    ordered = np.sort(mean, axis=-1)
    return bool((ordered[:, 1:] == ordered[:, :-1]).any())


def thompson_draws(
    mean: FloatArray,
    draw: Callable[[slice, int], FloatArray],
    options: Any,
    rng: np.random.Generator | None = None,
) -> tuple[IntArray, FloatArray, FloatArray, FloatArray]:
    """Thompson decisions with Monte-Carlo propensities and their standard errors.

    Parameters
    ----------
    mean : ndarray of shape (n, K)
        Centre of the sampled scores.
    draw : callable
        ``draw(rows, J)`` returns J score perturbations ``ε`` (m, J, K) for the rows
        ``rows`` (a slice of the n rows); it owns the random generator.
    options : MonteCarloOptions (or a config with its three fields)
    rng : Generator, optional
        Breaks an exact tie of draw 0 uniformly (without: the first of the tied arms).

    Returns
    -------
    choice (n,), probabilities (n, K), scores (n, K) of draw 0, and the standard error
    (n,) of the chosen arm's propensity.
    """
    n, k = mean.shape
    half = draw_pairs(options.n_sim)
    cap = max(half, getattr(options, "max_sim", 2 * half) // 2)
    # no room past n_sim (max_sim ≤ n_sim + 1): the target changes nothing, no pilot
    target = getattr(options, "target_rel_error", None) if cap > half else None
    if n == 1 and target is None and distinct(mean[0]):
        return _one_decision(mean, draw(slice(0, 1), half)[0])
    step = max(1, _BLOCK // (2 * half * k))
    choices, probs, scores, errors = [], [], [], []
    for start in range(0, n, step):
        rows = slice(start, min(n, start + step))
        centre = mean[rows][:, None, :]
        needed = None if target is None else _pilot_size(centre, draw(rows, half), target)
        noise = draw(rows, half)
        first = centre[:, 0, :] + noise[:, 0, :]
        choice = first.argmax(axis=-1).astype(np.intp)
        exact_ties = _shared_centres(mean[rows])
        if exact_ties and rng is not None:
            ties = first == first.max(axis=-1, keepdims=True)
            for row in np.flatnonzero(ties.sum(axis=-1) > 1):
                tied_arms = np.flatnonzero(ties[row])
                choice[row] = tied_arms[rng.integers(tied_arms.size)]
        counts, s1, s2 = _pair_stats(centre, noise, choice, exact_ties)
        pairs = np.full(choice.shape[0], float(half))
        if needed is not None:
            more = int(min(cap, needed.max()) - half)
            if more > 0:
                extra_rows = np.flatnonzero(needed > pairs)
                # contiguous blocks of the rows that need more (a slice per block)
                for lo, hi in _runs(extra_rows):
                    sub = slice(rows.start + lo, rows.start + hi)
                    c2, e1, e2 = _pair_stats(
                        mean[sub][:, None, :], draw(sub, more), choice[lo:hi], exact_ties
                    )
                    counts[lo:hi] += c2
                    s1[lo:hi] += e1
                    s2[lo:hi] += e2
                    pairs[lo:hi] += more
        choices.append(choice)
        probs.append(counts / (2.0 * pairs[:, None]))
        scores.append(first)
        errors.append(_se(s1, s2, pairs))
    if len(choices) == 1:  # one block (every single decision): no copies
        return choices[0], probs[0], scores[0], errors[0]
    return (
        np.concatenate(choices),
        np.concatenate(probs),
        np.concatenate(scores),
        np.concatenate(errors),
    )


def _pilot_size(centre: FloatArray, noise: FloatArray, target: float) -> FloatArray:
    """Pairs (m,) a decision needs for a relative standard error ``target`` on the
    propensity of the arm a pilot's first draw chose, estimated from the pilot's J pairs
    ``noise`` (m, J, K) around ``centre`` (m, 1, K); the pilot is used for nothing else."""
    half = noise.shape[1]
    pilot = (centre[:, 0, :] + noise[:, 0, :]).argmax(axis=-1).astype(np.intp)
    _, s1, s2 = _pair_stats(centre, noise, pilot)
    pairs = np.full(pilot.shape[0], float(half))
    se = _se(s1, s2, pairs)
    out: FloatArray = np.ceil(pairs * (se / (target * (s1 / pairs))) ** 2)
    return out


def _one_decision(
    mean: FloatArray, noise: FloatArray
) -> tuple[IntArray, FloatArray, FloatArray, FloatArray]:
    """:func:`thompson_draws` of one row (1, K) with J pairs of draws ``noise`` (J, K),
    no tied centres and no target, as arrays of one row (:func:`one_decision`)."""
    choice, probs, scores, se = one_decision(mean[0], noise)
    return np.full(1, choice, dtype=np.intp), probs[None], scores[None], np.full(1, se)


def one_decision(
    centre: FloatArray, noise: FloatArray
) -> tuple[int, FloatArray, FloatArray, float]:
    """One Thompson decision from the centre (K,) of the sampled scores and J pairs of
    perturbations ``noise`` (J, K), when no two centres are equal (:func:`distinct`) and
    no target error is set: the chosen index, the propensities (K,), the scores (K,) of
    draw 0 and the chosen arm's standard error — the request path's case, with a third of
    the general path's numpy calls.

    Counts and the sums of pair means (multiples of 1/4) are exact in any order, and the
    standard error is :func:`_se`'s arithmetic on Python floats (the same IEEE operations),
    so every output is bit-identical to :func:`thompson_draws`' general path."""
    half, k = noise.shape
    sampled = np.empty((2 * half, k))
    np.add(centre, noise, out=sampled[:half])
    np.subtract(centre, noise, out=sampled[half:])
    winners = sampled.argmax(axis=1)
    choice = int(winners[0])
    counts = np.bincount(winners, minlength=k)
    hits = winners == choice
    # pair j's mean y_j is (wins of its two draws)/2: Σy = wins/2 and, with n₂ pairs won
    # twice, Σy² = (wins + 2·n₂)/4 (exact: multiples of 1/4)
    wins = float(counts[choice])
    twice = float(np.count_nonzero(hits[:half] & hits[half:]))
    pairs = float(half)
    s1 = wins / 2.0
    s2 = (wins + 2.0 * twice) / 4.0
    mean = s1 / pairs
    var = max(s2 / pairs - mean * mean, 0.0) * pairs / max(pairs - 1.0, 1.0)
    probs: FloatArray = counts / (2.0 * pairs)
    return choice, probs, sampled[0], math.sqrt(var / pairs)


def distinct(centre: FloatArray) -> bool:
    """Whether the K centres of one row are all different (:func:`_shared_centres`' test
    for one row, without sorting)."""
    return bool(len(set(centre.tolist())) == centre.shape[0])


def _se(s1: FloatArray, s2: FloatArray, pairs: FloatArray) -> FloatArray:
    """Standard error of the mean of J pair means from Σy and Σy²."""
    mean = s1 / pairs
    var = np.maximum(s2 / pairs - mean * mean, 0.0) * pairs / np.maximum(pairs - 1.0, 1.0)
    out: FloatArray = np.sqrt(var / pairs)
    return out


def _runs(index: IntArray) -> list[tuple[int, int]]:
    """Maximal runs ``[lo, hi)`` of consecutive integers in the sorted ``index``."""
    if index.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(index) != 1)
    starts = np.concatenate([[index[0]], index[breaks + 1]])
    ends = np.concatenate([index[breaks], [index[-1]]]) + 1
    return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


def mixture_se(inner: DecisionBatch, arms: IntArray, inner_weight: Any) -> FloatArray | None:
    """The standard errors of the propensities of ``arms`` (n,) under a mixture that
    gives ``inner_weight`` (scalar or (n,)) to the inner policy's Monte-Carlo
    probabilities (its decisions ``inner``) and the rest to exact parts (a floor, a
    cold-start share); None when the inner policy's propensities are exact.

    Where the mixture serves the inner policy's own choice this is ``inner_weight · se``.
    Where it serves another arm ``j``, whose estimate came from the same draws, the error
    is the binomial one at the number of draws the chosen arm's error implies,
    ``√(p̂_j (1 − p̂_j) · se² / (p̂ (1 − p̂)))`` — an estimate, not a measured error (the
    draws measure the chosen arm's only).
    """
    inner_se = inner.propensity_se
    if inner_se is None:
        return None
    rows = np.arange(arms.shape[0])
    p_arm = inner.probabilities[rows, arms]
    spread = inner.propensities * (1.0 - inner.propensities)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_draw = np.where(spread > 0.0, inner_se**2 / spread, 0.0)
    other = np.sqrt(np.maximum(p_arm * (1.0 - p_arm), 0.0) * per_draw)
    out: FloatArray = np.asarray(inner_weight, dtype=np.float64) * np.where(
        arms == inner.arms, inner_se, other
    )
    return out
