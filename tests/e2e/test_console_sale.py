"""A whole sale through the console channel, on SQLite and PostgreSQL, and everything that can go
wrong on the way: restarts, redeliveries, bad input."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from bot.democard import render_card_photo
from core.audit import verify_chain
from core.messages import Inbound
from core.model import OrderStatus
from handlers.i18n import Translator
from tests.e2e.conftest import Harness

# Sample cards from bot/sandbox/cards.csv (documented in bot/sandbox/README.md).
WALMART = ("2326081744029136", "135790")  # ¥500, active
WALMART_PARTIAL = ("2326081744155261", "246802")  # face ¥1000, balance ¥356.80
WALMART_USED = ("2326081744273080", "112233")
JD_FROZEN = ("8810209311880348", "B7N2C4V6Z8L1H3J5")
CARREFOUR_EXPIRED = ("8600520177361904820", "357913")
RTMART = "2801527364099"  # no secret, ¥500
SINOPEC_55K = ("1000111300245180527", "369369")  # ¥55,000: manual review

NAME, ID_NUMBER, PHONE = "李雷", "11010519491231002X", "13912345678"
# A bank card the sandbox real-name service accepts as 李雷's (bot/sandbox/kyc.py).
LEVEL2_CARD = "6222021234567894"
ALIPAY = "lilei.pays@example.com"

ZH = Translator("zh")
EN = Translator("en")


def card_photo(tmp_path: Path, number: str) -> Path:
    path = tmp_path / f"card-{number}.jpg"
    path.write_bytes(render_card_photo("沃尔玛", number, "¥500.00"))
    return path


async def sell_until_quote(h: Harness, photo: Path, secret: str) -> None:
    await h.say("/start")
    await h.choose("menu.sell")
    await h.say(f"/photo {photo}")
    await h.say(secret)


async def identity_and_payout(h: Harness, account: str = ALIPAY, confirm: bool = True) -> None:
    await h.choose("quote.accept")
    await h.choose("consent.yes")
    await h.say(NAME)
    await h.say(ID_NUMBER)
    await h.say(PHONE)
    await h.choose("method.alipay")
    await h.say(account)
    if confirm:
        await h.choose("pay.confirm")


# --------------------------------------------------------------------------------------------
# The happy path


async def test_a_whole_sale_from_photo_to_receipt_ends_settled(
    harness: Harness, tmp_path: Path
) -> None:
    await sell_until_quote(harness, card_photo(tmp_path, WALMART[0]), WALMART[1])
    quote = harness.text()
    assert "面值：¥500.00" in quote and "手续费" in quote and "您将收到" in quote
    assert "锁定 10 分钟" in quote

    await identity_and_payout(harness)

    receipt = harness.text()
    assert "【电子回单】" in receipt
    [order] = await harness.orders()
    assert order.status is OrderStatus.SETTLED
    assert order.number in receipt
    assert ("¥" in receipt and "l***" in receipt) or "***" in receipt
    assert await harness.step() == "start"

    assert harness.app is not None
    async with harness.app.uow_factory() as uow:
        assert verify_chain(list(await uow.audit.all())) is None
        txns = await uow.ledger.transactions(order.id)
        assert {t.kind for t in txns} >= {"purchase", "payout_reserve", "payout_post"}
        for txn in txns:
            assert sum(p.amount_fen for p in txn.postings) == 0
        assert await uow.ledger.balance(f"user_payable:{order.user_id}") == 0


async def test_a_card_without_a_secret_is_quoted_straight_from_its_number(
    harness: Harness,
) -> None:
    await harness.say(RTMART)
    assert await harness.step() == "await_quote"
    assert "大润发" in harness.text()


async def test_an_english_speaker_is_answered_in_english(
    tmp_path: Path, database_url: str
) -> None:
    h = Harness(tmp_path, database_url, lang="en")
    await h.start()
    try:
        await h.say("/start")
        assert "What would you like to do?" in h.text()
        await h.choose("menu.sell")
        await h.say(WALMART[0])
        assert "secret" in h.text()
        await h.say(WALMART[1])
        assert "Face value: ¥500.00" in h.text()
    finally:
        await h.close()


async def test_a_returning_seller_skips_identity_and_is_offered_the_remembered_account(
    harness: Harness, tmp_path: Path
) -> None:
    await sell_until_quote(harness, card_photo(tmp_path, WALMART[0]), WALMART[1])
    await identity_and_payout(harness)
    await harness.say("/sell")
    await harness.say(RTMART)
    await harness.choose("quote.accept")
    assert "支付宝 l" in harness.text()  # the saved account, masked
    replies = harness.last
    saved = [o.id for r in replies for o in r.options if o.id.startswith("account.")]
    assert len(saved) == 1
    await harness.choose(saved[0])
    await harness.choose("pay.confirm")
    orders = await harness.orders()
    assert [o.status for o in orders] == [OrderStatus.SETTLED, OrderStatus.SETTLED]


# --------------------------------------------------------------------------------------------
# Restarts and redeliveries

SCRIPT: list[tuple[str, str]] = [
    ("say", "/start"),
    ("choose", "menu.sell"),
    ("say", WALMART[0]),
    ("say", WALMART[1]),
    ("choose", "quote.accept"),
    ("choose", "consent.yes"),
    ("say", NAME),
    ("say", ID_NUMBER),
    ("say", PHONE),
    ("choose", "method.alipay"),
    ("say", ALIPAY),
    ("choose", "pay.confirm"),
]


async def play(h: Harness, steps: list[tuple[str, str]]) -> None:
    for action, value in steps:
        await (h.say(value) if action == "say" else h.choose(value))


@pytest.mark.parametrize("cut", range(1, len(SCRIPT)))
async def test_a_restart_between_any_two_steps_resumes_at_the_same_step(
    harness: Harness, cut: int
) -> None:
    await play(harness, SCRIPT[:cut])
    step_before, offered_before = await harness.step(), harness.last
    await harness.restart()
    assert await harness.step() == step_before
    harness.last = offered_before  # the user still sees the last message on their screen
    await play(harness, SCRIPT[cut:])
    [order] = await harness.orders()
    assert order.status is OrderStatus.SETTLED


async def test_the_same_message_delivered_twice_has_one_effect(harness: Harness) -> None:
    await play(harness, SCRIPT[:4])
    accept = Inbound(
        channel="console",
        user_id=harness.user,
        chat_id=harness.user,
        message_id="redelivered-1",
        language="zh",
        option=harness.option_id("quote.accept"),
    )
    first = await harness.send(accept)
    assert first
    second = await harness.send(accept)
    assert second == []
    assert await harness.step() == "await_consent"
    harness.last = first  # what the user has on screen

    await play(harness, SCRIPT[5:11])
    confirm = replace(accept, message_id="redelivered-2", option=harness.option_id("pay.confirm"))
    assert await harness.send(confirm)
    assert await harness.send(confirm) == []
    [order] = await harness.orders()
    assert order.status is OrderStatus.SETTLED
    gateway = harness.app.services.sale.gateway if harness.app else None
    assert gateway is not None
    assert len(gateway.transfers()) == 1  # type: ignore[attr-defined]


async def test_a_redelivery_after_a_restart_still_has_no_effect(harness: Harness) -> None:
    await play(harness, SCRIPT[:3])
    secret = Inbound(
        channel="console",
        user_id=harness.user,
        chat_id=harness.user,
        message_id="update-77",
        language="zh",
        text=WALMART[1],
    )
    await harness.send(secret)
    await harness.restart()
    assert await harness.send(secret) == []
    assert len(await harness.orders()) == 1


# --------------------------------------------------------------------------------------------
# Bad input: a clear reply in the user's language, and the conversation stays where it was

BadInput = Callable[[Harness, Path], Awaitable[None]]


async def typed(h: Harness, text: str) -> None:
    await h.say(text)


async def test_an_unknown_card_number_is_refused_and_the_bot_keeps_waiting_for_a_card(
    harness: Harness,
) -> None:
    await play(harness, SCRIPT[:2])
    await harness.say("1234567890123456")
    assert ZH("error.card_not_recognised") in harness.text()
    assert await harness.step() == "await_card"
    assert await harness.orders() == []


async def test_a_wrong_secret_is_refused_with_the_tries_left(harness: Harness) -> None:
    await play(harness, SCRIPT[:3])
    await harness.say("999999")
    assert ZH("error.wrong_secret", left=2) in harness.text()
    assert await harness.step() == "await_secret"
    await harness.say(WALMART[1])
    assert await harness.step() == "await_quote"


async def test_three_wrong_secrets_end_the_attempt(harness: Harness) -> None:
    await play(harness, SCRIPT[:3])
    for _ in range(3):
        await harness.say("999999")
    assert ZH("error.wrong_secret_final") in harness.text()
    assert await harness.step() == "await_card"


@pytest.mark.parametrize(
    ("card", "key", "params"),
    [
        (WALMART_USED, "error.card_used", {}),
        (JD_FROZEN, "error.card_frozen", {}),
        (CARREFOUR_EXPIRED, "error.card_expired", {"expires": "2015-06-30"}),
    ],
)
async def test_a_used_frozen_or_expired_card_gets_a_precise_answer(
    harness: Harness, card: tuple[str, str], key: str, params: dict[str, str]
) -> None:
    await play(harness, SCRIPT[:2])
    await harness.say(card[0])
    await harness.say(card[1])
    assert ZH(key, **params) in harness.text()
    assert await harness.step() == "await_card"
    assert await harness.orders() == []


async def test_a_file_that_is_not_an_image_is_refused(harness: Harness, tmp_path: Path) -> None:
    await play(harness, SCRIPT[:2])
    notes = tmp_path / "notes.pdf"  # .csv and .txt files are lists of cards (batch sale)
    notes.write_text("this is not a picture")
    await harness.say(f"/file {notes}")
    assert ZH("photo.not_an_image") in harness.text()
    assert await harness.step() == "await_card"


async def test_a_photo_without_a_barcode_gets_advice_on_retaking_it(
    harness: Harness, tmp_path: Path
) -> None:
    await play(harness, SCRIPT[:2])
    blank = tmp_path / "wall.png"
    Image.new("RGB", (1200, 900), (128, 120, 110)).save(blank)
    await harness.say(f"/photo {blank}")
    assert "没能从这张照片读出卡号" in harness.text()
    assert await harness.step() == "await_card"


async def test_a_ten_thousand_character_message_is_refused_without_effect(
    harness: Harness,
) -> None:
    await play(harness, SCRIPT[:3])
    await harness.say("8" * 10_000)
    assert ZH("error.too_long") in harness.text()
    assert await harness.step() == "await_secret"


async def test_an_invalid_id_number_is_refused_and_asked_again(harness: Harness) -> None:
    await play(harness, SCRIPT[:7])
    await harness.say("110105194912310021")  # wrong check character
    assert ZH("identity.id_checksum") in harness.text()
    assert await harness.step() == "await_id_number"


async def test_an_option_that_does_not_exist_is_refused(harness: Harness) -> None:
    await play(harness, SCRIPT[:4])
    await harness.say("9")
    assert ZH("error.no_such_option") in harness.text()
    assert await harness.step() == "await_quote"


async def test_a_stale_option_is_refused(harness: Harness) -> None:
    await play(harness, SCRIPT[:4])
    stale = Inbound(
        channel="console",
        user_id=harness.user,
        chat_id=harness.user,
        message_id="stale-1",
        language="en",
        option="consent.yes",
    )
    replies = await harness.send(stale)
    assert EN("error.option_gone") in harness.text(replies)
    assert await harness.step() == "await_quote"


async def test_a_failure_inside_the_bot_gets_an_apology_and_changes_nothing(
    tmp_path: Path, database_url: str
) -> None:
    class BrokenIssuer:
        async def verify(self, *args: object) -> None:
            raise RuntimeError("issuer exploded with card 2326081744029136")

        async def redeem(self, *args: object) -> None:
            raise RuntimeError("unreachable")

    h = Harness(tmp_path, database_url, issuer=BrokenIssuer())
    await h.start()
    try:
        await play(h, SCRIPT[:3])
        replies = await h.say(WALMART[1])
        assert h.text(replies) == ZH("error.internal")
        assert "Traceback" not in h.text(replies)
        assert await h.step() == "await_secret"
        assert await h.orders() == []
    finally:
        await h.close()


# --------------------------------------------------------------------------------------------
# The price is honest and kept; money is paid once


async def test_accepting_after_the_lock_ran_out_requotes_and_asks_again(harness: Harness) -> None:
    await play(harness, SCRIPT[:4])
    harness.clock.advance(minutes=11)
    await harness.choose("quote.accept")
    assert ZH("quote.expired_requoted") in harness.text()
    assert await harness.step() == "await_quote"
    orders = await harness.orders()
    assert [o.status for o in orders] == [OrderStatus.QUOTED, OrderStatus.EXPIRED]


async def test_a_partially_spent_card_is_priced_on_its_balance(harness: Harness) -> None:
    await play(harness, SCRIPT[:2])
    await harness.say(WALMART_PARTIAL[0])
    await harness.say(WALMART_PARTIAL[1])
    text = harness.text()
    assert "面值：¥1,000.00" in text and "可用余额：¥356.80" in text


async def test_the_same_card_cannot_be_sold_twice(harness: Harness, tmp_path: Path) -> None:
    await play(harness, SCRIPT)
    other = Harness(tmp_path, harness.settings.resolved_database_url)
    other.user, other.clock = "bob", harness.clock
    await other.start()
    try:
        await other.say(WALMART[0])
        await other.say(WALMART[1])
        # The issuer now reports the card used (we redeemed it): refused before any quote.
        assert ZH("error.card_used_on", date="2026-11-22") in other.text()
    finally:
        await other.close()


async def verify_level_2(h: Harness) -> None:
    """Over the level-1 daily limit: a bank card in one's own name, then confirm again."""
    assert await h.step() == "await_level2_card"
    await h.say(LEVEL2_CARD)
    await h.choose("pay.confirm")


async def test_a_large_sale_waits_for_manual_review_before_any_payout(harness: Harness) -> None:
    await play(harness, SCRIPT[:2])
    await harness.say(SINOPEC_55K[0])
    await harness.say(SINOPEC_55K[1])
    await play(harness, SCRIPT[4:])
    await verify_level_2(harness)
    [order] = await harness.orders()
    assert order.status is OrderStatus.REVIEW
    assert "人工审核" in harness.text()
    gateway = harness.app.services.sale.gateway if harness.app else None
    assert gateway is not None and gateway.transfers() == []  # type: ignore[attr-defined]


async def test_a_failed_payout_releases_the_money_and_pays_to_another_account(
    harness: Harness,
) -> None:
    await play(harness, SCRIPT[:10])
    await harness.say("fail@example.com")
    await harness.choose("pay.confirm")
    assert "打款失败" in harness.text()
    [order] = await harness.orders()
    assert order.status is OrderStatus.PAYOUT_FAILED
    await harness.choose("method.alipay")
    await harness.say(ALIPAY)
    await harness.choose("pay.confirm")
    [order] = await harness.orders()
    assert order.status is OrderStatus.SETTLED
    gateway = harness.app.services.sale.gateway if harness.app else None
    assert gateway is not None
    states = sorted(t["state"] for t in gateway.transfers())  # type: ignore[attr-defined]
    assert states == ["failed", "succeeded"]


async def test_a_payout_with_an_unknown_outcome_is_queried_and_never_sent_twice(
    harness: Harness,
) -> None:
    from tests.fakes import finish_and_tell

    await play(harness, SCRIPT[:10])
    await harness.say("timeout@example.com")
    await harness.choose("pay.confirm")
    assert "正在等待支付机构确认" in harness.text()
    [order] = await harness.orders()
    assert order.status is OrderStatus.PAYING

    await harness.restart()
    told: list[str] = []
    assert harness.app is not None
    changed = await finish_and_tell(harness.app.services, told.append)
    assert changed == 1
    assert any("【电子回单】" in line for line in told)
    [order] = await harness.orders()
    assert order.status is OrderStatus.SETTLED
    transfers = harness.app.services.sale.gateway.transfers()  # type: ignore[attr-defined]
    assert len(transfers) == 1


async def test_a_card_already_held_by_another_order_is_refused_at_quote_time(
    harness: Harness, tmp_path: Path
) -> None:
    await play(harness, SCRIPT[:2])
    await harness.say(SINOPEC_55K[0])
    await harness.say(SINOPEC_55K[1])
    await play(harness, SCRIPT[4:])
    await verify_level_2(harness)
    [held] = await harness.orders()
    assert held.status is OrderStatus.REVIEW  # not redeemed yet: the issuer still says active

    bob = Harness(tmp_path, harness.settings.resolved_database_url)
    bob.user, bob.clock = "bob", harness.clock
    await bob.start()
    try:
        await play(bob, SCRIPT[:2])
        await bob.say(SINOPEC_55K[0])
        await bob.say(SINOPEC_55K[1])
        # Told before agreeing to anything, not rejected after giving an identity.
        assert ZH("error.card_held") in bob.text()
        assert await bob.step() == "await_card"
        orders = await bob.orders()
        assert [o.status.value for o in orders] == ["review"]
    finally:
        await bob.close()
