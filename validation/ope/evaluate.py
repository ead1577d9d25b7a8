"""Evaluate a ``bandit_core`` policy on a logged batch with every estimator."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bandit_core import Candidates, Policy
from bandit_core._validation import (
    FloatArray,
    Interval,
    as_float_matrix,
    as_float_vector,
    check_generator,
    check_known_options,
    validate_params,
)
from bandit_core.policies.arm_features import candidates_for
from bandit_core.policies.overlap import for_users
from bandit_core.policies.position import split_position
from bandit_core.slates import slate_marginals
from bandit_core.types import MARGINAL_DRAWS, MARGINAL_MAX_STATES
from validation.ope.bootstrap import (
    BOOTSTRAP_PARAMS,
    INTERVAL,
    LEVEL,
    N_RESAMPLES,
    bootstrap_means,
    extra_draws,
    resampled_interval,
)
from validation.ope.estimate import Estimate, estimate, round_terms
from validation.ope.inputs import BanditFeedback, check_feedback
from validation.ope.report import OPEReport
from validation.ope.reward_models import (
    CrossFitRewardModel,
    RidgeModel,
    design_rows,
    fold_ids,
    predict_all_actions,
)
from validation.ope.spec import MODEL_BASED, SPECS, check_estimator_name

IntArray = NDArray[np.intp]

#: Estimators run by default, in report order (replay only on uniformly random logs).
DEFAULT_ESTIMATORS: tuple[str, ...] = tuple(SPECS)


@dataclass(frozen=True)
class LoggedBatch:
    """A window of logged decisions that share one candidate set.

    Parameters
    ----------
    contexts : array-like (n_rounds, dim_user)
        User context of each decision.
    candidates : bandit_core.Candidates
        The shared candidate set (ids and ``(n_actions, dim_arm)`` features).
    actions : array-like (n_rounds,)
        Logged arm of each decision: an index into ``candidates`` or an arm id.
    rewards : array-like (n_rounds,)
    pscore : array-like (n_rounds,)
        Logging propensity of the logged arm, in (0, 1].
    positions : array-like of int (n_rounds,), optional
        Slot of the logged arm in a ranked list of ``len_list`` slots; default 0.
    len_list : int
        Number of slots (1 for single-arm decisions).
    available : array-like of bool (n_rounds, n_actions), optional
        Which of the candidates each decision could choose from, when candidate sets vary
        per decision (``candidates`` is then their union); every logged action must be
        available in its own row. Default: every candidate, every row.
    user_hashes : sequence of str or None (n_rounds,), optional
        The hashed user of each decision (None without one): the evaluation policy
        decides for that user (:func:`bandit_core.policies.overlap.for_users`, its
        user-group floors). Default: no user known.

    The arrays are validated and stored as float64 / intp on construction.
    """

    contexts: FloatArray
    candidates: Candidates
    actions: IntArray
    rewards: FloatArray
    pscore: FloatArray
    positions: IntArray | None = None
    len_list: int = 1
    available: NDArray[np.bool_] | None = None
    user_hashes: tuple[str | None, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.candidates, Candidates):
            raise TypeError(
                "candidates must be a bandit_core.Candidates; "
                f"got {type(self.candidates).__name__}."
            )
        validate_params(
            "LoggedBatch", {"len_list": self.len_list}, {"len_list": Interval(int, 1, None)}
        )
        x = as_float_matrix("contexts", self.contexts)
        n = x.shape[0]
        if n == 0:
            raise ValueError("contexts must hold at least one logged decision; got 0 rows.")
        object.__setattr__(self, "contexts", x)
        object.__setattr__(self, "actions", _arm_indices(self.actions, self.candidates, n))
        # estimators average rewards and divide by propensities: any finite value is fine
        # (contexts, which reward models factor, keep the library's MAX_ABS_INPUT)
        rewards = as_float_vector("rewards", self.rewards, n, bound=None)
        object.__setattr__(self, "rewards", rewards)
        object.__setattr__(self, "pscore", as_float_vector("pscore", self.pscore, n, bound=None))
        pos = np.zeros(n, dtype=np.intp) if self.positions is None else np.asarray(self.positions)
        if pos.shape != (n,) or pos.dtype.kind not in "iu":
            raise ValueError(
                f"positions must be {n} integers (one per context); got shape {pos.shape}, "
                f"dtype {pos.dtype}."
            )
        bad = (pos < 0) | (pos >= self.len_list)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"positions must be in [0, len_list = {self.len_list}); got {pos[i]} at index {i}."
            )
        object.__setattr__(self, "positions", pos.astype(np.intp))
        if self.available is not None:
            mask = np.asarray(self.available)
            k = len(self.candidates)
            if mask.shape != (n, k) or mask.dtype != np.bool_:
                raise ValueError(
                    f"available must be a boolean array of shape ({n}, {k}); got dtype "
                    f"{mask.dtype} and shape {mask.shape}."
                )
            missing = ~mask[np.arange(n), self.actions]
            if missing.any():
                i = int(np.flatnonzero(missing)[0])
                raise ValueError(
                    f"available must include each row's logged action; row {i} logged "
                    f"{self.candidates.ids[self.actions[i]]!r}, which it marks unavailable."
                )
            object.__setattr__(self, "available", mask)
        if self.user_hashes is not None:
            users = tuple(self.user_hashes)
            if len(users) != n or not all(h is None or isinstance(h, str) for h in users):
                raise ValueError(
                    f"user_hashes must hold {n} user hashes (str, or None without a user; one "
                    f"per context); got {len(users)} entries."
                )
            object.__setattr__(self, "user_hashes", users)

    @property
    def n_rounds(self) -> int:
        return int(self.contexts.shape[0])

    def fingerprint(self) -> str:
        """SHA-256 of every array and the candidate ids: equal batches, equal digests."""
        digest = hashlib.sha256()
        for arr in (
            self.contexts,
            self.candidates.features,
            self.actions,
            self.rewards,
            self.pscore,
            self.positions,
            *(() if self.available is None else (self.available,)),
        ):
            a = np.ascontiguousarray(arr)
            digest.update(str((a.dtype.str, a.shape)).encode())
            digest.update(a.tobytes())
        digest.update("\x1f".join(self.candidates.ids).encode())
        digest.update(str(self.len_list).encode())
        if self.user_hashes is not None:
            digest.update("\x1f".join(h or "" for h in self.user_hashes).encode())
        return digest.hexdigest()

    def is_uniform(self) -> bool:
        """True when every logged propensity is 1 / n_actions (a uniformly random log)."""
        return bool(np.allclose(self.pscore, 1.0 / len(self.candidates), rtol=1e-9, atol=0.0))


def _arm_indices(actions: Any, candidates: Candidates, n: int) -> IntArray:
    arr = np.asarray(actions)
    if arr.shape != (n,):
        raise ValueError(f"actions must have shape ({n},) (one per context); got {arr.shape}.")
    k = len(candidates)
    if arr.dtype.kind in "iu":
        bad = (arr < 0) | (arr >= k)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"actions must index the {k} candidates; got {arr[i]} at index {i}.")
        return arr.astype(np.intp)
    lookup = {arm: j for j, arm in enumerate(candidates.ids)}
    out = np.empty(n, dtype=np.intp)
    for i, arm in enumerate(arr.tolist()):
        j = lookup.get(str(arm))
        if j is None:
            raise ValueError(f"actions[{i}] = {arm!r} is not a candidate id.")
        out[i] = j
    return out


def policy_action_dist(policy: Policy, batch: LoggedBatch, rng: np.random.Generator) -> FloatArray:
    """The evaluation policy's ``action_dist`` (n_rounds, n_actions, len_list) on the batch.

    ``policy.select_batch(...).probabilities`` (n_rounds, n_actions) is the policy's
    choice distribution on every logged context (a Monte-Carlo estimate over the policy's
    ``n_sim`` draws for Thompson policies). With several slots the same distribution is
    used at every slot: the policy is evaluated as if it chose each slot's arm
    independently of the slot, the Open Bandit Pipeline's position-independent case.
    With per-row ``available`` candidates, rows that share a candidate set are decided
    together over that set and every other action gets probability 0. With
    ``user_hashes``, each row is decided for its user (:func:`for_users`).
    """
    if batch.available is None:
        probs = np.asarray(
            _for_rows(policy, batch, slice(None))
            .select_batch(batch.contexts, candidates_for(policy, batch.candidates), rng)
            .probabilities,
            dtype=np.float64,
        )
    else:
        probs = np.zeros((batch.n_rounds, len(batch.candidates)))
        masks, inverse = np.unique(batch.available, axis=0, return_inverse=True)
        for g in range(masks.shape[0]):
            rows = np.flatnonzero(inverse.ravel() == g)
            cols = np.flatnonzero(masks[g])
            subset = candidates_for(policy, batch.candidates.subset(cols))
            sub = _for_rows(policy, batch, rows).select_batch(batch.contexts[rows], subset, rng)
            probs[np.ix_(rows, cols)] = sub.probabilities
    expected = (batch.n_rounds, len(batch.candidates))
    if probs.shape != expected:
        raise ValueError(
            f"policy.select_batch returned probabilities of shape {probs.shape}; "
            f"expected {expected}."
        )
    return np.repeat(probs[:, :, None], batch.len_list, axis=2)


def _for_rows(policy: Policy, batch: LoggedBatch, rows: Any) -> Policy:
    """``policy`` deciding for the users of ``batch``'s ``rows`` (itself without users)."""
    if batch.user_hashes is None:
        return policy
    return for_users(policy, [batch.user_hashes[i] for i in np.arange(batch.n_rounds)[rows]])


def slate_policy_action_dist(
    policy: Policy,
    batch: LoggedBatch,
    rng: np.random.Generator,
    *,
    n_draws: int = MARGINAL_DRAWS,
    max_states: int = MARGINAL_MAX_STATES,
) -> FloatArray:
    """The ``action_dist`` (n_rounds, n_actions, len_list) of ``policy`` *as a slate
    policy*: column j of row t is the probability that its sequential slate (positions
    filled in turn without replacement, :func:`bandit_core.slates.select_slate`) shows
    each candidate at position j in context t — the marginals of
    :func:`bandit_core.slates.slate_marginals` (exact while few prefix sets are reachable,
    else Monte Carlo over ``n_draws`` prefixes).

    This is the evaluation distribution of position-wise estimators when the log holds
    one round per shown item with its position and the marginal logging propensity at it
    (the Open Bandit Pipeline's ``position`` / ``len_list`` contract); a position-aware
    policy (:class:`bandit_core.PositionBias`) scores each position with its one-hot.
    Rows with the same context, available candidates and user (the rows of one logged
    slate) are computed once; each row's slate is decided for its user
    (``user_hashes``). A row with fewer available candidates than ``len_list`` (or a
    policy with fewer position slots) gets probability 0 at the positions it cannot fill.
    """
    rng = check_generator(rng)
    n, k, slots = batch.n_rounds, len(batch.candidates), batch.len_list
    _, own_slots = split_position(policy)
    if own_slots is not None:
        slots = min(slots, own_slots)
    out = np.zeros((n, k, batch.len_list))
    everyone = np.arange(k)
    done: dict[tuple[bytes, bytes, str | None], FloatArray] = {}
    for t in range(n):
        cols = everyone if batch.available is None else np.flatnonzero(batch.available[t])
        user = None if batch.user_hashes is None else batch.user_hashes[t]
        key = (batch.contexts[t].tobytes(), cols.tobytes(), user)
        block = done.get(key)
        if block is None:
            block = slate_marginals(
                _for_rows(policy, batch, [t]),
                batch.contexts[t],
                batch.candidates.subset(cols),
                min(slots, cols.shape[0]),
                rng,
                n_draws=n_draws,
                max_states=max_states,
            )
            done[key] = block
        out[t, cols, : block.shape[1]] = block
    return out


def default_reward_model() -> CrossFitRewardModel:
    """3-fold cross-fitted ridge regression (α = 1), one model per slot."""
    return CrossFitRewardModel(lambda: RidgeModel(alpha=1.0), n_folds=3, per_position=True)


def evaluate_policy(
    policy: Policy,
    batch: LoggedBatch,
    rng: np.random.Generator,
    *,
    estimators: Sequence[str] | None = None,
    reward_model: CrossFitRewardModel | None = None,
    n_resamples: int = N_RESAMPLES,
    level: float = LEVEL,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    slates: bool = False,
    feedback_out: list[BanditFeedback] | None = None,
) -> OPEReport:
    """Off-policy estimates of ``policy``'s value on ``batch``, with intervals.

    ``feedback_out``, when given, receives the feedback the estimates read (for a paired
    comparison of two policies on the same rounds: :func:`paired_difference`).

    Parameters
    ----------
    policy : bandit_core.Policy
        The evaluation policy; only ``select_batch`` is called (it does not learn).
    batch : LoggedBatch
        The logged window.
    rng : numpy.random.Generator
        Drives the policy's sampling, the cross-fitting folds, replay and the bootstrap.
    estimators : sequence of str, optional
        Default: :data:`DEFAULT_ESTIMATORS` (replay is skipped, with a note, unless the
        log is uniformly random).
    reward_model : CrossFitRewardModel, optional
        For the model-based estimators; default :func:`default_reward_model`. Its
        features are ``[context ; arm features ; arm one-hot]``.
    n_resamples, level : int, float
        Bootstrap resamples and interval coverage.
    options : mapping of estimator name to its options, optional
        Options of the evaluated estimators (:data:`validation.ope.spec.SPECS`), e.g.
        ``{"ips": {"clip": 50.0}, "switch_dr": {"lambda_": 10.0}}``; an estimator's λ
        left out (or None) is tuned by estimated MSE.
    slates : bool
        Evaluate ``policy`` as a ranker of ``len_list`` positions
        (:func:`slate_policy_action_dist`, position-wise) instead of one choice used at
        every slot (:func:`policy_action_dist`); the same when ``len_list`` is 1.

    Returns
    -------
    OPEReport

    Notes
    -----
    The bootstrap resamples rounds with the reward model, the tuned λ and the policy's
    Monte-Carlo ``action_dist`` held fixed: it measures the estimator's sampling noise
    given them. DM's interval in particular omits the model's own estimation error.
    """
    if not isinstance(batch, LoggedBatch):
        raise TypeError(f"batch must be a LoggedBatch; got {type(batch).__name__}.")
    rng = check_generator(rng)
    validate_params(
        "evaluate_policy", {"n_resamples": n_resamples, "level": level}, BOOTSTRAP_PARAMS
    )
    notes: list[str] = []
    names = list(estimators) if estimators is not None else list(DEFAULT_ESTIMATORS)
    for name in names:
        check_estimator_name(name)
    per_estimator = _estimator_options(options, names)
    if "replay" in names and not batch.is_uniform():
        if estimators is not None:
            raise ValueError(
                "replay was requested but the log is not uniformly random "
                "(pscore != 1 / n_actions)."
            )
        names.remove("replay")
        notes.append("replay skipped: the log is not uniformly random.")

    if slates and batch.len_list > 1:
        action_dist = slate_policy_action_dist(policy, batch, rng)
        notes.append(f"position-wise: the policy ranks {batch.len_list} positions.")
    else:
        action_dist = policy_action_dist(policy, batch, rng)
    q_hat = None
    if any(n in MODEL_BASED for n in names):
        model = reward_model if reward_model is not None else default_reward_model()
        k = len(batch.candidates)
        feats = np.hstack([batch.candidates.features, np.eye(k)])
        q_hat = model.fit_predict(
            batch.contexts,
            batch.actions,
            batch.rewards,
            feats,
            batch.positions,
            batch.len_list,
            rng=rng,
        )
        notes.append(
            f"reward model: {model.n_folds}-fold cross-fitted, per_position={model.per_position}."
        )
    fb: BanditFeedback = check_feedback(
        batch.rewards, batch.actions, batch.pscore, action_dist, batch.positions, q_hat
    )
    if feedback_out is not None:
        feedback_out.append(fb)
    results: dict[str, Estimate] = {}
    for name in names:
        results[name] = estimate(
            name, fb, rng, n_resamples=n_resamples, level=level, **per_estimator.get(name, {})
        )
    label = policy.name if policy.model_version is None else f"{policy.name}@{policy.model_version}"
    return OPEReport(label, batch.n_rounds, batch.fingerprint(), results, tuple(notes))


def evaluate_policy_in_blocks(
    policy: Policy,
    blocks: Sequence[LoggedBatch],
    rng: np.random.Generator,
    *,
    estimators: Sequence[str] | None = None,
    reward_model: CrossFitRewardModel | None = None,
    n_resamples: int = N_RESAMPLES,
    level: float = LEVEL,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    slates: bool = False,
    feedback_out: list[BanditFeedback] | None = None,
) -> OPEReport:
    """:func:`evaluate_policy` on a window given as consecutive blocks, each a
    :class:`LoggedBatch` over its own candidates: memory stays one block's, whatever the
    number of distinct candidates in the window (a window of 5,000 rows offering 25,000
    distinct ids made the dense arrays tens of GB).

    Every estimator reads a round's importance weight, the model's reward of its logged
    action and the model's value of the policy on it, ``Σ_a π(a|x) q̂(x, a)``; each block
    computes these three and the estimators run on them as a two-action feedback (the
    logged action, and the rest with the policy's remaining probability and the model's
    remaining value) — the same estimates, intervals and weights as the dense arrays
    would give. Replay, which draws among every action, is not run. The reward model
    (cross-fitted over all rounds) sees ``[context ; arm features]``: an arm one-hot
    would be as wide as the candidates.
    """
    if not blocks or not all(isinstance(b, LoggedBatch) for b in blocks):
        raise TypeError("blocks must be a non-empty sequence of LoggedBatch.")
    rng = check_generator(rng)
    validate_params(
        "evaluate_policy_in_blocks", {"n_resamples": n_resamples, "level": level}, BOOTSTRAP_PARAMS
    )
    names = list(estimators) if estimators is not None else list(DEFAULT_ESTIMATORS)
    for name in names:
        check_estimator_name(name)
    notes = [f"evaluated in {len(blocks)} blocks, each over its own candidates."]
    if "replay" in names:
        if estimators is not None:
            raise ValueError("replay draws among every action: it is not run in blocks.")
        names.remove("replay")
    per_estimator = _estimator_options(options, names)
    slots = max(b.len_list for b in blocks)
    if slates and slots > 1:
        notes.append(f"position-wise: the policy ranks up to {slots} positions.")
    rewards = np.concatenate([b.rewards for b in blocks])
    positions = np.concatenate([b.positions for b in blocks])
    pscore = np.concatenate([b.pscore for b in blocks])
    n = rewards.shape[0]
    fitted = None
    if any(name in MODEL_BASED for name in names):
        model = reward_model if reward_model is not None else default_reward_model()
        fold = fold_ids(n, model.n_folds, rng)
        train_x = np.vstack(
            [design_rows(b.contexts, b.candidates.features, b.actions) for b in blocks]
        )
        fitted = model.fit_folds(train_x, rewards, positions, fold, slots)
        notes.append(
            f"reward model: {model.n_folds}-fold cross-fitted on [context ; arm features], "
            f"per_position={model.per_position}."
        )
    # one block's distributions and predictions at a time, kept as three numbers a round
    pi_logged, q_logged, value = np.zeros(n), np.zeros(n), np.zeros(n)
    start = 0
    for b in blocks:
        here, r = slice(start, start + b.n_rounds), np.arange(b.n_rounds)
        d = (
            slate_policy_action_dist(policy, b, rng)
            if slates and b.len_list > 1
            else policy_action_dist(policy, b, rng)
        )
        pi_logged[here] = d[r, b.actions, b.positions]
        if fitted is not None:
            q = predict_all_actions(fitted, b.contexts, b.candidates.features, fold[here], slots)
            q_logged[here] = q[r, b.actions, b.positions]
            value[here] = (d[r, :, b.positions] * q[r, :, b.positions]).sum(axis=1)
        start += b.n_rounds
    q_hat = None
    if fitted is not None:
        rest = 1.0 - pi_logged
        q_rest = np.divide(value - pi_logged * q_logged, rest, out=np.zeros(n), where=rest > 1e-12)
        q_hat = np.repeat(np.stack([q_logged, q_rest], axis=1)[:, :, None], slots, axis=2)
    pi0 = np.clip(pi_logged, 0.0, 1.0)
    compact = np.repeat(np.stack([pi0, 1.0 - pi0], axis=1)[:, :, None], slots, axis=2)
    fb = check_feedback(rewards, np.zeros(n, dtype=np.intp), pscore, compact, positions, q_hat)
    if feedback_out is not None:
        feedback_out.append(fb)
    results = {
        name: estimate(
            name, fb, rng, n_resamples=n_resamples, level=level, **per_estimator.get(name, {})
        )
        for name in names
    }
    digest = hashlib.sha256("\x1f".join(b.fingerprint() for b in blocks).encode()).hexdigest()
    label = policy.name if policy.model_version is None else f"{policy.name}@{policy.model_version}"
    return OPEReport(label, n, digest, results, tuple(notes))


def _estimator_options(
    options: Mapping[str, Mapping[str, Any]] | None, names: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """``options`` checked against the estimators run: known names, mappings, each
    estimator's option names (the values are checked by the estimator)."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ValueError(
            f"options must map estimator names to their options; got {type(options).__name__}."
        )
    out: dict[str, dict[str, Any]] = {}
    for name, given in options.items():
        check_estimator_name(name)
        if name not in names:
            raise ValueError(
                f"options name {name!r}, which is not evaluated here; evaluated: "
                f"{', '.join(names)}."
            )
        if not isinstance(given, Mapping):
            raise ValueError(
                f"options[{name!r}] must be a mapping of option names to values; got {given!r}."
            )
        check_known_options(name, given, tuple(SPECS[name].options))
        out[name] = dict(given)
    return out


@dataclass(frozen=True)
class PairedDifference:
    """The candidate's value minus production's under one estimator, on the same logged
    rounds, with a paired bootstrap interval: each resample draws the same rounds for
    both, so the noise they share (the same users, the same rewards) cancels.

    Comparing the candidate's lower bound with production's point estimate ignored both
    production's noise and the pairing: on seeded windows an equal candidate passed 7.7 %
    of the time (3.0 % paired), and one truly better (0.32 against 0.30) 12 % (100 %
    paired; OPE helper, stop 55)."""

    estimator: str
    value: float
    ci_low: float
    ci_high: float
    level: float
    n_resamples: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimator": self.estimator,
            "value": self.value,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "level": self.level,
            "n_resamples": self.n_resamples,
        }


def paired_difference(
    candidate: BanditFeedback,
    production: BanditFeedback,
    estimator: str,
    rng: np.random.Generator,
    *,
    n_resamples: int = N_RESAMPLES,
    level: float = LEVEL,
    interval: str = INTERVAL,
    **options: Any,
) -> PairedDifference:
    """``estimator``'s value of the candidate minus production's, from the feedback each
    was estimated on (:func:`evaluate_policy`'s ``feedback_out``: the same rounds), with
    a bootstrap interval (``interval``: :data:`validation.ope.bootstrap.INTERVALS`) over
    resamples that draw the same rounds for both. The event-adjusted one (opt-in) adds
    one more event to both on the same round: with rare rewards the percentile
    interval's lower bound passed an equal candidate in 6.3 % of windows for a nominal
    2.5 %, the event-adjusted one in 3.3 % (``benchmarks.interval_coverage``, 10,000
    rows)."""
    if candidate.n_rounds != production.n_rounds or not np.array_equal(
        candidate.reward, production.reward
    ):
        raise ValueError(
            "candidate and production must be estimated on the same rounds; got "
            f"{candidate.n_rounds} and {production.n_rounds} rounds with other rewards."
        )
    rng = check_generator(rng)
    validate_params(
        "paired_difference",
        {"n_resamples": n_resamples, "level": level, "interval": interval},
        BOOTSTRAP_PARAMS,
    )
    terms = [round_terms(estimator, fb, rng, **options) for fb in (candidate, production)]
    seed = int(rng.integers(0, 2**63 - 1))
    # the same seed draws the same resampled rounds for both (bootstrap_means)
    means = [bootstrap_means(t, np.random.default_rng(seed), n_resamples) for t in terms]
    extra = extra_draws(rng, n_resamples, interval)
    low, high = resampled_interval(terms, means, extra, level, signs=(1.0, -1.0))
    return PairedDifference(
        estimator, terms[0].value() - terms[1].value(), low, high, float(level), int(n_resamples)
    )
