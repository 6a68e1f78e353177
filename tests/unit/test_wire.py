"""The producer's pydantic-free wire encoding against the schema's own encoder, every kind."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from typing import Any

import msgpack
import pytest

from tickpipe_common.producer.wire import (
    LEGACY_COLUMNS,
    MalformedMessage,
    csv_line,
    document_from_cells,
    encode_value,
    epoch_ns,
    normalise,
    price_signature,
)
from tickpipe_common.schema import Tick, TickV3, decode_tick, encode_tick, make_tick

NS = msgpack.Timestamp(1_709_303_400, 123_456_789)
TS = 1_709_303_400_123_456_789
RECEIVED = 1_709_303_400_200_000_001

# (raw stream message, asset class, feed, the Tick the schema says it is)
CASES: list[tuple[dict[str, Any], str, str, dict[str, Any]]] = [
    (
        {"T": "t", "S": "AAPL", "i": 7, "x": "V", "p": 187.25, "s": 100, "c": ["@", "I"],
         "t": NS, "z": "C"},
        "stock", "iex",
        {"kind": "trade", "price": 187.25, "size": 100.0, "trade_id": 7, "exchange": "V",
         "conditions": ("@", "I"), "tape": "C"},
    ),
    (
        {"T": "q", "S": "MSFT", "bx": "K", "bp": 410.1, "bs": 2, "ax": "Q", "ap": 410.2,
         "as": 5, "c": ["R"], "t": NS, "z": "C"},
        "stock", "sip",
        {"kind": "quote", "bid_price": 410.1, "bid_size": 2.0, "bid_exchange": "K",
         "ask_price": 410.2, "ask_size": 5.0, "ask_exchange": "Q", "conditions": ("R",),
         "tape": "C"},
    ),
    (
        {"T": "b", "S": "BTC/USD", "o": 1.0, "h": 2.0, "l": 0.5, "c": 1.5, "v": 3.25, "t": NS,
         "n": 9, "vw": 1.4},
        "crypto", "us",
        {"kind": "bar", "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 3.25,
         "trade_count": 9, "vwap": 1.4},
    ),
    (
        {"T": "u", "S": "SPY", "o": 500, "h": 501, "l": 499, "c": 500.5, "v": 1200, "t": NS},
        "stock", "iex",
        {"kind": "updated_bar", "open": 500.0, "high": 501.0, "low": 499.0, "close": 500.5,
         "volume": 1200.0},
    ),
    (
        {"T": "d", "S": "SPY", "o": 0.1 + 0.2, "h": 1e-7, "l": 0.0, "c": 123456789.125,
         "v": 1e16, "t": NS, "n": 0, "vw": 2.5},
        "stock", "iex",
        {"kind": "daily_bar", "open": 0.1 + 0.2, "high": 1e-7, "low": 0.0,
         "close": 123456789.125, "volume": 1e16, "trade_count": 0, "vwap": 2.5},
    ),
    (
        {"T": "t", "S": "ETH/USD", "p": 3000.5, "s": 0.25, "t": NS, "i": 99, "tks": "B"},
        "crypto", "us",
        {"kind": "trade", "price": 3000.5, "size": 0.25, "trade_id": 99, "taker_side": "B"},
    ),
    (
        {"T": "o", "S": "ETH/USD", "t": NS, "b": [{"p": 1.0, "s": 2.0}, {"p": 0.5, "s": 0}],
         "a": [], "r": True},
        "crypto", "us",
        {"kind": "orderbook", "bids": ({"price": 1.0, "size": 2.0}, {"price": 0.5, "size": 0.0}),
         "asks": (), "reset": True},
    ),
    (
        {"T": "o", "S": "BTC/USD", "t": "2024-03-01T14:30:00.123456789Z",
         "b": [], "a": [{"p": 61001, "s": 1.25}]},
        "crypto", "us",
        {"kind": "orderbook", "bids": (), "asks": ({"price": 61001.0, "size": 1.25},),
         "reset": False},
    ),
    # schema version 3: Alpaca's field names, as its forum and SDKs show them
    (
        {"T": "c", "S": "IWM", "x": "D", "oi": 79372207866957, "op": 208.65, "os": 14950,
         "oc": [" ", "7", "V"], "ci": 79372223926359, "cp": 208.66, "cs": 14950,
         "cc": [" ", "7", "Z", "V"], "z": "B", "t": NS},
        "stock", "sip",
        {"kind": "trade_correction", "exchange": "D", "tape": "B",
         "original_trade_id": 79372207866957, "original_price": 208.65,
         "original_size": 14950.0, "original_conditions": (" ", "7", "V"),
         "corrected_trade_id": 79372223926359, "corrected_price": 208.66,
         "corrected_size": 14950.0, "corrected_conditions": (" ", "7", "Z", "V")},
    ),
    (
        {"T": "c", "S": "AAPL", "x": "V", "oi": 3, "op": 1.5, "os": 10, "cp": 1.25, "cs": 5,
         "t": NS},
        "stock", "iex",
        {"kind": "trade_correction", "exchange": "V", "original_trade_id": 3,
         "original_price": 1.5, "original_size": 10.0, "corrected_price": 1.25,
         "corrected_size": 5.0},
    ),
    (
        {"T": "x", "S": "ARVL", "i": 3, "x": "Q", "p": 11.8, "s": 22, "a": "C", "z": "C",
         "t": NS},
        "stock", "sip",
        {"kind": "trade_cancel", "trade_id": 3, "exchange": "Q", "price": 11.8, "size": 22.0,
         "cancel_action": "C", "tape": "C"},
    ),
    (
        {"T": "s", "S": "AAPL", "sc": "H", "sm": "Trading Halt", "rc": "LUDP",
         "rm": "Volatility Trading Pause", "t": NS, "z": "C"},
        "stock", "iex",
        {"kind": "trading_status", "status_code": "H", "status_message": "Trading Halt",
         "reason_code": "LUDP", "reason_message": "Volatility Trading Pause", "tape": "C"},
    ),
    (
        {"T": "s", "S": "SPY", "sc": "T", "sm": "Trading", "rc": "", "rm": "", "t": NS},
        "stock", "iex",
        {"kind": "trading_status", "status_code": "T", "status_message": "Trading"},
    ),
    (
        {"T": "l", "S": "AAPL", "u": 196.61, "d": 177.89, "i": "B", "t": NS, "z": "C"},
        "stock", "iex",
        {"kind": "luld", "limit_up_price": 196.61, "limit_down_price": 177.89,
         "luld_indicator": "B", "tape": "C"},
    ),
]  # fmt: skip


def _expected(raw: dict[str, Any], asset_class: str, feed: str, fields: dict[str, Any]) -> Tick:
    return make_tick(
        asset_class=asset_class,
        symbol=raw["S"],
        ts_ns=TS,
        received_ns=RECEIVED,
        feed=feed,
        **fields,
    )


@pytest.mark.parametrize(("raw", "asset_class", "feed", "fields"), CASES)
def test_same_message_as_the_schema_encoder(
    raw: dict[str, Any], asset_class: str, feed: str, fields: dict[str, Any]
) -> None:
    expected = _expected(raw, asset_class, feed, fields)
    value = encode_value(normalise(raw, asset_class, feed, RECEIVED))
    # What the consumer reads is identical...
    assert decode_tick(value) == decode_tick(encode_tick(expected)) == expected
    # ...and so is the document, field for field and in order (float text may differ only in
    # exponent spelling, e.g. 1e16 vs 1e+16, which every JSON reader parses alike).
    assert list(json.loads(value).items()) == list(json.loads(encode_tick(expected)).items())
    assert price_signature(json.loads(value)) == expected.price_signature()


@pytest.mark.parametrize(("raw", "asset_class", "feed", "fields"), CASES)
def test_backup_row_gives_the_same_value_back(
    raw: dict[str, Any], asset_class: str, feed: str, fields: dict[str, Any]
) -> None:
    doc = normalise(raw, asset_class, feed, RECEIVED)
    cells = next(csv.reader(io.StringIO(csv_line(doc).decode())))
    assert encode_value(document_from_cells(cells)) == encode_value(doc)
    model = TickV3 if cells[0] == "3" else Tick
    assert model.model_validate(document_from_cells(cells)) == _expected(
        raw, asset_class, feed, fields
    )


def test_msgpack_timestamp_keeps_nanoseconds() -> None:
    assert epoch_ns(NS) == TS
    assert epoch_ns("2024-03-01T14:30:00.123456789Z") == TS
    # msgpack decoded with timestamp=2 (the frame-level receive) gives epoch nanoseconds
    assert epoch_ns(msgpack.unpackb(msgpack.packb(NS), timestamp=2)) == TS
    aware = datetime(2024, 3, 1, 14, 30, 0, 123456, tzinfo=UTC)
    assert epoch_ns(aware) == 1_709_303_400_123_456_000
    with pytest.raises(MalformedMessage):
        epoch_ns(datetime(2024, 3, 1))  # noqa: DTZ001 - a naive time is exactly what is refused
    with pytest.raises(MalformedMessage):
        epoch_ns(12.5)


@pytest.mark.parametrize(
    "raw",
    [
        {"T": "s", "S": "AAPL", "t": NS},  # a trading status without its code
        {"T": "c", "S": "AAPL", "t": NS, "op": 1.0, "os": 1, "cp": 1.0, "cs": 1},  # no "oi"
        {"T": "x", "S": "AAPL", "t": NS, "i": 1, "p": 1.0, "s": 1},  # no action
        {"T": "l", "S": "AAPL", "t": NS, "u": 1.0, "d": -1.0},
        {"T": "n", "S": "AAPL", "t": NS},  # news: not a tick
        {"T": "t", "S": "AAPL", "t": NS, "s": 1},  # no price
        {"T": "t", "S": "AAPL", "t": NS, "p": "abc", "s": 1},
        {"T": "t", "S": "AAPL", "t": NS, "p": -1.0, "s": 1},
        {"T": "t", "S": "AAPL", "t": NS, "p": float("nan"), "s": 1},
        {"T": "t", "S": "AAPL", "t": NS, "p": float("inf"), "s": 1},
        {"T": "t", "S": "AAPL", "t": NS, "p": True, "s": 1},
        {"T": "t", "S": "AAPL", "t": NS, "p": 1.0, "s": 1, "x": 5},
        {"T": "t", "S": "AAPL", "t": NS, "p": 1.0, "s": 1, "i": "7"},
        {"T": "t", "S": "", "t": NS, "p": 1.0, "s": 1},
        {"T": "t", "S": "X" * 65, "t": NS, "p": 1.0, "s": 1},
        {"T": "t", "S": 5, "t": NS, "p": 1.0, "s": 1},
        {"T": "t", "S": "AAPL", "t": 12.5, "p": 1.0, "s": 1},
        {"T": "b", "S": "AAPL", "t": NS, "o": 1, "h": 1, "l": 1, "c": 1, "v": 1, "n": -1},
        {"T": "o", "S": "BTC/USD", "t": NS, "b": "nope", "a": []},
        {"T": "o", "S": "BTC/USD", "t": NS, "b": [{"p": 1.0}], "a": []},
        {},
    ],
)
def test_malformed_messages_are_refused_with_a_reason(raw: dict[str, Any]) -> None:
    with pytest.raises(MalformedMessage, match=r"\w"):
        normalise(raw, "stock", "iex", received_ns=5)


def test_a_backup_row_written_before_version_3_still_reads() -> None:
    raw, asset_class, feed, _fields = CASES[0]
    doc = normalise(raw, asset_class, feed, RECEIVED)
    cells = next(csv.reader(io.StringIO(csv_line(doc).decode())))
    legacy = cells[: len(LEGACY_COLUMNS)]
    assert all(cell == "" for cell in cells[len(LEGACY_COLUMNS) :])
    assert encode_value(document_from_cells(legacy)) == encode_value(doc)
    with pytest.raises(ValueError, match="cells"):
        document_from_cells(cells[:-1])
