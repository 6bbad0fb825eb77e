"""Risk: suspensions, manual-review decisions on orders, the blacklist.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("suspended_until", sa.DateTime(timezone=True), nullable=True))
    op.add_column("orders", sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("orders", sa.Column("reviewed_by", sa.String(length=64), nullable=True))
    op.add_column("orders", sa.Column("review_note", sa.String(length=500), nullable=True))
    op.add_column(
        "orders", sa.Column("review_announced_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_table(
        "risk_blacklist",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("fp", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("added_by", sa.String(length=64), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_risk_blacklist")),
        sa.UniqueConstraint("kind", "fp", name=op.f("uq_risk_blacklist_kind_fp")),
    )
    # Risk streaks look up what one person did lately.
    op.create_index(op.f("ix_audit_events_actor"), "audit_events", ["actor"])


def downgrade() -> None:
    op.drop_index(op.f("ix_audit_events_actor"), table_name="audit_events")
    op.drop_table("risk_blacklist")
    for column in ("review_announced_at", "review_note", "reviewed_by", "reviewed_at"):
        op.drop_column("orders", column)
    op.drop_column("users", "suspended_until")
