"""The audit log's hash chain: canonical JSON, the hash of one event, and verification.

Each event's hash is the SHA-256 of the canonical JSON of the previous hash and the event's
fields, so changing, removing or reordering any event breaks every hash after it. The first
event chains to :data:`GENESIS_HASH`. ``cardbot audit verify`` runs :func:`verify_chain`.

The timestamp enters the hash as an ISO 8601 string in UTC (a naive datetime is taken to be
UTC), so a database that hands timestamps back without their zone still verifies.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, date, datetime
from enum import Enum
from typing import Any

from core.model import AuditEvent

GENESIS_HASH = "0" * 64


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _json_default(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not allowed in audit details")


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys, no spaces, UTF-8 text kept, dates and datetimes as ISO strings."""
    return json.dumps(
        obj,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_json_default,
    )


def chain_hash(
    prev_hash: str, at: datetime, actor: str, action: str, subject: str, details: dict[str, Any]
) -> str:
    """SHA-256 (hex) of the canonical JSON of the previous hash and one event's fields."""
    payload = {
        "prev": prev_hash,
        "at": _utc(at).isoformat(),
        "actor": actor,
        "action": action,
        "subject": subject,
        "details": details,
    }
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def seal(
    prev_hash: str,
    at: datetime,
    actor: str,
    action: str,
    subject: str,
    details: dict[str, Any],
    seq: int | None = None,
) -> AuditEvent:
    """A new event chained to ``prev_hash``, its hash computed."""
    return AuditEvent(
        at=at,
        actor=actor,
        action=action,
        subject=subject,
        details=details,
        prev_hash=prev_hash,
        hash=chain_hash(prev_hash, at, actor, action, subject, details),
        seq=seq,
    )


def verify_chain(events: Sequence[AuditEvent], start_hash: str = GENESIS_HASH) -> int | None:
    """The seq (or index, when seq is None) of the first broken event; None when intact."""
    expected_prev = start_hash
    for index, event in enumerate(events):
        recomputed = chain_hash(
            event.prev_hash, event.at, event.actor, event.action, event.subject, event.details
        )
        if event.prev_hash != expected_prev or event.hash != recomputed:
            return event.seq if event.seq is not None else index
        expected_prev = event.hash
    return None
