"""The card catalog: which brands we buy, how to tell their numbers apart, and secret shapes.

The catalog is the operator's data. Issuers do not publish their numbering, so the shapes below
(prefix, length, check digit, secret pattern) are the shipped defaults: Sinopec's 19-digit
``1000111…`` and PetroChina's 16-digit ``9030…`` fuel cards follow the cards in circulation; the
others are plausible shapes chosen so that no two brands can claim the same number. Two brands'
rules never overlap: :class:`Catalog` refuses a brand list where one number could fit two brands.

A number is the card number as printed, or the text of the barcode on the card (a Code 128 of the
printed number; brands whose cards carry an EAN-13 use the 13 digits of that EAN-13 as number).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

from core.errors import CardNotRecognised, WrongSecret
from core.identity import luhn_valid

CHECKS = ("luhn", "ean13", "none")

_FULLWIDTH_DIGITS = {ord("０") + i: ord("0") + i for i in range(10)}
_DASHES = "-‐‑‒–—―－"
_DIGITS = re.compile(r"[0-9]+")


def _strip_separators(text: str) -> str:
    return "".join(c for c in text if not c.isspace() and c not in _DASHES)


def normalize_card_number(text: str) -> str:
    """Strip spaces and dashes, turn full-width digits into ASCII, upper-case; nothing else."""
    return _strip_separators(text).translate(_FULLWIDTH_DIGITS).upper()


def normalize_secret(text: str) -> str:
    """A card secret as the issuer compares it: no spaces or dashes, ASCII digits, upper-case."""
    return normalize_card_number(text)


def secrets_equal(expected: str, given: str | None) -> bool:
    """Constant-time comparison of two card secrets after normalisation."""
    if given is None:
        return False
    return hmac.compare_digest(
        normalize_secret(expected).encode(), normalize_secret(given).encode()
    )


def luhn_check_digit(body: str) -> str:
    """The Luhn check digit that completes ``body`` (ASCII digits)."""
    if not _DIGITS.fullmatch(body):
        raise ValueError("body must be ASCII digits")
    for digit in "0123456789":
        if luhn_valid(body + digit):
            return digit
    raise AssertionError("unreachable: one of ten digits completes every Luhn body")


def ean13_check_digit(body: str) -> str:
    """The EAN-13 check digit for a 12-digit body (weights 1, 3 from the left)."""
    if len(body) != 12 or not _DIGITS.fullmatch(body):
        raise ValueError("an EAN-13 body is 12 ASCII digits")
    total = sum(int(c) * (3 if i % 2 else 1) for i, c in enumerate(body))
    return str((10 - total % 10) % 10)


def ean13_valid(number: str) -> bool:
    """Whether ``number`` is 13 ASCII digits with a correct EAN-13 check digit."""
    return (
        len(number) == 13
        and _DIGITS.fullmatch(number) is not None
        and ean13_check_digit(number[:12]) == number[12]
    )


@dataclass(frozen=True)
class Brand:
    """One card brand: its names, number rules, secret shape and usual denominations."""

    code: str
    name_zh: str
    name_en: str
    prefixes: tuple[str, ...]
    lengths: tuple[int, ...]
    check: str
    has_secret: bool
    secret_pattern: str
    denominations_fen: tuple[int, ...]

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.code):
            raise ValueError(f"brand code {self.code!r}: lower-case letters, digits, _")
        if not self.name_zh or not self.name_en:
            raise ValueError(f"brand {self.code}: needs a Chinese and an English name")
        if self.check not in CHECKS:
            raise ValueError(f"brand {self.code}: check must be one of {CHECKS}")
        if not self.prefixes or any(not _DIGITS.fullmatch(p) for p in self.prefixes):
            raise ValueError(f"brand {self.code}: prefixes must be non-empty digit strings")
        if not self.lengths or any(n < 4 for n in self.lengths):
            raise ValueError(f"brand {self.code}: lengths must be at least 4")
        if any(len(p) >= n for p in self.prefixes for n in self.lengths):
            raise ValueError(f"brand {self.code}: a prefix must be shorter than every length")
        if self.check == "ean13" and self.lengths != (13,):
            raise ValueError(f"brand {self.code}: EAN-13 numbers are 13 digits long")
        if self.has_secret:
            re.compile(self.secret_pattern)
        elif self.secret_pattern:
            raise ValueError(f"brand {self.code}: a secret pattern without a secret")
        if not self.denominations_fen or any(d <= 0 for d in self.denominations_fen):
            raise ValueError(f"brand {self.code}: denominations must be positive fen")

    def name(self, lang: str) -> str:
        """The brand's name in ``lang`` (Chinese for ``zh*``, English otherwise)."""
        return self.name_zh if lang.lower().startswith("zh") else self.name_en

    def fits(self, number: str) -> bool:
        """Whether a normalised number fits this brand's prefix, length and check digit."""
        if not _DIGITS.fullmatch(number) or len(number) not in self.lengths:
            return False
        if not number.startswith(self.prefixes):
            return False
        if self.check == "luhn":
            return luhn_valid(number)
        if self.check == "ean13":
            return ean13_valid(number)
        return True


def _overlap(a: Brand, b: Brand) -> bool:
    """Whether some number could fit both brands (check digits ignored: conservative)."""
    shared = set(a.lengths) & set(b.lengths)
    return bool(shared) and any(
        p.startswith(q) or q.startswith(p) for p in a.prefixes for q in b.prefixes
    )


class Catalog:
    """The brands we buy; matches numbers to brands and checks card secrets."""

    def __init__(self, brands: Iterable[Brand]) -> None:
        self._brands: dict[str, Brand] = {}
        for brand in brands:
            if brand.code in self._brands:
                raise ValueError(f"brand {brand.code} listed twice")
            for other in self._brands.values():
                if _overlap(brand, other):
                    raise ValueError(f"brands {other.code} and {brand.code} overlap")
            self._brands[brand.code] = brand
        self._lengths = frozenset(n for brand in self._brands.values() for n in brand.lengths)
        self._prefixes = tuple(p for brand in self._brands.values() for p in brand.prefixes)
        self._prefixes_by_length = {
            n: tuple(p for b in self._brands.values() if n in b.lengths for p in b.prefixes)
            for n in self._lengths
        }

    def brands(self) -> tuple[Brand, ...]:
        """Every brand, in catalog order."""
        return tuple(self._brands.values())

    def card_lengths(self) -> frozenset[int]:
        """Every length a card number of some brand has."""
        return self._lengths

    def prefixes(self, length: int | None = None) -> tuple[str, ...]:
        """The number prefixes of every brand (with numbers of ``length`` digits, if given):
        a card number starts with one of them."""
        if length is None:
            return self._prefixes
        return self._prefixes_by_length.get(length, ())

    def is_card_number(self, number: str) -> bool:
        """Whether a normalised number fits some brand."""
        return any(brand.fits(number) for brand in self._brands.values())

    def get(self, code: str) -> Brand:
        """The brand with this code; raises KeyError."""
        return self._brands[code]

    def match(self, number: str) -> Brand:
        """The one brand whose prefix, length and check digit fit; else CardNotRecognised."""
        normalised = normalize_card_number(number)
        for brand in self._brands.values():
            if brand.fits(normalised):
                return brand
        raise CardNotRecognised()

    def recognises(self, number: str) -> bool:
        """Whether some brand's prefix, length and check digit fit this number (no raise)."""
        normalised = normalize_card_number(number)
        return any(brand.fits(normalised) for brand in self._brands.values())

    def validate_secret(self, brand: Brand, text: str) -> str:
        """The normalised secret; WrongSecret("error.secret_format") when it is malformed."""
        if not brand.has_secret:
            raise ValueError(f"brand {brand.code} has no card secret")
        secret = normalize_secret(text)
        if not re.fullmatch(brand.secret_pattern, secret):
            raise WrongSecret("error.secret_format")
        return secret


_SIX_DIGITS = r"[0-9]{6}"


def _brand(
    code: str,
    name_zh: str,
    name_en: str,
    prefix: str,
    length: int,
    check: str,
    secret_pattern: str,
    denominations_cny: tuple[int, ...],
) -> Brand:
    return Brand(
        code=code,
        name_zh=name_zh,
        name_en=name_en,
        prefixes=(prefix,),
        lengths=(length,),
        check=check,
        has_secret=bool(secret_pattern),
        secret_pattern=secret_pattern,
        denominations_fen=tuple(v * 100 for v in denominations_cny),
    )


def default_catalog() -> Catalog:
    """The shipped brand list (the operator's data; shapes documented in the module)."""
    six = _SIX_DIGITS
    # fmt: off
    return Catalog([
        _brand("walmart", "沃尔玛购物卡", "Walmart Shopping Card",
               "2326", 16, "luhn", six, (100, 200, 500, 1000)),
        _brand("carrefour", "家乐福购物卡", "Carrefour Shopping Card",
               "8600", 19, "luhn", six, (100, 200, 500, 1000)),
        _brand("jd_ecard", "京东E卡", "JD E-Card",
               "8810", 16, "luhn", r"[0-9A-Z]{16}", (50, 100, 200, 500, 1000, 2000)),
        _brand("tmall", "天猫超市卡", "Tmall Supermarket Card",
               "7101", 16, "luhn", six, (100, 200, 500, 1000)),
        _brand("yonghui", "永辉超市卡", "Yonghui Supermarket Card",
               "9150", 19, "luhn", six, (100, 200, 500, 1000)),
        _brand("rtmart", "大润发购物卡", "RT-Mart Shopping Card",
               "2801", 13, "ean13", "", (100, 200, 500, 1000)),
        _brand("wumart", "物美卡", "Wumart Card",
               "2901", 13, "ean13", "", (50, 100, 200, 500, 1000)),
        _brand("suning", "苏宁卡", "Suning Card",
               "7800", 18, "luhn", six, (100, 200, 500, 1000, 2000)),
        _brand("sinopec", "中石化加油卡", "Sinopec Fuel Card",
               "1000111", 19, "none", six, (100, 200, 500, 1000, 2000, 5000)),
        _brand("petrochina", "中石油加油卡", "PetroChina Fuel Card",
               "9030", 16, "none", six, (100, 200, 500, 1000, 2000)),
        _brand("ctrip", "携程任我行", "Ctrip Renwoxing Card",
               "7710", 16, "luhn", six, (100, 200, 500, 1000, 2000)),
        _brand("starbucks", "星巴克", "Starbucks Card",
               "7770", 16, "luhn", r"[0-9]{8}", (50, 100, 200, 500)),
        _brand("crvanguard", "华润万家购物卡", "CR Vanguard Shopping Card",
               "9860", 19, "luhn", six, (100, 200, 500, 1000)),
        _brand("okcard", "联华OK卡", "Lianhua OK Card",
               "8888", 19, "luhn", six, (50, 100, 200, 500, 1000)),
    ])
    # fmt: on
