"""Batch sale through the console channel, on SQLite and PostgreSQL: many cards in one go —
a pasted list, a CSV file, or photos one by one — one quote, one consent, one payout choice,
one confirmation and one receipt; each card its own order, paid once."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from bot.democard import render_card_photo
from bot.settings import DEFAULT_CARDS
from core import review
from core.audit import verify_chain
from core.catalog import luhn_check_digit
from core.messages import Inbound
from core.model import OrderStatus
from handlers.i18n import Translator
from tests.e2e.conftest import Harness
from tests.fakes import finish_and_tell

ZH = Translator("zh")
NAME, ID_NUMBER, PHONE = "李雷", "11010519491231002X", "13912345678"
ALIPAY = "lilei.pays@example.com"
JD_1000 = ("8810209311764526", "A3K97Q2MX5T8W4P6")  # ¥1,000, active (bot/sandbox/cards.csv)


def walmart(n: int) -> tuple[str, str]:
    """A ¥500 Walmart card of the test card file, with its secret."""
    body = f"23260817{n + 5_000_000:07d}"
    return body + luhn_check_digit(body), f"{700_000 + n:06d}"


def card_file(tmp_path: Path, count: int = 40) -> Path:
    """The shipped sandbox cards plus ``count`` fresh ¥500 Walmart cards."""
    path = tmp_path / "cards.csv"
    rows = [
        f"walmart,{number},{secret},50000,50000,2099-12-31,active"
        for number, secret in (walmart(n) for n in range(count))
    ]
    path.write_text(
        DEFAULT_CARDS.read_text(encoding="utf-8").rstrip("\n") + "\n" + "\n".join(rows) + "\n",
        encoding="utf-8",
    )
    return path


async def started(
    tmp_path: Path, database_url: str, aged: bool = True, **kwargs: object
) -> Harness:
    """A cardbot with the test cards; ``aged``: the user's account was opened a day ago (a batch
    from an account opened minutes ago is held by the new-account rule)."""
    h = Harness(tmp_path, database_url, cards=card_file(tmp_path), **kwargs)  # type: ignore[arg-type]
    await h.start()
    if aged:
        await h.say("/start")
        h.clock.advance(hours=25)
    return h


async def identity_and_alipay(h: Harness) -> None:
    await h.choose("quote.accept")
    await h.choose("consent.yes")
    await h.say(NAME)
    await h.say(ID_NUMBER)
    await h.say(PHONE)
    await h.choose("method.alipay")
    await h.say(ALIPAY)


def transfers(h: Harness) -> list[dict[str, object]]:
    assert h.app is not None
    return h.app.services.sale.gateway.transfers()  # type: ignore[attr-defined, no-any-return]


async def test_twelve_pasted_cards_with_bad_lines_and_a_wrong_secret_are_paid_card_by_card(
    tmp_path: Path, database_url: str
) -> None:
    h = await started(tmp_path, database_url)
    try:
        cards = [walmart(n) for n in range(12)]
        lines = [f"{number} {secret}" for number, secret in cards]
        lines[3] = f"{cards[3][0]} 999999"  # a wrong secret: the issuer refuses this card
        lines.insert(5, "1234567 999999")  # line 6: not a card
        lines.insert(9, f"{walmart(30)[0]}")  # line 10: the secret is missing
        await h.say("/start")
        await h.choose("menu.sell")
        replies = await h.say("\n".join(lines))
        text = h.text()
        assert ZH("batch.line_problem", line=6, reason=ZH("batch.not_a_card")) in text
        assert ZH("batch.line_problem", line=10, reason=ZH("batch.secret_missing")) in text
        assert replies[0].delete_inbound  # the list carried secrets
        assert all(secret not in text for _, secret in cards)
        assert await h.step() == "await_batch_fix"

        await h.choose("batch.go_on")
        quote = h.text()
        assert f"{cards[3][0][:4]}" in quote and ZH("batch.card_wrong_secret") in quote
        assert "【批量报价】" in quote and "共 11 张" in quote
        assert "批量加成（11 张，每张 +3%）：+¥165.00" in quote  # ¥15.00 on each of 11 cards
        assert "回收率 95%" in quote and "您将收到 ¥5,214.00" in quote  # 11 × (475.00 − 1.00)
        assert all(secret not in quote for _, secret in cards)

        await identity_and_alipay(h)
        assert "共 11 张卡，合计 ¥5,214.00" in h.text()
        await h.choose("pay.confirm")
        receipt = h.text()
        assert receipt.count("【电子回单】") == 1
        orders = [o for o in await h.orders() if o.status is not OrderStatus.CANCELLED]
        assert len(orders) == 11 and {o.status for o in orders} == {OrderStatus.SETTLED}
        assert len({o.batch_id for o in orders}) == 1
        for order in orders:
            assert order.number in receipt
        assert "已到账 11 张，合计 ¥5,214.00" in receipt
        sent = transfers(h)
        assert len(sent) == 11 and len({t["reference"] for t in sent}) == 11
        assert await h.step() == "start"

        # One consent, one payout account: asked once for the whole batch.
        assert h.app is not None
        async with h.app.uow_factory() as uow:
            assert verify_chain(list(await uow.audit.all())) is None
            events = [e.action for e in await uow.audit.all()]
            assert events.count("consent.given") == 1
            assert events.count("payout_account.added") == 1
            assert events.count("batch.submitted") == 1
            for order in orders:
                assert order.id is not None
                assert {t.kind for t in await uow.ledger.transactions(order.id)} >= {
                    "purchase",
                    "payout_reserve",
                    "payout_post",
                }
        await h.say("/orders")
        assert "批次 PB" in h.text()
    finally:
        await h.close()


async def test_a_list_of_more_than_a_hundred_cards_is_refused_with_the_limit(
    tmp_path: Path, database_url: str
) -> None:
    h = await started(tmp_path, database_url)
    try:
        await h.say("/sell")
        replies = await h.say("\n".join(f"{walmart(n)[0]} 123456" for n in range(101)))
        assert ZH("batch.too_many_cards", max=100) in h.text()
        assert replies[0].delete_inbound
        assert await h.orders() == []
        assert await h.step() == "await_card"
    finally:
        await h.close()


async def test_a_csv_file_in_gbk_with_a_header_is_sold_as_a_batch(
    tmp_path: Path, database_url: str
) -> None:
    h = await started(tmp_path, database_url)
    try:
        listed = tmp_path / "我的卡.csv"
        rows = ["卡号,卡密", *(f'"{n}","{s}"' for n, s in (walmart(20), walmart(21)))]
        listed.write_bytes("\r\n".join(rows).encode("gbk"))
        await h.say("/sell")
        replies = await h.say(f"/file {listed}")
        assert replies[0].delete_inbound
        assert "【批量报价】" in h.text() and "共 2 张" in h.text()
        assert "批量加成" not in h.text()  # 2 cards: no batch bonus
        assert await h.step() == "await_batch_quote"

        other = tmp_path / "cards.xlsx"
        other.write_bytes(b"PK\x03\x04 not a list")
        await h.say("/sell")
        await h.say(f"/file {other}")
        assert ZH("photo.not_an_image") in h.text()
    finally:
        await h.close()


async def test_cards_sent_as_photos_one_by_one_each_ask_for_their_secret_then_one_quote(
    tmp_path: Path, database_url: str
) -> None:
    h = await started(tmp_path, database_url)
    try:
        await h.say("/start")
        await h.choose("menu.sell_batch")
        assert await h.step() == "await_batch_photo"
        for n in (22, 23):
            number, secret = walmart(n)
            photo = tmp_path / f"{number}.jpg"
            photo.write_bytes(render_card_photo("沃尔玛", number, "¥500.00"))
            await h.say(f"/photo {photo}")
            assert await h.step() == "await_batch_secret"
            replies = await h.say(secret)
            assert replies[0].delete_inbound
        assert ZH("batch.card_added", count=2) in h.text()
        await h.choose("batch.done")
        assert "共 2 张" in h.text()
        await identity_and_alipay(h)
        await h.choose("pay.confirm")
        orders = await h.orders()
        assert [o.status for o in orders] == [OrderStatus.SETTLED] * 2
        assert h.text().count("【电子回单】") == 1
    finally:
        await h.close()


async def test_accepting_a_batch_after_the_lock_ran_out_requotes_every_card(
    tmp_path: Path, database_url: str
) -> None:
    h = await started(tmp_path, database_url)
    try:
        await h.say("/sell")
        await h.say("\n".join(f"{n} {s}" for n, s in (walmart(24), walmart(25))))
        h.clock.advance(minutes=11)
        await h.choose("quote.accept")
        assert ZH("quote.expired_requoted") in h.text()
        assert await h.step() == "await_batch_quote"
        statuses = sorted(o.status.value for o in await h.orders())
        assert statuses == ["expired", "expired", "quoted", "quoted"]
        await identity_and_alipay(h)
        await h.choose("pay.confirm")
        statuses = sorted(o.status.value for o in await h.orders())
        assert statuses == ["expired", "expired", "settled", "settled"]
    finally:
        await h.close()


async def test_a_card_held_for_review_waits_while_the_others_are_paid(
    tmp_path: Path, database_url: str
) -> None:
    rules = tmp_path / "risk.toml"
    shipped = (Path(__file__).resolve().parents[2] / "bot" / "risk.toml").read_text("utf-8")
    rules.write_text(shipped.replace("review_at = 5", "review_at = 1"))
    h = await started(tmp_path, database_url, risk_rules=rules)
    try:
        # Someone else got the JD card's secret wrong: a sale of that card is held for review.
        mallory = Harness(tmp_path, database_url, cards=card_file(tmp_path))
        mallory.user, mallory.clock = "mallory", h.clock
        await mallory.start()
        await mallory.say("/sell")
        await mallory.say(JD_1000[0])
        await mallory.say("A3K97Q2MX5T8W4P7")
        await mallory.close()
        await h.say("/sell")
        listed = [walmart(26), JD_1000, walmart(27)]
        await h.say("\n".join(f"{n} {s}" for n, s in listed))
        await identity_and_alipay(h)
        await h.choose("pay.confirm")
        text = h.text()
        held = next(o for o in await h.orders() if o.brand == "jd_ecard")
        assert held.status is OrderStatus.REVIEW
        assert ZH("risk.review", order=held.number) in text
        assert f"{held.number}" in text and "人工审核中（未打款）" in text
        paid = [o for o in await h.orders() if o.brand == "walmart"]
        assert [o.status for o in paid] == [OrderStatus.SETTLED] * 2
        assert len(transfers(h)) == 2

        # Staff approve it later: the user hears about that order on its own, and it is paid.
        assert h.app is not None and held.id is not None
        async with h.app.uow_factory() as uow:
            await review.decide(uow, h.clock, held.id, True, "staff:1", "")
            await uow.commit()
        told: list[str] = []
        await finish_and_tell(h.app.services, told.append)
        assert any(held.number in line and "【电子回单】" in line for line in told)
        assert len(transfers(h)) == 3
    finally:
        await h.close()


async def test_the_same_list_delivered_twice_makes_one_batch(
    tmp_path: Path, database_url: str
) -> None:
    h = await started(tmp_path, database_url)
    try:
        await h.say("/sell")
        pasted = Inbound(
            channel="console",
            user_id=h.user,
            chat_id=h.user,
            message_id="list-1",
            language="zh",
            text="\n".join(f"{n} {s}" for n, s in (walmart(28), walmart(29))),
        )
        assert await h.send(pasted)
        assert await h.send(pasted) == []
        assert await h.send(replace(pasted)) == []
        orders = await h.orders()
        assert len(orders) == 2 and len({o.batch_id for o in orders}) == 1
    finally:
        await h.close()
