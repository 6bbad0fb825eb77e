"""Operator commands over the database: the manual-review queue and the blacklist.

``cardbot review list [--json]`` — orders held by the risk rules, oldest first, masked.
``cardbot review approve ORDER [--note TEXT] [--by NAME]`` — approve: the running bot pays it
and tells the user. ``cardbot review reject ORDER --note TEXT [--by NAME]`` — reject with a
reason the user is shown. ORDER is the order number (``CB00000012``) or its id.

``cardbot risk blacklist add|remove --id NUMBER | --account METHOD:ACCOUNT | --card NUMBER``
(``--reason`` for add) and ``cardbot risk blacklist list``: only fingerprints are stored, so
the list itself reveals no ID, account or card number.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import date, datetime
from typing import Any, TypeVar

from bot.app import SystemClock
from bot.keys import storage_for, vault_for
from bot.settings import Settings
from core import review
from core.catalog import default_catalog, normalize_card_number
from core.errors import CardbotError, PreconditionFailed
from core.identity import parse_resident_id
from core.model import PayoutMethod, RateTable
from core.money import yuan
from core.ports import UnitOfWork
from core.sale import normalize_account
from storage.db import SqlAlchemyUnitOfWorkFactory

T = TypeVar("T")


def parse_order_ref(text: str) -> int:
    """``CB00000012``, ``cb12`` or ``12`` → 12."""
    raw = text.strip().upper().removeprefix("CB")
    if not raw.isdigit() or int(raw) <= 0:
        raise ValueError(f"not an order number: {text!r}")
    return int(raw)


async def _with_uow(settings: Settings, work: Callable[[UnitOfWork], Awaitable[T]]) -> T:
    factory: SqlAlchemyUnitOfWorkFactory = await storage_for(settings)
    try:
        async with factory() as uow:
            result = await work(uow)
            await uow.commit()
            return result
    finally:
        await factory.dispose()


async def review_list(settings: Settings, as_json: bool) -> int:
    async def work(uow: UnitOfWork) -> list[dict[str, Any]]:
        rows = []
        for order in await review.queue(uow):
            user = await uow.users.get(order.user_id)
            rows.append(
                {
                    "id": order.id,
                    "number": order.number,
                    "brand": order.brand,
                    "card": order.card_masked,
                    "payout_fen": order.payout_fen,
                    "channel": order.channel,
                    "person": user.real_name_masked,
                    "id_number": user.id_number_masked,
                    "reasons": list(order.risk_reasons),
                    "rules_version": order.risk_version,
                    "created_at": order.created_at.isoformat(),
                }
            )
        return rows

    rows = await _with_uow(settings, work)
    if as_json:
        print(json.dumps(rows, ensure_ascii=False))
        return 0
    if not rows:
        print("nothing waits for review")
    for row in rows:
        print(
            f"{row['number']}  {row['brand']:<11} {row['card']:<22} payout "
            f"{yuan(row['payout_fen']):>10}  {row['channel']:<8} {row['person'] or '-'} "
            f"{row['id_number'] or '-'}  {', '.join(row['reasons'])}  {row['created_at'][:16]}"
        )
    return 0


async def review_decide(
    settings: Settings, ref: str, approve: bool, note: str, reviewer: str
) -> int:
    try:
        order_id = parse_order_ref(ref)
    except ValueError as exc:
        print(f"cardbot: {exc}", file=sys.stderr)
        return 2

    async def work(uow: UnitOfWork) -> str:
        order = await review.decide(uow, SystemClock(), order_id, approve, reviewer, note)
        return order.number

    try:
        number = await _with_uow(settings, work)
    except KeyError:
        print(f"cardbot: no order {ref}", file=sys.stderr)
        return 1
    except PreconditionFailed as exc:
        print(f"cardbot: {exc}", file=sys.stderr)
        return 1
    verb = "approved: the bot pays it and tells the user" if approve else "rejected"
    print(f"{number} {verb}")
    return 0


def _fingerprint_of(settings: Settings, kind: str, value: str) -> str:
    """The fingerprint the sale computes for the same ID, account or card."""
    vault = vault_for(settings)
    if kind == "id_number":
        return vault.fingerprint("id_number", parse_resident_id(value, date.today()).number)
    if kind == "payout_account":
        method_name, _, account = value.partition(":")
        method = PayoutMethod(method_name.strip().lower())
        normalised, _ = normalize_account(method, account.strip())
        return vault.fingerprint(f"payout.{method.value}", normalised)
    number = normalize_card_number(value)
    brand = default_catalog().match(number)
    return vault.fingerprint("card", f"{brand.code}:{number}")


async def blacklist(
    settings: Settings, action: str, kind: str | None, value: str | None, reason: str, by: str
) -> int:
    if action == "list":

        async def listing(uow: UnitOfWork) -> list[tuple[str, str, str, str, Any]]:
            return list(await uow.risk_list.entries())

        for entry_kind, fp, why, who, at in await _with_uow(settings, listing):
            print(f"{entry_kind:<15} {fp[:16]}…  {at.isoformat()[:16]}  {who}  {why}")
        return 0
    if kind is None or value is None:
        print("cardbot: give one of --id, --account METHOD:ACCOUNT, --card", file=sys.stderr)
        return 2
    try:
        fp = _fingerprint_of(settings, kind, value)
    except (CardbotError, ValueError) as exc:
        print(f"cardbot: not a valid {kind.replace('_', ' ')}: {exc}", file=sys.stderr)
        return 2
    if action == "add" and not reason.strip():
        print("cardbot: --reason is required (it is kept with the entry)", file=sys.stderr)
        return 2
    clock = SystemClock()

    async def change(uow: UnitOfWork) -> bool:
        if action == "add":
            done = await uow.risk_list.add(kind, fp, reason.strip()[:200], by, clock.now())
        else:
            done = await uow.risk_list.remove(kind, fp)
        if done:
            await uow.audit.append(
                clock.now(), by, f"blacklist.{action}", f"blacklist:{kind}", {"fp": fp[:16]}
            )
        return done

    done = await _with_uow(settings, change)
    if action == "add":
        print("added to the blacklist" if done else "already on the blacklist")
    else:
        print("removed from the blacklist" if done else "was not on the blacklist")
    return 0


# --------------------------------------------------------------------------------------------
# Rate tables


async def prices_import(
    settings: Settings,
    path: str,
    effective: str | None,
    version: str | None,
    by: str,
    replace_all: bool = False,
) -> int:
    """Import a rate table (TOML, or CSV of brand,up_to_fen,rate_bp) to take effect at a
    time (default: now). It merges into the table it follows: brands it does not list keep
    their rates, unless ``replace_all`` (``--replace``), when the brands it leaves out are no
    longer bought and are named. Versions are immutable; quotes keep the version they were
    priced with. What is printed says truly when the table is in force, and until when."""
    import hashlib
    from pathlib import Path

    from core.pricing import (
        RateTableError,
        default_pricing,
        dropped_brands,
        merged_into,
        pricing_to_dict,
        rate_table_from_csv,
        rate_table_from_toml,
    )
    from core.sale import pricing_in_force

    file = Path(path)
    try:
        raw = await asyncio.to_thread(file.read_bytes)
        text = raw.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"cardbot: cannot read {file}: {exc}", file=sys.stderr)
        return 2
    clock = SystemClock()
    try:
        when = None if effective is None else _when(effective)
    except ValueError as exc:
        print(f"cardbot: --from {exc}", file=sys.stderr)
        return 2
    now = clock.now()
    app_factory = await storage_for(settings)
    try:
        async with app_factory() as uow:
            try:
                if file.suffix.lower() == ".csv":
                    if not version:
                        print("cardbot: a CSV table needs --version", file=sys.stderr)
                        return 2
                    base = await pricing_in_force(uow, default_pricing(), when or now)
                    policy = rate_table_from_csv(text, base, version, when)
                else:
                    policy = rate_table_from_toml(text)
                    if version:
                        policy = replace(policy, version=version)
                    if when is not None:
                        policy = replace(policy, effective_from=when)
            except RateTableError as exc:
                print(f"cardbot: {file}: {exc}", file=sys.stderr)
                return 2
            catalog = default_catalog()
            codes = {brand.code for brand in catalog.brands()}
            unknown = [code for code in policy.rates if code not in codes]
            if unknown:
                print(f"cardbot: {file}: unknown brands {unknown}", file=sys.stderr)
                return 2
            starts = policy.effective_from or now
            # The table this one follows in time: what it merges into, or what it replaces.
            base = await pricing_in_force(uow, default_pricing(), starts)
            dropped = dropped_brands(policy, base)
            if not replace_all:
                policy = merged_into(policy, base)
            policy = replace(policy, effective_from=starts)
            table = RateTable(
                version=policy.version,
                effective_from=starts,
                content=pricing_to_dict(policy),
                sha256=hashlib.sha256(raw).hexdigest(),
                imported_by=by,
                imported_at=now,
            )
            if not await uow.rates.add(table):
                print(
                    f"cardbot: version {policy.version} exists; give the new table a new version",
                    file=sys.stderr,
                )
                return 1
            await uow.audit.append(
                now,
                by,
                "rates.imported",
                f"rates:{policy.version}",
                {
                    "effective_from": starts.isoformat(),
                    "sha256": table.sha256,
                    "brands": len(policy.rates),
                    "previous": base.version,
                    "replaced": replace_all,
                    "dropped": dropped if replace_all else [],
                },
            )
            in_force = await uow.rates.in_force(now)
            later = sorted(
                (t for t in await uow.rates.all() if t.effective_from > starts),
                key=lambda t: t.effective_from,
            )
            await uow.commit()
    finally:
        await app_factory.dispose()
    print(
        f"imported rate table {policy.version}: {len(policy.rates)} brands, "
        f"in force from {_shown(starts)}"
    )
    if replace_all and dropped:
        print(f"note: --replace: no longer bought from then on: {', '.join(dropped)}")
    elif dropped:
        print(f"note: brands not in the file keep their rates from {base.version}")
    following = (
        f", until {_shown(later[0].effective_from)} when {later[0].version} takes over"
        if later
        else ""
    )
    if in_force is not None and in_force.version == policy.version:
        print(f"note: in force at once{following}")
    elif starts <= now:
        current = in_force.version if in_force is not None else "?"
        print(
            f"note: not in force: {current} takes effect later than this table and stays in "
            "force; give a later --from to use this one"
        )
    elif later:
        print(f"note: from {_shown(starts)}{following}")
    return 0


async def prices_list(settings: Settings) -> int:
    """Every imported table, newest first, marking the one in force."""
    clock = SystemClock()

    async def work(uow: UnitOfWork) -> tuple[list[RateTable], RateTable | None]:
        return list(await uow.rates.all()), await uow.rates.in_force(clock.now())

    tables, current = await _with_uow(settings, work)
    if not tables:
        print("no imported rate tables: the shipped default is in force")
    for table in tables:
        mark = "  <- in force" if current is not None and table.version == current.version else ""
        print(
            f"{table.version:<24} from {table.effective_from.isoformat()}  "
            f"by {table.imported_by}  sha256 {table.sha256[:12]}{mark}"
        )
    return 0


def _shown(moment: datetime) -> str:
    """A time as operators read it: Asia/Shanghai, with its offset."""
    from core.risk import SHANGHAI

    return moment.astimezone(SHANGHAI).isoformat()


def _when(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("needs a time zone, e.g. 2026-12-01T00:00:00+08:00")
    return moment
