"""core/broadcast.py: what an admin's /broadcast means (audience, time, text), brand names in
both languages, channel limits, and the delivery report."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.broadcast import (
    SHANGHAI,
    Audience,
    AudienceKind,
    BroadcastError,
    DeliveryReport,
    DeliveryState,
    UnknownBrand,
    find_brand,
    parse_broadcast,
    parse_send_time,
    validate_text,
)
from core.catalog import default_catalog

CATALOG = default_catalog()
# 2026-11-22 14:00 in Beijing.
NOW = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)


def test_without_an_audience_or_time_the_whole_text_goes_to_every_subscriber_now() -> None:
    request = parse_broadcast(CATALOG, "今日回收价上调\n沃尔玛 95 折", NOW)
    assert request.audience == Audience(AudienceKind.ALL)
    assert request.send_at is None
    assert request.text == "今日回收价上调\n沃尔玛 95 折"


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("all", Audience(AudienceKind.ALL)),
        ("全部", Audience(AudienceKind.ALL)),
        ("holders:walmart", Audience(AudienceKind.HOLDERS, "walmart")),
        ("持卡:沃尔玛", Audience(AudienceKind.HOLDERS, "walmart")),
        ("alerts:JD", Audience(AudienceKind.ALERTS, "jd_ecard")),
        ("订阅：京东E卡", Audience(AudienceKind.ALERTS, "jd_ecard")),
        ("alerts:sinopec", Audience(AudienceKind.ALERTS, "sinopec")),
    ],
)
def test_the_audience_is_named_in_english_or_chinese(token: str, expected: Audience) -> None:
    assert parse_broadcast(CATALOG, f"{token} hello", NOW).audience == expected


def test_an_unknown_brand_in_the_audience_is_refused_with_its_name() -> None:
    with pytest.raises(UnknownBrand) as caught:
        parse_broadcast(CATALOG, "holders:costco hello", NOW)
    assert caught.value.params == {"brand": "costco"}


def test_a_word_that_is_not_an_audience_starts_the_text() -> None:
    request = parse_broadcast(CATALOG, "allez: prices are up", NOW)
    assert request.audience.kind is AudienceKind.ALL
    assert request.text == "allez: prices are up"


@pytest.mark.parametrize(
    ("args", "local"),
    [
        ("at 18:30 text", datetime(2026, 11, 22, 18, 30)),
        ("at 09:00 text", datetime(2026, 11, 23, 9, 0)),  # passed today: tomorrow
        ("at 11-25 08:00 text", datetime(2026, 11, 25, 8, 0)),
        ("at 2026-12-01 20:15 text", datetime(2026, 12, 1, 20, 15)),
        ("alerts:walmart at 2026-12-01 20:15 text", datetime(2026, 12, 1, 20, 15)),
    ],
)
def test_the_send_time_is_read_in_beijing_time(args: str, local: datetime) -> None:
    request = parse_broadcast(CATALOG, args, NOW)
    assert request.send_at == local.replace(tzinfo=SHANGHAI)
    assert request.text == "text"


@pytest.mark.parametrize(
    ("time", "key"),
    [
        ("25:00", "broadcast.error.time"),
        ("tomorrow", "broadcast.error.time"),
        ("2026-11-21 10:00", "broadcast.error.time_past"),
        ("2027-03-01 10:00", "broadcast.error.time_far"),
        ("2026-02-30 10:00", "broadcast.error.time"),
    ],
)
def test_a_bad_past_or_far_time_is_refused(time: str, key: str) -> None:
    with pytest.raises(BroadcastError) as caught:
        parse_broadcast(CATALOG, f"at {time} text", NOW)
    assert caught.value.key == key


def test_a_broadcast_needs_a_text() -> None:
    for args in ("", "all", "holders:walmart at 18:00"):
        with pytest.raises(BroadcastError) as caught:
            parse_broadcast(CATALOG, args, NOW)
        assert caught.value.key == "broadcast.error.usage"


@given(st.integers(0, 23), st.integers(0, 59), st.integers(0, 10**7))
def test_an_hour_and_minute_is_always_the_next_such_moment(h: int, m: int, s: int) -> None:
    now = NOW + timedelta(seconds=s)
    at = parse_send_time(f"{h:02d}:{m:02d}", now)
    assert now < at <= now + timedelta(days=1)
    assert (at.hour, at.minute) == (h, m) and at.utcoffset() == timedelta(hours=8)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("walmart", "walmart"),
        ("Walmart Shopping Card", "walmart"),
        ("沃尔玛购物卡", "walmart"),
        ("沃尔玛", "walmart"),
        ("jd e-card", "jd_ecard"),
        ("京东", "jd_ecard"),
        ("RT-Mart", "rtmart"),
        ("中石化", "sinopec"),
    ],
)
def test_a_brand_is_found_by_code_chinese_or_english_name_or_a_unique_start(
    text: str, code: str
) -> None:
    assert find_brand(CATALOG, text).code == code


@pytest.mark.parametrize("text", ["", "costco", "中石", "s"])
def test_an_unknown_or_ambiguous_brand_is_not_guessed(text: str) -> None:
    with pytest.raises(UnknownBrand):
        find_brand(CATALOG, text)


def test_the_text_must_fit_a_telegram_caption_and_a_wechat_message() -> None:
    validate_text("x" * 1800, has_image=False, reserve=40)
    validate_text("价" * 600, has_image=False, reserve=40)
    with pytest.raises(BroadcastError) as caught:
        validate_text("x" * 1000, has_image=True, reserve=40)
    assert caught.value.params == {"limit": 984}
    with pytest.raises(BroadcastError) as caught:
        validate_text("价" * 660, has_image=False, reserve=40)  # 1,980 bytes + footer
    assert caught.value.key == "broadcast.error.too_long_wechat"


def test_an_audience_keeps_its_code_and_needs_a_brand_exactly_when_it_names_one() -> None:
    for audience in (Audience(AudienceKind.ALL), Audience(AudienceKind.HOLDERS, "walmart")):
        assert Audience.from_code(audience.code) == audience
    with pytest.raises(ValueError):
        Audience(AudienceKind.ALERTS)
    with pytest.raises(ValueError):
        Audience(AudienceKind.ALL, "walmart")


def test_the_report_counts_every_state_and_what_is_done() -> None:
    report = DeliveryReport.of(
        [("sent", 7), ("pending", 2), ("sending", 1), ("unknown", 1), ("sent", 1)]
    )
    assert report[DeliveryState.SENT] == 8
    assert report[DeliveryState.FAILED] == 0
    assert report.total == 12 and report.done == 9
