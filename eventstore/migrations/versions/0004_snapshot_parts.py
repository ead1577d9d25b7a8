"""Head snapshots in parts: ``head_snapshot_parts`` and ``head_snapshots.parts_key``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from eventstore.types import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "head_snapshot_parts",
        sa.Column("parts_key", sa.String(32), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("parts_key", "seq", name=op.f("pk_head_snapshot_parts")),
    )
    op.create_index(
        op.f("ix_head_snapshot_parts_created_at"), "head_snapshot_parts", ["created_at"]
    )
    op.add_column("head_snapshots", sa.Column("parts_key", sa.String(32), nullable=True))


def downgrade() -> None:
    # the code before this revision would read only a parted snapshot's last part:
    # drop such snapshots (recovery then starts from an older one, or the model)
    op.execute("DELETE FROM head_snapshots WHERE parts_key IS NOT NULL")
    with op.batch_alter_table("head_snapshots") as batch:
        batch.drop_column("parts_key")
    op.drop_table("head_snapshot_parts")
