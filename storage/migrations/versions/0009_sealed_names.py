"""Real names are sealed like the ID number: users.real_name and payout_accounts.holder_name
become ``*_enc`` (AES-GCM, bound to their row) with a masked copy (``王*``) for display.

Existing plaintext names are sealed here, in the same transaction, with the data key the caller
hands over (``storage.migrate``: ``cardbot db upgrade`` and the app's own start pass the key the
bots use) — then the plaintext columns are dropped. Done in the migration rather than after it,
so no schema version ever has sealed and plaintext names side by side, and an interrupted
upgrade leaves the old schema intact. A database with names and no key given stops with
``MigrationNeedsKey`` and changes nothing; an empty one (a fresh install, the schema tests)
needs no key. The downgrade opens the names again with the same key.

SQLite: columns are added and dropped with ALTER TABLE (no table rebuild: users and
payout_accounts are referenced by other tables, and a rebuild would trip their foreign keys);
a NOT NULL column is added with an empty default there.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

from core.masking import mask_name
from core.sealing import holder_context, user_context
from storage.migrate import vault_for_migration

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

_EMPTY_BLOB = sa.text("X''")

_users = sa.table(
    "users",
    sa.column("id", sa.Integer()),
    sa.column("real_name", sa.String()),
    sa.column("real_name_enc", sa.LargeBinary()),
    sa.column("real_name_masked", sa.String()),
)
_accounts = sa.table(
    "payout_accounts",
    sa.column("id", sa.Integer()),
    sa.column("holder_name", sa.String()),
    sa.column("holder_name_enc", sa.LargeBinary()),
    sa.column("holder_name_masked", sa.String()),
)


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def upgrade() -> None:
    op.add_column("users", sa.Column("real_name_enc", sa.LargeBinary(), nullable=True))
    op.add_column("users", sa.Column("real_name_masked", sa.String(length=64), nullable=True))
    if _sqlite():
        op.add_column(
            "payout_accounts",
            sa.Column(
                "holder_name_enc", sa.LargeBinary(), nullable=False, server_default=_EMPTY_BLOB
            ),
        )
        op.add_column(
            "payout_accounts",
            sa.Column(
                "holder_name_masked", sa.String(length=64), nullable=False, server_default=""
            ),
        )
    else:
        op.add_column("payout_accounts", sa.Column("holder_name_enc", sa.LargeBinary()))
        op.add_column("payout_accounts", sa.Column("holder_name_masked", sa.String(length=64)))
    _seal_names()
    if not _sqlite():
        op.alter_column("payout_accounts", "holder_name_enc", nullable=False)
        op.alter_column("payout_accounts", "holder_name_masked", nullable=False)
    op.drop_column("users", "real_name")
    op.drop_column("payout_accounts", "holder_name")


def _seal_names() -> None:
    bind = op.get_bind()
    users = bind.execute(
        sa.select(_users.c.id, _users.c.real_name).where(_users.c.real_name.is_not(None))
    ).all()
    accounts = bind.execute(sa.select(_accounts.c.id, _accounts.c.holder_name)).all()
    if not users and not accounts:
        return
    vault = vault_for_migration(context.config)
    if _sqlite():
        # Pages freed by the rewrite are zeroed, not left holding the names; storage.migrate
        # vacuums the file and truncates the WAL once this transaction is committed.
        op.execute("PRAGMA secure_delete = ON")
        context.config.attributes["scrub"] = True
    for user_id, name in ((int(r[0]), str(r[1])) for r in users):
        bind.execute(
            _users.update()
            .where(_users.c.id == user_id)
            .values(
                real_name=None,  # the new row version holds no plaintext
                real_name_enc=vault.encrypt(name, user_context(user_id, "real_name")),
                real_name_masked=mask_name(name),
            )
        )
    for account_id, name in ((int(r[0]), str(r[1])) for r in accounts):
        bind.execute(
            _accounts.update()
            .where(_accounts.c.id == account_id)
            .values(
                holder_name="",
                holder_name_enc=vault.encrypt(name, holder_context(account_id)),
                holder_name_masked=mask_name(name),
            )
        )


def downgrade() -> None:
    op.add_column("users", sa.Column("real_name", sa.String(length=64), nullable=True))
    op.add_column(
        "payout_accounts",
        sa.Column("holder_name", sa.String(length=64), nullable=False, server_default=""),
    )
    bind = op.get_bind()
    users = bind.execute(
        sa.select(_users.c.id, _users.c.real_name_enc).where(_users.c.real_name_enc.is_not(None))
    ).all()
    accounts = bind.execute(sa.select(_accounts.c.id, _accounts.c.holder_name_enc)).all()
    if users or accounts:
        vault = vault_for_migration(context.config)
        for user_id, blob in ((int(r[0]), bytes(r[1])) for r in users):
            name = vault.decrypt(blob, user_context(user_id, "real_name"))
            bind.execute(_users.update().where(_users.c.id == user_id).values(real_name=name))
        for account_id, blob in ((int(r[0]), bytes(r[1])) for r in accounts):
            name = vault.decrypt(blob, holder_context(account_id))
            bind.execute(
                _accounts.update().where(_accounts.c.id == account_id).values(holder_name=name)
            )
    if not _sqlite():
        op.alter_column("payout_accounts", "holder_name", server_default=None)
    op.drop_column("users", "real_name_enc")
    op.drop_column("users", "real_name_masked")
    op.drop_column("payout_accounts", "holder_name_enc")
    op.drop_column("payout_accounts", "holder_name_masked")
