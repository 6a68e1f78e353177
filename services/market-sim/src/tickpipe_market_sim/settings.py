"""The simulator's configuration, from SIM_* environment variables (plus LOG_LEVEL/LOG_FORMAT).

Every field names its environment variable explicitly (``validation_alias``) so that a
validation error, printed by ``tickpipe_common.settings.load_settings``, names the very
variable to fix (``SIM_PORT``), not the field. LOG_LEVEL and LOG_FORMAT are unprefixed
and mean what they mean in every tickpipe service. The common ``CommonSettings`` is not
mixed in because its HTTP_HOST/HTTP_PORT would be dead settings here: the simulator
serves /healthz, /readyz and /metrics on its WebSocket port.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tickpipe_common.logging import LogFormat
from tickpipe_market_sim.universe import DEFAULT_CRYPTO_SYMBOLS, DEFAULT_STOCK_SYMBOLS

SymbolList = Annotated[tuple[str, ...], NoDecode]


class SimSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=None,
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
        # Tests build settings by field name; the environment is read by alias.
        validate_by_name=True,
        validate_by_alias=True,
    )

    host: str = Field(
        "0.0.0.0",  # noqa: S104 - containers must listen on all interfaces
        validation_alias="SIM_HOST",
        description="Address to listen on (WebSocket and HTTP share the port).",
    )
    port: int = Field(
        8765, ge=0, le=65535, validation_alias="SIM_PORT", description="0 picks a free port."
    )
    seed: int = Field(42, validation_alias="SIM_SEED", description="Seed of every random walk.")
    rate_per_symbol: float = Field(
        5.0,
        gt=0,
        le=10_000,
        validation_alias="SIM_RATE_PER_SYMBOL",
        description="Events per second per symbol and subscribed channel.",
    )
    max_rate: float = Field(
        2000.0,
        gt=0,
        validation_alias="SIM_MAX_RATE",
        description="Cap on messages per second written to all clients together.",
    )
    max_events_per_symbol: int = Field(
        0,
        ge=0,
        validation_alias="SIM_MAX_EVENTS_PER_SYMBOL",
        description="Stop a symbol's kind after this many events (0: never).",
    )
    bar_interval: float = Field(
        60.0,
        gt=0,
        validation_alias="SIM_BAR_INTERVAL",
        description="Seconds of real time per bar window.",
    )
    stock_symbols: SymbolList = Field(
        DEFAULT_STOCK_SYMBOLS,
        validation_alias="SIM_STOCK_SYMBOLS",
        description='Comma-separated stock universe ("*" on /v2/{iex,sip,delayed_sip}).',
    )
    crypto_symbols: SymbolList = Field(
        DEFAULT_CRYPTO_SYMBOLS,
        validation_alias="SIM_CRYPTO_SYMBOLS",
        description='Comma-separated crypto universe ("*" on /v1beta3/crypto/us).',
    )
    api_key: str | None = Field(
        None, validation_alias="SIM_API_KEY", description="Accept only this key (unset: any)."
    )
    api_secret: SecretStr | None = Field(
        None, validation_alias="SIM_API_SECRET", description="Secret that goes with SIM_API_KEY."
    )
    auth_timeout: float = Field(
        10.0,
        gt=0,
        validation_alias="SIM_AUTH_TIMEOUT",
        description="Seconds a client has to authenticate (Alpaca: 10).",
    )
    symbol_limit: int = Field(
        0,
        ge=0,
        validation_alias="SIM_SYMBOL_LIMIT",
        description="Max symbols per trades/quotes/orderbooks channel (0: unlimited).",
    )
    max_connections: int = Field(
        0,
        ge=0,
        validation_alias="SIM_MAX_CONNECTIONS",
        description="Max sessions per key and endpoint (0: unlimited; Alpaca: 1).",
    )
    send_queue_limit: int = Field(
        50_000,
        ge=1,
        validation_alias="SIM_SEND_QUEUE_LIMIT",
        description="Messages a client may fall behind before it is dropped (407).",
    )
    trading: Literal["always", "while_subscribed"] = Field(
        "always",
        validation_alias="SIM_TRADING",
        description=(
            "always: every symbol trades from the start, listened to or not (a market); "
            "while_subscribed: a symbol advances only while subscribed (fixed test runs)."
        ),
    )
    correction_probability: float = Field(
        0.004,
        ge=0,
        le=0.5,
        validation_alias="SIM_CORRECTION_PROBABILITY",
        description="Chance that a stock trade is corrected a few steps later (T c).",
    )
    cancel_probability: float = Field(
        0.002,
        ge=0,
        le=0.5,
        validation_alias="SIM_CANCEL_PROBABILITY",
        description="Chance that a stock trade is cancelled or busted a few steps later (T x).",
    )
    halt_probability: float = Field(
        0.0005,
        ge=0,
        le=1,
        validation_alias="SIM_HALT_PROBABILITY",
        description="Chance per stock trade of a simulated halt status and its resumption (T s);"
        " the trades go on meanwhile.",
    )
    # About 600 bytes per kept event: the defaults (36 symbols, trades and quotes at 5/s,
    # 300 s) hold ~110k events, ~65 MB, inside the chart's 256 MiB limit.
    history_seconds: float = Field(
        300.0,
        gt=0,
        validation_alias="SIM_HISTORY_SECONDS",
        description="Seconds of trades, quotes and bars kept for the historical REST API.",
    )
    history_events: int = Field(
        5_000,
        ge=0,
        validation_alias="SIM_HISTORY_EVENTS",
        description="At most this many events kept per feed, symbol and kind (0: no bound).",
    )
    history_rate_limit: int = Field(
        0,
        ge=0,
        validation_alias="SIM_HISTORY_RATE_LIMIT",
        description="Historical API requests per minute per key, else 429 (0: unlimited; "
        "Alpaca's free plan: 200).",
    )
    admin: bool = Field(
        False,
        validation_alias="SIM_ADMIN",
        description="Serve the fault controls under /admin/ (drop, mute, slow, half-dead).",
    )
    half_dead_seconds: float = Field(
        0.0,
        ge=0,
        validation_alias="SIM_HALF_DEAD_SECONDS",
        description="Seconds a dropped client's connection slot stays taken, so a reconnect "
        "gets 406 under SIM_MAX_CONNECTIONS (Alpaca: about 90).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", validation_alias="LOG_LEVEL", description="Lowest log level written."
    )
    log_format: LogFormat = Field(
        "auto",
        validation_alias="LOG_FORMAT",
        description="json, text, or auto (text on a terminal, JSON otherwise).",
    )

    @field_validator("stock_symbols", "crypto_symbols", mode="before")
    @classmethod
    def _split_symbols(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",")]
        if isinstance(value, list | tuple):
            symbols = [s for s in value if s != ""]
            if not symbols:
                raise ValueError("needs at least one symbol")
            if any(not isinstance(s, str) or any(c.isspace() for c in s) for s in symbols):
                raise ValueError("symbols are comma-separated names without spaces")
            return tuple(dict.fromkeys(symbols))  # drop duplicates, keep order
        return value

    @field_validator("crypto_symbols")
    @classmethod
    def _crypto_pairs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [s for s in value if s.count("/") != 1]
        if bad:
            raise ValueError(f"crypto symbols are pairs like BTC/USD, not {', '.join(bad)}")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("api_key", "api_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # Compose files pass SIM_API_KEY=${SOMETHING:-}: an empty value means "not set".
        return None if value == "" else value

    @model_validator(mode="after")
    def _key_and_secret_together(self) -> SimSettings:
        if (self.api_key is None) != (self.api_secret is None):
            raise ValueError("SIM_API_KEY and SIM_API_SECRET must be set together")
        return self
