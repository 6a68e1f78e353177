"""Alpaca stream messages (raw dicts) → tick values (schema version 1, and 3 for the kinds only
version 3 has: corrections, cancel/errors, trading statuses, LULD bands), without pydantic.

This is the producer's hot path, so it builds the wire document directly: a plain dict in the
field order and form of ``schema.encode_tick`` (``Tick.model_dump_json(exclude_none=True)``),
checked against the same rules as the ``Tick`` model (required fields per kind, finite
non-negative prices and sizes, positive timestamps, symbol and feed lengths). The unit tests
compare its output with the schema's own encoder for every kind, so the consumer decodes both
identically; the schema stays the one definition of the format.

The same document gives the CSV backup row (``csv_line``) and, read back, the Kafka value
again (``value_from_cells``), so re-publishing from the backup needs no model either.

alpaca-py's parsed models hold timestamps as ``datetime``, which drops the nanoseconds, so the
producers subscribe with ``raw_data=True``: with msgpack (what alpaca-py negotiates) ``t`` is a
``msgpack.Timestamp`` holding every nanosecond.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import msgpack

from tickpipe_common.schema import SCHEMA_VERSION, SCHEMA_VERSION_AMENDMENTS, V3_FIELDS, Tick
from tickpipe_common.timestamps import NANOS_PER_SECOND, parse_rfc3339_ns

# Wire type letter → tick kind.
KIND_BY_TYPE = {
    "t": "trade",
    "q": "quote",
    "b": "bar",
    "u": "updated_bar",
    "d": "daily_bar",
    "o": "orderbook",
    # stocks only; schema version 3
    "c": "trade_correction",
    "x": "trade_cancel",
    "s": "trading_status",
    "l": "luld",
}
_BAR_KINDS = frozenset({"bar", "updated_bar", "daily_bar"})

# The backup's columns: every schema field, by its wire name, in the schema's order.
COLUMNS: tuple[str, ...] = tuple(field.alias or name for name, field in Tick.model_fields.items())
# The columns of a backup written before schema version 3 (still read: the version-3 fields
# are all at the end, so such a row is a prefix of today's).
LEGACY_COLUMNS: tuple[str, ...] = COLUMNS[: COLUMNS.index(V3_FIELDS[0])]
_JSON_COLUMNS = frozenset(
    {"conditions", "bids", "asks", "original_conditions", "corrected_conditions"}
)
_FLOAT_COLUMNS = frozenset(
    {
        "price",
        "size",
        "bid_price",
        "bid_size",
        "ask_price",
        "ask_size",
        "open",
        "high",
        "low",
        "close",
        "volume",
        "vwap",
        "original_price",
        "original_size",
        "corrected_price",
        "corrected_size",
        "limit_up_price",
        "limit_down_price",
    }
)
_INT_COLUMNS = frozenset(
    {"schema_version", "trade_id", "trade_count", "original_trade_id", "corrected_trade_id"}
)


class MalformedMessage(ValueError):
    """A stream message we cannot turn into a tick; counted and logged, never fatal."""


def epoch_ns(value: Any) -> int:
    if value.__class__ is int:  # msgpack decoded with timestamp=2 (``frames``)
        return int(value)
    if isinstance(value, msgpack.Timestamp):
        return int(value.to_unix_nano())
    if isinstance(value, str):
        return parse_rfc3339_ns(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise MalformedMessage("naive datetime timestamp")
        whole = int(value.timestamp())
        return whole * NANOS_PER_SECOND + value.microsecond * 1000
    raise MalformedMessage(f"unsupported timestamp type {type(value).__name__}")


@lru_cache(maxsize=4096)
def _second_prefix(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def rfc3339(epoch_ns_value: int) -> str:
    """``schema.format_rfc3339_ns`` with the whole-second part cached (ticks come in order)."""
    seconds, nanos = divmod(epoch_ns_value, NANOS_PER_SECOND)
    return f"{_second_prefix(seconds)}.{nanos:09d}Z"


def _number(msg: Mapping[str, Any], key: str) -> float:
    value = msg[key]
    if value.__class__ is float:
        if value >= 0 and value != math.inf:  # NaN fails ">= 0"
            return value
    elif value.__class__ is int and value >= 0:
        return float(value)
    raise MalformedMessage(f"{key}: {value!r} is not a finite number >= 0")


def _optional_number(msg: Mapping[str, Any], key: str) -> float | None:
    return None if msg.get(key) is None else _number(msg, key)


def _text(msg: Mapping[str, Any], key: str) -> str | None:
    value = msg.get(key)
    if value is None or value.__class__ is str:
        return value
    raise MalformedMessage(f"{key}: {value!r} is not text")


def _integer(msg: Mapping[str, Any], key: str, minimum: int | None = None) -> int | None:
    value = msg.get(key)
    if value is None:
        return None
    if value.__class__ is not int or (minimum is not None and value < minimum):
        raise MalformedMessage(f"{key}: {value!r} is not a valid integer")
    return value


def _conditions(msg: Mapping[str, Any]) -> list[str] | None:
    raw = msg.get("c")
    if raw is None:
        return None
    if not isinstance(raw, list | tuple):
        raise MalformedMessage("c: conditions are not a list")
    return [str(c) for c in raw]


def _condition_list(msg: Mapping[str, Any], key: str) -> list[str] | None:
    raw = msg.get(key)
    if raw is None:
        return None
    if not isinstance(raw, list | tuple):
        raise MalformedMessage(f"{key}: conditions are not a list")
    return [str(c) for c in raw]


def _levels(msg: Mapping[str, Any], key: str) -> list[dict[str, float]]:
    raw = msg[key]
    if not isinstance(raw, list):
        raise MalformedMessage("orderbook side is not a list")
    return [{"price": _number(level, "p"), "size": _number(level, "s")} for level in raw]


def _put(doc: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        doc[key] = value


def _trade(doc: dict[str, Any], msg: Mapping[str, Any]) -> None:
    doc["price"] = _number(msg, "p")
    doc["size"] = _number(msg, "s")
    _put(doc, "exchange", _text(msg, "x"))
    _put(doc, "trade_id", _integer(msg, "i"))
    _put(doc, "conditions", _conditions(msg))
    _put(doc, "tape", _text(msg, "z"))
    _put(doc, "taker_side", _text(msg, "tks"))


def _quote(doc: dict[str, Any], msg: Mapping[str, Any]) -> None:
    # The schema's field order: conditions and tape come before the bid and ask fields.
    _put(doc, "conditions", _conditions(msg))
    _put(doc, "tape", _text(msg, "z"))
    doc["bid_price"] = _number(msg, "bp")
    doc["bid_size"] = _number(msg, "bs")
    _put(doc, "bid_exchange", _text(msg, "bx"))
    doc["ask_price"] = _number(msg, "ap")
    doc["ask_size"] = _number(msg, "as")
    _put(doc, "ask_exchange", _text(msg, "ax"))


def _bar(doc: dict[str, Any], msg: Mapping[str, Any]) -> None:
    doc["open"] = _number(msg, "o")
    doc["high"] = _number(msg, "h")
    doc["low"] = _number(msg, "l")
    doc["close"] = _number(msg, "c")
    doc["volume"] = _number(msg, "v")
    _put(doc, "vwap", _optional_number(msg, "vw"))
    _put(doc, "trade_count", _integer(msg, "n", minimum=0))


def _orderbook(doc: dict[str, Any], msg: Mapping[str, Any]) -> None:
    doc["bids"] = _levels(msg, "b")
    doc["asks"] = _levels(msg, "a")
    doc["reset"] = bool(msg.get("r"))


# Schema version 3. Each puts its fields in the schema's order and marks the document as
# version 3 (the key exists already, so its place stays first). An empty optional text (a
# status without a reason: "rc": "") is left out: the backup cannot tell "" from absent, and a
# tick re-published from it must have the identity it had live.


def _correction(doc: dict[str, Any], msg: Mapping[str, Any]) -> None:
    doc["schema_version"] = SCHEMA_VERSION_AMENDMENTS
    _put(doc, "exchange", _text(msg, "x"))
    _put(doc, "tape", _text(msg, "z"))
    doc["original_trade_id"] = _required_integer(msg, "oi")
    doc["original_price"] = _number(msg, "op")
    doc["original_size"] = _number(msg, "os")
    _put(doc, "original_conditions", _condition_list(msg, "oc"))
    _put(doc, "corrected_trade_id", _integer(msg, "ci"))
    doc["corrected_price"] = _number(msg, "cp")
    doc["corrected_size"] = _number(msg, "cs")
    _put(doc, "corrected_conditions", _condition_list(msg, "cc"))


def _cancel(doc: dict[str, Any], msg: Mapping[str, Any]) -> None:
    doc["schema_version"] = SCHEMA_VERSION_AMENDMENTS
    doc["price"] = _number(msg, "p")
    doc["size"] = _number(msg, "s")
    _put(doc, "exchange", _text(msg, "x"))
    doc["trade_id"] = _required_integer(msg, "i")
    _put(doc, "tape", _text(msg, "z"))
    doc["cancel_action"] = _required_text(msg, "a")


def _status(doc: dict[str, Any], msg: Mapping[str, Any]) -> None:
    doc["schema_version"] = SCHEMA_VERSION_AMENDMENTS
    _put(doc, "tape", _text(msg, "z"))
    doc["status_code"] = _required_text(msg, "sc")
    _put(doc, "status_message", _text(msg, "sm") or None)
    _put(doc, "reason_code", _text(msg, "rc") or None)
    _put(doc, "reason_message", _text(msg, "rm") or None)


def _luld(doc: dict[str, Any], msg: Mapping[str, Any]) -> None:
    doc["schema_version"] = SCHEMA_VERSION_AMENDMENTS
    _put(doc, "tape", _text(msg, "z"))
    doc["limit_up_price"] = _number(msg, "u")
    doc["limit_down_price"] = _number(msg, "d")
    _put(doc, "luld_indicator", _text(msg, "i") or None)


def _required_integer(msg: Mapping[str, Any], key: str) -> int:
    value = _integer(msg, key)
    if value is None:
        raise MalformedMessage(f"without field {key!r}")
    return value


def _required_text(msg: Mapping[str, Any], key: str) -> str:
    value = _text(msg, key)
    if value is None:
        raise MalformedMessage(f"without field {key!r}")
    return value


_FIELDS: dict[str, Callable[[dict[str, Any], Mapping[str, Any]], None]] = {
    "trade": _trade,
    "quote": _quote,
    "bar": _bar,
    "updated_bar": _bar,
    "daily_bar": _bar,
    "orderbook": _orderbook,
    "trade_correction": _correction,
    "trade_cancel": _cancel,
    "trading_status": _status,
    "luld": _luld,
}


# A batch's messages share one receive time: its text is made once per batch, not per tick.
# One tuple, replaced whole, so a second thread normalising at the same time stays correct.
_last_received: tuple[int, str] = (-1, "")


def _received_at(received_ns: int) -> str:
    global _last_received  # noqa: PLW0603 - a one-entry cache
    last = _last_received
    if last[0] == received_ns:
        return last[1]
    text = rfc3339(received_ns)
    _last_received = (received_ns, text)
    return text


def normalise(
    msg: Mapping[str, Any], asset_class: str, feed: str, received_ns: int
) -> dict[str, Any]:
    """One raw stream message → its wire document, or ``MalformedMessage`` saying why not.

    ``feed`` and ``asset_class`` come from the producer's validated settings.
    """
    kind = KIND_BY_TYPE.get(msg.get("T"))  # type: ignore[arg-type]
    if kind is None:
        raise MalformedMessage(f"not a market-data message type: {msg.get('T')!r}")
    try:
        symbol = msg["S"]
        if symbol.__class__ is not str or not 0 < len(symbol) <= 64:
            raise MalformedMessage(f"{kind} with symbol {symbol!r}")
        ts = epoch_ns(msg["t"])
        if ts <= 0:
            raise MalformedMessage(f"{kind} with timestamp {ts}")
        doc: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "kind": kind,
            "asset_class": asset_class,
            "symbol": symbol,
            "ts": rfc3339(ts),
            "received_at": _received_at(received_ns),
            "feed": feed,
        }
        _FIELDS[kind](doc, msg)
    except KeyError as exc:
        raise MalformedMessage(f"{kind} without field {exc.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError, OverflowError) as exc:
        if isinstance(exc, MalformedMessage):
            raise
        raise MalformedMessage(f"{kind}: {exc}".splitlines()[0][:300]) from None
    return doc


def price_signature(doc: Mapping[str, Any]) -> tuple[float, ...] | None:
    """``Tick.price_signature`` of a document: what "the price changed" compares."""
    kind = doc["kind"]
    if kind == "trade":
        return (doc["price"],)
    if kind == "quote":
        return (doc["bid_price"], doc["ask_price"])
    if kind in _BAR_KINDS:
        return (doc["close"],)
    return None


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_KEYS = {column: _dumps(column) + ":" for column in COLUMNS}
_INDEX = {column: i for i, column in enumerate(COLUMNS)}
_EMPTY_ROW = [""] * len(COLUMNS)
# Text values repeat (symbols, exchanges, tapes, feeds), and so do trade and quote condition
# lists (a handful of codes in a few combinations): their JSON and CSV forms are cached. A
# condition list through the JSON encoder cost more than the whole rest of its tick.
_TEXT_CACHE: dict[str, tuple[str, str]] = {}
_CONDITIONS_CACHE: dict[tuple[str, ...], tuple[str, str]] = {}
_TEXT_CACHE_LIMIT = 100_000
# Unique per tick, so not cached (they would only evict the values that repeat).
_TIMESTAMP_COLUMNS = frozenset({"ts", "received_at"})


def _quoted(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _text_forms(value: str) -> tuple[str, str]:
    forms = _TEXT_CACHE.get(value)
    if forms is None:
        needs_csv_quotes = "," in value or '"' in value or "\n" in value or "\r" in value
        forms = (_dumps(value), _quoted(value) if needs_csv_quotes else value)
        if len(_TEXT_CACHE) >= _TEXT_CACHE_LIMIT:
            _TEXT_CACHE.clear()
        _TEXT_CACHE[value] = forms
    return forms


def _conditions_forms(conditions: list[str]) -> tuple[str, str]:
    key = tuple(conditions)
    forms = _CONDITIONS_CACHE.get(key)
    if forms is None:
        json_text = _dumps(conditions)
        forms = (json_text, _quoted(json_text))
        if len(_CONDITIONS_CACHE) >= _TEXT_CACHE_LIMIT:
            _CONDITIONS_CACHE.clear()
        _CONDITIONS_CACHE[key] = forms
    return forms


def encode(doc: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """The Kafka value and the backup row of a document, in one pass over its fields.

    The value is compact JSON with the fields in the document's (the schema's) order, as
    ``schema.encode_tick`` writes it; floats are written as Python's shortest round-trip repr
    (``1e-07`` where pydantic writes ``1e-7``: the same number to every JSON reader). The
    row is what ``csv.writer`` (minimal quoting) would write for ``COLUMNS``.
    """
    parts: list[str] = []
    cells = _EMPTY_ROW.copy()
    keys, index, text_cache = _KEYS, _INDEX, _TEXT_CACHE
    for column, value in doc.items():
        cls = value.__class__
        if cls is float or cls is int:
            json_text = cell = repr(value)
        elif cls is str:
            forms = text_cache.get(value)
            if forms is None:
                if column in _TIMESTAMP_COLUMNS:  # ours (``rfc3339``): nothing to escape
                    forms = ('"' + value + '"', value)
                else:
                    forms = _text_forms(value)
            json_text, cell = forms
        elif cls is list and column == "conditions":
            json_text, cell = _conditions_forms(value)
        elif cls is bool:
            json_text = cell = "true" if value else "false"
        else:  # order-book levels
            json_text = _dumps(value)
            cell = _quoted(json_text)
        parts.append(keys[column] + json_text)
        cells[index[column]] = cell
    return ("{" + ",".join(parts) + "}").encode(), (",".join(cells) + "\n").encode()


def encode_value(doc: Mapping[str, Any]) -> bytes:
    """The Kafka value alone (see ``encode``)."""
    return encode(doc)[0]


def csv_line(doc: Mapping[str, Any]) -> bytes:
    """The backup row alone (see ``encode``), all ``COLUMNS``, with its newline."""
    return encode(doc)[1]


def header_line() -> bytes:
    return (",".join(COLUMNS) + "\n").encode()


def document_from_cells(cells: Sequence[str]) -> dict[str, Any]:
    """A backup row (as ``csv.reader`` splits it) → the wire document it was written from;
    a row of ``LEGACY_COLUMNS`` (written before schema version 3) too."""
    if len(cells) != len(COLUMNS) and len(cells) != len(LEGACY_COLUMNS):
        raise ValueError(f"a backup row has {len(COLUMNS)} cells, not {len(cells)}")
    doc: dict[str, Any] = {}
    for column, cell in zip(COLUMNS, cells, strict=False):
        if cell == "":
            continue
        if column in _FLOAT_COLUMNS:
            doc[column] = float(cell)
        elif column in _INT_COLUMNS:
            doc[column] = int(cell)
        elif column in _JSON_COLUMNS:
            doc[column] = json.loads(cell)
        elif column == "reset":
            doc[column] = cell == "true"
        else:
            doc[column] = cell
    return doc
