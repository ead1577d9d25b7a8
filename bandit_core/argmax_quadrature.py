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
  ``lo`` = the second largest ``m_b − L c_b`` and ``hi = max_b m_b + L c_b``. Below ``lo``
  two arms have ``F_b ≤ δ``, so the part of (1) left out there is at most ``δ²``. Above
  ``hi`` every ``1 − F_b ≤ δ`` and ``G_a = Π_{b≠a} F_b`` lies in ``[G_a(hi), 1]``; the tail
  is added as ``(1 − F_a(hi)) (1 + G_a(hi)) / 2``, wrong by at most ``(K − 1) δ² / 2``.
* **Quadrature.** ``[lo, hi]`` is cut into equal panels no wider than ``ρ`` times the
  smallest scale among the arms that vary inside it, each with ``n``-point
  Gauss–Legendre nodes. Only densities are evaluated at the nodes (cheap: one ``exp``
  or ``log1p``); each ``F_b`` there is ``F_b(lo)`` (one special-function call per arm)
  plus the running integral of ``f_b``, exact for polynomials of degree ``n − 1`` on each
  panel (a fixed spectral integration matrix).
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


def _tail_quantile(df: FloatArray | None) -> float:
    """``L``: the ``1 − δ`` quantile of the heaviest tail among the arms (computed for the
    smallest ν rounded down to a multiple of 1/4, which only widens the range)."""
    if df is None:
        return _NORMAL_L
    smallest = float(np.min(df))
    rounded = math.floor(smallest * 4.0) / 4.0
    return _t_quantile(rounded if rounded > 0.0 else smallest)


_NORMAL_L = float(-special.ndtri(TAIL))


@functools.lru_cache(maxsize=1024)
def _t_quantile(nu: float) -> float:
    return float(special.stdtrit(nu, 1.0 - TAIL))


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
    if cont.sum() == 1:
        out[cont] = 1.0 - out[tied].sum()
    else:
        sub_mean, sub_scale = mean[cont][None], scale[cont][None]
        lo, hi, panels = _grid(sub_mean, sub_scale, sub_df, floor=top)
        body = _continuous(sub_mean, sub_scale, sub_df, lo, hi, int(panels[0]))[0]
        out[cont] = body * (1.0 - out[tied].sum())
    return out


def _grid(
    mean: FloatArray, scale: FloatArray, df: FloatArray | None, floor: float = -np.inf
) -> tuple[FloatArray, FloatArray, NDArray[np.intp]]:
    """Integration range ``[lo, hi]`` (m,) and number of panels (m,) of each row."""
    big_l = _tail_quantile(df)
    low_ends = np.sort(mean - big_l * scale, axis=1)
    lo = np.maximum(low_ends[:, -2], floor)
    hi = np.maximum((mean + big_l * scale).max(axis=1), lo + 1e-300)
    # arms that vary inside [lo, hi] set the panel width
    varies = (mean + big_l * scale > lo[:, None]) & (mean - big_l * scale < hi[:, None])
    finest = np.where(varies, scale, np.inf).min(axis=1)
    panels = np.clip(np.ceil((hi - lo) / (PANEL_WIDTH * finest)), 1, MAX_PANELS)
    return lo, hi, panels.astype(np.intp)


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
    width = hi - lo
    h = width / p  # (m,)
    # nodes (m, p, n): lo + h (panel + x)
    nodes = lo[:, None, None] + h[:, None, None] * (np.arange(p)[None, :, None] + _X[None, None, :])
    inv_c = 1.0 / scale  # (m, K)
    z = (nodes[:, None, :, :] - mean[:, :, None, None]) * inv_c[:, :, None, None]  # (m,K,p,n)
    const = _log_density_const(df)
    dens = z * z
    if df is None:
        dens *= -0.5
        dens += const
        start = special.ndtr((lo[:, None] - mean) * inv_c)
        end = special.ndtr((hi[:, None] - mean) * inv_c)
    else:
        nu = df[:, :, None, None]
        dens /= nu
        np.log1p(dens, out=dens)
        dens *= -0.5 * (nu + 1.0)
        dens += np.asarray(const)[:, :, None, None]
        start = special.stdtr(df, (lo[:, None] - mean) * inv_c)
        end = special.stdtr(df, (hi[:, None] - mean) * inv_c)
    np.exp(dens, out=dens)
    dens *= (inv_c * h[:, None])[:, :, None, None]  # density × panel width
    shape = dens.shape
    flat = dens.reshape(-1, NODES)  # one matrix product for every arm and panel
    cdf = (flat @ _M.T).reshape(shape)  # ∫ from the panel's start to each node
    totals = (flat @ _W).reshape(shape[:3])  # (m, K, p) per panel
    cdf += (np.cumsum(totals, axis=2) - totals)[..., None]
    cdf += start[:, :, None, None]
    np.clip(cdf, 0.0, 1.0, out=cdf)
    # leave-one-out products G_a = Π_{b≠a} F_b; where F_a = 0 the density f_a is 0 too
    everything = np.prod(cdf, axis=1, keepdims=True)
    loo = np.divide(everything, cdf, out=np.zeros(shape), where=cdf > 0.0)
    loo *= dens
    body = (loo.reshape(-1, NODES) @ _W).reshape(shape[:3]).sum(axis=2)
    # above hi: G_a ∈ [G_a(hi), 1]; take the midpoint
    end_prod = np.prod(end, axis=1, keepdims=True)
    safe_end = np.where(end > 0.0, end, 1.0)
    g_hi = np.where(end > 0.0, end_prod / safe_end, 0.0)
    tail = (1.0 - end) * (1.0 + g_hi) / 2.0
    probs = np.maximum(body + tail, 0.0)
    total = probs.sum(axis=1, keepdims=True)
    out: FloatArray = probs / total
    return out
