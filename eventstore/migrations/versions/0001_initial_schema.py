"""Initial schema: decisions, rewards, head snapshots.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from eventstore.types import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _id() -> sa.Column[int]:
    big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    return sa.Column("id", big_id, autoincrement=True, nullable=False)


def upgrade() -> None:
    op.create_table(
        "decisions",
        _id(),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("user_hash", sa.String(64), nullable=True),
        sa.Column("dim_user", sa.Integer(), nullable=False),
        sa.Column("context", sa.LargeBinary(), nullable=False),
        sa.Column("n_candidates", sa.Integer(), nullable=False),
        sa.Column("dim_arm", sa.Integer(), nullable=False),
        sa.Column("candidate_ids", sa.JSON(), nullable=False),
        sa.Column("candidate_features", sa.LargeBinary(), nullable=False),
        sa.Column("chosen", sa.Integer(), nullable=False),
        sa.Column("arm_id", sa.String(256), nullable=False),
        sa.Column("propensity", sa.Double(), nullable=False),
        sa.Column("probabilities", sa.LargeBinary(), nullable=False),
        sa.Column("scores", sa.LargeBinary(), nullable=False),
        sa.Column("ranking", sa.JSON(), nullable=True),
        sa.Column("slate_propensities", sa.JSON(), nullable=True),
        sa.Column("policy", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(256), nullable=True),
        sa.Column("traffic", sa.String(16), nullable=False),
        sa.Column("fallback", sa.Boolean(), nullable=False),
        sa.Column("explored", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_decisions")),
        sa.UniqueConstraint("event_id", name=op.f("uq_decisions_event_id")),
    )
    op.create_index(op.f("ix_decisions_created_at"), "decisions", ["created_at"])

    op.create_table(
        "rewards",
        _id(),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("ts", UTCDateTime(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("applied", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("model_version", sa.String(256), nullable=True),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["decisions.event_id"],
            name=op.f("fk_rewards_event_id_decisions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rewards")),
        sa.UniqueConstraint("event_id", "ordinal", name=op.f("uq_rewards_event_id_ordinal")),
    )
    op.create_index(
        op.f("ix_rewards_model_version_applied_id"), "rewards", ["model_version", "applied", "id"]
    )

    op.create_table(
        "head_snapshots",
        _id(),
        sa.Column("model_version", sa.String(256), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("last_reward_id", sa.BigInteger(), nullable=False),
        sa.Column("applied_rewards", sa.BigInteger(), nullable=False),
        sa.Column("policy", sa.String(128), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_head_snapshots")),
    )
    op.create_index(op.f("ix_head_snapshots_model_version"), "head_snapshots", ["model_version"])


def downgrade() -> None:
    op.drop_table("head_snapshots")
    op.drop_table("rewards")
    op.drop_table("decisions")
