"""How much one person may send before the bot stops taking it in: a token bucket per sender.

A person gets ``burst`` messages at once and ``per_minute`` more a minute after that. Beyond it,
the first message that does not fit is answered once with a calm "slow down"
(:attr:`Admission.SLOW_DOWN`); the rest of that streak is dropped on purpose
(:attr:`Admission.DROP`) until the bucket has room again. That keeps one person's flood from
taking the database, the workers and the send budget everyone else needs. Pure: time comes in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

# Buckets kept before the full (idle) ones are forgotten: bounds memory under many senders.
MAX_TRACKED = 10_000


class Admission(Enum):
    """What to do with one inbound message."""

    ADMIT = "admit"
    SLOW_DOWN = "slow_down"  # refused, and the sender is told once
    DROP = "drop"  # refused quietly: they were already told


@dataclass
class _Bucket:
    tokens: float
    at: float
    told: bool = False


@dataclass
class InboundAllowance:
    """Token buckets per sender key; ``now`` is seconds on any monotonic clock."""

    burst: int = 20
    per_minute: float = 30.0
    _buckets: dict[str, _Bucket] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.burst < 1 or self.per_minute <= 0:
            raise ValueError("the inbound allowance must be positive")

    def admit(self, key: str, now: float) -> Admission:
        """Take one message of ``key`` at ``now``: admit it, or refuse it (telling them once)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED:
                self._forget_idle(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        else:
            elapsed = max(0.0, now - bucket.at)
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.per_minute / 60)
            bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            bucket.told = False
            return Admission.ADMIT
        if bucket.told:
            return Admission.DROP
        bucket.told = True
        return Admission.SLOW_DOWN

    def _forget_idle(self, now: float) -> None:
        refill = self.per_minute / 60
        for key, bucket in list(self._buckets.items()):
            if bucket.tokens + max(0.0, now - bucket.at) * refill >= self.burst:
                del self._buckets[key]
        if len(self._buckets) >= MAX_TRACKED:  # all busy: forget the oldest
            oldest = sorted(self._buckets, key=lambda k: self._buckets[k].at)
            for key in oldest[: MAX_TRACKED // 10]:
                del self._buckets[key]
