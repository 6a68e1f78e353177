from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgpack
import pytest

from tickpipe_common.producer.normalise import MalformedMessage, epoch_ns, normalise
from tickpipe_common.schema import AssetClass, TickKind

NS = msgpack.Timestamp(1_709_303_400, 123_456_789)


def test_msgpack_timestamp_keeps_nanoseconds() -> None:
    assert epoch_ns(NS) == 1_709_303_400_123_456_789
    assert epoch_ns("2024-03-01T14:30:00.123456789Z") == 1_709_303_400_123_456_789
    aware = datetime(2024, 3, 1, 14, 30, 0, 123456, tzinfo=UTC)
    assert epoch_ns(aware) == 1_709_303_400_123_456_000
    with pytest.raises(MalformedMessage):
        epoch_ns(datetime(2024, 3, 1))  # noqa: DTZ001 - a naive time is exactly what is refused
    with pytest.raises(MalformedMessage):
        epoch_ns(12.5)


def test_stock_trade() -> None:
    raw = {
        "T": "t",
        "S": "AAPL",
        "i": 7,
        "x": "V",
        "p": 187.25,
        "s": 100,
        "c": ["@"],
        "t": NS,
        "z": "C",
    }
    tick = normalise(raw, AssetClass.STOCK, "iex", received_ns=5)
    assert tick.kind is TickKind.TRADE
    assert (tick.symbol, tick.price, tick.size, tick.trade_id) == ("AAPL", 187.25, 100.0, 7)
    assert (tick.exchange, tick.conditions, tick.tape, tick.feed) == ("V", ("@",), "C", "iex")
    assert tick.ts_ns == 1_709_303_400_123_456_789
    assert tick.received_ns == 5


def test_stock_quote() -> None:
    raw = {
        "T": "q", "S": "MSFT", "bx": "K", "bp": 410.1, "bs": 2, "ax": "Q", "ap": 410.2,
        "as": 5, "c": ["R"], "t": NS, "z": "C",
    }  # fmt: skip
    tick = normalise(raw, AssetClass.STOCK, "sip", received_ns=5)
    assert (tick.bid_price, tick.bid_size, tick.bid_exchange) == (410.1, 2.0, "K")
    assert (tick.ask_price, tick.ask_size, tick.ask_exchange) == (410.2, 5.0, "Q")


@pytest.mark.parametrize(("wire", "kind"), [("b", "bar"), ("u", "updated_bar"), ("d", "daily_bar")])
def test_bars(wire: str, kind: str) -> None:
    raw = {
        "T": wire,
        "S": "BTC/USD",
        "o": 1.0,
        "h": 2.0,
        "l": 0.5,
        "c": 1.5,
        "v": 3.25,
        "t": NS,
        "n": 9,
        "vw": 1.4,
    }
    tick = normalise(raw, AssetClass.CRYPTO, "us", received_ns=5)
    assert tick.kind.value == kind
    assert (tick.open, tick.high, tick.low, tick.close) == (1.0, 2.0, 0.5, 1.5)
    assert (tick.volume, tick.trade_count, tick.vwap) == (3.25, 9, 1.4)


def test_crypto_trade_and_orderbook() -> None:
    trade = normalise(
        {"T": "t", "S": "ETH/USD", "p": 3000.5, "s": 0.25, "t": NS, "i": 99, "tks": "B"},
        AssetClass.CRYPTO,
        "us",
        received_ns=5,
    )
    assert (trade.taker_side, trade.trade_id, trade.exchange) == ("B", 99, None)
    book = normalise(
        {"T": "o", "S": "ETH/USD", "t": NS, "b": [{"p": 1.0, "s": 2.0}], "a": [], "r": True},
        AssetClass.CRYPTO,
        "us",
        received_ns=5,
    )
    assert book.reset is True
    assert book.bids is not None
    assert book.bids[0].price == 1.0
    assert book.asks == ()


@pytest.mark.parametrize(
    "raw",
    [
        {"T": "s", "S": "AAPL"},  # trading status: not a tick
        {"T": "t", "S": "AAPL", "t": NS, "s": 1},  # no price
        {"T": "t", "S": "AAPL", "t": NS, "p": "abc", "s": 1},
        {"T": "t", "S": "AAPL", "t": NS, "p": -1.0, "s": 1},
        {"T": "t", "S": "AAPL", "t": 12.5, "p": 1.0, "s": 1},
        {"T": "o", "S": "BTC/USD", "t": NS, "b": "nope", "a": []},
        {},
    ],
)
def test_malformed_messages_are_refused_with_a_reason(raw: dict[str, Any]) -> None:
    with pytest.raises(MalformedMessage, match=r"\w"):
        normalise(raw, AssetClass.STOCK, "iex", received_ns=5)
