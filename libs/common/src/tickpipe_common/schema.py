"""The tick: tickpipe's one message contract (topic ``market_ticks``).

Producers encode with this module, the consumer decodes with it, and the DLQ records which
rule of it a message broke. Key = the symbol (UTF-8); value = one JSON object; headers carry
the content type, schema version and producing service.

Prices and sizes stay IEEE doubles exactly as Alpaca sends them. Timestamps are integer
epoch nanoseconds in memory and nine-digit RFC 3339 text on the wire, so nothing is rounded.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from tickpipe_common.timestamps import format_rfc3339_ns, parse_rfc3339_ns

SCHEMA_VERSION = 1
CONTENT_TYPE = "application/json"

HEADER_CONTENT_TYPE = "content-type"
HEADER_SCHEMA_VERSION = "tickpipe-schema-version"
HEADER_PRODUCER = "tickpipe-producer"


class TickKind(StrEnum):
    TRADE = "trade"
    QUOTE = "quote"
    BAR = "bar"
    UPDATED_BAR = "updated_bar"
    DAILY_BAR = "daily_bar"
    ORDERBOOK = "orderbook"


class AssetClass(StrEnum):
    STOCK = "stock"
    CRYPTO = "crypto"


BAR_KINDS = frozenset({TickKind.BAR, TickKind.UPDATED_BAR, TickKind.DAILY_BAR})

NonNegative = Annotated[float, Field(ge=0)]


class BookLevel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    price: NonNegative
    # Size 0 is meaningful in an orderbook update: the level was removed.
    size: NonNegative


_REQUIRED_BY_KIND: dict[TickKind, tuple[str, ...]] = {
    TickKind.TRADE: ("price", "size"),
    TickKind.QUOTE: ("bid_price", "bid_size", "ask_price", "ask_size"),
    TickKind.BAR: ("open", "high", "low", "close", "volume"),
    TickKind.UPDATED_BAR: ("open", "high", "low", "close", "volume"),
    TickKind.DAILY_BAR: ("open", "high", "low", "close", "volume"),
    TickKind.ORDERBOOK: ("bids", "asks"),
}


def _epoch_ns(value: Any) -> Any:
    if isinstance(value, str):
        return parse_rfc3339_ns(value)
    return value


class Tick(BaseModel):
    """One market event. Fields that do not apply to a kind are ``None`` and left off the wire."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        allow_inf_nan=False,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )

    schema_version: Literal[1] = 1
    kind: TickKind
    asset_class: AssetClass
    symbol: Annotated[str, Field(min_length=1, max_length=64)]
    ts_ns: Annotated[int, Field(alias="ts", gt=0, strict=False)]
    received_ns: Annotated[int, Field(alias="received_at", gt=0)]
    feed: Annotated[str, Field(min_length=1, max_length=32)]

    # trades
    price: NonNegative | None = None
    size: NonNegative | None = None
    exchange: str | None = None
    trade_id: int | None = None
    conditions: tuple[str, ...] | None = None
    tape: str | None = None
    taker_side: str | None = None

    # quotes
    bid_price: NonNegative | None = None
    bid_size: NonNegative | None = None
    bid_exchange: str | None = None
    ask_price: NonNegative | None = None
    ask_size: NonNegative | None = None
    ask_exchange: str | None = None

    # bars
    open: NonNegative | None = None
    high: NonNegative | None = None
    low: NonNegative | None = None
    close: NonNegative | None = None
    volume: NonNegative | None = None
    vwap: NonNegative | None = None
    trade_count: Annotated[int, Field(ge=0)] | None = None

    # crypto orderbooks
    bids: tuple[BookLevel, ...] | None = None
    asks: tuple[BookLevel, ...] | None = None
    reset: bool | None = None

    @field_validator("ts_ns", "received_ns", mode="before")
    @classmethod
    def _parse_timestamp(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("a timestamp is RFC 3339 text or integer epoch nanoseconds")
        return _epoch_ns(value)

    @field_serializer("ts_ns", "received_ns")
    def _format_timestamp(self, value: int) -> str:
        return format_rfc3339_ns(value)

    @model_validator(mode="after")
    def _kind_fields_present(self) -> Tick:
        missing = [f for f in _REQUIRED_BY_KIND[self.kind] if getattr(self, f) is None]
        if missing:
            raise ValueError(f"a {self.kind.value} needs {', '.join(missing)}")
        return self

    @property
    def tick_id(self) -> uuid.UUID:
        """Deterministic identity: a replay of the same market event yields the same id."""
        return uuid.UUID(bytes=hashlib.blake2b(self._identity().encode(), digest_size=16).digest())

    def _identity(self) -> str:
        parts: list[object]
        if self.kind is TickKind.TRADE:
            # Alpaca's trade ids are unique per symbol and exchange (and tape for stocks).
            parts = [self.trade_id, self.exchange, self.tape]
        elif self.kind is TickKind.QUOTE:
            parts = [
                self.bid_exchange,
                self.bid_price,
                self.bid_size,
                self.ask_exchange,
                self.ask_price,
                self.ask_size,
                self.conditions,
                self.tape,
            ]
        elif self.kind in (TickKind.BAR, TickKind.DAILY_BAR):
            parts = []  # one bar per symbol and period start
        elif self.kind is TickKind.UPDATED_BAR:
            # Each correction of a bar is its own event; the values tell them apart.
            parts = [self.open, self.high, self.low, self.close, self.volume, self.trade_count]
        else:
            parts = [self.reset, self.bids, self.asks]
        head: list[object] = [self.kind.value, self.symbol, self.ts_ns]
        return "\x1f".join(repr(p) for p in head + parts)

    def price_signature(self) -> tuple[float | None, ...] | None:
        """What "the price changed" compares for this kind; ``None`` means always publish."""
        if self.kind is TickKind.TRADE:
            return (self.price,)
        if self.kind is TickKind.QUOTE:
            return (self.bid_price, self.ask_price)
        if self.kind in BAR_KINDS:
            return (self.close,)
        return None


def encode_tick(tick: Tick) -> bytes:
    return tick.model_dump_json(exclude_none=True).encode()


def kafka_headers(producer: str) -> list[tuple[str, str | bytes | None]]:
    return [
        (HEADER_CONTENT_TYPE, CONTENT_TYPE.encode()),
        (HEADER_SCHEMA_VERSION, str(SCHEMA_VERSION).encode()),
        (HEADER_PRODUCER, producer.encode()),
    ]


class RejectReason(StrEnum):
    """Why a message could not be stored; the DLQ carries it in a header. A bounded set."""

    EMPTY = "empty"
    NOT_JSON = "not_json"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    SCHEMA_VIOLATION = "schema_violation"
    INVALID_VALUE = "invalid_value"
    FUTURE_TIMESTAMP = "future_timestamp"
    KEY_MISMATCH = "key_mismatch"


class TickRejected(Exception):
    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


# Pydantic error types that mean "well-formed but the value is impossible".
_VALUE_ERRORS = frozenset({"finite_number", "greater_than", "greater_than_equal"})


def decode_tick(value: bytes | None) -> Tick:
    """Bytes from Kafka → a valid Tick, or ``TickRejected`` saying which rule failed."""
    if not value:
        raise TickRejected(RejectReason.EMPTY, "message has no value")
    try:
        return Tick.model_validate_json(value)
    except ValidationError as exc:
        raise _classify(value, exc) from None


def _classify(value: bytes, exc: ValidationError) -> TickRejected:
    errors = exc.errors(include_url=False, include_input=False)
    if any(e["type"] == "json_invalid" for e in errors):
        return TickRejected(RejectReason.NOT_JSON, errors[0]["msg"])
    try:
        document = json.loads(value)
    except ValueError as json_exc:  # pragma: no cover - pydantic caught invalid JSON above
        return TickRejected(RejectReason.NOT_JSON, str(json_exc))
    if not isinstance(document, dict):
        return TickRejected(RejectReason.SCHEMA_VIOLATION, "the value is not a JSON object")
    if document.get("schema_version") not in (None, SCHEMA_VERSION):
        return TickRejected(
            RejectReason.UNSUPPORTED_SCHEMA_VERSION,
            f"schema_version {document.get('schema_version')!r}; this build reads {SCHEMA_VERSION}",
        )
    detail = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'tick'}: {e['msg']}" for e in errors
    )
    if all(e["type"] in _VALUE_ERRORS for e in errors) or _has_nan(document):
        return TickRejected(RejectReason.INVALID_VALUE, detail)
    return TickRejected(RejectReason.SCHEMA_VIOLATION, detail)


def _has_nan(document: dict[str, Any]) -> bool:
    return any(isinstance(v, float) and not math.isfinite(v) for v in document.values())


def check_storable(tick: Tick, key: bytes | None, now_ns: int, max_future_ns: int) -> None:
    """Rules that depend on the message's context rather than its shape."""
    if key is not None and key != tick.symbol.encode():
        raise TickRejected(
            RejectReason.KEY_MISMATCH, f"key {key[:64]!r} but symbol {tick.symbol!r}"
        )
    if tick.ts_ns > now_ns + max_future_ns:
        ahead = (tick.ts_ns - now_ns) / 1e9
        raise TickRejected(
            RejectReason.FUTURE_TIMESTAMP, f"exchange timestamp is {ahead:.1f}s in the future"
        )
