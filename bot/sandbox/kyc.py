"""The sandbox real-name service: a bank-card four-element check (name, resident ID, phone,
bank card) with documented, deterministic answers — a real code path chosen by settings
(``CARDBOT_KYC=sandbox``, the default), like the sandbox issuer and payout provider.

Answers, by the card number (after the format and Luhn checks):

* not 12–19 digits, or failing Luhn → ``card_invalid``
* ending in ``0000`` → ``name_mismatch`` (the card is someone else's)
* ending in ``1111`` → ``phone_mismatch`` (the card's phone is another one)
* ending in ``2222`` → ``card_unknown`` (the bank does not know the card)
* ending in ``9999`` → the service times out (``KycUnavailable``)
* anything else → matched

Each check takes ``delay_seconds`` (default 0) to answer, like a remote service.
"""

from __future__ import annotations

import asyncio

from core.errors import KycUnavailable
from core.identity import luhn_valid
from core.ports import BankCardCheck

_MISMATCH_BY_ENDING = {"0000": "name_mismatch", "1111": "phone_mismatch", "2222": "card_unknown"}


class SandboxKycProvider:
    """Answers four-element checks by the rules above."""

    def __init__(self, delay_seconds: float = 0.0) -> None:
        self.delay_seconds = delay_seconds
        self.checks = 0

    async def verify_bank_card(
        self, name: str, id_number: str, phone: str, card_number: str
    ) -> BankCardCheck:
        self.checks += 1
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        if not name or not id_number or not phone:
            return BankCardCheck(False, "name_mismatch")
        digits = card_number.strip()
        if not (digits.isascii() and digits.isdigit() and 12 <= len(digits) <= 19):
            return BankCardCheck(False, "card_invalid")
        if not luhn_valid(digits):
            return BankCardCheck(False, "card_invalid")
        if digits.endswith("9999"):
            raise KycUnavailable("sandbox real-name service timed out")
        reason = _MISMATCH_BY_ENDING.get(digits[-4:])
        return BankCardCheck(reason is None, reason)
