"""The catalog's horizon: ``catalog_horizon``, one row holding the ``seq`` before which
retention deletes superseded item versions (0: none deleted yet).

Before, every version of every item was kept for good: a catalog whose items change
(prices, features, new embeddings) grew ``item_versions`` by a copy of each change.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import context, op

from eventstore.migrate import FORGET_PRUNED_CATALOG, DowngradeRefusedError
from eventstore.types import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "catalog_horizon",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_horizon")),
    )
    op.bulk_insert(table, [{"id": 1, "seq": 0, "updated_at": datetime.now(UTC)}])


def downgrade() -> None:
    # the code before this revision lists the catalog at any seq from item_versions: past
    # a prune it would list the catalog before the horizon without the versions deleted
    horizon = op.get_bind().execute(sa.text("SELECT max(seq) FROM catalog_horizon")).scalar()
    if horizon and not context.config.attributes.get(FORGET_PRUNED_CATALOG, False):
        raise DowngradeRefusedError(
            f"retention deleted the catalog's item versions superseded before seq {horizon}: "
            "a banditops before revision 0008 would list the catalog as it was before that "
            "without them, and answer 404 for those versions, saying nothing. Downgrade "
            "anyway with --forget-pruned-catalog."
        )
    op.drop_table("catalog_horizon")
