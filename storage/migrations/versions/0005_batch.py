"""Batch sale: many cards in one order — a ``batches`` row groups one order per card.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def _id_type() -> sa.types.TypeEngine[int]:
    # SQLite only auto-assigns INTEGER PRIMARY KEY (the rowid), not BIGINT.
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", _id_type(), nullable=False),
        sa.Column("user_id", _id_type(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_batches_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
    )
    op.create_index(op.f("ix_batches_user_id"), "batches", ["user_id"])
    # SQLite cannot add a foreign key to an existing table: batch mode rebuilds it there.
    with op.batch_alter_table("orders") as orders:
        orders.add_column(sa.Column("batch_id", _id_type(), nullable=True))
        orders.create_index(orders.f("ix_orders_batch_id"), ["batch_id"])
        orders.create_foreign_key(
            orders.f("fk_orders_batch_id_batches"), "batches", ["batch_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("orders") as orders:
        orders.drop_constraint(orders.f("fk_orders_batch_id_batches"), type_="foreignkey")
        orders.drop_index(orders.f("ix_orders_batch_id"))
        orders.drop_column("batch_id")
    op.drop_index(op.f("ix_batches_user_id"), table_name="batches")
    op.drop_table("batches")
