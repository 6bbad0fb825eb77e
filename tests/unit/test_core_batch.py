"""Parsing a pasted list of cards: each line checked on its own, every bad one reported."""

from __future__ import annotations

from hypothesis import given
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


@given(st.lists(st.text(max_size=40), max_size=30))
def test_any_text_parses_without_raising_and_every_line_is_accounted_for(
    lines: list[str],
) -> None:
    text = "\n".join(lines)
    parsed = parse_batch(text, CATALOG)
    taken = {c.line for c in parsed.cards} | {p.line for p in parsed.problems}
    non_blank = {n for n, line in enumerate(text.splitlines(), start=1) if line.strip()}
    assert taken <= non_blank
    # Only a header row (first line) may be left without a verdict.
    assert len(non_blank - taken) <= 1
