"""Broadcasts: an admin's message to an audience, delivered once per recipient from a durable
outbox, paced by each channel's limits.

A broadcast goes ``draft → scheduled → sending → finished`` (or ``cancelled`` from any state
before ``finished``). Confirming materialises one delivery row per recipient — a snapshot of
the channel and chat it goes to — and each row goes ``pending → sending → sent | failed |
unreachable | skipped | unknown``: ``sending`` is committed before the request, so after a
crash a row left ``sending`` is never sent again; it is reported ``unknown`` (received at most
once). Cancelling turns every ``pending`` row into ``skipped``.

Audiences: every reachable user who has not opted out (``all``), the holders of a brand (a card
of that brand; ``holders:BRAND``), the subscribers of a brand's rate alerts (``alerts:BRAND``).
A person who opted out (``/unsubscribe`` without a brand) hears nothing. Each user is one
recipient, on the reachable channel identity they added last.

Pure: parsing, validation and records here; services take a unit of work.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import TYPE_CHECKING

from core.catalog import Brand, Catalog
from core.errors import UserError

if TYPE_CHECKING:
    from core.ports import BroadcastUnitOfWork

# China has no daylight saving time: Asia/Shanghai is UTC+8 all year.
SHANGHAI = timezone(timedelta(hours=8), "Asia/Shanghai")
TELEGRAM_TEXT_MAX = 4096  # sendMessage text
TELEGRAM_CAPTION_MAX = 1024  # sendPhoto caption
WECHAT_TEXT_MAX_BYTES = 2000  # one customer-service / passive text (bot/wechat/protocol.py)
MAX_SCHEDULE_AHEAD = timedelta(days=30)
MAX_IMAGE_BYTES = 10 * 1024 * 1024  # Telegram's sendPhoto upload limit
CHANNELS = ("telegram", "wechat")


class BroadcastState(StrEnum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    FINISHED = "finished"
    CANCELLED = "cancelled"


class DeliveryState(StrEnum):
    PENDING = "pending"  # waiting for its turn
    CLAIMED = "claimed"  # taken by a worker, no request yet: a crash puts it back to pending
    SENDING = "sending"  # committed just before the request: never sent again
    SENT = "sent"
    FAILED = "failed"  # the channel refused this message
    UNREACHABLE = "unreachable"  # blocked the bot / unfollowed / chat gone
    SKIPPED = "skipped"  # not sent on purpose (cancelled, outside WeChat's window)
    UNKNOWN = "unknown"  # left ``sending`` by a crash or an unanswered request: at most once


OPEN_DELIVERY_STATES = (DeliveryState.PENDING, DeliveryState.CLAIMED, DeliveryState.SENDING)
ACTIVE_STATES = (BroadcastState.SCHEDULED, BroadcastState.SENDING)


class AudienceKind(StrEnum):
    ALL = "all"
    HOLDERS = "holders"
    ALERTS = "alerts"


@dataclass(frozen=True)
class Audience:
    """Who hears a broadcast; ``brand`` (a catalog code) for holders and alerts."""

    kind: AudienceKind
    brand: str | None = None

    def __post_init__(self) -> None:
        if (self.kind is AudienceKind.ALL) != (self.brand is None):
            raise ValueError("holders and alerts audiences need a brand; all has none")

    @property
    def code(self) -> str:
        """How the audience is stored and typed: ``all``, ``holders:walmart``…"""
        return self.kind.value if self.brand is None else f"{self.kind.value}:{self.brand}"

    @classmethod
    def from_code(cls, code: str) -> Audience:
        kind, _, brand = code.partition(":")
        return cls(AudienceKind(kind), brand or None)


@dataclass(frozen=True)
class Broadcast:
    created_by: str
    created_at: datetime
    audience: Audience
    text: str
    state: BroadcastState
    send_at: datetime | None = None  # None: as soon as it is confirmed
    image: bytes | None = None
    recipients: int = 0  # delivery rows materialised at confirmation
    confirmed_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    cancelled_at: datetime | None = None
    cancelled_by: str | None = None
    id: int | None = None


@dataclass(frozen=True)
class Delivery:
    """One recipient's message: where it goes (a snapshot taken at confirmation) and its
    state. ``language`` is the recipient's, for the footer."""

    broadcast_id: int
    user_id: int
    channel: str
    chat_id: str
    state: DeliveryState
    language: str = "zh"
    attempts: int = 0
    error: str | None = None
    id: int | None = None


@dataclass(frozen=True)
class Outcome:
    """What became of one delivery attempt."""

    state: DeliveryState
    error: str | None = None


@dataclass(frozen=True)
class DeliveryReport:
    """Counts per delivery state."""

    counts: Mapping[DeliveryState, int] = field(default_factory=dict)

    def __getitem__(self, state: DeliveryState) -> int:
        return self.counts.get(state, 0)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def done(self) -> int:
        """Deliveries that reached an end state."""
        return self.total - sum(self[s] for s in OPEN_DELIVERY_STATES)

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, int]]) -> DeliveryReport:
        counts: dict[DeliveryState, int] = {}
        for state, n in pairs:
            counts[DeliveryState(state)] = counts.get(DeliveryState(state), 0) + n
        return cls(counts)


class BroadcastError(UserError):
    """An admin's broadcast command cannot be done; ``key`` says why."""

    key = "broadcast.error.usage"


class UnknownBrand(UserError):
    key = "subscribe.unknown_brand"


# --------------------------------------------------------------------------------------------
# Parsing and validation

_HOLDER_WORDS = ("holders", "holder", "持卡", "持有")
_ALERT_WORDS = ("alerts", "alert", "subscribers", "订阅")
_ALL_WORDS = ("all", "全部", "所有")
_AT_WORDS = ("at", "于", "定时")
_SEPARATORS = re.compile(r"[\s_\-·.]+")
_TIME_FORMATS = (
    (re.compile(r"^(\d{4})-(\d{1,2})-(\d{1,2})[ T](\d{1,2}):(\d{2})$"), "ymdhm"),
    (re.compile(r"^(\d{1,2})-(\d{1,2})[ T](\d{1,2}):(\d{2})$"), "mdhm"),
    (re.compile(r"^(\d{1,2}):(\d{2})$"), "hm"),
)


def _norm(text: str) -> str:
    return _SEPARATORS.sub("", text.strip().lower())


def find_brand(catalog: Catalog, text: str) -> Brand:
    """The brand a person means by ``text``: its code, Chinese or English name (case, spaces
    and dashes ignored), or the unique brand whose name starts with it; else UnknownBrand."""
    wanted = _norm(text)
    if not wanted:
        raise UnknownBrand(brand=text.strip())
    names = {b.code: {_norm(b.code), _norm(b.name_zh), _norm(b.name_en)} for b in catalog.brands()}
    exact = [b for b in catalog.brands() if wanted in names[b.code]]
    if exact:
        return exact[0]
    prefixed = [b for b in catalog.brands() if any(n.startswith(wanted) for n in names[b.code])]
    if len(prefixed) == 1:
        return prefixed[0]
    raise UnknownBrand(brand=text.strip())


def parse_audience(catalog: Catalog, token: str) -> Audience | None:
    """``all`` / ``holders:BRAND`` / ``alerts:BRAND`` (also 全部, 持卡:品牌, 订阅:品牌, with ``:``
    or ``：``); None when the token is not an audience (it starts the text)."""
    word, colon, rest = token.replace("：", ":").partition(":")
    word = word.lower()
    if not colon:
        return Audience(AudienceKind.ALL) if word in _ALL_WORDS else None
    if word in _HOLDER_WORDS:
        kind = AudienceKind.HOLDERS
    elif word in _ALERT_WORDS:
        kind = AudienceKind.ALERTS
    else:
        return None
    return Audience(kind, find_brand(catalog, rest).code)


def parse_send_time(text: str, now: datetime) -> datetime:
    """A time in Asia/Shanghai — ``HH:MM`` (today, or tomorrow once passed), ``MM-DD HH:MM``
    or ``YYYY-MM-DD HH:MM`` — as an aware datetime; BroadcastError when malformed, past or
    more than 30 days ahead."""
    local_now = now.astimezone(SHANGHAI)
    text = text.strip()
    for pattern, shape in _TIME_FORMATS:
        match = pattern.match(text)
        if match is None:
            continue
        parts = [int(g) for g in match.groups()]
        try:
            if shape == "ymdhm":
                at = datetime(parts[0], parts[1], parts[2], parts[3], parts[4], tzinfo=SHANGHAI)
            elif shape == "mdhm":
                year = local_now.year
                at = datetime(year, parts[0], parts[1], parts[2], parts[3], tzinfo=SHANGHAI)
                if at < local_now - timedelta(days=1):
                    at = at.replace(year=local_now.year + 1)
            else:
                at = local_now.replace(hour=parts[0], minute=parts[1], second=0, microsecond=0)
                if at <= local_now:
                    at += timedelta(days=1)
        except ValueError:
            raise BroadcastError("broadcast.error.time", time=text) from None
        if at <= local_now:
            raise BroadcastError("broadcast.error.time_past", time=text)
        if at - local_now > MAX_SCHEDULE_AHEAD:
            raise BroadcastError("broadcast.error.time_far", time=text)
        return at
    raise BroadcastError("broadcast.error.time", time=text)


@dataclass(frozen=True)
class BroadcastRequest:
    """What ``/broadcast [audience] [at TIME] text`` asked for."""

    audience: Audience
    text: str
    send_at: datetime | None = None


def _split_first(text: str) -> tuple[str, str]:
    parts = text.split(None, 1)
    if not parts:
        return "", ""
    return parts[0], parts[1] if len(parts) > 1 else ""


def parse_broadcast(catalog: Catalog, args: str, now: datetime) -> BroadcastRequest:
    """Parse the arguments of ``/broadcast``; the text keeps its line breaks."""
    rest = args.strip()
    audience = Audience(AudienceKind.ALL)
    first, after = _split_first(rest)
    parsed = parse_audience(catalog, first) if first else None
    if parsed is not None:
        audience, rest = parsed, after.lstrip()
    send_at = None
    first, after = _split_first(rest)
    if first.lower() in _AT_WORDS:
        # The time is one token (HH:MM) or two (a date, then HH:MM).
        one, two = _split_first(after)
        two_first, two_rest = _split_first(two)
        if re.match(r"^\d", two_first) and ":" in two_first and ":" not in one:
            send_at = parse_send_time(f"{one} {two_first}", now)
            rest = two_rest
        else:
            send_at = parse_send_time(one, now)
            rest = two
    text = rest.strip()
    if not text:
        raise BroadcastError("broadcast.error.usage")
    return BroadcastRequest(audience, text, send_at)


def validate_text(text: str, has_image: bool, reserve: int = 0) -> None:
    """The text (plus ``reserve`` characters of footer) must fit every channel: a Telegram
    message (4,096) or photo caption (1,024), and one WeChat text (2,000 bytes)."""
    limit = TELEGRAM_CAPTION_MAX if has_image else TELEGRAM_TEXT_MAX
    if len(text) + reserve > limit:
        raise BroadcastError("broadcast.error.too_long_telegram", limit=limit - reserve)
    if len(text.encode("utf-8")) + reserve * 3 > WECHAT_TEXT_MAX_BYTES:
        raise BroadcastError(
            "broadcast.error.too_long_wechat", limit=WECHAT_TEXT_MAX_BYTES - reserve * 3
        )


def is_due(broadcast: Broadcast, now: datetime) -> bool:
    """Whether a confirmed broadcast may send now."""
    return broadcast.state in ACTIVE_STATES and (
        broadcast.send_at is None or broadcast.send_at <= now
    )


# --------------------------------------------------------------------------------------------
# Services (the caller commits)


def _subject(broadcast_id: int | None) -> str:
    return f"broadcast:{broadcast_id}"


async def draft(
    uow: BroadcastUnitOfWork,
    request: BroadcastRequest,
    actor: str,
    now: datetime,
    *,
    footer_reserve: int = 0,
) -> tuple[Broadcast, int]:
    """Store a draft and count who would receive it (for the preview). An admin's earlier
    draft that was never confirmed is dropped: one draft waits per admin."""
    validate_text(request.text, has_image=False, reserve=footer_reserve)
    for old in await uow.broadcasts.drafts_of(actor):
        assert old.id is not None
        await uow.broadcasts.set_state(old.id, BroadcastState.CANCELLED, now, actor)
    broadcast = await uow.broadcasts.add(
        Broadcast(
            created_by=actor,
            created_at=now,
            audience=request.audience,
            text=request.text,
            state=BroadcastState.DRAFT,
            send_at=request.send_at,
        )
    )
    count = await uow.broadcasts.count_audience(request.audience)
    await uow.audit.append(
        now,
        actor,
        "broadcast.draft",
        _subject(broadcast.id),
        {
            "audience": request.audience.code,
            "send_at": request.send_at,
            "chars": len(request.text),
            "recipients": count,
        },
    )
    return broadcast, count


async def waiting_draft(uow: BroadcastUnitOfWork, actor: str) -> Broadcast | None:
    """The admin's draft that waits for confirmation, if any."""
    drafts = await uow.broadcasts.drafts_of(actor)
    return drafts[-1] if drafts else None


async def attach_image(
    uow: BroadcastUnitOfWork,
    broadcast: Broadcast,
    image: bytes,
    actor: str,
    now: datetime,
    *,
    footer_reserve: int = 0,
) -> Broadcast:
    """Attach a picture to a draft (the text becomes its caption on Telegram)."""
    if broadcast.state is not BroadcastState.DRAFT or broadcast.id is None:
        raise BroadcastError(
            "broadcast.error.not_draft", id=broadcast.id, state=broadcast.state.value
        )
    if len(image) > MAX_IMAGE_BYTES:
        raise BroadcastError("broadcast.error.image_too_large")
    validate_text(broadcast.text, has_image=True, reserve=footer_reserve)
    await uow.broadcasts.set_image(broadcast.id, image)
    await uow.audit.append(
        now, actor, "broadcast.image", _subject(broadcast.id), {"bytes": len(image)}
    )
    return replace(broadcast, image=image)


async def _get(uow: BroadcastUnitOfWork, broadcast_id: int) -> Broadcast:
    try:
        return await uow.broadcasts.get(broadcast_id)
    except KeyError:
        raise BroadcastError("broadcast.error.not_found", id=broadcast_id) from None


async def confirm(
    uow: BroadcastUnitOfWork, broadcast_id: int, actor: str, now: datetime
) -> Broadcast:
    """Confirm a draft: one pending delivery per recipient (channel and chat as they are now);
    it sends at its time (or now). A send time that passed while the draft waited means now."""
    broadcast = await _get(uow, broadcast_id)
    if broadcast.state is not BroadcastState.DRAFT:
        raise BroadcastError(
            "broadcast.error.not_draft", id=broadcast_id, state=broadcast.state.value
        )
    count = await uow.broadcasts.materialise(broadcast_id, broadcast.audience, now)
    send_at = broadcast.send_at if broadcast.send_at and broadcast.send_at > now else now
    await uow.broadcasts.confirm(broadcast_id, count, send_at, now)
    await uow.audit.append(
        now,
        actor,
        "broadcast.confirm",
        _subject(broadcast_id),
        {"audience": broadcast.audience.code, "recipients": count, "send_at": send_at},
    )
    return replace(
        broadcast,
        state=BroadcastState.SCHEDULED,
        recipients=count,
        send_at=send_at,
        confirmed_at=now,
    )


async def cancel(
    uow: BroadcastUnitOfWork, broadcast_id: int, actor: str, now: datetime
) -> tuple[Broadcast, DeliveryReport]:
    """Stop a broadcast: every pending delivery becomes skipped (messages in flight finish)."""
    broadcast = await _get(uow, broadcast_id)
    if broadcast.state in (BroadcastState.FINISHED, BroadcastState.CANCELLED):
        raise BroadcastError(
            "broadcast.error.not_cancellable", id=broadcast_id, state=broadcast.state.value
        )
    skipped = await uow.broadcasts.skip_pending(broadcast_id, "cancelled", now)
    await uow.broadcasts.set_state(broadcast_id, BroadcastState.CANCELLED, now, actor)
    report = await uow.broadcasts.report(broadcast_id)
    await uow.audit.append(
        now,
        actor,
        "broadcast.cancel",
        _subject(broadcast_id),
        {"was": broadcast.state.value, "skipped": skipped, "sent": report[DeliveryState.SENT]},
    )
    return replace(
        broadcast, state=BroadcastState.CANCELLED, cancelled_at=now, cancelled_by=actor
    ), report


async def report(uow: BroadcastUnitOfWork, broadcast_id: int) -> DeliveryReport:
    """Counts per delivery state, readable while it sends."""
    await _get(uow, broadcast_id)
    return await uow.broadcasts.report(broadcast_id)


async def recent(
    uow: BroadcastUnitOfWork, limit: int = 10
) -> Sequence[tuple[Broadcast, DeliveryReport]]:
    """The latest broadcasts, newest first, each with its report."""
    out = []
    for broadcast in await uow.broadcasts.recent(limit):
        assert broadcast.id is not None
        out.append((broadcast, await uow.broadcasts.report(broadcast.id)))
    return out


async def subscribe(
    uow: BroadcastUnitOfWork, user_id: int, brand: Brand | None, actor: str, now: datetime
) -> bool:
    """Hear a brand's rate alerts (and broadcasts again after opting out); False if already."""
    opted_back = await uow.subscriptions.opt_in(user_id)
    added = brand is not None and await uow.subscriptions.add(user_id, brand.code, now)
    if added or opted_back:
        await uow.audit.append(
            now,
            actor,
            "subscription.add",
            f"user:{user_id}",
            {"brand": brand.code if brand else None, "opted_in": opted_back},
        )
    return added or opted_back


async def unsubscribe(
    uow: BroadcastUnitOfWork, user_id: int, brand: Brand | None, actor: str, now: datetime
) -> int:
    """Stop one brand's alerts, or (no brand) every alert and every broadcast; how many
    subscriptions ended."""
    if brand is not None:
        removed = await uow.subscriptions.remove(user_id, brand.code)
    else:
        removed = await uow.subscriptions.remove_all(user_id)
        await uow.subscriptions.opt_out(user_id, now)
    await uow.audit.append(
        now,
        actor,
        "subscription.remove",
        f"user:{user_id}",
        {"brand": brand.code if brand else None, "removed": removed},
    )
    return removed
