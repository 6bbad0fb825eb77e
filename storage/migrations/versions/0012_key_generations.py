"""Data-key generations and the processes holding them (key rotation coordination).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def _ts(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "key_generations",
        sa.Column("generation", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("primary_key_id", sa.String(length=16), nullable=False),
        sa.Column("key_ids", sa.String(length=400), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("generation", name="pk_key_generations"),
    )
    op.create_table(
        "key_holders",
        sa.Column("holder_id", sa.String(length=32), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("sealing_key_id", sa.String(length=16), nullable=False),
        sa.Column("key_ids", sa.String(length=400), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        _ts("started_at"),
        _ts("heartbeat_at"),
        sa.PrimaryKeyConstraint("holder_id", name="pk_key_holders"),
    )


def downgrade() -> None:
    op.drop_table("key_holders")
    op.drop_table("key_generations")
