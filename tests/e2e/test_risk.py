"""Risk rules through the real conversation and storage (SQLite and PostgreSQL): the daily line
in Asia/Shanghai days across channels, suspension after a streak of failed cards, the manual
review queue worked from the command line, and the blacklist."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.cli import main
from core.messages import Reply
from core.model import OrderStatus
from tests.e2e.conftest import Harness
from tests.e2e.test_console_sale import (
    ID_NUMBER,
    NAME,
    WALMART,
    ZH,
    card_photo,
    sell_until_quote,
)
from tests.fakes import finish_and_tell

WALMART_2 = ("2326081744338610", "007007")  # ¥500, active: pays ¥459 like WALMART
SHANGHAI_AFTERNOON = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)  # 14:00 in Shanghai


def rules(tmp_path: Path, review_at_fen: int) -> Path:
    path = tmp_path / "risk.toml"
    path.write_text(
        f'version = "test-{review_at_fen}"\n[daily_amount]\nreview_at_fen = {review_at_fen}\n'
        "[streak]\nmax_failures = 5\nwindow_minutes = 30\nsuspend_hours = 24\n"
        '[shared]\n[blacklist]\noutcome = "reject"\n',
        encoding="utf-8",
    )
    return path


async def open_harness(
    tmp_path: Path, database_url: str, user: str, channel: str = "console", **kw: object
) -> Harness:
    h = Harness(tmp_path, database_url, channel=channel, **kw)  # type: ignore[arg-type]
    h.user = user
    h.clock._now = SHANGHAI_AFTERNOON
    await h.start()
    return h


async def sell(h: Harness, tmp_path: Path, card: tuple[str, str], name: str = NAME) -> str:
    await sell_until_quote(h, card_photo(tmp_path, card[0]), card[1])
    await h.choose("quote.accept")
    if _offers(h, "consent.yes"):
        await h.choose("consent.yes")
        await h.say(name)
        await h.say(ID_NUMBER)
        await h.say("13912345678")
    await h.choose("method.alipay")
    await h.say("lilei.pays@example.com")
    await h.choose("pay.confirm")
    return h.text()


def _offers(h: Harness, action: str) -> bool:
    return any(o.id.split(":", 1)[0] == action for r in h.last for o in r.options)


async def statuses(h: Harness) -> list[str]:
    return [o.status.value for o in reversed(await h.orders())]


# --------------------------------------------------------------------------------------------
# The daily line: Asia/Shanghai days, every channel of one person


async def test_the_second_sale_of_a_day_that_reaches_the_line_waits_for_review(
    tmp_path: Path, database_url: str
) -> None:
    h = await open_harness(tmp_path, database_url, "alice", risk_rules=rules(tmp_path, 91_800))
    try:
        await sell(h, tmp_path, WALMART)
        h.clock.advance(hours=2)
        text = await sell(h, tmp_path, WALMART_2)
        assert "人工审核" in text
        assert await statuses(h) == ["settled", "review"]
        [held, _] = await h.orders()
        assert held.risk_reasons == ("risk.daily_amount",) and held.risk_version == "test-91800"
    finally:
        await h.close()


async def test_one_fen_under_the_line_is_paid(tmp_path: Path, database_url: str) -> None:
    h = await open_harness(tmp_path, database_url, "alice", risk_rules=rules(tmp_path, 91_801))
    try:
        await sell(h, tmp_path, WALMART)
        await sell(h, tmp_path, WALMART_2)
        assert await statuses(h) == ["settled", "settled"]  # 91,800 fen < 91,801
    finally:
        await h.close()


async def test_sales_either_side_of_shanghai_midnight_count_on_different_days(
    tmp_path: Path, database_url: str
) -> None:
    h = await open_harness(tmp_path, database_url, "alice", risk_rules=rules(tmp_path, 91_800))
    try:
        h.clock._now = datetime(2026, 11, 22, 15, 58, tzinfo=UTC)  # 23:58 in Shanghai
        await sell(h, tmp_path, WALMART)
        h.clock.advance(minutes=4)  # 00:02 the next day in Shanghai, still the 22nd in UTC
        await sell(h, tmp_path, WALMART_2)
        assert await statuses(h) == ["settled", "settled"]
    finally:
        await h.close()


async def test_the_same_person_on_two_channels_counts_as_one(
    tmp_path: Path, database_url: str
) -> None:
    risk = rules(tmp_path, 91_800)
    console = await open_harness(tmp_path, database_url, "alice", risk_rules=risk)
    telegram = await open_harness(tmp_path, database_url, "555", "telegram", risk_rules=risk)
    try:
        await sell(console, tmp_path, WALMART)
        await sell(telegram, tmp_path, WALMART_2)  # same name, same ID: the same person
        orders = {o.channel: o for o in await console.orders()}
        assert orders["console"].status is OrderStatus.SETTLED
        assert orders["telegram"].status is OrderStatus.REVIEW
        assert orders["telegram"].risk_reasons == ("risk.daily_amount",)
    finally:
        await console.close()
        await telegram.close()


async def test_someone_else_s_id_number_under_another_name_is_held(
    tmp_path: Path, database_url: str
) -> None:
    console = await open_harness(tmp_path, database_url, "alice")
    other = await open_harness(tmp_path, database_url, "mallory", "telegram")
    try:
        await sell(console, tmp_path, WALMART)
        await sell(other, tmp_path, WALMART_2, name="王五")
        held = [o for o in await console.orders() if o.channel == "telegram"]
        assert held[0].status is OrderStatus.REVIEW
        assert held[0].risk_reasons == ("risk.shared_id",)
    finally:
        await console.close()
        await other.close()


# --------------------------------------------------------------------------------------------
# Streaks


async def test_five_failed_cards_in_half_an_hour_pause_new_cards_for_a_day(
    tmp_path: Path, database_url: str
) -> None:
    h = await open_harness(tmp_path, database_url, "alice")
    try:
        await h.say("/start")
        await h.choose("menu.sell")
        await h.say(f"/photo {card_photo(tmp_path, WALMART[0])}")
        for _ in range(3):  # three wrong secrets end this card
            await h.say("000000")
        assert ZH("error.wrong_secret_final") in h.text()
        await h.say(f"/photo {card_photo(tmp_path, WALMART_2[0])}")
        await h.say("000000")
        h.clock.advance(minutes=10)
        await h.say("000001")  # the fifth failure within 30 minutes
        assert "暂停提交新卡" in h.text()
        await h.say(WALMART_2[0])
        assert "暂停提交新卡" in h.text()
        h.clock.advance(hours=24)
        await h.say(WALMART_2[0])
        assert "暂停" not in h.text() and "卡密" in h.text()
    finally:
        await h.close()


# --------------------------------------------------------------------------------------------
# The review queue, from the command line


class Told:
    """A notifier that remembers what each user was told."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str, str]] = []

    async def notify(self, channel: str, user_key: str, reply: Reply) -> None:
        self.messages.append((channel, user_key, reply.text))

    def texts(self) -> str:
        return "\n".join(text for _, _, text in self.messages)


@pytest.fixture
def operator_env(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("CARDBOT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CARDBOT_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("CARDBOT_DATABASE_URL", database_url)
    monkeypatch.setenv("CARDBOT_DATA_KEY_FILE", str(tmp_path / "data.key"))
    return monkeypatch


async def cardbot(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


async def test_staff_approve_one_held_order_and_reject_another_and_each_user_is_told(
    tmp_path: Path,
    database_url: str,
    operator_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    risk = rules(tmp_path, 40_000)  # every ¥500 card is held
    operator_env.setenv("CARDBOT_RISK_RULES", str(risk))
    h = await open_harness(tmp_path, database_url, "alice", risk_rules=risk)
    try:
        await sell(h, tmp_path, WALMART)
        await sell(h, tmp_path, WALMART_2)
        first, second = sorted(await h.orders(), key=lambda o: o.id or 0)
        assert [first.status, second.status] == [OrderStatus.REVIEW, OrderStatus.REVIEW]
        capsys.readouterr()
        assert await cardbot("review", "list") == 0
        listing = capsys.readouterr().out
        assert first.number in listing and second.number in listing
        assert ID_NUMBER not in listing and "risk.daily_amount" in listing

        assert await cardbot("review", "approve", first.number, "--by", "li") == 0
        assert await cardbot("review", "reject", str(second.id)) == 1  # a reason is required
        note = "卡片来源无法核实"
        assert await cardbot("review", "reject", second.number, "--note", note) == 0
        assert await cardbot("review", "approve", second.number) == 1  # decided already

        told = Told()
        assert h.app is not None
        await finish_and_tell(h.app.services, told)
        assert ZH("review.approved", order=first.number) in told.texts()
        assert ZH("review.rejected", order=second.number, note=note) in told.texts()
        assert "【电子回单】" in told.texts()
        after = {o.id: o.status for o in await h.orders()}
        assert after == {first.id: OrderStatus.SETTLED, second.id: OrderStatus.REJECTED}
        # Told once: the next pass says nothing more.
        again = Told()
        await finish_and_tell(h.app.services, again)
        assert again.messages == []
        async with h.app.uow_factory() as uow:
            actions = [e.action for e in await uow.audit.all()]
        assert "review.approved" in actions and "review.rejected" in actions
    finally:
        await h.close()


async def test_a_blacklisted_id_is_refused_and_the_list_holds_no_plaintext(
    tmp_path: Path,
    database_url: str,
    operator_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    h = await open_harness(tmp_path, database_url, "alice")
    try:
        await sell(h, tmp_path, WALMART)
        assert await cardbot("risk", "blacklist", "add", "--id", ID_NUMBER) == 2  # no reason
        assert (
            await cardbot("risk", "blacklist", "add", "--id", ID_NUMBER, "--reason", "fraud") == 0
        )
        assert await cardbot("risk", "blacklist", "add", "--id", "12345", "--reason", "x") == 2
        capsys.readouterr()
        assert await cardbot("risk", "blacklist", "list") == 0
        listing = capsys.readouterr().out
        assert "id_number" in listing and ID_NUMBER not in listing
        text = await sell(h, tmp_path, WALMART_2)
        assert ZH("risk.blacklisted") in text
        assert await statuses(h) == ["settled", "rejected"]
        assert await cardbot("risk", "blacklist", "remove", "--id", ID_NUMBER) == 0
    finally:
        await h.close()


def test_a_broken_rules_file_stops_the_bot_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "risk.toml"
    bad.write_text('version = "v"\n[velocity]\nmax_cards = "ten"\n', encoding="utf-8")
    monkeypatch.setenv("CARDBOT_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("CARDBOT_RISK_RULES", str(bad))
    with open(os.devnull) as nothing:
        monkeypatch.setattr("sys.stdin", nothing)
        assert main(["chat"]) == 2
    assert "velocity.max_cards" in capsys.readouterr().err
