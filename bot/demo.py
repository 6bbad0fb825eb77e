"""``cardbot demo``: a whole sale, scripted, through the console channel — a real photo of a
sample card (a real Code 128 barcode read by pyzbar), its secret, the quote, identity, payout,
receipt — on a fresh database of its own, so it can be run any number of times."""

from __future__ import annotations

import asyncio
import csv
import tempfile
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from bot.app import build_app
from bot.console import ConsoleChannel, render_reply
from bot.democard import render_card_photo
from bot.logs import configure_logging
from bot.settings import Settings
from core.catalog import default_catalog
from core.masking import mask_id_number
from core.messages import Reply
from core.model import OrderStatus
from core.money import yuan

DEMO_NAME = "张三"
DEMO_ID_NUMBER = "11010519491231002X"  # the textbook GB 11643 example, not a real person
DEMO_PHONE = "13800138000"
DEMO_ALIPAY = "zhangsan@example.com"


@dataclass(frozen=True)
class DemoCard:
    brand: str
    number: str
    secret: str
    face_value_fen: int


def pick_demo_card(cards_csv: Path) -> DemoCard:
    """An active, unspent sample card with a secret, far from expiry."""
    catalog = default_catalog()
    soon = date.today() + timedelta(days=90)
    with cards_csv.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            if (
                row["status"] == "active"
                and row["secret"]
                and row["balance_fen"] == row["face_value_fen"]
                and date.fromisoformat(row["expires"]) > soon
                and catalog.get(row["brand"]).has_secret
            ):
                return DemoCard(
                    row["brand"], row["number"], row["secret"], int(row["face_value_fen"])
                )
    raise SystemExit(f"no suitable demo card in {cards_csv}")


def prepare_demo(lang: str, keep_dir: str | None) -> tuple[Settings, Path]:
    """A fresh working folder with settings of its own and the photo of a sample card."""
    workdir = Path(keep_dir or tempfile.mkdtemp(prefix="cardbot-demo-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        var_dir=workdir,
        database_url=f"sqlite+aiosqlite:///{(workdir / 'cardbot.db').as_posix()}",
        data_key=None,
        data_key_file=workdir / "data.key",
    )
    configure_logging("INFO", workdir / "cardbot.log")
    card = pick_demo_card(settings.sandbox_cards)
    brand = default_catalog().get(card.brand)
    photo = workdir / "card-photo.jpg"
    face = f"¥{yuan(card.face_value_fen)}"
    photo.write_bytes(render_card_photo(brand.name(lang), card.number, face))
    return settings, photo


async def run_demo(lang: str = "zh", keep_dir: str | None = None) -> int:
    """Play the sale; exit status 0 only when the order ends settled with a receipt."""
    settings, photo = await asyncio.to_thread(prepare_demo, lang, keep_dir)
    workdir = settings.var_dir
    card = pick_demo_card(settings.sandbox_cards)
    app = await build_app(settings)
    last: list[Reply] = []

    def bot_says(text: str) -> None:
        print(
            "\n".join(
                f"  🤖 {line}" if n == 0 else f"     {line}"
                for n, line in enumerate(text.splitlines())
            )
        )

    channel = ConsoleChannel(app.conversation, user_id="demo-user", lang=lang, write=bot_says)

    async def say(line: str, shown: str | None = None) -> None:
        print(f"👤 {shown or line}")
        last[:] = await channel.send(line)

    async def choose(option_id: str) -> None:
        for reply in reversed(last):
            ids = [o.id.split(":", 1)[0] for o in reply.options]
            if option_id in ids:
                number = ids.index(option_id) + 1
                await say(str(number), f"{number}  ({reply.options[number - 1].label})")
                return
        raise SystemExit(
            f"demo: the bot did not offer {option_id!r}; last replies: "
            + " | ".join(render_reply(r) for r in last)
        )

    print(f"=== cardbot demo — {workdir} ===")
    try:
        await say("/start")
        await choose("menu.sell")
        await say(f"/photo {photo}", f"[照片 photo] {photo.name}")
        await say(card.secret, "[卡密 secret] " + "•" * len(card.secret))
        await choose("quote.accept")
        await choose("consent.yes")
        await say(DEMO_NAME)
        await say(DEMO_ID_NUMBER, mask_id_number(DEMO_ID_NUMBER))
        await say(DEMO_PHONE)
        await choose("method.alipay")
        await say(DEMO_ALIPAY)
        await choose("pay.confirm")
        async with app.uow_factory() as uow:
            orders = list(await uow.orders.recent(limit=1))
    finally:
        await app.close()
    if not orders or orders[0].status is not OrderStatus.SETTLED:
        status = orders[0].status.value if orders else "no order"
        print(f"=== demo FAILED: order status {status} ===")
        return 1
    order = orders[0]
    print(
        f"=== demo done: order {order.number} settled, ¥{yuan(order.payout_fen)} paid "
        f"(database and log in {workdir}) ==="
    )
    return 0
