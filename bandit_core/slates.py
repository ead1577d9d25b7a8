"""Ranked slates from any policy, with the propensity of every shown item.

A slate of ``k`` positions is filled in turn: position j is the policy's own decision among
the candidates not yet shown (sequential selection without replacement),

    p_j(a | a_0..a_{j-1}, x) = π(a | x, R_j),    R_j = C ∖ {a_0, …, a_{j-1}},

so Thompson policies sample afresh for every position and UCB/ε-greedy policies take the
best remaining candidate with their usual exploration. This *conditional* propensity is
exact when the policy's per-step law is exact (UCB with uniform ties, ε-greedy, uniform,
exploration floors) and the policy's own Monte-Carlo estimate (its ``n_sim`` draws) when
it is not (Thompson sampling); the product over positions is the probability of the
ordered slate.

Position-wise off-policy evaluation (the Open Bandit Pipeline's ``position`` /
``len_list`` contract, whose logs carry the probability of each item *at its slot*) needs
the *marginal* law of every position,

    P(a at j | x) = Σ_{S ⊂ C, |S| = j} P(the first j positions are S) · π(a | x, C ∖ S),

where the per-step law depends on the prefix only through the set S it removed.
:func:`slate_marginals` evaluates this sum by dynamic programming over the reachable sets —
exact for exact per-step laws, one policy call per set — while they are few (a greedy
policy reaches one set per position), and switches to Rao-Blackwellised Monte Carlo over
``n_draws`` prefixes sampled from the exact law of the last level when they are not.

Position bias: with ``position_slots = L`` every candidate's features get a one-hot of the
position being filled appended, ``[x_arm ; e_j]`` (L extra columns), so a shared model
with ``dim_arm = d + L`` learns one bias coefficient per position (and, with
interactions, a per-position user term). Rewards are then learnt with the features of the
position the item was shown at (:func:`with_position`). A
:class:`~bandit_core.policies.position.PositionBias` policy carries its own ``L``: every
function here unwraps it and fills position j with its one-hot, so callers pass it like
any other policy.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from bandit_core._validation import (
    FloatArray,
    Interval,
    OptionalOf,
    as_float_vector,
    check_generator,
    validate_params,
)
from bandit_core.exploration import sample_categorical
from bandit_core.policies.arm_features import candidates_for
from bandit_core.policies.base import check_candidates
from bandit_core.policies.position import split_position, with_position
from bandit_core.policies.wrappers import decide_only, record_exposure
from bandit_core.types import (
    MARGINAL_DRAWS,
    MARGINAL_MAX_STATES,
    Candidates,
    Decision,
    DecisionBatch,
)

IntArray = NDArray[np.intp]


class Selector(Protocol):
    """What slates need of a policy: its two decision entry points."""

    def select(self, context: Any, candidates: Any, rng: np.random.Generator) -> Decision: ...

    def select_batch(
        self, contexts: Any, candidates: Any, rng: np.random.Generator
    ) -> DecisionBatch: ...


@dataclass(frozen=True)
class Slate:
    """A ranked slate and the propensities of its items.

    Attributes
    ----------
    ranking : ndarray of int, shape (k,)
        Candidate indices, position 0 first.
    ids : tuple of str, length k
        Their arm ids.
    propensities : ndarray of shape (k,)
        ``p_j(a_j | a_<j, x)``: probability of each position's item given the positions
        before it (exact, or the policy's Monte-Carlo estimate).
    step_probabilities : ndarray of shape (k, K)
        The policy's whole law at every position (0 for items already shown).
    decisions : tuple of Decision
        The policy's decision at every position (indices relative to the full set).
    marginals : ndarray of shape (K, k) or None
        ``P(candidate i at position j | x)`` when asked for (``action_dist`` of one round).
    """

    ranking: IntArray
    ids: tuple[str, ...]
    propensities: FloatArray
    step_probabilities: FloatArray
    decisions: tuple[Decision, ...]
    marginals: FloatArray | None = None

    @property
    def probability(self) -> float:
        """Probability of the whole ordered slate (product of the conditionals)."""
        return float(np.prod(self.propensities))

    @property
    def position_propensities(self) -> FloatArray | None:
        """``P(a_j at position j | x)`` of each shown item, shape (k,), or None."""
        if self.marginals is None:
            return None
        out: FloatArray = self.marginals[self.ranking, np.arange(self.ranking.shape[0])]
        return out


# ---------------------------------------------------------------------- position features
def _at_position(candidates: Candidates, position: int, slots: int | None) -> Candidates:
    if slots is None:
        return candidates
    return Candidates(candidates.ids, with_position(candidates.features, position, slots))


def _unwrap(policy: Any, position_slots: int | None) -> tuple[Any, int | None]:
    """A :class:`PositionBias` policy's inner model and slots; others as given."""
    inner, slots = split_position(policy)
    if slots is None:
        return policy, position_slots
    if position_slots is not None and position_slots != slots:
        raise ValueError(
            f"position_slots = {position_slots} contradicts the policy's own "
            f"position_slots = {slots}; leave it out."
        )
    return inner, slots


def _check_slate_args(
    context: Any, candidates: Any, k: int, position_slots: int | None
) -> tuple[FloatArray, Candidates]:
    cands = check_candidates(candidates, None)
    validate_params(
        "slate",
        {"k": k, "position_slots": position_slots},
        {"k": Interval(int, 1, len(cands)), "position_slots": OptionalOf(Interval(int, 1, None))},
    )
    if position_slots is not None and k > position_slots:
        raise ValueError(
            f"k must be at most position_slots = {position_slots} (one one-hot column per "
            f"position); got {k}."
        )
    return as_float_vector("context", context), cands


# ---------------------------------------------------------------------- selection
def select_slate(
    policy: Selector,
    context: Any,
    candidates: Any,
    k: int,
    rng: np.random.Generator,
    *,
    position_slots: int | None = None,
    marginal_draws: int = 0,
    max_states: int = MARGINAL_MAX_STATES,
) -> Slate:
    """Fill ``k`` positions in turn without replacement.

    Parameters
    ----------
    policy : Policy
        Any policy (or wrapper); each position is its decision with nothing recorded
        (:func:`~bandit_core.policies.wrappers.decide_only`), and an exposure cap inside
        counts the ``k`` items shown once the slate is whole.
    context : array-like of shape (dim_user,)
    candidates : Candidates
        K ≥ k candidates.
    k : int
        Slate length.
    rng : numpy Generator
    position_slots : int, optional
        Append a position one-hot of this width to the candidate features (position bias).
    marginal_draws : int
        0: no marginals. Otherwise the Monte-Carlo budget of :func:`slate_marginals`
        (unused while the dynamic programme stays exact).
    max_states : int
        Largest number of prefix sets the exact programme may keep per position.

    Returns
    -------
    Slate
    """
    policy, position_slots = _unwrap(policy, position_slots)
    x, cands = _check_slate_args(context, candidates, k, position_slots)
    cands = candidates_for(policy, cands)  # no features for models that use none
    rng = check_generator(rng)
    validate_params(
        "select_slate",
        {"marginal_draws": marginal_draws},
        {"marginal_draws": Interval(int, 0, None)},
    )
    n = len(cands)
    remaining = np.arange(n)
    ranking = np.empty(k, dtype=np.intp)
    props = np.empty(k)
    steps = np.zeros((k, n))
    decisions = []
    for j in range(k):
        subset = _at_position(cands, j, position_slots).subset(remaining)
        d = decide_only(policy, x, subset, rng)  # exposure recorded once the slate is whole
        chosen = int(remaining[d.arm])
        ranking[j] = chosen
        props[j] = d.propensity
        steps[j, remaining] = d.probabilities
        decisions.append(
            Decision(
                arm=chosen,
                arm_id=cands.ids[chosen],
                propensity=d.propensity,
                probabilities=steps[j].copy(),
                scores=_spread(d.scores, remaining, n),
                policy=d.policy,
                explored=d.explored,
                model_version=d.model_version,
                propensity_se=d.propensity_se,
            )
        )
        remaining = np.delete(remaining, d.arm)
    marginals = None
    if marginal_draws > 0:
        marginals = slate_marginals(
            policy,
            x,
            cands,
            k,
            rng,
            n_draws=marginal_draws,
            max_states=max_states,
            position_slots=position_slots,
        )
    # an exposure cap counts the k items shown only now: recorded position by position,
    # the cap moved mid-slate and the marginals (taken after) read items just shown as
    # capped, logging 0 where the true probability was 0.25 (audit, stop 55)
    for shown in ranking:
        record_exposure(policy, cands.ids[shown])
    return Slate(
        ranking=ranking,
        ids=tuple(cands.ids[i] for i in ranking),
        propensities=props,
        step_probabilities=steps,
        decisions=tuple(decisions),
        marginals=marginals,
    )


def _spread(values: FloatArray, index: IntArray, n: int) -> FloatArray:
    out = np.full(n, -np.inf)
    out[index] = values
    return out


# ---------------------------------------------------------------------- marginals
def slate_marginals(
    policy: Selector,
    context: Any,
    candidates: Any,
    k: int,
    rng: np.random.Generator,
    *,
    n_draws: int = MARGINAL_DRAWS,
    max_states: int = MARGINAL_MAX_STATES,
    position_slots: int | None = None,
) -> FloatArray:
    """``P(candidate i at position j | x)`` of the sequential slate, shape (K, k).

    Every column sums to 1. Exact (for exact per-step laws) while every position has at
    most ``max_states`` reachable prefix sets; from the first position with more, the
    remaining positions are estimated from ``n_draws`` prefixes drawn from the exact law of
    the sets reached so far, adding each prefix's whole next-step law (Rao-Blackwellised:
    lower variance than counting the sampled item). The policy is called once per distinct
    set, through ``select_batch`` (which never records exposure).
    """
    policy, position_slots = _unwrap(policy, position_slots)
    x, cands = _check_slate_args(context, candidates, k, position_slots)
    cands = candidates_for(policy, cands)  # no features for models that use none
    rng = check_generator(rng)
    validate_params(
        "slate_marginals",
        {"n_draws": n_draws, "max_states": max_states},
        {"n_draws": Interval(int, 1, None), "max_states": Interval(int, 1, None)},
    )
    n = len(cands)
    marginals = np.zeros((n, k))
    states: dict[frozenset[int], float] = {frozenset(): 1.0}
    for j in range(k):
        law = _StepLaw(policy, x, _at_position(cands, j, position_slots), rng)
        following: defaultdict[frozenset[int], float] = defaultdict(float)
        for shown, weight in states.items():
            remaining, probs = law(shown)
            marginals[remaining, j] += weight * probs
            if j + 1 < k:
                for item, p in zip(remaining.tolist(), probs.tolist(), strict=True):
                    if p > 0.0:
                        following[shown | {item}] += weight * p
        if j + 1 < k and len(following) > max_states:
            _monte_carlo(
                policy, x, cands, j + 1, k, following, marginals, rng, n_draws, position_slots
            )
            break
        states = dict(following)
    return marginals


def _monte_carlo(
    policy: Selector,
    x: FloatArray,
    cands: Candidates,
    start: int,
    k: int,
    exact: dict[frozenset[int], float],
    marginals: FloatArray,
    rng: np.random.Generator,
    n_draws: int,
    position_slots: int | None,
) -> None:
    """Positions ``start..k-1`` of :func:`slate_marginals` by simulated prefixes."""
    sets = list(exact)
    weights = np.fromiter(exact.values(), dtype=np.float64, count=len(sets))
    drawn = sample_categorical(np.broadcast_to(weights, (n_draws, len(sets))), rng)
    prefixes = [sets[i] for i in drawn]
    for j in range(start, k):
        law = _StepLaw(policy, x, _at_position(cands, j, position_slots), rng)
        groups: defaultdict[frozenset[int], list[int]] = defaultdict(list)
        for t, shown in enumerate(prefixes):
            groups[shown].append(t)
        for shown, members in groups.items():
            remaining, probs = law(shown)
            marginals[remaining, j] += (len(members) / n_draws) * probs
            if j + 1 < k:
                picks = sample_categorical(
                    np.broadcast_to(probs, (len(members), probs.shape[0])), rng
                )
                for t, pick in zip(members, picks.tolist(), strict=True):
                    prefixes[t] = shown | {int(remaining[pick])}


class _StepLaw:
    """``π(· | x, C ∖ shown)`` at one position, one policy call per distinct set."""

    def __init__(
        self, policy: Selector, x: FloatArray, cands: Candidates, rng: np.random.Generator
    ) -> None:
        self.policy, self.x, self.cands, self.rng = policy, x[None, :], cands, rng
        self.everyone = np.arange(len(cands))

    def __call__(self, shown: frozenset[int]) -> tuple[IntArray, FloatArray]:
        if shown:
            remaining = np.setdiff1d(self.everyone, np.fromiter(shown, dtype=np.intp))
        else:
            remaining = self.everyone
        batch = self.policy.select_batch(self.x, self.cands.subset(remaining), self.rng)
        return remaining, np.asarray(batch.probabilities[0], dtype=np.float64)


def slate_action_dist(
    policy: Selector,
    contexts: Any,
    candidates: Any,
    len_list: int,
    rng: np.random.Generator,
    *,
    n_draws: int = MARGINAL_DRAWS,
    max_states: int = MARGINAL_MAX_STATES,
    position_slots: int | None = None,
) -> FloatArray:
    """A policy's ``action_dist`` (n_rounds, n_actions, len_list) as a slate policy.

    Row i is :func:`slate_marginals` for ``contexts[i]``: the evaluation distribution of
    position-wise off-policy estimators (each slot's column sums to 1).
    """
    x = np.asarray(contexts, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"contexts must be a (n_rounds, dim_user) matrix; got shape {x.shape}.")
    cands = check_candidates(candidates, None)
    out = np.empty((x.shape[0], len(cands), len_list))
    for i in range(x.shape[0]):
        out[i] = slate_marginals(
            policy,
            x[i],
            cands,
            len_list,
            rng,
            n_draws=n_draws,
            max_states=max_states,
            position_slots=position_slots,
        )
    return out
