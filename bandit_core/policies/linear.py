"""Linear contextual bandits on :class:`~bandit_core.head.BayesianLinearHead`.

* per-arm (disjoint) LinUCB — Li, Chu, Langford & Schapire, WWW 2010, Algorithm 1:
  ``a_t = argmax_a θ_aᵀx + α √(xᵀ A_a⁻¹ x)``;
* per-arm LinTS — Agrawal & Goyal, ICML 2013: ``θ̃_a ~ N(θ̂_a, v² A_a⁻¹)``; with
  ``sample_noise`` the scale is the Normal-inverse-gamma posterior draw of σ (Riquelme et
  al. 2018) times ``v``;
* shared LinUCB / LinTS: one head on ``φ(x, a)`` from :class:`~bandit_core.features.FeatureMap`
  (user and arm features, optional interactions and arm one-hot: the hybrid model);
* ε-greedy on the posterior mean of either model.

Scores of all candidates come from one matrix expression; no factorisation happens on the
request path (the head keeps L⁻¹ up to date in O(d²)).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from bandit_core._validation import (
    BONUS_SCALE,
    DRAW_SCALE,
    Constraint,
    FloatArray,
    Interval,
    IsBool,
    OneOf,
    arm_id_text,
    as_finite_float,
    as_float_vector,
    check_known_options,
    delegate,
    validate_params,
)
from bandit_core.exploration import (
    TIE_TOLERANCE,
    first_of_ties,
    greedy_choice_one,
    greedy_probabilities,
    sample_categorical,
    tied_with_max,
)
from bandit_core.features import FEATURE_PARAMS, FeatureMap
from bandit_core.head import HEAD_PARAMS, BayesianLinearHead, HeadConfig
from bandit_core.head_statistics import HeadStatisticsMethods
from bandit_core.linalg import gathered_product
from bandit_core.montecarlo import DRAWS, MONTE_CARLO_PARAMS, MonteCarloOptions, thompson_draws
from bandit_core.policies.base import (
    check_candidates,
    check_contexts,
    check_rng,
    check_updates,
    state_arm_ids,
)
from bandit_core.policies.exact_thompson import per_arm_thompson
from bandit_core.types import SCHEMA_VERSION, Candidates, Decision, DecisionBatch, PolicyState
from bandit_core.work import QUADRATURE, draws_work, linear_work, monte_carlo_draws

IntArray = NDArray[np.intp]

_POLICY_PARAMS: dict[str, Constraint] = {
    "alpha": BONUS_SCALE,
    "v": DRAW_SCALE,
    "n_sim": DRAWS,
    "sample_noise": IsBool(),
    "epsilon": Interval(float, 0.0, 1.0),
    "shared": IsBool(),
    "dim_user": Interval(int, 0, None),
    "arm_embedding": Interval(int, 0, None),
    "ties": OneOf(("random", "first")),
    **delegate(
        "BayesianLinearHead",
        HEAD_PARAMS,
        ("lambda_prior", "a0", "b0", "gamma", "window", "refactor_every", "outlier_ratio"),
    ),
    **delegate("FeatureMap", FEATURE_PARAMS, ("dim_arm", "interactions", "arm_vocabulary")),
}

_NO_FEATURES = np.zeros(0)
_NO_FEATURES.setflags(write=False)

#: Upper bound on the elements of one Monte-Carlo block (rows × draws × K [× d]).
_MC_BLOCK = 4_000_000


@dataclass(frozen=True, kw_only=True)
class LinearConfig:
    """Head hyperparameters shared by every linear policy (see :class:`HeadConfig`)."""

    dim_user: int
    lambda_prior: float = 1.0
    a0: float = 6.0
    b0: float = 6.0
    gamma: float = 1.0
    window: int | None = None
    refactor_every: int = 1000
    outlier_ratio: float | None = 100.0

    @classmethod
    def constraints(cls) -> dict[str, Constraint]:
        """The constraint of every field (the contract suite checks that none is missing)."""
        return _POLICY_PARAMS

    def __post_init__(self) -> None:
        validate_params(type(self).__name__, asdict(self), self.constraints())
        # The head validates its own hyperparameters (and their combination).
        self.head_config(1)

    def head_config(self, dim: int) -> HeadConfig:
        return HeadConfig(
            dim=dim,
            lambda_prior=self.lambda_prior,
            a0=self.a0,
            b0=self.b0,
            gamma=self.gamma,
            window=self.window,
            refactor_every=self.refactor_every,
            outlier_ratio=self.outlier_ratio,
        )

    def feature_map(self) -> FeatureMap | None:
        """The shared feature map, or None for per-arm models."""
        return None


@dataclass(frozen=True, kw_only=True)
class SharedFeaturesConfig(LinearConfig):
    dim_arm: int = 0
    interactions: bool = False
    arm_vocabulary: tuple[str, ...] = ()
    #: width m of a hashed arm embedding crossed with the context (0: none); see FeatureMap
    arm_embedding: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "arm_vocabulary", tuple(self.arm_vocabulary))
        self.feature_map()

    def feature_map(self) -> FeatureMap | None:
        return FeatureMap(
            self.dim_user, self.dim_arm, self.interactions, self.arm_vocabulary, self.arm_embedding
        )


@dataclass(frozen=True, kw_only=True)
class LinUCBConfig(LinearConfig):
    """``alpha``: width of the optimism bonus. ``ties``: how equal scores are split —
    ``"random"`` uniformly over the tied candidates (each gets that propensity), ``"first"``
    to the first of them in candidate order with propensity 1 (deterministic; the rule of
    mabwiser and of a plain argmax)."""

    alpha: float = 1.0
    ties: str = "random"


@dataclass(frozen=True, kw_only=True)
class LinTSConfig(LinearConfig):
    """``v``: scale of the posterior draws; ``sample_noise``: draw σ² from its
    inverse-gamma posterior. Per-arm propensities are exact (quadrature): no ``n_sim``."""

    v: float = 1.0
    sample_noise: bool = True


@dataclass(frozen=True, kw_only=True)
class MonteCarloConfig(LinTSConfig, MonteCarloOptions):
    """``n_sim``, ``target_rel_error``, ``max_sim``: Monte-Carlo propensities
    (:class:`~bandit_core.montecarlo.MonteCarloOptions`)."""

    @classmethod
    def constraints(cls) -> dict[str, Constraint]:
        return {**_POLICY_PARAMS, **MONTE_CARLO_PARAMS}

    def __post_init__(self) -> None:
        super().__post_init__()
        MonteCarloOptions.__post_init__(self)


@dataclass(frozen=True, kw_only=True)
class SharedLinUCBConfig(SharedFeaturesConfig, LinUCBConfig):
    pass


@dataclass(frozen=True, kw_only=True)
class SharedLinTSConfig(SharedFeaturesConfig, MonteCarloConfig):
    pass


@dataclass(frozen=True, kw_only=True)
class EpsilonGreedyConfig(SharedFeaturesConfig):
    epsilon: float = 0.1
    shared: bool = True

    def feature_map(self) -> FeatureMap | None:
        return super().feature_map() if self.shared else None


ConfigT = TypeVar("ConfigT", bound=LinearConfig)


def build_config(
    config_class: type[ConfigT], owner: str, config: Any, options: dict[str, Any]
) -> ConfigT:
    """A validated config from either a config object or keyword options."""
    if config is not None:
        if options:
            raise ValueError(f"{owner} takes either config or keyword options, not both.")
        if not isinstance(config, config_class):
            raise TypeError(
                f"config of {owner} must be a {config_class.__name__}; got {type(config).__name__}."
            )
        return config
    check_known_options(owner, options, [f.name for f in fields(config_class)])
    if "dim_user" not in options:
        raise ValueError(f"{owner} needs the option 'dim_user' (length of the user context).")
    return config_class(**options)


# ---------------------------------------------------------------------- models
#: candidate sets whose head indices a per-arm model remembers
_HEADS_CACHE = 256


class ArmState(Protocol):
    """A model whose state holds a block per arm it has learnt (it grows with them)."""

    #: the arms it has learnt, in the order their blocks were added
    arm_ids: list[str]

    @property
    def n_arms(self) -> int: ...

    @property
    def bytes_per_arm(self) -> int:
        """Bytes of the state one more arm adds."""
        ...

    def knows(self, arm_id: str) -> bool: ...


@dataclass(frozen=True)
class ArmLimit:
    """Most arms a per-arm state may hold: ``max_arms``, and no more than fit, with the
    prior's block, in ``max_bytes`` (a block is O(d²): with d = 500 a hundred thousand
    arms would be 400 GB). ``of(policy)`` is the number for one policy."""

    max_arms: int
    max_bytes: int | None = None

    def of(self, policy: Any) -> int:
        arms = arm_state(policy)
        if arms is None or self.max_bytes is None:
            return self.max_arms
        return max(0, min(self.max_arms, self.max_bytes // max(arms.bytes_per_arm, 1) - 1))

    def reached(self, policy: Any, arm_id: str) -> bool:
        """Whether learning ``arm_id`` would give ``policy``'s per-arm state more arms
        than it may hold (False for a known arm, or a policy without per-arm state: the
        limit is computed only for a new arm)."""
        arms = arm_state(policy)
        return arms is not None and not arms.knows(arm_id) and arms.n_arms >= self.of(policy)


def arm_state(policy: Any) -> ArmState | None:
    """The per-arm state of ``policy`` (through wrappers), or None for a policy whose
    state does not grow with the arms (shared, neural, uniform…)."""
    while policy is not None:
        model = getattr(policy, "model", None)
        if model is not None and callable(getattr(model, "knows", None)):
            state: ArmState = model
            return state
        policy = getattr(policy, "inner", None)
    return None


class PerArmModel:
    """One head per arm (disjoint model). Head 0 is the prior, used for unseen arms."""

    joint = False

    def __init__(self, config: LinearConfig) -> None:
        if config.dim_user < 1:
            raise ValueError(
                "a per-arm model needs user features: 'dim_user' must be at least 1; "
                f"got {config.dim_user}."
            )
        self.head = BayesianLinearHead(config.head_config(config.dim_user), n_heads=1)
        self.arm_ids: list[str] = []
        self._slots: dict[str, int] = {}
        # heads of recently seen candidate sets (the request path sees the same sets again);
        # emptied whenever an arm gets a head
        self._heads_of: dict[tuple[str, ...], tuple[IntArray, slice | IntArray]] = {}

    dim_arm = 0

    @property
    def n_arms(self) -> int:
        return len(self.arm_ids)

    @property
    def bytes_per_arm(self) -> int:
        return self.head.bytes_per_head

    def knows(self, arm_id: str) -> bool:
        return arm_id in self._slots

    def heads_for(self, ids: tuple[str, ...] | list[str], create: bool) -> IntArray:
        if create:
            for arm in ids:
                if arm not in self._slots:
                    self._slots[arm] = self.head.add_heads(1)
                    self.arm_ids.append(arm)
                    self._heads_of.clear()
        slots = self._slots
        return np.array([slots.get(a, 0) for a in ids], dtype=np.intp)

    def decision_parts(self, ids: Sequence[str]) -> dict[int, Any]:
        """This model, for a decision copy among ``ids``
        (:func:`~bandit_core.policies.decision_copy.decision_copy`): a copy holding the
        prior and the heads of the arms of ``ids`` it knows, which scores those arms as
        this model does, in O(len(ids)·d²) whatever the number of arms."""
        known = [a for a in dict.fromkeys(ids) if a in self._slots]
        out = copy.copy(self)
        out.head = self.head.subset(np.array([0, *(self._slots[a] for a in known)], dtype=np.intp))
        out.arm_ids = known
        out._slots = {a: i + 1 for i, a in enumerate(known)}
        out._heads_of = {}
        return {id(self): out}

    def _candidate_heads(self, ids: tuple[str, ...]) -> tuple[IntArray, slice | IntArray]:
        """:meth:`heads_for` of a candidate set, remembered (read-only) for the next request,
        with the index that reads their rows: a slice (a view, no copy) when the heads are
        consecutive, as they are for arms seen in candidate order."""
        cached = self._heads_of.get(ids)
        if cached is None:
            heads = self.heads_for(ids, create=False)
            heads.setflags(write=False)
            first = int(heads[0])
            rows: slice | IntArray = heads
            if first > 0 and np.array_equal(heads, np.arange(first, first + heads.size)):
                rows = slice(first, first + heads.size)
            if len(self._heads_of) >= _HEADS_CACHE:
                self._heads_of.clear()
            cached = self._heads_of[ids] = (heads, rows)
        return cached

    def terms(
        self, contexts: FloatArray, candidates: Candidates
    ) -> tuple[FloatArray, FloatArray, IntArray]:
        """Posterior means (n, K), projections U_a x (n, K, d) and the head of each candidate."""
        heads, rows = self._candidate_heads(candidates.ids)
        mean = contexts @ self.head.theta_[rows].T
        proj = gathered_product(
            self.head.inv_chol_,
            rows,
            lambda u, _: np.matmul(u, contexts.T),
            same_rows_same_result=True,
        ).transpose(2, 0, 1)
        return mean, proj, heads

    def terms_one(
        self, context: FloatArray, candidates: Candidates
    ) -> tuple[FloatArray, FloatArray, IntArray]:
        """:meth:`terms` of one request (K,), (K, d): two (K, d) products, no transposes."""
        heads, rows = self._candidate_heads(candidates.ids)
        head = self.head
        proj = gathered_product(
            head.inv_chol_, rows, lambda u, _: u @ context, same_rows_same_result=True
        )
        return head.theta_[rows].dot(context), proj, heads

    def _forget_arms_from(self, known: int) -> None:
        """Undo the arms registered after the first ``known`` (their call failed: a
        refused reward leaves no head, and no arm the model then claims to know)."""
        if len(self.arm_ids) > known:
            for arm in self.arm_ids[known:]:
                del self._slots[arm]
            del self.arm_ids[known:]
            self.head.truncate(known + 1)
            self._heads_of.clear()

    def _learning(self, ids: Sequence[str], learn: Callable[[IntArray], None]) -> None:
        """``learn(heads of ids)``, the arms new to it registered first and forgotten again
        when it raises."""
        known = len(self.arm_ids)
        heads = self.heads_for(list(ids), create=True)
        try:
            learn(heads)
        except BaseException:
            self._forget_arms_from(known)
            raise

    def learn_one(self, context: FloatArray, arm_id: str, feats: FloatArray, reward: float) -> None:
        slot = self._slots.get(arm_id)
        if slot is None:
            self._learning(
                [arm_id], lambda heads: self.head._update(context, reward, int(heads[0]))
            )
            return
        self.head._update(context, reward, slot)

    def revise_one(
        self, context: FloatArray, arm_id: str, feats: FloatArray, old: float, new: float
    ) -> None:
        slot = self._slots.get(arm_id)
        if slot is None:
            raise ValueError(f"arm_id {arm_id!r} has no learnt reward to revise.")
        self.head.revise(context, old, new, slot)

    def learn(
        self, contexts: FloatArray, ids: list[str], feats: FloatArray, rewards: FloatArray
    ) -> None:
        def learn(heads: IntArray) -> None:
            if contexts.shape[0] == 1:
                self.head._update(contexts[0], float(rewards[0]), int(heads[0]))
            else:
                self.head.update_batch(contexts, rewards, heads)

        self._learning(ids, learn)

    def rebuild(
        self, contexts: FloatArray, ids: list[str], feats: FloatArray, rewards: FloatArray
    ) -> None:
        self._learning(ids, lambda heads: self.head.rebuild(contexts, rewards, heads))

    def arrays(self) -> dict[str, NDArray[Any]]:
        out = self.head.to_arrays()
        out["arm_ids"] = np.array(self.arm_ids, dtype=np.str_)
        return out

    def load_arrays(self, arrays: dict[str, NDArray[Any]]) -> None:
        self.head = BayesianLinearHead.from_arrays(self.head.config, arrays)
        self.arm_ids = state_arm_ids(arrays)
        self._slots = {a: i + 1 for i, a in enumerate(self.arm_ids)}
        self._heads_of.clear()
        if len(self.arm_ids) + 1 != self.head.n_heads:
            raise ValueError(
                f"state has {len(self.arm_ids)} arm ids but {self.head.n_heads - 1} arm heads."
            )


class SharedModel:
    """One head on the joint features φ(x, a)."""

    joint = True

    def __init__(self, config: LinearConfig) -> None:
        fmap = config.feature_map()
        assert fmap is not None  # only built for shared configs
        self.features = fmap
        self.dim_arm = fmap.dim_arm
        self.head = BayesianLinearHead(config.head_config(fmap.dim), n_heads=1)
        self._weights: FloatArray | None = None

    def _scoring_weights(self) -> FloatArray:
        """``[μ | Uᵀ]`` (d, d + 1), cached until the next update: φ @ it gives the mean
        and the projection U φ of every candidate in one pass."""
        if self._weights is None:
            head = self.head
            self._weights = np.concatenate([head.theta_[0][:, None], head.inv_chol_[0].T], axis=1)
        return self._weights

    def terms(
        self, contexts: FloatArray, candidates: Candidates
    ) -> tuple[FloatArray, FloatArray, None]:
        out = self.features.apply(
            contexts, candidates.features, candidates.ids, self._scoring_weights()
        )
        return out[..., 0], out[..., 1:], None

    def terms_one(
        self, context: FloatArray, candidates: Candidates
    ) -> tuple[FloatArray, FloatArray, None]:
        out = self.features.apply(
            context[None], candidates.features, candidates.ids, self._scoring_weights()
        )[0]
        return out[:, 0], out[:, 1:], None

    def learn_one(self, context: FloatArray, arm_id: str, feats: FloatArray, reward: float) -> None:
        self.head._update(self.features.row(context, feats, arm_id), reward, 0)
        self._weights = None

    def revise_one(
        self, context: FloatArray, arm_id: str, feats: FloatArray, old: float, new: float
    ) -> None:
        self.head.revise(self.features.row(context, feats, arm_id), old, new, 0)
        self._weights = None

    def learn(
        self, contexts: FloatArray, ids: list[str], feats: FloatArray, rewards: FloatArray
    ) -> None:
        self.head.update_batch(self.features.build_rows(contexts, feats, ids), rewards)
        self._weights = None

    def rebuild(
        self, contexts: FloatArray, ids: list[str], feats: FloatArray, rewards: FloatArray
    ) -> None:
        self.head.rebuild(self.features.build_rows(contexts, feats, ids), rewards)
        self._weights = None

    def arrays(self) -> dict[str, NDArray[Any]]:
        return self.head.to_arrays()

    def load_arrays(self, arrays: dict[str, NDArray[Any]]) -> None:
        self.head = BayesianLinearHead.from_arrays(self.head.config, arrays)
        self._weights = None


# ---------------------------------------------------------------------- policies
class LinearPolicy(HeadStatisticsMethods):
    """Config + model + exploration rule; subclasses define the rule in ``_explore``."""

    name: ClassVar[str]
    config_class: ClassVar[type[LinearConfig]]

    def __init__(self, config: LinearConfig | None = None, **options: Any) -> None:
        self.config = build_config(self.config_class, self.name, config, options)
        self.model: PerArmModel | SharedModel = self._make_model()
        self.model_version: str | None = None

    def _make_model(self) -> PerArmModel | SharedModel:
        if self.config.feature_map() is not None:
            return SharedModel(self.config)
        return PerArmModel(self.config)

    @property
    def head(self) -> BayesianLinearHead:
        return self.model.head

    # -- decisions ------------------------------------------------------------
    def select(self, context: Any, candidates: Any, rng: np.random.Generator) -> Decision:
        x = as_float_vector("context", context, self.config.dim_user)
        cands = self._check_candidates(candidates)
        m, proj, heads = self.model.terms_one(x, cands)
        arm, probs, scores, se = self._explore_one(m, proj, heads, check_rng(rng))
        top = float(m.max())
        return Decision(
            arm=arm,
            arm_id=cands.ids[arm],
            propensity=float(probs[arm]),
            probabilities=probs,
            scores=scores,
            policy=self.name,
            explored=bool(m[arm] < top - TIE_TOLERANCE * max(1.0, abs(top))),
            model_version=self.model_version,
            propensity_se=se,
        )

    def _explore_one(
        self, mean: FloatArray, proj: FloatArray, heads: IntArray | None, rng: np.random.Generator
    ) -> tuple[int, FloatArray, FloatArray, float | None]:
        """One decision: (chosen index, probabilities (K,), scores (K,), propensity s.e.)."""
        choice, probs, scores, se = self._explore_se(mean[None], proj[None], heads, rng)
        return int(choice[0]), probs[0], scores[0], None if se is None else float(se[0])

    def select_batch(
        self, contexts: Any, candidates: Any, rng: np.random.Generator
    ) -> DecisionBatch:
        x = check_contexts(contexts, self.config.dim_user)
        cands = self._check_candidates(candidates)
        if x.shape[0] == 0:
            return DecisionBatch.empty(len(cands.ids), self.name)
        return self._decide(x, cands, check_rng(rng))[0]

    def _check_candidates(self, candidates: Any) -> Candidates:
        """Candidates of the right feature width; a model without arm features refuses
        candidates that carry some (it would ignore them silently)."""
        cands = check_candidates(candidates, self.model.dim_arm)
        if self.model.dim_arm == 0 and cands.dim > 0:
            raise ValueError(
                f"{self.name} does not use arm features (a per-arm model on the user context "
                f"only); got candidates with {cands.dim} features. Pass candidates without "
                "features, or use a policy on arm features (e.g. "
                "linucb_arm_features, lints_arm_features, shared_linucb, shared_lints)."
            )
        return cands

    def _decide(
        self, contexts: FloatArray, candidates: Candidates, rng: np.random.Generator
    ) -> tuple[DecisionBatch, NDArray[np.bool_]]:
        mean, proj, heads = self.model.terms(contexts, candidates)
        choice, probs, scores, se = self._explore_se(mean, proj, heads, rng)
        rows = np.arange(choice.shape[0])
        explored = ~tied_with_max(mean)[rows, choice]
        batch = DecisionBatch(
            arms=choice,
            propensities=probs[rows, choice],
            probabilities=probs,
            scores=scores,
            policy=self.name,
            propensity_se=se,
        )
        return batch, explored

    def _explore_se(
        self, mean: FloatArray, proj: FloatArray, heads: IntArray | None, rng: np.random.Generator
    ) -> tuple[IntArray, FloatArray, FloatArray, FloatArray | None]:
        """:meth:`_explore` and the standard errors of the propensities (None: exact)."""
        return (*self._explore(mean, proj, heads, rng), None)

    def _explore(
        self, mean: FloatArray, proj: FloatArray, heads: IntArray | None, rng: np.random.Generator
    ) -> tuple[IntArray, FloatArray, FloatArray]:
        raise NotImplementedError

    # -- work ----------------------------------------------------------------
    def decision_work(self, n: int) -> int:
        """Work units of one choice among ``n`` candidates (:mod:`bandit_core.work`)."""
        d = self.head.dim
        per_arm = isinstance(self.model, PerArmModel)
        return linear_work(n, d, per_arm) + self._exploration_work(n, d)

    def _exploration_work(self, n: int, d: int) -> int:
        """Work of the exploration rule beyond the head's scores (none for ε-greedy)."""
        return 0

    # -- learning ------------------------------------------------------------
    def update(self, context: Any, arm_id: Any, reward: Any, arm_features: Any = None) -> None:
        x = as_float_vector("context", context, self.config.dim_user)
        r = as_finite_float("reward", reward)
        dim_arm = self.model.dim_arm
        if dim_arm > 0:
            if arm_features is None:
                raise ValueError(
                    f"arm_features is required: the policy uses {dim_arm} arm features."
                )
            feats = as_float_vector("arm_features", arm_features, dim_arm)
        else:
            feats = _NO_FEATURES
        self.model.learn_one(x, arm_id_text(arm_id), feats, r)

    def revise_reward(
        self,
        context: Any,
        arm_id: Any,
        old_reward: Any,
        new_reward: Any,
        arm_features: Any = None,
    ) -> None:
        """The reward of an update already made becomes ``new_reward`` (e.g. a duplicate
        reward summed into it); the posterior equals one that learnt ``new_reward`` at once.

        Raises ``ValueError`` for bad input and for heads with a discount or a window.
        """
        x = as_float_vector("context", context, self.config.dim_user)
        old = as_finite_float("old_reward", old_reward)
        new = as_finite_float("new_reward", new_reward)
        dim_arm = self.model.dim_arm
        feats = (
            as_float_vector("arm_features", arm_features, dim_arm) if dim_arm > 0 else _NO_FEATURES
        )
        self.model.revise_one(x, arm_id_text(arm_id), feats, old, new)

    def update_batch(
        self, contexts: Any, arm_ids: Any, rewards: Any, arm_features: Any = None
    ) -> None:
        x, ids, r, feats = check_updates(
            contexts, arm_ids, rewards, arm_features, self.config.dim_user, self.model.dim_arm
        )
        if ids:  # zero rows: nothing to learn
            self.model.learn(x, ids, feats, r)

    def rebuild(self, contexts: Any, arm_ids: Any, rewards: Any, arm_features: Any = None) -> None:
        """Forget everything and rebuild the posterior from the logged rows (in time order)."""
        x, ids, r, feats = check_updates(
            contexts, arm_ids, rewards, arm_features, self.config.dim_user, self.model.dim_arm
        )
        self.model.rebuild(x, ids, feats, r)

    # -- head statistics (LinearHeadPolicy) ------------------------------------
    def head_features(
        self, contexts: FloatArray, arm_ids: Sequence[str], arm_features: FloatArray
    ) -> tuple[FloatArray, list[str] | None]:
        """φ of logged rows: the shared feature map's rows (one head), or the context
        itself keyed by the arm id (per-arm heads)."""
        model = self.model
        if isinstance(model, SharedModel):
            return model.features.build_rows(contexts, arm_features, list(arm_ids)), None
        return contexts, list(arm_ids)

    # -- state ---------------------------------------------------------------
    def to_state(self) -> PolicyState:
        config = asdict(self.config)
        config["arm_vocabulary"] = list(config.get("arm_vocabulary", ()))
        if not isinstance(self.config, SharedFeaturesConfig):
            config.pop("arm_vocabulary")
        meta = {"model_version": self.model_version}
        return PolicyState(
            self.name, {**config, "__meta__": meta}, self.model.arrays(), SCHEMA_VERSION
        )

    @classmethod
    def from_state(cls, state: PolicyState) -> LinearPolicy:
        if state.policy != cls.name:
            raise ValueError(f"state is for policy {state.policy!r}, not {cls.name!r}.")
        options = dict(state.config)
        meta = options.pop("__meta__", {})
        if "arm_vocabulary" in options:
            options["arm_vocabulary"] = tuple(options["arm_vocabulary"])
        policy = cls(**options)
        policy.model.load_arrays(state.arrays)
        policy.model_version = meta.get("model_version")
        return policy


class _UCBRule:
    config: Any

    def _exploration_work(self, n: int, d: int) -> int:
        return 0  # the width ‖U x‖ is the head's own term

    def _first_of_ties(self) -> bool:
        """Ties to the first candidate (``ties="first"``) instead of a uniform split."""
        return bool(self.config.ties == "first")

    def _explore_one(
        self, mean: FloatArray, proj: FloatArray, heads: IntArray | None, rng: np.random.Generator
    ) -> tuple[int, FloatArray, FloatArray, float | None]:
        scores = np.einsum("kd,kd->k", proj, proj)
        np.sqrt(scores, out=scores)
        alpha = self.config.alpha
        if alpha != 1.0:  # x · 1.0 is x: skipping it changes no bit
            scores *= alpha
        scores += mean
        if self._first_of_ties():
            first, one_hot = first_of_ties(scores[None])
            return int(first[0]), one_hot[0], scores, None
        arm, probs = greedy_choice_one(scores, 0.0, rng)
        return arm, probs, scores, None

    def _explore(
        self, mean: FloatArray, proj: FloatArray, heads: IntArray | None, rng: np.random.Generator
    ) -> tuple[IntArray, FloatArray, FloatArray]:
        width = np.sqrt(np.einsum("nkd,nkd->nk", proj, proj))
        scores = mean + self.config.alpha * width
        if self._first_of_ties():
            choice, probs = first_of_ties(scores)
            return choice, probs, scores
        probs = greedy_probabilities(scores)
        return sample_categorical(probs, rng), probs, scores


class _ThompsonRule:
    """Posterior sampling: exact propensities for independent arms, Monte Carlo otherwise.

    Per-arm models score the candidates independently, so every arm's propensity is a
    one-dimensional integral (:func:`~bandit_core.policies.exact_thompson.per_arm_thompson`).
    A joint model shares one θ draw among the candidates: ``S = 2·⌈(n_sim + 1)/2⌉``
    posterior samples in antithetic pairs (``μ + σ·ε`` and ``μ − σ·ε`` share one noise
    draw), sample 0 decides, every arm's propensity is its argmax frequency, and the
    chosen arm's standard error is reported (more draws up to ``max_sim`` when
    ``target_rel_error`` asks for them: :func:`~bandit_core.montecarlo.thompson_draws`).
    """

    config: Any
    model: PerArmModel | SharedModel

    def _exploration_work(self, n: int, d: int) -> int:
        if isinstance(self.model, PerArmModel):
            return n * QUADRATURE  # independent arms: exact propensities
        return draws_work(n, d, monte_carlo_draws(self.config), d)

    def _explore(
        self, mean: FloatArray, proj: FloatArray, heads: IntArray | None, rng: np.random.Generator
    ) -> tuple[IntArray, FloatArray, FloatArray]:
        choice, probs, scores, _se = self._explore_se(mean, proj, heads, rng)
        return choice, probs, scores

    def _explore_se(
        self, mean: FloatArray, proj: FloatArray, heads: IntArray | None, rng: np.random.Generator
    ) -> tuple[IntArray, FloatArray, FloatArray, FloatArray | None]:
        cfg = self.config
        if heads is not None:  # independent arms: exact propensities by quadrature
            a, b = self.model.head.noise_posterior(heads)
            width = np.sqrt(np.einsum("nkd,nkd->nk", proj, proj))
            return (*per_arm_thompson(mean, width, a, b, cfg.v, cfg.sample_noise, rng), None)
        a, b = self.model.head.noise_posterior(np.zeros(1, dtype=np.intp))
        d = proj.shape[2]

        def draw(rows: slice, half: int) -> FloatArray:
            # one θ draw θ = μ + σ Uᵀz per sample, shared by all candidates
            z = rng.standard_normal((rows.stop - rows.start, half, d))
            if cfg.sample_noise:
                z *= np.sqrt(b / rng.standard_gamma(a, size=(rows.stop - rows.start, half, 1)))
            noise: FloatArray = z @ proj[rows].transpose(0, 2, 1)
            if cfg.v != 1.0:
                noise *= cfg.v
            return noise

        return thompson_draws(mean, draw, cfg, rng)


class LinUCB(_UCBRule, LinearPolicy):
    """Per-arm (disjoint) LinUCB (Li et al. 2010, Algorithm 1)."""

    name = "linucb"
    config_class = LinUCBConfig


class LinTS(_ThompsonRule, LinearPolicy):
    """Per-arm linear Thompson sampling (Agrawal & Goyal 2013) with exact propensities
    (:mod:`bandit_core.policies.exact_thompson`)."""

    name = "lints"
    config_class = LinTSConfig

    @classmethod
    def from_state(cls, state: PolicyState) -> LinearPolicy:
        if "n_sim" in state.config:  # states written before the propensities were exact
            state = PolicyState(
                state.policy,
                {k: v for k, v in state.config.items() if k != "n_sim"},
                state.arrays,
                state.schema_version,
            )
        return super().from_state(state)


class SharedLinUCB(_UCBRule, LinearPolicy):
    """LinUCB with one head on joint user/arm features (hybrid with an arm one-hot)."""

    name = "shared_linucb"
    config_class = SharedLinUCBConfig


class SharedLinTS(_ThompsonRule, LinearPolicy):
    """Linear Thompson sampling with one head on joint user/arm features."""

    name = "shared_lints"
    config_class = SharedLinTSConfig


class EpsilonGreedy(LinearPolicy):
    """ε-greedy on the posterior mean: exact propensities ``(1−ε)/|T| + ε/K``."""

    name = "epsilon_greedy"
    config_class = EpsilonGreedyConfig

    def _explore_one(
        self, mean: FloatArray, proj: FloatArray, heads: IntArray | None, rng: np.random.Generator
    ) -> tuple[int, FloatArray, FloatArray, float | None]:
        arm, probs = greedy_choice_one(mean, self.config.epsilon, rng)  # type: ignore[attr-defined]
        return arm, probs, mean, None

    def _explore(
        self, mean: FloatArray, proj: FloatArray, heads: IntArray | None, rng: np.random.Generator
    ) -> tuple[IntArray, FloatArray, FloatArray]:
        probs = greedy_probabilities(mean, self.config.epsilon)  # type: ignore[attr-defined]
        return sample_categorical(probs, rng), probs, mean
