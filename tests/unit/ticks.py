"""Tick builders shared by the unit tests."""

from __future__ import annotations

import json
from typing import Any

from tickpipe_common.producer.csv_backup import CsvBackupWriter
from tickpipe_common.producer.wire import csv_line
from tickpipe_common.schema import Tick, TickV3, encode_tick
from tickpipe_common.timestamps import utc_date

TS = 1_709_303_400_123_456_789


def trade(**overrides: Any) -> Tick:
    fields: dict[str, Any] = {
        "kind": "trade",
        "asset_class": "stock",
        "symbol": "AAPL",
        "ts_ns": TS,
        "received_ns": TS + 1_000_000,
        "feed": "iex",
        "price": 187.25,
        "size": 100.0,
        "exchange": "V",
        "trade_id": 42,
        "conditions": ("@", "I"),
        "tape": "C",
    }
    fields.update(overrides)
    return Tick(**fields)


def quote(**overrides: Any) -> Tick:
    fields: dict[str, Any] = {
        "kind": "quote",
        "asset_class": "stock",
        "symbol": "AAPL",
        "ts_ns": TS,
        "received_ns": TS + 1_000_000,
        "feed": "iex",
        "bid_price": 187.2,
        "bid_size": 3.0,
        "bid_exchange": "V",
        "ask_price": 187.3,
        "ask_size": 1.0,
        "ask_exchange": "V",
        "conditions": ("R",),
        "tape": "C",
    }
    fields.update(overrides)
    return Tick(**fields)


def bar(**overrides: Any) -> Tick:
    fields: dict[str, Any] = {
        "kind": "bar",
        "asset_class": "crypto",
        "symbol": "BTC/USD",
        "ts_ns": 1_709_303_400_000_000_000,
        "received_ns": TS,
        "feed": "us",
        "open": 61_000.5,
        "high": 61_100.0,
        "low": 60_990.25,
        "close": 61_050.0,
        "volume": 1.234567,
        "vwap": 61_040.1,
        "trade_count": 17,
    }
    fields.update(overrides)
    return Tick(**fields)


def orderbook(**overrides: Any) -> Tick:
    fields: dict[str, Any] = {
        "kind": "orderbook",
        "asset_class": "crypto",
        "symbol": "BTC/USD",
        "ts_ns": TS,
        "received_ns": TS + 5,
        "feed": "us",
        "bids": ({"price": 61_000.0, "size": 0.5}, {"price": 60_999.5, "size": 0.0}),
        "asks": ({"price": 61_001.0, "size": 1.25},),
        "reset": True,
    }
    fields.update(overrides)
    return Tick(**fields)


def row(tick: Tick) -> bytes:
    """The tick's backup row, as the producer's sink writes it."""
    return csv_line(json.loads(encode_tick(tick)))


def back_up(writer: CsvBackupWriter, *ticks: Tick) -> None:
    """Append ticks to a backup one row each, filed on the tick's own day (the sink files by
    the day it received them: here the two are the same)."""
    for tick in ticks:
        writer.append(utc_date(tick.ts_ns), [row(tick)])


def correction(**overrides: Any) -> Tick:
    fields: dict[str, Any] = {
        "kind": "trade_correction",
        "asset_class": "stock",
        "symbol": "AAPL",
        "ts_ns": TS + 5_000_000,
        "received_ns": TS + 6_000_000,
        "feed": "iex",
        "exchange": "V",
        "tape": "C",
        "original_trade_id": 42,
        "original_price": 187.25,
        "original_size": 100.0,
        "original_conditions": ("@", "I"),
        "corrected_trade_id": 1_000_000_000_042,
        "corrected_price": 187.26,
        "corrected_size": 100.0,
        "corrected_conditions": ("@", "I"),
    }
    fields.update(overrides)
    return TickV3(**fields)


def trade_cancel(**overrides: Any) -> Tick:
    fields: dict[str, Any] = {
        "kind": "trade_cancel",
        "asset_class": "stock",
        "symbol": "AAPL",
        "ts_ns": TS + 7_000_000,
        "received_ns": TS + 8_000_000,
        "feed": "iex",
        "price": 187.25,
        "size": 100.0,
        "exchange": "V",
        "trade_id": 42,
        "tape": "C",
        "cancel_action": "C",
    }
    fields.update(overrides)
    return TickV3(**fields)


def trading_status(**overrides: Any) -> Tick:
    fields: dict[str, Any] = {
        "kind": "trading_status",
        "asset_class": "stock",
        "symbol": "AAPL",
        "ts_ns": TS,
        "received_ns": TS + 1_000_000,
        "feed": "iex",
        "tape": "C",
        "status_code": "H",
        "status_message": "Trading Halt",
        "reason_code": "LUDP",
        "reason_message": "Volatility Trading Pause",
    }
    fields.update(overrides)
    return TickV3(**fields)


def luld(**overrides: Any) -> Tick:
    fields: dict[str, Any] = {
        "kind": "luld",
        "asset_class": "stock",
        "symbol": "AAPL",
        "ts_ns": TS,
        "received_ns": TS + 1_000_000,
        "feed": "iex",
        "tape": "C",
        "limit_up_price": 196.61,
        "limit_down_price": 177.89,
        "luld_indicator": "B",
    }
    fields.update(overrides)
    return TickV3(**fields)
