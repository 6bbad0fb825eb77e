"""A batch of cards typed or pasted as text: one card per line, ``number secret`` (or
``number,secret`` — CSV pasted from a spreadsheet), up to :data:`MAX_CARDS`. Each line is
checked on its own: the good ones go on, every bad one is reported with its line number and a
reason the user can act on, so one typo never sinks the other 99 cards.

Pure: the catalog decides what a number and a secret look like; nothing here talks to an
issuer (verification happens card by card afterwards).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.catalog import Brand, Catalog, normalize_card_number
from core.errors import CardNotRecognised, WrongSecret

MAX_CARDS = 100
_SPLIT = re.compile(r"[\s,;，；\t]+")
_HEADER_WORDS = {"number", "card", "卡号", "secret", "卡密", "password", "pin"}


@dataclass(frozen=True)
class BatchLine:
    """A card from line ``line``: its brand, number and (normalised) secret."""

    line: int
    brand: Brand
    number: str
    secret: str | None


@dataclass(frozen=True)
class BatchProblem:
    """Why line ``line`` was not taken: a message key and its parameters."""

    line: int
    key: str
    params: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ParsedBatch:
    cards: tuple[BatchLine, ...]
    problems: tuple[BatchProblem, ...]


def looks_like_a_batch(text: str) -> bool:
    """Several non-empty lines: the user is pasting a list, not typing one card."""
    return sum(1 for line in text.splitlines() if line.strip()) >= 2


def parse_batch(text: str, catalog: Catalog) -> ParsedBatch:
    """Check every line; at most MAX_CARDS cards are taken, the rest reported."""
    cards: list[BatchLine] = []
    problems: list[BatchProblem] = []
    seen: dict[str, int] = {}
    for number_of_line, raw in enumerate(text.splitlines(), start=1):
        fields = [f for f in _SPLIT.split(raw.strip()) if f]
        if not fields:
            continue
        if number_of_line == 1 and fields[0].lower() in _HEADER_WORDS:
            continue  # a spreadsheet's header row
        if len(cards) >= MAX_CARDS:
            problems.append(BatchProblem(number_of_line, "batch.too_many", (("max", "100"),)))
            continue
        problem, card = _one_line(number_of_line, fields, catalog)
        if problem is not None:
            problems.append(problem)
            continue
        assert card is not None
        if card.number in seen:
            problems.append(
                BatchProblem(
                    number_of_line, "batch.duplicate", (("first", str(seen[card.number])),)
                )
            )
            continue
        seen[card.number] = number_of_line
        cards.append(card)
    return ParsedBatch(tuple(cards), tuple(problems))


def _one_line(
    line: int, fields: list[str], catalog: Catalog
) -> tuple[BatchProblem | None, BatchLine | None]:
    # A number may have been typed in groups ("2326 0817 4402 9136 135790"): try the longest
    # run of leading fields that makes a card number, the rest is the secret.
    for cut in range(len(fields), 0, -1):
        number = normalize_card_number("".join(fields[:cut]))
        try:
            brand = catalog.match(number)
        except CardNotRecognised:
            continue
        rest = "".join(fields[cut:])
        if not brand.has_secret:
            if rest:
                return BatchProblem(line, "batch.no_secret_expected"), None
            return None, BatchLine(line, brand, number, None)
        if not rest:
            return BatchProblem(line, "batch.secret_missing"), None
        try:
            secret = catalog.validate_secret(brand, rest)
        except WrongSecret:
            return BatchProblem(line, "batch.secret_format"), None
        return None, BatchLine(line, brand, number, secret)
    return BatchProblem(line, "batch.not_a_card"), None
