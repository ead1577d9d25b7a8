"""Catalog (items, item_versions); slate, group and retrieval columns of decisions; the
position of a reward.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from eventstore.types import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_DECISION_COLUMNS = (
    ("position_propensities", sa.JSON()),
    ("request_id", sa.String(64)),
    ("group_id", sa.String(256)),
    ("catalog_seq", sa.BigInteger()),
    ("candidate_versions", sa.JSON()),
    ("retrieval", sa.JSON()),
)


def upgrade() -> None:
    op.create_table(
        "items",
        sa.Column("item_id", sa.String(256), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("retired", sa.Boolean(), nullable=False),
        sa.Column("dim_features", sa.Integer(), nullable=False),
        sa.Column("features", sa.LargeBinary(), nullable=False),
        sa.Column("dim_embedding", sa.Integer(), nullable=True),
        sa.Column("embedding", sa.LargeBinary(), nullable=True),
        sa.Column("impressions", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("item_id", name=op.f("pk_items")),
    )
    op.create_index(op.f("ix_items_seq"), "items", ["seq"])
    op.create_index(op.f("ix_items_updated_at"), "items", ["updated_at"])

    big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "item_versions",
        sa.Column("seq", big_id, autoincrement=True, nullable=False),
        sa.Column("item_id", sa.String(256), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("retired", sa.Boolean(), nullable=False),
        sa.Column("dim_features", sa.Integer(), nullable=False),
        sa.Column("features", sa.LargeBinary(), nullable=False),
        sa.Column("dim_embedding", sa.Integer(), nullable=True),
        sa.Column("embedding", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_item_versions")),
        sa.UniqueConstraint("item_id", "version", name=op.f("uq_item_versions_item_id_version")),
    )
    op.create_index(op.f("ix_item_versions_created_at"), "item_versions", ["created_at"])

    for name, kind in _DECISION_COLUMNS:
        op.add_column("decisions", sa.Column(name, kind, nullable=True))
    op.add_column("rewards", sa.Column("position", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rewards") as batch:
        batch.drop_column("position")
    with op.batch_alter_table("decisions") as batch:
        for name, _ in reversed(_DECISION_COLUMNS):
            batch.drop_column(name)
    op.drop_table("item_versions")
    op.drop_table("items")
