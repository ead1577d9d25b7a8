"""Staged rollouts: the ``rollouts`` state every replica reads and the ``rollout_steps``
audit of each decision.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from eventstore.types import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "rollouts",
        sa.Column("id", big_id, autoincrement=True, nullable=False),
        sa.Column("model_name", sa.String(256), nullable=False),
        sa.Column("version", sa.String(256), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("stage_index", sa.Integer(), nullable=False),
        sa.Column("share", sa.Double(), nullable=False),
        sa.Column("stage_started_at", UTCDateTime(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollouts")),
    )
    op.create_index(op.f("ix_rollouts_model_name_status"), "rollouts", ["model_name", "status"])
    op.create_table(
        "rollout_steps",
        sa.Column("id", big_id, autoincrement=True, nullable=False),
        sa.Column("rollout_id", sa.BigInteger(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("stage_index", sa.Integer(), nullable=False),
        sa.Column("share", sa.Double(), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("n_production", sa.BigInteger(), nullable=False),
        sa.Column("n_candidate", sa.BigInteger(), nullable=False),
        sa.Column("mean_production", sa.Double(), nullable=True),
        sa.Column("mean_candidate", sa.Double(), nullable=True),
        sa.Column("diff", sa.Double(), nullable=True),
        sa.Column("ci_low", sa.Double(), nullable=True),
        sa.Column("ci_high", sa.Double(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["rollout_id"],
            ["rollouts.id"],
            name=op.f("fk_rollout_steps_rollout_id_rollouts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollout_steps")),
    )
    op.create_index(op.f("ix_rollout_steps_rollout_id_id"), "rollout_steps", ["rollout_id", "id"])


def downgrade() -> None:
    op.drop_table("rollout_steps")
    op.drop_table("rollouts")
