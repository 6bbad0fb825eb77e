"""SandboxCardIssuer answers like an issuer API: precise refusals, durable redemptions."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import re
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from bot.sandbox.issuer import HEADER, SandboxCardIssuer, load_cards
from core.catalog import default_catalog
from core.errors import CardNotFound, CardUnusable, WrongSecret
from core.model import CardStatus
from core.ports import CardIssuer, Redemption
from core.pricing import default_pricing, quote_card
from core.risk import RiskFacts, RiskPolicy, assess
from storage.crypto import AesGcmVault
from tests.fakes import FakeClock

SANDBOX = Path(__file__).resolve().parents[2] / "bot" / "sandbox"
CARDS = SANDBOX / "cards.csv"
CATALOG = default_catalog()
TODAY = date(2026, 11, 22)

# Rows of the shipped file, by the ids README.md gives them.
W1 = ("walmart", "2326081744029136", "135790")
W2 = ("walmart", "2326081744155261", "246802")
W3 = ("walmart", "2326081744273080", "112233")
W4 = ("walmart", "2326081744338610", "007007")
J1 = ("jd_ecard", "8810209311764526", "A3K97Q2MX5T8W4P6")
J2 = ("jd_ecard", "8810209311880348", "B7N2C4V6Z8L1H3J5")
J3 = ("jd_ecard", "8810209311905178", "E5R8T2Y6U9P3K7M4")
C1 = ("carrefour", "8600520177361904820", "357913")
R1 = ("rtmart", "2801527364099", None)
R2 = ("rtmart", "2801527364181", None)
M1 = ("wumart", "2901448120368", None)
M3 = ("wumart", "2901448120542", None)
P3 = ("sinopec", "1000111300245180527", "369369")
Q2 = ("petrochina", "9030270018463087", "258369")
X2 = ("ctrip", "7710460258422650", "790246")

# The sandbox keys its state with the vault's keyed fingerprints.
FINGERPRINT = AesGcmVault([bytes(32)]).fingerprint


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 11, 22, 6, 0, tzinfo=UTC))


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "sandbox" / "issuer.sqlite3"


@pytest.fixture
def issuer(state: Path, clock: FakeClock) -> SandboxCardIssuer:
    return SandboxCardIssuer(CARDS, state, CATALOG, clock, fingerprint=FINGERPRINT)


# --------------------------------------------------------------------------------------------
# The shipped file


def test_the_sandbox_issuer_is_a_card_issuer(issuer: SandboxCardIssuer) -> None:
    port: CardIssuer = issuer
    assert port is issuer


def test_the_shipped_file_has_the_stable_header() -> None:
    assert CARDS.read_text(encoding="utf-8").splitlines()[0] == ",".join(HEADER)
    assert ",".join(HEADER) == "brand,number,secret,face_value_fen,balance_fen,expires,status"


def test_every_shipped_card_fits_its_brand_and_secret_rules() -> None:
    cards = load_cards(CARDS, CATALOG)
    assert len(cards) >= 20
    for card in cards.values():
        brand = CATALOG.match(card.number)
        assert brand.code == card.brand
        if brand.has_secret:
            assert CATALOG.validate_secret(brand, card.secret) == card.secret
        else:
            assert card.secret == ""


def test_the_shipped_file_covers_every_case() -> None:
    cards = list(load_cards(CARDS, CATALOG).values())
    today = date(2026, 11, 22)
    assert any(c.status == "used" for c in cards)
    assert any(c.status == "frozen" for c in cards)
    assert any(c.expires < today for c in cards)
    assert any(0 < c.balance_fen < c.face_value_fen for c in cards)
    assert any(c.secret == "" and c.status == "active" for c in cards)
    assert any(c.secret != "" and c.status == "active" for c in cards)
    assert len({c.brand for c in cards}) >= 10


README_ROW = re.compile(
    r"^\| (?P<id>[A-Z]\d) \| .*?`(?P<brand>[a-z_]+)` \| `(?P<number>\d+)` \| "
    r"(?P<secret>`[^`]*`|—) \| [\d,.]+ \| [\d,.]+ \| (?P<expires>[\d-]+) \| "
    r"(?P<status>\w+) \| .* \| (?P<payout>[^|]+) \|$"
)


def readme_rows() -> list[dict[str, str]]:
    text = (SANDBOX / "README.md").read_text(encoding="utf-8")
    return [m.groupdict() for line in text.splitlines() if (m := README_ROW.match(line))]


def test_the_readme_documents_every_card_row_exactly() -> None:
    with CARDS.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    documented = {
        r["number"]: (
            r["brand"],
            r["secret"].strip("`").replace("—", ""),
            r["expires"],
            r["status"],
        )
        for r in readme_rows()
    }
    shipped = {r["number"]: (r["brand"], r["secret"], r["expires"], r["status"]) for r in rows}
    assert documented == shipped


def test_the_payouts_in_the_readme_are_what_the_default_rates_pay() -> None:
    pricing = default_pricing()
    cards = load_cards(CARDS, CATALOG)
    today = date(2026, 11, 22)
    for row in readme_rows():
        card = cards[row["number"]]
        amount = re.match(r"¥([\d,]+)\.(\d\d)", row["payout"])
        if amount is None:
            continue
        fen = int(amount.group(1).replace(",", "")) * 100 + int(amount.group(2))
        priced = quote_card(
            pricing, card.brand, card.face_value_fen, card.balance_fen, card.expires, today
        )
        assert priced.payout_fen == fen, row["id"]


# --------------------------------------------------------------------------------------------
# verify


async def test_a_valid_card_is_active_with_its_full_balance(issuer: SandboxCardIssuer) -> None:
    result = await issuer.verify(*W1)
    assert (result.status, result.face_value_fen, result.balance_fen) == (
        CardStatus.ACTIVE,
        50_000,
        50_000,
    )
    assert result.expires == date(2099, 12, 31) and result.used_at is None


async def test_a_partly_spent_card_reports_what_is_left(issuer: SandboxCardIssuer) -> None:
    result = await issuer.verify(*W2)
    assert (result.status, result.face_value_fen, result.balance_fen) == (
        CardStatus.ACTIVE,
        100_000,
        35_680,
    )


async def test_a_used_card_is_used_with_no_balance(issuer: SandboxCardIssuer) -> None:
    result = await issuer.verify(*W3)
    assert (result.status, result.balance_fen, result.used_at) == (CardStatus.USED, 0, None)


async def test_a_frozen_card_is_frozen(issuer: SandboxCardIssuer) -> None:
    assert (await issuer.verify(*J2)).status is CardStatus.FROZEN
    assert (await issuer.verify(*Q2)).status is CardStatus.FROZEN


async def test_a_card_past_its_expiry_date_is_expired(issuer: SandboxCardIssuer) -> None:
    result = await issuer.verify(*C1)
    assert result.status is CardStatus.EXPIRED and result.expires == date(2015, 6, 30)
    assert (await issuer.verify(*M3)).status is CardStatus.EXPIRED


async def test_expiry_follows_the_shanghai_calendar_day(state: Path) -> None:
    # 2099-01-20 16:30 UTC is already 2099-01-21 in Shanghai.
    clock = FakeClock(datetime(2099, 1, 20, 15, 59, tzinfo=UTC))
    issuer = SandboxCardIssuer(CARDS, state, CATALOG, clock, fingerprint=FINGERPRINT)
    assert (await issuer.verify(*J3)).status is CardStatus.ACTIVE
    clock.advance(minutes=1)
    assert (await issuer.verify(*J3)).status is CardStatus.EXPIRED


async def test_near_expiry_cards_lose_three_points_on_a_clock_set_close_to_their_date(
    state: Path,
) -> None:
    clock = FakeClock(datetime(2099, 1, 1, 6, 0, tzinfo=UTC))
    issuer = SandboxCardIssuer(CARDS, state, CATALOG, clock, fingerprint=FINGERPRINT)
    day = date(2099, 1, 1)
    pricing = default_pricing()
    for card, payout in ((J3, 18_100), (X2, 43_400)):
        result = await issuer.verify(*card)
        assert result.status is CardStatus.ACTIVE
        priced = quote_card(
            pricing, card[0], result.face_value_fen, result.balance_fen, result.expires, day
        )
        assert "quote.expiry_adjustment" in [line.key for line in priced.lines]
        assert priced.payout_fen == payout


async def test_the_big_fuel_card_alone_goes_to_daily_review(issuer: SandboxCardIssuer) -> None:
    result = await issuer.verify(*P3)
    face, balance = result.face_value_fen, result.balance_fen
    priced = quote_card(default_pricing(), "sinopec", face, balance, result.expires, TODAY)
    decision = assess(RiskFacts(1, priced.payout_fen, "fp", 0, 0, 0), RiskPolicy())
    assert decision.reasons == ("risk.daily_amount",)


async def test_an_unknown_number_is_not_found(issuer: SandboxCardIssuer) -> None:
    with pytest.raises(CardNotFound):
        await issuer.verify("walmart", "2326000000000004", "135790")


async def test_a_number_filed_under_another_brand_is_not_found(issuer: SandboxCardIssuer) -> None:
    with pytest.raises(CardNotFound):
        await issuer.verify("tmall", W1[1], W1[2])


async def test_a_wrong_secret_is_refused(issuer: SandboxCardIssuer) -> None:
    with pytest.raises(WrongSecret):
        await issuer.verify(W4[0], W4[1], "700700")


async def test_a_missing_secret_is_refused_for_a_brand_that_has_one(
    issuer: SandboxCardIssuer,
) -> None:
    with pytest.raises(WrongSecret):
        await issuer.verify(W1[0], W1[1], None)


async def test_the_secret_is_checked_before_the_status_is_revealed(
    issuer: SandboxCardIssuer,
) -> None:
    with pytest.raises(WrongSecret):
        await issuer.verify(W3[0], W3[1], "000000")


async def test_secrets_and_numbers_are_compared_after_normalisation(
    issuer: SandboxCardIssuer,
) -> None:
    result = await issuer.verify("jd_ecard", "8810 2093-1176 4526", "a3k9-7q2m-x5t8-w4p6")
    assert result.status is CardStatus.ACTIVE
    result = await issuer.verify("walmart", "２３２６０８１７４４３３８６１０", "007007")
    assert result.status is CardStatus.ACTIVE


async def test_a_brand_without_a_secret_ignores_any_secret_given(
    issuer: SandboxCardIssuer,
) -> None:
    assert (await issuer.verify(*R1)).status is CardStatus.ACTIVE
    assert (await issuer.verify(R1[0], R1[1], "whatever")).status is CardStatus.ACTIVE
    assert (await issuer.verify(*R2)).status is CardStatus.USED


# --------------------------------------------------------------------------------------------
# redeem


async def test_redeeming_the_whole_balance_makes_the_card_used_on_that_date(
    issuer: SandboxCardIssuer, clock: FakeClock
) -> None:
    redemption = await issuer.redeem(*W1, 50_000, "CBR0000000001")
    assert redemption == Redemption("CBR0000000001", 50_000, clock.now())
    result = await issuer.verify(*W1)
    assert (result.status, result.balance_fen, result.used_at) == (
        CardStatus.USED,
        0,
        clock.now(),
    )


async def test_the_same_reference_returns_the_same_redemption(
    issuer: SandboxCardIssuer, clock: FakeClock
) -> None:
    first = await issuer.redeem(*M1, 8_765, "ref-1")
    clock.advance(minutes=5)
    assert await issuer.redeem(*M1, 8_765, "ref-1") == first


async def test_a_new_reference_on_an_emptied_card_is_refused_as_used(
    issuer: SandboxCardIssuer,
) -> None:
    await issuer.redeem(*M1, 8_765, "ref-1")
    with pytest.raises(CardUnusable) as info:
        await issuer.redeem(*M1, 8_765, "ref-2")
    assert info.value.key == "error.card_used"
    assert info.value.params["used_on"] == "2026-11-22"


async def test_a_partial_redemption_leaves_the_rest_on_the_card(issuer: SandboxCardIssuer) -> None:
    await issuer.redeem(*W2, 10_000, "ref-1")
    result = await issuer.verify(*W2)
    assert (result.status, result.balance_fen) == (CardStatus.ACTIVE, 25_680)


async def test_redeeming_more_than_is_left_is_refused_with_the_balance(
    issuer: SandboxCardIssuer,
) -> None:
    with pytest.raises(CardUnusable) as info:
        await issuer.redeem(*W2, 35_681, "ref-1")
    assert info.value.key == "error.card_balance_changed"
    assert info.value.params["balance_fen"] == 35_680


@pytest.mark.parametrize(
    ("card", "key"),
    [(W3, "error.card_used"), (J2, "error.card_frozen"), (C1, "error.card_expired")],
)
async def test_an_unusable_card_cannot_be_redeemed(
    issuer: SandboxCardIssuer, card: tuple[str, str, str | None], key: str
) -> None:
    with pytest.raises(CardUnusable) as info:
        await issuer.redeem(*card, 100, "ref-1")
    assert info.value.key == key


async def test_redeeming_with_a_wrong_secret_is_refused(issuer: SandboxCardIssuer) -> None:
    with pytest.raises(WrongSecret):
        await issuer.redeem(W1[0], W1[1], "000000", 100, "ref-1")


async def test_reusing_a_reference_for_another_card_or_amount_is_a_programming_error(
    issuer: SandboxCardIssuer,
) -> None:
    await issuer.redeem(*W2, 1_000, "ref-1")
    with pytest.raises(ValueError, match="ref-1"):
        await issuer.redeem(*W2, 2_000, "ref-1")
    with pytest.raises(ValueError, match="ref-1"):
        await issuer.redeem(*W1, 1_000, "ref-1")


async def test_a_non_positive_amount_is_a_programming_error(issuer: SandboxCardIssuer) -> None:
    with pytest.raises(ValueError):
        await issuer.redeem(*W1, 0, "ref-1")


async def test_two_concurrent_redemptions_of_one_card_take_its_balance_once(
    issuer: SandboxCardIssuer,
) -> None:
    results = await asyncio.gather(
        *(issuer.redeem(*W1, 50_000, f"ref-{i}") for i in range(5)), return_exceptions=True
    )
    assert sum(isinstance(r, Redemption) for r in results) == 1
    assert all(isinstance(r, Redemption | CardUnusable) for r in results)


async def test_redemptions_survive_a_restart_and_are_shared_between_instances(
    state: Path, clock: FakeClock
) -> None:
    first = SandboxCardIssuer(CARDS, state, CATALOG, clock, fingerprint=FINGERPRINT)
    second = SandboxCardIssuer(CARDS, state, CATALOG, clock, fingerprint=FINGERPRINT)
    redemption = await first.redeem(*W1, 50_000, "ref-1")
    assert (await second.verify(*W1)).status is CardStatus.USED
    assert await second.redeem(*W1, 50_000, "ref-1") == redemption
    with pytest.raises(CardUnusable):
        await second.redeem(*W1, 50_000, "ref-2")
    restarted = SandboxCardIssuer(CARDS, state, CATALOG, FakeClock(), fingerprint=FINGERPRINT)
    assert (await restarted.verify(*W1)).used_at == redemption.redeemed_at


async def test_the_state_file_keeps_a_keyed_fingerprint_of_the_number_never_the_number(
    issuer: SandboxCardIssuer, state: Path
) -> None:
    await issuer.redeem(*W1, 50_000, "ref-1")
    raw = await asyncio.to_thread(state.read_bytes)
    assert W1[1].encode() not in raw
    assert hashlib.sha256(W1[1].encode()).hexdigest().encode() not in raw
    assert FINGERPRINT("sandbox.issuer.card", W1[1]).encode() in raw


# --------------------------------------------------------------------------------------------
# Malformed card files

GOOD_ROW = "walmart,2326081744029136,135790,50000,50000,2099-12-31,active"
J1_ROW = "jd_ecard,8810209311764526,A3K97Q2MX5T8W4P6,100000,100000,2099-12-31,active"


def write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "cards.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ("walmart,2326081744029136,135790,50000,50000,2099-12-31", "expected 7 fields"),
        ("costco,2326081744029136,135790,50000,50000,2099-12-31,active", "unknown brand"),
        ("walmart,2326081744029137,135790,50000,50000,2099-12-31,active", "does not fit walmart"),
        ("tmall,2326081744029136,135790,50000,50000,2099-12-31,active", "does not fit tmall"),
        ("walmart,2326081744029136,,50000,50000,2099-12-31,active", "need a secret"),
        ("walmart,2326081744029136,7007,50000,50000,2099-12-31,active", "pattern"),
        ("wumart,2901448120368,123456,20000,8765,2099-12-31,active", "have no secret"),
        ("walmart,2326081744029136,135790,500.00,50000,2099-12-31,active", "face_value_fen"),
        ("walmart,2326081744029136,135790,0,0,2099-12-31,active", "face_value_fen"),
        ("walmart,2326081744029136,135790,50000,50001,2099-12-31,active", "balance_fen"),
        ("walmart,2326081744029136,135790,50000,-1,2099-12-31,active", "balance_fen"),
        ("walmart,2326081744029136,135790,50000,50000,31/12/2099,active", "YYYY-MM-DD"),
        ("walmart,2326081744029136,135790,50000,50000,2099-02-30,active", "YYYY-MM-DD"),
        ("walmart,2326081744029136,135790,50000,50000,2099-12-31,expired", "status"),
    ],
)
def test_a_malformed_row_is_refused_naming_its_line(
    tmp_path: Path, row: str, problem: str
) -> None:
    path = write(tmp_path, ",".join(HEADER), J1_ROW, row)
    with pytest.raises(ValueError, match=rf"line 3: .*{re.escape(problem)}"):
        load_cards(path, CATALOG)


def test_a_wrong_header_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "brand,number,pin,face_value_fen,balance_fen,expires,status", GOOD_ROW)
    with pytest.raises(ValueError, match="line 1: the header must be"):
        load_cards(path, CATALOG)


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cards.csv"
    path.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="line 1"):
        load_cards(path, CATALOG)


def test_a_duplicate_number_is_refused_naming_both_lines(tmp_path: Path) -> None:
    again = "walmart,2326 0817 4402 9136,135790,50000,100,2099-12-31,active"
    path = write(tmp_path, ",".join(HEADER), GOOD_ROW, "", again)
    with pytest.raises(ValueError, match="line 4: number already listed on line 2"):
        load_cards(path, CATALOG)


def test_a_file_with_a_bom_blank_lines_and_spaced_numbers_loads(tmp_path: Path) -> None:
    path = tmp_path / "cards.csv"
    path.write_text(
        "\ufeff" + ",".join(HEADER) + "\n\nwalmart, 2326 0817 4402 9136 ,135790,50000,50000,"
        "2099-12-31,active\n",
        encoding="utf-8",
    )
    assert list(load_cards(path, CATALOG)) == ["2326081744029136"]


def test_a_malformed_file_stops_the_issuer_from_starting(tmp_path: Path, state: Path) -> None:
    path = write(tmp_path, ",".join(HEADER), "walmart,1,135790,50000,50000,2099-12-31,active")
    with pytest.raises(ValueError, match="line 2"):
        SandboxCardIssuer(path, state, CATALOG, FakeClock(), fingerprint=FINGERPRINT)
