"""Guaranteed overlap as part of a policy: exploration floors (global and per segment),
a cold-start floor for arms the model has not seen, and exposure caps, with exact
propensities.

Off-policy evaluation of any other policy on tomorrow's logs needs every logging
propensity bounded away from 0. :class:`Overlap` wraps a trained policy so that the
policy the retrain registers carries that bound itself. For a decision over K
candidates, with ``p`` the inner policy's probabilities (after the exposure cap, when
one is set), ``M`` the candidates the model has not seen and

* ``w_u = min(1, K · p_min(x))`` where ``p_min(x)`` is the larger of the global
  ``floor`` and the floor of the decision's segment (``segment_floors``): keyed by the
  value of context feature ``segment_feature`` written ``f"{value:g}"``, or by the
  hashed user group ``group_<g>`` of the decision's user among ``segment_user_groups``
  groups (:func:`bandit_core.user_groups.user_group`; a decision without a user gets
  the global floor);
* ``w_c = min(cold_start_max_share, |M| · cold_start_floor, 1 − w_u)``,

the decision is uniform over the K candidates with probability ``w_u``, uniform over
``M`` with probability ``w_c`` and the inner policy's otherwise, so exactly

    π(a | x) = (1 − w_u − w_c) p(a) + w_u / K + w_c · 1[a ∈ M] / |M|  ≥  min(p_min(x), 1/K).

An unseen candidate gets at least ``p_min(x) + w_c / |M|``. The exposure cap
(:class:`~bandit_core.policies.wrappers.ExposureCap`, an inner layer) removes arms over
their share before the inner policy decides; the floor still gives them ``p_min(x)``:
the floor wins, since without it the logs lose support for those arms.

The set of seen arms is part of the state (arms of every update and rebuild), so the
propensity is exact given the state, as the cap's history is.

A user group is not in the context: the caller says whom a policy decides for with
:func:`for_users` (the service for each request's user, the offline evaluation for the
logged rows' users), which returns the policy itself unless it has user-group floors.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from bandit_core._validation import (
    Constraint,
    FloatArray,
    FloorMap,
    Interval,
    OptionalOf,
    arm_id_text,
    check_known_options,
    validate_params,
)
from bandit_core.montecarlo import mixture_se
from bandit_core.policies.base import (
    Policy,
    batch_of,
    check_candidates,
    check_rng,
    to_decision,
)
from bandit_core.policies.wrappers import (
    DelegatingWrapper,
    ExposureCap,
    _nest,
    _restore_inner,
    decide_only,
)
from bandit_core.types import Candidates, Decision, DecisionBatch, PolicyState
from bandit_core.user_groups import group_key, group_of_key, user_group


@dataclass(frozen=True)
class OverlapConfig:
    """The overlap options of a trained policy (``make_policy`` takes them by name).

    Parameters
    ----------
    floor : float in [0, 1]
        Every candidate's probability is at least this (0: no global floor).
    segment_feature : int or None
        Index of the context feature whose value names a decision's segment.
    segment_user_groups : int or None
        Number of hashed user groups that name a decision's segment instead
        (:func:`bandit_core.user_groups.user_group`; exclusive with ``segment_feature``).
    segment_floors : mapping of str to float in (0, 1]
        Floor of each segment (``f"{value:g}"`` of the segment feature, e.g. ``"1"``, or
        ``group_<g>`` of a user group, e.g. ``"group_3"``); a segment not listed, and a
        decision without a user, gets ``floor``.
    cold_start_floor : float in [0, 1]
        Extra probability of each candidate the model has not seen (0: none).
    cold_start_max_share : float in (0, 1]
        Most probability the unseen candidates take together.
    exposure_cap : float in (0, 1] or None
        No arm may take more than this share of the last ``exposure_window`` decisions.
    exposure_window, exposure_min_decisions : int
        The cap's history length and the decisions before it applies.
    """

    floor: float = 0.0
    segment_feature: int | None = None
    segment_user_groups: int | None = None
    segment_floors: Mapping[str, float] = field(default_factory=dict)
    cold_start_floor: float = 0.0
    cold_start_max_share: float = 0.2
    exposure_cap: float | None = None
    exposure_window: int = 1000
    exposure_min_decisions: int = 100

    @classmethod
    def constraints(cls) -> dict[str, Constraint]:
        """The constraint of every field (the contract suite checks that none is missing)."""
        return {
            "floor": Interval(float, 0.0, 1.0),
            "segment_feature": OptionalOf(Interval(int, 0, None)),
            "segment_user_groups": OptionalOf(Interval(int, 1, None)),
            "segment_floors": FloorMap(),
            "cold_start_floor": Interval(float, 0.0, 1.0),
            "cold_start_max_share": Interval(float, 0.0, 1.0, closed="right"),
            "exposure_cap": OptionalOf(Interval(float, 0.0, 1.0, closed="right")),
            "exposure_window": Interval(int, 1, None),
            "exposure_min_decisions": Interval(int, 0, None),
        }

    def __post_init__(self) -> None:
        validate_params("Overlap", asdict(self), self.constraints())
        object.__setattr__(
            self, "segment_floors", {str(k): float(v) for k, v in self.segment_floors.items()}
        )
        groups = self.segment_user_groups
        if self.segment_feature is not None and groups is not None:
            raise ValueError(
                "The 'segment_feature' and 'segment_user_groups' parameters of Overlap are "
                "exclusive (a segment is a context feature's value or a hashed user group); "
                f"got segment_feature={self.segment_feature!r} and "
                f"segment_user_groups={groups!r}."
            )
        if self.segment_floors and self.segment_feature is None and groups is None:
            raise ValueError(
                "The 'segment_floors' parameter of Overlap needs segment_feature (the context "
                "feature naming the segment) or segment_user_groups (the number of hashed user "
                f"groups); got segment_floors={dict(self.segment_floors)!r} and neither."
            )
        if groups is not None:
            bad = [k for k in self.segment_floors if group_of_key(k, groups) is None]
            if bad:
                raise ValueError(
                    "The 'segment_floors' parameter of Overlap must be keyed by user group, "
                    f"'{group_key(0)}' to '{group_key(groups - 1)}' (segment_user_groups = "
                    f"{groups}); got {bad[0]!r}."
                )

    @property
    def floors(self) -> bool:
        """Whether any floor (global, segment or cold start) is set."""
        return bool(self.floor > 0 or self.segment_floors or self.cold_start_floor > 0)

    def to_json(self) -> dict[str, Any]:
        """The options as JSON (only those that differ from the defaults)."""
        default = OverlapConfig()
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value != getattr(default, f.name):
                out[f.name] = dict(value) if isinstance(value, Mapping) else value
        return out


#: The option names ``make_policy`` routes to :class:`Overlap` rather than the policy.
OVERLAP_OPTIONS: tuple[str, ...] = tuple(f.name for f in fields(OverlapConfig))


def split_overlap_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(policy options, overlap options)`` of one options mapping."""
    inner = {k: v for k, v in options.items() if k not in OVERLAP_OPTIONS}
    overlap = {k: v for k, v in options.items() if k in OVERLAP_OPTIONS}
    return inner, overlap


def with_overlap(policy: Policy, **options: Any) -> Policy:
    """``policy`` with the overlap options (:class:`OverlapConfig`) applied: an
    :class:`ExposureCap` inner layer when ``exposure_cap`` is set, an :class:`Overlap`
    when a floor is set; ``policy`` itself when neither."""
    check_known_options("Overlap", options, OVERLAP_OPTIONS)
    config = OverlapConfig(**options)
    out = policy
    if config.exposure_cap is not None:
        out = ExposureCap(
            out, config.exposure_cap, config.exposure_window, config.exposure_min_decisions
        )
    if config.floors:
        out = Overlap(out, config)
    return out


def _dim_user(policy: Any) -> int | None:
    """The context width ``policy`` reads (through its wrappers), when it says."""
    config = getattr(policy, "config", None)
    dim = getattr(config, "dim_user", None) or getattr(policy, "dim_user", None)
    return dim if isinstance(dim, int) else None


def segment_key(value: float) -> str:
    """The segment name of a context feature's value (``f"{value:g}"``: 1.0 → ``"1"``);
    −0.0 is segment ``"0"`` (it was ``"-0"``, and its floor silently skipped)."""
    return f"{float(value) + 0.0:g}"


class Overlap(DelegatingWrapper):
    """Exploration floors (global, per segment) and a cold-start floor around a policy.

    Parameters
    ----------
    inner : Policy
    config : OverlapConfig
        Its floors (the exposure fields are the inner :class:`ExposureCap`'s, see
        :func:`with_overlap`).
    seen : iterable of str
        Arm ids the model has learnt from (grows with every update).
    """

    kind = "overlap"

    def __init__(self, inner: Policy, config: OverlapConfig | None = None, seen: Any = ()) -> None:
        super().__init__(inner)
        self.config = OverlapConfig() if config is None else config
        if not isinstance(self.config, OverlapConfig):
            raise TypeError(f"config must be an OverlapConfig; got {type(config).__name__}.")
        self.seen: set[str] = {str(a) for a in seen}
        feature, dim = self.config.segment_feature, _dim_user(inner)
        if feature is not None and dim is not None and feature >= dim:
            raise ValueError(
                f"segment_feature must index the context (dim_user = {dim}, features 0 to "
                f"{dim - 1}); got {feature}."
            )
        #: The user group of each decision (n,) or of all of them (1,), −1 without a user;
        #: set on a copy by :func:`for_users`, None: no user known (the global floor).
        self.user_groups: np.ndarray | None = None

    # ------------------------------------------------------------------ the law
    def floor_of(self, contexts: FloatArray) -> FloatArray:
        """``p_min(x)`` of each row of ``contexts`` (n, dim_user) (and of its user's
        group, :func:`for_users`)."""
        cfg = self.config
        out = np.full(contexts.shape[0], cfg.floor)
        if cfg.segment_user_groups is not None and self.user_groups is not None:
            return self._group_floors(out, cfg.segment_user_groups, self.user_groups)
        if cfg.segment_feature is not None and cfg.segment_floors:
            if cfg.segment_feature >= contexts.shape[1]:
                raise ValueError(
                    f"segment_feature {cfg.segment_feature} is outside the context "
                    f"({contexts.shape[1]} features)."
                )
            column = contexts[:, cfg.segment_feature]
            for i, value in enumerate(column):
                seg = cfg.segment_floors.get(segment_key(value))
                if seg is not None:
                    out[i] = max(out[i], seg)
        return out

    def _group_floors(self, out: FloatArray, groups: int, of_rows: np.ndarray) -> FloatArray:
        n = out.shape[0]
        if of_rows.shape[0] not in (1, n):
            raise ValueError(
                f"the policy decides for {of_rows.shape[0]} users (for_users) but got {n} "
                "contexts; give one user per context, or one for all of them."
            )
        of_rows = np.broadcast_to(of_rows, (n,))
        for key, seg in self.config.segment_floors.items():
            rows = of_rows == group_of_key(key, groups)
            out[rows] = np.maximum(out[rows], seg)
        return out

    def decision_parts(self, ids: Sequence[str]) -> dict[int, Any]:
        """The arms seen, for a decision copy among ``ids``
        (:func:`~bandit_core.policies.decision_copy.decision_copy`): those of ``ids``."""
        return {id(self.seen): {a for a in ids if a in self.seen}}

    def new_mask(self, candidates: Candidates) -> np.ndarray:
        """Boolean mask (K,) of the candidates the model has not seen."""
        if self.config.cold_start_floor <= 0:
            return np.zeros(len(candidates), dtype=bool)
        return np.fromiter(
            (a not in self.seen for a in candidates.ids), dtype=bool, count=len(candidates)
        )

    def _mix(
        self, batch: DecisionBatch, contexts: FloatArray, new: np.ndarray, rng: np.random.Generator
    ) -> tuple[DecisionBatch, np.ndarray]:
        n, k = batch.probabilities.shape
        floors = self.floor_of(contexts)
        w_u = np.minimum(1.0, k * floors)
        # the floor itself, not (K · floor) / K, which rounds below it (exploration.mix_uniform)
        uniform_share = np.where(w_u < 1.0, floors, w_u / k)
        n_new = int(new.sum())
        w_c = np.zeros(n)
        if n_new:
            share = min(self.config.cold_start_max_share, n_new * self.config.cold_start_floor)
            w_c = np.minimum(share, 1.0 - w_u)
        probs = (1.0 - w_u - w_c)[:, None] * batch.probabilities + uniform_share[:, None]
        if n_new:
            new_share = np.where(
                w_c == n_new * self.config.cold_start_floor,
                self.config.cold_start_floor,
                w_c / n_new,
            )
            probs = probs + new_share[:, None] * new[None, :]
        u = rng.random(n)
        uniform_arm = rng.integers(0, k, size=n)
        arms = np.where(u < w_u, uniform_arm, batch.arms)
        if n_new:
            new_index = np.flatnonzero(new)
            new_arm = new_index[rng.integers(0, n_new, size=n)]
            arms = np.where((u >= w_u) & (u < w_u + w_c), new_arm, arms)
        arms = arms.astype(np.intp)
        rows = np.arange(n)
        se = mixture_se(batch, arms, 1.0 - w_u - w_c)
        out = DecisionBatch(arms, probs[rows, arms], probs, batch.scores, self.name, se)
        return out, arms != batch.arms

    # ------------------------------------------------------------------ Policy
    def decide(self, context: Any, candidates: Any, rng: np.random.Generator) -> Decision:
        cands = check_candidates(candidates, None)
        # an exposure cap inside counts the arm served (select), which the floor may change
        inner = decide_only(self.inner, context, cands, rng)
        batch = batch_of(inner)
        x = np.asarray(context, dtype=np.float64).reshape(1, -1)
        mixed, switched = self._mix(batch, x, self.new_mask(cands), check_rng(rng))
        return to_decision(mixed, cands, inner.explored or bool(switched[0]), self.model_version)

    def select_batch(
        self, contexts: Any, candidates: Any, rng: np.random.Generator
    ) -> DecisionBatch:
        cands = check_candidates(candidates, None)
        batch = self.inner.select_batch(contexts, cands, rng)
        if batch.arms.size == 0:
            return batch
        x = np.asarray(contexts, dtype=np.float64).reshape(batch.probabilities.shape[0], -1)
        return self._mix(batch, x, self.new_mask(cands), check_rng(rng))[0]

    def update(self, context: Any, arm_id: Any, reward: Any, arm_features: Any = None) -> None:
        self.inner.update(context, arm_id, reward, arm_features)
        self.seen.add(arm_id_text(arm_id))

    def update_batch(
        self, contexts: Any, arm_ids: Any, rewards: Any, arm_features: Any = None
    ) -> None:
        self.inner.update_batch(contexts, arm_ids, rewards, arm_features)
        self.seen.update(arm_id_text(a, "arm_ids") for a in arm_ids)

    def rebuild(self, contexts: Any, arm_ids: Any, rewards: Any, arm_features: Any = None) -> None:
        """The inner model's rebuild from these rows (their arms count as seen)."""
        self.inner.rebuild(contexts, arm_ids, rewards, arm_features)  # type: ignore[attr-defined]
        self.seen.update(arm_id_text(a, "arm_ids") for a in arm_ids)

    def to_state(self) -> PolicyState:
        config = {"overlap": self.config.to_json()}
        extra = {"seen": np.array(sorted(self.seen), dtype=np.str_)}
        return _nest(self.inner.to_state(), config, "overlap", extra)

    @classmethod
    def from_state(cls, state: PolicyState) -> Overlap:
        config = OverlapConfig(**state.config["overlap"])
        seen = [str(a) for a in state.arrays["seen"]]
        return cls(_restore_inner(state), config, seen)


def for_users(policy: Policy, user_hashes: Sequence[str | None]) -> Policy:
    """``policy`` deciding for these users: one user hash per decision of a
    ``select_batch`` (or one for every decision, and for a ``select``); None where a
    decision has no user.

    When ``policy`` has user-group floors (an :class:`Overlap` with
    ``segment_user_groups``, through stateless wrappers such as position bias), a shallow
    copy of it whose :class:`Overlap` knows each decision's group; it shares the
    policy's learned state, so updates and exposure are the policy's own. Otherwise
    ``policy`` itself: decisions of every other policy are untouched.

    Raises ``TypeError`` when ``user_hashes`` is not a sequence of str / None, and
    ``ValueError`` when an exposure cap wraps the floors (its cursor would be copied).
    """
    if isinstance(user_hashes, (str, bytes)) or not isinstance(user_hashes, (Sequence, np.ndarray)):
        raise TypeError(
            "user_hashes must be a sequence of user hashes (str, or None without a user); "
            f"got {type(user_hashes).__name__}."
        )
    outer: list[Any] = []
    layer: Any = policy
    while not isinstance(layer, Overlap):
        outer.append(layer)
        layer = layer.__dict__.get("inner") if hasattr(layer, "__dict__") else None
        if layer is None:
            return policy
    groups = layer.config.segment_user_groups
    if groups is None or not layer.config.segment_floors:
        return policy
    codes = []
    for i, h in enumerate(user_hashes):
        if h is not None and not isinstance(h, str):
            raise TypeError(f"user_hashes[{i}] must be a str or None; got {type(h).__name__}.")
        codes.append(-1 if not h else user_group(h, groups))
    bound: Any = copy.copy(layer)
    bound.user_groups = np.asarray(codes, dtype=np.intp)
    for wrapper in reversed(outer):
        if isinstance(wrapper, ExposureCap):
            raise ValueError(
                f"for_users cannot bind users through {wrapper.name!r}: an exposure cap "
                "around the floors would fork its history (make_policy puts it inside)."
            )
        bound_outer = copy.copy(wrapper)
        bound_outer.inner = bound
        bound = bound_outer
    out: Policy = bound
    return out


def floor_of_policy(policy: Any) -> dict[str, Any] | None:
    """The overlap options of ``policy`` (through wrappers) as JSON, or None without any."""
    out: dict[str, Any] = {}
    while policy is not None:
        if isinstance(policy, Overlap):
            out.update(policy.config.to_json())
        elif isinstance(policy, ExposureCap):
            out.update(
                exposure_cap=policy.max_share,
                exposure_window=policy.window,
                exposure_min_decisions=policy.min_decisions,
            )
        policy = policy.__dict__.get("inner") if hasattr(policy, "__dict__") else None
    return out or None
