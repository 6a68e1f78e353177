"""The tick: tickpipe's one message contract (topic ``market_ticks``).

Producers encode with this module, the consumer decodes with it, and the DLQ records which
rule of it a message broke. Key = the symbol (UTF-8); value = one JSON object; headers carry
the content type, schema version and producing service.

Prices and sizes stay IEEE doubles exactly as Alpaca sends them. Timestamps are integer
epoch nanoseconds in memory and nine-digit RFC 3339 text on the wire, so nothing is rounded.

Schema versions: 1 is the tick as described here; 2 is the same object plus ``tick_id``, the
identity computed once by the producer (``encode_tick(tick, version=2)``) so the consumer need
not hash every message; 3 is version 1 plus the kinds that amend or frame the trades (Alpaca's
trade corrections ``c``, cancel/errors ``x``, trading statuses ``s`` and LULD bands ``l``) and
their fields (``V3_FIELDS``), which versions 1 and 2 refuse. Producers write the six first kinds
as version 1 and only the new kinds as version 3, so a consumer built before version 3 keeps
reading everything it knew and sends the rest to the DLQ as ``unsupported_schema_version``.
The consumer reads all three. Every version refuses:

- text longer than its bound (``TEXT_BOUNDS``; a symbol 1-64 characters, an exchange code at
  most 32, ...), more than ``MAX_CONDITIONS`` conditions or ``MAX_BOOK_LEVELS`` book levels;
- negative or non-finite prices and sizes (NaN, Infinity, numbers beyond a double);
- integers outside PostgreSQL's ``bigint`` (trade ids, trade counts) and timestamps <= 0;
- unknown fields, unknown kinds, a kind without its own fields (a trade without a price).

Two decoders implement these rules: ``decode_tick`` (pydantic, the reference, which also says
*why* a message is refused) and ``decode_tick_fast`` (msgspec, the consumer's hot path), which
accepts a subset of what the reference accepts and hands everything else to it — so a refused
message gets the reference's reason, and the fast path can only ever be stricter, never looser.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import uuid
from collections.abc import Callable, Sequence
from enum import StrEnum
from operator import attrgetter
from typing import Annotated, Any, ClassVar, Final, Literal, Protocol, cast

import msgspec
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

SCHEMA_VERSION = 1  # what encode_tick writes unless asked for another version
SCHEMA_VERSION_WITH_ID = 2  # the same tick plus its identity, computed by the producer
SCHEMA_VERSION_AMENDMENTS = 3  # version 1 plus corrections, cancels, statuses and LULD bands
SCHEMA_VERSIONS: Final = (SCHEMA_VERSION, SCHEMA_VERSION_WITH_ID, SCHEMA_VERSION_AMENDMENTS)
CONTENT_TYPE = "application/json"

HEADER_CONTENT_TYPE = "content-type"
HEADER_SCHEMA_VERSION = "tickpipe-schema-version"
HEADER_PRODUCER = "tickpipe-producer"
# "1" on a tick a producer fetched from the historical API to fill a gap in its stream.
HEADER_BACKFILL = "tickpipe-backfill"


class TickKind(StrEnum):
    TRADE = "trade"
    QUOTE = "quote"
    BAR = "bar"
    UPDATED_BAR = "updated_bar"
    DAILY_BAR = "daily_bar"
    ORDERBOOK = "orderbook"
    # schema version 3 (stocks): what amends the trades, and what frames the trading
    TRADE_CORRECTION = "trade_correction"
    TRADE_CANCEL = "trade_cancel"
    TRADING_STATUS = "trading_status"
    LULD = "luld"


class AssetClass(StrEnum):
    STOCK = "stock"
    CRYPTO = "crypto"


BAR_KINDS = frozenset({TickKind.BAR, TickKind.UPDATED_BAR, TickKind.DAILY_BAR})
# The kinds only schema version 3 carries.
V3_KINDS = frozenset(
    {TickKind.TRADE_CORRECTION, TickKind.TRADE_CANCEL, TickKind.TRADING_STATUS, TickKind.LULD}
)

# The numeric bounds of the schema (see the module docstring).
INT8_MIN, INT8_MAX = -(2**63), 2**63 - 1
_FLOAT_MAX = sys.float_info.max
MAX_CONDITIONS = 64
MAX_BOOK_LEVELS = 10_000
# Longest text per field (characters). Exchange and condition codes are a few characters on
# every Alpaca feed; the bound stops a malformed or hostile message from storing megabytes.
TEXT_BOUNDS: Final[dict[str, int]] = {
    "symbol": 64,
    "feed": 32,
    "exchange": 32,
    "tape": 8,
    "taker_side": 8,
    "bid_exchange": 32,
    "ask_exchange": 32,
    "conditions": 16,  # each condition code
    "cancel_action": 8,
    "status_code": 16,
    "status_message": 256,
    "reason_code": 16,
    "reason_message": 256,
    "luld_indicator": 8,
}

NonNegative = Annotated[float, Field(ge=0, le=_FLOAT_MAX)]
Int8 = Annotated[int, Field(ge=INT8_MIN, le=INT8_MAX)]
_CODE = TEXT_BOUNDS["exchange"]
Symbol = Annotated[str, Field(min_length=1, max_length=TEXT_BOUNDS["symbol"])]
Feed = Annotated[str, Field(min_length=1, max_length=TEXT_BOUNDS["feed"])]
Code = Annotated[str, Field(max_length=_CODE)]
Tape = Annotated[str, Field(max_length=TEXT_BOUNDS["tape"])]
Side = Annotated[str, Field(max_length=TEXT_BOUNDS["taker_side"])]
Conditions = Annotated[
    tuple[Annotated[str, Field(max_length=TEXT_BOUNDS["conditions"])], ...],
    Field(max_length=MAX_CONDITIONS),
]


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
    TickKind.TRADE_CORRECTION: (
        "original_trade_id",
        "original_price",
        "original_size",
        "corrected_price",
        "corrected_size",
    ),
    TickKind.TRADE_CANCEL: ("trade_id", "price", "size", "cancel_action"),
    TickKind.TRADING_STATUS: ("status_code",),
    TickKind.LULD: ("limit_up_price", "limit_down_price"),
}

# The fields only schema version 3 carries (after every version-1 field, in this order).
V3_FIELDS: Final = (
    "original_trade_id",
    "original_price",
    "original_size",
    "original_conditions",
    "corrected_trade_id",
    "corrected_price",
    "corrected_size",
    "corrected_conditions",
    "cancel_action",
    "status_code",
    "status_message",
    "reason_code",
    "reason_message",
    "limit_up_price",
    "limit_down_price",
    "luld_indicator",
)


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
    symbol: Symbol
    ts_ns: Annotated[int, Field(alias="ts", gt=0, le=INT8_MAX, strict=False)]
    received_ns: Annotated[int, Field(alias="received_at", gt=0, le=INT8_MAX)]
    feed: Feed

    # trades
    price: NonNegative | None = None
    size: NonNegative | None = None
    exchange: Code | None = None
    trade_id: Int8 | None = None
    conditions: Conditions | None = None
    tape: Tape | None = None
    taker_side: Side | None = None

    # quotes
    bid_price: NonNegative | None = None
    bid_size: NonNegative | None = None
    bid_exchange: Code | None = None
    ask_price: NonNegative | None = None
    ask_size: NonNegative | None = None
    ask_exchange: Code | None = None

    # bars
    open: NonNegative | None = None
    high: NonNegative | None = None
    low: NonNegative | None = None
    close: NonNegative | None = None
    volume: NonNegative | None = None
    vwap: NonNegative | None = None
    trade_count: Annotated[int, Field(ge=0, le=INT8_MAX)] | None = None

    # crypto orderbooks
    bids: Annotated[tuple[BookLevel, ...], Field(max_length=MAX_BOOK_LEVELS)] | None = None
    asks: Annotated[tuple[BookLevel, ...], Field(max_length=MAX_BOOK_LEVELS)] | None = None
    reset: bool | None = None

    # schema version 3: trade corrections (the trade as printed, and as corrected)
    original_trade_id: Int8 | None = None
    original_price: NonNegative | None = None
    original_size: NonNegative | None = None
    original_conditions: Conditions | None = None
    corrected_trade_id: Int8 | None = None
    corrected_price: NonNegative | None = None
    corrected_size: NonNegative | None = None
    corrected_conditions: Conditions | None = None
    # trade cancels and errors: the trade is in trade_id, price, size, exchange, tape
    cancel_action: Annotated[str, Field(max_length=TEXT_BOUNDS["cancel_action"])] | None = None
    # trading statuses (halts, resumptions)
    status_code: Annotated[str, Field(max_length=TEXT_BOUNDS["status_code"])] | None = None
    status_message: Annotated[str, Field(max_length=TEXT_BOUNDS["status_message"])] | None = None
    reason_code: Annotated[str, Field(max_length=TEXT_BOUNDS["reason_code"])] | None = None
    reason_message: Annotated[str, Field(max_length=TEXT_BOUNDS["reason_message"])] | None = None
    # limit up / limit down price bands
    limit_up_price: NonNegative | None = None
    limit_down_price: NonNegative | None = None
    luld_indicator: Annotated[str, Field(max_length=TEXT_BOUNDS["luld_indicator"])] | None = None

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
        if self.schema_version != SCHEMA_VERSION_AMENDMENTS:
            if self.kind in V3_KINDS:
                raise ValueError(f"a {self.kind.value} needs schema version 3")
            given = [f for f in V3_FIELDS if getattr(self, f) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: only in schema version 3")
        missing = [f for f in _REQUIRED_BY_KIND[self.kind] if getattr(self, f) is None]
        if missing:
            raise ValueError(f"a {self.kind.value} needs {', '.join(missing)}")
        return self

    @property
    def tick_id(self) -> uuid.UUID:
        """Deterministic identity: a replay of the same market event yields the same id."""
        return tick_identity(self)

    def price_signature(self) -> tuple[float | None, ...] | None:
        """What "the price changed" compares for this kind; ``None`` means always publish."""
        if self.kind is TickKind.TRADE:
            return (self.price,)
        if self.kind is TickKind.QUOTE:
            return (self.bid_price, self.ask_price)
        if self.kind in BAR_KINDS:
            return (self.close,)
        return None


class TickV2(Tick):
    """Schema version 2: a ``Tick`` plus the identity its producer computed."""

    schema_version: Literal[2] = 2  # type: ignore[assignment]
    carried_id: Annotated[uuid.UUID, Field(alias="tick_id")]

    @property
    def tick_id(self) -> uuid.UUID:
        return self.carried_id


class TickV3(Tick):
    """Schema version 3: a ``Tick`` that may be of the ``V3_KINDS`` and carry ``V3_FIELDS``."""

    schema_version: Literal[3] = 3  # type: ignore[assignment]


def make_tick(**fields: Any) -> Tick:
    """A ``Tick`` of the lowest version its kind allows (3 for the ``V3_KINDS``, else 1)."""
    if fields.get("kind") in V3_KINDS:
        return TickV3(**fields)
    return Tick(**fields)


class TickFields(Protocol):
    """What both decoders' results offer: the fields the identity and the row are made of."""

    @property
    def kind(self) -> TickKind: ...
    @property
    def asset_class(self) -> AssetClass: ...
    @property
    def symbol(self) -> str: ...
    @property
    def ts_ns(self) -> int: ...
    @property
    def received_ns(self) -> int: ...
    @property
    def feed(self) -> str: ...
    @property
    def tick_id(self) -> uuid.UUID: ...
    @property
    def price(self) -> float | None: ...
    @property
    def size(self) -> float | None: ...
    @property
    def exchange(self) -> str | None: ...
    @property
    def trade_id(self) -> int | None: ...
    @property
    def conditions(self) -> tuple[str, ...] | None: ...
    @property
    def tape(self) -> str | None: ...
    @property
    def taker_side(self) -> str | None: ...
    @property
    def bid_price(self) -> float | None: ...
    @property
    def bid_size(self) -> float | None: ...
    @property
    def bid_exchange(self) -> str | None: ...
    @property
    def ask_price(self) -> float | None: ...
    @property
    def ask_size(self) -> float | None: ...
    @property
    def ask_exchange(self) -> str | None: ...
    @property
    def open(self) -> float | None: ...
    @property
    def high(self) -> float | None: ...
    @property
    def low(self) -> float | None: ...
    @property
    def close(self) -> float | None: ...
    @property
    def volume(self) -> float | None: ...
    @property
    def vwap(self) -> float | None: ...
    @property
    def trade_count(self) -> int | None: ...
    @property
    def bids(self) -> Sequence[LevelFields] | None: ...
    @property
    def asks(self) -> Sequence[LevelFields] | None: ...
    @property
    def reset(self) -> bool | None: ...
    @property
    def original_trade_id(self) -> int | None: ...
    @property
    def original_price(self) -> float | None: ...
    @property
    def original_size(self) -> float | None: ...
    @property
    def original_conditions(self) -> tuple[str, ...] | None: ...
    @property
    def corrected_trade_id(self) -> int | None: ...
    @property
    def corrected_price(self) -> float | None: ...
    @property
    def corrected_size(self) -> float | None: ...
    @property
    def corrected_conditions(self) -> tuple[str, ...] | None: ...
    @property
    def cancel_action(self) -> str | None: ...
    @property
    def status_code(self) -> str | None: ...
    @property
    def status_message(self) -> str | None: ...
    @property
    def reason_code(self) -> str | None: ...
    @property
    def reason_message(self) -> str | None: ...
    @property
    def limit_up_price(self) -> float | None: ...
    @property
    def limit_down_price(self) -> float | None: ...
    @property
    def luld_indicator(self) -> str | None: ...


class LevelFields(Protocol):
    @property
    def price(self) -> float: ...
    @property
    def size(self) -> float: ...


def tick_identity(tick: TickFields) -> uuid.UUID:
    """The tick's deterministic identity: blake2b-128 of the fields that make the event.

    The text hashed is exactly what version 1 always hashed (``repr`` of each part, joined by
    U+001F), so ids stored by earlier builds stay valid.
    """
    kind = tick.kind
    parts: list[object]
    if kind is TickKind.TRADE:
        # Alpaca's trade ids are unique per symbol and exchange (and tape for stocks).
        parts = [tick.trade_id, tick.exchange, tick.tape]
    elif kind is TickKind.QUOTE:
        parts = [
            tick.bid_exchange,
            tick.bid_price,
            tick.bid_size,
            tick.ask_exchange,
            tick.ask_price,
            tick.ask_size,
            tick.conditions,
            tick.tape,
        ]
    elif kind in (TickKind.BAR, TickKind.DAILY_BAR):
        parts = []  # one bar per symbol and period start
    elif kind is TickKind.UPDATED_BAR:
        # Each correction of a bar is its own event; the values tell them apart.
        parts = [tick.open, tick.high, tick.low, tick.close, tick.volume, tick.trade_count]
    elif kind is TickKind.ORDERBOOK:
        parts = [tick.reset, _LevelsRepr(tick.bids), _LevelsRepr(tick.asks)]
    elif kind is TickKind.TRADE_CORRECTION:
        # The trade it corrects, and what it says the trade really was.
        parts = [
            tick.original_trade_id,
            tick.exchange,
            tick.tape,
            tick.corrected_trade_id,
            tick.corrected_price,
            tick.corrected_size,
            tick.corrected_conditions,
        ]
    elif kind is TickKind.TRADE_CANCEL:
        parts = [tick.trade_id, tick.exchange, tick.tape, tick.cancel_action]
    elif kind is TickKind.TRADING_STATUS:
        parts = [tick.status_code, tick.reason_code, tick.tape]
    else:  # LULD
        parts = [tick.limit_up_price, tick.limit_down_price, tick.luld_indicator, tick.tape]
    head: list[object] = [str(kind), tick.symbol, tick.ts_ns]
    text = "\x1f".join([repr(p) for p in head + parts])
    return uuid.UUID(bytes=hashlib.blake2b(text.encode(), digest_size=16).digest())


class _LevelsRepr:
    """Book levels rendered as version 1 always hashed them: the repr of a tuple of
    ``BookLevel(price=..., size=...)``, whichever decoder made the levels."""

    __slots__ = ("_levels",)

    def __init__(self, levels: Sequence[LevelFields] | None) -> None:
        self._levels = levels

    def __repr__(self) -> str:
        if self._levels is None:
            return "None"
        items = [f"BookLevel(price={lv.price!r}, size={lv.size!r})" for lv in self._levels]
        if len(items) == 1:
            return f"({items[0]},)"
        return f"({', '.join(items)})"


def encode_tick(tick: Tick, version: int | None = None) -> bytes:
    """The message value, in the tick's own version unless told (a ``TickV3`` writes 3, any
    other 1); ``version=2`` carries the identity (computed here, once)."""
    own = tick.schema_version
    if version is None or version == own:
        return tick.model_dump_json(exclude_none=True).encode()
    if version == SCHEMA_VERSION_WITH_ID and own == SCHEMA_VERSION:
        fields = {name: getattr(tick, name) for name in Tick.model_fields}
        fields.update(schema_version=2, carried_id=tick.tick_id)
        return TickV2.model_construct(**fields).model_dump_json(exclude_none=True).encode()
    if version == SCHEMA_VERSION_AMENDMENTS and own == SCHEMA_VERSION:
        fields = {name: getattr(tick, name) for name in Tick.model_fields}
        fields.update(schema_version=SCHEMA_VERSION_AMENDMENTS)
        return TickV3.model_construct(**fields).model_dump_json(exclude_none=True).encode()
    if version in SCHEMA_VERSIONS:
        raise ValueError(f"a version-{own} tick cannot be written as version {version}")
    raise ValueError(f"no schema version {version}; this build writes {SCHEMA_VERSIONS}")


def kafka_headers(
    producer: str, version: int = SCHEMA_VERSION
) -> list[tuple[str, str | bytes | None]]:
    """The headers of a message; ``version`` must be the value's ``schema_version``."""
    return [
        (HEADER_CONTENT_TYPE, CONTENT_TYPE.encode()),
        (HEADER_SCHEMA_VERSION, str(version).encode()),
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
_VALUE_ERRORS = frozenset(
    {"finite_number", "greater_than", "greater_than_equal", "less_than", "less_than_equal"}
)


def decode_tick(value: bytes | None) -> Tick:
    """Bytes from Kafka → a valid Tick, or ``TickRejected`` saying which rule failed."""
    if not value:
        raise TickRejected(RejectReason.EMPTY, "message has no value")
    try:
        return Tick.model_validate_json(value)
    except ValidationError as exc:
        refused = exc
    if b'"schema_version"' in value:
        versioned = _MODEL_BY_VERSION.get(_version_of(value))
        if versioned is not None:
            try:
                return versioned.model_validate_json(value)
            except ValidationError as exc:
                refused = exc
    raise _classify(value, refused) from None


_MODEL_BY_VERSION: Final[dict[object, type[Tick]]] = {
    SCHEMA_VERSION_WITH_ID: TickV2,
    SCHEMA_VERSION_AMENDMENTS: TickV3,
}


def _version_of(value: bytes) -> object:
    try:
        document = json.loads(value)
    except ValueError:
        return None
    return document.get("schema_version") if isinstance(document, dict) else None


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
    if document.get("schema_version") not in (None, *SCHEMA_VERSIONS):
        return TickRejected(
            RejectReason.UNSUPPORTED_SCHEMA_VERSION,
            f"schema_version {document.get('schema_version')!r}; this build reads "
            f"{', '.join(map(str, SCHEMA_VERSIONS))}",
        )
    detail = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'tick'}: {e['msg']}" for e in errors
    )
    if all(e["type"] in _VALUE_ERRORS for e in errors) or _has_nan(document):
        return TickRejected(RejectReason.INVALID_VALUE, detail)
    return TickRejected(RejectReason.SCHEMA_VIOLATION, detail)


def _has_nan(document: dict[str, Any]) -> bool:
    return any(isinstance(v, float) and not math.isfinite(v) for v in document.values())


def check_storable(tick: TickFields, key: bytes | None, now_ns: int, max_future_ns: int) -> None:
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


# -- the fast decoder (msgspec): the consumer's hot path --------------------------------------

_M_NonNegative = Annotated[float, msgspec.Meta(ge=0, le=_FLOAT_MAX)]
_M_Int8 = Annotated[int, msgspec.Meta(ge=INT8_MIN, le=INT8_MAX)]
_M_Timestamp = str | Annotated[int, msgspec.Meta(gt=0, le=INT8_MAX)]
_M_Symbol = Annotated[str, msgspec.Meta(min_length=1, max_length=TEXT_BOUNDS["symbol"])]
_M_Feed = Annotated[str, msgspec.Meta(min_length=1, max_length=TEXT_BOUNDS["feed"])]
_M_Code = Annotated[str, msgspec.Meta(max_length=_CODE)]
_M_Tape = Annotated[str, msgspec.Meta(max_length=TEXT_BOUNDS["tape"])]
_M_Side = Annotated[str, msgspec.Meta(max_length=TEXT_BOUNDS["taker_side"])]
_M_Conditions = Annotated[
    tuple[Annotated[str, msgspec.Meta(max_length=TEXT_BOUNDS["conditions"])], ...],
    msgspec.Meta(max_length=MAX_CONDITIONS),
]
_M_Levels = Annotated[tuple["FastBookLevel", ...], msgspec.Meta(max_length=MAX_BOOK_LEVELS)]
_M_CancelAction = Annotated[str, msgspec.Meta(max_length=TEXT_BOUNDS["cancel_action"])]
_M_StatusCode = Annotated[str, msgspec.Meta(max_length=TEXT_BOUNDS["status_code"])]
_M_StatusMessage = Annotated[str, msgspec.Meta(max_length=TEXT_BOUNDS["status_message"])]
_M_ReasonCode = Annotated[str, msgspec.Meta(max_length=TEXT_BOUNDS["reason_code"])]
_M_ReasonMessage = Annotated[str, msgspec.Meta(max_length=TEXT_BOUNDS["reason_message"])]
_M_LuldIndicator = Annotated[str, msgspec.Meta(max_length=TEXT_BOUNDS["luld_indicator"])]


# gc=False: these hold only strings, numbers, tuples of levels and a UUID, never a cycle, so
# the garbage collector need not track the hundreds of thousands made per minute.
class FastBookLevel(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    price: _M_NonNegative
    size: _M_NonNegative


class _FastTickFields(
    msgspec.Struct,
    forbid_unknown_fields=True,
    gc=False,
    rename={"ts_ns": "ts", "received_ns": "received_at"},
):
    """The fields every version has (see ``FastTick``)."""

    kind: TickKind
    asset_class: AssetClass
    symbol: _M_Symbol
    ts_ns: _M_Timestamp
    received_ns: _M_Timestamp
    feed: _M_Feed
    tick_id: uuid.UUID | None = None
    price: _M_NonNegative | None = None
    size: _M_NonNegative | None = None
    exchange: _M_Code | None = None
    trade_id: _M_Int8 | None = None
    conditions: _M_Conditions | None = None
    tape: _M_Tape | None = None
    taker_side: _M_Side | None = None
    bid_price: _M_NonNegative | None = None
    bid_size: _M_NonNegative | None = None
    bid_exchange: _M_Code | None = None
    ask_price: _M_NonNegative | None = None
    ask_size: _M_NonNegative | None = None
    ask_exchange: _M_Code | None = None
    open: _M_NonNegative | None = None
    high: _M_NonNegative | None = None
    low: _M_NonNegative | None = None
    close: _M_NonNegative | None = None
    volume: _M_NonNegative | None = None
    vwap: _M_NonNegative | None = None
    trade_count: Annotated[int, msgspec.Meta(ge=0, le=INT8_MAX)] | None = None
    bids: _M_Levels | None = None
    asks: _M_Levels | None = None
    reset: bool | None = None


class FastTick(_FastTickFields):
    """The same tick as ``Tick`` (versions 1 and 2), decoded by msgspec; built only by
    ``decode_tick_fast``.

    Not frozen only so that the decoder can fill ``tick_id`` (version 1) and the timestamps
    (RFC 3339 text → epoch ns) after msgspec has checked the types and bounds. The version-3
    fields are class attributes (always ``None``), not fields: a version-1 or -2 message that
    carries one is refused like any unknown field.
    """

    schema_version: Literal[1, 2] = 1
    original_trade_id: ClassVar[int | None] = None
    original_price: ClassVar[float | None] = None
    original_size: ClassVar[float | None] = None
    original_conditions: ClassVar[tuple[str, ...] | None] = None
    corrected_trade_id: ClassVar[int | None] = None
    corrected_price: ClassVar[float | None] = None
    corrected_size: ClassVar[float | None] = None
    corrected_conditions: ClassVar[tuple[str, ...] | None] = None
    cancel_action: ClassVar[str | None] = None
    status_code: ClassVar[str | None] = None
    status_message: ClassVar[str | None] = None
    reason_code: ClassVar[str | None] = None
    reason_message: ClassVar[str | None] = None
    limit_up_price: ClassVar[float | None] = None
    limit_down_price: ClassVar[float | None] = None
    luld_indicator: ClassVar[str | None] = None


class FastTickV3(_FastTickFields, kw_only=True):
    """Schema version 3 decoded by msgspec: ``FastTick`` plus the ``V3_FIELDS``.

    ``schema_version`` has no default: the reference reads a message without one as version 1,
    which refuses the version-3 kinds and fields.
    """

    schema_version: Literal[3]
    original_trade_id: _M_Int8 | None = None
    original_price: _M_NonNegative | None = None
    original_size: _M_NonNegative | None = None
    original_conditions: _M_Conditions | None = None
    corrected_trade_id: _M_Int8 | None = None
    corrected_price: _M_NonNegative | None = None
    corrected_size: _M_NonNegative | None = None
    corrected_conditions: _M_Conditions | None = None
    cancel_action: _M_CancelAction | None = None
    status_code: _M_StatusCode | None = None
    status_message: _M_StatusMessage | None = None
    reason_code: _M_ReasonCode | None = None
    reason_message: _M_ReasonMessage | None = None
    limit_up_price: _M_NonNegative | None = None
    limit_down_price: _M_NonNegative | None = None
    luld_indicator: _M_LuldIndicator | None = None


_FAST_DECODER: Final = msgspec.json.Decoder(FastTick)
_FAST_DECODER_V3: Final = msgspec.json.Decoder(FastTickV3)


def _values_getter(fields: tuple[str, ...]) -> Callable[[Any], tuple[object, ...]]:
    """One C-level call reading ``fields`` as a tuple (attrgetter of one name returns the
    bare value, of none it cannot be made: both are wrapped)."""
    if len(fields) > 1:
        return attrgetter(*fields)
    if fields:
        one = attrgetter(fields[0])
        return lambda tick: (one(tick),)
    return lambda _tick: ()


# Per kind, its required fields' values in one call: a None among them sends the message
# to the reference decoder.
_REQUIRED_VALUES: Final = {kind: _values_getter(f) for kind, f in _REQUIRED_BY_KIND.items()}
# A version-2 identity is the producer's word for it. One tick in this many is checked against
# its fields (about 1/VERIFY of the hashing work version 1 costs): a producer that computes it
# wrongly is caught within its first few hundred messages, without hashing every one.
VERIFY_CARRIED_ID_EVERY: Final = 256
_verify_countdown = [VERIFY_CARRIED_ID_EVERY]


def decode_tick_fast(value: bytes | None) -> TickFields:
    """Like ``decode_tick``, at a tenth of the cost for well-formed ticks.

    Returns a ``FastTick`` (``FastTickV3`` for version 3) when msgspec accepts the message
    under the rules above; anything it refuses (or any form it does not handle itself) goes to
    ``decode_tick``, which either accepts it (a ``Tick``) or raises ``TickRejected`` with the
    reason.
    """
    if not value:
        raise TickRejected(RejectReason.EMPTY, "message has no value")
    tick: FastTick | FastTickV3
    try:
        tick = _FAST_DECODER.decode(value)
    except msgspec.MsgspecError:
        # Not versions 1 or 2 as they stand (rare: only the version-3 kinds are sent as 3).
        try:
            tick = _FAST_DECODER_V3.decode(value)
        except msgspec.MsgspecError:
            return decode_tick(value)
    else:
        if tick.kind in V3_KINDS:
            return decode_tick(value)  # refused there: such kinds need version 3
    ts, received = tick.ts_ns, tick.received_ns
    try:
        ts_ns = parse_rfc3339_ns(ts) if isinstance(ts, str) else ts
        received_ns = parse_rfc3339_ns(received) if isinstance(received, str) else received
    except ValueError:
        return decode_tick(value)
    if not 0 < ts_ns <= INT8_MAX or not 0 < received_ns <= INT8_MAX:
        return decode_tick(value)
    tick.ts_ns, tick.received_ns = ts_ns, received_ns
    if None in _REQUIRED_VALUES[tick.kind](tick):
        return decode_tick(value)
    carried = tick.tick_id
    if tick.schema_version != SCHEMA_VERSION_WITH_ID:
        if carried is not None:
            return decode_tick(value)
        tick.tick_id = tick_identity(cast(TickFields, tick))
    elif carried is None:
        return decode_tick(value)
    else:
        _verify_countdown[0] -= 1
        if not _verify_countdown[0]:
            _verify_countdown[0] = VERIFY_CARRIED_ID_EVERY
            verify_carried_id(cast(TickFields, tick))
    # The timestamps are ints and tick_id is set by now: the shape TickFields describes.
    return cast(TickFields, tick)


def verify_carried_id(tick: TickFields) -> None:
    """``TickRejected(INVALID_VALUE)`` unless the carried ``tick_id`` matches the fields."""
    expected = tick_identity(tick)
    if tick.tick_id != expected:
        raise TickRejected(
            RejectReason.INVALID_VALUE,
            f"tick_id {tick.tick_id} does not match the tick's fields (expected {expected}): "
            "the producer computes identities differently from this build",
        )
