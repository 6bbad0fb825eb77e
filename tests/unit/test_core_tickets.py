"""Tickets: who may do what to them, their timers, the queue's order, and what staff may read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.masking import redact_for_staff
from core.model import OrderStatus
from core.pricing import RateTableError, default_pricing, with_band_rate
from core.tickets import (
    AlertKind,
    Outcome,
    Priority,
    Reason,
    SlaPolicy,
    Ticket,
    TicketError,
    TicketStatus,
    parse_actor,
    priority_for,
    queue_order,
    release,
    resolve,
    sla_alerts,
    take,
    transfer,
    with_alerts_sent,
)

T0 = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)
SLA = SlaPolicy(timedelta(minutes=15), timedelta(hours=4), timedelta(minutes=15))


def ticket(**changes: object) -> Ticket:
    base = Ticket(1, "wechat", "u", Reason.QUOTE, "", Priority.NORMAL, T0, id=1)
    return Ticket(**{**base.__dict__, **changes})  # type: ignore[arg-type]


def test_taking_an_open_ticket_records_the_first_response_and_the_assignee() -> None:
    taken = take(ticket(), "telegram:9", T0 + timedelta(minutes=3))
    assert taken.status is TicketStatus.TAKEN and taken.assignee == "telegram:9"
    assert taken.first_response_at == T0 + timedelta(minutes=3)
    again = take(taken, "telegram:9", T0 + timedelta(minutes=9))  # taking one's own again
    assert again.first_response_at == taken.first_response_at
    assert again.taken_at == T0 + timedelta(minutes=9)


def test_a_ticket_taken_by_someone_else_cannot_be_taken_resolved_released_or_moved() -> None:
    taken = take(ticket(), "telegram:9", T0)
    for attempt in (
        lambda: take(taken, "telegram:8", T0),
        lambda: resolve(taken, "telegram:8", Outcome.ANSWERED, "", T0),
        lambda: release(taken, "telegram:8"),
        lambda: transfer(taken, "telegram:8", "telegram:7", T0),
    ):
        with pytest.raises(TicketError) as refused:
            attempt()
        assert refused.value.key == "desk.ticket_taken_by"


def test_an_open_ticket_must_be_taken_before_it_is_resolved_and_a_resolved_one_is_final() -> None:
    with pytest.raises(TicketError) as refused:
        resolve(ticket(), "telegram:9", Outcome.ANSWERED, "", T0)
    assert refused.value.key == "desk.ticket_not_taken"
    done = resolve(take(ticket(), "telegram:9", T0), "telegram:9", Outcome.REFUND, "ok", T0)
    assert done.status is TicketStatus.RESOLVED and done.outcome is Outcome.REFUND
    for attempt in (lambda: take(done, "telegram:9", T0), lambda: release(done, "telegram:9")):
        with pytest.raises(TicketError) as final:
            attempt()
        assert final.value.key == "desk.ticket_resolved"


def test_release_and_transfer_move_the_ticket_and_not_to_oneself() -> None:
    taken = take(ticket(), "telegram:9", T0)
    assert release(taken, "telegram:9").status is TicketStatus.OPEN
    assert release(taken, "telegram:9").assignee is None
    assert transfer(taken, "telegram:9", "wechat:o1", T0).assignee == "wechat:o1"
    with pytest.raises(TicketError):
        transfer(taken, "telegram:9", "telegram:9", T0)


def test_money_at_stake_makes_a_ticket_urgent() -> None:
    assert priority_for(OrderStatus.PAYOUT_FAILED, Reason.OTHER) is Priority.HIGH
    assert priority_for(OrderStatus.REVIEW, Reason.QUOTE) is Priority.HIGH
    assert priority_for(None, Reason.PAYOUT) is Priority.HIGH
    assert priority_for(OrderStatus.QUOTED, Reason.QUOTE) is Priority.NORMAL
    assert priority_for(None, Reason.OTHER) is Priority.NORMAL


def test_timers_remind_at_the_deadline_and_escalate_after_the_grace_once_each() -> None:
    t = ticket()
    assert sla_alerts(t, T0 + timedelta(minutes=14, seconds=59), SLA) == []
    at_due = T0 + timedelta(minutes=15)
    assert sla_alerts(t, at_due, SLA) == [AlertKind.FIRST_REMIND]
    t = with_alerts_sent(t, [AlertKind.FIRST_REMIND], at_due)
    assert sla_alerts(t, at_due + timedelta(minutes=5), SLA) == []
    assert sla_alerts(t, at_due + timedelta(minutes=15), SLA) == [AlertKind.FIRST_ESCALATE]


def test_a_first_response_stops_its_timer_but_not_the_resolution_timer() -> None:
    t = take(ticket(), "telegram:9", T0 + timedelta(minutes=1))
    assert sla_alerts(t, T0 + timedelta(hours=1), SLA) == []
    late = T0 + timedelta(hours=4, minutes=16)
    assert sla_alerts(t, late, SLA) == [AlertKind.RESOLUTION_REMIND, AlertKind.RESOLUTION_ESCALATE]
    done = resolve(t, "telegram:9", Outcome.ANSWERED, "", late)
    assert sla_alerts(done, late + timedelta(days=1), SLA) == []


def test_escalations_go_to_admins_and_reminders_do_not() -> None:
    assert AlertKind.FIRST_ESCALATE.to_admins and AlertKind.RESOLUTION_ESCALATE.to_admins
    assert not AlertKind.FIRST_REMIND.to_admins and not AlertKind.RESOLUTION_REMIND.to_admins


def test_the_queue_puts_urgent_tickets_first_then_the_oldest_and_leaves_out_resolved() -> None:
    old = ticket(id=1, opened_at=T0)
    newer_urgent = ticket(id=2, opened_at=T0 + timedelta(minutes=5), priority=Priority.HIGH)
    newest = ticket(id=3, opened_at=T0 + timedelta(minutes=9))
    done = ticket(id=4, opened_at=T0 - timedelta(hours=1), status=TicketStatus.RESOLVED)
    assert [t.id for t in queue_order([newest, done, old, newer_urgent])] == [2, 1, 3]


@pytest.mark.parametrize(
    ("text", "actor"),
    [
        ("@telegram:12345", "telegram:12345"),
        ("Telegram:12345", "telegram:12345"),
        ("wechat:oAbC-12_x", "wechat:oAbC-12_x"),
        ("12345", None),
        ("@:12", None),
        ("telegram:", None),
        ("tele gram:1", None),
    ],
)
def test_staff_are_named_channel_colon_id(text: str, actor: str | None) -> None:
    assert parse_actor(text) == actor


def test_staff_never_read_a_card_number_an_id_or_a_secret_but_do_read_order_numbers() -> None:
    said = redact_for_staff(
        "订单 CB00000012 卡号 2326 0817 4402 9136 身份证 11010519491231002X 卡密 A1B2C3D4E5F6"
    )
    assert "CB00000012" in said
    for secret in ("2326 0817 4402 9136", "11010519491231002X", "A1B2C3D4E5F6"):
        assert secret not in said
    assert "9136" in said  # the last four, as everywhere


@given(st.text(alphabet="0123456789", min_size=12, max_size=19), st.sampled_from(["", " ", "-"]))
def test_of_a_long_number_staff_read_at_most_four_digits(number: str, sep: str) -> None:
    grouped = sep.join(number[i : i + 4] for i in range(0, len(number), 4))
    said = redact_for_staff(f"卡号{grouped}，谢谢")
    shown = "".join(c for c in said if c.isdigit())
    assert len(shown) <= 4


def test_a_band_rate_changes_one_band_of_one_brand_as_a_new_version() -> None:
    base = default_pricing()
    changed = with_band_rate(base, "walmart", "51-100", 9_000, "v2", T0)
    assert changed.version == "v2" and changed.effective_from == T0
    assert [b.rate_bp for b in changed.rates["walmart"]] == [
        base.rates["walmart"][0].rate_bp,
        9_000,
        base.rates["walmart"][2].rate_bp,
    ]
    assert changed.rates["jd_ecard"] == base.rates["jd_ecard"]
    assert (
        with_band_rate(base, "walmart", ">100", 9_500, "v3", T0).rates["walmart"][2].rate_bp
        == 9_500
    )


@pytest.mark.parametrize(
    ("band", "rate_bp"), [("37", 9_000), ("50", 999), ("50", 10_001), ("abc", 9_000)]
)
def test_a_band_that_does_not_exist_or_an_absurd_rate_is_refused(band: str, rate_bp: int) -> None:
    with pytest.raises(RateTableError):
        with_band_rate(default_pricing(), "walmart", band, rate_bp, "v", T0)


@pytest.mark.parametrize(
    "secret", ["A3K9-7Q2M-X5T8-W4P6", "a3k9 7q2m x5t8 w4p6", "E5R8T2Y6U9P3K7M4", "b7n2-c4v6-z8l1"]
)
def test_a_secret_typed_in_groups_is_hidden_from_staff(secret: str) -> None:
    said = redact_for_staff(f"人工 卡密 {secret} 输不进去")
    assert secret not in said and "输不进去" in said
    assert not any(group in said for group in secret.replace("-", " ").split())


def test_ordinary_words_and_small_numbers_stay_readable_for_staff() -> None:
    for text in ("I sold 2 cards at 10 am", "余额 500 元，2 张", "order CB00000012 please"):
        assert redact_for_staff(text) == text
