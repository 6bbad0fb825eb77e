"""Who is selling and where the money goes: resident ID (GB 11643), mobile number, real name,
and the shapes of payout accounts. Pure validation; nothing here calls out.

Every function raises only the documented :mod:`core.errors` types, whatever text it is given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Literal

from core.errors import InvalidIdentity, InvalidPayoutAccount

# ISO 7064 MOD 11-2 as GB 11643-1999 uses it: weights of the 17 body digits, and the check
# character for each remainder of the weighted sum modulo 11.
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK_CHARS = "10X98765432"

# First two digits of the address code: the provinces of GB/T 2260, 71 台湾, 81 香港, 82 澳门,
# and 83, which the 2018 residence-permit rules give Taiwan residents living on the mainland.
PROVINCE_CODES = frozenset(
    {
        "11", "12", "13", "14", "15",
        "21", "22", "23",
        "31", "32", "33", "34", "35", "36", "37",
        "41", "42", "43", "44", "45", "46",
        "50", "51", "52", "53", "54",
        "61", "62", "63", "64", "65",
        "71", "81", "82", "83",
    }
)  # fmt: skip

EARLIEST_BIRTH_DATE = date(1900, 1, 1)

_FULLWIDTH = {ord("０") + i: ord("0") + i for i in range(10)} | {
    ord("Ｘ"): ord("X"),
    ord("ｘ"): ord("x"),
    ord("＋"): ord("+"),
}
_DASHES = "-‐‑‒–—―－"
_ASCII_DIGITS = re.compile(r"[0-9]+")
_ID_SHAPE = re.compile(r"[0-9]{17}[0-9X]")
_MOBILE = re.compile(r"1[3-9][0-9]{9}")
_EMAIL = re.compile(
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}"
)
_WECHAT_ID = re.compile(r"[A-Za-z][A-Za-z0-9_-]{5,19}")

_CJK = "\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_CJK_NAME = re.compile(f"[{_CJK}]+(?:·[{_CJK}]+)*")
_HAS_CJK = re.compile(f"[{_CJK}]")
_LATIN_NAME = re.compile(r"[A-Za-z]+(?: [A-Za-z]+)*")
# Middle dots people type for minority names (维吾尔族 etc.), folded into U+00B7.
_MIDDLE_DOTS = str.maketrans({c: "·" for c in "•‧・･∙⋅"})


def _compact(text: str) -> str:
    """Full-width digits to ASCII; spaces and dashes removed."""
    return "".join(c for c in text.translate(_FULLWIDTH) if not c.isspace() and c not in _DASHES)


# --------------------------------------------------------------------------------------------
# Resident identity card (居民身份证)


@dataclass(frozen=True)
class ResidentId:
    """A resident ID number that passed every GB 11643 check, and what it encodes."""

    number: str
    birth_date: date
    region_code: str
    sex: Literal["M", "F"]


def id_check_character(body: str) -> str:
    """The ISO 7064 MOD 11-2 check character ('0'–'9' or 'X') of a 17-digit ID body."""
    if len(body) != 17 or not _ASCII_DIGITS.fullmatch(body):
        raise ValueError("an ID body is 17 ASCII digits")
    total = sum(int(c) * w for c, w in zip(body, _ID_WEIGHTS, strict=True))
    return _ID_CHECK_CHARS[total % 11]


def parse_resident_id(text: str, today: date) -> ResidentId:
    """Validate an 18-character resident ID per GB 11643; raises InvalidIdentity with its key."""
    number = _compact(text).upper()
    if len(number) == 15 and _ASCII_DIGITS.fullmatch(number):
        raise InvalidIdentity("identity.id_legacy")
    if not _ID_SHAPE.fullmatch(number):
        raise InvalidIdentity("identity.id_format")
    if id_check_character(number[:17]) != number[17]:
        raise InvalidIdentity("identity.id_checksum")
    if number[:2] not in PROVINCE_CODES:
        raise InvalidIdentity("identity.id_region")
    try:
        birth = date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        raise InvalidIdentity("identity.id_birth_date") from None
    if not EARLIEST_BIRTH_DATE <= birth <= today:
        raise InvalidIdentity("identity.id_birth_date")
    return ResidentId(
        number=number,
        birth_date=birth,
        region_code=number[:6],
        sex="M" if int(number[16]) % 2 else "F",
    )


def age_on(rid: ResidentId, day: date) -> int:
    """Whole years of age on ``day`` (a 29 February birthday comes of age on 1 March)."""
    before_birthday = (day.month, day.day) < (rid.birth_date.month, rid.birth_date.day)
    return day.year - rid.birth_date.year - int(before_birthday)


# --------------------------------------------------------------------------------------------
# Phone and name


def normalize_phone(text: str) -> str:
    """A mainland mobile number as 11 digits (+86 / 0086, spaces and dashes accepted)."""
    number = _compact(text)
    if number.startswith("+86"):
        number = number[3:]
    elif number.startswith("0086"):
        number = number[4:]
    if not _MOBILE.fullmatch(number):
        raise InvalidIdentity("identity.phone_invalid")
    return number


def validate_real_name(text: str) -> str:
    """A real name, normalised: 2–30 CJK characters (middle dot allowed) or Latin words."""
    name = text.strip().translate(_MIDDLE_DOTS)
    if _HAS_CJK.search(name):
        name = "".join(c for c in name if not c.isspace())
        ok = _CJK_NAME.fullmatch(name) is not None
    else:
        name = " ".join(name.split())
        ok = _LATIN_NAME.fullmatch(name) is not None
    if not ok or not 2 <= len(name) <= 30:
        raise InvalidIdentity("identity.name_invalid")
    return name


# --------------------------------------------------------------------------------------------
# Payout accounts


def luhn_valid(digits: str) -> bool:
    """Whether ``digits`` (ASCII digits only) passes the Luhn mod-10 check."""
    if not _ASCII_DIGITS.fullmatch(digits):
        return False
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def normalize_bank_card(text: str) -> tuple[str, bool]:
    """12–19 digits and whether they pass Luhn (only a warning: some real cards fail it)."""
    digits = _compact(text)
    if not (_ASCII_DIGITS.fullmatch(digits) and 12 <= len(digits) <= 19):
        raise InvalidPayoutAccount("payout.bank_card_invalid")
    return digits, luhn_valid(digits)


def _mobile_or_none(text: str) -> str | None:
    try:
        return normalize_phone(text)
    except InvalidIdentity:
        return None


def normalize_alipay_account(text: str) -> str:
    """An Alipay login: a mainland mobile number or an e-mail address (domain lower-cased)."""
    mobile = _mobile_or_none(text)
    if mobile is not None:
        return mobile
    email = text.strip()
    if len(email) > 100 or not _EMAIL.fullmatch(email):
        raise InvalidPayoutAccount("payout.alipay_invalid")
    local, domain = email.rsplit("@", 1)
    return f"{local}@{domain.lower()}"


def normalize_wechat_account(text: str) -> str:
    """A WeChat ID (6–20 of letters, digits, _ or -, a letter first) or a mainland mobile."""
    mobile = _mobile_or_none(text)
    if mobile is not None:
        return mobile
    wechat_id = text.strip()
    if not _WECHAT_ID.fullmatch(wechat_id):
        raise InvalidPayoutAccount("payout.wechat_invalid")
    return wechat_id
