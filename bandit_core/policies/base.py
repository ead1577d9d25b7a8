"""The ``Policy`` protocol and the input checks every policy shares."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from bandit_core._validation import (
    FloatArray,
    arm_id_text,
    as_float_matrix,
    as_float_vector,
    check_generator,
)
from bandit_core.types import Candidates, Decision, DecisionBatch, PolicyState


@runtime_checkable
class Policy(Protocol):
    """What serving, training and the benchmarks rely on.

    ``select`` never changes what the policy has learned (wrappers that track exposure
    are the one exception: exposure is part of their state); ``update`` is the only
    learning entry point. Randomness always comes from the ``rng`` argument.
    """

    model_version: str | None

    @property
    def name(self) -> str:
        """Policy name as used by the CLI and recorded with every decision."""
        ...

    def select(self, context: Any, candidates: Any, rng: np.random.Generator) -> Decision:
        """Choose one candidate for ``context`` (dim_user,)."""
        ...

    def select_batch(
        self, contexts: Any, candidates: Any, rng: np.random.Generator
    ) -> DecisionBatch:
        """Independent decisions for ``contexts`` (n, dim_user) over one candidate set,
        without learning in between (replay, OPE ``action_dist``, benchmarks)."""
        ...

    def update(self, context: Any, arm_id: Any, reward: Any, arm_features: Any = None) -> None:
        """Learn from one reward for the arm chosen in ``context``."""
        ...

    def update_batch(
        self, contexts: Any, arm_ids: Any, rewards: Any, arm_features: Any = None
    ) -> None:
        """Learn from ``n`` rewards in order; equal to ``n`` calls of ``update``."""
        ...

    def to_state(self) -> PolicyState:
        """Config and learned arrays, enough to rebuild the policy bit for bit."""
        ...


def fold_pending(policy: Any) -> None:
    """Fold what every layer of ``policy`` (it, its ``inner`` policies and their
    ``model``) keeps pending into its learned statistics — the observations a hybrid
    model learnt one at a time — as ``to_state`` would. Afterwards ``to_state`` only
    reads the policy, so it can run in another thread while the policy decides here."""
    layer = policy
    while layer is not None:
        for part in (layer, getattr(layer, "model", None)):
            fold = getattr(part, "fold", None)
            if callable(fold):
                fold()
        layer = getattr(layer, "inner", None)


def state_arm_ids(arrays: Mapping[str, Any], key: str = "arm_ids") -> list[str]:
    """A state's arm ids, each once: a repeated id gave its later head's slot to the
    earlier one, and the other arm fell back to the prior, deciding otherwise with no
    error (a tampered state, core helper, stop 53)."""
    ids = [str(a) for a in arrays[key]]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        repeated = next(a for a in ids if a in seen or seen.add(a))  # type: ignore[func-returns-value]
        raise ValueError(f"state array {key!r} names arm {repeated[:64]!r} more than once.")
    return ids


def arm_width(policy: Any) -> int:
    """``dim_arm`` of a policy's model (through wrappers, whose own configs — an overlap's
    floors — say nothing of it): the width of the features its candidates carry, 0 when
    it reads none (a per-arm model on the user context, a shared one without item
    features, a model without a configuration)."""
    while policy is not None:
        config = getattr(policy, "config", None)
        if config is not None and hasattr(config, "dim_arm"):
            if not getattr(config, "shared", True):
                return 0
            return int(getattr(config, "dim_arm", 0) or 0)
        policy = getattr(policy, "inner", None)
    return 0


def check_candidates(candidates: Any, dim_arm: int | None, owner: str | None = None) -> Candidates:
    """Accept a :class:`Candidates` or a sequence of ids; check the feature width.

    ``dim_arm`` None or 0 accepts any width, except that a model named as ``owner`` whose
    ``dim_arm`` is 0 refuses candidates that carry features: it would not read them (and
    its feature map cannot). Serving drops them first
    (:func:`bandit_core.policies.arm_features.candidates_for`)."""
    if not isinstance(candidates, Candidates):
        if isinstance(candidates, (Sequence, np.ndarray)) and not isinstance(candidates, str):
            return check_candidates(Candidates.from_any(list(candidates)), dim_arm)
        else:
            raise TypeError(
                "candidates must be a bandit_core.Candidates (or a sequence of arm ids); "
                f"got {type(candidates).__name__}."
            )
    if dim_arm is not None and dim_arm > 0 and candidates.dim != dim_arm:
        raise ValueError(
            f"candidates.features must have {dim_arm} columns (dim_arm); got {candidates.dim}."
        )
    if owner is not None and dim_arm == 0 and candidates.dim > 0:
        raise ValueError(
            f"{owner} uses no arm features (dim_arm = 0); got candidates with "
            f"{candidates.dim} features. Pass candidates without features, or train the "
            f"model with dim_arm = {candidates.dim}."
        )
    return candidates


def check_contexts(contexts: Any, dim_user: int | None) -> FloatArray:
    return as_float_matrix("contexts", contexts, n_cols=dim_user)


def check_context(context: Any, dim_user: int | None) -> FloatArray:
    return as_float_vector("context", context, dim_user)[None, :]


def check_updates(
    contexts: Any,
    arm_ids: Any,
    rewards: Any,
    arm_features: Any,
    dim_user: int | None,
    dim_arm: int,
) -> tuple[FloatArray, list[str], FloatArray, FloatArray]:
    """Validate a batch of feedback: ``(contexts (n, du), ids, rewards (n,), feats (n, da))``."""
    x = check_contexts(contexts, dim_user)
    n = x.shape[0]
    if isinstance(arm_ids, (str, bytes)) or not isinstance(arm_ids, (Sequence, np.ndarray)):
        raise ValueError(
            f"arm_ids must be a sequence of {n} arm ids; got {type(arm_ids).__name__}."
        )
    ids = [arm_id_text(a, "arm_ids") for a in arm_ids]
    if len(ids) != n:
        raise ValueError(f"arm_ids must have {n} entries (one per context); got {len(ids)}.")
    r = as_float_vector("rewards", rewards, n)
    if dim_arm > 0:
        if arm_features is None:
            raise ValueError(f"arm_features is required: the policy uses {dim_arm} arm features.")
        feats = as_float_matrix("arm_features", arm_features, n_cols=dim_arm, n_rows=n)
    else:
        feats = np.zeros((n, 0))
    return x, ids, r, feats


def batch_of(decision: Decision) -> DecisionBatch:
    """One decision as a batch of one (its standard error too), for a wrapper that mixes
    batches."""
    se = None if decision.propensity_se is None else np.array([decision.propensity_se])
    return DecisionBatch(
        np.array([decision.arm]),
        np.array([decision.propensity]),
        decision.probabilities[None],
        decision.scores[None],
        decision.policy,
        se,
    )


def to_decision(
    batch: DecisionBatch, candidates: Candidates, explored: bool, model_version: str | None
) -> Decision:
    arm = int(batch.arms[0])
    return Decision(
        arm=arm,
        arm_id=candidates.ids[arm],
        propensity=float(batch.propensities[0]),
        probabilities=batch.probabilities[0],
        scores=batch.scores[0],
        policy=batch.policy,
        explored=explored,
        model_version=model_version,
        propensity_se=None if batch.propensity_se is None else float(batch.propensity_se[0]),
    )


def check_rng(rng: Any) -> np.random.Generator:
    return check_generator(rng)
