"""One decision, or a ranked slate, from a policy (or the fallback).

Slates are filled position by position without replacement
(:func:`bandit_core.slates.select_slate`): the log carries each position's conditional
propensity (their product is the slate's probability) and, with
``marginal_draws > 0``, each shown item's marginal probability at its position (what
position-wise off-policy evaluation needs). New catalog items among the candidates get
the exploration floor of :class:`bandit_core.coldstart.ColdStartFloor`. A model that
models position bias (:class:`bandit_core.PositionBias`, with its own ``position_slots``)
sees every candidate with the one-hot of the position being filled; the floor goes
between the position one-hot and the model, so its propensities stay exact.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bandit_core import Candidates, ColdStartFloor, Decision, select_slate
from bandit_core.policies.arm_features import candidates_for
from bandit_core.policies.position import split_position, with_position
from eventstore.records import DecisionRow
from serving.inputs import DecisionInput
from serving.settings import Settings


@dataclass(frozen=True)
class Choice:
    """The first decision, plus the slate when ``k`` was asked for.

    ``ranking`` holds candidate indices, best first; ``slate_propensities[j]`` is the
    probability of position j given positions 0..j-1 (their product is the probability
    of the whole slate). Position 0's propensity is the decision's propensity.
    ``position_propensities[j]`` is the probability that the item at position j is shown
    there (marginal over the positions before it), when computed.
    """

    decision: Decision
    ranking: tuple[int, ...] | None = None
    slate_propensities: tuple[float, ...] | None = None
    position_propensities: tuple[float, ...] | None = None


@dataclass(frozen=True)
class ChoiceOptions:
    """How a request is decided beyond the policy itself (from settings and catalog)."""

    marginal_draws: int = 0
    max_states: int = Settings.model_fields["slate_max_states"].default
    new_ids: frozenset[str] = frozenset()
    new_p_min: float = Settings.model_fields["new_item_p_min"].default
    new_max_share: float = Settings.model_fields["new_item_max_share"].default


def choose(
    policy: Any,
    context: NDArray[np.float64],
    candidates: Candidates,
    rng: np.random.Generator,
    k: int | None = None,
    options: ChoiceOptions | None = None,
) -> Choice:
    """``policy.select`` once, or a slate of ``k`` without replacement."""
    opts = options or ChoiceOptions()
    candidates = candidates_for(policy, candidates)  # the log keeps the request's features
    selector, slots = split_position(policy)
    new_ids = opts.new_ids.intersection(candidates.ids)
    if new_ids:
        selector = ColdStartFloor(selector, opts.new_p_min, new_ids, opts.new_max_share)
    if k is None:
        if slots is not None:
            candidates = Candidates(candidates.ids, with_position(candidates.features, 0, slots))
        return Choice(selector.select(context, candidates, rng))
    slate = select_slate(
        selector,
        context,
        candidates,
        k,
        rng,
        position_slots=slots,
        marginal_draws=opts.marginal_draws,
        max_states=opts.max_states,
    )
    marginal = slate.position_propensities
    return Choice(
        slate.decisions[0],
        tuple(int(i) for i in slate.ranking),
        tuple(float(p) for p in slate.propensities),
        None if marginal is None else tuple(float(p) for p in marginal),
    )


def new_event_id(at: datetime) -> str:
    """A decision's event id: a UUID of version 7 in hex (RFC 9562: the Unix time in
    milliseconds, then 74 random bits), so that a replica that cannot find an event yet
    knows when it was made (:func:`event_time`)."""
    ms = int(at.timestamp() * 1000) & (2**48 - 1)
    rand = int.from_bytes(secrets.token_bytes(10), "big")
    value = (ms << 80) | (0x7 << 76) | ((rand >> 68) & 0xFFF) << 64
    value |= (0b10 << 62) | (rand & (2**62 - 1))
    return f"{value:032x}"


def event_time(event_id: str) -> datetime | None:
    """When the decision of ``event_id`` was made, for an id of :func:`new_event_id`'s
    form; None for any other (an id of an older release, or made up)."""
    if len(event_id) != 32 or event_id[12] != "7" or event_id[16] not in "89ab":
        return None
    try:
        ms = int(event_id[:12], 16)
    except ValueError:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC)


def decision_row(
    inp: DecisionInput,
    choice: Choice,
    *,
    fallback: bool,
    model_version: str | None,
    user_hash: str | None,
    traffic: str,
    count_impressions: bool,
    **extra: Any,
) -> DecisionRow:
    """The log row of a choice: a new event id, now, the candidates and the decision
    (with its slate when there is one); ``extra`` adds the retrieval or group fields."""
    d = choice.decision
    now = datetime.now(UTC)
    return DecisionRow(
        event_id=new_event_id(now),
        created_at=now,
        user_hash=user_hash,
        context=inp.context,
        candidate_ids=inp.candidates.ids,
        candidate_features=inp.candidates.features,
        chosen=d.arm,
        propensity=d.propensity,
        propensity_se=_finite_or_none(d.propensity_se),
        probabilities=np.asarray(d.probabilities, dtype=np.float64),
        scores=np.asarray(d.scores, dtype=np.float64),
        policy=d.policy,
        model_version=None if fallback else model_version,
        traffic=traffic,
        fallback=fallback,
        explored=bool(d.explored),
        ranking=choice.ranking,
        slate_propensities=choice.slate_propensities,
        position_propensities=choice.position_propensities,
        count_impressions=count_impressions,
        **extra,
    )


def _finite_or_none(value: float | None) -> float | None:
    """A Monte-Carlo propensity's standard error as logged: None when exact (or not a
    finite number, which no column should hold)."""
    return None if value is None or not math.isfinite(value) else float(value)
