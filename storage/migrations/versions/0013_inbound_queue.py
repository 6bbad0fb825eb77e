"""Inbound queue: channel updates confirmed to the channel and handled later, per chat.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "inbound_queue",
        sa.Column("id", _ID, nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("update_key", sa.String(length=64), nullable=False),
        sa.Column("chat_key", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        _ts("received_at"),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _ts("not_before"),
        sa.Column("owner", sa.String(length=64), nullable=True),
        _ts("lease_until", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbound_queue")),
        sa.UniqueConstraint(
            "channel", "update_key", name=op.f("uq_inbound_queue_channel_update_key")
        ),
    )
    op.create_index(
        "ix_inbound_queue_channel_chat_key_id",
        "inbound_queue",
        ["channel", "chat_key", "id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_inbound_queue_channel_chat_key_id", table_name="inbound_queue")
    op.drop_table("inbound_queue")
