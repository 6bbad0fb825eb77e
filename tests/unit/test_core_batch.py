"""Parsing a pasted list of cards: each line checked on its own, every bad one reported."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from core.batch import MAX_CARDS, looks_like_a_batch, parse_batch
from core.catalog import default_catalog, luhn_check_digit

CATALOG = default_catalog()
WALMART = "2326081744029136"
RTMART = "2801527364099"  # no secret


def walmart(n: int) -> str:
    body = f"23260817{n:07d}"
    return body + luhn_check_digit(body)


def test_good_lines_go_on_and_each_bad_line_says_why() -> None:
    text = "\n".join(
        [
            "卡号,卡密",  # a spreadsheet header
            f"{WALMART} 135790",
            "2326 0817 4415 5261 246802",  # typed in groups
            f"{RTMART}",
            "",  # blank lines are skipped
            "1234567 999999",
            f"{walmart(1)}",
            f"{walmart(2)} 12ab",
            f"{RTMART} 123456",
            f"{WALMART}，135790",  # the same card again, full-width comma
        ]
    )
    parsed = parse_batch(text, CATALOG)
    assert [(c.line, c.brand.code) for c in parsed.cards] == [
        (2, "walmart"),
        (3, "walmart"),
        (4, "rtmart"),
    ]
    assert parsed.cards[1].number == "2326081744155261" and parsed.cards[1].secret == "246802"
    assert [(p.line, p.key) for p in parsed.problems] == [
        (6, "batch.not_a_card"),
        (7, "batch.secret_missing"),
        (8, "batch.secret_format"),
        (9, "batch.no_secret_expected"),
        (10, "batch.duplicate"),
    ]
    assert dict(parsed.problems[-1].params) == {"first": "2"}


def test_more_than_a_hundred_cards_are_refused_line_by_line() -> None:
    text = "\n".join(f"{walmart(n)} 135790" for n in range(MAX_CARDS + 3))
    parsed = parse_batch(text, CATALOG)
    assert len(parsed.cards) == MAX_CARDS
    assert [p.key for p in parsed.problems] == ["batch.too_many"] * 3


def test_one_line_is_not_a_batch_and_two_are() -> None:
    assert not looks_like_a_batch(f"{WALMART} 135790\n\n")
    assert looks_like_a_batch(f"{WALMART} 135790\n{RTMART}")


# What a pasted list is made of: card numbers, secrets, the separators and quotes spreadsheets
# and chat apps put around them, and anything else.
_PIECES = st.one_of(
    st.sampled_from([WALMART, RTMART, walmart(7), "135790", "卡号", "card", "secret"]),
    st.sampled_from(["'", '"', "''", '""', ",", "，", ";", "；", "\t", " ", "\u3000"]),
    st.text(max_size=12),
)
_LINES = st.lists(st.lists(_PIECES, max_size=6).map("".join), max_size=30)


def verdict_lines(text: str) -> list[int]:
    """The line numbers that got a verdict (a card, a problem, or the header row), with
    repeats: a line is never given two."""
    parsed = parse_batch(text, CATALOG)
    header = [] if parsed.header is None else [parsed.header]
    return sorted([c.line for c in parsed.cards] + [p.line for p in parsed.problems] + header)


def test_a_line_of_quotes_alone_is_reported_not_dropped() -> None:
    parsed = parse_batch("'\n'", CATALOG)
    assert [(p.line, p.key) for p in parsed.problems] == [
        (1, "batch.not_a_card"),
        (2, "batch.not_a_card"),
    ]


def test_a_spreadsheet_header_row_is_recognised_as_such() -> None:
    parsed = parse_batch(f'"卡号","卡密"\n"{WALMART}","135790"', CATALOG)
    assert parsed.header == 1 and parsed.problems == ()
    assert [(c.line, c.number, c.secret) for c in parsed.cards] == [(2, WALMART, "135790")]


@given(_LINES)
@example(["'", "'"])  # found on a fresh clone: both lines were left without a verdict
@example([",", '""'])
def test_every_non_blank_line_gets_exactly_one_verdict_whatever_its_quotes(
    lines: list[str],
) -> None:
    text = "\n".join(lines)
    non_blank = [n for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    assert verdict_lines(text) == non_blank


# --------------------------------------------------------------------------------------------
# A card line anywhere in a message: hidden and deleted, whatever the step (issue 12, item 2)

import pytest  # noqa: E402 - this section's own

from core.batch import holds_card_line  # noqa: E402


@pytest.mark.parametrize(
    "text",
    [
        f"{WALMART} 135790",
        f"{WALMART}-135790",
        f"{WALMART}，135790",
        "2326 0817 4402 9136 135790",
        "2326-0817-4402-9136-135790",
        f"我的卡 {WALMART} 135790 帮我看看",
        "8810209311880348 B7N2C4V6Z8L1H3J5",
        f"{WALMART} 13",  # part of a secret is a secret too
        f"第一张\n{WALMART} 135790",
        f"/{WALMART} 135790",  # typed as a command
    ],
)
def test_a_card_number_followed_by_what_may_be_its_secret_is_a_card_line(text: str) -> None:
    assert holds_card_line(text, CATALOG)


@pytest.mark.parametrize(
    "text",
    [
        WALMART,
        f"{WALMART} 是我的卡",
        f"卡号 {WALMART} 余额 500",  # a word in between: masking keeps the digits apart
        "订单 CB00000012 金额 500",
        "13812345678 135790",  # not a card number
        "",
    ],
)
def test_a_number_alone_or_with_words_is_not_a_card_line(text: str) -> None:
    assert not holds_card_line(text, CATALOG)


@given(st.text(max_size=300))
def test_any_text_can_be_checked_for_a_card_line(text: str) -> None:
    holds_card_line(text, CATALOG)
