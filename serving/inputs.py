"""Request bodies → arrays, with the checks that depend on settings or on the served
model. Every failure is an :class:`InputError` naming the field (answered as 422)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from bandit_core import Candidates
from eventstore.records import KeyedFirst
from serving.models.served import Signature
from serving.schemas import Candidate

Loc = tuple[str | int, ...]


class InputError(ValueError):
    """A request field is unacceptable; ``loc`` is its path as in FastAPI's 422 body."""

    def __init__(self, loc: Loc, message: str, value: object = None) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message
        self.value = value


@dataclass(frozen=True)
class DecisionInput:
    """One decision's input: the context, the candidates and the hashed user it is for
    (None without one; the policy's user-group floors read it)."""

    context: NDArray[np.float64]
    candidates: Candidates
    user_hash: str | None = None


def context_vector(
    context: Sequence[float] | dict[str, float], names: Sequence[str]
) -> NDArray[np.float64]:
    """The context as a vector; named features are ordered as in ``names``."""
    if not isinstance(context, dict):
        return np.asarray(context, dtype=np.float64)
    if not names:
        raise InputError(
            ("body", "context"),
            "context must be a vector: no feature names are configured "
            "(BANDITOPS_CONTEXT_FEATURES).",
        )
    unknown = sorted(set(context) - set(names))
    if unknown:
        raise InputError(
            ("body", "context", unknown[0]),
            f"unknown context feature {unknown[0]!r}; expected some of {', '.join(names)}.",
        )
    missing = [n for n in names if n not in context]
    if missing:
        raise InputError(
            ("body", "context", missing[0]), f"context feature {missing[0]!r} is missing."
        )
    return np.array([context[n] for n in names], dtype=np.float64)


def check_count(count: int, limit: int, loc: Loc, what: str) -> None:
    """422 at ``loc`` when ``count`` ``what`` (candidates, groups) exceed ``limit``."""
    if count > limit:
        raise InputError(loc, f"at most {limit} {what} are allowed; got {count}.")


def candidate_set(candidates: Sequence[Candidate], max_candidates: int) -> Candidates:
    """Validated candidates: at most ``max_candidates``, distinct ids, equal widths."""
    check_count(len(candidates), max_candidates, ("body", "candidates"), "candidates")
    width = len(candidates[0].features)
    seen: set[str] = set()
    for i, cand in enumerate(candidates):
        if cand.id in seen:
            raise InputError(
                ("body", "candidates", i, "id"), f"candidate id {cand.id!r} appears twice."
            )
        seen.add(cand.id)
        if len(cand.features) != width:
            raise InputError(
                ("body", "candidates", i, "features"),
                f"every candidate must have the same number of features ({width}, as "
                f"candidate 0); got {len(cand.features)}.",
            )
    flat = np.fromiter(
        itertools.chain.from_iterable(c.features for c in candidates),
        dtype=np.float64,
        count=len(candidates) * width,
    )
    return Candidates(tuple(c.id for c in candidates), flat.reshape(len(candidates), width))


def check_signature(inp: DecisionInput, signature: Signature) -> None:
    """The context and candidate widths the served model expects (a position-aware model
    adds its position one-hot itself: requests carry the item features only)."""
    du = signature.dim_user
    if du is not None and inp.context.shape[0] != du:
        raise InputError(
            ("body", "context"),
            f"context must have {du} features for the served model; got {inp.context.shape[0]}.",
        )
    width = signature.dim_arm
    if width > 0 and inp.candidates.dim != width:
        raise InputError(
            ("body", "candidates", 0, "features"),
            f"candidate features must have length {width} for the served model; got "
            f"{inp.candidates.dim}.",
        )


def check_slate(k: int | None, n_candidates: int, max_slate: int, position_slots: int = 0) -> None:
    """``k`` fits the candidates, ``max_slate`` and a position-aware model's slots."""
    if k is None:
        return
    limit = min(n_candidates, max_slate)
    if position_slots:
        limit = min(limit, position_slots)
    if k > limit:
        slots = f" and the served model's {position_slots} position slots" if position_slots else ""
        raise InputError(
            ("body", "k"),
            f"k must be at most {limit} (the number of candidates, at most {max_slate}{slots}); "
            f"got {k}.",
        )


def check_position(position: int | None, slate_length: int) -> None:
    """A rewarded position must be one of the decision's slate positions."""
    if position is not None and position >= slate_length:
        raise InputError(
            ("body", "position"),
            f"position must be below the decision's slate length ({slate_length}); got {position}.",
            position,
        )


def check_same_reward(
    key: str | None, value: float, position: int | None, first: KeyedFirst
) -> None:
    """A reward repeating an idempotency key must be the reward the key was first sent
    with: a key names one reward."""
    if not first.same(value, position):
        raise InputError(
            ("body", "idempotency_key"),
            f"idempotency_key {key!r} of this event was first sent with reward "
            f"{first.value!r} at position {first.position or 0}; this reward is {value!r} at "
            f"position {position or 0}. A key names one reward: send another reward with a "
            "key of its own.",
            key,
        )


def check_reward(value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise InputError(
            ("body", "reward"), f"reward must be in [{low:g}, {high:g}]; got {value!r}.", value
        )
