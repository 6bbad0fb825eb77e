"""Key rotation: re-encrypt every sealed value under the vault's primary key, and check that
every sealed value opens.

Sealed values live in a few columns (card numbers and secrets, real names, ID and phone
numbers, payout accounts and their holders' names), in conversation state (data fields
ending in ``_enc``) and in the payloads of updates waiting in the inbound queue. Each is
rewrapped with the context it was written with (``core.sealing``), in small batches, each
batch its own transaction, so a rotation can run while the bots serve and can be resumed if
interrupted.
Fingerprints (HMAC) are not touched: they use the separate fingerprint key, which stays.
"""

from __future__ import annotations

import base64
import binascii
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, select, update
from sqlalchemy.engine import CursorResult

from core.errors import DecryptionError
from core.sealing import (
    account_context,
    card_context,
    conversation_context,
    holder_context,
    is_sealed_field,
    user_context,
)
from storage.crypto import AesGcmVault
from storage.db import SqlAlchemyUnitOfWorkFactory
from storage.inflow import payload_context
from storage.tables import CardRow, ConversationRow, InboundQueueRow, PayoutAccountRow, UserRow

BATCH = 200


# table, sealed column, the context of a row (from its id)
def _table(model: Any) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


SEALED_COLUMNS: tuple[tuple[Table, str, Callable[[int], str]], ...] = (
    (_table(CardRow), "number_enc", lambda row_id: card_context(row_id, "number")),
    (_table(CardRow), "secret_enc", lambda row_id: card_context(row_id, "secret")),
    (_table(UserRow), "real_name_enc", lambda row_id: user_context(row_id, "real_name")),
    (_table(UserRow), "id_number_enc", lambda row_id: user_context(row_id, "id_number")),
    (_table(UserRow), "phone_enc", lambda row_id: user_context(row_id, "phone")),
    (_table(PayoutAccountRow), "account_enc", account_context),
    (_table(PayoutAccountRow), "holder_name_enc", holder_context),
)


@dataclass
class SealedCensus:
    """What a pass over every sealed value found."""

    total: int = 0
    by_key: Counter[str] = field(default_factory=Counter)  # key id (hex) → blobs
    rewrapped: Counter[str] = field(default_factory=Counter)  # where → blobs rewrapped
    broken: list[str] = field(default_factory=list)  # "table.column#id" that do not open

    @property
    def on_old_keys(self) -> int:
        """Blobs that still need a key other than the primary."""
        return self.total - self.by_key.get(self._primary, 0)

    _primary: str = ""


def _handle(
    vault: AesGcmVault, blob: bytes, context: str, where: str, census: SealedCensus, rewrap: bool
) -> bytes | None:
    """Check one blob; returns its rewrapped form when it must be rewritten."""
    census.total += 1
    try:
        vault.decrypt(blob, context)
    except DecryptionError:
        census.broken.append(where)
        census.by_key[vault.key_of(blob)] += 1
        return None
    if rewrap and vault.needs_rewrap(blob):
        census.by_key[vault.primary_key_id] += 1
        census.rewrapped[where.split("#")[0]] += 1
        return vault.rewrap(blob, context)
    census.by_key[vault.key_of(blob)] += 1
    return None


async def _columns(
    factory: SqlAlchemyUnitOfWorkFactory, vault: AesGcmVault, census: SealedCensus, rewrap: bool
) -> None:
    for table, column_name, context_of in SEALED_COLUMNS:
        column = table.c[column_name]
        last_id = 0
        while True:
            async with factory.engine.begin() as conn:
                query = (
                    select(table.c.id, column)
                    .where(table.c.id > last_id, column.is_not(None))
                    .order_by(table.c.id)
                    .limit(BATCH)
                )
                rows = (await conn.execute(query.with_for_update() if rewrap else query)).all()
                for row in rows:
                    row_id, blob = int(row[0]), row[1]
                    where = f"{table.name}.{column_name}#{row_id}"
                    if not isinstance(blob, bytes | bytearray | memoryview) or not blob:
                        continue
                    fresh = _handle(vault, bytes(blob), context_of(row_id), where, census, rewrap)
                    if fresh is not None:
                        await conn.execute(
                            update(table).where(table.c.id == row_id).values({column_name: fresh})
                        )
            if len(rows) < BATCH:
                break
            last_id = rows[-1][0]


async def _conversations(
    factory: SqlAlchemyUnitOfWorkFactory, vault: AesGcmVault, census: SealedCensus, rewrap: bool
) -> None:
    table = _table(ConversationRow)
    last_id = 0
    while True:
        async with factory.engine.begin() as conn:
            query = (
                select(table.c.id, table.c.channel, table.c.user_key, table.c.data)
                .where(table.c.id > last_id)
                .order_by(table.c.id)
                .limit(BATCH)
            )
            rows = (await conn.execute(query.with_for_update() if rewrap else query)).all()
            for row in rows:
                row_id, channel, user_key = int(row[0]), str(row[1]), str(row[2])
                data: dict[str, Any] = dict(row[3] or {})
                changed: dict[str, Any] = {}
                for name, value in data.items():
                    if not is_sealed_field(name) or not isinstance(value, str) or not value:
                        continue
                    where = f"conversations.{name}#{row_id}"
                    try:
                        blob = base64.b64decode(value, validate=True)
                    except (binascii.Error, ValueError):
                        census.total += 1
                        census.broken.append(where)
                        continue
                    context = conversation_context(channel, user_key)
                    fresh = _handle(vault, blob, context, where, census, rewrap)
                    if fresh is not None:
                        changed[name] = base64.b64encode(fresh).decode()
                if changed:
                    result = await conn.execute(
                        update(table)
                        .where(table.c.id == row_id)
                        .values(data={**data, **changed}, version=table.c.version + 1)
                    )
                    assert isinstance(result, CursorResult)
        if len(rows) < BATCH:
            break
        last_id = rows[-1][0]


async def _inbound_queue(
    factory: SqlAlchemyUnitOfWorkFactory, vault: AesGcmVault, census: SealedCensus, rewrap: bool
) -> None:
    """Updates waiting in the inbound queue (sealed under their channel and update key)."""
    table = _table(InboundQueueRow)
    last_id = 0
    while True:
        async with factory.engine.begin() as conn:
            query = (
                select(table.c.id, table.c.channel, table.c.update_key, table.c.payload)
                .where(table.c.id > last_id)
                .order_by(table.c.id)
                .limit(BATCH)
            )
            rows = (await conn.execute(query.with_for_update() if rewrap else query)).all()
            for row in rows:
                row_id, context = int(row[0]), payload_context(str(row[1]), str(row[2]))
                where = f"inbound_queue.payload#{row_id}"
                fresh = _handle(vault, bytes(row[3]), context, where, census, rewrap)
                if fresh is not None:
                    await conn.execute(
                        update(table).where(table.c.id == row_id).values(payload=fresh)
                    )
        if len(rows) < BATCH:
            break
        last_id = rows[-1][0]


async def census(
    factory: SqlAlchemyUnitOfWorkFactory, vault: AesGcmVault, rewrap: bool = False
) -> SealedCensus:
    """Open every sealed value (``rewrap``: and rewrite those under older keys)."""
    result = SealedCensus(_primary=vault.primary_key_id)
    await _columns(factory, vault, result, rewrap)
    await _conversations(factory, vault, result, rewrap)
    await _inbound_queue(factory, vault, result, rewrap)
    return result
