"""Tick → the tuple one ``market_ticks`` row is copied from, in the column order of the COPY.

This is also the last check before the database: a value PostgreSQL would refuse that the
schema itself lets through (a NUL character in text, which JSON allows) is rejected here, per
message, so that one bad tick can never fail the batch it travels in. (Integers wider than
``bigint`` and timestamps beyond ``timestamptz`` are refused by the schema already.)

Both decoders' results (``Tick`` and ``FastTick``) come in as ``TickFields``; this runs once
per message on the hot path, so it is straight-line attribute reads, no loops over columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Final

from tickpipe_common.schema import (
    HEADER_PRODUCER,
    LevelFields,
    RejectReason,
    TickFields,
    TickRejected,
)
from tickpipe_common.timestamps import ns_to_datetime

# (column, PostgreSQL type for the binary COPY). ``ingested_at`` is missing on purpose: the
# table's DEFAULT now() fills it at insert time.
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
    ("producer", "text"),
)
COLUMN_NAMES: Final = tuple(name for name, _ in COLUMNS)
COLUMN_TYPES: Final = tuple(pg_type for _, pg_type in COLUMNS)

Row = tuple[object, ...]

_MAX_PRODUCER_CHARS = 128

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
    for name, value in header_pairs(headers):
        if name == HEADER_PRODUCER and value is not None:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            return text.replace("\x00", "")[:_MAX_PRODUCER_CHARS] or None
    return None


def tick_to_row(tick: TickFields, producer: str | None) -> Row:
    """The row for ``tick``; ``TickRejected(INVALID_VALUE)`` if PostgreSQL could not store it."""
    row: Row = (
        tick.tick_id,
        _timestamp(tick.ts_ns, "ts"),
        tick.ts_ns,
        _timestamp(tick.received_ns, "received_at"),
        str(tick.kind),  # a StrEnum: str() is its value, and cheaper than .value
        str(tick.asset_class),
        _text(tick.symbol, "symbol"),
        _text(tick.feed, "feed"),
        tick.price,
        tick.size,
        _text(tick.exchange, "exchange"),
        tick.trade_id,
        None if tick.conditions is None else [_text(c, "conditions") for c in tick.conditions],
        _text(tick.tape, "tape"),
        _text(tick.taker_side, "taker_side"),
        tick.bid_price,
        tick.bid_size,
        _text(tick.bid_exchange, "bid_exchange"),
        tick.ask_price,
        tick.ask_size,
        _text(tick.ask_exchange, "ask_exchange"),
        tick.open,
        tick.high,
        tick.low,
        tick.close,
        tick.volume,
        tick.vwap,
        tick.trade_count,
        _levels(tick.bids),
        _levels(tick.asks),
        tick.reset,
        producer,
    )
    return row


def _levels(levels: Sequence[LevelFields] | None) -> list[dict[str, float]] | None:
    # Stored as [{"price": p, "size": s}, ...], the schema's own field names, in the order the
    # feed sent them. The jsonb dumper writes floats with repr(), which round-trips exactly.
    if levels is None:
        return None
    return [{"price": level.price, "size": level.size} for level in levels]


def _reject(field: str, problem: str) -> TickRejected:
    return TickRejected(RejectReason.INVALID_VALUE, f"{field}: {problem}")


def _text(value: str | None, field: str) -> str | None:
    # PostgreSQL text cannot hold U+0000; JSON can ("\u0000"), so it must be caught here.
    if value and "\x00" in value:
        raise _reject(field, "contains a NUL character, which PostgreSQL text cannot store")
    return value


def _timestamp(epoch_ns: int, field: str) -> datetime:
    try:
        return ns_to_datetime(epoch_ns)
    except (OverflowError, ValueError, OSError) as exc:
        raise _reject(field, f"{epoch_ns} ns is not a storable time ({exc})") from None
