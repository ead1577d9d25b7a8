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
* **Fitted panels.** Where equal panels would be many (an arm far narrower than the
  range, e.g. one arm trained on many rewards among new ones), each arm instead asks for
  panels of width ``ρ c_b`` only on its own zone ``|s − m_b| ≤ R_b c_b``, ``R_b`` its
  ``δ²`` quantile; a Student-t arm asks for ``ρ c_b max(1, |z| / (ν_b + 1))`` (its
  density varies on that scale in the tail), in shells of doubling ``|z|``. Each stretch
  between zone ends gets equal panels of the finest width asked for there. Outside its
  zone an arm's density is taken as 0 (its mass there is at most ``2δ²``), so a panel
  much wider than a narrow arm cannot misjudge that arm's far tail. The work then
  follows the number of zones, not the ratio of the widest range to the narrowest arm.
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
#: Rows whose equal panels would be more than ``FITTED_ABOVE``, and (K + 2) × that more
#: than ``FITTED_WORK``, get panels fitted to each arm (fitting them costs about as much as
#: 8,000 arm-panels; measured on 2 to 200 arms, 2026-12-04).
FITTED_ABOVE = 96
FITTED_WORK = 8000
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
    """``L`` for ``TAIL``, ``L_j`` for each ``δ_j`` of ``_LOW_COUNTS`` and, last, the zone's
    ``R`` for ``TAIL²``: upper quantiles of the standard Normal (``nu`` None) or of
    Student-t with ``nu`` degrees of freedom."""
    tails = np.concatenate([[TAIL], TAIL ** (2.0 / _LOW_COUNTS), [TAIL * TAIL]])
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
    mean: FloatArray, scale: FloatArray, df: FloatArray | None = None, *, fit: bool = True
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
    fit : bool, default True
        Whether rows that would need many equal panels get fitted ones (False: equal
        panels for every row, for comparison).

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
        out[rows] = _integrate(
            mean[rows], scale[rows], sub_df, *_grid(mean[rows], scale[rows], sub_df), fit=fit
        )
    for i in np.flatnonzero(~plain):
        out[i] = _with_point_masses(mean[i], scale[i], None if df is None else df[i])
    return out


def _integrate(
    mean: FloatArray,
    scale: FloatArray,
    df: FloatArray | None,
    lo: FloatArray,
    hi: FloatArray,
    panels: NDArray[np.intp],
    fit: bool = True,
) -> FloatArray:
    """(1) for rows of continuous arms: equal panels in blocks of rows, fitted panels for
    the rows that would need many equal ones."""
    m, k = mean.shape
    out = np.empty((m, k))
    fitted = fit & (panels > FITTED_ABOVE) & ((k + 2) * panels > FITTED_WORK)
    for i in np.flatnonzero(fitted):
        row_df = None if df is None else df[i : i + 1]
        starts, widths, reach = _fitted_panels(mean[i], scale[i], row_df, lo[i], hi[i])
        out[i] = _continuous(
            mean[i : i + 1],
            scale[i : i + 1],
            row_df,
            lo[i : i + 1],
            widths,
            widths.shape[1],
            (starts, reach),
        )[0]
    rows = np.flatnonzero(~fitted)
    start = 0
    while start < rows.size:
        # as many rows as fit in one block at the largest panel count among them
        stop = start + 1
        widest = int(panels[rows[start]])
        while (
            stop < rows.size
            and (stop - start + 1) * k * NODES * max(widest, int(panels[rows[stop]])) <= _BLOCK
        ):
            widest = max(widest, int(panels[rows[stop]]))
            stop += 1
        idx = rows[start:stop]
        h = (hi[idx] - lo[idx]) / widest
        out[idx] = _continuous(
            mean[idx], scale[idx], None if df is None else df[idx], lo[idx], h, widest
        )
        start = stop
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
        body = _integrate(sub_mean, sub_scale, sub_df, *_grid(sub_mean, sub_scale, sub_df, top))[0]
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


def _fitted_panels(
    mean: FloatArray, scale: FloatArray, df: FloatArray | None, lo: float, hi: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Panels of one row fitted to each arm's zone: starts (1, P), widths (1, P) and each
    arm's zone half-width ``R_b c_b`` (1, K), beyond which its density is taken as 0."""
    if df is None:
        reach_z = np.full(mean.shape, _quantiles(None)[-1])
        core_z = reach_z
        nu_1 = np.full(mean.shape, np.inf)
    else:
        nu = df[0]
        reach_z = special.stdtrit(nu, 1.0 - TAIL * TAIL)
        nu_1 = nu + 1.0
        core_z = np.minimum(reach_z, np.maximum(nu_1, 8.0))
    reach = reach_z * scale
    # |z| up to which each arm's zone matters inside [lo, hi]
    needed = np.minimum(reach_z, np.maximum(hi - mean, mean - lo) / scale)
    shells = np.ceil(np.log2(np.maximum(needed / core_z, 1.0))).astype(np.intp)
    most = int(shells.max(initial=0))
    # zone pieces per arm: the core |z| ≤ core_z, then shells core_z·[2^i, 2^(i+1)] (each
    # side), every piece with the width its inner end asks for
    inner = core_z[:, None] * 2.0 ** np.arange(most)  # (K, S)
    outer = np.minimum(2.0 * inner, reach_z[:, None])
    keep = np.arange(most)[None, :] < shells[:, None]
    widths_z = PANEL_WIDTH * np.maximum(1.0, inner / nu_1[:, None])
    m_s, c_s = mean[:, None], scale[:, None]
    starts = np.concatenate(
        [mean - core_z * scale, (m_s + inner * c_s)[keep], (m_s - outer * c_s)[keep]]
    )
    ends = np.concatenate(
        [mean + core_z * scale, (m_s + outer * c_s)[keep], (m_s - inner * c_s)[keep]]
    )
    asked = np.concatenate([PANEL_WIDTH * scale, (widths_z * c_s)[keep], (widths_z * c_s)[keep]])
    np.clip(starts, lo, hi, out=starts)
    np.clip(ends, lo, hi, out=ends)
    inside = ends > starts
    starts, ends, asked = starts[inside], ends[inside], asked[inside]
    # the finest width any zone asks for on each stretch between zone ends (widths rounded
    # down to powers of two: one pass per distinct level)
    edges = np.unique(np.concatenate([[lo, hi], starts, ends]))
    first = np.searchsorted(edges, starts)
    last = np.searchsorted(edges, ends)
    level = np.floor(np.log2(asked))
    finest = np.full(edges.size, np.inf)  # the last entry: a sentinel for reduceat
    for value in np.unique(level):
        chosen = level == value
        cover = np.zeros(edges.size)
        np.add.at(cover, first[chosen], 1.0)
        np.add.at(cover, last[chosen], -1.0)
        np.minimum(finest, np.where(np.cumsum(cover) > 0.5, 2.0**value, np.inf), out=finest)
    # halve every panel that a stretch asking for less than its width touches, from equal
    # panels of the widest width asked for: panels shrink to each zone's width inside it
    # and grow back by doubling around it
    span = hi - lo
    width = span / math.ceil(span / float(finest[np.isfinite(finest)].max(initial=span)))
    todo = lo + width * np.arange(round(span / width))
    done_starts: list[FloatArray] = []
    done_widths: list[FloatArray] = []
    count = todo.size
    while todo.size:
        ends_at = np.minimum(todo + width, hi)
        bounds = np.empty(2 * todo.size, dtype=np.intp)
        bounds[0::2] = np.searchsorted(edges, todo, side="right") - 1
        bounds[1::2] = np.maximum(np.searchsorted(edges, ends_at, side="left"), bounds[0::2] + 1)
        touched = np.minimum.reduceat(finest, bounds)[0::2]
        split = touched < width
        if count + int(split.sum()) > MAX_PANELS:
            split[:] = False
        done_starts.append(np.asarray(todo[~split], dtype=np.float64))
        done_widths.append(np.minimum(ends_at[~split], hi) - todo[~split])
        width /= 2.0
        todo = np.repeat(todo[split], 2)
        todo[1::2] += width
        count += todo.size // 2
    starts_out = np.concatenate(done_starts)
    order = np.argsort(starts_out)
    return starts_out[order][None], np.concatenate(done_widths)[order][None], reach[None]


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
    widths: FloatArray,
    p: int,
    fitted: tuple[FloatArray, FloatArray] | None = None,
) -> FloatArray:
    """(1) for rows of continuous arms (m, K) on ``p`` panels from ``lo``: equal ones of
    ``widths`` (m,), or ``fitted`` ones, ``(starts, reach)`` with ``widths`` (m, P), whose
    arms' densities are 0 farther than ``reach`` (m, K) from their means (renormalised:
    with ``lo`` raised to a point mass, the law of the winner given that it beats it)."""
    m, k = mean.shape
    equal = fitted is None
    if fitted is None:
        offsets, weights = _panel_nodes(p)
        nodes = lo[:, None] + widths[:, None] * offsets  # (m, P·n)
        h = widths[:, None]
    else:
        starts, reach = fitted
        nodes = (starts[:, :, None] + widths[:, :, None] * _X).reshape(m, p * NODES)
        weights = np.tile(_W, p)
        h = np.ones((m, 1))
    inv_c = 1.0 / scale  # (m, K)
    # log of (density × panel width) of every arm at every node, (m, K, P·n)
    if df is None:
        dens = (nodes[:, None, :] - mean[:, :, None]) * (inv_c * _SQRT_HALF)[:, :, None]
        dens *= dens
        np.subtract(np.log(inv_c * (h * _INV_SQRT_2PI))[:, :, None], dens, out=dens)
        start = special.ndtr((lo[:, None] - mean) * inv_c)
    else:
        dens = (nodes[:, None, :] - mean[:, :, None]) * (inv_c / np.sqrt(df))[:, :, None]
        dens *= dens
        np.log1p(dens, out=dens)
        dens *= (-0.5 * (df + 1.0))[:, :, None]
        dens += (_log_density_const(df) + np.log(inv_c * h))[:, :, None]
        start = special.stdtr(df, (lo[:, None] - mean) * inv_c)
    if not equal:
        dens += np.log(np.repeat(widths, NODES, axis=1))[:, None, :]
        far = np.abs(nodes[:, None, :] - mean[:, :, None]) > reach[:, :, None]
        dens[far] = -np.inf
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
