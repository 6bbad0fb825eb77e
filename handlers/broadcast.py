"""Desk commands for broadcasts (admins) and rate-alert subscriptions (everyone).

Admins: ``/broadcast [audience] [at TIME] text`` stores a draft and answers with a preview —
the message as recipients will see it, who gets it, how many, when — and how to confirm
(``/confirm_broadcast N``) or drop it (``/cancel_broadcast N``); a picture the admin sends while
the draft waits is attached to it (:func:`on_admin_image`). ``/broadcasts`` lists the latest
with their progress and delivery report. Everyone: ``/subscribe BRAND``, ``/unsubscribe
[BRAND]`` (without a brand: no broadcasts at all until the next ``/subscribe``).

The dispatcher checks roles before an admin command gets here, opens the unit of work and
commits after the handler returns. The sending itself is ``bot/broadcast.py``'s.
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

from core import broadcast as bc
from core.broadcast import (
    SHANGHAI,
    Audience,
    AudienceKind,
    Broadcast,
    BroadcastState,
    DeliveryReport,
    DeliveryState,
)
from core.catalog import Catalog
from core.errors import UserError
from core.messages import Reply
from core.ports import BroadcastUnitOfWork
from handlers.desk import DeskCtx, DeskHandler
from handlers.i18n import LANGUAGES, Translator

RECENT = 10
REPORT_STATES = (
    DeliveryState.SENT,
    DeliveryState.FAILED,
    DeliveryState.UNREACHABLE,
    DeliveryState.SKIPPED,
    DeliveryState.UNKNOWN,
    DeliveryState.PENDING,
    DeliveryState.CLAIMED,
    DeliveryState.SENDING,
)


def recipient_text(text: str, language: str) -> str:
    """The broadcast as a recipient reads it: the admin's text, then how to stop hearing it."""
    return f"{text}\n\n{Translator(language)('broadcast.footer')}"


def footer_reserve() -> int:
    """Characters the footer adds in the longest language (kept free in every channel limit)."""
    return max(len(recipient_text("", lang)) for lang in LANGUAGES)


def _uow(d: DeskCtx) -> BroadcastUnitOfWork:
    # The desk's unit of work is the full SqlAlchemyUnitOfWork; the port names only what the
    # sell flow needs, so the broadcast repositories are reached through the wider protocol.
    return cast(BroadcastUnitOfWork, d.uow)


def _catalog(d: DeskCtx) -> Catalog:
    return d.services.sale.catalog


def _say(text: str) -> list[Reply]:
    return [Reply(text)]


def _error(d: DeskCtx, exc: UserError) -> list[Reply]:
    return _say(d.t(exc.key, **exc.params))


def describe_audience(t: Translator, catalog: Catalog, audience: Audience) -> str:
    """An audience in words: all subscribers, holders of a brand, a brand's alert subscribers."""
    if audience.kind is AudienceKind.ALL:
        return t("broadcast.audience.all")
    assert audience.brand is not None
    try:
        brand = catalog.get(audience.brand).name(t.lang)
    except KeyError:
        brand = audience.brand
    return t(f"broadcast.audience.{audience.kind.value}", brand=brand)


def describe_time(t: Translator, at: datetime | None) -> str:
    """A send time in Beijing time, or "now"."""
    if at is None:
        return t("broadcast.when.now")
    return t("broadcast.when.at", time=at.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M"))


def describe_report(t: Translator, report: DeliveryReport) -> str:
    """``sent 10 · failed 1 · …`` for the states that occur."""
    parts = [
        t(f"broadcast.state.{state.value}", n=report[state])
        for state in REPORT_STATES
        if report[state]
    ]
    return " · ".join(parts) or t("broadcast.report.empty")


def _preview(d: DeskCtx, draft: Broadcast, count: int) -> list[Reply]:
    text = d.t(
        "broadcast.preview",
        id=draft.id,
        audience=describe_audience(d.t, _catalog(d), draft.audience),
        count=count,
        when=describe_time(d.t, draft.send_at),
        image=d.t("broadcast.with_image") if draft.image else "",
    )
    return [
        Reply(text),
        Reply(recipient_text(draft.text, d.t.lang), image=draft.image),
        Reply(d.t("broadcast.howto", id=draft.id)),
    ]


def _number(d: DeskCtx) -> int | None:
    arg = d.args.strip().lstrip("#")
    return int(arg) if arg.isdigit() else None


async def broadcast(d: DeskCtx) -> list[Reply]:
    """``/broadcast [audience] [at TIME] text``: a draft and its preview."""
    if not d.args.strip():
        return _say(d.t("broadcast.error.usage"))
    uow = _uow(d)
    try:
        request = bc.parse_broadcast(_catalog(d), d.args, d.now)
        draft, count = await bc.draft(
            uow, request, d.actor, d.now, footer_reserve=footer_reserve()
        )
    except UserError as exc:
        return _error(d, exc)
    return _preview(d, draft, count)


async def on_admin_image(d: DeskCtx) -> list[Reply] | None:
    """A picture from an admin whose draft waits: attached to it (None when no draft waits)."""
    if d.inbound.image is None:
        return None
    uow = _uow(d)
    waiting = await bc.waiting_draft(uow, d.actor)
    if waiting is None:
        return None
    try:
        draft = await bc.attach_image(
            uow, waiting, d.inbound.image, d.actor, d.now, footer_reserve=footer_reserve()
        )
    except UserError as exc:
        return _error(d, exc)
    count = await uow.broadcasts.count_audience(draft.audience)
    return _preview(d, draft, count)


async def confirm_broadcast(d: DeskCtx) -> list[Reply]:
    """``/confirm_broadcast N``: the draft's recipients are fixed and it sends at its time."""
    number = _number(d)
    if number is None:
        return _say(d.t("broadcast.error.usage_confirm"))
    try:
        confirmed = await bc.confirm(_uow(d), number, d.actor, d.now)
    except UserError as exc:
        return _error(d, exc)
    scheduled = confirmed.send_at if confirmed.send_at and confirmed.send_at > d.now else None
    return _say(
        d.t(
            "broadcast.confirmed",
            id=number,
            count=confirmed.recipients,
            when=describe_time(d.t, scheduled),
        )
    )


async def cancel_broadcast(d: DeskCtx) -> list[Reply]:
    """``/cancel_broadcast N``: a draft is dropped; a broadcast stops (pending → skipped)."""
    number = _number(d)
    if number is None:
        return _say(d.t("broadcast.error.usage_cancel"))
    uow = _uow(d)
    try:
        before = await uow.broadcasts.get(number)
    except KeyError:
        return _say(d.t("broadcast.error.not_found", id=number))
    try:
        _, report = await bc.cancel(uow, number, d.actor, d.now)
    except UserError as exc:
        return _error(d, exc)
    if before.state is BroadcastState.DRAFT:
        return _say(d.t("broadcast.dropped", id=number))
    return _say(d.t("broadcast.cancelled", id=number, report=describe_report(d.t, report)))


async def broadcasts(d: DeskCtx) -> list[Reply]:
    """``/broadcasts``: the latest broadcasts with progress and delivery report."""
    rows = await bc.recent(_uow(d), RECENT)
    if not rows:
        return _say(d.t("broadcast.list.empty"))
    lines = [d.t("broadcast.list.title")]
    for item, report in rows:
        lines.append(
            d.t(
                "broadcast.list.item",
                id=item.id,
                state=d.t(f"broadcast.status.{item.state.value}"),
                audience=describe_audience(d.t, _catalog(d), item.audience),
                when=describe_time(d.t, item.send_at),
                done=report.done,
                total=report.total,
                report=describe_report(d.t, report),
                excerpt=item.text if len(item.text) <= 30 else item.text[:29] + "…",
            )
        )
    return _say("\n\n".join(lines))


def _brand_list(d: DeskCtx) -> str:
    return "、".join(b.name(d.t.lang) for b in _catalog(d).brands())


async def subscribe(d: DeskCtx) -> list[Reply]:
    """``/subscribe BRAND``: that brand's rate alerts (and broadcasts again after opting out)."""
    uow = _uow(d)
    user_id = d.user.id
    if not d.args.strip():
        opted_back = await bc.subscribe(uow, user_id, None, d.actor, d.now)
        followed = [_catalog(d).get(code).name(d.t.lang) for code in await _brands(uow, user_id)]
        head = d.t("subscribe.opted_in") if opted_back else d.t("subscribe.usage")
        mine = d.t("subscribe.mine", brands="、".join(followed)) if followed else ""
        brands = d.t("subscribe.brands", brands=_brand_list(d))
        return _say("\n\n".join(p for p in (head, mine, brands) if p))
    try:
        brand = bc.find_brand(_catalog(d), d.args)
    except UserError as exc:
        brands = d.t("subscribe.brands", brands=_brand_list(d))
        return _say(d.t(exc.key, **exc.params) + "\n\n" + brands)
    added = await bc.subscribe(uow, user_id, brand, d.actor, d.now)
    key = "subscribe.done" if added else "subscribe.already"
    return _say(d.t(key, brand=brand.name(d.t.lang)))


async def _brands(uow: BroadcastUnitOfWork, user_id: int) -> list[str]:
    return list(await uow.subscriptions.brands_of(user_id))


async def unsubscribe(d: DeskCtx) -> list[Reply]:
    """``/unsubscribe BRAND`` ends one brand's alerts; ``/unsubscribe`` ends everything."""
    uow = _uow(d)
    if not d.args.strip():
        await bc.unsubscribe(uow, d.user.id, None, d.actor, d.now)
        return _say(d.t("subscribe.opted_out"))
    try:
        brand = bc.find_brand(_catalog(d), d.args)
    except UserError as exc:
        return _error(d, exc)
    removed = await bc.unsubscribe(uow, d.user.id, brand, d.actor, d.now)
    key = "subscribe.removed" if removed else "subscribe.not_subscribed"
    return _say(d.t(key, brand=brand.name(d.t.lang)))


ADMIN_COMMANDS: dict[str, DeskHandler] = {
    "broadcast": broadcast,
    "confirm_broadcast": confirm_broadcast,
    "broadcasts": broadcasts,
    "cancel_broadcast": cancel_broadcast,
}
USER_COMMANDS: dict[str, DeskHandler] = {
    "subscribe": subscribe,
    "unsubscribe": unsubscribe,
}
