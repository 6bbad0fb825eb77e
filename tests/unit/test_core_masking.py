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


# --------------------------------------------------------------------------------------------
# A card number and its secret on one line (issue 12, item 2)

from core.catalog import default_catalog, luhn_check_digit  # noqa: E402 - this section's own
from core.masking import redact_for_staff  # noqa: E402

CATALOG = default_catalog()
BRANDS_WITH_SECRET = [b for b in CATALOG.brands() if b.has_secret]


@st.composite
def card_and_secret(draw: st.DrawFn) -> tuple[str, str]:
    """A number that fits a catalog brand and a secret in that brand's shape."""
    brand = draw(st.sampled_from(BRANDS_WITH_SECRET))
    prefix = brand.prefixes[0]
    length = brand.lengths[0]
    body = prefix + draw(
        st.text("0123456789", min_size=length - len(prefix) - 1).map(
            lambda s: s[: length - len(prefix) - 1].ljust(length - len(prefix) - 1, "0")
        )
    )
    number = body + luhn_check_digit(body) if brand.check == "luhn" else body + "7"
    assert brand.fits(number), number
    secret = draw(st.from_regex(brand.secret_pattern, fullmatch=True))
    return number, secret


def _compact(text: str) -> str:
    return re.sub(r"[\s\-]", "", text)


@given(
    card_and_secret(),
    st.sampled_from([" ", "  ", "-", " - ", ""]),
    st.sampled_from(["", "卡号", "我的卡 ", "hi "]),
    st.sampled_from(["", " 谢谢", "，帮我看看", " thanks"]),
)
def test_of_a_card_and_its_secret_on_one_line_staff_read_no_four_digits_of_the_secret(
    card: tuple[str, str], sep: str, before: str, after: str
) -> None:
    number, secret = card
    said = _compact(redact_for_staff(f"{before}{number}{sep}{secret}{after}"))
    for i in range(len(secret) - 3):
        window = secret[i : i + 4]
        if any(c.isdigit() for c in window):
            assert window not in said, said


@given(card_and_secret(), st.sampled_from([" ", "-", ""]))
def test_a_card_followed_by_more_digits_is_masked_whole(card: tuple[str, str], sep: str) -> None:
    number, secret = card
    digits = re.sub(r"\D", "", secret)
    if not digits:
        return
    said = redact_for_staff(f"{number}{sep}{digits}")
    assert not any(c.isdigit() for c in said), said


def test_the_last_four_are_shown_only_for_a_run_of_a_catalog_card_length() -> None:
    assert redact_for_staff("2326081744029136").endswith("9136")  # 16: Walmart's length
    assert redact_for_staff("1000111300245178961").endswith("8961")  # 19
    assert not any(c.isdigit() for c in redact_for_staff("23260817440291361357"))  # 20
    assert not any(c.isdigit() for c in redact_for_staff("232608174402913"))  # 15


def test_redact_for_logs_masks_a_run_longer_than_any_card_whole() -> None:
    assert not any(c.isdigit() for c in redact("2326081744029136 135790"))


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("账户 lilei.pays@example.com 谢谢", "账户 l***@example.com 谢谢"),
        ("mail: 12345678901@qq.com.", "mail: 1***@qq.com."),
        ("wxid_abc123def 是我的微信", "w****f 是我的微信"),
        ("微信号 zhang_san88", "微信号 z****8"),
        ("支付宝：lilei-88", "支付宝：l****8"),
    ],
)
def test_payout_accounts_in_free_text_are_masked_like_other_identifiers(
    text: str, masked: str
) -> None:
    assert redact(text) == masked
    assert redact_for_staff(text) == masked


@given(st.text())
def test_redact_for_staff_is_idempotent(text: str) -> None:
    once = redact_for_staff(text)
    assert redact_for_staff(once) == once
