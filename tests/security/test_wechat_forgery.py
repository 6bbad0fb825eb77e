"""Forged and replayed WeChat pushes (issue 12, item 1).

The attacker has what sits in any reverse proxy's access log: the query string of pushes WeChat
sent — ``signature``, ``timestamp``, ``nonce`` (and in safe/compatible mode ``encrypt_type`` and
``msg_signature``) — but not the token, the EncodingAESKey or the bodies. The signature covers
only token + timestamp + nonce, so before the fix one captured URL signed any body, forever.
"""

from __future__ import annotations

import asyncio

import pytest

from bot.runtime import ChannelConfigError, RunOptions
from bot.wechat import build_runner, check_settings
from core.model import Role
from storage.tables import ProcessedInboundRow
from tests.security.conftest import ADMIN, StartBot, WeChatBot
from tests.wechat_peer import (
    TOKEN,
    WeChatPusher,
    sha1_signature,
    text_xml,
)

pytestmark = pytest.mark.slow

STRANGER = "o_stranger_openid_000000000001"
VICTIM = "o_victim_openid_0000000000001"


async def role_of(bot: WeChatBot, actor: str) -> Role | None:
    assert bot.app is not None
    async with bot.app.uow_factory() as uow:
        return await uow.role_grants.role_of(actor)


async def processed(bot: WeChatBot) -> int:
    assert bot.app is not None
    async with bot.app.uow_factory() as uow:
        rows = await uow.session.execute(ProcessedInboundRow.__table__.select())
        return len(rows.all())


def without(query: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in query.items() if k not in names}


def wechat_at(bot: WeChatBot, mode: str, seconds_ago: float) -> WeChatPusher:
    """WeChat as it pushed ``seconds_ago`` (by the bot's clock)."""
    then = bot.clock.now().timestamp() - seconds_ago
    return WeChatPusher(bot.session, bot.url, mode, now=lambda: then)


async def test_a_year_old_query_string_with_a_forged_body_from_the_admin_grants_nothing(
    wechat_bot: StartBot,
) -> None:
    bot = await wechat_bot(wechat_mode="compatible")
    # A year ago WeChat pushed the admin's "价格"; the proxy logged the URL it came to.
    captured, _ = wechat_at(bot, "compatible", 365 * 86400).signed_query(text_xml(ADMIN, "价格"))
    forged = text_xml(ADMIN, f"/grant wechat:{STRANGER} admin").encode()
    attacker = bot.pusher("compatible")
    as_logged = await attacker.raw(captured, forged)
    as_plaintext = await attacker.raw(without(captured, "encrypt_type", "msg_signature"), forged)
    assert as_logged.status in (400, 403) and as_plaintext.status in (400, 403)
    assert await role_of(bot, f"wechat:{STRANGER}") is None
    assert await processed(bot) == 0
    # The same command, really sent by the admin through WeChat today, works.
    genuine = await bot.pusher("compatible").push(text_xml(ADMIN, f"/grant wechat:{VICTIM} staff"))
    assert genuine.status == 200 and genuine.text is not None
    assert await role_of(bot, f"wechat:{VICTIM}") == Role.STAFF


async def test_a_query_string_captured_a_second_ago_cannot_sign_a_second_body(
    wechat_bot: StartBot,
) -> None:
    bot = await wechat_bot(wechat_mode="plaintext", wechat_aes_key=None, admins="")
    wechat = bot.pusher("plaintext")
    query, body = wechat.signed_query(text_xml(VICTIM, "价格"))
    first = await wechat.raw(query, body.encode())
    assert first.status == 200 and first.text is not None
    # Within the window, the attacker puts a body of their own under the logged URL.
    forged = await wechat.raw(query, text_xml(VICTIM, "卖卡").encode())
    assert forged.status == 403
    assert await processed(bot) == 1
    # WeChat's own retry of the genuine push (same stamp, same body) is no replay: it is
    # answered "success" (its answer went out already) and has no second effect.
    retry = await wechat.raw(query, body.encode())
    assert retry.success
    assert await processed(bot) == 1


async def test_a_captured_push_replayed_whole_after_the_window_is_refused(
    wechat_bot: StartBot,
) -> None:
    bot = await wechat_bot()  # safe mode: the body is signed, so only a whole replay is left
    wechat = bot.pusher("safe")
    query, body = wechat.signed_query(text_xml(VICTIM, "价格"))
    assert (await wechat.raw(query, body.encode())).text is not None
    bot.clock.advance(seconds=299)
    assert (await wechat.raw(query, body.encode())).success  # still WeChat's retry window
    bot.clock.advance(seconds=2)
    assert (await wechat.raw(query, body.encode())).status == 403
    assert await processed(bot) == 1


@pytest.mark.parametrize(
    ("seconds_ago", "accepted"), [(301, False), (300, True), (-299, True), (-301, False)]
)
async def test_a_timestamp_more_than_five_minutes_from_now_is_refused(
    wechat_bot: StartBot, seconds_ago: float, accepted: bool
) -> None:
    bot = await wechat_bot()
    answer = await wechat_at(bot, "safe", seconds_ago).push(text_xml(VICTIM, "价格"))
    assert (answer.status == 200) is accepted, answer
    assert (answer.status == 403) is not accepted


async def test_a_handshake_url_from_the_log_cannot_sign_a_push(wechat_bot: StartBot) -> None:
    bot = await wechat_bot(wechat_mode="plaintext", wechat_aes_key=None, admins="")
    timestamp, nonce = str(int(bot.clock.now().timestamp())), "4242424242"
    query = {
        "signature": sha1_signature(TOKEN, timestamp, nonce),
        "timestamp": timestamp,
        "nonce": nonce,
    }
    for _ in range(2):  # WeChat may check the URL more than once: same answer each time
        async with bot.session.get(bot.url, params={**query, "echostr": "e1"}) as response:
            assert (response.status, await response.text()) == (200, "e1")
    forged = await bot.pusher("plaintext").raw(query, text_xml(VICTIM, "卖卡").encode())
    assert forged.status == 403
    assert await processed(bot) == 0


async def test_a_push_signed_for_another_account_is_refused(wechat_bot: StartBot) -> None:
    bot = await wechat_bot()
    other = text_xml(VICTIM, "价格").replace("gh_cardbot_test", "gh_another_account")
    answer = await bot.pusher("safe").push(other)
    assert answer.status == 403
    assert await processed(bot) == 0


async def test_wechat_s_own_retries_of_a_push_in_hand_get_its_one_answer(
    wechat_bot: StartBot,
) -> None:
    bot = await wechat_bot()
    wechat = bot.pusher("safe")
    query, body = wechat.signed_query(text_xml(VICTIM, "价格"))
    answers = await asyncio.gather(*(wechat.raw(query, body.encode()) for _ in range(3)))
    assert all(a.status == 200 for a in answers)
    assert len([a for a in answers if a.text is not None]) == 1
    assert await processed(bot) == 1


async def test_plaintext_mode_does_not_start_while_a_wechat_admin_or_staff_exists(
    wechat_bot: StartBot,
) -> None:
    bot = await wechat_bot(wechat_mode="plaintext", wechat_aes_key=None, admins="")
    configured = bot.settings().model_copy(update={"staff": f"telegram:1,wechat:{VICTIM}"})
    with pytest.raises(ChannelConfigError, match="plaintext mode"):
        check_settings(configured)
    assert bot.app is not None
    async with bot.app.uow_factory() as uow:
        await uow.role_grants.grant(f"wechat:{VICTIM}", Role.STAFF, "telegram:1", bot.clock.now())
        await uow.commit()
    with pytest.raises(ChannelConfigError, match="granted in chat"):
        await build_runner(bot.app, RunOptions())
    # Granted while it runs (by an admin on Telegram): that user's pushes are refused.
    refused = await bot.pusher("plaintext").push(
        text_xml(VICTIM, f"/grant wechat:{STRANGER} admin")
    )
    assert refused.status == 403
    assert await role_of(bot, f"wechat:{STRANGER}") is None
