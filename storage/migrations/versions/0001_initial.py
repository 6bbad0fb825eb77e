"""Initial schema: people, cards, quotes, orders, payouts, ledger, audit log, conversations,
inbound dedupe.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def _id_type() -> sa.types.TypeEngine[int]:
    # SQLite only auto-assigns INTEGER PRIMARY KEY (the rowid), not BIGINT.
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _pk(name: str = "id") -> sa.Column[int]:
    return sa.Column(name, _id_type(), nullable=False)


def _ref(name: str, *, nullable: bool = False) -> sa.Column[int]:
    return sa.Column(name, _id_type(), nullable=nullable)


def _ts(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _str(name: str, length: int, *, nullable: bool = False) -> sa.Column[str]:
    return sa.Column(name, sa.String(length=length), nullable=nullable)


def _fen(name: str, *, nullable: bool = False) -> sa.Column[int]:
    return sa.Column(name, sa.BigInteger(), nullable=nullable)


def _fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=f"fk_{table}_{column}_{target}"
    )


def _index(table: str, *columns: str) -> None:
    op.create_index(f"ix_{table}_{'_'.join(columns)}", table, list(columns))


def upgrade() -> None:
    op.create_table(
        "users",
        _pk(),
        _ts("created_at"),
        _str("language", 8),
        _str("real_name", 64, nullable=True),
        sa.Column("id_number_enc", sa.LargeBinary(), nullable=True),
        _str("id_number_fp", 64, nullable=True),
        _str("id_number_masked", 32, nullable=True),
        sa.Column("phone_enc", sa.LargeBinary(), nullable=True),
        _str("phone_masked", 32, nullable=True),
        _ts("verified_at", nullable=True),
        sa.Column("kyc_level", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
    )
    _index("users", "id_number_fp")

    op.create_table(
        "channel_identities",
        _pk(),
        _str("channel", 16),
        _str("external_id", 128),
        _ref("user_id"),
        _str("chat_id", 128),
        sa.Column("reachable", sa.Boolean(), nullable=False),
        _ts("created_at"),
        _fk("channel_identities", "user_id", "users"),
        sa.PrimaryKeyConstraint("id", name="pk_channel_identities"),
        sa.UniqueConstraint(
            "channel", "external_id", name="uq_channel_identities_channel_external_id"
        ),
    )
    _index("channel_identities", "user_id")

    op.create_table(
        "consents",
        _pk(),
        _ref("user_id"),
        _str("kind", 32),
        _str("version", 32),
        _ts("given_at"),
        _str("channel", 16),
        _fk("consents", "user_id", "users"),
        sa.PrimaryKeyConstraint("id", name="pk_consents"),
    )
    _index("consents", "user_id", "kind", "version")

    op.create_table(
        "cards",
        _pk(),
        _ref("user_id"),
        _str("brand", 32),
        sa.Column("number_enc", sa.LargeBinary(), nullable=False),
        _str("number_fp", 64),
        _str("number_masked", 40),
        sa.Column("secret_enc", sa.LargeBinary(), nullable=True),
        _str("status", 16, nullable=True),
        _fen("face_value_fen", nullable=True),
        _fen("balance_fen", nullable=True),
        sa.Column("expires", sa.Date(), nullable=True),
        _ts("verified_at", nullable=True),
        _ts("created_at"),
        _fk("cards", "user_id", "users"),
        sa.PrimaryKeyConstraint("id", name="pk_cards"),
    )
    _index("cards", "number_fp")
    _index("cards", "user_id")

    op.create_table(
        "quotes",
        _pk(),
        _ref("user_id"),
        _ref("card_id"),
        _str("brand", 32),
        _fen("face_value_fen"),
        _fen("balance_fen"),
        sa.Column("rate_bp", sa.Integer(), nullable=False),
        _fen("gross_fen"),
        _fen("fee_fen"),
        _fen("payout_fen"),
        sa.Column("lines", sa.JSON(), nullable=False),
        _ts("created_at"),
        _ts("expires_at"),
        _str("rates_version", 64),
        _fk("quotes", "card_id", "cards"),
        _fk("quotes", "user_id", "users"),
        sa.PrimaryKeyConstraint("id", name="pk_quotes"),
    )
    _index("quotes", "card_id")
    _index("quotes", "user_id")

    op.create_table(
        "payout_accounts",
        _pk(),
        _ref("user_id"),
        _str("method", 16),
        sa.Column("account_enc", sa.LargeBinary(), nullable=False),
        _str("account_fp", 64),
        _str("account_masked", 64),
        _str("holder_name", 64),
        _ts("created_at"),
        _ts("last_used_at", nullable=True),
        _fk("payout_accounts", "user_id", "users"),
        sa.PrimaryKeyConstraint("id", name="pk_payout_accounts"),
        sa.UniqueConstraint(
            "user_id",
            "method",
            "account_fp",
            name="uq_payout_accounts_user_id_method_account_fp",
        ),
    )
    _index("payout_accounts", "account_fp")
    _index("payout_accounts", "user_id")

    op.create_table(
        "orders",
        _pk(),
        _ref("user_id"),
        _str("channel", 16),
        _ref("card_id"),
        _ref("quote_id"),
        _str("brand", 32),
        _str("card_fp", 64),
        _str("card_masked", 40),
        _fen("face_value_fen"),
        _fen("balance_fen"),
        _fen("payout_fen"),
        _fen("fee_fen"),
        _str("status", 16),
        _str("risk_outcome", 16, nullable=True),
        sa.Column("risk_reasons", sa.JSON(), nullable=False),
        _str("risk_version", 64, nullable=True),
        _ref("payout_account_id", nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        _ts("settled_at", nullable=True),
        _fk("orders", "card_id", "cards"),
        _fk("orders", "payout_account_id", "payout_accounts"),
        _fk("orders", "quote_id", "quotes"),
        _fk("orders", "user_id", "users"),
        sa.PrimaryKeyConstraint("id", name="pk_orders"),
    )
    _index("orders", "card_fp")
    _index("orders", "card_id")
    _index("orders", "created_at")
    _index("orders", "payout_account_id")
    _index("orders", "quote_id")
    _index("orders", "status")
    _index("orders", "user_id", "created_at")

    op.create_table(
        "payouts",
        _pk(),
        _ref("order_id"),
        _str("reference", 64),
        _str("method", 16),
        _ref("payout_account_id"),
        _fen("amount_fen"),
        _str("state", 16),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _str("provider_txn_id", 128, nullable=True),
        _str("failure_reason", 256, nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        _fk("payouts", "order_id", "orders"),
        _fk("payouts", "payout_account_id", "payout_accounts"),
        sa.PrimaryKeyConstraint("id", name="pk_payouts"),
        sa.UniqueConstraint("reference", name="uq_payouts_reference"),
    )
    _index("payouts", "order_id")
    _index("payouts", "payout_account_id")
    _index("payouts", "state")
    # At most one live payout per order: a new one only after a provider-confirmed failure.
    op.create_index(
        "uq_payouts_order_id_open",
        "payouts",
        ["order_id"],
        unique=True,
        sqlite_where=sa.text("state <> 'failed'"),
        postgresql_where=sa.text("state <> 'failed'"),
    )

    op.create_table(
        "ledger_transactions",
        _pk("seq"),
        _str("id", 36),
        _str("kind", 32),
        _ref("order_id", nullable=True),
        _ts("created_at"),
        _fk("ledger_transactions", "order_id", "orders"),
        sa.PrimaryKeyConstraint("seq", name="pk_ledger_transactions"),
        sa.UniqueConstraint("id", name="uq_ledger_transactions_id"),
    )
    _index("ledger_transactions", "order_id")

    op.create_table(
        "ledger_postings",
        _pk(),
        _str("transaction_id", 36),
        _str("account", 64),
        _fen("amount_fen"),
        sa.ForeignKeyConstraint(
            ["transaction_id"],
            ["ledger_transactions.id"],
            name="fk_ledger_postings_transaction_id_ledger_transactions",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_ledger_postings"),
    )
    _index("ledger_postings", "account")
    _index("ledger_postings", "transaction_id")

    op.create_table(
        "audit_events",
        _pk("seq"),
        _ts("at"),
        _str("actor", 128),
        _str("action", 64),
        _str("subject", 128),
        sa.Column("details", sa.JSON(), nullable=False),
        _str("prev_hash", 64),
        _str("hash", 64),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_events"),
        sa.UniqueConstraint("hash", name="uq_audit_events_hash"),
        sa.UniqueConstraint("prev_hash", name="uq_audit_events_prev_hash"),
    )
    _index("audit_events", "subject")

    op.create_table(
        "conversations",
        _pk(),
        _str("channel", 16),
        _str("user_key", 128),
        _str("step", 64),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_conversations"),
        sa.UniqueConstraint("channel", "user_key", name="uq_conversations_channel_user_key"),
    )

    op.create_table(
        "processed_inbound",
        _pk(),
        _str("channel", 16),
        _str("external_id", 128),
        _ts("processed_at"),
        sa.PrimaryKeyConstraint("id", name="pk_processed_inbound"),
        sa.UniqueConstraint(
            "channel", "external_id", name="uq_processed_inbound_channel_external_id"
        ),
    )
    _index("processed_inbound", "processed_at")


def downgrade() -> None:
    # Dropping a table drops its indexes; children before parents.
    for table in (
        "processed_inbound",
        "conversations",
        "audit_events",
        "ledger_postings",
        "ledger_transactions",
        "payouts",
        "orders",
        "payout_accounts",
        "quotes",
        "cards",
        "consents",
        "channel_identities",
        "users",
    ):
        op.drop_table(table)
