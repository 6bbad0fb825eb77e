"""A broadcast to many Telegram recipients, killed halfway and restarted: is every recipient
reached exactly once, is every 429 honoured, how close to the allowed rate does it run?

The fake Bot API (tests/telegram_api.py) enforces Telegram's overall limit — at most 30 sends
in any second, one more is answered 429 with ``retry_after`` and opens a flood window — on a
clock running ``--scale`` times faster; ``cardbot run telegram`` runs as its own process with
``CARDBOT_TIME_SCALE`` set to the same factor, so 30 messages/s become 30 x scale real ones
and the ratio stays honest. Recipients are seeded straight into the database, the broadcast is
drafted and confirmed through ``core.broadcast`` (as ``/broadcast`` + ``/confirm_broadcast``
do). Partway the server floods (a 429 the bot must honour); halfway the bot process is killed
with SIGKILL and started again. A benchmark: it prints numbers, and exits non-zero when a
recipient got two messages, a ``sent`` one got none, or the limit was broken.

    python bench/broadcast.py --recipients 20000 --scale 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert

from bench.premise import require
from core import broadcast as bc
from core.broadcast import Audience, AudienceKind, BroadcastRequest, BroadcastState
from storage.db import SqlAlchemyUnitOfWorkFactory
from storage.migrate import upgrade_async
from storage.tables import metadata
from tests.e2e.telegram_harness import BotProcess
from tests.telegram_api import SEND_METHODS, FakeTelegram

ALLOWED_PER_SECOND = 30
FIRST_CHAT = 5_000_000
TEXT = "沃尔玛购物卡回收价上调至 96 折，今晚 24 点前有效。"


@dataclass(frozen=True)
class Seeded:
    broadcast_id: int
    chats: list[int]


async def seed(database_url: str, recipients: int) -> Seeded:
    """Migrate, add ``recipients`` Telegram users, draft and confirm a broadcast to all."""
    await upgrade_async(database_url)
    factory = SqlAlchemyUnitOfWorkFactory.from_url(database_url)
    now = datetime.now(UTC)
    chats = [FIRST_CHAT + n for n in range(recipients)]
    users, identities = metadata.tables["users"], metadata.tables["channel_identities"]
    try:
        async with factory.engine.begin() as conn:
            for start in range(0, recipients, 5000):
                chunk = range(start, min(recipients, start + 5000))
                await conn.execute(
                    insert(users),
                    [
                        {"id": n + 1, "created_at": now, "language": "zh", "kyc_level": 0}
                        for n in chunk
                    ],
                )
                await conn.execute(
                    insert(identities),
                    [
                        {
                            "channel": "telegram",
                            "external_id": str(chats[n]),
                            "user_id": n + 1,
                            "chat_id": str(chats[n]),
                            "reachable": True,
                            "created_at": now,
                        }
                        for n in chunk
                    ],
                )
        async with factory() as uow:
            draft, _ = await bc.draft(
                uow, BroadcastRequest(Audience(AudienceKind.ALL), TEXT), "bench:admin", now
            )
            assert draft.id is not None
            await bc.confirm(uow, draft.id, "bench:admin", now)
            await uow.commit()
    finally:
        await factory.dispose()
    return Seeded(draft.id, chats)


async def deliveries(
    database_url: str, broadcast_id: int
) -> tuple[BroadcastState, dict[int, str]]:
    """The broadcast's state and each chat's delivery state."""
    factory = SqlAlchemyUnitOfWorkFactory.from_url(database_url)
    try:
        async with factory() as uow:
            state = (await uow.broadcasts.get(broadcast_id)).state
            rows = await uow.broadcasts.deliveries(broadcast_id)
    finally:
        await factory.dispose()
    return state, {int(d.chat_id): d.state.value for d in rows}


async def wait_finished(database_url: str, broadcast_id: int, within: float) -> None:
    deadline = time.monotonic() + within
    factory = SqlAlchemyUnitOfWorkFactory.from_url(database_url)
    try:
        while time.monotonic() < deadline:
            async with factory() as uow:
                state = (await uow.broadcasts.get(broadcast_id)).state
            if state is BroadcastState.FINISHED:
                return
            await asyncio.sleep(0.5)
    finally:
        await factory.dispose()
    raise TimeoutError(f"broadcast {broadcast_id} not finished within {within:.0f}s")


def max_in_window(times: list[float], window: float) -> int:
    """The most arrivals in any window of this length."""
    best, recent = 0, deque[float]()
    for t in times:
        recent.append(t)
        while recent[0] <= t - window:
            recent.popleft()
        best = max(best, len(recent))
    return best


def flood_windows(tg: FakeTelegram) -> list[tuple[float, float, int]]:
    """(first 429, first accepted send after it, 429s in between) for each flood window."""
    windows: list[tuple[float, float, int]] = []
    start: float | None = None
    refused = 0
    for call in tg.sends(ok_only=False):
        if call.status == 429:
            if start is None:
                start, refused = call.at, 0
            refused += 1
        elif start is not None:
            windows.append((start, call.at, refused))
            start = None
    if start is not None:
        windows.append((start, start, refused))
    return windows


async def run(
    recipients: int,
    scale: float,
    workdir: Path,
    database_url: str | None = None,
    kill_at: float = 0.5,
    flood_at: float | None = 0.25,
    blocked: int = 0,
    concurrency: int = 4,
    margin: float = 0.01,
    within: float = 3600.0,
) -> dict[str, Any]:
    """Run the whole scenario; returns the figures (see ``main``)."""
    database_url = database_url or f"sqlite+aiosqlite:///{(workdir / 'cardbot.db').as_posix()}"
    seeded = await seed(database_url, recipients)
    tg = FakeTelegram(rate_limit=ALLOWED_PER_SECOND, time_scale=scale)
    if blocked:
        # Spread out, away from the kill point (a blocked recipient in hand then is unknown).
        step = max(1, recipients // blocked)
        tg.blocked = set(seeded.chats[step // 2 :: step][:blocked])
    await tg.start()
    bot = BotProcess(
        workdir,
        database_url,
        tg.base_url,
        CARDBOT_TIME_SCALE=str(scale),
        CARDBOT_BROADCAST_STALE_SECONDS="1",
        CARDBOT_BROADCAST_CONCURRENCY=str(concurrency),
        CARDBOT_LOG_LEVEL="WARNING",
        TELEGRAM_FLOW_MARGIN=str(margin),
    )
    started = time.monotonic()
    killed_at = restarted_at = None
    flooded = False
    try:
        await bot.start()
        seen = done = 0
        while True:
            calls = tg.calls[seen:]
            seen += len(calls)
            done += sum(1 for c in calls if c.method in SEND_METHODS and c.status != 429)
            if flood_at is not None and not flooded and done >= flood_at * recipients:
                tg.flood(2)
                flooded = True
            if done >= kill_at * recipients:
                break
            if time.monotonic() - started > within:
                raise TimeoutError(f"only {done} sends after {within:.0f}s:\n{bot.output()}")
            await asyncio.sleep(0.02)
        await bot.kill()
        killed_at = time.monotonic()
        await bot.start()
        restarted_at = time.monotonic()
        await wait_finished(database_url, seeded.broadcast_id, within)
        finished_at = time.monotonic()
        await bot.stop()
    finally:
        await bot.close()
        await tg.close()
    state, rows = await deliveries(database_url, seeded.broadcast_id)
    return analyse(
        tg,
        seeded,
        rows,
        state,
        scale,
        margin,
        (started, killed_at, restarted_at, finished_at),
        concurrency,
    )


def analyse(
    tg: FakeTelegram,
    seeded: Seeded,
    rows: dict[int, str],
    state: BroadcastState,
    scale: float,
    margin: float,
    times: tuple[float, float | None, float | None, float],
    concurrency: int,
) -> dict[str, Any]:
    started, killed_at, restarted_at, finished_at = times
    sends = tg.sends(ok_only=False)
    received = Counter(c.chat for c in sends if c.ok)
    counted = [c.at for c in sends if c.status != 429]  # what Telegram counts against the limit
    states = Counter(rows.values())
    twice = sorted(chat for chat, n in received.items() if n > 1)
    lost = sorted(chat for chat, s in rows.items() if s == "sent" and received[chat] != 1)
    stray = sorted(
        chat for chat, s in rows.items() if s not in ("sent", "unknown") and received[chat]
    )
    windows = flood_windows(tg)
    second = 1.0 / scale
    # Time the bot could send: from its first send to its last, less the time it was down
    # (killed → first send after the restart) and the flood pauses Telegram imposed.
    first, last = counted[0], counted[-1]
    down = 0.0
    if killed_at is not None:
        after = [t for t in counted if t > killed_at]
        before = [t for t in counted if t <= killed_at]
        if after and before:
            down = after[0] - before[-1]
    paused = sum(max(0.0, end - start) for start, end, _ in windows)
    active = max(1e-9, last - first - down - paused)
    achieved = len(counted) / (active / second)
    return {
        "recipients": len(seeded.chats),
        "broadcast_state": state.value,
        "delivery_states": dict(sorted(states.items())),
        "messages_received": sum(received.values()),
        "recipients_with_one": sum(1 for n in received.values() if n == 1),
        "recipients_with_two_or_more": len(twice),
        "sent_rows_without_exactly_one": len(lost),
        "unknown_rows": states.get("unknown", 0),
        "unknown_rows_received": sum(1 for c, s in rows.items() if s == "unknown" and received[c]),
        "other_rows_received": len(stray),
        "http_429": sum(1 for c in sends if c.status == 429),
        "http_429_rate_limit": tg.rate_limited,
        "flood_windows": len(windows),
        "max_429_per_window": max((n for _, _, n in windows), default=0),
        "unhonoured_429": sum(max(0, n - concurrency) for _, _, n in windows),
        "max_sends_in_any_second": max_in_window(counted, second),
        "allowed_per_second": ALLOWED_PER_SECOND,
        "achieved_per_second": round(achieved, 2),
        "achieved_vs_allowed_pct": round(100 * achieved / ALLOWED_PER_SECOND, 1),
        "overall_per_second": round(len(counted) / ((last - first) / second), 2),
        "scale": scale,
        "margin": margin,
        "wall_seconds": round(finished_at - started, 1),
        "wall_seconds_unscaled": round((finished_at - started) * scale, 1),
        "active_seconds": round(active, 2),
        "down_seconds": round(down, 2),
        "paused_seconds": round(paused, 2),
        "restart_seconds": round((restarted_at or 0) - (killed_at or 0), 2),
    }


def verdict(result: dict[str, Any]) -> list[str]:
    """What is wrong, in words (empty when all is well)."""
    problems = []
    if result["recipients_with_two_or_more"]:
        problems.append("some recipients got two messages or more")
    if result["sent_rows_without_exactly_one"]:
        problems.append("some rows marked sent were not received exactly once")
    if result["other_rows_received"]:
        problems.append("some rows not marked sent/unknown were received")
    if result["unhonoured_429"]:
        problems.append("a 429 was not honoured")
    if result["max_sends_in_any_second"] > result["allowed_per_second"]:
        problems.append("more sends in one second than allowed")
    if result["broadcast_state"] != "finished":
        problems.append("the broadcast did not finish")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipients", type=int, default=20_000)
    parser.add_argument("--scale", type=float, default=10.0, help="clock speed-up (1 = real)")
    parser.add_argument("--blocked", type=int, default=0, help="recipients who blocked the bot")
    parser.add_argument("--database-url", default=None, help="default: a SQLite file")
    parser.add_argument(
        "--margin", type=float, default=0.01, help="the limiter's slack (TELEGRAM_FLOW_MARGIN)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="cardbot-bench-broadcast-"))
    result = asyncio.run(
        run(
            args.recipients,
            args.scale,
            workdir,
            args.database_url,
            blocked=args.blocked,
            margin=args.margin,
        )
    )
    # The premise: the scenario happened as described (every recipient has a row, the flood
    # window opened, the kill came while sends were going out); else the figures mean nothing.
    total = sum(result["delivery_states"].values())
    require(total == args.recipients, f"{total} delivery rows for {args.recipients} recipients")
    require(result["flood_windows"] >= 1, "the server never flooded: no 429 was exercised")
    require(result["restart_seconds"] > 0, "the bot was not killed and restarted mid-broadcast")
    problems = verdict(result)
    result["within_5_pct"] = result["achieved_vs_allowed_pct"] >= 95.0
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        for key, value in result.items():
            print(f"{key:>30}: {value}")
        for problem in problems:
            print(f"PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
