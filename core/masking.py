"""Masks for what people and logs may see of sensitive values.

Conventions (money.md §3): a card number shows at most its first 4 and last 4 digits; a resident
ID its first and last character (Alipay's display rule); a phone 3 + 4; a bank card its last 4; a
name its first character. A card secret is never shown at all, masked or not.

:func:`redact` is the safety net of the logging filter: it masks anything in free text that looks
like a card, ID, bank or phone number. It cannot recognise an alphanumeric card secret (a JD
E-card secret looks like any other token), so secrets must never be logged in the first place.
"""

from __future__ import annotations

import re

from core.model import PayoutMethod

_STAR = "*"


def _digits_and_x(value: str) -> str:
    return "".join(c for c in value if c.isdecimal() or c in "Xx")


def _group(text: str, size: int = 4) -> str:
    return " ".join(text[i : i + size] for i in range(0, len(text), size))


def mask_card_number(number: str) -> str:
    """First and last 4 of a long card number (``6222 **** **** 1234``); last 4 of a short one."""
    value = "".join(c for c in number if not c.isspace() and c != "-")
    n = len(value)
    if n >= 12:
        return f"{value[:4]} {_group(_STAR * (n - 8))} {value[-4:]}"
    if n > 4:
        return f"{_STAR * (n - 4)}{value[-4:]}"
    return _STAR * n


def mask_id_number(number: str) -> str:
    """First and last character of a resident ID: ``1****************X``."""
    value = "".join(c for c in number if not c.isspace())
    if len(value) <= 2:
        return _STAR * len(value)
    return f"{value[0]}{_STAR * (len(value) - 2)}{value[-1]}"


def mask_phone(phone: str) -> str:
    """First 3 and last 4 digits of a mobile number: ``138****5678``."""
    digits = "".join(c for c in phone if c.isdecimal())
    if len(digits) == 13 and digits.startswith("86"):
        digits = digits[2:]
    elif len(digits) == 15 and digits.startswith("0086"):
        digits = digits[4:]
    if len(digits) < 8:
        return _STAR * len(digits)
    return f"{digits[:3]}{_STAR * (len(digits) - 7)}{digits[-4:]}"


def mask_bank_card(number: str) -> str:
    """Last 4 digits of a bank card: ``**** 1234``."""
    digits = "".join(c for c in number if c.isdecimal())
    return f"**** {digits[-4:]}" if len(digits) > 4 else "****"


def mask_email(address: str) -> str:
    """First character of the mailbox, the domain kept: ``z***@example.com``."""
    local, at, domain = address.strip().rpartition("@")
    if not at:
        return mask_name(address) if address else ""
    return f"{local[:1]}***@{domain}"


def mask_alipay_account(account: str) -> str:
    """An Alipay login (mobile or e-mail), masked as a phone or an e-mail address."""
    return mask_email(account) if "@" in account else mask_phone(account)


def mask_name(name: str) -> str:
    """First character of a name, the rest starred: ``张**``."""
    value = name.strip()
    return f"{value[:1]}{_STAR * (len(value) - 1)}" if value else ""


def mask_wechat_account(account: str) -> str:
    """A WeChat ID as first + last character (``w****9``), or a mobile number as a phone."""
    value = account.strip()
    if value[:1].isdecimal() or value.startswith("+"):
        return mask_phone(value)
    if len(value) <= 2:
        return _STAR * len(value)
    return f"{value[0]}{_STAR * 4}{value[-1]}"


def mask_account(method: PayoutMethod | str, value: str) -> str:
    """A payout account masked the way its method is shown."""
    kind = PayoutMethod(method)
    if kind is PayoutMethod.BANK:
        return mask_bank_card(value)
    if kind is PayoutMethod.ALIPAY:
        return mask_alipay_account(value)
    return mask_wechat_account(value)


# --------------------------------------------------------------------------------------------
# Free-text redaction

# A date or time (kept), or a run of digits with single spaces or dashes inside, optionally
# led by +86 and ended by an ID's X. A run never starts right after a digit.
_DATE = (
    r"\d{4}-\d{2}-\d{2}"
    r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:\d{2})?)?(?![\d-])"
)
_RUN = r"(?:\+\s?)?\d(?:[ -]?\d)*(?:[ -]?[Xx](?![A-Za-z0-9]))?"
_PATTERN = re.compile(f"(?<!\\d)(?:(?P<date>{_DATE})|(?P<run>{_RUN}))")


def _replace(match: re.Match[str]) -> str:
    if match.group("date") is not None:
        return match.group(0)
    return _mask_run(match.group(0))


def _mask_run(text: str) -> str:
    value = _digits_and_x(text)
    digits = value.rstrip("Xx")
    if len(value) == 18 and len(digits) >= 17:
        return mask_id_number(value.upper())
    if re.fullmatch(r"(?:86|0086)?1[3-9]\d{9}", digits) and "X" not in value.upper():
        return mask_phone(digits)
    if len(digits) < 6:
        return text
    if len(digits) >= 12:
        return f"{_STAR * (len(value) - 4)}{value[-4:]}"
    return _STAR * len(value)


def redact(text: str) -> str:
    """Mask 6+ digit runs (spaces, dashes inside), 17 digits + X and mobiles in free text."""
    return _PATTERN.sub(_replace, text)


_MIXED_TOKEN = re.compile(
    r"(?<![A-Za-z0-9])(?=[A-Za-z0-9]*\d)(?=[A-Za-z0-9]*[A-Za-z])[A-Za-z0-9]{8,}"
)


# Codes typed in groups — "A3K9-7Q2M-X5T8-W4P6", "x7k9 m2p4 ..." — where every group has a digit:
# words of a sentence almost never do.
_GROUP = r"(?=[A-Za-z0-9]*\d)[A-Za-z0-9]{2,8}"
_GROUPED_CODE = re.compile(rf"(?<![A-Za-z0-9]){_GROUP}(?:[ -]{_GROUP})+(?![A-Za-z0-9])")
_OUR_NUMBER = re.compile(r"(?<![A-Za-z0-9])((?:CB|PB)\d{8})(?![0-9])", re.IGNORECASE)


def _hide_codes(text: str) -> str:
    def hide(match: re.Match[str]) -> str:
        code = match.group(0)
        alnum = sum(c.isalnum() for c in code)
        has_letter = any(c.isalpha() for c in code)
        return _STAR * len(code) if alnum >= 8 and has_letter else code

    return _MIXED_TOKEN.sub(lambda m: _STAR * len(m.group(0)), _GROUPED_CODE.sub(hide, text))


def redact_for_staff(text: str) -> str:
    """What staff may read of a user's free text: :func:`redact`, and letter-and-digit codes
    of 8+ characters (card secrets often look like that) hidden whole. Our own order and batch
    numbers (CB…/PB…) are kept: people quote them in complaints."""
    parts = _OUR_NUMBER.split(text)
    return "".join(
        part if index % 2 else _hide_codes(redact(part)) for index, part in enumerate(parts)
    )
