"""Which incarnation of a version label a head snapshot belongs to:
``head_snapshots.incarnation``.

A registered model deleted and created again numbers its versions from 1 again; the
snapshots of the first ``name/1`` must not become the head of the second.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("head_snapshots", sa.Column("incarnation", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("head_snapshots") as batch:
        batch.drop_column("incarnation")
