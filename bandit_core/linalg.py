"""Pure linear-algebra kernels for Bayesian linear regression heads.

The head keeps the *inverse Cholesky factor* ``U = L⁻¹`` of its precision matrix
``A = L Lᵀ``, so that

* the posterior covariance is ``A⁻¹ = Uᵀ U``;
* a UCB width is ``‖U x‖`` (one matrix product for all candidates);
* a posterior draw is ``θ = μ + σ Uᵀ z`` with ``z ~ N(0, I)`` (one product, no solve);

and a rank-one change ``A ± x xᵀ`` updates ``U`` in O(d²) without any factorisation
(Gill, Golub, Murray & Saunders, *Methods for modifying matrix factorizations*, Math. Comp.
1974, the product form of the Cholesky update).  Every function accepts leading batch
dimensions, so a bank of per-arm heads is updated with the same code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import scipy.linalg
import scipy.linalg.blas
import scipy.linalg.lapack
from numpy.typing import NDArray

from bandit_core._validation import FloatArray

#: Most bytes of per-arm matrices (K × d × d) a gathered product copies at once.
GATHER_BYTES = 1 << 23


def gathered_product(
    stack: FloatArray,
    rows: slice | NDArray[np.intp],
    product: Callable[[FloatArray, slice], FloatArray],
    axis: int = 0,
    same_rows_same_result: bool = False,
) -> FloatArray:
    """``product(stack[rows], slice(None))`` without a copy of ``stack[rows]`` larger than
    :data:`GATHER_BYTES`: ``rows`` (a slice is a view, computed at once) in consecutive
    blocks, ``product(block, positions)`` of each concatenated along ``axis``.

    With ``same_rows_same_result`` (the product of a row does not depend on its position)
    each distinct row is computed once: a thousand unseen arms sharing the prior's head
    are one product, not a thousand copies of it. Each row's product is computed as it
    would be in one call, so the result is the same to the bit.
    """
    if isinstance(rows, slice) or rows.size * stack[0].nbytes <= GATHER_BYTES:
        return product(stack[rows], slice(None))
    back = None
    if same_rows_same_result:
        rows, back = np.unique(rows, return_inverse=True)
    step = max(1, GATHER_BYTES // stack[0].nbytes)
    out = np.concatenate(
        [product(stack[rows[i : i + step]], slice(i, i + step)) for i in range(0, rows.size, step)],
        axis=axis,
    )
    return out if back is None else np.take(out, back, axis=axis)


def inverse_cholesky(precision: FloatArray) -> FloatArray:
    """``U = L⁻¹`` for ``precision = L Lᵀ``; shape (..., d, d), lower triangular.

    Used to build a head from sufficient statistics and for the periodic
    refactorisation that bounds the round-off of rank-one updates.

    Raises
    ------
    ValueError
        If the matrix is not symmetric positive definite.
    """
    try:
        chol = np.linalg.cholesky(precision)
    except np.linalg.LinAlgError as exc:
        raise ValueError(
            "precision matrix must be symmetric positive definite; the Cholesky "
            "factorisation failed (check lambda_prior > 0 and finite features)."
        ) from exc
    if chol.ndim == 2:
        out: FloatArray = scipy.linalg.solve_triangular(
            chol, np.eye(chol.shape[-1]), lower=True, check_finite=False
        )
        return out
    eye = np.broadcast_to(np.eye(chol.shape[-1]), chol.shape)
    return np.asarray(np.linalg.solve(chol, eye))


#: Largest scaled condition number (:func:`scaled_condition`) at which a factor
#: computed from the formed precision matrix is taken: its relative error is then at
#: most about ``SCALED_CONDITION_LIMIT · ε`` ≈ 1e-6. Beyond it the sums of ``φφᵀ``
#: have lost the prior's ``λ`` in float64 (e.g. 10⁴ collinear rows at 1e6: widths in
#: the unobserved direction came out 4× too small), and the rank-one factor, which never
#: formed them, is the better one.
SCALED_CONDITION_LIMIT = 1e-6 / float(np.finfo(np.float64).eps)
#: Power iterations of :func:`scaled_condition`'s two largest-eigenvalue estimates.
_POWER_STEPS = 16


def scaled_condition(precision: FloatArray, inv_chol: FloatArray) -> FloatArray:
    """Estimated condition number of ``D^{-1/2} A D^{-1/2}`` (``D = diag(A)``) for each
    precision ``A`` (..., d, d) and its factor ``U`` (``A⁻¹ = UᵀU``): what bounds the
    relative error of a Cholesky factorisation of ``A`` (scaling the features changes
    nothing). Largest eigenvalues by power iteration from a fixed start (an estimate,
    from below); shape ``(...)``."""
    diag = np.diagonal(precision, axis1=-2, axis2=-1)
    root = np.sqrt(np.maximum(diag, np.finfo(np.float64).tiny))
    scaled = precision / (root[..., :, None] * root[..., None, :])
    columns = inv_chol * root[..., None, :]  # U D^{1/2}: (U D^{1/2})ᵀ(U D^{1/2}) = S⁻¹
    start = np.linspace(1.0, 2.0, precision.shape[-1])

    def largest(apply: Callable[[FloatArray], FloatArray]) -> FloatArray:
        v = np.broadcast_to(start, diag.shape).copy()
        value = np.ones(diag.shape[:-1])
        for _ in range(_POWER_STEPS):
            v /= np.linalg.norm(v, axis=-1, keepdims=True)
            w = apply(v)
            value = np.einsum("...i,...i->...", v, w)
            v = w
        return value

    big = largest(lambda v: np.einsum("...ij,...j->...i", scaled, v))
    small = largest(
        lambda v: np.einsum("...ji,...j->...i", columns, np.einsum("...ij,...j->...i", columns, v))
    )
    out: FloatArray = big * small
    return out


def factor_is_accurate(precision: FloatArray, inv_chol: FloatArray) -> NDArray[np.bool_]:
    """Whether a factor computed from the formed ``precision`` is accurate to about 1e-6
    (:data:`SCALED_CONDITION_LIMIT`), per head; not finite: not accurate."""
    condition = scaled_condition(precision, inv_chol)
    out: NDArray[np.bool_] = np.isfinite(condition) & (condition <= SCALED_CONDITION_LIMIT)
    return out


def inv_chol_rank1_update(inv_chol: FloatArray, x: FloatArray, sign: float = 1.0) -> FloatArray:
    """Inverse Cholesky factor of ``A + sign · x xᵀ`` from the factor ``U`` of ``A``.

    With ``p = U x`` and ``β_j = 1 + sign · Σ_{i≤j} p_i²`` (β₀ = 1) the factor of
    ``I + sign · p pᵀ`` is ``L̃`` with ``L̃_jj = √(β_j/β_{j−1})`` and
    ``L̃_ij = sign · p_i p_j / √(β_j β_{j−1})`` for ``i > j`` (Gill et al. 1974, §3).
    Its inverse has the same shape with the roles of the indices swapped, which gives
    row ``j`` of the new factor as::

        U'_j = √(β_{j−1}/β_j) U_j − sign · p_j / √(β_j β_{j−1}) · Σ_{i<j} p_i U_i

    — a cumulative sum, O(d²), vectorised, no triangular solve.

    Parameters
    ----------
    inv_chol : ndarray of shape (..., d, d)
        ``U = L⁻¹`` of the current precision.
    x : ndarray of shape (..., d)
        The rank-one direction.
    sign : {+1, -1}
        +1 adds an observation, -1 removes one (sliding window). A downdate that would
        make the precision indefinite raises ``ValueError``.
    """
    if inv_chol.ndim == 2 and inv_chol.shape[-1] <= _SMALL_DIM:
        return _rank1_single(inv_chol, x, sign)
    p = np.einsum("...ij,...j->...i", inv_chol, x)
    beta = 1.0 + sign * np.cumsum(p * p, axis=-1)
    _check_downdate(beta[..., -1], sign)
    beta_prev = np.concatenate([np.ones_like(beta[..., :1]), beta[..., :-1]], axis=-1)
    weighted = p[..., :, None] * inv_chol
    partial = np.cumsum(weighted, axis=-2) - weighted  # Σ_{i<j} p_i U_i, row j
    gain = -sign * p / np.sqrt(beta * beta_prev)
    out: FloatArray = (
        np.sqrt(beta_prev / beta)[..., :, None] * inv_chol + gain[..., :, None] * partial
    )
    return out


def _check_downdate(beta_last: FloatArray | float, sign: float) -> None:
    if sign < 0 and np.any(np.asarray(beta_last) <= 1e-12):
        raise ValueError(
            "rank-one downdate would make the precision matrix indefinite "
            "(the removed observation is not part of the statistics)."
        )


#: Up to this dimension one update is cheapest as a small d × d product (see _rank1_single).
_SMALL_DIM = 64


@functools.lru_cache(maxsize=64)
def _signed_strict_lower(d: int, sign: float) -> FloatArray:
    """``−sign`` on the strict lower triangle, 0 elsewhere (read-only, cached)."""
    out: FloatArray = np.tri(d, d, -1) * (-sign)
    out.setflags(write=False)
    return out


def _rank1_terms(
    inv_chol: FloatArray, x: FloatArray, sign: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``p = U x``, ``β_{j−1}`` and ``√(β_j β_{j−1})`` (each (d,)) of one rank-one step."""
    d = x.shape[0]
    p = inv_chol.dot(x)  # .dot: the same BLAS call as @ with less overhead
    # betas[j] = β_j for j = 0..d: one cumulative sum of (0, ±p₁², …, ±p_d²) plus one,
    # so β_{j−1} and β_j are two views of the same array
    betas = np.empty(d + 1)
    betas[0] = 0.0
    np.multiply(p, p, out=betas[1:])
    betas.cumsum(out=betas)
    if sign < 0:
        np.negative(betas, out=betas)
    betas += 1.0
    if sign < 0:
        _check_downdate(float(betas[-1]), sign)
    beta_prev = betas[:-1]
    root = betas[1:] * beta_prev
    np.sqrt(root, out=root)
    return p, beta_prev, root


def _rank1_single(inv_chol: FloatArray, x: FloatArray, sign: float) -> FloatArray:
    """The same update for one head with the fewest numpy calls (request path).

    The new factor is ``N U`` with ``N = L̃⁻¹ = diag(s) + strict_tril(g pᵀ)``,
    ``s_j = √(β_{j−1}/β_j)`` and ``g_j = −sign · p_j / √(β_j β_{j−1})``: one small
    matrix built from two vectors and one BLAS product (d³ flops, but at d ≤ 64 the
    product is cheaper than the extra numpy calls of the cumulative-sum form). Every
    temporary is updated in place: at this size each numpy call costs more than its
    arithmetic.
    """
    d = x.shape[0]
    p, beta_prev, root = _rank1_terms(inv_chol, x, sign)
    n = (p / root)[:, None] * p
    n *= _signed_strict_lower(d, sign)
    n.flat[:: d + 1] = beta_prev / root  # √(β_{j−1}/β_j)
    out: FloatArray = n.dot(inv_chol)
    return out


def inv_chol_rank1_product(inv_chol: FloatArray, x: FloatArray) -> FloatArray:
    """:func:`inv_chol_rank1_update` (``sign = +1``) of one factor (d, d) as one
    triangular product, whatever d: for a model that updates one factor per observation
    at d of about 50–100 (the hybrid model's Schur complement), where one BLAS call is
    faster than the cumulative-sum form's many d × d passes.

    The same ``N U`` as :func:`_rank1_single`, with both factors lower triangular: BLAS
    ``dtrmm`` reads only N's lower triangle (so its strict upper one is never masked) and
    does half the flops of a general product."""
    d = x.shape[0]
    p, beta_prev, root = _rank1_terms(inv_chol, x, 1.0)
    gain = np.divide(p, root)
    np.negative(gain, out=gain)
    n = np.multiply.outer(gain, p)  # strict lower triangle: −p_i p_j / √(β_i β_{i−1})
    n.flat[:: d + 1] = beta_prev / root
    # C-ordered arrays are the Fortran transposes: (N U)ᵀ = Uᵀ Nᵀ, Nᵀ upper triangular
    out: FloatArray = scipy.linalg.blas.dtrmm(1.0, n.T, inv_chol.T, side=1, lower=0).T
    return out


def upper_triangular_factor(columns: FloatArray) -> FloatArray:
    """``R`` (K, K), upper triangular, with ``RᵀR = Pᵀ P`` for ``P = columns`` (k, K), k ≥ K:
    the R of a QR factorisation (LAPACK ``dgeqrf``). Exact for any rank (no pivot, no
    jitter): a factor of the K × K Gram matrix without forming it."""
    qr, _tau, _work, info = scipy.linalg.lapack.dgeqrf(columns)
    if info != 0:
        raise ValueError(f"QR factorisation failed (LAPACK dgeqrf info={info}).")
    k = columns.shape[1]
    out: FloatArray = qr[:k] * _upper(k)
    return out


@functools.lru_cache(maxsize=64)
def _upper(d: int) -> FloatArray:
    """1 on and above the diagonal, 0 below (read-only, cached)."""
    out: FloatArray = np.triu(np.ones((d, d)))
    out.setflags(write=False)
    return out


def quad_form_rows(inv_chol: FloatArray, rows: FloatArray) -> FloatArray:
    """``xᵀ A⁻¹ x`` for each row ``x`` of ``rows`` (n, d), with ``A⁻¹ = Uᵀ U``."""
    projected = rows @ inv_chol.T
    out: FloatArray = np.einsum("ij,ij->i", projected, projected)
    return out


def sufficient_statistics(
    features: FloatArray,
    rewards: FloatArray,
    weights: FloatArray | None = None,
    chunk_size: int = 8192,
) -> tuple[FloatArray, FloatArray, float, float]:
    """Additive statistics ``(Σ w φφᵀ, Σ w r φ, Σ w r², Σ w)`` computed in chunks.

    Memory beyond the inputs is O(d² + chunk_size · d). The statistics of disjoint shards
    add up exactly to those of their union, which is what scale-out builds on.
    """
    n, dim = features.shape
    gram = np.zeros((dim, dim))
    xty = np.zeros(dim)
    yty = 0.0
    count = 0.0
    for start in range(0, n, chunk_size):
        phi = features[start : start + chunk_size]
        r = rewards[start : start + chunk_size]
        if weights is None:
            gram += phi.T @ phi
            xty += phi.T @ r
            yty += float(r @ r)
            count += float(phi.shape[0])
        else:
            w = weights[start : start + chunk_size]
            gram += (phi * w[:, None]).T @ phi
            xty += phi.T @ (w * r)
            yty += float(w @ (r * r))
            count += float(w.sum())
    return gram, xty, yty, count
