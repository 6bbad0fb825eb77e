"""The broadcast desk commands, called as the dispatcher calls them (an open unit of work,
committed after the handler returns), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from core.catalog import default_catalog
from core.messages import Inbound, Reply
from core.model import Role, User
from handlers import broadcast as hb
from handlers.desk import DeskCtx
from handlers.i18n import Translator
from storage.db import SqlAlchemyUnitOfWorkFactory

NOW = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)
SERVICES = SimpleNamespace(sale=SimpleNamespace(catalog=default_catalog()))


async def user(uow_factory: SqlAlchemyUnitOfWorkFactory, external: str) -> User:
    async with uow_factory() as uow:
        person, _ = await uow.users.for_channel("telegram", external, external, "zh", NOW)
        await uow.commit()
    return person


async def call(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
    handler: hb.DeskHandler,
    who: User,
    args: str = "",
    *,
    role: Role = Role.ADMIN,
    lang: str = "zh",
    image: bytes | None = None,
) -> list[Reply]:
    external = f"{who.id}"
    inbound = Inbound("telegram", external, external, f"m{NOW}", args=args, image=image)
    async with uow_factory() as uow:
        d = DeskCtx(
            uow,
            SERVICES,
            inbound,
            who,
            role,
            f"telegram:{external}",
            Translator(lang),
            NOW,  # type: ignore[arg-type]
        )
        replies = await handler(d)
        await uow.commit()
    return replies


def text(replies: list[Reply] | None) -> str:
    assert replies is not None
    return "\n".join(r.text for r in replies)


async def test_broadcast_previews_the_message_the_audience_the_count_and_how_to_confirm(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    admin = await user(uow_factory, "1")
    for n in range(3):
        await user(uow_factory, str(100 + n))
    preview = text(await call(uow_factory, hb.broadcast, admin, "at 18:00 沃尔玛卡 96 折"))
    assert "广播草稿 #1" in preview and "收件人：4 人" in preview
    assert "2026-11-22 18:00（北京时间）" in preview
    assert "沃尔玛卡 96 折\n\n—— 回复 /unsubscribe 不再接收通知" in preview
    assert "/confirm_broadcast 1" in preview and "/cancel_broadcast 1" in preview
    confirmed = text(await call(uow_factory, hb.confirm_broadcast, admin, "1"))
    assert "广播 #1 已确认：4 位收件人" in confirmed
    listing = text(await call(uow_factory, hb.broadcasts, admin, lang="en"))
    assert "#1 scheduled · every subscriber" in listing
    assert "Progress 0/4: waiting 4" in listing


async def test_an_unknown_brand_or_a_missing_text_is_answered_and_nothing_is_stored(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    admin = await user(uow_factory, "1")
    assert "costco" in text(await call(uow_factory, hb.broadcast, admin, "holders:costco hi"))
    assert "用法" in text(await call(uow_factory, hb.broadcast, admin, "alerts:沃尔玛"))
    assert "用法" in text(await call(uow_factory, hb.confirm_broadcast, admin, "one"))
    assert "#7" in text(await call(uow_factory, hb.confirm_broadcast, admin, "7"))
    assert text(await call(uow_factory, hb.broadcasts, admin)) == "还没有发过广播。"


async def test_a_picture_from_the_admin_is_attached_to_the_draft_that_waits(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    admin = await user(uow_factory, "1")
    assert await call(uow_factory, hb.on_admin_image, admin, image=b"jpeg") is None
    await call(uow_factory, hb.broadcast, admin, "holders:walmart 图片里是新价格")
    replies = await call(uow_factory, hb.on_admin_image, admin, image=b"jpeg")
    assert replies is not None
    assert "（带图片）" in replies[0].text and "持有沃尔玛购物卡的用户" in replies[0].text
    assert replies[1].image == b"jpeg"
    dropped = text(await call(uow_factory, hb.cancel_broadcast, admin, "1"))
    assert dropped == "草稿 #1 已放弃。"
    assert await call(uow_factory, hb.on_admin_image, admin, image=b"jpeg") is None


async def test_cancelling_a_confirmed_broadcast_reports_what_was_skipped(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    admin = await user(uow_factory, "1")
    await user(uow_factory, "2")
    await call(uow_factory, hb.broadcast, admin, "hello")
    await call(uow_factory, hb.confirm_broadcast, admin, "1")
    stopped = text(await call(uow_factory, hb.cancel_broadcast, admin, "#1", lang="en"))
    assert stopped == "Broadcast #1 stopped. skipped 2"
    again = text(await call(uow_factory, hb.cancel_broadcast, admin, "1", lang="en"))
    assert "is over (cancelled)" in again


async def test_anyone_subscribes_to_a_brand_by_its_name_and_unsubscribes(
    uow_factory: SqlAlchemyUnitOfWorkFactory,
) -> None:
    admin = await user(uow_factory, "1")
    fan = await user(uow_factory, "2")
    as_user = {"role": Role.CUSTOMER}
    assert "已订阅沃尔玛购物卡" in text(
        await call(uow_factory, hb.subscribe, fan, "沃尔玛", **as_user)
    )
    assert "已经订阅" in text(await call(uow_factory, hb.subscribe, fan, "walmart", **as_user))
    unknown = text(await call(uow_factory, hb.subscribe, fan, "costco", **as_user))
    assert "没有找到品牌「costco」" in unknown and "京东E卡" in unknown
    mine = text(await call(uow_factory, hb.subscribe, fan, "", **as_user))
    assert "您已订阅：沃尔玛购物卡" in mine
    await call(uow_factory, hb.broadcast, admin, "alerts:walmart 上调")
    assert "收件人：1 人" in text(
        await call(uow_factory, hb.broadcast, admin, "alerts:walmart 上调")
    )
    assert "已取消" in text(await call(uow_factory, hb.unsubscribe, fan, "", **as_user))
    preview = text(await call(uow_factory, hb.broadcast, admin, "all 全体"))
    assert "收件人：1 人" in preview  # only the admin: the fan opted out of everything
    back = text(await call(uow_factory, hb.subscribe, fan, "", **as_user))
    assert "重新收到" in back
    assert "收件人：2 人" in text(await call(uow_factory, hb.broadcast, admin, "全体"))


def test_the_command_tables_name_their_handlers() -> None:
    assert set(hb.ADMIN_COMMANDS) == {
        "broadcast",
        "confirm_broadcast",
        "broadcasts",
        "cancel_broadcast",
    }
    assert set(hb.USER_COMMANDS) == {"subscribe", "unsubscribe"}
