"""Symbologies cards use, and the guards that keep misreads out of a ``CardReading``.

zbar already rejects most bad scans; these checks are a second, independent line: they re-verify
check digits, enforce lengths zbar lets through, and drop text no card would carry.
"""

from __future__ import annotations

from typing import Final

from pyzbar.pyzbar import ZBarSymbol

# Names exactly as pyzbar reports them; these are also the ``Barcode.symbology`` values.
EAN13: Final = "EAN13"
EAN8: Final = "EAN8"
UPCA: Final = "UPCA"
UPCE: Final = "UPCE"
CODE128: Final = "CODE128"
CODE39: Final = "CODE39"
I25: Final = "I25"
QRCODE: Final = "QRCODE"

# Requesting UPCA (and UPCE) explicitly matters: without it zbar folds UPC-A into EAN13 with a
# leading 0, and a card's UPC-A number would come back 13 digits long.
CARD_SYMBOLS: Final[tuple[ZBarSymbol, ...]] = (
    ZBarSymbol.EAN13,
    ZBarSymbol.EAN8,
    ZBarSymbol.UPCA,
    ZBarSymbol.UPCE,
    ZBarSymbol.CODE128,
    ZBarSymbol.CODE39,
    ZBarSymbol.I25,
    ZBarSymbol.QRCODE,
)

# Symbologies whose payload is protected by a mandatory check (EAN/UPC mod-10, Code 128 mod-103,
# QR Reed-Solomon): a random misread almost never survives it. Code 39 and ITF have no mandatory
# check character, so one scan line that happens to parse is weak evidence on its own.
SELF_CHECKING: Final = frozenset({EAN13, EAN8, UPCA, UPCE, CODE128, QRCODE})

_DIGIT_LENGTHS: Final = {EAN13: 13, EAN8: 8, UPCA: 12, UPCE: 8}
# Full-ASCII ("extended") Code 39 spells lower case and punctuation with pairs such as "+A";
# zxing-cpp decodes those pairs, so any printable ASCII is a possible Code 39 text.
_CODE39_ALPHABET: Final = frozenset(chr(code) for code in range(32, 127))
_I25_MIN_LENGTH: Final = 6


def mod10_valid(digits: str) -> bool:
    """Whether the last digit is the GS1 mod-10 check digit of the others (EAN/UPC/ITF-14)."""
    if len(digits) < 2 or not (digits.isascii() and digits.isdigit()):
        return False
    body = digits[:-1]
    # Weights 3,1,3,… counted from the digit next to the check digit.
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return (10 - total % 10) % 10 == int(digits[-1])


def upce_to_upca(upce: str) -> str | None:
    """The 12-digit UPC-A a zero-suppressed 8-digit UPC-E stands for, or None if malformed."""
    if len(upce) != 8 or not (upce.isascii() and upce.isdigit()) or upce[0] not in "01":
        return None
    system, d, check = upce[0], upce[1:7], upce[7]
    last = d[5]
    if last in "012":
        body = d[0:2] + last + "0000" + d[2:5]
    elif last == "3":
        body = d[0:3] + "00000" + d[3:5]
    elif last == "4":
        body = d[0:4] + "00000" + d[4]
    else:
        body = d[0:5] + "0000" + last
    return system + body + check


def upca_to_upce(upca: str) -> str | None:
    """The 8-digit UPC-E a 12-digit UPC-A suppresses to, or None when it has no UPC-E form."""
    if len(upca) != 12 or not (upca.isascii() and upca.isdigit()) or upca[0] not in "01":
        return None
    system, body, check = upca[0], upca[1:11], upca[11]
    maker, item = body[:5], body[5:]
    candidates: list[str] = []
    if maker[2] in "012" and maker[3:] == "00" and item[:2] == "00":
        candidates.append(maker[:2] + item[2:] + maker[2])
    if maker[3:] == "00" and item[:3] == "000":
        candidates.append(maker[:3] + item[3:] + "3")
    if maker[4] == "0" and item[:4] == "0000":
        candidates.append(maker[:4] + item[4] + "4")
    if item[:4] == "0000" and item[4] in "56789":
        candidates.append(maker + item[4])
    for digits in candidates:
        upce = system + digits + check
        if upce_to_upca(upce) == upca:
            return upce
    return None


def check_digit_valid(symbology: str, text: str) -> bool:
    """Whether an EAN/UPC text has the right length and a correct check digit."""
    if len(text) != _DIGIT_LENGTHS[symbology]:
        return False
    if symbology == UPCE:
        upca = upce_to_upca(text)
        return upca is not None and mod10_valid(upca)
    return mod10_valid(text)


# GS (0x1d) is how zbar writes the FNC1 separators of GS1 data.
_GS: Final = "\x1d"


def _printable(text: str) -> bool:
    return all(ch.isprintable() or ch == _GS for ch in text)


def plausible(symbology: str, text: str) -> bool:
    """Whether a decoded text is something that symbology can really carry (misread guard)."""
    if not text.strip():
        return False
    if symbology in _DIGIT_LENGTHS:
        return check_digit_valid(symbology, text)
    if symbology == I25:
        # ITF encodes digit pairs; short runs are what a partial scan of other bars yields.
        digits = text.isascii() and text.isdigit()
        return digits and len(text) % 2 == 0 and len(text) >= _I25_MIN_LENGTH
    if symbology == CODE39:
        return all(ch in _CODE39_ALPHABET for ch in text)
    if symbology == CODE128:
        return _printable(text)
    if symbology == QRCODE:
        # Reed-Solomon guards QR against misreads; payloads may carry control characters
        # (vCard separators, binary headers). Only a failed text decoding is refused.
        return "\ufffd" not in text
    return False


def normalise(symbology: str, text: str) -> tuple[str, str]:
    """Report a UPC-A as UPCA with 12 digits even if zbar folded it into EAN13 ("0" + UPC-A)."""
    if symbology == EAN13 and len(text) == 13 and text.startswith("0"):
        return UPCA, text[1:]
    return symbology, text


def decode_payload(data: bytes) -> str:
    """Text of a zbar payload; zbar hands out UTF-8 (it transcodes QR byte segments itself,
    guessing Latin-1 for Shift-JIS/GB 2312 ones: zxing-cpp's spelling wins those)."""
    return data.decode("utf-8", errors="replace")
