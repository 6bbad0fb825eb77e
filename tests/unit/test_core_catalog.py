"""The card catalog: brands, number rules, barcodes, secrets."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.catalog import (
    Brand,
    Catalog,
    default_catalog,
    ean13_check_digit,
    ean13_valid,
    luhn_check_digit,
    normalize_card_number,
    normalize_secret,
    secrets_equal,
)
from core.errors import CardNotRecognised, WrongSecret
from core.identity import luhn_valid
from core.ports import Barcode, CardReading

CATALOG = default_catalog()
BRANDS = CATALOG.brands()
REQUIRED = {
    "walmart": "沃尔玛购物卡",
    "carrefour": "家乐福购物卡",
    "jd_ecard": "京东E卡",
    "tmall": "天猫超市卡",
    "yonghui": "永辉超市卡",
    "rtmart": "大润发购物卡",
    "wumart": "物美卡",
    "suning": "苏宁卡",
    "sinopec": "中石化加油卡",
    "petrochina": "中石油加油卡",
    "ctrip": "携程任我行",
    "starbucks": "星巴克",
}


def complete(brand: Brand, filler: str, length: int | None = None) -> str:
    """A number of ``brand``: its first prefix, then ``filler`` digits, then its check digit."""
    length = length or brand.lengths[0]
    prefix = brand.prefixes[0]
    body_len = length - len(prefix) - (0 if brand.check == "none" else 1)
    body = prefix + (filler * length)[:body_len]
    if brand.check == "luhn":
        return body + luhn_check_digit(body)
    if brand.check == "ean13":
        return body + ean13_check_digit(body)
    return body


def test_default_catalog_has_the_twelve_required_brands_with_their_chinese_names() -> None:
    for code, name_zh in REQUIRED.items():
        assert CATALOG.get(code).name_zh == name_zh


def test_every_brand_has_distinct_chinese_and_english_names() -> None:
    assert len({b.name_zh for b in BRANDS}) == len(BRANDS)
    assert len({b.name_en for b in BRANDS}) == len(BRANDS)
    assert all(re.fullmatch(r"[\x20-\x7e]+", b.name_en) for b in BRANDS)


def test_brand_name_follows_the_language() -> None:
    brand = CATALOG.get("jd_ecard")
    assert brand.name("zh") == "京东E卡"
    assert brand.name("zh-Hans") == "京东E卡"
    assert brand.name("en") == "JD E-Card"
    assert brand.name("fr") == "JD E-Card"


def test_unknown_brand_code_raises_key_error() -> None:
    with pytest.raises(KeyError):
        CATALOG.get("nosuchbrand")


def test_sinopec_numbers_are_19_digits_starting_1000111() -> None:
    sinopec = CATALOG.get("sinopec")
    assert sinopec.lengths == (19,) and sinopec.prefixes == ("1000111",)
    assert CATALOG.match("1000111300245178961") is sinopec


def test_petrochina_numbers_are_16_digits_starting_9030() -> None:
    petrochina = CATALOG.get("petrochina")
    assert petrochina.lengths == (16,) and petrochina.prefixes == ("9030",)
    assert CATALOG.match("9030270018462951") is petrochina


def test_jd_ecard_secret_is_16_alphanumerics_and_the_others_mostly_six_digits() -> None:
    assert CATALOG.get("jd_ecard").secret_pattern == r"[0-9A-Z]{16}"
    assert CATALOG.get("walmart").secret_pattern == r"[0-9]{6}"


def test_some_brands_have_no_secret_and_those_have_no_pattern() -> None:
    without = [b for b in BRANDS if not b.has_secret]
    assert {b.code for b in without} >= {"rtmart", "wumart"}
    assert all(b.secret_pattern == "" for b in without)


def test_denominations_are_whole_yuan_between_50_and_5000() -> None:
    for brand in BRANDS:
        assert brand.denominations_fen == tuple(sorted(brand.denominations_fen))
        for value in brand.denominations_fen:
            assert isinstance(value, int)
            assert value % 100 == 0 and 5_000 <= value <= 500_000


@pytest.mark.parametrize("brand", BRANDS, ids=lambda b: b.code)
def test_a_well_formed_number_of_each_brand_matches_that_brand(brand: Brand) -> None:
    assert CATALOG.match(complete(brand, "3141592653589793")) is brand


@pytest.mark.parametrize("brand", BRANDS, ids=lambda b: b.code)
def test_a_typed_barcode_of_the_card_number_matches_its_brand(brand: Brand) -> None:
    number = complete(brand, "2718281828459045")
    symbology = "EAN13" if brand.check == "ean13" else "CODE128"
    reading = CardReading(barcodes=(Barcode(symbology, number),))
    assert CATALOG.match(reading.candidates[0]) is brand


def test_ean13_brands_use_real_ean13_check_digits() -> None:
    assert ean13_valid("4006381333931")  # the textbook EAN-13
    assert ean13_valid("6901234567892")  # a GS1 China (690) example
    assert not ean13_valid("4006381333932")
    for brand in BRANDS:
        if brand.check == "ean13":
            assert ean13_valid(complete(brand, "55"))


@pytest.mark.parametrize("brand", BRANDS, ids=lambda b: b.code)
def test_a_number_of_the_wrong_length_is_not_recognised(brand: Brand) -> None:
    number = complete(brand, "1234567890")
    for wrong in (number[:-1], number + "0"):
        with pytest.raises(CardNotRecognised):
            CATALOG.match(wrong)


def test_a_wrong_check_digit_is_not_recognised() -> None:
    walmart = CATALOG.get("walmart")
    number = complete(walmart, "8")
    bad = number[:-1] + str((int(number[-1]) + 1) % 10)
    with pytest.raises(CardNotRecognised) as info:
        CATALOG.match(bad)
    assert info.value.key == "error.card_not_recognised"


@pytest.mark.parametrize("text", ["", "hello", "12345", "6222021234567890123", "ABCD-EFGH"])
def test_garbage_is_not_recognised(text: str) -> None:
    with pytest.raises(CardNotRecognised):
        CATALOG.match(text)


def test_card_number_normalisation_strips_spaces_and_dashes_and_folds_full_width() -> None:
    assert normalize_card_number(" 2326-0817 4402\u30009136 ") == "2326081744029136"
    assert normalize_card_number("２３２６０８１７４４０２９１３６") == "2326081744029136"
    assert normalize_card_number("abc-123") == "ABC123"
    assert normalize_card_number("12#34") == "12#34"  # nothing else is removed


def test_a_spaced_or_full_width_number_still_matches() -> None:
    assert CATALOG.match("２３２６ ０８１７ ４４０２ ９１３６").code == "walmart"
    assert CATALOG.match("2326-0817-4402-9136").code == "walmart"


def test_no_two_default_brands_share_a_length_and_a_nested_prefix() -> None:
    for i, a in enumerate(BRANDS):
        for b in BRANDS[i + 1 :]:
            if set(a.lengths) & set(b.lengths):
                for p in a.prefixes:
                    for q in b.prefixes:
                        assert not p.startswith(q) and not q.startswith(p), (a.code, b.code)


def test_a_catalog_with_overlapping_brands_is_refused() -> None:
    walmart = CATALOG.get("walmart")
    clash = replace(walmart, code="clash", name_zh="冲突卡", name_en="Clash", prefixes=("23",))
    with pytest.raises(ValueError, match="overlap"):
        Catalog([walmart, clash])


def test_a_catalog_listing_a_brand_twice_is_refused() -> None:
    walmart = CATALOG.get("walmart")
    with pytest.raises(ValueError, match="twice"):
        Catalog([walmart, walmart])


@pytest.mark.parametrize(
    "changes",
    [
        {"check": "crc"},
        {"prefixes": ()},
        {"prefixes": ("12a",)},
        {"lengths": ()},
        {"prefixes": ("1234567890123456",)},
        {"has_secret": False},
        {"denominations_fen": (0,)},
        {"code": "Bad Code"},
        {"name_en": ""},
    ],
)
def test_a_malformed_brand_is_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        replace(CATALOG.get("walmart"), **changes)  # type: ignore[arg-type]


def test_an_ean13_brand_must_have_13_digit_numbers() -> None:
    with pytest.raises(ValueError, match="13"):
        replace(CATALOG.get("wumart"), lengths=(16,))


def test_secret_is_normalised_before_its_shape_is_checked() -> None:
    jd = CATALOG.get("jd_ecard")
    assert CATALOG.validate_secret(jd, "a3k9-7q2m-x5t8 w4p6") == "A3K97Q2MX5T8W4P6"
    assert CATALOG.validate_secret(CATALOG.get("walmart"), "１３５ ７９０") == "135790"


@pytest.mark.parametrize(
    ("code", "text"),
    [
        ("walmart", "12345"),
        ("walmart", "1234567"),
        ("walmart", "12345a"),
        ("jd_ecard", "A3K97Q2MX5T8W4P"),
        ("jd_ecard", "A3K97Q2MX5T8W4P6!"),
        ("starbucks", "123456"),
    ],
)
def test_a_malformed_secret_is_refused_with_the_secret_format_key(code: str, text: str) -> None:
    with pytest.raises(WrongSecret) as info:
        CATALOG.validate_secret(CATALOG.get(code), text)
    assert info.value.key == "error.secret_format"


def test_asking_for_the_secret_of_a_brand_without_one_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        CATALOG.validate_secret(CATALOG.get("wumart"), "123456")


def test_secrets_compare_after_normalisation() -> None:
    assert secrets_equal("A3K97Q2MX5T8W4P6", "a3k9-7q2m-x5t8-w4p6")
    assert not secrets_equal("135790", "135791")
    assert not secrets_equal("135790", None)
    assert normalize_secret(" 12-34 ") == "1234"


@given(st.text())
def test_matching_any_text_either_finds_a_brand_or_says_not_recognised(text: str) -> None:
    try:
        brand = CATALOG.match(text)
    except CardNotRecognised:
        return
    assert brand.fits(normalize_card_number(text))


@given(st.sampled_from(BRANDS), st.text(alphabet="0123456789", min_size=20, max_size=20))
def test_every_completed_number_matches_exactly_its_own_brand(brand: Brand, filler: str) -> None:
    number = complete(brand, filler)
    assert [b.code for b in BRANDS if b.fits(number)] == [brand.code]


@given(
    st.sampled_from([b for b in BRANDS if b.check != "none"]),
    st.text(alphabet="0123456789", min_size=20, max_size=20),
    st.data(),
)
def test_a_one_digit_typo_never_matches_the_same_check_digit_brand(
    brand: Brand, filler: str, data: st.DataObject
) -> None:
    number = complete(brand, filler)
    position = data.draw(st.integers(0, len(number) - 1))
    digit = data.draw(st.sampled_from([d for d in "0123456789" if d != number[position]]))
    typo = number[:position] + digit + number[position + 1 :]
    assert not brand.fits(typo)


@given(st.text(alphabet="0123456789", min_size=1, max_size=30))
def test_luhn_check_digit_always_completes_a_valid_number(body: str) -> None:
    assert luhn_valid(body + luhn_check_digit(body))


@given(st.text())
def test_normalising_a_card_number_twice_changes_nothing(text: str) -> None:
    once = normalize_card_number(text)
    assert normalize_card_number(once) == once
