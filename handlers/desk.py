"""The desk: commands and relays that sit in front of the sell flow.

Staff and admin commands, a user's subscriptions, and the relay between a user and the staff
member who took their ticket are handled here, before the conversation's own flow sees the
message. A command handler gets a :class:`DeskCtx` with an open unit of work and returns the
replies for the sender; the desk commits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from core.messages import Inbound, Reply
from core.model import Role, User
from core.ports import UnitOfWork
from handlers.engine import Services
from handlers.i18n import Translator


@dataclass
class DeskCtx:
    """What a desk command sees. ``actor`` (``<channel>:<user id>``) names the sender in the
    audit log; the unit of work is open and committed by the desk after the handler returns."""

    uow: UnitOfWork
    services: Services
    inbound: Inbound
    user: User
    role: Role
    actor: str
    t: Translator
    now: datetime

    @property
    def args(self) -> str:
        return self.inbound.args


__all__ = ["DeskCtx", "DeskHandler", "Role"]

DeskHandler = Callable[[DeskCtx], Awaitable[list[Reply]]]
