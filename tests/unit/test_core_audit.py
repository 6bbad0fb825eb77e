"""The audit log's hash chain."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.audit import GENESIS_HASH, canonical_json, chain_hash, seal, verify_chain
from core.model import AuditEvent, OrderStatus

T0 = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)


def build_chain(n: int, first_seq: int | None = 1) -> list[AuditEvent]:
    events: list[AuditEvent] = []
    prev = GENESIS_HASH
    for i in range(n):
        event = seal(
            prev,
            T0 + timedelta(seconds=i),
            f"user:{i % 3}",
            "order.accepted",
            f"order:{i}",
            {"payout_fen": 1_000 * i, "card": "2326 **** **** 9136"},
            seq=None if first_seq is None else first_seq + i,
        )
        events.append(event)
        prev = event.hash
    return events


def test_genesis_hash_is_sixty_four_zeros() -> None:
    assert GENESIS_HASH == "0" * 64


def test_canonical_json_sorts_keys_drops_spaces_and_keeps_chinese() -> None:
    assert canonical_json({"b": 1, "a": [1, 2], "名": "张三"}) == '{"a":[1,2],"b":1,"名":"张三"}'


def test_canonical_json_writes_dates_and_datetimes_as_iso_strings() -> None:
    assert canonical_json({"at": T0, "day": date(2099, 12, 31)}) == (
        '{"at":"2026-11-22T06:00:00+00:00","day":"2099-12-31"}'
    )


def test_canonical_json_writes_enums_as_their_values() -> None:
    assert canonical_json({"status": OrderStatus.SETTLED}) == '{"status":"settled"}'


def test_canonical_json_refuses_values_it_cannot_write_faithfully() -> None:
    with pytest.raises(TypeError):
        canonical_json({"blob": b"\x00"})
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_chain_hash_is_sha256_of_the_canonical_event() -> None:
    details = {"payout_fen": 45_900, "card": "2326 **** **** 9136"}
    expected_json = (
        '{"action":"payout.succeeded","actor":"settlement","at":"2026-11-22T06:00:00+00:00",'
        '"details":{"card":"2326 **** **** 9136","payout_fen":45900},'
        f'"prev":"{GENESIS_HASH}","subject":"order:42"}}'
    )
    expected = hashlib.sha256(expected_json.encode()).hexdigest()
    got = chain_hash(GENESIS_HASH, T0, "settlement", "payout.succeeded", "order:42", details)
    assert got == expected


def test_chain_hash_reads_naive_and_other_zone_times_as_the_same_utc_instant() -> None:
    args: tuple[str, str, str, dict[str, Any]] = ("a", "b", "c", {})
    reference = chain_hash(GENESIS_HASH, T0, *args)
    assert chain_hash(GENESIS_HASH, T0.replace(tzinfo=None), *args) == reference
    beijing = T0.astimezone(timezone(timedelta(hours=8)))
    assert chain_hash(GENESIS_HASH, beijing, *args) == reference


def test_every_field_changes_the_hash() -> None:
    base = (GENESIS_HASH, T0, "actor", "action", "subject", {"k": 1})
    reference = chain_hash(*base)
    variants = [
        ("1" * 64, T0, "actor", "action", "subject", {"k": 1}),
        (GENESIS_HASH, T0 + timedelta(microseconds=1), "actor", "action", "subject", {"k": 1}),
        (GENESIS_HASH, T0, "actor2", "action", "subject", {"k": 1}),
        (GENESIS_HASH, T0, "actor", "action2", "subject", {"k": 1}),
        (GENESIS_HASH, T0, "actor", "action", "subject2", {"k": 1}),
        (GENESIS_HASH, T0, "actor", "action", "subject", {"k": 2}),
    ]
    assert all(chain_hash(*v) != reference for v in variants)


def test_an_intact_chain_verifies() -> None:
    assert verify_chain(build_chain(10)) is None
    assert verify_chain([]) is None


def test_a_changed_detail_is_reported_at_its_seq() -> None:
    events = build_chain(10)
    events[4] = replace(events[4], details={**events[4].details, "payout_fen": 1})
    assert verify_chain(events) == 5


def test_a_removed_event_is_reported_at_the_next_one() -> None:
    events = build_chain(10)
    del events[6]
    assert verify_chain(events) == 8


def test_swapped_events_are_reported() -> None:
    events = build_chain(10)
    events[2], events[3] = events[3], events[2]
    assert verify_chain(events) == 4


def test_a_rehashed_event_still_breaks_the_link_to_the_next() -> None:
    events = build_chain(10)
    forged = seal(
        events[3].prev_hash, events[3].at, "intruder", "order.accepted", "order:3", {}, seq=4
    )
    events[3] = forged
    assert verify_chain(events) == 5


def test_a_chain_not_starting_at_genesis_is_reported_at_its_first_event() -> None:
    events = build_chain(5)
    assert verify_chain(events[1:]) == 2
    assert verify_chain(events[1:], start_hash=events[0].hash) is None


def test_without_seq_the_index_is_reported() -> None:
    events = build_chain(5, first_seq=None)
    events[3] = replace(events[3], actor="someone else")
    assert verify_chain(events) == 3


@given(
    st.lists(
        st.tuples(
            st.text(max_size=10),
            st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3),
        ),
        min_size=1,
        max_size=8,
    ),
    st.data(),
)
def test_any_sealed_chain_verifies_and_any_tampered_field_is_found(
    entries: list[tuple[str, dict[str, Any]]], data: st.DataObject
) -> None:
    events: list[AuditEvent] = []
    prev = GENESIS_HASH
    for i, (actor, details) in enumerate(entries):
        event = seal(prev, T0 + timedelta(seconds=i), actor, "act", f"s:{i}", details, seq=i)
        events.append(event)
        prev = event.hash
    assert verify_chain(events) is None
    index = data.draw(st.integers(0, len(events) - 1))
    victim = events[index]
    tampered = data.draw(
        st.sampled_from(
            [
                replace(victim, actor=victim.actor + "x"),
                replace(victim, subject=victim.subject + "x"),
                replace(victim, at=victim.at + timedelta(seconds=1)),
                replace(victim, details={**victim.details, "tampered": True}),
                replace(victim, hash="f" * 64),
            ]
        )
    )
    events[index] = tampered
    assert verify_chain(events) == index
