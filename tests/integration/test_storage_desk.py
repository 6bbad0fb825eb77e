"""Contract of the desk's repositories (tickets and their lines, granted roles), on
SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.model import Role
from core.tickets import Priority, Reason, Ticket, TicketMessage, TicketStatus, take
from storage.db import SqlAlchemyUnitOfWorkFactory

T0 = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)
LEASE = timedelta(seconds=60)


async def a_user(factory: SqlAlchemyUnitOfWorkFactory, key: str = "u1") -> int:
    async with factory() as uow:
        user, _ = await uow.users.for_channel("wechat", key, key, "zh", T0)
        await uow.commit()
    return user.id


def ticket_for(user_id: int, **changes: object) -> Ticket:
    base = Ticket(
        user_id=user_id,
        channel="wechat",
        user_key="u1",
        reason=Reason.QUOTE,
        detail="价格不对",
        priority=Priority.NORMAL,
        opened_at=T0,
        evidence={"order": {"card": "****9136"}, "transcript": [["t", "user", "hi"]]},
    )
    return Ticket(**{**base.__dict__, **changes})  # type: ignore[arg-type]


async def test_a_ticket_round_trips_with_its_evidence_and_lines(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    user_id = await a_user(uow_factory)
    async with uow_factory() as uow:
        stored = await uow.tickets.add(ticket_for(user_id))
        assert stored.id is not None
        await uow.tickets.add_message(TicketMessage(stored.id, T0, "user", "还在吗"))
        await uow.tickets.add_message(
            TicketMessage(stored.id, T0, "telegram:9", "内部备注", private=True)
        )
        await uow.commit()
    async with uow_factory() as uow:
        again = await uow.tickets.get(stored.id)
        assert again == stored
        lines = await uow.tickets.messages(stored.id)
        assert [(m.author, m.private) for m in lines] == [("user", False), ("telegram:9", True)]
        assert await uow.tickets.get(stored.id + 100) is None


async def test_the_active_ticket_of_a_user_and_the_current_ticket_of_a_staff_member(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    alice, bob = await a_user(uow_factory, "alice"), await a_user(uow_factory, "bob")
    async with uow_factory() as uow:
        first = await uow.tickets.add(ticket_for(alice))
        second = await uow.tickets.add(ticket_for(bob, user_key="bob"))
        await uow.tickets.update(take(first, "telegram:9", T0))
        await uow.tickets.update(take(second, "telegram:9", T0 + timedelta(minutes=1)))
        await uow.commit()
    async with uow_factory() as uow:
        current = await uow.tickets.current_for("telegram:9")
        assert current is not None and current.id == second.id  # the one taken up last
        assert await uow.tickets.current_for("telegram:8") is None
        mine = await uow.tickets.active_for_user(alice)
        assert mine is not None and mine.status is TicketStatus.TAKEN
        resolved = ticket_for(alice, id=first.id, status=TicketStatus.RESOLVED, resolved_at=T0)
        await uow.tickets.update(resolved)
        await uow.commit()
    async with uow_factory() as uow:
        assert await uow.tickets.active_for_user(alice) is None
        assert [t.id for t in await uow.tickets.active()] == [second.id]


@pytest.mark.parametrize("role", [Role.STAFF, Role.ADMIN])
async def test_roles_are_granted_changed_and_revoked(
    uow_factory: SqlAlchemyUnitOfWorkFactory, role: Role
) -> None:
    async with uow_factory() as uow:
        assert await uow.role_grants.role_of("telegram:5") is None
        await uow.role_grants.grant("telegram:5", Role.STAFF, "telegram:1", T0)
        await uow.role_grants.grant("telegram:5", role, "telegram:1", T0)
        await uow.commit()
    async with uow_factory() as uow:
        assert await uow.role_grants.role_of("telegram:5") is role
        assert list(await uow.role_grants.holders()) == [("telegram:5", role)]
        assert await uow.role_grants.revoke("telegram:5") is True
        assert await uow.role_grants.revoke("telegram:5") is False
        await uow.commit()
    async with uow_factory() as uow:
        assert await uow.role_grants.role_of("telegram:5") is None
