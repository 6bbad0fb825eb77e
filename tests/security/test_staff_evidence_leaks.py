"""Attack: make staff read a card secret. A user pastes ``number secret`` on one line where no
step asks for a secret (the menu, a ticket being taken, a ``人工`` request), then asks for a
person: the ticket's evidence, the stored transcript and what staff are sent must hold neither
the secret nor any four of its digits; the pasted message is deleted from the chat. The same
for a payout account (an Alipay e-mail, a mobile) typed in free text."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

# database_url: the e2e fixture (SQLite, and PostgreSQL when configured), used by name.
from tests.e2e.conftest import Harness, database_url  # noqa: F401
from tests.e2e.test_desk import STAFF, STAFF_2, Desk, open_ticket

NUMBER, SECRET = "2326081744029136", "135790"  # the shipped Walmart card, ¥500
JD_NUMBER, JD_SECRET = "8810209311880348", "B7N2C4V6Z8L1H3J5"
EMAIL, MOBILE = "lilei.pays@example.com", "13698765432"


def windows(secret: str, size: int = 4) -> list[str]:
    """Every run of ``size`` characters of a secret (what a partial mask could show)."""
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


@pytest.fixture
async def desk(tmp_path: Path, database_url: str) -> AsyncIterator[Desk]:  # noqa: F811
    h = Harness(
        tmp_path,
        database_url,
        channel="wechat",
        overrides={"staff": f"{STAFF},{STAFF_2}"},
    )
    await h.start()
    try:
        yield Desk(h)
    finally:
        await h.close()


async def stored_text(d: Desk) -> str:
    """Everything kept about Alice's conversation and her tickets, as text."""
    assert d.h.app is not None
    async with d.h.app.uow_factory() as uow:
        state = await uow.conversations.get("wechat", "alice")
        tickets = list(await uow.tickets.active())
        said = [m.text for t in tickets for m in await uow.tickets.messages(t.id)]  # type: ignore[arg-type]
    assert state is not None
    return json.dumps(
        {
            "state": state.data,
            "evidence": [t.evidence for t in tickets],
            "detail": [t.detail for t in tickets],
            "said": said,
        },
        ensure_ascii=False,
    )


def assert_no_trace(text: str, secret: str) -> None:
    compact = text.replace(" ", "").replace("-", "")
    for part in [secret, *windows(secret)]:
        assert part not in compact, f"{part!r} of the secret is readable: {text}"


@pytest.mark.parametrize(
    ("number", "secret", "sep"),
    [(NUMBER, SECRET, " "), (NUMBER, SECRET, "-"), (JD_NUMBER, JD_SECRET, " ")],
)
async def test_number_and_secret_pasted_at_the_menu_never_reach_the_ticket_or_staff(
    desk: Desk, number: str, secret: str, sep: str
) -> None:
    h = desk.h
    await h.say("/start")
    pasted = await h.say(f"{number}{sep}{secret}")
    assert any(r.delete_inbound for r in pasted), "the pasted secret stays in the chat"
    await open_ticket(desk)
    seen = await desk.say(STAFF, "/take 1")
    staff_saw = seen + "\n" + desk.inboxes.texts(STAFF)
    assert_no_trace(staff_saw, secret)
    stored = await stored_text(desk)
    assert_no_trace(stored, secret)
    assert "[hidden]" in stored  # the line is there, as hidden


async def test_number_and_secret_relayed_while_a_ticket_is_taken_reach_staff_as_hidden(
    desk: Desk,
) -> None:
    h = desk.h
    await h.say("/start")
    await open_ticket(desk)
    await desk.say(STAFF, "/take 1")
    relayed = await h.say(f"{NUMBER} {SECRET}")
    assert any(r.delete_inbound for r in relayed)
    assert_no_trace(desk.inboxes.texts(STAFF), SECRET)
    assert_no_trace(await stored_text(desk), SECRET)


async def test_number_and_secret_given_with_a_request_for_a_person_are_hidden(
    desk: Desk,
) -> None:
    h = desk.h
    await h.say("/start")
    asked = await h.say(f"人工 {NUMBER} {SECRET}")
    assert any(r.delete_inbound for r in asked)
    await h.choose("desk.reason")
    await desk.deliver()
    seen = await desk.say(STAFF, "/take 1")
    assert_no_trace(seen + desk.inboxes.texts(STAFF), SECRET)
    assert_no_trace(await stored_text(desk), SECRET)


async def test_a_payout_account_typed_in_free_text_reaches_staff_masked(desk: Desk) -> None:
    h = desk.h
    await h.say("/start")
    await h.say(f"请打到我的支付宝 {EMAIL}，或者手机 {MOBILE}")
    await open_ticket(desk)
    await desk.say(STAFF, "/take 1")
    await h.say(f"账户是 {EMAIL}")
    seen = desk.inboxes.texts(STAFF) + "\n" + await desk.say(STAFF, "/take 1")
    stored = await stored_text(desk)
    for text in (seen, stored):
        assert EMAIL not in text and "lilei.pays" not in text
        assert MOBILE not in text
    assert "l***@example.com" in stored


async def test_a_card_number_echoed_back_by_the_bot_reaches_the_transcript_masked(
    desk: Desk,
) -> None:
    h = desk.h
    await h.say("/start")
    echoed = await h.say(f"/{NUMBER} {SECRET}")  # an "unknown command" that names itself
    assert any(r.delete_inbound for r in echoed)
    stored = await stored_text(desk)
    assert NUMBER not in stored
    assert_no_trace(stored, SECRET)
