"""One owner per card in storage, over SQLite and PostgreSQL: the partial unique index behind
the sale's lock on the card (issue 12, item 9). Two orders of the same card may be quoted; only
one may hold it (accepted or later), and a refused second holder leaves the first intact."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from core.errors import ConcurrentUpdate
from core.model import OrderStatus
from core.sale import CARD_HOLDING_STATUSES
from storage.db import SqlAlchemyUnitOfWorkFactory
from storage.tables import CARD_HOLDING_STATES
from tests.integration.test_storage_contract import new_order, new_user


def test_storage_and_the_sale_agree_on_which_statuses_hold_a_card() -> None:
    assert set(CARD_HOLDING_STATES) == {s.value for s in CARD_HOLDING_STATUSES}


async def test_a_second_order_cannot_hold_a_card_another_order_holds(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    async with uow_factory() as uow:
        alice, bob = await new_user(uow, "1001"), await new_user(uow, "1002")
        first = await new_order(uow, alice, fp="fp-shared")
        second = await new_order(uow, bob, fp="fp-shared")  # two quotes: allowed
        await uow.orders.update(replace(first, status=OrderStatus.ACCEPTED))
        await uow.commit()
    async with uow_factory() as uow:
        with pytest.raises(ConcurrentUpdate):
            await uow.orders.update(replace(second, status=OrderStatus.ACCEPTED))
    async with uow_factory() as uow:
        assert (await uow.orders.get(first.id or 0)).status is OrderStatus.ACCEPTED
        assert (await uow.orders.get(second.id or 0)).status is OrderStatus.QUOTED
        # Once the first lets go of the card, the second may take it.
        await uow.orders.update(replace(first, status=OrderStatus.CANCELLED))
        await uow.orders.update(replace(second, status=OrderStatus.ACCEPTED))
        await uow.commit()


async def test_locking_a_card_serialises_two_units_of_work(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    """Each unit of work checks who holds the card and takes it, under the card's lock: the
    second sees the first's order and stays out."""
    async with uow_factory() as uow:
        users = [await new_user(uow, "2001"), await new_user(uow, "2002")]
        orders = [await new_order(uow, u, fp="fp-raced") for u in users]
        await uow.commit()

    async def take(index: int) -> bool:
        async with uow_factory() as uow:
            await uow.orders.lock_card("fp-raced")
            held = await uow.orders.with_card_fp("fp-raced", CARD_HOLDING_STATUSES)
            if held:
                return False
            await asyncio.sleep(0)  # let the other one run into the lock
            await uow.orders.update(replace(orders[index], status=OrderStatus.ACCEPTED))
            await uow.commit()
            return True

    results = await asyncio.gather(take(0), take(1))
    assert sorted(results) == [False, True]
