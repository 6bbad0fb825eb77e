"""Masks for what people and logs may see of sensitive values.

Conventions (money.md §3): a card number shows at most its first 4 and last 4 digits; a resident
ID its first and last character (Alipay's display rule); a phone 3 + 4; a bank card its last 4; a
name its first character. A card secret is never shown at all, masked or not.

:func:`redact` is the safety net of the logging filter: it masks anything in free text that looks
like a card, ID, bank or phone number. It cannot recognise an alphanumeric card secret (a JD
E-card secret looks like any other token), so secrets must never be logged in the first place.
"""

from __future__ import annotations

import functools
import re

from core.catalog import Catalog, default_catalog
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

# Payout accounts typed in free text: e-mail addresses (Alipay logins), WeChat's own ids, and
# an id named by a word before it (微信号 zhang_san88). The id must hold a digit, _ or -: plain
# words after "wechat" or "account" stay readable.
_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_WXID = re.compile(r"(?<![A-Za-z0-9_-])wxid_[A-Za-z0-9_-]+", re.IGNORECASE)
_NAMED_ACCOUNT = re.compile(
    r"(?P<word>微信号|微信|支付宝账号|支付宝|收款账户|收款账号|账号|帐号|账户|帐户"
    r"|alipay|wechat(?:\s+id)?|account)"
    r"(?P<gap>\s*(?:[:：是为]\s*)?)"
    r"(?P<id>[A-Za-z](?=[A-Za-z0-9_-]*[0-9_-])[A-Za-z0-9_-]{5,19})(?![A-Za-z0-9_-])",
    re.IGNORECASE,
)

# Without a catalog (logs): the lengths a payment card number can have (ISO/IEC 7812).
_CARD_LENGTHS = frozenset(range(12, 20))


def _hide_accounts(text: str) -> str:
    text = _EMAIL.sub(lambda m: mask_email(m.group(0)), text)
    text = _WXID.sub(lambda m: mask_wechat_account(m.group(0)), text)
    return _NAMED_ACCOUNT.sub(
        lambda m: f"{m.group('word')}{m.group('gap')}{mask_wechat_account(m.group('id'))}", text
    )


def _mask_run(text: str, catalog: Catalog | None) -> str:
    value = _digits_and_x(text)
    digits = value.rstrip("Xx")
    if catalog is not None and _card_and_more(digits, catalog):
        # A card number and more digits on one line: the card's secret (or part of it).
        return _STAR * len(value)
    if len(value) == 18 and len(digits) >= 17:
        return mask_id_number(value.upper())
    if re.fullmatch(r"(?:86|0086)?1[3-9]\d{9}", digits) and "X" not in value.upper():
        return mask_phone(digits)
    if len(digits) < 6:
        return text
    lengths = catalog.card_lengths() if catalog is not None else _CARD_LENGTHS
    if len(digits) >= 12 and len(value) == len(digits) and len(digits) in lengths:
        return f"{_STAR * (len(value) - 4)}{value[-4:]}"
    return _STAR * len(value)


def _card_and_more(digits: str, catalog: Catalog) -> bool:
    """Whether the run starts with a catalog card number that more digits follow."""
    return any(
        n < len(digits) and catalog.is_card_number(digits[:n]) for n in catalog.card_lengths()
    )


def redact(text: str, catalog: Catalog | None = None) -> str:
    """Mask 6+ digit runs (spaces, dashes inside), 17 digits + X, mobiles and payout accounts
    (e-mail addresses, WeChat ids) in free text. A long run shows its last 4 only when it has
    a card number's length (the catalog's, when given); a card number with more digits after
    it is masked whole."""
    return _PATTERN.sub(
        lambda m: m.group(0) if m.group("date") is not None else _mask_run(m.group(0), catalog),
        _hide_accounts(text),
    )


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


def redact_for_staff(text: str, catalog: Catalog | None = None) -> str:
    """What staff may read of a user's free text: :func:`redact` with the card catalog's
    lengths (the shipped catalog unless given), and letter-and-digit codes of 8+ characters
    (card secrets often look like that) hidden whole. Our own order and batch numbers
    (CB…/PB…) are kept: people quote them in complaints."""
    cards = catalog if catalog is not None else _shipped_catalog()
    parts = _OUR_NUMBER.split(text)
    return "".join(
        part if index % 2 else _hide_codes(redact(part, cards)) for index, part in enumerate(parts)
    )


@functools.cache
def _shipped_catalog() -> Catalog:
    return default_catalog()
