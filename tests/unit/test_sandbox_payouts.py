"""SandboxPayoutGateway acts like a real transfer API: idempotent, durable, with failure modes."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.sandbox.payouts import ReferenceConflict, SandboxPayoutGateway
from core.errors import PayoutOutcomeUnknown
from core.model import PayoutMethod, PayoutState
from core.ports import PayoutGateway, PayoutRequest
from storage.crypto import AesGcmVault

# The sandbox keys its state with the vault's keyed fingerprints.
FINGERPRINT = AesGcmVault([bytes(32)]).fingerprint


class SteppingClock:
    def __init__(self) -> None:
        self.moment = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.moment

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> SteppingClock:
    return SteppingClock()


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "payouts.sqlite3"


@pytest.fixture
def gateway(state_path: Path, clock: SteppingClock) -> SandboxPayoutGateway:
    return SandboxPayoutGateway(state_path, clock, fingerprint=FINGERPRINT, late_seconds=30)


def request(
    account: str = "zhang.san@example.com",
    *,
    reference: str = "CB00000001-P1",
    method: PayoutMethod = PayoutMethod.ALIPAY,
    amount_fen: int = 9_250,
    holder_name: str = "张三",
) -> PayoutRequest:
    return PayoutRequest(
        reference=reference,
        method=method,
        account=account,
        holder_name=holder_name,
        amount_fen=amount_fen,
    )


def test_the_sandbox_implements_the_payout_port(gateway: SandboxPayoutGateway) -> None:
    port: PayoutGateway = gateway
    assert port is gateway


async def test_an_ordinary_account_is_paid_at_once_with_a_provider_transaction_id(
    gateway: SandboxPayoutGateway, clock: SteppingClock
) -> None:
    result = await gateway.transfer(request())

    assert result.state is PayoutState.SUCCEEDED
    assert result.provider_txn_id is not None and len(result.provider_txn_id) == 32
    assert result.completed_at == clock.now()
    assert (await gateway.query("CB00000001-P1")).state is PayoutState.SUCCEEDED


@pytest.mark.parametrize(
    ("account", "method", "reason"),
    [
        ("fail@example.com", PayoutMethod.ALIPAY, "PAYEE_NOT_EXIST"),
        ("13800000000", PayoutMethod.ALIPAY, "PAYEE_NOT_EXIST"),
        ("6222 0212 3456 0000", PayoutMethod.BANK, "PAYEE_NOT_EXIST"),
        ("o_frozen_Xy12", PayoutMethod.WECHAT, "ACCOUNT_FROZEN"),
        ("6222021234560001", PayoutMethod.BANK, "ACCOUNT_FROZEN"),
    ],
)
async def test_a_failing_account_is_refused_with_the_providers_reason(
    gateway: SandboxPayoutGateway, account: str, method: PayoutMethod, reason: str
) -> None:
    result = await gateway.transfer(request(account, method=method))

    assert (result.state, result.failure_reason) == (PayoutState.FAILED, reason)
    assert result.provider_txn_id is None
    assert (await gateway.query("CB00000001-P1")).failure_reason == reason


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"amount_fen": 0}, "INVALID_AMOUNT"),
        ({"amount_fen": -5}, "INVALID_AMOUNT"),
        ({"account": "   "}, "INVALID_ACCOUNT"),
        ({"method": PayoutMethod.BANK, "account": "62220212345"}, "INVALID_BANK_CARD"),
        ({"method": PayoutMethod.BANK, "account": "62220212345678901234"}, "INVALID_BANK_CARD"),
        ({"method": PayoutMethod.BANK, "account": "6222-abcd-1234-5678"}, "INVALID_BANK_CARD"),
        (
            {
                "method": PayoutMethod.WECHAT,
                "account": "oUser1",
                "amount_fen": 200_000,
                "holder_name": " ",
            },
            "USER_NAME_REQUIRED",
        ),
    ],
)
async def test_a_request_the_provider_would_reject_fails_with_a_reason_code(
    gateway: SandboxPayoutGateway, changes: dict[str, object], reason: str
) -> None:
    fields: dict[str, object] = {
        "reference": "R-1",
        "method": PayoutMethod.ALIPAY,
        "account": "zhang.san@example.com",
        "holder_name": "张三",
        "amount_fen": 100,
    }
    fields.update(changes)
    result = await gateway.transfer(PayoutRequest(**fields))  # type: ignore[arg-type]

    assert (result.state, result.failure_reason) == (PayoutState.FAILED, reason)


async def test_an_unknown_method_fails_instead_of_raising(gateway: SandboxPayoutGateway) -> None:
    bogus = PayoutRequest("R-1", "paypal", "a@example.com", "张三", 100)  # type: ignore[arg-type]

    result = await gateway.transfer(bogus)

    assert (result.state, result.failure_reason) == (PayoutState.FAILED, "INVALID_METHOD")


async def test_wechat_pays_large_amounts_when_the_holder_name_is_given(
    gateway: SandboxPayoutGateway,
) -> None:
    big = request("oUser1", method=PayoutMethod.WECHAT, amount_fen=500_000, holder_name="张三")

    assert (await gateway.transfer(big)).state is PayoutState.SUCCEEDED


async def test_a_bank_card_written_in_groups_is_accepted(gateway: SandboxPayoutGateway) -> None:
    card = request("6222 0212 3456 7890 123", method=PayoutMethod.BANK)

    assert (await gateway.transfer(card)).state is PayoutState.SUCCEEDED


async def test_the_same_request_twice_moves_money_once(gateway: SandboxPayoutGateway) -> None:
    first = await gateway.transfer(request())
    second = await gateway.transfer(request())

    assert second == first
    assert len(gateway.transfers()) == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"amount_fen": 9_251},
        {"account": "li.si@example.com"},
        {"method": PayoutMethod.WECHAT},
        {"holder_name": "李四"},
    ],
)
async def test_the_same_reference_with_a_different_payload_is_refused(
    gateway: SandboxPayoutGateway, changes: dict[str, object]
) -> None:
    await gateway.transfer(request())

    with pytest.raises(ReferenceConflict, match="PAYMENT_INFO_INCONSISTENCY"):
        await gateway.transfer(request(**changes))  # type: ignore[arg-type]
    assert [t["amount_fen"] for t in gateway.transfers()] == [9_250]


async def test_a_reference_conflict_is_a_value_error() -> None:
    assert issubclass(ReferenceConflict, ValueError)


async def test_a_timeout_after_execution_is_found_paid_by_query_and_not_paid_again(
    gateway: SandboxPayoutGateway,
) -> None:
    with pytest.raises(PayoutOutcomeUnknown):
        await gateway.transfer(request("timeout@example.com"))

    assert (await gateway.query("CB00000001-P1")).state is PayoutState.SUCCEEDED
    retry = await gateway.transfer(request("timeout@example.com"))
    assert retry.state is PayoutState.SUCCEEDED
    assert len(gateway.transfers()) == 1


async def test_a_phone_ending_9999_times_out_after_execution(
    gateway: SandboxPayoutGateway,
) -> None:
    with pytest.raises(PayoutOutcomeUnknown):
        await gateway.transfer(request("+86 138-0000-9999"))

    assert [t["state"] for t in gateway.transfers()] == [PayoutState.SUCCEEDED]


async def test_a_lost_request_is_unknown_to_the_provider_and_the_retry_pays_once(
    gateway: SandboxPayoutGateway,
) -> None:
    with pytest.raises(PayoutOutcomeUnknown):
        await gateway.transfer(request("lost@example.com"))

    assert (await gateway.query("CB00000001-P1")).state is PayoutState.UNKNOWN
    assert gateway.transfers() == []

    retry = await gateway.transfer(request("lost@example.com"))
    again = await gateway.transfer(request("lost@example.com"))
    assert retry.state is PayoutState.SUCCEEDED
    assert again == retry
    assert len(gateway.transfers()) == 1


async def test_a_bank_card_ending_8888_is_lost_once(gateway: SandboxPayoutGateway) -> None:
    card = request("6222021234568888", method=PayoutMethod.BANK)
    with pytest.raises(PayoutOutcomeUnknown):
        await gateway.transfer(card)

    assert (await gateway.transfer(card)).state is PayoutState.SUCCEEDED


async def test_a_late_transfer_is_processing_until_late_seconds_pass(
    gateway: SandboxPayoutGateway, clock: SteppingClock
) -> None:
    accepted = await gateway.transfer(request("late@example.com"))
    assert accepted.state is PayoutState.PROCESSING
    assert accepted.completed_at is None

    clock.advance(29)
    assert (await gateway.query("CB00000001-P1")).state is PayoutState.PROCESSING

    clock.advance(1)
    done = await gateway.query("CB00000001-P1")
    assert done.state is PayoutState.SUCCEEDED
    assert done.provider_txn_id == accepted.provider_txn_id
    assert done.completed_at == clock.now()
    assert (await gateway.transfer(request("late@example.com"))).state is PayoutState.SUCCEEDED
    assert [t["state"] for t in gateway.transfers()] == [PayoutState.SUCCEEDED]


async def test_an_unknown_reference_is_unknown_not_failed(gateway: SandboxPayoutGateway) -> None:
    result = await gateway.query("never-sent")

    assert (result.reference, result.state) == ("never-sent", PayoutState.UNKNOWN)


async def test_an_empty_reference_is_a_programming_error(gateway: SandboxPayoutGateway) -> None:
    with pytest.raises(ValueError, match="reference"):
        await gateway.transfer(request(reference=""))


async def test_state_survives_a_new_gateway_on_the_same_file(
    state_path: Path, clock: SteppingClock
) -> None:
    before = SandboxPayoutGateway(state_path, clock, fingerprint=FINGERPRINT, late_seconds=30)
    paid = await before.transfer(request())
    with pytest.raises(PayoutOutcomeUnknown):
        await before.transfer(request("lost@example.com", reference="R-lost"))
    await before.transfer(request("late@example.com", reference="R-late"))

    after = SandboxPayoutGateway(state_path, clock, fingerprint=FINGERPRINT, late_seconds=30)
    assert await after.query("CB00000001-P1") == paid
    assert await after.transfer(request()) == paid
    # The loss was remembered, so the retry after the restart executes.
    retried = await after.transfer(request("lost@example.com", reference="R-lost"))
    assert retried.state is PayoutState.SUCCEEDED
    clock.advance(30)
    assert (await after.query("R-late")).state is PayoutState.SUCCEEDED
    assert len(after.transfers()) == 3


async def test_concurrent_transfers_of_one_reference_execute_once(
    gateway: SandboxPayoutGateway,
) -> None:
    results = await asyncio.gather(*(gateway.transfer(request()) for _ in range(10)))

    assert {r.provider_txn_id for r in results} == {results[0].provider_txn_id}
    assert len(gateway.transfers()) == 1


async def test_concurrent_retries_of_a_lost_request_execute_once(
    gateway: SandboxPayoutGateway,
) -> None:
    outcomes = await asyncio.gather(
        *(gateway.transfer(request("lost@example.com")) for _ in range(10)),
        return_exceptions=True,
    )

    assert sum(isinstance(o, PayoutOutcomeUnknown) for o in outcomes) == 1
    assert len(gateway.transfers()) == 1


def test_concurrent_processes_with_one_reference_execute_once(state_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from datetime import UTC, datetime
        from pathlib import Path
        from bot.sandbox.payouts import SandboxPayoutGateway
        from core.model import PayoutMethod
        from core.ports import PayoutRequest

        class Clock:
            def now(self):
                return datetime.now(UTC)

        from storage.crypto import AesGcmVault
        gateway = SandboxPayoutGateway(
            Path({str(state_path)!r}), Clock(), fingerprint=AesGcmVault([bytes(32)]).fingerprint
        )
        req = PayoutRequest("P-1", PayoutMethod.ALIPAY, "a@example.com", "张三", 100)
        print(asyncio.run(gateway.transfer(req)).provider_txn_id)
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]

    assert all(p.returncode == 0 for p in procs), [err.decode() for _, err in outputs]
    assert len({out.strip() for out, _ in outputs}) == 1
    assert (
        len(SandboxPayoutGateway(state_path, SteppingClock(), fingerprint=FINGERPRINT).transfers())
        == 1
    )


async def test_the_state_file_holds_no_account_in_the_clear(
    gateway: SandboxPayoutGateway, state_path: Path
) -> None:
    await gateway.transfer(request("6222021234567890123", method=PayoutMethod.BANK))

    with contextlib.closing(sqlite3.connect(state_path)) as conn:
        dump = "\n".join(conn.iterdump())
    assert "6222021234567890123" not in dump
    assert "张三" not in dump


async def test_a_naive_clock_is_refused(state_path: Path) -> None:
    class NaiveClock:
        def now(self) -> datetime:
            return datetime(2025, 3, 1, 9, 0)

    with pytest.raises(ValueError, match="timezone-aware"):
        await SandboxPayoutGateway(state_path, NaiveClock(), fingerprint=FINGERPRINT).transfer(
            request()
        )
