"""Logistic Thompson sampling for 0/1 rewards with a Laplace-approximated posterior.

Model (Chapelle & Li, NIPS 2011, Algorithm 3, with the full rather than the diagonal
Laplace approximation): ``P(r = 1 | x, a) = σ(wᵀφ(x, a))`` with ``φ`` the shared feature
map of :class:`~bandit_core.features.FeatureMap` (plus a constant 1 with ``intercept``) and
the prior ``w ~ N(0, λ⁻¹ I)``. The posterior is approximated by ``N(ŵ, A⁻¹)``.

Online update (assumed-density filtering): the previous posterior ``N(m, A⁻¹)`` is the
prior of the next reward ``(φ, r)``. Its MAP lies on ``w = m + t A⁻¹φ`` (the likelihood's
gradient is along φ), so the Newton steps solve the scalar equation

    t = r − σ(φᵀm + t q),   q = φᵀA⁻¹φ,

and then ``A ← A + p(1 − p) φφᵀ`` with ``p = σ(φᵀŵ)`` (the Hessian of the negative
log-likelihood at the new MAP): O(d²) per reward with a rank-one update of ``L⁻¹``.

Decisions draw ``w̃ = ŵ + v Uᵀz`` once and pick the candidate with the largest ``w̃ᵀφ``
(σ is monotone, so on the logit); the scores of the candidates share one draw and are
correlated, so the propensities are Monte-Carlo estimates with a measured standard error
(:func:`bandit_core.montecarlo.thompson_draws`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import brentq
from scipy.special import expit

from bandit_core._validation import (
    DRAW_SCALE,
    PRIOR_PRECISION,
    Constraint,
    FloatArray,
    Interval,
    IsBool,
    StrTuple,
    as_finite_float,
    as_float_vector,
    check_known_options,
    validate_params,
)
from bandit_core.exploration import tied_with_max
from bandit_core.features import FeatureMap
from bandit_core.head import HEAD_PARAMS, first_outlier, surely_in_scale
from bandit_core.linalg import inv_chol_rank1_update, inverse_cholesky
from bandit_core.montecarlo import MONTE_CARLO_PARAMS, MonteCarloOptions, thompson_draws
from bandit_core.policies.base import check_candidates, check_contexts, check_rng, check_updates
from bandit_core.types import SCHEMA_VERSION, Candidates, Decision, DecisionBatch, PolicyState
from bandit_core.work import draws_work, linear_work, monte_carlo_draws

IntArray = NDArray[np.intp]

_PARAMS: dict[str, Constraint] = {
    "dim_user": Interval(int, 0, None),
    "dim_arm": Interval(int, 0, None),
    "interactions": IsBool(),
    "arm_vocabulary": StrTuple(),
    "intercept": IsBool(),
    "lambda_prior": PRIOR_PRECISION,
    "v": DRAW_SCALE,
    "newton_steps": Interval(int, 1, 100),
    "refactor_every": Interval(int, 1, None),
    "outlier_ratio": HEAD_PARAMS["outlier_ratio"],
}


@dataclass(frozen=True, kw_only=True)
class LogisticTSConfig(MonteCarloOptions):
    """Hyperparameters of :class:`LogisticTS`.

    Parameters
    ----------
    dim_user, dim_arm, interactions, arm_vocabulary
        The feature map φ(x, a) (see :class:`~bandit_core.features.FeatureMap`).
    intercept : bool
        Append a constant 1 to φ (the base click rate).
    lambda_prior : float
        Prior precision λ of the weights.
    v : float
        Scale of the posterior draws (1: plain Thompson sampling).
    newton_steps : int
        At most this many iterations of the scalar MAP equation per reward (safeguarded
        Newton, :func:`map_step`; it stops once the equation holds to 1e-12).
    refactor_every : int
        Recompute ``L⁻¹`` from the precision after this many rank-one updates.
    outlier_ratio : float or None
        Refuse a reward whose φ has a feature more than this many times that feature's
        RMS over the rows learnt (the linear heads' check,
        :attr:`bandit_core.HeadConfig.outlier_ratio`); None turns it off.
    n_sim, target_rel_error, max_sim
        Monte-Carlo propensities (:class:`~bandit_core.montecarlo.MonteCarloOptions`).
    """

    dim_user: int
    dim_arm: int = 0
    interactions: bool = False
    arm_vocabulary: tuple[str, ...] = ()
    intercept: bool = True
    lambda_prior: float = 1.0
    v: float = 1.0
    newton_steps: int = 50
    refactor_every: int = 1000
    outlier_ratio: float | None = 100.0

    @classmethod
    def constraints(cls) -> dict[str, Constraint]:
        """The constraint of every field (the contract suite checks that none is missing)."""
        return {**MONTE_CARLO_PARAMS, **_PARAMS}

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_params(type(self).__name__, asdict(self), _PARAMS)
        object.__setattr__(self, "arm_vocabulary", tuple(self.arm_vocabulary))

    def feature_map(self) -> FeatureMap:
        return FeatureMap(self.dim_user, self.dim_arm, self.interactions, self.arm_vocabulary)


#: |t − r + σ(η₀ + t q)| at which :func:`map_step` stops.
MAP_TOLERANCE = 1e-12


def map_step(eta0: float, q: float, reward: float, steps: int) -> float:
    """The root ``t`` of ``f(t) = t − r + σ(η₀ + t q)`` (``q ≥ 0``): the MAP weights
    after one reward lie at ``mean + t A⁻¹φ``.

    ``f`` rises (``f′ = 1 + q σ′ ≥ 1``) and is negative at ``r − 1`` and positive at
    ``r`` for a reward in [0, 1], so the root lies in that bracket; a Newton step that
    leaves the bracket (``σ`` bends both ways) is replaced by bisection. Plain Newton from 0
    with 5 steps left a residual above 1e-6 in 17 % of updates with ``q`` in [10, 100]
    (the first rewards of a model with a few dozen features), up to 0.98: the mean moved
    almost a whole step too far.
    """
    if q > LOGIT_SPACE_Q:
        return _map_step_in_logits(eta0, q, reward)
    lo, hi = reward - 1.0, reward
    t, last = 0.0, math.inf
    for _ in range(steps):
        p = float(expit(eta0 + t * q))
        f = t - reward + p
        if abs(f) <= MAP_TOLERANCE:
            break
        if f > 0.0:
            hi = t
        else:
            lo = t
        newton = t - f / (1.0 + q * p * (1.0 - p))
        # Newton where it stays in the bracket and at least halves |f|; else bisection
        # (Newton alone can bounce between the two sides of the bend for good)
        t = newton if lo < newton < hi and abs(f) <= 0.5 * last else 0.5 * (lo + hi)
        last = abs(f)
    return t


#: ``q`` above which :func:`map_step` solves for the logit ``u = η₀ + t q`` instead of
#: ``t``: past it the absolute test on ``f`` and 50 halvings of ``[r − 1, r]`` no longer
#: resolve ``t ≈ 1/q`` (at q = 1e16 the row's logit landed 9,000 from the root at 32 and
#: its curvature was exactly 0: the row was not learnt; audit, stop 54). Below it the
#: logit's error is at most ``q · MAP_TOLERANCE`` = 1e-6.
LOGIT_SPACE_Q = 1e6


def _map_step_in_logits(eta0: float, q: float, reward: float) -> float:
    """:func:`map_step` for large ``q``: the root of ``h(u) = u − η₀ − q (r − σ(u))``
    (rising, ``h′ ≥ 1``; negative at ``η₀ + (r − 1) q``, positive at ``η₀ + r q``) by
    Brent's method to 1e-10 in the logit, then ``t = (u − η₀) / q``. ``r − σ(u)`` is
    formed without cancelling (at u = 32, ``1 − σ(u)`` from σ kept two digits)."""

    def h(u: float) -> float:
        # r − σ(u) without cancelling: σ(u) = 1 − σ(−u) where σ(u) is near 1
        gap = (reward - 1.0) + float(expit(-u)) if u > 0.0 else reward - float(expit(u))
        return u - eta0 - q * gap

    lo, hi = eta0 + (reward - 1.0) * q, eta0 + reward * q
    if h(lo) >= 0.0:
        return reward - 1.0
    if h(hi) <= 0.0:
        return reward
    # a bracket of 1e30 and more (inputs at the bound) may need more steps than given:
    # the best point found is taken then (``disp=False``), never an error mid-update
    found = brentq(h, lo, hi, xtol=1e-10, rtol=4.0 * np.finfo(float).eps, maxiter=500, disp=False)
    return (float(found) - eta0) / q


def laplace_update(
    mean: FloatArray,
    inv_chol: FloatArray,
    phi: FloatArray,
    reward: float,
    steps: int,
) -> tuple[FloatArray, FloatArray, float]:
    """One reward ``(φ, r)`` into the Laplace posterior ``N(mean, UᵀU)``.

    Returns the new mean (d,), the factor ``U`` (d, d) of the new precision
    ``A + p(1 − p) φφᵀ`` and that curvature ``p(1 − p)``.
    """
    s = inv_chol.T @ (inv_chol @ phi)  # A⁻¹φ
    q = float(phi @ s)
    eta0 = float(phi @ mean)
    t = map_step(eta0, q, reward, steps)
    new_mean = mean + t * s
    u = eta0 + t * q
    # σ(u) σ(−u): p (1 − p) is 0 once σ(u) rounds to 1 (u ≳ 37), and the row's
    # curvature, which the Laplace precision learns from, was lost with it
    curvature = float(expit(u)) * float(expit(-u))
    return new_mean, inv_chol_rank1_update(inv_chol, np.sqrt(curvature) * phi), curvature


class LogisticTS:
    """Logistic Thompson sampling (Chapelle & Li 2011) on joint user/arm features.

    Learned state: ``theta_`` (d,) the MAP weights, ``precision_`` (d, d) the Laplace
    precision, ``inv_chol_`` (d, d) its inverse Cholesky factor, ``count_`` rewards learnt,
    ``pending_`` rank-one updates since the last refactorisation, ``squares_`` (d,) the
    sums of φ² over the ``squares_rows_`` rows the outlier check judges by (the precision
    weighs each row by its curvature; a state saved before the check starts them at 0).
    """

    name: ClassVar[str] = "logistic_ts"
    config_class: ClassVar[type[LogisticTSConfig]] = LogisticTSConfig
    #: State arrays a state saved by an older release lacks (it loads without them).
    added_state_arrays: ClassVar[frozenset[str]] = frozenset({"squares"})

    def __init__(self, config: LogisticTSConfig | None = None, **options: Any) -> None:
        if config is None:
            check_known_options(self.name, options, [f.name for f in fields(LogisticTSConfig)])
            if "dim_user" not in options:
                raise ValueError(
                    f"{self.name} needs the option 'dim_user' (length of the user context)."
                )
            config = LogisticTSConfig(**options)
        elif options:
            raise ValueError(f"{self.name} takes either config or keyword options, not both.")
        self.config = config
        self.features = config.feature_map()
        self.dim_arm = self.features.dim_arm
        d = self.dim
        self.theta_: FloatArray = np.zeros(d)
        self.precision_: FloatArray = config.lambda_prior * np.eye(d)
        self.inv_chol_: FloatArray = np.eye(d) / np.sqrt(config.lambda_prior)
        self.count_ = 0.0
        self.pending_ = 0
        self.squares_: FloatArray = np.zeros(d)
        self.squares_rows_ = 0.0
        self.model_version: str | None = None

    @property
    def dim(self) -> int:
        """Dimension of φ (with the intercept)."""
        return self.features.dim + int(self.config.intercept)

    def _phi(self, contexts: FloatArray, candidates: Candidates) -> FloatArray:
        phi = self.features.build(contexts, candidates.features, candidates.ids)
        if self.config.intercept:
            phi = np.concatenate([phi, np.ones((*phi.shape[:-1], 1))], axis=-1)
        return phi

    def decision_work(self, n: int) -> int:
        """Work units of one choice among ``n`` candidates (:mod:`bandit_core.work`)."""
        d = self.dim
        return linear_work(n, d) + draws_work(n, d, monte_carlo_draws(self.config), d)

    # -- decisions -------------------------------------------------------------
    def select(self, context: Any, candidates: Any, rng: np.random.Generator) -> Decision:
        x = as_float_vector("context", context, self.config.dim_user)[None, :]
        cands = check_candidates(candidates, self.dim_arm, self.name)
        batch, explored = self._decide(x, cands, check_rng(rng))
        arm = int(batch.arms[0])
        se = None if batch.propensity_se is None else float(batch.propensity_se[0])
        return Decision(
            arm=arm,
            arm_id=cands.ids[arm],
            propensity=float(batch.propensities[0]),
            probabilities=batch.probabilities[0],
            scores=batch.scores[0],
            policy=self.name,
            explored=bool(explored[0]),
            model_version=self.model_version,
            propensity_se=se,
        )

    def select_batch(
        self, contexts: Any, candidates: Any, rng: np.random.Generator
    ) -> DecisionBatch:
        x = check_contexts(contexts, self.config.dim_user)
        cands = check_candidates(candidates, self.dim_arm, self.name)
        if x.shape[0] == 0:
            return DecisionBatch.empty(len(cands.ids), self.name)
        return self._decide(x, cands, check_rng(rng))[0]

    def _decide(
        self, contexts: FloatArray, candidates: Candidates, rng: np.random.Generator
    ) -> tuple[DecisionBatch, NDArray[np.bool_]]:
        phi = self._phi(contexts, candidates)  # (n, K, d)
        mean = phi @ self.theta_
        proj = phi @ self.inv_chol_.T  # (n, K, d): U φ, so w̃ᵀφ = ŵᵀφ + v zᵀ(Uφ)
        v = self.config.v

        def draw(rows: slice, half: int) -> FloatArray:
            z = rng.standard_normal((rows.stop - rows.start, half, self.dim))
            noise: FloatArray = z @ proj[rows].transpose(0, 2, 1)
            if v != 1.0:
                noise *= v
            return noise

        choice, probs, scores, se = thompson_draws(mean, draw, self.config, rng)
        rows = np.arange(choice.shape[0])
        batch = DecisionBatch(choice, probs[rows, choice], probs, scores, self.name, se)
        return batch, ~tied_with_max(mean)[rows, choice]

    # -- learning --------------------------------------------------------------
    def update(self, context: Any, arm_id: Any, reward: Any, arm_features: Any = None) -> None:
        x = as_float_vector("context", context, self.config.dim_user)
        r = as_finite_float("reward", reward)
        feats = None if arm_features is None else [arm_features]
        self.update_batch(x[None], [arm_id], [r], feats)

    def update_batch(
        self, contexts: Any, arm_ids: Any, rewards: Any, arm_features: Any = None
    ) -> None:
        """Learn from ``n`` rewards in [0, 1] in order (each one Laplace update; a
        fractional reward is a soft label of the same cross-entropy)."""
        x, ids, r, feats = check_updates(
            contexts, arm_ids, rewards, arm_features, self.config.dim_user, self.dim_arm
        )
        outside = (r < 0.0) | (r > 1.0)
        if outside.any():
            bad = float(r[outside][0])
            raise ValueError(f"rewards of {self.name} must lie in [0, 1]; got {bad!r}.")
        if not ids:
            return
        phi = self.features.build_rows(x, feats, ids)
        if self.config.intercept:
            phi = np.concatenate([phi, np.ones((phi.shape[0], 1))], axis=1)
        cfg = self.config
        self._refuse_outliers(phi)
        # on copies, kept only when every row went in and the posterior is finite: a
        # refused batch (a refactorisation that fails, a non-finite result) learns nothing
        theta, inv_chol, precision = self.theta_, self.inv_chol_, self.precision_.copy()
        pending = self.pending_
        for i in range(phi.shape[0]):
            theta, inv_chol, curvature = laplace_update(
                theta, inv_chol, phi[i], float(r[i]), cfg.newton_steps
            )
            precision += curvature * np.outer(phi[i], phi[i])
            pending += 1
            if pending >= cfg.refactor_every:
                inv_chol = inverse_cholesky(precision)
                pending = 0
        if not (np.isfinite(theta).all() and np.isfinite(inv_chol).all()):
            raise ValueError(
                f"{self.name}: these rewards would make the posterior non-finite (features "
                "too large for lambda_prior); nothing was learnt."
            )
        self.theta_, self.inv_chol_, self.precision_ = theta, inv_chol, precision
        self.count_ += float(phi.shape[0])
        self.pending_ = pending
        self.squares_ = self.squares_ + np.einsum("nd,nd->d", phi, phi)
        self.squares_rows_ += float(phi.shape[0])

    def _refuse_outliers(self, phi: FloatArray) -> None:
        """Raise ``ValueError`` when a row of ``phi`` (the next rows, in order) is out of
        scale beside the rows learnt (``outlier_ratio``, the linear heads' check): a
        leverage point the Laplace update pins the weights by. Nothing changes."""
        ratio = self.config.outlier_ratio
        if ratio is None:
            return
        rows, total = self.squares_rows_, float(self.squares_.sum())
        if phi.shape[0] == 1 and surely_in_scale(phi[0], total, rows, ratio):
            return
        found = first_outlier(phi, self.squares_, rows, ratio)
        if found is not None:
            i, j, scale = found
            raise ValueError(
                f"phi[{j}] = {phi[i, j]:g} is more than outlier_ratio={ratio:g} times the "
                f"root-mean-square {scale:.3g} of the rows learnt (a leverage point: one "
                "such row sets the fit in its direction by itself); nothing was learnt."
            )

    def rebuild(self, contexts: Any, arm_ids: Any, rewards: Any, arm_features: Any = None) -> None:
        """Forget everything and learn the rows again, in time order."""
        fresh = type(self)(self.config)
        fresh.update_batch(contexts, arm_ids, rewards, arm_features)
        self.theta_, self.precision_, self.inv_chol_ = (
            fresh.theta_,
            fresh.precision_,
            fresh.inv_chol_,
        )
        self.count_, self.pending_ = fresh.count_, fresh.pending_
        self.squares_, self.squares_rows_ = fresh.squares_, fresh.squares_rows_

    # -- state -----------------------------------------------------------------
    def to_state(self) -> PolicyState:
        config = asdict(self.config)
        config["arm_vocabulary"] = list(config["arm_vocabulary"])
        arrays = {
            "theta": self.theta_.copy(),
            "precision": self.precision_.copy(),
            "inv_chol": self.inv_chol_.copy(),
            "counts": np.array([self.count_, float(self.pending_)]),
            "squares": np.append(self.squares_, self.squares_rows_),
        }
        meta = {"model_version": self.model_version}
        return PolicyState(self.name, {**config, "__meta__": meta}, arrays, SCHEMA_VERSION)

    @classmethod
    def from_state(cls, state: PolicyState) -> LogisticTS:
        if state.policy != cls.name:
            raise ValueError(f"state is for policy {state.policy!r}, not {cls.name!r}.")
        options = dict(state.config)
        meta = options.pop("__meta__", {})
        options["arm_vocabulary"] = tuple(options.get("arm_vocabulary", ()))
        policy = cls(**options)
        d = policy.dim
        for key, shape in (("theta", (d,)), ("precision", (d, d)), ("inv_chol", (d, d))):
            value = np.asarray(state.arrays[key], dtype=np.float64)
            if value.shape != shape:
                raise ValueError(f"state array {key!r} must have shape {shape}; got {value.shape}.")
            setattr(policy, key + "_", value.copy())
        counts = np.asarray(state.arrays["counts"], dtype=np.float64)
        policy.count_, policy.pending_ = float(counts[0]), int(counts[1])
        if "squares" in state.arrays:  # else saved before the outlier check: judged afresh
            squares = np.asarray(state.arrays["squares"], dtype=np.float64)
            if squares.shape != (d + 1,) or not np.isfinite(squares).all() or (squares < 0).any():
                raise ValueError(
                    f"state array 'squares' must hold {d + 1} finite numbers, not negative."
                )
            policy.squares_, policy.squares_rows_ = squares[:d].copy(), float(squares[d])
        policy.model_version = meta.get("model_version")
        return policy
