"""Message catalogs: gettext .po files (zh_CN first, en second), read with Babel.

Message ids are stable keys (``sell.ask_secret``); texts use ``str.format`` fields. A missing
key in one language falls back to Chinese, then to the key itself (a test keeps both complete).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from babel.messages.pofile import read_po

LOCALE_DIR = Path(__file__).parent / "locale"
DOMAIN = "cardbot"
LANGUAGES = ("zh", "en")
DEFAULT_LANGUAGE = "zh"
_LOCALE_OF = {"zh": "zh_CN", "en": "en"}


def resolve_language(*candidates: str | None) -> str:
    """The first candidate we speak (``en-GB`` → en, ``zh-hans`` → zh), else Chinese."""
    for candidate in candidates:
        if not candidate:
            continue
        code = candidate.strip().lower().replace("_", "-").split("-")[0]
        if code in LANGUAGES:
            return code
    return DEFAULT_LANGUAGE


@cache
def catalog(lang: str) -> dict[str, str]:
    """The messages of one language, key → text."""
    path = LOCALE_DIR / _LOCALE_OF[lang] / "LC_MESSAGES" / f"{DOMAIN}.po"
    with path.open("rb") as handle:
        po = read_po(handle, locale=_LOCALE_OF[lang])
    return {str(m.id): str(m.string) for m in po if m.id and m.string}


def fields_of(text: str) -> set[str]:
    """The format fields a message uses."""
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


@dataclass(frozen=True)
class Translator:
    """Texts in one language."""

    lang: str

    def __call__(self, key: str, **params: Any) -> str:
        text = catalog(self.lang).get(key) or catalog(DEFAULT_LANGUAGE).get(key) or key
        try:
            return text.format(**params)
        except (KeyError, IndexError, ValueError):
            # A catalog/code mismatch must not become a stack trace for the user.
            return text
