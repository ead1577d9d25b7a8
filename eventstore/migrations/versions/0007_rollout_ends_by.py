"""The time a rollout ends by: ``rollouts.ends_by`` (NULL for rollouts started before).

It is fixed when the rollout starts (its start plus ``rollout_max_duration_s``). Past it
every service replica serves production alone, whether or not a controller step has run
since (a paused ``bandit_rollout`` left the users split for as long as it was paused); the
controller's next step records the expiry (:mod:`training.rollout`).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from eventstore.types import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("rollouts", sa.Column("ends_by", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rollouts") as batch:
        batch.drop_column("ends_by")
