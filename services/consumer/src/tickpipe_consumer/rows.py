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
    V3_FIELDS,
    V3_KINDS,
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
    # schema version 3 (migration 0004): in V3_FIELDS order
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
    row: Row = (
        tick.tick_id,
        _timestamp(tick.ts_ns, "ts"),
        tick.ts_ns,
        _timestamp(tick.received_ns, "received_at"),
        str(tick.kind),  # a StrEnum: str() is its value, and cheaper than .value
        str(tick.asset_class),
        tick.symbol,
        tick.feed,
        tick.price,
        tick.size,
        tick.exchange,
        tick.trade_id,
        None if tick.conditions is None else list(tick.conditions),
        tick.tape,
        tick.taker_side,
        tick.bid_price,
        tick.bid_size,
        tick.bid_exchange,
        tick.ask_price,
        tick.ask_size,
        tick.ask_exchange,
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
        *(_NO_V3_VALUES if tick.kind not in V3_KINDS else _v3_values(tick)),
    )
    return row


# The version-3 columns of every other kind: all NULL, one shared tuple.
_NO_V3_VALUES: Final[tuple[None, ...]] = (None,) * len(V3_FIELDS)


def _v3_values(tick: TickFields) -> Row:
    """The version-3 columns, in ``V3_FIELDS`` order (that of ``COLUMNS``)."""
    return (
        tick.original_trade_id,
        tick.original_price,
        tick.original_size,
        None if tick.original_conditions is None else list(tick.original_conditions),
        tick.corrected_trade_id,
        tick.corrected_price,
        tick.corrected_size,
        None if tick.corrected_conditions is None else list(tick.corrected_conditions),
        tick.cancel_action,
        tick.status_code,
        tick.status_message,
        tick.reason_code,
        tick.reason_message,
        tick.limit_up_price,
        tick.limit_down_price,
        tick.luld_indicator,
    )


def _levels(levels: Sequence[LevelFields] | None) -> list[dict[str, float]] | None:
    # Stored as [{"price": p, "size": s}, ...], the schema's own field names, in the order the
    # feed sent them. The jsonb dumper writes floats with repr(), which round-trips exactly.
    if levels is None:
        return None
    return [{"price": level.price, "size": level.size} for level in levels]


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


def _timestamp(epoch_ns: int, field: str) -> datetime:
    try:
        return ns_to_datetime(epoch_ns)
    except (OverflowError, ValueError, OSError) as exc:
        raise _reject(field, f"{epoch_ns} ns is not a storable time ({exc})") from None
