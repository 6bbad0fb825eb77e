"""One outbox for everything said to a person that is not the direct reply to their own message:
the desk's ``notices`` and WeChat's ``wechat_outbox`` become ``outbox`` (their rows carried
over, in their order); WeChat's customer-service counters are dropped (the quota is worked out
from the outbox's sent messages since the user's last message); ``order_claims`` records who
is settling an order now.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _str(name: str, length: int, *, nullable: bool = False) -> sa.Column[str]:
    return sa.Column(name, sa.String(length=length), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", _ID, nullable=False),
        _str("channel", 16),
        _str("recipient", 128),
        _str("kind", 16),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        _str("state", 16),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _ts("not_before"),
        _ts("lease_until", nullable=True),
        _ts("created_at"),
        _ts("sent_at", nullable=True),
        _str("via", 16, nullable=True),
        _str("last_error", 128, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
    )
    op.create_index(
        "ix_outbox_channel_recipient_state_id", "outbox", ["channel", "recipient", "state", "id"]
    )
    op.create_index(
        "ix_outbox_channel_state_not_before", "outbox", ["channel", "state", "not_before"]
    )
    op.create_table(
        "order_claims",
        sa.Column("order_id", _ID, nullable=False),
        _str("owner", 64),
        _ts("until"),
        sa.ForeignKeyConstraint(
            ["order_id"], ["orders.id"], name="fk_order_claims_order_id_orders"
        ),
        sa.PrimaryKeyConstraint("order_id", name="pk_order_claims"),
    )

    empty = "'[]'::json" if op.get_bind().dialect.name == "postgresql" else "'[]'"
    # Both sources in one order, by when they were written (new ids follow it).
    op.execute(
        "INSERT INTO outbox (channel, recipient, kind, text, options, state, attempts, "
        "not_before, lease_until, created_at, sent_at, via, last_error) "
        "SELECT channel, recipient, kind, text, options, state, attempts, not_before, "
        "lease_until, created_at, sent_at, via, last_error FROM ("
        "SELECT channel, user_key AS recipient, 'notice' AS kind, text, options, "
        "CASE WHEN sent_at IS NULL THEN 'pending' WHEN last_error LIKE 'gave up%' "
        "THEN 'failed' ELSE 'sent' END AS state, attempts, not_before, "
        "NULL AS lease_until, created_at, sent_at, "
        "CASE WHEN sent_at IS NULL OR last_error LIKE 'gave up%' THEN NULL "
        "ELSE 'message' END AS via, last_error, 0 AS source, id FROM notices "
        "UNION ALL "
        f"SELECT 'wechat', openid, kind, text, {empty}, state, attempts, not_before, "
        "lease_until, created_at, sent_at, via, last_error, 1, id FROM wechat_outbox"
        ") AS carried ORDER BY created_at, source, id"
    )

    op.drop_index("ix_notices_sent_at_not_before", table_name="notices")
    op.drop_table("notices")
    op.drop_index("ix_wechat_outbox_state_not_before", table_name="wechat_outbox")
    op.drop_index("ix_wechat_outbox_openid_state_id", table_name="wechat_outbox")
    op.drop_table("wechat_outbox")
    with op.batch_alter_table("wechat_contacts") as batch:
        batch.drop_column("message_sends")
        batch.drop_column("event_sends")


def downgrade() -> None:
    with op.batch_alter_table("wechat_contacts") as batch:
        batch.add_column(
            sa.Column("message_sends", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("event_sends", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("wechat_contacts") as batch:
        batch.alter_column("message_sends", server_default=None)
        batch.alter_column("event_sends", server_default=None)
    op.create_table(
        "wechat_outbox",
        sa.Column("id", _ID, nullable=False),
        _str("openid", 128),
        _str("kind", 16),
        sa.Column("text", sa.Text(), nullable=False),
        _str("state", 16),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _ts("not_before"),
        _ts("lease_until", nullable=True),
        _ts("created_at"),
        _ts("sent_at", nullable=True),
        _str("via", 16, nullable=True),
        _str("last_error", 128, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_wechat_outbox"),
    )
    op.create_index("ix_wechat_outbox_openid_state_id", "wechat_outbox", ["openid", "state", "id"])
    op.create_index("ix_wechat_outbox_state_not_before", "wechat_outbox", ["state", "not_before"])
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
    op.execute(
        "INSERT INTO wechat_outbox (openid, kind, text, state, attempts, not_before, "
        "lease_until, created_at, sent_at, via, last_error) "
        "SELECT recipient, kind, text, CASE WHEN state = 'failed' THEN 'sent' ELSE state END, "
        "attempts, not_before, lease_until, created_at, sent_at, via, last_error FROM outbox "
        "WHERE channel = 'wechat' AND kind = 'reply' ORDER BY id"
    )
    op.execute(
        "INSERT INTO notices (channel, user_key, text, options, created_at, not_before, "
        "attempts, sent_at, last_error) "
        "SELECT channel, recipient, text, options, created_at, not_before, attempts, "
        "CASE WHEN state IN ('sent', 'failed') THEN COALESCE(sent_at, created_at) END, "
        "last_error FROM outbox WHERE NOT (channel = 'wechat' AND kind = 'reply') ORDER BY id"
    )
    op.drop_table("order_claims")
    op.drop_index("ix_outbox_channel_state_not_before", table_name="outbox")
    op.drop_index("ix_outbox_channel_recipient_state_id", table_name="outbox")
    op.drop_table("outbox")
