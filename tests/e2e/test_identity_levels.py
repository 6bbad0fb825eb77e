"""Identity levels through the conversation: over the level-1 daily limit a person verifies a
bank card in their own name (four-element check, sandbox real-name service) and goes on; a card
that is not theirs is refused with the reason; a service that does not answer changes nothing
— on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from core.identity import luhn_valid
from core.model import OrderStatus, PayoutMethod
from core.sealing import holder_context
from tests.e2e.conftest import Harness
from tests.e2e.test_console_sale import (
    ALIPAY,
    ID_NUMBER,
    NAME,
    PHONE,
    WALMART,
    ZH,
    card_photo,
    sell_until_quote,
)

WALMART_2 = ("2326081744338610", "007007")


def bank_card(ending: str) -> str:
    """A Luhn-valid 16-digit card number with the given ending (the sandbox's rules)."""
    for n in range(100_000):
        number = f"6222{n:0{12 - len(ending)}d}{ending}"
        if luhn_valid(number):
            return number
    raise AssertionError("no such card")


def rules(tmp_path: Path) -> Path:
    path = tmp_path / "risk.toml"
    path.write_text('version = "levels-1"\n[identity]\nl1_daily_fen = 40000\n', encoding="utf-8")
    return path


async def confirm_first_payout(h: Harness, tmp_path: Path) -> None:
    await sell_until_quote(h, card_photo(tmp_path, WALMART[0]), WALMART[1])
    await h.choose("quote.accept")
    await h.choose("consent.yes")
    await h.say(NAME)
    await h.say(ID_NUMBER)
    await h.say(PHONE)
    await h.choose("method.alipay")
    await h.say(ALIPAY)
    await h.choose("pay.confirm")


async def test_over_the_level_1_limit_a_bank_card_in_one_s_own_name_lets_the_sale_go_on(
    tmp_path: Path, database_url: str
) -> None:
    h = Harness(tmp_path, database_url, risk_rules=rules(tmp_path))
    await h.start()
    try:
        await confirm_first_payout(h, tmp_path)  # ¥459 > ¥400 a day at level 1
        assert ZH("identity.level2_needed", limit="400.00") in h.text()
        assert await h.step() == "await_level2_card"

        replies = await h.say(bank_card("0000"))
        assert ZH("kyc.name_mismatch") in h.text() and replies[0].delete_inbound
        await h.say(bank_card("9999"))
        assert ZH("error.kyc_unavailable") in h.text()
        await h.say("12345")
        assert await h.step() == "await_level2_card"  # a malformed number is refused, kept here

        await h.say(bank_card("5678"))
        assert ZH("identity.level2_done") in h.text()
        await h.choose("pay.confirm")
        assert "【电子回单】" in h.text()
        [order] = await h.orders()
        assert order.status is OrderStatus.SETTLED
        assert h.app is not None
        async with h.app.uow_factory() as uow:
            user = await uow.users.get(order.user_id)
            accounts = await uow.payout_accounts.for_user(user.id)
            events = [e.action for e in await uow.audit.for_subject(f"user:{user.id}")]
        assert user.kyc_level == 2
        assert {a.method for a in accounts} == {PayoutMethod.ALIPAY, PayoutMethod.BANK}
        assert all(
            h.app.services.sale.vault.decrypt(a.holder_name_enc, holder_context(a.id or 0)) == NAME
            for a in accounts
        )
        assert all(a.holder_name_masked == NAME[0] + "*" * (len(NAME) - 1) for a in accounts)
        # The mismatch and the match; an unanswered check and a malformed number decided nothing.
        assert events.count("identity.level2_checked") == 2

        # Level 2 holds: the next sale today goes straight through.
        await sell_until_quote(h, card_photo(tmp_path, WALMART_2[0]), WALMART_2[1])
        await h.choose("quote.accept")
        await h.choose("method.alipay")
        await h.say(ALIPAY)
        await h.choose("pay.confirm")
        assert "【电子回单】" in h.text()
    finally:
        await h.close()


async def test_three_cards_that_are_not_one_s_own_cancel_the_order(
    tmp_path: Path, database_url: str
) -> None:
    h = Harness(tmp_path, database_url, risk_rules=rules(tmp_path))
    await h.start()
    try:
        await confirm_first_payout(h, tmp_path)
        for ending in ("0000", "1111", "2222"):
            await h.say(bank_card(ending))
        assert ZH("kyc.card_unknown") in h.text() and ZH("identity.level2_failed") in h.text()
        [order] = await h.orders()
        assert order.status is OrderStatus.CANCELLED
        assert await h.step() == "start"
    finally:
        await h.close()


async def test_under_the_limit_nothing_more_is_asked(tmp_path: Path, database_url: str) -> None:
    h = Harness(tmp_path, database_url)  # the shipped limit: ¥10,000 a day at level 1
    await h.start()
    try:
        await confirm_first_payout(h, tmp_path)
        assert "【电子回单】" in h.text()
    finally:
        await h.close()
