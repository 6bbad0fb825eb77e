"""One owner per card: a partial unique index on orders.card_fp over the statuses that own a
card (accepted and later). Orders left accepted beside another owner of the same card (the
defect this fixes let that happen) are expired first.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

_HOLDING = ("accepted", "review", "approved", "redeemed", "paying", "settled", "payout_failed")
_WHERE = "status IN ({})".format(", ".join(f"'{s}'" for s in _HOLDING))


def upgrade() -> None:
    # An accepted order yields to an owner further along (submitted or sold), or to an
    # earlier accepted one.
    op.execute(
        sa.text(
            "UPDATE orders SET status = 'expired' WHERE status = 'accepted' AND EXISTS ("
            " SELECT 1 FROM orders AS other WHERE other.card_fp = orders.card_fp"
            f" AND other.id <> orders.id AND other.{_WHERE}"
            " AND (other.status <> 'accepted' OR other.id < orders.id))"
        )
    )
    op.create_index(
        "uq_orders_card_fp_holding",
        "orders",
        ["card_fp"],
        unique=True,
        sqlite_where=sa.text(_WHERE),
        postgresql_where=sa.text(_WHERE),
    )


def downgrade() -> None:
    op.drop_index("uq_orders_card_fp_holding", table_name="orders")
