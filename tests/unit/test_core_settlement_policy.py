"""When payouts go out: at once (T+0) or in the next Asia/Shanghai day's batch (T+1)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from core.sale import SettlementPolicy


def test_t0_pays_at_once() -> None:
    assert SettlementPolicy().release_at(datetime(2026, 11, 22, 6, tzinfo=UTC)) is None


@pytest.mark.parametrize(
    ("reserved", "released"),
    [
        # 23:59 and 00:01 in Shanghai are on different days: different batches.
        (datetime(2026, 11, 22, 15, 59, tzinfo=UTC), datetime(2026, 11, 23, 2, 0, tzinfo=UTC)),
        (datetime(2026, 11, 22, 16, 1, tzinfo=UTC), datetime(2026, 11, 24, 2, 0, tzinfo=UTC)),
        # The last day of a month and of a year roll over.
        (datetime(2026, 12, 31, 6, 0, tzinfo=UTC), datetime(2027, 1, 1, 2, 0, tzinfo=UTC)),
    ],
)
def test_t1_waits_for_the_next_shanghai_day_at_the_batch_hour(
    reserved: datetime, released: datetime
) -> None:
    assert SettlementPolicy("t1", batch_hour=10).release_at(reserved) == released


def test_a_bad_mode_or_hour_is_refused() -> None:
    with pytest.raises(ValueError, match="t0 or t1"):
        SettlementPolicy("t2")
    with pytest.raises(ValueError, match="hour"):
        SettlementPolicy("t1", batch_hour=24)
