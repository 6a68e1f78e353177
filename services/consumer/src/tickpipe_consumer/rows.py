"""Tick → one ``market_ticks`` row, already encoded as a tuple of PostgreSQL's binary COPY.

The row is bytes, not Python values for psycopg to adapt: the consumer's budget is a few
microseconds per tick, and building a 32-value tuple, two ``datetime`` objects and then
letting psycopg dump each value (arrays and jsonb through Python code) cost more than all of
decoding. Here each column is packed straight from the decoded tick:

- ``ts`` and ``received_at`` (``timestamptz``, microseconds since 2000-01-01 UTC in binary)
  come from the integer nanoseconds by integer arithmetic, truncated toward the past as
  before; ``ts_ns`` keeps the exact nanoseconds. No ``datetime`` is made. Every positive
  ``int8`` of nanoseconds (which the schema guarantees) is a storable ``timestamptz``.
- Text of the low-cardinality columns (kind, asset class, symbol, feed, exchange codes,
  conditions, the producer) is encoded once and reused from a bounded cache.
- Which columns a kind fills is one table, ``KIND_COLUMNS``; the per-kind encoding plans
  (which columns to pack, and the runs of NULLs between them) are derived from it and from
  ``COLUMNS`` at import. A new kind adds its row there; a new column adds itself to
  ``COLUMNS`` and to the kinds that fill it — the plans follow.
- The two kinds that make most of the traffic (quotes, trades) also have a hand-unrolled
  encoder of the same columns, half the cost of the plan's loop. They are written for one
  column layout (``_UNROLLED_FOR``): with any other ``COLUMNS`` they are not used, and the
  plans encode every kind (the unit tests check both give the same bytes, and that the
  unrolled ones are in use).

This is also the last check before the database: a value PostgreSQL would refuse that the
schema itself lets through (a NUL character in text, which JSON allows; text that is not
valid UTF-8) is rejected here, per message, so that one bad tick can never fail the batch it
travels in. (Integers wider than ``bigint`` are refused by the schema already.)

Both decoders' results (``Tick``, ``FastTick`` and ``FastTickV3``) come in as
``TickFields``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from operator import attrgetter
from typing import Final, NamedTuple

import msgspec

from tickpipe_common.schema import (
    HEADER_PRODUCER,
    FastBookLevel,
    LevelFields,
    RejectReason,
    TickFields,
    TickKind,
    TickRejected,
)

# (column, PostgreSQL type). ``ingested_at`` is missing on purpose: the table's DEFAULT now()
# fills it at insert time. The first ``len(HEAD_COLUMNS)`` columns are every kind's; the last
# one is the producer header.
COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("tick_id", "uuid"),
    ("ts", "timestamptz"),
    ("ts_ns", "int8"),
    ("received_at", "timestamptz"),
    ("kind", "text"),
    ("asset_class", "text"),
    ("symbol", "text"),
    ("feed", "text"),
    ("price", "float8"),
    ("size", "float8"),
    ("exchange", "text"),
    ("trade_id", "int8"),
    ("conditions", "text[]"),
    ("tape", "text"),
    ("taker_side", "text"),
    ("bid_price", "float8"),
    ("bid_size", "float8"),
    ("bid_exchange", "text"),
    ("ask_price", "float8"),
    ("ask_size", "float8"),
    ("ask_exchange", "text"),
    ("open", "float8"),
    ("high", "float8"),
    ("low", "float8"),
    ("close", "float8"),
    ("volume", "float8"),
    ("vwap", "float8"),
    ("trade_count", "int8"),
    ("bids", "jsonb"),
    ("asks", "jsonb"),
    ("reset", "bool"),
    # schema version 3 (migration 0004), in V3_FIELDS order; the table has them after the
    # producer, but COPY names its columns, so here they keep the producer last
    ("original_trade_id", "int8"),
    ("original_price", "float8"),
    ("original_size", "float8"),
    ("original_conditions", "text[]"),
    ("corrected_trade_id", "int8"),
    ("corrected_price", "float8"),
    ("corrected_size", "float8"),
    ("corrected_conditions", "text[]"),
    ("cancel_action", "text"),
    ("status_code", "text"),
    ("status_message", "text"),
    ("reason_code", "text"),
    ("reason_message", "text"),
    ("limit_up_price", "float8"),
    ("limit_down_price", "float8"),
    ("luld_indicator", "text"),
    ("producer", "text"),
)
COLUMN_NAMES: Final = tuple(name for name, _ in COLUMNS)
COLUMN_TYPES: Final = tuple(pg_type for _, pg_type in COLUMNS)
HEAD_COLUMNS: Final = (
    "tick_id",
    "ts",
    "ts_ns",
    "received_at",
    "kind",
    "asset_class",
    "symbol",
    "feed",
)
if COLUMN_NAMES[: len(HEAD_COLUMNS)] != HEAD_COLUMNS or COLUMN_NAMES[-1] != "producer":
    raise ValueError("COLUMNS must start with HEAD_COLUMNS and end with the producer")

_BAR_COLUMNS = ("open", "high", "low", "close", "volume", "vwap", "trade_count")
# The columns each kind fills besides the head and the producer (every other one is NULL),
# named as the tick's fields are. The attributes of the same names are read from the tick.
KIND_COLUMNS: Final[dict[TickKind, tuple[str, ...]]] = {
    TickKind.TRADE: (
        "price",
        "size",
        "exchange",
        "trade_id",
        "conditions",
        "tape",
        "taker_side",
    ),
    TickKind.QUOTE: (
        "conditions",
        "tape",
        "bid_price",
        "bid_size",
        "bid_exchange",
        "ask_price",
        "ask_size",
        "ask_exchange",
    ),
    TickKind.BAR: _BAR_COLUMNS,
    TickKind.UPDATED_BAR: _BAR_COLUMNS,
    TickKind.DAILY_BAR: _BAR_COLUMNS,
    TickKind.ORDERBOOK: ("bids", "asks", "reset"),
    # schema version 3: the fields the producers' normalising gives each of these kinds
    TickKind.TRADE_CORRECTION: (
        "exchange",
        "tape",
        "original_trade_id",
        "original_price",
        "original_size",
        "original_conditions",
        "corrected_trade_id",
        "corrected_price",
        "corrected_size",
        "corrected_conditions",
    ),
    TickKind.TRADE_CANCEL: ("price", "size", "exchange", "trade_id", "tape", "cancel_action"),
    TickKind.TRADING_STATUS: (
        "tape",
        "status_code",
        "status_message",
        "reason_code",
        "reason_message",
    ),
    TickKind.LULD: ("tape", "limit_up_price", "limit_down_price", "luld_indicator"),
}


class Row(NamedTuple):
    """One tick ready for ``COPY … (FORMAT BINARY)``, and what the writer reports about it."""

    kind: str
    ts_ns: int
    data: bytes  # one binary COPY tuple: field count, then each column's length and bytes


# Row(...) runs NamedTuple's Python __new__; this is the same tuple, built in C.
_new_row: Final[Callable[[tuple[str, int, bytes]], Row]] = partial(tuple.__new__, Row)

_MAX_PRODUCER_CHARS = 128

# -- binary COPY encoding ------------------------------------------------------------------

COPY_SIGNATURE: Final = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
COPY_TRAILER: Final = b"\xff\xff"
_NULL: Final = b"\xff\xff\xff\xff"
_PG_EPOCH_US: Final = 946_684_800_000_000  # 2000-01-01T00:00:00Z in Unix microseconds
_TEXT_OID: Final = 25
_JSONB_VERSION: Final = b"\x01"

# Field count, tick_id (uuid), ts (timestamptz), ts_ns (int8), received_at (timestamptz).
_HEAD = struct.Struct(">hi16siqiqiq")
_F8 = struct.Struct(">id").pack
_I8 = struct.Struct(">iq").pack
_I4 = struct.Struct(">i").pack
_ARRAY_1D = struct.Struct(">iiiiii").pack  # length, ndim 1, no nulls, oid, size, lower bound
_TRUE: Final = _I4(1) + b"\x01"
_FALSE: Final = _I4(1) + b"\x00"
_EMPTY_TEXT_ARRAY: Final = _I4(12) + struct.pack(">iii", 0, 0, _TEXT_OID)

_json = msgspec.json.Encoder()


def _text_field(text: str) -> bytes:
    try:
        data = text.encode()
    except UnicodeEncodeError:  # a lone surrogate: not UTF-8, so not PostgreSQL text
        raise TickRejected(
            RejectReason.INVALID_VALUE, f"text {text[:32]!r} is not valid UTF-8"
        ) from None
    return _I4(len(data)) + data


class _Encoded(dict[object, bytes]):
    """Encoded fields by value, computed on a miss (the hit is a plain C-level dict lookup);
    cleared when full, so hostile input cannot grow it without bound."""

    def __init__(self, encode: Callable[[object], bytes], max_entries: int = 4096) -> None:
        super().__init__()
        self._encode = encode
        self._max = max_entries

    def __missing__(self, key: object) -> bytes:
        encoded = self._encode(key)
        if len(self) >= self._max:
            self.clear()
        self[key] = encoded
        return encoded


def _text_array(items: Sequence[str]) -> bytes:
    if not items:
        return _EMPTY_TEXT_ARRAY
    elements = b"".join([_text_field(item) for item in items])
    return _ARRAY_1D(20 + len(elements), 1, 0, _TEXT_OID, len(items), 1) + elements


def _levels(levels: Sequence[LevelFields]) -> bytes:
    # Stored as [{"price": p, "size": s}, ...], the schema's own field names, in the order the
    # feed sent them; floats written in their shortest round-tripping form (exact).
    if levels and type(levels[0]) is FastBookLevel:
        text = _json.encode(levels)  # a Struct encodes as exactly that object
    else:
        text = _json.encode([{"price": lv.price, "size": lv.size} for lv in levels])
    return _I4(len(text) + 1) + _JSONB_VERSION + text


_texts = _Encoded(_text_field)  # type: ignore[arg-type]
_text_arrays = _Encoded(_text_array)  # type: ignore[arg-type]
# How a value of each PostgreSQL type becomes its field (length + bytes); None is NULL.
# C-level callables where possible (a partial of a struct packer, a dict lookup): this runs
# for every column of every tick.
_ENCODERS: Final[dict[str, Callable[[object], bytes]]] = {
    "float8": partial(_F8, 8),
    "int8": partial(_I8, 8),
    "text": _texts.__getitem__,
    "text[]": _text_arrays.__getitem__,  # conditions arrive as a tuple: hashable
    "jsonb": _levels,  # type: ignore[dict-item]
    "bool": {True: _TRUE, False: _FALSE}.__getitem__,  # type: ignore[dict-item]
}


_KIND_NAMES: Final = {kind: str(kind) for kind in TickKind}  # the plain str, for Row.kind


@dataclass(frozen=True, slots=True)
class _Plan:
    """How one kind's columns after the head are encoded: ``values`` reads them from the
    tick in one call; each is encoded and followed by the run of NULLs up to the next one."""

    kind: str
    values: Callable[[TickFields], tuple[object, ...]]
    steps: tuple[tuple[Callable[[object], bytes], bytes], ...]
    lead: bytes  # the NULLs between the head and the kind's first column


def _plan(kind: TickKind, columns: tuple[str, ...]) -> _Plan:
    body = COLUMNS[len(HEAD_COLUMNS) : -1]  # between the head and the producer
    names = [name for name, _ in body]
    unknown = set(columns) - set(names)
    if unknown:
        raise ValueError(f"KIND_COLUMNS[{kind}] names unknown columns {sorted(unknown)}")
    ordered = tuple(name for name in names if name in columns)
    positions = [names.index(name) for name in ordered]
    bounds = [*positions[1:], len(body)]
    steps = tuple(
        (_ENCODERS[body[at][1]], _NULL * (end - at - 1))
        for at, end in zip(positions, bounds, strict=True)
    )
    lead = _NULL * (positions[0] if positions else len(body))
    values = attrgetter(*ordered) if len(ordered) > 1 else _one(ordered)
    return _Plan(str(kind), values, steps, lead)


def _one(names: tuple[str, ...]) -> Callable[[TickFields], tuple[object, ...]]:
    # attrgetter of one name returns the value, not a 1-tuple; of none, there is nothing.
    if not names:
        return lambda _tick: ()
    getter = attrgetter(names[0])
    return lambda tick: (getter(tick),)


_PLANS: Final = {kind: _plan(kind, columns) for kind, columns in KIND_COLUMNS.items()}
if set(_PLANS) != set(TickKind):  # pragma: no cover - caught at import, by every test
    raise ValueError(f"KIND_COLUMNS lacks {sorted(set(TickKind) - set(_PLANS))}")


def plan_body(tick: TickFields) -> bytes:
    """The columns between the head and the producer, by the kind's plan (any kind)."""
    plan = _PLANS[tick.kind]
    parts = [plan.lead]
    for value, (encode, nulls) in zip(plan.values(tick), plan.steps, strict=True):
        parts.append(_NULL if value is None else encode(value))
        parts.append(nulls)
    return b"".join(parts)


# -- the unrolled encoders: the same bytes as plan_body, for one column layout ----------------

# Spelled out, not derived: a change anywhere in COLUMNS must switch the unrolled ones off.
_UNROLLED_FOR: Final = (
    *("tick_id", "ts", "ts_ns", "received_at", "kind", "asset_class", "symbol", "feed"),
    *("price", "size", "exchange", "trade_id", "conditions", "tape", "taker_side"),
    *("bid_price", "bid_size", "bid_exchange", "ask_price", "ask_size", "ask_exchange"),
    *("open", "high", "low", "close", "volume", "vwap", "trade_count"),
    *("bids", "asks", "reset"),
    *("original_trade_id", "original_price", "original_size", "original_conditions"),
    *("corrected_trade_id", "corrected_price", "corrected_size", "corrected_conditions"),
    *("cancel_action", "status_code", "status_message", "reason_code", "reason_message"),
    *("limit_up_price", "limit_down_price", "luld_indicator"),
    "producer",
)
_float8_field = partial(_F8, 8)
_int8_field = partial(_I8, 8)
_text_of = _texts.__getitem__
_array_of = _text_arrays.__getitem__
_NULL_X6 = _NULL * 6
_NULL_X26 = _NULL * 26  # the bar's 7 columns, the book's 3, version 3's 16


def _trade_body(tick: TickFields) -> bytes:
    exchange, trade_id, conditions = tick.exchange, tick.trade_id, tick.conditions
    tape, side = tick.tape, tick.taker_side
    return b"".join(
        (
            _float8_field(tick.price),
            _float8_field(tick.size),
            _NULL if exchange is None else _text_of(exchange),
            _NULL if trade_id is None else _int8_field(trade_id),
            _NULL if conditions is None else _array_of(conditions),
            _NULL if tape is None else _text_of(tape),
            _NULL if side is None else _text_of(side),
            _NULL_X6,  # the quote's columns
            _NULL_X26,  # the bar's, the book's and version 3's
        )
    )


def _quote_body(tick: TickFields) -> bytes:
    conditions, tape = tick.conditions, tick.tape
    bid_exchange, ask_exchange = tick.bid_exchange, tick.ask_exchange
    return b"".join(
        (
            _NULL * 4,  # price, size, exchange, trade_id
            _NULL if conditions is None else _array_of(conditions),
            _NULL if tape is None else _text_of(tape),
            _NULL,  # taker_side
            _float8_field(tick.bid_price),
            _float8_field(tick.bid_size),
            _NULL if bid_exchange is None else _text_of(bid_exchange),
            _float8_field(tick.ask_price),
            _float8_field(tick.ask_size),
            _NULL if ask_exchange is None else _text_of(ask_exchange),
            _NULL_X26,  # the bar's, the book's and version 3's
        )
    )


# Per kind, what encodes the columns between the head and the producer.
BODY_ENCODERS: Final[dict[TickKind, Callable[[TickFields], bytes]]] = dict.fromkeys(
    TickKind, plan_body
)
UNROLLED_IN_USE: Final = COLUMN_NAMES == _UNROLLED_FOR
if UNROLLED_IN_USE:
    BODY_ENCODERS.update({TickKind.TRADE: _trade_body, TickKind.QUOTE: _quote_body})

# Kafka headers as confluent-kafka types them: (name, value) pairs or a mapping. A consumed
# message carries a list of pairs with bytes (or None) values; str is what a producer may pass.
HeaderValue = str | bytes | None
Headers = Mapping[str, HeaderValue] | Iterable[tuple[str, HeaderValue]]


def header_pairs(headers: Headers | None) -> list[tuple[str, HeaderValue]]:
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)


def producer_from_headers(headers: Headers | None) -> str | None:
    """The ``tickpipe-producer`` header as text, or None; never fails on a malformed header."""
    # Consecutive messages nearly always carry the same headers: compare, don't parse again.
    ((last_headers, last_producer),) = _last_producer
    if headers == last_headers:
        return last_producer
    producer = _producer_of(headers)
    if isinstance(headers, list):
        _last_producer[:] = [(list(headers), producer)]
    return producer


_last_producer: list[tuple[object, str | None]] = [(None, None)]


def _producer_of(headers: Headers | None) -> str | None:
    for name, value in header_pairs(headers):
        if name == HEADER_PRODUCER and value is not None:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            return text.replace("\x00", "")[:_MAX_PRODUCER_CHARS] or None
    return None


def tick_to_row(tick: TickFields, producer: str | None, may_hold_nul: bool = True) -> Row:
    """The row for ``tick``; ``TickRejected(INVALID_VALUE)`` if PostgreSQL could not store it.

    ``may_hold_nul=False`` skips the NUL checks: the caller knows the message had no
    ``\\u0000`` escape, the only way JSON text can carry U+0000.
    """
    if may_hold_nul:
        _refuse_nul(tick)
    kind = tick.kind
    ts_ns = tick.ts_ns
    text = _text_of
    parts = (
        _HEAD.pack(
            len(COLUMNS),
            16,
            tick.tick_id.bytes,
            8,
            ts_ns // 1000 - _PG_EPOCH_US,
            8,
            ts_ns,
            8,
            tick.received_ns // 1000 - _PG_EPOCH_US,
        ),
        text(kind),
        text(tick.asset_class),
        text(tick.symbol),
        text(tick.feed),
        BODY_ENCODERS[kind](tick),
        _NULL if producer is None else text(producer),
    )
    return _new_row((_KIND_NAMES[kind], ts_ns, b"".join(parts)))


def _reject(field: str, problem: str) -> TickRejected:
    return TickRejected(RejectReason.INVALID_VALUE, f"{field}: {problem}")


_TEXT_FIELDS = (
    "symbol",
    "feed",
    "exchange",
    "tape",
    "taker_side",
    "bid_exchange",
    "ask_exchange",
    "cancel_action",
    "status_code",
    "status_message",
    "reason_code",
    "reason_message",
    "luld_indicator",
)


def _refuse_nul(tick: TickFields) -> None:
    # PostgreSQL text cannot hold U+0000; JSON can ("\u0000"), so it must be caught here.
    texts = [(name, getattr(tick, name)) for name in _TEXT_FIELDS]
    texts += [("conditions", c) for c in tick.conditions or ()]
    texts += [("original_conditions", c) for c in tick.original_conditions or ()]
    texts += [("corrected_conditions", c) for c in tick.corrected_conditions or ()]
    for field, value in texts:
        if value and "\x00" in value:
            raise _reject(field, "contains a NUL character, which PostgreSQL text cannot store")
