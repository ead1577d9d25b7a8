"""Off-policy estimators as pure functions on a validated :class:`BanditFeedback`.

Every estimator returns its *round terms*: per-round arrays whose means give the
estimate,

    V̂ = mean(base) + mean(num) / mean(den)         (no den: mean(num); no base: 0),

so that the point estimate and every bootstrap resample are computed by the same
expression (the self-normalised estimators are ratios of means, not means).

Notation: ``w_i = π_e(a_i|x_i, k_i) / π_b(a_i|x_i)`` is the importance weight of round i
at its slot ``k_i``; ``q̂(x, a, k)`` the reward model; ``q̂(x_i, π_e) = Σ_a π_e(a|x_i, k_i)
q̂(x_i, a, k_i)`` the model's value of the evaluation policy. With several slots the
policy value is the mean reward per logged (impression, slot) row, as in the Open Bandit
Pipeline (Saito et al. 2021).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from bandit_core._validation import FloatArray
from bandit_core.exploration import sample_categorical
from validation.ope.inputs import BanditFeedback


def ratio(num: FloatArray, den: FloatArray) -> FloatArray:
    """``num / den`` elementwise, 0 where ``den`` is 0 (no matched round: no evidence)."""
    out: FloatArray = np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den != 0)
    return out


@dataclass(frozen=True)
class RoundTerms:
    """Per-round pieces of one estimator, each of shape (n_rounds,).

    Attributes
    ----------
    num : ndarray (n_rounds,)
        Averaged in every estimator.
    weights : ndarray (n_rounds,)
        The importance weights the estimator applies (clipped, switched or shrunk where
        it does so; the plain weights for DM, which applies none, as an overlap
        diagnostic). Source of the effective sample size and the max weight.
    den : ndarray (n_rounds,) or None
        Denominator of a self-normalised estimator.
    base : ndarray (n_rounds,) or None
        Term added outside the ratio (the DM part of SNDR).
    params : dict
        Hyperparameters used (``clip``, ``lambda_``) and counts (``n_matched``).
    reward : ndarray (n_rounds,) or None
        The logged rewards the terms were computed from.
    reward_slope : ndarray (n_rounds,) or None
        ``∂num_i / ∂r_i``: how far round i's ``num`` moves per unit of its reward (the
        applied weight; the match indicator for replay). With ``reward``, it gives the
        round's terms had its reward been another value
        (:meth:`num_at`), which the small-count interval needs
        (:mod:`validation.ope.bootstrap`). None where no reward enters ``num`` (DM) or
        the terms were built by hand.
    """

    num: FloatArray
    weights: FloatArray
    den: FloatArray | None = None
    base: FloatArray | None = None
    params: dict[str, float] = field(default_factory=dict)
    reward: FloatArray | None = None
    reward_slope: FloatArray | None = None

    def columns(self) -> FloatArray:
        """The arrays to resample together, shape (n_rounds, 1 + has_den + has_base)."""
        cols = [self.num]
        if self.den is not None:
            cols.append(self.den)
        if self.base is not None:
            cols.append(self.base)
        return np.ascontiguousarray(np.stack(cols, axis=1))

    def combine(self, means: FloatArray) -> FloatArray:
        """The estimate from column means (..., n_columns) as laid out by :meth:`columns`."""
        value = means[..., 0]
        col = 1
        if self.den is not None:
            value = ratio(value, means[..., col])
            col += 1
        if self.base is not None:
            value = value + means[..., col]
        out: FloatArray = np.asarray(value, dtype=np.float64)
        return out

    def num_at(self, reward: float) -> FloatArray:
        """``num`` of every round had its reward been ``reward`` (n_rounds,); ``num``
        itself without :attr:`reward` and :attr:`reward_slope`."""
        if self.reward is None or self.reward_slope is None:
            return self.num
        out: FloatArray = self.num + self.reward_slope * (reward - self.reward)
        return out

    def value(self) -> float:
        """The point estimate V̂."""
        v = float(self.num.mean())
        if self.den is not None:
            d = float(self.den.mean())
            v = v / d if d != 0.0 else 0.0
        if self.base is not None:
            v += float(self.base.mean())
        return v


def _residual(fb: BanditFeedback, name: str) -> tuple[FloatArray, FloatArray]:
    """``(q̂(x_i, π_e), r_i − q̂(x_i, a_i, k_i))``."""
    _, q_logged = fb.model_at_position(name)
    return fb.direct_method_term(name), fb.reward - q_logged


def replay(fb: BanditFeedback, rng: np.random.Generator) -> RoundTerms:
    """Replay method (Li, Chu, Langford & Wang, WSDM 2011, Algorithm 1), offline form.

    The evaluation policy draws an action for every logged round (from ``action_dist``
    with ``rng``; exact for deterministic policies); rounds where it equals the logged
    action are kept and ``V̂ = Σ 1[â_i = a_i] r_i / Σ 1[â_i = a_i]``. Unbiased only for a
    uniformly random log, which is checked: ``pscore`` must be ``1 / n_actions``.
    """
    expected = 1.0 / fb.n_actions
    off = ~np.isclose(fb.pscore, expected, rtol=1e-9, atol=0.0)
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise ValueError(
            "replay needs a uniformly random log: pscore must equal 1 / n_actions = "
            f"{expected!r} on every round; got {fb.pscore[i].item()!r} at index {i}."
        )
    rows = np.arange(fb.n_rounds)
    drawn = sample_categorical(fb.action_dist[rows, :, fb.position], rng)
    match = (drawn == fb.action).astype(np.float64)
    return RoundTerms(
        num=match * fb.reward,
        den=match,
        weights=match / fb.pscore,
        params={"n_matched": float(match.sum())},
        reward=fb.reward,
        reward_slope=match,
    )


def ips(fb: BanditFeedback, clip: float | None = None) -> RoundTerms:
    """Inverse propensity scoring: ``V̂ = mean(w_i r_i)`` (Horvitz & Thompson 1952;
    Strehl et al. 2010), with optional clipping ``min(w_i, clip)`` (Ionides 2008), which
    trades bias for variance."""
    w = fb.importance_weights()
    params: dict[str, float] = {}
    if clip is not None:
        w = np.minimum(w, clip)
        params["clip"] = float(clip)
    return RoundTerms(num=fb.reward * w, weights=w, params=params, reward=fb.reward, reward_slope=w)


def snips(fb: BanditFeedback) -> RoundTerms:
    """Self-normalised IPS: ``V̂ = Σ w_i r_i / Σ w_i`` (Swaminathan & Joachims, NeurIPS
    2015, eq. 3). Bounded by the reward range; consistent, not unbiased."""
    w = fb.importance_weights()
    return RoundTerms(num=fb.reward * w, den=w, weights=w, reward=fb.reward, reward_slope=w)


def dm(fb: BanditFeedback) -> RoundTerms:
    """Direct method: ``V̂ = mean(q̂(x_i, π_e))`` (Beygelzimer & Langford 2009; Dudík,
    Langford & Li, ICML 2011, eq. 1). No weights; biased by the reward model's error."""
    return RoundTerms(num=fb.direct_method_term("dm"), weights=fb.importance_weights())


def dr(fb: BanditFeedback) -> RoundTerms:
    """Doubly robust: ``V̂ = mean(q̂(x_i, π_e) + w_i (r_i − q̂(x_i, a_i)))`` (Dudík,
    Langford & Li, ICML 2011, eq. 3). Unbiased with the true propensities whatever the
    model (fixed, or cross-fitted)."""
    w = fb.importance_weights()
    base, resid = _residual(fb, "dr")
    return RoundTerms(num=base + w * resid, weights=w, reward=fb.reward, reward_slope=w)


def sndr(fb: BanditFeedback) -> RoundTerms:
    """Self-normalised DR: ``V̂ = mean(q̂(x_i, π_e)) + Σ w_i (r_i − q̂_i) / Σ w_i``
    (Kallus & Uehara, NeurIPS 2019; the Open Bandit Pipeline's SNDR)."""
    w = fb.importance_weights()
    base, resid = _residual(fb, "sndr")
    return RoundTerms(num=w * resid, den=w, base=base, weights=w, reward=fb.reward, reward_slope=w)


def switch_weights(w: FloatArray, lambda_: float) -> FloatArray:
    """``w · 1[w ≤ λ]``: the importance weight where it is trusted, 0 elsewhere."""
    out: FloatArray = np.where(w <= lambda_, w, 0.0)
    return out


def shrink_weights(w: FloatArray, lambda_: float) -> FloatArray:
    """Optimistic shrinkage ``ŵ = λ w / (w² + λ)`` (Su et al., ICML 2020, eq. 9); λ = ∞
    leaves ``w`` unchanged (DR), λ = 0 zeroes it (DM)."""
    if math.isinf(lambda_):
        return w
    if lambda_ == 0.0:
        return np.zeros_like(w)
    out: FloatArray = lambda_ * w / (w * w + lambda_)
    return out


def switch_dr(fb: BanditFeedback, lambda_: float) -> RoundTerms:
    """Switch-DR (Wang, Agarwal & Dudík, ICML 2017, §4): DR on rounds with ``w_i ≤ λ``,
    the model alone above: ``V̂ = mean(q̂(x_i, π_e) + 1[w_i ≤ λ] w_i (r_i − q̂_i))``."""
    ws = switch_weights(fb.importance_weights(), lambda_)
    base, resid = _residual(fb, "switch_dr")
    return RoundTerms(
        num=base + ws * resid,
        weights=ws,
        params={"lambda_": float(lambda_)},
        reward=fb.reward,
        reward_slope=ws,
    )


def dros(fb: BanditFeedback, lambda_: float) -> RoundTerms:
    """DR with optimistic shrinkage (Su, Dimakopoulou, Krishnamurthy & Dudík, ICML 2020):
    ``V̂ = mean(q̂(x_i, π_e) + ŵ_i (r_i − q̂_i))`` with ``ŵ = λ w / (w² + λ)``."""
    wh = shrink_weights(fb.importance_weights(), lambda_)
    base, resid = _residual(fb, "dros")
    return RoundTerms(
        num=base + wh * resid,
        weights=wh,
        params={"lambda_": float(lambda_)},
        reward=fb.reward,
        reward_slope=wh,
    )
