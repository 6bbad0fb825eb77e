"""Settings from environment variables and an optional ``cardbot.toml`` (env wins)."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from core.tickets import DeskPolicy, SlaPolicy

DEFAULT_CARDS = Path(__file__).parent / "sandbox" / "cards.csv"
DEFAULT_RISK_RULES = Path(__file__).parent / "risk.toml"


def _env(*names: str) -> Any:
    return Field(None, validation_alias=AliasChoices(*names))


class Settings(BaseSettings):
    """Every knob cardbot reads; names as in DESIGN.md."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    var_dir: Path = Field(Path("var"), validation_alias=AliasChoices("CARDBOT_VAR_DIR", "var_dir"))
    database_url: str | None = _env("CARDBOT_DATABASE_URL", "database_url")
    data_key: SecretStr | None = _env("CARDBOT_DATA_KEY", "data_key")
    data_key_file: Path | None = _env("CARDBOT_DATA_KEY_FILE", "data_key_file")
    data_keys_old: SecretStr | None = _env("CARDBOT_DATA_KEYS_OLD", "data_keys_old")
    fingerprint_key: SecretStr | None = _env("CARDBOT_FINGERPRINT_KEY", "fingerprint_key")
    sandbox_cards: Path = Field(
        DEFAULT_CARDS, validation_alias=AliasChoices("CARDBOT_SANDBOX_CARDS", "sandbox_cards")
    )
    issuer: Literal["sandbox"] = Field(
        "sandbox", validation_alias=AliasChoices("CARDBOT_ISSUER", "issuer")
    )
    settlement: Literal["t0", "t1"] = Field(
        "t0", validation_alias=AliasChoices("CARDBOT_SETTLEMENT", "settlement")
    )
    settlement_batch_hour: int = Field(
        10,
        ge=0,
        le=23,
        validation_alias=AliasChoices("CARDBOT_SETTLEMENT_BATCH_HOUR", "settlement_batch_hour"),
    )
    kyc: Literal["sandbox"] = Field("sandbox", validation_alias=AliasChoices("CARDBOT_KYC", "kyc"))
    payout_gateway: Literal["sandbox"] = Field(
        "sandbox", validation_alias=AliasChoices("CARDBOT_PAYOUT_GATEWAY", "payout_gateway")
    )
    sandbox_payout_late_seconds: float = Field(
        30.0,
        validation_alias=AliasChoices(
            "CARDBOT_SANDBOX_PAYOUT_LATE_SECONDS", "sandbox_payout_late_seconds"
        ),
    )
    risk_rules: Path = Field(
        DEFAULT_RISK_RULES, validation_alias=AliasChoices("CARDBOT_RISK_RULES", "risk_rules")
    )
    staff: str = Field("", validation_alias=AliasChoices("CARDBOT_STAFF", "staff"))
    admins: str = Field("", validation_alias=AliasChoices("CARDBOT_ADMINS", "admins"))
    # --- desk: tickets and their timers ---
    staff_chats: str = Field(
        "", validation_alias=AliasChoices("CARDBOT_STAFF_CHATS", "staff_chats")
    )  # channel:chat entries also told of new tickets, e.g. a Telegram staff group
    sla_first_response_minutes: int = Field(
        15,
        ge=1,
        validation_alias=AliasChoices(
            "CARDBOT_SLA_FIRST_RESPONSE_MINUTES", "sla_first_response_minutes"
        ),
    )
    sla_resolution_minutes: int = Field(
        240,
        ge=1,
        validation_alias=AliasChoices("CARDBOT_SLA_RESOLUTION_MINUTES", "sla_resolution_minutes"),
    )
    sla_escalate_after_minutes: int = Field(
        15,
        ge=1,
        validation_alias=AliasChoices(
            "CARDBOT_SLA_ESCALATE_AFTER_MINUTES", "sla_escalate_after_minutes"
        ),
    )
    # --- end desk ---
    redis_url: str | None = _env("CARDBOT_REDIS_URL", "redis_url")
    # --- HTTP edges (bot/http.py): the server of WeChat pushes and the Telegram webhook ---
    # A connection must send a whole request head within this (slowloris), and its body
    # within the next; beyond this many open connections a new one gets 503.
    http_header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        validation_alias=AliasChoices(
            "CARDBOT_HTTP_HEADER_TIMEOUT_SECONDS", "http_header_timeout_seconds"
        ),
    )
    http_body_timeout_seconds: float = Field(
        10.0,
        gt=0,
        validation_alias=AliasChoices(
            "CARDBOT_HTTP_BODY_TIMEOUT_SECONDS", "http_body_timeout_seconds"
        ),
    )
    http_max_connections: int = Field(
        256,
        ge=1,
        validation_alias=AliasChoices("CARDBOT_HTTP_MAX_CONNECTIONS", "http_max_connections"),
    )
    # --- end HTTP edges ---
    log_level: str = Field("INFO", validation_alias=AliasChoices("CARDBOT_LOG_LEVEL", "log_level"))

    telegram_bot_token: SecretStr | None = _env("TELEGRAM_BOT_TOKEN", "telegram_bot_token")
    telegram_api_base: str = Field(
        "https://api.telegram.org",
        validation_alias=AliasChoices("TELEGRAM_API_BASE", "telegram_api_base"),
    )
    telegram_webhook_secret: SecretStr | None = _env(
        "TELEGRAM_WEBHOOK_SECRET", "telegram_webhook_secret"
    )
    wechat_token: SecretStr | None = _env("WECHAT_TOKEN", "wechat_token")
    wechat_app_id: str | None = _env("WECHAT_APP_ID", "wechat_app_id")
    wechat_app_secret: SecretStr | None = _env("WECHAT_APP_SECRET", "wechat_app_secret")
    # The official account's original id (原始ID, gh_…, under 设置与开发 → 基本配置 /
    # 公众号设置 → 注册信息): a push addressed (ToUserName) to any other account is refused.
    wechat_account_id: str | None = _env("WECHAT_ACCOUNT_ID", "wechat_account_id")
    wechat_aes_key: SecretStr | None = _env("WECHAT_AES_KEY", "wechat_aes_key")
    wechat_api_base: str = Field(
        "https://api.weixin.qq.com",
        validation_alias=AliasChoices("WECHAT_API_BASE", "wechat_api_base"),
    )
    # --- wechat (bot/wechat/) ---
    wechat_aes_key_previous: SecretStr | None = _env(
        "WECHAT_AES_KEY_PREVIOUS", "wechat_aes_key_previous"
    )
    # plaintext | compatible | safe; unset: safe when WECHAT_AES_KEY is set, else plaintext.
    wechat_mode: Literal["plaintext", "compatible", "safe"] | None = _env(
        "WECHAT_MODE", "wechat_mode"
    )
    # Notifications outside a conversation go as this template message when it is set (the
    # text goes in the data field WECHAT_TEMPLATE_FIELD), else as customer-service messages.
    wechat_template_id: str | None = _env("WECHAT_TEMPLATE_ID", "wechat_template_id")
    wechat_template_field: str = Field(
        "content", validation_alias=AliasChoices("WECHAT_TEMPLATE_FIELD", "wechat_template_field")
    )
    wechat_reply_deadline_seconds: float = Field(
        4.0,
        validation_alias=AliasChoices(
            "WECHAT_REPLY_DEADLINE_SECONDS", "wechat_reply_deadline_seconds"
        ),
    )
    wechat_api_timeout_seconds: float = Field(
        10.0,
        validation_alias=AliasChoices("WECHAT_API_TIMEOUT_SECONDS", "wechat_api_timeout_seconds"),
    )
    # Sandbox: every payout transfer takes this long (a slow provider), default none.
    sandbox_payout_delay_seconds: float = Field(
        0.0,
        validation_alias=AliasChoices(
            "CARDBOT_SANDBOX_PAYOUT_DELAY_SECONDS", "sandbox_payout_delay_seconds"
        ),
    )
    # --- end wechat ---
    # How often ``cardbot run`` resumes settlements nobody is making and announces decisions.
    unfinished_poll_seconds: float = Field(
        5.0,
        gt=0,
        validation_alias=AliasChoices(
            "CARDBOT_UNFINISHED_POLL_SECONDS", "unfinished_poll_seconds"
        ),
    )

    # --- telegram (bot/telegram/) ---
    # Outbound limits (one limiter per process): a chat gets this many messages at once, then
    # one a second; the bot sends at most TELEGRAM_MESSAGES_PER_SECOND messages a second overall.
    telegram_chat_burst: int = Field(
        3, ge=1, validation_alias=AliasChoices("TELEGRAM_CHAT_BURST", "telegram_chat_burst")
    )
    telegram_messages_per_second: int = Field(
        30,
        ge=1,
        validation_alias=AliasChoices(
            "TELEGRAM_MESSAGES_PER_SECOND", "telegram_messages_per_second"
        ),
    )
    # Inbound limits per sender: this many messages at once, then this many a minute; beyond
    # that one calm "slow down" and the rest is dropped on purpose (core/inflow.py).
    telegram_inbound_burst: int = Field(
        20,
        ge=1,
        validation_alias=AliasChoices("TELEGRAM_INBOUND_BURST", "telegram_inbound_burst"),
    )
    telegram_inbound_per_minute: float = Field(
        30.0,
        gt=0,
        validation_alias=AliasChoices(
            "TELEGRAM_INBOUND_PER_MINUTE", "telegram_inbound_per_minute"
        ),
    )
    # How long a process holds a chat's queued update without renewing it (a crashed process's
    # chats are taken over after this).
    inbound_lease_seconds: float = Field(
        10.0,
        gt=0,
        validation_alias=AliasChoices("CARDBOT_INBOUND_LEASE_SECONDS", "inbound_lease_seconds"),
    )
    # --- end telegram ---

    # --- broadcast (bot/broadcast.py) ---
    # Deliveries a channel claims ahead of sending (each is committed "sending" first, so a
    # crash leaves at most about this many plus those in flight as "unknown").
    broadcast_claim_ahead: int = Field(
        8,
        ge=1,
        validation_alias=AliasChoices("CARDBOT_BROADCAST_CLAIM_AHEAD", "broadcast_claim_ahead"),
    )
    # Telegram broadcast sends in flight at once (replies compete with this many for a slot).
    broadcast_concurrency: int = Field(
        4,
        ge=1,
        validation_alias=AliasChoices("CARDBOT_BROADCAST_CONCURRENCY", "broadcast_concurrency"),
    )
    # A delivery another worker left "sending" this long ago is reported unknown (never resent).
    broadcast_stale_seconds: float = Field(
        120.0,
        gt=0,
        validation_alias=AliasChoices(
            "CARDBOT_BROADCAST_STALE_SECONDS", "broadcast_stale_seconds"
        ),
    )
    # Tests and benchmarks only: the Telegram limiter's clock runs this many times faster (the
    # fake Bot API is told the same), so 30 messages/s become 30 x N real ones.
    time_scale: float = Field(
        1.0, gt=0, validation_alias=AliasChoices("CARDBOT_TIME_SCALE", "time_scale")
    )
    # The Telegram limiter's slack on its one-second window (FlowControl's ``margin``): 1 %
    # by default. Sends are dated by their answer, which already keeps the limit by Telegram's
    # clock; 5 % cost a broadcast 5 % of its allowed rate (bench/broadcast.py).
    telegram_flow_margin: float = Field(
        0.01,
        ge=0,
        le=1,
        validation_alias=AliasChoices("TELEGRAM_FLOW_MARGIN", "telegram_flow_margin"),
    )
    # --- end broadcast ---

    @field_validator("staff", "admins", "staff_chats")
    @classmethod
    def _roles(cls, value: str) -> str:
        for item in filter(None, (part.strip() for part in value.split(","))):
            channel, _, user = item.partition(":")
            if channel not in ("telegram", "wechat", "console") or not user:
                raise ValueError(f"expected channel:user_id entries, got {item!r}")
        return value

    @property
    def desk_policy(self) -> DeskPolicy:
        """Who works the desk (``channel:id`` actors) and its timers."""

        def actors(entries: str) -> list[str]:
            return [part.strip() for part in entries.split(",") if part.strip()]

        return DeskPolicy(
            staff=frozenset(actors(self.staff)),
            admins=frozenset(actors(self.admins)),
            alert_chats=tuple(actors(self.staff_chats)),
            sla=SlaPolicy(
                first_response=timedelta(minutes=self.sla_first_response_minutes),
                resolution=timedelta(minutes=self.sla_resolution_minutes),
                escalate_after=timedelta(minutes=self.sla_escalate_after_minutes),
            ),
        )

    @property
    def resolved_database_url(self) -> str:
        """The database URL: the setting, else an SQLite file under the var directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.var_dir / 'cardbot.db').as_posix()}"

    @property
    def resolved_key_file(self) -> Path:
        """Where the data key lives when CARDBOT_DATA_KEY is not set."""
        return self.data_key_file or self.var_dir / "data.key"

    @property
    def sandbox_dir(self) -> Path:
        """State of the sandbox issuer and payout provider (they stand for outside systems)."""
        return self.var_dir / "sandbox"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = Path(os.environ.get("CARDBOT_CONFIG", "cardbot.toml"))
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=toml_file),
        )
