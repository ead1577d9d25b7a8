"""The standard error of a decision's Monte-Carlo propensity: ``decisions.propensity_se``
(NULL where the propensity is exact, and for every decision logged before); the
production version a rollout compares its candidate with: ``rollouts.production_version``
(NULL for rollouts started before).

The offline evaluation flags the held-out rows whose importance weight the standard
error makes uncertain (:mod:`validation.ope.propensity_error`); the rollout controller
stops a rollout whose production moved, by any means (:mod:`training.rollout`).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("decisions", sa.Column("propensity_se", sa.Double(), nullable=True))
    op.add_column("rollouts", sa.Column("production_version", sa.String(256), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rollouts") as batch:
        batch.drop_column("production_version")
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("propensity_se")
