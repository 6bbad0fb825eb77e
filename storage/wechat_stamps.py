"""The repository of WeChat push stamps: the (timestamp, nonce) pairs that signed WeChat's
requests, each bound to what it signed, kept for the replay window (bot/wechat/replay.py)."""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import CursorResult, Table, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.repositories import _insert_or_ignore, _utc
from storage.tables import WeChatPushStampRow

STAMPS = cast(Table, WeChatPushStampRow.__table__)


class SqlAlchemyWeChatPushStampRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def admit(self, timestamp: int, nonce: str, binding: str, expires_at: datetime) -> bool:
        """INSERT … ON CONFLICT DO NOTHING, then read the binding the pair has. Another
        delivery of the same pair (perhaps in another process) is told apart by its binding;
        on PostgreSQL the insert waits for that delivery's transaction to end first."""
        values = {
            "timestamp": timestamp,
            "nonce": nonce,
            "binding": binding,
            "expires_at": _utc(expires_at),
        }
        inserted = await self._session.execute(
            _insert_or_ignore(self._session, STAMPS, values, ["timestamp", "nonce"])
        )
        assert isinstance(inserted, CursorResult)
        if inserted.rowcount == 1:
            return True
        bound = await self._session.scalar(
            select(WeChatPushStampRow.binding).where(
                WeChatPushStampRow.timestamp == timestamp, WeChatPushStampRow.nonce == nonce
            )
        )
        return bound == binding

    async def prune(self, before: datetime) -> int:
        """Forget pairs whose timestamp left the window before ``before``."""
        result = await self._session.execute(
            delete(WeChatPushStampRow).where(WeChatPushStampRow.expires_at < _utc(before))
        )
        assert isinstance(result, CursorResult)
        return int(result.rowcount)


__all__ = ["SqlAlchemyWeChatPushStampRepository"]
