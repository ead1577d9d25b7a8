"""A reward its head refused: ``rewards.refused`` (NULL for every reward stored before).

The deciding head refuses an update it cannot make after the reward is committed; the
reward is answered ``applied: false``. Only the serving process's memory knew it, and
only until that answer: a reward sent again with its idempotency key was then answered
``applied: true`` (the stored ``applied`` is the verdict before the head tried), and so
after any restart.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("rewards", sa.Column("refused", sa.Boolean(), nullable=True))


def downgrade() -> None:
    # the code before this revision answers a refused reward's repeats ``applied: true``
    with op.batch_alter_table("rewards") as batch:
        batch.drop_column("refused")
