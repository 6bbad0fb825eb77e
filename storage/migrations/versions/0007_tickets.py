"""Support tickets and what was said in them, notices for delivery, roles granted in chat.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _str(name: str, length: int, *, nullable: bool = False) -> sa.Column[str]:
    return sa.Column(name, sa.String(length=length), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "tickets",
        sa.Column("id", _ID, nullable=False),
        sa.Column("user_id", _ID, nullable=False),
        _str("channel", 16),
        _str("user_key", 128),
        sa.Column("order_id", _ID, nullable=True),
        _str("reason", 16),
        _str("detail", 500),
        sa.Column("priority", sa.Integer(), nullable=False),
        _str("status", 16),
        _str("assignee", 160, nullable=True),
        _ts("opened_at"),
        _ts("taken_at", nullable=True),
        _ts("first_response_at", nullable=True),
        _ts("resolved_at", nullable=True),
        _str("outcome", 16, nullable=True),
        _str("resolution_note", 500, nullable=True),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("alerts", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_tickets_user_id_users"),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], name="fk_tickets_order_id_orders"),
        sa.PrimaryKeyConstraint("id", name="pk_tickets"),
    )
    op.create_index("ix_tickets_user_id", "tickets", ["user_id"])
    op.create_index("ix_tickets_order_id", "tickets", ["order_id"])
    op.create_index("ix_tickets_assignee", "tickets", ["assignee"])
    op.create_index(
        "ix_tickets_status_priority_opened", "tickets", ["status", "priority", "opened_at"]
    )

    op.create_table(
        "ticket_messages",
        sa.Column("id", _ID, nullable=False),
        sa.Column("ticket_id", _ID, nullable=False),
        _ts("at"),
        _str("author", 160),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("private", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["ticket_id"], ["tickets.id"], name="fk_ticket_messages_ticket_id_tickets"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_ticket_messages"),
    )
    op.create_index("ix_ticket_messages_ticket_id", "ticket_messages", ["ticket_id"])

    op.create_table(
        "notices",
        sa.Column("id", _ID, nullable=False),
        _str("channel", 16),
        _str("user_key", 128),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        _ts("created_at"),
        _ts("not_before"),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _ts("sent_at", nullable=True),
        _str("last_error", 128, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_notices"),
    )
    op.create_index("ix_notices_sent_at_not_before", "notices", ["sent_at", "not_before"])

    op.create_table(
        "role_grants",
        _str("actor", 160),
        _str("role", 16),
        _str("granted_by", 160),
        _ts("granted_at"),
        sa.PrimaryKeyConstraint("actor", name="pk_role_grants"),
    )


def downgrade() -> None:
    for table in ("role_grants", "notices", "ticket_messages", "tickets"):
        op.drop_table(table)
