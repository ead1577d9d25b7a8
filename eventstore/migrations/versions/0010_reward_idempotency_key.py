"""A reward's idempotency key: ``rewards.idempotency_key``, unique per event (NULL for
rewards sent without one, and for every reward stored before).

Under the sum rule every reward of an event counts. A client that sent a reward again
because its first answer was lost (a timeout, a dropped connection) had it counted
twice in the replay and the rollout's outcome, with nothing to tell the two apart. A
reward sent again with its key is now answered as the first was, and stored once.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_INDEX = "ix_rewards_event_id_idempotency_key"


def upgrade() -> None:
    op.add_column("rewards", sa.Column("idempotency_key", sa.String(length=64), nullable=True))
    op.create_index(op.f(_INDEX), "rewards", ["event_id", "idempotency_key"], unique=True)


def downgrade() -> None:
    # the code before this revision knows no keys: a repeat it receives is stored again
    op.drop_index(op.f(_INDEX), table_name="rewards")
    with op.batch_alter_table("rewards") as batch:
        batch.drop_column("idempotency_key")
