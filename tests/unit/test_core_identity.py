"""Resident ID (GB 11643), phone, real name, Luhn and payout-account shapes."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import InvalidIdentity, InvalidPayoutAccount
from core.identity import (
    PROVINCE_CODES,
    ResidentId,
    age_on,
    id_check_character,
    luhn_valid,
    normalize_alipay_account,
    normalize_bank_card,
    normalize_phone,
    normalize_wechat_account,
    parse_resident_id,
    validate_real_name,
)

TODAY = date(2026, 11, 22)
GOLDEN = "11010519491231002X"


def make_id(region: str, birth: date, sequence: str) -> str:
    body = f"{region}{birth:%Y%m%d}{sequence}"
    return body + id_check_character(body)


def id_key(text: str, today: date = TODAY) -> str:
    with pytest.raises(InvalidIdentity) as info:
        parse_resident_id(text, today)
    return info.value.key


# --------------------------------------------------------------------------------------------
# Resident ID


def test_golden_id_11010519491231002x_is_valid_and_decoded() -> None:
    rid = parse_resident_id(GOLDEN, TODAY)
    assert rid == ResidentId(GOLDEN, date(1949, 12, 31), "110105", "F")


def test_textbook_id_440524188001010014_has_a_valid_check_character() -> None:
    assert id_check_character("44052418800101001") == "4"


def test_textbook_id_440524188001010014_is_refused_for_a_birth_year_before_1900() -> None:
    # Its check character is right (above); the birth date 1880-01-01 is before the 1900 floor
    # the product applies to living sellers.
    assert id_key("440524188001010014") == "identity.id_birth_date"


def test_lower_case_x_spaces_and_full_width_digits_are_accepted() -> None:
    assert parse_resident_id("110105 19491231 002x", TODAY).number == GOLDEN
    assert parse_resident_id("１１０１０５１９４９１２３１００２Ｘ", TODAY).number == GOLDEN


def test_every_one_character_mutation_of_the_golden_id_is_refused_by_its_checksum() -> None:
    for position in range(18):
        alphabet = "0123456789X" if position == 17 else "0123456789"
        for char in alphabet:
            if char == GOLDEN[position]:
                continue
            mutated = GOLDEN[:position] + char + GOLDEN[position + 1 :]
            assert id_key(mutated) == "identity.id_checksum", mutated


def test_swapping_two_adjacent_digits_of_the_golden_id_is_refused() -> None:
    for position in range(16):
        a, b = GOLDEN[position], GOLDEN[position + 1]
        if a != b:
            swapped = GOLDEN[:position] + b + a + GOLDEN[position + 2 :]
            with pytest.raises(InvalidIdentity):
                parse_resident_id(swapped, TODAY)


def test_id_number_with_wrong_check_character_is_refused() -> None:
    assert id_key("110105194912310021") == "identity.id_checksum"


def test_a_15_digit_legacy_id_is_refused_with_its_own_key() -> None:
    assert id_key("110105491231002") == "identity.id_legacy"


@pytest.mark.parametrize(
    "text",
    ["", "1101051949123100", "1101051949123100211", "11010519491231X02X", "ABCDEFGHIJKLMNOPQR"],
)
def test_an_id_of_the_wrong_shape_is_refused_as_format(text: str) -> None:
    assert id_key(text) == "identity.id_format"


@pytest.mark.parametrize("region", ["00", "10", "20", "39", "66", "72", "84", "91", "99"])
def test_an_id_from_an_unknown_province_is_refused(region: str) -> None:
    assert id_key(make_id(region + "0105", date(1990, 1, 1), "123")) == "identity.id_region"


@pytest.mark.parametrize("region", sorted(PROVINCE_CODES))
def test_an_id_from_every_listed_province_is_accepted(region: str) -> None:
    parse_resident_id(make_id(region + "0101", date(1990, 6, 15), "017"), TODAY)


def test_an_impossible_birth_date_is_refused() -> None:
    body = "11010519900230123"  # 30 February
    assert id_key(body + id_check_character(body)) == "identity.id_birth_date"


def test_a_birth_date_in_the_future_is_refused_and_today_is_accepted() -> None:
    assert id_key(make_id("110105", TODAY + timedelta(days=1), "123")) == "identity.id_birth_date"
    assert parse_resident_id(make_id("110105", TODAY, "123"), TODAY).birth_date == TODAY


def test_a_birth_date_before_1900_is_refused_and_1900_01_01_is_accepted() -> None:
    assert id_key(make_id("110105", date(1899, 12, 31), "123")) == "identity.id_birth_date"
    parse_resident_id(make_id("110105", date(1900, 1, 1), "123"), TODAY)


def test_odd_sequence_digit_is_male_and_even_is_female() -> None:
    assert parse_resident_id(make_id("110105", date(1990, 1, 1), "011"), TODAY).sex == "M"
    assert parse_resident_id(make_id("110105", date(1990, 1, 1), "010"), TODAY).sex == "F"


def test_age_counts_whole_years_up_to_the_birthday() -> None:
    rid = parse_resident_id(make_id("110105", date(2008, 11, 23), "123"), TODAY)
    assert age_on(rid, date(2026, 11, 22)) == 17
    assert age_on(rid, date(2026, 11, 23)) == 18


def test_a_29_february_birthday_comes_of_age_on_1_march_in_common_years() -> None:
    rid = parse_resident_id(make_id("110105", date(2008, 2, 29), "123"), TODAY)
    assert age_on(rid, date(2026, 2, 28)) == 17
    assert age_on(rid, date(2026, 3, 1)) == 18
    assert age_on(rid, date(2028, 2, 29)) == 20


@st.composite
def valid_ids(draw: st.DrawFn) -> tuple[str, date]:
    region = draw(st.sampled_from(sorted(PROVINCE_CODES))) + draw(
        st.text(alphabet="0123456789", min_size=4, max_size=4)
    )
    birth = draw(st.dates(min_value=date(1900, 1, 1), max_value=TODAY))
    sequence = draw(st.text(alphabet="0123456789", min_size=3, max_size=3))
    return make_id(region, birth, sequence), birth


@given(valid_ids())
def test_every_well_formed_id_parses_and_round_trips(case: tuple[str, date]) -> None:
    number, birth = case
    rid = parse_resident_id(number, TODAY)
    assert rid.number == number and rid.birth_date == birth and rid.region_code == number[:6]


@given(st.text())
def test_parsing_any_text_as_an_id_raises_only_invalid_identity(text: str) -> None:
    try:
        parse_resident_id(text, TODAY)
    except InvalidIdentity as exc:
        assert exc.key.startswith("identity.id_")


@given(st.text(alphabet="0123456789Xx -", max_size=25))
def test_parsing_id_like_text_raises_only_invalid_identity(text: str) -> None:
    try:
        parse_resident_id(text, TODAY)
    except InvalidIdentity as exc:
        assert exc.key.startswith("identity.id_")


# --------------------------------------------------------------------------------------------
# Phone


@pytest.mark.parametrize(
    "text",
    [
        "13812345678",
        "138 1234 5678",
        "138-1234-5678",
        "+86 138 1234 5678",
        "+8613812345678",
        "0086 13812345678",
        "１３８１２３４５６７８",
    ],
)
def test_mainland_mobile_numbers_are_normalised(text: str) -> None:
    assert normalize_phone(text) == "13812345678"


@pytest.mark.parametrize(
    "text",
    ["", "12812345678", "1381234567", "138123456789", "+85213812345678", "abc", "010-12345678"],
)
def test_other_phone_numbers_are_refused(text: str) -> None:
    with pytest.raises(InvalidIdentity) as info:
        normalize_phone(text)
    assert info.value.key == "identity.phone_invalid"


@given(st.text())
def test_phone_normalisation_raises_only_the_phone_key(text: str) -> None:
    try:
        assert len(normalize_phone(text)) == 11
    except InvalidIdentity as exc:
        assert exc.key == "identity.phone_invalid"


# --------------------------------------------------------------------------------------------
# Real name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("张三", "张三"),
        (" 欧阳 娜娜 ", "欧阳娜娜"),
        ("阿卜杜拉·买买提", "阿卜杜拉·买买提"),
        ("阿卜杜拉•买买提", "阿卜杜拉·买买提"),
        ("阿卜杜拉・买买提", "阿卜杜拉·买买提"),
        ("𠮷田", "𠮷田"),
        ("John Smith", "John Smith"),
        ("  John   Smith ", "John Smith"),
        ("Li", "Li"),
    ],
)
def test_real_names_are_normalised(text: str, expected: str) -> None:
    assert validate_real_name(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "张",
        "J",
        "张3",
        "张三!",
        "·张三",
        "张三·",
        "张··三",
        "张San",
        "O'Brien",
        "张" * 31,
        "A" * 31,
    ],
)
def test_malformed_real_names_are_refused(text: str) -> None:
    with pytest.raises(InvalidIdentity) as info:
        validate_real_name(text)
    assert info.value.key == "identity.name_invalid"


def test_a_thirty_character_name_is_the_longest_accepted() -> None:
    assert validate_real_name("张" * 30) == "张" * 30


@given(st.text())
def test_name_validation_raises_only_the_name_key(text: str) -> None:
    try:
        name = validate_real_name(text)
    except InvalidIdentity as exc:
        assert exc.key == "identity.name_invalid"
    else:
        assert 2 <= len(name) <= 30 and validate_real_name(name) == name


# --------------------------------------------------------------------------------------------
# Luhn and bank cards


@pytest.mark.parametrize("digits", ["79927398713", "4111111111111111", "6222021234567890128", "0"])
def test_luhn_accepts_valid_numbers(digits: str) -> None:
    assert luhn_valid(digits)


@pytest.mark.parametrize("digits", ["79927398710", "4111111111111112", "", "12a4", "１２"])
def test_luhn_refuses_invalid_numbers_and_non_digits(digits: str) -> None:
    assert not luhn_valid(digits)


def test_a_bank_card_is_normalised_and_passes_luhn() -> None:
    assert normalize_bank_card("6222 0212 3456 7890 128") == ("6222021234567890128", True)


def test_a_bank_card_failing_luhn_is_accepted_with_a_warning() -> None:
    # A real Chinese card number reported not to satisfy Luhn (money.md §4).
    assert normalize_bank_card("6226 2210 1942 5170") == ("6226221019425170", False)


@pytest.mark.parametrize(
    "text", ["", "12345678901", "12345678901234567890", "6222 0212 abcd 7890"]
)
def test_a_malformed_bank_card_is_refused(text: str) -> None:
    with pytest.raises(InvalidPayoutAccount) as info:
        normalize_bank_card(text)
    assert info.value.key == "payout.bank_card_invalid"


@given(st.text())
def test_bank_card_normalisation_raises_only_its_key(text: str) -> None:
    try:
        digits, ok = normalize_bank_card(text)
    except InvalidPayoutAccount as exc:
        assert exc.key == "payout.bank_card_invalid"
    else:
        assert digits.isascii() and digits.isdigit() and 12 <= len(digits) <= 19
        assert ok == luhn_valid(digits)


# --------------------------------------------------------------------------------------------
# Alipay and WeChat accounts


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("138 1234 5678", "13812345678"),
        ("+86 13812345678", "13812345678"),
        ("zhang.san@Example.COM", "zhang.san@example.com"),
        (" li+pay@mail.qq.com ", "li+pay@mail.qq.com"),
    ],
)
def test_alipay_accounts_are_a_mobile_or_an_email(text: str, expected: str) -> None:
    assert normalize_alipay_account(text) == expected


@pytest.mark.parametrize("text", ["", "zhangsan", "a@b", "@example.com", "a@@example.com", "123"])
def test_other_alipay_accounts_are_refused(text: str) -> None:
    with pytest.raises(InvalidPayoutAccount) as info:
        normalize_alipay_account(text)
    assert info.value.key == "payout.alipay_invalid"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("wxid_abc123", "wxid_abc123"),
        ("Zhang-San_88", "Zhang-San_88"),
        ("abcdef", "abcdef"),
        ("a" * 20, "a" * 20),
        ("138-1234-5678", "13812345678"),
    ],
)
def test_wechat_accounts_are_an_id_or_a_mobile(text: str, expected: str) -> None:
    assert normalize_wechat_account(text) == expected


@pytest.mark.parametrize(
    "text", ["", "abcde", "a" * 21, "1abcdef", "_abcdef", "zhang san", "张三丰丰丰丰"]
)
def test_other_wechat_accounts_are_refused(text: str) -> None:
    with pytest.raises(InvalidPayoutAccount) as info:
        normalize_wechat_account(text)
    assert info.value.key == "payout.wechat_invalid"


@given(st.text())
def test_payout_account_validators_raise_only_their_keys(text: str) -> None:
    for validate, key in (
        (normalize_alipay_account, "payout.alipay_invalid"),
        (normalize_wechat_account, "payout.wechat_invalid"),
    ):
        try:
            validate(text)
        except InvalidPayoutAccount as exc:
            assert exc.key == key
