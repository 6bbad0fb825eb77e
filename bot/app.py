"""Wiring: builds the application from settings, in one place, at run time (never on import)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bot.sandbox.issuer import SandboxCardIssuer
from bot.sandbox.kyc import SandboxKycProvider
from bot.sandbox.payouts import SandboxPayoutGateway
from bot.settings import Settings
from core.catalog import default_catalog
from core.ports import CardIssuer, CardReader, Clock, KycProvider, PayoutGateway
from core.pricing import default_pricing
from core.risk import RiskPolicy, RiskRulesError, parse_policy
from core.sale import SaleDeps, SettlementPolicy
from handlers import broadcast as broadcast_commands
from handlers.desk import Desk
from handlers.engine import Conversation, Services
from handlers.notify import OutcomeNotices
from handlers.sell import sell_flow
from storage.crypto import load_vault
from storage.db import SqlAlchemyUnitOfWorkFactory, is_sqlite, is_transient
from storage.migrate import upgrade_async
from vision.reader import PyzbarCardReader

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

    async def close(self) -> None:
        """Release connections."""
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


def _warmed_reader() -> PyzbarCardReader:
    """The photo reader, its OCR models loading on a background thread (start-up goes on)."""
    reader = PyzbarCardReader()
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
) -> App:
    """Build cardbot from settings; tests pass fakes for the ports they control."""
    clock = clock or SystemClock()
    url = settings.resolved_database_url
    if migrate if migrate is not None else is_sqlite(url):
        # The embedded database migrates itself; a shared server is migrated by an operator
        # with `cardbot db upgrade` so that several processes never race to do it.
        await upgrade_async(url)
    catalog = default_catalog()
    vault = load_vault(
        settings.data_key.get_secret_value() if settings.data_key else None,
        settings.resolved_key_file,
        settings.data_keys_old.get_secret_value() if settings.data_keys_old else None,
        settings.fingerprint_key.get_secret_value() if settings.fingerprint_key else None,
    )
    settings.sandbox_dir.mkdir(parents=True, exist_ok=True)
    issuer = issuer or SandboxCardIssuer(
        settings.sandbox_cards, settings.sandbox_dir / "issuer.sqlite3", catalog, clock
    )
    gateway = gateway or SandboxPayoutGateway(
        settings.sandbox_dir / "payouts.sqlite3",
        clock,
        late_seconds=settings.sandbox_payout_late_seconds,
        delay_seconds=settings.sandbox_payout_delay_seconds,
    )
    uow_factory = SqlAlchemyUnitOfWorkFactory.from_url(url)
    services = Services(
        sale=SaleDeps(
            catalog=catalog,
            pricing=default_pricing(),
            risk=load_risk_policy(settings.risk_rules),
            issuer=issuer,
            gateway=gateway,
            vault=vault,
            clock=clock,
            kyc=kyc or SandboxKycProvider(),
            settlement=SettlementPolicy(settings.settlement, settings.settlement_batch_hour),
            listener=OutcomeNotices(),
        ),
        reader=reader or _warmed_reader(),
        uow_factory=uow_factory,
        desk=settings.desk_policy,
        transient=is_transient,
    )
    desk = Desk(
        admin_commands=broadcast_commands.ADMIN_COMMANDS,
        user_commands=broadcast_commands.USER_COMMANDS,
        admin_image=broadcast_commands.on_admin_image,
    )
    return App(settings, uow_factory, services, Conversation(services, sell_flow(), desk))
