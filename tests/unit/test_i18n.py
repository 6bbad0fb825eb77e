"""The message catalogs: complete in both languages, and every key the code uses exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.model import OrderStatus, PayoutMethod
from handlers.i18n import Translator, catalog, fields_of, resolve_language

ROOT = Path(__file__).resolve().parents[2]
# Keys appear as t("key"), as an error's constructor argument, or as an error class's `key`.
KEY_LITERAL = re.compile(
    r"(?:\bt\(\s*|(?:Error|Unusable|Identity|Account|Secret|Recognised|Found|Expired)\(\s*"
    r'|\bkey = )"([a-z_]+\.[a-z_.]+)"'
)


def test_chinese_and_english_have_the_same_keys() -> None:
    assert set(catalog("zh")) == set(catalog("en"))


@pytest.mark.parametrize("key", sorted(catalog("zh")))
def test_both_languages_use_the_same_fields(key: str) -> None:
    assert fields_of(catalog("zh")[key]) == fields_of(catalog("en")[key])


def test_every_key_named_in_the_code_exists() -> None:
    used: set[str] = set()
    for folder in ("core", "handlers", "bot"):
        for path in (ROOT / folder).rglob("*.py"):
            used |= set(KEY_LITERAL.findall(path.read_text(encoding="utf-8")))
    assert len(used) > 80  # the scan really finds the keys
    missing = sorted(k for k in used if k not in catalog("zh") and not k.endswith("."))
    assert missing == []
    for status in OrderStatus:
        assert f"status.{status.value}" in catalog("zh")
    for method in PayoutMethod:
        assert f"method.{method.value}" in catalog("zh")
        assert f"payout.ask_account.{method.value}" in catalog("zh")
    for hint in ("dark", "bright", "blurred", "too_small", "no_card"):
        assert f"photo.hint.{hint}" in catalog("zh")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("en-GB", "en"),
        ("en", "en"),
        ("zh-hans", "zh"),
        ("zh_CN", "zh"),
        ("fr", "zh"),
        (None, "zh"),
        ("", "zh"),
    ],
)
def test_the_language_is_taken_from_the_user_and_defaults_to_chinese(
    given: str | None, expected: str
) -> None:
    assert resolve_language(given) == expected


def test_a_missing_field_never_breaks_a_reply() -> None:
    t = Translator("en")
    assert "tries left" in t("error.wrong_secret")  # no `left` given: the text, unformatted
    assert t("no.such.key") == "no.such.key"
