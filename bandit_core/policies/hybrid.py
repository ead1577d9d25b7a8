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
Inverse Cholesky factors of S and of every A_a (``U = L⁻¹``) take rank-one updates, so an
update costs O(k² + d² + d·k) instead of O((k + K·d)²), and a decision O(K(d² + d·k + k²)).
The noise posterior needs ``bᵀM⁻¹b = b̂ᵀS⁻¹b̂ + Σ_a b_aᵀA_a⁻¹b_a`` (block elimination),
kept per arm. Every ``refactor_every`` updates the factors are recomputed from the additive
statistics, bounding round-off.

Thompson sampling draws from the same joint posterior: ``β̃ ~ N(β̂, σ²S⁻¹)`` and, given β̃,
``θ̃_a ~ N(A_a⁻¹(b_a − B_aβ̃), σ²A_a⁻¹)`` independently per arm, so a candidate's sampled
score is ``μ_a + σ (cᵀU₀ᵀ ε₀ + ‖U_a x‖ ε_a)``: one shared draw ε₀ (k) per sample and one
independent normal per candidate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, cast

import numpy as np
from numpy.typing import NDArray

from bandit_core._validation import FloatArray, Interval, validate_params
from bandit_core.features import FeatureMap
from bandit_core.linalg import inv_chol_rank1_update, inverse_cholesky
from bandit_core.montecarlo import thompson_draws
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

IntArray = NDArray[np.intp]

#: candidate sets whose slot index the model remembers
_ROWS_CACHE = 256


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
def arm_terms(
    inv_chol: FloatArray, cross: FloatArray, xty: FloatArray, x: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Per-candidate pieces of the block posterior for contexts ``x``.

    Parameters
    ----------
    inv_chol : (K, d, d)
        ``U_a`` of each candidate's arm.
    cross : (K, d, k)
        ``B_a``.
    xty : (K, d)
        ``b_a``.
    x : (n, d)
        User contexts.

    Returns
    -------
    u : (n, K, d)
        ``U_a x`` (so ``xᵀA_a⁻¹x = ‖u‖²``).
    g : (n, K, k)
        ``B_aᵀ A_a⁻¹ x``.
    fit : (n, K)
        ``xᵀ A_a⁻¹ b_a``.
    w : (n, K, d)
        ``A_a⁻¹ x``.
    """
    u = np.einsum("kij,nj->nki", inv_chol, x)
    w = np.einsum("kji,nkj->nki", inv_chol, u)
    g = np.einsum("kdl,nkd->nkl", cross, w)
    fit = np.einsum("nkd,kd->nk", w, xty)
    return u, g, fit, w


# ------------------------------------------------------------------ the model
class HybridModel:
    """Block posterior of the hybrid model (see the module docstring).

    Learned state: shared ``gram0_`` (k, k) = A₀, ``xty0_`` (k,) = b₀, ``schur_`` (k, k) = S,
    ``schur_inv_chol_`` (k, k) = U₀, ``reduced_`` (k,) = b̂, ``beta_`` (k,) = β̂; per arm
    slot (slot 0 is the prior, used for unseen arms) ``precision_`` (m, d, d) = A_a,
    ``inv_chol_`` (m, d, d) = U_a, ``cross_`` (m, d, k) = B_a, ``xty_`` (m, d) = b_a,
    ``arm_fit_`` (m,) = b_aᵀA_a⁻¹b_a; ``yty_`` = Σr², ``count_`` = n, ``pending_`` = rank-one
    updates since the last refactorisation.
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
        self.schur_: FloatArray = lam * np.eye(k)
        self.schur_inv_chol_: FloatArray = np.eye(k) / np.sqrt(lam)
        self.reduced_: FloatArray = np.zeros(k)
        self.beta_: FloatArray = np.zeros(k)
        m = len(self.arm_ids) + 1
        self.precision_: FloatArray = np.repeat((lam * np.eye(d))[None], m, axis=0)
        self.inv_chol_: FloatArray = np.repeat((np.eye(d) / np.sqrt(lam))[None], m, axis=0)
        self.cross_: FloatArray = np.zeros((m, d, k))
        self.xty_: FloatArray = np.zeros((m, d))
        self.arm_fit_: FloatArray = np.zeros(m)
        self.yty_ = 0.0
        self.count_ = 0.0
        self.pending_ = 0

    # -- arms ----------------------------------------------------------------
    def _add_arm(self, arm: str) -> int:
        self._rows_of.clear()
        slot = int(self.precision_.shape[0])
        self._slots[arm] = slot
        self.arm_ids.append(arm)
        for name in ("precision_", "inv_chol_", "cross_", "xty_", "arm_fit_"):
            array = getattr(self, name)
            setattr(self, name, np.concatenate([array, array[:1]], axis=0))  # slot 0: prior
        return slot

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
        """Posterior means (n, K) and projections (n, K, k + d): ``[U₀ c ; U_a x]``, whose
        squared norm is the dense model's ``φᵀM⁻¹φ``."""
        rows = self._candidate_rows(candidates.ids)
        z = self.features.build(contexts, candidates.features, candidates.ids)
        u, g, fit, _ = arm_terms(self.inv_chol_[rows], self.cross_[rows], self.xty_[rows], contexts)
        c = z - g
        mean = c @ self.beta_ + fit
        proj = np.concatenate([c @ self.schur_inv_chol_.T, u], axis=-1)
        return mean, proj, None

    def terms_one(
        self, context: FloatArray, candidates: Candidates
    ) -> tuple[FloatArray, FloatArray, None]:
        mean, proj, _ = self.terms(context[None], candidates)
        return mean[0], proj[0], None

    def noise_posterior(self) -> tuple[float, float]:
        """Inverse-gamma ``(a, b)`` of σ²: ``a0 + n/2``, ``b0 + ½(Σr² − bᵀM⁻¹b)``."""
        cfg = self.config
        shared = self.schur_inv_chol_ @ self.reduced_
        fit = self.yty_ - float(shared @ shared) - float(self.arm_fit_.sum())
        return cfg.a0 + 0.5 * self.count_, cfg.b0 + 0.5 * max(fit, 0.0)

    # -- learning -----------------------------------------------------------------
    def learn_one(self, context: FloatArray, arm_id: str, feats: FloatArray, reward: float) -> None:
        slot = self._slots.get(arm_id)
        if slot is None:
            slot = self._add_arm(arm_id)
        z = self.features.row(context, feats, arm_id)
        self._rank1(slot, context, z, reward)
        if self.pending_ >= self.config.refactor_every:
            self.refactor()
        else:
            self._set_beta()

    def _rank1(self, slot: int, x: FloatArray, z: FloatArray, r: float) -> None:
        """Algorithm 2's update of the blocks for one observation on arm ``slot``."""
        u_arm = self.inv_chol_[slot]
        u = u_arm @ x
        w = u_arm.T @ u
        s = float(u @ u)
        c = z - self.cross_[slot].T @ w
        fit = float(w @ self.xty_[slot])
        scale = 1.0 / (1.0 + s)
        # shared block: S += c cᵀ/(1 + s), b̂ += c (r − xᵀA⁻¹b_a)/(1 + s)
        self.schur_inv_chol_ = inv_chol_rank1_update(self.schur_inv_chol_, c * np.sqrt(scale))
        self.schur_ += (scale * c)[:, None] * c
        self.reduced_ += (scale * (r - fit)) * c
        self.gram0_ += z[:, None] * z
        self.xty0_ += r * z
        # the arm's block
        self.precision_[slot] += x[:, None] * x
        self.inv_chol_[slot] = u_arm = inv_chol_rank1_update(u_arm, x)
        self.cross_[slot] += x[:, None] * z
        self.xty_[slot] += r * x
        v = u_arm @ self.xty_[slot]
        self.arm_fit_[slot] = float(v @ v)
        self.yty_ += r * r
        self.count_ += 1.0
        self.pending_ += 1

    def _set_beta(self) -> None:
        u0 = self.schur_inv_chol_
        self.beta_ = u0.T @ (u0 @ self.reduced_)

    def revise_one(
        self, context: FloatArray, arm_id: str, feats: FloatArray, old: float, new: float
    ) -> None:
        """The reward of a learnt ``(x, a)`` becomes ``new``: b₀, b_a and Σr² move, the
        precision does not (b̂ moves by ``(new − old)·c`` with the current blocks)."""
        slot = self._slots.get(arm_id)
        if slot is None:
            raise ValueError(f"arm_id {arm_id!r} has no learnt reward to revise.")
        z = self.features.row(context, feats, arm_id)
        delta = new - old
        u_arm = self.inv_chol_[slot]
        w = u_arm.T @ (u_arm @ context)
        self.reduced_ += delta * (z - self.cross_[slot].T @ w)
        self.xty0_ += delta * z
        self.xty_[slot] += delta * context
        v = u_arm @ self.xty_[slot]
        self.arm_fit_[slot] = float(v @ v)
        self.yty_ += new * new - old * old
        self._set_beta()

    def learn(
        self, contexts: FloatArray, ids: list[str], feats: FloatArray, rewards: FloatArray
    ) -> None:
        """Add ``n`` observations: statistics summed, every factor recomputed once."""
        if contexts.shape[0] == 1:
            self.learn_one(contexts[0], ids[0], feats[0], float(rewards[0]))
            return
        slots = self.slots_for(ids, create=True)
        z = self.features.build_rows(contexts, feats, ids)
        self.gram0_ += z.T @ z
        self.xty0_ += z.T @ rewards
        for slot in np.unique(slots):
            rows = slots == slot
            x, zs, r = contexts[rows], z[rows], rewards[rows]
            self.precision_[slot] += x.T @ x
            self.cross_[slot] += x.T @ zs
            self.xty_[slot] += x.T @ r
        self.yty_ += float(rewards @ rewards)
        self.count_ += float(contexts.shape[0])
        self.refactor()

    def rebuild(
        self, contexts: FloatArray, ids: list[str], feats: FloatArray, rewards: FloatArray
    ) -> None:
        self.arm_ids, self._slots = [], {}
        self._rows_of.clear()
        self._reset()
        if contexts.shape[0]:
            self.learn(contexts, ids, feats, rewards)

    def refactor(self) -> None:
        """Recompute every factor and derived block from the additive statistics:
        ``S = A₀ − Σ (U_aB_a)ᵀ(U_aB_a)``, ``b̂ = b₀ − Σ (U_aB_a)ᵀ U_a b_a`` (O(K(d³ + d²k +
        dk²) + k³))."""
        self.inv_chol_ = inverse_cholesky(self.precision_)
        ub = self.inv_chol_ @ self.cross_  # (m, d, k)
        ubx = np.einsum("mij,mj->mi", self.inv_chol_, self.xty_)  # (m, d)
        self.schur_ = self.gram0_ - np.einsum("mdk,mdl->kl", ub, ub)
        self.reduced_ = self.xty0_ - np.einsum("mdk,md->k", ub, ubx)
        self.arm_fit_ = np.einsum("md,md->m", ubx, ubx)
        self.schur_inv_chol_ = inverse_cholesky(self.schur_)
        self.pending_ = 0
        self._set_beta()

    # -- state -----------------------------------------------------------------
    _ARRAYS = (
        "gram0_",
        "xty0_",
        "schur_",
        "schur_inv_chol_",
        "reduced_",
        "beta_",
        "precision_",
        "inv_chol_",
        "cross_",
        "xty_",
        "arm_fit_",
    )

    def arrays(self) -> dict[str, NDArray[Any]]:
        out: dict[str, NDArray[Any]] = {
            "hybrid." + name.rstrip("_"): getattr(self, name).copy() for name in self._ARRAYS
        }
        out["hybrid.scalars"] = np.array([self.yty_, self.count_, float(self.pending_)])
        out["arm_ids"] = np.array(self.arm_ids, dtype=np.str_)
        return out

    def load_arrays(self, arrays: dict[str, NDArray[Any]]) -> None:
        arm_ids = [str(a) for a in arrays["arm_ids"]]
        self.arm_ids, self._slots = [], {}
        self._rows_of.clear()
        self._reset()
        self.slots_for(arm_ids, create=True)
        for name in self._ARRAYS:
            key = "hybrid." + name.rstrip("_")
            value = np.asarray(arrays[key], dtype=np.float64)
            expected = getattr(self, name).shape
            if value.shape != expected:
                raise ValueError(
                    f"state array {key!r} must have shape {expected}; got {value.shape}."
                )
            setattr(self, name, value.copy())
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

    def _explore(
        self, mean: FloatArray, proj: FloatArray, heads: IntArray | None, rng: np.random.Generator
    ) -> tuple[IntArray, FloatArray, FloatArray]:
        choice, probs, scores, _se = self._explore_se(mean, proj, heads, rng)
        return choice, probs, scores

    def _explore_se(
        self, mean: FloatArray, proj: FloatArray, heads: IntArray | None, rng: np.random.Generator
    ) -> tuple[IntArray, FloatArray, FloatArray, FloatArray | None]:
        cfg = self.config
        k = self.model.dim_shared
        shared, own = proj[..., :k], proj[..., k:]
        width = np.sqrt(np.einsum("nkd,nkd->nk", own, own))
        a, b = self.model.noise_posterior()

        def draw(rows: slice, half: int) -> FloatArray:
            m, k_cands = rows.stop - rows.start, proj.shape[1]
            noise: FloatArray = rng.standard_normal((m, half, k)) @ shared[rows].transpose(0, 2, 1)
            noise += rng.standard_normal((m, half, k_cands)) * width[rows][:, None, :]
            if cfg.sample_noise:
                noise *= np.sqrt(b / rng.standard_gamma(a, size=(m, half, 1)))
            if cfg.v != 1.0:
                noise *= cfg.v
            return noise

        return thompson_draws(mean, draw, cfg, rng)


class HybridLinUCB(_UCBRule, HybridPolicy):
    """Hybrid LinUCB (Li et al. 2010, Algorithm 2): ``μ_a + α √(φᵀM⁻¹φ)`` from the blocks;
    ties split uniformly, or to the first with ``ties="first"``."""

    name = "hybrid_linucb"
    config_class = HybridLinUCBConfig


class HybridLinTS(_HybridThompsonRule, HybridPolicy):
    """Linear Thompson sampling on the hybrid model's posterior (block form)."""

    name = "hybrid_lints"
    config_class = HybridLinTSConfig
