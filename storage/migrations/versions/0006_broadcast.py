"""Broadcasts, their per-recipient deliveries, rate-alert subscriptions and opt-outs.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _str(name: str, length: int, *, nullable: bool = False) -> sa.Column[str]:
    return sa.Column(name, sa.String(length=length), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "broadcasts",
        sa.Column("id", ID, nullable=False),
        _str("created_by", 128),
        _ts("created_at"),
        _str("audience", 64),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("image", sa.LargeBinary(), nullable=True),
        _str("state", 16),
        _ts("send_at", nullable=True),
        sa.Column("recipients", sa.BigInteger(), nullable=False),
        _ts("confirmed_at", nullable=True),
        _ts("started_at", nullable=True),
        _ts("finished_at", nullable=True),
        _ts("cancelled_at", nullable=True),
        _str("cancelled_by", 128, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_broadcasts"),
    )
    op.create_index("ix_broadcasts_created_by", "broadcasts", ["created_by"])
    op.create_index("ix_broadcasts_state", "broadcasts", ["state"])

    op.create_table(
        "broadcast_deliveries",
        sa.Column("id", ID, nullable=False),
        sa.Column("broadcast_id", ID, nullable=False),
        sa.Column("user_id", ID, nullable=False),
        _str("channel", 16),
        _str("chat_id", 128),
        _str("language", 8),
        _str("state", 16),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _str("claimed_by", 64, nullable=True),
        _ts("claimed_at", nullable=True),
        _ts("updated_at"),
        _str("error", 128, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_broadcast_deliveries"),
        sa.ForeignKeyConstraint(
            ["broadcast_id"],
            ["broadcasts.id"],
            name="fk_broadcast_deliveries_broadcast_id_broadcasts",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_broadcast_deliveries_user_id_users"
        ),
        sa.UniqueConstraint(
            "broadcast_id", "user_id", name="uq_broadcast_deliveries_broadcast_id_user_id"
        ),
    )
    op.create_index(
        "ix_broadcast_deliveries_channel_state_broadcast_id_id",
        "broadcast_deliveries",
        ["channel", "state", "broadcast_id", "id"],
    )
    op.create_index(
        "ix_broadcast_deliveries_broadcast_id_state",
        "broadcast_deliveries",
        ["broadcast_id", "state"],
    )

    op.create_table(
        "rate_alert_subscriptions",
        sa.Column("id", ID, nullable=False),
        sa.Column("user_id", ID, nullable=False),
        _str("brand", 32),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_rate_alert_subscriptions"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_rate_alert_subscriptions_user_id_users"
        ),
        sa.UniqueConstraint("user_id", "brand", name="uq_rate_alert_subscriptions_user_id_brand"),
    )
    op.create_index("ix_rate_alert_subscriptions_brand", "rate_alert_subscriptions", ["brand"])

    op.create_table(
        "broadcast_opt_outs",
        sa.Column("user_id", ID, nullable=False),
        _ts("opted_out_at"),
        sa.PrimaryKeyConstraint("user_id", name="pk_broadcast_opt_outs"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_broadcast_opt_outs_user_id_users"
        ),
    )


def downgrade() -> None:
    op.drop_table("broadcast_opt_outs")
    op.drop_index("ix_rate_alert_subscriptions_brand", table_name="rate_alert_subscriptions")
    op.drop_table("rate_alert_subscriptions")
    op.drop_index("ix_broadcast_deliveries_broadcast_id_state", table_name="broadcast_deliveries")
    op.drop_index(
        "ix_broadcast_deliveries_channel_state_broadcast_id_id",
        table_name="broadcast_deliveries",
    )
    op.drop_table("broadcast_deliveries")
    op.drop_index("ix_broadcasts_state", table_name="broadcasts")
    op.drop_index("ix_broadcasts_created_by", table_name="broadcasts")
    op.drop_table("broadcasts")
