"""Tables of the event store (SQLAlchemy 2 declarative models).

``decisions``
    One row per served decision: everything needed to rebuild the features and to
    evaluate any other policy later — the hashed user, the context, every candidate with
    its features, the chosen arm and its propensity, all choice probabilities, the slate
    (if one was asked for), and which policy and model version served it on which
    traffic arm of the rollout.
``rewards``
    Every reward received, in arrival order (``id``). ``ordinal`` numbers the rewards of
    one event (0 = the first); ``UNIQUE(event_id, ordinal)`` makes "applied at most once"
    hold even with several writer processes. ``applied`` says whether the online head of
    the deciding model learnt from it; ``status`` says why not. A reward may carry the
    client's ``idempotency_key`` (unique per event): sent again with it, it is answered
    as the first was, and nothing more is stored.
``head_snapshots``
    The online state of a served model version after its rewards up to
    ``last_reward_id`` (a :func:`bandit_core.save_policy` ``.npz``, never pickle). A
    large state is written in parts, each in a transaction of its own, so that no event
    waits behind the whole of it: the state is then the ``head_snapshot_parts`` named by
    ``parts_key``, in ``seq`` order, followed by ``state``. The snapshot's row is written
    last: parts without a row are an unfinished snapshot, which nothing reads.
``head_snapshot_parts``
    The leading parts of large snapshots (see above).
``items``
    The catalog as it is now: one row per item with its current version, features,
    optional retrieval embedding, whether it is retired, and its impressions (how often
    it was shown: new items get an exploration floor until they have enough).
``item_versions``
    Every version of every item, append-only; ``seq`` numbers the catalog's changes in
    order. A decision logs the version of each candidate (``candidate_versions``), so it
    can be re-featurised exactly as served. Retention deletes the versions superseded
    before the horizon (each item's current version is kept).
``catalog_horizon``
    One row: the ``seq`` before which retention has deleted superseded item versions.
    The catalog as it was at an older ``seq`` can no longer be listed.
``service_leases``
    One row per running serving process (:mod:`eventstore.leases`): its name, where it
    runs, whether it takes itself for the store's only writer, and until when (by the
    store's clock) its claim holds unless renewed.
``rollouts``
    One row per staged rollout of a registry version (:mod:`eventstore.rollouts`): its
    current stage and traffic share (what every service replica reads at its poll) and
    its status (``running`` until it is promoted, rolled back, stopped or expired).
``rollout_steps``
    The audit of every rollout decision, append-only: the action, the stage and share,
    and the numbers it was taken on (per-arm counts and means, the difference and its
    confidence-sequence interval).

Slates, groups and retrieval add to ``decisions``: ``position_propensities`` (the
marginal probability of each shown item at its slot), ``request_id`` and ``group_id``
(one decision per group of a grouped request), and ``catalog_seq`` /
``candidate_versions`` / ``retrieval`` (what retrieval produced). A reward may name the
``position`` clicked.

The Alembic migrations in :mod:`eventstore.migrations` create exactly these tables;
a test compares the two.

The column lists of the other layers are derived from these tables (a new column
reaches them without editing them):

* :meth:`eventstore.records.DecisionRow.params` (and the reward and snapshot rows) fill
  every column but the auto-increment key from the record's attribute of the same name;
* the replay frame (:data:`eventstore.replay.COLUMNS`) carries every column of
  ``decisions`` (:func:`replay_columns`) but the key, the shape columns and those marked
  ``info={REPLAY: False}``, followed by its few computed reward columns.

A float-array column (``LargeBinary``, see :func:`eventstore.types.encode_floats`) names
the integer columns that hold its shape: ``info={SHAPE: ("dim_user",)}``. The writer
fills a shape column from the array's shape, the replay decodes the array with it.

Adding a field to a decision: the column here (``info={REPLAY: False}`` keeps it out of
training), an Alembic migration (:mod:`eventstore.migrations.versions`), the field of
:class:`eventstore.records.DecisionRow` (its import refuses a column without one), and
where the service fills it (:func:`serving.decide.decision_row`, or the request schema
when the client sends it).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bandit_core.user_groups import USER_HASH_MAX_CHARS
from eventstore.contract import VERSION_LENGTH
from eventstore.types import UTCDateTime

#: SQLite only auto-increments an ``INTEGER PRIMARY KEY``; PostgreSQL gets a bigint.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: ``Column.info`` key: the names of the integer columns holding a float array's shape.
SHAPE = "shape"
#: ``Column.info`` key: False for a ``decisions`` column the replay frame leaves out.
REPLAY = "replay"
_NOT_IN_REPLAY = {REPLAY: False}

EVENT_ID_LENGTH = 64
ARM_ID_LENGTH = 256
SNAPSHOT_KEY_LENGTH = 32
#: A served version's incarnation (``serving.models.sources.ModelRef.incarnation``).
INCARNATION_LENGTH = 64
LEASE_TOKEN_LENGTH = 32


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class DecisionEvent(Base):
    __tablename__ = "decisions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(EVENT_ID_LENGTH), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    user_hash: Mapped[str | None] = mapped_column(String(USER_HASH_MAX_CHARS))
    dim_user: Mapped[int] = mapped_column(Integer)
    context: Mapped[bytes] = mapped_column(LargeBinary, info={SHAPE: ("dim_user",)})
    n_candidates: Mapped[int] = mapped_column(Integer)
    dim_arm: Mapped[int] = mapped_column(Integer)
    candidate_ids: Mapped[list[str]] = mapped_column(JSON)
    candidate_features: Mapped[bytes] = mapped_column(
        LargeBinary, info={SHAPE: ("n_candidates", "dim_arm")}
    )
    chosen: Mapped[int] = mapped_column(Integer)
    arm_id: Mapped[str] = mapped_column(String(ARM_ID_LENGTH))
    propensity: Mapped[float] = mapped_column(Double)
    # the standard error of a Monte-Carlo propensity (None: exact); revision 0006
    propensity_se: Mapped[float | None] = mapped_column(Double, nullable=True)
    probabilities: Mapped[bytes] = mapped_column(LargeBinary, info={SHAPE: ("n_candidates",)})
    scores: Mapped[bytes] = mapped_column(
        LargeBinary, info={SHAPE: ("n_candidates",), **_NOT_IN_REPLAY}
    )
    ranking: Mapped[list[int] | None] = mapped_column(JSON)
    slate_propensities: Mapped[list[float] | None] = mapped_column(JSON, info=_NOT_IN_REPLAY)
    policy: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str | None] = mapped_column(String(VERSION_LENGTH))
    traffic: Mapped[str] = mapped_column(String(16))
    fallback: Mapped[bool] = mapped_column(Boolean)
    explored: Mapped[bool] = mapped_column(Boolean)
    position_propensities: Mapped[list[float] | None] = mapped_column(JSON)
    request_id: Mapped[str | None] = mapped_column(String(EVENT_ID_LENGTH), info=_NOT_IN_REPLAY)
    group_id: Mapped[str | None] = mapped_column(String(ARM_ID_LENGTH), info=_NOT_IN_REPLAY)
    catalog_seq: Mapped[int | None] = mapped_column(BigInteger, info=_NOT_IN_REPLAY)
    candidate_versions: Mapped[list[int] | None] = mapped_column(JSON, info=_NOT_IN_REPLAY)
    retrieval: Mapped[dict[str, Any] | None] = mapped_column(JSON, info=_NOT_IN_REPLAY)


class RewardEvent(Base):
    __tablename__ = "rewards"
    __table_args__ = (
        UniqueConstraint("event_id", "ordinal"),
        Index(None, "model_version", "applied", "id"),
        Index(None, "event_id", "idempotency_key", unique=True),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(
        String(EVENT_ID_LENGTH), ForeignKey("decisions.event_id", ondelete="CASCADE")
    )
    ordinal: Mapped[int] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Double)
    ts: Mapped[datetime] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    applied: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(16))
    model_version: Mapped[str | None] = mapped_column(String(VERSION_LENGTH))
    position: Mapped[int | None] = mapped_column(Integer)
    # the client's key for this reward: a reward sent again with it is answered as the
    # first was and stored once (None: sent without one, or before revision 0010)
    idempotency_key: Mapped[str | None] = mapped_column(String(EVENT_ID_LENGTH))
    # the deciding head refused the update after the commit: the reward was answered
    # ``applied: false``, and so is every repeat of its key (None: stored before
    # revision 0011). Recovery and the replica sync still try it, as ``applied`` says.
    refused: Mapped[bool | None] = mapped_column(Boolean)


class HeadSnapshot(Base):
    __tablename__ = "head_snapshots"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    model_version: Mapped[str] = mapped_column(String(VERSION_LENGTH), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_reward_id: Mapped[int] = mapped_column(BigInteger)
    applied_rewards: Mapped[int] = mapped_column(BigInteger)
    policy: Mapped[str] = mapped_column(String(128))
    state: Mapped[bytes] = mapped_column(LargeBinary)
    parts_key: Mapped[str | None] = mapped_column(String(SNAPSHOT_KEY_LENGTH))
    # which artifact the head grew from, where a label can name several (None: written
    # before revision 0005, or by a source whose labels are never reused)
    incarnation: Mapped[str | None] = mapped_column(String(INCARNATION_LENGTH))


class HeadSnapshotPart(Base):
    __tablename__ = "head_snapshot_parts"

    parts_key: Mapped[str] = mapped_column(String(SNAPSHOT_KEY_LENGTH), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Item(Base):
    __tablename__ = "items"

    item_id: Mapped[str] = mapped_column(String(ARM_ID_LENGTH), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(BigInteger, index=True)
    retired: Mapped[bool] = mapped_column(Boolean)
    dim_features: Mapped[int] = mapped_column(Integer)
    features: Mapped[bytes] = mapped_column(LargeBinary)
    dim_embedding: Mapped[int | None] = mapped_column(Integer)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)
    impressions: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class ItemVersion(Base):
    __tablename__ = "item_versions"
    __table_args__ = (UniqueConstraint("item_id", "version"),)

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    item_id: Mapped[str] = mapped_column(String(ARM_ID_LENGTH))
    version: Mapped[int] = mapped_column(Integer)
    retired: Mapped[bool] = mapped_column(Boolean)
    dim_features: Mapped[int] = mapped_column(Integer)
    features: Mapped[bytes] = mapped_column(LargeBinary)
    dim_embedding: Mapped[int | None] = mapped_column(Integer)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class CatalogHorizon(Base):
    """The catalog versions retention pruned (:func:`eventstore.retention.prune_events`)."""

    __tablename__ = "catalog_horizon"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    # every version superseded by one with a seq at most this may be deleted
    seq: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ServiceLease(Base):
    """A serving process's claim on the store (see :mod:`eventstore.leases`)."""

    __tablename__ = "service_leases"

    token: Mapped[str] = mapped_column(String(LEASE_TOKEN_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(String(VERSION_LENGTH))
    # host name and PID namespace: where ``pid`` names a process
    host: Mapped[str] = mapped_column(String(VERSION_LENGTH))
    pid: Mapped[int] = mapped_column(Integer)
    mode: Mapped[str] = mapped_column(String(16))
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # seconds since the epoch by the store's clock (every holder reads the same clock)
    expires_at: Mapped[float] = mapped_column(Double)


class RolloutRow(Base):
    """A staged rollout (see :mod:`eventstore.rollouts` for the rules)."""

    __tablename__ = "rollouts"
    __table_args__ = (Index(None, "model_name", "status"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(VERSION_LENGTH))
    version: Mapped[str] = mapped_column(String(VERSION_LENGTH))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    stage_index: Mapped[int] = mapped_column(Integer)
    share: Mapped[float] = mapped_column(Double)
    stage_started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(16))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    reason: Mapped[str] = mapped_column(Text)
    # the production version the candidate is compared with (None: started before
    # revision 0006); a step that finds @production elsewhere stops the rollout
    production_version: Mapped[str | None] = mapped_column(String(VERSION_LENGTH), nullable=True)
    # when the rollout expires, fixed at its start (None: started before revision 0007):
    # past it every replica serves production alone, whether or not a step has run
    ends_by: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class RolloutStepRow(Base):
    """One decision of a rollout, with the numbers it was taken on."""

    __tablename__ = "rollout_steps"
    __table_args__ = (Index(None, "rollout_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    rollout_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("rollouts.id", ondelete="CASCADE")
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    stage_index: Mapped[int] = mapped_column(Integer)
    share: Mapped[float] = mapped_column(Double)
    action: Mapped[str] = mapped_column(String(16))
    n_production: Mapped[int] = mapped_column(BigInteger)
    n_candidate: Mapped[int] = mapped_column(BigInteger)
    mean_production: Mapped[float | None] = mapped_column(Double)
    mean_candidate: Mapped[float | None] = mapped_column(Double)
    diff: Mapped[float | None] = mapped_column(Double)
    ci_low: Mapped[float | None] = mapped_column(Double)
    ci_high: Mapped[float | None] = mapped_column(Double)
    reason: Mapped[str] = mapped_column(Text)


decisions: Any = DecisionEvent.__table__
rewards: Any = RewardEvent.__table__
head_snapshots: Any = HeadSnapshot.__table__
head_snapshot_parts: Any = HeadSnapshotPart.__table__
items: Any = Item.__table__
item_versions: Any = ItemVersion.__table__
catalog_horizon: Any = CatalogHorizon.__table__
service_leases: Any = ServiceLease.__table__
rollouts: Any = RolloutRow.__table__
rollout_steps: Any = RolloutStepRow.__table__
metadata = Base.metadata


def record_columns(table: Table) -> tuple[str, ...]:
    """The columns an INSERT fills: all of ``table``'s but an auto-increment key, in
    table order."""
    return tuple(c.name for c in table.columns if table.autoincrement_column is not c)


def shape_columns(table: Table) -> dict[str, tuple[str, int]]:
    """Each shape column of ``table`` → the first float-array column (and axis) whose
    ``info[SHAPE]`` names it."""
    out: dict[str, tuple[str, int]] = {}
    for column in table.columns:
        for axis, name in enumerate(column.info.get(SHAPE, ())):
            if name not in table.columns:
                raise ValueError(
                    f"{table.name}.{column.name}: info[{SHAPE!r}] must name columns of "
                    f"{table.name}; got {name!r}."
                )
            out.setdefault(name, (column.name, axis))
    return out


def replay_columns(table: Table) -> tuple[str, ...]:
    """The stored columns the replay frame carries, in table order: every column the
    writer fills but the shape columns and those marked ``info={REPLAY: False}``."""
    shapes = shape_columns(table)
    return tuple(
        name
        for name in record_columns(table)
        if name not in shapes and table.columns[name].info.get(REPLAY, True)
    )
