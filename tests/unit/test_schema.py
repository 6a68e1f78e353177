from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.unit.ticks import TS, bar, orderbook, quote, trade
from tickpipe_common.schema import (
    RejectReason,
    Tick,
    TickRejected,
    check_storable,
    decode_tick,
    encode_tick,
    kafka_headers,
)


@pytest.mark.parametrize("make", [trade, quote, bar, orderbook])
def test_round_trip_is_exact(make: Callable[[], Tick]) -> None:
    tick = make()
    decoded = decode_tick(encode_tick(tick))
    assert decoded == tick
    assert decoded.tick_id == tick.tick_id


def test_wire_format_is_readable_and_keeps_nanoseconds() -> None:
    doc = json.loads(encode_tick(trade()))
    assert doc["schema_version"] == 1
    assert doc["ts"] == "2024-03-01T14:30:00.123456789Z"
    assert doc["price"] == 187.25
    assert "bid_price" not in doc  # fields of other kinds are left off


def test_identity_is_deterministic_and_ignores_receive_time() -> None:
    assert trade().tick_id == trade(received_ns=TS + 999).tick_id
    assert trade().tick_id == trade(feed="sip").tick_id  # the same trade seen on another feed
    assert trade().tick_id != trade(trade_id=43).tick_id
    assert trade().tick_id != trade(exchange="P").tick_id
    assert trade().tick_id != trade(ts_ns=TS + 1).tick_id  # one nanosecond apart
    assert quote().tick_id != quote(bid_price=187.21).tick_id
    assert bar().tick_id == bar(close=1.0).tick_id  # one bar per symbol and minute
    assert bar(kind="updated_bar").tick_id != bar(kind="updated_bar", close=1.0).tick_id


def test_kind_requires_its_fields() -> None:
    with pytest.raises(ValueError, match="a trade needs price"):
        trade(price=None)
    with pytest.raises(ValueError, match="a quote needs"):
        quote(ask_size=None)


def test_price_signature_by_kind() -> None:
    assert trade().price_signature() == (187.25,)
    assert quote().price_signature() == (187.2, 187.3)
    assert bar().price_signature() == (61_050.0,)
    assert orderbook().price_signature() is None


def test_headers() -> None:
    assert dict(kafka_headers("producer-stocks")) == {
        "content-type": b"application/json",
        "tickpipe-schema-version": b"1",
        "tickpipe-producer": b"producer-stocks",
    }


def _reason(value: bytes | None) -> RejectReason:
    with pytest.raises(TickRejected) as caught:
        decode_tick(value)
    return caught.value.reason


def test_rejections_say_why() -> None:
    good = encode_tick(trade())
    assert _reason(None) is RejectReason.EMPTY
    assert _reason(b"") is RejectReason.EMPTY
    assert _reason(b"{not json") is RejectReason.NOT_JSON
    assert _reason(b"[1, 2]") is RejectReason.SCHEMA_VIOLATION
    assert _reason(good.replace(b'"schema_version":1', b'"schema_version":2')) is (
        RejectReason.UNSUPPORTED_SCHEMA_VERSION
    )
    assert _reason(good.replace(b"187.25", b"NaN")) is RejectReason.INVALID_VALUE
    assert _reason(good.replace(b"187.25", b"Infinity")) is RejectReason.INVALID_VALUE
    assert _reason(good.replace(b"187.25", b"-187.25")) is RejectReason.INVALID_VALUE
    assert _reason(good.replace(b'"kind":"trade"', b'"kind":"news"')) is (
        RejectReason.SCHEMA_VIOLATION
    )
    assert _reason(good.replace(b'"symbol"', b'"sym"')) is RejectReason.SCHEMA_VIOLATION
    assert _reason(good[:-1] + b',"extra":1}') is RejectReason.SCHEMA_VIOLATION


def test_check_storable() -> None:
    tick = trade()
    check_storable(tick, b"AAPL", now_ns=TS, max_future_ns=0)
    with pytest.raises(TickRejected) as caught:
        check_storable(tick, b"MSFT", now_ns=TS, max_future_ns=0)
    assert caught.value.reason is RejectReason.KEY_MISMATCH
    with pytest.raises(TickRejected) as caught:
        check_storable(tick, b"AAPL", now_ns=TS - 301 * 10**9, max_future_ns=300 * 10**9)
    assert caught.value.reason is RejectReason.FUTURE_TIMESTAMP
