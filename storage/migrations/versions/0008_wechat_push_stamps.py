"""WeChat push stamps: the (timestamp, nonce) pairs seen within the replay window.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    op.create_table(
        "wechat_push_stamps",
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("binding", sa.String(length=80), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("timestamp", "nonce", name="pk_wechat_push_stamps"),
    )
    op.create_index("ix_wechat_push_stamps_expires_at", "wechat_push_stamps", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_wechat_push_stamps_expires_at", table_name="wechat_push_stamps")
    op.drop_table("wechat_push_stamps")
