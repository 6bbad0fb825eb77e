"""Reconciliation end to end: sales through the console channel with the sandbox provider told
to fail, time out, lose a request and succeed late; its statement exported with
``cardbot sandbox statement``, tampered with, and checked with ``cardbot reconcile`` — on SQLite
and PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest

from bot.cli import main
from core import sale
from core.audit import verify_chain
from core.model import OrderStatus
from core.ports import CardReading
from core.risk import SHANGHAI, shanghai_date
from tests.e2e.conftest import Harness
from tests.fakes import FakeClock

NAME, ID_NUMBER, PHONE = "李雷", "11010519491231002X", "13912345678"

# (card number, secret or None, payout account): sandbox cards from bot/sandbox/cards.csv,
# accounts with the provider's magic words (bot/sandbox/PAYOUTS.md).
PAID = ("2326081744029136", "135790", "lilei.pays@example.com")
FAILED_THEN_PAID = ("2801527364099", None, "fail.lilei@example.com")
RETRY_ACCOUNT = "lilei.second@example.com"
REPLY_LOST = ("7101356208471937", "864209", "timeout.lilei@example.com")
LATE = ("9150330812654701393", "482916", "late.lilei@example.com")
REQUEST_LOST = ("2326081744338610", "007007", "lost.lilei@example.com")


class NoPhotos:
    """Numbers are typed in these tests: no photo reader (and no OCR models) needed."""

    async def read(self, image: bytes) -> CardReading:
        return CardReading(hints=("no_card",))


async def sell(h: Harness, card: tuple[str, str | None, str], first: bool = False) -> None:
    number, secret, account = card
    await h.say("/start" if first else "/sell")
    if first:
        await h.choose("menu.sell")
    await h.say(number)
    if secret is not None:
        await h.say(secret)
    await h.choose("quote.accept")
    if first:
        await h.choose("consent.yes")
        await h.say(NAME)
        await h.say(ID_NUMBER)
        await h.say(PHONE)
    await h.choose("method.alipay")
    await h.say(account)
    await h.choose("pay.confirm")


async def cardbot(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the ``cardbot`` command line (in a thread: it runs its own event loop)."""
    capsys.readouterr()
    try:
        code = await asyncio.to_thread(main, list(args))
    except SystemExit as stop:  # argparse refusing the arguments
        code = int(stop.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rows_of(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


def write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(out.getvalue(), encoding="utf-8")


def kinds(document: dict[str, object]) -> list[tuple[str, str]]:
    differences = document["differences"]
    assert isinstance(differences, list)
    return [(d["kind"], d["reference"]) for d in differences]


@pytest.fixture
async def sold(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Harness]:
    """Five sales yesterday (noon, Shanghai time): one paid, one failed then paid to another
    account, one whose reply was lost (paid), one late, one whose request was lost."""
    for name in list(os.environ):
        if name.startswith("CARDBOT_") and not name.startswith("CARDBOT_TEST_"):
            monkeypatch.delenv(name)
    h = Harness(tmp_path, database_url, reader=NoPhotos())
    yesterday = shanghai_date(datetime.now(UTC)) - timedelta(days=1)
    h.clock = FakeClock(datetime.combine(yesterday, time(12), SHANGHAI).astimezone(UTC))
    monkeypatch.setenv("CARDBOT_VAR_DIR", str(h.settings.var_dir))
    monkeypatch.setenv("CARDBOT_DATABASE_URL", database_url)
    await h.start()
    try:
        await sell(h, PAID, first=True)
        await sell(h, FAILED_THEN_PAID)
        assert (await h.orders())[0].status is OrderStatus.PAYOUT_FAILED
        await h.choose("method.alipay")
        await h.say(RETRY_ACCOUNT)
        await h.choose("pay.confirm")
        for card in (REPLY_LOST, LATE, REQUEST_LOST):
            await sell(h, card)
        yield h
    finally:
        await h.close()


async def test_a_statement_is_reconciled_before_and_after_the_books_catch_up_and_when_tampered(
    sold: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    h = sold
    assert h.app is not None
    orders = {o.id: o for o in await h.orders()}
    statuses = sorted(o.status.value for o in orders.values())
    assert statuses == ["paying", "paying", "paying", "settled", "settled"]
    paid, failed_then_paid, reply_lost, late, request_lost = sorted(orders)

    def ref(order_id: int | None, attempt: int = 1) -> str:
        assert order_id is not None
        return sale.payout_reference(order_id, attempt)

    # Before the books catch up (the clock of the command line is a day later): the provider
    # paid two payouts our books still hold, and never received one.
    statement = tmp_path / "statement.csv"
    code, out, err = await cardbot(capsys, "sandbox", "statement", "--out", str(statement))
    assert code == 0, err
    assert [r["reference"] for r in rows_of(statement)] == [
        ref(paid),
        ref(failed_then_paid),
        ref(failed_then_paid, 2),
        ref(reply_lost),
        ref(late),
    ]
    code, out, err = await cardbot(capsys, "reconcile", str(statement), "--json")
    assert code == 1, err
    document = json.loads(out)
    assert kinds(document) == [
        ("paid_not_settled", ref(reply_lost)),
        ("paid_not_settled", ref(late)),
        ("missing_at_provider", ref(request_lost)),
    ]
    assert document["summary"]["matched"] == 3
    missing = document["differences"][2]
    assert missing["ours"][0]["state"] == "unknown" and "never resend" in missing["note"]

    # The settlement loop queries (and resends the lost request under the same reference).
    h.clock.advance(minutes=1)
    await sale.resume_unfinished(h.app.uow_factory, h.app.services.sale)
    assert {o.status for o in await h.orders()} == {OrderStatus.SETTLED}

    code, out, err = await cardbot(capsys, "sandbox", "statement", "--out", str(statement))
    assert code == 0, err
    code, out, err = await cardbot(capsys, "reconcile", str(statement))
    assert code == 0, out + err
    assert "everything matches" in out and "matched: 6" in out

    # A tampered copy: a row removed, an amount changed, an extra row, a failure turned into
    # a second success — exactly those differences, most dangerous first.
    rows = rows_of(statement)
    by_ref = {r["reference"]: r for r in rows}
    rows.remove(by_ref[ref(paid)])
    by_ref[ref(reply_lost)]["amount_fen"] = str(int(by_ref[ref(reply_lost)]["amount_fen"]) + 100)
    by_ref[ref(failed_then_paid)].update(state="succeeded", provider_txn_id="2026X1")
    rows.append({**by_ref[ref(late)], "reference": "CBP0000009999N01", "amount_fen": "777"})
    tampered = tmp_path / "tampered.csv"
    write_rows(tampered, rows)
    code, out, err = await cardbot(capsys, "reconcile", str(tampered), "--json")
    assert code == 1, err
    document = json.loads(out)
    assert kinds(document) == [
        ("double_payment", orders[failed_then_paid].number),
        ("settled_not_paid", ref(paid)),
        ("amount_differs", ref(reply_lost)),
        ("unknown_reference", "CBP0000009999N01"),
    ]
    assert [d["amount_fen"] for d in document["differences"]] == [
        orders[failed_then_paid].payout_fen,
        orders[paid].payout_fen,
        100,
        777,
    ]
    code, text_out, err = await cardbot(capsys, "reconcile", str(tampered))
    assert code == 1 and "DIFFERENCES: 4" in text_out and "double_payment" in text_out
    for shown in (out, text_out):
        assert "lilei" not in shown and "example.com" not in shown  # no account, even masked
        assert ID_NUMBER not in shown and PHONE not in shown

    # A file that cannot be read is refused with its line numbers, and reconciles nothing.
    broken = tmp_path / "broken.csv"
    lines = statement.read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2].replace(",alipay,", ",paypal,")
    broken.write_text("\n".join([*lines, "CBP1,,alipay,12.5,succeeded,,,"]) + "\n")
    code, out, err = await cardbot(capsys, "reconcile", str(broken))
    assert code == 2
    assert f"{broken}: line 3: method 'paypal'" in err
    assert f"line {len(lines) + 1}: amount_fen '12.5'" in err
    assert "Traceback" not in out + err
    code, out, err = await cardbot(capsys, "reconcile", str(tmp_path / "nowhere.csv"))
    assert code == 2 and "cannot read" in err

    # Every run that reconciled is in the audit log, with counts and no rows.
    async with h.app.uow_factory() as uow:
        events = list(await uow.audit.all())
    assert verify_chain(events) is None
    runs = [e for e in events if e.action == "reconcile.run"]
    assert [e.details["differences"] for e in runs] == [3, 0, 4, 4]
    assert runs[1].details["matched"] == 6 and runs[0].actor == "staff:operator"
    assert runs[2].details["by_kind"]["double_payment"] == {
        "count": 1,
        "amount_fen": orders[failed_then_paid].payout_fen,
    }
    assert all("CBP" not in json.dumps(e.details) for e in runs)


async def test_a_days_statement_reconciles_that_day(
    sold: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    h = sold
    assert h.app is not None
    h.clock.advance(minutes=1)
    await sale.resume_unfinished(h.app.uow_factory, h.app.services.sale)
    orders = await h.orders()
    failed_payout_fen = next(o.payout_fen for o in orders if o.card_masked.endswith("4099"))
    day = shanghai_date(h.clock.now())
    that_day, next_day = tmp_path / "day.csv", tmp_path / "next.csv"
    for date, path in ((day, that_day), (day + timedelta(days=1), next_day)):
        code, _, err = await cardbot(
            capsys, "sandbox", "statement", "--date", date.isoformat(), "--out", str(path)
        )
        assert code == 0, err
    assert len(rows_of(that_day)) == 6 and rows_of(next_day) == []

    code, out, err = await cardbot(
        capsys, "reconcile", str(that_day), "--date", day.isoformat(), "--json"
    )
    assert code == 0, out + err
    summary = json.loads(out)["summary"]
    assert (summary["payouts_checked"], summary["matched"]) == (6, 6)

    # The next day's (empty) statement: none of that day's payouts is expected on it.
    following = (day + timedelta(days=1)).isoformat()
    code, out, err = await cardbot(capsys, "reconcile", str(next_day), "--date", following)
    assert code == 0, out + err
    assert "0 of our payouts checked" in out
    # ... but against that day, it lacks every payout.
    code, out, err = await cardbot(
        capsys, "reconcile", str(next_day), "--date", day.isoformat(), "--json"
    )
    assert code == 1
    assert json.loads(out)["summary"]["by_kind"] == {
        "settled_not_paid": {"count": 5, "amount_fen": sum(o.payout_fen for o in orders)},
        "missing_at_provider": {"count": 1, "amount_fen": failed_payout_fen},
    }

    code, out, err = await cardbot(capsys, "reconcile", str(that_day), "--date", "yesterday")
    assert code == 2 and "not a date" in err
