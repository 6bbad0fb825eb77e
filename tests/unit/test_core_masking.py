"""Masks for people and logs, and the redaction safety net."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.masking import (
    mask_account,
    mask_alipay_account,
    mask_bank_card,
    mask_card_number,
    mask_email,
    mask_id_number,
    mask_name,
    mask_phone,
    mask_wechat_account,
    redact,
)
from core.model import PayoutMethod


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("6222021234561234", "6222 **** **** 1234"),
        ("6222 0212 3456 1234", "6222 **** **** 1234"),
        ("1000111300245178961", "1000 **** **** *** 8961"),
        ("2901448120368", "2901 **** * 0368"),
        ("123456789012", "1234 **** 9012"),
        ("12345678", "****5678"),
        ("1234", "****"),
        ("", ""),
    ],
)
def test_card_numbers_show_at_most_first_and_last_four(number: str, masked: str) -> None:
    assert mask_card_number(number) == masked


@given(st.text(alphabet="0123456789", min_size=12, max_size=19))
def test_a_masked_card_number_hides_everything_but_eight_digits(number: str) -> None:
    masked = mask_card_number(number)
    assert sum(c.isdigit() for c in masked) == 8
    assert masked.startswith(number[:4]) and masked.endswith(number[-4:])


def test_id_numbers_show_first_and_last_character() -> None:
    assert mask_id_number("11010519491231002X") == "1****************X"
    assert mask_id_number("440524188001010014") == "4****************4"
    assert mask_id_number("12") == "**"


def test_phones_show_three_and_four_digits() -> None:
    assert mask_phone("13812345678") == "138****5678"
    assert mask_phone("+86 138 1234 5678") == "138****5678"
    assert mask_phone("0086-13812345678") == "138****5678"
    assert mask_phone("12345") == "*****"


def test_bank_cards_show_the_last_four() -> None:
    assert mask_bank_card("6222021234567890123") == "**** 0123"
    assert mask_bank_card("6222 0212 3456 7890 123") == "**** 0123"
    assert mask_bank_card("1234") == "****"


def test_email_addresses_keep_the_first_letter_and_the_domain() -> None:
    assert mask_email("zhangsan@example.com") == "z***@example.com"
    assert mask_email("a@qq.com") == "a***@qq.com"


def test_alipay_accounts_mask_as_phone_or_email() -> None:
    assert mask_alipay_account("13812345678") == "138****5678"
    assert mask_alipay_account("zhangsan@example.com") == "z***@example.com"


def test_names_keep_only_the_first_character() -> None:
    assert mask_name("张三丰") == "张**"
    assert mask_name("张三") == "张*"
    assert mask_name("阿卜杜拉·买买提") == "阿*******"
    assert mask_name("") == ""


def test_wechat_accounts_mask_as_id_or_phone() -> None:
    assert mask_wechat_account("wxid_abc123") == "w****3"
    assert mask_wechat_account("13812345678") == "138****5678"


@pytest.mark.parametrize(
    ("method", "value", "masked"),
    [
        (PayoutMethod.BANK, "6222021234567890123", "**** 0123"),
        ("bank", "6222021234567890123", "**** 0123"),
        (PayoutMethod.ALIPAY, "13812345678", "138****5678"),
        ("alipay", "zhangsan@example.com", "z***@example.com"),
        (PayoutMethod.WECHAT, "wxid_abc123", "w****3"),
        ("wechat", "13812345678", "138****5678"),
    ],
)
def test_payout_accounts_are_masked_by_their_method(
    method: PayoutMethod | str, value: str, masked: str
) -> None:
    assert mask_account(method, value) == masked


# --------------------------------------------------------------------------------------------
# redact


def test_redact_masks_a_card_number_with_spaces() -> None:
    text = "card 2326 0817 4402 9136 captured"
    assert redact(text) == "card ************9136 captured"


def test_redact_masks_a_card_number_glued_to_chinese_text() -> None:
    assert "2326081744029136" not in redact("卡号2326081744029136已收到")
    assert redact("卡号2326081744029136已收到") == "卡号************9136已收到"


def test_redact_masks_resident_ids_keeping_first_and_last() -> None:
    assert redact("id=11010519491231002X ok") == "id=1****************X ok"
    assert redact("id=11010519491231002x.") == "id=1****************X."


def test_redact_masks_phones_as_three_and_four() -> None:
    assert redact("call 13812345678 now") == "call 138****5678 now"
    assert redact("call +86 138-1234-5678") == "call 138****5678"


def test_redact_masks_six_digit_runs_like_card_secrets() -> None:
    assert redact("secret 135790") == "secret ******"
    assert redact("secret 13-57-90") == "secret ******"


def test_redact_keeps_short_numbers_dates_and_times() -> None:
    text = "order CB42 for ¥1,234.50 on 2099-12-31 at 2026-11-22T06:00:00.123456+00:00, 5 cards"
    assert redact(text) == text
    assert redact("2026-11-22 06:00:00") == "2026-11-22 06:00:00"


def test_redact_masks_a_run_that_merely_starts_like_a_date() -> None:
    assert redact("2026-11-221234") == "********1234"


CANARIES = [
    "2326081744029136",
    "8600520177361904820",
    "6222021234567890128",
    "11010519491231002X",
    "13812345678",
    "135790",
]


@given(st.sampled_from(CANARIES), st.text(), st.text())
def test_redact_never_lets_a_sensitive_number_through(
    canary: str, before: str, after: str
) -> None:
    digits = canary.rstrip("X")
    out = redact(before + canary + after)
    assert digits not in re.sub(r"[ -]", "", out)


@given(st.text())
def test_redact_is_idempotent(text: str) -> None:
    once = redact(text)
    assert redact(once) == once


@given(st.text(alphabet="0123456789 -abc", max_size=60))
def test_after_redact_no_run_of_six_digits_remains_outside_dates(text: str) -> None:
    out = redact(text)
    for match in re.finditer(r"\d(?:[ -]?\d){5,}", out):
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}(?:[ -]\d{4}-\d{2}-\d{2})*", match.group()), out
