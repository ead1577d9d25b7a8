"""Hybrid linear bandits: shared coefficients plus per-arm coefficients, block updates.

Model (Li, Chu, Langford & Schapire, WWW 2010, §3.2 and Algorithm 2)::

    r = zᵀβ + xᵀθ_a + ε,   ε ~ N(0, σ²),   σ² ~ InvGamma(a0, b0),
    β ~ N(0, σ²/λ I_k),    θ_a ~ N(0, σ²/λ I_d) independently per arm,

with ``z = z(x, a)`` the shared features of :class:`~bandit_core.features.FeatureMap`
(``[x_user ; x_arm ; x_user ⊗ x_arm (opt.) ; one-hot (opt.) ; x_user ⊗ e(a) (opt.)]``, k
of them) and ``x`` the user context (d = ``dim_user``). It is the dense linear model on
``φ = [z ; e_a ⊗ x]`` (k + K·d features) — the shared model with the full per-arm
interaction — but its precision is block-structured::

    M = [[A₀, B₁ᵀ, …, B_Kᵀ],        A₀ = λI + Σ z zᵀ,     b₀ = Σ r z
         [B₁, A₁,        ],        A_a = λI + Σ_{a_t=a} x xᵀ,  B_a = Σ_{a_t=a} x zᵀ,
         [⋮,       ⋱     ],        b_a = Σ_{a_t=a} r x
         [B_K,        A_K]]

and the posterior is carried by small blocks (Algorithm 2): the Schur complement
``S = A₀ − Σ_a B_aᵀ A_a⁻¹ B_a`` (k × k), the reduced vector ``b̂ = b₀ − Σ_a B_aᵀ A_a⁻¹ b_a``
and, per arm, ``A_a`` (d × d), ``B_a`` (d × k), ``b_a``. Then

    β̂ = S⁻¹ b̂,    θ̂_a = A_a⁻¹ (b_a − B_a β̂),
    φᵀ M⁻¹ φ = xᵀA_a⁻¹x + cᵀ S⁻¹ c,   c = z − B_aᵀ A_a⁻¹ x.

An observation ``(x, z, r)`` on arm ``a`` adds ``φφᵀ`` to M, which changes S by the
rank-one term ``c cᵀ / (1 + xᵀA_a⁻¹x)`` and b̂ by ``c (r − xᵀA_a⁻¹b_a) / (1 + xᵀA_a⁻¹x)``
(c, A_a, b_a before the update; the top-left block of the Sherman–Morrison update of M⁻¹).
Each arm keeps one *scoring block* ``W_a = [A_a⁻¹ ; (A_a⁻¹B_a)ᵀ ; (A_a⁻¹b_a)ᵀ]``
((d + k + 1) × d): ``W_a x = [w ; g ; f]`` with ``w = A_a⁻¹x``, ``g = B_aᵀA_a⁻¹x`` and
``f = xᵀA_a⁻¹b_a`` is everything a decision needs from the arm, so the candidates are
scored by one matrix product over the stacked blocks, and the shared part
``c @ [β̂ | U₀ᵀ]`` by the feature map's blocks (z is never built). An update changes only
the touched arm's block, by one Sherman–Morrison rank-one step (``_rank1``), and the inverse
Cholesky factor ``U₀`` of S by a rank-one update: O(k³) for U₀'s single product (k ≲ 100),
O(d(d + k)) for the arm, instead of O((k + K·d)²); a decision costs O(K(d² + d·k + k²)).
A₀, A_a and B_a are read only by the refactorisation, which sums them then. The noise
posterior needs ``bᵀM⁻¹b = b̂ᵀβ̂ + Σ_a b_aᵀA_a⁻¹b_a`` (block elimination), kept per arm.
Every ``refactor_every`` updates the blocks are recomputed from the additive statistics,
bounding round-off, unless the dense precision's scaled condition number says those would
not be accurate (collinear rows at the input bound, whose sums lose λ in float64): then the
rank-one blocks are kept (:meth:`HybridModel.refactor`).

Thompson sampling draws from the same joint posterior: ``β̃ ~ N(β̂, σ²S⁻¹)`` and, given β̃,
``θ̃_a ~ N(A_a⁻¹(b_a − B_aβ̃), σ²A_a⁻¹)`` independently per arm, so a candidate's sampled
score is ``μ_a + σ (cᵀU₀ᵀ ε₀ + √(xᵀA_a⁻¹x) ε_a)``: one shared draw ε₀ (k) per sample and one
independent normal per candidate. With fewer candidates than shared features (K < k) the
shared part is drawn as ``ε R`` (ε of dimension K) with ``U₀Cᵀ = QR``: the same covariance
``C S⁻¹ Cᵀ = RᵀR``, K normals instead of k.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import numpy as np
import scipy.linalg.blas
from numpy.typing import NDArray

from bandit_core._growth import append_rows
from bandit_core._validation import FloatArray, Interval, validate_params
from bandit_core.features import FeatureMap
from bandit_core.head import first_outlier, surely_in_scale
from bandit_core.linalg import (
    SCALED_CONDITION_LIMIT,
    inv_chol_rank1_product,
    inverse_cholesky,
    upper_triangular_factor,
)
from bandit_core.montecarlo import distinct, draw_pairs, one_decision, thompson_draws
from bandit_core.policies.base import state_arm_ids
from bandit_core.policies.linear import (
    LinearConfig,
    LinearPolicy,
    LinUCBConfig,
    MonteCarloConfig,
    SharedFeaturesConfig,
    _UCBRule,
    build_config,
)
from bandit_core.types import Candidates
from bandit_core.work import PER_ARM, draws_work, linear_work, monte_carlo_draws

IntArray = NDArray[np.intp]

#: how far below 0 round-off may take xᵀA⁻¹x (unitless) before an update is refused
_ROUND_OFF = 1e-9
#: candidate sets whose slot index the model remembers
_ROWS_CACHE = 256
#: the model's arrays with one slot per arm (slot 0: the prior)
_PER_ARM = ("precision_", "cross_", "xty_", "scoring_", "arm_fit_")
#: observations learnt one at a time that wait, at most, to be summed into A₀, A_a, B_a
_FOLD_EVERY = 512


@dataclass(frozen=True, kw_only=True)
class HybridConfig(SharedFeaturesConfig):
    """A shared model's options (the shared features z) for the hybrid model.

    The per-arm blocks are on the user context; ``dim_user`` must be at least 1. Neither a
    discount (``gamma < 1``) nor a ``window`` is supported: their updates are not rank-one
    changes of the blocks.
    """

    def __post_init__(self) -> None:
        name = type(self).__name__
        # the per-arm blocks are on the user context: it must not be empty
        validate_params(name, {"dim_user": self.dim_user}, {"dim_user": Interval(int, 1, None)})
        super().__post_init__()
        if self.gamma != 1.0 or self.window is not None:
            raise ValueError(
                f"{name} supports neither a discount nor a window: 'gamma' must be 1.0 and "
                f"'window' None. Got gamma={self.gamma}, window={self.window}."
            )


@dataclass(frozen=True, kw_only=True)
class HybridLinUCBConfig(HybridConfig, LinUCBConfig):
    pass


@dataclass(frozen=True, kw_only=True)
class HybridLinTSConfig(HybridConfig, MonteCarloConfig):
    pass


# ------------------------------------------------------------------ pure block math
def scoring_block(
    inv_chol: FloatArray, cross: FloatArray, xty: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Each arm's scoring block ``W_a = [A_a⁻¹ ; G_aᵀ ; h_aᵀ]`` and the arm's share of the
    Schur complement, from its statistics.

    Parameters
    ----------
    inv_chol : (m, d, d)
        ``U_a = L_a⁻¹`` with ``A_a = L_a L_aᵀ``.
    cross : (m, d, k)
        ``B_a``.
    xty : (m, d)
        ``b_a``.

    Returns
    -------
    scoring : (m, d + k + 1, d)
        ``[A_a⁻¹ ; (A_a⁻¹B_a)ᵀ ; (A_a⁻¹b_a)ᵀ]``: ``W_a x`` is ``[A_a⁻¹x ; B_aᵀA_a⁻¹x ;
        b_aᵀA_a⁻¹x]``, everything a decision needs from arm a.
    ub : (m, d, k)
        ``U_a B_a`` (so ``B_aᵀA_a⁻¹B_a = (U_aB_a)ᵀ(U_aB_a)``).
    """
    # batched BLAS products (numpy's einsum would not use BLAS for these)
    ub = inv_chol @ cross
    cov = inv_chol.transpose(0, 2, 1) @ inv_chol  # A⁻¹ = UᵀU
    gain = ub.transpose(0, 2, 1) @ inv_chol  # (A⁻¹B)ᵀ = (UB)ᵀU, (m, k, d)
    fit = (cov @ xty[..., None]).transpose(0, 2, 1)  # (A⁻¹b)ᵀ, (m, 1, d)
    return np.concatenate([cov, gain, fit], axis=1), ub


def arm_terms(
    scoring: FloatArray, rows: slice | IntArray, x: FloatArray, dim_shared: int
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per-candidate pieces of the block posterior for contexts ``x``: one matrix product.

    Parameters
    ----------
    scoring : (m, d + k + 1, d)
        Every arm slot's ``W_a`` (:func:`scoring_block`).
    rows : slice or (K,) int array
        The candidates' slots.
    x : (n, d)
        User contexts.
    dim_shared : int
        k.

    Returns
    -------
    q : (n, K)
        ``xᵀA_a⁻¹x``.
    g : (n, K, k)
        ``B_aᵀ A_a⁻¹ x``.
    fit : (n, K)
        ``xᵀ A_a⁻¹ b_a``.
    """
    m, width, d = scoring.shape
    n = x.shape[0]
    if isinstance(rows, slice) or 2 * rows.size >= m:
        # a view of contiguous slots, or most of them: one (n, d) × (d, ·) product over the
        # slots and no copy of the blocks
        block = scoring[rows] if isinstance(rows, slice) else scoring
        out = (x @ block.reshape(-1, d).T).reshape(n, -1, width)
        if not isinstance(rows, slice):
            out = out[:, rows]
    else:  # a few candidates of many arms: only their blocks
        out = np.einsum("kcd,nd->nkc", scoring[rows], x)
    # xᵀ(A_a⁻¹x): a matrix-vector product for one context (einsum's overhead is most of
    # the cost at this size)
    q = (out[0, :, :d] @ x[0])[None] if n == 1 else np.einsum("nkd,nd->nk", out[..., :d], x)
    np.maximum(q, 0.0, out=q)  # A_a⁻¹ is positive definite; round-off must not flip a sign
    return q, out[..., d : d + dim_shared], out[..., -1]


#: Power iterations of :func:`block_scaled_condition`'s two largest-eigenvalue estimates.
_POWER_STEPS = 16


def block_scaled_condition(
    gram0: FloatArray,
    precision: FloatArray,
    cross: FloatArray,
    inv_chol: FloatArray,
    ub: FloatArray,
    schur_inv_chol: FloatArray,
) -> float:
    """Estimated condition number of ``D^{-1/2} M D^{-1/2}`` (``D = diag(M)``) for the dense
    precision ``M`` of the blocks (module docstring), from its block factor, without forming
    ``M``: what bounds the relative error of the blocks a refactorisation computes from the
    summed ``A₀``, ``A_a``, ``B_a`` (it is a block Cholesky factorisation of ``M``, arms
    first, whose Schur complement ``S = A₀ − Σ (U_aB_a)ᵀ(U_aB_a)`` is formed by subtraction:
    where that cancels, ``S`` is small beside ``A₀``'s diagonal and ``M``'s scaled
    condition number large). As :func:`bandit_core.linalg.scaled_condition`, by power
    iteration from a fixed start (an estimate, from below).

    ``gram0`` (k, k) = A₀, ``precision`` (m, d, d) = A_a, ``cross`` (m, d, k) = B_a,
    ``inv_chol`` (m, d, d) = U_a, ``ub`` (m, d, k) = U_aB_a, ``schur_inv_chol`` (k, k) = U₀.
    """
    tiny = np.finfo(np.float64).tiny
    root0 = np.sqrt(np.maximum(np.diagonal(gram0), tiny))
    roots = np.sqrt(np.maximum(np.diagonal(precision, axis1=-2, axis2=-1), tiny))
    k, (m, d) = root0.size, roots.shape

    def scaled(v: FloatArray) -> FloatArray:  # D^{-1/2} M D^{-1/2} v
        v0, va = v[:k] / root0, v[k:].reshape(m, d) / roots
        top = gram0 @ v0 + np.einsum("mdk,md->k", cross, va)
        arms = np.einsum("mdk,k->md", cross, v0) + np.einsum("mij,mj->mi", precision, va)
        return np.concatenate((top / root0, (arms / roots).ravel()))

    def inverse(v: FloatArray) -> FloatArray:  # D^{1/2} M⁻¹ D^{1/2} v, M⁻¹ = L⁻ᵀL⁻¹
        v0, va = v[:k] * root0, v[k:].reshape(m, d) * roots
        ya = np.einsum("mij,mj->mi", inv_chol, va)  # L⁻¹v: [U_a v_a ; U₀(v₀ − Σ(U_aB_a)ᵀy_a)]
        y0 = schur_inv_chol @ (v0 - np.einsum("mdk,md->k", ub, ya))
        t0 = schur_inv_chol.T @ y0  # L⁻ᵀy: [U₀ᵀy₀ ; U_aᵀ(y_a − U_aB_a t₀)]
        ta = np.einsum("mji,mj->mi", inv_chol, ya - np.einsum("mdk,k->md", ub, t0))
        return np.concatenate((t0 * root0, (ta * roots).ravel()))

    def largest(apply: Callable[[FloatArray], FloatArray]) -> float:
        v = np.linspace(1.0, 2.0, k + m * d)
        value = 1.0
        for _ in range(_POWER_STEPS):
            v /= np.linalg.norm(v)
            w = apply(v)
            value = float(v.dot(w))
            v = w
        return value

    return largest(scaled) * largest(inverse)


def blocks_are_accurate(condition: float) -> bool:
    """Whether blocks refactorised from the sums are accurate to about 1e-6
    (:data:`bandit_core.linalg.SCALED_CONDITION_LIMIT`); not finite: not accurate."""
    return bool(np.isfinite(condition) and condition <= SCALED_CONDITION_LIMIT)


# ------------------------------------------------------------------ the model
class HybridModel:
    """Block posterior of the hybrid model (see the module docstring).

    Learned state: shared ``gram0_`` (k, k) = A₀, ``xty0_`` (k,) = b₀,
    ``schur_inv_chol_`` (k, k) = U₀ (``S⁻¹ = U₀ᵀU₀``), ``reduced_`` (k,) = b̂, ``beta_``
    (k,) = β̂; per arm slot (slot 0 is the prior, used for unseen arms) ``precision_``
    (m, d, d) = A_a, ``cross_`` (m, d, k) = B_a, ``xty_`` (m, d) = b_a, ``scoring_``
    (m, d + k + 1, d) = ``[A_a⁻¹ ; (A_a⁻¹B_a)ᵀ ; (A_a⁻¹b_a)ᵀ]`` and ``arm_fit_`` (m,) =
    b_aᵀA_a⁻¹b_a; ``yty_`` = Σr², ``count_`` = n, ``pending_`` = rank-one updates since the
    last refactorisation.
    """

    joint = True

    def __init__(self, config: HybridConfig) -> None:
        fmap = config.feature_map()
        assert fmap is not None  # a shared config always has one
        self.config = config
        self.features: FeatureMap = fmap
        self.dim_arm = fmap.dim_arm
        self.arm_ids: list[str] = []
        self._slots: dict[str, int] = {}
        self._rows_of: dict[tuple[str, ...], slice | IntArray] = {}
        self._reset()

    @property
    def dim_shared(self) -> int:
        """k: the number of shared features."""
        return self.features.dim

    @property
    def dim(self) -> int:
        """Dimension of the equivalent dense model with the arms seen so far: k + K·d."""
        return self.dim_shared + len(self.arm_ids) * self.config.dim_user

    def _reset(self) -> None:
        k, d, lam = self.dim_shared, self.config.dim_user, self.config.lambda_prior
        self.gram0_: FloatArray = lam * np.eye(k)
        self.xty0_: FloatArray = np.zeros(k)
        self.schur_inv_chol_: FloatArray = np.eye(k) / np.sqrt(lam)
        self.reduced_: FloatArray = np.zeros(k)
        self.beta_: FloatArray = np.zeros(k)
        m = len(self.arm_ids) + 1
        self.precision_: FloatArray = np.repeat((lam * np.eye(d))[None], m, axis=0)
        self.cross_: FloatArray = np.zeros((m, d, k))
        self.xty_: FloatArray = np.zeros((m, d))
        prior = np.zeros((d + k + 1, d))
        prior[:d] = np.eye(d) / lam
        self.scoring_: FloatArray = np.repeat(prior[None], m, axis=0)
        self.arm_fit_: FloatArray = np.zeros(m)
        self.yty_ = 0.0
        self.count_ = 0.0
        self.pending_ = 0
        self._weights: FloatArray | None = None
        self._noise: tuple[float, float] | None = None
        self._unfolded: list[tuple[int, FloatArray]] = []  # (slot, [x ; z])

    # -- arms ----------------------------------------------------------------
    @property
    def n_arms(self) -> int:
        return len(self.arm_ids)

    @property
    def bytes_per_arm(self) -> int:
        return sum(int(getattr(self, name)[:1].nbytes) for name in _PER_ARM)

    def knows(self, arm_id: str) -> bool:
        return arm_id in self._slots

    def _add_arm(self, arm: str) -> int:
        self._rows_of.clear()
        slot = int(self.precision_.shape[0])
        self._slots[arm] = slot
        self.arm_ids.append(arm)
        # slot 0 is the prior; amortised O(1) per arm, not a copy of every arm's blocks
        append_rows(self, {name: getattr(self, name)[:1] for name in _PER_ARM})
        return slot

    def decision_parts(self, ids: Sequence[str]) -> dict[int, Any]:
        """This model, for a decision copy among ``ids``
        (:func:`~bandit_core.policies.decision_copy.decision_copy`): a copy with the
        shared blocks, the prior's and the known arms' of ``ids``, and the caches that
        sum over every arm (the scoring weights, the noise posterior) computed here
        first, so it scores those arms as this model does in O(len(ids)·d(d + k) + k²)."""
        self._scoring_weights()
        self.noise_posterior()
        known = [a for a in dict.fromkeys(ids) if a in self._slots]
        slots = np.array([0, *(self._slots[a] for a in known)], dtype=np.intp)
        out = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, np.ndarray):
                setattr(out, name, value[slots] if name in _PER_ARM else value.copy())
        out.arm_ids = known
        out._slots = {a: i + 1 for i, a in enumerate(known)}
        out._rows_of = {}
        out._unfolded = []  # in the factors already; only a later fold would need them
        return {id(self): out}

    def _drop_last_arm(self) -> None:
        """Undo :meth:`_add_arm` of the newest arm (nothing learnt from it yet)."""
        self._rows_of.clear()
        del self._slots[self.arm_ids.pop()]
        for name in _PER_ARM:
            setattr(self, name, getattr(self, name)[:-1].copy())

    def slots_for(self, ids: tuple[str, ...] | list[str], create: bool) -> IntArray:
        if create:
            for arm in ids:
                if arm not in self._slots:
                    self._add_arm(arm)
        slots = self._slots
        return np.array([slots.get(a, 0) for a in ids], dtype=np.intp)

    def _candidate_rows(self, ids: tuple[str, ...]) -> slice | IntArray:
        """The slots of a candidate set as an index: a slice (views, no copies) when they
        are consecutive, as for arms first seen in candidate order; remembered per set."""
        rows = self._rows_of.get(ids)
        if rows is None:
            slots = self.slots_for(ids, create=False)
            first = int(slots[0])
            rows = slots
            if first > 0 and np.array_equal(slots, np.arange(first, first + slots.size)):
                rows = slice(first, first + slots.size)
            if len(self._rows_of) >= _ROWS_CACHE:
                self._rows_of.clear()
            self._rows_of[ids] = rows
        return rows

    # -- scoring ---------------------------------------------------------------
    def terms(
        self, contexts: FloatArray, candidates: Candidates
    ) -> tuple[FloatArray, FloatArray, None]:
        """Posterior means (n, K) and projections (n, K, k + 1): ``[U₀ c ; √(xᵀA_a⁻¹x)]``,
        whose squared norm is the dense model's ``φᵀM⁻¹φ``."""
        rows = self._candidate_rows(candidates.ids)
        k = self.dim_shared
        q, g, fit = arm_terms(self.scoring_, rows, contexts, k)
        # c @ [β̂ | U₀ᵀ] with c = z − g: z's part from the feature map's blocks (z is never
        # built), g's by one product
        weights = self._scoring_weights()
        out = self.features.apply(contexts, candidates.features, candidates.ids, weights)
        out -= g @ weights
        proj = np.empty((*q.shape, k + 1))
        proj[..., :k] = out[..., 1:]
        np.sqrt(q, out=proj[..., k])
        mean = out[..., 0]
        mean += fit
        return mean, proj, None

    def _scoring_weights(self) -> FloatArray:
        """``[β̂ | U₀ᵀ]`` (k, k + 1), cached until the next update."""
        if self._weights is None:
            self._weights = np.concatenate([self.beta_[:, None], self.schur_inv_chol_.T], axis=1)
        return self._weights

    def terms_one(
        self, context: FloatArray, candidates: Candidates
    ) -> tuple[FloatArray, FloatArray, None]:
        mean, proj, _ = self.terms(context[None], candidates)
        return mean[0], proj[0], None

    def noise_posterior(self) -> tuple[float, float]:
        """Inverse-gamma ``(a, b)`` of σ²: ``a0 + n/2``, ``b0 + ½(Σr² − bᵀM⁻¹b)``, cached
        until the next update."""
        if self._noise is None:
            cfg = self.config
            # b̂ᵀS⁻¹b̂ = b̂ᵀβ̂
            fit = self.yty_ - float(self.reduced_.dot(self.beta_)) - float(self.arm_fit_.sum())
            self._noise = (cfg.a0 + 0.5 * self.count_, cfg.b0 + 0.5 * max(fit, 0.0))
        return self._noise

    # -- learning -----------------------------------------------------------------
    def learn_one(self, context: FloatArray, arm_id: str, feats: FloatArray, reward: float) -> None:
        slot = self._slots.get(arm_id)
        z = self.features.row(context, feats, arm_id)
        self._refuse_outliers(z[None])
        if slot is None:  # a refused first update leaves no arm behind
            slot = self._add_arm(arm_id)
            try:
                self._rank1(slot, context, z, reward)
            except ValueError:  # _rank1 refuses before it changes anything
                self._drop_last_arm()
                raise
        else:
            self._rank1(slot, context, z, reward)
        if self.pending_ >= self.config.refactor_every and self.refactor():
            return
        self._set_beta()

    def _refuse_outliers(self, z: FloatArray) -> None:
        """Raise ``ValueError`` when a row of the shared features ``z`` (the next rows, in
        order; they hold the context) is out of scale beside the rows learnt
        (:attr:`bandit_core.HeadConfig.outlier_ratio`, the linear heads' check, on
        ``A₀``'s diagonal and the rows not folded into it yet). Nothing changes."""
        ratio = self.config.outlier_ratio
        if ratio is None or z.shape[0] == 0:
            return
        lam = self.config.lambda_prior
        # the folded sums are a lower bound of all: enough to pass the usual row cheaply
        folded = float(self.gram0_.trace()) - lam * z.shape[1]
        if z.shape[0] == 1 and surely_in_scale(z[0], folded, self.count_, ratio):
            return
        sums = np.diagonal(self.gram0_) - lam
        if self._unfolded:
            d = self.config.dim_user
            pending = np.stack([row[d:] for _, row in self._unfolded])
            sums = sums + np.einsum("ij,ij->j", pending, pending)
        found = first_outlier(z, sums, self.count_, ratio)
        if found is not None:
            i, j, scale = found
            raise ValueError(
                f"shared feature {j} = {z[i, j]:g} is more than outlier_ratio={ratio:g} "
                f"times the root-mean-square {scale:.3g} of the rows learnt (a leverage "
                "point: one such row sets the fit in its direction by itself); nothing was "
                "learnt."
            )

    def _rank1(self, slot: int, x: FloatArray, z: FloatArray, r: float) -> None:
        """Algorithm 2's update of the blocks for one observation on arm ``slot``.

        With ``w = A_a⁻¹x``, ``s = xᵀw``, ``c = z − B_aᵀw`` and ``e = r − b_aᵀw`` (all
        before the update), Sherman–Morrison gives the arm's new block in one rank-one
        step, ``W_a += [−w ; c ; e] wᵀ/(1 + s)`` (``A_a⁻¹ − wwᵀ/(1+s)``, ``A_a⁻¹B_a +
        w cᵀ/(1+s)``, ``A_a⁻¹b_a + w e/(1+s)``), and the shared block ``S += ccᵀ/(1+s)``,
        ``b̂ += c e/(1+s)``. Only the touched arm's block changes."""
        d, k = x.shape[0], self.dim_shared
        block = self.scoring_[slot]
        out = block.dot(x)
        w = out[:d]
        denominator = 1.0 + float(w.dot(x))
        lift = out.copy()  # [−w ; c ; e]
        np.negative(w, out=lift[:d])
        np.subtract(z, out[d : d + k], out=lift[d : d + k])
        e = r - float(out[-1])
        lift[-1] = e
        c = lift[d : d + k]
        # xᵀA_a⁻¹x is a squared Mahalanobis norm (unitless, ≥ 0): clearly negative, A_a⁻¹
        # is no longer positive definite in float64 (features too large for lambda_prior),
        # and the step would be wrong, so refuse it before anything changes
        schur = None
        if denominator > 1.0 - _ROUND_OFF and np.isfinite(lift).all():
            scale = 1.0 / denominator
            schur = inv_chol_rank1_product(self.schur_inv_chol_, c * np.sqrt(scale))
        if schur is None or not np.isfinite(schur).all():
            raise ValueError(
                f"the update of arm {self.arm_ids[slot - 1]!r} is numerically unstable: its "
                f"features (up to {float(np.abs(x).max()):g}) are too large for "
                f"lambda_prior={self.config.lambda_prior:g} in float64; nothing was learnt."
            )
        # shared block: S += c cᵀ/(1 + s), b̂ += c e/(1 + s)
        self.schur_inv_chol_ = schur
        self.reduced_ += (scale * e) * c
        self.xty0_ += r * z
        # the arm's block, in place: one BLAS rank-one update of its Fortran view (a copy
        # of the stack, e.g. one loaded from a file, may not be contiguous: then numpy's)
        lift *= scale
        if block.flags.c_contiguous:
            scipy.linalg.blas.dger(1.0, w, lift, a=block.T, overwrite_a=1)
        else:
            block += lift[:, None] * w
        # A₀, A_a and B_a are read only by a refactorisation: summed there, in one product
        self._unfolded.append((slot, np.concatenate((x, z))))  # a copy of x
        if len(self._unfolded) >= _FOLD_EVERY:  # bounded memory whatever refactor_every
            self._fold()
        xty = self.xty_[slot]
        xty += r * x
        self.arm_fit_[slot] = float(block[-1].dot(xty))
        self.yty_ += r * r
        self.count_ += 1.0
        self.pending_ += 1

    def _set_beta(self) -> None:
        u0 = self.schur_inv_chol_
        self.beta_ = u0.T.dot(u0.dot(self.reduced_))
        self._weights = self._noise = None

    def revise_one(
        self, context: FloatArray, arm_id: str, feats: FloatArray, old: float, new: float
    ) -> None:
        """The reward of a learnt ``(x, a)`` becomes ``new``: b₀, b_a and Σr² move, the
        precision does not (b̂ moves by ``(new − old)·c`` with the current blocks)."""
        slot = self._slots.get(arm_id)
        if slot is None:
            raise ValueError(f"arm_id {arm_id!r} has no learnt reward to revise.")
        d, k = context.shape[0], self.dim_shared
        z = self.features.row(context, feats, arm_id)
        delta = new - old
        block = self.scoring_[slot]
        out = block.dot(context)
        self.reduced_ += delta * (z - out[d : d + k])
        self.xty0_ += delta * z
        self.xty_[slot] += delta * context
        block[-1] += delta * out[:d]  # A_a⁻¹b_a moves by δ·A_a⁻¹x
        self.arm_fit_[slot] = float(block[-1].dot(self.xty_[slot]))
        self.yty_ += new * new - old * old
        self._set_beta()

    def _fold(self) -> None:
        """Add the observations learnt one at a time since the last fold to A₀, A_a, B_a."""
        if not self._unfolded:
            return
        slots = np.array([u[0] for u in self._unfolded], dtype=np.intp)
        rows = np.stack([u[1] for u in self._unfolded])
        self._unfolded = []
        d = self.config.dim_user
        self._add_statistics(slots, rows[:, :d], rows[:, d:])

    def _add_statistics(self, slots: IntArray, x: FloatArray, z: FloatArray) -> None:
        self.gram0_ += z.T @ z
        for slot in np.unique(slots):
            rows = slots == slot
            xs = x[rows]
            self.precision_[slot] += xs.T @ xs
            self.cross_[slot] += xs.T @ z[rows]

    def learn(
        self, contexts: FloatArray, ids: list[str], feats: FloatArray, rewards: FloatArray
    ) -> None:
        """Add ``n`` observations, whole or not at all: statistics summed, every factor
        recomputed once, or the rows learnt one at a time as online where the sums cannot
        be factored accurately (:meth:`_learn_all`)."""
        if contexts.shape[0] == 1:
            self.learn_one(contexts[0], ids[0], feats[0], float(rewards[0]))
            return
        saved = self._snapshot()
        try:
            self._learn_all(contexts, ids, feats, rewards)
        except ValueError:  # a row was refused: the model is as it was
            self._restore(saved)
            raise

    def _snapshot(self) -> dict[str, Any]:
        kept: dict[str, Any] = {
            k: v.copy() for k, v in vars(self).items() if isinstance(v, np.ndarray)
        }
        kept["arm_ids"], kept["_slots"] = list(self.arm_ids), dict(self._slots)
        kept["_unfolded"] = list(self._unfolded)
        kept["yty_"], kept["count_"], kept["pending_"] = self.yty_, self.count_, self.pending_
        return kept

    def _restore(self, saved: dict[str, Any]) -> None:
        vars(self).update(saved)
        self._rows_of.clear()
        self._weights = self._noise = None

    def _learn_all(
        self, contexts: FloatArray, ids: list[str], feats: FloatArray, rewards: FloatArray
    ) -> None:
        slots = self.slots_for(ids, create=True)
        z = self.features.build_rows(contexts, feats, ids)
        self._fold()
        self._refuse_outliers(z)  # the caller puts the arms back
        start = self._snapshot()
        self._add_statistics(slots, contexts, z)
        self.xty0_ += z.T @ rewards
        for slot in np.unique(slots):
            rows = slots == slot
            self.xty_[slot] += contexts[rows].T @ rewards[rows]
        self.yty_ += float(rewards @ rewards)
        self.count_ += float(contexts.shape[0])
        blocks = self._refactored()
        if blocks is None:
            # the summed statistics cannot be factored (accurately) in float64: collinear
            # rows so large that λ is lost beside their sums, or the Schur complement's
            # subtraction cancels. The rows are learnt one at a time, as online (a row
            # refused raises, and the caller puts the model back: whole or not at all).
            # Before, the batch was refused where the online model learnt every row
            # (10⁴ collinear rows at 1e6 in batches of 1,000: up to 6,000 refused), or its
            # blocks came from a factor of relative error up to ~1.
            self._restore(start)
            for i in range(contexts.shape[0]):
                self.learn_one(contexts[i], ids[i], feats[i], float(rewards[i]))
            return
        self._take(blocks)

    def rebuild(
        self, contexts: FloatArray, ids: list[str], feats: FloatArray, rewards: FloatArray
    ) -> None:
        saved = self._snapshot()
        self.arm_ids, self._slots = [], {}
        self._rows_of.clear()
        self._reset()
        if contexts.shape[0]:
            try:
                self._learn_all(contexts, ids, feats, rewards)
            except ValueError:
                self._restore(saved)
                raise

    def refactor(self) -> bool:
        """Recompute every block from the additive statistics (:meth:`_refactored`), the
        periodic refactorisation that bounds the rank-one steps' round-off; whether it did.

        Where the blocks computed from the sums would not be accurate
        (:func:`block_scaled_condition` of the dense precision past
        :data:`~bandit_core.linalg.SCALED_CONDITION_LIMIT`, or no factorisation takes the
        sums) the rank-one blocks, which never formed them, are kept and the next try is
        ``refactor_every`` updates later. Before, blocks of relative error ~1 or worse
        replaced them (3·10⁴ collinear rows at 1e6 on two arms: a width of 4.7e7 where the
        exact one is 2.2), or a failed factorisation was tried again at every update."""
        self.pending_ = 0
        blocks = self._refactored()
        if blocks is None:
            return False
        self._take(blocks)
        return True

    def _take(self, blocks: dict[str, FloatArray]) -> None:
        vars(self).update(blocks)
        self.pending_ = 0
        self._set_beta()

    def _refactored(self) -> dict[str, FloatArray] | None:
        """Every block from the additive statistics: ``W_a`` from ``U_a = L_a⁻¹``
        (:func:`scoring_block`), ``S = A₀ − Σ (U_aB_a)ᵀ(U_aB_a)``, ``b̂ = b₀ − Σ
        (A_a⁻¹B_a)ᵀ b_a`` (O(K(d³ + d²k + dk²) + k³)); ``None`` (nothing changed) where a
        factorisation fails or the blocks would not be accurate (:func:`blocks_are_accurate`)."""
        self._fold()
        d, k = self.config.dim_user, self.dim_shared
        try:
            inv_chol = inverse_cholesky(self.precision_)
            scoring, ub = scoring_block(inv_chol, self.cross_, self.xty_)
            stacked = ub.reshape(-1, k)  # Σ_a (U_aB_a)ᵀ(U_aB_a) as one product
            schur = self.gram0_ - stacked.T @ stacked
            schur_inv_chol = inverse_cholesky(schur)
        except ValueError:
            return None
        condition = block_scaled_condition(
            self.gram0_, self.precision_, self.cross_, inv_chol, ub, schur_inv_chol
        )
        if not blocks_are_accurate(condition):
            return None
        gain = scoring[:, d : d + k]  # (m, k, d)
        return {
            "scoring_": scoring,
            "reduced_": self.xty0_ - np.einsum("mkd,md->k", gain, self.xty_),
            "arm_fit_": np.einsum("md,md->m", scoring[:, -1], self.xty_),
            "schur_inv_chol_": schur_inv_chol,
        }

    # -- state -----------------------------------------------------------------
    _ARRAYS = (
        "gram0_",
        "xty0_",
        "schur_inv_chol_",
        "reduced_",
        "beta_",
        "precision_",
        "cross_",
        "xty_",
        "scoring_",
        "arm_fit_",
    )

    def _state_array(self, arrays: dict[str, NDArray[Any]], name: str) -> FloatArray:
        """The state's array for attribute ``name``, in the shape this model gives it."""
        key = "hybrid." + name.rstrip("_")
        value = np.asarray(arrays[key], dtype=np.float64)
        expected = getattr(self, name).shape
        if value.shape != expected:
            raise ValueError(f"state array {key!r} must have shape {expected}; got {value.shape}.")
        return value

    def _scoring_of_older_layout(self, arrays: dict[str, NDArray[Any]]) -> FloatArray:
        """Each arm's scoring block for a state saved before the blocks were stored
        (d8a84e1): that layout kept every arm's inverse Cholesky factor ``U_a`` (as
        ``hybrid.inv_chol``) and the Schur complement instead. ``W_a`` is built from the
        stored ``U_a``, ``B_a``, ``b_a`` (:func:`scoring_block`) and every other array is
        taken as stored, so the model decides as the one that saved it did (rank-one steps
        since its last refactorisation included); the Schur complement is not needed."""
        inv_chol = self._state_array({"hybrid.precision": arrays["hybrid.inv_chol"]}, "precision_")
        scoring, _ = scoring_block(
            inv_chol, self._state_array(arrays, "cross_"), self._state_array(arrays, "xty_")
        )
        if not np.isfinite(scoring).all():
            raise ValueError(
                "state array 'hybrid.inv_chol' gives non-finite scoring blocks "
                "(a state of the layout before d8a84e1)."
            )
        return scoring

    def fold(self) -> None:
        """Add the observations learnt one at a time since the last fold to the summed
        statistics (what :meth:`arrays` does first): afterwards reading the state changes
        nothing, so it can be copied in another thread while the model decides."""
        self._fold()

    def arrays(self) -> dict[str, NDArray[Any]]:
        """The learned state (the statistics with every observation folded in: the live
        model folds too, so a state's round trip decides bit for bit as the model)."""
        self._fold()
        out: dict[str, NDArray[Any]] = {
            "hybrid." + name.rstrip("_"): getattr(self, name).copy() for name in self._ARRAYS
        }
        out["hybrid.scalars"] = np.array([self.yty_, self.count_, float(self.pending_)])
        out["arm_ids"] = np.array(self.arm_ids, dtype=np.str_)
        return out

    def load_arrays(self, arrays: dict[str, NDArray[Any]]) -> None:
        arm_ids = state_arm_ids(arrays)
        self.arm_ids, self._slots = [], {}
        self._rows_of.clear()
        self._reset()
        self.slots_for(arm_ids, create=True)
        if "hybrid.scoring" not in arrays and "hybrid.inv_chol" in arrays:
            arrays = {**arrays, "hybrid.scoring": self._scoring_of_older_layout(arrays)}
        for name in self._ARRAYS:
            setattr(self, name, self._state_array(arrays, name).copy())
        self._weights = self._noise = None
        scalars = np.asarray(arrays["hybrid.scalars"], dtype=np.float64)
        if scalars.shape != (3,):
            raise ValueError(
                f"state array 'hybrid.scalars' must have shape (3,); got {scalars.shape}."
            )
        self.yty_, self.count_ = float(scalars[0]), float(scalars[1])
        self.pending_ = int(scalars[2])


# ------------------------------------------------------------------ policies
class HybridPolicy(LinearPolicy):
    """A :class:`LinearPolicy` whose model is the block-structured :class:`HybridModel`."""

    config_class: ClassVar[type[LinearConfig]] = HybridConfig
    model: Any

    def __init__(self, config: HybridConfig | None = None, **options: Any) -> None:
        built = build_config(
            cast(type[HybridConfig], self.config_class), self.name, config, options
        )
        self.config = built
        self.model = HybridModel(built)
        self.model_version = None

    @property
    def head(self) -> Any:
        raise AttributeError(f"{self.name} has no single head; its posterior is `model`.")

    def decision_work(self, n: int) -> int:
        """Work units of one choice among ``n`` candidates (:mod:`bandit_core.work`): the
        shared block's ``k²`` and each arm's own block and cross terms (``d² + 2kd``,
        ``d = dim_user``, weighted as a per-arm head's)."""
        k, d = int(self.model.dim_shared), self.config.dim_user
        own = n * PER_ARM * (d * d + 2 * k * d)
        return linear_work(n, k) + own + self._exploration_work(n, k)


class _HybridThompsonRule:
    """Thompson sampling from the hybrid posterior with Monte-Carlo propensities.

    As for the other joint linear TS policies (:func:`~bandit_core.montecarlo.thompson_draws`),
    each decision draws ``S = 2·⌈(n_sim + 1)/2⌉`` samples in antithetic pairs (more, up to
    ``max_sim``, when ``target_rel_error`` asks for them); sample 0 decides, each arm's
    propensity is its argmax frequency and the chosen arm's standard error is reported.
    A sample's noise is ``σ (ε₀ · U₀c_a + ε_a ‖U_a x‖)`` (module docstring), σ² from the
    inverse-gamma posterior when ``sample_noise``.
    """

    config: Any
    model: Any

    def _exploration_work(self, n: int, k: int) -> int:
        """The draws of the shared noise in ``min(n, k)`` dimensions (after a QR of
        ``n·k·min(n, k)`` when ``n < k``) and of each candidate's own."""
        shared = min(n, k)
        draws = monte_carlo_draws(self.config)
        return draws_work(n, shared, draws, shared + n) + n * k * shared

    def _explore(
        self, mean: FloatArray, proj: FloatArray, heads: IntArray | None, rng: np.random.Generator
    ) -> tuple[IntArray, FloatArray, FloatArray]:
        choice, probs, scores, _se = self._explore_se(mean, proj, heads, rng)
        return choice, probs, scores

    def _explore_se(
        self, mean: FloatArray, proj: FloatArray, heads: IntArray | None, rng: np.random.Generator
    ) -> tuple[IntArray, FloatArray, FloatArray, FloatArray | None]:
        return thompson_draws(mean, self._sampler(proj, rng), self.config, rng)

    def _explore_one(
        self, mean: FloatArray, proj: FloatArray, heads: IntArray | None, rng: np.random.Generator
    ) -> tuple[int, FloatArray, FloatArray, float | None]:
        """One decision: :func:`~bandit_core.montecarlo.one_decision` straight from the
        draws when it applies (the same numbers as :meth:`_explore_se`, fewer calls)."""
        cfg = self.config
        if cfg.target_rel_error is not None or not distinct(mean):
            # LinearPolicy's (next in the policies' MRO): through _explore_se
            general: tuple[int, FloatArray, FloatArray, float | None]
            general = super()._explore_one(mean, proj, heads, rng)  # type: ignore[misc]
            return general
        draw = self._sampler(proj[None], rng)
        return one_decision(mean, draw(slice(0, 1), draw_pairs(cfg.n_sim))[0])

    def _sampler(
        self, proj: FloatArray, rng: np.random.Generator
    ) -> Callable[[slice, int], FloatArray]:
        """``draw(rows, J)``: J perturbations (m, J, K) of the rows' sampled scores."""
        cfg = self.config
        k = self.model.dim_shared
        shared, width = proj[..., :k], proj[..., k]  # [U₀c ; √(xᵀA_a⁻¹x)]
        n, k_cands = proj.shape[:2]
        if k_cands < k:
            # the shared noise ε₀ᵀU₀c_a of K < k candidates drawn in K dimensions: with
            # U₀C ᵀ = QR, ε R (ε ~ N(0, I_K)) has the same covariance C S⁻¹ Cᵀ = RᵀR
            factors = [upper_triangular_factor(row.T) for row in shared]
            shared = factors[0][None] if n == 1 else np.stack(factors)
        a, b = self.model.noise_posterior()

        def draw(rows: slice, half: int) -> FloatArray:
            m = rows.stop - rows.start
            factor = shared[rows]
            if k_cands >= k:
                factor = factor.transpose(0, 2, 1)
            noise: FloatArray = rng.standard_normal((m, half, factor.shape[1])) @ factor
            noise += rng.standard_normal((m, half, k_cands)) * width[rows][:, None, :]
            if cfg.sample_noise:
                noise *= np.sqrt(b / rng.standard_gamma(a, size=(m, half, 1)))
            if cfg.v != 1.0:
                noise *= cfg.v
            return noise

        return draw


class HybridLinUCB(_UCBRule, HybridPolicy):
    """Hybrid LinUCB (Li et al. 2010, Algorithm 2): ``μ_a + α √(φᵀM⁻¹φ)`` from the blocks;
    ties split uniformly, or to the first with ``ties="first"``."""

    name = "hybrid_linucb"
    config_class = HybridLinUCBConfig


class HybridLinTS(_HybridThompsonRule, HybridPolicy):
    """Linear Thompson sampling on the hybrid model's posterior (block form)."""

    name = "hybrid_lints"
    config_class = HybridLinTSConfig
