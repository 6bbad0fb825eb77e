"""Broadcasts, their per-recipient deliveries, and rate-alert subscriptions (placeholder).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 00:00:00
"""

from __future__ import annotations

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
