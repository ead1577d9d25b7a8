"""Request and response bodies of the HTTP API (pydantic v2).

Numbers are strict (a JSON string is not a number) and finite (``NaN``/``Infinity``
tokens are rejected); unknown fields are rejected. Checks that depend on the served
model or on settings (dimensions, number of candidates, reward range) run in the
service and answer 422 in the same format, naming the field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

from eventstore import records
from eventstore.schema import ARM_ID_LENGTH, EVENT_ID_LENGTH
from eventstore.text import text_problem
from eventstore.workspace import EARLIEST, LATEST

FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
#: A list whose validation stops at its first bad element: a 1 MiB body of 250,000 bad
#: elements made as many errors, 3–11 s of the event loop and a 28–77 MB answer (audit,
#: stop 55); one is enough to name the field.
Floats = Annotated[list[FiniteFloat], Field(fail_fast=True)]


def clean_text(value: str) -> str:
    """``value`` unless it holds a NUL character or a lone surrogate (neither can be
    stored in PostgreSQL text nor encoded as UTF-8).

    Raises
    ------
    ValueError
    """
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _in_range(value: datetime) -> datetime:
    if not EARLIEST <= value <= LATEST:
        raise ValueError(f"must be between {EARLIEST.isoformat()} and {LATEST.isoformat()}")
    return value


Text = Annotated[str, AfterValidator(clean_text)]
#: An item, group or user id: as long as the store's id columns hold.
Identifier = Annotated[
    str, Field(min_length=1, max_length=ARM_ID_LENGTH), AfterValidator(clean_text)
]
EventId = Annotated[
    str, Field(min_length=1, max_length=EVENT_ID_LENGTH), AfterValidator(clean_text)
]
Timestamp = Annotated[AwareDatetime, AfterValidator(_in_range)]


def _context_kind(value: object) -> str:
    return "named" if isinstance(value, dict) else "vector"


#: A vector, or named features; the error of the matching form only is reported, at
#: ``context.vector[...]`` or ``context.named[...]``.
Context = Annotated[
    Annotated[Floats, Tag("vector")] | Annotated[dict[Text, FiniteFloat], Tag("named")],
    Discriminator(_context_kind),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Candidate(_Strict):
    """One candidate arm."""

    id: Identifier
    features: Floats = Field(
        default_factory=list, description="Feature vector (dim_arm floats); may be empty."
    )


class Retrieve(_Strict):
    """Take the candidates from the item catalog: the top ``k`` by inner product."""

    k: int = Field(ge=1, strict=True, description="Candidates to retrieve (1..max_retrieve).")
    query: Floats | None = Field(
        default=None,
        description="Retrieval vector (the catalog's embedding width); default: the context.",
    )


class DecisionRequest(_Strict):
    """Ask for a decision among ``candidates`` (or the ``retrieve``d catalog items) for a
    user with ``context``."""

    context: Context = Field(
        description="User context: a vector of dim_user floats, or named features "
        "(names configured in BANDITOPS_CONTEXT_FEATURES)."
    )
    candidates: Annotated[list[Candidate], Field(fail_fast=True)] | None = Field(
        default=None, min_length=1, description="Candidate arms (1..max); or use retrieve."
    )
    retrieve: Retrieve | None = Field(
        default=None, description="Retrieve the candidates from the item catalog instead."
    )
    k: int | None = Field(
        default=None, ge=1, strict=True, description="Return a ranked slate of k arms."
    )
    user_id: Identifier | None = Field(
        default=None, description="Stored only as a salted hash; keys the rollout split."
    )

    @model_validator(mode="after")
    def _one_source(self) -> DecisionRequest:
        if (self.candidates is None) == (self.retrieve is None):
            raise ValueError("give exactly one of candidates and retrieve.")
        return self


class Group(_Strict):
    """One group (e.g. a title) and its variants (e.g. its artworks)."""

    id: Identifier
    variants: Annotated[list[Candidate], Field(fail_fast=True)] = Field(
        min_length=1, description="Variants (1..max)."
    )


class GroupedDecisionRequest(_Strict):
    """Choose one variant for every group, for a user with ``context``."""

    context: Context
    groups: Annotated[list[Group], Field(fail_fast=True)] = Field(
        min_length=1, description="Groups (1..max_groups)."
    )
    user_id: Identifier | None = None


class GroupChoice(BaseModel):
    group_id: str
    event_id: str = Field(description="Quote it when sending this group's reward.")
    arm_id: str = Field(description="The chosen variant.")
    propensity: float = Field(description="Probability of this variant in its group.")
    propensity_se: float | None = Field(
        default=None, description="Its standard error when a Monte-Carlo estimate, else null."
    )
    explored: bool
    policy: str = Field(description="The policy that chose this group's variant.")
    fallback: bool = Field(
        description="Whether the fallback chose it (no model, the model failed on these "
        "variants, or the request's deadline had passed)."
    )


class GroupedDecisionResponse(BaseModel):
    request_id: str
    groups: list[GroupChoice]
    model_version: str | None = Field(
        description="The served model's version when it chose at least one group, else null."
    )
    policy: str = Field(
        description="The model's policy when it chose at least one group, else the fallback's."
    )
    fallback: bool = Field(description="Whether the fallback chose any group.")
    traffic: str


class DecisionResponse(BaseModel):
    event_id: str = Field(description="Quote it when sending the reward.")
    arm_id: str = Field(description="The chosen arm (first of the ranking for a slate).")
    propensity: float = Field(description="Probability that this arm was chosen, in (0, 1].")
    propensity_se: float | None = Field(
        default=None,
        description="Standard error of the propensity when it is a Monte-Carlo estimate "
        "(Thompson sampling over shared or neural heads); null when it is exact.",
    )
    ranking: list[str] | None = Field(default=None, description="The slate, best first.")
    slate_propensities: list[float] | None = Field(
        default=None,
        description="Probability of each slate position given the positions before it.",
    )
    position_propensities: list[float] | None = Field(
        default=None,
        description="Probability of each shown item at its position (marginal).",
    )
    candidates: list[str] | None = Field(
        default=None, description="The retrieved candidates (with retrieve)."
    )
    model_version: str | None
    policy: str
    explored: bool
    fallback: bool = Field(description="True when the fallback policy decided.")
    traffic: str = Field(description="Rollout arm of the request: production or candidate.")


class RewardRequest(_Strict):
    """The reward of an earlier decision."""

    event_id: EventId
    reward: FiniteFloat
    position: int | None = Field(
        default=None,
        ge=0,
        strict=True,
        description="Slate position rewarded (default 0): the item shown there learns the "
        "reward, with that position's bias term when the model has one.",
    )
    timestamp: Timestamp | None = Field(
        default=None,
        description="When the reward happened (default: when received); stored, while the "
        "reward window is judged on the time the service received the reward.",
    )
    idempotency_key: EventId | None = Field(
        default=None,
        description="The client's name for this reward, unique within its event: a reward "
        "sent again with the same key (its first answer was lost) is answered as the first "
        "was and stored once; with another value or position it is refused (422). Without "
        "one, a reward sent again is another reward of the event (under the sum rule it "
        "counts again).",
    )


class RewardResponse(BaseModel):
    event_id: str
    status: str = Field(description=f"One of: {', '.join(records.STATUSES)}.")
    applied: bool = Field(
        description="Whether the served heads learn from it (the deciding model's, or, "
        "when that version is no longer served, those whose training window stops before "
        "the decision): false for every status but applied, and for an applied reward "
        "whose update the deciding head refused (one it cannot make in float64; counted "
        "in banditops_head_update_failures_total)."
    )
    model_version: str | None


class ServedModelInfo(BaseModel):
    version: str
    policy: str
    source: str
    loaded_at: str
    applied_rewards: int
    last_reward_id: int
    head: dict[str, float | int | None] | None


class ModelInfo(BaseModel):
    ready: bool
    fallback_active: bool
    fallback_policy: str
    production: ServedModelInfo | None
    candidate: ServedModelInfo | None
    candidate_share: float
    load_failures: int = Field(
        0, description="Polls that kept the served version (source unreachable, bad version)."
    )
    last_load_error: str | None = Field(None, description="Why the last such poll failed.")
    no_production: str | None = Field(
        None,
        description="Set while the model source has no production version: where it was "
        "looked up (the registered model, its alias and the registry), so a mistyped "
        "registry or alias is seen, not only the fallback it leaves serving.",
    )
    store_degraded: bool = Field(
        False, description="The event store is unreachable; events go to the local journal."
    )
    journal_events: int = Field(0, description="Journaled events not yet in the event store.")
