"""Batch sale: many cards in one order (placeholder, filled by the batch-sale work).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 00:00:00
"""

from __future__ import annotations

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
