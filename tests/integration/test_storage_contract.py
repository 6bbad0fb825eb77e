"""The storage contract: every repository port, over every backend (see ``uow_factory`` in
tests/conftest.py). One class, parametrised by backend through the fixture."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from core.audit import GENESIS_HASH, chain_hash, verify_chain
from core.errors import ConcurrentUpdate, LedgerError
from core.model import (
    Card,
    Consent,
    ConversationState,
    LedgerTransaction,
    Order,
    OrderStatus,
    Payout,
    PayoutAccount,
    PayoutMethod,
    PayoutState,
    Posting,
    Quote,
    QuoteLine,
    RateTable,
    User,
)
from core.ports import UnitOfWork
from storage.crypto import AesGcmVault
from storage.db import SqlAlchemyUnitOfWorkFactory

T0 = datetime(2025, 3, 1, 9, 30, 15, 123456, tzinfo=UTC)
BEIJING = timezone(timedelta(hours=8))


async def new_user(uow: UnitOfWork, external_id: str = "1001") -> User:
    user, _ = await uow.users.for_channel("telegram", external_id, external_id, "zh", T0)
    return user


async def new_card(uow: UnitOfWork, user: User, fp: str = "fp-card-1") -> Card:
    return await uow.cards.add(
        Card(
            user_id=user.id,
            brand="jd",
            number_enc=b"\x01enc-number",
            number_fp=fp,
            number_masked="6222 **** 1234",
            created_at=T0,
        )
    )


async def new_quote(uow: UnitOfWork, user: User, card: Card) -> Quote:
    assert card.id is not None
    return await uow.quotes.add(
        Quote(
            user_id=user.id,
            card_id=card.id,
            brand="jd",
            face_value_fen=100_000,
            balance_fen=100_000,
            rate_bp=9_250,
            gross_fen=92_500,
            fee_fen=500,
            payout_fen=92_000,
            lines=(
                QuoteLine("quote.rate", rate_bp=9_300),
                QuoteLine("quote.expiry", rate_bp=-50),
                QuoteLine("quote.fee", amount_fen=500),
            ),
            created_at=T0,
            expires_at=T0 + timedelta(minutes=15),
            rates_version="2025-03-01.1",
        )
    )


async def new_order(
    uow: UnitOfWork,
    user: User,
    *,
    fp: str = "fp-card-1",
    at: datetime = T0,
    status: OrderStatus = OrderStatus.QUOTED,
    payout_fen: int = 92_000,
) -> Order:
    card = await new_card(uow, user, fp)
    quote = await new_quote(uow, user, card)
    assert card.id is not None and quote.id is not None
    return await uow.orders.add(
        Order(
            user_id=user.id,
            channel="telegram",
            card_id=card.id,
            quote_id=quote.id,
            brand="jd",
            card_fp=fp,
            card_masked=card.number_masked,
            face_value_fen=100_000,
            balance_fen=100_000,
            payout_fen=payout_fen,
            fee_fen=500,
            status=status,
            created_at=at,
            updated_at=at,
        )
    )


async def new_account(uow: UnitOfWork, user: User, fp: str = "fp-acct-1") -> PayoutAccount:
    return await uow.payout_accounts.add(
        PayoutAccount(
            user_id=user.id,
            method=PayoutMethod.ALIPAY,
            account_enc=b"\x01enc-account",
            account_fp=fp,
            account_masked="138****8000",
            holder_name_enc=b"\x01enc-holder",
            holder_name_masked="张*",
            created_at=T0,
        )
    )


def new_payout(order: Order, account: PayoutAccount, reference: str) -> Payout:
    assert order.id is not None and account.id is not None
    return Payout(
        order_id=order.id,
        reference=reference,
        method=PayoutMethod.ALIPAY,
        payout_account_id=account.id,
        amount_fen=order.payout_fen,
        state=PayoutState.PENDING,
        created_at=T0,
        updated_at=T0,
    )


def purchase(order_id: int | None, amount_fen: int = 92_000) -> LedgerTransaction:
    return LedgerTransaction(
        kind="purchase",
        postings=(Posting("asset:cards", amount_fen), Posting("liability:user:1", -amount_fen)),
        created_at=T0,
        order_id=order_id,
    )


class TestStorageContract:
    # ---------------------------------------------------------------------------------------
    # Unit of work

    async def test_leaving_without_commit_rolls_back(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async with uow_factory() as uow:
            await new_user(uow)
            assert await uow.inbox.claim("telegram", "u1", T0)
        async with uow_factory() as uow:
            assert await uow.inbox.claim("telegram", "u1", T0)
            assert await uow.orders.recent() == []
            with pytest.raises(KeyError):
                await uow.users.get(1)

    async def test_an_error_inside_the_block_rolls_back(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        with pytest.raises(RuntimeError):
            async with uow_factory() as uow:
                await uow.inbox.claim("telegram", "u1", T0)
                raise RuntimeError("boom")
        async with uow_factory() as uow:
            assert await uow.inbox.claim("telegram", "u1", T0)

    async def test_rollback_discards_work_since_the_last_commit(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async with uow_factory() as uow:
            await uow.inbox.claim("telegram", "kept", T0)
            await uow.commit()
            await uow.inbox.claim("telegram", "dropped", T0)
            await uow.rollback()
            assert not await uow.inbox.claim("telegram", "kept", T0)
            assert await uow.inbox.claim("telegram", "dropped", T0)

    async def test_each_test_starts_from_an_empty_database_with_ids_from_one(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async with uow_factory() as uow:
            assert await uow.orders.recent() == []
            assert await uow.audit.all() == []
            assert await uow.ledger.transactions() == []
            user = await new_user(uow)
            order = await new_order(uow, user)
        assert user.id == 1 and order.id == 1

    async def test_a_second_writer_waits_until_the_first_commits(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async def second_writer() -> bool:
            async with uow_factory() as uow:
                claimed = await uow.inbox.claim("telegram", "race", T0)
                await uow.commit()
                return claimed

        async with uow_factory() as first:
            assert await first.inbox.claim("telegram", "race", T0)
            second = asyncio.create_task(second_writer())
            await asyncio.sleep(0.2)
            assert not second.done()
            await first.commit()
        assert await second is False

    # ---------------------------------------------------------------------------------------
    # Inbox

    async def test_a_message_is_claimed_once(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async with uow_factory() as uow:
            assert await uow.inbox.claim("telegram", "update:1", T0)
            assert not await uow.inbox.claim("telegram", "update:1", T0)
            assert await uow.inbox.claim("wechat", "update:1", T0)
            await uow.commit()
        async with uow_factory() as uow:
            assert not await uow.inbox.claim("telegram", "update:1", T0 + timedelta(hours=1))

    async def test_concurrent_claims_let_exactly_one_through(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async def claim() -> bool:
            async with uow_factory() as uow:
                claimed = await uow.inbox.claim("wechat", "msg:77", T0)
                await uow.commit()
                return claimed

        results = await asyncio.gather(*(claim() for _ in range(4)))
        assert sorted(results) == [False, False, False, True]

    # ---------------------------------------------------------------------------------------
    # Conversations

    async def test_conversation_round_trips_and_versions_increase(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async with uow_factory() as uow:
            assert await uow.conversations.get("telegram", "42") is None
            first = await uow.conversations.save(
                ConversationState("telegram", "42", "sell.card", {"card_id": 7, "名": "卡"})
            )
            assert first.version == 1
            assert first.updated_at is not None and first.updated_at.tzinfo is not None
            await uow.commit()
        async with uow_factory() as uow:
            stored = await uow.conversations.get("telegram", "42")
            assert stored == first
            second = await uow.conversations.save(
                replace(stored, step="sell.secret", data={"card_id": 7}, updated_at=T0)
            )
            await uow.commit()
        assert second.version == 2
        async with uow_factory() as uow:
            assert await uow.conversations.get("telegram", "42") == second
            assert await uow.conversations.get("wechat", "42") is None

    async def test_saving_a_stale_conversation_raises_concurrent_update(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async with uow_factory() as uow:
            state = await uow.conversations.save(ConversationState("wechat", "oAbc", "start"))
            await uow.commit()
        async with uow_factory() as uow:
            await uow.conversations.save(replace(state, step="a"))
            await uow.commit()
        async with uow_factory() as uow:
            with pytest.raises(ConcurrentUpdate):
                await uow.conversations.save(replace(state, step="b"))
            with pytest.raises(ConcurrentUpdate):
                await uow.conversations.save(replace(state, version=9))
            stored = await uow.conversations.get("wechat", "oAbc")
        assert stored is not None and stored.step == "a" and stored.version == 2

    async def test_a_second_first_save_raises_and_leaves_the_unit_of_work_usable(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async with uow_factory() as uow:
            await uow.conversations.save(ConversationState("telegram", "9", "start"))
            await uow.commit()
        async with uow_factory() as uow:
            assert await uow.inbox.claim("telegram", "before", T0)
            with pytest.raises(ConcurrentUpdate):
                await uow.conversations.save(ConversationState("telegram", "9", "other"))
            assert await uow.inbox.claim("telegram", "after", T0)
            await uow.commit()
        async with uow_factory() as uow:
            assert not await uow.inbox.claim("telegram", "before", T0)
            assert not await uow.inbox.claim("telegram", "after", T0)
            stored = await uow.conversations.get("telegram", "9")
        assert stored is not None and stored.step == "start"

    # ---------------------------------------------------------------------------------------
    # Users and consents

    async def test_a_channel_identity_maps_to_one_user(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async with uow_factory() as uow:
            user, identity = await uow.users.for_channel("wechat", "oAbc", "oAbc", "en", T0)
            await uow.commit()
        assert identity.user_id == user.id and identity.reachable
        assert user.language == "en" and user.created_at == T0 and not user.is_verified
        async with uow_factory() as uow:
            again, identity2 = await uow.users.for_channel(
                "wechat", "oAbc", "chat-2", "zh", T0 + timedelta(days=1)
            )
            other, _ = await uow.users.for_channel("telegram", "oAbc", "oAbc", "zh", T0)
            await uow.commit()
        assert again == user
        assert identity2.chat_id == "chat-2"
        assert other.id != user.id
        async with uow_factory() as uow:
            assert await uow.users.identities(user.id) == [identity2]
            assert await uow.users.get(user.id) == user
            with pytest.raises(KeyError):
                await uow.users.get(10_000)

    async def test_an_identity_marked_unreachable_is_reachable_again_when_it_writes(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async with uow_factory() as uow:
            user, _ = await uow.users.for_channel("telegram", "55", "55", "zh", T0)
            assert await uow.users.set_reachable("telegram", "55", False)
            assert not await uow.users.set_reachable("telegram", "nobody", False)
            await uow.commit()
        async with uow_factory() as uow:
            (identity,) = await uow.users.identities(user.id)
            assert not identity.reachable
            _, identity = await uow.users.for_channel("telegram", "55", "55", "zh", T0)
            await uow.commit()
        assert identity.reachable

    async def test_simultaneous_first_contacts_create_one_user(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async def first_contact() -> int:
            async with uow_factory() as uow:
                user, _ = await uow.users.for_channel("telegram", "777", "777", "zh", T0)
                await uow.commit()
                return user.id

        ids = await asyncio.gather(*(first_contact() for _ in range(3)))
        assert len(set(ids)) == 1
        async with uow_factory() as uow:
            assert len(await uow.users.identities(ids[0])) == 1

    async def test_simultaneous_first_saves_of_a_conversation_let_one_win(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async def first_save(step: str) -> str:
            async with uow_factory() as uow:
                try:
                    await uow.conversations.save(ConversationState("wechat", "oX", step))
                except ConcurrentUpdate:
                    return "conflict"
                await uow.commit()
                return "saved"

        outcomes = await asyncio.gather(first_save("a"), first_save("b"))
        assert sorted(outcomes) == ["conflict", "saved"]

    async def test_user_updates_round_trip_and_id_fingerprints_are_found(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async with uow_factory() as uow:
            user = await new_user(uow)
            verified = replace(
                user,
                language="en",
                real_name_enc=b"\x01name",
                real_name_masked="张*",
                id_number_enc=b"\x01id",
                id_number_fp="fp-id",
                id_number_masked="1101**********123X",
                phone_enc=b"\x01phone",
                phone_masked="138****8000",
                verified_at=T0.astimezone(BEIJING),
                kyc_level=1,
            )
            await uow.users.update(verified)
            await uow.commit()
        async with uow_factory() as uow:
            stored = await uow.users.get(user.id)
            assert stored == verified and stored.is_verified
            assert stored.verified_at is not None and stored.verified_at.tzinfo == UTC

    async def test_consents_are_recorded_per_kind_and_version(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async with uow_factory() as uow:
            user = await new_user(uow)
            consent = await uow.consents.add(Consent(user.id, "identity", "v1", T0, "telegram"))
            await uow.commit()
        assert consent.id is not None
        async with uow_factory() as uow:
            assert await uow.consents.has(user.id, "identity", "v1")
            assert not await uow.consents.has(user.id, "identity", "v2")
            assert not await uow.consents.has(user.id, "marketing", "v1")
            assert not await uow.consents.has(user.id + 1, "identity", "v1")

    # ---------------------------------------------------------------------------------------
    # Cards, quotes, orders

    async def test_cards_round_trip(self, uow_factory: SqlAlchemyUnitOfWorkFactory) -> None:
        async with uow_factory() as uow:
            user = await new_user(uow)
            card = await new_card(uow, user)
            assert card.id is not None
            verified = replace(
                card,
                number_enc=b"\x01other",
                secret_enc=b"\x01secret",
                status="active",
                face_value_fen=100_000,
                balance_fen=99_950,
                expires=date(2027, 12, 31),
                verified_at=T0,
            )
            await uow.cards.update(verified)
            await uow.commit()
        async with uow_factory() as uow:
            assert await uow.cards.get(card.id) == verified
            with pytest.raises(KeyError):
                await uow.cards.get(card.id + 1)

    async def test_quotes_round_trip_with_their_lines(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async with uow_factory() as uow:
            user = await new_user(uow)
            quote = await new_quote(uow, user, await new_card(uow, user))
            await uow.commit()
        assert quote.id is not None
        async with uow_factory() as uow:
            stored = await uow.quotes.get(quote.id)
            with pytest.raises(KeyError):
                await uow.quotes.get(quote.id + 1)
        assert stored == quote
        assert stored.lines[2] == QuoteLine("quote.fee", amount_fen=500)
        assert stored.is_locked_at(T0 + timedelta(minutes=14))

    async def test_orders_round_trip_and_list_newest_first(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async with uow_factory() as uow:
            alice = await new_user(uow, "alice")
            bob = await new_user(uow, "bob")
            old = await new_order(uow, alice, fp="a", at=T0)
            new = await new_order(uow, alice, fp="b", at=T0 + timedelta(minutes=1))
            bobs = await new_order(uow, bob, fp="c", at=T0 + timedelta(minutes=2))
            account = await new_account(uow, alice)
            changed = replace(
                old,
                status=OrderStatus.SETTLED,
                risk_outcome="approve",
                risk_reasons=("daily_amount", "velocity"),
                risk_version="r1",
                payout_account_id=account.id,
                updated_at=T0 + timedelta(hours=1),
                settled_at=T0 + timedelta(hours=1),
            )
            await uow.orders.update(changed)
            await uow.commit()
        assert old.id is not None and new.id is not None
        async with uow_factory() as uow:
            assert await uow.orders.get(old.id) == changed
            assert [o.id for o in await uow.orders.for_user(alice.id)] == [new.id, old.id]
            assert [o.id for o in await uow.orders.for_user(alice.id, limit=1)] == [new.id]
            assert [o.id for o in await uow.orders.recent()] == [bobs.id, new.id, old.id]
            assert [o.id for o in await uow.orders.recent(limit=2)] == [bobs.id, new.id]
            with pytest.raises(KeyError):
                await uow.orders.get(10_000)

    async def test_orders_are_found_by_card_fingerprint_and_status(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async with uow_factory() as uow:
            alice = await new_user(uow, "alice")
            bob = await new_user(uow, "bob")
            a = await new_order(uow, alice, fp="same", status=OrderStatus.PAYING)
            b = await new_order(uow, bob, fp="same", status=OrderStatus.CANCELLED)
            await new_order(uow, bob, fp="different", status=OrderStatus.PAYING)
            await uow.commit()
        async with uow_factory() as uow:
            holding = [OrderStatus.PAYING, OrderStatus.SETTLED]
            assert [o.id for o in await uow.orders.with_card_fp("same", holding)] == [a.id]
            both = [OrderStatus.PAYING, OrderStatus.CANCELLED]
            assert [o.id for o in await uow.orders.with_card_fp("same", both)] == [a.id, b.id]
            assert await uow.orders.with_card_fp("same", []) == []
            assert await uow.orders.with_card_fp("unknown", holding) == []

    async def test_payouts_since_lists_the_people_s_orders_from_a_time_on(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        since = T0
        async with uow_factory() as uow:
            alice = await new_user(uow, "alice")
            alice_wechat = await new_user(uow, "alice-wechat")
            bob = await new_user(uow, "bob")
            settled = OrderStatus.SETTLED
            await new_order(uow, alice, fp="1", at=since, status=settled, payout_fen=100)
            await new_order(
                uow,
                alice_wechat,
                fp="2",
                at=since + timedelta(days=3),
                status=settled,
                payout_fen=20,
            )
            await new_order(
                uow,
                alice,
                fp="4",
                at=since - timedelta(microseconds=1),
                status=settled,
                payout_fen=40_000,
            )
            await new_order(
                uow,
                alice,
                fp="5",
                at=since + timedelta(hours=1),
                status=OrderStatus.REJECTED,
                payout_fen=500_000,
            )
            await new_order(uow, bob, fp="6", at=since, status=settled, payout_fen=6_000_000)
            await uow.commit()
        async with uow_factory() as uow:
            amounts = uow.orders.payouts_since
            people = [alice.id, alice_wechat.id]
            assert await amounts(people, since, [settled]) == [
                (since, 100),
                (since + timedelta(days=3), 20),
            ]
            assert await amounts(people, since.astimezone(BEIJING), [settled]) == [
                (since, 100),
                (since + timedelta(days=3), 20),
            ]
            both = [settled, OrderStatus.REJECTED]
            assert [a for _, a in await amounts([alice.id], since, both)] == [100, 500_000]
            assert await amounts([alice.id], since, []) == []
            assert await amounts([], since, [settled]) == []
            # Velocity counts every card quoted, whatever became of it.
            assert await uow.orders.count_since(people, since) == 3
            assert await uow.orders.count_since([bob.id], since + timedelta(seconds=1)) == 0
            assert await uow.orders.count_since([], since) == 0

    async def test_one_person_s_accounts_and_an_account_s_holders_are_found_by_fingerprint(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async with uow_factory() as uow:
            alice = await new_user(uow, "alice")
            alice_wechat = await new_user(uow, "alice-wechat")
            bob = await new_user(uow, "bob")
            for user, id_fp in ((alice, "id-a"), (alice_wechat, "id-a"), (bob, "id-b")):
                await uow.users.update(replace(user, id_number_fp=id_fp))
            await new_account(uow, alice, fp="acct-shared")
            await new_account(uow, bob, fp="acct-shared")
            await new_account(uow, bob, fp="acct-bob")
            await uow.commit()
        async with uow_factory() as uow:
            assert await uow.users.with_id_fp("id-a") == [alice.id, alice_wechat.id]
            assert await uow.users.with_id_fp("nobody") == []
            assert await uow.payout_accounts.holders("acct-shared") == [
                (alice.id, "id-a"),
                (bob.id, "id-b"),
            ]
            assert await uow.payout_accounts.holders("acct-bob") == [(bob.id, "id-b")]

    async def test_the_rate_table_in_force_is_the_latest_whose_time_has_come(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        def table(version: str, effective: datetime) -> RateTable:
            return RateTable(version, effective, {"version": version}, "0" * 64, "staff:x", T0)

        async with uow_factory() as uow:
            assert await uow.rates.in_force(T0) is None
            assert await uow.rates.add(table("a", T0))
            assert await uow.rates.add(table("c", T0 + timedelta(days=2)))
            assert await uow.rates.add(table("b", T0 + timedelta(days=1)))
            assert not await uow.rates.add(table("a", T0 + timedelta(days=9)))
            await uow.commit()
        async with uow_factory() as uow:
            in_force = uow.rates.in_force
            assert (await in_force(T0 - timedelta(seconds=1))) is None
            assert (await in_force(T0)).version == "a"  # type: ignore[union-attr]
            later = T0 + timedelta(days=1, hours=1)
            assert (await in_force(later.astimezone(BEIJING))).version == "b"  # type: ignore[union-attr]
            assert [t.version for t in await uow.rates.all()] == ["c", "b", "a"]
            [stored] = [t for t in await uow.rates.all() if t.version == "a"]
            assert stored == table("a", T0)

    async def test_the_blacklist_holds_fingerprints_once(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async with uow_factory() as uow:
            assert await uow.risk_list.add("id_number", "fp1", "fraud report", "admin:1", T0)
            assert not await uow.risk_list.add("id_number", "fp1", "again", "admin:1", T0)
            assert await uow.risk_list.add("card", "fp2", "stolen", "admin:1", T0)
            await uow.commit()
        async with uow_factory() as uow:
            hits = await uow.risk_list.hits(
                {"id_number": "fp1", "payout_account": "fp1", "card": "fp2"}
            )
            assert hits == ("id_number", "card")
            assert await uow.risk_list.hits({"id_number": None}) == ()
            assert [e[:2] for e in await uow.risk_list.entries()] == [
                ("card", "fp2"),
                ("id_number", "fp1"),
            ]
            assert await uow.risk_list.remove("card", "fp2")
            assert not await uow.risk_list.remove("card", "fp2")
            await uow.commit()
        async with uow_factory() as uow:
            assert await uow.risk_list.hits({"card": "fp2"}) == ()

    async def test_what_an_actor_did_lately_and_the_chain_head(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async with uow_factory() as uow:
            assert await uow.audit.head() is None
            await uow.audit.append(T0, "user:1", "card.secret_wrong", "card_fp:x", {})
            await uow.audit.append(T0 + timedelta(minutes=5), "user:1", "card.captured", "c", {})
            await uow.audit.append(
                T0 + timedelta(minutes=9), "user:2", "card.secret_wrong", "y", {}
            )
            last = await uow.audit.append(
                T0 + timedelta(minutes=10), "user:1", "card.used_refused", "card:3", {}
            )
            await uow.commit()
        async with uow_factory() as uow:
            wanted = ("card.secret_wrong", "card.used_refused")
            recent = await uow.audit.by_actor("user:1", wanted, T0)
            assert [e.action for e in recent] == ["card.secret_wrong", "card.used_refused"]
            later = await uow.audit.by_actor("user:1", wanted, T0 + timedelta(minutes=1))
            assert [e.action for e in later] == ["card.used_refused"]
            assert await uow.audit.head() == last

    # ---------------------------------------------------------------------------------------
    # Payout accounts and payouts

    async def test_payout_accounts_round_trip_most_recently_used_first(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async with uow_factory() as uow:
            user = await new_user(uow)
            first = await new_account(uow, user, "fp-1")
            second = await new_account(uow, user, "fp-2")
            used = replace(first, account_enc=b"\x01new", last_used_at=T0 + timedelta(hours=1))
            await uow.payout_accounts.update(used)
            await uow.commit()
        assert first.id is not None
        async with uow_factory() as uow:
            assert await uow.payout_accounts.get(first.id) == used
            assert await uow.payout_accounts.for_user(user.id) == [used, second]
            assert await uow.payout_accounts.find(user.id, PayoutMethod.ALIPAY, "fp-2") == second
            assert await uow.payout_accounts.find(user.id, PayoutMethod.BANK, "fp-2") is None
            assert await uow.payout_accounts.find(user.id + 1, PayoutMethod.ALIPAY, "fp-2") is None
            with pytest.raises(KeyError):
                await uow.payout_accounts.get(first.id + 100)

    async def test_a_duplicate_payout_account_is_refused_and_the_unit_of_work_goes_on(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async with uow_factory() as uow:
            user = await new_user(uow)
            first = await new_account(uow, user, "fp-dup")
            with pytest.raises(ConcurrentUpdate):
                await new_account(uow, user, "fp-dup")
            other = await new_account(uow, user, "fp-other")
            await uow.commit()
        async with uow_factory() as uow:
            assert {a.id for a in await uow.payout_accounts.for_user(user.id)} == {
                first.id,
                other.id,
            }

    async def test_payouts_round_trip_and_unfinished_ones_are_listed_oldest_first(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async with uow_factory() as uow:
            user = await new_user(uow)
            account = await new_account(uow, user)
            orders = [await new_order(uow, user, fp=str(i)) for i in range(3)]
            payouts = [
                await uow.payouts.add(
                    replace(new_payout(o, account, f"REF{i}"), created_at=T0 + timedelta(i))
                )
                for i, o in enumerate(orders)
            ]
            done = replace(
                payouts[1],
                state=PayoutState.SUCCEEDED,
                attempts=1,
                provider_txn_id="alipay-123",
                updated_at=T0 + timedelta(hours=2),
            )
            await uow.payouts.update(done)
            unknown = replace(payouts[2], state=PayoutState.UNKNOWN, attempts=1)
            await uow.payouts.update(unknown)
            await uow.commit()
        async with uow_factory() as uow:
            assert await uow.payouts.for_order(orders[1].id or 0) == done
            assert await uow.payouts.for_order(orders[0].id or 0) == payouts[0]
            assert await uow.payouts.for_order(orders[2].id or 0) == unknown
            assert await uow.payouts.for_order(10_000) is None

    async def test_payout_references_are_unique(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async with uow_factory() as uow:
            user = await new_user(uow)
            account = await new_account(uow, user)
            first = await new_order(uow, user, fp="1")
            second = await new_order(uow, user, fp="2")
            await uow.payouts.add(new_payout(first, account, "CBP0000000001N01"))
            await uow.commit()
        async with uow_factory() as uow:
            with pytest.raises(ConcurrentUpdate):
                await uow.payouts.add(new_payout(second, account, "CBP0000000001N01"))
            # The refusal leaves the unit of work usable.
            await uow.payouts.add(new_payout(second, account, "CBP0000000002N01"))
            await uow.commit()
        async with uow_factory() as uow:
            assert (await uow.payouts.for_order(second.id or 0)) is not None

    async def test_an_order_has_one_live_payout_and_a_new_one_only_after_a_failure(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async with uow_factory() as uow:
            user = await new_user(uow)
            account = await new_account(uow, user)
            order = await new_order(uow, user)
            first = await uow.payouts.add(new_payout(order, account, "CBP0000000001N01"))
            await uow.commit()
        async with uow_factory() as uow:
            with pytest.raises(ConcurrentUpdate):
                await uow.payouts.add(new_payout(order, account, "CBP0000000001N02"))
            await uow.payouts.update(replace(first, state=PayoutState.FAILED, attempts=1))
            retry = await uow.payouts.add(new_payout(order, account, "CBP0000000001N02"))
            await uow.commit()
        async with uow_factory() as uow:
            assert await uow.payouts.for_order(order.id or 0) == retry

    # ---------------------------------------------------------------------------------------
    # Ledger

    async def test_a_balanced_transaction_is_posted_with_a_uuid(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async with uow_factory() as uow:
            user = await new_user(uow)
            order = await new_order(uow, user)
            posted = await uow.ledger.post(purchase(order.id))
            payout = LedgerTransaction(
                kind="payout",
                postings=(
                    Posting("liability:user:1", 92_000),
                    Posting("asset:alipay", -91_000),
                    Posting("income:fees", -1_000),
                ),
                created_at=T0 + timedelta(seconds=1),
            )
            posted2 = await uow.ledger.post(payout)
            await uow.commit()
        assert posted.id is not None and len(posted.id) == 36 and posted.id != posted2.id
        assert replace(posted, id=None) == purchase(order.id)
        async with uow_factory() as uow:
            assert await uow.ledger.transactions() == [posted, posted2]
            assert await uow.ledger.transactions(order_id=order.id) == [posted]
            assert await uow.ledger.transactions(order_id=10_000) == []
            assert await uow.ledger.balance("asset:cards") == 92_000
            assert await uow.ledger.balance("liability:user:1") == 0
            assert await uow.ledger.balance("income:fees") == -1_000
            assert await uow.ledger.balance("never:used") == 0
            every_account = {p.account for t in (posted, posted2) for p in t.postings}
            assert sum([await uow.ledger.balance(a) for a in every_account]) == 0

    async def test_an_unbalanced_transaction_is_refused(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async with uow_factory() as uow:
            unbalanced = LedgerTransaction(
                kind="purchase",
                postings=(Posting("asset:cards", 100), Posting("liability:user:1", -99)),
                created_at=T0,
            )
            with pytest.raises(LedgerError):
                await uow.ledger.post(unbalanced)
            with pytest.raises(LedgerError):
                await uow.ledger.post(replace(unbalanced, postings=()))
            await uow.commit()
        async with uow_factory() as uow:
            assert await uow.ledger.transactions() == []
            assert await uow.ledger.balance("asset:cards") == 0

    # ---------------------------------------------------------------------------------------
    # Audit log

    async def test_audit_events_form_a_hash_chain(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async with uow_factory() as uow:
            first = await uow.audit.append(
                T0.astimezone(BEIJING),
                "user:1",
                "card.captured",
                "card:1",
                {"brand": "jd", "card": "6222 **** 1234", "n": 3},
            )
            await uow.commit()
        async with uow_factory() as uow:
            second = await uow.audit.append(
                T0 + timedelta(seconds=1), "staff:9", "order.approved", "order:1", {}
            )
            await uow.commit()
        assert first.prev_hash == GENESIS_HASH and second.prev_hash == first.hash
        assert first.hash == chain_hash(
            GENESIS_HASH,
            T0,
            "user:1",
            "card.captured",
            "card:1",
            {"brand": "jd", "card": "6222 **** 1234", "n": 3},
        )
        async with uow_factory() as uow:
            events = await uow.audit.all()
        assert events == [first, second]
        assert [e.seq for e in events] == sorted(e.seq for e in events if e.seq is not None)
        assert events[0].at == T0 and events[0].at.tzinfo == UTC
        assert verify_chain(events) is None
        async with uow_factory() as uow:
            assert await uow.audit.for_subject("order:1") == [second]
            assert await uow.audit.for_subject("order:2") == []

    async def test_audit_details_are_stored_as_they_were_hashed(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        details: dict[str, object] = {
            "expires": date(2027, 1, 31),
            "status": OrderStatus.SETTLED,
            "reasons": ["velocity"],
            "名字": "张三",
        }
        async with uow_factory() as uow:
            event = await uow.audit.append(T0, "risk", "risk.assessed", "order:1", details)
            await uow.commit()
        expected = {"expires": "2027-01-31", "status": "settled", "reasons": ["velocity"]}
        assert event.details == {**expected, "名字": "张三"}
        async with uow_factory() as uow:
            assert await uow.audit.all() == [event]
            assert verify_chain(await uow.audit.all()) is None

    async def test_concurrent_audit_appends_keep_one_chain(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async def append(i: int) -> None:
            async with uow_factory() as uow:
                await uow.audit.append(T0, f"worker:{i}", "tick", "clock", {"i": i})
                await uow.commit()

        await asyncio.gather(*(append(i) for i in range(6)))
        async with uow_factory() as uow:
            events = await uow.audit.all()
        assert len(events) == 6
        assert verify_chain(events) is None

    # ---------------------------------------------------------------------------------------
    # Time

    async def test_timestamps_come_back_timezone_aware_in_utc(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        local = T0.astimezone(BEIJING)
        async with uow_factory() as uow:
            user, _ = await uow.users.for_channel("telegram", "tz", "tz", "zh", local)
            order = await new_order(uow, user, at=local)
            await uow.inbox.claim("telegram", "tz", local)
            await uow.commit()
        async with uow_factory() as uow:
            stored_user = await uow.users.get(user.id)
            stored_order = await uow.orders.get(order.id or 0)
            quote = await uow.quotes.get(stored_order.quote_id)
        stamps = [
            stored_user.created_at,
            stored_order.created_at,
            stored_order.updated_at,
            quote.created_at,
            quote.expires_at,
        ]
        assert all(s.tzinfo == UTC for s in stamps)
        assert stored_order.created_at == T0

    async def test_naive_timestamps_are_refused(
        self, uow_factory: SqlAlchemyUnitOfWorkFactory
    ) -> None:
        async with uow_factory() as uow:
            with pytest.raises(ValueError, match="naive"):
                await uow.inbox.claim("telegram", "naive", T0.replace(tzinfo=None))


def database_file_bytes(path: Path) -> bytes:
    """The SQLite file and its write-ahead log (recent commits live there until checkpoint)."""
    files = [path, path.with_name(path.name + "-wal")]
    raw = b"".join(f.read_bytes() for f in files if f.exists())
    assert raw, f"no database file at {path}"
    return raw


@pytest.mark.parametrize("uow_factory", ["sqlite"], indirect=True)
async def test_sensitive_values_never_reach_the_database_file_in_plaintext(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    vault = AesGcmVault([os.urandom(32)])
    canaries = {
        "number": "6222020200112233445",
        "secret": "CANARYSECRET8842",
        "id_number": "11010519491231002X",
        "phone": "13912345678",
        "account": "6217000010012345678",
        "name": "欧阳娜娜",
    }
    async with uow_factory() as uow:
        user, _ = await uow.users.for_channel("telegram", "canary", "canary", "zh", T0)
        await uow.users.update(
            replace(
                user,
                real_name_enc=vault.encrypt(canaries["name"], f"user:{user.id}.real_name"),
                real_name_masked="欧***",
                id_number_enc=vault.encrypt(canaries["id_number"], f"user:{user.id}.id_number"),
                id_number_fp=vault.fingerprint("id_number", canaries["id_number"]),
                id_number_masked="1101**********002X",
                phone_enc=vault.encrypt(canaries["phone"], f"user:{user.id}.phone"),
                phone_masked="139****5678",
            )
        )
        card = await uow.cards.add(
            Card(
                user_id=user.id,
                brand="jd",
                number_enc=b"",
                number_fp=vault.fingerprint("card", f"jd:{canaries['number']}"),
                number_masked="6222 **** 3445",
                created_at=T0,
            )
        )
        card = replace(
            card,
            number_enc=vault.encrypt(canaries["number"], f"card.number:{card.id}"),
            secret_enc=vault.encrypt(canaries["secret"], f"card.secret:{card.id}"),
        )
        await uow.cards.update(card)
        account = await new_account(uow, user, vault.fingerprint("payout.bank", "x"))
        await uow.payout_accounts.update(
            replace(
                account,
                account_enc=vault.encrypt(canaries["account"], f"acct:{account.id}"),
                holder_name_enc=vault.encrypt(canaries["name"], f"holder:{account.id}"),
            )
        )
        await uow.commit()
    async with uow_factory() as uow:
        stored = await uow.cards.get(card.id or 0)
        assert stored.secret_enc is not None
        assert vault.decrypt(stored.secret_enc, f"card.secret:{card.id}") == canaries["secret"]
    path = uow_factory.engine.url.database
    assert path is not None
    raw = database_file_bytes(Path(path))
    # Positive control: a value stored in plaintext on purpose is found by the same scan.
    assert b"138****8000" in raw
    for value in canaries.values():
        assert value.encode() not in raw, value
        assert value.encode("utf-16-le") not in raw, value
