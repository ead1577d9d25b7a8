"""Serving processes' leases: ``service_leases``, one row per running serving process
(:mod:`eventstore.leases`).

Before, nothing stopped a second serving process of one worker without replica sync from
writing beside another: each took itself for the store's only writer, and its head
snapshots covered rewards the other had applied and it had never learnt.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from eventstore.types import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "service_leases",
        sa.Column("token", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("host", sa.String(length=256), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("acquired_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("token", name=op.f("pk_service_leases")),
    )


def downgrade() -> None:
    # the code before this revision holds no lease: nothing to keep
    op.drop_table("service_leases")
