"""Settings of a producer service. Each service subclasses to set its own defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from tickpipe_common.settings import CommonSettings, KafkaSettings

ALPACA_STREAM_URL = "wss://stream.data.alpaca.markets"
ALPACA_DATA_REST_URL = "https://data.alpaca.markets"

CommaList = Annotated[tuple[str, ...], NoDecode]


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class ProducerSettings(CommonSettings, KafkaSettings):
    alpaca_api_key: SecretStr | None = Field(
        None, description="Alpaca API key id. Unset: the stream must point at the simulator."
    )
    alpaca_secret_key: SecretStr | None = Field(None, description="Alpaca API secret key.")
    alpaca_data_stream_url: str = Field(
        ALPACA_STREAM_URL,
        description="Base WebSocket URL of the market-data stream (the simulator's to use it).",
    )
    alpaca_data_rest_url: str | None = Field(
        None,
        description="Base URL of the historical market-data REST API that gaps are backfilled "
        "from. Unset: derived from ALPACA_DATA_STREAM_URL (Alpaca's stream: "
        "https://data.alpaca.markets; the simulator's: the same host and port over http).",
    )
    symbols: CommaList = Field(description="Comma-separated symbols to subscribe to.")
    channels: CommaList = Field(
        ("trades", "quotes", "bars"),
        description="Comma-separated channels: trades, quotes, bars, updated_bars, daily_bars"
        " (and orderbooks for crypto; statuses and lulds for stocks). Stock trades bring their"
        " corrections and cancel/errors with them.",
    )
    feed: str = Field(description="The Alpaca feed, part of the stream path.")
    publish_mode: Literal["on_change", "every_tick"] = Field(
        "on_change",
        description="on_change publishes a tick only when its price moved; every_tick all.",
    )
    backup_dir: Path = Field(
        Path("backup"), description="Folder of the CSV backup (rotated by day and asset class)."
    )
    backup_retention_days: int = Field(
        0,
        ge=0,
        description="Delete backup days older than this many days; 0 keeps every day.",
    )
    backup_compress: bool = Field(
        True, description="Gzip each finished backup day (<day>.csv.gz, still read by replay)."
    )
    kafka_queue_max_mib: int = Field(
        64,
        ge=1,
        le=2047,
        description="Bound of the Kafka client's local queue, in MiB of messages. Beyond it "
        "ticks are in the backup only and re-published from it when Kafka takes them again.",
    )
    handoff_max_messages: int = Field(
        20_000,
        ge=100,
        description="Messages the WebSocket loop may hand to the sink thread before it waits.",
    )
    stale_after_seconds: float = Field(
        30.0, gt=0, description="No market data for this long: reconnect and report not ready."
    )
    reconnect_initial_seconds: float = Field(
        1.0, gt=0, description="First reconnect delay; doubles per failure, jittered."
    )
    reconnect_max_seconds: float = Field(30.0, gt=0, description="Cap of the reconnect delay.")
    reconnect_limit_seconds: float = Field(
        15.0,
        gt=0,
        description='First reconnect delay after a 406 "connection limit exceeded" (Alpaca '
        "keeps a dropped connection's slot for about 90 s); doubles per 406 up to "
        "RECONNECT_LIMIT_MAX_SECONDS, jittered. Gaps are backfilled, so waiting loses nothing.",
    )
    reconnect_limit_max_seconds: float = Field(
        60.0, gt=0, description="Cap of the reconnect delay after repeated 406 answers."
    )
    backfill_enabled: bool = Field(
        True,
        description="Fetch every gap in the stream (after a reconnect, at start-up) from the "
        "historical REST API and publish it.",
    )
    backfill_quotes: bool = Field(
        False,
        description="Backfill quotes too (when subscribed); trades and bars always are. Quotes "
        "are heavy: often ten times the trades.",
    )
    backfill_margin_seconds: float = Field(
        5.0,
        ge=0,
        description="Widen every backfill window by this much on both sides (the overlap with "
        "the live stream is stored once).",
    )
    backfill_max_seconds: float = Field(
        86_400.0,
        gt=0,
        description="Longest stretch backfilled for one gap (its newest part); a producer off "
        "for longer gets only this much back.",
    )
    backfill_sip_delay_seconds: float = Field(
        900.0,
        ge=0,
        description="FEED=sip only: Alpaca serves the last 15 minutes of SIP history only to "
        "paid plans, so each gap is fetched again this long after it ended (0: no second pass).",
    )
    metrics_per_symbol: bool = Field(
        False,
        description="Export per-symbol series (tickpipe_producer_symbol_ticks_total, "
        "tickpipe_producer_last_tick_timestamp_seconds).",
    )
    metrics_symbol_limit: int = Field(
        50,
        ge=0,
        description="At most this many symbols get their own series; the rest are summed "
        'as symbol="other".',
    )

    @field_validator("alpaca_api_key", "alpaca_secret_key", "alpaca_data_rest_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # `ALPACA_API_KEY=` (an empty line in an env file) means "no key", not a key "".
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("symbols", "channels", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return _split_commas(value)

    @field_validator("symbols")
    @classmethod
    def _some_symbols(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("name at least one symbol, e.g. SYMBOLS=AAPL,MSFT")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ProducerSettings:
        unknown = set(self.channels) - self.allowed_channels()
        if unknown:
            allowed = ", ".join(sorted(self.allowed_channels()))
            raise ValueError(f"CHANNELS: unknown {sorted(unknown)}; choose from {allowed}")
        if not self.channels:
            raise ValueError("CHANNELS: name at least one channel")
        keys = (self.alpaca_api_key, self.alpaca_secret_key)
        if (keys[0] is None) != (keys[1] is None):
            raise ValueError("ALPACA_API_KEY and ALPACA_SECRET_KEY go together: set both or none")
        if keys[0] is None and self.alpaca_data_stream_url == ALPACA_STREAM_URL:
            raise ValueError(
                "ALPACA_API_KEY/ALPACA_SECRET_KEY are unset: set them for live Alpaca data, or set "
                "ALPACA_DATA_STREAM_URL to tickpipe-market-sim (e.g. ws://127.0.0.1:8765)"
            )
        if self.reconnect_max_seconds < self.reconnect_initial_seconds:
            raise ValueError("RECONNECT_MAX_SECONDS must be >= RECONNECT_INITIAL_SECONDS")
        if self.reconnect_limit_max_seconds < self.reconnect_limit_seconds:
            raise ValueError("RECONNECT_LIMIT_MAX_SECONDS must be >= RECONNECT_LIMIT_SECONDS")
        if (
            keys[0] is None
            and self.backfill_enabled
            and self.data_rest_url() == ALPACA_DATA_REST_URL
        ):
            raise ValueError(
                "ALPACA_API_KEY/ALPACA_SECRET_KEY are unset: set them for Alpaca's historical "
                "API, or point ALPACA_DATA_REST_URL at tickpipe-market-sim"
            )
        return self

    def allowed_channels(self) -> frozenset[str]:
        return frozenset({"trades", "quotes", "bars", "updated_bars", "daily_bars"})

    def data_rest_url(self) -> str:
        """The historical API's base URL: ALPACA_DATA_REST_URL, or derived from the stream's."""
        if self.alpaca_data_rest_url:
            return self.alpaca_data_rest_url.rstrip("/")
        return rest_url_for_stream(self.alpaca_data_stream_url)

    def credentials(self) -> tuple[str, str]:
        """The keys for the stream's auth message; the simulator accepts any."""
        if self.alpaca_api_key is None or self.alpaca_secret_key is None:
            return ("tickpipe-sim", "tickpipe-sim")
        return (self.alpaca_api_key.get_secret_value(), self.alpaca_secret_key.get_secret_value())


def rest_url_for_stream(stream_url: str) -> str:
    """The historical API that goes with a stream: Alpaca's (``stream.data.`` → ``data.``,
    sandbox included), or the same host over http(s) (the simulator serves both on one port)."""
    split = urlsplit(stream_url)
    scheme = "https" if split.scheme in ("wss", "https") else "http"
    host = split.netloc
    if host.startswith("stream.data."):
        host = host[len("stream.") :]
    return f"{scheme}://{host}"
