"""One card, two people: the attacks of issue 12, item 9, repeated through the console on
SQLite and PostgreSQL.

* A and B both hold a quote for the same card. Whoever accepts first owns the card; the other
  is told so when they accept (or, when the card is already taken, as soon as they are quoted)
  — never rejected after confirming, and never both rejected.
* Anyone who knows a card number types wrong secrets for it: that used to lock the card for
  everyone for 24 h, its owner included. Now the guesser is refused the card, the owner still
  sells it, and the sale is held for review because strangers were guessing its secret.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from core.messages import Inbound
from core.model import OrderStatus
from tests.e2e.conftest import Harness, database_url, harness
from tests.e2e.test_console_sale import SCRIPT, WALMART, ZH, play

__all__ = ["database_url", "harness"]  # the e2e fixtures, for these tests


async def person(h: Harness, tmp_path: Path, name: str) -> Harness:
    """Another person talking to the same cardbot (another process on the same database)."""
    other = Harness(tmp_path, h.settings.resolved_database_url)
    other.user, other.clock = name, h.clock
    await other.start()
    return other


async def quoted(h: Harness) -> None:
    await play(h, SCRIPT[:4])
    assert await h.step() == "await_quote", h.text()


def click(h: Harness, action: str, message_id: str) -> Inbound:
    return Inbound(
        channel="console",
        user_id=h.user,
        chat_id=h.user,
        message_id=message_id,
        language="zh",
        option=h.option_id(action),
    )


async def test_the_first_to_accept_owns_the_card_and_the_second_is_told_before_confirming(
    harness: Harness, tmp_path: Path
) -> None:
    bob = await person(harness, tmp_path, "bob")
    try:
        await quoted(harness)
        await quoted(bob)
        await harness.choose("quote.accept")
        await bob.choose("quote.accept")
        assert ZH("error.card_held") in bob.text()
        assert await bob.step() == "await_card"
        # Alice, who accepted first, confirms and is paid — she is not rejected for Bob's quote.
        await play(harness, SCRIPT[5:])
        assert "【电子回单】" in harness.text()
        statuses = {o.user_id: o.status for o in await harness.orders()}
        assert sorted(s.value for s in statuses.values()) == ["cancelled", "settled"]
    finally:
        await bob.close()


async def test_a_card_someone_has_accepted_is_refused_to_anyone_else_at_quote_time(
    harness: Harness, tmp_path: Path
) -> None:
    await quoted(harness)
    await harness.choose("quote.accept")
    bob = await person(harness, tmp_path, "bob")
    try:
        await play(bob, SCRIPT[:3])
        await bob.say(WALMART[1])
        assert ZH("error.card_held") in bob.text()
        assert await bob.step() == "await_card"
        orders = await harness.orders()
        assert [o.status for o in orders] == [OrderStatus.ACCEPTED]  # Bob got no quote at all
    finally:
        await bob.close()


async def test_two_people_accepting_one_card_at_the_same_moment_leave_exactly_one_owner(
    harness: Harness, tmp_path: Path
) -> None:
    bob = await person(harness, tmp_path, "bob")
    try:
        await quoted(harness)
        await quoted(bob)
        assert harness.app is not None and bob.app is not None
        alice_said, bob_said = await asyncio.gather(
            harness.app.conversation.handle(click(harness, "quote.accept", "a-accept")),
            bob.app.conversation.handle(click(bob, "quote.accept", "b-accept")),
        )
        texts = [r.text for r in (*alice_said, *bob_said)]
        assert ZH("error.internal") not in texts
        assert texts.count(ZH("quote.accepted")) == 1
        assert texts.count(ZH("error.card_held")) == 1
        orders = await harness.orders()
        assert sorted(o.status.value for o in orders) == ["accepted", "cancelled"]
        # The owner confirms and is paid.
        winner = harness if ZH("quote.accepted") in [r.text for r in alice_said] else bob
        winner.last = list(alice_said if winner is harness else bob_said)
        await play(winner, SCRIPT[5:])
        assert "【电子回单】" in winner.text()
    finally:
        await bob.close()


async def guess(h: Harness, secret: str, times: int) -> None:
    await h.say("/sell")
    await h.say(WALMART[0])
    for _ in range(times):
        await h.say(secret)


async def test_strangers_guessing_a_secret_do_not_lock_the_owner_out_and_her_sale_is_reviewed(
    harness: Harness, tmp_path: Path
) -> None:
    """Five wrong secrets by two strangers used to lock the card for everyone for 24 hours."""
    strangers = [await person(harness, tmp_path, name) for name in ("mallory", "trudy")]
    try:
        await guess(strangers[0], "000000", 3)
        await guess(strangers[1], "111111", 2)
    finally:
        for stranger in strangers:
            await stranger.close()
    await play(harness, SCRIPT[:4])
    assert ZH("error.card_locked", hours=24) not in harness.text()
    assert await harness.step() == "await_quote"
    await play(harness, SCRIPT[4:])
    [*_, order] = sorted(await harness.orders(), key=lambda o: o.id or 0)
    assert order.status is OrderStatus.REVIEW
    assert "risk.card_guessed" in order.risk_reasons
    assert "人工审核" in harness.text()


async def test_one_person_who_keeps_guessing_a_secret_is_refused_that_card_but_the_owner_is_not(
    harness: Harness, tmp_path: Path
) -> None:
    mallory = await person(harness, tmp_path, "mallory")
    try:
        for attempt in range(3):
            await guess(mallory, f"00000{attempt}", 2)
            harness.clock.advance(minutes=31)  # stays below the suspension streak
        await mallory.say("/sell")
        await mallory.say(WALMART[0])
        assert ZH("error.card_locked", hours=24) in mallory.text()
    finally:
        await mallory.close()
    await play(harness, SCRIPT[:4])
    assert await harness.step() == "await_quote", harness.text()


async def test_an_accepted_quote_left_unconfirmed_does_not_hold_the_card_from_its_owner_forever(
    harness: Harness, tmp_path: Path
) -> None:
    """Accepting and walking away would otherwise keep the card from everyone for good."""
    await quoted(harness)
    await harness.choose("quote.accept")
    harness.clock.advance(minutes=31)
    bob = await person(harness, tmp_path, "bob")
    try:
        await quoted(bob)
        await bob.choose("quote.accept")
        assert ZH("quote.accepted") in bob.text()
    finally:
        await bob.close()
    # Alice comes back: her acceptance lapsed, and she is told so rather than paid twice over.
    await play(harness, SCRIPT[5:])
    assert ZH("quote.no_longer_open") in harness.text()
    statuses = sorted(o.status.value for o in await harness.orders())
    assert statuses == ["accepted", "expired"]
