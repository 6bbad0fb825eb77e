"""Wiring: builds the application from settings, in one place, at run time (never on import)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.exc import DBAPIError

from bot.files import keep_private
from bot.sandbox.issuer import SandboxCardIssuer
from bot.sandbox.kyc import SandboxKycProvider
from bot.sandbox.payouts import SandboxPayoutGateway
from bot.settings import Settings
from core.catalog import Catalog, default_catalog
from core.ports import CardIssuer, CardReader, Clock, KycProvider, PayoutGateway
from core.pricing import default_pricing
from core.risk import RiskPolicy, RiskRulesError, parse_policy
from core.sale import SaleDeps, SettlementPolicy
from handlers import broadcast as broadcast_commands
from handlers.desk import Desk
from handlers.engine import Conversation, Services
from handlers.notify import OutcomeNotices
from handlers.sell import sell_flow
from storage.db import (
    DatabaseUnreachable,
    SqlAlchemyUnitOfWorkFactory,
    describe_database,
    is_sqlite,
    is_transient,
    probe_database,
)
from storage.keyring import CoordinatedVault, LeasePolicy
from storage.migrate import upgrade_async
from vision.reader import DEFAULT_BUDGET_MS, PyzbarCardReader

log = logging.getLogger(__name__)


class SystemClock:
    """Wall-clock time in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass
class App:
    """A running cardbot: storage, ports, and the conversation over them."""

    settings: Settings
    uow_factory: SqlAlchemyUnitOfWorkFactory
    services: Services
    conversation: Conversation
    keyring: CoordinatedVault | None = None  # the vault in services, coordinating key rotation

    async def close(self) -> None:
        """Leave the key holders and release connections."""
        if self.keyring is not None:
            await self.keyring.stop()
        await self.uow_factory.dispose()


class ConfigError(ValueError):
    """A configuration file cannot be used; the message says which and why."""


def load_risk_policy(path: Path) -> RiskPolicy:
    """The risk rules from a ``risk.toml`` file."""
    try:
        return parse_policy(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the risk rules {path}: {exc.strerror or exc}") from None
    except RiskRulesError as exc:
        raise ConfigError(f"risk rules {path}: {exc}") from None


def card_reader(catalog: Catalog, budget_ms: float = DEFAULT_BUDGET_MS) -> PyzbarCardReader:
    """The photo reader, searching a photo until it finds a code the catalog takes for a card
    number: a shop's QR code or a product barcode beside it is reported, not an answer."""
    return PyzbarCardReader(budget_ms=budget_ms, is_card_number=catalog.recognises)


def _warmed_reader(catalog: Catalog) -> PyzbarCardReader:
    """The photo reader, its OCR models loading on a background thread (start-up goes on)."""
    reader = card_reader(catalog)
    reader.warm_up_in_background()
    return reader


async def build_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    reader: CardReader | None = None,
    issuer: CardIssuer | None = None,
    gateway: PayoutGateway | None = None,
    kyc: KycProvider | None = None,
    migrate: bool | None = None,
    key_lease: LeasePolicy | None = None,
    database_must_exist: bool = False,
) -> App:
    """Build cardbot from settings; tests pass fakes for the ports they control (and a
    ``key_lease`` with their own clocks). ``database_must_exist``: refuse a database that is
    not there yet instead of creating it (``cardbot chat``)."""
    from bot.keys import vault_for

    clock = clock or SystemClock()
    url = settings.resolved_database_url
    catalog = default_catalog()
    # A bad rules file is named before the database is touched; a missing or unreachable
    # database before a key file is created for it.
    risk = load_risk_policy(settings.risk_rules)
    await probe_database(url, must_exist=database_must_exist)
    keep_private(settings.var_dir, url)
    sealing = vault_for(settings)
    if migrate if migrate is not None else is_sqlite(url):
        # The embedded database migrates itself; a shared server is migrated by an operator
        # with `cardbot db upgrade` so that several processes never race to do it. A revision
        # that seals old plaintext (0009: names) seals it with this key.
        await upgrade_async(url, vault=sealing)
    uow_factory = SqlAlchemyUnitOfWorkFactory.from_url(url)
    vault = CoordinatedVault(lambda: vault_for(settings), uow_factory, key_lease)
    try:
        await vault.start()
    except (DBAPIError, OSError) as exc:
        await uow_factory.dispose()
        raise DatabaseUnreachable(
            f"cannot register with the database at {describe_database(url)}: {type(exc).__name__}"
        ) from None
    except BaseException:
        await uow_factory.dispose()
        raise
    settings.sandbox_dir.mkdir(parents=True, exist_ok=True)
    issuer = issuer or SandboxCardIssuer(
        settings.sandbox_cards,
        settings.sandbox_dir / "issuer.sqlite3",
        catalog,
        clock,
        fingerprint=vault.fingerprint,
    )
    gateway = gateway or SandboxPayoutGateway(
        settings.sandbox_dir / "payouts.sqlite3",
        clock,
        fingerprint=vault.fingerprint,
        late_seconds=settings.sandbox_payout_late_seconds,
        delay_seconds=settings.sandbox_payout_delay_seconds,
    )
    services = Services(
        sale=SaleDeps(
            catalog=catalog,
            pricing=default_pricing(),
            risk=risk,
            issuer=issuer,
            gateway=gateway,
            vault=vault,
            clock=clock,
            kyc=kyc or SandboxKycProvider(),
            settlement=SettlementPolicy(settings.settlement, settings.settlement_batch_hour),
            listener=OutcomeNotices(),
        ),
        reader=reader or _warmed_reader(catalog),
        uow_factory=uow_factory,
        desk=settings.desk_policy,
        transient=is_transient,
    )
    desk = Desk(
        admin_commands=broadcast_commands.ADMIN_COMMANDS,
        user_commands=broadcast_commands.USER_COMMANDS,
        admin_image=broadcast_commands.on_admin_image,
    )
    conversation = Conversation(services, sell_flow(), desk)
    return App(settings, uow_factory, services, conversation, keyring=vault)
