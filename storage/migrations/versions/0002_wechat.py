"""WeChat channel: outbox of customer-service/template messages, per-user delivery windows,
the shared access token.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def _ts(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _str(name: str, length: int, *, nullable: bool = False) -> sa.Column[str]:
    return sa.Column(name, sa.String(length=length), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "wechat_outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
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
        "wechat_contacts",
        _str("openid", 128),
        _ts("last_message_at", nullable=True),
        sa.Column("message_sends", sa.Integer(), nullable=False),
        _ts("last_event_at", nullable=True),
        sa.Column("event_sends", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("openid", name="pk_wechat_contacts"),
    )

    op.create_table(
        "wechat_access_tokens",
        _str("app_id", 64),
        sa.Column("token_enc", sa.LargeBinary(), nullable=False),
        _ts("expires_at"),
        _ts("fetched_at"),
        sa.PrimaryKeyConstraint("app_id", name="pk_wechat_access_tokens"),
    )


def downgrade() -> None:
    for table in ("wechat_access_tokens", "wechat_contacts", "wechat_outbox"):
        op.drop_table(table)
