"""Who is staff or admin on Telegram, from ``CARDBOT_STAFF`` / ``CARDBOT_ADMINS``
(``telegram:<user id>`` entries; ``bot/settings.py`` validates the format).

The adapter only recognises these identities and exposes them (``TelegramAdapter.role_of``);
what staff and admins can do comes with their own commands. Nothing tells a user whether
anyone is staff: the lookup is never rendered.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.model import Role


def _ids(entries: str, channel: str) -> frozenset[str]:
    ids: set[str] = set()
    for item in filter(None, (part.strip() for part in entries.split(","))):
        item_channel, _, user = item.partition(":")
        if item_channel == channel and user.strip():
            ids.add(user.strip())
    return frozenset(ids)


@dataclass(frozen=True)
class Roles:
    """The staff and admin user ids of one channel."""

    staff: frozenset[str] = frozenset()
    admins: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, staff: str, admins: str, channel: str = "telegram") -> Roles:
        return cls(_ids(staff, channel), _ids(admins, channel))

    def role_of(self, user_id: str) -> Role:
        """An admin is also staff; everyone else is a customer."""
        if user_id in self.admins:
            return Role.ADMIN
        if user_id in self.staff:
            return Role.STAFF
        return Role.CUSTOMER
