"""Exact Thompson-sampling propensities for independent per-arm scores.

When the sampled scores ``S_a = m_a + c_a T_a`` of the candidates are independent (per-arm
LinTS: one posterior per arm), the probability that arm ``a`` wins is the one-dimensional
integral

    P(a = argmax) = ∫ f_a(s) Π_{b≠a} F_b(s) ds                                   (1)

with ``T_a`` standard Normal, or Student-t with ``ν_a`` degrees of freedom when the
noise variance has an inverse-gamma posterior (σ² ~ IG(a, b) and θ | σ² Normal give a
score ``m + c √(b/a) t_{2a}``). No Monte-Carlo draw is involved.

Numerics (all vectorised over rows and arms):

* **Range.** With ``L`` the ``1 − δ`` quantile of the heaviest-tailed arm,
  ``hi = max_b m_b + L c_b``; ``lo`` is the largest, over ``j ∈ {2, 3, 4, 6, 12}``, of the
  j-th largest ``m_b − L_j c_b``, ``L_j`` the quantile of ``δ_j = δ^(2/j)``. Below ``lo``
  some j arms all have ``F_b ≤ δ_j``, so the part of (1) left out there is at most
  ``δ_j^j = δ²`` (with many arms a larger j lifts ``lo`` well above the second arm's lower
  end, and fewer panels are needed). Above ``hi`` every ``1 − F_b ≤ δ`` and
  ``G_a = Π_{b≠a} F_b`` lies in ``[G_a(hi), 1]``; the tail is added as
  ``(1 − F_a(hi)) (1 + G_a(hi)) / 2``, wrong by at most ``(K − 1) δ² / 2``.
* **Quadrature.** ``[lo, hi]`` is cut into equal panels no wider than ``ρ`` times the
  smallest scale among the arms that vary inside it, each with ``n``-point
  Gauss–Legendre nodes. Only densities are evaluated at the nodes (cheap: one ``exp``
  or ``log1p``); each ``F_b`` there is ``F_b(lo)`` (one special-function call per arm)
  plus the running integral of ``f_b``, exact for polynomials of degree ``n − 1`` on each
  panel (a fixed spectral integration matrix); so is ``F_b(hi)``.
* **Degenerate arms** (``c_b = 0``, e.g. a zero context) are point masses: a continuous
  arm can only win above the largest of them, ``M``; the degenerate arms tied at ``M``
  share ``Π_{continuous b} F_b(M)`` equally (the sampler breaks their ties uniformly);
  rows with only degenerate arms are a uniform split over the tied maxima.

The tests compare (1) with ``scipy.integrate.quad`` at tight tolerance (to 1e-8) and with
the choice frequencies of seeded draws.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numpy.polynomial import legendre
from numpy.typing import NDArray
from scipy import special

from bandit_core._validation import FloatArray
from bandit_core.exploration import TIE_TOLERANCE, greedy_probabilities

#: Tail mass per arm left to the bounds above (the neglected parts are O(K δ²)).
TAIL = 1e-6
#: Gauss–Legendre nodes per panel and panel width in units of the smallest varying scale.
NODES = 8
PANEL_WIDTH = 2.0
#: Upper bound on panels per row (reached only with extreme scale ratios or tails).
MAX_PANELS = 2048
#: Upper bound on the elements of one block of rows (rows × K × nodes).
_BLOCK = 2_000_000


def _integration_rule(n: int) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Nodes ``x`` (n,) and weights ``w`` (n,) of Gauss–Legendre on [0, 1], and the matrix
    ``M`` (n, n) with ``(M f)_j = ∫_0^{x_j} p(t) dt`` for ``p`` the interpolant of ``f``."""
    x, w = legendre.leggauss(n)
    vander = legendre.legvander(x, n - 1)  # (n, n): Legendre basis at the nodes
    # antiderivative of each basis polynomial, zero at -1, evaluated at the nodes
    basis_int = np.stack(
        [legendre.legval(x, legendre.legint(np.eye(n)[k], lbnd=-1.0)) for k in range(n)],
        axis=1,
    )
    matrix = basis_int @ np.linalg.inv(vander) / 2.0  # t = (x + 1) / 2 on [0, 1]
    return (x + 1.0) / 2.0, w / 2.0, matrix


_X, _W, _M = _integration_rule(NODES)
#: j: below ``lo`` at least j arms lie under their ``δ_j = TAIL^(2/j)`` quantile, so the
#: mass left out there is at most ``δ_j^j = TAIL²`` (the range starts at the largest such
#: point over these j; with many arms a larger j raises it)
_LOW_COUNTS = np.array([2, 3, 4, 6, 12])
_TINY = 1e-300
_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _smallest_df(df: FloatArray | None) -> float | None:
    """The heaviest tail among the arms: the smallest ν rounded down to a multiple of 1/4
    (which only widens the range), or None for Normal scores."""
    if df is None:
        return None
    smallest = float(np.min(df))
    rounded = math.floor(smallest * 4.0) / 4.0
    return rounded if rounded > 0.0 else smallest


@functools.lru_cache(maxsize=1024)
def _quantiles(nu: float | None) -> FloatArray:
    """``L`` for ``TAIL`` and ``L_j`` for each ``δ_j`` of ``_LOW_COUNTS``: upper quantiles of
    the standard Normal (``nu`` None) or of Student-t with ``nu`` degrees of freedom."""
    tails = np.concatenate([[TAIL], TAIL ** (2.0 / _LOW_COUNTS)])
    out = np.asarray(
        -special.ndtri(tails) if nu is None else special.stdtrit(nu, 1.0 - tails), dtype=np.float64
    )
    out.flags.writeable = False
    return out


def _cdf(z: FloatArray, df: FloatArray | None) -> FloatArray:
    out: FloatArray = special.ndtr(z) if df is None else special.stdtr(df, z)
    return out


def _log_density_const(df: FloatArray | None) -> FloatArray | float:
    if df is None:
        return float(-0.5 * np.log(2.0 * np.pi))
    out: FloatArray = (
        special.gammaln((df + 1.0) / 2.0) - special.gammaln(df / 2.0) - 0.5 * np.log(df * np.pi)
    )
    return out


def argmax_probabilities(
    mean: FloatArray, scale: FloatArray, df: FloatArray | None = None
) -> FloatArray:
    """Probability that each arm's score is the largest, by quadrature of (1).

    Parameters
    ----------
    mean : ndarray of shape (n, K)
        Location ``m`` of every candidate's score.
    scale : ndarray of shape (n, K)
        Scale ``c ≥ 0`` (0: the score is exactly ``m``).
    df : ndarray of shape (n, K), optional
        Student-t degrees of freedom ``ν > 0``; Normal scores when None.

    Returns
    -------
    ndarray of shape (n, K)
        Rows summing to 1; each entry within 1e-8 of (1).
    """
    n, k = mean.shape
    out = np.empty((n, k))
    if k == 1:
        out.fill(1.0)
        return out
    continuous = scale > 0.0
    plain = continuous.all(axis=1)
    if plain.any():
        rows = np.flatnonzero(plain)
        sub_df = None if df is None else df[rows]
        lo, hi, panels = _grid(mean[rows], scale[rows], sub_df)
        start = 0
        while start < rows.size:
            # as many rows as fit in one block at the largest panel count among them
            stop = start + 1
            widest = int(panels[start])
            while (
                stop < rows.size
                and (stop - start + 1) * k * NODES * max(widest, int(panels[stop])) <= _BLOCK
            ):
                widest = max(widest, int(panels[stop]))
                stop += 1
            part = slice(start, stop)
            idx = rows[part]
            out[idx] = _continuous(
                mean[idx],
                scale[idx],
                None if df is None else df[idx],
                lo[part],
                hi[part],
                widest,
            )
            start = stop
    for i in np.flatnonzero(~plain):
        out[i] = _with_point_masses(mean[i], scale[i], None if df is None else df[i])
    return out


def _with_point_masses(mean: FloatArray, scale: FloatArray, df: FloatArray | None) -> FloatArray:
    """One row in which some arms have scale 0 (point masses)."""
    cont = scale > 0.0
    point = ~cont
    top = float(mean[point].max())
    tied = point & (mean >= top - TIE_TOLERANCE * max(1.0, abs(top)))
    if not cont.any():
        split: FloatArray = greedy_probabilities(mean[None])[0]
        return split
    out = np.zeros(mean.shape[0])
    sub_df = None if df is None else df[cont][None]
    z = (top - mean[cont]) / scale[cont]
    below = _cdf(z[None], sub_df)[0]
    out[tied] = float(np.prod(below)) / int(tied.sum())
    rest = 1.0 - out[tied].sum()  # P(some continuous arm beats the point masses)
    if cont.sum() == 1:
        out[cont] = rest
    elif rest > 0.0:  # (at 0 every continuous arm lies below ``top``: nothing to split)
        sub_mean, sub_scale = mean[cont][None], scale[cont][None]
        lo, hi, panels = _grid(sub_mean, sub_scale, sub_df, floor=top)
        body = _continuous(sub_mean, sub_scale, sub_df, lo, hi, int(panels[0]))[0]
        out[cont] = body * rest
    return out


def _grid(
    mean: FloatArray, scale: FloatArray, df: FloatArray | None, floor: float = -np.inf
) -> tuple[FloatArray, FloatArray, NDArray[np.intp]]:
    """Integration range ``[lo, hi]`` (m,) and number of panels (m,) of each row."""
    k = mean.shape[1]
    quantiles = _quantiles(_smallest_df(df))
    big_l = quantiles[0]
    upper = mean + big_l * scale
    lower = mean - big_l * scale
    hi = upper.max(axis=1)
    # lo: the largest point below which j arms all lie with probability ≥ 1 − δ_j each
    levels, ranks = _low_ranks(k)
    lows = np.sort(mean[:, None, :] - quantiles[levels, None] * scale[:, None, :], axis=2)
    lo = lows[:, ranks[0], ranks[1]].max(axis=1)
    np.maximum(lo, floor, out=lo)
    np.maximum(hi, np.nextafter(lo, np.inf), out=hi)  # a width > 0 even when lo is raised
    # arms that vary inside [lo, hi] set the panel width
    varies = upper > lo[:, None]
    varies &= lower < hi[:, None]
    finest = np.where(varies, scale, np.inf).min(axis=1)
    panels = np.ceil((hi - lo) / (PANEL_WIDTH * finest))
    np.maximum(panels, 1.0, out=panels)
    np.minimum(panels, MAX_PANELS, out=panels)
    return lo, hi, panels.astype(np.intp)


@functools.lru_cache(maxsize=256)
def _low_ranks(k: int) -> tuple[NDArray[np.intp], tuple[NDArray[np.intp], NDArray[np.intp]]]:
    """For ``k`` arms: the rows of ``_quantiles`` used (the j ≤ k) and, in the sorted
    (j, arm) table of lower quantiles, the position of each level's j-th largest."""
    usable = np.flatnonzero(k >= _LOW_COUNTS)
    return usable + 1, (np.arange(usable.size), k - _LOW_COUNTS[usable])


@functools.lru_cache(maxsize=256)
def _panel_nodes(p: int) -> tuple[FloatArray, FloatArray]:
    """Nodes of ``p`` panels of width 1 from 0 (p·n,) and their Gauss–Legendre weights."""
    nodes = (np.arange(p)[:, None] + _X[None, :]).ravel()
    return nodes, np.tile(_W, p)


def _continuous(
    mean: FloatArray,
    scale: FloatArray,
    df: FloatArray | None,
    lo: FloatArray,
    hi: FloatArray,
    p: int,
) -> FloatArray:
    """(1) for rows of continuous arms (m, K) on ``p`` panels of ``[lo, hi]`` (renormalised:
    with ``lo`` raised to a point mass, the law of the winner given that it beats it)."""
    m, k = mean.shape
    h = (hi - lo) / p  # (m,)
    offsets, weights = _panel_nodes(p)
    nodes = lo[:, None] + h[:, None] * offsets  # (m, P)
    inv_c = 1.0 / scale  # (m, K)
    # log of (density × panel width) of every arm at every node, (m, K, P)
    if df is None:
        dens = (nodes[:, None, :] - mean[:, :, None]) * (inv_c * _SQRT_HALF)[:, :, None]
        dens *= dens
        np.subtract(np.log(inv_c * (h[:, None] * _INV_SQRT_2PI))[:, :, None], dens, out=dens)
        start = special.ndtr((lo[:, None] - mean) * inv_c)
    else:
        dens = (nodes[:, None, :] - mean[:, :, None]) * (inv_c / np.sqrt(df))[:, :, None]
        dens *= dens
        np.log1p(dens, out=dens)
        dens *= (-0.5 * (df + 1.0))[:, :, None]
        dens += (_log_density_const(df) + np.log(inv_c * h[:, None]))[:, :, None]
        start = special.stdtr(df, (lo[:, None] - mean) * inv_c)
    np.exp(dens, out=dens)
    flat = dens.reshape(-1, NODES)  # one matrix product for every arm and panel
    cdf: FloatArray = (flat @ _M.T).reshape(m, k, p, NODES)  # ∫ from the panel's start
    totals = (flat @ _W).reshape(m, k, p)  # per panel
    running = np.cumsum(totals, axis=2)
    end = running[:, :, -1] + start  # F(hi)
    running -= totals
    running += start[:, :, None]
    cdf += running[..., None]
    cdf = cdf.reshape(m, k, p * NODES)
    # leave-one-out products G_a = Π_{b≠a} F_b; where F_a is 0 (or rounds below) so is f_a
    np.maximum(cdf, _TINY, out=cdf)
    everything = np.prod(cdf, axis=1)  # (m, P)
    everything *= weights
    np.divide(dens, cdf, out=dens)
    body: FloatArray = np.matmul(dens, everything[:, :, None])[:, :, 0]
    # above hi: G_a ∈ [G_a(hi), 1]; take the midpoint (every F(hi) ≥ 1 − δ)
    np.clip(end, _TINY, 1.0, out=end)
    g_hi = np.prod(end, axis=1, keepdims=True) / end
    body += (1.0 - end) * (1.0 + g_hi) * 0.5
    np.maximum(body, 0.0, out=body)
    body /= body.sum(axis=1, keepdims=True)
    return body
